//! One shard behind either transport: a gRPC channel to a shard server (`grpc`), or an
//! embedded store in this process (`embedded`, calls on blocking threads, behind the
//! `embedded` feature). Both answer with the client's own types and report errors the same
//! way: as the status code a server would have sent.

#[cfg(feature = "embedded")]
mod embedded;
mod grpc;

use std::sync::Arc;

use futures::stream::BoxStream;
use paramdb_types::{
    FenceReport, Gone, KeyRange, LogRecord, ShardBackup, ShardReport, StoreStats, TableSpec,
    VerifyReport,
};

use crate::error::ClientError;
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedImport, EmbeddedShard};
pub use grpc::{GrpcImport, GrpcShard, ReplicaInfo, Security};

/// Bytes of rows an embedded shard stages per table file while importing (it holds up to
/// three such runs).
#[cfg(feature = "embedded")]
const IMPORT_STAGING_BYTES: usize = 32 << 20;

/// What a bulk import did (summed over shards by the client).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportResult {
    pub rows: u64,
    /// RocksDB table files ingested, and their bytes.
    pub files: usize,
    pub bytes: u64,
}

/// A bulk import in progress on one shard.
#[derive(Debug)]
pub enum ShardImport {
    Grpc(GrpcImport),
    #[cfg(feature = "embedded")]
    Embedded(EmbeddedImport),
}

impl ShardImport {
    /// Sends rows (`keys.len() × dim` values), all in the shard's range.
    pub async fn send(&mut self, keys: Vec<u64>, values: Vec<f32>) -> Result<(), ClientError> {
        match self {
            ShardImport::Grpc(i) => i.send(keys, values).await,
            #[cfg(feature = "embedded")]
            ShardImport::Embedded(i) => i.send(keys, values).await,
        }
    }

    /// Ends the import: the shard ingests everything sent, or nothing.
    pub async fn finish(self) -> Result<ImportResult, ClientError> {
        match self {
            ShardImport::Grpc(i) => i.finish().await,
            #[cfg(feature = "embedded")]
            ShardImport::Embedded(i) => i.finish().await,
        }
    }
}

/// Rows of a range, as one block.
#[derive(Clone, Debug, PartialEq)]
pub struct RowBlock {
    pub dim: u32,
    pub keys: Vec<u64>,
    /// `keys.len() × dim` values, row after row.
    pub values: Vec<f32>,
}

/// A shard's log records (no values) and its torn or damaged segments.
pub type LogDump = (Vec<LogRecord>, Vec<String>);

/// One shard's backup: where (paths on the shard's host) and at which fence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupRequest {
    /// 0: no fence (the shard's state when the call runs).
    pub fence: u64,
    pub dest: std::path::PathBuf,
    pub previous: Option<std::path::PathBuf>,
    /// Copy every file rather than hard-link the live table files.
    pub copy: bool,
}

/// Who sends a write to a shard: the client, the write's sequence number, and how many
/// shards' parts the client split it into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteId {
    pub client: u64,
    pub seq: u64,
    pub parts: u16,
}

/// Acknowledgement of a push by one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardAck {
    pub lsn: u64,
    pub duplicate: bool,
}

/// One shard's counters, with its number and key range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    pub range: KeyRange,
    pub store: StoreStats,
}

/// One shard, reached over gRPC or in process.
#[derive(Clone, Debug)]
pub enum Shard {
    Grpc(GrpcShard),
    #[cfg(feature = "embedded")]
    Embedded(EmbeddedShard),
}

/// Calls the same method on whichever transport the shard has.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Shard::Grpc($s) => $e,
            #[cfg(feature = "embedded")]
            Shard::Embedded($s) => $e,
        }
    };
}

impl Shard {
    pub fn index(&self) -> usize {
        each!(self, s => s.index)
    }

    /// A handle for one attempt: a replicated shard's calls through it go to one replica.
    pub fn pinned(&self) -> Shard {
        match self {
            Shard::Grpc(s) => Shard::Grpc(s.pinned()),
            #[cfg(feature = "embedded")]
            Shard::Embedded(s) => Shard::Embedded(s.clone()),
        }
    }

    /// Tells the shard a call gave no answer in time: a replicated shard tries its next
    /// replica.
    pub fn no_answer(&self) {
        match self {
            Shard::Grpc(s) => s.no_answer(),
            #[cfg(feature = "embedded")]
            Shard::Embedded(_) => {}
        }
    }

    pub async fn create_table(&self, spec: &TableSpec) -> Result<(), ClientError> {
        each!(self, s => s.create_table(spec).await)
    }

