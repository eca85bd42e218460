//! Lifecycle policies against models of their semantics (README, "Lifecycle policies"):
//! expiry (`ttl`), admission (`admit_after`) and the size cap (`max_rows`). Each runs on a
//! manual clock through checkpoints, crashes (log replay), clean reopens (the warm cache) and
//! compactions (the compaction filter), and the store must equal the model after every step.

use std::collections::BTreeMap;

use paramdb_client::{BlockingClient, ClientOptions};
use paramdb_engine::{
    initial_weights, Classify, ClientId, Clock, Initializer, KeyRange, Lifecycle, Store,
    StoreOptions, TableSpec, UpdateRule,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::manual_opts;

const DIM: usize = 4;
const KEYS: u64 = 200;
const START: u32 = 1_800_000_000;
const RETENTION: u32 = 20;

fn spec(lifecycle: Lifecycle) -> TableSpec {
    TableSpec::new("l", DIM as u32)
        .with_rule(UpdateRule::Add)
        .with_init(Initializer::Uniform {
            low: -1.0,
            high: 1.0,
        })
        .with_seed(3)
        .with_lifecycle(lifecycle)
}

fn initial(k: u64) -> Vec<f32> {
    let s = spec(Lifecycle::default());
    let mut v = vec![0.0; DIM];
    initial_weights(&s.init, s.seed, k, &mut v);
    v
}

fn opts(clock: &Clock) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        // Room for every row: pulls are served from the cache, which must not return a row
        // that has expired.
        cache_bytes: 4 << 20,
        admission_counters: 1 << 20,
        // Gone rows stay on disk this long (for delta exports): short enough that the
        // checkpoints and compactions of a run drop many of them.
        gone_retention_secs: RETENTION,
        ..manual_opts()
    }
}

/// What the store must hold: each key's row and the time it was last pushed.
#[derive(Default)]
struct Rows {
    rows: BTreeMap<u64, (Vec<f32>, u32)>,
}

impl Rows {
    fn push(&mut self, k: u64, v: &[f32], now: u32, live: bool) {
        let e = self.rows.entry(k).or_insert_with(|| (initial(k), now));
        if !live {
            *e = (initial(k), now);
        }
        for (w, g) in e.0.iter_mut().zip(v) {
            *w += g;
        }
        e.1 = now;
    }
}

/// Up to `most − 1` distinct keys below `KEYS`, sorted, and small integer values for them.
fn random_push(rng: &mut StdRng, most: usize) -> (Vec<u64>, Vec<f32>) {
    let n = rng.random_range(1..most);
    let mut keys: Vec<u64> = (0..n).map(|_| rng.random_range(0..KEYS)).collect();
    keys.sort_unstable();
    keys.dedup();
    let values: Vec<f32> = (0..keys.len() * DIM)
        .map(|_| rng.random_range(-4..=4) as f32)
        .collect();
    (keys, values)
}

/// Every key pulls what the model says, and a full scan returns exactly the live rows.
fn check(store: &Store, want: impl Fn(u64) -> Option<Vec<f32>>, what: &str) {
    let keys: Vec<u64> = (0..KEYS).collect();
    let got = store.pull("l", &keys).unwrap();
    let mut live = Vec::new();
    for &k in &keys {
        let w = want(k);
        if w.is_some() {
            live.push(k);
        }
        let w = w.unwrap_or_else(|| initial(k));
        assert_eq!(
            &got[k as usize * DIM..(k as usize + 1) * DIM],
            &w[..],
            "{what}: key {k}"
        );
    }
    let scanned: Vec<u64> = store
        .scan("l", KeyRange::new(0, KEYS))
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(scanned, live, "{what}: the scan's keys");
}

/// Crash, clean reopen, compaction or checkpoint, at random.
fn disturb(store: Store, dir: &std::path::Path, clock: &Clock, rng: &mut StdRng) -> Store {
    match rng.random_range(0..10) {
        0 => {
            store.crash();
            Store::open(dir, opts(clock)).unwrap()
        }
        1 => {
            store.close().unwrap();
            Store::open(dir, opts(clock)).unwrap()
        }
        2 => {
            store.checkpoint().unwrap();
            store.compact().unwrap();
            store
        }
        3 | 4 => {
            store.checkpoint().unwrap();
            store
        }
        _ => store,
    }
}

