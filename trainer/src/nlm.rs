//! A feed-forward neural n-gram language model (Bengio et al.) over the parameter server,
//! trained with sampled softmax by asynchronous SGD and evaluated with an exact softmax.
//!
//! For the `C = order − 1` words before a token (`<s>` repeated before a sentence's start):
//!
//! ```text
//! x = [e(w1); …; e(wC)]           context embeddings        <m>.emb   (word → E)
//! h = tanh(W1·x + b1)             hidden layer              <m>.w1    (unit → C·E + 1)
//! z = W2·h + b2                   output projection         <m>.w2    (unit → H + 1)
//! s(w) = o(w)·z + c(w)            output embeddings, biases <m>.out   (word → D + 1)
//! p(w | context) = softmax(s)(w)  over the whole vocabulary (words, </s>, <unk>)
//! ```
//!
//! **Training.** A worker takes a minibatch of `batch` tokens, draws `samples` noise words
//! from `q` ∝ count^`noise_power`, the counts being the unigram rows' (Kneser-Ney's adjusted
//! counts: distinct left neighbours; one set shared by the batch), and
//! minimizes the sampled-softmax loss: each token's softmax runs over its own word and the
//! noise words, every logit corrected by `−ln E[times drawn]` and a noise word equal to the
//! token's masked (Jean et al., 2015). So a token costs the same whatever the vocabulary's
//! size. The worker pulls the rows the batch needs (its words' embeddings, the output rows of
//! its words and the noise, both dense layers), computes gradients locally with sgemm, and
//! pushes them; the servers apply Adagrad (`UpdateRule::Adagrad`), so concurrent workers'
//! updates all land. Workers record their positions in `<m>.lm` every `checkpoint_secs`; the
//! same command resumes from there after a crash.
//!
//! **Evaluation** (`Neural::log_probs`) normalizes exactly: every token's logits against every
//! word in the vocabulary, with a streaming log-sum-exp over tiles of output rows.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, Initializer, TableSpec, UpdateRule};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::weighted::WeightedAliasIndex;
use rand_distr::Distribution;
use rustc_hash::FxHashMap;

use crate::corpus::{part_range, PartReader, Position};
use crate::error::{Result, TrainError};
use crate::keys::{set_row, state_fields, state_row, word_key, STATE_DIM};
use crate::linalg::{self, gemm, M};
use crate::ngram::{self, Kn, BOS};

/// Network shape and training settings (the neural flags of `paramdb train ngram-lm`).
#[derive(Clone, Debug)]
pub struct NeuralConfig {
    /// Context embedding size E.
    pub emb_dim: usize,
    /// Hidden units H.
    pub hidden: usize,
    /// Output embedding size D.
    pub out_dim: usize,
    /// Noise words per minibatch.
    pub samples: usize,
    /// Tokens per minibatch.
    pub batch: usize,
    pub epochs: u32,
    /// Adagrad learning rate of the embeddings and of the dense layers.
    pub lr: f32,
    pub dense_lr: f32,
    /// Exponent of the unigram noise distribution.
    pub noise_power: f64,
    pub threads: usize,
    pub seed: u64,
    pub checkpoint_secs: f64,
}

impl Default for NeuralConfig {
    fn default() -> Self {
        NeuralConfig {
            emb_dim: 128,
            hidden: 512,
            out_dim: 128,
            samples: 1024,
            batch: 1024,
            epochs: 1,
            lr: 0.1,
            dense_lr: 0.005,
            noise_power: 0.75,
            threads: 2,
            seed: 1,
            checkpoint_secs: 10.0,
        }
    }
}

pub fn emb_table(model: &str) -> String {
    format!("{model}.emb")
}
pub fn w1_table(model: &str) -> String {
    format!("{model}.w1")
}
pub fn w2_table(model: &str) -> String {
    format!("{model}.w2")
}
pub fn out_table(model: &str) -> String {
    format!("{model}.out")
}

/// Keys of the neural model's rows in the state table `<m>.lm` (`ngram` uses 0 and 100…).
const NEURAL_KEY: u64 = 1;
const LAMBDA_KEY: u64 = 2;
const POSITION_KEY: u64 = 10;

/// What a resumed run must agree with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    emb_dim: u64,
    hidden: u64,
    out_dim: u64,
    epochs: u64,
    threads: u64,
}

impl Shape {
    fn of(cfg: &NeuralConfig) -> Shape {
        Shape {
            emb_dim: cfg.emb_dim as u64,
            hidden: cfg.hidden as u64,
            out_dim: cfg.out_dim as u64,
            epochs: cfg.epochs as u64,
            threads: cfg.threads as u64,
        }
    }

    fn encode(&self) -> Vec<f32> {
        state_row(&[
            self.emb_dim,
            self.hidden,
            self.out_dim,
            self.epochs,
            self.threads,
        ])
    }

