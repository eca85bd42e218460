//! The state machine of a replica: its engine store, to which committed entries are applied in
//! order.
//!
//! **Every entry is one record.** Entry `i` becomes the store's record with LSN `i + 1`: a
//! command's write, or a note when the entry changes no row (a blank or membership entry, a
//! refused command, a retry the exactly-once window caught). Notes carry the membership as of
//! that entry. So the store's last LSN says which entry it applied last, across crashes (the
//! engine replays its own log) and snapshots, and applying an entry the store already has is
//! skipped: that makes applying again after a restart exact. The store's own log needs no
//! fsync (`SyncPolicy::None`): the replicated log holds every entry durably, and whatever the
//! store lost is applied again from it.
//!
//! **Time.** The store's clock is manual, set to each command's time (the leader's clock when
//! it proposed it) before the command is applied, so expiry is decided alike everywhere.
//!
//! **Snapshots** are engine backups (RocksDB checkpoint files plus the log after them, at one
//! LSN), packed into one file (`archive`). Installing one restores it into a new engine
//! directory (`engine-<generation>`), opens it, and swaps it in for the old store.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use paramdb_engine::{Clock, Store, StoreOptions, SyncPolicy};

use crate::command::{execute, Outcome};
use crate::log_store::LogStore;
use crate::{NodeId, TypeConfig};

type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// The note every non-writing entry becomes: this tag, then the membership as JSON.
const NOTE_TAG: &[u8] = b"PDBRAFT1";

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

/// What the state machine and its snapshot builders share.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    opts: StoreOptions,
    clock: Clock,
    engine: RwLock<Arc<Store>>,
    generation: Mutex<u64>,
    /// Held while entries are applied and while a snapshot is taken, so a snapshot is the
    /// store at one entry.
    apply: Mutex<()>,
    log: LogStore,
    /// Where `begin_receiving_snapshot` put the file openraft writes.
    incoming: Mutex<Option<PathBuf>>,
    snapshots: Mutex<u64>,
}