#[test]
fn ttl_matches_a_model_through_checkpoints_crashes_compactions_and_policy_changes() {
    let mut rng = StdRng::seed_from_u64(11);
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START);
    let mut store = Store::open(tmp.path(), opts(&clock)).unwrap();
    let mut ttl = Some(100u64);
    let mut policy = Lifecycle {
        ttl_secs: ttl,
        ..Default::default()
    };
    store.create_table(spec(policy)).unwrap();
    let (mut since, mut floor) = (START, 0u32);
    let mut model = Rows::default();
    let mut seq = 0;
    let live = |p: u32, now: u32, ttl: Option<u64>, since: u32, floor: u32| {
        p >= floor && ttl.is_none_or(|t| (now - p.max(since)) < t as u32)
    };
    for step in 0..400 {
        let now = clock.now();
        let (keys, values) = random_push(&mut rng, 20);
        seq += 1;
        store.push("l", ClientId(1), seq, &keys, &values).unwrap();
        for (i, &k) in keys.iter().enumerate() {
            let alive = model
                .rows
                .get(&k)
                .is_some_and(|r| live(r.1, now, ttl, since, floor));
            model.push(k, &values[i * DIM..(i + 1) * DIM], now, alive);
        }
        clock.advance(rng.random_range(0..12));
        if step == 150 {
            // A shorter TTL applies to old rows at once.
            let now = clock.now();
            floor = floor.max(ttl_cut(ttl, since, now));
            ttl = Some(40);
            policy.ttl_secs = ttl;
            store.set_lifecycle("l", policy).unwrap();
        }
        if step == 300 {
            // No TTL: what expired stays expired, nothing expires any more.
            let now = clock.now();
            floor = floor.max(ttl_cut(ttl, since, now));
            ttl = None;
            policy.ttl_secs = None;
            store.set_lifecycle("l", policy).unwrap();
        }
        if step == 330 {
            let now = clock.now();
            since = now;
            ttl = Some(30);
            policy.ttl_secs = ttl;
            store.set_lifecycle("l", policy).unwrap();
        }
        store = disturb(store, tmp.path(), &clock, &mut rng);
        let now = clock.now();
        check(
            &store,
            |k| {
                model
                    .rows
                    .get(&k)
                    .filter(|r| live(r.1, now, ttl, since, floor))
                    .map(|r| r.0.clone())
            },
            &format!("step {step}"),
        );
    }
    assert_eq!(
        store.describe_table("l").unwrap().spec.lifecycle,
        policy,
        "the policy survives reopens"
    );
    let c = store.lifecycle_counts("l").unwrap();
    assert!(c.expired > 0, "{c:?}");
    // Let everything expire: once the retention passed, after a checkpoint and a compaction
    // RocksDB holds no row, and a reopen (a cold cache) reads none back.
    clock.advance(31);
    store
        .push("l", ClientId(1), seq + 1, &[KEYS + 5], &[0.0; DIM])
        .unwrap();
    store.checkpoint().unwrap();
    store.compact().unwrap();
    let kept = store.inspect(false).unwrap().tables[0].rows;
    assert!(kept > 1, "gone rows stay for the retention: {kept}");
    clock.advance(RETENTION);
    store
        .push("l", ClientId(1), seq + 2, &[KEYS + 5], &[0.0; DIM])
        .unwrap();
    store.checkpoint().unwrap();
    store.compact().unwrap();
    store.crash();
    let store = Store::open(tmp.path(), opts(&clock)).unwrap();
    check(&store, |_| None, "all expired");
    let report = store.inspect(false).unwrap();
    let t = &report.tables[0];
    assert!(t.rows <= 1, "rows left after compaction: {}", t.rows);
    assert!(t.lifecycle.starts_with("ttl=30s"), "{}", t.lifecycle);
}

/// The model's TTL cut-off: rows of a time below it are expired at `now`.
fn ttl_cut(ttl: Option<u64>, since: u32, now: u32) -> u32 {
    match ttl {
        Some(t) if since as u64 + t <= now as u64 => now - t as u32 + 1,
        _ => 0,
    }
}

