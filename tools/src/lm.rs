//! `paramdb train ngram-lm` and `paramdb eval perplexity`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paramdb_client::BlockingClient;
use paramdb_trainer::ngram::{self, CountConfig, Kn, Perplexity, Sentences};
use paramdb_trainer::nlm::{self, Neural, NeuralConfig};

use crate::progress::progress_bar;
use crate::target::Target;

#[derive(clap::Args, Debug)]
pub struct NgramLmArgs {
    /// Training text: whitespace-separated tokens, one sentence per line.
    #[arg(long, alias = "corpus")]
    pub train: PathBuf,
    /// Model name (prefix of its tables).
    #[arg(long, default_value = "lm")]
    pub model: String,
    /// n-gram order of the Kneser-Ney counts and of the neural model's context (order − 1 words).
    #[arg(long, default_value_t = 5)]
    pub order: usize,
    /// Hold out every this many lines (the last of each group) as the dev split that tunes the
    /// interpolation weight; 0 trains on every line.
    #[arg(long, default_value_t = 100)]
    pub dev_every: u64,
    /// Memory counting holds, like lmplz's -S (e.g. 512M, 4G; at least 64K); beyond it,
    /// sorted runs go to --temp-dir.
    #[arg(long, short = 'S', default_value = "1G", value_parser = crate::export::parse_bytes)]
    pub memory: u64,
    /// Directory for counting's sorted runs (default: the system's temporary directory).
    #[arg(long, short = 'T')]
    pub temp_dir: Option<PathBuf>,
    /// Count and smooth only: no neural model.
    #[arg(long)]
    pub kn_only: bool,
    /// This process's number when several processes count the model at once against one
    /// cluster (0-based; process 0 creates the tables and, unless --kn-only, then trains the
    /// neural model alone).
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// Processes counting this model at once (each with --process 0..N-1, the same corpus
    /// file and flags). Each counts the n-grams whose last word hashes to it and writes an
    /// Nth of the rows.
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// How long a counting process waits for the others at each step (seconds).
    #[arg(long, default_value_t = 1800.0)]
    pub wait_secs: f64,
    /// Context word embedding size.
    #[arg(long, default_value_t = 128)]
    pub emb_dim: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 512)]
    pub hidden: usize,
    /// Output embedding size.
    #[arg(long, default_value_t = 128)]
    pub out_dim: usize,
    /// Noise words drawn per minibatch for the sampled softmax.
    #[arg(long, default_value_t = 1024)]
    pub samples: usize,
    /// Tokens per minibatch.
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    #[arg(long, default_value_t = 1)]
    pub epochs: u32,
    /// Adagrad learning rate of the embeddings (input and output).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f32,
    /// Adagrad learning rate of the dense layers.
    #[arg(long, default_value_t = 0.005)]
    pub dense_lr: f32,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds between recorded positions (what a resumed run continues from).
    #[arg(long, default_value_t = 10.0)]
    pub checkpoint_secs: f64,
    /// No progress output, only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub target: Target,
}

impl NgramLmArgs {
    fn neural(&self) -> NeuralConfig {
        NeuralConfig {
            emb_dim: self.emb_dim,
            hidden: self.hidden,
            out_dim: self.out_dim,
            samples: self.samples,
            batch: self.batch,
            epochs: self.epochs,
            lr: self.lr,
            dense_lr: self.dense_lr,
            threads: self.threads,
            seed: self.seed,
            checkpoint_secs: self.checkpoint_secs,
            ..NeuralConfig::default()
        }
    }
}

