//! The read path: a row is looked for in the dirty layer, then the frozen one (a checkpoint in
//! progress), then the hot-row cache, then RocksDB, and a key never written pulls its
//! initializer's value. A key a layer deleted pulls its initializer too, whatever lies below.
//!
//! Locks: the layers are read under their reader-writer lock (pulls share it), the cache
//! under its own mutex, and RocksDB with no lock at all. A pull never waits for the log: a push
//! holds the layers for writing only while it applies, after it has logged.
//!
//! A row read from RocksDB is offered to the cache only if no checkpoint published rows since
//! the pull began (the cache's generation): otherwise it might be older than what RocksDB now
//! holds, and a cached row must equal RocksDB's.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use paramdb_types::Key;

use crate::cache::RowCache;
use crate::catalog::Table;
use crate::error::{InputError, PullError, StorageError};
use crate::rocks::Rocks;
use crate::row::{self, Row};
use crate::state_machine::{lookup, Found};
use crate::store::Core;

/// The hot-row cache and its generation, bumped whenever a checkpoint publishes rows (see
/// `checkpointer`).
#[derive(Debug)]
pub(crate) struct HotRows {
    pub(crate) rows: RowCache,
    pub(crate) generation: u64,
}

/// Rows of `keys` as RocksDB stores them (`None`: nothing stored).
pub(crate) fn stored_rows(
    rocks: &Rocks,
    t: &Table,
    keys: &[Key],
) -> Result<HashMap<Key, Option<Row>>, StorageError> {
    let stored = rocks.get_rows(&t.cf, keys)?;
    let mut out = HashMap::with_capacity(keys.len());
    for (&k, v) in keys.iter().zip(stored) {
        out.insert(k, v.map(|b| decode_stored(t, k, &b)).transpose()?);
    }
    Ok(out)
}

/// A row as stored in RocksDB.
pub(crate) fn decode_stored(t: &Table, k: Key, b: &[u8]) -> Result<Row, StorageError> {
    Row::decode(b, &t.spec.rule, t.spec.dim).map_err(|reason| StorageError::CorruptRow {
        table: t.spec.name.clone(),
        key: k,
        reason,
    })
}

impl Core {
    pub(crate) fn pull_into(
        &self,
        t: &Table,
        keys: &[Key],
        out: &mut [f32],
    ) -> Result<(), PullError> {
        let dim = t.dim();
        check_pull(t, keys, out, self.opts.max_request_bytes)?;
        // The generation before the layers: see the module's note.
        let generation = self.cache().generation;
        // Rows older than this are expired or evicted: they pull their initializer.
        let cutoff;
        // Rows in memory are copied under the layers' read lock; a key not in memory now has
        // its latest value in the cache or RocksDB, and reading those after can only see
        // something newer.
        let mut missing = Vec::new();
        {
            let layers = self.state.read();
            cutoff = layers.cutoff(t.id, self.now());
            let (dirty, frozen) = layers.of(t.id);
            if dirty.is_none() && frozen.is_none() {
                missing.extend(0..keys.len());
            } else {
                for (i, &k) in keys.iter().enumerate() {
                    let o = &mut out[i * dim..(i + 1) * dim];
                    match lookup(dirty, frozen, k) {
                        Found::Row(r) if cutoff.keeps_row(r) => o.copy_from_slice(r.weights(dim)),
                        Found::Row(_) | Found::Deleted => {
                            crate::init::fill(&t.spec.init, t.spec.seed, k, o)
                        }
                        Found::Absent => missing.push(i),
                    }
                }
            }
        }
        let offer = if missing.is_empty() {
            false
        } else {
            let mut cache = self.cache();
            cache
                .rows
                .read_weights(t.id, keys, &mut missing, out, cutoff);
            cache.rows.has_room_for(t.id)
        };
        if !missing.is_empty() {
            self.pull_stored(t, keys, &missing, out, offer, generation, cutoff)?;
        }
        self.counters.pulls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rows_pulled
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The rows at `missing` (indices into `keys`) from RocksDB, offered to the cache when it
    /// has room for the table. A row of a time below `cutoff` pulls its initializer.
    #[allow(clippy::too_many_arguments)]
    fn pull_stored(
        &self,
        t: &Table,
        keys: &[Key],
        missing: &[usize],
        out: &mut [f32],
        offer: bool,
        generation: u64,
        cutoff: crate::lifecycle::Cutoff,
    ) -> Result<(), StorageError> {
        let dim = t.dim();
        let mk: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
        let stored = self.rocks.get_rows(&t.cf, &mk)?;
        if !offer {
            // No cache for this table: decode just the weights.
            for ((&i, &k), v) in missing.iter().zip(&mk).zip(stored) {
                let o = &mut out[i * dim..(i + 1) * dim];
                match v {
                    Some(b) if cutoff.keeps(row::stored_time(&b), row::stored_lsn(&b)) => {
                        row::decode_weights_into(&b, &t.spec.rule, t.spec.dim, o).map_err(
                            |reason| StorageError::CorruptRow {
                                table: t.spec.name.clone(),
                                key: k,
                                reason,
                            },
                        )?
                    }
                    _ => crate::init::fill(&t.spec.init, t.spec.seed, k, o),
                }
            }
            return Ok(());
        }
        let mut loaded = Vec::with_capacity(mk.len());
        for ((&i, &k), v) in missing.iter().zip(&mk).zip(stored) {
            let o = &mut out[i * dim..(i + 1) * dim];
            match v.map(|b| decode_stored(t, k, &b)).transpose()? {
                Some(row) if cutoff.keeps_row(&row) => {
                    o.copy_from_slice(row.weights(dim));
                    loaded.push((k, row));
                }
                // Nothing (live) stored: the cache holds only what RocksDB holds.
                _ => crate::init::fill(&t.spec.init, t.spec.seed, k, o),
            }
        }
        let mut cache = self.cache();
        if cache.generation == generation {
            for (k, row) in &loaded {
                cache.rows.offer(t.id, *k, row);
            }
        }
        Ok(())
    }
}

fn check_pull(
    t: &Table,
    keys: &[Key],
    out: &[f32],
    max_request_bytes: u64,
) -> Result<(), InputError> {
    let dim = t.dim();
    if keys.is_empty() {
        return Err(InputError::EmptyRequest {
            table: t.spec.name.clone(),
        });
    }
    let bytes = keys.len() as u64 * (8 + 4 * dim as u64);
    if bytes > max_request_bytes {
        return Err(InputError::RequestTooLarge {
            bytes,
            limit: max_request_bytes,
        });
    }
    if out.len() != keys.len() * dim {
        return Err(InputError::DimensionMismatch {
            table: t.spec.name.clone(),
            dim: t.spec.dim,
            keys: keys.len(),
            values: out.len(),
        });
    }
    Ok(())
}
