//! The thin async gRPC layer over the synchronous engine: decode, validate what only the wire
//! knows (packing, key range, limits), run the engine call on a blocking thread, encode.
//!
//! - `service`: the `Paramdb` service: its state, the checks every call shares, and the trait
//!   implementation, which hands each method to its handler in `handlers/` (one file per
//!   group of calls, as mini-redis keeps one per command).
//! - `status`: the one place an engine error becomes a `tonic::Status`.
//! - `serve`: builds the server (health, reflection, limits, TLS) on a caller-owned listener
//!   and shutdown signal, opens the store while reporting NOT_SERVING, and on shutdown gives
//!   in-flight calls a grace period, cancels what is left, and checkpoints.
//! - `auth`: bearer tokens with read or write access.
//! - `metrics`: Prometheus text on its own port, and the per-method tower layer.
//! - `replication`: a shard that is one replica of a group: raft's messages between the
//!   group's servers, its status, and leader hints for clients.

pub mod auth;
mod handlers;
pub mod metrics;
pub mod replication;
pub mod serve;
pub mod service;
pub mod status;

pub use replication::ReplicationConfig;
pub use serve::{serve, serve_with_metrics, ServeConfig, ServeError};
pub use service::Limits;