    fn decode(r: &[f32]) -> Option<Shape> {
        let [emb_dim, hidden, out_dim, epochs, threads] = state_fields(r)?;
        (emb_dim > 0).then_some(Shape {
            emb_dim,
            hidden,
            out_dim,
            epochs,
            threads,
        })
    }
}

/// A progress snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub tokens_done: u64,
    pub tokens_total: u64,
    pub tokens_per_sec: f64,
    /// Mean sampled-softmax loss since the last snapshot.
    pub loss: f64,
}

/// What a training run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub vocab_size: usize,
    pub tokens_done: u64,
    pub seconds: f64,
    pub tokens_per_sec: f64,
    /// `Some(fraction done)` when this run resumed an interrupted one.
    pub resumed_from: Option<f64>,
    pub already_done: bool,
}

fn validate(cfg: &NeuralConfig) -> Result<()> {
    let bad = |what: &str| Err(TrainError::Invalid(what.to_string()));
    if cfg.emb_dim == 0 || cfg.hidden == 0 || cfg.out_dim == 0 {
        return bad("--emb-dim, --hidden and --out-dim must be positive");
    }
    if cfg.samples == 0 || cfg.batch == 0 || cfg.threads == 0 {
        return bad("--samples, --batch and --threads must be positive");
    }
    if !(cfg.lr > 0.0 && cfg.lr.is_finite() && cfg.dense_lr > 0.0 && cfg.dense_lr.is_finite()) {
        return bad("--lr and --dense-lr must be positive");
    }
    if !(cfg.noise_power.is_finite() && cfg.noise_power >= 0.0) {
        return bad("--noise-power must be at least 0");
    }
    Ok(())
}

fn adagrad(lr: f32) -> UpdateRule {
    UpdateRule::Adagrad {
        lr,
        eps: 1e-8,
        initial_accumulator: 0.1,
    }
}

/// The vocabulary as the network sees it: keys in a fixed order and the noise distribution.
struct Words {
    keys: Vec<u64>,
    index: FxHashMap<u64, u32>,
    unk: u32,
    /// ln E[times drawn in one minibatch's `samples` draws], per word.
    log_expected: Vec<f32>,
    alias: WeightedAliasIndex<f64>,
}

impl Words {
    fn new(vocab: Vec<(u64, u64)>, power: f64, samples: usize, unk: u64) -> Result<Words> {
        let weights: Vec<f64> = vocab
            .iter()
            .map(|&(_, c)| (c as f64).powf(power) * f64::from(u8::from(c > 0)))
            .collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(TrainError::Invalid("the vocabulary is empty".into()));
        }
        let log_expected = weights
            .iter()
            .map(|&w| {
                let q = w / total;
                // P(drawn at least once) = 1 − (1 − q)^samples.
                let e = -(samples as f64 * (-q).ln_1p()).exp_m1();
                e.max(1e-30).ln() as f32
            })
            .collect();
        let alias = WeightedAliasIndex::new(weights)
            .map_err(|e| TrainError::Invalid(format!("noise distribution: {e}")))?;
        let keys: Vec<u64> = vocab.iter().map(|&(k, _)| k).collect();
        let index: FxHashMap<u64, u32> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();
        Ok(Words {
            unk: index[&unk],
            keys,
            index,
            log_expected,
            alias,
        })
    }

    fn id(&self, key: u64) -> u32 {
        self.index.get(&key).copied().unwrap_or(self.unk)
    }
}

