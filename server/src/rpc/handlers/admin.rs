//! Checkpoint, Compact, Inspect, Verify, LogDump, Stats.

use paramdb_proto::convert::{dump_to_wire, report_to_wire, stats_to_wire, verify_to_wire};
use paramdb_proto::v1;
use tonic::{Request, Response, Status};

use crate::rpc::auth::Access;
use crate::rpc::service::{blocking, ShardService};

pub(crate) async fn checkpoint(
    s: &ShardService,
    req: Request<v1::CheckpointRequest>,
) -> Result<Response<v1::CheckpointResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let info = blocking(move || store.checkpoint()).await?;
    Ok(Response::new(v1::CheckpointResponse {
        lsn: info.lsn,
        rows_written: info.rows_written as u64,
        segments_removed: info.segments_removed as u64,
    }))
}

pub(crate) async fn compact(
    s: &ShardService,
    req: Request<v1::CompactRequest>,
) -> Result<Response<v1::CompactResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    blocking(move || store.compact()).await?;
    Ok(Response::new(v1::CompactResponse {}))
}

pub(crate) async fn inspect(
    s: &ShardService,
    req: Request<v1::InspectRequest>,
) -> Result<Response<v1::InspectResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Read)?;
    let exact = req.into_inner().exact_rows;
    let report = blocking(move || store.inspect(exact)).await?;
    Ok(Response::new(report_to_wire(s.shard, s.range, report)))
}

pub(crate) async fn verify(
    s: &ShardService,
    req: Request<v1::VerifyRequest>,
) -> Result<Response<v1::VerifyResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Read)?;
    let report = blocking(move || store.verify()).await?;
    Ok(Response::new(verify_to_wire(report)))
}

pub(crate) async fn log_dump(
    s: &ShardService,
    req: Request<v1::LogDumpRequest>,
) -> Result<Response<v1::LogDumpResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Read)?;
    let r = req.into_inner();
    let limit = if r.limit == 0 {
        1000
    } else {
        r.limit.min(100_000)
    } as usize;
    let dump = blocking(move || store.dump_log(r.from_lsn, limit)).await?;
    Ok(Response::new(dump_to_wire(dump)))
}

pub(crate) fn stats(
    s: &ShardService,
    req: Request<v1::StatsRequest>,
) -> Result<Response<v1::StatsResponse>, Status> {
    s.authorize(req.metadata(), Access::Read)?;
    let store = s.store()?;
    Ok(Response::new(stats_to_wire(
        s.shard,
        s.range,
        store.stats(),
    )))
}
