//! The life of a push:
//!
//! 1. **Validate** (`validate`): the table exists, `values.len() == keys × dim`, every value is
//!    finite, no key appears twice, the size is within limits. Bad input is refused here and
//!    nothing is logged or applied.
//! 2. **Plan** (no lock but short reads of the layers and the cache): a retry of an applied
//!    `(client, seq)` is acknowledged again; otherwise the rows that are neither in memory nor
//!    cached are read from RocksDB. A read failure here poisons the store (the rows cannot be
//!    trusted), but nothing has been logged.
//! 3. **Log** (log component, under the sequencer): the push is checked again (a retry that
//!    raced, a checkpoint that made the plan stale, a table dropped meanwhile), then appended
//!    with the next LSN.
//! 4. **Apply** (state machine, still under the sequencer so rows change in LSN order): every
//!    row the push touches was found in step 2, so applying cannot fail; if it ever did, the
//!    store is poisoned, because the record is in the log.
//! 5. **Acknowledge** once the record is durable under the sync policy (group commit).

use std::collections::HashMap;

use paramdb_types::{ClientId, Key, PushAck};

use crate::catalog::Table;
use crate::dedup::Verdict;
use crate::error::{InputError, PushError, StorageError};
use crate::log::Sequencer;
use crate::options::SyncPolicy;
use crate::row::Row;
use crate::state_machine::{lookup, Request};
use crate::store::Core;
use crate::wal::writer::Appended;
use crate::wal::Body;

/// Keys of a push: a list, or the contiguous block `[start, start + count)`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PushKeys<'a> {
    List(&'a [Key]),
    Range { start: Key, count: u64 },
}

/// Who wrote a record: the client, its sequence number, and how many shards the client split
/// the write into (0 or 1: one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) client: ClientId,
    pub(crate) seq: u64,
    pub(crate) parts: u16,
}

impl Origin {
    pub(crate) const ANONYMOUS: Origin = Origin {
        client: ClientId::ANONYMOUS,
        seq: 0,
        parts: 0,
    };
}

/// What the last checks under the sequencer decided.
pub(crate) enum Admitted {
    New,
    /// A retry of an applied write: acknowledge once this LSN is durable.
    Duplicate(u64),
    /// A backup's fence is up: wait for it with no lock held, then try again.
    Fenced,
}

/// What step 2 found: the rows to start from, as of cache generation `generation`.
struct Plan {
    generation: u64,
    /// `None`: nothing stored.
    fetched: HashMap<Key, Option<Row>>,
}

impl Core {
    pub(crate) fn push(
        &self,
        table: &str,
        origin: Origin,
        keys: PushKeys<'_>,
        values: &[f32],
    ) -> Result<PushAck, PushError> {
        let Origin { client, seq, .. } = origin;
        self.check_writable("push")?;
        let t = self.table(table)?;
        let n = validate(&t, keys, values, self.opts.max_request_bytes)?;
        if client != ClientId::ANONYMOUS && seq == 0 {
            return Err(InputError::InvalidSequence { client: client.0 }.into());
        }
        self.poison.check()?;
        let budget = self.opts.checkpoint_dirty_bytes;
        if budget > 0 && self.state.read().dirty_bytes >= 2 * budget {
            // Pushes outran the background checkpoints: write rows back before adding more,
            // so the dirty layer's memory stays bounded.
            self.checkpoint()?;
        }
        let range_keys: Vec<Key>;
        let key_list: &[Key] = match keys {
            PushKeys::List(k) => k,
            PushKeys::Range { start, count } => {
                range_keys = (start..=start + (count - 1)).collect();
                &range_keys
            }
        };
        let request = Request {
            keys: key_list,
            values,
            dim: t.dim(),
        };
        let lsn = loop {
            if let Some(ack) = self.duplicate(client, seq)? {
                return self.ack_duplicate(ack);
            }
            let mut plan = self.plan(&t, key_list)?;
            match self.log_and_apply(&t, origin, keys, &request, &mut plan)? {
                Logged::Lsn(lsn) => break lsn,
                Logged::Duplicate(lsn) => return self.ack_duplicate(lsn),
                Logged::Stale => continue,
                Logged::Fenced => self.fence.wait(client.0, seq),
            }
        };
        self.counters
            .pushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counters
            .rows_pushed
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        Ok(PushAck {
            lsn,
            duplicate: false,
        })
    }

