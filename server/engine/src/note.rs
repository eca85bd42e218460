//! Notes: opaque bytes that a layer above the engine logs as records of their own. A note
//! changes no row. The store keeps the last one with its LSN, through checkpoints (in the
//! meta column family) and crashes (replay finds it in the log).
//!
//! A replicated log uses them: every entry it applies becomes exactly one record, a write or a
//! note (for an entry that changes no row, such as a membership change or a refused write), so
//! the store's LSN names the last entry applied, and the last note holds the membership.

use crate::error::{InputError, PushError, StorageError};
use crate::options::SyncPolicy;
use crate::store::Core;
use crate::wal::format::MAX_NOTE;
use crate::wal::Body;

impl Core {
    pub(crate) fn append_note(&self, note: &[u8]) -> Result<u64, PushError> {
        self.check_writable("log a note")?;
        if note.len() > MAX_NOTE {
            return Err(InputError::RequestTooLarge {
                bytes: note.len() as u64,
                limit: MAX_NOTE as u64,
            }
            .into());
        }
        self.poison.check()?;
        let mut log = self.log.sequencer();
        self.poison.check()?;
        let lsn = match log.append((0, 0, 0), 0, 0, self.opts.clock.now(), Body::Note(note)) {
            Ok(done) => {
                self.time
                    .fetch_max(done.time, std::sync::atomic::Ordering::Relaxed);
                *self.note.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((done.lsn, note.to_vec()));
                done.lsn
            }
            Err(e) => {
                drop(log);
                self.poison(format!("writing the gradient log failed: {e}"));
                return Err(StorageError::io("writing the gradient log", e).into());
            }
        };
        drop(log);
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        Ok(lsn)
    }

    pub(crate) fn last_note(&self) -> Option<(u64, Vec<u8>)> {
        self.note.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::{ClientId, Store, StoreOptions, TableSpec};

    fn opts() -> StoreOptions {
        StoreOptions {
            background: false,
            cache_bytes: 0,
            ..Default::default()
        }
    }

    #[test]
    fn the_last_note_survives_crashes_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TableSpec::new("t", 2);
        {
            let s = Store::open(dir.path(), opts()).unwrap();
            s.create_table(spec).unwrap();
            assert_eq!(s.last_note(), None);
            assert_eq!(s.append_note(b"first").unwrap(), 1);
            s.push("t", ClientId::ANONYMOUS, 0, &[7], &[1.0, 2.0])
                .unwrap();
            assert_eq!(s.append_note(b"second").unwrap(), 3);
            s.push("t", ClientId::ANONYMOUS, 0, &[7], &[1.0, 2.0])
                .unwrap();
            assert_eq!(s.last_lsn(), 4);
            s.crash();
        }
        {
            let s = Store::open(dir.path(), opts()).unwrap();
            assert_eq!(s.last_lsn(), 4);
            assert_eq!(s.last_note(), Some((3, b"second".to_vec())));
            assert_eq!(s.pull("t", &[7]).unwrap(), vec![2.0, 4.0]);
            s.checkpoint().unwrap();
            s.push("t", ClientId::ANONYMOUS, 0, &[8], &[1.0, 1.0])
                .unwrap();
            s.crash();
        }
        let s = Store::open(dir.path(), opts()).unwrap();
        assert_eq!(s.last_lsn(), 5);
        assert_eq!(s.last_note(), Some((3, b"second".to_vec())));
        let big = vec![0u8; crate::wal::format::MAX_NOTE + 1];
        assert!(s.append_note(&big).is_err());
        assert_eq!(s.last_lsn(), 5);
    }
}
