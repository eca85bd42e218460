//! paramdb integration tests, one binary (link once). Modules are named by scenario.

mod bad_input;
mod common;
mod exactly_once;
mod fault_crash;
mod log_recovery;
mod model;
mod poison;
mod process_crash;
mod tables;
