//! Deletes against a model of their semantics: a deleted row pulls its initializer, a push
//! starts it from there, a scan no longer sees it, and all of that holds in memory, after a
//! checkpoint (RocksDB tombstones, the hot-row cache), after a clean reopen and after a crash
//! (log replay). Retries of a delete are applied once. Deletes across shards go through both
//! clients, over gRPC and in process.

use std::collections::BTreeMap;

use paramdb_client::{BlockingClient, ClientOptions, KeyRange as ClientRange};
use paramdb_engine::{
    initial_weights, Classify, ClientId, Initializer, KeyRange, Store, StoreOptions, TableSpec,
    UpdateRule,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::manual_opts;

const DIM: usize = 4;
const KEYS: u64 = 300;

fn spec() -> TableSpec {
    TableSpec::new("d", DIM as u32)
        .with_rule(UpdateRule::Add)
        .with_init(Initializer::Uniform {
            low: -1.0,
            high: 1.0,
        })
        .with_seed(7)
}

/// The model: for each key pushed since its last delete, its row; every other key holds its
/// initializer.
#[derive(Default)]
struct Model {
    rows: BTreeMap<u64, Vec<f32>>,
}

impl Model {
    fn initial(k: u64) -> Vec<f32> {
        let s = spec();
        let mut v = vec![0.0; DIM];
        initial_weights(&s.init, s.seed, k, &mut v);
        v
    }

    fn push(&mut self, keys: &[u64], values: &[f32]) {
        for (i, &k) in keys.iter().enumerate() {
            let row = self.rows.entry(k).or_insert_with(|| Model::initial(k));
            for d in 0..DIM {
                row[d] += values[i * DIM + d];
            }
        }
    }

    fn row(&self, k: u64) -> Vec<f32> {
        self.rows
            .get(&k)
            .cloned()
            .unwrap_or_else(|| Model::initial(k))
    }
}

fn opts() -> StoreOptions {
    StoreOptions {
        // A small cache: rows are cached, evicted and refreshed while deletes land.
        cache_bytes: 64 * (40 + 2 * DIM as u64 * 4 + paramdb_engine::CACHE_SLOT_OVERHEAD as u64),
        ..manual_opts()
    }
}

fn check(store: &Store, model: &Model, seed: u64, step: usize) {
    let keys: Vec<u64> = (0..KEYS).collect();
    let got = store.pull("d", &keys).unwrap();
    for &k in &keys {
        assert_eq!(
            &got[k as usize * DIM..(k as usize + 1) * DIM],
            &model.row(k)[..],
            "seed {seed} step {step}: key {k}"
        );
    }
    let scanned: Vec<u64> = store
        .scan("d", KeyRange::new(0, KEYS))
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    let stored: Vec<u64> = model.rows.keys().copied().collect();
    assert_eq!(scanned, stored, "seed {seed} step {step}: scanned rows");
}

#[test]
fn deletes_match_a_model_through_checkpoints_reopens_and_crashes() {
    let seed: u64 = std::env::var("PARAMDB_DELETE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("deletes seed: {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let mut store = Store::open(&dir, opts()).unwrap();
    store.create_table(spec()).unwrap();
    let mut model = Model::default();
    let mut seq = 0u64;
    let client = ClientId(9);
    // Deletes applied since the store was last opened (the counters start at zero there).
    let mut deletes_since_open = 0;
    for step in 0..400 {
        seq += 1;
        match rng.random_range(0..100) {
            0..=49 => {
                let n = rng.random_range(1..20);
                let mut keys: Vec<u64> = (0..n).map(|_| rng.random_range(0..KEYS)).collect();
                keys.sort_unstable();
                keys.dedup();
                let values: Vec<f32> = (0..keys.len() * DIM)
                    .map(|_| rng.random_range(-4..=4) as f32)
                    .collect();
                store.push("d", client, seq, &keys, &values).unwrap();
                model.push(&keys, &values);
            }
            50..=64 => {
                // Repeats allowed; some keys never pushed.
                let keys: Vec<u64> = (0..rng.random_range(1..8))
                    .map(|_| rng.random_range(0..KEYS))
                    .collect();
                let ack = store.delete("d", client, seq, &keys).unwrap();
                assert!(!ack.duplicate);
                // A retry of the same delete is acknowledged, not applied again (it would be
                // harmless here, so check it through the flag).
                assert!(store.delete("d", client, seq, &keys).unwrap().duplicate);
                deletes_since_open += 1;
                for k in keys {
                    model.rows.remove(&k);
                }
            }
            65..=72 => {
                let a = rng.random_range(0..KEYS);
                let b = rng.random_range(a + 1..=KEYS);
                store
                    .delete_range("d", client, seq, KeyRange::new(a, b))
                    .unwrap();
                model.rows.retain(|&k, _| !(a..b).contains(&k));
                deletes_since_open += 1;
            }
            73..=84 => {
                store.checkpoint().unwrap();
            }
            85..=92 => {
                store.close().unwrap();
                store = Store::open(&dir, opts()).unwrap();
                deletes_since_open = 0;
            }
            _ => {
                store.crash();
                store = Store::open(&dir, opts()).unwrap();
                deletes_since_open = 0;
            }
        }
        if step % 10 == 0 {
            check(&store, &model, seed, step);
        }
    }
    check(&store, &model, seed, 400);
    let stats = store.stats();
    assert_eq!(
        stats.deletes, deletes_since_open,
        "seed {seed}: deletes counted, retries not"
    );
    // RocksDB itself, compacted, holds no deleted row: a reopen after a checkpoint and a
    // compaction reads only what the model stores.
    store.checkpoint().unwrap();
    store.compact().unwrap();
    store.close().unwrap();
    let store = Store::open(&dir, opts()).unwrap();
    check(&store, &model, seed, 401);
}

#[test]
fn bad_deletes_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    store.create_table(spec()).unwrap();
    store.push("d", ClientId(1), 1, &[5], &[1.0; DIM]).unwrap();
    let before = store.pull("d", &[5]).unwrap();
    let cases = [
        store.delete("d", ClientId(1), 2, &[]).unwrap_err(),
        store
            .delete_range("d", ClientId(1), 3, KeyRange::new(9, 9))
            .unwrap_err(),
        store
            .delete_range("d", ClientId(1), 4, KeyRange::new(9, 3))
            .unwrap_err(),
        store.delete("nope", ClientId(1), 5, &[5]).unwrap_err(),
        store.delete("d", ClientId(1), 0, &[5]).unwrap_err(),
    ];
    for e in &cases {
        assert!(e.is_bad_input(), "{e}");
    }
    assert!(
        cases[1].to_string().contains("empty key range"),
        "{}",
        cases[1]
    );
    assert!(
        cases[3].to_string().contains("unknown table"),
        "{}",
        cases[3]
    );
    assert_eq!(store.pull("d", &[5]).unwrap(), before);
    assert_eq!(store.stats().deletes, 0);
}

#[test]
fn both_clients_delete_keys_and_ranges_across_three_shards() {
    let cluster = crate::cluster::Cluster::start(3, &[]);
    let grpc = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let embedded =
        BlockingClient::open_embedded(tmp.path(), 3, manual_opts(), ClientOptions::default())
            .unwrap();
    for c in [&grpc, &embedded] {
        c.create_table(
            paramdb_client::TableSpec::new("d", 2).with_rule(paramdb_client::UpdateRule::Add),
        )
        .unwrap();
        // Keys spread over the key space, so every shard holds some.
        let keys: Vec<u64> = (0..30u64).map(|i| i * (u64::MAX / 30)).collect();
        let values = vec![1.0f32; keys.len() * 2];
        c.push("d", &keys, &values).unwrap();
        c.delete("d", &keys[..5]).unwrap();
        // A range over the middle of the key space: it spans shard boundaries.
        let range = ClientRange::new(keys[10], keys[20]);
        c.delete_range("d", range).unwrap();
        let got = c.pull("d", &keys).unwrap();
        for (i, &k) in keys.iter().enumerate() {
            let deleted = i < 5 || (keys[10]..keys[20]).contains(&k);
            let want = if deleted { 0.0 } else { 1.0 };
            assert_eq!(&got[i * 2..i * 2 + 2], &[want, want], "key {k}");
        }
        let stored: Vec<u64> = c
            .pull_range("d", ClientRange::new(0, u64::MAX))
            .flat_map(|b| b.unwrap().keys)
            .collect();
        assert_eq!(stored.len(), 30 - 5 - 10);
        // A deleted row pushed again starts from its initializer.
        c.push("d", &keys[..1], &[2.0, 2.0]).unwrap();
        assert_eq!(c.pull("d", &keys[..1]).unwrap(), vec![2.0, 2.0]);
        let e = c.delete_range("d", ClientRange::new(7, 7)).unwrap_err();
        assert!(e.to_string().contains("nothing to delete"), "{e}");
    }
    cluster.stop();
}
