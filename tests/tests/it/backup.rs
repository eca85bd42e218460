//! Hot backups and restores. A store backed up while a thread pushes restores to exactly the
//! pushes up to the backup's LSN, and a second backup reuses the first's files. A cluster of
//! three `paramdb serve` processes backed up while four clients push restores to a consistent
//! cut: for every client, every push up to some sequence number on all its shards, none
//! after. A backup killed midway leaves nothing restore accepts, and the cluster serves on
//! once the fences' lease ends. Bad restores are refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};
use paramdb_engine::backup::{restore_shard, BackupOptions};
use paramdb_engine::{ClientId, Initializer, KeyRange, Store, StoreOptions, TableSpec, UpdateRule};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{paramdb_bin, Cluster};

const DIM: usize = 2;

/// `(seq, keys)` of a client's acknowledged pushes, in order.
type Acked = Vec<(u64, Vec<u64>)>;
/// `(lsn, keys, value)` of a store's acknowledged pushes.
type Logged = Arc<Mutex<Vec<(u64, Vec<u64>, f32)>>>;

fn spec(name: &str) -> TableSpec {
    TableSpec::new(name, DIM as u32)
        .with_rule(UpdateRule::Add)
        .with_init(Initializer::Zeros)
}

/// Row `k` after the pushes `(keys, value)` in `pushes` (each adds `value` to every column).
fn expected(pushes: &[(Vec<u64>, f32)], k: u64) -> f32 {
    pushes
        .iter()
        .filter(|(keys, _)| keys.contains(&k))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn a_store_backed_up_while_pushing_restores_exactly_the_pushes_up_to_its_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        checkpoint_log_bytes: 256 << 10,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open(dir.path().join("live"), opts).unwrap());
    store.create_table(spec("t")).unwrap();
    const KEYS: u64 = 300;
    let log: Logged = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (store, log, stop) = (store.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(1);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let n = rng.random_range(1..40);
                let mut keys: Vec<u64> = (0..n).map(|_| rng.random_range(0..KEYS)).collect();
                keys.sort_unstable();
                keys.dedup();
                let v = seq as f32;
                let vals = vec![v; keys.len() * DIM];
                let ack = store.push("t", ClientId(5), seq, &keys, &vals).unwrap();
                log.lock().unwrap().push((ack.lsn, keys, v));
            }
        })
    };
    let pushed = || log.lock().unwrap().len();
    let wait_for = |n: usize| {
        while pushed() < n {
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    wait_for(300);
    let first = dir.path().join("b1");
    let b1 = store
        .backup(&first, None, BackupOptions::default())
        .unwrap();
    wait_for(pushed() + 300);
    let second = dir.path().join("b2");
    let b2 = store
        .backup(
            &second,
            Some(&first),
            BackupOptions {
                copy: true,
                ..Default::default()
            },
        )
        .unwrap();
    wait_for(pushed() + 100);
    stop.store(true, Ordering::Relaxed);
    pusher.join().unwrap();
    assert!(b1.end_lsn < b2.end_lsn);
    assert!(b1.bytes_linked > 0, "{b1:?}");
    assert!(
        b2.bytes_reused > 0,
        "the second backup reuses the first's table files: {b2:?}"
    );
    let all = log.lock().unwrap().clone();
    assert!(all.iter().any(|p| p.0 > b2.end_lsn), "pushes went on after");
    for (b, src) in [(b1, &first), (b2, &second)] {
        let to = dir.path().join(format!("r{}", b.end_lsn));
        let report = restore_shard(src, &to).unwrap();
        assert!(report.problems.is_empty());
        let restored = Store::open(&to, StoreOptions::default()).unwrap();
        let upto: Vec<(Vec<u64>, f32)> = all
            .iter()
            .filter(|p| p.0 <= b.end_lsn)
            .map(|p| (p.1.clone(), p.2))
            .collect();
        assert!(upto.len() >= 300);
        let keys: Vec<u64> = (0..KEYS).collect();
        let got = restored.pull("t", &keys).unwrap();
        for &k in &keys {
            let want = expected(&upto, k);
            assert_eq!(
                got[k as usize * DIM],
                want,
                "key {k} restored from LSN {}",
                b.end_lsn
            );
        }
        // The restored store takes pushes, and its exactly-once window came along.
        let ack = restored
            .push("t", ClientId(5), 1, &[0], &[1.0; DIM])
            .unwrap();
        assert!(ack.duplicate);
    }
}

/// A client of the test cluster pushing across all three shards: each push adds its sequence
/// number to 1–4 of the client's keys on every shard.
struct Pusher {
    /// `(seq, keys)` of every acknowledged push, in order.
    acked: Arc<Mutex<Acked>>,
    keys: Vec<u64>,
    handle: std::thread::JoinHandle<()>,
}

fn client_keys(map: &ClusterMap, c: u64) -> Vec<Vec<u64>> {
    map.shards
        .iter()
        .map(|s| (0..20).map(|j| s.range[0] + c * 1000 + j).collect())
        .collect()
}

fn start_pushers(map: &ClusterMap, n: u64, stop: &Arc<AtomicBool>) -> Vec<Pusher> {
    (0..n)
        .map(|c| {
            let client = BlockingClient::connect(map.clone(), ClientOptions::default()).unwrap();
            let per_shard = client_keys(map, c);
            let acked: Arc<Mutex<Acked>> = Default::default();
            let (a, stop) = (acked.clone(), stop.clone());
            let ks = per_shard.clone();
            let handle = std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(c);
                while !stop.load(Ordering::Relaxed) {
                    let mut keys = Vec::new();
                    for shard in &ks {
                        let n = rng.random_range(1..5);
                        for _ in 0..n {
                            keys.push(shard[rng.random_range(0..shard.len())]);
                        }
                    }
                    keys.sort_unstable();
                    keys.dedup();
                    let seq = client.next_seq();
                    let vals = vec![seq as f32; keys.len() * DIM];
                    client.push_with_seq("t", seq, &keys, &vals).unwrap();
                    a.lock().unwrap().push((seq, keys));
                }
            });
            Pusher {
                acked,
                keys: per_shard.concat(),
                handle,
            }
        })
        .collect()
}

