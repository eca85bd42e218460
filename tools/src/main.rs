//! The `paramdb` command line: the README's main job (`demo`: word2vec on embedded shards),
//! training, evaluation, the tools that inspect, verify and export stored parameters, the
//! shard server, and the crash demo.

mod backup;
mod cluster_status;
mod crash_demo;
mod demo;
mod export;
mod import;
mod inspect;
mod lm;
mod progress;
mod serve;
mod target;
mod train;
mod verify;
mod word2vec_cli;

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
    /// Log lines on stderr as text or as JSON objects (levels and targets filtered with
    /// RUST_LOG, e.g. `RUST_LOG=paramdb_engine=info`).
    #[arg(long, global = true, env = "PARAMDB_LOG_FORMAT", value_enum)]
    log_format: Option<serve::LogFormat>,
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
    /// word2vec with word2vec.c's command line (`-train FILE -output FILE -size 100 …`) or
    /// fastText's (`skipgram -input FILE -output PREFIX …`); `paramdb word2vec -help` lists
    /// the flags.
    #[command(disable_help_flag = true)]
    Word2vec {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Evaluate word vectors (a stored model or a word2vec file), or a language model.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// The nearest words to a word.
    Neighbours(train::NeighboursArgs),
    /// Export a table (word2vec text/binary, npy, safetensors, tsv), streaming; or an n-gram model as ARPA or in its compact form (`export MODEL --format arpa|kn-compact`)
    Export(export::ExportArgs),
    /// Back up embedded shards, a shard's data directory, or a running cluster (`--cluster`,
    /// a consistent cut) into a target directory: hard links where possible, incremental
    /// against the target's last backup.
    Backup(backup::BackupArgs),
    /// Restore a backup into new directories, and verify them.
    Restore(backup::RestoreArgs),
    /// Import a file in any export format (and GloVe text) as a bulk load: RocksDB table
    /// files ingested by each shard, not pushes through the log.
    Import(import::ImportArgs),
    /// Delete rows by key or a key range (logged, exactly once, like pushes).
    Delete(inspect::DeleteArgs),
    /// A table's lifecycle policies (expiry, admission, size cap): shown, or the named ones
    /// changed.
    Lifecycle(inspect::LifecycleArgs),
    /// Tables, rows, bytes on disk, log, checkpoint and format versions of every shard.
    Inspect(inspect::InspectArgs),
    /// Rows by key, or by word for a word2vec model's tables.
    Get(inspect::GetArgs),
    /// Stream the stored rows of a key range.
    Scan(inspect::ScanArgs),
    /// Check every log record, RocksDB block, row and catalog entry of a data directory; exits
    /// non-zero naming each problem.
    Verify(verify::VerifyArgs),
    /// The gradient log's records.
    #[command(subcommand)]
    Log(LogCommand),
    /// Write every changed row to RocksDB and trim the log (of a running cluster, or of a data
    /// directory no process has open).
    Checkpoint(inspect::AdminArgs),
    /// Compact RocksDB (drops row versions later checkpoints overwrote).
    Compact(inspect::AdminArgs),
    /// Create a table in an embedded shard, push from a child process, SIGKILL it several
    /// times, recover, and check every acknowledged push was applied exactly once.
    CrashDemo(crash_demo::DemoArgs),
    /// Serve one shard of a cluster over gRPC (health checking and reflection included).
    Serve(Box<serve::ServeArgs>),
    /// A running cluster's replica groups.
    #[command(subcommand)]
    Cluster(ClusterCommand),
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
enum ClusterCommand {
    /// Each shard's replicas: role, term, leader, applied entry and lag.
    Status(cluster_status::StatusArgs),
    /// Makes a shard's replica group the replicas the cluster file lists (add, remove or
    /// replace replicas while pushes go on).
    SetMembers(cluster_status::SetMembersArgs),
}

#[derive(Subcommand, Debug)]
enum EvalCommand {
    /// Perplexity of an n-gram language model (KenLM's conventions: one </s> per line, <s>
    /// not scored, unknown words scored as <unk>).
    Perplexity(lm::PerplexityArgs),
    /// Word analogies (questions-words.txt format), over the most frequent words.
    Analogy(train::AnalogyArgs),
    /// Word-pair similarity against human scores (WordSim353, SimLex-999): Spearman's rho.
    Similarity(train::SimilarityArgs),
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// One line per record: segment, offset, LSN, client, sequence, table, rows, bytes.
    Dump(verify::LogDumpArgs),
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// word2vec (skip-gram or CBOW, negative sampling) with asynchronous SGD; resumable.
    Word2vec(train::Word2VecArgs),
    /// The classic ps/worker example: linear regression, workers pushing gradients, SGD on
    /// the servers; async, bulk-synchronous or bounded-staleness.
    Linreg(train::LinregArgs),
    /// n-gram language model: Kneser-Ney counts in the servers and a neural n-gram model
    /// trained with noise-contrastive estimation; resumable.
    NgramLm(lm::NgramLmArgs),
}

fn init_logging(format: serve::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        serve::LogFormat::Json => fmt.json().init(),
        serve::LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn main() -> std::process::ExitCode {
    paramdb_engine::process::ignore_file_size_signal();
    let cli = Cli::parse();
    // A server's log format can also come from its configuration file: it starts logging
    // once that is read.
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(cli.log_format.unwrap_or_default());
    }
    let r = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Train(TrainCommand::Word2vec(args)) => train::word2vec(args),
        Command::Word2vec { args } => word2vec_cli::run(&args),
        Command::Train(TrainCommand::Linreg(args)) => train::linreg(args),
        Command::Train(TrainCommand::NgramLm(args)) => lm::train(args),
        Command::Eval(EvalCommand::Perplexity(args)) => lm::perplexity(args),
        Command::Eval(EvalCommand::Analogy(args)) => train::analogy(args),
        Command::Eval(EvalCommand::Similarity(args)) => train::similarity(args),
        Command::Neighbours(args) => train::neighbours(args),
        Command::Export(args) => export::run(args),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Import(args) => import::run(args),
        Command::Delete(args) => inspect::delete(args),
        Command::Lifecycle(args) => inspect::lifecycle(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Get(args) => inspect::get(args),
        Command::Scan(args) => inspect::scan(args),
        Command::Verify(args) => verify::verify(args),
        Command::Log(LogCommand::Dump(args)) => verify::log_dump(args),
        Command::Checkpoint(args) => inspect::checkpoint(args),
        Command::Compact(args) => inspect::compact(args),
        Command::CrashDemo(args) => crash_demo::run(args),
        Command::Cluster(ClusterCommand::Status(args)) => cluster_status::status(args),
        Command::Cluster(ClusterCommand::SetMembers(args)) => cluster_status::set_members(args),
        Command::Serve(args) => serve::resolve(*args, cli.log_format).and_then(|r| {
            init_logging(r.log_format());
            serve::run(r)
        }),
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
