//! The `Paramdb` gRPC service of one shard: wire decoding, the checks only the wire layer can
//! make (packing, key range, request limits), and a hop to a blocking thread for the store.

use std::sync::{Arc, OnceLock};

use paramdb_proto::packed;
use paramdb_proto::v1::{self, paramdb_server::Paramdb};
use prost::bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::auth::{Access, Tokens};
use super::status::to_status;
use crate::inspect::{ShardReport, TableReport};
use crate::store::{Store, StoreStats, TableInfo};
use crate::table::{Initializer, TableSpec, UpdateRule};
use crate::types::{ClientId, Key, KeyRange};
use crate::verify::{Problem, VerifyReport};
use crate::wal::dump::RecordInfo;

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
    store: Arc<OnceLock<Arc<Store>>>,
    shard: u32,
    range: KeyRange,
    limits: Limits,
    permits: Arc<Semaphore>,
    /// Accepted bearer tokens; `None` lets every request through.
    tokens: Option<Arc<Tokens>>,
}

impl ShardService {
    pub fn new(
        store: Arc<OnceLock<Arc<Store>>>,
        shard: u32,
        range: KeyRange,
        limits: Limits,
        tokens: Option<Tokens>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent_requests));
        ShardService {
            store,
            shard,
            range,
            limits,
            permits,
            tokens: tokens.map(Arc::new),
        }
    }

    fn authorize(&self, md: &tonic::metadata::MetadataMap, need: Access) -> Result<(), Status> {
        match &self.tokens {
            Some(t) => t.check(md, need),
            None => Ok(()),
        }
    }

    fn store(&self) -> Result<Arc<Store>, Status> {
        self.store.get().cloned().ok_or_else(|| {
            Status::unavailable(format!("shard {} is replaying its log", self.shard))
        })
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "shard {} is at its limit of {} concurrent requests",
                self.shard, self.limits.max_concurrent_requests
            ))
        })
    }

    fn out_of_range(&self, key: Key) -> Status {
        Status::failed_precondition(format!(
            "key {key} is outside shard {}'s range {} (stale cluster map?)",
            self.shard, self.range
        ))
    }

    /// Requests over the message limit get `RESOURCE_EXHAUSTED` (tonic itself stops reading at
    /// a hard cap of a few times the limit).
    fn check_size(&self, msg: &impl prost::Message) -> Result<(), Status> {
        let len = msg.encoded_len();
        if len > self.limits.max_message_bytes {
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes is over the limit of {} bytes",
                self.limits.max_message_bytes
            )));
        }
        Ok(())
    }

    fn check_keys(&self, keys: &[Key]) -> Result<(), Status> {
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

/// Runs a store call on a blocking thread (the store is synchronous and does disk I/O).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(to_status),
        Err(e) => Err(Status::internal(format!("store task failed: {e}"))),
    }
}

fn values(b: &Bytes) -> Result<Vec<f32>, Status> {
    packed::bytes_to_f32s(b).ok_or_else(|| {
        Status::invalid_argument(format!(
            "values are {} bytes, not a whole number of f32",
            b.len()
        ))
    })
}

fn spec_from_wire(s: v1::TableSpec) -> Result<TableSpec, Status> {
    let init: Initializer = if s.init.is_empty() {
        Initializer::Zeros
    } else {
        s.init.parse().map_err(Status::invalid_argument)?
    };
    let rule: UpdateRule = if s.rule.is_empty() {
        UpdateRule::Add
    } else {
        s.rule.parse().map_err(Status::invalid_argument)?
    };
    Ok(TableSpec {
        name: s.name,
        dim: s.dim,
        init,
        rule,
        seed: s.seed,
    })
}

/// A shard's stats as the wire carries them (the embedded transport reports the same).
pub fn stats_to_wire(shard: u32, range: KeyRange, s: StoreStats) -> v1::StatsResponse {
    v1::StatsResponse {
        shard,
        range_start: range.start,
        range_end: range.end,
        tables: s.tables as u64,
        pushes: s.pushes,
        duplicate_pushes: s.duplicate_pushes,
        rows_pushed: s.rows_pushed,
        pulls: s.pulls,
        rows_pulled: s.rows_pulled,
        dirty_rows: s.dirty_rows as u64,
        log_segments: s.log_segments as u64,
        log_bytes_since_checkpoint: s.log_bytes_since_checkpoint,
        last_lsn: s.last_lsn,
        durable_lsn: s.durable_lsn,
        checkpoint_lsn: s.checkpoint_lsn,
        checkpoints: s.checkpoints,
        fsyncs: s.fsyncs,
        poisoned: s.poisoned.unwrap_or_default(),
        cache_budget_bytes: s.cache.budget_bytes,
        cache_resident_bytes: s.cache.resident_bytes,
        cache_resident_rows: s.cache.resident_rows,
        cache_hits: s.cache.hits,
        cache_misses: s.cache.misses,
        cache_admitted: s.cache.admitted,
        cache_declined: s.cache.declined,
        cache_evictions: s.cache.evictions,
    }
}

