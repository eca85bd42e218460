//! What a shard reports about itself: counters (`StoreStats`), the inspect report
//! (`ShardReport`), what `verify` found (`VerifyReport`) and the log's records (`LogRecord`).
//! Plain data: the engine fills them in, the wire carries them, the client hands them out.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Hot-row cache counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Budget of the whole store, in bytes.
    pub budget_bytes: u64,
    /// Bytes of slots holding a row.
    pub resident_bytes: u64,
    pub resident_rows: u64,
    /// Lookups that found their row in the cache / that did not.
    pub hits: u64,
    pub misses: u64,
    /// Rows admitted, and rows a full cache declined (first miss of a key).
    pub admitted: u64,
    pub declined: u64,
    pub evictions: u64,
    /// Rows reused from the cache file at open (a warm restart).
    pub warm_rows: u64,
}

impl CacheStats {
    /// Hits over lookups (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

/// A store's counters and positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub tables: usize,
    pub pushes: u64,
    pub duplicate_pushes: u64,
    pub rows_pushed: u64,
    /// Deletes applied (of keys or of a range), retries not counted.
    pub deletes: u64,
    /// Lifecycle counts over every table (see `LifecycleCounts`).
    pub lifecycle: LifecycleCounts,
    pub pulls: u64,
    pub rows_pulled: u64,
    pub dirty_rows: usize,
    /// Bytes the rows changed since the last checkpoint hold.
    pub dirty_bytes: u64,
    pub log_segments: usize,
    pub log_bytes_since_checkpoint: u64,
    pub last_lsn: u64,
    pub durable_lsn: u64,
    pub checkpoint_lsn: u64,
    pub checkpoints: u64,
    pub fsyncs: u64,
    /// Log bytes written since the store was opened.
    pub log_bytes_written: u64,
    /// Time since the last checkpoint (or since the store was opened).
    pub checkpoint_age: Duration,
    /// Why the store refuses writes, if it does.
    pub poisoned: Option<String>,
    pub cache: CacheStats,
}

/// One shard, as `inspect` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardReport {
    pub dir: PathBuf,
    pub read_only: bool,
    pub store_format: u32,
    /// Highest format version among the log segments' headers (0 when there are none).
    pub log_format: u32,
    pub row_format: u32,
    pub cache_format: u32,
    /// Every record up to this LSN is in RocksDB.
    pub checkpoint_lsn: u64,
    pub last_lsn: u64,
    pub log_segments: u64,
    /// Bytes of the log's segment files on disk.
    pub log_bytes: u64,
    /// Bytes of every file under `rocksdb/`.
    pub rocksdb_bytes: u64,
    /// Disk blocks the hot-row cache files occupy (they are sparse).
    pub cache_file_bytes: u64,
    /// Rows changed since the last checkpoint (in the log, not yet in RocksDB).
    pub dirty_rows: u64,
    /// Counters of this process's cache (zero for a read-only open, which has none).
    pub cache: CacheStats,
    pub tables: Vec<TableReport>,
}

/// One table of a shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableReport {
    pub name: String,
    pub id: u32,
    pub dim: u32,
    /// The update rule, as `TableSpec` prints it (`adagrad(0.1,1e-8,0.1)`).
    pub rule: String,
    /// f32s stored per row: weights plus optimizer state.
    pub floats_per_row: u32,
    /// Rows stored (pushed at least once): exact when `rows_exact`, else RocksDB's estimate
    /// plus the rows changed since the checkpoint.
    pub rows: u64,
    pub rows_exact: bool,
    pub sst_files: u64,
    pub sst_bytes: u64,
    pub dirty_rows: u64,
    /// Smallest and largest stored key.
    pub key_range: Option<(u64, u64)>,
    /// The table's policies, as `Lifecycle` prints them (`none`, `ttl=7d,admit_after=2`).
    pub lifecycle: String,
    /// What the policies did.
    pub lifecycle_counts: LifecycleCounts,
}

/// What a store's lifecycle policies did over its tables' lives (saved by checkpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleCounts {
    /// Keys that got a stored row by reaching `admit_after` pushes.
    pub admitted: u64,
    /// Row updates counted by admission and not stored (the key had too few pushes).
    pub unadmitted: u64,
    /// Rows dropped because their TTL passed: by a push finding one, by a checkpoint, or by
    /// RocksDB's compaction.
    pub expired: u64,
    /// Rows evicted to keep a table within `max_rows`.
    pub evicted: u64,
}

impl LifecycleCounts {
    pub fn add(&mut self, o: &LifecycleCounts) {
        self.admitted += o.admitted;
        self.unadmitted += o.unadmitted;
        self.expired += o.expired;
        self.evicted += o.evicted;
    }
}

impl TableReport {
    /// Bytes on disk per weight (optimizer state and keys included), once RocksDB has rows.
    pub fn bytes_per_parameter(&self) -> Option<f64> {
        let params = self.rows * self.dim as u64;
        (self.sst_bytes > 0 && params > 0).then(|| self.sst_bytes as f64 / params as f64)
    }
}

/// Which part of a shard's files a problem is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemArea {
    Log,
    Rocksdb,
    Catalog,
    Meta,
}

impl ProblemArea {
    pub fn name(self) -> &'static str {
        match self {
            ProblemArea::Log => "log",
            ProblemArea::Rocksdb => "rocksdb",
            ProblemArea::Catalog => "catalog",
            ProblemArea::Meta => "meta",
        }
    }

    /// The area `name` names (`None` for a name this build does not know).
    pub fn from_name(name: &str) -> Option<ProblemArea> {
        [
            ProblemArea::Log,
            ProblemArea::Rocksdb,
            ProblemArea::Catalog,
            ProblemArea::Meta,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// Something wrong in a shard's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub area: ProblemArea,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.area.name(), self.detail)
    }
}

/// What `verify` checked and found in a shard's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub checkpoint_lsn: Option<u64>,
    pub segments: u64,
    pub records: u64,
    pub log_bytes: u64,
    pub tables: u64,
    pub rows: u64,
    pub sst_files: u64,
    /// Facts worth knowing that are not damage (a torn tail a crash left, which recovery
    /// cuts; files removed by a running server's checkpoint while verifying).
    pub notes: Vec<String>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One record of a shard's log, without its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub segment: u64,
    pub offset: u64,
    pub lsn: u64,
    /// `keys` (a push to a key list), `range` (a push to a contiguous block), `delete-keys`
    /// or `delete-range`.
    pub kind: &'static str,
    pub client: u64,
    pub seq: u64,
    pub table: u32,
    pub dim: u32,
    pub rows: u32,
    pub first_key: Option<u64>,
    /// Payload bytes (keys and values).
    pub bytes: u64,
}
