//! The tools on a shard's directory: read while its server takes pushes (and checkpoints)
//! without disturbing it, `verify` naming damage, and one-line errors for bad targets.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, TableSpec, UpdateRule};
use paramdb_engine::wal::format::SegmentHeader;
use paramdb_engine::wal::reader::{self, Scan};
use paramdb_engine::Store;
use paramdb_tests::servers::{paramdb_bin, start};
use rand::{Rng, SeedableRng};

use crate::common::{manual_opts, snapshot_tree};

const DIM: usize = 8;
const KEYS: u64 = 300;

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(paramdb_bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run paramdb")
}

fn ok(args: &[&str], dir: &Path) -> String {
    let out = run(args, dir);
    assert!(
        out.status.success(),
        "paramdb {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// `key<TAB>v v v …` lines of `scan`/`get` into (key, values).
fn parse_rows(text: &str) -> Vec<(u64, Vec<f32>)> {
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("key<TAB>values");
            let vals = v.split(' ').map(|x| x.parse().expect("float")).collect();
            (k.parse().expect("key"), vals)
        })
        .collect()
}

/// Under the `add` rule with pushes of all-ones rows, every stored row is `[n; DIM]` for the
/// number `n` of pushes that reached it.
fn row_count(key: u64, vals: &[f32]) -> u64 {
    assert_eq!(vals.len(), DIM, "row {key}");
    assert!(
        vals.iter()
            .all(|&v| v == vals[0] && v >= 0.0 && v.fract() == 0.0),
        "row {key} is not one whole push count: {vals:?}"
    );
    vals[0] as u64
}

