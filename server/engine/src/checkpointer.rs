//! The checkpointer: writes the rows changed since the last checkpoint to RocksDB, then lets
//! the log forget them.
//!
//! 1. **Freeze** (under the sequencer, briefly): seal the log segment (so every segment before
//!    the new one is covered), move the dirty layer to frozen, and copy the exactly-once windows,
//!    all at one LSN.
//! 2. **Write**: the frozen rows and deletes (range deletes first), the checkpoint LSN and the windows go to RocksDB in one batch,
//!    flushed atomically (`rocks::commit`). No store lock is held. A failure poisons the store;
//!    the log still holds everything, and the next open replays it.
//! 3. **Publish**: the cache's generation is bumped (so pulls and pushes that read RocksDB
//!    before this cannot install or use stale rows), the cached copies of the frozen rows are
//!    refreshed (deleted ones dropped) a chunk at a time (reads still find those rows in frozen meanwhile), then
//!    frozen is dropped and the generation bumped again, under the sequencer.
//! 4. **Purge**: the sealed segments the checkpoint covers are deleted.
//!
//! Also here: the background thread that syncs under `interval` and runs checkpoints when the
//! log, the dirty layer or the clock says so.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use paramdb_types::Key;
use rocksdb::WriteBatch;

use crate::catalog::{life_key, META_CHECKPOINT, META_CLIENT_PREFIX, META_CLOCK, META_NOTE};
use crate::error::{CheckpointError, StorageError};
use crate::options::SyncPolicy;
use crate::rocks::key_bytes;
use crate::state_machine::{Dedup, Lives, Rows, Slot};
use crate::store::Core;

/// What the freeze captured, all as of one LSN.
struct Frozen {
    rows: Arc<Rows>,
    lsn: u64,
    dedup: Dedup,
    lives: Lives,
    /// Time of the last record frozen: every later record is at or past it.
    clock: u32,
    /// The last note at or before `lsn`.
    note: Option<(u64, Vec<u8>)>,
}

/// What a checkpoint did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Every record up to this LSN is now in RocksDB.
    pub lsn: u64,
    pub rows_written: usize,
    pub segments_removed: usize,
}

/// Cached rows refreshed per hold of the cache's lock while publishing.
const REFRESH_CHUNK: usize = 4096;

impl Core {
    pub(crate) fn checkpoint(&self) -> Result<CheckpointInfo, CheckpointError> {
        self.check_writable("checkpoint")?;
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.poison.check()?;
        let started = Instant::now();
        let Some(frozen) = self.freeze()? else {
            return Ok(CheckpointInfo {
                lsn: self.mark().lsn,
                ..Default::default()
            });
        };
        let lsn = frozen.lsn;
        let history = self.history().advanced(
            lsn,
            frozen.clock,
            &frozen.lives,
            self.opts.gone_retention_secs,
        );
        let (rows, expired) = match self.write_checkpoint(&frozen, &history) {
            Ok(r) => r,
            Err(e) => {
                self.poison(format!("checkpoint failed: {}", crate::error::chain(&e)));
                return Err(e.into());
            }
        };
        self.after_write(history, &expired);
        self.publish(&frozen);
        let removed = {
            let mut log = self.log.sequencer();
            let mut m = self.mark();
            m.lsn = lsn;
            m.log_bytes = log.bytes_appended();
            m.at = Instant::now();
            drop(m);
            log.remove_through(lsn)
        };
        let removed = removed.unwrap_or_else(|e| {
            // Harmless: recovery removes segments a checkpoint covers.
            tracing::warn!(error = %e, "could not delete log segments covered by a checkpoint");
            0
        });
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            lsn,
            rows,
            segments_removed = removed,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        drop(frozen);
        crate::process::release_free_memory();
        Ok(CheckpointInfo {
            lsn,
            rows_written: rows,
            segments_removed: removed,
        })
    }

