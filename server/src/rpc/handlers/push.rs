//! Push (rows by key) and PushRange (a contiguous block of rows).

use paramdb_proto::{packed, v1};
use paramdb_types::ClientId;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::rpc::auth::Access;
use crate::rpc::service::{blocking, check_table_name, ShardService};
use crate::rpc::status::to_status;

fn values(b: &Bytes) -> Result<Vec<f32>, Status> {
    packed::bytes_to_f32s(b).ok_or_else(|| {
        Status::invalid_argument(format!(
            "values are {} bytes, not a whole number of f32",
            b.len()
        ))
    })
}

fn ack(a: paramdb_types::PushAck) -> Response<v1::PushResponse> {
    Response::new(v1::PushResponse {
        lsn: a.lsn,
        duplicate: a.duplicate,
    })
}

pub(crate) async fn push(
    s: &ShardService,
    req: Request<v1::PushRequest>,
) -> Result<Response<v1::PushResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let r = req.into_inner();
    s.check_size(&r)?;
    check_table_name(&r.table)?;
    s.check_keys(&r.keys)?;
    let vals = values(&r.values)?;
    let a = blocking(move || store.push(&r.table, ClientId(r.client_id), r.seq, &r.keys, &vals))
        .await?;
    Ok(ack(a))
}

pub(crate) async fn push_range(
    s: &ShardService,
    req: Request<v1::PushRangeRequest>,
) -> Result<Response<v1::PushResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let r = req.into_inner();
    s.check_size(&r)?;
    check_table_name(&r.table)?;
    let vals = values(&r.values)?;
    let dim = store.describe_table(&r.table).map_err(to_status)?.spec.dim as usize;
    if vals.is_empty() || vals.len() % dim != 0 {
        return Err(Status::invalid_argument(format!(
            "{} values do not make whole rows of dim {dim}",
            vals.len()
        )));
    }
    let rows = (vals.len() / dim) as u64;
    if rows as usize > s.limits.max_keys_per_request {
        return Err(Status::invalid_argument(format!(
            "{rows} rows in one request; the limit is {}",
            s.limits.max_keys_per_request
        )));
    }
    let last = r.start.checked_add(rows - 1).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{rows} rows from {} overflow the key space",
            r.start
        ))
    })?;
    for k in [r.start, last] {
        if !s.range.contains(k) {
            return Err(s.out_of_range(k));
        }
    }
    let a =
        blocking(move || store.push_range(&r.table, ClientId(r.client_id), r.seq, r.start, &vals))
            .await?;
    Ok(ack(a))
}
