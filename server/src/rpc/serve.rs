//! Running a shard server: the caller owns the listener and the shutdown signal (so tests can
//! bind `127.0.0.1:0` and stop it at will). Health reports NOT_SERVING while the store replays
//! its log and SERVING after. Shutdown stops accepting and lets in-flight calls finish for up
//! to `shutdown_grace`; range streams still running then (a client that stopped reading) are
//! cancelled with `UNAVAILABLE`, and the store is checkpointed and closed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use paramdb_engine::{CheckpointError, OpenError, Store, StoreOptions};
use paramdb_proto::http2::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use paramdb_proto::v1::paramdb_server::ParamdbServer;
use paramdb_proto::v1::replication_server::ReplicationServer;
use paramdb_types::KeyRange;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::service::{oversize_as_exhausted, Limits, ShardService};

/// What one shard server needs to run.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub shard: u32,
    /// The key range this shard owns (from the cluster file).
    pub range: KeyRange,
    pub store: StoreOptions,
    pub limits: Limits,
    /// TLS on the port (with client certificates required when it names a client CA).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Bearer tokens every request must carry; `None` accepts all.
    pub tokens: Option<super::auth::Tokens>,
    /// Crash testing: journal the log's synced lengths here (see `wal::SyncJournalFs`).
    pub sync_journal: Option<PathBuf>,
    /// How long shutdown waits for in-flight calls before it cancels the range streams left.
    pub shutdown_grace: Duration,
    /// Set when this server is one replica of its shard's group.
    pub replication: Option<super::replication::ReplicationConfig>,
}

/// The default `shutdown_grace`: well inside Kubernetes' 30 s termination grace period.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("opening shard {shard} at {dir}")]
    Open {
        shard: u32,
        dir: String,
        #[source]
        source: OpenError,
    },
    #[error("closing the store")]
    Close(#[source] CheckpointError),
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("building the reflection service: {0}")]
    Reflection(String),
    #[error("starting the metrics recorder: {0}")]
    Metrics(String),
    #[error("opening shard {shard}'s replica")]
    Replica {
        shard: u32,
        #[source]
        source: paramdb_replica::ReplicaError,
    },
}

/// The metrics endpoint's task: aborted when dropped (an early return), or stopped and
/// awaited so that its hold on the store is gone before the store is closed.
struct MetricsTask(Option<tokio::task::JoinHandle<()>>);

impl MetricsTask {
    async fn stop(mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for MetricsTask {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Serves one shard on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_metrics(listener, None, config, shutdown).await
}

/// Like `serve`, with Prometheus metrics on `metrics` (`GET /metrics`) if given.
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_not_serving::<ParamdbServer<ShardService>>()
        .await;
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    // Both reflection versions: grpcurl speaks v1, many clients (grpcio-reflection) v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(paramdb_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let cell: Arc<OnceLock<Arc<Store>>> = Arc::new(OnceLock::new());
    let replica_cell: Arc<OnceLock<paramdb_replica::Replica>> = Arc::new(OnceLock::new());
    let metrics_task = MetricsTask(match metrics {
        Some(l) => {
            let handle = super::metrics::recorder().map_err(ServeError::Metrics)?;
            Some(tokio::spawn(super::metrics::serve(
                l,
                handle,
                config.shard,
                cell.clone(),
                replica_cell.clone(),
            )))
        }
        None => None,
    });
    // Set when the grace period after the shutdown signal is over.
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let tokens = config.tokens.clone().map(Arc::new);
    let replication = super::replication::ReplicationService {
        replica: replica_cell.clone(),
        shard: config.shard,
        replicated: config.replication.is_some(),
        tokens: tokens.clone(),
    };
    let replication = ReplicationServer::new(replication)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let service = ShardService::new(
        cell.clone(),
        replica_cell.clone(),
        config.shard,
        config.range,
        config.limits.clone(),
        config.tokens.clone(),
        cancel_rx,
    );
    // The service answers RESOURCE_EXHAUSTED above the limit; tonic's own cap is a backstop.
    let hard_cap = config.limits.max_message_bytes.saturating_mul(4);
    let paramdb = ParamdbServer::new(service)
        .max_decoding_message_size(hard_cap)
        .max_encoding_message_size(hard_cap);

    let (open_failed_tx, open_failed_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    // Without TCP_NODELAY a reply's trailing frames wait for the client's delayed ACK (~40 ms).
    // Windows sized for batches of hundreds of KB, so several in flight do not stall on
    // WINDOW_UPDATE round trips.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = config.tls.clone() {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .max_frame_size(Some(MAX_FRAME))
        .layer(tower::util::MapResponseLayer::new(
            oversize_as_exhausted::<tonic::body::Body>,
        ))
        .layer(super::metrics::MetricsLayer)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(paramdb)
        .add_service(replication)
        .serve_with_incoming_shutdown(incoming, async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutting down: no new requests, finishing in-flight ones"),
                _ = open_failed_rx => {}
            }
            let _ = stopping_tx.send(true);
        });
    let mut server = tokio::spawn(server);

