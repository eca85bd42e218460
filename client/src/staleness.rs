//! Worker clocks for bounded staleness. Each worker's clock is a row of a small table in the
//! cluster (`__clock.<name>`, dim 1, rule add); advancing pushes +1 to the worker's row. A
//! worker at clock `c` then waits until the slowest worker has reached `c - s`. With `s = 0`
//! this is bulk-synchronous training; without a `Clock` the client is fully asynchronous.

use std::time::Duration;

use paramdb_types::{TableSpec, UpdateRule};

use crate::client::Client;
use crate::error::ClientError;

#[derive(Debug)]
pub struct Clock {
    client: Client,
    table: String,
    worker: u64,
    workers: u64,
    staleness: u64,
    clock: u64,
}

impl Clock {
    /// Joins (creating if needed) the clock group `name` as `worker` of `workers`.
    pub async fn join(
        client: Client,
        name: &str,
        worker: u64,
        workers: u64,
        staleness: u64,
    ) -> Result<Clock, ClientError> {
        if worker >= workers {
            return Err(ClientError::Invalid(format!(
                "worker {worker} of {workers}"
            )));
        }
        let table = format!("__clock.{name}");
        match client
            .create_table(TableSpec::new(&table, 1).with_rule(UpdateRule::Add))
            .await
        {
            Err(e) if e.code() != Some(paramdb_types::Code::AlreadyExists) => return Err(e),
            _ => {}
        }
        let clock = client.pull(&table, &[worker]).await?[0] as u64;
        Ok(Clock {
            client,
            table,
            worker,
            workers,
            staleness,
            clock,
        })
    }

    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Ends this worker's step: advance its clock, then wait while it is more than `staleness`
    /// steps ahead of the slowest worker.
    pub async fn advance(&mut self) -> Result<(), ClientError> {
        self.client
            .push(&self.table, &[self.worker], &[1.0])
            .await?;
        self.clock += 1;
        let want = self.clock.saturating_sub(self.staleness);
        let keys: Vec<u64> = (0..self.workers).collect();
        let mut wait = Duration::from_millis(1);
        loop {
            let clocks = self.client.pull(&self.table, &keys).await?;
            let slowest = clocks.iter().fold(f32::INFINITY, |a, &b| a.min(b)) as u64;
            if slowest >= want {
                return Ok(());
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(20));
        }
    }
}
