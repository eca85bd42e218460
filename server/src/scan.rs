//! Streaming the stored rows of a key range in key order, a batch at a time, merging the
//! in-memory layers (dirty, frozen) with RocksDB. Memory is bounded by the batch size, not the
//! range.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::{Result, StoreError};
use crate::row;
use crate::store::{Shared, Table};
use crate::types::{Key, KeyRange};

/// Rows fetched per batch from each source.
const BATCH: usize = 1024;

/// Iterator over `(key, weights)` of the stored rows in a range. Each row is at least as new
/// as the moment its batch was read; the scan is not a snapshot of the whole range.
#[derive(Debug)]
pub struct RangeScan {
    shared: Arc<Shared>,
    table: Arc<Table>,
    cursor: Key,
    end: Key,
    done: bool,
    batch: VecDeque<(Key, Vec<f32>)>,
}

impl RangeScan {
    pub(crate) fn new(shared: Arc<Shared>, table: Arc<Table>, range: KeyRange) -> Self {
        RangeScan {
            shared,
            table,
            cursor: range.start,
            end: range.end,
            done: range.is_empty(),
            batch: VecDeque::new(),
        }
    }

    fn fill(&mut self) -> Result<()> {
        let t = &self.table;
        let dim = t.spec.dim as usize;
        // Memory first: a key absent from memory now has its latest value in RocksDB, and the
        // RocksDB read that follows can only see something newer.
        let (mem, mem_full) = {
            let st = self.shared.lock_state();
            let mut mem: Vec<(Key, Vec<f32>)> = Vec::new();
            let layers = [
                st.dirty.get(&t.id),
                st.frozen.as_ref().and_then(|f| f.get(&t.id)),
            ];
            for layer in layers.into_iter().flatten() {
                for (&k, r) in layer.range(self.cursor..self.end).take(BATCH) {
                    mem.push((k, r.weights(dim).to_vec()));
                }
            }
            // Dirty first, so after a stable sort and dedup the newest layer wins.
            mem.sort_by_key(|e| e.0);
            mem.dedup_by_key(|e| e.0);
            let full = mem.len() >= BATCH;
            mem.truncate(BATCH);
            (mem, full)
        };
        let disk = self
            .shared
            .rocks
            .range(&t.cf, self.cursor, self.end, BATCH)?;
        let disk_full = disk.len() >= BATCH;
        // Only keys up to the smaller of the two batch ends are complete in both sources.
        let mut limit = Key::MAX;
        if mem_full {
            limit = limit.min(mem.last().map_or(Key::MAX, |e| e.0));
        }
        if disk_full {
            limit = limit.min(disk.last().map_or(Key::MAX, |e| e.0));
        }
        let mut mi = mem.into_iter().peekable();
        let mut di = disk.into_iter().peekable();
        let mut last = None;
        loop {
            let next_m = mi.peek().map(|e| e.0).filter(|&k| k <= limit);
            let next_d = di.peek().map(|e| e.0).filter(|&k| k <= limit);
            let (k, w) = match (next_m, next_d) {
                (None, None) => break,
                (Some(m), Some(d)) if m == d => {
                    di.next();
                    mi.next().expect("peeked")
                }
                (Some(m), Some(d)) if m < d => mi.next().expect("peeked"),
                (Some(_), None) => mi.next().expect("peeked"),
                _ => {
                    let (k, b) = di.next().expect("peeked");
                    let mut w = vec![0.0; dim];
                    row::decode_weights_into(&b, &t.spec.rule, t.spec.dim, &mut w).map_err(
                        |reason| StoreError::CorruptRow {
                            table: t.spec.name.clone(),
                            key: k,
                            reason,
                        },
                    )?;
                    (k, w)
                }
            };
            last = Some(k);
            self.batch.push_back((k, w));
        }
        match last {
            Some(k) if k < Key::MAX && k + 1 < self.end => self.cursor = k + 1,
            _ => self.done = true,
        }
        Ok(())
    }
}

impl Iterator for RangeScan {
    type Item = Result<(Key, Vec<f32>)>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.batch.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.batch.pop_front().map(Ok)
    }
}