#[test]
fn tools_read_a_live_shard_without_disturbing_it() {
    let dir = tempfile::tempdir().unwrap();
    let paramdb = paramdb_bin();
    let (mut servers, cluster) = start(&paramdb, dir.path(), 1, &["--sync", "interval=5"]);
    let shard = dir.path().join("shard-0");
    let client = BlockingClient::connect(
        ClusterMap::load(&cluster).unwrap(),
        ClientOptions::default(),
    )
    .unwrap();
    client
        .create_table(TableSpec::new("t", DIM as u32).with_rule(UpdateRule::Add))
        .unwrap();

    // A pusher: random key sets, all-ones rows, a checkpoint every 50 pushes so the tools
    // race with RocksDB flushes and log segments being deleted. `acked` counts per key.
    let acked = Arc::new(Mutex::new(HashMap::<u64, u64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let client = BlockingClient::connect(
            ClusterMap::load(&cluster).unwrap(),
            ClientOptions::default(),
        )
        .unwrap();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut pushes = 0u64;
            while !stop.load(Ordering::SeqCst) || pushes < 200 {
                let mut keys: Vec<u64> = (0..40).map(|_| rng.random_range(0..KEYS)).collect();
                keys.sort_unstable();
                keys.dedup();
                let vals = vec![1.0f32; keys.len() * DIM];
                client.push("t", &keys, &vals).unwrap();
                let mut a = acked.lock().unwrap();
                for k in &keys {
                    *a.entry(*k).or_default() += 1;
                }
                drop(a);
                pushes += 1;
                if pushes.is_multiple_of(50) {
                    client.checkpoint().unwrap();
                }
            }
            pushes
        })
    };

    let out = dir.path().join("export.npy");
    for _ in 0..4 {
        let before: HashMap<u64, u64> = acked.lock().unwrap().clone();
        let scanned = parse_rows(&ok(&["scan", "t"], &shard));
        // Every row is a whole number of pushes, at least what was acknowledged before the
        // scan started.
        for (k, v) in &scanned {
            let n = row_count(*k, v);
            assert!(n >= before.get(k).copied().unwrap_or(0), "key {k}: {n}");
        }
        for (k, n) in &before {
            if *n > 0 {
                assert!(scanned.iter().any(|(s, _)| s == k), "key {k} missing");
            }
        }
        let inspect: serde_json::Value =
            serde_json::from_str(&ok(&["inspect", "--json", "--exact"], &shard)).unwrap();
        let s = &inspect["shards"][0];
        assert_eq!(s["read_only"], true);
        assert_eq!(s["tables"][0]["name"], "t");
        assert!(s["checkpoint_lsn"].as_u64() <= s["last_lsn"].as_u64());
        ok(&["verify"], &shard);
        ok(&["get", "t", "0", "1", "2"], &shard);
        ok(&["log", "dump", "--limit", "20"], &shard);
        ok(
            &[
                "export",
                "t",
                "--format",
                "npy",
                "--out",
                out.to_str().unwrap(),
            ],
            &shard,
        );
    }
    stop.store(true, Ordering::SeqCst);
    let pushes = pusher.join().unwrap();

    // Quiet now (the server runs on, nothing checkpointed since the last pushes): the
    // directory read-only equals what was acknowledged, bit for bit, log tail included.
    let acked = acked.lock().unwrap().clone();
    let scanned = parse_rows(&ok(&["scan", "t"], &shard));
    assert_eq!(scanned.len(), acked.len());
    for (k, v) in &scanned {
        assert_eq!(row_count(*k, v), acked[k], "key {k}");
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", "--exact"], &shard)).unwrap();
    assert_eq!(
        inspect["shards"][0]["tables"][0]["rows"],
        acked.len() as u64
    );
    let pulled = client.pull("t", &(0..KEYS).collect::<Vec<_>>()).unwrap();
    for k in 0..KEYS {
        let row = &pulled[k as usize * DIM..(k as usize + 1) * DIM];
        assert_eq!(row_count(k, row), acked.get(&k).copied().unwrap_or(0));
    }
    // The same commands through the server.
    let via = |args: &[&str]| -> String {
        let out = Command::new(paramdb_bin())
            .args(args)
            .arg("--cluster")
            .arg(&cluster)
            .output()
            .expect("run paramdb");
        assert!(
            out.status.success(),
            "paramdb {args:?} --cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let live: serde_json::Value = serde_json::from_str(&via(&["inspect", "--json"])).unwrap();
    assert_eq!(live["shards"][0]["read_only"], false);
    assert!(live["shards"][0]["cache"]["hit_rate"].is_f64());
    assert!(via(&["verify"]).contains(": ok:"));
    // The server is quiet: its log holds exactly the records after its checkpoint.
    let in_log = live["shards"][0]["last_lsn"].as_u64().unwrap()
        - live["shards"][0]["checkpoint_lsn"].as_u64().unwrap();
    let dump = via(&["log", "dump", "--limit", "5"]);
    assert_eq!(dump.lines().count() as u64, 1 + in_log.min(5), "{dump}");
    assert!(dump.lines().skip(1).all(|l| l.contains(" t ")), "{dump}");
    via(&["checkpoint"]);
    via(&["compact"]);
    let after: serde_json::Value =
        serde_json::from_str(&via(&["inspect", "--json", "--exact"])).unwrap();
    let s = &after["shards"][0];
    assert_eq!(s["dirty_rows"], 0);
    assert_eq!(s["checkpoint_lsn"], s["last_lsn"]);
    assert_eq!(s["tables"][0]["rows"], acked.len() as u64);
    assert_eq!(parse_rows(&ok(&["scan", "t"], &shard)), scanned);

    // Writes through a read-only open are refused.
    let refused = run(&["checkpoint"], &shard);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"));

    // The server is unaffected: killed and restarted, it recovers exactly the acknowledged
    // state.
    drop(servers);
    let snapshot = snapshot_tree(&shard);
    for args in [
        &["scan", "t"][..],
        &["inspect", "--exact"],
        &["verify"],
        &["log", "dump"],
        &["get", "t", "5"],
    ] {
        ok(args, &shard);
    }
    assert!(
        snapshot == snapshot_tree(&shard),
        "a tool changed files of a stopped shard"
    );
    let (restarted, cluster) = start(&paramdb, dir.path(), 1, &[]);
    servers = restarted;
    let client = BlockingClient::connect(
        ClusterMap::load(&cluster).unwrap(),
        ClientOptions::default(),
    )
    .unwrap();
    let pulled = client.pull("t", &(0..KEYS).collect::<Vec<_>>()).unwrap();
    for k in 0..KEYS {
        let row = &pulled[k as usize * DIM..(k as usize + 1) * DIM];
        assert_eq!(row_count(k, row), acked.get(&k).copied().unwrap_or(0));
    }
    drop(servers);
    println!(
        "tools on a live shard: {pushes} pushes acknowledged, {} keys, every read consistent",
        acked.len()
    );
}

/// The frames of a segment file.
fn frames(path: &Path) -> Vec<usize> {
    match reader::scan(&std::fs::read(path).unwrap(), true) {
        Scan::Ok(s) => s.frames,
        other => panic!("{}: {other:?}", path.display()),
    }
}

fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn flip(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

#[test]
fn verify_names_a_corrupt_log_record_and_a_corrupt_rocksdb_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    let store = Store::open(&good, manual_opts()).unwrap();
    store
        .create_table(TableSpec::new("emb", 16).with_rule(UpdateRule::Adagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.1,
        }))
        .unwrap();
    let client = paramdb_engine::ClientId(3);
    let mut seq = 0;
    let mut push = |keys: Vec<u64>| {
        seq += 1;
        let vals: Vec<f32> = (0..keys.len() * 16)
            .map(|i| (i % 7) as f32 * 0.25)
            .collect();
        store.push("emb", client, seq, &keys, &vals).unwrap();
    };
    for b in 0..20u64 {
        push((b * 100..(b + 1) * 100).collect());
    }
    store.checkpoint().unwrap(); // rows into an SST file
    for b in 0..10u64 {
        push((b * 7..b * 7 + 30).collect());
    }
    store.crash(); // ten records stay in the log only

    let clean = ok(&["verify"], &good);
    assert!(clean.contains(": ok:"), "{clean}");

    let bad = dir.path().join("bad");
    copy_tree(&good, &bad);
    let segment = files_with(&bad.join("wal"), "log")
        .into_iter()
        .find(|p| frames(p).len() >= 5)
        .expect("a segment with records");
    let f = frames(&segment);
    flip(&segment, f[2] + 8 + 60); // inside the third record's payload
    let sst = files_with(&bad.join("rocksdb"), "sst")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("an SST file");
    flip(&sst, 200); // inside the first data block

    let out = run(&["verify"], &bad);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "verify passed damaged files:\n{report}"
    );
    let seg_name = segment.file_name().unwrap().to_string_lossy().into_owned();
    let sst_name = sst.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        report
            .lines()
            .any(|l| l.contains("problem: log") && l.contains(&seg_name)),
        "no log problem naming {seg_name}:\n{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("problem: rocksdb") && l.contains(&sst_name)),
        "no rocksdb problem naming {sst_name}:\n{report}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 problems found"));
    // The original is untouched and still verifies.
    ok(&["verify"], &good);
    println!("verify named {seg_name} and {sst_name}");
}

