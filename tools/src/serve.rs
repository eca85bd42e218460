//! `paramdb serve`: one shard server. Prints `paramdb: shard N listening on ADDR` once bound
//! (so `--listen 127.0.0.1:0` can be used and the port read back), serves until SIGTERM or
//! SIGINT, then finishes in-flight calls, checkpoints and exits 0.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use paramdb_proto::cluster::ClusterMap;
use paramdb_server::rpc::{Limits, ServeConfig};
use paramdb_server::{KeyRange, StoreOptions, SyncPolicy};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The shard's data directory (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// The cluster file (shards, key ranges, addresses).
    #[arg(long)]
    cluster: PathBuf,
    /// This server's shard number (its position in the cluster file).
    #[arg(long)]
    shard: u32,
    /// Log durability: sync, interval=<ms>, none.
    #[arg(long, default_value = "sync")]
    sync: SyncPolicy,
    /// Largest request or response message in bytes.
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Most keys in one pull or push.
    #[arg(long)]
    max_keys: Option<usize>,
    /// Requests handled at once.
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Budget of the memory-mapped hot-row cache in bytes, split between tables (0: off).
    #[arg(long, default_value_t = StoreOptions::default().cache_bytes)]
    cache_bytes: u64,
    /// RocksDB block cache in bytes.
    #[arg(long, default_value_t = StoreOptions::default().block_cache_bytes)]
    block_cache_bytes: usize,
    /// Checkpoint once the rows changed since the last one hold this many bytes (bounds the
    /// memory they take); 0 turns it off.
    #[arg(long, default_value_t = StoreOptions::default().checkpoint_dirty_bytes)]
    checkpoint_dirty_bytes: u64,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Require bearer tokens, read from this TOML file: `read = ["…"]`, `write = ["…"]`.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Crash testing: journal the log's synced lengths to this file, so a test can cut the
    /// log back to what a power cut would have left.
    #[arg(long, hide = true)]
    sync_journal: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let map = ClusterMap::load(&args.cluster)?;
    let entry = map.shards.get(args.shard as usize).with_context(|| {
        format!(
            "shard {} is not in {} ({} shards)",
            args.shard,
            args.cluster.display(),
            map.shards.len()
        )
    })?;
    let mut limits = Limits::default();
    if let Some(v) = args.max_message_bytes {
        limits.max_message_bytes = v;
    }
    if let Some(v) = args.max_keys {
        limits.max_keys_per_request = v;
    }
    if let Some(v) = args.max_concurrent {
        limits.max_concurrent_requests = v;
    }
    let config = ServeConfig {
        data_dir: args.data_dir.clone(),
        shard: args.shard,
        range: KeyRange::new(entry.range[0], entry.range[1]),
        store: StoreOptions {
            sync: args.sync,
            cache_bytes: args.cache_bytes,
            block_cache_bytes: args.block_cache_bytes,
            checkpoint_dirty_bytes: args.checkpoint_dirty_bytes,
            ..StoreOptions::default()
        },
        limits,
        tls: tls_config(&args)?,
        tokens: args
            .tokens
            .as_deref()
            .map(paramdb_server::rpc::auth::Tokens::load)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        sync_journal: args.sync_journal.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paramdb-serve")
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!(
            "paramdb: shard {} ({}) listening on {addr}",
            args.shard, config.range
        );
        std::io::stdout().flush()?;
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        paramdb_server::rpc::serve(listener, config, shutdown).await?;
        Ok(())
    })
}

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn tls_config(args: &ServeArgs) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let identity =
        tonic::transport::Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &args.tls_client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client CA",
        )?));
    }
    Ok(Some(tls))
}