/// Trains (or resumes) the neural model of `kn.model` on `corpus`, which must be the file the
/// counts came from (its dev lines are skipped the same way).
pub fn train(
    client: &BlockingClient,
    kn: &Kn,
    corpus: &Path,
    cfg: &NeuralConfig,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Report> {
    validate(cfg)?;
    let model = &kn.model;
    let st = ngram::state_table(model);
    let corpus_len = std::fs::metadata(corpus)
        .map_err(|e| TrainError::io(format!("reading {}", corpus.display()), e))?
        .len();
    if corpus_len != kn.meta.corpus_len {
        return Err(TrainError::Mismatch {
            model: model.clone(),
            reason: format!(
                "its counts came from a corpus of {} bytes; {} has {corpus_len}",
                kn.meta.corpus_len,
                corpus.display()
            ),
        });
    }
    let ctx = kn.order() - 1;
    let want = Shape::of(cfg);
    let pos_keys: Vec<u64> = (0..cfg.threads as u64).map(|i| POSITION_KEY + i).collect();
    let existing = Shape::decode(&client.pull(&st, &[NEURAL_KEY])?);
    let (positions, resumed) = match existing {
        Some(shape) => {
            let same_network = Shape {
                epochs: want.epochs,
                ..shape
            } == want;
            if !same_network {
                return Err(TrainError::Mismatch {
                    model: model.clone(),
                    reason: format!(
                        "its network was started as {shape:?}; this run asks for {want:?} (use \
                         the same flags to resume, or another --model)"
                    ),
                });
            }
            if shape.epochs != want.epochs {
                // Another number of epochs: the workers carry on from where they are.
                set_row(client, &st, NEURAL_KEY, &shape.encode(), &want.encode())?;
            }
            let rows = client.pull(&st, &pos_keys)?;
            let p = rows
                .chunks(STATE_DIM)
                .map(|r| {
                    Position::decode(r).ok_or_else(|| TrainError::Mismatch {
                        model: model.clone(),
                        reason: "a worker position does not decode".into(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (p, true)
        }
        None => {
            for t in [
                emb_table(model),
                w1_table(model),
                w2_table(model),
                out_table(model),
            ] {
                if client.describe_table(&t).is_ok() {
                    client.drop_table(&t)?;
                }
            }
            let (e, h, d) = (cfg.emb_dim, cfg.hidden, cfg.out_dim);
            let glorot = |fan_in: usize, fan_out: usize| {
                let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
                Initializer::Uniform { low: -a, high: a }
            };
            client.create_table(
                TableSpec::new(emb_table(model), e as u32)
                    .with_init(Initializer::Normal { std: 0.1 })
                    .with_rule(adagrad(cfg.lr))
                    .with_seed(cfg.seed),
            )?;
            client.create_table(
                TableSpec::new(w1_table(model), (ctx * e + 1) as u32)
                    .with_init(glorot(ctx * e, h))
                    .with_rule(adagrad(cfg.dense_lr))
                    .with_seed(cfg.seed + 1),
            )?;
            client.create_table(
                TableSpec::new(w2_table(model), (h + 1) as u32)
                    .with_init(glorot(h, d))
                    .with_rule(adagrad(cfg.dense_lr))
                    .with_seed(cfg.seed + 2),
            )?;
            client.create_table(
                TableSpec::new(out_table(model), (d + 1) as u32)
                    .with_init(Initializer::Normal { std: 0.01 })
                    .with_rule(adagrad(cfg.lr))
                    .with_seed(cfg.seed + 3),
            )?;
            let p: Vec<Position> = (0..cfg.threads)
                .map(|i| Position {
                    epoch: 0,
                    offset: part_range(corpus_len, i, cfg.threads).0,
                    done: 0,
                })
                .collect();
            let values: Vec<f32> = p.iter().flat_map(|p| p.encode()).collect();
            // Positions may be left from an earlier network of this model: set, not add.
            let old = client.pull(&st, &pos_keys)?;
            let delta: Vec<f32> = values.iter().zip(&old).map(|(n, o)| n - o).collect();
            client.push(&st, &pos_keys, &delta)?;
            // The shape row last: it marks the network as created.
            client.push(&st, &[NEURAL_KEY], &want.encode())?;
            client.checkpoint()?;
            (p, false)
        }
    };
    let tokens_total = kn.meta.tokens * cfg.epochs as u64;
    let done_before: u64 = positions.iter().map(|p| p.done).sum();
    let vocab = kn.vocabulary(client)?;
    let mut report = Report {
        vocab_size: vocab.len(),
        resumed_from: resumed.then(|| done_before as f64 / tokens_total.max(1) as f64),
        ..Report::default()
    };
    if positions.iter().all(|p| p.epoch >= cfg.epochs as u64) {
        report.already_done = true;
        return Ok(report);
    }
    let words = Words::new(vocab, cfg.noise_power, cfg.samples, kn.unk())?;
    let shared = Shared {
        cfg,
        model,
        corpus,
        corpus_len,
        ctx,
        dev_every: kn.meta.dev_every,
        words,
        done: AtomicU64::new(done_before),
        loss: Mutex::new((0.0, 0)),
        failed: AtomicBool::new(false),
    };
    let started = Instant::now();
    let result: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("nlm-worker-{i}"))
                    .spawn_scoped(s, move || {
                        let r = Worker::new(shared, client, i, p).run();
                        if r.is_err() {
                            shared.failed.store(true, Ordering::SeqCst);
                        }
                        r
                    })
                    .map_err(|e| TrainError::io("starting a worker thread", e))
            })
            .collect::<Result<_>>()?;
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(250));
            on_progress(&shared.progress(started, done_before, tokens_total));
        }
        on_progress(&shared.progress(started, done_before, tokens_total));
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(TrainError::Invalid("a worker thread panicked".into())))
        })
    });
    result?;
    client.checkpoint()?;
    report.seconds = started.elapsed().as_secs_f64();
    report.tokens_done = shared.done.load(Ordering::Relaxed) - done_before;
    report.tokens_per_sec = report.tokens_done as f64 / report.seconds.max(1e-9);
    Ok(report)
}