pub fn train(args: NgramLmArgs) -> anyhow::Result<()> {
    let client = args.target.connect()?;
    let existing = ngram::meta(&client, &args.model);
    let meta = match existing {
        Some(m) => {
            let len = std::fs::metadata(&args.train)
                .with_context(|| format!("reading {}", args.train.display()))?
                .len();
            if (m.order, m.corpus_len, m.dev_every) != (args.order as u64, len, args.dev_every) {
                bail!(
                    "model {:?} was counted with --order {} --dev-every {} from a corpus of {} \
                     bytes; this run has --order {} --dev-every {} and {} bytes (use the same \
                     flags and corpus to go on, or another --model)",
                    args.model,
                    m.order,
                    m.dev_every,
                    m.corpus_len,
                    args.order,
                    args.dev_every,
                    len
                );
            }
            println!(
                "model {:?}: n-gram counts already complete ({} lines, {} tokens); not counting again",
                args.model, m.lines, m.tokens
            );
            m
        }
        None => {
            let b = progress_bar(args.quiet, 1000);
            if !(args.wait_secs.is_finite() && args.wait_secs >= 0.0) {
                bail!("--wait-secs {} is not a number of seconds", args.wait_secs);
            }
            let cfg = CountConfig {
                order: args.order,
                dev_every: args.dev_every,
                memory: usize::try_from(args.memory).unwrap_or(usize::MAX),
                temp_dir: args.temp_dir.clone(),
                process: args.process,
                processes: args.processes,
                wait: Duration::from_secs_f64(args.wait_secs),
            };
            let show = |pos: u64, len: u64| {
                if let Some(b) = &b {
                    b.set_position(pos * 1000 / len.max(1));
                    b.set_message("counting n-grams");
                }
            };
            let r = ngram::count(&client, &args.model, &args.train, &cfg, &show)?;
            if let Some(b) = &b {
                b.finish_and_clear();
            }
            let m = r.meta.expect("count sets meta");
            println!(
                "counted {:?}: {} lines, {} tokens, {} sorted runs in {:.1} s ({:.0} tokens/s)",
                args.model,
                m.lines,
                m.tokens,
                r.runs,
                r.seconds,
                m.tokens as f64 / r.seconds.max(1e-9)
            );
            for (k, c) in r.coc.iter().enumerate().skip(1) {
                let d = c.discounts();
                println!(
                    "  order {k}: {} n-grams, discounts {:.3} {:.3} {:.3}",
                    c.distinct, d[0], d[1], d[2]
                );
            }
            m
        }
    };
    let kn = Kn::load(&client, &args.model)?;
    println!("vocabulary {} (with </s> and <unk>)", kn.vocab_size);
    if args.kn_only || args.process > 0 {
        return Ok(());
    }
    let cfg = args.neural();
    let b = progress_bar(args.quiet, 1000);
    let plain = !args.quiet && b.is_none();
    let last_line = std::sync::Mutex::new(Instant::now() - Duration::from_secs(60));
    let show = |p: &nlm::Progress| {
        let frac = p.tokens_done as f64 / p.tokens_total.max(1) as f64;
        let msg = format!("{:.0} tokens/s, loss {:.3}", p.tokens_per_sec, p.loss);
        if let Some(b) = &b {
            b.set_position((frac * 1000.0) as u64);
            b.set_message(msg);
        } else if plain {
            let mut l = last_line.lock().unwrap_or_else(|e| e.into_inner());
            if l.elapsed() >= Duration::from_secs(5) {
                eprintln!("train: {:5.1}% {msg}", frac * 100.0);
                *l = Instant::now();
            }
        }
    };
    let report = nlm::train(&client, &kn, &args.train, &cfg, &show)?;
    if let Some(b) = &b {
        b.finish_and_clear();
    }
    if let Some(f) = report.resumed_from {
        println!(
            "resumed the neural model of {:?} from its last checkpoint at {:.1}% (not from the start)",
            args.model,
            f * 100.0
        );
    }
    if report.already_done {
        println!("the neural model of {:?} is already trained", args.model);
    } else {
        println!(
            "trained the neural model of {:?}: vocabulary {}, {} tokens in {:.1} s ({:.0} tokens/s)",
            args.model,
            report.vocab_size,
            report.tokens_done,
            report.seconds,
            report.tokens_per_sec
        );
    }
    if meta.dev_every == 0 {
        println!("no dev split (--dev-every 0): the interpolation weight stays untuned (0.5)");
        nlm::set_lambda(&client, &args.model, 0.5)?;
        return Ok(());
    }
    let neural = Neural::load(&client, &kn, args.threads)?.expect("just trained");
    let started = Instant::now();
    let s = score(&client, &kn, &neural, &args.train, |at| meta.is_dev(at))?;
    let lambda = nlm::tune_lambda(&s.neural_lp, &s.kn_lp);
    nlm::set_lambda(&client, &args.model, lambda)?;
    println!(
        "dev ({} tokens, {:.1} s): Kneser-Ney {:.2}, neural {:.2}, interpolated {:.2} with weight {lambda:.3}",
        s.kn.tokens,
        started.elapsed().as_secs_f64(),
        s.kn.including_oov(),
        s.neural.including_oov(),
        s.mixed(lambda).including_oov()
    );
    client.checkpoint()?;
    Ok(())
}

