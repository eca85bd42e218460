//! Store configuration: durability policy, checkpoint triggers, sizes and limits.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::wal::RecoveryMode;

/// When an accepted push is acknowledged relative to the log reaching stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before acknowledging; concurrent pushes share one fsync (group commit).
    Sync,
    /// Acknowledge once written; a background thread fsyncs every interval. A crash loses at
    /// most the pushes of the last interval (plus the one being synced).
    Interval(Duration),
    /// Acknowledge once written; fsync only when a segment is sealed or at checkpoints. A
    /// process crash loses nothing (the data is in the page cache); a power cut may.
    None,
}

impl FromStr for SyncPolicy {
    type Err = String;

    /// `sync`, `none`, `interval=<ms>` (also `interval=<n>ms`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "sync" => Ok(SyncPolicy::Sync),
            "none" => Ok(SyncPolicy::None),
            other => {
                let ms = other
                    .strip_prefix("interval=")
                    .map(|v| v.trim_end_matches("ms"))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|&v| v > 0)
                    .ok_or_else(|| {
                        format!("unknown sync policy {other:?} (sync, none, interval=<ms>)")
                    })?;
                Ok(SyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPolicy::Sync => write!(f, "sync"),
            SyncPolicy::None => write!(f, "none"),
            SyncPolicy::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

/// The store's clock, in whole seconds since the Unix epoch: the time of each log record, by
/// which rows expire and are evicted. Tests use a manual one.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    /// Reads the shared value; `set` and `advance` move it.
    Manual(Arc<AtomicU32>),
}

impl Clock {
    pub fn manual(start: u32) -> Clock {
        Clock::Manual(Arc::new(AtomicU32::new(start)))
    }

    pub fn now(&self) -> u32 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Sets a manual clock (no effect on the system clock).
    pub fn set(&self, secs: u32) {
        if let Clock::Manual(t) = self {
            t.store(secs, Ordering::Relaxed);
        }
    }

    /// Moves a manual clock on.
    pub fn advance(&self, secs: u32) {
        if let Clock::Manual(t) = self {
            t.fetch_add(secs, Ordering::Relaxed);
        }
    }
}

/// `StoreOptions::gone_retention_secs` unless told: one day.
pub const DEFAULT_GONE_RETENTION_SECS: u32 = 24 * 3600;

/// Everything `Store::open` can be told.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub sync: SyncPolicy,
    /// Checkpoint once this many log bytes were written since the last one.
    pub checkpoint_log_bytes: u64,
    /// Checkpoint when the last one is older than this and rows changed since.
    pub checkpoint_interval: Option<Duration>,
    /// Checkpoint once the rows changed since the last one hold this many bytes (weights,
    /// optimizer state and row headers); 0 turns the trigger off. This bounds the memory of the
    /// dirty layer: a checkpoint holds it about three times over (frozen rows, the RocksDB
    /// batch, the memtable) while new pushes fill the next, and a push that finds twice the
    /// budget dirty runs the checkpoint itself before it goes on.
    pub checkpoint_dirty_bytes: u64,
    /// A segment is sealed and a new one started past this size.
    pub max_segment_bytes: u64,
    /// RocksDB block cache.
    pub block_cache_bytes: usize,
    /// Budget of the memory-mapped hot-row cache, split between tables; 0 turns it off.
    pub cache_bytes: u64,
    /// Largest push or pull (keys + values) in bytes.
    pub max_request_bytes: u64,
    /// What to do about corruption before the log's tail.
    pub recovery: RecoveryMode,
    /// Run the background thread (interval syncs, checkpoint triggers). Tests that drive
    /// checkpoints by hand turn it off.
    pub background: bool,
    /// The clock records are stamped with.
    pub clock: Clock,
    /// Counters of each admission sketch (one byte each; see `lifecycle`).
    pub admission_counters: usize,
    /// Seconds a row stays on disk after it expired or was evicted (reads treat it as absent
    /// at once), and a delete's key is remembered: a delta export since an LSN can list the
    /// keys gone since, for LSNs from about this long ago (see `gone`). 0 drops at once.
    pub gone_retention_secs: u32,
    /// The store may log writes of its own: the eviction pass that keeps a table within its
    /// `max_rows`. A replicated log that orders every write of the store turns it off, since
    /// a record only one replica logged would set its LSNs apart from the others'.
    pub local_writes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncPolicy::Sync,
            checkpoint_log_bytes: 256 << 20,
            checkpoint_interval: Some(Duration::from_secs(60)),
            checkpoint_dirty_bytes: 512 << 20,
            max_segment_bytes: 64 << 20,
            block_cache_bytes: 256 << 20,
            cache_bytes: 1 << 30,
            max_request_bytes: 256 << 20,
            recovery: RecoveryMode::Strict,
            background: true,
            clock: Clock::System,
            admission_counters: 4 << 20,
            gone_retention_secs: DEFAULT_GONE_RETENTION_SECS,
            local_writes: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policy_parses() {
        assert_eq!("sync".parse::<SyncPolicy>().unwrap(), SyncPolicy::Sync);
        assert_eq!("none".parse::<SyncPolicy>().unwrap(), SyncPolicy::None);
        assert_eq!(
            "interval=10".parse::<SyncPolicy>().unwrap(),
            SyncPolicy::Interval(Duration::from_millis(10))
        );
        assert_eq!(
            "interval=5ms".parse::<SyncPolicy>().unwrap().to_string(),
            "interval=5"
        );
        assert!("interval=0".parse::<SyncPolicy>().is_err());
        assert!("always".parse::<SyncPolicy>().is_err());
    }
}
