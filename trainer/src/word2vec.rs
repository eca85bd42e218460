//! word2vec over the parameter server: skip-gram or CBOW with negative sampling, frequent-word
//! subsampling and linearly decaying learning rate, trained by asynchronous SGD.
//!
//! Each worker thread reads its own part of the corpus (see `corpus`) and works in minibatches
//! of about `batch_words` words:
//!
//! 1. plan the batch: look its words up (see below), subsample, draw each position's reduced
//!    window, and draw a pool of
//!    `negative_pool` noise words from unigram^0.75 (each training example then takes its
//!    `negative` negatives uniformly from that pool, so the noise distribution is unchanged in
//!    expectation while the batch touches a bounded number of output rows);
//! 2. pull the input rows of the batch's words and the output rows of its targets and pool;
//! 3. train on those local copies, without locks;
//! 4. push the deltas (`add` rule), so concurrent workers' updates add up on the servers.
//!
//! A trainer's memory does not grow with the vocabulary. Words are identified by their keys
//! (stable hashes), counts live in the server (`vocab`), and a process holds only the
//! `cached_words` most frequent words (with their subsampling probabilities) and a fixed-size
//! noise table. A word outside that cache is looked up in the server, once per batch, and
//! only when the cache is not the whole vocabulary.
//!
//! A model `<m>` is four tables: `<m>.in` (word vectors), `<m>.out` (context vectors),
//! `<m>.vocab` (see `vocab`) and `<m>.state` (configuration and each worker's position). A
//! worker records its position every `checkpoint_secs`; after a crash of the trainer or a
//! shard, the same command resumes every worker from its last recorded position.
//!
//! Several trainer processes can train one model against one cluster: process `i` of `n`
//! (`process`, `processes`) runs its `threads` workers on parts `i·threads …` of the corpus's
//! `n·threads` byte ranges. Process 0 counts the vocabulary and creates the model; the others
//! wait for its configuration row, then load the vocabulary from the server.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, Initializer, TableSpec};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;

use crate::corpus::{part_range, PartReader, Position};
use crate::error::{Result, TrainError};
use crate::kernel::{scale, Axpy, Kernel, SigmoidTable};
use crate::keys::{set_row, state_fields, state_row, word_key, STATE_DIM};
use crate::vocab::{self, NoiseTable};

/// Training configuration (the flags of `paramdb train word2vec`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Model name: the prefix of its tables.
    pub model: String,
    pub dim: u32,
    pub window: usize,
    pub negative: usize,
    pub min_count: u64,
    pub sample: f64,
    pub epochs: u32,
    pub alpha: f32,
    pub min_alpha: f32,
    pub cbow: bool,
    /// Worker threads of this process.
    pub threads: usize,
    /// This trainer process's number, of `processes` training the same model at once on
    /// disjoint parts of the corpus (against the same cluster).
    pub process: usize,
    pub processes: usize,
    /// How long a process other than 0 waits for process 0 to create the model.
    pub init_wait: Duration,
    /// Words per minibatch (per worker); `default_batch_words` gives each mode's default.
    pub batch_words: usize,
    /// Noise words drawn per minibatch.
    pub negative_pool: usize,
    /// Most distinct words held in memory while counting; then their counts are added to the
    /// server and counting goes on with an empty table.
    pub count_spill_words: usize,
    /// Most frequent words whose counts a process keeps in memory; other words are looked up
    /// in the server when a batch meets them.
    pub cached_words: usize,
    /// Entries of the unigram^0.75 noise table.
    pub noise_table: usize,
    pub seed: u64,
    /// How often each worker records its position.
    pub checkpoint_secs: f64,
    /// Take the vocabulary's counts from this word2vec.c vocabulary file (`word count` per
    /// line, as `-save-vocab` writes it) instead of counting the corpus.
    pub read_vocab: Option<std::path::PathBuf>,
    /// Lifecycle policies of the model's input and output tables (expiry, admission, size
    /// cap), set when the model is created. `None`: whatever the model has (none for a new
    /// one). A resumed model with other policies is refused.
    pub lifecycle: Option<paramdb_client::Lifecycle>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: "w2v".into(),
            dim: 100,
            window: 5,
            negative: 5,
            min_count: 5,
            sample: 1e-3,
            epochs: 5,
            alpha: 0.025,
            min_alpha: 0.0001,
            cbow: false,
            threads: 2,
            process: 0,
            processes: 1,
            init_wait: Duration::from_secs(1800),
            batch_words: 50_000,
            negative_pool: 8192,
            count_spill_words: 1 << 20,
            cached_words: 1 << 20,
            noise_table: 1 << 22,
            seed: 1,
            checkpoint_secs: 10.0,
            read_vocab: None,
            lifecycle: None,
        }
    }
}

