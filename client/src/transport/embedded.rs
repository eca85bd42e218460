//! A shard in this process: an engine `Store`, called on blocking threads. Its answers are the
//! engine's own types, which are the client's (`paramdb-types`), so nothing is converted; its
//! errors carry the code the engine classifies them by, as a server would send it.

use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use paramdb_engine::{chain, Classify, Store};
use paramdb_types::{ClientId, Code, Gone, KeyRange, ShardReport, TableSpec, VerifyReport};

use super::{BackupRequest, LogDump, RowBlock, ShardAck, ShardStats, WriteId};
use crate::error::ClientError;

#[derive(Clone, Debug)]
pub struct EmbeddedShard {
    pub(super) index: usize,
    store: Arc<Store>,
    range: KeyRange,
}

/// An engine error as the client reports it.
pub(crate) fn error<E: Classify + std::error::Error + 'static>(shard: usize, e: E) -> ClientError {
    ClientError::Status {
        shard,
        code: e.code(),
        message: chain(&e),
    }
}

fn ack(a: paramdb_types::PushAck) -> ShardAck {
    ShardAck {
        lsn: a.lsn,
        duplicate: a.duplicate,
    }
}

impl EmbeddedShard {
    pub fn new(index: usize, store: Arc<Store>, range: KeyRange) -> EmbeddedShard {
        EmbeddedShard {
            index,
            store,
            range,
        }
    }

    /// The same range check a shard server makes, so both transports refuse alike.
    fn check_keys(&self, keys: &[u64]) -> Result<(), ClientError> {
        match keys.iter().find(|k| !self.range.contains(**k)) {
            Some(k) => Err(ClientError::Status {
                shard: self.index,
                code: Code::FailedPrecondition,
                message: format!(
                    "key {k} is outside shard {}'s range {}",
                    self.index, self.range
                ),
            }),
            None => Ok(()),
        }
    }

