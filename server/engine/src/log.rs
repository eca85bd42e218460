//! The log component: the gradient log's writer behind the *sequencer* lock, and group commit.
//!
//! The sequencer orders writes. A push holds it from its last checks through its append to its
//! apply, so rows change in LSN order; a checkpoint holds it to seal a segment and freeze the
//! dirty layer at one LSN. Pulls never take it. Appends write into the page cache (no sync);
//! durability is `wait_durable`, which syncs without holding the sequencer (see
//! `group_commit`). Sealing a segment on rotation does sync under the sequencer, which delays
//! other pushes but no pull.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::group_commit::{GroupCommit, WaitError};
use crate::wal::writer::LogWriter;

#[derive(Debug)]
pub(crate) struct Log {
    writer: Mutex<LogWriter>,
    commit: GroupCommit,
    dir: PathBuf,
    fsyncs: AtomicU64,
}

/// The writer, held under the sequencer.
pub(crate) type Sequencer<'a> = MutexGuard<'a, LogWriter>;

impl Log {
    /// The log in `dir`, continuing `writer`; everything it holds so far is durable (recovery
    /// read it from disk).
    pub(crate) fn new(writer: LogWriter, dir: &Path) -> Log {
        let durable = writer.last_lsn();
        Log {
            writer: Mutex::new(writer),
            commit: GroupCommit::new(durable),
            dir: dir.to_path_buf(),
            fsyncs: AtomicU64::new(0),
        }
    }

    /// Takes the sequencer. A panic while it was held leaves the writer usable: the segment's
    /// tail is whatever `write(2)` got, which recovery handles like a crash's.
    pub(crate) fn sequencer(&self) -> Sequencer<'_> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn last_lsn(&self) -> u64 {
        self.sequencer().last_lsn()
    }

    pub(crate) fn durable_lsn(&self) -> u64 {
        self.commit.durable_lsn()
    }

    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Records that a sealed segment made the log durable up to `lsn`.
    pub(crate) fn mark_durable(&self, lsn: u64) {
        self.commit.mark_durable(lsn);
    }

    /// Wakes every thread waiting for durability (the store was poisoned).
    pub(crate) fn wake_waiters(&self) {
        self.commit.wake_all();
    }

    /// Returns once every record up to `lsn` is durable, leading an fsync of the current
    /// segment if none is running (older segments were synced when they were sealed).
    pub(crate) fn wait_durable(
        &self,
        lsn: u64,
        poisoned: impl Fn() -> bool,
    ) -> Result<(), WaitError<std::io::Error>> {
        self.commit.wait_durable(lsn, poisoned, || {
            let (file, upto) = {
                let w = self.sequencer();
                (w.file(), w.last_lsn())
            };
            let started = Instant::now();
            let r = file.sync();
            // A no-op unless the binary installed a recorder (`paramdb serve --metrics-listen`).
            metrics::histogram!("paramdb_fsync_duration_seconds").record(started.elapsed());
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            r.map(|()| upto)
        })
    }

    /// The records with LSN ≥ `from` (at most `limit`) and the torn or damaged segments,
    /// read from the files with plain reads.
    pub(crate) fn read_from(
        &self,
        from: u64,
        limit: usize,
    ) -> std::io::Result<(Vec<paramdb_types::LogRecord>, Vec<String>)> {
        crate::wal::dump::dump(&self.dir, from, limit)
    }
}
