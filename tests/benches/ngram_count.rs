//! n-gram counting (issue #23): `paramdb train ngram-lm --kn-only`, order 5, timed with its
//! peak RSS (its `VmHWM`).
//!
//! 1. IMDb `train.txt` (from `../shared/data`, skipped when absent), `--dev-every 0`, with the
//!    default `--memory 1G`: into an embedded shard (the process holds the store too), and by a
//!    trainer process against one server (the trainer's RSS alone, as lmplz's). Then `eval
//!    perplexity` on `test.txt`. KenLM cannot be built here; issue #23 quotes `lmplz -o 5 -S
//!    4G` at 38.9 s (533k tokens/s) and 1.23 GiB on this machine, printed beside.
//! 2. The generator of the bounded-memory test (Zipf(1.0) over 1M words, lines of 10–30 words)
//!    at growing sizes, against one server with `--memory 1G`: seconds against tokens.
//!
//! Prints Markdown. `cargo bench --workspace --bench ngram_count [-- --sizes 25000000,…]`

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use paramdb_tests::bench::{flag, run_measured};
use paramdb_tests::corpus::zipf_corpus;
use paramdb_tests::servers::{self, paramdb_bin};

/// Counts `corpus` (order 5, all lines) with `target` flags; (seconds, peak MiB, output).
fn count(corpus: &Path, target: &[&std::ffi::OsStr], temp: &Path) -> (f64, f64, String) {
    let t = Instant::now();
    let (status, peak, out) = run_measured(
        Command::new(paramdb_bin())
            .args([
                "train",
                "ngram-lm",
                "--kn-only",
                "--order",
                "5",
                "--dev-every",
                "0",
            ])
            .args(["--quiet", "--train"])
            .arg(corpus)
            .arg("--temp-dir")
            .arg(temp)
            .args(target),
    );
    let s = t.elapsed().as_secs_f64();
    assert!(status.success(), "count: {out}");
    (s, peak as f64 / (1 << 20) as f64, out)
}

fn runs_of(out: &str) -> u64 {
    out.split(" sorted runs")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let sizes: Vec<usize> = flag("--sizes")
        .unwrap_or_else(|| "25000000,50000000,100000000,200000000".into())
        .split(',')
        .map(|s| s.parse().expect("--sizes N,N,…"))
        .collect();
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let temp = tmp.path().join("runs");
    std::fs::create_dir_all(&temp).expect("runs dir");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let (train, test) = (data.join("train.txt"), data.join("test.txt"));
    if train.exists() {
        println!("## Counting IMDb train.txt, order 5, --memory 1G\n");
        println!("| target | count s | tokens/s | peak RSS MiB | / lmplz's s (38.9) | / lmplz's RSS (1,259 MiB) |");
        println!("|---|---|---|---|---|---|");
        let embedded = tmp.path().join("embedded");
        let (_servers, cluster) = servers::start(&paramdb_bin(), tmp.path(), 1, &[]);
        for (name, target) in [
            (
                "embedded shard",
                vec!["--data-dir".as_ref(), embedded.as_os_str()],
            ),
            (
                "trainer against 1 server",
                vec!["--cluster".as_ref(), cluster.as_os_str()],
            ),
        ] {
            let (s, peak, out) = count(&train, &target, &temp);
            let tokens: f64 = out
                .split(" tokens")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            println!(
                "| {name} | {s:.1} | {:.0} | {peak:.0} | {:.2} | {:.2} |",
                tokens / s,
                s / 38.9,
                peak / 1259.0
            );
        }
        if test.exists() {
            let t = Instant::now();
            let o = Command::new(paramdb_bin())
                .args(["eval", "perplexity", "--kn-only", "--test"])
                .arg(&test)
                .arg("--data-dir")
                .arg(&embedded)
                .output()
                .expect("eval");
            let s = t.elapsed().as_secs_f64();
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text
                .lines()
                .find(|l| l.contains("Kneser-Ney"))
                .unwrap_or("");
            println!("\n`eval perplexity` on test.txt: {s:.1} s: {line}\n");
        }
    }
    println!("## Counting the Zipf generator, order 5, --memory 1G, against 1 server\n");
    println!("| tokens | corpus MB | count s | tokens/s | sorted runs | trainer peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for &n in &sizes {
        let dir = tmp.path().join(format!("zipf-{n}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let corpus = dir.join("zipf.txt");
        let tokens = zipf_corpus(&corpus, n, 1_000_000, &[], 11);
        let mb = std::fs::metadata(&corpus).map_or(0, |m| m.len()) as f64 / 1e6;
        let (procs, cluster) = servers::start(&paramdb_bin(), &dir, 1, &[]);
        let (s, peak, out) = count(&corpus, &["--cluster".as_ref(), cluster.as_os_str()], &temp);
        println!(
            "| {tokens} | {mb:.0} | {s:.1} | {:.0} | {} | {peak:.0} |",
            tokens as f64 / s,
            runs_of(&out)
        );
        drop(procs);
        std::fs::remove_dir_all(&dir).expect("remove");
    }
}