struct Shared<'a> {
    cfg: &'a NeuralConfig,
    model: &'a str,
    corpus: &'a Path,
    corpus_len: u64,
    ctx: usize,
    dev_every: u64,
    words: Words,
    done: AtomicU64,
    loss: Mutex<(f64, u64)>,
    failed: AtomicBool,
}

impl Shared<'_> {
    fn progress(&self, started: Instant, done_before: u64, total: u64) -> Progress {
        let done = self.done.load(Ordering::Relaxed);
        let mut l = self.loss.lock().unwrap_or_else(|e| e.into_inner());
        let loss = if l.1 > 0 { l.0 / l.1 as f64 } else { 0.0 };
        *l = (0.0, 0);
        Progress {
            tokens_done: done,
            tokens_total: total,
            tokens_per_sec: (done - done_before) as f64 / started.elapsed().as_secs_f64().max(1e-9),
            loss,
        }
    }
}

/// The contexts (as word keys, `<s>`-padded) and words of a minibatch.
#[derive(Default)]
struct Examples {
    ctx: Vec<u64>,
    target: Vec<u64>,
}

impl Examples {
    fn add_sentence(&mut self, s: &[u64], c: usize, bos: u64) {
        for j in 1..s.len() {
            for i in 0..c {
                // Position j − c + i, or <s> before the sentence.
                let p = (j + i).checked_sub(c);
                self.ctx.push(p.map_or(bos, |p| s[p]));
            }
            self.target.push(s[j]);
        }
    }

    fn len(&self) -> usize {
        self.target.len()
    }
}

/// Rows pulled for a minibatch, by key.
struct Local {
    index: FxHashMap<u64, u32>,
    keys: Vec<u64>,
}

impl Local {
    fn new() -> Local {
        Local {
            index: FxHashMap::default(),
            keys: Vec::new(),
        }
    }

    fn slot(&mut self, key: u64) -> usize {
        let n = self.keys.len() as u32;
        *self.index.entry(key).or_insert_with(|| {
            self.keys.push(key);
            n
        }) as usize
    }
}

struct Worker<'a> {
    s: &'a Shared<'a>,
    client: &'a BlockingClient,
    part: usize,
    pos: Position,
    written: Vec<f32>,
    rng: SmallRng,
    last_record: Instant,
}