    /// `Some(lsn)` when `(client, seq)` was applied already: the LSN to be durable before the
    /// retry may be acknowledged (conservatively, everything logged so far).
    fn duplicate(&self, client: ClientId, seq: u64) -> Result<Option<u64>, InputError> {
        match self.state.verdict(client, seq) {
            Verdict::New => Ok(None),
            Verdict::Duplicate => Ok(Some(self.log.last_lsn())),
            Verdict::TooOld { oldest } => Err(InputError::SequenceTooOld {
                client: client.0,
                seq,
                oldest,
            }),
        }
    }

    pub(crate) fn ack_duplicate(&self, lsn: u64) -> Result<PushAck, PushError> {
        self.counters
            .duplicate_pushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The original may still be waiting for its fsync: a retry is acknowledged no sooner.
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        Ok(PushAck {
            lsn,
            duplicate: true,
        })
    }

    /// Step 2: the base rows a push needs that are neither in the dirty or frozen layer nor
    /// cached, read from RocksDB (or made by the initializer), without holding any lock while
    /// RocksDB reads.
    fn plan(&self, t: &Table, keys: &[Key]) -> Result<Plan, PushError> {
        // The generation first: if a checkpoint publishes its rows after this, the plan is
        // stale and step 3 notices.
        let generation = self.cache().generation;
        let missing: Vec<Key> = {
            let layers = self.state.read();
            let (dirty, frozen) = layers.of(t.id);
            keys.iter()
                .copied()
                .filter(|&k| lookup(dirty, frozen, k).is_absent())
                .collect()
        };
        let mut fetched = HashMap::with_capacity(missing.len());
        let mut unknown = Vec::new();
        {
            let mut cache = self.cache();
            for k in missing {
                match cache.rows.get_row(t.id, k) {
                    Some(r) => {
                        fetched.insert(k, Some(r));
                    }
                    None => unknown.push(k),
                }
            }
        }
        match crate::read_path::stored_rows(&self.rocks, t, &unknown) {
            Ok(rows) => fetched.extend(rows),
            Err(e) => {
                self.poison(format!(
                    "reading rows for a push failed: {}",
                    crate::error::chain(&e)
                ));
                return Err(e.into());
            }
        }
        Ok(Plan {
            generation,
            fetched,
        })
    }

    /// Steps 3 and 4, under the sequencer.
    fn log_and_apply(
        &self,
        t: &Table,
        origin: Origin,
        keys: PushKeys<'_>,
        request: &Request<'_>,
        plan: &mut Plan,
    ) -> Result<Logged, PushError> {
        let log = self.log.sequencer();
        if self.cache().generation != plan.generation {
            return Ok(Logged::Stale); // a checkpoint finished: fetched rows may be stale
        }
        match self.admit(&log, t, origin, true)? {
            Admitted::New => {}
            Admitted::Duplicate(lsn) => return Ok(Logged::Duplicate(lsn)),
            Admitted::Fenced => return Ok(Logged::Fenced),
        }
        // Every row must have a base before the record is logged: in memory, or read above.
        {
            let layers = self.state.read();
            let (dirty, frozen) = layers.of(t.id);
            if request
                .keys
                .iter()
                .any(|&k| lookup(dirty, frozen, k).is_absent() && !plan.fetched.contains_key(&k))
            {
                // Frozen rows were published and dropped since the plan: plan again.
                return Ok(Logged::Stale);
            }
        }
        let log_keys = match keys {
            PushKeys::List(k) => Ok(k),
            PushKeys::Range { start, .. } => Err(start),
        };
        let body = Body::Push {
            keys: log_keys,
            values: request.values,
        };
        let (done, log) = self.append(log, t, origin, body)?;
        let lsn = done.lsn;
        let dirty_bytes =
            match self
                .state
                .apply(t, origin, (done.time, lsn), request, &mut plan.fetched)
            {
                Ok(b) => b,
                Err(m) => {
                    drop(log);
                    // Unreachable by the check above; if it ever happens, the log holds a record
                    // memory does not, and only a reopen (replay) can reconcile them.
                    self.poison(format!(
                        "push of LSN {lsn} found no base row for key {}",
                        m.key
                    ));
                    return Err(self.poison.error().into());
                }
            };
        let log_since = log.bytes_appended().saturating_sub(self.mark().log_bytes);
        drop(log);
        let budget = self.opts.checkpoint_dirty_bytes;
        if log_since >= self.opts.checkpoint_log_bytes || (budget > 0 && dirty_bytes >= budget) {
            self.stop.wake.notify_all();
        }
        Ok(Logged::Lsn(lsn))
    }
}

