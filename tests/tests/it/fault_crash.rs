//! Seeded fault injection over at least 1,000 crash points: torn writes, failed fsyncs, lost
//! unsynced bytes, torn and zero-filled tails. After every crash: no acknowledged push lost,
//! none applied twice, and every unacknowledged one applied at most once. Reproduce a failure
//! with `PARAMDB_CRASH_SEED=<seed printed in the failure>`.

use paramdb_engine::wal::fault::{CrashTail, FaultFs};
use paramdb_engine::{Classify, ClientId, StoreOptions, TableSpec};
use paramdb_tests::workload::{expected_shared, push_content, witness_key, DIM, SHARED_KEYS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{manual_opts, open_fault};

const CRASHES: usize = 1000;
const CLIENTS: u64 = 3;

fn seed() -> u64 {
    std::env::var("PARAMDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

#[test]
fn fault_injection_1000_crash_points_lose_and_duplicate_nothing() {
    let seed = seed();
    eprintln!("fault_injection seed: {seed} (PARAMDB_CRASH_SEED={seed} reproduces)");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_segment_bytes: 2048,
        ..manual_opts()
    };
    let mut fs = FaultFs::new();
    let mut store = open_fault(tmp.path(), &fs, opts.clone()).unwrap();
    store.create_table(TableSpec::new("t", DIM as u32)).unwrap();
    let mut next_seq = [1u64; CLIENTS as usize + 1];
    let mut all: Vec<(u64, u64)> = Vec::new();
    let (mut acked_total, mut unknown_total, mut torn_tails) = (0, 0, 0);

    for crash in 1..=CRASHES {
        let ctx = |what: &str| format!("seed {seed}, crash {crash}: {what}");
        match rng.random_range(0..10) {
            0 | 1 => fs.fail_syncs_after(rng.random_range(0..4)),
            2 | 3 => fs.tear_write_after(rng.random_range(0..4), rng.random_range(0..200)),
            _ => {}
        }
        let mut acked = Vec::new();
        let mut unknown = Vec::new();
        for _ in 0..rng.random_range(0..10) {
            if rng.random_bool(0.08) {
                let _ = store.checkpoint(); // may fail once a fault poisoned the store
                continue;
            }
            let c = rng.random_range(1..=CLIENTS);
            let s = next_seq[c as usize];
            next_seq[c as usize] += 1;
            let (keys, values) = push_content(c, s);
            match store.push("t", ClientId(c), s, &keys, &values) {
                Ok(ack) => {
                    assert!(!ack.duplicate, "{}", ctx("fresh push acked as duplicate"));
                    acked.push((c, s));
                }
                Err(e) => {
                    assert!(!e.is_bad_input(), "{}", ctx(&format!("push refused: {e}")));
                    unknown.push((c, s));
                }
            }
        }
        store.crash();
        let mode = rng.random_range(0..3);
        let n = rng.random_range(0..400);
        fs = fs.crash(|_, unsynced| match mode {
            _ if unsynced == 0 => CrashTail::Drop,
            0 => CrashTail::Drop,
            1 => CrashTail::Torn(n),
            _ => CrashTail::Zeroed(n),
        });
        store = open_fault(tmp.path(), &fs, opts.clone())
            .unwrap_or_else(|e| panic!("{}", ctx(&format!("reopen failed: {e}"))));
        torn_tails += store.recovery_report().torn_tail.is_some() as usize;

        let witness = |store: &paramdb_engine::Store, ps: &[(u64, u64)]| -> Vec<f32> {
            if ps.is_empty() {
                return Vec::new();
            }
            let keys: Vec<u64> = ps.iter().map(|&(c, s)| witness_key(c, s)).collect();
            let rows = store.pull("t", &keys).unwrap();
            rows.chunks(DIM)
                .map(|r| {
                    assert!(
                        r.iter().all(|v| *v == r[0]),
                        "witness row not uniform: {r:?}"
                    );
                    r[0]
                })
                .collect()
        };
        for (p, w) in acked.iter().zip(witness(&store, &acked)) {
            assert_eq!(
                w,
                1.0,
                "{}",
                ctx(&format!("acknowledged push {p:?} applied {w} times"))
            );
        }
        for (p, w) in unknown.iter().zip(witness(&store, &unknown)) {
            assert!(
                w == 0.0 || w == 1.0,
                "{}",
                ctx(&format!("unacknowledged push {p:?} applied {w} times"))
            );
        }
        // The client retries what it does not know about, with the same sequence numbers.
        for &(c, s) in &unknown {
            let (keys, values) = push_content(c, s);
            store
                .push("t", ClientId(c), s, &keys, &values)
                .unwrap_or_else(|e| {
                    panic!("{}", ctx(&format!("retry of {:?} failed: {e}", (c, s))))
                });
        }
        for (p, w) in unknown.iter().zip(witness(&store, &unknown)) {
            assert_eq!(
                w,
                1.0,
                "{}",
                ctx(&format!("retried push {p:?} applied {w} times"))
            );
        }
        acked_total += acked.len();
        unknown_total += unknown.len();
        all.extend(acked);
        all.extend(unknown);

        if crash % 100 == 0 || crash == CRASHES {
            let shared: Vec<u64> = (0..SHARED_KEYS).collect();
            let got = store.pull("t", &shared).unwrap();
            let want = expected_shared(all.iter().copied());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    *g as f64,
                    *w,
                    "{}",
                    ctx(&format!("shared key {} dim {}", i / DIM, i % DIM))
                );
            }
            for (p, w) in all.iter().zip(witness(&store, &all)) {
                assert_eq!(w, 1.0, "{}", ctx(&format!("push {p:?} applied {w} times")));
            }
        }
    }
    eprintln!(
        "fault_injection: {CRASHES} crashes, {acked_total} acknowledged and {unknown_total} unknown pushes, {torn_tails} torn tails cut"
    );
    assert!(
        acked_total > 1000 && unknown_total > 50 && torn_tails > 20,
        "the run must exercise the faults"
    );
}