impl<'a> Worker<'a> {
    fn new(s: &'a Shared<'a>, client: &'a BlockingClient, part: usize, pos: Position) -> Self {
        Worker {
            s,
            client,
            part,
            written: pos.encode(),
            pos,
            rng: SmallRng::seed_from_u64(
                s.cfg.seed ^ (part as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ pos.done,
            ),
            last_record: Instant::now(),
        }
    }

    fn record(&mut self) -> Result<()> {
        let new = self.pos.encode();
        let st = ngram::state_table(self.s.model);
        set_row(
            self.client,
            &st,
            POSITION_KEY + self.part as u64,
            &self.written,
            &new,
        )?;
        self.written = new;
        self.last_record = Instant::now();
        Ok(())
    }

    fn run(mut self) -> Result<()> {
        let cfg = self.s.cfg;
        let (start, end) = part_range(self.s.corpus_len, self.part, cfg.threads);
        let bos = word_key(BOS);
        let mut sentence = Vec::new();
        while self.pos.epoch < cfg.epochs as u64 {
            let resume = (self.pos.offset != start).then_some(self.pos.offset);
            let mut reader = PartReader::open(self.s.corpus, start, end, resume)?;
            loop {
                if self.s.failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let mut ex = Examples::default();
                while ex.len() < cfg.batch {
                    let at = reader.position();
                    let Some(line) = reader.next_line()? else {
                        break;
                    };
                    if ngram::is_dev(self.s.dev_every, at) {
                        continue;
                    }
                    ngram::sentence(line, &mut sentence);
                    ex.add_sentence(&sentence, self.s.ctx, bos);
                }
                if ex.len() == 0 {
                    break;
                }
                let loss = self.train_batch(&ex)?;
                self.pos.offset = reader.position();
                self.pos.done += ex.len() as u64;
                self.s.done.fetch_add(ex.len() as u64, Ordering::Relaxed);
                {
                    let mut l = self.s.loss.lock().unwrap_or_else(|e| e.into_inner());
                    l.0 += loss;
                    l.1 += ex.len() as u64;
                }
                if self.last_record.elapsed().as_secs_f64() >= cfg.checkpoint_secs {
                    self.record()?;
                }
            }
            self.pos.epoch += 1;
            self.pos.offset = start;
            self.record()?;
        }
        Ok(())
    }

    /// One minibatch: pull, forward, backward, push. Returns the summed loss.
    fn train_batch(&mut self, ex: &Examples) -> Result<f64> {
        let cfg = self.s.cfg;
        let model = self.s.model;
        let (e, h, d, c) = (cfg.emb_dim, cfg.hidden, cfg.out_dim, self.s.ctx);
        let b = ex.len();
        let i_dim = c * e;
        let words = &self.s.words;

        // Which rows the batch needs.
        let mut emb = Local::new();
        let ctx_slots: Vec<usize> = ex.ctx.iter().map(|&k| emb.slot(k)).collect();
        let mut out = Local::new();
        let target_ids: Vec<u32> = ex.target.iter().map(|&k| words.id(k)).collect();
        let target_slots: Vec<usize> = target_ids
            .iter()
            .map(|&i| out.slot(words.keys[i as usize]))
            .collect();
        // Noise: distinct words drawn from q.
        let alias = &words.alias;
        let mut noise_ids: Vec<u32> = (0..cfg.samples)
            .map(|_| alias.sample(&mut self.rng) as u32)
            .collect();
        noise_ids.sort_unstable();
        noise_ids.dedup();
        let noise_slots: Vec<usize> = noise_ids
            .iter()
            .map(|&i| out.slot(words.keys[i as usize]))
            .collect();
        let k = noise_ids.len();

        let emb_rows = self.client.pull(&emb_table(model), &emb.keys)?;
        let out_rows = self.client.pull(&out_table(model), &out.keys)?;
        let w1_keys: Vec<u64> = (0..h as u64).collect();
        let w2_keys: Vec<u64> = (0..d as u64).collect();
        let w1 = self.client.pull(&w1_table(model), &w1_keys)?;
        let w2 = self.client.pull(&w2_table(model), &w2_keys)?;
        let (w1s, w2s, os) = (i_dim + 1, h + 1, d + 1);

        // Forward.
        let mut x = vec![0.0f32; b * i_dim];
        for (xr, slots) in x.chunks_exact_mut(e).zip(&ctx_slots) {
            xr.copy_from_slice(&emb_rows[slots * e..(slots + 1) * e]);
        }
        let (hid, z) = forward(&x, b, &w1, &w2, h, d);

        // Noise rows as one matrix, and logits against them.
        let mut on = vec![0.0f32; k * d];
        for (r, &slot) in on.chunks_exact_mut(d).zip(&noise_slots) {
            r.copy_from_slice(&out_rows[slot * os..slot * os + d]);
        }
        let mut logits = vec![0.0f32; b * k];
        for r in logits.chunks_exact_mut(k) {
            for ((v, &slot), &id) in r.iter_mut().zip(&noise_slots).zip(&noise_ids) {
                *v = out_rows[slot * os + d] - words.log_expected[id as usize];
            }
        }
        gemm(
            1.0,
            M::new(&z, b, d),
            M::new(&on, k, d).t(),
            1.0,
            &mut logits,
        );

        // Softmax over (word, noise…) per token; gradients of the summed loss.
        let mut loss = 0.0f64;
        let mut dt = vec![0.0f32; b];
        for i in 0..b {
            let (t_id, t_slot) = (target_ids[i], target_slots[i]);
            let orow = &out_rows[t_slot * os..(t_slot + 1) * os];
            let zi = &z[i * d..(i + 1) * d];
            let tl = zi.iter().zip(orow).map(|(a, b)| a * b).sum::<f32>() + orow[d]
                - words.log_expected[t_id as usize];
            let row = &mut logits[i * k..(i + 1) * k];
            // A noise word equal to the token is not a competitor.
            if let Ok(j) = noise_ids.binary_search(&t_id) {
                row[j] = f32::NEG_INFINITY;
            }
            let m = row.iter().copied().fold(tl, f32::max);
            let mut sum = linalg::exp(tl - m);
            for v in row.iter_mut() {
                *v = linalg::exp(*v - m);
                sum += *v;
            }
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
            if let Ok(j) = noise_ids.binary_search(&t_id) {
                row[j] = 0.0;
            }
            let pt = linalg::exp(tl - m) * inv;
            loss -= (pt.max(1e-30) as f64).ln();
            dt[i] = pt - 1.0;
        }
        let dl = logits; // now ∂loss/∂logit of the noise columns

        // Output rows' gradients: [∂o (D), ∂c].
        let mut gout = vec![0.0f32; out.keys.len() * os];
        let mut gon = vec![0.0f32; k * d];
        gemm(1.0, M::new(&dl, b, k).t(), M::new(&z, b, d), 0.0, &mut gon);
        let dl_sums = column_sums(&dl, k);
        for (j, &slot) in noise_slots.iter().enumerate() {
            let g = &mut gout[slot * os..(slot + 1) * os];
            for (a, &v) in g[..d].iter_mut().zip(&gon[j * d..(j + 1) * d]) {
                *a += v;
            }
            g[d] += dl_sums[j];
        }
        for i in 0..b {
            let slot = target_slots[i];
            let g = &mut gout[slot * os..(slot + 1) * os];
            for (a, &v) in g[..d].iter_mut().zip(&z[i * d..(i + 1) * d]) {
                *a += dt[i] * v;
            }
            g[d] += dt[i];
        }
        // ∂z = dl · O_noise + dt · o(word).
        let mut dz = vec![0.0f32; b * d];
        gemm(1.0, M::new(&dl, b, k), M::new(&on, k, d), 0.0, &mut dz);
        for i in 0..b {
            let slot = target_slots[i];
            let orow = &out_rows[slot * os..slot * os + d];
            for (a, &v) in dz[i * d..(i + 1) * d].iter_mut().zip(orow) {
                *a += dt[i] * v;
            }
        }
        // W2: [∂W2 | ∂b2] = [dzᵀ·hid | Σ dz].
        let mut gw2 = vec![0.0f32; d * h];
        gemm(
            1.0,
            M::new(&dz, b, d).t(),
            M::new(&hid, b, h),
            0.0,
            &mut gw2,
        );
        // ∂hid = dz · W2, then through tanh.
        let mut dh = vec![0.0f32; b * h];
        gemm(
            1.0,
            M::new(&dz, b, d),
            M::strided(&w2, d, h, w2s),
            0.0,
            &mut dh,
        );
        for (g, &v) in dh.iter_mut().zip(&hid) {
            *g *= 1.0 - v * v;
        }
        let mut gw1 = vec![0.0f32; h * i_dim];
        gemm(
            1.0,
            M::new(&dh, b, h).t(),
            M::new(&x, b, i_dim),
            0.0,
            &mut gw1,
        );
        let mut dx = vec![0.0f32; b * i_dim];
        gemm(
            1.0,
            M::new(&dh, b, h),
            M::strided(&w1, h, i_dim, w1s),
            0.0,
            &mut dx,
        );

        // Assemble the pushes.
        let gw1 = with_bias(&gw1, h, i_dim, &dh);
        let gw2 = with_bias(&gw2, d, h, &dz);
        let mut gemb = vec![0.0f32; emb.keys.len() * e];
        for (g, &slot) in dx.chunks_exact(e).zip(&ctx_slots) {
            for (a, &v) in gemb[slot * e..(slot + 1) * e].iter_mut().zip(g) {
                *a += v;
            }
        }
        self.client.push(&emb_table(model), &emb.keys, &gemb)?;
        self.client.push(&out_table(model), &out.keys, &gout)?;
        self.client.push(&w1_table(model), &w1_keys, &gw1)?;
        self.client.push(&w2_table(model), &w2_keys, &gw2)?;
        Ok(loss)
    }
}

/// The network from its input `x` (`b` rows of context embeddings) to the hidden layer
/// `tanh(W1·x + b1)` (`b × h`) and the projection `W2·hid + b2` (`b × d`). `w1` and `w2` are
/// the layers' rows as stored, weights then bias.
fn forward(
    x: &[f32],
    b: usize,
    w1: &[f32],
    w2: &[f32],
    h: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let i_dim = x.len() / b.max(1);
    let layer = |input: &[f32], w: &[f32], rows: usize, cols: usize| {
        let mut out = vec![0.0f32; b * rows];
        for r in out.chunks_exact_mut(rows) {
            for (j, v) in r.iter_mut().enumerate() {
                *v = w[j * (cols + 1) + cols];
            }
        }
        gemm(
            1.0,
            M::new(input, b, cols),
            M::strided(w, rows, cols, cols + 1).t(),
            1.0,
            &mut out,
        );
        out
    };
    let mut hid = layer(x, w1, h, i_dim);
    linalg::tanh_in_place(&mut hid);
    let z = layer(&hid, w2, d, h);
    (hid, z)
}

/// Sums of the columns of a row-major matrix with `cols` columns.
fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; cols];
    for row in m.chunks_exact(cols) {
        for (a, &v) in s.iter_mut().zip(row) {
            *a += v;
        }
    }
    s
}

