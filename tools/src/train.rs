//! `paramdb train word2vec`, `paramdb eval`, `paramdb neighbours`, `paramdb export`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paramdb_trainer::eval::{self, Index};
use paramdb_trainer::export::{self, Embeddings};
use paramdb_trainer::word2vec::{self, Config, Progress};

use crate::progress::progress_bar;
use crate::target::Target;

#[derive(clap::Args, Debug)]
pub struct Word2VecArgs {
    /// Training text: whitespace-separated tokens, one sentence per line.
    #[arg(long, short = 'c', alias = "train")]
    pub corpus: PathBuf,
    /// Model name (prefix of its tables).
    #[arg(long, default_value = "w2v")]
    pub model: String,
    /// Vector size.
    #[arg(long, alias = "size", default_value_t = 100)]
    pub dim: u32,
    #[arg(long, default_value_t = 5)]
    pub window: usize,
    /// Negative samples per example.
    #[arg(long, default_value_t = 5)]
    pub negative: usize,
    #[arg(long, default_value_t = 5)]
    pub min_count: u64,
    /// Subsampling threshold for frequent words (0 turns it off).
    #[arg(long, default_value_t = 1e-3)]
    pub sample: f64,
    #[arg(long, alias = "iter", default_value_t = 5)]
    pub epochs: u32,
    /// Starting learning rate (linear decay to --min-alpha).
    #[arg(long)]
    pub alpha: Option<f32>,
    #[arg(long, default_value_t = 0.0001)]
    pub min_alpha: f32,
    /// CBOW instead of skip-gram.
    #[arg(long)]
    pub cbow: bool,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// This process's number when several trainer processes share the corpus (0-based).
    #[arg(long, default_value_t = 0)]
    pub process: usize,
    /// Trainer processes training this model at once (each with --process 0..N-1).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Words per worker minibatch (pull, train locally, push deltas); 50,000 for skip-gram
    /// and 100,000 for CBOW by default.
    #[arg(long)]
    pub batch_words: Option<usize>,
    /// Noise words drawn per minibatch; negatives are taken from this pool.
    #[arg(long, default_value_t = 8192)]
    pub negative_pool: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Seconds between recorded positions (what a resumed run continues from).
    #[arg(long, default_value_t = 10.0)]
    pub checkpoint_secs: f64,
    /// No progress output, only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Lifecycle policies of the model's vectors, set when it is created (`ttl=7d`,
    /// `admit_after=2`, `max_rows=1000000`, comma-separated); a resumed model must have them.
    #[arg(long)]
    pub lifecycle: Option<paramdb_client::Lifecycle>,
    #[command(flatten)]
    pub target: Target,
}

impl Word2VecArgs {
    pub fn config(&self) -> Config {
        Config {
            model: self.model.clone(),
            dim: self.dim,
            window: self.window,
            negative: self.negative,
            min_count: self.min_count,
            sample: self.sample,
            epochs: self.epochs,
            // word2vec's defaults: 0.025 for skip-gram, 0.05 for CBOW.
            alpha: self.alpha.unwrap_or(if self.cbow { 0.05 } else { 0.025 }),
            min_alpha: self.min_alpha,
            cbow: self.cbow,
            threads: self.threads,
            process: self.process,
            processes: self.processes,
            batch_words: self
                .batch_words
                .unwrap_or_else(|| word2vec::default_batch_words(self.cbow)),
            negative_pool: self.negative_pool,
            seed: self.seed,
            checkpoint_secs: self.checkpoint_secs,
            lifecycle: self.lifecycle,
            ..Config::default()
        }
    }
}

pub fn word2vec(args: Word2VecArgs) -> anyhow::Result<()> {
    let client = args.target.connect()?;
    train_word2vec(&client, &args.corpus, &args.config(), args.quiet)?;
    Ok(())
}

