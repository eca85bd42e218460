//! Bulk import through the client: rows are routed to their shards and streamed there in
//! blocks; each shard stages them as RocksDB table files and ingests them when the import
//! finishes (`paramdb_engine::import`). Nothing goes through the gradient log, and a shard
//! whose stream breaks imports nothing. There are no retries: an import that fails is run
//! again whole (imported rows replace stored ones, so a rerun gives the same table).

use crate::client::Client;
use crate::error::ClientError;
use crate::transport::{ImportResult, ShardImport};

/// Bytes of rows per block sent to a shard.
const BLOCK_BYTES: usize = 1 << 20;

/// An import in progress into one table across the cluster.
#[derive(Debug)]
pub struct Importer {
    client: Client,
    table: String,
    dim: usize,
    block_rows: usize,
    parts: Vec<Option<ShardImport>>,
    bufs: Vec<(Vec<u64>, Vec<f32>)>,
}

impl Client {
    /// Starts a bulk import into `table` (which must exist on every shard it sends rows to).
    pub async fn import(&self, table: &str) -> Result<Importer, ClientError> {
        let dim = self.describe_table(table).await?.dim as usize;
        let n = self.shard_count();
        Ok(Importer {
            client: self.clone(),
            table: table.to_string(),
            dim,
            block_rows: (BLOCK_BYTES / (dim * 4 + 8)).max(1),
            parts: (0..n).map(|_| None).collect(),
            bufs: vec![(Vec::new(), Vec::new()); n],
        })
    }
}

impl Importer {
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Adds row `key` with `weights` (the table's dim; finite values).
    pub async fn add(&mut self, key: u64, weights: &[f32]) -> Result<(), ClientError> {
        match self.stage(key, weights)? {
            Some(s) => self.flush(s).await,
            None => Ok(()),
        }
    }

    /// Buffers a row without waiting; returns the shard whose block is now full and must be
    /// sent (`flush`) before more rows are staged for it.
    pub(crate) fn stage(
        &mut self,
        key: u64,
        weights: &[f32],
    ) -> Result<Option<usize>, ClientError> {
        if weights.len() != self.dim {
            return Err(ClientError::Invalid(format!(
                "row {key} has {} values; table {} has dim {}",
                weights.len(),
                paramdb_types::quote(&self.table),
                self.dim
            )));
        }
        if let Some(i) = paramdb_types::first_non_finite(weights) {
            return Err(ClientError::Invalid(format!(
                "value {i} of row {key} imported into table {} is {} (NaN and infinities are refused)",
                paramdb_types::quote(&self.table),
                weights[i]
            )));
        }
        let s = self
            .client
            .map()
            .shard_of(key)
            .ok_or(ClientError::NoShard { key })?;
        let (keys, values) = &mut self.bufs[s];
        keys.push(key);
        values.extend_from_slice(weights);
        Ok((keys.len() >= self.block_rows).then_some(s))
    }

    pub(crate) async fn flush(&mut self, s: usize) -> Result<(), ClientError> {
        if self.bufs[s].0.is_empty() {
            return Ok(());
        }
        // The next block's buffers at their full size, so filling them does not reallocate.
        let next = (
            Vec::with_capacity(self.block_rows),
            Vec::with_capacity(self.block_rows * self.dim),
        );
        let (keys, values) = std::mem::replace(&mut self.bufs[s], next);
        if self.parts[s].is_none() {
            let shard = self.client.shard(s)?;
            self.parts[s] = Some(shard.begin_import(&self.table).await?);
        }
        let part = self.parts[s].as_mut().expect("started above");
        part.send(keys, values).await
    }

    /// Sends what is left and has every shard ingest its rows. Returns the totals.
    pub async fn finish(mut self) -> Result<ImportResult, ClientError> {
        for s in 0..self.bufs.len() {
            self.flush(s).await?;
        }
        let results = futures::future::try_join_all(
            self.parts
                .into_iter()
                .flatten()
                .map(|p| async move { p.finish().await }),
        )
        .await?;
        Ok(results
            .into_iter()
            .fold(ImportResult::default(), |a, r| ImportResult {
                rows: a.rows + r.rows,
                files: a.files + r.files,
                bytes: a.bytes + r.bytes,
            }))
    }
}
