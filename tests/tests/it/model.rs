//! The store against a `BTreeMap` model: random pushes, range pushes, pulls, scans,
//! checkpoints, clean closes, reopens and crashes (unsynced log bytes dropped) must agree bit
//! for bit, whatever the size of the hot-row cache: none, one slot per table, a few, or room
//! for every row. The model has no cache, so this is the cache-equivalence property too.

use std::collections::BTreeMap;

use paramdb_engine::wal::fault::{CrashTail, FaultFs};
use paramdb_engine::{ClientId, Initializer, KeyRange, TableSpec, UpdateRule};
use proptest::prelude::*;

use crate::common::{manual_opts, open_fault};

const DIM: usize = 3;
const KEYS: u64 = 40;

#[derive(Clone, Debug)]
enum Op {
    Push {
        table: usize,
        keys: Vec<u64>,
        grad: i8,
    },
    PushRange {
        table: usize,
        start: u64,
        n: u64,
        grad: i8,
    },
    Pull {
        table: usize,
        keys: Vec<u64>,
    },
    Scan {
        table: usize,
        start: u64,
        end: u64,
    },
    Checkpoint,
    /// `close` (final checkpoint, cache files marked reusable), then open: a warm cache.
    Close,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, proptest::collection::btree_set(0..KEYS, 1..6), -3i8..4)
            .prop_map(|(table, keys, grad)| Op::Push { table, keys: keys.into_iter().collect(), grad }),
        2 => (0..2usize, 0..KEYS, 1..8u64, -3i8..4).prop_map(|(table, start, n, grad)| Op::PushRange { table, start, n, grad }),
        3 => (0..2usize, proptest::collection::vec(0..KEYS + 5, 1..8)).prop_map(|(table, keys)| Op::Pull { table, keys }),
        1 => (0..2usize, 0..KEYS, 0..KEYS + 5).prop_map(|(table, start, end)| Op::Scan { table, start, end }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Close),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

/// Table 0 adds, table 1 is SGD with lr 0.5 over a uniform initializer; the model does the
/// same f32 arithmetic in the same order.
fn specs() -> [TableSpec; 2] {
    [
        TableSpec::new("add", DIM as u32),
        TableSpec::new("sgd", DIM as u32)
            .with_rule(UpdateRule::Sgd { lr: 0.5 })
            .with_init(Initializer::Uniform {
                low: -1.0,
                high: 1.0,
            })
            .with_seed(5),
    ]
}

struct Model {
    rows: [BTreeMap<u64, Vec<f32>>; 2],
}

impl Model {
    fn get(&self, table: usize, k: u64) -> Vec<f32> {
        self.rows[table].get(&k).cloned().unwrap_or_else(|| {
            let spec = &specs()[table];
            let mut w = vec![0.0; DIM];
            paramdb_engine::initial_weights(&spec.init, spec.seed, k, &mut w);
            w
        })
    }

    fn push(&mut self, table: usize, k: u64, g: &[f32]) {
        let mut w = self.get(table, k);
        for (w, g) in w.iter_mut().zip(g) {
            if table == 0 {
                *w += *g;
            } else {
                *w -= 0.5 * *g;
            }
        }
        self.rows[table].insert(k, w);
    }
}

fn grads(grad: i8, n: usize) -> Vec<f32> {
    (0..n * DIM)
        .map(|i| grad as f32 + (i % DIM) as f32 * 0.25)
        .collect()
}

/// Bytes of one cache slot of a dim-3 table with at most one state vector.
const SLOT_BYTES: u64 = 40 + 2 * DIM as u64 * 4 + paramdb_engine::CACHE_SLOT_OVERHEAD as u64;

fn run(ops: Vec<Op>, cache_slots: u64) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = FaultFs::new();
    let opts = || paramdb_engine::StoreOptions {
        cache_bytes: cache_slots * SLOT_BYTES * 2,
        // With 1 or 3 cache slots, a dirty budget of about two rows too: pushes then run
        // checkpoints themselves, in the middle of everything else.
        checkpoint_dirty_bytes: if cache_slots % 2 == 1 { 64 } else { 0 },
        ..manual_opts()
    };
    let mut store = open_fault(tmp.path(), &fs, opts()).unwrap();
    for s in specs() {
        store.create_table(s).unwrap();
    }
    let names = ["add", "sgd"];
    let mut model = Model {
        rows: [BTreeMap::new(), BTreeMap::new()],
    };
    let mut seq = 0;
    for op in ops {
        match op {
            Op::Push { table, keys, grad } => {
                seq += 1;
                let g = grads(grad, keys.len());
                store
                    .push(names[table], ClientId(1), seq, &keys, &g)
                    .unwrap();
                for (i, &k) in keys.iter().enumerate() {
                    model.push(table, k, &g[i * DIM..(i + 1) * DIM]);
                }
            }
            Op::PushRange {
                table,
                start,
                n,
                grad,
            } => {
                seq += 1;
                let g = grads(grad, n as usize);
                store
                    .push_range(names[table], ClientId(1), seq, start, &g)
                    .unwrap();
                for i in 0..n {
                    model.push(
                        table,
                        start + i,
                        &g[i as usize * DIM..(i as usize + 1) * DIM],
                    );
                }
            }
            Op::Pull { table, keys } => {
                let got = store.pull(names[table], &keys).unwrap();
                let want: Vec<f32> = keys.iter().flat_map(|&k| model.get(table, k)).collect();
                prop_assert_eq!(got, want);
            }
            Op::Scan { table, start, end } => {
                let got: Vec<(u64, Vec<f32>)> = store
                    .scan(names[table], KeyRange::new(start, end))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let want: Vec<(u64, Vec<f32>)> = model.rows[table]
                    .range(start..end.max(start))
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Checkpoint => {
                store.checkpoint().unwrap();
            }
            Op::Close => {
                store.close().unwrap();
                store = open_fault(tmp.path(), &fs, opts()).unwrap();
            }
            Op::Reopen => {
                drop(store);
                store = open_fault(tmp.path(), &fs, opts()).unwrap();
            }
            Op::Crash => {
                store.crash();
                fs = fs.crash(|_, _| CrashTail::Drop);
                store = open_fault(tmp.path(), &fs, opts()).unwrap();
            }
        }
    }
    for (table, name) in names.iter().enumerate() {
        let keys: Vec<u64> = (0..KEYS + 5).collect();
        let got = store.pull(name, &keys).unwrap();
        let want: Vec<f32> = keys.iter().flat_map(|&k| model.get(table, k)).collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap_model(
        ops in proptest::collection::vec(op(), 1..40),
        cache_slots in prop_oneof![Just(0u64), Just(1), Just(3), Just(12), Just(1000)],
    ) {
        run(ops, cache_slots)?;
    }
}
