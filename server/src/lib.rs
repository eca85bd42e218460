//! paramdb's shard server: the thin async gRPC layer (`rpc`) over the synchronous storage
//! engine (`paramdb-engine`). It decodes, checks what only the wire can check, runs the engine
//! call on a blocking thread, and encodes; `rpc::status` is the one place an engine error
//! becomes a `tonic::Status`.
//!
//! **Architecture Invariant:** this crate holds no storage logic, and the engine knows nothing
//! of it.

pub mod rpc;

pub use rpc::{serve, serve_with_metrics, Limits, ServeConfig, ServeError};
