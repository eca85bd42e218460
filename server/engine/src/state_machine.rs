//! The state machine: the rows changed since the last checkpoint (the *dirty* layer), the rows
//! of the checkpoint in progress (*frozen*), and the exactly-once windows.
//!
//! `apply_updates` applies one push to a layer, deterministically. Live pushes (`apply`) and
//! replay (`Replay`) both go through it, in LSN order, so the bits after a crash are the bits
//! before it. This is the seam between "a record is durable in the log" and "a record is
//! applied": whatever produces records in LSN order (the local log today, a replicated log
//! tomorrow) feeds them here.
//!
//! Locks: `layers` is a reader-writer lock, so pulls read the layers together and a push holds
//! it for writing only while it applies (never while it logs or syncs). `dedup` has its own
//! mutex. Both change only under the log's sequencer.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use paramdb_types::{ClientId, Key, KeyRange};
use rustc_hash::FxHashMap;

use crate::catalog::{Catalog, Table};
use crate::dedup::{SeqWindow, Verdict};
use crate::error::StorageError;
use crate::lifecycle::{part_of, Cutoff, Life, SKETCH_PARTS};
use crate::push::Origin;
use crate::rocks::Rocks;
use crate::row::Row;
use crate::wal::{Record, RecordKeys, RecordKind};

/// A key's state in a layer: its row, or deleted (it pulls its initializer, and the checkpoint
/// deletes what RocksDB stores for it).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Slot {
    Row(Row),
    Deleted,
}

/// Bytes a deleted key counts for in the dirty layer's budget.
const TOMBSTONE_BYTES: u64 = 8;

impl Slot {
    pub(crate) fn encoded_len(&self) -> u64 {
        match self {
            Slot::Row(r) => r.encoded_len() as u64,
            Slot::Deleted => TOMBSTONE_BYTES,
        }
    }
}

/// What a layer says about a key.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Found<'a> {
    Row(&'a Row),
    /// Deleted in this layer: the key has its initial value, whatever older layers hold.
    Deleted,
    /// This layer says nothing: look further down.
    Absent,
}

impl Found<'_> {
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self, Found::Absent)
    }
}

/// One table's keys in a layer. A hash map: a B-tree costs several cache misses per lookup at
/// a million rows, and lookups are the hot path of pushes, pulls and replay. Range scans sort
/// the keys they need once (see `scan`).
#[derive(Clone, Debug, Default)]
pub(crate) struct TableLayer {
    pub(crate) rows: FxHashMap<Key, Slot>,
    /// Ranges deleted while this layer was the dirty one, in LSN order. A key inside one with
    /// no entry in `rows` is deleted; a key written after the delete has its entry in `rows`
    /// (the delete removed the ones before it). Checked one by one: a layer holds the range
    /// deletes since the last checkpoint, which are few.
    pub(crate) deleted: Vec<KeyRange>,
}

impl TableLayer {
    pub(crate) fn find(&self, key: Key) -> Found<'_> {
        match self.rows.get(&key) {
            Some(Slot::Row(r)) => Found::Row(r),
            Some(Slot::Deleted) => Found::Deleted,
            None if self.in_deleted_range(key) => Found::Deleted,
            None => Found::Absent,
        }
    }

    fn in_deleted_range(&self, key: Key) -> bool {
        self.deleted.iter().any(|r| r.contains(key))
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Bytes of the layer's entries (`Slot::encoded_len` each).
    pub(crate) fn bytes(&self) -> u64 {
        self.rows.values().map(Slot::encoded_len).sum()
    }

    /// Deletes the keys for which `mine` holds (replay partitions keys between threads) and
    /// returns the change in bytes.
    pub(crate) fn delete(&mut self, what: Delete<'_>, mine: impl Fn(Key) -> bool) -> i64 {
        let mut delta = 0i64;
        match what {
            Delete::Keys(keys) => {
                for &k in keys.iter().filter(|&&k| mine(k)) {
                    let old = self.rows.insert(k, Slot::Deleted);
                    delta += TOMBSTONE_BYTES as i64 - old.map_or(0, |o| o.encoded_len() as i64);
                }
            }
            Delete::Range(range) => {
                self.rows.retain(|&k, slot| {
                    let gone = range.contains(k) && mine(k);
                    if gone {
                        delta -= slot.encoded_len() as i64;
                    }
                    !gone
                });
                self.deleted.push(range);
            }
        }
        delta
    }
}

