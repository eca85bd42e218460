//! Shared pieces of paramdb's integration tests and the helper processes they kill: the
//! deterministic push workloads whose results an oracle can compute exactly.

pub mod bench;
pub mod corpus;
pub mod servers;
pub mod workload;
