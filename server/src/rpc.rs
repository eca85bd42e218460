//! The thin async gRPC layer over the synchronous store: decode, validate what only the wire
//! knows (packing, key range, limits), run the store call on a blocking thread, encode.
//! `status::to_status` is the one place a store error becomes a `tonic::Status`.
//!
//! - `service`: the `Paramdb` service implementation.
//! - `status`: store errors → gRPC status codes.
//! - `serve`: builds the server (health, reflection, limits) on a caller-owned listener and
//!   shutdown signal, opens the store while reporting NOT_SERVING, and checkpoints on shutdown.

pub mod auth;
pub mod metrics;
pub mod serve;
pub mod service;
pub mod status;

pub use serve::{serve, serve_with_metrics, ServeConfig, ServeError};
pub use service::Limits;
