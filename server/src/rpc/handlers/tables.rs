//! CreateTable, DropTable, ListTables, DescribeTable, SetLifecycle.

use paramdb_proto::convert::{info_to_wire, spec_from_wire};
use paramdb_proto::v1;
use tonic::{Request, Response, Status};

use paramdb_replica::{Op, Spec};

use crate::rpc::auth::Access;
use crate::rpc::replication;
use crate::rpc::service::{blocking, check_table_name, ShardService};
use crate::rpc::status::to_status;

pub(crate) async fn create(
    s: &ShardService,
    req: Request<v1::CreateTableRequest>,
) -> Result<Response<v1::TableInfo>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let spec = req
        .into_inner()
        .spec
        .ok_or_else(|| Status::invalid_argument("missing table spec"))?;
    check_table_name(&spec.name)?;
    let spec = spec_from_wire(spec).map_err(Status::invalid_argument)?;
    if let Some(r) = s.replica() {
        let name = spec.name.clone();
        replication::write(r, Op::CreateTable(Spec::from(&spec))).await?;
        let info = r.store().describe_table(&name).map_err(to_status)?;
        return Ok(Response::new(info_to_wire(info.id, &info.spec)));
    }
    let info = blocking(move || store.create_table(spec)).await?;
    Ok(Response::new(info_to_wire(info.id, &info.spec)))
}

pub(crate) async fn drop(
    s: &ShardService,
    req: Request<v1::DropTableRequest>,
) -> Result<Response<v1::DropTableResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let name = req.into_inner().name;
    check_table_name(&name)?;
    if let Some(r) = s.replica() {
        replication::write(r, Op::DropTable { name }).await?;
        return Ok(Response::new(v1::DropTableResponse {}));
    }
    blocking(move || store.drop_table(&name)).await?;
    Ok(Response::new(v1::DropTableResponse {}))
}

pub(crate) fn list(
    s: &ShardService,
    req: Request<v1::ListTablesRequest>,
) -> Result<Response<v1::ListTablesResponse>, Status> {
    s.authorize(req.metadata(), Access::Read)?;
    let store = s.store()?;
    let tables = store
        .list_tables()
        .iter()
        .map(|t| info_to_wire(t.id, &t.spec))
        .collect();
    Ok(Response::new(v1::ListTablesResponse { tables }))
}

pub(crate) fn describe(
    s: &ShardService,
    req: Request<v1::DescribeTableRequest>,
) -> Result<Response<v1::TableInfo>, Status> {
    s.authorize(req.metadata(), Access::Read)?;
    let store = s.store()?;
    let name = req.into_inner().name;
    check_table_name(&name)?;
    let info = store.describe_table(&name).map_err(to_status)?;
    Ok(Response::new(info_to_wire(info.id, &info.spec)))
}

pub(crate) async fn set_lifecycle(
    s: &ShardService,
    req: Request<v1::SetLifecycleRequest>,
) -> Result<Response<v1::TableInfo>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Write)?;
    let req = req.into_inner();
    check_table_name(&req.table)?;
    let lifecycle: paramdb_engine::Lifecycle = req
        .lifecycle
        .parse()
        .map_err(|e: String| Status::invalid_argument(format!("invalid lifecycle: {e}")))?;
    if let Some(r) = s.replica() {
        if lifecycle.max_rows.is_some() {
            return Err(Status::failed_precondition(format!(
                "shard {} is replicated, and max_rows (whose eviction pass each replica would \
                 run on its own) is not supported on replicated shards yet",
                s.shard
            )));
        }
        let table = req.table.clone();
        replication::write(
            r,
            Op::SetLifecycle {
                table: req.table,
                policies: lifecycle.into(),
            },
        )
        .await?;
        let info = r.store().describe_table(&table).map_err(to_status)?;
        return Ok(Response::new(info_to_wire(info.id, &info.spec)));
    }
    let info = blocking(move || store.set_lifecycle(&req.table, lifecycle)).await?;
    Ok(Response::new(info_to_wire(info.id, &info.spec)))
}
