//! `paramdb serve`: one shard server. Prints `paramdb: shard N listening on ADDR` once bound
//! (so `--listen 127.0.0.1:0` can be used and the port read back), serves until SIGTERM or
//! SIGINT, then finishes in-flight calls, checkpoints and exits 0.
//!
//! Settings come from a TOML file (`--config`), `PARAMDB_*` environment variables and flags,
//! each overriding the one before; `--print-config` prints the result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use paramdb_engine::{KeyRange, StoreOptions, SyncPolicy};
use paramdb_proto::cluster::ClusterMap;
use paramdb_server::rpc::{Limits, ServeConfig};
use serde::{Deserialize, Serialize};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (`paramdb serve --print-config` shows them
    /// all). Flags override environment variables, which override the file.
    #[arg(long, env = "PARAMDB_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// The shard's data directory (created if missing).
    #[arg(long, env = "PARAMDB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7070].
    #[arg(long, env = "PARAMDB_LISTEN")]
    listen: Option<String>,
    /// The cluster file (shards, key ranges, addresses).
    #[arg(long, env = "PARAMDB_CLUSTER")]
    cluster: Option<PathBuf>,
    /// This server's shard number (its position in the cluster file).
    #[arg(long, env = "PARAMDB_SHARD")]
    shard: Option<u32>,
    /// For a replicated shard: which of its `replicas` this server is, by id (its place in the
    /// list, from 1, unless the cluster file gives `replica_ids`).
    #[arg(long, env = "PARAMDB_REPLICA")]
    replica: Option<u64>,
    /// The same, counted from 0 (replica N+1): a StatefulSet pod's index.
    #[arg(long, env = "PARAMDB_REPLICA_INDEX", conflicts_with = "replica")]
    replica_index: Option<u64>,
    /// A replica group's heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "PARAMDB_RAFT_HEARTBEAT_MS")]
    raft_heartbeat_ms: Option<u64>,
    /// A follower that hears no leader for a random time between this and 1.5 times this
    /// (milliseconds) stands for election, once the leader's lease (1.5 times this) ran out
    /// [default: 150].
    #[arg(long, env = "PARAMDB_RAFT_ELECTION_MS")]
    raft_election_ms: Option<u64>,
    /// A replica builds a snapshot (and purges its log before it) after this many entries
    /// [default: 10000].
    #[arg(long, env = "PARAMDB_RAFT_SNAPSHOT_EVERY")]
    raft_snapshot_every: Option<u64>,
    /// Log durability: sync, interval=<ms>, none [default: sync].
    #[arg(long, env = "PARAMDB_SYNC")]
    sync: Option<SyncPolicy>,
    /// Largest request or response message in bytes.
    #[arg(long, env = "PARAMDB_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Most keys in one pull or push.
    #[arg(long, env = "PARAMDB_MAX_KEYS")]
    max_keys: Option<usize>,
    /// Requests handled at once.
    #[arg(long, env = "PARAMDB_MAX_CONCURRENT")]
    max_concurrent: Option<usize>,
    /// Budget of the memory-mapped hot-row cache in bytes, split between tables (0: off).
    #[arg(long, env = "PARAMDB_CACHE_BYTES")]
    cache_bytes: Option<u64>,
    /// RocksDB block cache in bytes.
    #[arg(long, env = "PARAMDB_BLOCK_CACHE_BYTES")]
    block_cache_bytes: Option<usize>,
    /// Checkpoint once the rows changed since the last one hold this many bytes (bounds the
    /// memory they take); 0 turns it off.
    #[arg(long, env = "PARAMDB_CHECKPOINT_DIRTY_BYTES")]
    checkpoint_dirty_bytes: Option<u64>,
    /// Checkpoint once this many log bytes were written since the last one.
    #[arg(long, env = "PARAMDB_CHECKPOINT_LOG_BYTES")]
    checkpoint_log_bytes: Option<u64>,
    /// Checkpoint when the last one is this many seconds old and rows changed (0: never).
    #[arg(long, env = "PARAMDB_CHECKPOINT_INTERVAL_SECS")]
    checkpoint_interval_secs: Option<f64>,
    /// How long a row stays on disk after it expired or was evicted, and a deleted key is
    /// remembered, so that `export --since LSN,…` can list the keys gone since (reads treat
    /// such rows as absent at once). Default one day; 0 drops them at once.
    #[arg(long, env = "PARAMDB_GONE_RETENTION_SECS")]
    gone_retention_secs: Option<u32>,
    /// On SIGTERM, how long in-flight calls may run before the range streams still open are
    /// cancelled and the shard checkpoints and exits.
    #[arg(long, env = "PARAMDB_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<f64>,
    /// Serve Prometheus metrics over HTTP at this address (`/metrics`); port 0 picks one.
    #[arg(long, env = "PARAMDB_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "PARAMDB_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "PARAMDB_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "PARAMDB_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Require bearer tokens, read from this TOML file: `read = ["…"]`, `write = ["…"]`.
    #[arg(long, env = "PARAMDB_TOKENS")]
    tokens: Option<PathBuf>,
    /// Crash testing: journal the log's synced lengths to this file, so a test can cut the
    /// log back to what a power cut would have left.
    #[arg(long, hide = true)]
    sync_journal: Option<PathBuf>,
}

