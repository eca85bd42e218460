//! Group commit (tikv/raft-engine's `WriteBarrier` is the model): writers that need the log
//! durable up to an LSN join the sync in progress or lead the next one. One leader fsyncs, which
//! covers every record written before it started; the others wait and are woken when it is done.
//! No lock is held while the fsync runs, so appends (and everything else) go on meanwhile.

use std::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Every record up to this LSN is durable.
    synced: u64,
    /// A leader is syncing.
    syncing: bool,
}

#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
}

/// What waiting for durability can end in besides success.
#[derive(Debug)]
pub(crate) enum WaitError<E> {
    /// The store was poisoned meanwhile (by this sync or another failure).
    Poisoned,
    /// This leader's sync failed.
    Sync(E),
}

impl GroupCommit {
    /// A group commit whose log is durable up to `synced` already.
    pub(crate) fn new(synced: u64) -> GroupCommit {
        GroupCommit {
            state: Mutex::new(State {
                synced,
                syncing: false,
            }),
            done: Condvar::new(),
        }
    }

    pub(crate) fn durable_lsn(&self) -> u64 {
        self.lock().synced
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the log is durable up to `lsn` (a segment was sealed with a sync).
    pub(crate) fn mark_durable(&self, lsn: u64) {
        let mut g = self.lock();
        g.synced = g.synced.max(lsn);
        self.done.notify_all();
    }

    /// Wakes every waiter, so that they see a poisoning.
    pub(crate) fn wake_all(&self) {
        let _g = self.lock();
        self.done.notify_all();
    }

    /// Returns once the log is durable up to `lsn`. If no sync is running, this thread leads
    /// one: `sync` makes the log durable and returns the LSN it covers. `poisoned` is asked
    /// before every wait.
    pub(crate) fn wait_durable<E>(
        &self,
        lsn: u64,
        poisoned: impl Fn() -> bool,
        sync: impl FnOnce() -> Result<u64, E>,
    ) -> Result<(), WaitError<E>> {
        let mut sync = Some(sync);
        let mut g = self.lock();
        loop {
            if g.synced >= lsn {
                return Ok(());
            }
            if poisoned() {
                return Err(WaitError::Poisoned);
            }
            if g.syncing {
                g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let Some(leader) = sync.take() else {
                // Our own sync returned without covering `lsn`: only possible if the LSN was
                // never written. Treat as poisoned rather than spin.
                return Err(WaitError::Poisoned);
            };
            g.syncing = true;
            drop(g);
            let r = leader();
            g = self.lock();
            g.syncing = false;
            self.done.notify_all();
            match r {
                Ok(upto) => g.synced = g.synced.max(upto),
                Err(e) => return Err(WaitError::Sync(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn concurrent_waiters_share_syncs() {
        let gc = Arc::new(GroupCommit::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gc, written, syncs) = (gc.clone(), written.clone(), syncs.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let lsn = written.fetch_add(1, Ordering::SeqCst) + 1;
                        gc.wait_durable(
                            lsn,
                            || false,
                            || -> Result<u64, ()> {
                                let upto = written.load(Ordering::SeqCst);
                                syncs.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                Ok(upto)
                            },
                        )
                        .unwrap();
                        assert!(gc.durable_lsn() >= lsn);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gc.durable_lsn(), 400);
        assert!(syncs.load(Ordering::SeqCst) < 400, "no sharing at all");
    }

    #[test]
    fn a_failed_sync_is_reported_and_poison_stops_waiters() {
        let gc = GroupCommit::new(0);
        let r = gc.wait_durable(1, || false, || Err::<u64, _>("disk"));
        assert!(matches!(r, Err(WaitError::Sync("disk"))));
        let r = gc.wait_durable(1, || true, || Ok::<u64, ()>(1));
        assert!(matches!(r, Err(WaitError::Poisoned)));
    }
}
