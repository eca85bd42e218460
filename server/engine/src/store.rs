//! The shard store: the public `Store` API, and `Core`, which composes the components.
//!
//! - the **log** (`log`): appends under the sequencer, group commit for durability;
//! - the **state machine** (`state_machine`): the dirty and frozen layers and the exactly-once
//!   windows, changed only by applying logged pushes in LSN order;
//! - the **checkpointer** (`checkpointer`): freezes the dirty layer, writes it to RocksDB,
//!   refreshes the cache and purges the log;
//! - the **read path** (`read_path`): dirty, then frozen, then the hot-row cache, then RocksDB,
//!   then the initializer.
//!
//! The life of a push is in `push`, of an open in `open`, of table changes in `tables`.
//! Synchronous: callers on an async runtime run it on blocking threads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use paramdb_types::{ClientId, Key, KeyRange, PushAck, StoreStats, TableSpec};

use crate::catalog::{Catalog, Table, TableInfo};
use crate::checkpointer::CheckpointInfo;
use crate::error::{
    BackupError, CheckpointError, ImportError, InputError, PullError, PushError, StorageError,
    TableError,
};
use crate::group_commit::WaitError;
use crate::log::Log;
use crate::options::StoreOptions;
use crate::poison::Poison;
use crate::push::Origin;
use crate::read_path::HotRows;
use crate::rocks::Rocks;
use crate::state_machine::StateMachine;
use crate::wal::RecoveryReport;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pushes: AtomicU64,
    pub(crate) duplicate_pushes: AtomicU64,
    pub(crate) rows_pushed: AtomicU64,
    pub(crate) deletes: AtomicU64,
    pub(crate) pulls: AtomicU64,
    pub(crate) rows_pulled: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
}

/// Where the last checkpoint left the log.
#[derive(Debug)]
pub(crate) struct CheckpointMark {
    pub(crate) lsn: u64,
    /// `LogWriter::bytes_appended` when it was taken.
    pub(crate) log_bytes: u64,
    pub(crate) at: Instant,
}

/// The background thread's stop flag.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    pub(crate) flag: Mutex<bool>,
    pub(crate) wake: Condvar,
}

/// Everything a store is made of, shared by its handle, its range scans and its background
/// thread.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) dir: PathBuf,
    /// Opened by `open_read_only`: refuses every change and leaves the files alone.
    pub(crate) read_only: bool,
    pub(crate) opts: StoreOptions,
    pub(crate) rocks: Rocks,
    pub(crate) catalog: RwLock<Catalog>,
    pub(crate) log: Log,
    pub(crate) state: StateMachine,
    pub(crate) cache: Mutex<HotRows>,
    pub(crate) poison: Poison,
    /// Serialises catalog changes and checkpoints (both end in a RocksDB flush).
    pub(crate) ddl: Mutex<()>,
    pub(crate) mark: Mutex<CheckpointMark>,
    pub(crate) stop: Stop,
    pub(crate) counters: Counters,
    /// Time of the last record logged: the time reads judge expiry by is never before it.
    pub(crate) time: std::sync::atomic::AtomicU32,
    /// A cluster backup's write fence.
    pub(crate) fence: crate::fence::Fence,
    /// The cut-off history as of the last checkpoint (see `gone`).
    pub(crate) history: Mutex<crate::gone::History>,
    /// The last note logged, and its LSN (see `Store::append_note`).
    pub(crate) note: Mutex<Option<(u64, Vec<u8>)>>,
}

/// A shard's durable store. Dropping it without `close` behaves like a crash of the store
/// (after a final log sync): the next open replays the log.
#[derive(Debug)]
pub struct Store {
    pub(crate) core: Arc<Core>,
    pub(crate) background: Option<JoinHandle<()>>,
    pub(crate) recovery: RecoveryReport,
    /// Set by `crash`: skip the final log sync on drop.
    pub(crate) crashed: bool,
}

