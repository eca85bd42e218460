//! A replicated shard on the wire: raft's messages between the group's servers (the
//! `Replication` service, and the `Connector` that sends them over gRPC), each replica's
//! status, and how a replica's answers look to clients (a replica that does not lead says
//! `UNAVAILABLE` and names the leader in `paramdb-leader`, so the client goes there).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use paramdb_engine::SyncPolicy;
use paramdb_proto::v1::{self, replication_client::ReplicationClient, replication_server};
use paramdb_replica::{Connector, MaxLag, NodeId, Op, Outcome, Replica, Rpc, WriteError};
use tonic::metadata::{AsciiMetadataValue, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::auth::{Access, Tokens};
use super::status::code_to_tonic;

/// The metadata key in which a replica that does not lead names the leader's address.
pub const LEADER_METADATA: &str = "paramdb-leader";

/// What a shard server needs to run as one replica of its shard's group.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// The group's name (`shard-<n>`).
    pub group: String,
    /// This replica's id (its position in the cluster file's `replicas`, from 1).
    pub id: NodeId,
    /// Every replica of the group, by id, with its address.
    pub peers: BTreeMap<NodeId, String>,
    /// When an append to the replicated log is durable.
    pub sync: SyncPolicy,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Entries between snapshots.
    pub snapshot_every: u64,
    /// The bearer token to send to the other replicas (the cluster file's).
    pub token: Option<AsciiMetadataValue>,
}

/// Sends raft's messages to the other replicas over gRPC, one lazily connected channel each.
#[derive(Clone, Debug)]
pub struct GrpcConnector {
    group: String,
    token: Option<AsciiMetadataValue>,
    timeout: Duration,
    channels: Arc<Mutex<HashMap<String, ReplicationClient<Channel>>>>,
}

impl GrpcConnector {
    pub fn new(group: String, token: Option<AsciiMetadataValue>, timeout: Duration) -> Self {
        GrpcConnector {
            group,
            token,
            timeout,
            channels: Default::default(),
        }
    }

    fn client(&self, addr: &str) -> Result<ReplicationClient<Channel>, String> {
        let mut c = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = c.get(addr) {
            return Ok(client.clone());
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("replica address {addr:?}: {e}"))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        let client = ReplicationClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20);
        c.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

impl GrpcConnector {
    /// Whether any other replica of the group already belongs to a group (has a term or a
    /// leader): a new replica then joins it instead of making one.
    pub async fn group_exists(&self, rc: &ReplicationConfig) -> bool {
        for (id, addr) in &rc.peers {
            if *id == rc.id {
                continue;
            }
            let Ok(mut c) = self.client(addr) else {
                continue;
            };
            let mut req = Request::new(v1::ReplicaStatusRequest {});
            req.set_timeout(self.timeout);
            if let Some(t) = &self.token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            if let Ok(s) = c.status(req).await {
                let s = s.into_inner();
                if s.term > 0 || s.leader != 0 || s.has_applied {
                    return true;
                }
            }
        }
        false
    }
}

impl Connector for GrpcConnector {
    fn call(
        &self,
        _target: NodeId,
        addr: &str,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send {
        let client = self.client(addr);
        let mut req = Request::new(v1::RaftMessage {
            group: self.group.clone(),
            kind: rpc.name().into(),
            body: body.into(),
        });
        // A snapshot's chunks are large and installing the last one takes a while.
        req.set_timeout(match rpc {
            Rpc::Snapshot => self.timeout * 20,
            _ => self.timeout,
        });
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        async move {
            let mut client = client?;
            client
                .raft(req)
                .await
                .map(|r| r.into_inner().body.to_vec())
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
        }
    }
}

/// The `Replication` service of one replica.
#[derive(Clone, Debug)]
pub struct ReplicationService {
    pub(super) replica: Arc<OnceLock<Replica>>,
    pub(super) shard: u32,
    pub(super) replicated: bool,
    pub(super) tokens: Option<Arc<Tokens>>,
}

impl ReplicationService {
    fn replica(&self) -> Result<&Replica, Status> {
        if !self.replicated {
            return Err(Status::failed_precondition(format!(
                "shard {} is not replicated",
                self.shard
            )));
        }
        self.replica.get().ok_or_else(|| {
            Status::unavailable(format!("shard {}'s replica is starting", self.shard))
        })
    }

