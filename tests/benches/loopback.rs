//! paramdb over gRPC on loopback beside Redis (`redis-server` from Debian, started here) in the
//! same run: 1,000-key batches of dim-100 rows (400-byte values), uniform and Zipf(1.0) keys over
//! 1M, 4 client threads each with one batch in flight. paramdb pushes apply AdaGrad on the
//! server under `interval=10` sync; Redis MSETs store the bytes. Pulls follow a checkpoint, so
//! they read the pushed rows from RocksDB (and its block cache), not from the log's dirty rows.
//! Prints Markdown.
//!
//! The shard's hot-row cache is on with room for both tables (2 GiB); `--cache-bytes N` changes
//! that (0 turns it off). The pull rows report the cache's hit rate during the pull phase.
//!
//! `cargo bench -p paramdb-tests --bench loopback [-- --quick] [--only push|pull] [--cache-bytes N]`

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, TableSpec, UpdateRule};
use paramdb_engine::{KeyRange, StoreOptions, SyncPolicy};
use paramdb_server::rpc::{Limits, ServeConfig};
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 100;
const BATCH: usize = 1000;
const KEYS: u64 = 1_000_000;
const THREADS: usize = 4;

fn keys(rng: &mut StdRng, zipf: Option<&rand_distr::Zipf<f64>>) -> Vec<u64> {
    let mut set = std::collections::HashSet::with_capacity(BATCH);
    while set.len() < BATCH {
        set.insert(match zipf {
            Some(z) => z.sample(rng) as u64 - 1,
            None => rng.random_range(0..KEYS),
        });
    }
    set.into_iter().collect()
}

fn grads(rng: &mut StdRng) -> Vec<f32> {
    (0..BATCH * DIM)
        .map(|_| rng.random_range(-0.1f32..0.1))
        .collect()
}