impl Core {
    /// The last checks of a write of `origin` to `t`, under the sequencer: the table still
    /// exists, the write is new (not a retry of an applied one, to be acknowledged once the
    /// LSN it names is durable), the store is not poisoned, and (when `fenced` applies) no
    /// backup's fence holds it back.
    pub(crate) fn admit(
        &self,
        log: &Sequencer<'_>,
        t: &Table,
        origin: Origin,
        fenced: bool,
    ) -> Result<Admitted, PushError> {
        let Origin { client, seq, .. } = origin;
        if !self.table_live(t.id) {
            return Err(InputError::UnknownTable {
                name: t.spec.name.clone(),
            }
            .into());
        }
        match self.state.verdict(client, seq) {
            Verdict::New => {}
            Verdict::Duplicate => return Ok(Admitted::Duplicate(log.last_lsn())),
            Verdict::TooOld { oldest } => {
                return Err(InputError::SequenceTooOld {
                    client: client.0,
                    seq,
                    oldest,
                }
                .into())
            }
        }
        self.poison.check()?;
        if fenced && self.fence.blocks(client.0, seq) {
            return Ok(Admitted::Fenced);
        }
        Ok(Admitted::New)
    }

    /// Appends a write's record with the next LSN. On failure the segment's tail is unknown:
    /// the sequencer is released and the store poisoned.
    pub(crate) fn append<'l>(
        &self,
        mut log: Sequencer<'l>,
        t: &Table,
        origin: Origin,
        body: Body<'_>,
    ) -> Result<(Appended, Sequencer<'l>), PushError> {
        let o = (origin.client.0, origin.seq, origin.parts);
        match log.append(o, t.id, t.spec.dim, self.opts.clock.now(), body) {
            Ok(done) => {
                self.time
                    .fetch_max(done.time, std::sync::atomic::Ordering::Relaxed);
                Ok((done, log))
            }
            Err(e) => {
                // Poisoning wakes the durability waiters, whose leader may want the sequencer.
                drop(log);
                self.poison(format!("writing the gradient log failed: {e}"));
                Err(StorageError::io("writing the gradient log", e).into())
            }
        }
    }
}

/// How step 3 ended.
enum Logged {
    Lsn(u64),
    /// A retry of a push applied meanwhile: acknowledge once this LSN is durable.
    Duplicate(u64),
    /// The plan went stale; plan again.
    Stale,
    /// A backup's fence holds the write back: wait, then plan again.
    Fenced,
}

/// Step 1. Returns the number of rows.
fn validate(
    t: &Table,
    keys: PushKeys<'_>,
    values: &[f32],
    max_request_bytes: u64,
) -> Result<u64, InputError> {
    let name = || t.spec.name.clone();
    let n = match keys {
        PushKeys::List(k) => k.len() as u64,
        PushKeys::Range { count, .. } => count,
    };
    if n == 0 {
        return Err(InputError::EmptyRequest { table: name() });
    }
    let key_bytes = match keys {
        PushKeys::List(_) => n * 8,
        PushKeys::Range { .. } => 8,
    };
    let bytes = values.len() as u64 * 4 + key_bytes;
    if bytes > max_request_bytes {
        return Err(InputError::RequestTooLarge {
            bytes,
            limit: max_request_bytes,
        });
    }
    if values.len() as u64 != n * t.spec.dim as u64 {
        return Err(InputError::DimensionMismatch {
            table: name(),
            dim: t.spec.dim,
            keys: n as usize,
            values: values.len(),
        });
    }
    if let Some(i) = paramdb_types::first_non_finite(values) {
        let row = i / t.dim();
        let key = match keys {
            PushKeys::List(k) => k[row],
            PushKeys::Range { start, .. } => start.wrapping_add(row as u64),
        };
        return Err(InputError::NonFinite {
            table: name(),
            key,
            index: i % t.dim(),
            value: values[i],
        });
    }
    match keys {
        PushKeys::List(k) => {
            let mut sorted = k.to_vec();
            sorted.sort_unstable();
            if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                return Err(InputError::DuplicateKey {
                    table: name(),
                    key: w[0],
                });
            }
        }
        PushKeys::Range { start, count } => {
            if start.checked_add(count - 1).is_none() {
                return Err(InputError::KeyRangeOverflow { start, count });
            }
        }
    }
    Ok(n)
}
