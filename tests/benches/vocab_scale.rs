//! Very large vocabularies: the word2vec trainer's memory must not grow with the vocabulary.
//!
//! For each size V (default 1M and 10M), a corpus is generated in which every one of V
//! distinct words occurs at least once and `--zipf-per-word` × V more tokens are drawn from
//! Zipf(1.0) over the same words. `paramdb train word2vec --min-count 1` trains one epoch
//! against 2 local `paramdb serve` processes over gRPC, and the trainer process's RSS is
//! sampled every 100 ms (its peak is read from `VmHWM`). Prints Markdown for BENCHMARKS.md.
//!
//! Needs the `paramdb` binary (`cargo build --release --workspace --bins`) and, at 10M words,
//! about 8 GB of free disk.
//!
//! `cargo bench -p paramdb-tests --bench vocab_scale [-- --sizes 1000000,10000000 --zipf-per-word 2 --dim 32]`

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paramdb_tests::bench::{flag as arg, status_kib};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;

/// Writes the corpus; returns its token count.
fn corpus(path: &Path, distinct: u64, zipf_per_word: u64) -> u64 {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("corpus"));
    let mut rng = SmallRng::seed_from_u64(distinct);
    let zipf = rand_distr::Zipf::new(distinct as f64, 1.0).expect("zipf");
    let total = distinct * (1 + zipf_per_word);
    let (mut forced, mut left) = (0u64, total);
    for i in 0..total {
        // Every word once (spread uniformly through the corpus), the rest Zipf-distributed.
        let id = if rng.random_range(0..left) < distinct - forced {
            forced += 1;
            forced - 1
        } else {
            zipf.sample(&mut rng) as u64 - 1
        };
        left -= 1;
        write!(w, "w{id}").expect("write");
        w.write_all(if i % 20 == 19 { b"\n" } else { b" " })
            .expect("write");
    }
    w.write_all(b"\n").expect("write");
    w.flush().expect("flush");
    total
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss(pid: u32) -> Option<(u64, u64)> {
    Some((status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` probing for benchmark names
    }
    let sizes: Vec<u64> = arg("--sizes")
        .unwrap_or_else(|| "1000000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--sizes"))
        .collect();
    let zipf_per_word: u64 = arg("--zipf-per-word").map_or(2, |v| v.parse().expect("number"));
    let dim = arg("--dim").unwrap_or_else(|| "32".into());
    let paramdb = paramdb_tests::servers::paramdb_bin();
    let mut rows = Vec::new();
    for &distinct in &sizes {
        let tmp =
            tempfile::tempdir_in(std::env::var("PARAMDB_BENCH_DIR").unwrap_or("/var/tmp".into()))
                .expect("tempdir");
        let path = tmp.path().join("corpus.txt");
        let t = Instant::now();
        let tokens = corpus(&path, distinct, zipf_per_word);
        let bytes = std::fs::metadata(&path).expect("corpus").len();
        eprintln!(
            "{distinct} distinct words: {tokens} tokens, {:.0} MB, generated in {:.1} s",
            bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        let (servers, file) =
            paramdb_tests::servers::start(&paramdb, tmp.path(), 2, &["--sync", "interval=50"]);
        let t = Instant::now();
        let mut child = Command::new(&paramdb)
            .args(["train", "word2vec", "--corpus"])
            .arg(&path)
            .arg("--cluster")
            .arg(&file)
            .args([
                "--min-count",
                "1",
                "--dim",
                &dim,
                "--epochs",
                "1",
                "--threads",
                "2",
            ])
            .args(["--sample", "1e-4", "--quiet"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("paramdb train");
        let pid = child.id();
        let (mut hwm, mut samples) = (0u64, Vec::new());
        while child.try_wait().expect("wait").is_none() {
            if let Some((now, peak)) = rss(pid) {
                hwm = hwm.max(peak);
                samples.push(now);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("trainer output");
        let secs = t.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "trainer failed: {text}");
        drop(servers);
        // RSS in the second half of the run: training, after counting and summarizing.
        let late = samples[samples.len() / 2..]
            .iter()
            .max()
            .copied()
            .unwrap_or(0);
        let summary = text.lines().last().unwrap_or_default().to_string();
        eprintln!("  {summary}\n  peak RSS {} MiB, {secs:.0} s", hwm / 1024);
        rows.push((distinct, tokens, bytes, hwm, late, secs, summary));
    }
    println!(
        "## word2vec trainer memory against the vocabulary size (min-count 1, dim {dim}, 1 epoch, 2 threads, 2 shard servers over gRPC)\n"
    );
    println!("| distinct words | corpus tokens | corpus MB | trainer peak RSS MiB | peak RSS, second half of the run, MiB | wall s | trainer's summary |");
    println!("|---|---|---|---|---|---|---|");
    for (distinct, tokens, bytes, hwm, late, secs, summary) in &rows {
        println!(
            "| {distinct} | {tokens} | {:.0} | {:.0} | {:.0} | {secs:.0} | {summary} |",
            *bytes as f64 / 1e6,
            *hwm as f64 / 1024.0,
            *late as f64 / 1024.0
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "\nPeak RSS at {} words / at {} words: **{:.2}**.",
            last.0,
            first.0,
            last.3 as f64 / first.3.max(1) as f64
        );
    }
}
