//! One file per group of calls, each handler decoding its request, making the checks only the
//! wire can make, calling the engine (on a blocking thread when it does I/O), and encoding.

pub(super) mod admin;
pub(super) mod backup;
pub(super) mod pull;
pub(super) mod push;
pub(super) mod range;
pub(super) mod tables;