#[test]
fn admission_matches_a_model_through_checkpoints_crashes_and_deletes() {
    let mut rng = StdRng::seed_from_u64(12);
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START);
    let mut store = Store::open(tmp.path(), opts(&clock)).unwrap();
    let n = 3u32;
    store
        .create_table(spec(Lifecycle {
            admit_after: n,
            ..Default::default()
        }))
        .unwrap();
    // Pushes counted per key (never reset: a deleted key's count stays in the sketch).
    let mut counts: BTreeMap<u64, u32> = BTreeMap::new();
    let mut model = Rows::default();
    let mut seq = 0;
    let (mut admitted, mut unadmitted) = (0, 0);
    for step in 0..300 {
        let (keys, values) = random_push(&mut rng, 10);
        seq += 1;
        if rng.random_range(0..15) == 0 {
            store.delete("l", ClientId(1), seq, &keys).unwrap();
            for k in &keys {
                model.rows.remove(k);
            }
        } else {
            store.push("l", ClientId(1), seq, &keys, &values).unwrap();
            for (i, &k) in keys.iter().enumerate() {
                if model.rows.contains_key(&k) {
                    model.push(k, &values[i * DIM..(i + 1) * DIM], 0, true);
                    continue;
                }
                let c = counts.entry(k).or_default();
                *c += 1;
                if *c >= n {
                    model.push(k, &values[i * DIM..(i + 1) * DIM], 0, true);
                    admitted += 1;
                } else {
                    unadmitted += 1;
                }
            }
        }
        clock.advance(1);
        store = disturb(store, tmp.path(), &clock, &mut rng);
        check(
            &store,
            |k| model.rows.get(&k).map(|r| r.0.clone()),
            &format!("step {step}"),
        );
        // The counts are checkpointed and replayed like the rest.
        let c = store.lifecycle_counts("l").unwrap();
        assert_eq!(
            (c.admitted, c.unadmitted),
            (admitted, unadmitted),
            "step {step}"
        );
    }
    // Through a read-only open too.
    let ro = Store::open_read_only(tmp.path(), opts(&clock)).unwrap();
    let c = ro.lifecycle_counts("l").unwrap();
    assert_eq!((c.admitted, c.unadmitted), (admitted, unadmitted));
    drop(ro);
    let tmp2 = tempfile::tempdir().unwrap();
    let store2 = Store::open(tmp2.path(), opts(&clock)).unwrap();
    store2
        .create_table(spec(Lifecycle {
            admit_after: 2,
            ..Default::default()
        }))
        .unwrap();
    store2
        .push("l", ClientId(1), 1, &[1, 2], &[1.0; 8])
        .unwrap();
    store2.push("l", ClientId(1), 2, &[1], &[1.0; 4]).unwrap();
    let c = store2.lifecycle_counts("l").unwrap();
    assert_eq!((c.admitted, c.unadmitted), (1, 2), "{c:?}");
    assert_eq!(store2.pull("l", &[1]).unwrap(), {
        let mut w = initial(1);
        w.iter_mut().for_each(|x| *x += 1.0);
        w
    });
    assert_eq!(store2.pull("l", &[2]).unwrap(), initial(2));
    assert!(unadmitted > 0);
}

#[test]
fn admission_false_positives_stay_within_the_stated_bound() {
    // A small sketch (1,024 counters per partition, halved every 128 counts): every key is
    // pushed once with admit_after = 2, so every admission is a false positive.
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START);
    let store = Store::open(
        tmp.path(),
        StoreOptions {
            admission_counters: 64 * 1024,
            cache_bytes: 0,
            ..opts(&clock)
        },
    )
    .unwrap();
    store
        .create_table(TableSpec::new("l", 1).with_lifecycle(Lifecycle {
            admit_after: 2,
            ..Default::default()
        }))
        .unwrap();
    let keys = 200_000u64;
    let mut seq = 0;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(10_000) {
        seq += 1;
        let k: Vec<u64> = chunk
            .iter()
            .map(|&i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA5A5)
            .collect();
        store
            .push("l", ClientId(1), seq, &k, &vec![1.0; k.len()])
            .unwrap();
    }
    let c = store.lifecycle_counts("l").unwrap();
    let rate = c.admitted as f64 / keys as f64;
    println!(
        "admission false positives: {} of {keys} ({:.3}%)",
        c.admitted,
        rate * 100.0
    );
    assert_eq!(c.admitted + c.unadmitted, keys);
    assert!(rate <= 0.024, "false-positive rate {rate}");
    let stored = store.scan("l", KeyRange::new(0, u64::MAX)).unwrap().count() as u64;
    assert_eq!(stored, c.admitted);
}

