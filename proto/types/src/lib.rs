//! The values paramdb's contract carries, with no I/O and no dependencies: keys and key ranges,
//! client ids, table definitions and their text forms (`adagrad(0.1,1e-8,0.1)`), the status
//! codes errors are classified by, and the reports a shard gives about itself.
//!
//! The engine speaks these types, the gRPC layer maps them to and from protobuf, and the
//! client returns them, so an in-process shard hands its answers over without any conversion
//! and a gRPC-only client needs neither the engine nor RocksDB.
//!
//! **Architecture Invariant:** this crate depends on nothing of paramdb's and nothing that
//! does I/O; every other paramdb crate may depend on it.

mod backup;
mod code;
mod key;
mod lifecycle;
mod report;
mod spec;
mod text;
mod values;

pub use backup::{ClientWindow, FenceReport, ShardBackup};
pub use code::Code;
pub use key::{ClientId, Gone, Key, KeyRange, PushAck};
pub use lifecycle::{parse_duration_secs, Lifecycle, MAX_ADMIT_AFTER, MAX_TTL_SECS};
pub use report::{
    CacheStats, LifecycleCounts, LogRecord, Problem, ProblemArea, ShardReport, StoreStats,
    TableReport, VerifyReport,
};
pub use spec::{Initializer, SpecError, TableSpec, UpdateRule, MAX_DIM, MAX_NAME_LEN};
pub use text::quote;
pub use values::first_non_finite;