impl Shared {
    /// The store serving reads now (a snapshot install replaces it).
    pub(crate) fn engine(&self) -> Arc<Store> {
        self.engine
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn gate(&self) -> MutexGuard<'_, ()> {
        self.apply.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snap_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// The log id of the last entry the store applied, and the membership as of it.
    fn applied(
        &self,
        store: &Store,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let lsn = store.last_lsn();
        let membership = match store.last_note() {
            Some((_, note)) => decode_note(&note).map_err(sm_err)?,
            None => Membership::default(),
        };
        if lsn == 0 {
            return Ok((None, membership));
        }
        let index = lsn - 1;
        let from_snapshot = read_meta(&self.snap_dir())
            .ok()
            .flatten()
            .and_then(|m| m.last_log_id)
            .filter(|l| l.index == index);
        let log_id = from_snapshot
            .or_else(|| self.log.log_id_at(index))
            .ok_or_else(|| {
                sm_err(format!(
                    "the store applied entry {index}, which neither the log nor the snapshot holds"
                ))
            })?;
        Ok((Some(log_id), membership))
    }
}

fn encode_note(m: &Membership) -> Vec<u8> {
    let mut b = NOTE_TAG.to_vec();
    b.extend_from_slice(&serde_json::to_vec(m).expect("a membership serializes"));
    b
}

fn decode_note(b: &[u8]) -> Result<Membership, String> {
    let json = b
        .strip_prefix(NOTE_TAG)
        .ok_or("the store's last note is not a replica group's")?;
    serde_json::from_slice(json).map_err(|e| format!("the store's last note: {e}"))
}

fn meta_path(snap_dir: &Path) -> PathBuf {
    snap_dir.join("current.meta")
}

fn read_meta(snap_dir: &Path) -> io::Result<Option<Meta>> {
    match fs::read(meta_path(snap_dir)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_meta(snap_dir: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = snap_dir.join("current.meta.tmp");
    let b = serde_json::to_vec(meta).map_err(io::Error::other)?;
    {
        let f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut &f, &b)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, meta_path(snap_dir))?;
    fs::File::open(snap_dir)?.sync_all()
}

fn snapshot_file(snap_dir: &Path, id: &str) -> PathBuf {
    snap_dir.join(format!("{id}.snap"))
}

fn engine_dir(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("engine-{generation}"))
}

fn read_generation(dir: &Path) -> io::Result<u64> {
    match fs::read_to_string(dir.join("current")) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "damaged `current` file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

fn write_generation(dir: &Path, generation: u64) -> io::Result<()> {
    let tmp = dir.join("current.tmp");
    {
        let f = fs::File::create(&tmp)?;
        io::Write::write_all(&mut &f, generation.to_string().as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join("current"))?;
    fs::File::open(dir)?.sync_all()
}

/// The state machine openraft drives.
#[derive(Debug, Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

/// What opening a replica's store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error("replica directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Engine(#[from] paramdb_engine::OpenError),
}

impl StateMachine {
    /// Opens the store of the replica in `dir` (its current generation), with `opts` except
    /// the clock (manual, set by each entry) and the sync policy (none: the replicated log is
    /// durable) and local writes (off).
    pub(crate) fn open(
        dir: &Path,
        opts: StoreOptions,
        log: LogStore,
    ) -> Result<StateMachine, OpenStoreError> {
        let io = |source| OpenStoreError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir.join("snapshots")).map_err(io)?;
        let generation = read_generation(dir).map_err(io)?;
        let clock = Clock::manual(0);
        let opts = StoreOptions {
            clock: clock.clone(),
            sync: SyncPolicy::None,
            local_writes: false,
            ..opts
        };
        let store = Store::open(engine_dir(dir, generation), opts.clone())?;
        // Older generations and half-received snapshots left by a crash.
        for e in fs::read_dir(dir).map_err(io)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = name
                .strip_prefix("engine-")
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g != generation)
                || name == "restore";
            if stale {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(StateMachine {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                opts,
                clock,
                engine: RwLock::new(Arc::new(store)),
                generation: Mutex::new(generation),
                apply: Mutex::new(()),
                log,
                incoming: Mutex::new(None),
                snapshots: Mutex::new(0),
            }),
        })
    }

    /// Applies one entry to `store`, as record `index + 1`.
    fn apply_one(
        &self,
        store: &Store,
        entry: &Entry<TypeConfig>,
        membership: &mut Membership,
    ) -> Result<Outcome, StorageError<NodeId>> {
        let lsn = entry.log_id.index + 1;
        let last = store.last_lsn();
        if last >= lsn {
            // Applied before a restart: the store replayed it from its own log.
            return Ok(Outcome {
                lsn,
                duplicate: true,
                refused: None,
            });
        }
        if last + 1 != lsn {
            return Err(sm_err(format!(
                "entry {} follows record {last} of the store: entries are missing",
                entry.log_id.index
            )));
        }
        let mut outcome = Outcome {
            lsn,
            ..Default::default()
        };
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                *membership = Membership::new(Some(entry.log_id), m.clone());
            }
            EntryPayload::Normal(cmd) => {
                self.shared.clock.set(cmd.time);
                match execute(store, &cmd.op).map_err(|b| sm_err(b.0))? {
                    Ok((_, duplicate)) => outcome.duplicate = duplicate,
                    Err(refusal) => outcome.refused = Some(refusal),
                }
            }
        }
        if store.last_lsn() < lsn {
            store
                .append_note(&encode_note(membership))
                .map_err(|e| sm_err(paramdb_engine::chain(&e)))?;
        }
        let now = store.last_lsn();
        if now != lsn {
            return Err(sm_err(format!(
                "entry {} became records up to {now}: the store wrote records of its own",
                entry.log_id.index
            )));
        }
        Ok(outcome)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let store = self.shared.engine();
        self.shared.applied(&store)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let _gate = self.shared.gate();
        let store = self.shared.engine();
        let mut membership = match store.last_note() {
            Some((_, n)) => decode_note(&n).map_err(sm_err)?,
            None => Membership::default(),
        };
        entries
            .into_iter()
            .map(|e| self.apply_one(&store, &e, &mut membership))
            .collect()
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let n = {
            let mut s = self
                .shared
                .snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *s += 1;
            *s
        };
        let path = self.shared.snap_dir().join(format!("incoming-{n}.snap"));
        let f = tokio::fs::File::create(&path).await.map_err(snap_err)?;
        *self
            .shared
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(path);
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        snapshot.sync_all().await.map_err(snap_err)?;
        drop(snapshot);
        let incoming = self
            .shared
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| snap_err("no snapshot was being received"))?;
        let shared = self.shared.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || shared.install(&meta, &incoming))
            .await
            .map_err(snap_err)?
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let dir = self.shared.snap_dir();
        let Some(meta) = read_meta(&dir).map_err(snap_err)? else {
            return Ok(None);
        };
        let f = tokio::fs::File::open(snapshot_file(&dir, &meta.snapshot_id))
            .await
            .map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(f),
        }))
    }
}

