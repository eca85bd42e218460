//! The `Paramdb` gRPC service of one shard: its state, the checks every call shares (access,
//! concurrency, message size, key range, table names), and the trait implementation, which
//! hands each call to its handler in `handlers/`.

use std::sync::{Arc, OnceLock};

use paramdb_engine::Store;
use paramdb_proto::v1::{self, paramdb_server::Paramdb};
use paramdb_types::{quote, Key, KeyRange, MAX_NAME_LEN};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use super::auth::{Access, Tokens};
use super::handlers;
use super::status::to_status;

/// Request limits of a shard server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest encoded request or response message.
    pub max_message_bytes: usize,
    /// Most keys (or range rows) in one pull or push.
    pub max_keys_per_request: usize,
    /// Requests handled at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_concurrent_requests: usize,
    /// Rows per block of a streamed range pull.
    pub range_block_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 << 20,
            max_keys_per_request: 1 << 17,
            max_concurrent_requests: 1024,
            range_block_rows: 1024,
        }
    }
}

/// One shard's service. The store is set once recovery has finished; until then every call
/// answers `UNAVAILABLE` (and health says NOT_SERVING).
#[derive(Debug, Clone)]
pub struct ShardService {
    pub(super) store: Arc<OnceLock<Arc<Store>>>,
    /// Set instead of `store` when the shard is one replica of a group: writes go through
    /// the group's log, reads are served by the leader.
    pub(super) replica: Arc<OnceLock<paramdb_replica::Replica>>,
    pub(super) shard: u32,
    pub(super) range: KeyRange,
    pub(super) limits: Limits,
    permits: Arc<Semaphore>,
    /// Accepted bearer tokens; `None` lets every request through.
    tokens: Option<Arc<Tokens>>,
    /// Turns true when the shutdown's grace period is over: streams still running stop.
    pub(super) cancel: watch::Receiver<bool>,
}

impl ShardService {
    pub fn new(
        store: Arc<OnceLock<Arc<Store>>>,
        replica: Arc<OnceLock<paramdb_replica::Replica>>,
        shard: u32,
        range: KeyRange,
        limits: Limits,
        tokens: Option<Tokens>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent_requests));
        ShardService {
            store,
            replica,
            shard,
            range,
            limits,
            permits,
            tokens: tokens.map(Arc::new),
            cancel,
        }
    }

    pub(super) fn authorize(
        &self,
        md: &tonic::metadata::MetadataMap,
        need: Access,
    ) -> Result<(), Status> {
        match &self.tokens {
            Some(t) => t.check(md, need),
            None => Ok(()),
        }
    }

    pub(super) fn store(&self) -> Result<Arc<Store>, Status> {
        if let Some(r) = self.replica.get() {
            return Ok(r.store());
        }
        self.store.get().cloned().ok_or_else(|| {
            Status::unavailable(format!("shard {} is replaying its log", self.shard))
        })
    }

    /// The shard's replica, when it is one of a group.
    pub(super) fn replica(&self) -> Option<&paramdb_replica::Replica> {
        self.replica.get()
    }

    /// Reads on a replicated shard are the leader's (a follower sends the client there), or,
    /// with a `max_lag`, any replica's that is close enough.
    pub(super) async fn check_reader(
        &self,
        max_lag: Option<paramdb_replica::MaxLag>,
    ) -> Result<(), Status> {
        match self.replica() {
            Some(r) => super::replication::check_leader(r, max_lag).await,
            None => Ok(()),
        }
    }

    /// Refuses what a replicated shard cannot do yet.
    pub(super) fn unreplicated(&self, what: &str) -> Result<(), Status> {
        match self.replica() {
            Some(_) => Err(Status::failed_precondition(format!(
                "shard {} is replicated, and {what} is not supported on replicated shards yet",
                self.shard
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "shard {} is at its limit of {} concurrent requests",
                self.shard, self.limits.max_concurrent_requests
            ))
        })
    }

    /// What every call that does work checks first: access, a concurrency permit, and a
    /// store that has finished replaying its log. The permit is held until the call ends.
    pub(super) fn enter(
        &self,
        md: &tonic::metadata::MetadataMap,
        need: Access,
    ) -> Result<(Arc<Store>, OwnedSemaphorePermit), Status> {
        self.authorize(md, need)?;
        let permit = self.permit()?;
        Ok((self.store()?, permit))
    }

    pub(super) fn out_of_range(&self, key: Key) -> Status {
        Status::failed_precondition(format!(
            "key {key} is outside shard {}'s range {} (stale cluster map?)",
            self.shard, self.range
        ))
    }

    /// Requests over the message limit get `RESOURCE_EXHAUSTED`. (tonic itself stops reading
    /// at 4× the limit, and `oversize_as_exhausted` gives that the same code.)
    pub(super) fn check_size(&self, msg: &impl prost::Message) -> Result<(), Status> {
        let len = msg.encoded_len();
        if len > self.limits.max_message_bytes {
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes is over the limit of {} bytes",
                self.limits.max_message_bytes
            )));
        }
        Ok(())
    }

    pub(super) fn check_keys(&self, keys: &[Key]) -> Result<(), Status> {
        if keys.len() > self.limits.max_keys_per_request {
            return Err(Status::invalid_argument(format!(
                "{} keys in one request; the limit is {}",
                keys.len(),
                self.limits.max_keys_per_request
            )));
        }
        match keys.iter().find(|k| !self.range.contains(**k)) {
            Some(&k) => Err(self.out_of_range(k)),
            None => Ok(()),
        }
    }
}

