//! One replica of a group: its log store, its state machine (the engine store), and the
//! openraft node that joins them to the other replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use paramdb_engine::{Store, StoreOptions, SyncPolicy};

use crate::command::{Command, Op, Outcome, Refusal};
use crate::log_store::LogStore;
use crate::network::{Connector, Network, Rpc};
use crate::state_machine::{OpenStoreError, StateMachine};
use crate::{NodeId, TypeConfig};

/// Everything a replica is told when it opens.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// This replica's id in its group (not 0).
    pub id: NodeId,
    /// The replica's directory: `raft/` (the replicated log), `engine-<n>/` (the store),
    /// `snapshots/`.
    pub dir: PathBuf,
    /// The group's name; replicas of different groups refuse each other's messages.
    pub group: String,
    /// The store's options (its clock, sync policy and local writes are set by the replica).
    pub store: StoreOptions,
    /// When an append to the replicated log counts as durable (acknowledged writes are durable
    /// under it on a majority).
    pub sync: SyncPolicy,
    pub heartbeat: Duration,
    /// A follower that hears from no leader for a random time in this range stands for
    /// election.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built after this many entries, and the log before it purged.
    pub snapshot_every: u64,
}

impl ReplicaOptions {
    pub fn new(id: NodeId, dir: impl Into<PathBuf>, group: impl Into<String>) -> ReplicaOptions {
        ReplicaOptions {
            id,
            dir: dir.into(),
            group: group.into(),
            store: StoreOptions::default(),
            sync: SyncPolicy::Sync,
            heartbeat: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            snapshot_every: 10_000,
        }
    }
}

/// Opening a replica failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {id}: the replicated log in {dir}: {source}")]
    Log {
        id: NodeId,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {id}: {source}")]
    Store {
        id: NodeId,
        #[source]
        source: OpenStoreError,
    },
    #[error("replica {id}: bad raft configuration: {reason}")]
    Config { id: NodeId, reason: String },
    #[error("replica {id}: {reason}")]
    Raft { id: NodeId, reason: String },
}

/// A write through the group failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// This replica does not lead; `leader` may know better.
    #[error("replica {id} is not the group's leader{}", leader_hint(.leader, .addr))]
    NotLeader {
        id: NodeId,
        leader: Option<NodeId>,
        addr: Option<String>,
    },
    /// Every replica refused it alike (bad input, an unknown table, an old sequence number).
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// The outcome is unknown (leadership changed while the write was in flight, or the
    /// replica is stopping): retry with the same sequence number.
    #[error("replica {id}: the write's outcome is unknown: {reason}")]
    Unknown { id: NodeId, reason: String },
    /// This replica leads, but no majority of the group has answered it for `silent_ms` (it
    /// is cut off, and the others may have elected a leader): retry elsewhere, with the same
    /// sequence number, since a write it took may yet be committed.
    #[error(
        "replica {id} leads, but no majority of its group has answered it for {silent_ms} ms; \
         another replica may lead now"
    )]
    NoQuorum { id: NodeId, silent_ms: u64 },
    /// A membership the group cannot take.
    #[error("replica {id}: {reason}")]
    BadMembership { id: NodeId, reason: String },
    /// This follower is further behind the leader than a bounded-staleness read allows.
    #[error("replica {id} is too far behind for this read ({behind}){}", leader_hint(.leader, .addr))]
    TooStale {
        id: NodeId,
        behind: String,
        leader: Option<NodeId>,
        addr: Option<String>,
    },
}

fn leader_hint(leader: &Option<NodeId>, addr: &Option<String>) -> String {
    match (leader, addr) {
        (Some(l), Some(a)) => format!(" (replica {l} at {a} leads)"),
        (Some(l), None) => format!(" (replica {l} leads)"),
        _ => " (no leader is known yet)".into(),
    }
}

/// Where a replica stands, for `cluster status` and gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub group: String,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// The last entry applied to the store.
    pub applied: Option<u64>,
    /// The last entry in the log.
    pub last_log: Option<u64>,
    /// The first entry the log still holds (the ones before it were purged into snapshots).
    pub first_log: Option<u64>,
    /// The voters, and their addresses.
    pub members: BTreeMap<NodeId, String>,
    /// On the leader: each replica's last entry known replicated.
    pub matched: BTreeMap<NodeId, Option<u64>>,
}

