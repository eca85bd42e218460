//! Prometheus metrics of a shard server, in the text format on their own HTTP port
//! (`GET /metrics`).
//!
//! Requests are counted and timed as they are served (`MetricsLayer`): per method, a latency
//! histogram, and a count of rejected requests by reason (the gRPC status code). The storage
//! core records fsync latency through the `metrics` facade. The store's own counters and
//! gauges (pushes, pulls, rows, log bytes, checkpoint age, cache hits) are read from
//! `Store::stats` at each scrape, so they cost nothing between scrapes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::Code;

use paramdb_engine::Store;

/// Histogram buckets in seconds: 50 µs to 10 s.
const BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Why a request was refused, as a metric label.
fn reason(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::FailedPrecondition => "failed_precondition",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Internal => "internal",
        _ => "other",
    }
}

/// Records one served request: its latency, and its refusal reason if it failed.
fn observe(method: &'static str, started: Instant, code: Code) {
    histogram!("paramdb_request_duration_seconds", "method" => method).record(started.elapsed());
    counter!("paramdb_requests_total", "method" => method).increment(1);
    if code != Code::Ok {
        counter!("paramdb_rejected_requests_total", "method" => method, "reason" => reason(code))
            .increment(1);
    }
}

/// Copies the store's counters and gauges into the recorder.
fn sample(shard: u32, store: Option<&Store>) {
    let shard = shard.to_string();
    // 0 while the store replays its log, 1 once it serves.
    gauge!("paramdb_up", "shard" => shard.clone()).set(store.is_some() as u8 as f64);
    let Some(store) = store else {
        return;
    };
    let s = store.stats();
    let c = |name: &'static str, v: u64| counter!(name, "shard" => shard.clone()).absolute(v);
    c("paramdb_pushes_total", s.pushes);
    c("paramdb_duplicate_pushes_total", s.duplicate_pushes);
    c("paramdb_rows_pushed_total", s.rows_pushed);
    c("paramdb_deletes_total", s.deletes);
    c("paramdb_rows_admitted_total", s.lifecycle.admitted);
    c("paramdb_rows_unadmitted_total", s.lifecycle.unadmitted);
    c("paramdb_rows_expired_total", s.lifecycle.expired);
    c("paramdb_rows_evicted_total", s.lifecycle.evicted);
    c("paramdb_pulls_total", s.pulls);
    c("paramdb_rows_pulled_total", s.rows_pulled);
    c("paramdb_log_bytes_written_total", s.log_bytes_written);
    c("paramdb_fsyncs_total", s.fsyncs);
    c("paramdb_checkpoints_total", s.checkpoints);
    c("paramdb_cache_hits_total", s.cache.hits);
    c("paramdb_cache_misses_total", s.cache.misses);
    c("paramdb_cache_evictions_total", s.cache.evictions);
    let g = |name: &'static str, v: f64| gauge!(name, "shard" => shard.clone()).set(v);
    g("paramdb_tables", s.tables as f64);
    g("paramdb_dirty_rows", s.dirty_rows as f64);
    g("paramdb_dirty_bytes", s.dirty_bytes as f64);
    g("paramdb_log_segments", s.log_segments as f64);
    g(
        "paramdb_log_bytes_since_checkpoint",
        s.log_bytes_since_checkpoint as f64,
    );
    g("paramdb_last_lsn", s.last_lsn as f64);
    g("paramdb_durable_lsn", s.durable_lsn as f64);
    g(
        "paramdb_checkpoint_age_seconds",
        s.checkpoint_age.as_secs_f64(),
    );
    g(
        "paramdb_cache_resident_bytes",
        s.cache.resident_bytes as f64,
    );
    g("paramdb_cache_budget_bytes", s.cache.budget_bytes as f64);
    let looked = s.cache.hits + s.cache.misses;
    g(
        "paramdb_cache_hit_ratio",
        if looked == 0 {
            0.0
        } else {
            s.cache.hits as f64 / looked as f64
        },
    );
    g("paramdb_poisoned", s.poisoned.is_some() as u8 as f64);
}

/// A replica's standing as gauges: its role (1 for the one it has), term, leader, applied
/// entry, log span and, on the leader, each follower's lag in entries.
fn sample_replica(shard: u32, r: &paramdb_replica::Replica) {
    let s = r.status();
    let shard = shard.to_string();
    for role in ["leader", "follower", "candidate", "learner", "stopped"] {
        gauge!("paramdb_replica_role", "shard" => shard.clone(), "role" => role)
            .set((s.role == role) as u8 as f64);
    }
    let g = |name: &'static str, v: f64| gauge!(name, "shard" => shard.clone()).set(v);
    g("paramdb_replica_id", s.id as f64);
    g("paramdb_replica_term", s.term as f64);
    g("paramdb_replica_leader_id", s.leader.unwrap_or(0) as f64);
    g(
        "paramdb_replica_applied_index",
        s.applied.map_or(-1.0, |v| v as f64),
    );
    g(
        "paramdb_replica_last_log_index",
        s.last_log.map_or(-1.0, |v| v as f64),
    );
    g(
        "paramdb_replica_first_log_index",
        s.first_log.map_or(-1.0, |v| v as f64),
    );
    let last = s.last_log.unwrap_or(0);
    for (id, matched) in &s.matched {
        let lag = last.saturating_sub(matched.unwrap_or(0));
        gauge!("paramdb_replica_follower_lag_entries", "shard" => shard.clone(), "replica" => id.to_string())
            .set(lag as f64);
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shard: u32,
    store: Arc<OnceLock<Arc<Store>>>,
    replica: Arc<OnceLock<paramdb_replica::Replica>>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, store, replica) = (handle.clone(), store.clone(), replica.clone());
            async move {
                // Stats take the store's state lock: read them off the async threads.
                let _ = tokio::task::spawn_blocking(move || match replica.get() {
                    Some(r) => {
                        sample(shard, Some(&r.store()));
                        sample_replica(shard, r);
                    }
                    None => sample(shard, store.get().map(|s| s.as_ref())),
                })
                .await;
                handle.run_upkeep();
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics endpoint stopped");
    }
}

/// The methods of the Paramdb service, as metric labels.
const METHODS: [&str; 17] = [
    "CreateTable",
    "DropTable",
    "ListTables",
    "DescribeTable",
    "Pull",
    "Push",
    "PullRange",
    "PushRange",
    "DeleteRows",
    "DeleteRange",
    "Import",
    "Checkpoint",
    "Stats",
    "Inspect",
    "Compact",
    "Verify",
    "LogDump",
];

/// A tower layer that counts and times every call of the Paramdb service (health and
/// reflection are not counted). A refused call is one whose response carries a non-zero
/// `grpc-status` in its headers, which is how tonic answers an error; latency runs until the
/// response headers (for a streamed range pull, its first block).
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Metered<S>;

    fn layer(&self, inner: S) -> Metered<S> {
        Metered(inner)
    }
}

#[derive(Clone, Debug)]
pub struct Metered<S>(S);

impl<S, B, RB> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix("/paramdb.v1.Paramdb/")
            .map(|m| {
                METHODS
                    .iter()
                    .copied()
                    .find(|&k| k == m)
                    .unwrap_or("unknown")
            });
        let started = Instant::now();
        let fut = self.0.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let (Some(method), Ok(resp)) = (method, &r) {
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from);
                observe(method, started, code);
            }
            r
        })
    }
}
