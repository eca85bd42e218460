//! A failed fsync, log write, RocksDB read on the write path or checkpoint commit poisons the
//! store: the failing push is not acknowledged, later pushes are refused with a clear error,
//! reads keep working, and a reopen recovers exactly the acknowledged pushes.

use std::sync::Arc;

use paramdb_engine::wal::fault::{CrashTail, FaultFs};
use paramdb_engine::{
    Classify, ClientId, PushError, RocksFaults, StorageError, Store, StoreOptions, SyncPolicy,
    TableSpec,
};

use crate::common::{manual_opts, open_fault};

fn is_poisoned(r: &Result<paramdb_engine::PushAck, PushError>) -> bool {
    matches!(r, Err(PushError::Storage(StorageError::Poisoned { .. })))
}

#[test]
fn failed_fsync_poisons_and_reopen_recovers_acknowledged_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    store.create_table(TableSpec::new("t", 2)).unwrap();
    store.push("t", ClientId(1), 1, &[1], &[1.0, 1.0]).unwrap();
    fs.fail_syncs_after(0);
    let err = store
        .push("t", ClientId(1), 2, &[1], &[2.0, 2.0])
        .unwrap_err();
    assert!(!err.is_bad_input(), "{err}");
    let err = store
        .push("t", ClientId(1), 3, &[1], &[4.0, 4.0])
        .unwrap_err();
    assert!(
        matches!(&err, PushError::Storage(StorageError::Poisoned { reason }) if reason.contains("fsync")),
        "{err}"
    );
    assert!(err.to_string().contains("refuses writes"), "{err}");
    assert!(
        store.checkpoint().is_err(),
        "a poisoned store does not checkpoint"
    );
    assert_eq!(
        store
            .stats()
            .poisoned
            .as_deref()
            .map(|r| r.contains("fsync")),
        Some(true)
    );
    store.pull("t", &[1]).unwrap();
    store.crash();

    let fs = fs.crash(|_, _| CrashTail::Drop);
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    assert_eq!(store.pull("t", &[1]).unwrap(), vec![1.0, 1.0]);
    // The client retries what was not acknowledged; each is applied once.
    store.push("t", ClientId(1), 2, &[1], &[2.0, 2.0]).unwrap();
    store.push("t", ClientId(1), 3, &[1], &[4.0, 4.0]).unwrap();
    assert_eq!(store.pull("t", &[1]).unwrap(), vec![7.0, 7.0]);
}

#[test]
fn torn_write_poisons_and_the_torn_record_is_cut_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    store.create_table(TableSpec::new("t", 2)).unwrap();
    store.push("t", ClientId(1), 1, &[1], &[1.0, 1.0]).unwrap();
    fs.tear_write_after(0, 20);
    assert!(store.push("t", ClientId(1), 2, &[1], &[2.0, 2.0]).is_err());
    assert!(is_poisoned(&store.push(
        "t",
        ClientId(1),
        3,
        &[1],
        &[2.0, 2.0]
    )));
    store.crash();
    let fs = fs.crash(|_, unsynced| CrashTail::Torn(unsynced));
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    assert_eq!(
        store.recovery_report().torn_tail.as_ref().map(|t| t.2),
        Some(20)
    );
    assert_eq!(store.pull("t", &[1]).unwrap(), vec![1.0, 1.0]);
}

#[test]
fn background_checkpoint_runs_when_the_log_grows() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        sync: SyncPolicy::None,
        checkpoint_log_bytes: 4096,
        background: true,
        ..manual_opts()
    };
    let store = paramdb_engine::Store::open(tmp.path(), opts).unwrap();
    store.create_table(TableSpec::new("t", 64)).unwrap();
    for seq in 1..=20 {
        store
            .push("t", ClientId(1), seq, &[seq], &[1.0; 64])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().checkpoints == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background checkpoint within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let s = store.stats();
    assert!(s.checkpoint_lsn > 0 && s.checkpoint_lsn <= s.last_lsn);
}

