//! Store benchmarks, with raw RocksDB side by side in the same run (ratios are what to
//! compare: these machines are noisy). Prints a Markdown report for BENCHMARKS.md.
//!
//! `cargo bench -p paramdb-engine --bench store [-- --quick] [--only push|pull|cache|replay|contended]`
//!
//! - push: 1,000-key batches of dim-100 AdaGrad gradients (applied on the server), uniform
//!   keys over 1M, under each sync policy, 1 and 4 pushing threads. Peer: RocksDB WriteBatch of
//!   the same 1,000 400-byte rows with its own WAL (synced per batch, or not), no read-modify-write.
//! - pull: 1,000-key batches, rows in memory (dirty) and in RocksDB (after a checkpoint). Peer:
//!   RocksDB batched multi-get of the same keys.
//! - cache: 1M stored rows; pulls served by the hot-row cache beside a plain memcpy (gather) of
//!   the same bytes; pulls with the cache off beside raw RocksDB multi-get of the same keys and
//!   value sizes; Zipf(1.0) pulls with a cache of 10% of the table (hit rate, rows/s).
//! - replay: open after a crash with ~1 GiB of log, against a plain sequential read of the same
//!   segment files, cold (page cache dropped, needs root) and warm.
//! - contended: 2 threads pulling cached rows, alone and while 2 threads push under `sync`
//!   (each push waits for its fsync): how much pulls lose to pushes that are logging.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paramdb_engine::{ClientId, Store, StoreOptions, SyncPolicy, TableSpec, UpdateRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 100;
const BATCH: usize = 1000;
const KEYS: u64 = 1_000_000;

fn batch_keys(rng: &mut StdRng) -> Vec<u64> {
    let mut set = std::collections::HashSet::with_capacity(BATCH);
    while set.len() < BATCH {
        set.insert(rng.random_range(0..KEYS));
    }
    set.into_iter().collect()
}

/// 1,000 distinct keys drawn from Zipf(1.0) over the key space: a few rows are in almost every
/// batch, as with word embeddings.
fn zipf_keys(rng: &mut StdRng, zipf: &rand_distr::Zipf<f64>) -> Vec<u64> {
    use rand::distr::Distribution;
    let mut set = std::collections::HashSet::with_capacity(BATCH);
    while set.len() < BATCH {
        set.insert(zipf.sample(rng) as u64 - 1);
    }
    set.into_iter().collect()
}

fn grads(rng: &mut StdRng) -> Vec<f32> {
    (0..BATCH * DIM)
        .map(|_| rng.random_range(-0.1f32..0.1))
        .collect()
}

fn spec() -> TableSpec {
    TableSpec::new("emb", DIM as u32).with_rule(UpdateRule::Adagrad {
        lr: 0.05,
        eps: 1e-8,
        initial_accumulator: 0.1,
    })
}

/// Runs `f(thread, rng)` on `threads` threads for `secs`; returns operations per second.
fn run_for(threads: usize, secs: f64, f: impl Fn(usize, &mut StdRng) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, ops, f) = (&stop, &ops, &f);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    f(t, &mut rng);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

/// The store without its hot-row cache (the cache section turns it on itself), so "in RocksDB"
/// means read from RocksDB.
fn opts(sync: SyncPolicy) -> StoreOptions {
    StoreOptions {
        sync,
        cache_bytes: 0,
        block_cache_bytes: 1 << 30,
        ..StoreOptions::default()
    }
}

fn raw_db(path: &Path) -> rocksdb::DB {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.set_compression_type(rocksdb::DBCompressionType::None);
    let mut t = rocksdb::BlockBasedOptions::default();
    t.set_block_cache(&rocksdb::Cache::new_lru_cache(1 << 30));
    t.set_bloom_filter(10.0, false);
    o.set_block_based_table_factory(&t);
    o.create_missing_column_families(true);
    // One column family for the rows (as paramdb has per table), with the same options.
    let cf = rocksdb::ColumnFamilyDescriptor::new("rows", o.clone());
    rocksdb::DB::open_cf_descriptors(&o, path, [cf]).expect("open raw rocksdb")
}

fn raw_put(db: &rocksdb::DB, sync: bool, keys: &[u64], values: &[f32]) {
    let mut b = rocksdb::WriteBatch::default();
    let mut buf = Vec::with_capacity(DIM * 4);
    for (i, k) in keys.iter().enumerate() {
        buf.clear();
        for v in &values[i * DIM..(i + 1) * DIM] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        b.put_cf(&db.cf_handle("rows").expect("cf"), k.to_be_bytes(), &buf);
    }
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(sync);
    db.write_opt(b, &wo).expect("raw write");
}

