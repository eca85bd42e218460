//! Push (rows by key), PushRange (a contiguous block of rows), the deletes (DeleteRows and
//! DeleteRange, writes through the same log) and Import (a bulk load beside the log).

use paramdb_proto::{packed, v1};
use paramdb_types::ClientId;
use prost::bytes::Bytes;
use tonic::{Request, Response, Status};

use paramdb_replica::{Deletion, Keys, Op, Origin, Replica};

use crate::rpc::auth::Access;
use crate::rpc::replication;
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

/// A write on a replicated shard: proposed to the group, acknowledged once committed.
async fn replicated(r: &Replica, op: Op) -> Result<Response<v1::PushResponse>, Status> {
    let o = replication::write(r, op).await?;
    Ok(Response::new(v1::PushResponse {
        lsn: o.lsn,
        duplicate: o.duplicate,
    }))
}

fn origin(client: u64, seq: u64, parts: u16) -> Origin {
    Origin { client, seq, parts }
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
    let parts = parts(r.parts)?;
    if let Some(rep) = s.replica() {
        let op = Op::Push {
            table: r.table,
            origin: origin(r.client_id, r.seq, parts),
            keys: Keys::List(r.keys),
            values: vals,
        };
        return replicated(rep, op).await;
    }
    let a = blocking(move || {
        store.push_part(
            &r.table,
            ClientId(r.client_id),
            r.seq,
            parts,
            &r.keys,
            &vals,
        )
    })
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
    let parts = parts(r.parts)?;
    if let Some(rep) = s.replica() {
        let op = Op::Push {
            table: r.table,
            origin: origin(r.client_id, r.seq, parts),
            keys: Keys::Block { start: r.start },
            values: vals,
        };
        return replicated(rep, op).await;
    }
    let a = blocking(move || {
        store.push_range_part(
            &r.table,
            ClientId(r.client_id),
            r.seq,
            parts,
            r.start,
            &vals,
        )
    })
    .await?;
    Ok(ack(a))
}

pub(crate) async fn delete_rows(
    s: &ShardService,
    req: Request<v1::DeleteRowsRequest>,
) -> Result<Response<v1::PushResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let r = req.into_inner();
    s.check_size(&r)?;
    check_table_name(&r.table)?;
    s.check_keys(&r.keys)?;
    let parts = parts(r.parts)?;
    if let Some(rep) = s.replica() {
        let op = Op::Delete {
            table: r.table,
            origin: origin(r.client_id, r.seq, parts),
            rows: Deletion::Keys(r.keys),
        };
        return replicated(rep, op).await;
    }
    let a =
        blocking(move || store.delete_part(&r.table, ClientId(r.client_id), r.seq, parts, &r.keys))
            .await?;
    Ok(ack(a))
}

pub(crate) async fn delete_range(
    s: &ShardService,
    req: Request<v1::DeleteRangeRequest>,
) -> Result<Response<v1::PushResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let r = req.into_inner();
    check_table_name(&r.table)?;
    if r.start >= r.end {
        return Err(Status::invalid_argument(format!(
            "empty key range [{}, {}): nothing to delete",
            r.start, r.end
        )));
    }
    // The whole range must be this shard's: the client splits a range at shard boundaries.
    for k in [r.start, r.end - 1] {
        if !s.range.contains(k) {
            return Err(s.out_of_range(k));
        }
    }
    let range = paramdb_types::KeyRange::new(r.start, r.end);
    let parts = parts(r.parts)?;
    if let Some(rep) = s.replica() {
        let op = Op::Delete {
            table: r.table,
            origin: origin(r.client_id, r.seq, parts),
            rows: Deletion::Range {
                start: range.start,
                end: range.end,
            },
        };
        return replicated(rep, op).await;
    }
    let a = blocking(move || {
        store.delete_range_part(&r.table, ClientId(r.client_id), r.seq, parts, range)
    })
    .await?;
    Ok(ack(a))
}

/// A write's fan-out, as the engine keeps it.
fn parts(p: u32) -> Result<u16, Status> {
    u16::try_from(p).map_err(|_| {
        Status::invalid_argument(format!(
            "a write split into {p} shards' parts; at most {} are supported",
            u16::MAX
        ))
    })
}

/// Rows per staged table file of an import (an import holds up to three such runs).
const IMPORT_BUDGET: usize = 32 << 20;

pub(crate) async fn import(
    s: &ShardService,
    req: Request<tonic::Streaming<v1::ImportBlock>>,
) -> Result<Response<v1::ImportResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    s.unreplicated("a bulk import")?;
    let mut blocks = req.into_inner();
    let mut import: Option<paramdb_engine::Import> = None;
    while let Some(block) = blocks.message().await? {
        s.check_size(&block)?;
        s.check_keys(&block.keys)?;
        let imp = match import.take() {
            Some(i) => i,
            None => {
                check_table_name(&block.table)?;
                let (store, table) = (store.clone(), block.table.clone());
                blocking(move || store.begin_import(&table, IMPORT_BUDGET)).await?
            }
        };
        let vals = values(&block.values)?;
        let dim = imp.dim();
        if vals.len() != block.keys.len() * dim {
            return Err(Status::invalid_argument(format!(
                "{} values do not make {} rows of dim {dim}",
                vals.len(),
                block.keys.len()
            )));
        }
        import = Some(
            blocking(move || {
                let mut imp = imp;
                imp.add_rows(&block.keys, &vals)?;
                Ok::<_, paramdb_engine::ImportError>(imp)
            })
            .await?,
        );
    }
    let Some(imp) = import else {
        return Err(Status::invalid_argument("an import stream with no rows"));
    };
    let info = blocking(move || imp.finish()).await?;
    Ok(Response::new(v1::ImportResponse {
        rows: info.rows,
        files: info.files as u64,
        bytes: info.bytes,
    }))
}