    fn authorize(&self, md: &MetadataMap, need: Access) -> Result<(), Status> {
        match &self.tokens {
            Some(t) => t.check(md, need),
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl replication_server::Replication for ReplicationService {
    async fn raft(&self, req: Request<v1::RaftMessage>) -> Result<Response<v1::RaftReply>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let r = self.replica()?;
        let m = req.into_inner();
        if m.group != r.group() {
            return Err(Status::failed_precondition(format!(
                "a message for group {} reached a replica of group {} (is the cluster file \
                 the same everywhere?)",
                paramdb_types::quote(&m.group),
                r.group()
            )));
        }
        let rpc = Rpc::from_name(&m.kind).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown raft message kind {}",
                paramdb_types::quote(&m.kind)
            ))
        })?;
        let body = r.handle(rpc, &m.body).await.map_err(Status::internal)?;
        Ok(Response::new(v1::RaftReply { body: body.into() }))
    }

    async fn status(
        &self,
        req: Request<v1::ReplicaStatusRequest>,
    ) -> Result<Response<v1::ReplicaStatus>, Status> {
        self.authorize(req.metadata(), Access::Read)?;
        let s = self.replica()?.status();
        Ok(Response::new(status_to_wire(s, self.shard)))
    }

    async fn set_members(
        &self,
        req: Request<v1::SetMembersRequest>,
    ) -> Result<Response<v1::ReplicaStatus>, Status> {
        self.authorize(req.metadata(), Access::Write)?;
        let r = self.replica()?;
        let m = req.into_inner();
        if m.group != r.group() {
            return Err(Status::failed_precondition(format!(
                "a membership change for group {} reached a replica of group {}",
                paramdb_types::quote(&m.group),
                r.group()
            )));
        }
        let mut members = BTreeMap::new();
        for member in m.members {
            if members.insert(member.id, member.address).is_some() {
                return Err(Status::invalid_argument(format!(
                    "replica {} is listed twice",
                    member.id
                )));
            }
        }
        let s = r.set_members(members).await.map_err(write_status)?;
        Ok(Response::new(status_to_wire(s, self.shard)))
    }
}

fn status_to_wire(s: paramdb_replica::Status, shard: u32) -> v1::ReplicaStatus {
    v1::ReplicaStatus {
        group: s.group,
        shard,
        id: s.id,
        role: s.role.into(),
        term: s.term,
        leader: s.leader.unwrap_or(0),
        has_applied: s.applied.is_some(),
        applied: s.applied.unwrap_or(0),
        has_last_log: s.last_log.is_some(),
        last_log: s.last_log.unwrap_or(0),
        has_first_log: s.first_log.is_some(),
        first_log: s.first_log.unwrap_or(0),
        members: s
            .members
            .iter()
            .map(|(id, addr)| {
                let m = s.matched.get(id).copied().flatten();
                v1::ReplicaMember {
                    id: *id,
                    address: addr.clone(),
                    has_matched: m.is_some(),
                    matched: m.unwrap_or(0),
                }
            })
            .collect(),
    }
}

/// The status a client gets for a failed write through the group.
pub(super) fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::NotLeader { ref addr, .. } => {
            let addr = addr.clone();
            not_leader(e.to_string(), addr)
        }
        WriteError::Refused(r) => Status::new(code_to_tonic(r.code()), r.message),
        // The client retries with the same sequence number: applied once either way.
        WriteError::Unknown { .. } | WriteError::NoQuorum { .. } => {
            Status::unavailable(e.to_string())
        }
        WriteError::BadMembership { .. } => Status::failed_precondition(e.to_string()),
        WriteError::TooStale { ref addr, .. } => {
            let addr = addr.clone();
            not_leader(e.to_string(), addr)
        }
    }
}

fn not_leader(message: String, leader: Option<String>) -> Status {
    let mut md = MetadataMap::new();
    if let Some(v) = leader.and_then(|a| MetadataValue::try_from(a.as_str()).ok()) {
        md.insert(LEADER_METADATA, v);
    }
    Status::with_metadata(tonic::Code::Unavailable, message, md)
}

/// Proposes `op` to the group and waits until it is committed and applied here.
pub(super) async fn write(r: &Replica, op: Op) -> Result<Outcome, Status> {
    r.write(op).await.map_err(write_status)
}

/// Reads are served by the leader while it knows it leads (see [`Replica::read_check`]): a
/// replica that does not lead sends the client there, and a leader cut off from its group
/// refuses them. A read with a `max_lag` is served by any replica close enough.
pub(super) async fn check_leader(r: &Replica, max_lag: Option<MaxLag>) -> Result<(), Status> {
    r.read_check_within(max_lag).await.map_err(write_status)
}