/// `g` (`rows × cols`) with a last column of `Σ_i d[i, r]` (`d` has `rows` columns): a dense
/// layer's weight and bias gradients as the rows the server stores.
fn with_bias(g: &[f32], rows: usize, cols: usize, d: &[f32]) -> Vec<f32> {
    let sums = column_sums(d, rows);
    let mut out = Vec::with_capacity(rows * (cols + 1));
    for (r, &sum) in sums.iter().enumerate() {
        out.extend_from_slice(&g[r * cols..(r + 1) * cols]);
        out.push(sum);
    }
    out
}

/// A trained network held for evaluation: dense layers and every output row in memory,
/// context embeddings pulled per batch.
#[derive(Debug)]
pub struct Neural {
    model: String,
    ctx: usize,
    e: usize,
    h: usize,
    d: usize,
    w1: Vec<f32>,
    w2: Vec<f32>,
    /// `V × D` output embeddings, and the biases.
    out: Vec<f32>,
    bias: Vec<f32>,
    index: FxHashMap<u64, u32>,
    unk: u32,
    threads: usize,
}

impl Neural {
    /// The model's network, or `None` if it has none.
    pub fn load(client: &BlockingClient, kn: &Kn, threads: usize) -> Result<Option<Neural>> {
        let model = &kn.model;
        let Some(shape) = Shape::decode(&client.pull(&ngram::state_table(model), &[NEURAL_KEY])?)
        else {
            return Ok(None);
        };
        let (e, h, d) = (
            shape.emb_dim as usize,
            shape.hidden as usize,
            shape.out_dim as usize,
        );
        let ctx = kn.order() - 1;
        let w1 = client.pull(&w1_table(model), &(0..h as u64).collect::<Vec<_>>())?;
        let w2 = client.pull(&w2_table(model), &(0..d as u64).collect::<Vec<_>>())?;
        let vocab = kn.vocabulary(client)?;
        let keys: Vec<u64> = vocab.iter().map(|&(k, _)| k).collect();
        let mut out = Vec::with_capacity(keys.len() * d);
        let mut bias = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(65_536) {
            let rows = client.pull(&out_table(model), chunk)?;
            for r in rows.chunks_exact(d + 1) {
                out.extend_from_slice(&r[..d]);
                bias.push(r[d]);
            }
        }
        let index: FxHashMap<u64, u32> = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();
        Ok(Some(Neural {
            model: model.clone(),
            ctx,
            e,
            h,
            d,
            w1,
            w2,
            out,
            bias,
            unk: index[&kn.unk()],
            index,
            threads: threads.max(1),
        }))
    }

