//! Fence, Owe, Unfence, Backup: a shard's part in a cluster backup. They skip the concurrency
//! limit: writes a fence holds back keep their permits, and the calls that lift it must not
//! queue behind them.

use std::path::PathBuf;
use std::time::Duration;

use paramdb_engine::backup::BackupOptions;
use paramdb_proto::convert::{backup_to_wire, fence_to_wire};
use paramdb_proto::v1;
use paramdb_types::quote;
use tonic::{Request, Response, Status};

use crate::rpc::auth::Access;
use crate::rpc::service::{blocking, ShardService};

/// The longest lease a fence may ask for.
const MAX_LEASE: Duration = Duration::from_secs(600);

pub(crate) async fn fence(
    s: &ShardService,
    req: Request<v1::FenceRequest>,
) -> Result<Response<v1::FenceResponse>, Status> {
    s.authorize(req.metadata(), Access::Write)?;
    s.unreplicated("a cluster backup")?;
    let store = s.store()?;
    let lease = Duration::from_millis(req.into_inner().lease_ms);
    if lease.is_zero() || lease > MAX_LEASE {
        return Err(Status::invalid_argument(format!(
            "a fence's lease must be between 1 ms and {} s",
            MAX_LEASE.as_secs()
        )));
    }
    let r = blocking(move || store.fence(lease)).await?;
    Ok(Response::new(fence_to_wire(r)))
}

pub(crate) async fn owe(
    s: &ShardService,
    req: Request<v1::OweRequest>,
) -> Result<Response<v1::OweResponse>, Status> {
    s.authorize(req.metadata(), Access::Write)?;
    s.unreplicated("a cluster backup")?;
    let store = s.store()?;
    let r = req.into_inner();
    if r.clients.len() != r.seqs.len() {
        return Err(Status::invalid_argument(format!(
            "{} clients for {} sequence numbers",
            r.clients.len(),
            r.seqs.len()
        )));
    }
    let owed: Vec<(u64, u64)> = r.clients.into_iter().zip(r.seqs).collect();
    let applied = blocking(move || store.owe(r.fence, &owed)).await?;
    Ok(Response::new(v1::OweResponse { applied }))
}

pub(crate) async fn unfence(
    s: &ShardService,
    req: Request<v1::UnfenceRequest>,
) -> Result<Response<v1::UnfenceResponse>, Status> {
    s.authorize(req.metadata(), Access::Write)?;
    s.unreplicated("a cluster backup")?;
    let store = s.store()?;
    let lifted = store.unfence(req.into_inner().fence);
    Ok(Response::new(v1::UnfenceResponse { lifted }))
}

fn absolute(what: &str, p: &str) -> Result<PathBuf, Status> {
    let path = PathBuf::from(p);
    if p.is_empty() || !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "the backup's {what} must be an absolute path on the shard's host, not {}",
            quote(p)
        )));
    }
    Ok(path)
}

pub(crate) async fn backup(
    s: &ShardService,
    req: Request<v1::BackupRequest>,
) -> Result<Response<v1::BackupResponse>, Status> {
    s.authorize(req.metadata(), Access::Write)?;
    s.unreplicated("a cluster backup")?;
    let store = s.store()?;
    let r = req.into_inner();
    let dest = absolute("destination", &r.dest)?;
    let previous = if r.previous.is_empty() {
        None
    } else {
        Some(absolute("previous part", &r.previous)?)
    };
    // A requester that goes away (its call dropped) cancels the backup: the shard stops and
    // removes its part instead of finishing a backup nobody will commit.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _on_drop = CancelOnDrop(cancel.clone());
    let opts = BackupOptions {
        copy: r.copy,
        cancel: Some(cancel),
    };
    let b = blocking(move || {
        if r.fence == 0 {
            store.backup(&dest, previous.as_deref(), opts)
        } else {
            store.backup_fenced(r.fence, &dest, previous.as_deref(), opts)
        }
    })
    .await?;
    Ok(Response::new(backup_to_wire(b)))
}

/// Sets the flag when the handler's future is dropped, finished or not (set after the
/// backup returned, it is read by nothing).
struct CancelOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
