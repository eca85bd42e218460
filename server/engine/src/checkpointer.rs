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

use crate::catalog::{META_CHECKPOINT, META_CLIENT_PREFIX};
use crate::error::{CheckpointError, StorageError};
use crate::options::SyncPolicy;
use crate::rocks::key_bytes;
use crate::state_machine::{Dedup, Rows, Slot};
use crate::store::Core;

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
        let Some((frozen, lsn, dedup)) = self.freeze()? else {
            return Ok(CheckpointInfo {
                lsn: self.mark().lsn,
                ..Default::default()
            });
        };
        let rows = match self.write_checkpoint(&frozen, lsn, &dedup) {
            Ok(r) => r,
            Err(e) => {
                self.poison(format!("checkpoint failed: {}", crate::error::chain(&e)));
                return Err(e.into());
            }
        };
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
    #[allow(clippy::type_complexity)]
    fn freeze(&self) -> Result<Option<(Arc<Rows>, u64, Dedup)>, StorageError> {
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
        let frozen = {
            let mut layers = self.state.write();
            let frozen = Arc::new(std::mem::take(&mut layers.dirty));
            layers.dirty_bytes = 0;
            layers.frozen = Some(frozen.clone());
            frozen
        };
        let dedup = self.state.dedup().clone();
        Ok(Some((frozen, lsn, dedup)))
    }

    /// Step 2: one batch, flushed atomically. Returns the rows written.
    fn write_checkpoint(
        &self,
        frozen: &Rows,
        lsn: u64,
        dedup: &Dedup,
    ) -> Result<usize, StorageError> {
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
            for (&k, slot) in sorted {
                match slot {
                    Slot::Row(row) => {
                        row.encode(&t.spec.rule, t.spec.dim, &mut buf);
                        b.put_cf(&cf, key_bytes(k), &buf);
                    }
                    Slot::Deleted => b.delete_cf(&cf, key_bytes(k)),
                }
                rows += 1;
            }
        }
        let meta = self.rocks.cf(crate::rocks::META_CF)?;
        b.put_cf(&meta, META_CHECKPOINT, lsn.to_le_bytes());
        for (client, w) in dedup {
            b.put_cf(
                &meta,
                [META_CLIENT_PREFIX, &key_bytes(*client)].concat(),
                w.encode(),
            );
        }
        drop(meta);
        self.rocks.commit(b, &cfs)?;
        Ok(rows)
    }

    /// Step 3: RocksDB holds the frozen rows; make the cache match, then drop them.
    fn publish(&self, frozen: &Rows) {
        {
            let _log = self.log.sequencer();
            self.cache().generation += 1;
        }
        for (tid, layer) in frozen.iter() {
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
                        Slot::Row(row) => cache.rows.refresh(*tid, k, row),
                        Slot::Deleted => cache.rows.forget(*tid, k),
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
            }
        }
    }
}
