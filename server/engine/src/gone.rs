//! Gone keys: which keys of a table were deleted, expired or evicted after an LSN, so that a
//! delta export since that LSN can list them beside the rows that changed.
//!
//! - **Deletes** are journaled by the checkpoint that writes them to RocksDB, in the same
//!   batch: `gone/<table id, u32 BE><checkpoint LSN, u64 BE><kind><key or start, u64 BE>`
//!   in the meta column family (kind 0: a key; kind 1: a range, its end in the value). The
//!   checkpoint's LSN is at or past the delete's own, so an entry is listed for every LSN
//!   before the delete, and perhaps for a few after it (harmless: such a key is absent now).
//! - **Expired and evicted rows** need no journal: whether a row is gone is a function of its
//!   last push's time and LSN and of the table's cut-off (`lifecycle::Cutoff`), which only
//!   grows. What is needed is that the row is still there to be found. So the checkpoint and
//!   the compaction filter do not drop a row as soon as it is gone, but only once it was gone
//!   by the cut-off of `retention` seconds ago: each checkpoint records a *sample* of the
//!   cut-offs at its last record (at most one every `retention / 64` seconds), and the newest
//!   sample at least `retention` old is the *anchor* that dropping goes by. Until then a gone
//!   row stays on disk, where every read already treats it as absent.
//! - **What is tracked.** Every key gone after LSN `from` can be listed: the anchor's LSN
//!   (rows dropped were gone by the anchor's time, so they were gone for every LSN at or past
//!   it, whose time is at or past it), and journal entries up to it are pruned. A store from
//!   before this journal starts tracking at the checkpoint it was opened at. `retention = 0`
//!   drops at once, as before, and tracks only from the last checkpoint.
//!
//! Listing gone keys since LSN `x`: the journal's entries past `x`; the keys and ranges the
//! in-memory layers deleted; and every row, on disk or in memory, that the cut-off of now
//! does not keep and that of the newest sample at or before `x` does (a lower bound of the
//! cut-off at `x`, so a key may be listed that was already gone then). Keys that are live now
//! (deleted and pushed again) are left out. Ranges are listed as ranges; the rows a range
//! delete removed are not known one by one.

use paramdb_types::{Gone, Key, KeyRange};
use rocksdb::WriteBatch;

use crate::error::{InputError, PullError, StorageError};
use crate::lifecycle::Cutoff;
use crate::state_machine::{lookup, Found, Lives, Slot};
use crate::store::Core;

/// The cut-off history, as of the last checkpoint: `history` in the meta column family.
pub(crate) const META_HISTORY: &[u8] = b"history";
/// Journal entries of deleted keys and ranges: `gone/…` (see the module's note).
pub(crate) const META_GONE_PREFIX: &[u8] = b"gone/";
/// Version of the encoded history.
const HISTORY_VERSION: u8 = 1;
const KIND_KEY: u8 = 0;
const KIND_RANGE: u8 = 1;

/// The cut-offs of every table with one, as of a checkpoint's last record.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    pub(crate) lsn: u64,
    pub(crate) time: u32,
    /// By table id; a table not listed kept every row.
    cutoffs: Vec<(u32, Cutoff)>,
}

impl Sample {
    fn of(lsn: u64, time: u32, lives: &Lives) -> Sample {
        let mut cutoffs: Vec<(u32, Cutoff)> = lives
            .iter()
            .map(|(id, l)| (*id, l.cutoff(time)))
            .filter(|(_, c)| !c.keeps_all())
            .collect();
        cutoffs.sort_unstable_by_key(|c| c.0);
        Sample { lsn, time, cutoffs }
    }

    fn cutoff(&self, table: u32) -> Cutoff {
        self.cutoffs
            .binary_search_by_key(&table, |c| c.0)
            .map_or(Cutoff::default(), |i| self.cutoffs[i].1)
    }
}

/// Samples of the cut-offs at checkpoints, and what follows from them (module's note).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct History {
    /// Every key gone after this LSN can be listed.
    pub(crate) from: u64,
    /// The newest sample at least `retention` old: rows it does not keep may be dropped.
    anchor: Option<Sample>,
    /// The samples after the anchor, oldest first.
    recent: Vec<Sample>,
}