/// Which rows a delete removes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Delete<'a> {
    Keys(&'a [Key]),
    Range(KeyRange),
}

impl Delete<'_> {
    /// The delete a log record describes (`None` for a push); a key list is copied to `keys`.
    pub(crate) fn of_record<'k>(rec: &Record<'_>, keys: &'k mut Vec<Key>) -> Option<Delete<'k>> {
        if rec.kind != RecordKind::Delete {
            return None;
        }
        Some(match rec.keys {
            RecordKeys::Span { start, end } => Delete::Range(KeyRange::new(start, end)),
            _ => {
                keys.clear();
                keys.extend((0..rec.rows as usize).map(|i| rec.key(i)));
                Delete::Keys(keys)
            }
        })
    }
}

/// Layers by table id.
pub(crate) type Rows = HashMap<u32, TableLayer>;
/// Lifecycle state by table id.
pub(crate) type Lives = HashMap<u32, Life>;
/// Exactly-once windows by client id.
pub(crate) type Dedup = HashMap<u64, SeqWindow>;

/// The in-memory layers in front of RocksDB.
#[derive(Debug, Default)]
pub(crate) struct Layers {
    pub(crate) dirty: Rows,
    /// Bytes of the entries in `dirty` (`Slot::encoded_len` each).
    pub(crate) dirty_bytes: u64,
    /// Rows of the checkpoint in progress, until RocksDB has them.
    pub(crate) frozen: Option<Arc<Rows>>,
    /// Every table's lifecycle state (policies, floors, admission sketch).
    pub(crate) life: Lives,
}

impl Layers {
    /// The dirty and frozen layers of a table (looked up once, then per key with `lookup`).
    pub(crate) fn of(&self, table: u32) -> (Option<&TableLayer>, Option<&TableLayer>) {
        (
            self.dirty.get(&table),
            self.frozen.as_ref().and_then(|f| f.get(&table)),
        )
    }

    pub(crate) fn dirty_rows(&self) -> usize {
        self.dirty.values().map(|t| t.len()).sum()
    }

    /// What of table `table` is absent at time `now` (expired or evicted).
    pub(crate) fn cutoff(&self, table: u32, now: u32) -> Cutoff {
        self.life
            .get(&table)
            .map_or(Cutoff::default(), |l| l.cutoff(now))
    }
}

/// What the dirty layer, else the frozen one, says about a key.
pub(crate) fn lookup<'a>(
    dirty: Option<&'a TableLayer>,
    frozen: Option<&'a TableLayer>,
    key: Key,
) -> Found<'a> {
    match dirty.map_or(Found::Absent, |d| d.find(key)) {
        Found::Absent => frozen.map_or(Found::Absent, |f| f.find(key)),
        found => found,
    }
}

/// The rows of one push: keys and their update vectors, from a request or from a log record.
pub(crate) trait Updates {
    fn rows(&self) -> usize;
    fn key(&self, i: usize) -> Key;
    /// Row `i`'s update vector, copied into `scratch` if it must be decoded.
    fn values<'s>(&'s self, i: usize, scratch: &'s mut [f32]) -> &'s [f32];
}

/// A push as a request carries it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request<'a> {
    pub(crate) keys: &'a [Key],
    pub(crate) values: &'a [f32],
    pub(crate) dim: usize,
}

