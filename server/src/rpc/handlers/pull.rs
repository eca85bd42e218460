//! Pull: rows by key.

use paramdb_proto::{packed, v1};
use tonic::{Request, Response, Status};

use crate::rpc::auth::Access;
use crate::rpc::service::{blocking, check_table_name, ShardService};

pub(crate) async fn pull(
    s: &ShardService,
    req: Request<v1::PullRequest>,
) -> Result<Response<v1::PullResponse>, Status> {
    let (store, _permit) = s.enter(req.metadata(), Access::Read)?;
    let max_lag = match (req.get_ref().max_lag_entries, req.get_ref().max_lag_ms) {
        (None, None) => None,
        (Some(n), None) => Some(paramdb_replica::MaxLag::Entries(n)),
        (None, Some(ms)) => Some(paramdb_replica::MaxLag::Millis(ms)),
        (Some(_), Some(_)) => {
            return Err(Status::invalid_argument(
                "a pull's max lag is in entries or in milliseconds, not both",
            ))
        }
    };
    s.check_reader(max_lag).await?;
    let r = req.into_inner();
    s.check_size(&r)?;
    check_table_name(&r.table)?;
    s.check_keys(&r.keys)?;
    let (dim, vals) = blocking(move || -> Result<_, paramdb_engine::PullError> {
        let dim = store.describe_table(&r.table)?.spec.dim;
        Ok((dim, store.pull(&r.table, &r.keys)?))
    })
    .await?;
    Ok(Response::new(v1::PullResponse {
        dim,
        values: packed::f32s_into_bytes(vals),
    }))
}