/// A shard's inspect report as the wire carries it.
pub fn report_to_wire(shard: u32, range: KeyRange, r: ShardReport) -> v1::InspectResponse {
    v1::InspectResponse {
        shard,
        range_start: range.start,
        range_end: range.end,
        dir: r.dir.display().to_string(),
        read_only: r.read_only,
        store_format: r.store_format,
        log_format: r.log_format,
        row_format: r.row_format,
        cache_format: r.cache_format,
        checkpoint_lsn: r.checkpoint_lsn,
        last_lsn: r.last_lsn,
        log_segments: r.log_segments,
        log_bytes: r.log_bytes,
        rocksdb_bytes: r.rocksdb_bytes,
        cache_file_bytes: r.cache_file_bytes,
        dirty_rows: r.dirty_rows,
        cache_budget_bytes: r.cache.budget_bytes,
        cache_resident_rows: r.cache.resident_rows,
        cache_hits: r.cache.hits,
        cache_misses: r.cache.misses,
        tables: r
            .tables
            .into_iter()
            .map(|t| v1::TableReport {
                name: t.name,
                id: t.id,
                dim: t.dim,
                rule: t.rule,
                floats_per_row: t.floats_per_row,
                rows: t.rows,
                rows_exact: t.rows_exact,
                sst_files: t.sst_files,
                sst_bytes: t.sst_bytes,
                dirty_rows: t.dirty_rows,
                has_keys: t.key_range.is_some(),
                first_key: t.key_range.map_or(0, |r| r.0),
                last_key: t.key_range.map_or(0, |r| r.1),
            })
            .collect(),
    }
}

/// The inverse of `report_to_wire` (what a client makes of a shard's answer).
pub fn report_from_wire(r: v1::InspectResponse) -> ShardReport {
    ShardReport {
        dir: r.dir.into(),
        read_only: r.read_only,
        store_format: r.store_format,
        log_format: r.log_format,
        row_format: r.row_format,
        cache_format: r.cache_format,
        checkpoint_lsn: r.checkpoint_lsn,
        last_lsn: r.last_lsn,
        log_segments: r.log_segments,
        log_bytes: r.log_bytes,
        rocksdb_bytes: r.rocksdb_bytes,
        cache_file_bytes: r.cache_file_bytes,
        dirty_rows: r.dirty_rows,
        cache: crate::cache::CacheStats {
            budget_bytes: r.cache_budget_bytes,
            resident_rows: r.cache_resident_rows,
            hits: r.cache_hits,
            misses: r.cache_misses,
            ..Default::default()
        },
        tables: r
            .tables
            .into_iter()
            .map(|t| TableReport {
                name: t.name,
                id: t.id,
                dim: t.dim,
                rule: t.rule,
                floats_per_row: t.floats_per_row,
                rows: t.rows,
                rows_exact: t.rows_exact,
                sst_files: t.sst_files,
                sst_bytes: t.sst_bytes,
                dirty_rows: t.dirty_rows,
                key_range: t.has_keys.then_some((t.first_key, t.last_key)),
            })
            .collect(),
    }
}

pub fn verify_to_wire(r: VerifyReport) -> v1::VerifyResponse {
    v1::VerifyResponse {
        dir: r.dir.display().to_string(),
        has_checkpoint_lsn: r.checkpoint_lsn.is_some(),
        checkpoint_lsn: r.checkpoint_lsn.unwrap_or(0),
        segments: r.segments,
        records: r.records,
        log_bytes: r.log_bytes,
        tables: r.tables,
        rows: r.rows,
        sst_files: r.sst_files,
        notes: r.notes,
        problems: r
            .problems
            .into_iter()
            .map(|p| v1::VerifyProblem {
                area: p.area.to_string(),
                detail: p.detail,
            })
            .collect(),
    }
}

pub fn verify_from_wire(r: v1::VerifyResponse) -> VerifyReport {
    let area = |a: &str| -> &'static str {
        ["log", "rocksdb", "catalog", "meta"]
            .into_iter()
            .find(|k| *k == a)
            .unwrap_or("other")
    };
    VerifyReport {
        dir: r.dir.into(),
        checkpoint_lsn: r.has_checkpoint_lsn.then_some(r.checkpoint_lsn),
        segments: r.segments,
        records: r.records,
        log_bytes: r.log_bytes,
        tables: r.tables,
        rows: r.rows,
        sst_files: r.sst_files,
        notes: r.notes,
        problems: r
            .problems
            .into_iter()
            .map(|p| Problem {
                area: area(&p.area),
                detail: p.detail,
            })
            .collect(),
        log_gap: false,
    }
}

