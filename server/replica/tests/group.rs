//! Replica groups in one process, over an in-process transport that can cut replicas off:
//! leader loss, restarts with the store's own log, rebuilds from snapshots, partitions,
//! bounded-staleness reads on followers.
//! (The suite's `it::replication` tests do the same across processes with SIGKILL.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paramdb_engine::TableSpec;
use paramdb_replica::{
    Connector, Keys, MaxLag, NodeId, Op, Origin, Replica, ReplicaOptions, Rpc, Spec, WriteError,
};

#[derive(Default)]
struct Net {
    nodes: Mutex<HashMap<NodeId, Replica>>,
    cut: Mutex<HashSet<NodeId>>,
}

/// One replica's view of the network: messages from or to a cut replica are lost.
#[derive(Clone)]
struct Link {
    me: NodeId,
    net: Arc<Net>,
}

impl Connector for Link {
    fn call(
        &self,
        target: NodeId,
        _addr: &str,
        rpc: Rpc,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send {
        let cut = {
            let c = self.net.cut.lock().unwrap();
            c.contains(&self.me) || c.contains(&target)
        };
        let node = self.net.nodes.lock().unwrap().get(&target).cloned();
        async move {
            if cut {
                return Err("cut off".into());
            }
            match node {
                Some(r) => r.handle(rpc, &body).await,
                None => Err("down".into()),
            }
        }
    }
}

const DIM: usize = 4;

struct Group {
    net: Arc<Net>,
    root: std::path::PathBuf,
    snapshot_every: u64,
}

impl Group {
    fn opts(&self, id: NodeId) -> ReplicaOptions {
        let mut o = ReplicaOptions::new(id, self.root.join(format!("r{id}")), "g");
        o.store.background = false;
        o.store.cache_bytes = 1 << 20;
        o.snapshot_every = self.snapshot_every;
        o
    }

    async fn start(&self, id: NodeId) -> Replica {
        let r = Replica::open(
            self.opts(id),
            Link {
                me: id,
                net: self.net.clone(),
            },
        )
        .await
        .unwrap();
        self.net.nodes.lock().unwrap().insert(id, r.clone());
        r
    }