/// Both models' log probabilities of every token of the chosen lines.
struct Scores {
    kn: Perplexity,
    neural: Perplexity,
    kn_lp: Vec<f64>,
    neural_lp: Vec<f64>,
    oov: Vec<bool>,
}

impl Scores {
    fn mixed(&self, lambda: f64) -> Perplexity {
        let mut p = Perplexity::default();
        for ((&a, &b), &oov) in self.neural_lp.iter().zip(&self.kn_lp).zip(&self.oov) {
            p.add(nlm::mix(lambda, a, b), oov);
        }
        p
    }
}

fn score(
    client: &BlockingClient,
    kn: &Kn,
    neural: &Neural,
    path: &std::path::Path,
    pick: impl Fn(u64) -> bool,
) -> anyhow::Result<Scores> {
    let mut s = Scores {
        kn: Perplexity::default(),
        neural: Perplexity::default(),
        kn_lp: Vec::new(),
        neural_lp: Vec::new(),
        oov: Vec::new(),
    };
    let mut lines = Sentences::open(client, kn, path, pick, 20_000)?;
    while let Some(b) = lines.next_batch()? {
        let mut q = Vec::new();
        for (sent, oov) in b.sentences.iter().zip(&b.oov) {
            for j in 1..sent.len() {
                q.push((&sent[..j], sent[j]));
                s.oov.push(oov[j]);
            }
        }
        s.kn_lp.extend(kn.log_probs(client, &q)?);
        s.neural_lp.extend(neural.log_probs(client, &q)?);
    }
    for ((&a, &b), &oov) in s.neural_lp.iter().zip(&s.kn_lp).zip(&s.oov) {
        s.neural.add(a, oov);
        s.kn.add(b, oov);
    }
    Ok(s)
}

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    /// Test text, one sentence per line.
    #[arg(long)]
    pub test: PathBuf,
    #[arg(long, default_value = "lm")]
    pub model: String,
    /// Only the Kneser-Ney model, even if the model has a neural network.
    #[arg(long)]
    pub kn_only: bool,
    /// Threads for the neural model's exact softmax.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Cap on the RocksDB block cache of embedded shards while scoring: blocks read stay in
    /// memory up to it, so the process grows to the part of the model the test text touches
    /// (about 2.9 GB for IMDb's 5-gram model); past it, blocks are read again per lookup.
    #[arg(long, default_value = "4G", value_parser = crate::export::parse_bytes)]
    pub block_cache: u64,
    /// Score with the Kneser-Ney model's compact form (`export MODEL --format kn-compact`)
    /// instead of the servers: no server or data directory is read.
    #[arg(long, conflicts_with = "model")]
    pub compact: Option<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

/// `NAME: perplexity … including OOVs, … excluding (N tokens, M OOV)`.
fn print_perplexity(name: &str, p: &Perplexity) {
    println!(
        "{name}: perplexity {:.2} including OOVs, {:.2} excluding ({} tokens, {} OOV)",
        p.including_oov(),
        p.excluding_oov(),
        p.tokens,
        p.oov,
    )
}

pub fn perplexity(args: PerplexityArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.compact {
        let started = Instant::now();
        let c = ngram::compact::Compact::open(path)?;
        let p = ngram::compact::perplexity(&c, &args.test, |_| true)?;
        print_perplexity(&format!("Kneser-Ney {}-gram", c.kn().order()), &p);
        println!("({:.1} s)", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let client = args
        .target
        .connect_read_only_cached(usize::try_from(args.block_cache).unwrap_or(usize::MAX))?;
    let kn = Kn::load(&client, &args.model)?;
    let started = Instant::now();
    let line = print_perplexity;
    let neural = if args.kn_only {
        None
    } else {
        Neural::load(&client, &kn, args.threads)?
    };
    match neural {
        None => {
            let p = ngram::perplexity(&client, &kn, &args.test, |_| true)?;
            line(&format!("Kneser-Ney {}-gram", kn.order()), &p);
        }
        Some(neural) => {
            let lambda = nlm::lambda(&client, &args.model)?.unwrap_or(0.5);
            let s = score(&client, &kn, &neural, &args.test, |_| true)?;
            line(&format!("Kneser-Ney {}-gram", kn.order()), &s.kn);
            line(&format!("neural {}-gram", kn.order()), &s.neural);
            line(
                &format!("interpolated (weight {lambda:.3})"),
                &s.mixed(lambda),
            );
        }
    }
    println!("({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}