impl History {
    /// A history that starts at `from` (a new store: 0; an older one: its checkpoint).
    pub(crate) fn starting(from: u64) -> History {
        History {
            from,
            ..Default::default()
        }
    }

    /// The history after a checkpoint through `lsn`, whose last record has time `time`.
    pub(crate) fn advanced(&self, lsn: u64, time: u32, lives: &Lives, retention: u32) -> History {
        let mut h = self.clone();
        let step = u64::from(retention / 64);
        let due = h
            .recent
            .last()
            .or(h.anchor.as_ref())
            .is_none_or(|s| u64::from(s.time) + step <= u64::from(time) && s.lsn < lsn);
        if due {
            h.recent.push(Sample::of(lsn, time, lives));
        }
        while h
            .recent
            .first()
            .is_some_and(|s| u64::from(s.time) + u64::from(retention) <= u64::from(time))
        {
            h.anchor = Some(h.recent.remove(0));
        }
        if let Some(a) = &h.anchor {
            h.from = h.from.max(a.lsn);
        }
        h
    }

    /// What of table `table` the checkpoint and compaction may drop: rows this does not keep.
    pub(crate) fn drop_cutoff(&self, table: u32) -> Cutoff {
        self.anchor
            .as_ref()
            .map_or(Cutoff::default(), |a| a.cutoff(table))
    }

