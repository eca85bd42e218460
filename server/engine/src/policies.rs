//! Lifecycle operations (semantics in `lifecycle`): changing a table's policies, which is a
//! logged record applied like a push, and the eviction pass that keeps a table within its
//! `max_rows`, which reads the LSN of every row's last push and logs an eviction.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use paramdb_types::{Key, KeyRange, Lifecycle, LifecycleCounts};
use rustc_hash::FxHashMap;

use crate::catalog::{Table, TableInfo};
use crate::error::{InputError, PushError, StorageError, TableError};
use crate::options::SyncPolicy;
use crate::push::{Admitted, Origin};
use crate::state_machine::{LifeChange, Slot};
use crate::store::Core;

impl Core {
    /// The time reads judge expiry by: the clock, but never before the last record logged.
    pub(crate) fn now(&self) -> u32 {
        self.opts.clock.now().max(self.time.load(Ordering::Relaxed))
    }

    /// A table's definition with its current policies.
    pub(crate) fn info_of(&self, t: &Table) -> TableInfo {
        let mut info = t.info();
        if let Some(l) = self.state.read().life.get(&t.id) {
            info.spec.lifecycle = l.policy;
        }
        info
    }

    /// What table `id`'s policies did, compaction included.
    pub(crate) fn lifecycle_counts(&self, t: &Table) -> LifecycleCounts {
        let mut c = self
            .state
            .read()
            .life
            .get(&t.id)
            .map(|l| l.counts)
            .unwrap_or_default();
        if let Some(f) = self.rocks.filter(&t.cf) {
            c.expired += f.expired.load(Ordering::Relaxed);
        }
        c
    }

    /// Sets table `name`'s policies: logged, applied to every push after it, durable when
    /// this returns.
    pub(crate) fn set_lifecycle(
        &self,
        name: &str,
        policy: Lifecycle,
    ) -> Result<TableInfo, TableError> {
        self.check_writable("change a table's lifecycle")?;
        policy.validate().map_err(InputError::from)?;
        let t = self.table(name)?;
        self.poison.check()?;
        let lsn = self.log_lifecycle(&t, LifeChange::Policy(policy))?;
        self.wait_durable(lsn)?;
        tracing::info!(table = %name, lifecycle = %policy, "table lifecycle changed");
        Ok(self.info_of(&t))
    }

    /// Logs `change` as a lifecycle record of `t` and applies it, under the sequencer.
    /// Returns the record's LSN.
    fn log_lifecycle(&self, t: &Table, change: LifeChange) -> Result<u64, PushError> {
        let log = self.log.sequencer();
        // A table's own records are not a client's writes: a backup's fence lets them by.
        if !matches!(
            self.admit(&log, t, Origin::ANONYMOUS, false)?,
            Admitted::New
        ) {
            unreachable!("anonymous writes are never duplicates");
        }
        let (done, log) = self.append(log, t, Origin::ANONYMOUS, change.body())?;
        self.state
            .apply_lifecycle(t.id, change, done.time, self.opts.admission_counters);
        drop(log);
        Ok(done.lsn)
    }

    /// Runs an eviction pass for every table over its `max_rows` (see `lifecycle`).
    pub(crate) fn enforce_caps(&self) -> Result<(), StorageError> {
        if self.read_only || !self.opts.local_writes {
            return Ok(());
        }
        let due: Vec<(Arc<Table>, u64)> = {
            let layers = self.state.read();
            let cat = self.catalog();
            layers
                .life
                .iter()
                .filter_map(|(id, l)| {
                    let max = l.policy.max_rows?;
                    let maybe_over = l.rows_at_pass.is_none_or(|n| n + l.rows_since_pass > max);
                    let t = cat.by_id.get(id)?;
                    maybe_over.then(|| (t.clone(), max))
                })
                .collect()
        };
        for (t, max) in due {
            self.evict_pass(&t, max)?;
        }
        Ok(())
    }

    /// Reads the LSN of the last push of every live row of `t`, and if there are more than
    /// `max`, logs the eviction of every row whose LSN is below the `max − max/16`-th largest.
    fn evict_pass(&self, t: &Table, max: u64) -> Result<(), StorageError> {
        // The rows in memory win over RocksDB's: an LSN per key, `None` when deleted or gone.
        let (mem, ranges, cutoff) = {
            let mut layers = self.state.write();
            let cutoff = layers.cutoff(t.id, self.now());
            if let Some(l) = layers.life.get_mut(&t.id) {
                l.rows_since_pass = 0;
            }
            let (dirty, frozen) = layers.of(t.id);
            let mut mem: FxHashMap<Key, Option<u64>> = FxHashMap::default();
            let mut ranges: Vec<KeyRange> = Vec::new();
            for layer in [frozen, dirty].into_iter().flatten() {
                // Frozen first, so dirty overrides it.
                for r in &layer.deleted {
                    mem.retain(|k, _| !r.contains(*k));
                    ranges.push(*r);
                }
                for (k, slot) in &layer.rows {
                    let lsn = match slot {
                        Slot::Row(r) if cutoff.keeps_row(r) => Some(r.lsn),
                        _ => None,
                    };
                    mem.insert(*k, lsn);
                }
            }
            (mem, ranges, cutoff)
        };
        let mut lsns: Vec<u64> = Vec::new();
        self.rocks.verify_cf(&t.cf, &mut |k, v| {
            let Some(key) = crate::rocks::key_from(k) else {
                return;
            };
            if mem.contains_key(&key) || ranges.iter().any(|r| r.contains(key)) {
                return;
            }
            let (time, lsn) = (crate::row::stored_time(v), crate::row::stored_lsn(v));
            if cutoff.keeps(time, lsn) {
                lsns.push(lsn);
            }
        })?;
        lsns.extend(mem.values().flatten());
        let total = lsns.len() as u64;
        let target = max - max / 16;
        let (before, kept) = if total > max {
            // The target-th largest LSN: rows below it go (rows of one push share an LSN and
            // stay or go together).
            let at = (total - target) as usize;
            let (_, &mut nth, _) = lsns.select_nth_unstable(at);
            let kept = lsns.iter().filter(|&&l| l >= nth).count() as u64;
            (Some(nth), kept)
        } else {
            (None, total)
        };
        drop(lsns);
        if let Some(l) = self.state.write().life.get_mut(&t.id) {
            l.rows_at_pass = Some(kept);
        }
        let Some(before) = before else {
            return Ok(());
        };
        let evicted = total - kept;
        let change = LifeChange::Evict {
            before,
            rows: evicted,
        };
        let lsn = match self.log_lifecycle(t, change) {
            Ok(lsn) => lsn,
            Err(PushError::Storage(s)) => return Err(s),
            // The table was dropped meanwhile: nothing to evict.
            Err(_) => return Ok(()),
        };
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        tracing::info!(
            table = %t.spec.name,
            rows = total,
            evicted,
            before_lsn = before,
            "rows evicted to keep the table within max_rows"
        );
        Ok(())
    }
}
