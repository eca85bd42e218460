//! word2vec side by side, in one run: paramdb against an embedded shard, paramdb against two
//! local `paramdb serve` processes over gRPC, and gensim (PyPI) — the same corpus and settings
//! (skip-gram, dim 100, window 5, negative 5, min-count 5, sample 1e-4, 2 threads). Reports
//! words/s (corpus words × epochs over wall-clock seconds, vocabulary counting included for
//! everyone), analogy accuracy (30,000 most frequent words, case-folded), and Spearman's ρ on
//! WordSim353 and SimLex-999. Prints Markdown.
//!
//! Needs the `paramdb` binary (`cargo build --release -p paramdb-tools`) and a Python with
//! gensim (`PARAMDB_PYTHON`, else `.venv`; `make bench` sets both up).
//!
//! `cargo bench -p paramdb-tests --bench word2vec [-- --epochs N] [--quick]`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn paramdb() -> PathBuf {
    paramdb_tests::servers::paramdb_bin()
}

fn python() -> PathBuf {
    std::env::var("PARAMDB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".venv/bin/python"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> f64 {
    let rest = &text[text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} in {text}"))
        + prefix.len()..];
    let n: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    n.parse()
        .unwrap_or_else(|_| panic!("number after {prefix:?} in {text}"))
}

struct Scores {
    secs: f64,
    analogy: f64,
    ws: f64,
    simlex: f64,
}

/// Trains with `target` args, then evaluates the stored model.
fn paramdb_run(corpus: &Path, data: &Path, epochs: u32, target: &[String]) -> Scores {
    let t = Instant::now();
    run(Command::new(paramdb())
        .args(["train", "word2vec", "--corpus"])
        .arg(corpus)
        .args([
            "--dim",
            "100",
            "--window",
            "5",
            "--negative",
            "5",
            "--min-count",
            "5",
        ])
        .args(["--sample", "1e-4", "--threads", "2", "--quiet", "--epochs"])
        .arg(epochs.to_string())
        .args(target));
    let secs = t.elapsed().as_secs_f64();
    let eval = |args: &[&str], file: &str| {
        run(Command::new(paramdb())
            .arg("eval")
            .args(args)
            .arg(data.join(file))
            .args(target))
    };
    let analogy = number_after(
        &eval(&["analogy", "--questions"], "questions-words.txt"),
        "analogy accuracy:",
    ) / 100.0;
    let ws = number_after(
        &eval(&["similarity", "--pairs"], "wordsim353.tsv"),
        "spearman:",
    );
    let simlex = number_after(
        &eval(&["similarity", "--pairs"], "simlex999.txt"),
        "spearman:",
    );
    Scores {
        secs,
        analogy,
        ws,
        simlex,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let epochs: u32 = args
        .iter()
        .position(|a| a == "--epochs")
        .and_then(|i| args.get(i + 1))
        .map_or(if quick { 1 } else { 3 }, |v| {
            v.parse().expect("--epochs N")
        });
    let data = root().join("../shared/data");
    let tmp = tempfile::tempdir().expect("tempdir");
    let corpus = if quick {
        let text = std::fs::read_to_string(data.join("train.txt")).expect("train.txt");
        let head: String = text.lines().take(20_000).flat_map(|l| [l, "\n"]).collect();
        let p = tmp.path().join("train-head.txt");
        std::fs::write(&p, head).expect("write");
        p
    } else {
        data.join("train.txt")
    };
    let words = std::fs::read_to_string(&corpus)
        .expect("corpus")
        .split_whitespace()
        .count() as f64
        * epochs as f64;

    let emb = tmp.path().join("embedded");
    let embedded = paramdb_run(
        &corpus,
        &data,
        epochs,
        &["--data-dir".into(), emb.display().to_string()],
    );
    let grpc = {
        let (_servers, file) =
            paramdb_tests::servers::start(&paramdb(), tmp.path(), 2, &["--sync", "interval=50"]);
        paramdb_run(
            &corpus,
            &data,
            epochs,
            &["--cluster".into(), file.display().to_string()],
        )
    };
    let t = Instant::now();
    let out = run(Command::new(python())
        .arg(root().join("tests/python/gensim_word2vec.py"))
        .arg(&corpus)
        .arg(&data)
        .arg(epochs.to_string())
        .arg("2"));
    let gensim_secs = t.elapsed().as_secs_f64();
    let field = |k: &str| number_after(&out, &format!("\"{k}\":"));
    let gensim = Scores {
        // The script's own timing leaves out interpreter start-up; use the wall clock like
        // the others.
        secs: gensim_secs,
        analogy: field("analogy"),
        ws: field("wordsim353"),
        simlex: field("simlex999"),
    };

    println!("## word2vec: paramdb vs gensim\n");
    println!(
        "{} ({:.1}M words × {epochs} epochs); skip-gram, dim 100, window 5, negative 5, min-count 5, sample 1e-4, 2 threads\n",
        corpus.file_name().unwrap().to_string_lossy(),
        words / epochs as f64 / 1e6
    );
    println!("| trainer | seconds | words/s | / gensim | analogy | WordSim353 | SimLex-999 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in [
        ("paramdb, embedded shard", &embedded),
        ("paramdb, 2 shard servers over gRPC", &grpc),
        ("gensim 4 (PyPI)", &gensim),
    ] {
        println!(
            "| {name} | {:.1} | {:.0} | {:.2} | {:.2}% | {:.3} | {:.3} |",
            s.secs,
            words / s.secs,
            gensim.secs / s.secs,
            s.analogy * 100.0,
            s.ws,
            s.simlex
        );
    }
}