    let (dir, opts, shard) = (config.data_dir.clone(), config.store.clone(), config.shard);
    if let Some(rc) = config.replication.clone() {
        let opened = open_replica(&config, rc).await;
        let open_result = match opened {
            Ok(r) => {
                let _ = replica_cell.set(r.clone());
                tokio::spawn(report_caught_up(r, health_reporter.clone()));
                Ok(())
            }
            Err(source) => Err(ServeError::Replica { shard, source }),
        };
        if open_result.is_err() {
            let _ = open_failed_tx.send(());
        }
        let served = server
            .await
            .map_err(|e| ServeError::Reflection(format!("server task: {e}")))?;
        open_result?;
        served?;
        metrics_task.stop().await;
        if let Some(r) = replica_cell.get() {
            r.shutdown().await;
        }
        tracing::info!(shard, "replica stopped");
        return Ok(());
    }
    let journal = config.sync_journal.clone();
    let opened = tokio::task::spawn_blocking(move || match journal {
        None => Store::open(&dir, opts),
        Some(j) => {
            let fs = paramdb_engine::wal::SyncJournalFs::new(&j).map_err(|e| {
                OpenError::from(paramdb_engine::StorageError::Io {
                    context: format!("opening {}", j.display()),
                    source: e,
                })
            })?;
            Store::open_with_fs(&dir, opts, Arc::new(fs))
        }
    })
    .await;
    let open_result = match opened {
        Ok(Ok(store)) => {
            let r = store.recovery_report();
            tracing::info!(
                shard,
                replayed = r.records_replayed,
                "shard recovered; serving"
            );
            let _ = cell.set(Arc::new(store));
            serving(&health_reporter).await;
            Ok(())
        }
        Ok(Err(source)) => Err(ServeError::Open {
            shard,
            dir: config.data_dir.display().to_string(),
            source,
        }),
        Err(e) => Err(ServeError::Open {
            shard,
            dir: config.data_dir.display().to_string(),
            source: paramdb_engine::StorageError::Io {
                context: "store open task".into(),
                source: std::io::Error::other(e.to_string()),
            }
            .into(),
        }),
    };
    if open_result.is_err() {
        let _ = open_failed_tx.send(());
    }
    // Wait for the server; once shutdown began, give in-flight calls the grace period, then
    // cancel the range streams left and give their connections a moment to close.
    let served = tokio::select! {
        r = &mut server => Some(r),
        _ = async {
            let _ = stopping_rx.wait_for(|s| *s).await;
            tokio::time::sleep(config.shutdown_grace).await;
        } => None,
    };
    let served = match served {
        Some(r) => r,
        None => {
            tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls outlived the shutdown grace period; cancelling them");
            let _ = cancel_tx.send(true);
            match tokio::time::timeout(Duration::from_secs(2), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    let served = served.map_err(|e| ServeError::Reflection(format!("server task: {e}")))?;
    open_result?;
    served?;

    // In-flight calls are done; range streams may still hold the store for a moment.
    metrics_task.stop().await;
    // Whoever else still holds the cell, the store itself is closed (shared if need be).
    let store = cell.get().cloned();
    drop(cell);
    match store.map(Arc::try_unwrap) {
        Some(Ok(store)) => store.close().map_err(ServeError::Close)?,
        Some(Err(shared)) => {
            shared.close_shared().map_err(ServeError::Close)?;
        }
        None => {}
    }
    tracing::info!(shard, "checkpointed and closed");
    Ok(())
}

/// Health turns SERVING, for the Paramdb service and the server as a whole.
/// A replica is healthy (ready) while it is caught up: it leads, or it is at most this many
/// entries behind a leader it hears from.
const CAUGHT_UP_ENTRIES: u64 = 1000;

/// Keeps a replica's health status on whether it is caught up, checked twice a second.
async fn report_caught_up(
    r: paramdb_replica::Replica,
    health: tonic_health::server::HealthReporter,
) {
    let mut was = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = r.caught_up(CAUGHT_UP_ENTRIES);
        if was != Some(now) {
            if now {
                serving(&health).await;
            } else {
                health
                    .set_not_serving::<ParamdbServer<ShardService>>()
                    .await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
            }
            tracing::info!(caught_up = now, "replica readiness");
            was = Some(now);
        }
    }
}

async fn serving(health: &tonic_health::server::HealthReporter) {
    health.set_serving::<ParamdbServer<ShardService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
}

/// Opens this server's replica of its shard's group. A new replica (no replicated log yet)
/// makes the group with the peers the cluster file lists, unless a peer already has one (then
/// it is a replacement, and the leader rebuilds it). The data directory remembers whose it is
/// (`replica.toml`): another shard's replica, or another replica's, is refused.
async fn open_replica(
    config: &ServeConfig,
    rc: super::replication::ReplicationConfig,
) -> Result<paramdb_replica::Replica, paramdb_replica::ReplicaError> {
    check_identity(config, &rc)?;
    let fresh = !config.data_dir.join("raft").exists();
    let mut opts = paramdb_replica::ReplicaOptions::new(rc.id, &config.data_dir, &rc.group);
    opts.store = config.store.clone();
    opts.sync = rc.sync;
    opts.heartbeat = rc.heartbeat;
    opts.election_timeout = rc.election_timeout;
    opts.snapshot_every = rc.snapshot_every;
    let connector = super::replication::GrpcConnector::new(
        rc.group.clone(),
        rc.token.clone(),
        rc.election_timeout.0,
    );
    let replica = paramdb_replica::Replica::open(opts, connector.clone()).await?;
    let joining = fresh && connector.group_exists(&rc).await;
    if fresh && !joining {
        replica.bootstrap(rc.peers.clone()).await?;
    }
    tracing::info!(group = %rc.group, id = rc.id, fresh, joining, "replica open");
    Ok(replica)
}

/// `replica.toml` in the data directory: written on the first start, checked on every other.
fn check_identity(
    config: &ServeConfig,
    rc: &super::replication::ReplicationConfig,
) -> Result<(), paramdb_replica::ReplicaError> {
    let me = format!(
        "group = \"{}\"\nrange = [{}, {}]\nreplica = {}\n",
        rc.group, config.range.start, config.range.end, rc.id
    );
    let path = config.data_dir.join("replica.toml");
    let bad = |reason: String| paramdb_replica::ReplicaError::Config { id: rc.id, reason };
    match std::fs::read_to_string(&path) {
        Ok(found) if found == me => Ok(()),
        Ok(found) => {
            let field = |k: &str| {
                found
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| {
                        v.trim_start_matches([' ', '='])
                            .trim_matches('"')
                            .to_string()
                    })
                    .unwrap_or_else(|| "?".into())
            };
            Err(bad(format!(
                "{} holds replica {} of {} {} but this server is replica {} of {} {}: wrong \
                 --shard, --replica or --data-dir, or the cluster file's ranges changed",
                config.data_dir.display(),
                field("replica"),
                field("group"),
                field("range"),
                rc.id,
                rc.group,
                config.range
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&config.data_dir)
                .and_then(|()| std::fs::write(&path, me))
                .map_err(|e| bad(format!("writing {}: {e}", path.display())))
        }
        Err(e) => Err(bad(format!("reading {}: {e}", path.display()))),
    }
}