impl Updates for Request<'_> {
    fn rows(&self) -> usize {
        self.keys.len()
    }
    fn key(&self, i: usize) -> Key {
        self.keys[i]
    }
    fn values<'s>(&'s self, i: usize, _: &'s mut [f32]) -> &'s [f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

impl Updates for Record<'_> {
    fn rows(&self) -> usize {
        self.rows as usize
    }
    fn key(&self, i: usize) -> Key {
        Record::key(self, i)
    }
    fn values<'s>(&'s self, i: usize, scratch: &'s mut [f32]) -> &'s [f32] {
        self.values_into(i, scratch);
        scratch
    }
}

/// A row a push needed was neither in memory nor among the rows read for it.
#[derive(Debug)]
pub(crate) struct MissingBase {
    pub(crate) key: Key,
}

/// Applies `u`, logged at `time` with LSN `lsn`, to the rows of table `t` in `layer`: each row there is
/// updated in place; a row not there yet starts from `base(key)` (`Some(None)`: nothing stored),
/// or from its initial value if the layer deleted it. A row older than the table's cut-off
/// (expired or evicted) counts as absent, and an absent key gets a row only if admission lets
/// it (`Life::admit`). Every row applied to takes the record's time and LSN. Only keys for which `mine`
/// holds are touched (replay partitions rows between threads). Returns the bytes added to the
/// layer. Keys within one push are distinct, so each row sees its updates in LSN order.
pub(crate) fn apply_updates(
    layer: &mut TableLayer,
    t: &Table,
    life: &mut Life,
    (time, lsn): (u32, u64),
    u: &impl Updates,
    mine: impl Fn(Key) -> bool,
    mut base: impl FnMut(Key) -> Option<Option<Row>>,
) -> Result<u64, MissingBase> {
    let mut scratch = vec![0.0f32; t.dim()];
    let mut added = 0;
    let cutoff = life.cutoff(time);
    for i in 0..u.rows() {
        let k = u.key(i);
        if !mine(k) {
            continue;
        }
        let in_deleted_range = layer.in_deleted_range(k);
        let row = match layer.rows.entry(k) {
            Entry::Occupied(o) => {
                let slot = o.into_mut();
                match slot {
                    Slot::Row(r) if cutoff.keeps_row(r) => {}
                    Slot::Row(r) => {
                        // Evicted rows were counted by their eviction.
                        let expired = r.lsn >= cutoff.lsn;
                        if !life.admit(k) {
                            continue;
                        }
                        life.counts.expired += expired as u64;
                        *slot = Slot::Row(Row::initial(&t.spec, k));
                    }
                    Slot::Deleted => {
                        if !life.admit(k) {
                            continue;
                        }
                        let b = Row::initial(&t.spec, k);
                        added += (b.encoded_len() as u64).saturating_sub(TOMBSTONE_BYTES);
                        *slot = Slot::Row(b);
                    }
                }
                let Slot::Row(row) = slot else {
                    unreachable!("a deleted slot was replaced above")
                };
                row
            }
            Entry::Vacant(v) => {
                let stored = if in_deleted_range {
                    None
                } else {
                    base(k).ok_or(MissingBase { key: k })?
                };
                let live = match stored {
                    Some(r) if cutoff.keeps_row(&r) => Some(r),
                    Some(r) => {
                        life.counts.expired += (r.lsn >= cutoff.lsn) as u64;
                        None
                    }
                    None => None,
                };
                let b = match live {
                    Some(r) => r,
                    None if life.admit(k) => Row::initial(&t.spec, k),
                    None => continue,
                };
                added += b.encoded_len() as u64;
                let Slot::Row(row) = v.insert(Slot::Row(b)) else {
                    unreachable!("a row was just inserted")
                };
                row
            }
        };
        row.apply(&t.spec.rule, u.values(i, &mut scratch));
        row.time = time;
        row.lsn = lsn;
    }
    Ok(added)
}

/// The dirty and frozen layers and the exactly-once windows of a store.
#[derive(Debug)]
pub(crate) struct StateMachine {
    layers: RwLock<Layers>,
    dedup: Mutex<Dedup>,
}

