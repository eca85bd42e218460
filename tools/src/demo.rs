//! `paramdb demo`, the README's main job: word2vec on an embedded parameter server, with no
//! server to start and no data to download. It generates a corpus with planted structure
//! (sentences drawn from one topic each), trains skip-gram against two embedded shards, checks
//! that words' nearest neighbours come from their own topic, and exports the vectors in both
//! word2vec formats.

use std::path::PathBuf;

use anyhow::{bail, Context};
use paramdb_trainer::eval::Index;
use paramdb_trainer::export;
use paramdb_trainer::synth::{self, TOPICS};

use crate::target::Target;
use crate::train::Word2VecArgs;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Where the corpus, the shards and the exports go (default: a new directory under the
    /// system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Sentences of the generated corpus (12 words each).
    #[arg(long, default_value_t = 40_000)]
    sentences: usize,
    #[arg(long, default_value_t = 5)]
    epochs: u32,
    /// Train through a running cluster (its cluster file) instead of 2 embedded shards.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Model name (the prefix of its tables).
    #[arg(long, default_value = "demo")]
    model: String,
}

const PER_TOPIC: usize = 40;
const K: usize = 5;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = match args.data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("paramdb-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let corpus = dir.join("corpus.txt");
    let words = synth::topic_corpus(&corpus, PER_TOPIC, args.sentences, 12, 7)?;
    println!(
        "paramdb demo: {} words in {} ({} topics of {PER_TOPIC} words, one topic per sentence)",
        words,
        corpus.display(),
        TOPICS.len()
    );
    let target = Target {
        data_dir: dir.join("shards"),
        shards: 2,
        cluster: args.cluster.clone(),
        gone_retention_secs: paramdb_engine::DEFAULT_GONE_RETENTION_SECS,
    };
    let against = match &args.cluster {
        Some(f) => format!("the cluster in {}", f.display()),
        None => format!("2 embedded shards in {}", target.data_dir.display()),
    };
    println!("training skip-gram (dim 50, window 5, negative 5) against {against}");
    let train = Word2VecArgs {
        corpus: corpus.clone(),
        model: args.model.clone(),
        dim: 50,
        window: 5,
        negative: 5,
        min_count: 5,
        sample: 1e-3,
        epochs: args.epochs,
        alpha: None,
        min_alpha: 0.0001,
        cbow: false,
        threads: 2,
        process: 0,
        processes: 1,
        batch_words: Some(20_000),
        negative_pool: 8192,
        seed: 1,
        checkpoint_secs: 10.0,
        quiet: false,
        lifecycle: None,
        target: target.clone(),
    };
    crate::train::word2vec(train)?;

    let client = target.connect()?;
    let e = export::from_server(&client, &args.model)?;
    let index = Index::new(&e, usize::MAX);
    for name in TOPICS.iter().take(3) {
        let w = format!("{name}0");
        if let Some(n) = index.neighbours(&w, K) {
            let list: Vec<String> = n.iter().map(|(x, s)| format!("{x} {s:.2}")).collect();
            println!("  nearest to {w}: {}", list.join(", "));
        }
    }
    let frac = synth::topic_purity(&index, PER_TOPIC, K);
    println!(
        "{:.1}% of the {K} nearest neighbours of every topic word are from its own topic",
        frac * 100.0
    );
    for binary in [false, true] {
        let p = dir.join(if binary { "demo.bin" } else { "demo.txt" });
        export::write_word2vec(&e, &p, binary)?;
        println!(
            "exported {} (word2vec {})",
            p.display(),
            if binary { "binary" } else { "text" }
        );
    }
    match &args.cluster {
        Some(f) => println!(
            "try: paramdb neighbours fruit3 --model {} --cluster {}",
            args.model,
            f.display()
        ),
        None => println!(
            "try: paramdb neighbours fruit3 --model {} --data-dir {} --shards 2",
            args.model,
            target.data_dir.display()
        ),
    }
    if frac < 0.8 {
        bail!(
            "the planted structure was not learned ({:.1}% < 80%)",
            frac * 100.0
        );
    }
    Ok(())
}