/// The default minibatch of each mode. CBOW does about a sixth of skip-gram's work per word,
/// so the rows a minibatch pulls and pushes weigh more in it; at 100,000 words its quality is
/// as good as at 50,000 (BENCHMARKS.md), and it trains faster. Skip-gram stays at 50,000,
/// where its quality was measured.
pub fn default_batch_words(cbow: bool) -> usize {
    if cbow {
        100_000
    } else {
        50_000
    }
}

/// A snapshot for progress displays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// In-vocabulary words processed (before subsampling), over all epochs.
    pub words_done: u64,
    pub words_total: u64,
    pub alpha: f32,
    /// Mean negative-sampling loss per training example since the last snapshot.
    pub loss: f64,
    /// Corpus words (every token read, in the vocabulary or not) per second of wall time since
    /// this run started, counting included: the figure gensim and word2vec.c users compare.
    pub words_per_sec: f64,
    /// In-vocabulary words per second of training alone.
    pub train_words_per_sec: f64,
    pub epoch: u32,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub vocab_size: usize,
    pub train_words: u64,
    /// `Some(fraction done)` when this run resumed an interrupted one.
    pub resumed_from: Option<f64>,
    /// The model was already fully trained; nothing was done.
    pub already_done: bool,
    /// In-vocabulary words this run trained on (before subsampling).
    pub words_done: u64,
    /// Corpus words this run read while training: every token, in the vocabulary or not.
    pub corpus_words: u64,
    /// Wall time of the whole run, counting the vocabulary included.
    pub wall_seconds: f64,
    /// Time spent training (after the vocabulary was counted).
    pub seconds: f64,
    /// `corpus_words / wall_seconds`.
    pub words_per_sec: f64,
    /// `words_done / seconds`.
    pub train_words_per_sec: f64,
}

pub fn in_table(model: &str) -> String {
    format!("{model}.in")
}

pub fn out_table(model: &str) -> String {
    format!("{model}.out")
}

fn state_table(model: &str) -> String {
    format!("{model}.state")
}

const META_KEY: u64 = 0;

/// The `.state` meta row: what a resumed run must agree with.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Meta {
    threads: u64,
    epochs: u64,
    corpus_len: u64,
    train_words: u64,
    processes: u64,
}

impl Meta {
    fn encode(&self) -> Vec<f32> {
        state_row(&[
            self.threads,
            self.epochs,
            self.corpus_len,
            self.train_words,
            self.processes,
        ])
    }

    fn decode(r: &[f32]) -> Option<Meta> {
        let [threads, epochs, corpus_len, train_words, processes] = state_fields(r)?;
        Some(Meta {
            threads,
            epochs,
            corpus_len,
            train_words,
            processes,
        })
    }
}

/// The table of a model's input vectors as a fresh run creates it: word2vec's initializer,
/// uniform in ±0.5/dim (the output vectors start at zero).
pub fn input_spec(model: &str, dim: u32, seed: u64) -> TableSpec {
    let half = 0.5 / dim as f32;
    TableSpec::new(in_table(model), dim)
        .with_init(Initializer::Uniform {
            low: -half,
            high: half,
        })
        .with_seed(seed)
}

/// The spec of `table` if it exists and holds a stored row.
fn stored_vectors(client: &BlockingClient, table: &str) -> Result<Option<TableSpec>> {
    let Ok(spec) = client.describe_table(table) else {
        return Ok(None);
    };
    for block in client.pull_range(table, paramdb_client::KeyRange::all()) {
        if !block?.keys.is_empty() {
            return Ok(Some(spec));
        }
    }
    Ok(None)
}