    /// Step 1. `None` when nothing changed since the last checkpoint.
    fn freeze(&self) -> Result<Option<Frozen>, StorageError> {
        let mut log = self.log.sequencer();
        let lsn = log.last_lsn();
        if lsn == self.mark().lsn {
            return Ok(None);
        }
        match log.rotate() {
            Ok(durable) => self.log.mark_durable(durable),
            Err(e) => {
                drop(log);
                self.poison(format!("sealing a log segment failed: {e}"));
                return Err(StorageError::io("sealing a log segment", e));
            }
        }
        let (rows, lives) = {
            let mut layers = self.state.write();
            let frozen = Arc::new(std::mem::take(&mut layers.dirty));
            layers.dirty_bytes = 0;
            layers.frozen = Some(frozen.clone());
            // The rows compaction expired since the last checkpoint join the saved counts.
            for t in self.catalog().by_id.values() {
                if let (Some(f), Some(l)) = (self.rocks.filter(&t.cf), layers.life.get_mut(&t.id)) {
                    l.counts.expired += f.expired.swap(0, Ordering::Relaxed);
                }
            }
            (frozen, layers.life.clone())
        };
        let dedup = self.state.dedup().clone();
        Ok(Some(Frozen {
            rows,
            lsn,
            dedup,
            lives,
            clock: log.last_time(),
            note: self.note.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }))
    }

    /// Step 2: one batch, flushed atomically. Rows the history's anchor does not keep (gone
    /// for `gone_retention_secs`) are deleted instead of written; deletes are journaled, and
    /// the history saved (see `gone`). Returns the rows written and the expired rows dropped,
    /// by table.
    fn write_checkpoint(
        &self,
        f: &Frozen,
        history: &crate::gone::History,
    ) -> Result<(usize, Vec<(u32, u64)>), StorageError> {
        let (frozen, lsn, dedup) = (&*f.rows, f.lsn, &f.dedup);
        let mut expired = Vec::new();
        // Reserved up front: growing a batch of hundreds of MB by doubling copies it and
        // faults in fresh pages each time.
        let estimate: usize = frozen
            .values()
            .map(|layer| {
                layer
                    .rows
                    .values()
                    .next()
                    .map_or(0, |r| layer.len() * (r.encoded_len() as usize + 32))
            })
            .sum();
        let mut b = WriteBatch::with_capacity_bytes(estimate + 4096);
        let mut rows = 0;
        let mut buf = Vec::new();
        let cfs = self.table_cfs();
        let meta = self.rocks.cf(crate::rocks::META_CF)?;
        for (tid, layer) in frozen.iter() {
            let Some(t) = self.catalog().by_id.get(tid).cloned() else {
                continue; // dropped
            };
            let cf = self.rocks.cf(&t.cf)?;
            // Range deletes first: every row the layer holds inside one was written after it.
            for r in &layer.deleted {
                crate::rocks::delete_range(&mut b, &cf, *r);
            }
            // In key order: RocksDB's memtable skip list inserts ascending keys without
            // searching from the top each time.
            let mut sorted: Vec<(&Key, &Slot)> = layer.rows.iter().collect();
            sorted.sort_unstable_by_key(|(k, _)| **k);
            crate::gone::journal(&mut b, &meta, (*tid, lsn), layer);
            let cutoff = history.drop_cutoff(*tid);
            let mut dropped = 0;
            for (&k, slot) in sorted {
                match slot {
                    Slot::Row(row) if cutoff.keeps_row(row) => {
                        row.encode(&t.spec.rule, t.spec.dim, &mut buf);
                        b.put_cf(&cf, key_bytes(k), &buf);
                    }
                    Slot::Row(row) => {
                        // Evicted rows were counted by their eviction.
                        if row.lsn >= cutoff.lsn {
                            dropped += 1;
                        }
                        b.delete_cf(&cf, key_bytes(k));
                    }
                    Slot::Deleted => b.delete_cf(&cf, key_bytes(k)),
                }
                rows += 1;
            }
            if dropped > 0 {
                expired.push((*tid, dropped));
            }
        }
        let live: Vec<u32> = self.catalog().by_id.keys().copied().collect();
        crate::gone::prune(&mut b, &meta, history, live.into_iter());
        b.put_cf(&meta, crate::gone::META_HISTORY, history.encode());
        b.put_cf(&meta, META_CHECKPOINT, lsn.to_le_bytes());
        b.put_cf(&meta, META_CLOCK, f.clock.to_le_bytes());
        if let Some((lsn, note)) = &f.note {
            b.put_cf(&meta, META_NOTE, [&lsn.to_le_bytes()[..], note].concat());
        }
        for (tid, life) in &f.lives {
            if self.catalog().by_id.contains_key(tid) {
                b.put_cf(&meta, life_key(*tid), life.encode());
            }
        }
        for (client, w) in dedup {
            b.put_cf(
                &meta,
                [META_CLIENT_PREFIX, &key_bytes(*client)].concat(),
                w.encode(),
            );
        }
        drop(meta);
        self.rocks.commit(b, &cfs)?;
        Ok((rows, expired))
    }