/// A server's configuration file, and the effective configuration `--print-config` prints.
/// Paths in a file are relative to the file's directory. Unknown keys are errors.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cluster: Option<PathBuf>,
    pub shard: Option<u32>,
    pub replica: Option<u64>,
    pub raft_heartbeat_ms: Option<u64>,
    pub raft_election_ms: Option<u64>,
    pub raft_snapshot_every: Option<u64>,
    pub sync: Option<String>,
    pub cache_bytes: Option<u64>,
    pub block_cache_bytes: Option<usize>,
    pub checkpoint_dirty_bytes: Option<u64>,
    pub checkpoint_log_bytes: Option<u64>,
    pub checkpoint_interval_secs: Option<f64>,
    pub gone_retention_secs: Option<u32>,
    pub shutdown_grace_secs: Option<f64>,
    pub metrics_listen: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<LogFormat>,
    pub tokens: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "LimitsConfig::is_empty")]
    pub limits: LimitsConfig,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: Option<usize>,
    pub max_keys: Option<usize>,
    pub max_concurrent: Option<usize>,
}

impl LimitsConfig {
    fn is_empty(&self) -> bool {
        *self == LimitsConfig::default()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
}

/// How logs are written to stderr.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl ServerConfig {
    /// Reads a configuration file; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<ServerConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration {}", path.display()))?;
        let mut c: ServerConfig = toml::from_str(&text).map_err(|e| {
            // One line: the file, the line and its text, then what is wrong with it.
            let at = e.span().map(|r| {
                let n = text[..r.start].matches('\n').count();
                let line = text.lines().nth(n).unwrap_or("").trim();
                format!(", line {} (`{line}`)", n + 1)
            });
            anyhow::anyhow!(
                "configuration {}{}: {}",
                path.display(),
                at.unwrap_or_default(),
                e.message().trim()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut Option<PathBuf>| {
            if let Some(p) = p.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        };
        rebase(&mut c.data_dir);
        rebase(&mut c.cluster);
        rebase(&mut c.tokens);
        if let Some(tls) = c.tls.as_mut() {
            rebase(&mut tls.cert);
            rebase(&mut tls.key);
            rebase(&mut tls.client_ca);
        }
        Ok(c)
    }
}

/// The configuration after merging defaults, the file, the environment and the flags.
#[derive(Debug)]
pub struct Resolved {
    pub config: ServerConfig,
    pub print_only: bool,
    sync_journal: Option<PathBuf>,
}

impl Resolved {
    pub fn log_format(&self) -> LogFormat {
        self.config.log_format.unwrap_or_default()
    }
}

/// Merges the configuration: flags and `PARAMDB_*` variables (clap reads both) over the file
/// over the defaults. `log_format` is the global `--log-format`, if given.
pub fn resolve(args: ServeArgs, log_format: Option<LogFormat>) -> anyhow::Result<Resolved> {
    let file = match &args.config {
        Some(p) => ServerConfig::load(p)?,
        None => ServerConfig::default(),
    };
    let d = StoreOptions::default();
    let l = Limits::default();
    let ftls = file.tls.clone().unwrap_or_default();
    let tls = TlsConfig {
        cert: args.tls_cert.or(ftls.cert),
        key: args.tls_key.or(ftls.key),
        client_ca: args.tls_client_ca.or(ftls.client_ca),
    };
    if tls.cert.is_some() != tls.key.is_some() {
        bail!("TLS needs both a certificate (--tls-cert) and its key (--tls-key)");
    }
    if tls.client_ca.is_some() && tls.cert.is_none() {
        bail!("--tls-client-ca needs --tls-cert and --tls-key");
    }
    let sync = match args.sync {
        Some(s) => s,
        None => match &file.sync {
            Some(s) => s.parse().map_err(anyhow::Error::msg)?,
            None => d.sync,
        },
    };
    let required = |what: &str, flag: &str, env: &str| {
        anyhow::anyhow!(
            "{what} is required: --{flag}, {env} or `{}` in --config",
            flag.replace('-', "_")
        )
    };
    let config = ServerConfig {
        listen: Some(
            args.listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:7070".into()),
        ),
        data_dir: Some(
            args.data_dir
                .or(file.data_dir)
                .ok_or_else(|| required("a data directory", "data-dir", "PARAMDB_DATA_DIR"))?,
        ),
        cluster: Some(
            args.cluster
                .or(file.cluster)
                .ok_or_else(|| required("a cluster file", "cluster", "PARAMDB_CLUSTER"))?,
        ),
        shard: Some(
            args.shard
                .or(file.shard)
                .ok_or_else(|| required("a shard number", "shard", "PARAMDB_SHARD"))?,
        ),
        replica: args
            .replica
            .or(args.replica_index.map(|i| i.saturating_add(1)))
            .or(file.replica),
        raft_heartbeat_ms: args.raft_heartbeat_ms.or(file.raft_heartbeat_ms),
        raft_election_ms: args.raft_election_ms.or(file.raft_election_ms),
        raft_snapshot_every: args.raft_snapshot_every.or(file.raft_snapshot_every),
        sync: Some(sync.to_string()),
        cache_bytes: Some(
            args.cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(d.cache_bytes),
        ),
        block_cache_bytes: Some(
            args.block_cache_bytes
                .or(file.block_cache_bytes)
                .unwrap_or(d.block_cache_bytes),
        ),
        checkpoint_dirty_bytes: Some(
            args.checkpoint_dirty_bytes
                .or(file.checkpoint_dirty_bytes)
                .unwrap_or(d.checkpoint_dirty_bytes),
        ),
        checkpoint_log_bytes: Some(
            args.checkpoint_log_bytes
                .or(file.checkpoint_log_bytes)
                .unwrap_or(d.checkpoint_log_bytes),
        ),
        checkpoint_interval_secs: Some(
            args.checkpoint_interval_secs
                .or(file.checkpoint_interval_secs)
                .unwrap_or_else(|| d.checkpoint_interval.map_or(0.0, |i| i.as_secs_f64())),
        ),
        gone_retention_secs: Some(
            args.gone_retention_secs
                .or(file.gone_retention_secs)
                .unwrap_or(d.gone_retention_secs),
        ),
        shutdown_grace_secs: Some(
            args.shutdown_grace_secs
                .or(file.shutdown_grace_secs)
                .unwrap_or(paramdb_server::rpc::serve::DEFAULT_SHUTDOWN_GRACE.as_secs_f64()),
        ),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        log_format: Some(log_format.or(file.log_format).unwrap_or_default()),
        tokens: args.tokens.or(file.tokens),
        limits: LimitsConfig {
            max_message_bytes: Some(
                args.max_message_bytes
                    .or(file.limits.max_message_bytes)
                    .unwrap_or(l.max_message_bytes),
            ),
            max_keys: Some(
                args.max_keys
                    .or(file.limits.max_keys)
                    .unwrap_or(l.max_keys_per_request),
            ),
            max_concurrent: Some(
                args.max_concurrent
                    .or(file.limits.max_concurrent)
                    .unwrap_or(l.max_concurrent_requests),
            ),
        },
        tls: (tls != TlsConfig::default()).then_some(tls),
    };
    if let Some(secs) = config.checkpoint_interval_secs {
        if !(secs >= 0.0 && secs.is_finite()) {
            bail!("checkpoint_interval_secs must be 0 or a positive number of seconds, not {secs}");
        }
    }
    if let Some(secs) = config.shutdown_grace_secs {
        if !(secs >= 0.0 && secs.is_finite() && secs <= 86_400.0) {
            bail!("shutdown_grace_secs must be 0 to 86400 seconds, not {secs}");
        }
    }
    Ok(Resolved {
        config,
        print_only: args.print_config,
        sync_journal: args.sync_journal,
    })
}

pub fn run(resolved: Resolved) -> anyhow::Result<()> {
    let c = &resolved.config;
    if resolved.print_only {
        print!(
            "{}",
            toml::to_string(c).context("printing the configuration")?
        );
        return Ok(());
    }
    // `resolve` filled every required field.
    let (Some(data_dir), Some(cluster), Some(shard), Some(listen)) = (
        c.data_dir.clone(),
        c.cluster.clone(),
        c.shard,
        c.listen.clone(),
    ) else {
        bail!("the configuration is incomplete");
    };
    let map = ClusterMap::load(&cluster)?;
    let entry = map.shards.get(shard as usize).with_context(|| {
        format!(
            "shard {} is not in {} ({} shards)",
            shard,
            cluster.display(),
            map.shards.len()
        )
    })?;
    let replication = replication_config(c, &map, shard, &cluster, &data_dir)?;
    let d = StoreOptions::default();
    let mut limits = Limits::default();
    if let Some(v) = c.limits.max_message_bytes {
        limits.max_message_bytes = v;
    }
    if let Some(v) = c.limits.max_keys {
        limits.max_keys_per_request = v;
    }
    if let Some(v) = c.limits.max_concurrent {
        limits.max_concurrent_requests = v;
    }
    let interval = c.checkpoint_interval_secs.unwrap_or(0.0);
    let config = ServeConfig {
        data_dir,
        shard,
        range: KeyRange::new(entry.range[0], entry.range[1]),
        store: StoreOptions {
            sync: match &c.sync {
                Some(s) => s.parse().map_err(anyhow::Error::msg)?,
                None => d.sync,
            },
            cache_bytes: c.cache_bytes.unwrap_or(d.cache_bytes),
            block_cache_bytes: c.block_cache_bytes.unwrap_or(d.block_cache_bytes),
            checkpoint_dirty_bytes: c.checkpoint_dirty_bytes.unwrap_or(d.checkpoint_dirty_bytes),
            checkpoint_log_bytes: c.checkpoint_log_bytes.unwrap_or(d.checkpoint_log_bytes),
            checkpoint_interval: (interval > 0.0).then(|| Duration::from_secs_f64(interval)),
            gone_retention_secs: c.gone_retention_secs.unwrap_or(d.gone_retention_secs),
            ..d
        },
        limits,
        tls: tls_config(c.tls.as_ref())?,
        tokens: c
            .tokens
            .as_deref()
            .map(paramdb_server::rpc::auth::Tokens::load)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        sync_journal: resolved.sync_journal.clone(),
        shutdown_grace: Duration::from_secs_f64(
            c.shutdown_grace_secs
                .unwrap_or(paramdb_server::rpc::serve::DEFAULT_SHUTDOWN_GRACE.as_secs_f64()),
        ),
        replication,
    };
    let who = match &config.replication {
        Some(r) => format!("shard {shard} replica {}", r.id),
        None => format!("shard {shard}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("paramdb-serve")
        .build()
        .context("starting the runtime")?;
    let metrics_listen = c.metrics_listen.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let addr = listener.local_addr()?;
        let mut banner = format!("paramdb: {who} ({}) listening on {addr}\n", config.range);
        let metrics = match metrics_listen {
            Some(m) => {
                let l = tokio::net::TcpListener::bind(&m)
                    .await
                    .with_context(|| format!("binding the metrics address {m}"))?;
                banner += &format!("paramdb: metrics on http://{}/metrics\n", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        // One write: a reader that takes the first line and closes the pipe loses nothing.
        let mut out = std::io::stdout().lock();
        out.write_all(banner.as_bytes())?;
        out.flush()?;
        drop(out);
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
        paramdb_server::rpc::serve_with_metrics(listener, metrics, config, shutdown).await?;
        Ok(())
    })
}

fn read(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn tls_config(
    tls: Option<&TlsConfig>,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let Some(TlsConfig {
        cert: Some(cert),
        key: Some(key),
        client_ca,
    }) = tls
    else {
        return Ok(None);
    };
    let identity =
        tonic::transport::Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            ca,
            "client CA",
        )?));
    }
    Ok(Some(tls))
}

/// The replica group this server joins, from the cluster file: `None` for an unreplicated
/// shard. Refuses a data directory that holds the other kind of shard.
fn replication_config(
    c: &ServerConfig,
    map: &ClusterMap,
    shard: u32,
    cluster: &Path,
    data_dir: &Path,
) -> anyhow::Result<Option<paramdb_server::rpc::ReplicationConfig>> {
    let entry = &map.shards[shard as usize];
    let Some(id) = c.replica else {
        if entry.is_replicated() {
            bail!(
                "shard {shard} is replicated ({} replicas in {}): say which one this server is \
                 with --replica (ids {})",
                entry.replicas.len(),
                cluster.display(),
                entry
                    .replica_ids()
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if data_dir.join("raft").exists() {
            bail!(
                "{} holds a replica of a replicated shard, but shard {shard} of {} is not \
                 replicated",
                data_dir.display(),
                cluster.display()
            );
        }
        return Ok(None);
    };
    if !entry.is_replicated() {
        bail!(
            "--replica {id} was given, but shard {shard} of {} is not replicated (it has an \
             `address`, not `replicas`)",
            cluster.display()
        );
    }
    let ids = entry.replica_ids();
    if !ids.contains(&id) {
        let listed = ids
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        bail!(
            "--replica {id} is not a replica of shard {shard}: {} lists {} (ids {listed})",
            cluster.display(),
            entry.replicas.len(),
        );
    }
    if data_dir.join("wal").exists() {
        bail!(
            "{} holds an unreplicated shard's store; a replica needs a directory of its own",
            data_dir.display()
        );
    }
    let sync = match &c.sync {
        Some(s) => s.parse().map_err(anyhow::Error::msg)?,
        None => SyncPolicy::Sync,
    };
    let token = match &map.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
                anyhow::anyhow!("the token in {} is not printable ASCII", f.display())
            })?)
        }
        None => None,
    };
    let election = c.raft_election_ms.unwrap_or(150);
    let heartbeat = c.raft_heartbeat_ms.unwrap_or(50);
    if heartbeat == 0 || election <= heartbeat {
        bail!(
            "the election timeout ({election} ms) must be longer than the heartbeat \
             ({heartbeat} ms)"
        );
    }
    Ok(Some(paramdb_server::rpc::ReplicationConfig {
        group: format!("shard-{shard}"),
        id,
        peers: entry
            .members()
            .into_iter()
            .map(|(i, a)| (i, a.to_string()))
            .collect(),
        sync,
        heartbeat: Duration::from_millis(heartbeat),
        election_timeout: (
            Duration::from_millis(election),
            Duration::from_millis(election * 3 / 2),
        ),
        snapshot_every: c.raft_snapshot_every.unwrap_or(10_000).max(1),
        token,
    }))
}