/// Trains (or resumes training) `cfg.model` on `corpus`. `on_progress` is called about four
/// times a second from the calling thread.
pub fn train(
    client: &BlockingClient,
    corpus: &Path,
    cfg: &Config,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> Result<Report> {
    validate(cfg)?;
    let run_started = Instant::now();
    let corpus_len = std::fs::metadata(corpus)
        .map_err(|e| TrainError::io(format!("reading {}", corpus.display()), e))?
        .len();
    let state_t = state_table(&cfg.model);
    let read_meta = || {
        client
            .pull(&state_t, &[META_KEY])
            .ok()
            .and_then(|r| Meta::decode(&r))
            .filter(|m| m.threads > 0)
    };
    let mut existing = read_meta();
    if existing.is_none() && cfg.process > 0 {
        // Process 0 counts the vocabulary and creates the model; the others wait for it.
        tracing::info!(model = %cfg.model, "waiting for trainer process 0 to create the model");
        let deadline = Instant::now() + cfg.init_wait;
        while existing.is_none() {
            if Instant::now() > deadline {
                return Err(TrainError::Invalid(format!(
                    "trainer process 0 did not create model {:?} within {:?}",
                    cfg.model, cfg.init_wait
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
            existing = read_meta();
        }
    }
    let parts = cfg.threads * cfg.processes;
    let first_part = cfg.process * cfg.threads;
    let my_keys: Vec<u64> = (0..cfg.threads)
        .map(|t| 1 + (first_part + t) as u64)
        .collect();

    let (summary, meta, positions, resumed) = match existing {
        Some(meta) => {
            let want = Meta {
                threads: cfg.threads as u64,
                epochs: cfg.epochs as u64,
                corpus_len,
                train_words: meta.train_words,
                processes: cfg.processes as u64,
            };
            if meta != want {
                return Err(TrainError::Mismatch {
                    model: cfg.model.clone(),
                    reason: format!(
                        "it was started with {} processes × {} threads, {} epochs on a corpus \
                         of {} bytes; this run has {} × {}, {} epochs, {} bytes (use the same \
                         flags and corpus to resume, or another --model)",
                        meta.processes,
                        meta.threads,
                        meta.epochs,
                        meta.corpus_len,
                        want.processes,
                        want.threads,
                        want.epochs,
                        want.corpus_len
                    ),
                });
            }
            if let Some(want) = cfg.lifecycle {
                let has = client.describe_table(&in_table(&cfg.model))?.lifecycle;
                if has != want {
                    return Err(TrainError::Mismatch {
                        model: cfg.model.clone(),
                        reason: format!(
                            "its tables have lifecycle {has}, and this run asks for {want} \
                             (change them with `paramdb lifecycle`, or leave the flags out)"
                        ),
                    });
                }
            }
            // Words below the minimum count were deleted when the model was created.
            let summary = vocab::summarize(client, &cfg.model, 1, cfg.cached_words)?;
            let rows = client.pull(&state_t, &my_keys)?;
            let positions: Vec<Position> = rows
                .chunks(STATE_DIM)
                .map(|r| {
                    Position::decode(r).ok_or_else(|| TrainError::Mismatch {
                        model: cfg.model.clone(),
                        reason: "a worker position does not decode".into(),
                    })
                })
                .collect::<Result<_>>()?;
            (summary, meta, positions, true)
        }
        None => {
            // No configuration is recorded: the tables are what a run that died before
            // recording it left (created, never pushed), or vectors imported into the model
            // (`paramdb import MODEL.in`). Vectors with stored rows are kept, and the run
            // starts warm from them; the vocabulary and positions are counted again.
            let mut warm = Vec::new();
            for t in [in_table(&cfg.model), out_table(&cfg.model)] {
                if let Some(spec) = stored_vectors(client, &t)? {
                    if spec.dim != cfg.dim {
                        return Err(TrainError::Mismatch {
                            model: cfg.model.clone(),
                            reason: format!(
                                "its table {t} holds vectors of dim {}, and this run has --dim {}",
                                spec.dim, cfg.dim
                            ),
                        });
                    }
                    if let Some(want) = cfg.lifecycle {
                        if spec.lifecycle != want {
                            client.set_lifecycle(&t, want)?;
                        }
                    }
                    warm.push(t);
                } else if client.describe_table(&t).is_ok() {
                    client.drop_table(&t)?;
                }
            }
            for t in [vocab::table(&cfg.model), state_t.clone()] {
                if client.describe_table(&t).is_ok() {
                    client.drop_table(&t)?;
                }
            }
            if !warm.is_empty() {
                tracing::info!(model = %cfg.model, tables = ?warm, "starting from the stored vectors");
            }
            let counted = match &cfg.read_vocab {
                Some(file) => {
                    vocab::load_counts_file(client, &cfg.model, file, cfg.count_spill_words)?
                }
                None => vocab::count_into(client, &cfg.model, corpus, cfg.count_spill_words)?,
            };
            let summary =
                vocab::summarize(client, &cfg.model, cfg.min_count.max(1), cfg.cached_words)?;
            tracing::info!(
                tokens = counted.tokens,
                spills = counted.spills,
                words = summary.words,
                "counted the vocabulary"
            );
            if summary.words == 0 {
                return Err(TrainError::Invalid(format!(
                    "no word of {} occurs at least {} times",
                    corpus.display(),
                    cfg.min_count
                )));
            }
            let lifecycle = cfg.lifecycle.unwrap_or_default();
            if !warm.contains(&in_table(&cfg.model)) {
                client.create_table(
                    input_spec(&cfg.model, cfg.dim, cfg.seed).with_lifecycle(lifecycle),
                )?;
            }
            if !warm.contains(&out_table(&cfg.model)) {
                client.create_table(
                    TableSpec::new(out_table(&cfg.model), cfg.dim).with_lifecycle(lifecycle),
                )?;
            }
            client.create_table(TableSpec::new(&state_t, STATE_DIM as u32))?;
            let meta = Meta {
                threads: cfg.threads as u64,
                epochs: cfg.epochs as u64,
                corpus_len,
                train_words: summary.total,
                processes: cfg.processes as u64,
            };
            // Every process's parts start at their beginning.
            let all: Vec<Position> = (0..parts)
                .map(|g| Position {
                    epoch: 0,
                    offset: part_range(corpus_len, g, parts).0,
                    done: 0,
                })
                .collect();
            let keys: Vec<u64> = (1..=parts as u64).collect();
            let values: Vec<f32> = all.iter().flat_map(|p| p.encode()).collect();
            client.push(&state_t, &keys, &values)?;
            // The meta row last: it is what marks the model as initialized.
            client.push(&state_t, &[META_KEY], &meta.encode())?;
            client.checkpoint()?;
            let mine = all[first_part..first_part + cfg.threads].to_vec();
            (summary, meta, mine, false)
        }
    };

    // This process's share of the words (its parts are `threads` of `parts` byte ranges).
    let words_total = meta.train_words * meta.epochs * cfg.threads as u64 / parts as u64;
    let done_before: u64 = positions.iter().map(|p| p.done).sum();
    let mut report = Report {
        vocab_size: summary.words as usize,
        train_words: meta.train_words,
        resumed_from: resumed.then(|| done_before as f64 / words_total.max(1) as f64),
        ..Report::default()
    };
    if positions.iter().all(|p| p.epoch >= meta.epochs) {
        report.already_done = true;
        return Ok(report);
    }

    let noise = vocab::noise_table(client, &cfg.model, &summary, cfg.noise_table)?;
    let complete = summary.complete();
    let known = summary
        .top
        .into_iter()
        .map(|(k, c)| (k, keep_probability(c, meta.train_words, cfg.sample)))
        .collect();
    let shared = Shared {
        cfg,
        corpus,
        corpus_len,
        train_words: meta.train_words,
        known,
        complete,
        noise,
        words_total,
        words_done: AtomicU64::new(done_before),
        corpus_done: AtomicU64::new(0),
        run_started,
        loss: Mutex::new((0.0, 0)),
        failed: AtomicBool::new(false),
        sigmoid: SigmoidTable::new(),
        kernel: crate::kernel::best(),
        axpy: crate::kernel::best_axpy(),
    };
    let started = Instant::now();
    let result: Result<()> = std::thread::scope(|s| {
        let handles: Vec<_> = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let shared = &shared;
                std::thread::Builder::new()
                    .name(format!("w2v-worker-{i}"))
                    .spawn_scoped(s, move || {
                        let part = cfg.process * cfg.threads + i;
                        let r = Worker::new(shared, client, part, p).run();
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
            on_progress(&shared.progress(started, done_before));
        }
        on_progress(&shared.progress(started, done_before));
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(TrainError::Invalid("a worker thread panicked".into())))
        })
    });
    result?;
    client.checkpoint()?;
    report.seconds = started.elapsed().as_secs_f64();
    report.wall_seconds = run_started.elapsed().as_secs_f64();
    report.words_done = shared.words_done.load(Ordering::Relaxed) - done_before;
    report.corpus_words = shared.corpus_done.load(Ordering::Relaxed);
    report.words_per_sec = report.corpus_words as f64 / report.wall_seconds.max(1e-9);
    report.train_words_per_sec = report.words_done as f64 / report.seconds.max(1e-9);
    Ok(report)
}

fn validate(cfg: &Config) -> Result<()> {
    let bad = |m: &str| Err(TrainError::Invalid(m.to_string()));
    if cfg.dim == 0 {
        return bad("--dim must be at least 1");
    }
    if cfg.window == 0 {
        return bad("--window must be at least 1");
    }
    if cfg.threads == 0 {
        return bad("--threads must be at least 1");
    }
    if cfg.processes == 0 || cfg.process >= cfg.processes {
        return bad("--process must be below --processes");
    }
    if cfg.epochs == 0 {
        return bad("--epochs must be at least 1");
    }
    if !(cfg.alpha > 0.0 && cfg.alpha.is_finite()) {
        return bad("--alpha must be a positive number");
    }
    if !(cfg.sample >= 0.0 && cfg.sample.is_finite()) {
        return bad("--sample must be 0 or a positive number");
    }
    if cfg.negative == 0 || cfg.negative_pool == 0 {
        return bad("--negative must be at least 1 (hierarchical softmax is not supported)");
    }
    if cfg.model.is_empty() || cfg.model.contains(char::is_whitespace) {
        return bad("--model must be a non-empty name without spaces");
    }
    Ok(())
}

/// Probability of keeping a word seen `count` times in `total` under frequent-word subsampling
/// (word2vec's formula).
fn keep_probability(count: u64, total: u64, sample: f64) -> f32 {
    if sample <= 0.0 {
        return 1.0;
    }
    let t = sample * total as f64;
    let c = count as f64;
    (((c / t).sqrt() + 1.0) * t / c).min(1.0) as f32
}

struct Shared<'a> {
    cfg: &'a Config,
    corpus: &'a Path,
    corpus_len: u64,
    /// Words one epoch trains on (over every process).
    train_words: u64,
    /// The most frequent words: key → probability of keeping it under subsampling.
    known: FxHashMap<u64, f32>,
    /// `known` is the whole vocabulary: a word not in it is not trained on.
    complete: bool,
    noise: NoiseTable,
    words_total: u64,
    words_done: AtomicU64,
    /// Corpus tokens read by this run's workers.
    corpus_done: AtomicU64,
    run_started: Instant,
    loss: Mutex<(f64, u64)>,
    failed: AtomicBool,
    sigmoid: SigmoidTable,
    kernel: Kernel,
    axpy: Axpy,
}

impl Shared<'_> {
    fn alpha(&self) -> f32 {
        let done = self.words_done.load(Ordering::Relaxed) as f64;
        let frac = done / (self.words_total as f64 + 1.0);
        (self.cfg.alpha * (1.0 - frac) as f32).max(self.cfg.min_alpha)
    }

    fn progress(&self, started: Instant, done_before: u64) -> Progress {
        let words_done = self.words_done.load(Ordering::Relaxed);
        let (sum, n) = std::mem::take(&mut *self.loss.lock().unwrap_or_else(|e| e.into_inner()));
        Progress {
            words_done,
            words_total: self.words_total,
            alpha: self.alpha(),
            loss: if n == 0 { f64::NAN } else { sum / n as f64 },
            words_per_sec: self.corpus_done.load(Ordering::Relaxed) as f64
                / self.run_started.elapsed().as_secs_f64().max(1e-9),
            train_words_per_sec: (words_done - done_before) as f64
                / started.elapsed().as_secs_f64().max(1e-9),
            epoch: (words_done / self.train_words.max(1)) as u32,
        }
    }
}

/// Rows of one minibatch: word key → local slot, and the pulled values.
#[derive(Default)]
struct LocalRows {
    slot: FxHashMap<u64, u32>,
    keys: Vec<u64>,
    values: Vec<f32>,
    pulled: Vec<f32>,
}

impl LocalRows {
    fn local(&mut self, key: u64) -> u32 {
        let keys = &mut self.keys;
        *self.slot.entry(key).or_insert_with(|| {
            keys.push(key);
            keys.len() as u32 - 1
        })
    }

    fn pull(&mut self, client: &BlockingClient, table: &str, dim: usize) -> Result<()> {
        self.values.clear();
        for chunk in self.keys.chunks(PULL_CHUNK) {
            let rows = client.pull(table, chunk)?;
            if self.values.is_empty() {
                self.values = rows; // the first chunk as it came: no copy
            } else {
                self.values.extend(rows);
            }
        }
        debug_assert_eq!(self.values.len(), self.keys.len() * dim);
        self.pulled.clear();
        self.pulled.extend_from_slice(&self.values);
        Ok(())
    }

    /// Pushes `values − pulled` and forgets the batch.
    fn push_deltas(&mut self, client: &BlockingClient, table: &str, dim: usize) -> Result<()> {
        for (v, p) in self.values.iter_mut().zip(&self.pulled) {
            *v -= p;
        }
        for (i, chunk) in self.keys.chunks(PULL_CHUNK).enumerate() {
            let from = i * PULL_CHUNK * dim;
            client.push(table, chunk, &self.values[from..from + chunk.len() * dim])?;
        }
        self.slot.clear();
        self.keys.clear();
        Ok(())
    }
}

/// Keys per pull or push call.
const PULL_CHUNK: usize = 16_384;
/// Longest sentence trained as one; longer lines are cut (as word2vec does).
const MAX_SENTENCE: usize = 1000;

struct Worker<'a> {
    s: &'a Shared<'a>,
    client: &'a BlockingClient,
    /// The corpus part this worker reads (global over all trainer processes).
    part: usize,
    pos: Position,
    rng: SmallRng,
    inputs: LocalRows,
    outputs: LocalRows,
}

