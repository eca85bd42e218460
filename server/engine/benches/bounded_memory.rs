//! Bounded memory: a shard whose table is 8× larger than its hot-row cache budget, filled and
//! then driven by a long Zipf(1.0) push/pull run, with the process's resident memory sampled
//! throughout. The claim under test: peak RSS ≤ cache budget + RocksDB block cache + 20%.
//! Prints a Markdown report for BENCHMARKS.md.
//!
//! `cargo bench -p paramdb-engine --bench bounded_memory [-- --rows N --secs S --cache-mib C
//! --block-mib B --dirty-mib D]`
//!
//! Defaults: 10M rows of dim 100 under `sgd` (416-byte rows, 4.2 GB of them; RocksDB takes
//! about 5.7 GB by the end, so it needs about 6 GB of free disk), a 512 MiB cache, a 128 MiB
//! block cache, an 8 MiB dirty-row budget, 60 s of 70% pushes / 30% pulls of 1,000 distinct
//! Zipf(1.0) keys from 2 threads. Longer runs take more disk: RocksDB keeps overwritten row
//! versions until compaction catches up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paramdb_engine::{ClientId, Store, StoreOptions, SyncPolicy, TableSpec, UpdateRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 100;
const BATCH: usize = 1000;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of /proc/self/status in bytes (`VmRSS:`, `VmHWM:`, `RssAnon:`, `RssFile:`).
fn status(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// (VmRSS, VmHWM) of this process in bytes.
fn rss() -> (u64, u64) {
    (status("VmRSS:"), status("VmHWM:"))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let rows = arg("--rows", 10_000_000);
    let secs = arg("--secs", 60);
    let cache = arg("--cache-mib", 512) << 20;
    let block = arg("--block-mib", 128) << 20;
    let dirty = arg("--dirty-mib", 8) << 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        sync: SyncPolicy::Interval(Duration::from_millis(10)),
        cache_bytes: cache,
        block_cache_bytes: block as usize,
        checkpoint_dirty_bytes: dirty,
        ..StoreOptions::default()
    };
    let store = Store::open(tmp.path(), opts).expect("open");
    store
        .create_table(TableSpec::new("emb", DIM as u32).with_rule(UpdateRule::Sgd { lr: 0.01 }))
        .expect("table");

    let opened_anon = status("RssAnon:");
    // RSS sampled every 50 ms: the peak of each phase.
    let phase_peak = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    // (seconds into the run, RSS) during the push/pull run, to see whether it plateaus.
    let run_start = std::sync::Mutex::new(None::<Instant>);
    let samples = std::sync::Mutex::new(Vec::<(f64, u64)>::new());
    let (fill_secs, fill_peak, run_stats) = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let now = rss().0;
                phase_peak.fetch_max(now, Ordering::Relaxed);
                if let Some(t) = *run_start.lock().unwrap() {
                    samples
                        .lock()
                        .unwrap()
                        .push((t.elapsed().as_secs_f64(), now));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });

        // Fill: every row pushed once, in 1,000-row blocks, from 2 threads.
        let t0 = Instant::now();
        let blocks = rows.div_ceil(BATCH as u64);
        std::thread::scope(|f| {
            for t in 0..2u64 {
                let store = &store;
                f.spawn(move || {
                    let values = vec![0.001f32; BATCH * DIM];
                    let mut seq = 0;
                    for b in (t..blocks).step_by(2) {
                        let start = b * BATCH as u64;
                        let n = (rows - start).min(BATCH as u64) as usize;
                        seq += 1;
                        store
                            .push_range("emb", ClientId(t + 1), seq, start, &values[..n * DIM])
                            .expect("fill push");
                    }
                });
            }
        });
        store.checkpoint().expect("checkpoint");
        let fill_secs = t0.elapsed().as_secs_f64();
        let fill_peak = phase_peak.swap(0, Ordering::Relaxed);
        eprintln!(
            "anonymous RSS: {:.0} MiB after open, {:.0} MiB after the fill",
            opened_anon as f64 / MIB,
            status("RssAnon:") as f64 / MIB
        );

        // Run: Zipf(1.0) keys, hot keys spread over the key space by an odd multiplier
        // (a permutation modulo `rows`, which is not a multiple of the multiplier's factors).
        let zipf = rand_distr::Zipf::new(rows as f64, 1.0).expect("zipf");
        let (pushed, pulled) = (AtomicU64::new(0), AtomicU64::new(0));
        let stop = AtomicBool::new(false);
        let before = store.stats();
        let t0 = Instant::now();
        *run_start.lock().unwrap() = Some(t0);
        std::thread::scope(|r| {
            for t in 0..2u64 {
                let (store, zipf, pushed, pulled, stop) = (&store, &zipf, &pushed, &pulled, &stop);
                r.spawn(move || {
                    use rand::distr::Distribution;
                    let mut rng = StdRng::seed_from_u64(t + 11);
                    let mut seq = 1_000_000;
                    let mut out = vec![0f32; BATCH * DIM];
                    let grads: Vec<f32> = (0..BATCH * DIM)
                        .map(|_| rng.random_range(-0.1f32..0.1))
                        .collect();
                    while !stop.load(Ordering::Relaxed) {
                        let mut set = std::collections::HashSet::with_capacity(BATCH);
                        while set.len() < BATCH {
                            let rank = zipf.sample(&mut rng) as u64 - 1;
                            set.insert(rank.wrapping_mul(2_654_435_761) % rows);
                        }
                        let keys: Vec<u64> = set.into_iter().collect();
                        if rng.random_bool(0.7) {
                            seq += 1;
                            store
                                .push("emb", ClientId(t + 1), seq, &keys, &grads)
                                .expect("push");
                            pushed.fetch_add(BATCH as u64, Ordering::Relaxed);
                        } else {
                            store.pull_into("emb", &keys, &mut out).expect("pull");
                            pulled.fetch_add(BATCH as u64, Ordering::Relaxed);
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_secs(secs));
            stop.store(true, Ordering::Relaxed);
        });
        let run_secs = t0.elapsed().as_secs_f64();
        let run_peak = phase_peak.load(Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
        let after = store.stats();
        (
            fill_secs,
            fill_peak,
            (
                run_secs,
                run_peak,
                pushed.into_inner(),
                pulled.into_inner(),
                before,
                after,
            ),
        )
    });
    let (run_secs, run_peak, pushed, pulled, before, after) = run_stats;
    let (_, hwm) = rss();
    let (anon, file) = (status("RssAnon:"), status("RssFile:"));
    let table_bytes = dir_bytes(&tmp.path().join("rocksdb"));
    let bound = (cache + block) as f64 * 1.2;
    let hits = after.cache.hits - before.cache.hits;
    let lookups = hits + after.cache.misses - before.cache.misses;

    println!("## Bounded memory\n");
    println!(
        "{rows} rows × dim {DIM} (`sgd`), {:.2} GB in RocksDB; hot-row cache {:.0} MiB (table / cache = {:.1}), block cache {:.0} MiB, dirty-row budget {:.0} MiB\n",
        table_bytes as f64 / 1e9,
        cache as f64 / MIB,
        table_bytes as f64 / cache as f64,
        block as f64 / MIB,
        dirty as f64 / MIB
    );
    println!("| phase | seconds | rows/s | peak RSS MiB | bound (cache + block cache + 20%) MiB | peak / bound |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| fill (every row pushed once, 2 threads) | {fill_secs:.1} | {:.0} | {:.0} | {:.0} | {:.2} |",
        rows as f64 / fill_secs,
        fill_peak as f64 / MIB,
        bound / MIB,
        fill_peak as f64 / bound
    );
    println!(
        "| Zipf(1.0) 70% push / 30% pull, 2 threads | {run_secs:.1} | {:.0} | {:.0} | {:.0} | {:.2} |",
        (pushed + pulled) as f64 / run_secs,
        run_peak as f64 / MIB,
        bound / MIB,
        run_peak as f64 / bound
    );
    println!(
        "\nwhole process: VmHWM {:.0} MiB ({:.2} of the bound); run: {} rows pushed, {} pulled, cache hit rate {:.3}, {} evictions, {} checkpoints, cache resident {:.0} MiB",
        hwm as f64 / MIB,
        hwm as f64 / bound,
        pushed,
        pulled,
        if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 },
        after.cache.evictions - before.cache.evictions,
        after.checkpoints - before.checkpoints,
        after.cache.resident_bytes as f64 / MIB
    );
    println!(
        "at the end: RSS {:.0} MiB = {:.0} MiB anonymous (heap: rows in flight, block cache, RocksDB) + {:.0} MiB file-backed (the cache's mapped slots, the binary)",
        rss().0 as f64 / MIB,
        anon as f64 / MIB,
        file as f64 / MIB
    );
    let samples = samples.into_inner().unwrap();
    let tenths: Vec<String> = (0..10)
        .map(|i| {
            let (a, b) = (run_secs * i as f64 / 10.0, run_secs * (i + 1) as f64 / 10.0);
            let peak = samples
                .iter()
                .filter(|(t, _)| *t >= a && *t < b)
                .map(|s| s.1)
                .max()
                .unwrap_or(0);
            format!("{:.0}", peak as f64 / MIB)
        })
        .collect();
    println!(
        "peak RSS in each tenth of the run, MiB: {}",
        tenths.join(", ")
    );
    drop(store);
}