impl StateMachine {
    pub(crate) fn new(dirty: Rows, dedup: Dedup, life: Lives) -> StateMachine {
        let dirty_bytes = dirty.values().map(TableLayer::bytes).sum();
        StateMachine {
            layers: RwLock::new(Layers {
                dirty,
                dirty_bytes,
                frozen: None,
                life,
            }),
            dedup: Mutex::new(dedup),
        }
    }

    /// The layers for reading. A panic while a writer held them may have left a row half
    /// updated; the log is the truth, and the store is poisoned by whoever saw the panic.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn dedup(&self) -> MutexGuard<'_, Dedup> {
        self.dedup.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the windows say about `(client, seq)` (anonymous pushes are always new).
    pub(crate) fn verdict(&self, client: ClientId, seq: u64) -> Verdict {
        if client == ClientId::ANONYMOUS {
            return Verdict::New;
        }
        self.dedup()
            .get(&client.0)
            .map_or(Verdict::New, |w| w.check(seq))
    }

    /// Applies a push of `(client, seq)` logged at `time` to the dirty layer. Rows not in
    /// memory come from `fetched` (read before the push was logged; `None`: nothing stored).
    /// Call under the sequencer, in LSN order. Returns the dirty layer's bytes afterwards.
    pub(crate) fn apply(
        &self,
        t: &Table,
        origin: Origin,
        (time, lsn): (u32, u64),
        u: &impl Updates,
        fetched: &mut HashMap<Key, Option<Row>>,
    ) -> Result<u64, MissingBase> {
        let mut guard = self.write();
        let layers = &mut *guard;
        let frozen = layers.frozen.as_ref().and_then(|f| f.get(&t.id));
        let dirty = layers.dirty.entry(t.id).or_default();
        let life = layers
            .life
            .entry(t.id)
            .or_insert_with(|| Life::new(Default::default(), time, 0));
        let added = apply_updates(
            dirty,
            t,
            life,
            (time, lsn),
            u,
            |_| true,
            |k| match frozen.map_or(Found::Absent, |f| f.find(k)) {
                Found::Row(r) => Some(Some(r.clone())),
                Found::Deleted => Some(None),
                Found::Absent => fetched.remove(&k),
            },
        )?;
        layers.dirty_bytes += added;
        let bytes = layers.dirty_bytes;
        drop(guard);
        self.mark(origin);
        Ok(bytes)
    }

    /// Applies a logged delete of `(client, seq)` to the dirty layer. Call under the
    /// sequencer, in LSN order. Returns the dirty layer's bytes afterwards.
    pub(crate) fn apply_delete(&self, t: &Table, origin: Origin, what: Delete<'_>) -> u64 {
        let mut layers = self.write();
        let delta = layers.dirty.entry(t.id).or_default().delete(what, |_| true);
        layers.dirty_bytes = layers.dirty_bytes.saturating_add_signed(delta);
        let bytes = layers.dirty_bytes;
        drop(layers);
        self.mark(origin);
        bytes
    }

    /// Records a client's write as applied in its window.
    fn mark(&self, o: Origin) {
        if o.client != ClientId::ANONYMOUS {
            self.dedup()
                .entry(o.client.0)
                .or_default()
                .mark(o.seq, o.parts);
        }
    }

    /// Applies a logged lifecycle record (new policies, or an eviction) of table `table`.
    /// Call under the sequencer, in LSN order.
    pub(crate) fn apply_lifecycle(&self, table: u32, rec: LifeChange, time: u32, counters: usize) {
        let mut layers = self.write();
        let life = layers
            .life
            .entry(table)
            .or_insert_with(|| Life::new(Default::default(), time, counters));
        rec.apply(life, time, counters);
    }
}

/// A change a lifecycle record makes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LifeChange {
    Policy(paramdb_types::Lifecycle),
    /// Evict the rows last pushed before LSN `before`; `rows` of them were counted.
    Evict {
        before: u64,
        rows: u64,
    },
}