pub fn dump_to_wire((records, trouble): (Vec<RecordInfo>, Vec<String>)) -> v1::LogDumpResponse {
    v1::LogDumpResponse {
        records: records
            .into_iter()
            .map(|r| v1::LogRecordInfo {
                segment: r.segment,
                offset: r.offset,
                lsn: r.lsn,
                kind: r.kind.to_string(),
                client: r.client,
                seq: r.seq,
                table: r.table,
                dim: r.dim,
                rows: r.rows,
                has_first_key: r.first_key.is_some(),
                first_key: r.first_key.unwrap_or(0),
                bytes: r.bytes,
            })
            .collect(),
        trouble,
    }
}

pub fn dump_from_wire(d: v1::LogDumpResponse) -> (Vec<RecordInfo>, Vec<String>) {
    let records = d
        .records
        .into_iter()
        .map(|r| RecordInfo {
            segment: r.segment,
            offset: r.offset,
            lsn: r.lsn,
            kind: if r.kind == "range" { "range" } else { "keys" },
            client: r.client,
            seq: r.seq,
            table: r.table,
            dim: r.dim,
            rows: r.rows,
            first_key: r.has_first_key.then_some(r.first_key),
            bytes: r.bytes,
        })
        .collect();
    (records, d.trouble)
}

pub fn info_to_wire(t: TableInfo) -> v1::TableInfo {
    v1::TableInfo {
        id: t.id,
        spec: Some(v1::TableSpec {
            name: t.spec.name,
            dim: t.spec.dim,
            init: t.spec.init.to_string(),
            rule: t.spec.rule.to_string(),
            seed: t.spec.seed,
        }),
    }
}

#[tonic::async_trait]
impl Paramdb for ShardService {
    async fn create_table(
        &self,
        req: Request<v1::CreateTableRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let spec = spec_from_wire(
            req.into_inner()
                .spec
                .ok_or_else(|| Status::invalid_argument("missing table spec"))?,
        )?;
        let info = blocking(move || store.create_table(spec)).await?;
        Ok(Response::new(info_to_wire(info)))
    }