#[test]
fn dirty_rows_stay_within_their_budget() {
    // Rows of 64 floats under `add`: 32 + 256 = 288 bytes each; the budget is 100 rows.
    let row_bytes = 288u64;
    let budget = 100 * row_bytes;
    let tmp = tempfile::tempdir().unwrap();

    // Without the background thread a push that finds twice the budget dirty checkpoints
    // first, so the dirty layer never holds more than 2 × budget + one push.
    let opts = StoreOptions {
        checkpoint_dirty_bytes: budget,
        ..manual_opts()
    };
    let store = paramdb_engine::Store::open(tmp.path().join("inline"), opts.clone()).unwrap();
    store.create_table(TableSpec::new("t", 64)).unwrap();
    let mut most = 0;
    for seq in 1..=200u64 {
        let keys: Vec<u64> = (seq * 10..seq * 10 + 10).collect();
        store
            .push("t", ClientId(1), seq, &keys, &[1.0; 640])
            .unwrap();
        let s = store.stats();
        assert_eq!(s.dirty_bytes, s.dirty_rows as u64 * row_bytes);
        most = most.max(s.dirty_bytes);
    }
    let s = store.stats();
    assert!(most <= 2 * budget + 10 * row_bytes, "{most} dirty bytes");
    assert!(s.checkpoints >= 5, "{} checkpoints", s.checkpoints);
    // Nothing was lost on the way: every row holds its one push.
    let all: Vec<u64> = (10..2010).collect();
    assert!(store.pull("t", &all).unwrap().iter().all(|&v| v == 1.0));
    drop(store);

    // With it, the budget alone triggers a checkpoint (the log trigger is far away).
    let opts = StoreOptions {
        background: true,
        checkpoint_log_bytes: u64::MAX,
        checkpoint_interval: None,
        ..opts
    };
    let store = paramdb_engine::Store::open(tmp.path().join("background"), opts).unwrap();
    store.create_table(TableSpec::new("t", 64)).unwrap();
    for seq in 1..=12u64 {
        let keys: Vec<u64> = (seq * 10..seq * 10 + 10).collect();
        store
            .push("t", ClientId(1), seq, &keys, &[1.0; 640])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().checkpoints == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint within 10 s of 120 dirty rows over a budget of 100"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(store.stats().dirty_bytes < budget);
}

/// A push whose base rows cannot be read from RocksDB fails before it is logged, and poisons
/// the store (a push that had been logged and then failed to apply would otherwise be logged
/// twice by its retry). A reopen has exactly the acknowledged pushes.
#[test]
fn rocksdb_read_failure_on_push_poisons_and_reopen_restores_acknowledged_state() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let faults = Arc::new(RocksFaults::default());
    // No cache, so a checkpointed row is read from RocksDB.
    let opts = StoreOptions {
        cache_bytes: 0,
        ..manual_opts()
    };
    let open = |faults: Arc<RocksFaults>| {
        Store::open_with_faults(tmp.path(), opts.clone(), Arc::new(fs.clone()), faults).unwrap()
    };
    let store = open(faults.clone());
    store.create_table(TableSpec::new("t", 2)).unwrap();
    store.push("t", ClientId(1), 1, &[1, 2], &[1.0; 4]).unwrap();
    store.checkpoint().unwrap();
    store.push("t", ClientId(1), 2, &[2], &[1.0; 2]).unwrap();
    let last = store.stats().last_lsn;

    faults.fail_reads(true);
    let err = store
        .push("t", ClientId(1), 3, &[1, 3], &[5.0; 4])
        .unwrap_err();
    assert!(!err.is_bad_input(), "{err}");
    assert!(paramdb_engine::chain(&err).contains("injected"), "{err}");
    assert_eq!(
        store.stats().last_lsn,
        last,
        "the failed push was not logged"
    );
    faults.fail_reads(false);
    // Poisoned: refused even though RocksDB reads again, and even for rows in memory.
    assert!(is_poisoned(&store.push(
        "t",
        ClientId(1),
        4,
        &[2],
        &[1.0; 2]
    )));
    assert!(store
        .stats()
        .poisoned
        .is_some_and(|r| r.contains("reading rows")));
    // Reads go on.
    assert_eq!(store.pull("t", &[1, 2]).unwrap(), vec![1.0, 1.0, 2.0, 2.0]);
    store.crash();

    let store = open(RocksFaults::default().into());
    assert_eq!(
        store.pull("t", &[1, 2, 3]).unwrap(),
        vec![1.0, 1.0, 2.0, 2.0, 0.0, 0.0]
    );
    // The client's retry of the push that failed is applied, once.
    store.push("t", ClientId(1), 3, &[1, 3], &[5.0; 4]).unwrap();
    assert!(
        store
            .push("t", ClientId(1), 3, &[1, 3], &[5.0; 4])
            .unwrap()
            .duplicate
    );
    assert_eq!(store.pull("t", &[1, 3]).unwrap(), vec![6.0, 6.0, 5.0, 5.0]);
}

/// A checkpoint whose RocksDB commit fails poisons the store; the log still holds every
/// acknowledged push, and a reopen replays it.
#[test]
fn failed_checkpoint_commit_poisons_and_reopen_restores_acknowledged_state() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let faults = Arc::new(RocksFaults::default());
    let open = |faults: Arc<RocksFaults>| {
        Store::open_with_faults(tmp.path(), manual_opts(), Arc::new(fs.clone()), faults).unwrap()
    };
    let store = open(faults.clone());
    store.create_table(TableSpec::new("t", 2)).unwrap();
    for seq in 1..=5u64 {
        store
            .push("t", ClientId(1), seq, &[seq % 3], &[1.0; 2])
            .unwrap();
    }
    store.checkpoint().unwrap();
    for seq in 6..=9u64 {
        store
            .push("t", ClientId(1), seq, &[seq % 3], &[1.0; 2])
            .unwrap();
    }
    let want = store.pull("t", &[0, 1, 2]).unwrap();
    faults.fail_commits(true);
    let err = store.checkpoint().unwrap_err();
    assert!(
        !err.is_bad_input() && paramdb_engine::chain(&err).contains("injected"),
        "{err}"
    );
    faults.fail_commits(false);
    assert!(store
        .stats()
        .poisoned
        .is_some_and(|r| r.contains("checkpoint")));
    assert!(is_poisoned(&store.push(
        "t",
        ClientId(1),
        10,
        &[0],
        &[1.0; 2]
    )));
    assert!(
        store.checkpoint().is_err(),
        "a poisoned store does not checkpoint"
    );
    // Reads see the frozen rows the failed checkpoint could not write.
    assert_eq!(store.pull("t", &[0, 1, 2]).unwrap(), want);
    store.crash();

    let store = open(RocksFaults::default().into());
    assert_eq!(store.pull("t", &[0, 1, 2]).unwrap(), want);
    assert!(
        store
            .push("t", ClientId(1), 9, &[0], &[1.0; 2])
            .unwrap()
            .duplicate
    );
    store.checkpoint().unwrap();
    drop(store);
    let store = open(RocksFaults::default().into());
    assert_eq!(store.pull("t", &[0, 1, 2]).unwrap(), want);
}
