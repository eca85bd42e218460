//! paramdb's shard store: parameter rows in RocksDB behind a write-ahead gradient log, with
//! server-side update rules and exact crash recovery. Synchronous and free of any RPC types;
//! the gRPC layer sits on top.
//!
//! Map: `store` (the `Store` API and its invariants), `wal` (the gradient log), `rocks`
//! (RocksDB), `row` (row format and update rules), `table` (table definitions), `dedup`
//! (exactly-once windows), `scan` (range streaming), `init` (deterministic initializers).

pub mod cache;
pub mod dedup;
pub mod error;
pub mod init;
pub mod inspect;
mod le;
pub mod options;
pub mod process;
mod rocks;
pub mod row;
pub mod scan;
pub mod store;
pub mod table;
pub mod types;
pub mod verify;
pub mod wal;

pub use error::{Result, StoreError};
pub use inspect::{ShardReport, TableReport};
pub use options::{StoreOptions, SyncPolicy};
pub use scan::RangeScan;
pub use store::{CheckpointInfo, Store, StoreStats, TableInfo, STORE_FORMAT_VERSION};
pub use table::{Initializer, TableSpec, UpdateRule};
pub use types::{ClientId, Key, KeyRange, PushAck};
pub use wal::{RecoveryMode, RecoveryReport};
pub mod rpc;
