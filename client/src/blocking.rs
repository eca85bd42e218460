//! The client for synchronous callers (trainer threads): the async client driven by its own
//! small runtime. Methods may be called from many threads at once.

use std::sync::Arc;

use futures::StreamExt;
#[cfg(feature = "embedded")]
use paramdb_engine::{Store, StoreOptions};
use paramdb_proto::cluster::ClusterMap;
use paramdb_types::{Gone, KeyRange, ShardReport, TableSpec, VerifyReport};

use crate::client::{Client, ClientOptions, PushResult, RowStream};
use crate::error::ClientError;
use crate::staleness::Clock;
use crate::transport::{RowBlock, ShardStats};

#[derive(Debug, Clone)]
pub struct BlockingClient {
    rt: Arc<tokio::runtime::Runtime>,
    client: Client,
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("paramdb-client")
        .enable_all()
        .build()
        .map_err(|e| ClientError::Invalid(format!("starting the client runtime: {e}")))
}

impl BlockingClient {
    pub fn connect(map: ClusterMap, opts: ClientOptions) -> Result<Self, ClientError> {
        let rt = runtime()?;
        let client = {
            let _g = rt.enter();
            Client::connect(map, opts)?
        };
        Ok(BlockingClient {
            rt: Arc::new(rt),
            client,
        })
    }

    #[cfg(feature = "embedded")]
    pub fn embedded(
        map: ClusterMap,
        stores: Vec<Arc<Store>>,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(BlockingClient {
            rt: Arc::new(runtime()?),
            client: Client::embedded(map, stores, opts)?,
        })
    }

    #[cfg(feature = "embedded")]
    pub fn open_embedded(
        dir: &std::path::Path,
        shards: usize,
        store: StoreOptions,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(BlockingClient {
            rt: Arc::new(runtime()?),
            client: Client::open_embedded(dir, shards, store, opts)?,
        })
    }

    #[cfg(feature = "embedded")]
    /// See `Client::open_embedded_read_only`.
    pub fn open_embedded_read_only(
        dir: &std::path::Path,
        store: StoreOptions,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        Ok(BlockingClient {
            rt: Arc::new(runtime()?),
            client: Client::open_embedded_read_only(dir, store, opts)?,
        })
    }

    /// The async client underneath.
    pub fn inner(&self) -> &Client {
        &self.client
    }

    pub fn client_id(&self) -> u64 {
        self.client.client_id()
    }

