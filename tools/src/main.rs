//! The `paramdb` command line. For now: `demo`, the README's main job, which shows the shard
//! store's promise end to end (push, SIGKILL, recover, verify exactly-once, pull).

mod demo;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "paramdb",
    version,
    about = "paramdb: a sharded parameter database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a table in an embedded shard, push from a child process, SIGKILL it several
    /// times, recover, and check every acknowledged push was applied exactly once.
    Demo(demo::DemoArgs),
    /// Serve one shard of a cluster over gRPC (health checking and reflection included).
    Serve(serve::ServeArgs),
    /// The child process of `demo` (pushes until killed).
    #[command(hide = true)]
    DemoPusher {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        start_seq: u64,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::DemoPusher {
            data_dir,
            start_seq,
        } => demo::pusher(&data_dir, start_seq),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paramdb: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
