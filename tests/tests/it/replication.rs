//! Replicated shards across real processes: every shard a group of `paramdb serve --replica`
//! servers on 127.0.0.1 (or on netns hosts, for the partition). The leader SIGKILLed again and
//! again while clients push (and its control with new sequence numbers), a follower's disk
//! lost, a leader cut off from its followers, a leader frozen with SIGSTOP, bounded-staleness
//! pulls spread over the replicas, replicas replaced and added while pushes go on, word2vec through leader kills, status and gauges, and bad
//! configuration.
//!
//! `PARAMDB_LEADER_KILLS=N` sets the number of leader kills (default 100).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, MaxLag, TableSpec, UpdateRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::paramdb_bin;
use paramdb_tests::servers::free_addresses;

use crate::multihost::ip;

/// Replica groups of `paramdb serve` processes, killed on drop.
pub struct Groups {
    dir: tempfile::TempDir,
    file: PathBuf,
    extra: Vec<String>,
    pub map: ClusterMap,
    /// By shard, then replica (0-based; the server's `--replica` is one more).
    procs: Vec<Vec<Option<Child>>>,
    /// The metrics address each replica printed, when started with `--metrics-listen`.
    pub metrics: std::collections::HashMap<(usize, usize), String>,
}

/// A server's stderr, appended to a file in the test's directory (raft's logs are chatty
/// while replicas are down).
fn log_file(path: &std::path::Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_or(Stdio::null(), Stdio::from)
}

