//! Replicated shards against unreplicated ones, in the same run on this machine: push rows/s
//! of one shard served by one `paramdb serve` process, by a group of one replica, and by a
//! group of three (all on these 2 cores), under `sync` and `interval=10`; then the failover
//! time after SIGKILLs of the leader (kill to the next acknowledged push; each kill once the
//! replica restarted after the last one has caught up); and pull rows/s from
//! one server, from a group's leader alone, and spread over its 3 replicas with a staleness
//! bound (`read_lag` 1 s). 4 client threads,
//! each with one 1,000-row batch of dim-100 rows (AdaGrad on the server) in flight. Prints
//! Markdown, with the servers' CPU seconds per million rows (user + system, from /proc).
//!
//! `cargo bench --workspace --bench replication [-- --quick]`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, MaxLag, TableSpec, UpdateRule};
use paramdb_tests::servers::{free_addresses, paramdb_bin};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 100;
const BATCH: usize = 1000;
const KEYS: u64 = 1_000_000;
const THREADS: usize = 4;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(dir: &Path, file: &Path, addr: &str, replica: Option<usize>, sync: &str) -> Child {
    let mut cmd = Command::new(paramdb_bin());
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir.join(format!("r{}", replica.unwrap_or(0))))
        .args([
            "--listen",
            addr,
            "--shard",
            "0",
            "--sync",
            sync,
            "--cluster",
        ])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(r) = replica {
        cmd.args(["--replica", &r.to_string()]);
    }
    let mut child = cmd.spawn().expect("spawn paramdb serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    child
}

