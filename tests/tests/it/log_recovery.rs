//! Recovery from the gradient log: torn and zero-filled tails are cut (and kept aside),
//! corruption before the tail is refused without touching the disk, salvage is explicit.

use paramdb_engine::wal::fault::{CrashTail, FaultFs};
use paramdb_engine::wal::LogFs;
use paramdb_engine::{
    ClientId, OpenError, RecoveryMode, StorageError, Store, StoreOptions, TableSpec,
};

use crate::common::{manual_opts, open_fault, segments, snapshot_tree, wal_dir};

const DIM: usize = 4;

fn values(i: u64) -> Vec<f32> {
    (0..2 * DIM).map(|d| (i * 10 + d as u64) as f32).collect()
}

/// Five pushes of two rows each into a fresh store on `fs`; the store is crashed (no sync on
/// drop: every push was synced before its ack anyway). Returns the expected rows of keys 1, 2
/// after the first k pushes, for k = 0..=5.
fn five_pushes(dir: &std::path::Path, fs: &FaultFs) -> Vec<Vec<f32>> {
    let store = open_fault(dir, fs, manual_opts()).unwrap();
    store.create_table(TableSpec::new("t", DIM as u32)).unwrap();
    let mut states = vec![vec![0.0f32; 2 * DIM]];
    for i in 1..=5u64 {
        store
            .push("t", ClientId(1), i, &[1, 2], &values(i))
            .unwrap();
        let mut next = states.last().unwrap().clone();
        for (n, v) in next.iter_mut().zip(values(i)) {
            *n += v;
        }
        states.push(next);
    }
    store.crash();
    states
}

#[test]
fn log_truncation_at_every_offset_of_the_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let states = five_pushes(tmp.path(), &fs);
    let seg = segments(&fs, tmp.path()).pop().unwrap();
    let full = fs.contents(&seg).unwrap();
    // Each record is one frame of equal size; the last starts one frame before the end.
    let frame = (full.len() - 40) / 5;
    let last_start = full.len() - frame;
    for cut in last_start..full.len() {
        let crashed = fs.crash(|_, _| CrashTail::Drop);
        crashed.set_contents(&seg, full[..cut].to_vec());
        let store = open_fault(tmp.path(), &crashed, manual_opts())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(store.pull("t", &[1, 2]).unwrap(), states[4], "cut at {cut}");
        let report = store.recovery_report().clone();
        assert_eq!(report.records_replayed, 4, "cut at {cut}");
        if cut > last_start {
            let (_, off, n, kept) = report.torn_tail.clone().expect("a torn tail");
            assert_eq!((off as usize, n as usize), (last_start, cut - last_start));
            assert_eq!(
                crashed.contents(&kept).unwrap(),
                full[last_start..cut].to_vec()
            );
        }
        // The cut log takes new pushes and replays them after another crash.
        store
            .push("t", ClientId(1), 5, &[1, 2], &values(5))
            .unwrap();
        store.crash();
        let again = open_fault(tmp.path(), &crashed, manual_opts()).unwrap();
        assert_eq!(
            again.pull("t", &[1, 2]).unwrap(),
            states[5],
            "cut at {cut}, after retry"
        );
        again.crash();
    }
}

#[test]
fn log_zero_filled_tail_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let states = five_pushes(tmp.path(), &fs);
    let seg = segments(&fs, tmp.path()).pop().unwrap();
    let mut bytes = fs.contents(&seg).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 4096));
    fs.set_contents(&seg, bytes);
    let store = open_fault(tmp.path(), &fs, manual_opts()).unwrap();
    assert_eq!(store.pull("t", &[1, 2]).unwrap(), states[5]);
    assert_eq!(store.recovery_report().torn_tail.as_ref().unwrap().2, 4096);
}