fn run_backup(cluster_file: &Path, to: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(paramdb_bin())
        .arg("backup")
        .arg("--cluster")
        .arg(cluster_file)
        .arg("--to")
        .arg(to)
        .args(extra)
        .output()
        .unwrap()
}

fn restore(from: &Path, to: &Path) -> std::process::Output {
    Command::new(paramdb_bin())
        .args(["restore", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

/// `paramdb restore`, which must succeed, and the restored shards opened read-only.
fn restore_and_open(from: &Path, to: &Path) -> BlockingClient {
    let out = restore(from, to);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    BlockingClient::open_embedded_read_only(to, StoreOptions::default(), ClientOptions::default())
        .unwrap()
}

/// The cut sequence of a client in a restored cluster: the `S` for which every key of the
/// client holds exactly the sum of its pushes up to `S`. `None`: no prefix of the client's
/// pushes explains the rows (some push is in on some shards only).
fn cut_of(acked: &[(u64, Vec<u64>)], keys: &[u64], rows: &BTreeMap<u64, f32>) -> Option<u64> {
    let mut sums: BTreeMap<u64, f32> = keys.iter().map(|&k| (k, 0.0)).collect();
    let matches = |sums: &BTreeMap<u64, f32>| sums.iter().all(|(k, v)| rows[k] == *v);
    if matches(&sums) {
        return Some(0);
    }
    for (seq, ks) in acked {
        for k in ks {
            *sums.get_mut(k).unwrap() += *seq as f32;
        }
        if matches(&sums) {
            return Some(*seq);
        }
    }
    None
}

#[test]
fn a_cluster_backed_up_while_four_clients_push_restores_a_consistent_cut() {
    let cluster = Cluster::start(3, &[]);
    let admin = cluster.client();
    admin.create_table(spec("t")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.toml");
    std::fs::write(&cluster_file, cluster.map.to_toml()).unwrap();
    let root = dir.path().join("backups");

    let stop = Arc::new(AtomicBool::new(false));
    let pushers = start_pushers(&cluster.map, 4, &stop);
    let pushed = |p: &[Pusher]| -> usize { p.iter().map(|p| p.acked.lock().unwrap().len()).sum() };
    let mut caught = 0;
    for round in 0..3 {
        let before = pushed(&pushers);
        while pushed(&pushers) < before + 200 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = run_backup(&cluster_file, &root, &[]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "backup {round}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        caught += text
            .split(" writes caught")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .expect("the backup says how many writes it caught half-applied");
    }
    let before = pushed(&pushers);
    while pushed(&pushers) < before + 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let pushers: Vec<(Acked, Vec<u64>)> = pushers
        .into_iter()
        .map(|p| {
            p.handle.join().unwrap();
            let acked = p.acked.lock().unwrap().clone();
            (acked, p.keys)
        })
        .collect();
    eprintln!("writes caught half-applied by the 3 cuts: {caught}");

    let mut last_cuts = vec![0; pushers.len()];
    for n in 1..=3 {
        let set = root.join(format!("backup-{n:06}"));
        let to = dir.path().join(format!("restored-{n}"));
        let restored = restore_and_open(&set, &to);
        for (c, (acked, keys)) in pushers.iter().enumerate() {
            let vals = restored.pull("t", keys).unwrap();
            let rows: BTreeMap<u64, f32> = keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (k, vals[i * DIM]))
                .collect();
            let cut = cut_of(acked, keys, &rows).unwrap_or_else(|| {
                panic!("backup {n}: client {c}'s rows are no prefix of its pushes: a push is on some shards only")
            });
            let last = acked.last().unwrap().0;
            assert!(
                cut > last_cuts[c] && cut < last,
                "backup {n}: client {c} cut at {cut} (previous {}, last push {last})",
                last_cuts[c]
            );
            last_cuts[c] = cut;
        }
    }
    cluster.stop();
}

#[test]
fn a_killed_backup_leaves_nothing_restore_accepts_and_the_cluster_serves_on() {
    let cluster = Cluster::start(2, &[]);
    let client = cluster.client();
    let big = TableSpec::new("big", 256)
        .with_rule(UpdateRule::Add)
        .with_init(Initializer::Zeros);
    client.create_table(big).unwrap();
    // About 40 MB of rows, so that copying them takes a while.
    for b in 0..20u64 {
        let keys: Vec<u64> = (0..2000)
            .map(|i| {
                if i % 2 == 0 {
                    b * 2000 + i
                } else {
                    u64::MAX - b * 2000 - i
                }
            })
            .collect();
        client
            .push("big", &keys, &vec![1.0; keys.len() * 256])
            .unwrap();
    }
    client.checkpoint().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.toml");
    std::fs::write(&cluster_file, cluster.map.to_toml()).unwrap();
    let root = dir.path().join("backups");

    let mut killed = false;
    for delay_ms in [5u64, 10, 20, 30, 50, 80, 120, 200] {
        let mut child = Command::new(paramdb_bin())
            .args(["backup", "--copy", "--lease", "2s", "--cluster"])
            .arg(&cluster_file)
            .arg("--to")
            .arg(&root)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        // Killed midway: some shard had begun writing its part.
        let midway = std::fs::read_dir(&root).ok().is_some_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with(".partial")
                    && e.path().join("shard-0").exists()
            })
        });
        if status.code().is_none() && midway && !root.join("backup-000001").exists() {
            killed = true;
            break;
        }
        let _ = std::fs::remove_dir_all(&root);
    }
    assert!(killed, "no kill landed before the backup finished");
    let out = restore(&root, &dir.path().join("nope"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore accepted a killed backup");
    assert!(
        err.contains("no complete backup") || err.contains("no such directory"),
        "{err}"
    );
    // Once the lease is over, writes go on.
    let t = Instant::now();
    client.push("big", &[7], &[1.0; 256]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    // The shards saw their caller go and stopped writing their parts (within a MiB); the next
    // backup clears what the killed one left and succeeds.
    std::thread::sleep(Duration::from_millis(500));
    let out = run_backup(&cluster_file, &root, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".partial"))
        .collect();
    assert!(leftovers.is_empty());
    let to = dir.path().join("restored");
    let restored = restore_and_open(&root, &to);
    // Key 7 was pushed once, after the kill.
    assert_eq!(restored.pull("big", &[7]).unwrap()[0], 1.0);
    cluster.stop();
}

#[test]
fn bad_restores_and_backups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(&data, StoreOptions::default()).unwrap();
    store.create_table(spec("t")).unwrap();
    store.push("t", ClientId(1), 1, &[1, 2], &[1.0; 4]).unwrap();
    drop(store);
    let paramdb = |args: &[&str]| {
        Command::new(paramdb_bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let succeeds = |args: &[&str]| {
        let out = paramdb(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    succeeds(&["backup", "--data-dir", "data", "--to", "b"]);
    std::fs::create_dir(dir.path().join("full")).unwrap();
    std::fs::write(dir.path().join("full/x"), b"x").unwrap();
    for (args, want) in [
        (
            vec!["restore", "--from", "b", "--to", "full"],
            "not an empty directory",
        ),
        (
            vec!["restore", "--from", "nowhere", "--to", "r"],
            "no such directory",
        ),
        (
            vec!["restore", "--from", "data", "--to", "r"],
            "no complete backup",
        ),
        (
            vec!["backup", "--data-dir", "data", "--to", "b", "--lease", "0s"],
            "more than zero",
        ),
    ] {
        let out = paramdb(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
        if args[0] == "restore" {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    // A damaged file in the set: refused, naming it.
    let set = dir.path().join("b/backup-000001");
    let manifest = set.join("shard-0/rocksdb");
    let victim = std::fs::read_dir(&manifest)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("MANIFEST"))
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let out = paramdb(&["restore", "--from", "b", "--to", "r2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("checksum"), "{err}");
    assert!(
        !dir.path().join("r2").exists()
            || std::fs::read_dir(dir.path().join("r2"))
                .unwrap()
                .next()
                .is_none()
    );
    // The data directory itself backs up and restores through the CLI.
    succeeds(&["backup", "--data-dir", "data", "--to", "b"]);
    succeeds(&["restore", "--from", "b", "--to", "r3"]);
    let r = Store::open(dir.path().join("r3"), StoreOptions::default()).unwrap();
    assert_eq!(
        r.pull("t", &[1, 2, 3]).unwrap(),
        vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    );
}

#[test]
fn a_delta_export_since_a_backup_holds_the_changed_rows_and_the_keys_deleted_since() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let open = || {
        BlockingClient::open_embedded(&data, 2, StoreOptions::default(), ClientOptions::default())
            .unwrap()
    };
    let high = u64::MAX - 100;
    let keys: Vec<u64> = (0..100).chain(high..high + 20).collect();
    {
        let c = open();
        c.create_table(spec("t")).unwrap();
        c.push("t", &keys, &vec![1.0; keys.len() * DIM]).unwrap();
    }
    let paramdb = |args: &[&str]| {
        let out = Command::new(paramdb_bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    paramdb(&["backup", "--data-dir", "data", "--to", "b"]);
    {
        let c = open();
        c.push("t", &[5, 50, high + 3, 200], &[2.0; 4 * DIM])
            .unwrap();
        c.delete("t", &[7, high + 9]).unwrap();
        // Deleted and pushed again: changed, not gone.
        c.delete("t", &[60]).unwrap();
        c.push("t", &[60], &[3.0; DIM]).unwrap();
        // A range deleted, one of its keys pushed again.
        c.delete_range("t", KeyRange::new(80, 90)).unwrap();
        c.push("t", &[85], &[3.0; DIM]).unwrap();
    }
    let read = |path: &str| -> BTreeMap<u64, f32> {
        std::fs::read_to_string(dir.path().join(path))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let mut f = l.split(' ');
                let k = f.next().unwrap().parse().unwrap();
                (k, f.next().unwrap().parse().unwrap())
            })
            .collect()
    };
    let want: BTreeMap<u64, f32> = [
        (5, 3.0),
        (50, 3.0),
        (60, 3.0),
        (85, 3.0),
        (200, 2.0),
        (high + 3, 3.0),
    ]
    .into_iter()
    .collect();
    let text = paramdb(&[
        "export",
        "t",
        "--format",
        "word2vec-text",
        "--out",
        "delta.txt",
        "--since",
        "b",
        "--data-dir",
        "data",
        "--quiet",
    ]);
    assert!(text.contains("11 keys deleted"), "{text}");
    assert_eq!(read("delta.txt"), want);
    let deleted = std::fs::read_to_string(dir.path().join("delta.deleted.txt")).unwrap();
    let range: String = (80..90)
        .filter(|&k| k != 85)
        .map(|k| format!("{k}\n"))
        .collect();
    assert_eq!(deleted, format!("7\n{range}{}\n", high + 9));
    // Since LSNs (the backup's, from its manifest): the same rows, and the keys and ranges
    // gone since from the shards' own records (the range as a range: its rows pushed since
    // are re-sent with the changed ones).
    let set = paramdb_engine::backup::find_set(&dir.path().join("b")).unwrap();
    let lsns: Vec<String> = set.shards.iter().map(|s| s.end_lsn.to_string()).collect();
    paramdb(&[
        "export",
        "t",
        "--format",
        "word2vec-text",
        "--out",
        "delta2.txt",
        "--since",
        &lsns.join(","),
        "--data-dir",
        "data",
        "--quiet",
    ]);
    assert_eq!(read("delta2.txt"), want);
    let deleted = std::fs::read_to_string(dir.path().join("delta2.deleted.txt")).unwrap();
    assert_eq!(deleted, format!("80..90\n7\n{}\n", high + 9));
    // A full export still has every row.
    paramdb(&[
        "export",
        "t",
        "--format",
        "word2vec-text",
        "--out",
        "all.txt",
        "--data-dir",
        "data",
        "--quiet",
    ]);
    assert_eq!(read("all.txt").len(), keys.len() + 1 - 2 - 9);
}

#[test]
fn a_write_its_client_gave_up_on_fails_the_cut_unless_allowed() {
    use paramdb_proto::v1::{self, paramdb_client::ParamdbClient};
    let cluster = Cluster::start(2, &[]);
    let admin = cluster.client();
    admin.create_table(spec("t")).unwrap();
    admin
        .push("t", &[1, u64::MAX - 1], &[1.0; 2 * DIM])
        .unwrap();
    // A write split over both shards that reached only shard 0: its client gave up on it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = format!("http://{}", cluster.map.shards[0].address);
        let mut raw = ParamdbClient::connect(addr).await.unwrap();
        raw.push(v1::PushRequest {
            table: "t".into(),
            client_id: 77,
            seq: 1,
            keys: vec![3],
            values: paramdb_proto::packed::f32s_to_bytes(&[5.0; DIM]).into(),
            parts: 2,
        })
        .await
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.toml");
    std::fs::write(&cluster_file, cluster.map.to_toml()).unwrap();
    let root = dir.path().join("backups");
    let out = run_backup(&cluster_file, &root, &["--wait", "300ms"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a partial write was cut as if whole");
    assert!(
        err.contains("write 1 of client 0x4d reached 1 of its 2 shards")
            && err.contains("--allow-partial"),
        "{err}"
    );
    // The fences came down: the cluster takes writes at once.
    let t = Instant::now();
    admin.push("t", &[2], &[1.0; DIM]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    let out = run_backup(
        &cluster_file,
        &root,
        &["--wait", "300ms", "--allow-partial"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("left partial: write 1 of client 0x4d, on 1 of its 2 shards"),
        "{text}"
    );
    let restored = restore_and_open(&root, &dir.path().join("restored"));
    let got = restored.pull("t", &[1, 2, 3, u64::MAX - 1]).unwrap();
    let firsts: Vec<f32> = got.chunks(DIM).map(|r| r[0]).collect();
    assert_eq!(firsts, [1.0, 1.0, 5.0, 1.0]);
    cluster.stop();
}
