//! SIGKILL crash test: a child process pushes under `sync` from several client threads and
//! reports each acknowledgement; it is killed at random moments (during open and recovery,
//! pushes, checkpoints, segment rotation) at least 50 times. Every acknowledged push must be
//! applied exactly once, bit for bit against the oracle.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use paramdb_engine::{ClientId, Store};
use paramdb_tests::workload::{expected_shared, push_content, witness_key, DIM, SHARED_KEYS};
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

    // The oracle: finish each client's possibly in-flight push, then every push 1..=last of
    // every client must be applied exactly once.
    let store = Store::open(&dir, manual_opts()).unwrap();
    let mut all = Vec::new();
    for (i, &last) in last_acked.iter().enumerate() {
        let c = i as u64 + 1;
        let (keys, values) = push_content(c, last + 1);
        store
            .push("crash", ClientId(c), last + 1, &keys, &values)
            .unwrap();
        all.extend((1..=last + 1).map(|s| (c, s)));
    }
    let shared: Vec<u64> = (0..SHARED_KEYS).collect();
    let got = store.pull("crash", &shared).unwrap();
    let want = expected_shared(all.iter().copied());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            *g as f64,
            *w,
            "seed {seed}: shared key {} dim {}",
            i / DIM,
            i % DIM
        );
    }
    let witnesses: Vec<u64> = all.iter().map(|&(c, s)| witness_key(c, s)).collect();
    let rows = store.pull("crash", &witnesses).unwrap();
    for (p, r) in all.iter().zip(rows.chunks(DIM)) {
        assert_eq!(r, &[1.0; DIM], "seed {seed}: push {p:?}");
    }
    eprintln!("process_crash: {KILLS} kills, {opened} opens reached, {acks_total} acknowledged pushes checked");
    assert!(
        acks_total >= 100 && opened >= KILLS / 2,
        "the kills must land while pushing"
    );
}