impl LifeChange {
    /// The record that logs this change.
    pub(crate) fn body(self) -> crate::wal::Body<'static> {
        match self {
            LifeChange::Policy(p) => crate::wal::Body::Lifecycle(p),
            LifeChange::Evict { before, rows } => crate::wal::Body::Evict { before, rows },
        }
    }

    pub(crate) fn of_record(rec: &Record<'_>) -> Option<LifeChange> {
        match rec.kind {
            RecordKind::Lifecycle => rec.lifecycle().map(LifeChange::Policy),
            RecordKind::Evict => rec
                .eviction()
                .map(|(before, rows)| LifeChange::Evict { before, rows }),
            _ => None,
        }
    }

    fn apply(self, life: &mut Life, time: u32, counters: usize) {
        match self {
            LifeChange::Policy(p) => life.set_policy(p, time, counters),
            LifeChange::Evict { before, rows } => {
                life.evict(before);
                life.counts.evicted += rows;
            }
        }
    }
}

/// Replays logged writes into fresh layers at open. Rows are independent, so the work is split
/// across threads by key: each thread owns the rows of its partition and applies their updates
/// in log order, which gives the same bits as a sequential replay.
#[derive(Debug)]
pub(crate) struct Replay {
    parts: Vec<(Rows, Lives)>,
    dedup: Dedup,
    counters: usize,
    /// Time of the last record replayed.
    pub(crate) last_time: u32,
    /// The last note replayed, and its LSN.
    pub(crate) last_note: Option<(u64, Vec<u8>)>,
}

impl Replay {
    /// A replay onto the checkpoint's exactly-once windows and lifecycle state. Each thread
    /// keeps its own copy of the lifecycle state and updates the admission sketch's
    /// partitions it owns. Partition 0 starts from the checkpoint's counts, the others from
    /// zero, so the counts add up at the end.
    pub(crate) fn new(threads: usize, dedup: Dedup, lives: Lives, counters: usize) -> Replay {
        let threads = threads.clamp(1, SKETCH_PARTS);
        let mut zeroed = lives.clone();
        zeroed
            .values_mut()
            .for_each(|l| l.counts = Default::default());
        let mut parts = vec![(Rows::new(), lives)];
        parts.extend((1..threads).map(|_| (Rows::new(), zeroed.clone())));
        Replay {
            parts,
            dedup,
            counters,
            last_time: 0,
            last_note: None,
        }
    }