#[test]
fn max_rows_evicts_the_least_recently_pushed_as_the_model_says() {
    let mut rng = StdRng::seed_from_u64(13);
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START);
    let mut store = Store::open(tmp.path(), opts(&clock)).unwrap();
    let max = 64u64;
    store
        .create_table(spec(Lifecycle {
            max_rows: Some(max),
            ..Default::default()
        }))
        .unwrap();
    // The model keeps each row's push number (the order of the pushes' LSNs) as its "time".
    let mut model = Rows::default();
    let mut floor = 0u32;
    let mut seq = 0;
    let mut evicted = 0u64;
    for step in 0..300 {
        let (keys, values) = random_push(&mut rng, 12);
        seq += 1;
        store.push("l", ClientId(1), seq, &keys, &values).unwrap();
        for (i, &k) in keys.iter().enumerate() {
            let alive = model.rows.get(&k).is_some_and(|r| r.1 >= floor);
            model.push(k, &values[i * DIM..(i + 1) * DIM], seq as u32, alive);
        }
        model.rows.retain(|_, r| r.1 >= floor);
        // Time makes no difference to eviction: rows pushed in the same second are told apart.
        if rng.random_range(0..5) == 0 {
            clock.advance(1);
        }
        if rng.random_range(0..4) == 0 {
            store.checkpoint().unwrap();
            // The model's pass: keep the rows of the (max − max/16) latest pushes' rows.
            let mut pushes: Vec<u32> = model.rows.values().map(|r| r.1).collect();
            let total = pushes.len() as u64;
            if total > max {
                let target = max - max / 16;
                pushes.sort_unstable();
                let nth = pushes[(total - target) as usize];
                floor = floor.max(nth);
                model.rows.retain(|_, r| r.1 >= floor);
                evicted += total - model.rows.len() as u64;
                // The rows of the push at the threshold stay together (at most 11 rows).
                assert!(model.rows.len() as u64 <= target + 11);
            }
        } else {
            store = disturb_without_checkpoint(store, tmp.path(), &clock, &mut rng);
        }
        check(
            &store,
            |k| model.rows.get(&k).map(|r| r.0.clone()),
            &format!("step {step}"),
        );
        let c = store.lifecycle_counts("l").unwrap();
        assert_eq!((c.evicted, c.expired), (evicted, 0), "step {step}");
    }
    assert!(evicted > 0);
}

/// Crashes and clean reopens, which (a close checkpoints) may run the eviction pass too: the
/// test checkpoints itself so that the model knows when passes run.
fn disturb_without_checkpoint(
    store: Store,
    dir: &std::path::Path,
    clock: &Clock,
    rng: &mut StdRng,
) -> Store {
    match rng.random_range(0..8) {
        0 => {
            store.crash();
            Store::open(dir, opts(clock)).unwrap()
        }
        1 => {
            store.compact().unwrap();
            store
        }
        _ => store,
    }
}

#[test]
fn bad_policies_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START);
    let store = Store::open(tmp.path(), opts(&clock)).unwrap();
    let bad = [
        Lifecycle {
            ttl_secs: Some(0),
            ..Default::default()
        },
        Lifecycle {
            admit_after: 256,
            ..Default::default()
        },
        Lifecycle {
            max_rows: Some(0),
            ..Default::default()
        },
    ];
    for l in bad {
        let e = store.create_table(spec(l)).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
    }
    store.create_table(spec(Lifecycle::default())).unwrap();
    for l in bad {
        let e = store.set_lifecycle("l", l).unwrap_err();
        assert!(e.is_bad_input(), "{e}");
    }
    let e = store
        .set_lifecycle(&"x".repeat(10_000), Lifecycle::default())
        .unwrap_err();
    assert!(e.to_string().contains("unknown table") && e.to_string().len() < 200);
    for text in [
        "ttl=1d,ttl=2d",
        "ttl=5y",
        "max_rows=-1",
        "colour=red",
        "admit_after",
    ] {
        assert!(text.parse::<Lifecycle>().is_err(), "{text}");
    }
    assert!(store.describe_table("l").unwrap().spec.lifecycle.is_none());
}

