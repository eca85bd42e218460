//! The n-gram language model on IMDb (`../shared/data`, or `PARAMDB_DATA`): Kneser-Ney of
//! each order in `--orders` (default 3,5) trained on all of `train.txt`, beside KenLM's
//! perplexities on the same split (given in issue #6, KenLM cannot be installed here); then,
//! unless `--only kn`, the neural model with a 1% dev split and its interpolation. Each step is
//! the `paramdb` binary under `/usr/bin/time -v` against embedded shards. Prints Markdown.
//!
//! `cargo bench -p paramdb-tests --bench ngram_lm [-- --orders 3,5] [--epochs 2] [--only kn|neural]`
//!
//! Needs `cargo build --release --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use paramdb_tests::bench::flag;

/// KenLM `lmplz` (interpolated modified Kneser-Ney) on train.txt → test.txt: order, perplexity
/// including and excluding OOVs.
const KENLM: [(usize, f64, f64); 2] = [(3, 226.30, 217.18), (5, 209.91, 201.40)];

struct Run {
    stdout: String,
    seconds: f64,
    peak_mib: f64,
}

fn run(args: &[&str], data: &Path) -> Run {
    let t = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(paramdb_tests::servers::paramdb_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("run paramdb under /usr/bin/time");
    let seconds = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "paramdb {args:?}: {stderr}");
    let peak_kib: f64 = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        seconds,
        peak_mib: peak_kib / 1024.0,
    }
}

fn line<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no {what:?} in: {text}"))
}

/// The number after `before` on a line.
fn number(line: &str, before: &str) -> f64 {
    line.split(before)
        .nth(1)
        .and_then(|s| s.split(|c: char| !(c.is_ascii_digit() || c == '.')).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after {before:?} in {line:?}"))
}

fn main() {
    let data_dir = std::env::var("PARAMDB_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let train = data_dir.join("train.txt");
    let test = data_dir.join("test.txt");
    let (train, test) = (
        train.to_str().expect("utf-8"),
        test.to_str().expect("utf-8"),
    );
    let orders: Vec<usize> = flag("--orders")
        .unwrap_or_else(|| "3,5".into())
        .split(',')
        .map(|o| o.parse().expect("--orders 3,5"))
        .collect();
    let epochs = flag("--epochs").unwrap_or_else(|| "2".into());
    let only = flag("--only");
    let tmp = tempfile::tempdir_in(std::env::var("PARAMDB_BENCH_DIR").unwrap_or(".".into()))
        .expect("tempdir");

    if only.as_deref() != Some("neural") {
        println!("## Kneser-Ney on IMDb (train.txt → test.txt), against KenLM\n");
        println!("| order | count s | tokens/s | count peak RSS MiB | eval s | perplexity (incl. OOV) | excl. OOV | KenLM | / KenLM |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for &n in &orders {
            let data = tmp.path().join(format!("kn{n}"));
            let o = n.to_string();
            let c = run(
                &[
                    "train",
                    "ngram-lm",
                    "--train",
                    train,
                    "--order",
                    &o,
                    "--dev-every",
                    "0",
                    "--kn-only",
                    "-q",
                ],
                &data,
            );
            let counted = line(&c.stdout, "counted");
            let (secs, rate) = (number(counted, " in "), number(counted, "s ("));
            let e = run(&["eval", "perplexity", "--test", test], &data);
            let l = line(&e.stdout, "Kneser-Ney");
            let (incl, excl) = (number(l, "perplexity "), number(l, "OOVs, "));
            let kenlm = KENLM.iter().find(|k| k.0 == n);
            println!(
                "| {n} | {secs:.1} | {rate:.0} | {:.0} | {:.1} | {incl:.2} | {excl:.2} | {} | {} |",
                c.peak_mib,
                e.seconds,
                kenlm.map_or("–".into(), |k| format!("{:.2} / {:.2}", k.1, k.2)),
                kenlm.map_or("–".into(), |k| format!("{:.4}", incl / k.1)),
            );
            for l in c.stdout.lines().filter(|l| l.contains("discounts")) {
                eprintln!("order {n} model: {}", l.trim());
            }
            std::fs::remove_dir_all(&data).ok();
        }
    }
    if only.as_deref() != Some("kn") {
        let data = tmp.path().join("lm");
        let t = run(
            &[
                "train", "ngram-lm", "--train", train, "--order", "5", "--epochs", &epochs, "-q",
            ],
            &data,
        );
        let e = run(&["eval", "perplexity", "--test", test], &data);
        let trained = line(&t.stdout, "trained the neural model");
        println!("\n## Neural 5-gram and interpolation ({epochs} epochs, 1% dev split)\n");
        println!("```\n{}{}```", t.stdout, e.stdout);
        println!(
            "\ntraining {:.1} s in all (network {:.1} s, {:.0} tokens/s), peak RSS {:.0} MiB; evaluation {:.1} s, peak RSS {:.0} MiB",
            t.seconds,
            number(trained, " in "),
            number(trained, "s ("),
            t.peak_mib,
            e.seconds,
            e.peak_mib
        );
    }
}
