//! The engine's errors, split by operation as redb's are: opening a store (`OpenError`),
//! pushing (`PushError`), pulling and scanning (`PullError`), changing tables (`TableError`),
//! and checkpoints and other maintenance (`CheckpointError`). Each wraps the two shared causes,
//! bad input (`InputError`: the store is unchanged and healthy) and trouble with the machine or
//! the files (`StorageError`), and each keeps its own cause, so `source()` reaches the
//! `io::Error` or `rocksdb::Error` underneath. Messages leave the cause to `source()`; `chain`
//! renders an error with its causes on one line.
//!
//! Every error says what kind of failure it is (`Classify::code`, in gRPC's canonical codes),
//! so that the gRPC layer and the in-process client report it alike without the engine knowing
//! gRPC.

use std::error::Error;
use std::io;
use std::path::PathBuf;

use paramdb_types::{quote, Code, SpecError};

/// What kind of failure an error is.
pub trait Classify {
    fn code(&self) -> Code;

    /// Caused by the request itself: the store is unchanged and healthy.
    fn is_bad_input(&self) -> bool;
}

/// `e` and its causes, `: `-separated, skipping a cause whose text the message already holds.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// A request the store refuses as it stands. Nothing was logged or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("unknown table {}", quote(name))]
    UnknownTable { name: String },
    #[error("table {} already exists", quote(name))]
    TableExists { name: String },
    #[error(transparent)]
    InvalidTableSpec(#[from] SpecError),
    #[error(
        "table {} has dim {dim}: {values} values do not make {keys} rows of {dim}",
        quote(table)
    )]
    DimensionMismatch {
        table: String,
        dim: u32,
        keys: usize,
        values: usize,
    },
    #[error("value {index} of key {key} in a push to table {} is {value} (NaN and infinities are refused)", quote(table))]
    NonFinite {
        table: String,
        key: u64,
        index: usize,
        value: f32,
    },
    #[error("empty request to table {}: no keys", quote(table))]
    EmptyRequest { table: String },
    #[error("key {key} appears more than once in one push to table {} (duplicate keys are refused: sum them first)", quote(table))]
    DuplicateKey { table: String, key: u64 },
    #[error(
        "empty key range [{start}, {end}) for table {}: nothing to delete",
        quote(table)
    )]
    EmptyRange { table: String, start: u64, end: u64 },
    #[error(
        "table {} kept changing during {what}: retry when its writes pause",
        quote(table)
    )]
    Busy { table: String, what: &'static str },
    #[error("key range starting at {start} with {count} rows runs past the end of the key space")]
    KeyRangeOverflow { start: u64, count: u64 },
    #[error("request of {bytes} bytes is over the limit of {limit}")]
    RequestTooLarge { bytes: u64, limit: u64 },
    #[error("client {client} sent sequence number 0; sequence numbers start at 1")]
    InvalidSequence { client: u64 },
    #[error("client {client} sequence {seq} is older than the dedup window (oldest judged: {oldest}); its outcome cannot be known")]
    SequenceTooOld { client: u64, seq: u64, oldest: u64 },
    #[error("cannot {op}: the store is open read-only")]
    ReadOnly { op: &'static str },
    #[error("backup target {} already exists", quote(path))]
    BackupTargetExists { path: String },
    #[error("another backup into {} is running (its LOCK is held)", quote(path))]
    BackupInProgress { path: String },
    #[error(
        "cannot restore into {}: it exists and is not an empty directory",
        quote(path)
    )]
    RestoreTargetNotEmpty { path: String },
    #[error("the keys gone since LSN {lsn} are no longer known: this shard lists them for LSNs from {from} on (deleted and expired keys are kept {retention_secs} s, `gone_retention`); take the delta against a backup instead")]
    GoneUntracked {
        lsn: u64,
        from: u64,
        retention_secs: u32,
    },
    #[error("backup fence {fence} is no longer up (lifted, replaced, or out of lease): the cut cannot be trusted; run the backup again")]
    FenceGone { fence: u64 },
}

impl Classify for InputError {
    fn code(&self) -> Code {
        match self {
            InputError::UnknownTable { .. } => Code::NotFound,
            InputError::TableExists { .. } => Code::AlreadyExists,
            InputError::SequenceTooOld { .. } => Code::FailedPrecondition,
            InputError::Busy { .. } => Code::Unavailable,
            InputError::RequestTooLarge { .. } => Code::ResourceExhausted,
            InputError::ReadOnly { .. } => Code::PermissionDenied,
            InputError::BackupTargetExists { .. } | InputError::RestoreTargetNotEmpty { .. } => {
                Code::AlreadyExists
            }
            InputError::BackupInProgress { .. } => Code::Unavailable,
            InputError::FenceGone { .. } => Code::Aborted,
            InputError::GoneUntracked { .. } => Code::FailedPrecondition,
            _ => Code::InvalidArgument,
        }
    }

    fn is_bad_input(&self) -> bool {
        true
    }
}