impl Groups {
    pub fn start(shards: usize, replicas: usize, extra: &[&str]) -> Groups {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut map = ClusterMap::even(&vec![String::new(); shards]);
        let addrs = free_addresses(shards * replicas);
        for (i, s) in map.shards.iter_mut().enumerate() {
            s.address.clear();
            s.replicas = addrs[i * replicas..(i + 1) * replicas].to_vec();
        }
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, map.to_toml()).expect("cluster file");
        let mut g = Groups {
            dir,
            file,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            map,
            procs: (0..shards)
                .map(|_| (0..replicas).map(|_| None).collect())
                .collect(),
            metrics: Default::default(),
        };
        for s in 0..shards {
            for r in 0..replicas {
                g.spawn(s, r);
            }
        }
        g
    }

    /// The data directory of the replica at place `replica` (0-based) of shard `shard`'s list
    /// (named by its id).
    pub fn data_dir(&self, shard: usize, replica: usize) -> PathBuf {
        let id = self.map.shards[shard].replica_ids()[replica];
        self.dir.path().join(format!("shard-{shard}-replica-{id}"))
    }

    /// Rewrites the cluster file with shard `s`'s replicas as `members` (id, address), in
    /// that order; servers started later read it.
    pub fn set_replicas(&mut self, s: usize, members: &[(u64, String)]) {
        let entry = &mut self.map.shards[s];
        entry.replicas = members.iter().map(|(_, a)| a.clone()).collect();
        entry.replica_ids = members.iter().map(|(id, _)| *id).collect();
        std::fs::write(&self.file, self.map.to_toml()).expect("cluster file");
        self.procs[s].resize_with(members.len(), || None);
    }

    /// Starts replica `r` of shard `s` on its address and data directory.
    pub fn spawn(&mut self, s: usize, r: usize) {
        let addr = self.map.shards[s].replicas[r].clone();
        let id = self.map.shards[s].replica_ids()[r];
        let mut child = Command::new(paramdb_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir(s, r))
            .args(["--listen", &addr, "--shard", &s.to_string()])
            .args(["--replica", &id.to_string(), "--cluster"])
            .arg(&self.file)
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(log_file(
                &self.dir.path().join(format!("shard-{s}-replica-{id}.log")),
            ))
            .spawn()
            .expect("spawn paramdb serve");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read listening line");
        assert!(
            line.trim().ends_with(&addr),
            "replica {} of shard {s} did not come up on {addr}: {line:?}",
            r + 1
        );
        if self.extra.iter().any(|a| a == "--metrics-listen") {
            let mut m = String::new();
            out.read_line(&mut m).expect("read metrics line");
            let url = m
                .trim()
                .strip_prefix("paramdb: metrics on http://")
                .unwrap_or_else(|| panic!("no metrics line: {m:?}"))
                .to_string();
            self.metrics.insert((s, r), url);
        }
        self.procs[s][r] = Some(child);
    }

    /// SIGKILLs replica `r` of shard `s`.
    pub fn kill(&mut self, s: usize, r: usize) {
        if let Some(mut c) = self.procs[s][r].take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// Sends replica `r` of shard `s` a signal (`STOP` freezes it: it keeps its sockets but
    /// answers nothing; `CONT` thaws it).
    pub fn signal(&self, s: usize, r: usize, signal: &str) {
        let pid = self.procs[s][r].as_ref().expect("running replica").id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// Once shard 0 has a leader, creates table `t` (dim `DIM`, rule add) on it; returns an
    /// admin client and the leader.
    pub fn with_table(&self) -> (BlockingClient, usize) {
        let admin = self.client(ClientOptions::default());
        let l = self.leader(&admin, 0, Duration::from_secs(30));
        admin
            .create_table(TableSpec::new("t", DIM as u32).with_rule(UpdateRule::Add))
            .unwrap();
        (admin, l)
    }

    pub fn client(&self, opts: ClientOptions) -> BlockingClient {
        BlockingClient::connect(self.map.clone(), opts).expect("client")
    }

    /// The replica (0-based) that leads shard `s` and is running, once one does.
    pub fn leader(&self, probe: &BlockingClient, s: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let status = probe.replica_status();
            for (r, (_, st)) in status[s].iter().enumerate() {
                if let Ok(st) = st {
                    if st.role == "leader" && self.procs[s][r].is_some() {
                        return r;
                    }
                }
            }
            assert!(Instant::now() < deadline, "shard {s} elected no leader");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().flatten().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const CLIENTS: u64 = 4;
const KEYS: u64 = 60;
const DIM: usize = 2;

fn key(i: u64) -> u64 {
    i * (u64::MAX / KEYS)
}

#[derive(Default)]
struct Log {
    acked: Vec<(Vec<u64>, f32)>,
    unknown: u64,
}

/// The result of one kill loop.
struct Outcome {
    acked: usize,
    unknown: u64,
    lost: f64,
    duplicated: f64,
    unexpected: usize,
    /// Milliseconds from a leader's kill to the next acknowledged push on its range.
    failover_ms: Vec<f64>,
}

/// Kills the leader of a random shard `kills` times while `CLIENTS` clients push; each
/// killed leader is restarted once the range acknowledged a push without it. With
/// `fresh_seq_on_retry`, a client retries an unknown push with a new sequence number (the
/// control: that must double-apply some).
fn leader_kill_loop(g: &mut Groups, kills: usize, fresh_seq_on_retry: bool) -> Outcome {
    let shards = g.map.shards.len();
    let admin = g.client(ClientOptions::default());
    for s in 0..shards {
        g.leader(&admin, s, Duration::from_secs(30));
    }
    admin
        .create_table(TableSpec::new("t", DIM as u32).with_rule(UpdateRule::Add))
        .unwrap();
    admin.create_table(TableSpec::new("probe", 1)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (map, stop) = (g.map.clone(), stop.clone());
            std::thread::spawn(move || {
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
                    let mut seq = client.next_seq();
                    let mut first = true;
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        match client.push_with_seq("t", seq, &keys, &vals) {
                            Ok(_) => break,
                            Err(e) => {
                                assert!(
                                    e.code().is_none_or(|c| matches!(
                                        c,
                                        paramdb_client::Code::Unavailable
                                            | paramdb_client::Code::Unknown
                                            | paramdb_client::Code::Cancelled
                                            | paramdb_client::Code::DeadlineExceeded
                                    )),
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
                                if fresh_seq_on_retry {
                                    seq = client.next_seq();
                                }
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    log.acked.push((keys, value));
                }
                log
            })
        })
        .collect();

    let probe = g.client(ClientOptions {
        client_id: Some(999),
        max_retries: 200,
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    });
    let mut rng = StdRng::seed_from_u64(7);
    let mut failover_ms = Vec::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
        let s = rng.random_range(0..shards);
        let l = g.leader(&admin, s, Duration::from_secs(30));
        g.kill(s, l);
        let t0 = Instant::now();
        probe
            .push("probe", &[g.map.shards[s].range[0]], &[1.0])
            .unwrap_or_else(|e| {
                panic!("shard {s} acknowledged nothing after its leader died: {e}")
            });
        failover_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        g.spawn(s, l);
    }
    stop.store(true, Ordering::SeqCst);
    let logs: Vec<Log> = clients.into_iter().map(|h| h.join().unwrap()).collect();

    let mut expected = vec![0f32; KEYS as usize];
    for log in &logs {
        for (keys, v) in &log.acked {
            for k in keys {
                expected[(k / (u64::MAX / KEYS)) as usize] += v;
            }
        }
    }
    let mut all: Vec<u64> = (0..KEYS).map(key).collect();
    all.extend((0..KEYS).map(|i| key(i) + 1));
    let rows = admin.pull("t", &all).unwrap();
    let (mut lost, mut duplicated) = (0f64, 0f64);
    for i in 0..KEYS as usize {
        for d in 0..DIM {
            let (got, want) = (rows[i * DIM + d], expected[i]);
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
    failover_ms.sort_by(f64::total_cmp);
    Outcome {
        acked: logs.iter().map(|l| l.acked.len()).sum(),
        unknown: logs.iter().map(|l| l.unknown).sum(),
        lost,
        duplicated,
        unexpected,
        failover_ms,
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn leader_kill_loop_loses_and_duplicates_nothing() {
    let kills: usize = std::env::var("PARAMDB_LEADER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut g = Groups::start(3, 3, &[]);
    let o = leader_kill_loop(&mut g, kills, false);
    println!(
        "leader kill loop: {kills} leader kills over 3 ranges × 3 replicas; {} pushes \
         acknowledged ({} after an unknown outcome and a retry with the same sequence); lost \
         {}, duplicated {}, unexpected {}; kill to the range's next acknowledged push p50 {:.0} \
         ms, p99 {:.0} ms, max {:.0} ms",
        o.acked,
        o.unknown,
        o.lost,
        o.duplicated,
        o.unexpected,
        pct(&o.failover_ms, 0.5),
        pct(&o.failover_ms, 0.99),
        o.failover_ms.last().copied().unwrap_or(0.0),
    );
    assert!(
        o.acked > kills,
        "too few pushes ({}) to test anything",
        o.acked
    );
    assert!(o.unknown > 0, "no push ever met a dead leader");
    assert_eq!((o.lost, o.duplicated, o.unexpected), (0.0, 0.0, 0));
}

#[test]
fn leader_kill_loop_control_with_new_sequence_numbers_duplicates() {
    // The same loop, but a retry takes a new sequence number: a push whose leader died after
    // committing it is applied twice, and the oracle sees it.
    let mut g = Groups::start(3, 3, &[]);
    let o = leader_kill_loop(&mut g, 10, true);
    println!(
        "leader kill loop control (new sequence number on retry): {} pushes, lost {}, \
         duplicated {}",
        o.acked, o.lost, o.duplicated
    );
    assert!(
        o.duplicated > 0.0,
        "retrying with new sequence numbers should have applied some push twice"
    );
}

/// Pushes from one client, each retried with its sequence number until acknowledged; returns
/// what was acknowledged per key.
fn push_some(client: &BlockingClient, n: usize, counts: &mut [f32]) {
    for i in 0..n {
        let k = (i as u64 * 7) % KEYS;
        let seq = client.next_seq();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = client.push_with_seq("t", seq, &[key(k)], &[1.0; DIM]) {
            assert!(
                Instant::now() < deadline,
                "push {seq} never acknowledged: {e}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        counts[k as usize] += 1.0;
    }
}

fn check_rows(client: &BlockingClient, counts: &[f32]) {
    let keys: Vec<u64> = (0..KEYS).map(key).collect();
    let rows = client.pull("t", &keys).unwrap();
    let want: Vec<f32> = counts.iter().flat_map(|&c| [c; DIM]).collect();
    assert_eq!(rows, want, "rows differ from the acknowledged pushes");
}

#[test]
fn a_follower_that_lost_its_disk_is_rebuilt_and_then_the_leader_can_die() {
    // Snapshots every 50 entries, so the leader's log no longer reaches back to the start and
    // the emptied follower must be rebuilt from a snapshot.
    let mut g = Groups::start(1, 3, &["--raft-snapshot-every", "50"]);
    let (admin, l) = g.with_table();
    let client = g.client(ClientOptions {
        client_id: Some(77),
        ..ClientOptions::default()
    });
    let mut counts = vec![0f32; KEYS as usize];
    push_some(&client, 100, &mut counts);
    let f = (l + 1) % 3;
    g.kill(0, f);
    std::fs::remove_dir_all(g.data_dir(0, f)).unwrap();
    // Pushes go on until the leader's log no longer starts at the beginning (it purges only
    // what no replication is reading at the moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        push_some(&client, 100, &mut counts);
        let st = admin.replica_status();
        let first = st[0][l].1.as_ref().ok().and_then(|i| i.first_log);
        if first.is_some_and(|i| i > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never purged its log");
    }
    g.spawn(0, f);
    // It catches up from the leader's snapshot and the log after it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = applied(&admin);
        if applied[f].is_some() && applied[f] == applied[l] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica {} never caught up: {applied:?}",
            f + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        g.data_dir(0, f).join("engine-1").is_dir(),
        "the emptied replica should have installed a snapshot"
    );
    // The leader dies: the rebuilt replica and the third hold everything acknowledged.
    g.kill(0, l);
    push_some(&client, 50, &mut counts);
    check_rows(&client, &counts);
    let st = admin.replica_status();
    let leader = st[0]
        .iter()
        .position(|(_, r)| r.as_ref().is_ok_and(|i| i.role == "leader"))
        .unwrap();
    println!(
        "disk loss: replica {} emptied and rebuilt, then leader {} killed; replica {} leads; \
         {} pushes, none lost",
        f + 1,
        l + 1,
        leader + 1,
        counts.iter().sum::<f32>()
    );
}

#[test]
fn a_frozen_leader_holds_pushes_up_only_until_the_client_s_timeout() {
    // A SIGSTOPped leader keeps its connections open and answers nothing. The client's call
    // times out; its retry must go to another replica (which leads once the others have
    // elected one), not to the frozen one again.
    let g = Groups::start(1, 3, &[]);
    let (admin, l) = g.with_table();
    let client = g.client(ClientOptions {
        client_id: Some(78),
        timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    });
    let mut counts = vec![0f32; KEYS as usize];
    push_some(&client, 20, &mut counts);
    g.signal(0, l, "STOP");
    let frozen = Instant::now();
    // With 30 retries of 2 s each, a client that kept asking the frozen leader would give up
    // within push_some's minute.
    push_some(&client, 20, &mut counts);
    let took = frozen.elapsed();
    g.signal(0, l, "CONT");
    // Thawed, the old leader hears of the new term and follows: every replica converges.
    converged(&admin, &[0, 1, 2]);
    check_rows(&client, &counts);
    println!(
        "frozen leader: replica {} SIGSTOPped; the next 20 pushes took {took:?} in all \
         (client timeout 2 s); thawed, all 3 converged and the rows are exact",
        l + 1
    );
}

/// `paramdb cluster set-members` on the test's cluster file: its one line of output.
fn set_members(g: &Groups) -> String {
    let out = Command::new(paramdb_bin())
        .args(["cluster", "set-members", "--shard", "0", "--cluster"])
        .arg(&g.file)
        .output()
        .expect("paramdb cluster set-members");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "set-members failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn replicas_are_replaced_and_added_while_pushes_go_on() {
    let mut g = Groups::start(1, 3, &[]);
    let (admin, l) = g.with_table();
    // One client pushes all along, each push retried with its sequence number until it is
    // acknowledged; it was made with the first cluster file, and finds replicas added since
    // through the leader hints.
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (map, stop) = (g.map.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = BlockingClient::connect(
                map,
                ClientOptions {
                    client_id: Some(81),
                    timeout: Duration::from_secs(5),
                    ..ClientOptions::default()
                },
            )
            .unwrap();
            let mut counts = vec![0f32; KEYS as usize];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                push_some(&client, 10, &mut counts);
                n += 10;
            }
            (counts, n)
        })
    };
    let members = |g: &Groups| -> Vec<(u64, String)> {
        g.map.shards[0]
            .members()
            .into_iter()
            .map(|(i, a)| (i, a.to_string()))
            .collect()
    };
    std::thread::sleep(Duration::from_millis(500));
    // A follower's machine is lost: a replica at a new address, with a new id, replaces it.
    let f = (l + 1) % 3;
    g.kill(0, f);
    std::fs::remove_dir_all(g.data_dir(0, f)).unwrap();
    let mut m = members(&g);
    let new_addr = free_addresses(3);
    m[f] = (4, new_addr[0].clone());
    g.set_replicas(0, &m);
    g.spawn(0, f);
    let replaced = set_members(&g);
    assert!(replaced.contains("4 at"), "{replaced}");
    // The group grows to 5.
    m.push((5, new_addr[1].clone()));
    m.push((6, new_addr[2].clone()));
    g.set_replicas(0, &m);
    g.spawn(0, 3);
    g.spawn(0, 4);
    let grown = set_members(&g);
    std::thread::sleep(Duration::from_millis(500));
    // The leader dies, then a replica added since: 3 of 5 remain, a majority, and one of
    // the first file's replicas (the pusher knows no other address but those it learned).
    let l = g.leader(&admin, 0, Duration::from_secs(30));
    g.kill(0, l);
    let l2 = g.leader(
        &g.client(ClientOptions::default()),
        0,
        Duration::from_secs(30),
    );
    let other = [f, 3, 4].into_iter().find(|&r| r != l && r != l2).unwrap();
    g.kill(0, other);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (counts, pushes) = pusher.join().unwrap();
    let reader = g.client(ClientOptions::default());
    check_rows(&reader, &counts);
    // Every replica still running, the replacement and the added ones among them, holds it.
    let live: Vec<usize> = (0..5).filter(|&r| r != l && r != other).collect();
    converged(&reader, &live);
    let st = reader.replica_status();
    let voters = st[0]
        .iter()
        .find_map(|(_, r)| r.as_ref().ok().filter(|i| i.role == "leader"))
        .map(|i| i.members.iter().map(|m| m.0).collect::<Vec<_>>())
        .expect("a leader");
    assert_eq!(
        voters,
        vec![1, 2, 3, 4, 5, 6]
            .into_iter()
            .filter(|&i| i != (f as u64 + 1))
            .collect::<Vec<_>>()
    );
    // Bad changes are refused in one line, and change nothing: an even group, and a replica
    // given another's id at a new address (an empty replica must not take a voter's place).
    let refused = |g: &Groups, want: &str| {
        let out = Command::new(paramdb_bin())
            .args(["cluster", "set-members", "--shard", "0", "--cluster"])
            .arg(&g.file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want) && err.trim().lines().count() == 1,
            "{want:?}: {err}"
        );
    };
    let good = members(&g);
    let mut even = good.clone();
    even.pop();
    g.set_replicas(0, &even);
    refused(&g, "a group needs an odd number");
    let mut moved = good.clone();
    let spare = free_addresses(1).remove(0);
    moved[live[0]].1 = spare;
    g.set_replicas(0, &moved);
    refused(&g, "takes a new id");
    g.set_replicas(0, &good);
    let after = reader.replica_status();
    let same = after[0]
        .iter()
        .find_map(|(_, r)| r.as_ref().ok().filter(|i| i.role == "leader"))
        .map(|i| i.members.iter().map(|m| m.0).collect::<Vec<_>>());
    assert_eq!(same.as_ref(), Some(&voters));
    let ids = g.map.shards[0].replica_ids();
    println!(
        "membership: replica {} replaced by 4 ({replaced}); grown to 5 ({grown}); then leader \
         {} and replica {} killed, replica {} led after ({}); {pushes} pushes all along, the \
         rows exact, the 3 left converged",
        f + 1,
        ids[l],
        ids[other],
        ids[l2],
        if ids[l2] > 3 {
            "not in the pusher's cluster file: it followed the hints"
        } else {
            "one the pusher's cluster file lists"
        }
    );
}

/// Waits until replicas `which` (places in shard 0's list) have applied the same entry.
fn converged(admin: &BlockingClient, which: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = applied(admin);
        if which.iter().all(|&r| a[r].is_some() && a[r] == a[which[0]]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas {which:?} did not converge: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The entry each replica of shard 0 has applied (`None`: unreachable, or nothing yet).
fn applied(admin: &BlockingClient) -> Vec<Option<u64>> {
    admin.replica_status()[0]
        .iter()
        .map(|(_, r)| r.as_ref().ok().and_then(|i| i.applied))
        .collect()
}

/// `paramdb serve` with `args` must exit at once with one line of error containing `want`.
fn refuses(cluster: impl AsRef<str>, args: &[&str], want: &str) {
    let cluster = cluster.as_ref();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, cluster).unwrap();
    let out = Command::new(paramdb_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .args(["--listen", "127.0.0.1:0", "--cluster"])
        .arg(&file)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {cluster} {args:?}");
    assert!(
        err.contains(want) && err.trim().lines().count() == 1,
        "{cluster} {args:?}: {err}"
    );
}

#[test]
fn bad_replica_configuration_is_refused_in_one_line() {
    let three = r#"replicas = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]"#;
    refuses(
        "[[shard]]\nrange = [0, 10]\nreplicas = [\"a:1\", \"a:2\"]\n",
        &["--shard", "0", "--replica", "1"],
        "has 2 replicas: a group needs an odd number",
    );
    refuses(
        format!("[[shard]]\nrange = [0, 10]\n{three}\n[[shard]]\nrange = [10, 20]\nreplicas = [\"127.0.0.1:3\"]\n"),
        &["--shard", "0", "--replica", "1"],
        "is listed in shard 0 and in shard 1",
    );
    refuses(
        format!(
            "[[shard]]\nrange = [0, 10]\n{three}\n[[shard]]\nrange = [5, 20]\naddress = \"b:1\"\n"
        ),
        &["--shard", "0", "--replica", "1"],
        "overlaps",
    );
    refuses(
        format!("[[shard]]\nrange = [0, 10]\n{three}\naddress = \"b:1\"\n"),
        &["--shard", "0", "--replica", "1"],
        "both an address and replicas",
    );
    refuses(
        format!("[[shard]]\nrange = [0, 10]\n{three}\n"),
        &["--shard", "0"],
        "say which one this server is with --replica",
    );
    refuses(
        format!("[[shard]]\nrange = [0, 10]\n{three}\n"),
        &["--shard", "0", "--replica", "4"],
        "--replica 4 is not a replica of shard 0",
    );
    refuses(
        "[[shard]]\nrange = [0, 10]\naddress = \"127.0.0.1:1\"\n",
        &["--shard", "0", "--replica", "1"],
        "is not replicated",
    );
}

#[test]
fn a_replica_refuses_a_data_directory_of_another_range() {
    // Replica 1 of shard 0 runs and stops; its directory is then given to shard 1's replica.
    let mut g = Groups::start(2, 1, &[]);
    let probe = g.client(ClientOptions::default());
    g.leader(&probe, 0, Duration::from_secs(30));
    g.kill(0, 0);
    g.kill(1, 0);
    let out = Command::new(paramdb_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(g.data_dir(0, 0))
        .args(["--listen", &g.map.shards[1].replicas[0], "--cluster"])
        .arg(&g.file)
        .args(["--shard", "1", "--replica", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a replica took another range's data");
    assert!(
        err.contains("holds replica 1 of shard-0")
            && err.contains("this server is replica 1 of shard-1"),
        "{err}"
    );
}

/// A one-worker word2vec trainer against 2 ranges × 3 replicas; with `kill_every`, SIGKILLs the
/// leader of one range (alternating) that often and restarts it. Returns the model's vector
/// bits and the kills made.
fn train_through_leader_kills(
    corpus: &std::path::Path,
    kill_every: Option<Duration>,
) -> (Vec<(String, Vec<u32>)>, usize) {
    let mut g = Groups::start(2, 3, &[]);
    let probe = g.client(ClientOptions::default());
    for s in 0..2 {
        g.leader(&probe, s, Duration::from_secs(30));
    }
    let mut trainer = Command::new(paramdb_bin())
        .args(["train", "word2vec", "--corpus"])
        .arg(corpus)
        .arg("--cluster")
        .arg(&g.file)
        .args(["--threads", "1", "--dim", "16", "--epochs", "3"])
        .args(["--batch-words", "4000", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut kills = 0;
    if let Some(every) = kill_every {
        loop {
            std::thread::sleep(every);
            if trainer.try_wait().unwrap().is_some() {
                break;
            }
            let s = kills % 2;
            let l = g.leader(&probe, s, Duration::from_secs(30));
            g.kill(s, l);
            g.spawn(s, l);
            kills += 1;
        }
    }
    let out = trainer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "trainer failed after {kills} leader kills: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (crate::word2vec::vector_bits(&probe, "w2v"), kills)
}

#[test]
fn word2vec_through_leader_kills_equals_an_uninterrupted_run_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus.txt");
    paramdb_trainer::synth::topic_corpus(&corpus, 30, 60_000, 10, 5).unwrap();
    let (calm, _) = train_through_leader_kills(&corpus, None);
    let (killed, kills) = train_through_leader_kills(&corpus, Some(Duration::from_millis(300)));
    assert!(
        kills >= 3,
        "training ended before the leaders could be killed ({kills} kills)"
    );
    assert_eq!(calm.len(), killed.len());
    let differing = calm.iter().zip(&killed).filter(|(a, b)| a != b).count();
    println!(
        "word2vec through {kills} leader SIGKILLs (2 ranges × 3 replicas, every 300 ms): {} \
         word vectors, {differing} differ from an uninterrupted run",
        calm.len()
    );
    assert_eq!(differing, 0);
}

#[test]
fn cluster_status_and_the_gauges_name_the_leader_and_each_replica_s_progress() {
    let mut g = Groups::start(1, 3, &["--metrics-listen", "127.0.0.1:0"]);
    let admin = g.client(ClientOptions::default());
    let l = g.leader(&admin, 0, Duration::from_secs(30));
    admin.create_table(TableSpec::new("t", 2)).unwrap();
    for i in 0..20u64 {
        admin.push("t", &[i], &[1.0, 1.0]).unwrap();
    }
    // Every replica names the same leader and has applied the 20 pushes, once the last to
    // start has caught up (the leader backs off from a replica it could not reach yet).
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let out = Command::new(paramdb_bin())
            .args(["cluster", "status", "--json", "--cluster"])
            .arg(&g.file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3, "{rows:?}");
        let caught_up = rows.iter().all(|r| {
            r["leader"] == (l + 1) as u64
                && r["applied"].as_u64().is_some_and(|a| a >= 20)
                && r["lag"] == 0
        });
        if caught_up {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not catch up: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let leaders: Vec<_> = rows.iter().filter(|r| r["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{rows:?}");
    assert_eq!(leaders[0]["id"], (l + 1) as u64);
    // The same in Prometheus gauges, from the leader's metrics endpoint.
    let body = crate::ops::scrape(&g.metrics[&(0, l)]);
    let gauge = |series: &str| {
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map_or(f64::NAN, |v| v.trim().parse().unwrap())
    };
    assert_eq!(
        gauge(r#"paramdb_replica_role{shard="0",role="leader"}"#),
        1.0,
        "{body}"
    );
    assert_eq!(
        gauge(r#"paramdb_replica_leader_id{shard="0"}"#),
        (l + 1) as f64
    );
    assert!(
        gauge(r#"paramdb_replica_applied_index{shard="0"}"#) >= 20.0,
        "{body}"
    );
    // A killed follower falls behind on the leader's lag gauge.
    let f = (l + 1) % 3;
    g.kill(0, f);
    for i in 0..10u64 {
        admin.push("t", &[i], &[1.0, 1.0]).unwrap();
    }
    let body = crate::ops::scrape(&g.metrics[&(0, l)]);
    let lag = body
        .lines()
        .find_map(|line| {
            line.strip_prefix(&format!(
                "paramdb_replica_follower_lag_entries{{shard=\"0\",replica=\"{}\"}} ",
                f + 1
            ))
        })
        .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
    assert!(lag >= 10.0, "replica {}'s lag is {lag}: {body}", f + 1);
}

#[test]
fn bounded_staleness_pulls_spread_over_every_replica_and_see_what_is_old_enough() {
    let g = Groups::start(1, 3, &["--metrics-listen", "127.0.0.1:0"]);
    g.with_table();
    let writer = g.client(ClientOptions {
        client_id: Some(79),
        ..ClientOptions::default()
    });
    let reader = g.client(ClientOptions {
        read_lag: Some(MaxLag::Millis(1000)),
        ..ClientOptions::default()
    });
    let mut counts = vec![0f32; KEYS as usize];
    for _ in 0..3 {
        push_some(&writer, 30, &mut counts);
        // Whichever replica serves a pull bounded by 1 s, it sees every push acknowledged more
        // than 1 s ago.
        std::thread::sleep(Duration::from_millis(1100));
        for _ in 0..30 {
            check_rows(&reader, &counts);
        }
    }
    // Each replica served some of them (pulls it took, less those it refused).
    let served: Vec<f64> = (0..3)
        .map(|r| {
            let body = crate::ops::scrape(&g.metrics[&(0, r)]);
            let sum = |prefix: &str| -> f64 {
                body.lines()
                    .filter(|l| l.starts_with(prefix))
                    .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
                    .sum()
            };
            sum(r#"paramdb_requests_total{method="Pull"}"#)
                - sum(r#"paramdb_rejected_requests_total{method="Pull""#)
        })
        .collect();
    assert!(
        served.iter().all(|&n| n > 0.0),
        "pulls within 1 s should spread over all 3 replicas: {served:?}"
    );
    println!(
        "bounded staleness: 90 pulls within 1 s, each exact; served by replicas 1-3: {served:?}"
    );
}

/// Three hosts, each a network namespace holding one replica of a one-shard group, joined to
/// this host by veth pairs (this host routes between them). Removed on drop.
struct NetGroup {
    names: Vec<String>,
    servers: Vec<Option<Child>>,
    ips: Vec<String>,
    forwarding: Option<crate::multihost::Forwarding>,
    file: PathBuf,
    map: ClusterMap,
    _dir: tempfile::TempDir,
}

impl Drop for NetGroup {
    fn drop(&mut self) {
        for s in self.servers.iter_mut().flatten() {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.forwarding = None;
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl NetGroup {
    fn start() -> NetGroup {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "this test creates network namespaces: run it as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let tag = format!("{}r", pid % 100_000);
        // multihost's second octet, with third octets it does not use.
        let net = 100 + 2 * (pid % 70);
        let mut g = NetGroup {
            names: Vec::new(),
            servers: Vec::new(),
            ips: Vec::new(),
            forwarding: None,
            file: dir.path().join("cluster.toml"),
            map: ClusterMap::default(),
            _dir: dir,
        };
        for i in 0..3 {
            let ns = format!("pdb{tag}h{i}");
            let (outer, inner) = (format!("pdb{tag}v{i}"), format!("pdb{tag}p{i}"));
            ip(&["netns", "add", &ns]);
            g.names.push(ns.clone());
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            let gateway = format!("10.{net}.{}.1", i + 11);
            let host = format!("10.{net}.{}.2", i + 11);
            ip(&["addr", "add", &format!("{gateway}/30"), "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            g.inside(i, &["addr", "add", &format!("{host}/30"), "dev", &inner]);
            g.inside(i, &["link", "set", &inner, "up"]);
            g.inside(i, &["link", "set", "lo", "up"]);
            g.inside(i, &["route", "add", "default", "via", &gateway]);
            g.ips.push(host);
        }
        g.forwarding = Some(crate::multihost::Forwarding::on());
        // Each host is its own: the port is free there.
        let mut map = ClusterMap::even(&[String::new()]);
        map.shards[0].address.clear();
        map.shards[0].replicas = g.ips.iter().map(|h| format!("{h}:7070")).collect();
        std::fs::write(&g.file, map.to_toml()).unwrap();
        g.map = map;
        for i in 0..3 {
            g.servers.push(None);
            g.spawn(i);
        }
        g
    }

    fn client_opts(&self, opts: ClientOptions) -> BlockingClient {
        BlockingClient::connect(self.map.clone(), opts).unwrap()
    }

    fn inside(&self, i: usize, args: &[&str]) {
        let mut a = vec!["netns", "exec", &self.names[i], "ip"];
        a.extend_from_slice(args);
        ip(&a);
    }

    fn spawn(&mut self, i: usize) {
        let addr = self.map.shards[0].replicas[i].clone();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.names[i]])
            .arg(paramdb_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(self._dir.path().join(format!("r{i}")))
            .args([
                "--listen",
                &addr,
                "--shard",
                "0",
                "--replica",
                &(i + 1).to_string(),
            ])
            .arg("--cluster")
            .arg(&self.file)
            .stdout(Stdio::piped())
            .stderr(log_file(&self._dir.path().join(format!("r{i}.log"))))
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.trim().ends_with(&addr), "{line}");
        self.servers[i] = Some(child);
    }

    /// Cuts replica `i` off from the others both ways (a blackhole route to each of them in
    /// its namespace, and to it in theirs), or heals the cut. The test's client, on this
    /// host, still reaches every replica.
    fn cut(&self, i: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for (j, other) in self.ips.iter().enumerate() {
            if j != i {
                self.inside(i, &["route", verb, "blackhole", &format!("{other}/32")]);
                let me = format!("{}/32", self.ips[i]);
                self.inside(j, &["route", verb, "blackhole", &me]);
            }
        }
    }

    /// The last lines of each replica's log, for failures.
    fn logs(&self) -> String {
        (0..self.servers.len())
            .map(|i| {
                let text = std::fs::read_to_string(self._dir.path().join(format!("r{i}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "replica {}:\n{}",
                    i + 1,
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The replica that leads, once all three name it.
    fn settled_leader(&self, probe: &BlockingClient) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = probe.replica_status();
            let named: Vec<Option<u64>> = st[0]
                .iter()
                .map(|(_, r)| r.as_ref().ok().and_then(|i| i.leader))
                .collect();
            if let Some(Some(l)) = named.first() {
                if named.iter().all(|n| *n == Some(*l)) {
                    return *l as usize - 1;
                }
            }
            assert!(Instant::now() < deadline, "no settled leader: {named:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn leader(&self, probe: &BlockingClient) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = probe.replica_status();
            if let Some(i) = st[0]
                .iter()
                .position(|(_, r)| r.as_ref().is_ok_and(|i| i.role == "leader"))
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no leader: {st:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_cut_off_leader_acknowledges_nothing_and_the_majority_elects_another() {
    let g = NetGroup::start();
    let admin = g.client_opts(ClientOptions::default());
    g.leader(&admin);
    admin.create_table(TableSpec::new("t", DIM as u32)).unwrap();
    let client = g.client_opts(ClientOptions {
        client_id: Some(5),
        ..ClientOptions::default()
    });
    let mut counts = vec![0f32; KEYS as usize];
    push_some(&client, 50, &mut counts);
    // The leader now (leadership may have moved once while the group formed), as every
    // replica sees it.
    let old = g.settled_leader(&admin);

    // A client that can reach only the old leader.
    let mut alone = g.map.clone();
    alone.shards[0].replicas = vec![g.map.shards[0].replicas[old].clone()];
    let stranded = BlockingClient::connect(
        alone,
        ClientOptions {
            client_id: Some(6),
            max_retries: 0,
            timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    g.cut(old, true);
    let cut_at = Instant::now();
    // For 3 s the old leader is asked to take pushes: it must acknowledge none (it cannot
    // reach a majority), while the majority elects a leader and takes the other client's.
    // It is asked for reads too: once its lease is over (225 ms after a majority last
    // answered it, which was before the cut) it must serve none, since another replica may
    // lead and take writes by then.
    let mut stranded_seqs = Vec::new();
    let mut acked_by_old = 0;
    let (mut read_early, mut read_late) = (0, 0);
    let mut answers = std::collections::BTreeMap::<&str, usize>::new();
    while cut_at.elapsed() < Duration::from_secs(3) {
        let seq = stranded.next_seq();
        stranded_seqs.push(seq);
        match stranded.push_with_seq("t", seq, &[key(KEYS - 1)], &[1.0; DIM]) {
            Ok(_) => acked_by_old += 1,
            Err(e) => {
                // The cut-off replica still believes it leads: it times out (the client waits
                // 500 ms), then, after its patience, says no majority answers it.
                let text = e.to_string();
                let kind = if text.contains("no majority") {
                    "no majority"
                } else if e.code() == Some(paramdb_client::Code::DeadlineExceeded) {
                    "no answer in 500 ms"
                } else {
                    panic!("the cut-off leader answered a push with {text}")
                };
                *answers.entry(kind).or_default() += 1;
            }
        }
        let asked = cut_at.elapsed();
        if stranded.pull("t", &[key(0)]).is_ok() {
            if asked < Duration::from_millis(500) {
                read_early += 1;
            } else {
                read_late += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        acked_by_old, 0,
        "the cut-off leader acknowledged {acked_by_old} pushes"
    );
    assert_eq!(
        read_late, 0,
        "the cut-off leader served {read_late} reads after its lease ({read_early} before)"
    );
    push_some(&client, 50, &mut counts);
    let st = admin.replica_status();
    let new = st[0]
        .iter()
        .enumerate()
        .find(|(i, (_, r))| *i != old && r.as_ref().is_ok_and(|r| r.role == "leader"))
        .map(|(i, _)| i)
        .expect("the majority side elected a leader");
    g.cut(old, false);
    let healed = g.client_opts(ClientOptions {
        client_id: Some(6),
        ..ClientOptions::default()
    });
    // The stranded pushes were never acknowledged: retried now with their sequence numbers,
    // each is applied once.
    for &seq in &stranded_seqs {
        let deadline = Instant::now() + Duration::from_secs(30);
        while healed
            .push_with_seq("t", seq, &[key(KEYS - 1)], &[1.0; DIM])
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "stranded push {seq} never acknowledged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    counts[(KEYS - 1) as usize] += stranded_seqs.len() as f32;
    // Every replica converges on the same rows.
    converged(&admin, &[0, 1, 2]);
    check_rows(&client, &counts);
    println!(
        "partition: leader {} cut off for 3 s: {} pushes to it, 0 acknowledged ({answers:?}); \
         {read_early} reads served in its first 500 ms, none after; replica {} elected on the \
         majority side; after healing, all 3 converged and the rows are exact",
        old + 1,
        stranded_seqs.len(),
        new + 1
    );
}
