//! A failed fsync or write poisons the store: the failing push is not acknowledged, later
//! pushes are refused with a clear error, reads keep working, and a reopen recovers every
//! acknowledged push.

use paramdb_server::wal::fault::{CrashTail, FaultFs};
use paramdb_server::{ClientId, StoreError, StoreOptions, SyncPolicy, TableSpec};

use crate::common::{manual_opts, open_fault};

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
        matches!(&err, StoreError::Poisoned { reason } if reason.contains("fsync")),
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
    assert!(matches!(
        store.push("t", ClientId(1), 3, &[1], &[2.0, 2.0]),
        Err(StoreError::Poisoned { .. })
    ));
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
    let store = paramdb_server::Store::open(tmp.path(), opts).unwrap();
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