    pub async fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        each!(self, s => s.drop_table(name).await)
    }

    pub async fn list_tables(&self) -> Result<Vec<TableSpec>, ClientError> {
        each!(self, s => s.list_tables().await)
    }

    pub async fn describe_table(&self, name: &str) -> Result<TableSpec, ClientError> {
        each!(self, s => s.describe_table(name).await)
    }

    pub async fn set_lifecycle(
        &self,
        name: &str,
        lifecycle: paramdb_types::Lifecycle,
    ) -> Result<(), ClientError> {
        each!(self, s => s.set_lifecycle(name, lifecycle).await)
    }

    /// `max_lag`: see [`crate::MaxLag`] (an embedded shard has no replicas, and ignores it).
    pub async fn pull(
        &self,
        table: &str,
        keys: Vec<u64>,
        max_lag: Option<crate::MaxLag>,
    ) -> Result<Vec<f32>, ClientError> {
        match self {
            Shard::Grpc(s) => s.pull(table, keys, max_lag).await,
            #[cfg(feature = "embedded")]
            Shard::Embedded(s) => s.pull(table, keys).await,
        }
    }

    pub async fn push(
        &self,
        table: &str,
        id: WriteId,
        keys: Vec<u64>,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        each!(self, s => s.push(table, id, keys, values).await)
    }

    pub async fn push_range(
        &self,
        table: &str,
        id: WriteId,
        start: u64,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        each!(self, s => s.push_range(table, id, start, values).await)
    }

    pub async fn delete(
        &self,
        table: &str,
        id: WriteId,
        keys: Vec<u64>,
    ) -> Result<ShardAck, ClientError> {
        each!(self, s => s.delete(table, id, keys).await)
    }

    pub async fn begin_import(&self, table: &str) -> Result<ShardImport, ClientError> {
        match self {
            Shard::Grpc(s) => s.begin_import(table).await.map(ShardImport::Grpc),
            #[cfg(feature = "embedded")]
            Shard::Embedded(s) => s.begin_import(table).await.map(ShardImport::Embedded),
        }
    }

    /// Deletes every row of `range` (inside this shard's range).
    pub async fn delete_range(
        &self,
        table: &str,
        id: WriteId,
        range: KeyRange,
    ) -> Result<ShardAck, ClientError> {
        each!(self, s => s.delete_range(table, id, range).await)
    }

    /// The stored rows of `range` (inside this shard's range), streamed in blocks.
    /// `since`: only the rows last pushed after that LSN of the shard.
    pub async fn pull_range(
        &self,
        table: &str,
        range: KeyRange,
        since: Option<u64>,
    ) -> Result<BoxStream<'static, Result<RowBlock, ClientError>>, ClientError> {
        each!(self, s => s.pull_range(table, range, since).await)
    }

    /// The keys of `range` (inside this shard's range) gone after the shard's LSN `since`.
    pub async fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: u64,
    ) -> Result<Gone, ClientError> {
        each!(self, s => s.gone_since(table, range, since).await)
    }

    pub async fn checkpoint(&self) -> Result<u64, ClientError> {
        each!(self, s => s.checkpoint().await)
    }

    pub async fn inspect(&self, exact_rows: bool) -> Result<ShardReport, ClientError> {
        each!(self, s => s.inspect(exact_rows).await)
    }

    pub async fn verify(&self) -> Result<VerifyReport, ClientError> {
        each!(self, s => s.verify().await)
    }

    pub async fn log_dump(&self, from: u64, limit: u32) -> Result<LogDump, ClientError> {
        each!(self, s => s.log_dump(from, limit).await)
    }

    pub async fn compact(&self) -> Result<(), ClientError> {
        each!(self, s => s.compact().await)
    }

    /// Puts up a backup's write fence for `lease` (see `Store::fence`).
    pub async fn fence(&self, lease: std::time::Duration) -> Result<FenceReport, ClientError> {
        each!(self, s => s.fence(lease).await)
    }

    /// Lets `owed` writes through fence `fence`; says which are applied.
    pub async fn owe(&self, fence: u64, owed: Vec<(u64, u64)>) -> Result<Vec<bool>, ClientError> {
        each!(self, s => s.owe(fence, owed).await)
    }

    pub async fn unfence(&self, fence: u64) -> Result<bool, ClientError> {
        each!(self, s => s.unfence(fence).await)
    }

    /// The shard's backup into `dest` on its host, at fence `fence`'s cut (0: no fence).
    pub async fn backup(&self, req: BackupRequest) -> Result<ShardBackup, ClientError> {
        each!(self, s => s.backup(req).await)
    }

    pub async fn stats(&self) -> Result<ShardStats, ClientError> {
        each!(self, s => s.stats().await)
    }

    /// Makes a replicated shard's group exactly `members` (id, address).
    pub async fn set_members(&self, members: &[(u64, String)]) -> Result<ReplicaInfo, ClientError> {
        match self {
            Shard::Grpc(s) => s.set_members(members).await,
            #[cfg(feature = "embedded")]
            Shard::Embedded(_) => Err(ClientError::Invalid(
                "an embedded shard has no replica group".into(),
            )),
        }
    }

    /// Each replica of the shard with its standing (gRPC shards; an embedded shard has none).
    pub async fn replica_status(&self) -> Vec<(String, Result<ReplicaInfo, ClientError>)> {
        match self {
            Shard::Grpc(s) => s.replica_status().await,
            #[cfg(feature = "embedded")]
            Shard::Embedded(_) => Vec::new(),
        }
    }
}
