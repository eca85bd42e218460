//! PullRange: the stored rows of a key range, streamed in blocks. A blocking thread scans and
//! fills a small channel, so a slow reader bounds what is read ahead of it. When the server's
//! shutdown grace period ends, a stream whose reader stopped reading is cancelled, so that
//! shutdown (and its final checkpoint) never waits on a stalled client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use paramdb_engine::Store;
use paramdb_proto::{packed, v1};
use paramdb_types::KeyRange;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::rpc::auth::Access;
use crate::rpc::service::{check_table_name, ShardService};
use crate::rpc::status::to_status;

/// The response stream. A stream cut short by shutdown ends with `UNAVAILABLE`, never with a
/// clean end a client would take for the whole range.
#[derive(Debug)]
pub struct RowBlocks {
    rx: ReceiverStream<Result<v1::RowBlock, Status>>,
    cancel: watch::Receiver<bool>,
    /// Set by the scanning thread once it sent everything (or an error).
    complete: Arc<AtomicBool>,
    ended: bool,
}

impl tokio_stream::Stream for RowBlocks {
    type Item = Result<v1::RowBlock, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.rx).poll_next(cx) {
            Poll::Ready(None) if !self.complete.load(Ordering::SeqCst) => {
                self.ended = true;
                let why = if *self.cancel.borrow() {
                    "the shard is shutting down; the range stream was cut short"
                } else {
                    "the range stream's reader thread ended early"
                };
                Poll::Ready(Some(Err(Status::unavailable(why))))
            }
            other => other,
        }
    }
}

/// `[start, end)`, which must lie inside the shard's range (else the client's map is stale).
fn inside_shard(s: &ShardService, start: u64, end: u64) -> Result<KeyRange, Status> {
    let range = KeyRange::new(start, end);
    let inside = s.range.contains(range.start) && range.end <= s.range.end;
    if !range.is_empty() && !inside {
        return Err(Status::failed_precondition(format!(
            "range {range} is not inside shard {}'s range {} (stale cluster map?)",
            s.shard, s.range
        )));
    }
    Ok(range)
}

pub(crate) async fn pull_range(
    s: &ShardService,
    req: Request<v1::PullRangeRequest>,
) -> Result<Response<RowBlocks>, Status> {
    let (store, permit) = s.enter(req.metadata(), Access::Read)?;
    s.check_reader(None).await?;
    let r = req.into_inner();
    check_table_name(&r.table)?;
    let range = inside_shard(s, r.start, r.end)?;
    let dim = store.describe_table(&r.table).map_err(to_status)?.spec.dim;
    let block = match r.block_rows as usize {
        0 => s.limits.range_block_rows,
        n => n.min(s.limits.max_keys_per_request),
    };
    // A small channel bounds what is read ahead of a slow reader.
    let (tx, rx) = mpsc::channel(4);
    let sender = Sender {
        tx,
        cancel: s.cancel.clone(),
        rt: tokio::runtime::Handle::current(),
    };
    let complete = Arc::new(AtomicBool::new(false));
    let stream = RowBlocks {
        rx: ReceiverStream::new(rx),
        cancel: s.cancel.clone(),
        complete: complete.clone(),
        ended: false,
    };
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        if stream_blocks(&store, &r.table, (range, r.since_lsn), dim, block, &sender) {
            complete.store(true, Ordering::SeqCst);
        }
    });
    Ok(Response::new(stream))
}

/// Keys per `GoneBlock`: 64k keys are 512 KiB, well inside gRPC's message limit.
const GONE_BLOCK_KEYS: usize = 65_536;

pub(crate) async fn gone_since(
    s: &ShardService,
    req: Request<v1::GoneSinceRequest>,
) -> Result<Response<ReceiverStream<Result<v1::GoneBlock, Status>>>, Status> {
    let (store, permit) = s.enter(req.metadata(), Access::Read)?;
    s.check_reader(None).await?;
    let r = req.into_inner();
    check_table_name(&r.table)?;
    let range = inside_shard(s, r.start, r.end)?;
    let gone = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        store.gone_since(&r.table, range, r.since_lsn)
    })
    .await
    .map_err(|e| Status::internal(format!("gone-key scan failed: {e}")))?
    .map_err(to_status)?;
    // Blocks are made as the channel takes them: the keys, then the ranges, then the end.
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let keys = gone.keys.chunks(GONE_BLOCK_KEYS).map(|c| v1::GoneBlock {
            keys: c.to_vec(),
            ..Default::default()
        });
        let ranges = gone.ranges.chunks(GONE_BLOCK_KEYS).map(|c| v1::GoneBlock {
            range_starts: c.iter().map(|r| r.start).collect(),
            range_ends: c.iter().map(|r| r.end).collect(),
            ..Default::default()
        });
        let end = std::iter::once(v1::GoneBlock {
            last: true,
            ..Default::default()
        });
        for b in keys.chain(ranges).chain(end) {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}

/// The sending end, which gives up when the reader went away or shutdown cancels it.
struct Sender {
    tx: mpsc::Sender<Result<v1::RowBlock, Status>>,
    cancel: watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
}

impl Sender {
    /// False when the stream is over: the reader went away or shutdown cancelled it.
    fn send(&self, msg: Result<v1::RowBlock, Status>) -> bool {
        let mut cancel = self.cancel.clone();
        self.rt.block_on(async {
            tokio::select! {
                sent = self.tx.send(msg) => sent.is_ok(),
                _ = cancel.wait_for(|c| *c) => false,
            }
        })
    }
}

/// Scans and sends; true when everything was handed to the channel (an error counts: it is
/// the stream's last item).
fn stream_blocks(
    store: &Store,
    table: &str,
    (range, since): (KeyRange, Option<u64>),
    dim: u32,
    block: usize,
    tx: &Sender,
) -> bool {
    let scan = match since {
        Some(lsn) => store.scan_since(table, range, lsn),
        None => store.scan(table, range),
    };
    let scan = match scan {
        Ok(s) => s,
        Err(e) => return tx.send(Err(to_status(e))),
    };
    let (mut keys, mut vals) = (Vec::with_capacity(block), Vec::new());
    for row in scan {
        match row {
            Ok((k, w)) => {
                keys.push(k);
                vals.extend_from_slice(&w);
            }
            Err(e) => return tx.send(Err(to_status(e))),
        }
        if keys.len() == block {
            let msg = v1::RowBlock {
                dim,
                keys: std::mem::replace(&mut keys, Vec::with_capacity(block)),
                values: packed::f32s_into_bytes(std::mem::take(&mut vals)),
            };
            if !tx.send(Ok(msg)) {
                return false;
            }
        }
    }
    keys.is_empty()
        || tx.send(Ok(v1::RowBlock {
            dim,
            keys,
            values: packed::f32s_into_bytes(vals),
        }))
}