fn drop_caches() -> bool {
    // SAFETY of results: only meaningful as root; elsewhere we report warm figures only.
    std::process::Command::new("sync").status().ok();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn wal_bytes_and_read(dir: &Path) -> (u64, f64) {
    let t = Instant::now();
    let mut bytes = 0;
    let mut files: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    for f in files {
        bytes += std::fs::read(&f).expect("read segment").len() as u64;
    }
    (bytes, t.elapsed().as_secs_f64())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--only replay` (or push, pull) runs one section, e.g. under a profiler.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let run = |section: &str| only.as_deref().is_none_or(|o| o == section);
    let secs = if quick { 1.0 } else { 4.0 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!("## Store benchmark\n");
    println!(
        "machine: {} cores, {cpu}; dim {DIM}, {BATCH}-key batches, uniform keys over {KEYS}; {secs} s per point\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // --- push ---
    if run("push") || run("pull") {
        println!("### Push (AdaGrad applied on the server)\n");
        println!("| sync policy | threads | paramdb pushes/s | paramdb rows/s | raw RocksDB pushes/s (its WAL) | ratio |");
        println!("|---|---|---|---|---|---|");
        let policies = [
            (SyncPolicy::Sync, Some(true)),
            (SyncPolicy::Interval(Duration::from_millis(10)), Some(false)),
            (SyncPolicy::None, None),
        ];
        let mut pull_store = None;
        for (i, (policy, raw_sync)) in policies.into_iter().enumerate() {
            for threads in [1, 4] {
                let dir = tmp.path().join(format!("push-{i}-{threads}"));
                let store = Store::open(&dir, opts(policy)).expect("open");
                store.create_table(spec()).expect("table");
                let ps = run_for(threads, secs, |t, rng| {
                    let keys = batch_keys(rng);
                    let g = grads(rng);
                    store
                        .push("emb", ClientId::ANONYMOUS, 0, &keys, &g)
                        .map(|_| ())
                        .unwrap_or_else(|e| panic!("thread {t}: {e}"));
                });
                let raw_sync = raw_sync.unwrap_or(false);
                let rdir = tmp.path().join(format!("raw-{i}-{threads}"));
                let db = raw_db(&rdir);
                let rs = run_for(threads, secs, |_, rng| {
                    let keys = batch_keys(rng);
                    let g = grads(rng);
                    raw_put(&db, raw_sync, &keys, &g);
                });
                println!(
                    "| {policy} | {threads} | {ps:.0} | {:.0} | {rs:.0} ({}) | {:.2} |",
                    ps * BATCH as f64,
                    if raw_sync { "sync" } else { "no sync" },
                    ps / rs
                );
                if matches!(policy, SyncPolicy::None) && threads == 4 {
                    pull_store = Some((store, db));
                }
            }
        }

        // --- pull ---
        // The raw peer holds the rows the push runs wrote; paramdb's side is a store of its
        // own with every row pushed once and the background thread off, so "in memory" stays
        // in memory until the checkpoint below.
        let (_, db) = pull_store.expect("store from the push runs");
        let store = Store::open(
            tmp.path().join("pull"),
            StoreOptions {
                background: false,
                checkpoint_dirty_bytes: 0,
                ..opts(SyncPolicy::None)
            },
        )
        .expect("open");
        store.create_table(spec()).expect("table");
        let mut rng = StdRng::seed_from_u64(4);
        for start in (0..KEYS).step_by(BATCH) {
            let g = grads(&mut rng);
            store
                .push_range("emb", ClientId::ANONYMOUS, 0, start, &g)
                .expect("push");
        }
        println!("\n### Pull\n");
        println!("| rows are | threads | paramdb rows/s | raw RocksDB multi-get rows/s | ratio |");
        println!("|---|---|---|---|---|");
        let raw_get = |rng: &mut StdRng| {
            let keys = batch_keys(rng);
            let kb: Vec<[u8; 8]> = keys.iter().map(|k| k.to_be_bytes()).collect();
            let r = db.batched_multi_get_cf(&db.cf_handle("rows").expect("cf"), kb.iter(), false);
            let mut out = vec![0.0f32; BATCH * DIM];
            for (i, v) in r.into_iter().enumerate() {
                if let Ok(Some(v)) = v {
                    for (o, c) in out[i * DIM..(i + 1) * DIM]
                        .iter_mut()
                        .zip(v.chunks_exact(4))
                    {
                        *o = f32::from_le_bytes(c.try_into().expect("4"));
                    }
                }
            }
            std::hint::black_box(out);
        };
        for (label, checkpoint) in [
            ("in memory (since last checkpoint)", false),
            ("in RocksDB (after checkpoint)", true),
        ] {
            if checkpoint {
                store.checkpoint().expect("checkpoint");
                db.flush().expect("flush");
            }
            for threads in [1, 2] {
                let ps = run_for(threads, secs, |_, rng| {
                    let keys = batch_keys(rng);
                    std::hint::black_box(store.pull("emb", &keys).expect("pull"));
                });
                let rs = run_for(threads, secs, |_, rng| raw_get(rng));
                println!(
                    "| {label} | {threads} | {:.0} | {:.0} | {:.2} |",
                    ps * BATCH as f64,
                    rs * BATCH as f64,
                    ps / rs
                );
            }
        }
        drop(store);
        drop(db);
    }

    if run("cache") {
        cache_section(tmp.path(), secs);
    }
    if run("contended") {
        contended_section(tmp.path(), secs);
    }

    // --- replay ---
    if !run("replay") {
        return;
    }
    let target: u64 = if quick { 256 << 20 } else { 1 << 30 };
    println!("\n### Recovery replay\n");
    println!("Open after a crash with the whole log to replay (no checkpoint), against a plain sequential read of the same segment files. Log of AdaGrad pushes, 1,000 keys × dim 100 per record.\n");
    println!("| keys | cache | log MiB | distinct rows | sequential read MB/s | replay (open) MB/s | replay / read |");
    println!("|---|---|---|---|---|---|---|");
    let zipf = rand_distr::Zipf::new(KEYS as f64, 1.0).expect("zipf");
    for (label, skewed) in [("uniform", false), ("Zipf(1.0)", true)] {
        let dir = tmp.path().join(format!("replay-{skewed}"));
        {
            let o = StoreOptions {
                checkpoint_log_bytes: u64::MAX,
                checkpoint_interval: None,
                background: false,
                ..opts(SyncPolicy::None)
            };
            let store = Store::open(&dir, o).expect("open");
            store.create_table(spec()).expect("table");
            let mut rng = StdRng::seed_from_u64(9);
            let mut written = 0;
            while written < target {
                let keys = if skewed {
                    zipf_keys(&mut rng, &zipf)
                } else {
                    batch_keys(&mut rng)
                };
                let g = grads(&mut rng);
                store
                    .push("emb", ClientId::ANONYMOUS, 0, &keys, &g)
                    .expect("push");
                written += (BATCH * (DIM * 4 + 8)) as u64;
            }
            // Dropped without close: the next open must replay the whole log.
        }
        let reopen_opts = StoreOptions {
            background: false,
            ..opts(SyncPolicy::None)
        };
        for cold in [true, false] {
            if cold && !drop_caches() {
                println!("| {label} | cold | (needs root to drop the page cache) | | | | |");
                continue;
            }
            // Three alternating rounds; medians, since single runs here vary by 2x.
            let (mut reads, mut opens, mut bytes, mut rows) = (Vec::new(), Vec::new(), 0, 0);
            for _ in 0..3 {
                if cold {
                    drop_caches();
                }
                let (b, read_s) = wal_bytes_and_read(&dir);
                if cold {
                    drop_caches();
                }
                let t = Instant::now();
                let store = Store::open(&dir, reopen_opts.clone()).expect("reopen");
                opens.push(t.elapsed().as_secs_f64());
                reads.push(read_s);
                assert_eq!(store.recovery_report().bytes_read, b);
                bytes = b;
                rows = store.stats().dirty_rows;
                // Dropping a store that never checkpointed leaves the log to replay again.
                drop(store);
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let (read_s, open_s) = (median(&mut reads), median(&mut opens));
            let mb = bytes as f64 / 1e6;
            println!(
                "| {label} | {} | {:.0} | {rows} | {:.0} | {:.0} | {:.2} |",
                if cold { "cold" } else { "warm" },
                bytes as f64 / (1 << 20) as f64,
                mb / read_s,
                mb / open_s,
                read_s / open_s
            );
        }
    }
}

/// Bytes of one stored AdaGrad row of dim `DIM` (header + weights + accumulator).
const STORED_ROW: usize = paramdb_engine::rows::ROW_HEADER_LEN + 2 * DIM * 4;
/// Bytes of one cache slot of such a row.
const CACHE_SLOT: u64 = (40 + 2 * DIM * 4 + paramdb_engine::CACHE_SLOT_OVERHEAD) as u64;

fn cache_section(tmp: &Path, secs: f64) {
    println!("\n### Hot-row cache\n");
    println!("A table of {KEYS} AdaGrad rows of dim {DIM}, all stored (pushed once, checkpointed). 1 thread, {BATCH}-key batches.\n");
    println!("| pull path | keys | paramdb rows/s | peer | peer rows/s | paramdb / peer | cache hit rate |");
    println!("|---|---|---|---|---|---|---|");
    let dir = tmp.join("cache");
    let o = StoreOptions {
        cache_bytes: 0,
        background: false,
        ..opts(SyncPolicy::None)
    };
    filled_store(&dir, o).close().expect("close");
    let open = |cache_bytes: u64| {
        let o = StoreOptions {
            cache_bytes,
            background: false,
            ..opts(SyncPolicy::None)
        };
        Store::open(&dir, o).expect("open")
    };
    let zipf = rand_distr::Zipf::new(KEYS as f64, 1.0).expect("zipf");
    let pull_rate = |store: &Store, skewed: bool| {
        run_for(1, secs, |_, rng| {
            let keys = if skewed {
                zipf_keys(rng, &zipf)
            } else {
                batch_keys(rng)
            };
            std::hint::black_box(store.pull("emb", &keys).expect("pull"));
        })
    };

    // Cached: every row fits; two passes over all keys fill the cache.
    {
        let store = open(KEYS * CACHE_SLOT + (64 << 20));
        let all: Vec<u64> = (0..KEYS).collect();
        for chunk in all.chunks(BATCH) {
            store.pull("emb", chunk).expect("warm");
        }
        let before = store.stats().cache;
        let ps = pull_rate(&store, false);
        let after = store.stats().cache;
        let hit = (after.hits - before.hits) as f64
            / ((after.hits + after.misses) - (before.hits + before.misses)).max(1) as f64;
        // Peer: gather the same rows' weights out of one flat array.
        let flat: Vec<f32> = (0..KEYS as usize * DIM).map(|i| i as f32).collect();
        let ms = run_for(1, secs, |_, rng| {
            let keys = batch_keys(rng);
            let mut out = vec![0.0f32; BATCH * DIM];
            for (i, &k) in keys.iter().enumerate() {
                let k = k as usize;
                out[i * DIM..(i + 1) * DIM].copy_from_slice(&flat[k * DIM..(k + 1) * DIM]);
            }
            std::hint::black_box(out);
        });
        println!(
            "| cached (all rows fit) | uniform | {:.0} | memcpy gather of the same rows | {:.0} | {:.2} | {:.3} |",
            ps * BATCH as f64,
            ms * BATCH as f64,
            ps / ms,
            hit
        );
        store.close().expect("close");
    }

    // Uncached: cache off, against raw RocksDB holding values of the same size.
    {
        let store = open(0);
        let rdir = tmp.join("cache-raw");
        let db = raw_db(&rdir);
        let cf = db.cf_handle("rows").expect("cf");
        let value = vec![7u8; STORED_ROW];
        for start in (0..KEYS).step_by(BATCH) {
            let mut b = rocksdb::WriteBatch::default();
            for k in start..start + BATCH as u64 {
                b.put_cf(&cf, k.to_be_bytes(), &value);
            }
            db.write(b).expect("raw write");
        }
        db.flush_cf(&cf).expect("flush");
        let ps = pull_rate(&store, false);
        let rs = run_for(1, secs, |_, rng| {
            let keys = batch_keys(rng);
            let mut sorted = keys.clone();
            sorted.sort_unstable();
            let kb: Vec<[u8; 8]> = sorted.iter().map(|k| k.to_be_bytes()).collect();
            let r = db.batched_multi_get_cf(&cf, kb.iter(), true);
            let mut out = vec![0.0f32; BATCH * DIM];
            for (i, v) in r.into_iter().enumerate() {
                if let Ok(Some(v)) = v {
                    let w: &[u8] = &v;
                    for (o, c) in out[i * DIM..(i + 1) * DIM]
                        .iter_mut()
                        .zip(w[16..].chunks_exact(4))
                    {
                        *o = f32::from_le_bytes(c.try_into().expect("4"));
                    }
                }
            }
            std::hint::black_box(out);
        });
        println!(
            "| RocksDB (cache off) | uniform | {:.0} | raw RocksDB multi-get, {STORED_ROW}-byte values | {:.0} | {:.2} | - |",
            ps * BATCH as f64,
            rs * BATCH as f64,
            ps / rs
        );
        store.close().expect("close");
    }

    // Skewed keys, cache of 10% of the table, cold at the start of the run.
    {
        let budget = KEYS * CACHE_SLOT / 10;
        let store = open(budget);
        let ps = pull_rate(&store, true);
        let s = store.stats().cache;
        let off = open_rate_off(&dir, &zipf, secs, store);
        println!(
            "| cache of 10% of the table ({} MiB) | Zipf(1.0) | {:.0} | the same with the cache off | {:.0} | {:.2} | {:.3} |",
            budget >> 20,
            ps * BATCH as f64,
            off * BATCH as f64,
            ps / off,
            s.hit_rate()
        );
    }
}

/// Zipf pull rate of the store at `dir` with the cache off (closes `store` first).
fn open_rate_off(dir: &Path, zipf: &rand_distr::Zipf<f64>, secs: f64, store: Store) -> f64 {
    store.close().expect("close");
    let o = StoreOptions {
        cache_bytes: 0,
        background: false,
        ..opts(SyncPolicy::None)
    };
    let store = Store::open(dir, o).expect("open");
    let r = run_for(1, secs, |_, rng| {
        let keys = zipf_keys(rng, zipf);
        std::hint::black_box(store.pull("emb", &keys).expect("pull"));
    });
    store.close().expect("close");
    r
}

/// A store in `dir` with every one of the `KEYS` rows pushed once and checkpointed.
fn filled_store(dir: &Path, o: StoreOptions) -> Store {
    let store = Store::open(dir, o).expect("open");
    store.create_table(spec()).expect("table");
    let mut rng = StdRng::seed_from_u64(3);
    for start in (0..KEYS).step_by(BATCH) {
        let g = grads(&mut rng);
        store
            .push_range("emb", ClientId::ANONYMOUS, 0, start, &g)
            .expect("push");
    }
    store.checkpoint().expect("checkpoint");
    store
}

/// Pull latencies (µs) of 2 threads pulling for `secs`: p50, p99, max, and rows/s.
fn timed_pulls(store: &Store, secs: f64) -> (f64, f64, f64, f64) {
    let lat = std::sync::Mutex::new(Vec::new());
    let rate = run_for(2, secs, |_, rng| {
        let keys = batch_keys(rng);
        let t = Instant::now();
        std::hint::black_box(store.pull("emb", &keys).expect("pull"));
        let us = t.elapsed().as_secs_f64() * 1e6;
        lat.lock().expect("lock").push(us);
    });
    let mut v = lat.into_inner().expect("lock");
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
    (q(0.5), q(0.99), q(1.0), rate * BATCH as f64)
}

/// Pulls of cached rows from 2 threads, alone and while 2 threads push under `sync`.
fn contended_section(tmp: &Path, secs: f64) {
    println!("\n### Pulls during a sync push load\n");
    println!("A table of {KEYS} AdaGrad rows of dim {DIM}, stored and all in the hot-row cache; {BATCH}-key batches, uniform keys. Pullers: 2 threads. Pushers: 2 threads under `sync` (each push waits for its fsync, with group commit). Latency is per {BATCH}-key pull.\n");
    println!("| load | pull rows/s | pull p50 µs | pull p99 µs | pull max µs | push rows/s |");
    println!("|---|---|---|---|---|---|");
    let dir = tmp.join("contended");
    let o = StoreOptions {
        cache_bytes: KEYS * CACHE_SLOT + (64 << 20),
        background: true,
        ..opts(SyncPolicy::Sync)
    };
    let store = filled_store(&dir, o);
    let all: Vec<u64> = (0..KEYS).collect();
    for chunk in all.chunks(BATCH) {
        store.pull("emb", chunk).expect("warm");
    }
    let (p50, p99, max, alone) = timed_pulls(&store, secs);
    println!("| none | {alone:.0} | {p50:.0} | {p99:.0} | {max:.0} | - |");
    let stop = AtomicBool::new(false);
    let pushed = AtomicU64::new(0);
    let (p50, p99, max, under, push_rate) = std::thread::scope(|s| {
        for t in 0..2u64 {
            let (stop, pushed, store) = (&stop, &pushed, &store);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(100 + t);
                while !stop.load(Ordering::Relaxed) {
                    let keys = batch_keys(&mut rng);
                    let g = grads(&mut rng);
                    store
                        .push("emb", ClientId::ANONYMOUS, 0, &keys, &g)
                        .expect("push");
                    pushed.fetch_add(BATCH as u64, Ordering::Relaxed);
                }
            });
        }
        let started = Instant::now();
        let (p50, p99, max, r) = timed_pulls(&store, secs);
        let push_rate = pushed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        (p50, p99, max, r, push_rate)
    });
    println!("| 2 threads pushing under `sync` | {under:.0} | {p50:.0} | {p99:.0} | {max:.0} | {push_rate:.0} |");
    store.close().expect("close");
}
