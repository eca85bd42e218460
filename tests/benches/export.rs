//! `paramdb export` throughput: a table of 1M rows of dim 100 (400 MB of f32) exported from an
//! embedded shard in each format, beside a plain sequential write of the same number of bytes
//! (1 MiB writes, then fsync) in the same run, and the export process's peak RSS (read from
//! `/usr/bin/time -v`). Then a model's table of as many words, exported most frequent first
//! (the external sort, within 256 MiB and within 64 MiB) and in key order. Prints Markdown.
//!
//! Needs the `paramdb` binary (`cargo build --release --workspace --bins`) and `/usr/bin/time`.
//!
//! `cargo bench -p paramdb-tests --bench export [-- --rows N]`

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use std::path::Path;

use paramdb_client::{BlockingClient, ClientOptions};
use paramdb_engine::{ClientId, Store, StoreOptions, SyncPolicy, TableSpec};

const DIM: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: u64 = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map_or(1_000_000, |v| v.parse().expect("--rows N"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    {
        // No hot-row cache file left behind: an export's open would validate a warm one
        // (touching every slot) and count it in the export's RSS.
        let o = StoreOptions {
            sync: SyncPolicy::None,
            cache_bytes: 0,
            ..StoreOptions::default()
        };
        let store = Store::open(data.join("shard-0"), o).expect("open");
        store
            .create_table(TableSpec::new("t", DIM as u32))
            .expect("table");
        let values: Vec<f32> = (0..1000 * DIM).map(|i| i as f32 * 1e-3).collect();
        for start in (0..rows).step_by(1000) {
            let n = (rows - start).min(1000) as usize;
            store
                .push_range("t", ClientId::ANONYMOUS, 0, start, &values[..n * DIM])
                .expect("push");
        }
        store.close().expect("close");
    }
    let bytes = rows * DIM as u64 * 4;
    let seq = {
        let p = tmp.path().join("seq.bin");
        let chunk = vec![7u8; 1 << 20];
        let t = Instant::now();
        let mut f = std::fs::File::create(&p).expect("create");
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).expect("write");
            left -= n as u64;
        }
        f.sync_all().expect("sync");
        let s = t.elapsed().as_secs_f64();
        std::fs::remove_file(&p).expect("remove");
        bytes as f64 / 1e6 / s
    };
    println!(
        "## paramdb export, {rows} rows × dim {DIM} ({:.0} MB of f32)\n",
        bytes as f64 / 1e6
    );
    println!("| format | seconds | MB/s (of f32 data) | sequential write MB/s | export / write | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for format in ["npy", "safetensors", "word2vec-bin", "word2vec-text", "tsv"] {
        let (s, rss) = export(&data, "t", format, &[], tmp.path());
        let mbs = bytes as f64 / 1e6 / s;
        println!(
            "| {format} | {s:.2} | {mbs:.0} | {seq:.0} | {:.2} | {rss:.0} |",
            mbs / seq
        );
    }

    // A model's table: rows labelled by a vocabulary, exported most frequent first.
    let model = tmp.path().join("model");
    model_table(&model, rows, tmp.path());
    println!("\n### A model's table ({rows} words), word2vec-bin\n");
    println!(
        "| order | sort memory | seconds | MB/s (of f32 data) | export / write | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|");
    for (order, memory) in [("count", "256M"), ("count", "64M"), ("key", "-")] {
        let mut extra = vec!["--order", order];
        if memory != "-" {
            extra.extend(["--sort-memory", memory]);
        }
        let (s, rss) = export(&model, "m.in", "word2vec-bin", &extra, tmp.path());
        let mbs = bytes as f64 / 1e6 / s;
        println!(
            "| {order} | {memory} | {s:.2} | {mbs:.0} | {:.2} | {rss:.0} |",
            mbs / seq
        );
    }
}

/// Exports `table` of the data directory `data` as `format`; seconds and peak RSS in MiB.
fn export(data: &Path, table: &str, format: &str, extra: &[&str], tmp: &Path) -> (f64, f64) {
    let out = tmp.join(format!("out.{format}"));
    let t = Instant::now();
    let o = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(paramdb_tests::servers::paramdb_bin())
        .args(["export", table, "--quiet", "--format", format, "--out"])
        .arg(&out)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .expect("/usr/bin/time");
    let s = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let rss_kb: f64 = err
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let _ = std::fs::remove_file(&out);
    (s, rss_kb / 1024.0)
}

/// A model `m` in `dir`: a vocabulary of `rows` words (`w0` … with counts falling like a
/// Zipf law's, many tied) loaded from a word2vec.c vocabulary file, and `m.in` with a row
/// for each word, checkpointed.
fn model_table(dir: &Path, rows: u64, tmp: &Path) {
    let o = StoreOptions {
        sync: SyncPolicy::None,
        cache_bytes: 0,
        ..StoreOptions::default()
    };
    let client = BlockingClient::open_embedded(dir, 1, o, ClientOptions::default()).expect("open");
    let file = tmp.join("vocab.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
    for i in 0..rows {
        writeln!(f, "w{i} {}", 1 + 10_000_000 / (i + 1)).expect("write");
    }
    f.flush().expect("flush");
    drop(f);
    paramdb_trainer::vocab::load_counts_file(&client, "m", &file, 1 << 20).expect("vocabulary");
    client
        .create_table(TableSpec::new("m.in", DIM as u32))
        .expect("table");
    let values: Vec<f32> = (0..10_000 * DIM).map(|i| i as f32 * 1e-3).collect();
    let keys: Vec<u64> = (0..rows)
        .map(|i| paramdb_trainer::keys::word_key(&format!("w{i}")))
        .collect();
    for chunk in keys.chunks(10_000) {
        client
            .push("m.in", chunk, &values[..chunk.len() * DIM])
            .expect("push");
    }
    client.checkpoint().expect("checkpoint");
}
