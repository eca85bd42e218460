//! Streaming the stored rows of a key range in key order, a batch at a time, merging the
//! in-memory layers (dirty, frozen) with RocksDB.
//!
//! The in-memory layers are hash maps, so a scan takes, once at its start, the sorted list of
//! in-memory keys inside its range. Memory is bounded by that list (at most the rows changed
//! since the last checkpoint) plus one batch; never by the size of the table. Each row comes
//! back at least as new as the scan's start; rows first written after the start may be missed.

use std::collections::VecDeque;
use std::sync::Arc;

use paramdb_types::{Key, KeyRange};

use crate::catalog::Table;
use crate::error::{PullError, StorageError};
use crate::row;
use crate::state_machine::{lookup, Found};
use crate::store::Core;

/// Rows fetched per batch from each source.
const BATCH: usize = 1024;

/// Iterator over `(key, weights)` of the stored rows in a range.
#[derive(Debug)]
pub struct RangeScan {
    core: Arc<Core>,
    table: Arc<Table>,
    cursor: Key,
    end: Key,
    done: bool,
    /// In-memory keys of the range at the scan's start, sorted; `mem_pos` is the next one.
    mem_keys: Vec<Key>,
    mem_pos: usize,
    /// Ranges deleted in memory at the scan's start: RocksDB's rows inside them are gone,
    /// unless memory holds a newer row.
    deleted: Vec<KeyRange>,
    /// Only rows whose last push (or import) is past this LSN (a delta export).
    since: Option<u64>,
    batch: VecDeque<(Key, Vec<f32>)>,
}

impl RangeScan {
    pub(crate) fn new(core: Arc<Core>, table: Arc<Table>, range: KeyRange) -> Self {
        let (mut mem_keys, deleted): (Vec<Key>, Vec<KeyRange>) = {
            let layers = core.state.read();
            let (dirty, frozen) = layers.of(table.id);
            let layers = || dirty.into_iter().chain(frozen);
            (
                layers()
                    .flat_map(|m| m.rows.keys().copied())
                    .filter(|k| range.contains(*k))
                    .collect(),
                layers()
                    .flat_map(|m| m.deleted.iter().copied())
                    .filter(|r| r.start < range.end && range.start < r.end)
                    .collect(),
            )
        };
        mem_keys.sort_unstable();
        mem_keys.dedup();
        RangeScan {
            core,
            table,
            cursor: range.start,
            end: range.end,
            done: range.is_empty(),
            mem_keys,
            mem_pos: 0,
            deleted,
            since: None,
            batch: VecDeque::new(),
        }
    }

    /// Keeps only the rows last pushed (or imported) after LSN `lsn`.
    pub(crate) fn since(mut self, lsn: u64) -> Self {
        self.since = Some(lsn);
        self
    }

    fn fill(&mut self) -> Result<(), StorageError> {
        let t = &self.table;
        let dim = t.spec.dim as usize;
        // Memory first: a key absent from memory now has its latest value in RocksDB, and the
        // RocksDB read that follows can only see something newer.
        let take = (self.mem_keys.len() - self.mem_pos).min(BATCH);
        let candidates = &self.mem_keys[self.mem_pos..self.mem_pos + take];
        let mem_full = self.mem_pos + take < self.mem_keys.len();
        let mem_last = candidates.last().copied();
        // `None`: deleted in memory, so RocksDB's row (if any) is skipped.
        let mut mem: Vec<(Key, Option<Vec<f32>>)> = Vec::with_capacity(take);
        // Rows older than this are expired or evicted: skipped like deleted ones.
        let cutoff;
        let since = self.since;
        let changed = |lsn: u64| since.is_none_or(|s| lsn > s);
        {
            let layers = self.core.state.read();
            cutoff = layers.cutoff(t.id, self.core.now());
            let (dirty, frozen) = layers.of(t.id);
            for &k in candidates {
                match lookup(dirty, frozen, k) {
                    Found::Row(r) if cutoff.keeps_row(r) && changed(r.lsn) => {
                        mem.push((k, Some(r.weights(dim).to_vec())))
                    }
                    Found::Row(_) | Found::Deleted => mem.push((k, None)),
                    // Gone from memory means checkpointed: RocksDB has it now (or not, if
                    // it was deleted).
                    Found::Absent => {}
                }
            }
        }
        self.mem_pos += take;
        let disk = self.core.rocks.range(&t.cf, self.cursor, self.end, BATCH)?;
        let disk_full = disk.len() >= BATCH;
        // Only keys up to the smaller of the two batch ends are complete in both sources.
        let mut limit = Key::MAX;
        if mem_full {
            limit = limit.min(mem_last.unwrap_or(Key::MAX));
        }
        if disk_full {
            limit = limit.min(disk.last().map_or(Key::MAX, |e| e.0));
        }
        // Candidates past the limit are read again in the next batch.
        let beyond = candidates.iter().rev().take_while(|&&k| k > limit).count();
        self.mem_pos -= beyond;
        let mut mi = mem.into_iter().filter(|e| e.0 <= limit).peekable();
        let mut di = disk.into_iter().filter(|e| e.0 <= limit).peekable();
        let mut last = None;
        loop {
            let (k, w) = match (mi.peek().map(|e| e.0), di.peek().map(|e| e.0)) {
                (None, None) => break,
                (Some(m), Some(d)) if m == d => {
                    di.next();
                    mi.next().expect("peeked")
                }
                (Some(m), Some(d)) if m < d => mi.next().expect("peeked"),
                (Some(_), None) => mi.next().expect("peeked"),
                _ => {
                    let (k, b) = di.next().expect("peeked");
                    if self.deleted.iter().any(|r| r.contains(k))
                        || !cutoff.keeps(row::stored_time(&b), row::stored_lsn(&b))
                        || !changed(row::stored_lsn(&b))
                    {
                        (k, None)
                    } else {
                        let mut w = vec![0.0; dim];
                        row::decode_weights_into(&b, &t.spec.rule, t.spec.dim, &mut w).map_err(
                            |reason| StorageError::CorruptRow {
                                table: t.spec.name.clone(),
                                key: k,
                                reason,
                            },
                        )?;
                        (k, Some(w))
                    }
                }
            };
            last = Some(k);
            if let Some(w) = w {
                self.batch.push_back((k, w));
            }
        }
        // `last` counts skipped (deleted) keys too, so a window of deleted rows still moves on.
        match last {
            Some(k) if k < Key::MAX && k + 1 < self.end => self.cursor = k + 1,
            // An empty batch with more in-memory candidates left: they were all checkpointed
            // meanwhile and RocksDB's next window will have them.
            None if mem_full || disk_full => {}
            _ => self.done = true,
        }
        Ok(())
    }
}

impl Iterator for RangeScan {
    type Item = Result<(Key, Vec<f32>), PullError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.batch.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e.into()));
            }
        }
        self.batch.pop_front().map(Ok)
    }
}