#[test]
fn log_bit_flip_before_the_tail_is_refused_and_nothing_changes() {
    // On the real file system, so "nothing changes" covers every file of the store.
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path(), manual_opts()).unwrap();
        store.create_table(TableSpec::new("t", DIM as u32)).unwrap();
        for i in 1..=5u64 {
            store
                .push("t", ClientId(1), i, &[1, 2], &values(i))
                .unwrap();
        }
        store.crash();
    }
    let wal = wal_dir(tmp.path());
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let seg = segs.pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let frame = (bytes.len() - 40) / 5;
    // Flip one bit inside the second record's values.
    let offset = 40 + frame;
    bytes[offset + 70] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let before = snapshot_tree(&wal);

    let err = Store::open(tmp.path(), manual_opts()).unwrap_err();
    match &err {
        OpenError::Storage(StorageError::ChecksumMismatch {
            segment,
            offset: o,
            expected,
            actual,
        }) => {
            assert_eq!(segment, &seg);
            assert_eq!(*o as usize, offset);
            assert_ne!(expected, actual);
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&seg.display().to_string())
            && msg.contains("offset")
            && msg.contains("expected"),
        "{msg}"
    );
    assert_eq!(
        snapshot_tree(&wal),
        before,
        "a refused open must not change the log"
    );

    // Salvage is explicit: it keeps the first record, quarantines the segment, reports the loss.
    let opts = StoreOptions {
        recovery: RecoveryMode::Salvage,
        ..manual_opts()
    };
    let store = Store::open(tmp.path(), opts).unwrap();
    let lost = store.recovery_report().lost.clone();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].first_lsn, 2);
    assert!(lost[0].moved_to.exists());
    assert_eq!(store.pull("t", &[1, 2]).unwrap(), values(1));
    drop(store);
    // The salvaged state was checkpointed: a strict open now works and agrees.
    let store = Store::open(tmp.path(), manual_opts()).unwrap();
    assert_eq!(store.pull("t", &[1, 2]).unwrap(), values(1));
}

#[test]
fn log_corrupt_length_before_valid_records_is_not_mistaken_for_a_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    five_pushes(tmp.path(), &fs);
    let seg = segments(&fs, tmp.path()).pop().unwrap();
    let mut bytes = fs.contents(&seg).unwrap();
    let frame = (bytes.len() - 40) / 5;
    // A huge length in the third frame would run past the end, like a torn record, but valid
    // records follow it.
    bytes[40 + 2 * frame + 3] = 0x30;
    fs.set_contents(&seg, bytes);
    let err = open_fault(tmp.path(), &fs, manual_opts()).unwrap_err();
    assert!(
        matches!(err, OpenError::Storage(StorageError::CorruptLog { offset, .. }) if offset as usize == 40 + 2 * frame),
        "{err}"
    );
}

#[test]
fn log_segment_from_a_newer_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    five_pushes(tmp.path(), &fs);
    let seg = segments(&fs, tmp.path()).pop().unwrap();
    let mut bytes = fs.contents(&seg).unwrap();
    bytes[8] = 9; // version
    let crc = crc32(&bytes[..32]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    fs.set_contents(&seg, bytes);
    let err = open_fault(tmp.path(), &fs, manual_opts()).unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Storage(StorageError::UnsupportedFormat { found: 9, .. })
        ),
        "{err}"
    );
}

fn crc32(b: &[u8]) -> u32 {
    // The header checksum is crc32 (IEEE); recomputed here independently of the store.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn log_segments_covered_by_a_checkpoint_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let opts = StoreOptions {
        max_segment_bytes: 512,
        ..manual_opts()
    };
    let store = open_fault(tmp.path(), &fs, opts.clone()).unwrap();
    store.create_table(TableSpec::new("t", DIM as u32)).unwrap();
    for i in 1..=20u64 {
        store
            .push("t", ClientId(1), i, &[1, 2], &values(i))
            .unwrap();
    }
    assert!(segments(&fs, tmp.path()).len() > 3);
    let info = store.checkpoint().unwrap();
    assert_eq!(info.lsn, 20);
    assert!(info.segments_removed > 3);
    assert_eq!(segments(&fs, tmp.path()).len(), 1);
    let expected = store.pull("t", &[1, 2]).unwrap();
    store.crash();
    let store = open_fault(tmp.path(), &fs, opts).unwrap();
    assert_eq!(store.recovery_report().records_replayed, 0);
    assert_eq!(store.pull("t", &[1, 2]).unwrap(), expected);
    assert!(fs.list(&wal_dir(tmp.path())).unwrap().len() <= 2);
}