#[test]
fn both_clients_set_policies_on_every_shard_and_report_counts() {
    let cluster = crate::cluster::Cluster::start(3, &[]);
    let grpc = cluster.client();
    let tmp = tempfile::tempdir().unwrap();
    let embedded =
        BlockingClient::open_embedded(tmp.path(), 3, manual_opts(), ClientOptions::default())
            .unwrap();
    for c in [&grpc, &embedded] {
        let admit = Lifecycle {
            admit_after: 2,
            ..Default::default()
        };
        c.create_table(paramdb_client::TableSpec::new("a", 2).with_lifecycle(admit))
            .unwrap();
        assert_eq!(c.describe_table("a").unwrap().lifecycle, admit);
        let keys: Vec<u64> = (0..30u64).map(|i| i * (u64::MAX / 30)).collect();
        c.push("a", &keys, &vec![1.0; 60]).unwrap();
        assert_eq!(
            c.pull("a", &keys).unwrap(),
            vec![0.0; 60],
            "nothing admitted"
        );
        c.push("a", &keys, &vec![1.0; 60]).unwrap();
        assert_eq!(
            c.pull("a", &keys).unwrap(),
            vec![1.0; 60],
            "admitted on the 2nd"
        );
        let stats = c.stats().unwrap();
        let admitted: u64 = stats.iter().map(|s| s.store.lifecycle.admitted).sum();
        let unadmitted: u64 = stats.iter().map(|s| s.store.lifecycle.unadmitted).sum();
        assert_eq!((admitted, unadmitted), (30, 30));
        let ttl = "ttl=1h,admit_after=2".parse::<Lifecycle>().unwrap();
        c.set_lifecycle("a", ttl).unwrap();
        assert_eq!(c.describe_table("a").unwrap().lifecycle, ttl);
        let report = c.inspect(false).unwrap();
        for shard in &report {
            assert_eq!(shard.tables[0].lifecycle, "ttl=1h,admit_after=2");
        }
        // The keys gone since each shard's LSN, from every shard (a range across two).
        let lsns = c.checkpoint().unwrap();
        c.delete("a", &keys[..3]).unwrap();
        let range = KeyRange::new(keys[9], keys[11] + 1);
        c.delete_range("a", range).unwrap();
        let gone = c.gone_since("a", KeyRange::all(), &lsns).unwrap();
        assert_eq!(
            (&gone.keys[..], &gone.ranges[..]),
            (&keys[..3], &[range][..])
        );
        assert!(c.gone_since("a", KeyRange::all(), &lsns[..1]).is_err());
        let e = c
            .set_lifecycle(
                "a",
                Lifecycle {
                    ttl_secs: Some(0),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("ttl"), "{e}");
    }
    cluster.stop();
}

#[test]
fn the_lifecycle_command_shows_changes_and_refuses_conflicts() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let c =
            BlockingClient::open_embedded(tmp.path(), 2, manual_opts(), ClientOptions::default())
                .unwrap();
        c.create_table(paramdb_client::TableSpec::new("t", 2))
            .unwrap();
        c.checkpoint().unwrap();
    }
    let run = |args: &[&str]| {
        std::process::Command::new(crate::cluster::paramdb_bin())
            .arg("lifecycle")
            .args(args)
            .arg("--data-dir")
            .arg(tmp.path())
            .output()
            .unwrap()
    };
    let out = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(out(run(&["t"])), "t: none");
    assert_eq!(
        out(run(&["t", "--ttl", "36h", "--admit-after", "2"])),
        "t: ttl=36h,admit_after=2"
    );
    assert_eq!(
        out(run(&["t", "--max-rows", "1000"])),
        "t: ttl=36h,admit_after=2,max_rows=1000"
    );
    assert_eq!(
        out(run(&["t", "--no-ttl", "--admit-after", "1"])),
        "t: max_rows=1000"
    );
    for bad in [
        vec!["t", "--ttl", "1d", "--no-ttl"],
        vec!["t", "--max-rows", "5", "--no-max-rows"],
        vec!["t", "--admit-after", "300"],
        vec!["t", "--ttl", "0"],
        vec!["t", "--ttl", "3 fortnights"],
        vec!["missing", "--ttl", "1d"],
    ] {
        let o = run(&bad);
        assert!(!o.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.trim().is_empty() && err.len() < 2000, "{bad:?}: {err}");
    }
    assert_eq!(
        out(run(&["t"])),
        "t: max_rows=1000",
        "a refused change changes nothing"
    );
}

