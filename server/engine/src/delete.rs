//! The life of a delete, a write like a push but with nothing to read first:
//!
//! 1. **Validate**: the table exists, there is at least one key (a non-empty range), the
//!    size is within limits. Repeated keys in a list are harmless and dropped.
//! 2. **Log** (under the sequencer): a retry of an applied `(client, seq)` is acknowledged
//!    again; otherwise the delete is appended with the next LSN.
//! 3. **Apply** (state machine, still under the sequencer): the keys become tombstones in the
//!    dirty layer, or the range is recorded there and the dirty rows inside it are dropped.
//!    From then on the rows pull their initializer and a push starts them from it again.
//! 4. **Acknowledge** once durable under the sync policy. The next checkpoint deletes the
//!    rows from RocksDB (`delete_range` for a range) and from the hot-row cache.
//!
//! Deletes share the clients' sequence numbers with pushes, so a retried delete is applied
//! exactly once, like a push.

use paramdb_types::{ClientId, Key, KeyRange, PushAck};

use crate::error::{InputError, PushError};
use crate::options::SyncPolicy;
use crate::push::{Admitted, Origin};
use crate::state_machine::Delete;
use crate::store::Core;
use crate::wal::Body;

impl Core {
    pub(crate) fn delete(
        &self,
        table: &str,
        origin: Origin,
        what: Delete<'_>,
    ) -> Result<PushAck, PushError> {
        let Origin { client, seq, .. } = origin;
        self.check_writable("delete")?;
        let t = self.table(table)?;
        let dedup_keys: Vec<Key>;
        let what = match what {
            Delete::Keys([]) => {
                return Err(InputError::EmptyRequest {
                    table: t.spec.name.clone(),
                }
                .into())
            }
            Delete::Keys(k) => {
                let bytes = k.len() as u64 * 8;
                if bytes > self.opts.max_request_bytes {
                    return Err(InputError::RequestTooLarge {
                        bytes,
                        limit: self.opts.max_request_bytes,
                    }
                    .into());
                }
                let mut sorted = k.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                dedup_keys = sorted;
                Delete::Keys(&dedup_keys)
            }
            Delete::Range(r) if r.is_empty() => {
                return Err(InputError::EmptyRange {
                    table: t.spec.name.clone(),
                    start: r.start,
                    end: r.end,
                }
                .into())
            }
            d @ Delete::Range(_) => d,
        };
        if client != ClientId::ANONYMOUS && seq == 0 {
            return Err(InputError::InvalidSequence { client: client.0 }.into());
        }
        self.poison.check()?;
        let lsn = loop {
            let log = self.log.sequencer();
            match self.admit(&log, &t, origin, true)? {
                Admitted::New => {}
                Admitted::Duplicate(lsn) => {
                    drop(log);
                    return self.ack_duplicate(lsn);
                }
                Admitted::Fenced => {
                    drop(log);
                    self.fence.wait(client.0, seq);
                    continue;
                }
            }
            let body = match what {
                Delete::Keys(k) => Body::DeleteKeys(k),
                Delete::Range(KeyRange { start, end }) => Body::DeleteRange { start, end },
            };
            let (done, log) = self.append(log, &t, origin, body)?;
            let lsn = done.lsn;
            let dirty_bytes = self.state.apply_delete(&t, origin, what);
            drop(log);
            let budget = self.opts.checkpoint_dirty_bytes;
            if budget > 0 && dirty_bytes >= budget {
                self.stop.wake.notify_all();
            }
            break lsn;
        };
        self.counters
            .deletes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        Ok(PushAck {
            lsn,
            duplicate: false,
        })
    }
}