/// A running replica.
#[derive(Clone)]
pub struct Replica {
    id: NodeId,
    group: String,
    raft: Raft<TypeConfig>,
    sm: StateMachine,
    log: LogStore,
    /// How long after a majority last answered the leader no other replica can have been
    /// elected (openraft's leader lease: a follower votes for no one that long after it last
    /// heard from the leader).
    lease: Duration,
    /// How long a write or a read barrier waits on a leader no majority answers.
    patience: Duration,
    /// How stale the metrics a read looks at can be (openraft reports them at least once a
    /// tick, 1.5 heartbeats).
    tick: Duration,
    /// On a follower: the leader's commit index with each of its last few accepted appends,
    /// newest last (what a bounded-staleness read is measured against).
    heard: Arc<std::sync::Mutex<std::collections::VecDeque<Heard>>>,
}

/// The leader's commit index as an accepted append carried it, and when it came.
#[derive(Clone, Copy, Debug)]
struct Heard {
    commit: Option<u64>,
    at: std::time::Instant,
}

/// How many of the leader's last appends a follower remembers.
const HEARD: usize = 8;

/// How far behind the leader a read may be, for reads that any replica close enough serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxLag {
    /// At most this many entries behind the leader's commit index, as of the leader's last
    /// message (which must itself be less than the leader lease old).
    Entries(u64),
    /// Everything acknowledged more than this long ago is seen.
    Millis(u64),
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens the replica in `opts.dir` (creating it if new) and starts its raft node. A new
    /// replica waits to be added to a group (`bootstrap`, or a leader's `add_replica`).
    pub async fn open<C: Connector>(
        opts: ReplicaOptions,
        connector: C,
    ) -> Result<Replica, ReplicaError> {
        let id = opts.id;
        if id == 0 {
            return Err(ReplicaError::Config {
                id,
                reason: "replica ids start at 1".into(),
            });
        }
        let raft_dir = opts.dir.join("raft");
        let log = LogStore::open(&raft_dir, opts.sync).map_err(|source| ReplicaError::Log {
            id,
            dir: raft_dir.clone(),
            source,
        })?;
        let sm = StateMachine::open(&opts.dir, opts.store.clone(), log.clone())
            .map_err(|source| ReplicaError::Store { id, source })?;
        let ms = |d: Duration| d.as_millis() as u64;
        let config = Config {
            cluster_name: opts.group.clone(),
            heartbeat_interval: ms(opts.heartbeat),
            election_timeout_min: ms(opts.election_timeout.0),
            election_timeout_max: ms(opts.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: opts.snapshot_every / 4,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Config {
            id,
            reason: e.to_string(),
        })?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(connector),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| ReplicaError::Raft {
            id,
            reason: e.to_string(),
        })?;
        let lease = opts.election_timeout.1;
        Ok(Replica {
            id,
            group: opts.group,
            raft,
            sm,
            log,
            lease,
            patience: (lease * 4).max(Duration::from_secs(1)),
            tick: opts.heartbeat * 3 / 2,
            heard: Default::default(),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Makes a new group of `members` (id → address), this replica among them. A group that
    /// already has a membership is left as it is.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> Result<(), ReplicaError> {
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ReplicaError::Raft {
                id: self.id,
                reason: e.to_string(),
            }),
        }
    }

    /// Proposes `op`; returns once it is committed (durable on a majority under the sync
    /// policy) and applied here. A leader that no majority answers gives up after its patience
    /// (the outcome is unknown then, not lost: retry with the same sequence number).
    pub async fn write(&self, op: Op) -> Result<Outcome, WriteError> {
        if let Some(silent) = self.silence().filter(|s| *s > self.patience) {
            return Err(self.no_quorum(silent));
        }
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32);
        let write = self.raft.client_write(Command { time, op });
        let r = self.while_answered(write).await?;
        match r {
            Ok(r) => match r.data.refused {
                Some(refusal) => Err(WriteError::Refused(refusal)),
                None => Ok(r.data),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(f))
            }
            Err(e) => Err(self.unknown(e)),
        }
    }

    /// Runs `f` while this replica is answered by a majority, or does not lead: once it has
    /// waited its patience on a leader no majority answers, gives up.
    async fn while_answered<T>(
        &self,
        f: impl std::future::Future<Output = T>,
    ) -> Result<T, WriteError> {
        let started = tokio::time::Instant::now();
        let mut check = tokio::time::interval(self.tick);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(f);
        loop {
            tokio::select! {
                r = &mut f => return Ok(r),
                _ = check.tick() => {
                    if started.elapsed() > self.patience {
                        let m = self.raft.metrics().borrow().clone();
                        if m.state == ServerState::Leader {
                            let silent = m.millis_since_quorum_ack.map(Duration::from_millis);
                            if silent.is_none_or(|s| s > self.patience) {
                                return Err(self.no_quorum(silent.unwrap_or(started.elapsed())));
                            }
                        }
                    }
                }
            }
        }
    }

    /// On the leader: how long since a majority last answered it (`None` elsewhere, or before
    /// any answer).
    fn silence(&self) -> Option<Duration> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader)
            .then_some(m.millis_since_quorum_ack)
            .flatten()
            .map(Duration::from_millis)
    }

    fn no_quorum(&self, silent: Duration) -> WriteError {
        WriteError::NoQuorum {
            id: self.id,
            silent_ms: silent.as_millis() as u64,
        }
    }

    /// Returns once this replica is known to lead and has applied every entry committed when
    /// it was called: reads after it see every write acknowledged before.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        match self.while_answered(self.raft.ensure_linearizable()).await? {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(self.not_leader(f))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(self.no_quorum(self.silence().unwrap_or_default()))
            }
            Err(e) => Err(self.unknown(e)),
        }
    }

    /// Returns once a read here may be served: with no `max_lag`, as [`Replica::read_check`];
    /// with one, a follower close enough to the leader serves it at once (and one that is not
    /// names the leader), while the leader checks as for any read.
    pub async fn read_check_within(&self, max_lag: Option<MaxLag>) -> Result<(), WriteError> {
        let Some(max) = max_lag else {
            return self.read_check().await;
        };
        let (state, applied, leader, addr) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let leader = m.current_leader;
            let addr = leader.and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            });
            (m.state, m.last_applied.map(|l| l.index), leader, addr)
        };
        if state == ServerState::Leader {
            return self.read_check().await;
        }
        let behind = self.behind(applied, max);
        match behind {
            None => Ok(()),
            Some(behind) => Err(WriteError::TooStale {
                id: self.id,
                behind,
                leader,
                addr,
            }),
        }
    }

    /// Whether this replica is caught up: it leads, or it follows a leader it heard from less
    /// than a lease ago and is at most `entries` behind that leader's commit index. (What a
    /// readiness probe reports.)
    pub fn caught_up(&self, entries: u64) -> bool {
        let (state, applied) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.last_applied.map(|l| l.index))
        };
        match state {
            ServerState::Leader => true,
            ServerState::Follower | ServerState::Learner => {
                self.behind(applied, MaxLag::Entries(entries)).is_none()
            }
            ServerState::Candidate | ServerState::Shutdown => false,
        }
    }

    /// On a follower: why a read bounded by `max` cannot be served here (`None`: it can).
    fn behind(&self, applied: Option<u64>, max: MaxLag) -> Option<String> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        let Some(newest) = heard.back().copied() else {
            return Some("it has heard from no leader since it started".into());
        };
        // Entries at or below `applied` are applied here.
        let covers = |h: &Heard| h.commit.is_none_or(|c| applied.is_some_and(|a| a >= c));
        match max {
            MaxLag::Entries(n) => {
                let age = newest.at.elapsed();
                if age >= self.lease {
                    return Some(format!(
                        "it last heard from the leader {} ms ago",
                        age.as_millis()
                    ));
                }
                let lag = match (newest.commit, applied) {
                    (None, _) => 0,
                    (Some(c), Some(a)) => c.saturating_sub(a),
                    (Some(c), None) => c + 1,
                };
                (lag > n).then(|| format!("{lag} entries behind, more than {n}"))
            }
            MaxLag::Millis(ms) => {
                // Everything acknowledged before the leader sent the newest append this
                // replica has applied the commit index of is applied here.
                let age = heard
                    .iter()
                    .rev()
                    .find(|h| covers(h))
                    .map(|h| h.at.elapsed());
                match age {
                    Some(age) if age.as_millis() <= ms as u128 => None,
                    Some(age) => Some(format!("{} ms behind, more than {ms}", age.as_millis())),
                    None => Some(format!(
                        "more than {} ms behind, more than {ms}",
                        heard.front().map_or(0, |h| h.at.elapsed().as_millis())
                    )),
                }
            }
        }
    }

    /// Returns once a read here sees every write acknowledged before it was called. The leader
    /// answers at once while its lease holds (a majority answered it less than the lease ago,
    /// so no other replica can lead yet) and it has applied an entry of its own term (so every
    /// entry committed before it); otherwise it confirms its leadership with a round of
    /// heartbeats ([`Replica::read_barrier`]). A replica that does not lead names the leader.
    pub async fn read_check(&self) -> Result<(), WriteError> {
        let leased = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                let addr = m.current_leader.and_then(|l| {
                    m.membership_config
                        .membership()
                        .get_node(&l)
                        .map(|n| n.addr.clone())
                });
                return Err(WriteError::NotLeader {
                    id: self.id,
                    leader: m.current_leader,
                    addr,
                });
            }
            let fresh = m
                .millis_since_quorum_ack
                .is_some_and(|ms| Duration::from_millis(ms) + self.tick < self.lease);
            let own_term = m
                .last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term);
            fresh && own_term
        };
        if leased {
            return Ok(());
        }
        self.read_barrier().await
    }

    fn not_leader(&self, f: openraft::error::ForwardToLeader<NodeId, BasicNode>) -> WriteError {
        WriteError::NotLeader {
            id: self.id,
            leader: f.leader_id,
            addr: f.leader_node.map(|n| n.addr),
        }
    }

    fn unknown(&self, e: impl std::fmt::Display) -> WriteError {
        WriteError::Unknown {
            id: self.id,
            reason: e.to_string(),
        }
    }

    /// The store, for reads. A snapshot install replaces it: take it again for each read.
    pub fn store(&self) -> Arc<Store> {
        self.sm.shared.engine()
    }

    /// Handles a raft message from another replica of the group.
    pub async fn handle(&self, rpc: Rpc, body: &[u8]) -> Result<Vec<u8>, String> {
        crate::network::serve(&self.raft, rpc, body, |commit| {
            let mut h = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            if h.len() == HEARD {
                h.pop_front();
            }
            h.push_back(Heard {
                commit,
                at: std::time::Instant::now(),
            });
        })
        .await
    }

    /// Adds replica `id` at `addr` to the group: first as a learner that catches up (from a
    /// snapshot and the log after it), then as a voter. Call on the leader.
    pub async fn add_replica(&self, id: NodeId, addr: String) -> Result<(), WriteError> {
        let unknown = |e: String| WriteError::Unknown {
            id: self.id,
            reason: e,
        };
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| unknown(e.to_string()))?;
        let mut voters: BTreeSet<NodeId> = self.voters();
        voters.insert(id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| self.unknown(e))?;
        Ok(())
    }

    /// Makes the group's voters exactly `members` (id → address), while writes go on. Call on
    /// the leader. A replica new to the group joins first as a learner and is caught up (from
    /// a snapshot and the log after it) before the voters change, in one joint-consensus step;
    /// replicas left out are removed. A replica keeps its address: one that replaces a lost
    /// replica takes a new id (giving a voter's id to an empty replica could lose committed
    /// entries). Returns the status after the change.
    pub async fn set_members(
        &self,
        members: BTreeMap<NodeId, String>,
    ) -> Result<Status, WriteError> {
        let bad = |reason: String| WriteError::BadMembership {
            id: self.id,
            reason,
        };
        if members.is_empty() || members.len().is_multiple_of(2) {
            return Err(bad(format!(
                "a group needs an odd number of replicas, not {}",
                members.len()
            )));
        }
        if members.contains_key(&0) {
            return Err(bad("replica ids start at 1".into()));
        }
        let status = self.status();
        if status.role != "leader" {
            return Err(WriteError::NotLeader {
                id: self.id,
                leader: status.leader,
                addr: status.leader.and_then(|l| status.members.get(&l).cloned()),
            });
        }
        let nodes: BTreeMap<NodeId, String> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        };
        for (id, addr) in &members {
            match nodes.get(id) {
                Some(old) if old != addr => {
                    return Err(bad(format!(
                        "replica {id} is at {old}, not {addr}: a replica that replaces another \
                         takes a new id"
                    )))
                }
                Some(_) => {}
                None => {
                    tracing::info!(replica = id, %addr, "adding a learner; it catches up first");
                    self.raft
                        .add_learner(*id, BasicNode { addr: addr.clone() }, true)
                        .await
                        .map_err(|e| self.unknown(e))?;
                }
            }
        }
        let voters: BTreeSet<NodeId> = members.keys().copied().collect();
        if voters != self.voters() {
            tracing::info!(?voters, "changing the voters");
            self.raft
                .change_membership(voters, false)
                .await
                .map_err(|e| self.unknown(e))?;
        }
        Ok(self.status())
    }

    /// Removes replica `id` from the group. Call on the leader.
    pub async fn remove_replica(&self, id: NodeId) -> Result<(), WriteError> {
        let mut voters = self.voters();
        voters.remove(&id);
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| self.unknown(e))?;
        Ok(())
    }

    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "stopped",
        };
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let matched = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let (first_log, _) = self.log.span();
        Status {
            id: self.id,
            group: self.group.clone(),
            role,
            term: m.current_term,
            leader: m.current_leader,
            applied: m.last_applied.map(|l| l.index),
            last_log: m.last_log_index,
            first_log,
            members,
            matched,
        }
    }

    /// Waits until the status satisfies `f`, for at most `timeout`.
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&Status) -> bool) -> Option<Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.status();
            if f(&s) {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the raft node. The store is closed when the last handle to it goes.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft node did not stop cleanly");
        }
    }
}
