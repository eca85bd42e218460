//! Soak: two `paramdb serve` processes under 16 clients for 10 minutes (Zipf(1.0) keys, 70%
//! pushes / 30% pulls of 1,000-key batches, dim 100, AdaGrad), with each server's RSS, open
//! file descriptors and log bytes sampled every second. The claims: peak RSS in the second half
//! ≤ 1.1× the first half, open files flat, the log bounded by checkpoints, zero errors. Prints
//! Markdown for BENCHMARKS.md.
//!
//! Needs the `paramdb` binary (`cargo build --release --workspace --bins`).
//!
//! `cargo bench -p paramdb-tests --bench soak [-- --secs S --clients N]`

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, TableSpec, UpdateRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 100;
const BATCH: usize = 1000;
const KEYS: u64 = 2_000_000;

fn arg(name: &str, default: u64) -> u64 {
    paramdb_tests::bench::flag(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (RSS bytes, open file descriptors) of process `pid`.
fn proc_stats(pid: u32) -> (u64, u64) {
    let rss = paramdb_tests::bench::status_kib(pid, "VmRSS:").map_or(0, |kib| kib * 1024);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

fn log_bytes(wal: &Path) -> u64 {
    std::fs::read_dir(wal)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

const MIB: f64 = 1024.0 * 1024.0;

/// One server at one second: RSS bytes, open file descriptors, log bytes.
type Sample = (u64, u64, u64);

fn main() {
    let secs = arg("--secs", 600);
    let clients = arg("--clients", 16);
    let tmp = tempfile::tempdir().expect("tempdir");
    let paramdb = paramdb_tests::servers::paramdb_bin();
    let (servers, file) = paramdb_tests::servers::start(&paramdb, tmp.path(), 2, &[]);
    let pids: Vec<u32> = servers.0.iter().map(|c| c.id()).collect();
    let map = ClusterMap::load(&file).expect("cluster file");
    let connect =
        || BlockingClient::connect(map.clone(), ClientOptions::default()).expect("client");
    connect()
        .create_table(
            TableSpec::new("emb", DIM as u32).with_rule(UpdateRule::Adagrad {
                lr: 0.05,
                eps: 1e-8,
                initial_accumulator: 0.1,
            }),
        )
        .expect("table");

    let stop = AtomicBool::new(false);
    let (rows, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    // Per second: (seconds since the start, a sample per server).
    let mut samples: Vec<(f64, Vec<Sample>)> = Vec::new();
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let (stop, rows, errors, connect) = (&stop, &rows, &errors, &connect);
            s.spawn(move || {
                use rand::distr::Distribution;
                let client = connect();
                let zipf = rand_distr::Zipf::new(KEYS as f64, 1.0).expect("zipf");
                let mut rng = StdRng::seed_from_u64(c);
                let grads: Vec<f32> = (0..BATCH * DIM)
                    .map(|_| rng.random_range(-0.1f32..0.1))
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let mut set = std::collections::HashSet::with_capacity(BATCH);
                    while set.len() < BATCH {
                        let rank = zipf.sample(&mut rng) as u64 - 1;
                        // Hot keys spread over the key space, so both shards get some.
                        set.insert(rank.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    }
                    let keys: Vec<u64> = set.into_iter().collect();
                    let ok = if rng.random_bool(0.7) {
                        client.push("emb", &keys, &grads).is_ok()
                    } else {
                        client.pull("emb", &keys).is_ok()
                    };
                    if ok {
                        rows.fetch_add(BATCH as u64, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        while started.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_secs(1));
            let per: Vec<Sample> = pids
                .iter()
                .enumerate()
                .map(|(i, &pid)| {
                    let (rss, fds) = proc_stats(pid);
                    let wal = tmp.path().join(format!("shard-{i}")).join("wal");
                    (rss, fds, log_bytes(&wal))
                })
                .collect();
            samples.push((started.elapsed().as_secs_f64(), per));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    drop(servers);

    println!(
        "## Soak: 2 shard servers, {clients} clients, {secs} s, Zipf(1.0) over {KEYS} keys, 70% push / 30% pull, dim {DIM} AdaGrad\n"
    );
    println!(
        "rows moved: {} ({:.0} rows/s); errors: {}\n",
        rows.load(Ordering::Relaxed),
        rows.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
    println!("| server | peak RSS 1st half MiB | peak RSS 2nd half MiB | 2nd / 1st | open files min–max (1st half) | open files min–max (2nd half) | log MiB max | log MiB at end |");
    println!("|---|---|---|---|---|---|---|---|");
    let half = elapsed / 2.0;
    for i in 0..pids.len() {
        let pick = |second: bool| {
            samples
                .iter()
                .filter(move |(t, _)| (*t >= half) == second)
                .map(move |(_, v)| v[i])
        };
        let peak = |second: bool| pick(second).map(|s| s.0).max().unwrap_or(0);
        let fds = |second: bool| {
            let v: Vec<u64> = pick(second).map(|s| s.1).collect();
            format!(
                "{}–{}",
                v.iter().min().unwrap_or(&0),
                v.iter().max().unwrap_or(&0)
            )
        };
        let log_max = samples.iter().map(|(_, v)| v[i].2).max().unwrap_or(0);
        let log_end = samples.last().map_or(0, |(_, v)| v[i].2);
        println!(
            "| shard {i} | {:.0} | {:.0} | {:.2} | {} | {} | {:.0} | {:.0} |",
            peak(false) as f64 / MIB,
            peak(true) as f64 / MIB,
            peak(true) as f64 / peak(false).max(1) as f64,
            fds(false),
            fds(true),
            log_max as f64 / MIB,
            log_end as f64 / MIB
        );
    }
}
