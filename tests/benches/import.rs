//! `paramdb import` throughput: 1M rows of dim 100 (400 MB of f32) exported as npy and as
//! word2vec binary, then imported into a fresh embedded shard by `paramdb import` (a separate
//! process: read, stage as RocksDB table files, ingest). Beside it, in the same run: a plain
//! sequential read of the same files (1 MiB reads), and the same rows pushed through the log
//! into a store (1,000-row pushes under `sync=none`, then a checkpoint so they are in RocksDB
//! too), and a plain durable write of as many bytes as the import's table files hold (1 MiB
//! writes, one sync), the least any durable import writes. The page cache is dropped before the import and before the read (as root; otherwise
//! both read warm, and the table says so). Prints Markdown.
//!
//! Needs the `paramdb` binary (`cargo build --release --workspace --bins`).
//!
//! `cargo bench --workspace --bench import [-- --rows N]`

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use paramdb_engine::{ClientId, Store, StoreOptions, SyncPolicy, TableSpec};
use paramdb_tests::servers::paramdb_bin;

const DIM: usize = 100;

fn run(args: &[&str], data: &Path) -> f64 {
    let t = Instant::now();
    let o = Command::new(paramdb_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("paramdb");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// Seconds to read `files` front to back in 1 MiB reads.
fn read_files(files: &[&Path]) -> f64 {
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for f in files {
        let mut r = std::fs::File::open(f).expect("open");
        while r.read(&mut buf).expect("read") > 0 {}
    }
    t.elapsed().as_secs_f64()
}

/// Seconds to write `bytes` to a new file in `dir` in 1 MiB writes and sync it: what any
/// durable import must at least do.
fn write_durably(dir: &Path, bytes: u64) -> f64 {
    use std::io::Write;
    let buf = vec![0x5au8; 1 << 20];
    let path = dir.join("durable-write");
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).expect("create");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write");
        left -= n as u64;
    }
    f.sync_data().expect("sync");
    let s = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path).expect("remove");
    s
}

/// Drops the page cache (needs root). Whether it could.
fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// Bytes of the RocksDB table files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            n += dir_bytes(&p);
        } else if p.extension().is_some_and(|x| x == "sst") {
            n += e.metadata().map_or(0, |m| m.len());
        }
    }
    n
}

fn main() {
    let rows: u64 =
        paramdb_tests::bench::flag("--rows").map_or(1_000_000, |v| v.parse().expect("--rows N"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let opts = || StoreOptions {
        sync: SyncPolicy::None,
        cache_bytes: 0,
        ..StoreOptions::default()
    };
    let values: Vec<f32> = (0..1000 * DIM).map(|i| (i % 977) as f32 * 1e-3).collect();
    {
        let store = Store::open(data.join("shard-0"), opts()).expect("open");
        store
            .create_table(TableSpec::new("t", DIM as u32))
            .expect("table");
        for start in (0..rows).step_by(1000) {
            let n = (rows - start).min(1000) as usize;
            store
                .push_range(
                    "t",
                    ClientId::ANONYMOUS,
                    0,
                    start * 7919,
                    &values[..n * DIM],
                )
                .expect("push");
        }
        store.close().expect("close");
    }
    let mb = rows as f64 * DIM as f64 * 4.0 / 1e6;
    println!("## paramdb import, {rows} rows × dim {DIM} ({mb:.0} MB of f32)\n");
    println!("| format | import s | rows/s | sequential read of the files, rows/s | import / read | durable write of the table files' bytes, rows/s | import / write | pushes through the log (+ checkpoint), rows/s | import / pushes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    // Pushes through the log: the peer that does what an import replaces.
    let push_rate = {
        let store = Store::open(tmp.path().join("pushed"), opts()).expect("open");
        store
            .create_table(TableSpec::new("t", DIM as u32))
            .expect("table");
        let t = Instant::now();
        for (i, start) in (0..rows).step_by(1000).enumerate() {
            let n = (rows - start).min(1000) as usize;
            let keys: Vec<u64> = (start..start + n as u64).map(|k| k * 7919).collect();
            store
                .push("t", ClientId(1), i as u64 + 1, &keys, &values[..n * DIM])
                .expect("push");
        }
        store.checkpoint().expect("checkpoint");
        let s = t.elapsed().as_secs_f64();
        store.close().expect("close");
        rows as f64 / s
    };
    for (format, file, side) in [
        ("npy", "v.npy", Some("v.keys.npy")),
        ("word2vec-bin", "v.bin", None),
    ] {
        let out = tmp.path().join(file);
        let o = out.to_str().expect("path");
        // Plain table: npy keeps keys; word2vec-bin labels rows with their keys as text.
        run(
            &["export", "t", "--format", format, "--out", o, "--quiet"],
            &data,
        );
        let fresh = tmp.path().join(format!("import-{format}"));
        let cold = drop_caches();
        let s = run(&["import", "t", "--format", format, "--in", o], &fresh);
        let staged = dir_bytes(&fresh);
        let side = side.map(|f| tmp.path().join(f));
        let mut files = vec![out.as_path()];
        if let Some(p) = &side {
            files.push(p);
        }
        drop_caches();
        let read = read_files(&files);
        let wr = rows as f64 / write_durably(tmp.path(), staged);
        let (ir, rr) = (rows as f64 / s, rows as f64 / read);
        println!(
            "| {format}{} | {s:.2} | {ir:.0} | {rr:.0} | {:.2} | {wr:.0} | {:.2} | {push_rate:.0} | {:.2} |",
            if cold { "" } else { " (page cache warm)" },
            ir / rr,
            ir / wr,
            ir / push_rate
        );
        std::fs::remove_dir_all(&fresh).expect("remove");
    }
}