/// One line on stderr, a non-zero exit, no panic.
fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("paramdb: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

#[test]
fn bad_targets_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for cmd in [
        &["inspect"][..],
        &["verify"],
        &["scan", "t"],
        &["log", "dump"],
    ] {
        let e = one_line_error(&run(cmd, &missing));
        assert!(e.contains("no such directory"), "{e}");
    }
    let not_ours = dir.path().join("photos");
    std::fs::create_dir_all(&not_ours).unwrap();
    std::fs::write(not_ours.join("cat.jpg"), b"meow").unwrap();
    for cmd in [&["inspect"][..], &["verify"], &["checkpoint"]] {
        let e = one_line_error(&run(cmd, &not_ours));
        assert!(e.contains("not a paramdb data directory"), "{e}");
    }

    // A log segment from a newer paramdb.
    let store_dir = dir.path().join("store");
    let store = Store::open(&store_dir, manual_opts()).unwrap();
    store.create_table(TableSpec::new("t", 4)).unwrap();
    store.close().unwrap();
    let newer = SegmentHeader {
        version: 99,
        segment: 999,
        first_lsn: 1,
    };
    std::fs::write(
        store_dir.join("wal").join(format!("{:020}.log", 999)),
        newer.encode(),
    )
    .unwrap();
    let e = one_line_error(&run(&["inspect"], &store_dir));
    assert!(e.contains("format version 99"), "{e}");
    let e = one_line_error(&run(&["scan", "nope"], &dir.path().join("store")));
    assert!(e.contains("format version 99"), "{e}");

    // An unreachable server.
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        ClusterMap::even(&["127.0.0.1:1".to_string()]).to_toml(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(paramdb_bin())
        .args(["inspect", "--cluster"])
        .arg(&file)
        .output()
        .unwrap();
    let e = one_line_error(&out);
    assert!(e.contains("127.0.0.1:1"), "{e}");
    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
}