/// Every row of table "l" now, by key.
fn table_now(store: &Store) -> BTreeMap<u64, Vec<f32>> {
    store
        .scan("l", KeyRange::all())
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// Delta exports since an LSN (`scan_since` plus `gone_since`) against a model: a copy of the
/// table taken at a past LSN, brought up to date by the delta (gone keys and ranges removed,
/// the changed rows and every row of a deleted range put), equals the table now. Through
/// pushes, deletes of keys and ranges, expiry, eviction, checkpoints, crashes, reopens and
/// compactions. A listed key is never live now. An LSN is refused only once it is older than
/// the retention, and one within it is always answered.
#[test]
fn deltas_since_an_lsn_bring_a_copy_from_then_up_to_date() {
    let mut rng = StdRng::seed_from_u64(23);
    let tmp = tempfile::tempdir().unwrap();
    let clock = Clock::manual(START);
    let mut store = Store::open(tmp.path(), opts(&clock)).unwrap();
    let policy = Lifecycle {
        ttl_secs: Some(15),
        max_rows: Some(40),
        ..Default::default()
    };
    store.create_table(spec(policy)).unwrap();
    // (LSN, clock, the table then).
    let mut copies: Vec<(u64, u32, BTreeMap<u64, Vec<f32>>)> = Vec::new();
    let (mut seq, mut answered, mut refused, mut listed) = (0u64, 0, 0, 0usize);
    for step in 0..300 {
        seq += 1;
        match rng.random_range(0..10) {
            0 | 1 => {
                let keys: Vec<u64> = (0..rng.random_range(1..6))
                    .map(|_| rng.random_range(0..KEYS))
                    .collect();
                store.delete("l", ClientId(1), seq, &keys).unwrap();
            }
            2 => {
                let a = rng.random_range(0..KEYS);
                let r = KeyRange::new(a, a + rng.random_range(1..15));
                store.delete_range("l", ClientId(1), seq, r).unwrap();
            }
            _ => {
                let (keys, values) = random_push(&mut rng, 20);
                store.push("l", ClientId(1), seq, &keys, &values).unwrap();
            }
        }
        clock.advance(rng.random_range(0..6));
        store = disturb(store, tmp.path(), &clock, &mut rng);
        let now = clock.now();
        let table = table_now(&store);
        for (lsn, at, then) in &copies {
            let gone = match store.gone_since("l", KeyRange::all(), *lsn) {
                Ok(g) => g,
                Err(e) => {
                    assert!(
                        matches!(
                            e,
                            paramdb_engine::PullError::Input(
                                paramdb_engine::InputError::GoneUntracked { .. }
                            )
                        ),
                        "step {step}: {e}"
                    );
                    assert!(
                        *at <= now - RETENTION,
                        "step {step}: LSN {lsn} of time {at} refused at {now}: {e}"
                    );
                    refused += 1;
                    continue;
                }
            };
            answered += 1;
            listed += gone.keys.len();
            let mut copy = then.clone();
            for k in &gone.keys {
                assert!(!table.contains_key(k), "step {step}: live key {k} listed");
                copy.remove(k);
            }
            for r in &gone.ranges {
                copy.retain(|k, _| !r.contains(*k));
            }
            for row in store.scan_since("l", KeyRange::all(), *lsn).unwrap() {
                let (k, v) = row.unwrap();
                copy.insert(k, v);
            }
            for r in &gone.ranges {
                for row in store.scan("l", *r).unwrap() {
                    let (k, v) = row.unwrap();
                    copy.insert(k, v);
                }
            }
            assert_eq!(
                copy, table,
                "step {step}: the copy of LSN {lsn}, brought up to date"
            );
        }
        copies.push((store.stats().last_lsn, now, table));
        if copies.len() > 12 {
            copies.remove(rng.random_range(0..copies.len()));
        }
    }
    let c = store.lifecycle_counts("l").unwrap();
    assert!(c.expired > 0 && c.evicted > 0, "{c:?}");
    assert!(
        answered > 1000 && refused > 50 && listed > 1000,
        "answered {answered}, refused {refused}, keys listed {listed}"
    );
    // Since LSN 0 nothing was there, and an unknown table is an error.
    assert_eq!(
        store.gone_since("l", KeyRange::all(), 0).unwrap(),
        Default::default()
    );
    assert!(store.gone_since("nope", KeyRange::all(), 1).is_err());
}
