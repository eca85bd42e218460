//! Injected RocksDB failures, for the tests that check what the store does when RocksDB fails
//! under it: a failed read of rows, a failed checkpoint commit. One set of switches per store,
//! so that tests running side by side in one process do not see each other's faults. Only the
//! `fault-injection` feature (and the engine's own tests) can turn them on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::StorageError;

#[derive(Debug, Default)]
pub struct RocksFaults {
    fail_reads: AtomicBool,
    fail_commits: AtomicBool,
}

impl RocksFaults {
    /// Switches that stay off.
    pub(crate) fn none() -> Arc<RocksFaults> {
        Arc::new(RocksFaults::default())
    }

    /// Every read of rows (multi-get) fails while `on`.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_reads(&self, on: bool) {
        self.fail_reads.store(on, Ordering::SeqCst);
    }

    /// Every commit (checkpoint batch, catalog change) fails while `on`.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_commits(&self, on: bool) {
        self.fail_commits.store(on, Ordering::SeqCst);
    }

    pub(crate) fn check_read(&self) -> Result<(), StorageError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(StorageError::Injected {
                what: "rocksdb read of rows",
            });
        }
        Ok(())
    }

    pub(crate) fn check_commit(&self) -> Result<(), StorageError> {
        if self.fail_commits.load(Ordering::Relaxed) {
            return Err(StorageError::Injected {
                what: "rocksdb commit",
            });
        }
        Ok(())
    }
}