impl<'a> Worker<'a> {
    fn new(s: &'a Shared<'a>, client: &'a BlockingClient, part: usize, pos: Position) -> Self {
        let seed = s.cfg.seed ^ (part as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos.done;
        Worker {
            s,
            client,
            part,
            pos,
            rng: SmallRng::seed_from_u64(seed),
            inputs: LocalRows::default(),
            outputs: LocalRows::default(),
        }
    }

    fn run(mut self) -> Result<()> {
        let cfg = self.s.cfg;
        let state_t = state_table(&cfg.model);
        let mut recorded = self.pos;
        let mut last_record = Instant::now();
        let parts = cfg.threads * cfg.processes;
        let (start, end) = part_range(self.s.corpus_len, self.part, parts);
        while self.pos.epoch < cfg.epochs as u64 {
            let resume = (self.pos.offset != start).then_some(self.pos.offset);
            let mut reader = PartReader::open(self.s.corpus, start, end, resume)?;
            loop {
                if self.s.failed.load(Ordering::Relaxed) {
                    return Ok(()); // another worker failed; its error is reported
                }
                let (sentences, seen, raw, more) = self.read_batch(&mut reader)?;
                if !sentences.is_empty() {
                    self.train_batch(&sentences)?;
                }
                self.s.words_done.fetch_add(seen, Ordering::Relaxed);
                self.s.corpus_done.fetch_add(raw, Ordering::Relaxed);
                self.pos.done += seen;
                self.pos.offset = reader.position();
                if !more {
                    break;
                }
                if last_record.elapsed().as_secs_f64() >= cfg.checkpoint_secs {
                    set_row(
                        self.client,
                        &state_t,
                        self.part as u64 + 1,
                        &recorded.encode(),
                        &self.pos.encode(),
                    )?;
                    recorded = self.pos;
                    last_record = Instant::now();
                }
            }
            self.pos.epoch += 1;
            self.pos.offset = start;
            set_row(
                self.client,
                &state_t,
                self.part as u64 + 1,
                &recorded.encode(),
                &self.pos.encode(),
            )?;
            recorded = self.pos;
        }
        Ok(())
    }

    /// Reads lines until about `batch_words` candidate words: sentences of word keys after
    /// subsampling, the number of in-vocabulary words read, the number of corpus tokens read,
    /// and whether the part goes on.
    fn read_batch(&mut self, reader: &mut PartReader) -> Result<(Vec<Vec<u64>>, u64, u64, bool)> {
        let s = self.s;
        // Candidate words of each line (flat, with line ends) with their keep probability,
        // NaN for words the cache of frequent words does not know; those are looked up:
        // key → keep probability, 0 when not in the vocabulary.
        let (mut keys, mut ends): (Vec<(u64, f32)>, Vec<usize>) = (Vec::new(), Vec::new());
        let mut unknown: FxHashMap<u64, f32> = FxHashMap::default();
        let mut more = true;
        let mut raw = 0u64;
        while keys.len() < s.cfg.batch_words {
            let Some(line) = reader.next_line()? else {
                more = false;
                break;
            };
            for w in line.split_whitespace() {
                raw += 1;
                if !vocab::acceptable(w) {
                    continue;
                }
                let k = word_key(w);
                let keep = match s.known.get(&k) {
                    Some(&p) => p,
                    None if s.complete => continue,
                    None => {
                        unknown.insert(k, 0.0);
                        f32::NAN
                    }
                };
                keys.push((k, keep));
            }
            ends.push(keys.len());
        }
        if !unknown.is_empty() {
            self.look_up(&mut unknown)?;
        }
        let mut sentences = Vec::new();
        let mut seen = 0u64;
        let mut from = 0;
        for end in ends {
            let mut sent = Vec::new();
            for &(k, keep) in &keys[from..end] {
                let keep = if keep.is_nan() {
                    match unknown.get(&k) {
                        Some(&p) if p > 0.0 => p,
                        _ => continue,
                    }
                } else {
                    keep
                };
                seen += 1;
                if keep < 1.0 && keep < self.rng.random::<f32>() {
                    continue;
                }
                sent.push(k);
                if sent.len() == MAX_SENTENCE {
                    sentences.push(std::mem::take(&mut sent));
                }
            }
            if sent.len() > 1 {
                sentences.push(sent);
            }
            from = end;
        }
        Ok((sentences, seen, raw, more))
    }

    /// Sets the keep probability of each word in `words` from its count in the server (0 for
    /// words not in the vocabulary).
    fn look_up(&mut self, words: &mut FxHashMap<u64, f32>) -> Result<()> {
        let t = vocab::table(&self.s.cfg.model);
        let keys: Vec<u64> = words.keys().copied().collect();
        for chunk in keys.chunks(PULL_CHUNK) {
            let rows = self.client.pull(&t, chunk)?;
            for (k, row) in chunk.iter().zip(rows.chunks(vocab::VOCAB_DIM as usize)) {
                let count = vocab::decode_count(row)
                    .ok_or_else(|| vocab::undecodable(&self.s.cfg.model, *k))?;
                if count > 0 {
                    words.insert(
                        *k,
                        keep_probability(count, self.s.train_words, self.s.cfg.sample),
                    );
                }
            }
        }
        Ok(())
    }

    fn train_batch(&mut self, sentences: &[Vec<u64>]) -> Result<()> {
        let cfg = self.s.cfg;
        let dim = cfg.dim as usize;
        let alpha = self.s.alpha();
        // Plan: local slots for every word, and the batch's noise pool.
        let local: Vec<Vec<u32>> = sentences
            .iter()
            .map(|s| s.iter().map(|&w| self.inputs.local(w)).collect())
            .collect();
        let targets: Vec<Vec<u32>> = sentences
            .iter()
            .map(|s| s.iter().map(|&w| self.outputs.local(w)).collect())
            .collect();
        let pool: Vec<u32> = (0..cfg.negative_pool)
            .map(|_| {
                let w = self.s.noise.sample(&mut self.rng);
                self.outputs.local(w)
            })
            .collect();
        let in_t = in_table(&cfg.model);
        let out_t = out_table(&cfg.model);
        self.inputs.pull(self.client, &in_t, dim)?;
        self.outputs.pull(self.client, &out_t, dim)?;

        let sig = &self.s.sigmoid;
        let (win, out) = (&mut self.inputs.values, &mut self.outputs.values);
        let mut neu1 = vec![0.0f32; dim];
        let mut neu1e = vec![0.0f32; dim];
        let (mut loss, mut examples) = (0.0f64, 0u64);
        let (kernel, axpy) = (self.s.kernel, self.s.axpy);
        let rng = &mut self.rng;
        for (ins, outs) in local.iter().zip(&targets) {
            let n = ins.len();
            for (i, &target) in outs.iter().enumerate() {
                let target = target as usize;
                let b = rng.random_range(0..cfg.window);
                let lo = i.saturating_sub(cfg.window - b);
                let hi = (i + cfg.window - b + 1).min(n);
                // One example against `target` and its negatives, for hidden layer `h`.
                let mut example = |h: &[f32], g: &mut [f32], out: &mut [f32]| {
                    kernel(h, g, out, target, &pool, cfg.negative, alpha, dim, sig, rng)
                };
                if cfg.cbow {
                    let context = (lo..hi).filter(|&j| j != i).map(|j| ins[j] as usize);
                    let l = cbow_example(context, win, &mut neu1, &mut neu1e, axpy, |h, g| {
                        example(h, g, out)
                    });
                    if let Some(l) = l {
                        loss += l;
                        examples += 1;
                    }
                } else {
                    for j in (lo..hi).filter(|&j| j != i) {
                        let c = ins[j] as usize;
                        neu1e.fill(0.0);
                        loss += example(&win[c * dim..(c + 1) * dim], &mut neu1e, out);
                        examples += 1;
                        axpy(&mut win[c * dim..(c + 1) * dim], 1.0, &neu1e);
                    }
                }
            }
        }
        {
            let mut l = self.s.loss.lock().unwrap_or_else(|e| e.into_inner());
            l.0 += loss;
            l.1 += examples;
        }
        self.inputs.push_deltas(self.client, &in_t, dim)?;
        self.outputs.push_deltas(self.client, &out_t, dim)?;
        Ok(())
    }
}

/// One CBOW example, as word2vec.c and gensim (`cbow_mean=1`) train it: the hidden layer is
/// the *mean* of the context words' input rows, and every context row then gets the hidden
/// layer's *whole* error. The exact gradient of the loss would give each row a `1/cw` share;
/// paramdb did that until issue #17, which trained input rows `cw` times slower (about 6× at
/// window 5; see BENCHMARKS.md). `negatives` trains the output rows against the
/// hidden layer and accumulates its error; returns `None` for an empty context.
fn cbow_example(
    context: impl Iterator<Item = usize> + Clone,
    win: &mut [f32],
    hidden: &mut [f32],
    error: &mut [f32],
    axpy: Axpy,
    negatives: impl FnOnce(&[f32], &mut [f32]) -> f64,
) -> Option<f64> {
    let dim = hidden.len();
    hidden.fill(0.0);
    let mut cw = 0;
    for c in context.clone() {
        axpy(hidden, 1.0, &win[c * dim..(c + 1) * dim]);
        cw += 1;
    }
    if cw == 0 {
        return None;
    }
    scale(hidden, 1.0 / cw as f32);
    error.fill(0.0);
    let loss = negatives(hidden, error);
    for c in context {
        axpy(&mut win[c * dim..(c + 1) * dim], 1.0, error);
    }
    Some(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsampling_keeps_rare_words_and_thins_frequent_ones() {
        assert_eq!(keep_probability(10, 1_000_000, 1e-3), 1.0);
        let p = keep_probability(100_000, 1_000_000, 1e-3);
        assert!((p - 0.1 - 0.01).abs() < 1e-6, "{p}");
        assert_eq!(keep_probability(100_000, 1_000_000, 0.0), 1.0);
    }

    /// The reason CBOW trailed word2vec.c: each context row must get the hidden layer's whole
    /// error (word2vec.c's `syn0[...] += neu1e[c]`), not a `1/cw` share of it.
    #[test]
    fn cbow_gives_every_context_row_the_whole_error() {
        let dim = 4;
        // Rows 0, 1, 2 are the context; row 3 is not, and must not move.
        let mut win: Vec<f32> = (0..4 * dim).map(|i| i as f32 * 0.1).collect();
        let before = win.clone();
        let (mut hidden, mut error) = (vec![0.0; dim], vec![0.0; dim]);
        let mut seen_hidden = Vec::new();
        let loss = cbow_example(
            [0usize, 1, 2].into_iter(),
            &mut win,
            &mut hidden,
            &mut error,
            crate::kernel::best_axpy(),
            |h, g| {
                seen_hidden = h.to_vec();
                g.copy_from_slice(&[0.5, -0.25, 1.0, 0.0]);
                1.5
            },
        );
        assert_eq!(loss, Some(1.5));
        for d in 0..dim {
            let mean = (before[d] + before[dim + d] + before[2 * dim + d]) / 3.0;
            assert!(
                (seen_hidden[d] - mean).abs() < 1e-6,
                "hidden is the context's mean"
            );
        }
        let want = [0.5, -0.25, 1.0, 0.0];
        for row in 0..3 {
            for d in 0..dim {
                let moved = win[row * dim + d] - before[row * dim + d];
                assert!((moved - want[d]).abs() < 1e-6, "row {row} moved {moved}");
            }
        }
        assert_eq!(&win[3 * dim..], &before[3 * dim..]);
        let none = cbow_example(
            std::iter::empty(),
            &mut win,
            &mut hidden,
            &mut error,
            crate::kernel::best_axpy(),
            |_, _| unreachable!("an empty context trains nothing"),
        );
        assert_eq!(none, None);
    }

    #[test]
    fn state_rows_round_trip() {
        let p = Position {
            epoch: 3,
            offset: 1 << 40,
            done: 123_456_789,
        };
        assert_eq!(Position::decode(&p.encode()), Some(p));
        let m = Meta {
            threads: 2,
            epochs: 5,
            corpus_len: 99,
            train_words: 1 << 33,
            processes: 3,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
    }
}