    async fn drop_table(
        &self,
        req: Request<v1::DropTableRequest>,
    ) -> Result<Response<v1::DropTableResponse>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let name = req.into_inner().name;
        blocking(move || store.drop_table(&name)).await?;
        Ok(Response::new(v1::DropTableResponse {}))
    }

    async fn list_tables(
        &self,
        req: Request<v1::ListTablesRequest>,
    ) -> Result<Response<v1::ListTablesResponse>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let store = self.store()?;
        let tables = store.list_tables().into_iter().map(info_to_wire).collect();
        Ok(Response::new(v1::ListTablesResponse { tables }))
    }

    async fn describe_table(
        &self,
        req: Request<v1::DescribeTableRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let store = self.store()?;
        let info = store
            .describe_table(&req.into_inner().name)
            .map_err(to_status)?;
        Ok(Response::new(info_to_wire(info)))
    }

    async fn pull(
        &self,
        req: Request<v1::PullRequest>,
    ) -> Result<Response<v1::PullResponse>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let r = req.into_inner();
        self.check_size(&r)?;
        self.check_keys(&r.keys)?;
        let (dim, vals) = blocking(move || {
            let dim = store.describe_table(&r.table)?.spec.dim;
            Ok((dim, store.pull(&r.table, &r.keys)?))
        })
        .await?;
        Ok(Response::new(v1::PullResponse {
            dim,
            values: packed::f32s_into_bytes(vals),
        }))
    }

    async fn push(
        &self,
        req: Request<v1::PushRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let r = req.into_inner();
        self.check_size(&r)?;
        self.check_keys(&r.keys)?;
        let vals = values(&r.values)?;
        let ack =
            blocking(move || store.push(&r.table, ClientId(r.client_id), r.seq, &r.keys, &vals))
                .await?;
        Ok(Response::new(v1::PushResponse {
            lsn: ack.lsn,
            duplicate: ack.duplicate,
        }))
    }

    type PullRangeStream = ReceiverStream<Result<v1::RowBlock, Status>>;

    async fn pull_range(
        &self,
        req: Request<v1::PullRangeRequest>,
    ) -> Result<Response<Self::PullRangeStream>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let permit = self.permit()?;
        let store = self.store()?;
        let r = req.into_inner();
        let range = KeyRange::new(r.start, r.end);
        let inside = self.range.contains(range.start) && range.end <= self.range.end;
        if !range.is_empty() && !inside {
            return Err(Status::failed_precondition(format!(
                "range {range} is not inside shard {}'s range {} (stale cluster map?)",
                self.shard, self.range
            )));
        }
        let dim = store.describe_table(&r.table).map_err(to_status)?.spec.dim;
        let block = match r.block_rows as usize {
            0 => self.limits.range_block_rows,
            n => n.min(self.limits.max_keys_per_request),
        };
        // A small channel bounds what is read ahead of a slow reader.
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let scan = match store.scan(&r.table, range) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.blocking_send(Err(to_status(e)));
                    return;
                }
            };
            let (mut keys, mut vals) = (Vec::with_capacity(block), Vec::new());
            for row in scan {
                match row {
                    Ok((k, w)) => {
                        keys.push(k);
                        vals.extend_from_slice(&w);
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(to_status(e)));
                        return;
                    }
                }
                if keys.len() == block {
                    let msg = v1::RowBlock {
                        dim,
                        keys: std::mem::replace(&mut keys, Vec::with_capacity(block)),
                        values: packed::f32s_into_bytes(std::mem::take(&mut vals)),
                    };
                    if tx.blocking_send(Ok(msg)).is_err() {
                        return; // the client went away
                    }
                }
            }
            if !keys.is_empty() {
                let _ = tx.blocking_send(Ok(v1::RowBlock {
                    dim,
                    keys,
                    values: packed::f32s_into_bytes(vals),
                }));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn push_range(
        &self,
        req: Request<v1::PushRangeRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let r = req.into_inner();
        self.check_size(&r)?;
        let vals = values(&r.values)?;
        let dim = store.describe_table(&r.table).map_err(to_status)?.spec.dim as usize;
        if vals.is_empty() || vals.len() % dim != 0 {
            return Err(Status::invalid_argument(format!(
                "{} values do not make whole rows of dim {dim}",
                vals.len()
            )));
        }
        let rows = (vals.len() / dim) as u64;
        if rows as usize > self.limits.max_keys_per_request {
            return Err(Status::invalid_argument(format!(
                "{rows} rows in one request; the limit is {}",
                self.limits.max_keys_per_request
            )));
        }
        let last = r.start.checked_add(rows - 1).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{rows} rows from {} overflow the key space",
                r.start
            ))
        })?;
        for k in [r.start, last] {
            if !self.range.contains(k) {
                return Err(self.out_of_range(k));
            }
        }
        let ack = blocking(move || {
            store.push_range(&r.table, ClientId(r.client_id), r.seq, r.start, &vals)
        })
        .await?;
        Ok(Response::new(v1::PushResponse {
            lsn: ack.lsn,
            duplicate: ack.duplicate,
        }))
    }

    async fn checkpoint(
        &self,
        req: Request<v1::CheckpointRequest>,
    ) -> Result<Response<v1::CheckpointResponse>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let info = blocking(move || store.checkpoint()).await?;
        Ok(Response::new(v1::CheckpointResponse {
            lsn: info.lsn,
            rows_written: info.rows_written as u64,
            segments_removed: info.segments_removed as u64,
        }))
    }

    async fn inspect(
        &self,
        req: Request<v1::InspectRequest>,
    ) -> Result<Response<v1::InspectResponse>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let exact = req.into_inner().exact_rows;
        let report = blocking(move || store.inspect(exact)).await?;
        Ok(Response::new(report_to_wire(
            self.shard, self.range, report,
        )))
    }

    async fn compact(
        &self,
        req: Request<v1::CompactRequest>,
    ) -> Result<Response<v1::CompactResponse>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let _p = self.permit()?;
        let store = self.store()?;
        blocking(move || store.compact()).await?;
        Ok(Response::new(v1::CompactResponse {}))
    }

    async fn verify(
        &self,
        req: Request<v1::VerifyRequest>,
    ) -> Result<Response<v1::VerifyResponse>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let report = blocking(move || store.verify()).await?;
        Ok(Response::new(verify_to_wire(report)))
    }

    async fn log_dump(
        &self,
        req: Request<v1::LogDumpRequest>,
    ) -> Result<Response<v1::LogDumpResponse>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let _p = self.permit()?;
        let store = self.store()?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(100_000)
        } as usize;
        let dump = blocking(move || store.dump_log(r.from_lsn, limit)).await?;
        Ok(Response::new(dump_to_wire(dump)))
    }

    async fn stats(
        &self,
        req: Request<v1::StatsRequest>,
    ) -> Result<Response<v1::StatsResponse>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let store = self.store()?;
        Ok(Response::new(stats_to_wire(
            self.shard,
            self.range,
            store.stats(),
        )))
    }
}
