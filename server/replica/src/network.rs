//! Raft's messages between replicas, over a transport the layer above supplies (gRPC in the
//! server; in-process channels in tests). A message is openraft's request, bincode-encoded;
//! the answer is its `Result`, encoded the same way. A transport failure is `Unreachable`, so
//! openraft backs off and retries.

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{NodeId, TypeConfig};

/// The most entry bytes one append message carries. openraft gives an append no longer than
/// its heartbeat interval, so a message of many large pushes would time out again and again:
/// past this, the message is refused as too large with a hint of how many entries fit, and
/// openraft sends that many.
const MAX_APPEND_BYTES: u64 = 4 << 20;

/// Which raft message a call carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Append => "append",
            Rpc::Vote => "vote",
            Rpc::Snapshot => "snapshot",
        }
    }

    pub fn from_name(s: &str) -> Option<Rpc> {
        [Rpc::Append, Rpc::Vote, Rpc::Snapshot]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

/// Carries one encoded message to replica `target` at `addr` and brings its encoded answer
/// back. `Err` is a transport failure (the message may or may not have arrived).
pub trait Connector: Clone + Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// openraft's network factory over a `Connector`.
#[derive(Clone, Debug)]
pub struct Network<C> {
    connector: C,
}

impl<C> Network<C> {
    pub fn new(connector: C) -> Self {
        Network { connector }
    }
}

/// The connection to one peer.
#[derive(Debug)]
pub struct Peer<C> {
    connector: C,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

impl<C: Connector> RaftNetworkFactory<TypeConfig> for Network<C> {
    type Network = Peer<C>;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        Peer {
            connector: self.connector.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl<C: Connector> Peer<C> {
    async fn send<
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    >(
        &self,
        rpc: Rpc,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>> {
        self.send_encoded(rpc, encode(req)?).await
    }

    async fn send_encoded<Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>> {
        let answer = self
            .connector
            .call(self.target, &self.addr, rpc, body)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Transport(e))))?;
        let r: Result<Resp, E> = bincode::deserialize(&answer)
            .map_err(|e| RPCError::Network(NetworkError::from(AnyError::error(e.to_string()))))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn encode<Req: Serialize, E: std::error::Error>(
    req: &Req,
) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, E>> {
    bincode::serialize(req)
        .map_err(|e| RPCError::Network(NetworkError::from(AnyError::error(e.to_string()))))
}

impl<C: Connector> RaftNetwork<TypeConfig> for Peer<C> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = encode(&rpc)?;
        if body.len() as u64 > MAX_APPEND_BYTES && rpc.entries.len() > 1 {
            let mut bytes = 0;
            let fit = rpc
                .entries
                .iter()
                .take_while(|e| {
                    bytes += bincode::serialized_size(e).unwrap_or(0);
                    bytes <= MAX_APPEND_BYTES
                })
                .count();
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit.max(1) as u64),
            ));
        }
        self.send_encoded(Rpc::Append, body).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Rpc::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Rpc::Vote, &rpc).await
    }

    /// After a replica could not be reached: 20 ms, doubling to at most 100 ms (openraft's
    /// default is 500 ms). A restarted replica is caught up soon after it listens, so that a
    /// second leader loss soon after finds two replicas fit to lead, not one; retrying a
    /// down replica ten times a second costs a refused connection each.
    fn backoff(&self) -> openraft::network::Backoff {
        let steps = std::iter::successors(Some(Duration::from_millis(20)), |d| {
            Some((*d * 2).min(Duration::from_millis(100)))
        });
        openraft::network::Backoff::new(steps)
    }
}

/// Decodes a message for `raft`, hands it over, and encodes the answer.
/// Answers one raft message. `heard` is told the leader's commit index each time an append
/// from the leader is accepted (heartbeats included).
pub(crate) async fn serve(
    raft: &openraft::Raft<TypeConfig>,
    rpc: Rpc,
    body: &[u8],
    heard: impl FnOnce(Option<u64>),
) -> Result<Vec<u8>, String> {
    fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        bincode::serialize(v).map_err(|e| e.to_string())
    }
    let bad = |e: bincode::Error| format!("undecodable raft {} message: {e}", rpc.name());
    match rpc {
        Rpc::Append => {
            let req: AppendEntriesRequest<TypeConfig> = bincode::deserialize(body).map_err(bad)?;
            let commit = req.leader_commit.map(|l| l.index);
            let r = raft.append_entries(req).await;
            if matches!(r, Ok(AppendEntriesResponse::Success)) {
                heard(commit);
            }
            enc(&r)
        }
        Rpc::Vote => {
            let req: VoteRequest<NodeId> = bincode::deserialize(body).map_err(bad)?;
            enc(&raft.vote(req).await)
        }
        Rpc::Snapshot => {
            let req: InstallSnapshotRequest<TypeConfig> =
                bincode::deserialize(body).map_err(bad)?;
            enc(&raft.install_snapshot(req).await)
        }
    }
}
