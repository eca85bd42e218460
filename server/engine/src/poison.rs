//! Poisoning: after a failed log write, log fsync, RocksDB read on the write path or checkpoint,
//! the store refuses writes until it is reopened, because it can no longer vouch that what it
//! would acknowledge is durable (fjall's `poison_dart.rs` is the model). Reads go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::error::StorageError;

#[derive(Debug, Default)]
pub(crate) struct Poison {
    set: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Poison {
    /// Poisons the store; the first reason is the one kept. Returns true for the first call.
    pub(crate) fn set(&self, reason: String) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let first = r.is_none();
        if first {
            tracing::error!(%reason, "store poisoned: refusing writes until reopened");
            *r = Some(reason);
        }
        self.set.store(true, Ordering::SeqCst);
        first
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    pub(crate) fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Err(Poisoned)` once poisoned.
    pub(crate) fn check(&self) -> Result<(), StorageError> {
        if self.is_set() {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    pub(crate) fn error(&self) -> StorageError {
        StorageError::Poisoned {
            reason: self.reason().unwrap_or_default(),
        }
    }
}
