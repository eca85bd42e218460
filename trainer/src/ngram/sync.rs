//! How the processes counting one model meet: flags in the model's state table, pushed once
//! each and polled by the others.
//!
//! Process 0 drops what an earlier count left, creates the tables and writes its settings
//! (`CREATED`). Each other process waits for them, checks that its own settings agree, and
//! says it has joined (a flag left by a run that died is gone once process 0 has created the
//! tables again, so a process does not join a dead run). Then the processes meet at each step
//! (`barrier`). A process that waits longer than `wait` for the others gives up with an error.

use std::time::{Duration, Instant};

use paramdb_client::BlockingClient;

use super::{CountConfig, MAX_PROCESSES};
use crate::error::{Result, TrainError};
use crate::keys::{state_fields, state_row};

/// Process 0's settings: the tables are there.
pub(super) const CREATED: u64 = 1000;
/// `JOINED + p`: process p has joined.
const JOINED: u64 = 1100;
/// `BARRIER + step·MAX_PROCESSES + p`: process p has finished `step`.
const BARRIER: u64 = 2000;
/// Where process `p`'s count totals start (`totals_rows`).
pub(super) fn parts_key(p: usize) -> u64 {
    100_000 + 256 * p as u64
}
/// Steps: every process has staged its rows; every process has imported its key range.
pub(super) const STAGED: u64 = 1;
pub(super) const ROWS_DONE: u64 = 2;

/// The settings all processes must share.
pub(super) fn config_row(cfg: &CountConfig, len: u64) -> Vec<f32> {
    state_row(&[
        cfg.order as u64,
        cfg.dev_every,
        len,
        cfg.processes as u64,
        1,
    ])
}

/// One process's view of the others.
pub(super) struct Peers<'a> {
    pub client: &'a BlockingClient,
    /// The model's state table.
    pub table: String,
    pub process: usize,
    pub processes: usize,
    pub wait: Duration,
}

impl Peers<'_> {
    fn flag(&self, key: u64) -> bool {
        self.client
            .pull(&self.table, &[key])
            .ok()
            .and_then(|r| state_fields::<1>(&r))
            .is_some_and(|[x]| x > 0)
    }

    fn set(&self, key: u64) -> Result<()> {
        self.client.push(&self.table, &[key], &state_row(&[1]))?;
        Ok(())
    }

    /// Polls `ready` until it holds; an error after `wait`.
    pub fn wait_for(&self, what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + self.wait;
        loop {
            if ready()? {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TrainError::Invalid(format!(
                    "counting process {} of {} gave up after {:?} waiting for {what}",
                    self.process, self.processes, self.wait
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for process 0 to create the tables, checks the settings, and joins.
    pub fn joined(&self, cfg: &CountConfig, len: u64) -> Result<()> {
        let mine = JOINED + self.process as u64;
        let mut theirs = None;
        self.wait_for("process 0 to create the model's tables", || {
            if self.flag(mine) {
                // A run that died: process 0 has not created the tables again yet.
                return Ok(false);
            }
            theirs = self
                .client
                .pull(&self.table, &[CREATED])
                .ok()
                .and_then(|r| state_fields::<5>(&r))
                .filter(|f| f[4] == 1);
            Ok(theirs.is_some())
        })?;
        let [order, dev_every, their_len, processes, _] = theirs.expect("waited for it");
        let ours = (cfg.order as u64, cfg.dev_every, len, cfg.processes as u64);
        if (order, dev_every, their_len, processes) != ours {
            return Err(TrainError::Invalid(format!(
                "process 0 counts with --order {order} --dev-every {dev_every} --processes \
                 {processes} from a corpus of {their_len} bytes; process {} has --order {} \
                 --dev-every {} --processes {} and {} bytes (every process needs the same)",
                self.process, ours.0, ours.1, ours.3, ours.2
            )));
        }
        self.set(mine)
    }

    /// Says this process has finished `step` and waits until every process has.
    pub fn barrier(&self, step: u64) -> Result<()> {
        let key = |p: usize| BARRIER + step * MAX_PROCESSES as u64 + p as u64;
        self.set(key(self.process))?;
        let mut p = 0;
        self.wait_for(
            &format!("the other processes to finish step {step}"),
            || {
                while p < self.processes && self.flag(key(p)) {
                    p += 1;
                }
                Ok(p == self.processes)
            },
        )
    }
}