    /// Runs a call of the async client (`inner()`) on this client's runtime: for the calls
    /// with no blocking wrapper, such as a backup's fences.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn next_seq(&self) -> u64 {
        self.client.next_seq()
    }

    pub fn create_table(&self, spec: TableSpec) -> Result<(), ClientError> {
        self.rt.block_on(self.client.create_table(spec))
    }

    pub fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        self.rt.block_on(self.client.drop_table(name))
    }

    pub fn list_tables(&self) -> Result<Vec<TableSpec>, ClientError> {
        self.rt.block_on(self.client.list_tables())
    }

    pub fn describe_table(&self, name: &str) -> Result<TableSpec, ClientError> {
        self.rt.block_on(self.client.describe_table(name))
    }

    /// See `Client::set_lifecycle`.
    pub fn set_lifecycle(
        &self,
        name: &str,
        lifecycle: paramdb_types::Lifecycle,
    ) -> Result<(), ClientError> {
        self.rt.block_on(self.client.set_lifecycle(name, lifecycle))
    }

    pub fn pull(&self, table: &str, keys: &[u64]) -> Result<Vec<f32>, ClientError> {
        self.rt.block_on(self.client.pull(table, keys))
    }

    /// [`Client::pull_within`].
    pub fn pull_within(
        &self,
        table: &str,
        keys: &[u64],
        max_lag: Option<crate::MaxLag>,
    ) -> Result<Vec<f32>, ClientError> {
        self.rt
            .block_on(self.client.pull_within(table, keys, max_lag))
    }

    pub fn push(
        &self,
        table: &str,
        keys: &[u64],
        values: &[f32],
    ) -> Result<PushResult, ClientError> {
        self.rt.block_on(self.client.push(table, keys, values))
    }

    pub fn push_with_seq(
        &self,
        table: &str,
        seq: u64,
        keys: &[u64],
        values: &[f32],
    ) -> Result<PushResult, ClientError> {
        self.rt
            .block_on(self.client.push_with_seq(table, seq, keys, values))
    }

    pub fn push_range(
        &self,
        table: &str,
        start: u64,
        values: &[f32],
    ) -> Result<PushResult, ClientError> {
        self.rt
            .block_on(self.client.push_range(table, start, values))
    }

    pub fn delete(&self, table: &str, keys: &[u64]) -> Result<PushResult, ClientError> {
        self.rt.block_on(self.client.delete(table, keys))
    }

    pub fn delete_with_seq(
        &self,
        table: &str,
        seq: u64,
        keys: &[u64],
    ) -> Result<PushResult, ClientError> {
        self.rt
            .block_on(self.client.delete_with_seq(table, seq, keys))
    }

    pub fn delete_range(&self, table: &str, range: KeyRange) -> Result<PushResult, ClientError> {
        self.rt.block_on(self.client.delete_range(table, range))
    }

    /// Starts a bulk import into `table` (see `Importer`).
    pub fn import(&self, table: &str) -> Result<BlockingImporter, ClientError> {
        let inner = self.rt.block_on(self.client.import(table))?;
        Ok(BlockingImporter {
            rt: self.rt.clone(),
            inner,
        })
    }

    /// The stored rows of `range` in key order, block by block.
    pub fn pull_range(&self, table: &str, range: KeyRange) -> BlockingRows {
        BlockingRows {
            rt: self.rt.clone(),
            stream: self.client.pull_range(table, range),
        }
    }

    /// `pull_range` of the rows each shard changed after its LSN in `since`.
    pub fn pull_range_since(
        &self,
        table: &str,
        range: KeyRange,
        since: &[u64],
    ) -> Result<BlockingRows, ClientError> {
        Ok(BlockingRows {
            rt: self.rt.clone(),
            stream: self.client.pull_range_since(table, range, since)?,
        })
    }

    /// `Client::gone_since`.
    pub fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: &[u64],
    ) -> Result<Gone, ClientError> {
        self.rt
            .block_on(self.client.gone_since(table, range, since))
    }

    pub fn checkpoint(&self) -> Result<Vec<u64>, ClientError> {
        self.rt.block_on(self.client.checkpoint())
    }

    pub fn inspect(&self, exact_rows: bool) -> Result<Vec<ShardReport>, ClientError> {
        self.rt.block_on(self.client.inspect(exact_rows))
    }

    pub fn verify(&self) -> Result<Vec<VerifyReport>, ClientError> {
        self.rt.block_on(self.client.verify())
    }

    pub fn log_dump(
        &self,
        shard: usize,
        from: u64,
        limit: u32,
    ) -> Result<crate::transport::LogDump, ClientError> {
        self.rt.block_on(self.client.log_dump(shard, from, limit))
    }

    pub fn compact(&self) -> Result<(), ClientError> {
        self.rt.block_on(self.client.compact())
    }

    /// For each shard, each of its replicas' standing (see `Client::replica_status`).
    /// [`Client::set_members`].
    pub fn set_members(
        &self,
        shard: usize,
        members: Vec<(u64, String)>,
    ) -> Result<crate::transport::ReplicaInfo, ClientError> {
        self.rt.block_on(self.client.set_members(shard, members))
    }

    pub fn replica_status(
        &self,
    ) -> Vec<Vec<(String, Result<crate::transport::ReplicaInfo, ClientError>)>> {
        self.rt.block_on(self.client.replica_status())
    }

    pub fn stats(&self) -> Result<Vec<ShardStats>, ClientError> {
        self.rt.block_on(self.client.stats())
    }

    /// Joins the worker-clock group `name` (see `staleness`): `staleness` 0 is bulk-synchronous.
    pub fn join_clock(
        &self,
        name: &str,
        worker: u64,
        workers: u64,
        staleness: u64,
    ) -> Result<BlockingClock, ClientError> {
        let clock = self.rt.block_on(Clock::join(
            self.client.clone(),
            name,
            worker,
            workers,
            staleness,
        ))?;
        Ok(BlockingClock {
            rt: self.rt.clone(),
            clock,
        })
    }
}

/// A worker clock for synchronous callers.
#[derive(Debug)]
pub struct BlockingClock {
    rt: Arc<tokio::runtime::Runtime>,
    clock: Clock,
}

impl BlockingClock {
    pub fn clock(&self) -> u64 {
        self.clock.clock()
    }

    /// Ends a step; waits while this worker is more than the staleness bound ahead.
    pub fn advance(&mut self) -> Result<(), ClientError> {
        self.rt.block_on(self.clock.advance())
    }
}

/// Iterator over the blocks of a range pull.
pub struct BlockingRows {
    rt: Arc<tokio::runtime::Runtime>,
    stream: RowStream,
}

impl std::fmt::Debug for BlockingRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingRows")
    }
}

impl Iterator for BlockingRows {
    type Item = Result<RowBlock, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rt.block_on(self.stream.next())
    }
}

/// A bulk import for synchronous callers.
#[derive(Debug)]
pub struct BlockingImporter {
    rt: Arc<tokio::runtime::Runtime>,
    inner: crate::import::Importer,
}

impl BlockingImporter {
    pub fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Adds a row. Rows are buffered here and sent a block at a time, so this waits only
    /// when a block goes out.
    pub fn add(&mut self, key: u64, weights: &[f32]) -> Result<(), ClientError> {
        match self.inner.stage(key, weights)? {
            Some(s) => self.rt.block_on(self.inner.flush(s)),
            None => Ok(()),
        }
    }

    pub fn finish(self) -> Result<crate::transport::ImportResult, ClientError> {
        self.rt.block_on(self.inner.finish())
    }
}
