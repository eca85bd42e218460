//! The one place where an engine error becomes a gRPC status. The engine classifies its errors
//! (`Classify::code`, in gRPC's canonical codes); this maps the code one to one and renders the
//! error with its causes. Messages quote user strings cut short, so a status always fits in
//! gRPC's metadata.

use paramdb_engine::{chain, Classify};
use paramdb_types::Code;
use tonic::Status;

/// tonic's code for one of ours (the numbers are the same).
pub fn code_to_tonic(c: Code) -> tonic::Code {
    tonic::Code::from_i32(c as i32)
}

/// The status for an engine error; failures that are not the caller's are logged.
pub fn to_status<E: Classify + std::error::Error + 'static>(e: E) -> Status {
    if !e.is_bad_input() {
        tracing::error!(error = %chain(&e), "store error");
    }
    Status::new(code_to_tonic(e.code()), chain(&e))
}
