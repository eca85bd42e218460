//! The store's error type: one enum, each variant carrying the facts needed to act on it.

use std::io;
use std::path::PathBuf;

/// Everything the store can refuse or fail with. Variants up to `SequenceTooOld` are the
/// caller's fault (bad input) and leave the store unchanged; the rest are about the data on
/// disk or the machine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unknown table {name:?}")]
    UnknownTable { name: String },
    #[error("table {name:?} already exists")]
    TableExists { name: String },
    #[error("invalid table definition: {reason}")]
    InvalidTableSpec { reason: String },
    #[error("table {table:?} has dim {dim}: {values} values do not make {keys} rows of {dim}")]
    DimensionMismatch {
        table: String,
        dim: u32,
        keys: usize,
        values: usize,
    },
    #[error("value {index} of key {key} in a push to table {table:?} is {value} (NaN and infinities are refused)")]
    NonFinite {
        table: String,
        key: u64,
        index: usize,
        value: f32,
    },
    #[error("empty request to table {table:?}: no keys")]
    EmptyRequest { table: String },
    #[error("key {key} appears more than once in one push to table {table:?} (sum duplicates on the client)")]
    DuplicateKey { table: String, key: u64 },
    #[error("key range starting at {start} with {count} rows runs past the end of the key space")]
    KeyRangeOverflow { start: u64, count: u64 },
    #[error("request of {bytes} bytes is over the limit of {limit}")]
    RequestTooLarge { bytes: u64, limit: u64 },
    #[error("client {client} sent sequence number 0; sequence numbers start at 1")]
    InvalidSequence { client: u64 },
    #[error("client {client} sequence {seq} is older than the dedup window (oldest judged: {oldest}); its outcome cannot be known")]
    SequenceTooOld { client: u64, seq: u64, oldest: u64 },

    #[error("store is poisoned and refuses writes: {reason}")]
    Poisoned { reason: String },
    #[error("log segment {} offset {offset}: checksum mismatch (expected {expected:#010x}, actual {actual:#010x})", segment.display())]
    ChecksumMismatch {
        segment: PathBuf,
        offset: u64,
        expected: u32,
        actual: u32,
    },
    #[error("log segment {} offset {offset}: {reason}", segment.display())]
    CorruptLog {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("log is missing records {expected}..{found} (checkpoint or segment {} does not continue the sequence)", segment.display())]
    LogGap {
        segment: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{what} has format version {found}; this build reads up to {supported}")]
    UnsupportedFormat {
        what: String,
        found: u32,
        supported: u32,
    },
    #[error("stored row {key} of table {table:?} is unreadable: {reason}")]
    CorruptRow {
        table: String,
        key: u64,
        reason: String,
    },
    #[error("stored metadata is unreadable: {reason}")]
    CorruptMeta { reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a paramdb shard directory: {reason}", path.display())]
    NotAStore { path: PathBuf, reason: String },
    #[error("cannot {op}: the store is open read-only")]
    ReadOnly { op: &'static str },
    #[error("rocksdb {op}: {message}")]
    Rocks { op: &'static str, message: String },
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn rocks(op: &'static str, e: rocksdb::Error) -> Self {
        StoreError::Rocks {
            op,
            message: e.into_string(),
        }
    }

    /// A log gap or a vanished file: what a read-only open sees when a running server's
    /// checkpoint deletes segments under it.
    pub(crate) fn is_raced_by_checkpoint(&self) -> bool {
        match self {
            StoreError::LogGap { .. } => true,
            StoreError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }

    /// True for errors caused by the request itself: the store is unchanged and healthy.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownTable { .. }
                | StoreError::TableExists { .. }
                | StoreError::InvalidTableSpec { .. }
                | StoreError::DimensionMismatch { .. }
                | StoreError::NonFinite { .. }
                | StoreError::EmptyRequest { .. }
                | StoreError::DuplicateKey { .. }
                | StoreError::KeyRangeOverflow { .. }
                | StoreError::RequestTooLarge { .. }
                | StoreError::InvalidSequence { .. }
                | StoreError::SequenceTooOld { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