impl Shared {
    /// Installs the snapshot received into `incoming`: restored into the next engine
    /// generation, opened, and swapped in.
    fn install(&self, meta: &Meta, incoming: &Path) -> Result<(), StorageError<NodeId>> {
        let _gate = self.gate();
        let restore = self.dir.join("restore");
        let _ = fs::remove_dir_all(&restore);
        crate::archive::unpack(incoming, &restore).map_err(snap_err)?;
        let generation = *self.generation.lock().unwrap_or_else(|e| e.into_inner()) + 1;
        let target = engine_dir(&self.dir, generation);
        let _ = fs::remove_dir_all(&target);
        paramdb_engine::backup::restore_shard(&restore, &target)
            .map_err(|e| snap_err(paramdb_engine::chain(&e)))?;
        let store = Store::open(&target, self.opts.clone())
            .map_err(|e| snap_err(paramdb_engine::chain(&e)))?;
        let want = meta.last_log_id.map_or(0, |l| l.index + 1);
        if store.last_lsn() != want {
            return Err(snap_err(format!(
                "the snapshot's store ends at record {}, its metadata at entry {:?}",
                store.last_lsn(),
                meta.last_log_id
            )));
        }
        // The snapshot is kept to be sent on, and becomes the current one.
        let dir = self.snap_dir();
        fs::rename(incoming, snapshot_file(&dir, &meta.snapshot_id)).map_err(snap_err)?;
        let previous = read_meta(&dir).ok().flatten();
        write_meta(&dir, meta).map_err(snap_err)?;
        write_generation(&self.dir, generation).map_err(snap_err)?;
        let old = {
            let mut e = self.engine.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *e, Arc::new(store))
        };
        *self.generation.lock().unwrap_or_else(|e| e.into_inner()) = generation;
        if let Some(p) = previous.filter(|p| p.snapshot_id != meta.snapshot_id) {
            let _ = fs::remove_file(snapshot_file(&dir, &p.snapshot_id));
        }
        let _ = fs::remove_dir_all(&restore);
        tracing::info!(snapshot = %meta.snapshot_id, generation, "snapshot installed");
        // The old store goes once the last read holding it is done; its directory with it.
        let old_dir = engine_dir(&self.dir, generation - 1);
        std::thread::spawn(move || {
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(s) => {
                        drop(s);
                        break;
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
            let _ = fs::remove_dir_all(old_dir);
        });
        Ok(())
    }

    /// A snapshot of the store as it is now. Entries wait only while the backup is taken
    /// (a checkpoint, then hard links and the log's tail); packing it runs beside them.
    fn build(&self) -> Result<(Meta, PathBuf), StorageError<NodeId>> {
        let dir = self.snap_dir();
        let (meta, backup) = {
            let _gate = self.gate();
            let store = self.engine();
            let (last, membership) = self.applied(&store)?;
            let n = {
                let mut s = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
                *s += 1;
                *s
            };
            let id = match last {
                Some(l) => format!(
                    "{}-{}-{}-{n}",
                    l.leader_id.term, l.leader_id.node_id, l.index
                ),
                None => format!("empty-{n}"),
            };
            let backup = dir.join(format!("build-{id}"));
            let _ = fs::remove_dir_all(&backup);
            let b = store
                .backup(&backup, None, Default::default())
                .map_err(|e| snap_err(paramdb_engine::chain(&e)))?;
            if b.end_lsn != store.last_lsn() {
                return Err(snap_err("the store changed while a snapshot was taken"));
            }
            let meta = Meta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: id,
            };
            (meta, backup)
        };
        let file = snapshot_file(&dir, &meta.snapshot_id);
        let packed = crate::archive::pack(&backup, &file);
        let _ = fs::remove_dir_all(&backup);
        packed.map_err(snap_err)?;
        // It becomes the current snapshot unless one at least as new was installed meanwhile.
        let _gate = self.gate();
        let previous = read_meta(&dir).ok().flatten();
        if previous
            .as_ref()
            .is_some_and(|p| p.last_log_id >= meta.last_log_id)
        {
            return Ok((meta, file));
        }
        write_meta(&dir, &meta).map_err(snap_err)?;
        if let Some(p) = previous {
            let _ = fs::remove_file(snapshot_file(&dir, &p.snapshot_id));
        }
        Ok((meta, file))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || shared.build())
            .await
            .map_err(snap_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot built");
        let f = tokio::fs::File::open(file).await.map_err(snap_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}