impl Store {
    /// What recovery found and did when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.core.dir
    }

    pub fn options(&self) -> &StoreOptions {
        &self.core.opts
    }

    /// Whether this store was opened with `open_read_only`.
    pub fn is_read_only(&self) -> bool {
        self.core.read_only
    }

    /// Creates a table; its definition is durable when this returns.
    pub fn create_table(&self, spec: TableSpec) -> Result<TableInfo, TableError> {
        self.core.create_table(spec)
    }

    /// Drops a table and all its rows.
    pub fn drop_table(&self, name: &str) -> Result<(), TableError> {
        self.core.drop_table(name)
    }

    /// Backs this shard up into `dest` (new), consistent at the log's end when it is called,
    /// while pushes go on (see `backup`). `previous` is an earlier backup of this shard whose
    /// unchanged files are linked instead of copied. A checkpoint is taken first, so the log
    /// part is short.
    pub fn backup(
        &self,
        dest: &Path,
        previous: Option<&Path>,
        opts: crate::backup::BackupOptions,
    ) -> Result<paramdb_types::ShardBackup, BackupError> {
        self.core.check_writable("back up")?;
        self.core.checkpoint()?;
        self.core.backup(dest, previous, opts, &mut || Ok(()))
    }

    /// Puts up a write fence for a cluster backup (see `fence`): no new write is logged
    /// until `backup_fenced` or `unfence`, or until `lease` runs out. Reports the
    /// exactly-once windows, from which the coordinator finds writes that reached only some
    /// of their shards.
    pub fn fence(
        &self,
        lease: std::time::Duration,
    ) -> Result<paramdb_types::FenceReport, BackupError> {
        self.core.check_writable("fence")?;
        let log = self.core.log.sequencer();
        let fence = self.core.fence.raise(lease);
        let lsn = log.last_lsn();
        drop(log);
        let mut clients: Vec<_> = self
            .core
            .state
            .dedup()
            .iter()
            .map(|(&c, w)| w.report(c))
            .collect();
        clients.sort_by_key(|w| w.client);
        Ok(paramdb_types::FenceReport {
            fence,
            lsn,
            clients,
        })
    }

    /// Lets the writes `owed` through fence `fence` and says, for each, whether it is applied
    /// by now. Refused when the fence is no longer up.
    pub fn owe(&self, fence: u64, owed: &[(u64, u64)]) -> Result<Vec<bool>, BackupError> {
        if !self.core.fence.owe(fence, owed) {
            return Err(InputError::FenceGone { fence }.into());
        }
        Ok(owed
            .iter()
            .map(|&(c, s)| self.core.state.verdict(ClientId(c), s) != crate::dedup::Verdict::New)
            .collect())
    }

    /// Takes fence `fence` down, if it is still up (a coordinator giving up).
    pub fn unfence(&self, fence: u64) -> bool {
        self.core.fence.lift(fence)
    }

    /// Backs this shard up at the cut fence `fence` holds (see `backup`): the fence is lifted
    /// as soon as the log's end is fixed. Refused, with nothing written, when the fence is no
    /// longer up (its lease ran out, so writes may have passed it).
    pub fn backup_fenced(
        &self,
        fence: u64,
        dest: &Path,
        previous: Option<&Path>,
        opts: crate::backup::BackupOptions,
    ) -> Result<paramdb_types::ShardBackup, BackupError> {
        self.core.backup(dest, previous, opts, &mut || {
            if self.core.fence.lift(fence) {
                Ok(())
            } else {
                Err(InputError::FenceGone { fence }.into())
            }
        })
    }

    /// Every table, by name.
    pub fn list_tables(&self) -> Vec<TableInfo> {
        let tables: Vec<Arc<Table>> = self.core.catalog().by_id.values().cloned().collect();
        let mut v: Vec<TableInfo> = tables.iter().map(|t| self.core.info_of(t)).collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    pub fn describe_table(&self, name: &str) -> Result<TableInfo, TableError> {
        Ok(self.core.info_of(&*self.core.table(name)?))
    }

    /// Replaces table `name`'s lifecycle policies (expiry, admission, size cap; semantics in
    /// the README). The change is logged like a push: every push after it is applied under
    /// the new policies, and it is durable when this returns.
    pub fn set_lifecycle(
        &self,
        name: &str,
        lifecycle: paramdb_types::Lifecycle,
    ) -> Result<TableInfo, TableError> {
        self.core.set_lifecycle(name, lifecycle)
    }

    /// What table `name`'s lifecycle policies did over its life.
    pub fn lifecycle_counts(
        &self,
        name: &str,
    ) -> Result<paramdb_types::LifecycleCounts, TableError> {
        Ok(self.core.lifecycle_counts(&*self.core.table(name)?))
    }

    /// Weights of `keys` (row after row, `keys.len() × dim` floats). Keys never written pull
    /// their initial value.
    pub fn pull(&self, table: &str, keys: &[Key]) -> Result<Vec<f32>, PullError> {
        let t = self.core.table(table)?;
        let mut out = vec![0.0; keys.len() * t.dim()];
        self.core.pull_into(&t, keys, &mut out)?;
        Ok(out)
    }

    /// Like `pull`, into a caller's buffer of `keys.len() × dim` floats.
    pub fn pull_into(&self, table: &str, keys: &[Key], out: &mut [f32]) -> Result<(), PullError> {
        let t = self.core.table(table)?;
        self.core.pull_into(&t, keys, out)
    }

    /// Applies `values` (`keys.len() × dim`, row after row) to `keys` under the table's update
    /// rule. Returns once the push is durable under the sync policy. A retry with the same
    /// `(client, seq)` is acknowledged again and not applied twice. Duplicate keys within one
    /// push are refused.
    pub fn push(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        keys: &[Key],
        values: &[f32],
    ) -> Result<PushAck, PushError> {
        self.push_part(table, client, seq, 1, keys, values)
    }

    /// `push` of one shard's part of a write the client split into `parts` shards' parts (a
    /// cluster backup's cut holds such a write whole or not at all).
    pub fn push_part(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        parts: u16,
        keys: &[Key],
        values: &[f32],
    ) -> Result<PushAck, PushError> {
        self.core.push(
            table,
            Origin { client, seq, parts },
            crate::push::PushKeys::List(keys),
            values,
        )
    }

    /// Pushes a contiguous block of rows `[start, start + values.len() / dim)` as one flat
    /// array: how dense parameters are updated.
    pub fn push_range(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        start: Key,
        values: &[f32],
    ) -> Result<PushAck, PushError> {
        self.push_range_part(table, client, seq, 1, start, values)
    }

    /// `push_range` of one part of a write split into `parts` (see `push_part`).
    pub fn push_range_part(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        parts: u16,
        start: Key,
        values: &[f32],
    ) -> Result<PushAck, PushError> {
        let t = self.core.table(table)?;
        if !values.len().is_multiple_of(t.dim()) {
            return Err(InputError::DimensionMismatch {
                table: table.to_string(),
                dim: t.spec.dim,
                keys: values.len() / t.dim(),
                values: values.len(),
            }
            .into());
        }
        let count = (values.len() / t.dim()) as u64;
        self.core.push(
            table,
            Origin { client, seq, parts },
            crate::push::PushKeys::Range { start, count },
            values,
        )
    }

    /// Deletes `keys` (repeats are harmless): logged and applied exactly once per
    /// `(client, seq)`, like a push. Afterwards each row pulls its initializer, and a push
    /// starts it from there. Returns once durable under the sync policy.
    pub fn delete(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        keys: &[Key],
    ) -> Result<PushAck, PushError> {
        self.delete_part(table, client, seq, 1, keys)
    }

    /// `delete` of one part of a write split into `parts` (see `push_part`).
    pub fn delete_part(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        parts: u16,
        keys: &[Key],
    ) -> Result<PushAck, PushError> {
        self.core.delete(
            table,
            Origin { client, seq, parts },
            crate::state_machine::Delete::Keys(keys),
        )
    }

    /// Deletes every row in `range`, stored or not, as `delete` does.
    pub fn delete_range(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        range: KeyRange,
    ) -> Result<PushAck, PushError> {
        self.delete_range_part(table, client, seq, 1, range)
    }

    /// `delete_range` of one part of a write split into `parts` (see `push_part`).
    pub fn delete_range_part(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        parts: u16,
        range: KeyRange,
    ) -> Result<PushAck, PushError> {
        self.core.delete(
            table,
            Origin { client, seq, parts },
            crate::state_machine::Delete::Range(range),
        )
    }

    /// Starts a bulk import into `table`: rows staged in table files of up to `budget` bytes
    /// each, ingested by `Import::finish` (see `import`).
    pub fn begin_import(
        &self,
        table: &str,
        budget: usize,
    ) -> Result<crate::import::Import, ImportError> {
        self.core.begin_import(table, budget)
    }

    /// Streams the stored rows of `range` (rows that were pushed at least once) in key order,
    /// holding at most a batch of rows in memory.
    pub fn scan(&self, table: &str, range: KeyRange) -> Result<crate::scan::RangeScan, PullError> {
        let t = self.core.table(table)?;
        Ok(crate::scan::RangeScan::new(self.core.clone(), t, range))
    }

    /// `scan` of only the rows last pushed (or imported) after LSN `since`: what changed since
    /// a backup whose end LSN it is (a delta export).
    pub fn scan_since(
        &self,
        table: &str,
        range: KeyRange,
        since: u64,
    ) -> Result<crate::scan::RangeScan, PullError> {
        Ok(self.scan(table, range)?.since(since))
    }

    /// The keys of `range` deleted, expired or evicted after LSN `since`, none of them live
    /// now, and the ranges deleted since (a delta export lists them beside the rows
    /// `scan_since` gives). A key may be listed that was already gone at `since`. Known for
    /// LSNs from about `gone_retention_secs` ago on; older ones are refused
    /// (`InputError::GoneUntracked`). Since LSN 0, nothing.
    pub fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: u64,
    ) -> Result<paramdb_types::Gone, PullError> {
        self.core.gone_since(table, range, since)
    }

    /// Persists every row changed since the last checkpoint to RocksDB and deletes the log
    /// segments it covers.
    pub fn checkpoint(&self) -> Result<CheckpointInfo, CheckpointError> {
        let info = self.core.checkpoint()?;
        self.core.enforce_caps()?;
        Ok(info)
    }

    /// Makes every acknowledged push durable now, whatever the sync policy.
    pub fn sync(&self) -> Result<(), CheckpointError> {
        let last = self.core.log.last_lsn();
        Ok(self.core.wait_durable(last)?)
    }

    /// Compacts RocksDB: rewrites every table's files into the bottom level, dropping row
    /// versions that later checkpoints overwrote. Reads and pushes go on meanwhile.
    pub fn compact(&self) -> Result<(), CheckpointError> {
        self.core.check_writable("compact")?;
        self.core.poison.check()?;
        Ok(self.core.rocks.compact(&self.core.table_cfs())?)
    }

    /// Checks every byte of this store's files that can be checked (see `verify`), reading
    /// them as a separate reader would: the store's own state is not consulted.
    pub fn verify(&self) -> Result<paramdb_types::VerifyReport, StorageError> {
        crate::verify::verify_dir(self.dir())
    }

    /// The log's records with LSN ≥ `from` (at most `limit`), and its torn or damaged
    /// segments.
    pub fn dump_log(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<paramdb_types::LogRecord>, Vec<String>), StorageError> {
        self.core.log.read_from(from, limit).map_err(|e| {
            StorageError::io(format!("reading {}", self.dir().join("wal").display()), e)
        })
    }

    /// Logs `note` (opaque bytes, at most 1 MiB) as a record of its own that changes no row,
    /// and returns its LSN; durable on return under `sync`. The last note and its LSN survive
    /// checkpoints and crashes (`last_note`).
    pub fn append_note(&self, note: &[u8]) -> Result<u64, PushError> {
        self.core.append_note(note)
    }

    /// The last note logged, with its LSN.
    pub fn last_note(&self) -> Option<(u64, Vec<u8>)> {
        self.core.last_note()
    }

    /// The LSN of the last record logged (0 for an empty log).
    pub fn last_lsn(&self) -> u64 {
        self.core.log.last_lsn()
    }

    pub fn stats(&self) -> StoreStats {
        self.core.stats()
    }

    /// Clean shutdown: checkpoint, so the next open has nothing to replay.
    pub fn close(mut self) -> Result<(), CheckpointError> {
        self.stop_background();
        self.core.poison.check()?;
        self.core.close()
    }

    /// Clean shutdown through a shared handle (other holders may still read): the final
    /// checkpoint, and the cache files marked reusable by the next open.
    pub fn close_shared(&self) -> Result<(), CheckpointError> {
        self.core.close()
    }

    /// Ends the store as a killed process would: no checkpoint and no final log sync.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn crash(mut self) {
        self.crashed = true;
    }

    fn stop_background(&mut self) {
        *self
            .core
            .stop
            .flag
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.core.stop.wake.notify_all();
        if let Some(h) = self.background.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_background();
        if !self.crashed && !self.core.read_only && !self.core.poison.is_set() {
            let last = self.core.log.last_lsn();
            if let Err(e) = self.core.wait_durable(last) {
                tracing::error!(error = %e, "final log sync failed");
            }
            // Reusable without a final checkpoint: the next open replays the log into the
            // dirty layer as usual.
            if let Err(e) = self.core.mark_cache_reusable() {
                tracing::warn!(error = %e, "could not mark the hot-row cache reusable");
            }
        }
    }
}

