//! Write fences, which a cluster backup uses to cut every shard at a consistent point.
//!
//! While a fence is up, no new write is logged: a push or delete that reaches the last checks
//! under the sequencer waits (holding no lock) until the fence is lifted, its lease runs out,
//! or the backup's coordinator declares the write *owed*: a write that some other shard
//! applied before its own fence went up, so that this shard must apply it too for the cut to
//! hold every write whole. Retries of writes already applied are acknowledged as ever.
//!
//! The lease bounds the harm of a coordinator that dies: the first write that finds the lease
//! over takes the fence down itself, and the backup that set it then fails (`lift` says the
//! fence is gone), so a cut that let writes through is never taken for consistent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The fence state of a store.
#[derive(Debug, Default)]
pub(crate) struct Fence {
    /// Whether a fence may be up: every write checks it, so the common case takes no lock.
    up: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The fence up, 0 for none.
    id: u64,
    last_id: u64,
    until: Option<Instant>,
    owed: HashSet<(u64, u64)>,
}

impl State {
    /// Takes an expired fence down; true when none is up afterwards.
    fn down(&mut self, changed: &Condvar, up: &AtomicBool) -> bool {
        if self.id != 0 && self.until.is_some_and(|u| Instant::now() >= u) {
            tracing::warn!(
                fence = self.id,
                "a backup's write fence ran out of lease: lifted"
            );
            self.id = 0;
            self.owed.clear();
            up.store(false, Ordering::SeqCst);
            changed.notify_all();
        }
        self.id == 0
    }
}

impl Fence {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a fence up for `lease` (replacing one already up). Call under the sequencer.
    pub(crate) fn raise(&self, lease: Duration) -> u64 {
        let mut s = self.lock();
        s.last_id += 1;
        s.id = s.last_id;
        s.until = Some(Instant::now() + lease);
        s.owed.clear();
        self.up.store(true, Ordering::SeqCst);
        s.id
    }

    /// Whether a new write of `(client, seq)` must wait. Call under the sequencer.
    pub(crate) fn blocks(&self, client: u64, seq: u64) -> bool {
        // Raised under the sequencer, which the caller holds: no fence can go up meanwhile.
        if !self.up.load(Ordering::SeqCst) {
            return false;
        }
        let mut s = self.lock();
        let owed = client != 0 && s.owed.contains(&(client, seq));
        !(s.down(&self.changed, &self.up) || owed)
    }

    /// Waits, holding no store lock, until a write of `(client, seq)` may go on.
    pub(crate) fn wait(&self, client: u64, seq: u64) {
        let mut s = self.lock();
        loop {
            if s.down(&self.changed, &self.up) || (client != 0 && s.owed.contains(&(client, seq))) {
                return;
            }
            let left = s.until.map_or(Duration::from_millis(100), |u| {
                u.saturating_duration_since(Instant::now())
            });
            s = self
                .changed
                .wait_timeout(s, left.max(Duration::from_millis(1)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Lets the writes `owed` through fence `id`. False when that fence is no longer up.
    pub(crate) fn owe(&self, id: u64, owed: &[(u64, u64)]) -> bool {
        let mut s = self.lock();
        if s.down(&self.changed, &self.up) || s.id != id {
            return false;
        }
        s.owed.extend(owed.iter().copied());
        self.changed.notify_all();
        true
    }

    /// Takes fence `id` down. False when it was not up any more (lifted, replaced or out of
    /// lease): writes may have gone through it. Call under the sequencer when the answer
    /// decides a cut.
    pub(crate) fn lift(&self, id: u64) -> bool {
        let mut s = self.lock();
        let ours = !s.down(&self.changed, &self.up) && s.id == id;
        if ours {
            s.id = 0;
            s.owed.clear();
            self.up.store(false, Ordering::SeqCst);
            self.changed.notify_all();
        }
        ours
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_writes_pass_others_wait_until_lifted_or_out_of_lease() {
        let f = Fence::default();
        assert!(!f.blocks(1, 1));
        let id = f.raise(Duration::from_secs(30));
        assert!(f.blocks(1, 1) && f.blocks(0, 0));
        assert!(f.owe(id, &[(1, 1)]));
        assert!(!f.blocks(1, 1) && f.blocks(1, 2));
        assert!(!f.owe(id + 1, &[(1, 2)]));
        assert!(f.lift(id));
        assert!(!f.blocks(1, 2) && !f.lift(id));

        let id = f.raise(Duration::from_millis(30));
        let t = Instant::now();
        f.wait(5, 5);
        assert!(t.elapsed() >= Duration::from_millis(25));
        assert!(!f.blocks(5, 5));
        assert!(
            !f.lift(id),
            "a fence that ran out cannot be lifted as if it held"
        );
    }
}
