//! word2vec side by side, in one run: paramdb against an embedded shard, paramdb against two
//! local `paramdb serve` processes over gRPC, and gensim (PyPI) — the same corpus and settings
//! (dim 100, window 5, negative 5, min-count 5, sample 1e-4, 2 threads), for skip-gram and for
//! CBOW (paramdb embedded against gensim `sg=0` at alpha 0.025, its default, and at 0.05,
//! word2vec.c's and paramdb's CBOW default). Reports words/s (corpus words × epochs over
//! wall-clock seconds, vocabulary counting included for everyone), analogy accuracy (30,000
//! most frequent words, case-folded), and Spearman's ρ on WordSim353 and SimLex-999. Then it
//! exports the embedded skip-gram model as word2vec binary and counts the analogy questions
//! gensim covers on it with `restrict_vocab=30000`, against gensim's own vectors. Prints
//! Markdown.
//!
//! Needs the `paramdb` binary (`cargo build --release --workspace --bins`) and a Python with
//! gensim (`PARAMDB_PYTHON`, else `.venv`; `make bench` sets both up).
//!
//! With skip-gram it also trains against 2 key ranges each served by a group of 3 replicas
//! (`--no-replicas` leaves that out).
//!
//! `cargo bench -p paramdb-tests --bench word2vec [-- --epochs N] [--quick] [--only sg|cbow]
//! [--no-replicas]`

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

/// Trains with `target` args (and `extra` training flags), then evaluates the stored model.
fn paramdb_run(
    corpus: &Path,
    data: &Path,
    epochs: u32,
    target: &[String],
    extra: &[&str],
) -> Scores {
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
        .args(extra)
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

/// gensim with `extra` script flags; `vectors` saves its vectors (binary).
fn gensim_run(
    corpus: &Path,
    data: &Path,
    epochs: u32,
    extra: &[&str],
    vectors: Option<&Path>,
) -> (Scores, f64) {
    let t = Instant::now();
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/gensim_word2vec.py"))
        .arg(corpus)
        .arg(data)
        .arg(epochs.to_string())
        .arg("2");
    if let Some(v) = vectors {
        cmd.arg(v);
    }
    let out = run(cmd.args(extra));
    let field = |k: &str| number_after(&out, &format!("\"{k}\":"));
    // The script times itself from before it imports gensim to the end of training, leaving
    // out its evaluation (paramdb's figures leave it out too); interpreter start-up, a few
    // hundredths of a second, is not counted.
    let secs = field("seconds");
    debug_assert!(secs <= t.elapsed().as_secs_f64());
    (
        Scores {
            secs,
            analogy: field("analogy"),
            ws: field("wordsim353"),
            simlex: field("simlex999"),
        },
        field("covered"),
    )
}

fn table(words: f64, gensim_secs: f64, rows: &[(&str, &Scores)]) {
    println!("| trainer | seconds | words/s | / gensim | analogy | WordSim353 | SimLex-999 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, s) in rows {
        println!(
            "| {name} | {:.1} | {:.0} | {:.2} | {:.2}% | {:.3} | {:.3} |",
            s.secs,
            words / s.secs,
            gensim_secs / s.secs,
            s.analogy * 100.0,
            s.ws,
            s.simlex
        );
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let wants = |m: &str| only.as_deref().is_none_or(|o| o == m);
    // 2 ranges × 3 replica groups (6 server processes on these cores) too, unless
    // `--no-replicas`.
    let wants_replicated = !args.iter().any(|a| a == "--no-replicas");
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
    println!(
        "{} ({:.1}M words × {epochs} epochs); dim 100, window 5, negative 5, min-count 5, sample 1e-4, 2 threads\n",
        corpus.file_name().unwrap().to_string_lossy(),
        words / epochs as f64 / 1e6
    );

    if wants("sg") {
        let emb = tmp.path().join("embedded");
        let embedded = paramdb_run(
            &corpus,
            &data,
            epochs,
            &["--data-dir".into(), emb.display().to_string()],
            &[],
        );
        let over = |file: &Path| {
            paramdb_run(
                &corpus,
                &data,
                epochs,
                &["--cluster".into(), file.display().to_string()],
                &[],
            )
        };
        let servers = ["--sync", "interval=50"];
        let grpc = {
            let (_servers, file) =
                paramdb_tests::servers::start(&paramdb(), tmp.path(), 2, &servers);
            over(&file)
        };
        let replicated = wants_replicated.then(|| {
            let dir = tmp.path().join("groups");
            std::fs::create_dir_all(&dir).expect("groups dir");
            let (_servers, file) =
                paramdb_tests::servers::start_groups(&paramdb(), &dir, 2, 3, &servers);
            over(&file)
        });
        let gensim_vectors = tmp.path().join("gensim.bin");
        let (gensim, gensim_covered) =
            gensim_run(&corpus, &data, epochs, &[], Some(&gensim_vectors));
        println!("## word2vec: paramdb vs gensim, skip-gram\n");
        let mut rows = vec![
            ("paramdb, embedded shard", &embedded),
            ("paramdb, 2 shard servers over gRPC", &grpc),
        ];
        if let Some(r) = &replicated {
            rows.push(("paramdb, 2 ranges × 3 replicas over gRPC", r));
        }
        rows.push(("gensim 4 (PyPI)", &gensim));
        table(words, gensim.secs, &rows);
        // The export's order decides which words gensim's restrict_vocab keeps.
        let ours = tmp.path().join("paramdb.bin");
        run(Command::new(paramdb())
            .args([
                "export",
                "w2v.in",
                "--format",
                "word2vec-bin",
                "--quiet",
                "--out",
            ])
            .arg(&ours)
            .arg("--data-dir")
            .arg(&emb));
        let cov = run(Command::new(python())
            .arg(root().join("tests/python/analogy_coverage.py"))
            .arg(&ours)
            .arg(data.join("questions-words.txt")));
        println!(
            "Analogy questions gensim evaluates with `restrict_vocab=30000` on paramdb's export: {:.0}; on gensim's own vectors: {gensim_covered:.0}.\n",
            number_after(&cov, "\"covered\":")
        );
    }
    if wants("cbow") {
        let emb = tmp.path().join("embedded-cbow");
        let ours = paramdb_run(
            &corpus,
            &data,
            epochs,
            &["--data-dir".into(), emb.display().to_string()],
            &["--cbow"],
        );
        let (g025, _) = gensim_run(&corpus, &data, epochs, &["--cbow"], None);
        let (g05, _) = gensim_run(&corpus, &data, epochs, &["--cbow", "--alpha", "0.05"], None);
        println!("## word2vec: paramdb vs gensim, CBOW\n");
        println!("(/ gensim is against gensim at its default alpha 0.025.)\n");
        table(
            words,
            g025.secs,
            &[
                ("paramdb --cbow (alpha 0.05), embedded shard", &ours),
                ("gensim 4 sg=0, alpha 0.025 (its default)", &g025),
                ("gensim 4 sg=0, alpha 0.05", &g05),
            ],
        );
    }
}