    /// Applies a segment's records (in LSN order). Their exactly-once windows are checked
    /// first: the writer never logs a duplicate, so one means the log disagrees with the
    /// checkpointed windows, and applying it would double-count.
    pub(crate) fn apply(
        &mut self,
        rocks: &Rocks,
        catalog: &Catalog,
        recs: &[Record<'_>],
    ) -> Result<(), StorageError> {
        for rec in recs {
            self.last_time = self.last_time.max(rec.time);
            if let Some(note) = rec.note() {
                self.last_note = Some((rec.lsn, note.to_vec()));
                continue;
            }
            if rec.client != 0 {
                let w = self.dedup.entry(rec.client).or_default();
                if w.check(rec.seq) != Verdict::New {
                    return Err(StorageError::CorruptMeta {
                        reason: format!(
                            "log record LSN {} repeats client {} sequence {}",
                            rec.lsn, rec.client, rec.seq
                        ),
                    });
                }
                w.mark(rec.seq, rec.parts);
            }
            if let Some(t) = catalog.by_id.get(&rec.table) {
                if rec.dim != t.spec.dim {
                    return Err(StorageError::CorruptMeta {
                        reason: format!(
                            "log record LSN {} has dim {} for table {:?} of dim {}",
                            rec.lsn, rec.dim, t.spec.name, t.spec.dim
                        ),
                    });
                }
            }
        }
        let n = self.parts.len();
        let counters = self.counters;
        if n == 1 {
            let (rows, lives) = &mut self.parts[0];
            return replay_partition(rocks, catalog, rows, lives, recs, 0, 1, counters);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .parts
                .iter_mut()
                .enumerate()
                .map(|(p, (rows, lives))| {
                    std::thread::Builder::new()
                        .name(format!("paramdb-replay-{p}"))
                        .spawn_scoped(s, move || {
                            replay_partition(rocks, catalog, rows, lives, recs, p, n, counters)
                        })
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| StorageError::io("starting replay threads", e))?;
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StorageError::CorruptMeta {
                        reason: "a replay thread panicked".into(),
                    })
                })
            })
        })
    }

    /// The state machine the replayed records leave.
    pub(crate) fn finish(self) -> StateMachine {
        let n = self.parts.len();
        let mut dirty = Rows::new();
        let mut lives: Option<Lives> = None;
        for (p, (part, mut part_lives)) in self.parts.into_iter().enumerate() {
            // Every partition applied every lifecycle record; each counted its own rows and
            // owns the sketch partitions q with q % n == p.
            match &mut lives {
                None => lives = Some(part_lives),
                Some(all) => {
                    for (table, life) in all.iter_mut() {
                        let Some(mine) = part_lives.get_mut(table) else {
                            continue;
                        };
                        life.counts.add(&mine.counts);
                        if let (Some(s), Some(o)) = (&mut life.sketch, &mut mine.sketch) {
                            for q in (0..SKETCH_PARTS).filter(|q| q % n == p) {
                                s.take_part(q, o);
                            }
                        }
                    }
                }
            }
            for (table, layer) in part {
                let d = dirty.entry(table).or_default();
                if d.rows.is_empty() {
                    d.rows = layer.rows;
                } else {
                    d.rows.extend(layer.rows);
                }
                // Every partition saw every range delete, in the same order.
                d.deleted = layer.deleted;
            }
        }
        StateMachine::new(dirty, self.dedup, lives.unwrap_or_default())
    }
}

/// Which of `n` replay partitions owns `key`: whole admission-sketch partitions, so that each
/// thread owns the counters of its keys.
fn partition(key: Key, n: usize) -> usize {
    part_of(key) % n
}

/// Replays partition `p` of `n`: for each record, the partition's rows not yet in memory are
/// read from RocksDB in one batch, then the record is applied as a live push is.
#[allow(clippy::too_many_arguments)]
fn replay_partition(
    rocks: &Rocks,
    catalog: &Catalog,
    rows: &mut Rows,
    lives: &mut Lives,
    recs: &[Record<'_>],
    p: usize,
    n: usize,
    counters: usize,
) -> Result<(), StorageError> {
    let mine = |k: Key| partition(k, n) == p;
    let mut delete_keys = Vec::new();
    for rec in recs {
        if rec.kind == RecordKind::Note {
            continue;
        }
        let Some(t) = catalog.by_id.get(&rec.table) else {
            continue; // table dropped after this write
        };
        let life = lives
            .entry(t.id)
            .or_insert_with(|| Life::new(Default::default(), rec.time, counters));
        if let Some(mut change) = LifeChange::of_record(rec) {
            // Every partition applies it; one counts its rows.
            if let (LifeChange::Evict { rows, .. }, true) = (&mut change, p != 0) {
                *rows = 0;
            }
            change.apply(life, rec.time, counters);
            continue;
        }
        let layer = rows.entry(t.id).or_default();
        if let Some(what) = Delete::of_record(rec, &mut delete_keys) {
            layer.delete(what, mine);
            continue;
        }
        let missing: Vec<Key> = (0..rec.rows as usize)
            .map(|i| rec.key(i))
            .filter(|&k| mine(k) && layer.find(k).is_absent())
            .collect();
        let mut fetched = crate::read_path::stored_rows(rocks, t, &missing)?;
        apply_updates(layer, t, life, (rec.time, rec.lsn), rec, mine, |k| {
            fetched.remove(&k)
        })
        .map_err(|m| StorageError::CorruptMeta {
            reason: format!("replay of LSN {} found no row for key {}", rec.lsn, m.key),
        })?;
    }
    Ok(())
}