    async fn run<T, E>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, ClientError>
    where
        T: Send + 'static,
        E: Classify + std::error::Error + Send + 'static,
    {
        let store = self.store.clone();
        let index = self.index;
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(|e| error(index, e)),
            Err(e) => Err(ClientError::Status {
                shard: index,
                code: Code::Internal,
                message: format!("store task failed: {e}"),
            }),
        }
    }

    pub(super) async fn create_table(&self, spec: &TableSpec) -> Result<(), ClientError> {
        let spec = spec.clone();
        self.run(move |s| s.create_table(spec).map(|_| ())).await
    }

    pub(super) async fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        let name = name.to_string();
        self.run(move |s| s.drop_table(&name)).await
    }

    pub(super) async fn list_tables(&self) -> Result<Vec<TableSpec>, ClientError> {
        Ok(self
            .store
            .list_tables()
            .into_iter()
            .map(|t| t.spec)
            .collect())
    }

    pub(super) async fn describe_table(&self, name: &str) -> Result<TableSpec, ClientError> {
        self.store
            .describe_table(name)
            .map(|t| t.spec)
            .map_err(|e| error(self.index, e))
    }

    pub(super) async fn set_lifecycle(
        &self,
        name: &str,
        lifecycle: paramdb_types::Lifecycle,
    ) -> Result<(), ClientError> {
        let name = name.to_string();
        self.run(move |s| s.set_lifecycle(&name, lifecycle).map(|_| ()))
            .await
    }

    pub(super) async fn pull(&self, table: &str, keys: Vec<u64>) -> Result<Vec<f32>, ClientError> {
        self.check_keys(&keys)?;
        let table = table.to_string();
        self.run(move |s| s.pull(&table, &keys)).await
    }

    pub(super) async fn push(
        &self,
        table: &str,
        id: WriteId,
        keys: Vec<u64>,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        self.check_keys(&keys)?;
        let table = table.to_string();
        self.run(move |s| {
            s.push_part(
                &table,
                ClientId(id.client),
                id.seq,
                id.parts,
                &keys,
                &values,
            )
        })
        .await
        .map(ack)
    }

    pub(super) async fn push_range(
        &self,
        table: &str,
        id: WriteId,
        start: u64,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        self.check_keys(&[start])?;
        let table = table.to_string();
        self.run(move |s| {
            s.push_range_part(
                &table,
                ClientId(id.client),
                id.seq,
                id.parts,
                start,
                &values,
            )
        })
        .await
        .map(ack)
    }

    pub(super) async fn delete(
        &self,
        table: &str,
        id: WriteId,
        keys: Vec<u64>,
    ) -> Result<ShardAck, ClientError> {
        self.check_keys(&keys)?;
        let table = table.to_string();
        self.run(move |s| s.delete_part(&table, ClientId(id.client), id.seq, id.parts, &keys))
            .await
            .map(ack)
    }

    pub(super) async fn delete_range(
        &self,
        table: &str,
        id: WriteId,
        range: KeyRange,
    ) -> Result<ShardAck, ClientError> {
        if !range.is_empty() {
            self.check_keys(&[range.start, range.end - 1])?;
        }
        let table = table.to_string();
        self.run(move |s| s.delete_range_part(&table, ClientId(id.client), id.seq, id.parts, range))
            .await
            .map(ack)
    }

    pub(super) async fn begin_import(&self, table: &str) -> Result<EmbeddedImport, ClientError> {
        let table = table.to_string();
        let imp = self
            .run(move |s| s.begin_import(&table, super::IMPORT_STAGING_BYTES))
            .await?;
        Ok(EmbeddedImport {
            shard: self.clone(),
            imp: Some(imp),
        })
    }

    pub(super) async fn pull_range(
        &self,
        table: &str,
        range: KeyRange,
        since: Option<u64>,
    ) -> Result<BoxStream<'static, Result<RowBlock, ClientError>>, ClientError> {
        let index = self.index;
        let dim = self
            .store
            .describe_table(table)
            .map_err(|e| error(index, e))?
            .spec
            .dim;
        let scan = match since {
            Some(lsn) => self.store.scan_since(table, range, lsn),
            None => self.store.scan(table, range),
        }
        .map_err(|e| error(index, e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let empty = || RowBlock {
                dim,
                keys: Vec::new(),
                values: Vec::new(),
            };
            let mut block = empty();
            for row in scan {
                match row {
                    Ok((k, w)) => {
                        block.keys.push(k);
                        block.values.extend_from_slice(&w);
                    }
                    Err(err) => {
                        let _ = tx.blocking_send(Err(error(index, err)));
                        return;
                    }
                }
                if block.keys.len() == 1024
                    && tx
                        .blocking_send(Ok(std::mem::replace(&mut block, empty())))
                        .is_err()
                {
                    return;
                }
            }
            if !block.keys.is_empty() {
                let _ = tx.blocking_send(Ok(block));
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    pub(super) async fn checkpoint(&self) -> Result<u64, ClientError> {
        self.run(|s| s.checkpoint().map(|c| c.lsn)).await
    }

    pub(super) async fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: u64,
    ) -> Result<Gone, ClientError> {
        let table = table.to_string();
        self.run(move |s| s.gone_since(&table, range, since)).await
    }

    pub(super) async fn inspect(&self, exact_rows: bool) -> Result<ShardReport, ClientError> {
        self.run(move |s| s.inspect(exact_rows)).await
    }

    pub(super) async fn verify(&self) -> Result<VerifyReport, ClientError> {
        self.run(|s| s.verify()).await
    }

    pub(super) async fn log_dump(&self, from: u64, limit: u32) -> Result<LogDump, ClientError> {
        self.run(move |s| s.dump_log(from, limit as usize)).await
    }

    pub(super) async fn compact(&self) -> Result<(), ClientError> {
        self.run(|s| s.compact()).await
    }

    pub(super) async fn fence(
        &self,
        lease: std::time::Duration,
    ) -> Result<paramdb_types::FenceReport, ClientError> {
        self.run(move |s| s.fence(lease)).await
    }

    pub(super) async fn owe(
        &self,
        fence: u64,
        owed: Vec<(u64, u64)>,
    ) -> Result<Vec<bool>, ClientError> {
        self.run(move |s| s.owe(fence, &owed)).await
    }

    pub(super) async fn unfence(&self, fence: u64) -> Result<bool, ClientError> {
        Ok(self.store.unfence(fence))
    }

    pub(super) async fn backup(
        &self,
        r: BackupRequest,
    ) -> Result<paramdb_types::ShardBackup, ClientError> {
        let opts = paramdb_engine::backup::BackupOptions {
            copy: r.copy,
            cancel: None,
        };
        self.run(move |s| match r.fence {
            0 => s.backup(&r.dest, r.previous.as_deref(), opts),
            f => s.backup_fenced(f, &r.dest, r.previous.as_deref(), opts),
        })
        .await
    }

    pub(super) async fn stats(&self) -> Result<ShardStats, ClientError> {
        Ok(ShardStats {
            shard: self.index,
            range: self.range,
            store: self.store.stats(),
        })
    }
}

/// A bulk import into an embedded shard: the engine's `Import`, fed on blocking threads.
#[derive(Debug)]
pub struct EmbeddedImport {
    shard: EmbeddedShard,
    /// `None` only while a block is being added, or after a failure.
    imp: Option<paramdb_engine::Import>,
}

impl EmbeddedImport {
    fn gone(&self) -> ClientError {
        ClientError::Status {
            shard: self.shard.index,
            code: Code::Aborted,
            message: "the import failed before; start a new one".into(),
        }
    }

    pub(super) async fn send(
        &mut self,
        keys: Vec<u64>,
        values: Vec<f32>,
    ) -> Result<(), ClientError> {
        self.shard.check_keys(&keys)?;
        let mut imp = self.imp.take().ok_or_else(|| self.gone())?;
        let index = self.shard.index;
        let r = tokio::task::spawn_blocking(move || {
            let dim = imp.dim().max(1);
            if values.len() != keys.len() * imp.dim() {
                return Err(ClientError::Invalid(format!(
                    "{} values do not make {} rows of dim {dim}",
                    values.len(),
                    keys.len()
                )));
            }
            imp.add_rows(&keys, &values).map_err(|e| error(index, e))?;
            Ok(imp)
        })
        .await
        .map_err(|e| ClientError::Status {
            shard: index,
            code: Code::Internal,
            message: format!("import task failed: {e}"),
        })??;
        self.imp = Some(r);
        Ok(())
    }

    pub(super) async fn finish(mut self) -> Result<super::ImportResult, ClientError> {
        let imp = self.imp.take().ok_or_else(|| self.gone())?;
        let i = self.shard.run(move |_| imp.finish()).await?;
        Ok(super::ImportResult {
            rows: i.rows,
            files: i.files,
            bytes: i.bytes,
        })
    }
}
