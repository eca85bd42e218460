//! Exactly-once pushes: a retry with the same (client, seq) is acknowledged and not applied
//! again, before and after a checkpoint, a clean reopen and a crash.

use paramdb_engine::wal::fault::{CrashTail, FaultFs};
use paramdb_engine::{ClientId, InputError, PushError, TableSpec};

use crate::common::{manual_opts, open_fault};

#[test]
fn retries_are_applied_once_across_checkpoint_and_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    store.create_table(TableSpec::new("t", 2)).unwrap();
    let c = ClientId(42);
    assert!(!store.push("t", c, 1, &[5], &[1.0, 1.0]).unwrap().duplicate);
    assert!(store.push("t", c, 1, &[5], &[1.0, 1.0]).unwrap().duplicate);
    // Out-of-order in-flight pushes are fine; each is applied once.
    store.push("t", c, 3, &[5], &[4.0, 4.0]).unwrap();
    store.push("t", c, 2, &[5], &[2.0, 2.0]).unwrap();
    assert!(store.push("t", c, 3, &[5], &[4.0, 4.0]).unwrap().duplicate);
    assert_eq!(store.pull("t", &[5]).unwrap(), vec![7.0, 7.0]);
    store.checkpoint().unwrap();
    assert!(store.push("t", c, 2, &[5], &[2.0, 2.0]).unwrap().duplicate);
    store.push("t", c, 4, &[5], &[8.0, 8.0]).unwrap();
    // Anonymous pushes are never deduplicated.
    store
        .push("t", ClientId::ANONYMOUS, 0, &[5], &[16.0, 16.0])
        .unwrap();
    store
        .push("t", ClientId::ANONYMOUS, 0, &[5], &[16.0, 16.0])
        .unwrap();
    store.crash();

    let fs = fs.crash(|_, _| CrashTail::Drop);
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    assert_eq!(store.pull("t", &[5]).unwrap(), vec![47.0, 47.0]);
    for seq in 1..=4 {
        assert!(
            store
                .push("t", c, seq, &[5], &[100.0, 100.0])
                .unwrap()
                .duplicate,
            "seq {seq}"
        );
    }
    assert_eq!(store.pull("t", &[5]).unwrap(), vec![47.0, 47.0]);
    assert_eq!(store.stats().duplicate_pushes, 4);

    // Far below the window: refused, since whether it was applied can no longer be known.
    store.push("t", c, 5000, &[5], &[1.0, 1.0]).unwrap();
    assert!(matches!(
        store.push("t", c, 6, &[5], &[1.0, 1.0]),
        Err(PushError::Input(InputError::SequenceTooOld { seq: 6, .. }))
    ));
}
