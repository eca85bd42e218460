//! Tables and key ranges: the catalog persists, initializers are deterministic, update rules
//! run on the server, ranges stream in key order across memory and RocksDB.

use paramdb_engine::{ClientId, Initializer, KeyRange, Store, TableSpec, UpdateRule};

use crate::common::manual_opts;

#[test]
fn catalog_persists_and_drop_is_final() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path(), manual_opts()).unwrap();
        store
            .create_table(
                TableSpec::new("emb", 4)
                    .with_init(Initializer::Uniform {
                        low: -0.5,
                        high: 0.5,
                    })
                    .with_rule(UpdateRule::Adagrad {
                        lr: 0.1,
                        eps: 1e-8,
                        initial_accumulator: 0.1,
                    })
                    .with_seed(11),
            )
            .unwrap();
        store.create_table(TableSpec::new("gone", 2)).unwrap();
        store
            .push("gone", ClientId(1), 1, &[1], &[5.0, 5.0])
            .unwrap();
        store.checkpoint().unwrap();
        store
            .push("gone", ClientId(1), 2, &[1], &[5.0, 5.0])
            .unwrap();
        store.drop_table("gone").unwrap();
        store.crash();
    }
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    let names: Vec<String> = store
        .list_tables()
        .into_iter()
        .map(|t| t.spec.name)
        .collect();
    assert_eq!(names, ["emb"]);
    let emb = store.describe_table("emb").unwrap();
    assert_eq!(emb.spec.seed, 11);
    assert_eq!(emb.spec.rule.to_string(), "adagrad(0.1,0.00000001,0.1)");
    // Same name again: a new, empty table; the log's records of the old one do not leak in.
    store.create_table(TableSpec::new("gone", 2)).unwrap();
    assert_eq!(store.pull("gone", &[1]).unwrap(), vec![0.0, 0.0]);
    drop(store);
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    assert_eq!(store.pull("gone", &[1]).unwrap(), vec![0.0, 0.0]);
}

#[test]
fn unseen_keys_pull_their_initial_value_every_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    store
        .create_table(
            TableSpec::new("n", 16)
                .with_init(Initializer::Normal { std: 0.1 })
                .with_seed(3),
        )
        .unwrap();
    let a = store.pull("n", &[10, 11]).unwrap();
    assert_eq!(a, store.pull("n", &[10, 11]).unwrap());
    assert_ne!(a[..16], a[16..]);
    assert_eq!(store.stats().dirty_rows, 0, "pulling wrote nothing");
    drop(store);
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    assert_eq!(a, store.pull("n", &[10, 11]).unwrap());
}

#[test]
fn update_rules_run_on_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    store
        .create_table(TableSpec::new("ada", 1).with_rule(UpdateRule::Adagrad {
            lr: 1.0,
            eps: 1e-30,
            initial_accumulator: 0.0,
        }))
        .unwrap();
    // acc = 9 → w = -3/3 = -1; acc = 25 → w = -1 - 4/5 = -1.8
    store.push("ada", ClientId(1), 1, &[0], &[3.0]).unwrap();
    store.checkpoint().unwrap();
    store.push("ada", ClientId(1), 2, &[0], &[4.0]).unwrap();
    let w = store.pull("ada", &[0]).unwrap()[0];
    assert!((w - -1.8).abs() < 1e-6, "{w}");
    store
        .create_table(TableSpec::new("adam", 1).with_rule(UpdateRule::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }))
        .unwrap();
    // Step 1 of Adam moves by lr·sign(g) whatever |g| is.
    store.push("adam", ClientId(1), 3, &[9], &[250.0]).unwrap();
    let w = store.pull("adam", &[9]).unwrap()[0];
    assert!((w - -0.1).abs() < 1e-6, "{w}");
}

#[test]
fn ranges_push_dense_blocks_and_scan_in_key_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    store.create_table(TableSpec::new("w", 2)).unwrap();
    // 3000 rows: spans several scan batches, some in RocksDB, some only in memory.
    let block: Vec<f32> = (0..3000 * 2).map(|i| i as f32).collect();
    store.push_range("w", ClientId(1), 1, 1000, &block).unwrap();
    store.checkpoint().unwrap();
    let odd: Vec<u64> = (1000..4000).filter(|k| k % 2 == 1).collect();
    store
        .push("w", ClientId(1), 2, &odd, &vec![0.5; odd.len() * 2])
        .unwrap();
    store
        .push("w", ClientId(1), 3, &[5, u64::MAX - 1], &[1.0; 4])
        .unwrap();

    let rows: Vec<(u64, Vec<f32>)> = store
        .scan("w", KeyRange::new(0, u64::MAX))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let keys: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let mut want: Vec<u64> = vec![5];
    want.extend(1000..4000);
    want.push(u64::MAX - 1);
    assert_eq!(keys, want);
    for (k, w) in &rows[1..3001] {
        let base = ((k - 1000) * 2) as f32;
        let add = if k % 2 == 1 { 0.5 } else { 0.0 };
        assert_eq!(w, &vec![base + add, base + 1.0 + add], "key {k}");
    }
    let part: Vec<u64> = store
        .scan("w", KeyRange::new(1500, 1503))
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(part, [1500, 1501, 1502]);
    assert_eq!(store.scan("w", KeyRange::new(10, 10)).unwrap().count(), 0);
    assert_eq!(store.pull("w", &[1001]).unwrap(), vec![2.5, 3.5]);
}
