//! The classic parameter-server example as a standalone program: a linear model trained by
//! asynchronous (or bulk-synchronous, or bounded-staleness) workers against embedded shards,
//! or a running cluster with `--cluster`. The same job is `paramdb train linreg`, which also
//! runs its workers as separate processes against a cluster.
//!
//! `cargo run --release -p paramdb-trainer --example linear_regression -- [--workers 2]
//!  [--steps 1000] [--mode async|bsp|ssp] [--staleness 2] [--cluster FILE]`

use std::path::PathBuf;

use clap::Parser;
use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, StoreOptions};
use paramdb_trainer::linreg::{self, Config, Mode, Step};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// async, bsp or ssp.
    #[arg(long, default_value = "async")]
    mode: String,
    #[arg(long, default_value_t = 2)]
    staleness: u64,
    /// A running cluster; without it, two embedded shards in a temporary directory.
    #[arg(long)]
    cluster: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = match args.mode.as_str() {
        "async" => Mode::Async,
        "bsp" => Mode::Bsp,
        "ssp" => Mode::Ssp(args.staleness),
        m => anyhow::bail!("--mode {m:?}: expected async, bsp or ssp"),
    };
    let tmp = tempfile::tempdir()?;
    let client = match &args.cluster {
        Some(f) => BlockingClient::connect(ClusterMap::load(f)?, ClientOptions::default())?,
        None => BlockingClient::open_embedded(
            tmp.path(),
            2,
            StoreOptions::default(),
            ClientOptions::default(),
        )?,
    };
    let cfg = Config {
        workers: args.workers,
        steps: args.steps,
        mode,
        ..Config::default()
    };
    let show = |s: &Step| println!("worker {} step {} loss {:.5}", s.worker, s.step, s.loss);
    linreg::run_threads(&client, &cfg, &show)?;
    let p = linreg::params(&client, &cfg.model)?;
    println!(
        "final max |param - truth| = {:.4}",
        linreg::max_error(&p, cfg.seed)
    );
    Ok(())
}