    async fn stop(&self, id: NodeId) {
        let r = self.net.nodes.lock().unwrap().remove(&id);
        if let Some(r) = r {
            r.shutdown().await;
            // The store closes once raft's tasks let go of it.
            let store = Arc::downgrade(&r.store());
            drop(r);
            for _ in 0..500 {
                if store.upgrade().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("replica {id}'s store stayed open after shutdown");
        }
    }

    fn replica(&self, id: NodeId) -> Replica {
        self.net.nodes.lock().unwrap()[&id].clone()
    }

    async fn leader(&self) -> Replica {
        for _ in 0..1000 {
            let nodes: Vec<Replica> = self.net.nodes.lock().unwrap().values().cloned().collect();
            let cut = self.net.cut.lock().unwrap().clone();
            for r in nodes {
                if r.status().role == "leader" && !cut.contains(&r.id()) {
                    return r;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader was elected");
    }

    /// Pushes through whoever leads, retrying with the same sequence number until it is
    /// acknowledged.
    async fn push(&self, seq: u64, key: u64) -> Replica {
        let op = Op::Push {
            table: "t".into(),
            origin: Origin {
                client: 7,
                seq,
                parts: 1,
            },
            keys: Keys::List(vec![key]),
            values: vec![1.0; DIM],
        };
        for _ in 0..200 {
            let l = self.leader().await;
            match l.write(op.clone()).await {
                Ok(_) => return l,
                Err(WriteError::Refused(r)) => panic!("push refused: {}", r.message),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("push {seq} never acknowledged");
    }
}

/// Pushes `seqs` through whoever leads, sequence `seq` adding to key `seq % keys`.
async fn push_many(g: &Group, seqs: std::ops::RangeInclusive<u64>, keys: u64, counts: &mut [u32]) {
    for seq in seqs {
        let key = seq % keys;
        g.push(seq, key).await;
        counts[key as usize] += 1;
    }
}

fn members(ids: &[NodeId]) -> BTreeMap<NodeId, String> {
    ids.iter().map(|&i| (i, format!("r{i}"))).collect()
}

/// Every key's value on `r`'s store (`None` before it has the table).
fn rows(r: &Replica, keys: u64) -> Option<Vec<f32>> {
    let k: Vec<u64> = (0..keys).collect();
    r.store().pull("t", &k).ok()
}

async fn converged(g: &Group, ids: &[NodeId], want: &[f32], keys: u64) {
    for _ in 0..1000 {
        if ids
            .iter()
            .all(|&i| rows(&g.replica(i), keys).as_deref() == Some(want))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for &i in ids {
        assert_eq!(
            rows(&g.replica(i), keys).as_deref(),
            Some(want),
            "replica {i} differs"
        );
    }
}

fn expected(counts: &[u32]) -> Vec<f32> {
    counts
        .iter()
        .flat_map(|&c| std::iter::repeat_n(c as f32, DIM))
        .collect()
}

async fn new_group(root: &Path, snapshot_every: u64) -> Group {
    let g = Group {
        net: Arc::new(Net::default()),
        root: root.to_path_buf(),
        snapshot_every,
    };
    for id in 1..=3 {
        g.start(id).await;
    }
    g.replica(1).bootstrap(members(&[1, 2, 3])).await.unwrap();
    let spec = TableSpec::new("t", DIM as u32);
    g.leader()
        .await
        .write(Op::CreateTable(Spec::from(&spec)))
        .await
        .unwrap();
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_every_acknowledged_push_through_leader_loss_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let g = new_group(dir.path(), 1_000_000).await;
    const KEYS: u64 = 10;
    let mut counts = vec![0u32; KEYS as usize];
    let mut seq = 0;
    for round in 0..4 {
        for _ in 0..40 {
            seq += 1;
            let key = seq % KEYS;
            g.push(seq, key).await;
            counts[key as usize] += 1;
        }
        // The leader goes down; the others elect one and go on; it comes back from its
        // directory (its store replays its own log) and catches up.
        let l = g.leader().await.id();
        g.stop(l).await;
        for _ in 0..20 {
            seq += 1;
            let key = seq % KEYS;
            let by = g.push(seq, key).await;
            assert_ne!(by.id(), l, "round {round}");
            counts[key as usize] += 1;
        }
        g.start(l).await;
    }
    // A retry of an acknowledged push, on whoever leads now, is acknowledged and not applied.
    let l = g.leader().await;
    let again = l
        .write(Op::Push {
            table: "t".into(),
            origin: Origin {
                client: 7,
                seq: 5,
                parts: 1,
            },
            keys: Keys::List(vec![5]),
            values: vec![1.0; DIM],
        })
        .await
        .unwrap();
    assert!(again.duplicate);
    converged(&g, &[1, 2, 3], &expected(&counts), KEYS).await;
    // Every replica holds the same records: the same last LSN.
    let lsns: Vec<u64> = (1..=3).map(|i| g.replica(i).store().last_lsn()).collect();
    assert!(lsns.iter().all(|&l| l == lsns[0]), "{lsns:?}");
    // A refused write is refused alike and changes nothing.
    let refused = l
        .write(Op::Push {
            table: "nope".into(),
            origin: Origin::ANONYMOUS,
            keys: Keys::List(vec![1]),
            values: vec![1.0; DIM],
        })
        .await;
    assert!(
        matches!(refused, Err(WriteError::Refused(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_replica_is_rebuilt_from_a_snapshot_and_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let g = new_group(dir.path(), 30).await;
    const KEYS: u64 = 8;
    let mut counts = vec![0u32; KEYS as usize];
    for seq in 1..=150 {
        let key = seq % KEYS;
        g.push(seq, key).await;
        counts[key as usize] += 1;
    }
    // A follower loses its disk while pushes go on.
    let l = g.leader().await.id();
    let f = (1..=3).find(|&i| i != l).unwrap();
    g.stop(f).await;
    std::fs::remove_dir_all(dir.path().join(format!("r{f}"))).unwrap();
    // Pushes go on until the leader's log no longer starts at the beginning (it purges only
    // what no replication is reading at the moment).
    let mut seq = 150;
    while seq < 230 || g.leader().await.status().first_log.is_none_or(|i| i == 0) {
        seq += 1;
        let key = seq % KEYS;
        g.push(seq, key).await;
        counts[key as usize] += 1;
        assert!(seq < 5000, "the leader never purged its log");
    }
    // It comes back empty: the leader's log was purged past its start, so it gets the
    // leader's snapshot, then the entries after it.
    g.start(f).await;
    converged(&g, &[1, 2, 3], &expected(&counts), KEYS).await;
    assert!(
        dir.path().join(format!("r{f}")).join("engine-1").is_dir(),
        "replica {f} should have installed a snapshot as its engine's generation 1"
    );
    // Then the leader dies: nothing acknowledged is lost.
    g.stop(l).await;
    for seq in seq + 1..=seq + 30 {
        let key = seq % KEYS;
        g.push(seq, key).await;
        counts[key as usize] += 1;
    }
    let rest: Vec<NodeId> = (1..=3).filter(|&i| i != l).collect();
    converged(&g, &rest, &expected(&counts), KEYS).await;
    // A fourth replica joins with an empty directory, and a third leaves.
    g.start(4).await;
    let leader = g.leader().await;
    leader.add_replica(4, "r4".into()).await.unwrap();
    converged(&g, &[4], &expected(&counts), KEYS).await;
    let s = g.leader().await.status();
    assert!(s.members.contains_key(&4), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_acknowledges_nothing_and_the_majority_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let g = new_group(dir.path(), 1_000_000).await;
    const KEYS: u64 = 4;
    let mut counts = vec![0u32; KEYS as usize];
    push_many(&g, 1..=20, KEYS, &mut counts).await;
    let old = g.leader().await;
    g.net.cut.lock().unwrap().insert(old.id());
    // The old leader cannot commit: its write never succeeds, and once it has waited its
    // patience (1 s) with no majority answering, it says so rather than hang.
    let stranded = tokio::time::timeout(
        Duration::from_secs(10),
        old.write(Op::Push {
            table: "t".into(),
            origin: Origin {
                client: 9,
                seq: 1,
                parts: 1,
            },
            keys: Keys::List(vec![0]),
            values: vec![1.0; DIM],
        }),
    )
    .await;
    assert!(
        matches!(stranded, Ok(Err(WriteError::NoQuorum { .. }))),
        "a cut-off leader should refuse a write as unanswered: {stranded:?}"
    );
    // Its lease is long over: it serves no reads either (another replica may lead by now).
    let read = tokio::time::timeout(Duration::from_secs(10), old.read_check()).await;
    assert!(
        matches!(read, Ok(Err(WriteError::NoQuorum { .. }))),
        "a cut-off leader should refuse reads: {read:?}"
    );
    for seq in 21..=40 {
        let key = seq % KEYS;
        let by = g.push(seq, key).await;
        assert_ne!(by.id(), old.id());
        counts[key as usize] += 1;
    }
    g.net.cut.lock().unwrap().clear();
    // The stranded write was never acknowledged; whether it landed depends on whether the
    // new leader kept it (it cannot have: the old leader could not reach anyone).
    converged(&g, &[1, 2, 3], &expected(&counts), KEYS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_bounded_staleness_reads_only_while_it_is_close_enough() {
    let dir = tempfile::tempdir().unwrap();
    let g = new_group(dir.path(), 1_000_000).await;
    const KEYS: u64 = 4;
    let mut counts = vec![0u32; KEYS as usize];
    push_many(&g, 1..=20, KEYS, &mut counts).await;
    let leader = g.leader().await;
    let f = g.replica(if leader.id() == 1 { 2 } else { 1 });
    converged(&g, &[f.id()], &expected(&counts), KEYS).await;
    // Caught up and hearing heartbeats: close enough in entries and in time.
    let near = |f: Replica, lag| async move {
        for _ in 0..200 {
            if f.read_check_within(Some(lag)).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(near(f.clone(), MaxLag::Entries(0)).await);
    assert!(near(f.clone(), MaxLag::Millis(300)).await);
    // Without a bound, a follower serves no read: it names the leader.
    assert!(matches!(
        f.read_check_within(None).await,
        Err(WriteError::NotLeader { .. })
    ));
    // Cut off, it hears nothing: after 600 ms it is more than 300 ms behind, and it no longer
    // knows how many entries behind it is (its last word from the leader is over a lease old).
    g.net.cut.lock().unwrap().insert(f.id());
    push_many(&g, 21..=30, KEYS, &mut counts).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for lag in [MaxLag::Millis(300), MaxLag::Entries(1_000_000)] {
        let r = f.read_check_within(Some(lag)).await;
        assert!(
            matches!(r, Err(WriteError::TooStale { .. })),
            "a cut-off follower served a read within {lag:?}: {r:?}"
        );
    }
    // Healed, it catches up and serves them again, with what was acknowledged meanwhile.
    g.net.cut.lock().unwrap().clear();
    converged(&g, &[f.id()], &expected(&counts), KEYS).await;
    assert!(near(f.clone(), MaxLag::Millis(300)).await);
    assert!(near(f, MaxLag::Entries(0)).await);
}