/// One shard on `replicas` servers (0: one unreplicated server).
fn start(dir: &Path, replicas: usize, sync: &str) -> (Procs, ClusterMap, PathBuf) {
    let n = replicas.max(1);
    let addrs = free_addresses(n);
    let mut map = ClusterMap::even(&[addrs[0].clone()]);
    if replicas > 0 {
        map.shards[0].address.clear();
        map.shards[0].replicas = addrs.clone();
    }
    let file = dir.join("cluster.toml");
    std::fs::write(&file, map.to_toml()).expect("cluster file");
    let procs = Procs(
        (0..n)
            .map(|i| spawn(dir, &file, &addrs[i], (replicas > 0).then_some(i + 1), sync))
            .collect(),
    );
    (procs, map, file)
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the command's ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn wait_writable(client: &BlockingClient) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.create_table(
            TableSpec::new("t", DIM as u32).with_rule(UpdateRule::Adagrad {
                lr: 0.1,
                eps: 1e-8,
                initial_accumulator: 0.1,
            }),
        ) {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the shard never took a write: {e}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Rows per second over `secs` of `THREADS` threads each running `work(thread, stop, rows)`
/// until `stop`, adding what they moved to `rows`; and the servers' CPU seconds per million
/// rows.
fn rate(
    procs: &Procs,
    secs: f64,
    work: impl Fn(usize, &AtomicBool, &AtomicU64) + Sync,
) -> (f64, f64) {
    let stop = AtomicBool::new(false);
    let rows = AtomicU64::new(0);
    let cpu0: f64 = procs.0.iter().map(|c| cpu_secs(c.id())).sum();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (stop, rows, work) = (&stop, &rows, &work);
            s.spawn(move || work(t, stop, rows));
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu: f64 = procs.0.iter().map(|c| cpu_secs(c.id())).sum::<f64>() - cpu0;
    let n = rows.load(Ordering::Relaxed) as f64;
    (n / elapsed, cpu / (n / 1e6))
}

/// Rows pushed per second over `secs`, and the servers' CPU seconds per million rows.
fn push_rate(map: &ClusterMap, procs: &Procs, secs: f64) -> (f64, f64) {
    rate(procs, secs, |t, stop, rows| {
        let client = BlockingClient::connect(
            map.clone(),
            ClientOptions {
                client_id: Some(100 + t as u64),
                ..ClientOptions::default()
            },
        )
        .expect("client");
        let mut rng = StdRng::seed_from_u64(t as u64);
        let grads: Vec<f32> = (0..BATCH * DIM)
            .map(|_| rng.random_range(-0.1f32..0.1))
            .collect();
        while !stop.load(Ordering::Relaxed) {
            let mut keys: Vec<u64> = (0..BATCH).map(|_| rng.random_range(0..KEYS)).collect();
            keys.sort_unstable();
            keys.dedup();
            client
                .push("t", &keys, &grads[..keys.len() * DIM])
                .expect("push");
            rows.fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
    })
}

/// Rows pulled per second over `secs` (random 1,000-key batches of the first `loaded` keys),
/// and the servers' CPU seconds per million rows.
fn pull_rate(
    map: &ClusterMap,
    procs: &Procs,
    secs: f64,
    loaded: u64,
    read_lag: Option<MaxLag>,
) -> (f64, f64) {
    rate(procs, secs, |t, stop, rows| {
        let client = BlockingClient::connect(
            map.clone(),
            ClientOptions {
                read_lag,
                ..ClientOptions::default()
            },
        )
        .expect("client");
        let mut rng = StdRng::seed_from_u64(50 + t as u64);
        while !stop.load(Ordering::Relaxed) {
            let keys: Vec<u64> = (0..BATCH).map(|_| rng.random_range(0..loaded)).collect();
            let v = client.pull("t", &keys).expect("pull");
            assert_eq!(v.len(), keys.len() * DIM);
            rows.fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
    })
}

/// Writes rows `0..n` (so pulls read stored rows, not defaults).
fn load(client: &BlockingClient, n: u64) {
    let grads = vec![0.01f32; BATCH * DIM];
    for start in (0..n).step_by(BATCH) {
        let keys: Vec<u64> = (start..(start + BATCH as u64).min(n)).collect();
        client
            .push("t", &keys, &grads[..keys.len() * DIM])
            .expect("load");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 3.0 } else { 10.0 };
    println!("| sync | servers | push rows/s | vs one server | server CPU s per M rows |");
    println!("|---|---|---:|---:|---:|");
    for sync in ["sync", "interval=10"] {
        let mut base = None;
        for (label, replicas) in [
            ("1 (unreplicated)", 0),
            ("group of 1", 1),
            ("group of 3", 3),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (procs, map, _) = start(dir.path(), replicas, sync);
            wait_writable(&BlockingClient::connect(map.clone(), ClientOptions::default()).unwrap());
            let (rate, cpu) = push_rate(&map, &procs, secs);
            let b = *base.get_or_insert(rate);
            println!(
                "| {sync} | {label} | {rate:.0} | {:.2}× | {cpu:.2} |",
                rate / b
            );
        }
    }

    // Pulls: one unreplicated server, the leader of a group of 3 alone, and the group's 3
    // replicas with pulls bounded by 1 s of staleness spread over them.
    let loaded: u64 = if quick { 50_000 } else { 200_000 };
    println!();
    println!("| pulls from | pull rows/s | vs one server | server CPU s per M rows |");
    println!("|---|---:|---:|---:|");
    let mut base = None;
    for (label, replicas, lag) in [
        ("1 server (unreplicated)", 0, None),
        ("group of 3, leader only", 3, None),
        (
            "group of 3, any replica within 1 s",
            3,
            Some(MaxLag::Millis(1000)),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (procs, map, _) = start(dir.path(), replicas, "interval=10");
        let writer = BlockingClient::connect(map.clone(), ClientOptions::default()).unwrap();
        wait_writable(&writer);
        load(&writer, loaded);
        // Let the followers apply the load.
        std::thread::sleep(Duration::from_secs(2));
        let (rate, cpu) = pull_rate(&map, &procs, secs, loaded, lag);
        let b = *base.get_or_insert(rate);
        println!("| {label} | {rate:.0} | {:.2}× | {cpu:.2} |", rate / b);
    }

    // Failover: SIGKILL the leader of a group of 3 while one client pushes; time to the next
    // acknowledged push, then restart it.
    let kills = if quick { 10 } else { 40 };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut procs, map, file) = start(dir.path(), 3, "sync");
    let probe = BlockingClient::connect(
        map.clone(),
        ClientOptions {
            client_id: Some(9),
            max_retries: 500,
            backoff_initial: Duration::from_millis(2),
            backoff_max: Duration::from_millis(20),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    wait_writable(&probe);
    let mut rng = StdRng::seed_from_u64(1);
    let mut ms = Vec::new();
    let mut catch_up_ms = Vec::new();
    for _ in 0..kills {
        // The group is whole again first: the replica restarted after the last kill has
        // applied what the others have (a kill before that leaves one replica fit to lead).
        let t = Instant::now();
        loop {
            let applied: Vec<Option<u64>> = probe.replica_status()[0]
                .iter()
                .map(|(_, r)| r.as_ref().ok().and_then(|i| i.applied))
                .collect();
            if applied.iter().all(|a| a.is_some() && *a == applied[0]) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        catch_up_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(rng.random_range(200..400)));
        let leader = loop {
            let st = probe.replica_status();
            if let Some(i) = st[0]
                .iter()
                .position(|(_, r)| r.as_ref().is_ok_and(|i| i.role == "leader"))
            {
                break i;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        procs.0[leader].kill().expect("kill");
        procs.0[leader].wait().expect("wait");
        let t0 = Instant::now();
        probe
            .push("t", &[1], &vec![0.01; DIM])
            .expect("push after failover");
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        procs.0[leader] = spawn(
            dir.path(),
            &file,
            &map.shards[0].replicas[leader],
            Some(leader + 1),
            "sync",
        );
    }
    ms.sort_by(f64::total_cmp);
    catch_up_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!();
    println!(
        "failover (group of 3, `sync`, heartbeat 50 ms, election timeout 150-225 ms): {kills} \
         leader kills, kill to the next acknowledged push p50 {:.0} ms, p99 {:.0} ms, max {:.0} \
         ms; restarted replica caught up after its restart in p50 {:.0} ms, max {:.0} ms",
        pct(&ms, 0.5),
        pct(&ms, 0.99),
        ms.last().copied().unwrap_or(0.0),
        pct(&catch_up_ms, 0.5),
        catch_up_ms.last().copied().unwrap_or(0.0)
    );
}