/// Batches per second over `secs`, `THREADS` threads each running `f` in a loop on its own
/// state from `init` (a connection, say).
fn run_for<S>(
    secs: f64,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &mut StdRng) + Sync,
) -> f64 {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (stop, ops, f, init) = (&stop, &ops, &f, &init);
            s.spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64 + 1);
                let mut state = init();
                while !stop.load(Ordering::Relaxed) {
                    f(&mut state, &mut rng);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

/// Rounds of paramdb then the peer, alternating; medians of each side's rate and of the
/// per-round ratio (single points on these machines vary by 2x).
fn rounds(paramdb: impl Fn() -> f64, peer: impl Fn() -> f64) -> (f64, f64, f64) {
    const ROUNDS: usize = 3;
    let (mut p, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (a, b) = (paramdb(), peer());
        p.push(a);
        r.push(b);
        ratio.push(a / b);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (median(&mut p), median(&mut r), median(&mut ratio))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Redis, redis::Client) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("redis url");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get_connection().is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), client)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 1.0 } else { 4.0 };
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |op: &str| only.as_deref().is_none_or(|o| o == op);
    let cache_bytes: u64 = args
        .iter()
        .position(|a| a == "--cache-bytes")
        .and_then(|i| args.get(i + 1))
        .map_or(2 << 30, |v| v.parse().expect("--cache-bytes N"));
    let tmp = tempfile::tempdir().expect("tempdir");

    // paramdb: one shard server in this process, reached over loopback gRPC.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let config = ServeConfig {
        data_dir: tmp.path().join("shard"),
        shard: 0,
        range: KeyRange::new(0, u64::MAX),
        store: StoreOptions {
            sync: SyncPolicy::Interval(Duration::from_millis(10)),
            block_cache_bytes: 1 << 30,
            cache_bytes,
            ..StoreOptions::default()
        },
        limits: Limits::default(),
        tls: None,
        tokens: None,
        sync_journal: None,
        shutdown_grace: paramdb_server::rpc::serve::DEFAULT_SHUTDOWN_GRACE,
        replication: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(paramdb_server::rpc::serve(listener, config, async {
        let _ = stop_rx.await;
    }));
    let map = ClusterMap::even(&[addr]);
    let client = BlockingClient::connect(map, ClientOptions::default()).expect("client");
    let (_redis, redis_client) = start_redis();
    let zipf = rand_distr::Zipf::new(KEYS as f64, 1.0).expect("zipf");

    println!("## paramdb over gRPC vs Redis, loopback\n");
    println!(
        "{} cores; dim {DIM} (400-byte rows), {BATCH}-key batches, {THREADS} client threads, {secs} s per point, medians of 3 alternating rounds; hot-row cache {} MiB\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cache_bytes >> 20
    );
    println!("| keys | op | paramdb rows/s | Redis rows/s | paramdb / Redis | cache hit rate |");
    println!("|---|---|---|---|---|---|");
    let cache_lookups = || {
        let s = &client.stats().expect("stats")[0];
        (
            s.store.cache.hits,
            s.store.cache.hits + s.store.cache.misses,
        )
    };
    for (label, dist) in [("uniform", None), ("Zipf(1.0)", Some(&zipf))] {
        let table = if dist.is_some() { "zipf" } else { "uniform" };
        client
            .create_table(
                TableSpec::new(table, DIM as u32).with_rule(UpdateRule::Adagrad {
                    lr: 0.05,
                    eps: 1e-8,
                    initial_accumulator: 0.1,
                }),
            )
            .expect("create table");
        let prefix = table.as_bytes();
        let rkey = |k: u64| [prefix, &k.to_be_bytes()].concat();

        let redis_con = || redis_client.get_connection().expect("redis connection");
        if wanted("push") {
            let p_push = || {
                run_for(
                    secs,
                    || (),
                    |_, rng| {
                        let k = keys(rng, dist);
                        client.push(table, &k, &grads(rng)).expect("push");
                    },
                )
            };
            let r_push = || {
                run_for(secs, redis_con, |con, rng| {
                    let k = keys(rng, dist);
                    let g = grads(rng);
                    let mut cmd = redis::cmd("MSET");
                    for (i, key) in k.iter().enumerate() {
                        cmd.arg(rkey(*key))
                            .arg(paramdb_proto::packed::f32s_to_bytes(
                                &g[i * DIM..(i + 1) * DIM],
                            ));
                    }
                    redis::pipe()
                        .add_command(cmd)
                        .query::<()>(con)
                        .expect("MSET");
                })
            };
            let (p, r, ratio) = rounds(p_push, r_push);
            println!(
                "| {label} | push (AdaGrad on server) vs MSET | {:.0} | {:.0} | {ratio:.2} | - |",
                p * BATCH as f64,
                r * BATCH as f64,
            );
        }
        if !wanted("pull") {
            continue;
        }
        // Pulls are measured on a settled shard: the pushes' checkpoint is not left running
        // in the background of the pull phase.
        client.checkpoint().expect("checkpoint");
        let (hits0, lookups0) = cache_lookups();
        let p_pull = || {
            run_for(
                secs,
                || (),
                |_, rng| {
                    let k = keys(rng, dist);
                    std::hint::black_box(client.pull(table, &k).expect("pull"));
                },
            )
        };
        let r_pull = || {
            run_for(secs, redis_con, |con, rng| {
                let k = keys(rng, dist);
                let mut cmd = redis::cmd("MGET");
                for key in &k {
                    cmd.arg(rkey(*key));
                }
                let (vals,): (Vec<Option<Vec<u8>>>,) =
                    redis::pipe().add_command(cmd).query(con).expect("MGET");
                let mut out = vec![0.0f32; BATCH * DIM];
                for (i, v) in vals.into_iter().enumerate() {
                    if let Some(v) = v {
                        for (o, c) in out[i * DIM..(i + 1) * DIM]
                            .iter_mut()
                            .zip(v.chunks_exact(4))
                        {
                            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                        }
                    }
                }
                std::hint::black_box(out);
            })
        };
        let (p, r, ratio) = rounds(p_pull, r_pull);
        let (hits, lookups) = {
            let (h, l) = cache_lookups();
            (h - hits0, l - lookups0)
        };
        println!(
            "| {label} | pull vs MGET | {:.0} | {:.0} | {ratio:.2} | {:.3} |",
            p * BATCH as f64,
            r * BATCH as f64,
            hits as f64 / lookups.max(1) as f64
        );
    }
    drop(client);
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
}
