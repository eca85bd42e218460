//! SIGKILL crash test: a child process pushes and deletes under `sync` from several client
//! threads and reports each acknowledgement; it is killed at random moments (during open and
//! recovery, pushes, deletes, checkpoints, segment rotation) at least 50 times. Every
//! acknowledged write must be applied exactly once, bit for bit against the oracle, which
//! includes the deletes: no delete lost, no deleted row back.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use paramdb_engine::{ClientId, KeyRange, Store};
use paramdb_tests::workload::{
    expected_private, expected_shared, op, private_key, witness_key, Op, DIM, PRIVATE_KEYS,
    SHARED_KEYS,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::manual_opts;

const KILLS: usize = 50;
const CLIENTS: usize = 3;

#[test]
fn process_crash_sigkill_loses_and_duplicates_no_acknowledged_push() {
    let seed: u64 = std::env::var("PARAMDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("process_crash seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let mut last_acked = [0u64; CLIENTS];
    let mut acks_total = 0;
    let mut opened = 0;

    for kill in 1..=KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_pusher"))
            .arg(&dir)
            .args(last_acked.iter().map(|a| (a + 1).to_string()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(10..350)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        let lines = reader.join().unwrap();
        if status.signal() != Some(9) {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("seed {seed}, kill {kill}: child ended by itself ({status}): {err}");
        }
        for line in lines {
            if line == "OPEN" {
                opened += 1;
                continue;
            }
            let mut it = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse::<u64>().unwrap());
            let (c, s) = (it.next().unwrap() as usize, it.next().unwrap());
            assert_eq!(
                s,
                last_acked[c - 1] + 1,
                "seed {seed}: acks of a client come in order"
            );
            last_acked[c - 1] = s;
            acks_total += 1;
        }
    }

    // The oracle: finish each client's possibly in-flight write, then every write 1..=last of
    // every client must be applied exactly once, in order.
    let store = Store::open(&dir, manual_opts()).unwrap();
    let mut pushes = Vec::new();
    let mut deletes = 0;
    for (i, &last) in last_acked.iter().enumerate() {
        let c = i as u64 + 1;
        let (id, seq) = (ClientId(c), last + 1);
        match op(c, seq) {
            Op::Push { keys, values } => store.push("crash", id, seq, &keys, &values),
            Op::DeleteKeys(keys) => store.delete("crash", id, seq, &keys),
            Op::DeleteRange { start, end } => {
                store.delete_range("crash", id, seq, KeyRange::new(start, end))
            }
        }
        .unwrap();
        for s in 1..=seq {
            match op(c, s) {
                Op::Push { .. } => pushes.push((c, s)),
                _ => deletes += 1,
            }
        }
        let private: Vec<u64> = (0..PRIVATE_KEYS).map(|k| private_key(c, k)).collect();
        let got = store.pull("crash", &private).unwrap();
        let want = expected_private(c, seq);
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                *g as f64,
                *w,
                "seed {seed}: client {c} private row {} dim {} (a delete lost, or a deleted row back)",
                j / DIM,
                j % DIM
            );
        }
    }
    let shared: Vec<u64> = (0..SHARED_KEYS).collect();
    let got = store.pull("crash", &shared).unwrap();
    let want = expected_shared(pushes.iter().copied());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            *g as f64,
            *w,
            "seed {seed}: shared key {} dim {}",
            i / DIM,
            i % DIM
        );
    }
    let witnesses: Vec<u64> = pushes.iter().map(|&(c, s)| witness_key(c, s)).collect();
    let rows = store.pull("crash", &witnesses).unwrap();
    for (p, r) in pushes.iter().zip(rows.chunks(DIM)) {
        assert_eq!(r, &[1.0; DIM], "seed {seed}: push {p:?}");
    }
    // The rows RocksDB and the log give back agree with the pulls: a range scan over the
    // private rows sees exactly the non-zero ones (a deleted row is not stored).
    store.checkpoint().unwrap();
    for (i, &last) in last_acked.iter().enumerate() {
        let c = i as u64 + 1;
        let want = expected_private(c, last + 1);
        let range = KeyRange::new(private_key(c, 0), private_key(c, PRIVATE_KEYS));
        let scanned: Vec<u64> = store
            .scan("crash", range)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        let stored: Vec<u64> = (0..PRIVATE_KEYS)
            .filter(|&j| {
                want[j as usize * DIM..(j as usize + 1) * DIM]
                    .iter()
                    .any(|&v| v != 0.0)
            })
            .map(|j| private_key(c, j))
            .collect();
        assert_eq!(
            scanned, stored,
            "seed {seed}: client {c}: a scan sees the rows pushed since their last delete, no others"
        );
    }
    eprintln!("process_crash: {KILLS} kills, {opened} opens reached, {acks_total} acknowledged writes checked ({deletes} deletes)");
    assert!(
        acks_total >= 100 && opened >= KILLS / 2,
        "the kills must land while pushing"
    );
}