/// Trains with a progress display on stderr (a bar on a terminal, a line every 5 s
/// otherwise, nothing when `quiet`) and prints what happened: the command behind both
/// `paramdb train word2vec` and `paramdb word2vec`.
pub(crate) fn train_word2vec(
    client: &paramdb_client::BlockingClient,
    corpus: &std::path::Path,
    cfg: &Config,
    quiet: bool,
) -> anyhow::Result<word2vec::Report> {
    let bar = progress_bar(quiet, 1000);
    let plain = !quiet && bar.is_none();
    let last_line = std::sync::Mutex::new(Instant::now() - Duration::from_secs(60));
    let show = |p: &Progress| {
        let frac = p.words_done as f64 / p.words_total.max(1) as f64;
        let msg = format!(
            "{:.0} words/s ({:.0} training), lr {:.5}, loss {:.4}",
            p.words_per_sec, p.train_words_per_sec, p.alpha, p.loss
        );
        if let Some(b) = &bar {
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
    let report = word2vec::train(client, corpus, cfg, &show)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    if report.already_done {
        println!(
            "model {:?} is already trained ({} words, vocabulary {}); nothing to do",
            cfg.model, report.train_words, report.vocab_size
        );
        return Ok(report);
    }
    if let Some(f) = report.resumed_from {
        println!(
            "resumed model {:?} from its last checkpoint at {:.1}% (not from the start)",
            cfg.model,
            f * 100.0
        );
    }
    print_trained(&cfg.model, &report);
    Ok(report)
}

/// The summary line. The first figure is what gensim and word2vec.c print: corpus words over
/// wall time, counting included. Training alone (in-vocabulary words over training time) is
/// labelled beside it.
pub(crate) fn print_trained(model: &str, report: &word2vec::Report) {
    println!(
        "trained {model:?}: vocabulary {}, {} corpus words in {:.1} s wall ({:.0} words/s); \
         training alone: {} in-vocabulary words in {:.1} s ({:.0} words/s)",
        report.vocab_size,
        report.corpus_words,
        report.wall_seconds,
        report.words_per_sec,
        report.words_done,
        report.seconds,
        report.train_words_per_sec
    );
}

#[derive(clap::Args, Debug)]
pub struct VectorsArgs {
    /// Model in the parameter server.
    #[arg(long, default_value = "w2v")]
    pub model: String,
    /// Evaluate a word2vec file instead of a stored model.
    #[arg(long)]
    pub vectors: Option<PathBuf>,
    /// The --vectors file is in binary word2vec format.
    #[arg(long)]
    pub binary: bool,
    #[command(flatten)]
    pub target: Target,
}

impl VectorsArgs {
    pub fn load(&self) -> anyhow::Result<Embeddings> {
        match &self.vectors {
            Some(p) => Ok(export::read_word2vec(p, self.binary)?),
            None => {
                let client = self.target.connect_read_only()?;
                export::from_server(&client, &self.model)
                    .with_context(|| format!("reading model {:?}", self.model))
            }
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct AnalogyArgs {
    #[arg(long)]
    questions: PathBuf,
    /// Only the this many most frequent words are candidates (gensim's restrict_vocab).
    #[arg(long, default_value_t = 30_000)]
    limit: usize,
    #[command(flatten)]
    vectors: VectorsArgs,
}

#[derive(clap::Args, Debug)]
pub struct SimilarityArgs {
    #[arg(long)]
    pairs: PathBuf,
    #[arg(long, default_value_t = 300_000)]
    limit: usize,
    #[command(flatten)]
    vectors: VectorsArgs,
}

/// `paramdb eval analogy`: accuracy per section and overall.
pub fn analogy(args: AnalogyArgs) -> anyhow::Result<()> {
    let limit = args.limit;
    let index = Index::new(&args.vectors.load()?, limit);
    let s = eval::analogy(&index, &args.questions, 2)?;
    for (name, ok, n) in &s.sections {
        if *n > 0 {
            println!("{name}: {:.1}% ({ok}/{n})", *ok as f64 * 100.0 / *n as f64);
        }
    }
    println!(
        "analogy accuracy: {:.2}% ({}/{} questions; {} skipped for words outside the top {limit})",
        s.accuracy() * 100.0,
        s.correct,
        s.evaluated,
        s.skipped
    );
    Ok(())
}

/// `paramdb eval similarity`: Spearman's rho against human scores.
pub fn similarity(args: SimilarityArgs) -> anyhow::Result<()> {
    let index = Index::new(&args.vectors.load()?, args.limit);
    let (rho, used, skipped) = eval::similarity(&index, &args.pairs)?;
    println!("spearman: {rho:.4} ({used} pairs; {skipped} skipped for unknown words)");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct NeighboursArgs {
    pub word: String,
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    #[command(flatten)]
    pub vectors: VectorsArgs,
}

pub fn neighbours(args: NeighboursArgs) -> anyhow::Result<()> {
    let index = Index::new(&args.vectors.load()?, usize::MAX);
    let Some(n) = index.neighbours(&args.word, args.k) else {
        bail!("{:?} is not in the vocabulary", args.word);
    };
    for (w, s) in n {
        println!("{s:.4}  {w}");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct LinregArgs {
    /// Workers: threads against embedded shards, or processes against --cluster.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Steps per worker.
    #[arg(long, default_value_t = 1000)]
    pub steps: u64,
    /// async, bsp (bulk-synchronous) or ssp (bounded staleness, see --staleness).
    #[arg(long, default_value = "async")]
    pub mode: String,
    #[arg(long, default_value_t = 2)]
    pub staleness: u64,
    #[arg(long, default_value = "linreg")]
    pub model: String,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print the loss every this many steps (per worker).
    #[arg(long, default_value_t = 100)]
    pub every: u64,
    /// Run only this worker (how the launcher starts worker processes).
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    #[command(flatten)]
    pub target: Target,
}

pub fn linreg(args: LinregArgs) -> anyhow::Result<()> {
    use paramdb_trainer::linreg::{self, Mode};
    let mode = match args.mode.as_str() {
        "async" => Mode::Async,
        "bsp" => Mode::Bsp,
        "ssp" => Mode::Ssp(args.staleness),
        m => bail!("--mode {m:?}: expected async, bsp or ssp"),
    };
    let cfg = linreg::Config {
        model: args.model.clone(),
        workers: args.workers,
        steps: args.steps,
        mode,
        seed: args.seed,
        ..linreg::Config::default()
    };
    let every = args.every.max(1);
    let show = |s: &linreg::Step| {
        if s.step.is_multiple_of(every) || s.step + 1 == cfg.steps {
            println!("worker {} step {} loss {:.5}", s.worker, s.step, s.loss);
        }
    };
    let started = Instant::now();
    if let Some(w) = args.worker {
        let client = args.target.connect()?;
        let rate = linreg::run_worker(&client, &cfg, w, &show)?;
        println!("worker {w} done: {rate:.1} steps/s");
        return Ok(());
    }
    if let Some(file) = &args.target.cluster {
        // Worker processes, each its own client.
        let exe = std::env::current_exe().context("finding the paramdb binary")?;
        let children: Vec<_> = (0..args.workers)
            .map(|w| {
                std::process::Command::new(&exe)
                    .args(["train", "linreg", "--cluster"])
                    .arg(file)
                    .args(["--workers", &args.workers.to_string()])
                    .args(["--steps", &args.steps.to_string()])
                    .args([
                        "--mode",
                        &args.mode,
                        "--staleness",
                        &args.staleness.to_string(),
                    ])
                    .args(["--model", &args.model, "--seed", &args.seed.to_string()])
                    .args(["--every", &every.to_string(), "--worker", &w.to_string()])
                    .spawn()
                    .context("starting a worker process")
            })
            .collect::<anyhow::Result<_>>()?;
        for (w, mut c) in children.into_iter().enumerate() {
            let status = c.wait()?;
            if !status.success() {
                bail!("worker process {w} failed ({status})");
            }
        }
    } else {
        let client = args.target.connect()?;
        linreg::run_threads(&client, &cfg, &show)?;
    }
    let client = args.target.connect()?;
    let p = linreg::params(&client, &args.model)?;
    let steps = args.steps * args.workers as u64;
    println!(
        "done: {steps} steps in {:.2} s ({:.1} steps/s), max |param - truth| = {:.4}",
        started.elapsed().as_secs_f64(),
        steps as f64 / started.elapsed().as_secs_f64(),
        linreg::max_error(&p, args.seed)
    );
    Ok(())
}
