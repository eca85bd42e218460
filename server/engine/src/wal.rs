//! The write-ahead gradient log: every accepted push is framed here and made durable before it
//! is acknowledged. Segment files under `<data-dir>/wal/`, format in `docs/wal-format.md`.
//!
//! - `format`: byte layout of segment headers, frames and records.
//! - `fs`: the small file-system trait all log I/O goes through (and the real implementation).
//! - `writer`: appends frames, rotates segments, syncs.
//! - `reader`: parses one segment, telling a torn tail from corruption.
//! - `recovery`: lists, validates and replays the segments after a checkpoint.
//! - `dump`: a summary of every record, for `paramdb log dump`.
//! - `fault`: a fault-injecting file system for crash tests.

pub mod dump;
pub mod format;
pub mod fs;
pub mod reader;
pub mod recovery;
pub mod writer;

#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;

pub use format::{Body, Record, RecordKeys, RecordKind, WAL_FORMAT_VERSION};
pub use fs::{LogFile, LogFs, ReadOnlyFs, StdFs, SyncJournalFs};
pub use recovery::{RecoveryMode, RecoveryReport};
