//! Replica groups: a key range's writes ordered by a replicated log, so the range survives the
//! loss of a machine and training goes on through a failover.
//!
//! Leadership, terms, membership and the log's agreement come from openraft (the consensus
//! library; nothing of the protocol is written here). This crate supplies what openraft asks
//! of an application, on top of the synchronous engine:
//!
//! - `log_store`: the replicated log on disk (crc-framed segments, the vote), durable under
//!   the sync policy before an append is reported;
//! - `state_machine`: the engine store, to which committed entries are applied in order, one
//!   record per entry (writes, or notes for entries that change no row), so the store's LSN
//!   is the last entry applied; snapshots are engine backups (`archive` packs them);
//! - `network`: raft's messages over a `Connector` the layer above supplies (gRPC in the
//!   server), bincode-encoded;
//! - `command`: the writes a group orders, and applying one to the store;
//! - `replica`: a running replica: open, bootstrap, write, read barrier, membership changes,
//!   status.
//!
//! The exactly-once windows are part of the store, so they are replicated state: a push
//! retried on a new leader with its sequence number is applied once.

// openraft's traits fix the error type (`StorageError`, large); the helpers that build it
// return it as they are.
#![allow(clippy::result_large_err)]

mod archive;
pub mod command;
mod log_store;
pub mod network;
mod replica;
mod state_machine;

pub use command::{Deletion, Keys, Op, Origin, Outcome, Policies, Refusal, Spec};
pub use network::{Connector, Rpc};
pub use replica::{MaxLag, Replica, ReplicaError, ReplicaOptions, Status, WriteError};
pub use state_machine::OpenStoreError;

/// A replica's id within its group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The raft types of a replica group: commands in, outcomes out, snapshots as files.
    pub TypeConfig:
        D = command::Command,
        R = command::Outcome,
        SnapshotData = tokio::fs::File,
);