    pub fn vocab_size(&self) -> usize {
        self.bias.len()
    }

    /// Output projections `z` (`queries × D`) of contexts.
    fn project(&self, client: &BlockingClient, queries: &[(&[u64], u64)]) -> Result<Vec<f32>> {
        let (e, h, d, c) = (self.e, self.h, self.d, self.ctx);
        let bos = word_key(BOS);
        let b = queries.len();
        let mut emb = Local::new();
        let mut slots = Vec::with_capacity(b * c);
        for &(hist, _) in queries {
            for i in 0..c {
                let p = (hist.len() + i).checked_sub(c);
                slots.push(emb.slot(p.map_or(bos, |p| hist[p])));
            }
        }
        let rows = client.pull(&emb_table(&self.model), &emb.keys)?;
        let i_dim = c * e;
        let mut x = vec![0.0f32; b * i_dim];
        for (xr, &slot) in x.chunks_exact_mut(e).zip(&slots) {
            xr.copy_from_slice(&rows[slot * e..(slot + 1) * e]);
        }
        let (_, z) = forward(&x, b, &self.w1, &self.w2, h, d);
        Ok(z)
    }

    /// Natural-log probabilities of (history, word) queries (history: the words before, from
    /// `<s>`; unknown words already `<unk>`), each normalized over the whole vocabulary.
    pub fn log_probs(
        &self,
        client: &BlockingClient,
        queries: &[(&[u64], u64)],
    ) -> Result<Vec<f64>> {
        let z = self.project(client, queries)?;
        let targets: Vec<u32> = queries
            .iter()
            .map(|&(_, w)| self.index.get(&w).copied().unwrap_or(self.unk))
            .collect();
        let d = self.d;
        let per = queries.len().div_ceil(self.threads).max(1);
        let mut out = vec![0.0f64; queries.len()];
        std::thread::scope(|s| {
            for ((z, t), o) in z
                .chunks(per * d)
                .zip(targets.chunks(per))
                .zip(out.chunks_mut(per))
            {
                s.spawn(move || self.normalize(z, t, o));
            }
        });
        Ok(out)
    }

    /// The full distribution after one history (for checks): ln p of every vocabulary word,
    /// in the model's vocabulary order.
    pub fn distribution(&self, client: &BlockingClient, history: &[u64]) -> Result<Vec<f64>> {
        let z = self.project(client, &[(history, 0)])?;
        let mut logits = vec![0.0f32; self.vocab_size()];
        logits.copy_from_slice(&self.bias);
        gemm(
            1.0,
            M::new(&z, 1, self.d),
            M::new(&self.out, self.vocab_size(), self.d).t(),
            1.0,
            &mut logits,
        );
        let mut lse = [0.0f64];
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        linalg::add_exp_sums(&logits, logits.len(), &[m], &mut lse);
        let log_z = m as f64 + lse[0].ln();
        Ok(logits.iter().map(|&l| l as f64 - log_z).collect())
    }