    /// After step 2: the checkpoint and its history are durable, so the compaction filters may
    /// drop what the history's anchor does not keep, and the expired rows it dropped are
    /// counted.
    fn after_write(&self, history: crate::gone::History, expired: &[(u32, u64)]) {
        for t in self.catalog().by_id.values() {
            let Some(filter) = self.rocks.filter(&t.cf) else {
                continue;
            };
            let c = history.drop_cutoff(t.id);
            filter.cutoff.fetch_max(c.time, Ordering::Relaxed);
            filter.evict_lsn.fetch_max(c.lsn, Ordering::Relaxed);
        }
        *self.history() = history;
        if !expired.is_empty() {
            let mut layers = self.state.write();
            for (tid, n) in expired {
                if let Some(l) = layers.life.get_mut(tid) {
                    l.counts.expired += n;
                }
            }
        }
    }

    /// Step 3: RocksDB holds the frozen rows; make the cache match, then drop them.
    fn publish(&self, f: &Frozen) {
        let frozen = &*f.rows;
        {
            let _log = self.log.sequencer();
            self.cache().generation += 1;
        }
        for (tid, layer) in frozen.iter() {
            // Rows gone by now leave the cache, even those RocksDB keeps a while (`gone`).
            let cutoff = f
                .lives
                .get(tid)
                .map_or(Default::default(), |l| l.cutoff(f.clock));
            if !layer.deleted.is_empty() {
                let mut cache = self.cache();
                for r in &layer.deleted {
                    cache.rows.forget_range(*tid, *r);
                }
            }
            let rows: Vec<(&Key, &Slot)> = layer.rows.iter().collect();
            for chunk in rows.chunks(REFRESH_CHUNK) {
                let mut cache = self.cache();
                for &(&k, slot) in chunk {
                    match slot {
                        Slot::Row(row) if cutoff.keeps_row(row) => cache.rows.refresh(*tid, k, row),
                        _ => cache.rows.forget(*tid, k),
                    }
                }
            }
        }
        let _log = self.log.sequencer();
        self.state.write().frozen = None;
        self.cache().generation += 1;
    }

    /// Runs until the store closes: interval syncs, and checkpoints when due.
    pub(crate) fn background_loop(&self) {
        let tick = match self.opts.sync {
            SyncPolicy::Interval(d) => d,
            _ => std::time::Duration::from_millis(200),
        };
        let mut stop = self.stop.flag.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            stop = self
                .stop
                .wake
                .wait_timeout(stop, tick)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if *stop {
                return;
            }
            drop(stop);
            if !self.poison.is_set() {
                self.background_step();
            }
            stop = self.stop.flag.lock().unwrap_or_else(|e| e.into_inner());
        }
    }

    fn background_step(&self) {
        if let SyncPolicy::Interval(_) = self.opts.sync {
            let last = self.log.last_lsn();
            if let Err(e) = self.wait_durable(last) {
                tracing::error!(error = %e, "interval sync failed");
            }
        }
        let due = {
            let (last_lsn, appended) = {
                let w = self.log.sequencer();
                (w.last_lsn(), w.bytes_appended())
            };
            let dirty_bytes = self.state.read().dirty_bytes;
            let m = self.mark();
            let budget = self.opts.checkpoint_dirty_bytes;
            last_lsn > m.lsn
                && (appended - m.log_bytes >= self.opts.checkpoint_log_bytes
                    || (budget > 0 && dirty_bytes >= budget)
                    || self
                        .opts
                        .checkpoint_interval
                        .is_some_and(|i| m.at.elapsed() >= i))
        };
        if due {
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "background checkpoint failed");
            } else if let Err(e) = self.enforce_caps() {
                tracing::error!(error = %e, "eviction pass failed");
            }
        }
    }
}