/// Trouble with the machine or the files: I/O, RocksDB, damaged data, a poisoned store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("rocksdb {op} failed")]
    Rocks {
        op: &'static str,
        #[source]
        source: rocksdb::Error,
    },
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
    #[error("stored row {key} of table {} is unreadable: {reason}", quote(table))]
    CorruptRow {
        table: String,
        key: u64,
        reason: String,
    },
    #[error("stored metadata is unreadable: {reason}")]
    CorruptMeta { reason: String },
    #[error("{} is not a paramdb shard directory: {reason}", path.display())]
    NotAStore { path: PathBuf, reason: String },
    #[error("{} is not a usable backup: {reason}", path.display())]
    NotABackup { path: PathBuf, reason: String },
    /// A fault a test injected (see `fault::RocksFaults`).
    #[error("injected fault: {what}")]
    Injected { what: &'static str },
}

impl StorageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn rocks(op: &'static str, source: rocksdb::Error) -> Self {
        StorageError::Rocks { op, source }
    }

    /// A log gap or a vanished file: what a read-only open sees when a running server's
    /// checkpoint deletes segments under it.
    pub(crate) fn is_raced_by_checkpoint(&self) -> bool {
        match self {
            StorageError::LogGap { .. } => true,
            StorageError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

impl Classify for StorageError {
    fn code(&self) -> Code {
        match self {
            StorageError::Io { .. } | StorageError::Poisoned { .. } => Code::Unavailable,
            StorageError::ChecksumMismatch { .. }
            | StorageError::CorruptLog { .. }
            | StorageError::LogGap { .. }
            | StorageError::CorruptRow { .. }
            | StorageError::CorruptMeta { .. } => Code::DataLoss,
            StorageError::NotAStore { .. }
            | StorageError::NotABackup { .. }
            | StorageError::UnsupportedFormat { .. } => Code::FailedPrecondition,
            StorageError::Rocks { .. } | StorageError::Injected { .. } => Code::Internal,
        }
    }

    fn is_bad_input(&self) -> bool {
        false
    }
}

/// Opening a store failed. Nothing on disk was changed (see `store` for the one exception:
/// salvage mode, which moves damaged segments aside).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("{} is in use by another process (its RocksDB lock is held)", path.display())]
    InUse {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// An error of an operation that fails either on bad input or on storage trouble, and
/// `Classify` for it.
macro_rules! operation_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, thiserror::Error)]
        #[non_exhaustive]
        pub enum $name {
            #[error(transparent)]
            Input(#[from] InputError),
            #[error(transparent)]
            Storage(#[from] StorageError),
        }

        impl Classify for $name {
            fn code(&self) -> Code {
                match self {
                    Self::Input(e) => e.code(),
                    Self::Storage(e) => e.code(),
                }
            }

            fn is_bad_input(&self) -> bool {
                matches!(self, Self::Input(_))
            }
        }

        impl $name {
            /// The storage error underneath, if it is one.
            pub fn storage(&self) -> Option<&StorageError> {
                match self {
                    Self::Storage(e) => Some(e),
                    Self::Input(_) => None,
                }
            }
        }
    };
}

operation_error!(
    /// A push was refused or failed. Unless the store is now poisoned, nothing was logged.
    PushError
);
operation_error!(
    /// A pull or a range scan failed. Reads change nothing.
    PullError
);
operation_error!(
    /// Creating, dropping or describing a table failed.
    TableError
);
operation_error!(
    /// A bulk import was refused or failed. Nothing was ingested unless it returned.
    ImportError
);
operation_error!(
    /// A backup or a restore was refused or failed. A failed backup leaves no set that
    /// restore accepts; the store itself is unchanged.
    BackupError
);
operation_error!(
    /// A checkpoint, a sync, a compaction or a clean close failed. A failed checkpoint poisons
    /// the store: the log still holds everything, and the next open replays it.
    CheckpointError
);

impl Classify for OpenError {
    fn code(&self) -> Code {
        match self {
            OpenError::InUse { .. } => Code::FailedPrecondition,
            OpenError::Storage(e) => e.code(),
        }
    }

    fn is_bad_input(&self) -> bool {
        false
    }
}

/// `From<A> for B` between two errors that are both "bad input or storage trouble".
macro_rules! widen {
    ($($from:ident => $to:ident),*) => {$(
        impl From<$from> for $to {
            fn from(e: $from) -> Self {
                match e {
                    $from::Input(e) => Self::Input(e),
                    $from::Storage(e) => Self::Storage(e),
                }
            }
        }
    )*};
}
widen!(
    PullError => PushError,
    TableError => PushError,
    TableError => PullError,
    CheckpointError => PushError,
    CheckpointError => BackupError,
    CheckpointError => TableError,
    PushError => TableError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_stay_reachable_and_chain_renders_them_once() {
        let e = PushError::from(StorageError::io(
            "writing the gradient log",
            io::Error::other("File too large"),
        ));
        assert_eq!(e.code(), Code::Unavailable);
        assert!(!e.is_bad_input());
        assert!(e
            .source()
            .is_some_and(|s| s.to_string() == "File too large"));
        assert_eq!(chain(&e), "writing the gradient log: File too large");
        let bad = PushError::from(InputError::UnknownTable {
            name: "x".repeat(100_000),
        });
        assert_eq!(bad.code(), Code::NotFound);
        assert!(bad.is_bad_input() && chain(&bad).len() < 200);
    }
}
