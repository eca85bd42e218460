//! A shard server over gRPC: a lazily connected channel (TLS and a bearer-token interceptor
//! when the cluster file asks for them). Answers are decoded with `paramdb_proto::convert`.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use paramdb_proto::convert;
use paramdb_proto::http2::{CONNECTION_WINDOW, STREAM_WINDOW};
use paramdb_proto::packed;
use paramdb_proto::v1::{self, paramdb_client::ParamdbClient};
use paramdb_types::{Code, Gone, KeyRange, ShardReport, TableSpec, VerifyReport};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{BackupRequest, LogDump, RowBlock, ShardAck, ShardStats, WriteId};
use crate::error::ClientError;

/// TLS and the bearer token for every gRPC shard.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub tls: Option<ClientTlsConfig>,
    pub token: Option<AsciiMetadataValue>,
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone, Debug)]
pub struct Auth(Option<AsciiMetadataValue>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = ParamdbClient<InterceptedService<Channel, Auth>>;
type ReplicationClient =
    v1::replication_client::ReplicationClient<InterceptedService<Channel, Auth>>;

/// One server of a shard: its address and its two services.
#[derive(Clone, Debug)]
struct Server {
    address: String,
    paramdb: Client,
    replication: ReplicationClient,
}

/// A shard server, or the replicas of a replicated shard. Calls go to the replica believed to
/// lead; an answer that names another leader (`paramdb-leader`), or a replica that cannot be
/// reached, moves the belief on, and the client's retry goes there with the same request
/// (and so the same sequence number).
#[derive(Clone, Debug)]
pub struct GrpcShard {
    pub(super) index: usize,
    replicas: Arc<Replicas>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    /// The replica this handle's calls go to, when it was pinned for one attempt: a failure
    /// moves the shard on from that replica only if no other call has moved it already (so
    /// concurrent failures at one dead replica do not rotate past the live ones).
    at: Option<usize>,
    /// The replica the next bounded-staleness pull goes to.
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

/// A shard's replicas: those the cluster file lists, then any leader a hint named that it does
/// not (a replica added to the group since), so the client follows membership changes. Indexes
/// never change: replicas are only added.
#[derive(Debug)]
struct Replicas {
    servers: std::sync::RwLock<Vec<Server>>,
    connect_timeout: Duration,
    security: Security,
}

impl Replicas {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Server>> {
        self.servers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn len(&self) -> usize {
        self.read().len()
    }

    fn get(&self, i: usize) -> Server {
        let s = self.read();
        s[i % s.len()].clone()
    }

    fn all(&self) -> Vec<Server> {
        self.read().clone()
    }

    /// The index of the replica at `address`, added if it is new (`None`: not a valid
    /// address, or the list is at its bound).
    fn find_or_add(&self, index: usize, address: &str) -> Option<usize> {
        if let Some(i) = self.read().iter().position(|r| r.address == address) {
            return Some(i);
        }
        let mut s = self.servers.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = s.iter().position(|r| r.address == address) {
            return Some(i);
        }
        if s.len() >= MAX_REPLICAS {
            return None;
        }
        let server =
            GrpcShard::server(index, address, self.connect_timeout, &self.security).ok()?;
        tracing::info!(shard = index, %address, "following a leader the cluster file does not list");
        s.push(server);
        Some(s.len() - 1)
    }
}

/// The most replicas a shard's client keeps (listed and learned from hints).
const MAX_REPLICAS: usize = 64;

/// The metadata key a replica that does not lead names the leader's address in.
pub const LEADER_METADATA: &str = "paramdb-leader";

/// The largest message the client sends or accepts.
const MAX_MESSAGE: usize = 256 << 20;

/// A gRPC status as the client reports it. A transport failure says only "transport error";
/// its causes (a refused connection, an untrusted certificate, …) are in the source chain.
pub(crate) fn status(shard: usize, s: tonic::Status) -> ClientError {
    let mut message = s.message().to_string();
    let mut source = std::error::Error::source(&s);
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    ClientError::Status {
        shard,
        code: Code::from_i32(s.code() as i32),
        message,
    }
}

impl GrpcShard {
    /// A lazily connected shard: one that is down shows up as `UNAVAILABLE` on calls (which
    /// retry), not as a failure to build the client.
    pub fn connect(
        index: usize,
        addresses: &[&str],
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<GrpcShard, ClientError> {
        let replicas = addresses
            .iter()
            .map(|a| Self::server(index, a, connect_timeout, security))
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(GrpcShard {
            index,
            replicas: Arc::new(Replicas {
                servers: std::sync::RwLock::new(replicas),
                connect_timeout,
                security: security.clone(),
            }),
            current: Default::default(),
            at: None,
            reads: Default::default(),
        })
    }

    fn server(
        index: usize,
        address: &str,
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<Server, ClientError> {
        let scheme = if security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("{scheme}://{address}")
        };
        let connect_error = |e: &dyn std::fmt::Display| ClientError::Connect {
            shard: index,
            address: address.to_string(),
            message: e.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| connect_error(&e))?;
        if let Some(tls) = &security.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| connect_error(&e))?;
        }
        let endpoint = endpoint
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW);
        let channel = endpoint.connect_lazy();
        let auth = Auth(security.token.clone());
        Ok(Server {
            address: address.to_string(),
            paramdb: ParamdbClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            replication: v1::replication_client::ReplicationClient::with_interceptor(channel, auth),
        })
    }

    /// A handle for one attempt: its calls go to the replica calls go to now.
    pub(super) fn pinned(&self) -> GrpcShard {
        GrpcShard {
            at: Some(self.current.load(std::sync::atomic::Ordering::Relaxed)),
            ..self.clone()
        }
    }

    /// The replica calls go to now.
    fn client(&self) -> Client {
        let i = self
            .at
            .unwrap_or_else(|| self.current.load(std::sync::atomic::Ordering::Relaxed));
        self.replicas.get(i).paramdb
    }

    /// Asks the replica calls go to (the leader, once found) to make the group's voters
    /// exactly `members` (id, address).
    pub(super) async fn set_members(
        &self,
        members: &[(u64, String)],
    ) -> Result<ReplicaInfo, ClientError> {
        let i = self
            .at
            .unwrap_or_else(|| self.current.load(std::sync::atomic::Ordering::Relaxed));
        let req = v1::SetMembersRequest {
            group: format!("shard-{}", self.index),
            members: members
                .iter()
                .map(|(id, address)| v1::ReplicaMember {
                    id: *id,
                    address: address.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        let r = self
            .replicas
            .get(i)
            .replication
            .clone()
            .set_members(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(replica_info(r.into_inner()))
    }

    /// Each replica's standing, asked of every replica at once (an unreplicated shard's one
    /// server answers `FAILED_PRECONDITION`).
    pub(super) async fn replica_status(&self) -> Vec<(String, Result<ReplicaInfo, ClientError>)> {
        let replicas = self.replicas.all();
        let calls = replicas.into_iter().map(|r| async move {
            let answer = r
                .replication
                .clone()
                .status(v1::ReplicaStatusRequest {})
                .await
                .map(|s| replica_info(s.into_inner()))
                .map_err(|s| status(self.index, s));
            (r.address.clone(), answer)
        });
        futures::future::join_all(calls).await
    }

    fn status(&self, s: tonic::Status) -> ClientError {
        self.observe(&s);
        status(self.index, s)
    }

    /// Moves calls to the leader an answer names, or past a replica that failed to answer.
    fn observe(&self, s: &tonic::Status) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.replicas.len();
        if n < 2 {
            return;
        }
        let hint = s
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| self.replicas.find_or_add(self.index, a));
        match hint {
            Some(i) => self.current.store(i, Relaxed),
            None if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
            ) =>
            {
                self.no_answer()
            }
            None => {}
        }
    }

    /// Moves calls past a replica that gave no answer in time (it may be cut off from its
    /// group, or from this client).
    pub(super) fn no_answer(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.replicas.len();
        if n < 2 {
            return;
        }
        match self.at {
            Some(at) => {
                let _ = self
                    .current
                    .compare_exchange(at, (at + 1) % n, Relaxed, Relaxed);
            }
            None => {
                let _ = self
                    .current
                    .fetch_update(Relaxed, Relaxed, |c| Some((c + 1) % n));
            }
        }
    }

    fn bad_answer(&self, what: &str) -> ClientError {
        ClientError::Status {
            shard: self.index,
            code: Code::Internal,
            message: what.to_string(),
        }
    }

    fn spec(&self, s: Option<v1::TableSpec>) -> Result<TableSpec, ClientError> {
        convert::spec_from_wire(s.unwrap_or_default()).map_err(|m| self.bad_answer(&m))
    }

    pub(super) async fn create_table(&self, spec: &TableSpec) -> Result<(), ClientError> {
        let req = v1::CreateTableRequest {
            spec: Some(convert::spec_to_wire(spec)),
        };
        self.client()
            .create_table(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    pub(super) async fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        let req = v1::DropTableRequest { name: name.into() };
        self.client()
            .drop_table(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    pub(super) async fn list_tables(&self) -> Result<Vec<TableSpec>, ClientError> {
        let r = self
            .client()
            .list_tables(v1::ListTablesRequest {})
            .await
            .map_err(|s| self.status(s))?;
        r.into_inner()
            .tables
            .into_iter()
            .map(|t| self.spec(t.spec))
            .collect()
    }

    pub(super) async fn describe_table(&self, name: &str) -> Result<TableSpec, ClientError> {
        let r = self
            .client()
            .describe_table(v1::DescribeTableRequest { name: name.into() })
            .await
            .map_err(|s| self.status(s))?;
        self.spec(r.into_inner().spec)
    }

    pub(super) async fn set_lifecycle(
        &self,
        name: &str,
        lifecycle: paramdb_types::Lifecycle,
    ) -> Result<(), ClientError> {
        self.client()
            .set_lifecycle(v1::SetLifecycleRequest {
                table: name.into(),
                lifecycle: lifecycle.to_string(),
            })
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    /// With a `max_lag`, the pull goes to the next replica in turn; one that is too far behind
    /// (or fails) hands it to the leader.
    pub(super) async fn pull(
        &self,
        table: &str,
        keys: Vec<u64>,
        max_lag: Option<crate::MaxLag>,
    ) -> Result<Vec<f32>, ClientError> {
        let (max_lag_entries, max_lag_ms) = match max_lag {
            None => (None, None),
            Some(crate::MaxLag::Entries(n)) => (Some(n), None),
            Some(crate::MaxLag::Millis(ms)) => (None, Some(ms)),
        };
        let req = v1::PullRequest {
            table: table.into(),
            keys,
            max_lag_entries,
            max_lag_ms,
        };
        let n = self.replicas.len();
        if max_lag.is_some() && n > 1 {
            let i = self
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                % n;
            let mut spread = self.replicas.get(i).paramdb;
            if let Ok(r) = spread.pull(req.clone()).await {
                let r = r.into_inner();
                return packed::bytes_to_f32s(&r.values)
                    .ok_or_else(|| self.bad_answer("pull response values are not whole f32s"));
            }
        }
        let r = self
            .client()
            .pull(req)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        packed::bytes_to_f32s(&r.values)
            .ok_or_else(|| self.bad_answer("pull response values are not whole f32s"))
    }

    pub(super) async fn push(
        &self,
        table: &str,
        id: WriteId,
        keys: Vec<u64>,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        let req = v1::PushRequest {
            table: table.into(),
            client_id: id.client,
            seq: id.seq,
            parts: id.parts as u32,
            keys,
            values: packed::f32s_into_bytes(values),
        };
        let r = self.client().push(req).await;
        Ok(ack(r.map_err(|s| self.status(s))?.into_inner()))
    }

    pub(super) async fn push_range(
        &self,
        table: &str,
        id: WriteId,
        start: u64,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        let req = v1::PushRangeRequest {
            table: table.into(),
            client_id: id.client,
            seq: id.seq,
            parts: id.parts as u32,
            start,
            values: packed::f32s_into_bytes(values),
        };
        let r = self.client().push_range(req).await;
        Ok(ack(r.map_err(|s| self.status(s))?.into_inner()))
    }

    pub(super) async fn delete(
        &self,
        table: &str,
        id: WriteId,
        keys: Vec<u64>,
    ) -> Result<ShardAck, ClientError> {
        let req = v1::DeleteRowsRequest {
            table: table.into(),
            client_id: id.client,
            seq: id.seq,
            parts: id.parts as u32,
            keys,
        };
        let r = self.client().delete_rows(req).await;
        Ok(ack(r.map_err(|s| self.status(s))?.into_inner()))
    }

    pub(super) async fn delete_range(
        &self,
        table: &str,
        id: WriteId,
        range: KeyRange,
    ) -> Result<ShardAck, ClientError> {
        let req = v1::DeleteRangeRequest {
            table: table.into(),
            client_id: id.client,
            seq: id.seq,
            parts: id.parts as u32,
            start: range.start,
            end: range.end,
        };
        let r = self.client().delete_range(req).await;
        Ok(ack(r.map_err(|s| self.status(s))?.into_inner()))
    }

    pub(super) async fn begin_import(&self, table: &str) -> Result<GrpcImport, ClientError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = self.client();
        let call = tokio::spawn(async move {
            client
                .import(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        Ok(GrpcImport {
            index: self.index,
            table: Some(table.to_string()),
            tx: Some(tx),
            call: Some(call),
        })
    }

    pub(super) async fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: u64,
    ) -> Result<Gone, ClientError> {
        let index = self.index;
        let req = v1::GoneSinceRequest {
            table: table.into(),
            start: range.start,
            end: range.end,
            since_lsn: since,
        };
        let mut stream = self
            .client()
            .gone_since(req)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        let mut gone = Gone::default();
        while let Some(b) = stream.next().await {
            let b = b.map_err(|s| status(index, s))?;
            if b.range_starts.len() != b.range_ends.len() {
                return Err(ClientError::Status {
                    shard: index,
                    code: Code::Internal,
                    message: "gone block with unpaired range bounds".into(),
                });
            }
            gone.keys.extend(b.keys);
            gone.ranges.extend(
                b.range_starts
                    .into_iter()
                    .zip(b.range_ends)
                    .map(|(s, e)| KeyRange::new(s, e)),
            );
            if b.last {
                return Ok(gone);
            }
        }
        Err(ClientError::Status {
            shard: index,
            code: Code::Unavailable,
            message: "the gone-key stream ended before its last block".into(),
        })
    }

    pub(super) async fn pull_range(
        &self,
        table: &str,
        range: KeyRange,
        since: Option<u64>,
    ) -> Result<BoxStream<'static, Result<RowBlock, ClientError>>, ClientError> {
        let index = self.index;
        let req = v1::PullRangeRequest {
            table: table.into(),
            start: range.start,
            end: range.end,
            block_rows: 0,
            since_lsn: since,
        };
        let stream = self
            .client()
            .pull_range(req)
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        Ok(stream
            .map(move |m| {
                let m = m.map_err(|s| status(index, s))?;
                let values =
                    packed::bytes_to_f32s(&m.values).ok_or_else(|| ClientError::Status {
                        shard: index,
                        code: Code::Internal,
                        message: "range block values are not whole f32s".into(),
                    })?;
                Ok(RowBlock {
                    dim: m.dim,
                    keys: m.keys,
                    values,
                })
            })
            .boxed())
    }

    pub(super) async fn checkpoint(&self) -> Result<u64, ClientError> {
        Ok(self
            .client()
            .checkpoint(v1::CheckpointRequest {})
            .await
            .map_err(|s| self.status(s))?
            .into_inner()
            .lsn)
    }

    pub(super) async fn inspect(&self, exact_rows: bool) -> Result<ShardReport, ClientError> {
        let r = self
            .client()
            .inspect(v1::InspectRequest { exact_rows })
            .await
            .map_err(|s| self.status(s))?;
        Ok(convert::report_from_wire(r.into_inner()))
    }

    pub(super) async fn verify(&self) -> Result<VerifyReport, ClientError> {
        let r = self
            .client()
            .verify(v1::VerifyRequest {})
            .await
            .map_err(|s| self.status(s))?;
        Ok(convert::verify_from_wire(r.into_inner()))
    }

    pub(super) async fn log_dump(&self, from: u64, limit: u32) -> Result<LogDump, ClientError> {
        let r = self
            .client()
            .log_dump(v1::LogDumpRequest {
                from_lsn: from,
                limit,
            })
            .await
            .map_err(|s| self.status(s))?;
        Ok(convert::dump_from_wire(r.into_inner()))
    }

    pub(super) async fn fence(
        &self,
        lease: std::time::Duration,
    ) -> Result<paramdb_types::FenceReport, ClientError> {
        let r = self
            .client()
            .fence(v1::FenceRequest {
                lease_ms: lease.as_millis().max(1) as u64,
            })
            .await
            .map_err(|s| self.status(s))?;
        Ok(convert::fence_from_wire(r.into_inner()))
    }

    pub(super) async fn owe(
        &self,
        fence: u64,
        owed: Vec<(u64, u64)>,
    ) -> Result<Vec<bool>, ClientError> {
        let n = owed.len();
        let (clients, seqs) = owed.into_iter().unzip();
        let r = self
            .client()
            .owe(v1::OweRequest {
                fence,
                clients,
                seqs,
            })
            .await
            .map_err(|s| self.status(s))?
            .into_inner();
        if r.applied.len() != n {
            return Err(self.bad_answer("owe answered for another number of writes"));
        }
        Ok(r.applied)
    }

    pub(super) async fn unfence(&self, fence: u64) -> Result<bool, ClientError> {
        let r = self
            .client()
            .unfence(v1::UnfenceRequest { fence })
            .await
            .map_err(|s| self.status(s))?;
        Ok(r.into_inner().lifted)
    }

    pub(super) async fn backup(
        &self,
        r: BackupRequest,
    ) -> Result<paramdb_types::ShardBackup, ClientError> {
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let req = v1::BackupRequest {
            fence: r.fence,
            dest: path(&r.dest),
            previous: r.previous.as_deref().map(path).unwrap_or_default(),
            copy: r.copy,
        };
        let b = self
            .client()
            .backup(req)
            .await
            .map_err(|s| self.status(s))?;
        Ok(convert::backup_from_wire(b.into_inner()))
    }

    pub(super) async fn compact(&self) -> Result<(), ClientError> {
        self.client()
            .compact(v1::CompactRequest {})
            .await
            .map_err(|s| self.status(s))?;
        Ok(())
    }

    pub(super) async fn stats(&self) -> Result<ShardStats, ClientError> {
        let r = self
            .client()
            .stats(v1::StatsRequest {})
            .await
            .map_err(|s| self.status(s))?;
        let (shard, range, store) = convert::stats_from_wire(r.into_inner());
        Ok(ShardStats {
            shard: shard as usize,
            range,
            store,
        })
    }
}

/// One replica's standing, as `Replication.Status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub group: String,
    pub shard: u32,
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `stopped`.
    pub role: String,
    pub term: u64,
    pub leader: Option<u64>,
    /// The last entry applied to its store, and the last in its log.
    pub applied: Option<u64>,
    pub last_log: Option<u64>,
    /// The first entry its log still holds (earlier ones went into snapshots).
    pub first_log: Option<u64>,
    /// The group's voters: id, address, and (on the leader) the last entry known replicated.
    pub members: Vec<(u64, String, Option<u64>)>,
}

fn replica_info(s: v1::ReplicaStatus) -> ReplicaInfo {
    ReplicaInfo {
        group: s.group,
        shard: s.shard,
        id: s.id,
        role: s.role,
        term: s.term,
        leader: (s.leader != 0).then_some(s.leader),
        applied: s.has_applied.then_some(s.applied),
        last_log: s.has_last_log.then_some(s.last_log),
        first_log: s.has_first_log.then_some(s.first_log),
        members: s
            .members
            .into_iter()
            .map(|m| (m.id, m.address, m.has_matched.then_some(m.matched)))
            .collect(),
    }
}

fn ack(r: v1::PushResponse) -> ShardAck {
    ShardAck {
        lsn: r.lsn,
        duplicate: r.duplicate,
    }
}

/// A bulk import streaming to a shard server: blocks go through a channel into one
/// client-streaming call, which the server answers when the stream ends.
#[derive(Debug)]
pub struct GrpcImport {
    index: usize,
    /// Sent with the first block only.
    table: Option<String>,
    tx: Option<tokio::sync::mpsc::Sender<v1::ImportBlock>>,
    /// `None` once `finish` took it.
    call: Option<ImportCall>,
}

type ImportCall =
    tokio::task::JoinHandle<Result<tonic::Response<v1::ImportResponse>, tonic::Status>>;

impl Drop for GrpcImport {
    /// An import dropped unfinished (another shard failed) is cancelled, so the server sees a
    /// broken stream and ingests nothing; a stream merely ended would be ingested.
    fn drop(&mut self) {
        if let Some(call) = &self.call {
            call.abort();
        }
    }
}

impl GrpcImport {
    pub(super) async fn send(
        &mut self,
        keys: Vec<u64>,
        values: Vec<f32>,
    ) -> Result<(), ClientError> {
        let block = v1::ImportBlock {
            table: self.table.take().unwrap_or_default(),
            keys,
            values: packed::f32s_into_bytes(values),
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(block).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The call ended early: the server refused the stream. Its answer says why.
        self.tx = None;
        let Some(call) = self.call.as_mut() else {
            return Err(ClientError::Status {
                shard: self.index,
                code: Code::Aborted,
                message: "the import stream ended early".into(),
            });
        };
        match call.await {
            Ok(Err(s)) => Err(status(self.index, s)),
            _ => Err(ClientError::Status {
                shard: self.index,
                code: Code::Aborted,
                message: "the import stream ended early".into(),
            }),
        }
    }

    pub(super) async fn finish(mut self) -> Result<super::ImportResult, ClientError> {
        drop(self.tx.take());
        let Some(call) = self.call.take() else {
            return Err(ClientError::Status {
                shard: self.index,
                code: Code::Aborted,
                message: "the import stream ended early".into(),
            });
        };
        match call.await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                Ok(super::ImportResult {
                    rows: r.rows,
                    files: r.files as usize,
                    bytes: r.bytes,
                })
            }
            Ok(Err(s)) => Err(status(self.index, s)),
            Err(e) => Err(ClientError::Status {
                shard: self.index,
                code: Code::Internal,
                message: format!("import task failed: {e}"),
            }),
        }
    }
}