    /// A lower bound of table `table`'s cut-off at LSN `lsn`.
    fn cutoff_at(&self, table: u32, lsn: u64) -> Cutoff {
        self.anchor
            .iter()
            .chain(&self.recent)
            .rev()
            .find(|s| s.lsn <= lsn)
            .map_or(Cutoff::default(), |s| s.cutoff(table))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = vec![HISTORY_VERSION];
        b.extend_from_slice(&self.from.to_le_bytes());
        b.push(self.anchor.is_some() as u8);
        let samples: Vec<&Sample> = self.anchor.iter().chain(&self.recent).collect();
        b.extend_from_slice(&(samples.len() as u32).to_le_bytes());
        for s in samples {
            b.extend_from_slice(&s.lsn.to_le_bytes());
            b.extend_from_slice(&s.time.to_le_bytes());
            b.extend_from_slice(&(s.cutoffs.len() as u32).to_le_bytes());
            for (id, c) in &s.cutoffs {
                b.extend_from_slice(&id.to_le_bytes());
                b.extend_from_slice(&c.time.to_le_bytes());
                b.extend_from_slice(&c.lsn.to_le_bytes());
            }
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<History, String> {
        let mut r = Reader(b);
        let v = r.u8()?;
        if v != HISTORY_VERSION {
            return Err(format!(
                "history version {v}, this build reads {HISTORY_VERSION}"
            ));
        }
        let from = r.u64()?;
        let anchored = r.u8()? != 0;
        let n = r.u32()?;
        let mut samples = Vec::new();
        for _ in 0..n {
            let (lsn, time, m) = (r.u64()?, r.u32()?, r.u32()?);
            let mut cutoffs = Vec::new();
            for _ in 0..m {
                cutoffs.push((
                    r.u32()?,
                    Cutoff {
                        time: r.u32()?,
                        lsn: r.u64()?,
                    },
                ));
            }
            samples.push(Sample { lsn, time, cutoffs });
        }
        if !r.0.is_empty() {
            return Err(format!("{} bytes after the history", r.0.len()));
        }
        let anchor = if anchored && !samples.is_empty() {
            Some(samples.remove(0))
        } else if anchored {
            return Err("an anchor flag without samples".into());
        } else {
            None
        };
        Ok(History {
            from,
            anchor,
            recent: samples,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("history cut short".into());
        }
        let (a, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(a.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

fn journal_prefix(table: u32) -> Vec<u8> {
    [META_GONE_PREFIX, &table.to_be_bytes()].concat()
}

fn journal_key(table: u32, lsn: u64, kind: u8, key: Key) -> Vec<u8> {
    [
        &journal_prefix(table)[..],
        &lsn.to_be_bytes(),
        &[kind],
        &key.to_be_bytes(),
    ]
    .concat()
}

/// Adds to a checkpoint's batch the journal entries of table `table`'s deletes in `layer`
/// (the checkpoint through `lsn`).
pub(crate) fn journal(
    b: &mut WriteBatch,
    meta: &std::sync::Arc<rocksdb::BoundColumnFamily<'_>>,
    (table, lsn): (u32, u64),
    layer: &crate::state_machine::TableLayer,
) {
    // One entry per start: ranges that share one keep the widest end.
    let mut ranges: std::collections::BTreeMap<Key, Key> = std::collections::BTreeMap::new();
    for r in &layer.deleted {
        let end = ranges.entry(r.start).or_insert(r.end);
        *end = (*end).max(r.end);
    }
    for (start, end) in ranges {
        b.put_cf(
            meta,
            journal_key(table, lsn, KIND_RANGE, start),
            end.to_be_bytes(),
        );
    }
    for (k, slot) in &layer.rows {
        if matches!(slot, Slot::Deleted) {
            b.put_cf(meta, journal_key(table, lsn, KIND_KEY, *k), []);
        }
    }
}

/// Adds to a checkpoint's batch the removal of journal entries that `h` no longer needs (those
/// of checkpoints at or before `h.from`), for each of `tables`.
pub(crate) fn prune(
    b: &mut WriteBatch,
    meta: &std::sync::Arc<rocksdb::BoundColumnFamily<'_>>,
    h: &History,
    tables: impl Iterator<Item = u32>,
) {
    for t in tables {
        let p = journal_prefix(t);
        let end = [&p[..], &h.from.saturating_add(1).to_be_bytes()].concat();
        b.delete_range_cf(meta, &p, &end);
    }
}

/// Removes every journal entry of a dropped table.
pub(crate) fn forget_table(
    b: &mut WriteBatch,
    meta: &std::sync::Arc<rocksdb::BoundColumnFamily<'_>>,
    table: u32,
) {
    b.delete_range_cf(meta, journal_prefix(table), journal_prefix(table + 1));
}

impl Core {
    /// See `Store::gone_since`.
    pub(crate) fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: u64,
    ) -> Result<Gone, PullError> {
        let t = self.table(table)?;
        let history = self.history().clone();
        if since != 0 && since < history.from {
            return Err(InputError::GoneUntracked {
                lsn: since,
                from: history.from,
                retention_secs: self.opts.gone_retention_secs,
            }
            .into());
        }
        let mut gone = Gone::default();
        if since == 0 || range.is_empty() {
            // Nothing was there at LSN 0.
            return Ok(gone);
        }
        let mut keys: Vec<Key> = Vec::new();
        let clip = |r: KeyRange| KeyRange::new(r.start.max(range.start), r.end.min(range.end));
        // Memory first, then the journal and the disk: a checkpoint that moves a delete or
        // a row from memory to RocksDB meanwhile leaves it in the later reads.
        let now_cut;
        let then_cut = history.cutoff_at(t.id, since);
        {
            let layers = self.state.read();
            now_cut = layers.cutoff(t.id, self.now());
            let (dirty, frozen) = layers.of(t.id);
            for layer in [frozen, dirty].into_iter().flatten() {
                gone.ranges.extend(layer.deleted.iter().map(|r| clip(*r)));
                for (k, slot) in &layer.rows {
                    let was = match slot {
                        Slot::Deleted => true,
                        Slot::Row(r) => !now_cut.keeps_row(r) && then_cut.keeps_row(r),
                    };
                    if was && range.contains(*k) {
                        keys.push(*k);
                    }
                }
            }
        }
        // The journal.
        let prefix = journal_prefix(t.id);
        for (k, v) in self.rocks.meta_between(
            &[&prefix[..], &(since + 1).to_be_bytes()].concat(),
            &journal_prefix(t.id + 1),
        )? {
            let bad = || StorageError::CorruptMeta {
                reason: format!("gone-key journal entry of {} bytes", k.len()),
            };
            let rest = &k[prefix.len()..];
            if rest.len() != 17 {
                return Err(bad().into());
            }
            let key = u64::from_be_bytes(rest[9..17].try_into().expect("8 bytes"));
            match rest[8] {
                KIND_KEY if range.contains(key) => keys.push(key),
                KIND_KEY => {}
                KIND_RANGE => {
                    let end = u64::from_be_bytes(v.as_slice().try_into().map_err(|_| bad())?);
                    gone.ranges.push(clip(KeyRange::new(key, end)));
                }
                _ => return Err(bad().into()),
            }
        }
        // Rows on disk gone since: only if the cut-off moved since.
        if now_cut != then_cut {
            self.rocks.for_each_row(&t.cf, range, &mut |k, v| {
                let (time, lsn) = (crate::row::stored_time(v), crate::row::stored_lsn(v));
                if !now_cut.keeps(time, lsn) && then_cut.keeps(time, lsn) {
                    keys.push(k);
                }
            })?;
        }
        gone.ranges.retain(|r| !r.is_empty());
        gone.ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<KeyRange> = Vec::with_capacity(gone.ranges.len());
        for r in gone.ranges.drain(..) {
            match merged.last_mut() {
                Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        gone.ranges = merged;
        keys.sort_unstable();
        keys.dedup();
        gone.keys = self.absent_of(&t, keys, now_cut)?;
        // A checkpoint meanwhile may have dropped rows (and journal entries) the LSN needs.
        let from = self.history().from;
        if since < from {
            return Err(InputError::GoneUntracked {
                lsn: since,
                from,
                retention_secs: self.opts.gone_retention_secs,
            }
            .into());
        }
        Ok(gone)
    }

    /// The keys of `keys` (sorted) that have no live row now.
    fn absent_of(
        &self,
        t: &crate::catalog::Table,
        keys: Vec<Key>,
        cut: Cutoff,
    ) -> Result<Vec<Key>, StorageError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(4096) {
            let mut ask = Vec::new();
            {
                let layers = self.state.read();
                let (dirty, frozen) = layers.of(t.id);
                for &k in chunk {
                    match lookup(dirty, frozen, k) {
                        Found::Row(r) if cut.keeps_row(r) => {}
                        Found::Row(_) | Found::Deleted => out.push(k),
                        Found::Absent => ask.push(k),
                    }
                }
            }
            for (k, v) in ask.iter().zip(self.rocks.get_rows(&t.cf, &ask)?) {
                let live = v.is_some_and(|v| {
                    cut.keeps(crate::row::stored_time(&v), crate::row::stored_lsn(&v))
                });
                if !live {
                    out.push(*k);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Life;
    use paramdb_types::Lifecycle;

    fn lives(ttl: u64, since: u32) -> Lives {
        let mut l = Life::new(Lifecycle::default(), since, 0);
        l.set_policy(
            Lifecycle {
                ttl_secs: Some(ttl),
                ..Default::default()
            },
            since,
            0,
        );
        [(3, l)].into_iter().collect()
    }

    #[test]
    fn the_anchor_is_the_newest_sample_a_retention_old() {
        let l = lives(10, 100);
        let mut h = History::starting(0);
        for (i, t) in [100u32, 120, 140, 160, 180].into_iter().enumerate() {
            h = h.advanced(10 * (i as u64 + 1), t, &l, 50);
        }
        // Samples at 100..180 every 20 s (step 50/64 = 0); the newest ≤ 180 − 50 is at 120.
        let a = h.anchor.clone().unwrap();
        assert_eq!((a.lsn, a.time), (20, 120));
        assert_eq!(h.from, 20);
        assert_eq!(h.drop_cutoff(3), l[&3].cutoff(120));
        assert_eq!(h.drop_cutoff(4), Cutoff::default());
        // The newest sample at or before an LSN bounds its cut-off from below.
        assert_eq!(h.cutoff_at(3, 45), l[&3].cutoff(160));
        assert_eq!(h.cutoff_at(3, 5), Cutoff::default());
        let back = History::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert!(History::decode(&h.encode()[..9]).is_err());
    }

    #[test]
    fn zero_retention_drops_by_the_last_checkpoint() {
        let l = lives(10, 100);
        let h = History::starting(7).advanced(30, 150, &l, 0);
        assert_eq!(h.drop_cutoff(3), l[&3].cutoff(150));
        assert_eq!(h.from, 30);
    }

    #[test]
    fn samples_are_spaced_by_a_64th_of_the_retention() {
        let l = lives(10, 100);
        let mut h = History::starting(0);
        for i in 0..1000u64 {
            h = h.advanced(i + 1, 100 + i as u32, &l, 6400);
        }
        // One sample every 100 s over 1,000 s.
        assert_eq!(h.recent.len(), 10);
        assert!(h.anchor.is_none());
        assert_eq!(h.from, 0);
    }
}
