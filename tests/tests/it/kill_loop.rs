//! The promise under load: 4 clients push integer-valued rows to a 3-shard cluster while a
//! driver SIGKILLs a random shard at a random moment and restarts it, again and again. Each
//! client logs every push's outcome (ok, unknown) and retries an unknown one with the same
//! sequence number until it is acknowledged. At the end every acknowledged push must be applied
//! exactly once: the pulled rows equal the oracle's sums bit for bit.
//!
//! `PARAMDB_KILLS=N` sets the number of kills (default 200).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, TableSpec, UpdateRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Cluster;

const CLIENTS: u64 = 4;
const KEYS: u64 = 60;
const DIM: usize = 2;

/// Keys spread over the whole key space, so a push usually spans all three shards.
fn key(i: u64) -> u64 {
    i * (u64::MAX / KEYS)
}

#[derive(Default)]
struct Log {
    /// (keys, value) of every acknowledged push.
    acked: Vec<(Vec<u64>, f32)>,
    ok_first_try: u64,
    unknown: u64,
}

#[test]
fn kill_loop_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("PARAMDB_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut cluster = Cluster::start(3, &[]);
    cluster
        .client()
        .create_table(TableSpec::new("t", DIM as u32).with_rule(UpdateRule::Add))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (map, stop) = (cluster.map.clone(), stop.clone());
            std::thread::spawn(move || {
                // Few retries inside the client, so outcomes become unknown here and this
                // loop retries them, with the same sequence number.
                let opts = ClientOptions {
                    client_id: Some(1000 + c),
                    max_retries: 2,
                    backoff_initial: Duration::from_millis(5),
                    timeout: Duration::from_secs(5),
                    ..ClientOptions::default()
                };
                let client = BlockingClient::connect(map, opts).unwrap();
                let mut rng = StdRng::seed_from_u64(c);
                let mut log = Log::default();
                let value = (c + 1) as f32;
                while !stop.load(Ordering::SeqCst) {
                    let mut idx: Vec<u64> = (0..8).map(|_| rng.random_range(0..KEYS)).collect();
                    idx.sort_unstable();
                    idx.dedup();
                    let keys: Vec<u64> = idx.into_iter().map(key).collect();
                    let vals = vec![value; keys.len() * DIM];
                    let seq = client.next_seq();
                    let mut first = true;
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        match client.push_with_seq("t", seq, &keys, &vals) {
                            Ok(_) => break,
                            Err(e) => {
                                assert!(
                                    e.code().is_none_or(|c| {
                                        matches!(
                                            c,
                                            paramdb_client::Code::Unavailable
                                                | paramdb_client::Code::Unknown
                                                | paramdb_client::Code::Cancelled
                                                | paramdb_client::Code::DeadlineExceeded
                                                | paramdb_client::Code::Internal
                                        )
                                    }),
                                    "a push was refused, not lost in transit: {e}"
                                );
                                assert!(
                                    Instant::now() < deadline,
                                    "push {seq} never acknowledged: {e}"
                                );
                                if first {
                                    log.unknown += 1;
                                    first = false;
                                }
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    if first {
                        log.ok_first_try += 1;
                    }
                    log.acked.push((keys, value));
                }
                log
            })
        })
        .collect();

    // Most restarts are waited out (time to serving measured) before the next kill, which then
    // lands among pushes; one in five is killed again at once, during its own recovery.
    let probe = BlockingClient::connect(
        cluster.map.clone(),
        ClientOptions {
            max_retries: 0,
            timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let mut rng = StdRng::seed_from_u64(99);
    let mut recovery_ms = Vec::new();
    let started = Instant::now();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        let i = rng.random_range(0..3);
        cluster.kill(i);
        let t0 = Instant::now();
        cluster.restart(i);
        if rng.random_bool(0.8) {
            while probe.stats().is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "shard {i} did not recover"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            recovery_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let kill_secs = started.elapsed().as_secs_f64();
    recovery_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| recovery_ms[((recovery_ms.len() - 1) as f64 * p) as usize];
    stop.store(true, Ordering::SeqCst);
    let logs: Vec<Log> = clients.into_iter().map(|h| h.join().unwrap()).collect();

    // The oracle: each acknowledged push exactly once.
    let mut expected = vec![0f32; KEYS as usize];
    for log in &logs {
        for (keys, v) in &log.acked {
            for k in keys {
                expected[(k / (u64::MAX / KEYS)) as usize] += v;
            }
        }
    }
    // Plus keys nobody pushed, which must still be zero.
    let mut all: Vec<u64> = (0..KEYS).map(key).collect();
    let untouched: Vec<u64> = (0..KEYS).map(|i| key(i) + 1).collect();
    all.extend(&untouched);
    let rows = cluster.client().pull("t", &all).unwrap();
    let (mut lost, mut duplicated) = (0f64, 0f64);
    for i in 0..KEYS as usize {
        for d in 0..DIM {
            let got = rows[i * DIM + d];
            let want = expected[i];
            if got < want {
                lost += f64::from(want - got);
            } else {
                duplicated += f64::from(got - want);
            }
        }
    }
    let unexpected = rows[KEYS as usize * DIM..]
        .iter()
        .filter(|&&v| v != 0.0)
        .count();
    let acked: usize = logs.iter().map(|l| l.acked.len()).sum();
    let unknown: u64 = logs.iter().map(|l| l.unknown).sum();
    let first: u64 = logs.iter().map(|l| l.ok_first_try).sum();
    println!(
        "kill loop: {kills} kills in {kill_secs:.1} s; {acked} pushes acknowledged ({first} at once, {unknown} after an unknown outcome and a retry with the same sequence); lost {lost}, duplicated {duplicated}, unexpected {unexpected}; restart to serving (process start, RocksDB open, log replay) p50 {:.0} ms, p99 {:.0} ms over {} restarts",
        pct(0.5),
        pct(0.99),
        recovery_ms.len()
    );
    assert!(acked > kills, "too few pushes ({acked}) to test anything");
    assert!(unknown > 0, "no push ever met a dead shard");
    assert_eq!((lost, duplicated, unexpected), (0.0, 0.0, 0));
    cluster.stop();
}