impl Core {
    pub(crate) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn cache(&self) -> MutexGuard<'_, HotRows> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn table(&self, name: &str) -> Result<Arc<Table>, InputError> {
        self.catalog()
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| InputError::UnknownTable {
                name: name.to_string(),
            })
    }

    pub(crate) fn table_live(&self, id: u32) -> bool {
        self.catalog().by_id.contains_key(&id)
    }

    pub(crate) fn table_cfs(&self) -> Vec<String> {
        self.catalog()
            .by_id
            .values()
            .map(|t| t.cf.clone())
            .collect()
    }

    pub(crate) fn check_writable(&self, op: &'static str) -> Result<(), InputError> {
        if self.read_only {
            return Err(InputError::ReadOnly { op });
        }
        Ok(())
    }

    /// Refuses writes from now on, and wakes whoever waits for a sync that will not come.
    pub(crate) fn poison(&self, reason: String) {
        self.poison.set(reason);
        self.log.wake_waiters();
    }

    /// Waits until the log is durable up to `lsn` (group commit). A failed fsync poisons the
    /// store.
    pub(crate) fn wait_durable(&self, lsn: u64) -> Result<(), StorageError> {
        match self.log.wait_durable(lsn, || self.poison.is_set()) {
            Ok(()) => Ok(()),
            Err(WaitError::Poisoned) => Err(self.poison.error()),
            Err(WaitError::Sync(e)) => {
                self.poison(format!("fsync of the gradient log failed: {e}"));
                Err(StorageError::io("fsync of the gradient log", e))
            }
        }
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let (log_segments, log_bytes_written, last_lsn) = {
            let w = self.log.sequencer();
            (w.segments().count(), w.bytes_appended(), w.last_lsn())
        };
        let (dirty_rows, dirty_bytes) = {
            let l = self.state.read();
            (l.dirty_rows(), l.dirty_bytes)
        };
        let (checkpoint_lsn, log_at_checkpoint, checkpoint_age) = {
            let m = self.mark();
            (m.lsn, m.log_bytes, m.at.elapsed())
        };
        StoreStats {
            tables: self.catalog().by_id.len(),
            pushes: c.pushes.load(Ordering::Relaxed),
            duplicate_pushes: c.duplicate_pushes.load(Ordering::Relaxed),
            rows_pushed: c.rows_pushed.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            lifecycle: {
                let tables: Vec<Arc<Table>> = self.catalog().by_id.values().cloned().collect();
                let mut all = paramdb_types::LifecycleCounts::default();
                for t in &tables {
                    all.add(&self.lifecycle_counts(t));
                }
                all
            },
            pulls: c.pulls.load(Ordering::Relaxed),
            rows_pulled: c.rows_pulled.load(Ordering::Relaxed),
            dirty_rows,
            dirty_bytes,
            log_segments,
            log_bytes_since_checkpoint: log_bytes_written.saturating_sub(log_at_checkpoint),
            last_lsn,
            durable_lsn: self.log.durable_lsn(),
            checkpoint_lsn,
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            fsyncs: self.log.fsyncs(),
            log_bytes_written,
            checkpoint_age,
            poisoned: self.poison.reason(),
            cache: self.cache().rows.stats(),
        }
    }

    pub(crate) fn history(&self) -> MutexGuard<'_, crate::gone::History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn mark(&self) -> MutexGuard<'_, CheckpointMark> {
        self.mark.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Clean shutdown of a store whose handle is shared: a final checkpoint, then the cache
    /// files are marked reusable for that checkpoint.
    pub(crate) fn close(&self) -> Result<(), CheckpointError> {
        if self.read_only {
            return Ok(());
        }
        self.checkpoint()?;
        Ok(self.mark_cache_reusable()?)
    }

    /// Marks the cache files reusable at the last checkpoint. Cached rows equal RocksDB's,
    /// which only checkpoints write, so they match that checkpoint whenever the store has not
    /// crashed or been poisoned.
    pub(crate) fn mark_cache_reusable(&self) -> Result<(), StorageError> {
        let lsn = self.mark().lsn;
        self.cache().rows.close(lsn)
    }
}
