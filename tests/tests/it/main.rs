//! paramdb integration tests, one binary (link once). Modules are named by scenario.

mod architecture;
mod bad_input;
mod cluster;
mod common;
mod disk_trouble;
mod embedded_client;
mod exactly_once;
mod fault_crash;
mod grpc;
mod kill_loop;
mod linreg;
mod lm;
mod log_recovery;
mod model;
mod multihost;
mod ops;
mod poison;
mod power_loss;
mod process_crash;
mod python;
mod security;
mod tables;
mod tools;
mod word2vec;
mod word2vec_cli;