/// A table name no table can have is refused before anything else, and quoted short.
pub(super) fn check_table_name(name: &str) -> Result<(), Status> {
    if name.len() > MAX_NAME_LEN {
        return Err(Status::invalid_argument(format!(
            "table name {} is over the limit of {MAX_NAME_LEN} bytes",
            quote(name)
        )));
    }
    Ok(())
}

/// Runs an engine call on a blocking thread (the engine is synchronous and does disk I/O).
pub(super) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: paramdb_engine::Classify + std::error::Error + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(to_status),
        Err(e) => Err(Status::internal(format!("store task failed: {e}"))),
    }
}

#[tonic::async_trait]
impl Paramdb for ShardService {
    async fn create_table(
        &self,
        req: Request<v1::CreateTableRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        handlers::tables::create(self, req).await
    }

    async fn drop_table(
        &self,
        req: Request<v1::DropTableRequest>,
    ) -> Result<Response<v1::DropTableResponse>, Status> {
        handlers::tables::drop(self, req).await
    }

    async fn list_tables(
        &self,
        req: Request<v1::ListTablesRequest>,
    ) -> Result<Response<v1::ListTablesResponse>, Status> {
        handlers::tables::list(self, req)
    }

    async fn describe_table(
        &self,
        req: Request<v1::DescribeTableRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        handlers::tables::describe(self, req)
    }

    async fn set_lifecycle(
        &self,
        req: Request<v1::SetLifecycleRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        handlers::tables::set_lifecycle(self, req).await
    }

    async fn pull(
        &self,
        req: Request<v1::PullRequest>,
    ) -> Result<Response<v1::PullResponse>, Status> {
        handlers::pull::pull(self, req).await
    }

    async fn push(
        &self,
        req: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        handlers::push::push(self, req).await
    }

    type PullRangeStream = handlers::range::RowBlocks;
    type GoneSinceStream = tokio_stream::wrappers::ReceiverStream<Result<v1::GoneBlock, Status>>;

    async fn gone_since(
        &self,
        req: Request<v1::GoneSinceRequest>,
    ) -> Result<Response<Self::GoneSinceStream>, Status> {
        handlers::range::gone_since(self, req).await
    }

    async fn pull_range(
        &self,
        req: Request<v1::PullRangeRequest>,
    ) -> Result<Response<Self::PullRangeStream>, Status> {
        handlers::range::pull_range(self, req).await
    }

    async fn push_range(
        &self,
        req: Request<v1::PushRangeRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        handlers::push::push_range(self, req).await
    }

    async fn delete_rows(
        &self,
        req: Request<v1::DeleteRowsRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        handlers::push::delete_rows(self, req).await
    }

    async fn delete_range(
        &self,
        req: Request<v1::DeleteRangeRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        handlers::push::delete_range(self, req).await
    }

    async fn import(
        &self,
        req: Request<tonic::Streaming<v1::ImportBlock>>,
    ) -> Result<Response<v1::ImportResponse>, Status> {
        handlers::push::import(self, req).await
    }

    async fn checkpoint(
        &self,
        req: Request<v1::CheckpointRequest>,
    ) -> Result<Response<v1::CheckpointResponse>, Status> {
        handlers::admin::checkpoint(self, req).await
    }

    async fn inspect(
        &self,
        req: Request<v1::InspectRequest>,
    ) -> Result<Response<v1::InspectResponse>, Status> {
        handlers::admin::inspect(self, req).await
    }

    async fn compact(
        &self,
        req: Request<v1::CompactRequest>,
    ) -> Result<Response<v1::CompactResponse>, Status> {
        handlers::admin::compact(self, req).await
    }

    async fn verify(
        &self,
        req: Request<v1::VerifyRequest>,
    ) -> Result<Response<v1::VerifyResponse>, Status> {
        handlers::admin::verify(self, req).await
    }

    async fn log_dump(
        &self,
        req: Request<v1::LogDumpRequest>,
    ) -> Result<Response<v1::LogDumpResponse>, Status> {
        handlers::admin::log_dump(self, req).await
    }

    async fn fence(
        &self,
        req: Request<v1::FenceRequest>,
    ) -> Result<Response<v1::FenceResponse>, Status> {
        handlers::backup::fence(self, req).await
    }

    async fn owe(&self, req: Request<v1::OweRequest>) -> Result<Response<v1::OweResponse>, Status> {
        handlers::backup::owe(self, req).await
    }

    async fn unfence(
        &self,
        req: Request<v1::UnfenceRequest>,
    ) -> Result<Response<v1::UnfenceResponse>, Status> {
        handlers::backup::unfence(self, req).await
    }

    async fn backup(
        &self,
        req: Request<v1::BackupRequest>,
    ) -> Result<Response<v1::BackupResponse>, Status> {
        handlers::backup::backup(self, req).await
    }

    async fn stats(
        &self,
        req: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        handlers::admin::stats(self, req)
    }
}

/// Gives a request that tonic refused for its size (`OUT_OF_RANGE`, "decoded message length
/// too large", past the 4× hard cap) the code the service gives every other oversized message,
/// `RESOURCE_EXHAUSTED`. No handler answers `OUT_OF_RANGE`, so only tonic's refusal is
/// rewritten. Used as a `tower::util::MapResponseLayer` around the whole server.
pub fn oversize_as_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let h = resp.headers_mut();
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if h.get("grpc-status").and_then(|v| v.to_str().ok()) == Some(out_of_range.as_str()) {
        let code = (tonic::Code::ResourceExhausted as i32).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&code) {
            h.insert("grpc-status", v);
        }
    }
    resp
}
