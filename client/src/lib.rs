//! paramdb's client: one async API (`Client`) over two transports, gRPC to shard servers and
//! in-process embedded shards, plus a blocking wrapper (`BlockingClient`) for trainer threads.
//!
//! - `routing`: pure key → shard and range → per-shard sub-range splitting (no I/O).
//! - `transport`: one shard behind either transport.
//! - `client`: splitting, parallel fan-out, ordered range streams, retries with the same
//!   sequence number (so a retried push is applied once).
//! - `import`: bulk loads routed to the shards, ingested there as RocksDB table files.
//! - `blocking`: the same API for synchronous callers.
//! - `staleness`: worker clocks for bounded-staleness and bulk-synchronous training.
//!
//! The public API speaks paramdb's own types (`TableSpec`, `KeyRange`, `ShardReport`,
//! `ShardStats`, `Code`, …), never protobuf messages or engine internals. The in-process
//! transport needs the `embedded` feature (on by default); without it the client talks gRPC
//! only and does not link RocksDB.

pub mod blocking;
pub mod client;
mod cut;
pub use cut::Cut;
pub mod error;
pub mod import;
pub mod routing;
pub mod staleness;
pub mod transport;

pub use blocking::{BlockingClient, BlockingClock, BlockingImporter, BlockingRows};
pub use client::{embedded_shard_dirs, Client, ClientOptions, MaxLag, PushResult, RowStream};
pub use error::ClientError;
pub use import::Importer;
#[cfg(feature = "embedded")]
pub use paramdb_engine::{Store, StoreOptions, SyncPolicy};
pub use paramdb_proto::cluster::ClusterMap;
pub use paramdb_types::parse_duration_secs;
pub use paramdb_types::{
    CacheStats, ClientWindow, Code, FenceReport, Gone, Initializer, KeyRange, Lifecycle,
    LifecycleCounts, LogRecord, Problem, ProblemArea, ShardBackup, ShardReport, StoreStats,
    TableReport, TableSpec, UpdateRule, VerifyReport,
};
pub use staleness::Clock;
pub use transport::{BackupRequest, ImportResult, LogDump, ReplicaInfo, RowBlock, ShardStats};