    /// ln p of `targets` given projections `z`, by a streaming log-sum-exp over tiles of the
    /// vocabulary.
    fn normalize(&self, z: &[f32], targets: &[u32], out: &mut [f64]) {
        // A tile of logits stays in L2 between the product and the passes over it.
        const ROWS: usize = 256;
        const TILE: usize = 1024;
        let (d, v) = (self.d, self.vocab_size());
        let mut logits = vec![0.0f32; ROWS * TILE];
        let mut tile_max = vec![0.0f32; ROWS];
        for ((z, t), o) in z
            .chunks(ROWS * d)
            .zip(targets.chunks(ROWS))
            .zip(out.chunks_mut(ROWS))
        {
            let n = t.len();
            let mut max = vec![f32::NEG_INFINITY; n];
            let mut sum = vec![0.0f64; n];
            for start in (0..v).step_by(TILE) {
                let w = TILE.min(v - start);
                let tile = &mut logits[..n * w];
                gemm(
                    1.0,
                    M::new(z, n, d),
                    M::new(&self.out[start * d..(start + w) * d], w, d).t(),
                    0.0,
                    tile,
                );
                linalg::add_bias_max(tile, &self.bias[start..start + w], &mut tile_max[..n]);
                for (i, &m) in tile_max[..n].iter().enumerate() {
                    if m > max[i] {
                        sum[i] *= ((max[i] - m) as f64).exp();
                        max[i] = m;
                    }
                }
                linalg::add_exp_sums(tile, w, &max, &mut sum);
            }
            for i in 0..n {
                let tr = t[i] as usize;
                let zi = &z[i * d..(i + 1) * d];
                let l = zi
                    .iter()
                    .zip(&self.out[tr * d..(tr + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
                    + self.bias[tr];
                o[i] = l as f64 - (max[i] as f64 + sum[i].ln());
            }
        }
    }
}

/// The interpolation weight of the neural model, if tuned.
pub fn lambda(client: &BlockingClient, model: &str) -> Result<Option<f64>> {
    let r = client.pull(&ngram::state_table(model), &[LAMBDA_KEY])?;
    Ok(state_fields::<2>(&r)
        .filter(|f| f[1] == 1)
        .map(|f| f[0] as f64 / 1e6))
}

/// Records the interpolation weight.
pub fn set_lambda(client: &BlockingClient, model: &str, lambda: f64) -> Result<()> {
    let st = ngram::state_table(model);
    let old = client.pull(&st, &[LAMBDA_KEY])?;
    let new = state_row(&[(lambda * 1e6).round() as u64, 1]);
    set_row(client, &st, LAMBDA_KEY, &old, &new)
}

/// The weight λ in `λ·p_neural + (1 − λ)·p_kn` that maximizes the likelihood of paired
/// natural-log probabilities (a fine grid, then EM steps from its best point).
pub fn tune_lambda(neural: &[f64], kn: &[f64]) -> f64 {
    let ll = |l: f64| -> f64 {
        neural
            .iter()
            .zip(kn)
            .map(|(&a, &b)| (l * a.exp() + (1.0 - l) * b.exp()).ln())
            .sum()
    };
    let mut best = (0.0, ll(0.0));
    for i in 1..=100 {
        let l = i as f64 / 100.0;
        let v = ll(l);
        if v > best.1 {
            best = (l, v);
        }
    }
    let mut l = best.0.clamp(1e-4, 1.0 - 1e-4);
    for _ in 0..50 {
        let post: f64 = neural
            .iter()
            .zip(kn)
            .map(|(&a, &b)| {
                let (pa, pb) = (l * a.exp(), (1.0 - l) * b.exp());
                pa / (pa + pb)
            })
            .sum();
        l = post / neural.len().max(1) as f64;
    }
    if ll(l) >= best.1 {
        l
    } else {
        best.0
    }
}

/// Interpolated natural-log probability.
pub fn mix(lambda: f64, neural: f64, kn: f64) -> f64 {
    (lambda * neural.exp() + (1.0 - lambda) * kn.exp()).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_padded_with_sentence_starts() {
        let mut ex = Examples::default();
        ex.add_sentence(&[0, 1, 2, 3], 2, 0);
        assert_eq!(ex.target, vec![1, 2, 3]);
        assert_eq!(ex.ctx, vec![0, 0, 0, 1, 1, 2]);
    }

    #[test]
    fn lambda_maximizes_likelihood() {
        // Neural is right on the first half, Kneser-Ney on the second: λ = 0.5.
        let n: Vec<f64> = (0..100)
            .map(|i| if i < 50 { 0.9f64.ln() } else { 0.1f64.ln() })
            .collect();
        let k: Vec<f64> = (0..100)
            .map(|i| if i < 50 { 0.1f64.ln() } else { 0.9f64.ln() })
            .collect();
        assert!((tune_lambda(&n, &k) - 0.5).abs() < 1e-3);
        assert_eq!(tune_lambda(&k, &k), tune_lambda(&k, &k));
        assert!((mix(0.25, 0.5f64.ln(), 0.1f64.ln()).exp() - 0.2).abs() < 1e-12);
    }
}
