//! paramdb's storage engine: parameter rows in RocksDB behind a write-ahead gradient log, with
//! server-side update rules and exact crash recovery. Synchronous, and free of any RPC type:
//! its `Cargo.toml` has no tokio, tonic or prost, so the compiler keeps that boundary. The gRPC
//! layer (`paramdb-server`) and the in-process client sit on top.
//!
//! Components (see `store` for how they fit):
//! - `log`, with `group_commit`: appends under the sequencer, durability by group commit; the
//!   bytes are `wal`'s (format, file-system trait, writer, reader, recovery);
//! - `state_machine`: the dirty and frozen layers and exactly-once windows, changed only by
//!   applying logged pushes and deletes in LSN order, live or in replay;
//! - `checkpointer`: freeze, write to RocksDB, publish to the cache, purge the log;
//! - `read_path`: dirty, frozen, cache, RocksDB, initializer;
//! - `push` (the life of a push), `delete` (of a delete), `import` (bulk loads), `open`,
//!   `tables`, `scan`, `inspect`, `verify`;
//! - `lifecycle` (expiry, admission and size caps: their semantics and state) and `policies`
//!   (changing them, the eviction pass); `note` (opaque records for a replicated log above);
//!   `gone` (the keys deleted, expired or evicted since
//!   an LSN: the delete journal and how long gone rows stay);
//! - `cache` (the memory-mapped hot-row cache), `rocks` (everything asked of RocksDB), `row`
//!   (row format and update rules), `catalog`, `dedup`, `init`, `poison`, `process`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod backup;
mod cache;
mod catalog;
mod checkpointer;
mod dedup;
mod delete;
pub mod error;
mod fault;
mod fence;
mod gone;
mod group_commit;
mod import;
mod init;
mod inspect;
mod le;
mod lifecycle;
mod log;
mod note;
mod open;
mod options;
mod poison;
mod policies;
pub mod process;
mod push;
mod read_path;
mod rocks;
mod row;
mod scan;
mod state_machine;
mod store;
mod tables;
mod verify;
pub mod wal;

pub use cache::SLOT_OVERHEAD as CACHE_SLOT_OVERHEAD;
pub use catalog::{TableInfo, STORE_FORMAT_VERSION};
pub use checkpointer::CheckpointInfo;
pub use error::{
    chain, BackupError, CheckpointError, Classify, ImportError, InputError, OpenError, PullError,
    PushError, StorageError, TableError,
};
pub use fault::RocksFaults;
pub use import::{Import, ImportInfo};
pub use inspect::table_names;
pub use options::{Clock, StoreOptions, SyncPolicy, DEFAULT_GONE_RETENTION_SECS};
pub use paramdb_types::{
    CacheStats, ClientId, Gone, Initializer, Key, KeyRange, Lifecycle, LifecycleCounts, LogRecord,
    Problem, ProblemArea, PushAck, ShardReport, StoreStats, TableReport, TableSpec, UpdateRule,
    VerifyReport,
};
pub use scan::RangeScan;
pub use store::Store;
pub use verify::verify_dir;
pub use wal::{RecoveryMode, RecoveryReport};

/// Format versions of what the engine writes, for `inspect` and the docs.
pub mod formats {
    pub use crate::cache::CACHE_FORMAT_VERSION;
    pub use crate::catalog::STORE_FORMAT_VERSION;
    pub use crate::row::ROW_FORMAT_VERSION;
    pub use crate::wal::WAL_FORMAT_VERSION;
}

/// The row format and update rules, for benchmarks and tools that reason about bytes.
pub mod rows {
    pub use crate::row::{rule_tag, Row, ROW_HEADER_LEN};
}

/// Deterministic initializers: the value a never-written row pulls.
pub use init::fill as initial_weights;
