//! The `paramdb` command line: the README's main job (`demo`: word2vec on embedded shards),
//! training, evaluation and export, the shard server, and the crash demo.

mod crash_demo;
mod demo;
mod export;
mod serve;
mod target;
mod train;

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
    /// Train word2vec on a generated corpus against two embedded shards, check the planted
    /// structure was learned, and export the vectors.
    Demo(demo::DemoArgs),
    /// Train a model against embedded shards (default) or a cluster.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Evaluate word vectors (a stored model or a word2vec file).
    #[command(subcommand)]
    Eval(train::EvalCommand),
    /// The nearest words to a word.
    Neighbours(train::NeighboursArgs),
    /// Export a table (word2vec text/binary, npy, safetensors, tsv), streaming.
    Export(export::ExportArgs),
    /// Create a table in an embedded shard, push from a child process, SIGKILL it several
    /// times, recover, and check every acknowledged push was applied exactly once.
    CrashDemo(crash_demo::DemoArgs),
    /// Serve one shard of a cluster over gRPC (health checking and reflection included).
    Serve(serve::ServeArgs),
    /// The child process of `crash-demo` (pushes until killed).
    #[command(hide = true)]
    DemoPusher {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        start_seq: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// word2vec (skip-gram or CBOW, negative sampling) with asynchronous SGD; resumable.
    Word2vec(train::Word2VecArgs),
    /// The classic ps/worker example: linear regression, workers pushing gradients, SGD on
    /// the servers; async, bulk-synchronous or bounded-staleness.
    Linreg(train::LinregArgs),
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
        Command::Train(TrainCommand::Word2vec(args)) => train::word2vec(args),
        Command::Train(TrainCommand::Linreg(args)) => train::linreg(args),
        Command::Eval(cmd) => train::eval(cmd),
        Command::Neighbours(args) => train::neighbours(args),
        Command::Export(args) => export::run(args),
        Command::CrashDemo(args) => crash_demo::run(args),
        Command::Serve(args) => serve::run(args),
        Command::DemoPusher {
            data_dir,
            start_seq,
        } => crash_demo::pusher(&data_dir, start_seq),
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paramdb: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
