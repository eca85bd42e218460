//! The client: splits a request by shard, sends the parts in parallel, reassembles the
//! answer, and retries what may have failed in transit. Every push carries this client's id
//! and one sequence number for all its parts, and a retry reuses it, so each shard applies a
//! push exactly once however often it is resent.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::{self, Stream, StreamExt};
#[cfg(feature = "embedded")]
use paramdb_engine::{Store, StoreOptions};
use paramdb_proto::cluster::ClusterMap;
use paramdb_types::{quote, Code, Gone, KeyRange, ShardReport, TableSpec, VerifyReport};
use rand::Rng;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::ClientError;
use crate::routing;
#[cfg(feature = "embedded")]
use crate::transport::EmbeddedShard;
use crate::transport::{
    GrpcShard, LogDump, RowBlock, Security, Shard, ShardAck, ShardStats, WriteId,
};

/// Timeouts, retries and identity.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Per attempt.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of one call after a retryable failure (transport errors, a restarting shard).
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Exactly-once identity; random when `None`.
    pub client_id: Option<u64>,
    /// Bearer token for servers that require one (else the cluster file's `token_file`, else
    /// `PARAMDB_TOKEN`).
    pub token: Option<String>,
    /// Bounded staleness for this client's pulls by key: with a bound, a replicated shard's
    /// pulls are spread over every replica close enough to the leader (a replica that is not
    /// sends the pull on to the leader). `None`: pulls read the leader only.
    pub read_lag: Option<MaxLag>,
}

/// How far behind its shard's leader a pull may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxLag {
    /// At most this many log entries behind the leader's commit index (as of the leader's
    /// last message to the replica, which must be under a lease old).
    Entries(u64),
    /// Sees every write acknowledged more than this many milliseconds ago.
    Millis(u64),
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 30,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            client_id: None,
            token: None,
            read_lag: None,
        }
    }
}

/// The outcome of a catalog change made on every shard. `done` is the code a shard answers
/// when it already had the change (an earlier, partly failed attempt): fine on some shards,
/// an error when every shard says it.
fn settle(results: Vec<Result<(), ClientError>>, done: Code) -> Result<(), ClientError> {
    let is_done = |e: &ClientError| e.code() == Some(done);
    if results.iter().all(|r| r.as_ref().is_err_and(is_done)) {
        return results.into_iter().next().unwrap_or(Ok(()));
    }
    results
        .into_iter()
        .filter(|r| !r.as_ref().is_err_and(is_done))
        .collect()
}

/// The checks a push must pass before any part of it is sent: every shard would refuse its
/// part otherwise, but the other shards would have applied theirs, and the push could not be
/// retried whole. One rule, the same in every client: duplicate keys are refused (sum them
/// first), and so are NaN and infinities.
fn check_push(table: &str, keys: &[u64], values: &[f32], dim: usize) -> Result<(), ClientError> {
    if let Some(i) = paramdb_types::first_non_finite(values) {
        return Err(ClientError::Invalid(format!(
            "value {} of key {} in a push to table {} is {} (NaN and infinities are refused)",
            i % dim,
            keys[i / dim],
            quote(table),
            values[i]
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    if let Some(k) = keys.iter().find(|&&k| !seen.insert(k)) {
        return Err(ClientError::Invalid(format!(
            "key {k} appears more than once in one push to table {} (duplicate keys are refused: sum them first)",
            quote(table)
        )));
    }
    Ok(())
}

/// An embedded shard that would not open, as the client reports it.
#[cfg(feature = "embedded")]
fn open_error(shard: usize, e: paramdb_engine::OpenError) -> ClientError {
    use paramdb_engine::Classify;
    ClientError::Status {
        shard,
        code: e.code(),
        message: paramdb_engine::chain(&e),
    }
}

/// What a push returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushResult {
    pub seq: u64,
    /// Every shard involved had already applied this sequence number.
    pub duplicate: bool,
}

pub type RowStream = Pin<Box<dyn Stream<Item = Result<RowBlock, ClientError>> + Send>>;

struct Inner {
    map: ClusterMap,
    shards: Vec<Shard>,
    client_id: u64,
    seq: AtomicU64,
    opts: ClientOptions,
    dims: RwLock<HashMap<String, u32>>,
}

/// The paramdb client. Cheap to clone; clones share identity and sequence.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("shards", &self.inner.shards.len())
            .field("client_id", &self.inner.client_id)
            .finish()
    }
}

/// TLS and token settings from the cluster file; the token may also come from
/// `ClientOptions::token` or the `PARAMDB_TOKEN` environment variable (in that order).
fn security(map: &ClusterMap, opts: &ClientOptions) -> Result<Security, ClientError> {
    let read = |p: &Path, what: &str| {
        std::fs::read(p)
            .map_err(|e| ClientError::Invalid(format!("reading the {what} {}: {e}", p.display())))
    };
    let tls = match &map.tls {
        None => None,
        Some(t) => {
            let mut c = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&t.ca, "TLS CA")?));
            if let Some(d) = &t.domain {
                c = c.domain_name(d.clone());
            }
            match (&t.cert, &t.key) {
                (Some(cert), Some(key)) => {
                    c = c.identity(Identity::from_pem(
                        read(cert, "client certificate")?,
                        read(key, "client key")?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(ClientError::Invalid(
                        "[tls] needs both cert and key for a client certificate".into(),
                    ))
                }
            }
            Some(c)
        }
    };
    let token = match (&opts.token, &map.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            String::from_utf8(read(f, "token file")?)
                .map_err(|_| ClientError::Invalid(format!("{} is not text", f.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => std::env::var("PARAMDB_TOKEN").ok(),
    };
    let token = token
        .map(|t| {
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ClientError::Invalid("the token is not printable ASCII".into()))
        })
        .transpose()?;
    Ok(Security { tls, token })
}

/// The shard directories of a data directory: `dir` itself when it is one shard's (it holds
/// `rocksdb/`), else its `shard-0`, `shard-1`, … as `open_embedded` lays them out; empty when
/// it is neither.
pub fn embedded_shard_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    if dir.join("rocksdb").is_dir() {
        return vec![dir.to_path_buf()];
    }
    (0..)
        .map(|i| dir.join(format!("shard-{i}")))
        .take_while(|d| d.is_dir())
        .collect()
}

impl Client {
    /// A client of the shard servers listed in `map` (connections are made on first use).
    pub fn connect(map: ClusterMap, opts: ClientOptions) -> Result<Client, ClientError> {
        map.validate()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let security = security(&map, &opts)?;
        let shards = map
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                GrpcShard::connect(i, &s.addresses(), opts.connect_timeout, &security)
                    .map(Shard::Grpc)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::build(map, shards, opts))
    }

    #[cfg(feature = "embedded")]
    /// A client of stores in this process, one per shard of `map` (addresses are ignored).
    pub fn embedded(
        map: ClusterMap,
        stores: Vec<Arc<Store>>,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        map.validate()
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        if stores.len() != map.shards.len() {
            return Err(ClientError::Invalid(format!(
                "{} stores for {} shards",
                stores.len(),
                map.shards.len()
            )));
        }
        let shards = stores
            .into_iter()
            .zip(&map.shards)
            .enumerate()
            .map(|(i, (s, e))| {
                Shard::Embedded(EmbeddedShard::new(
                    i,
                    s,
                    KeyRange::new(e.range[0], e.range[1]),
                ))
            })
            .collect();
        Ok(Self::build(map, shards, opts))
    }

    #[cfg(feature = "embedded")]
    /// Opens (or creates) `shards` embedded stores under `dir/shard-<i>`, splitting the key
    /// space evenly: the no-network default.
    pub fn open_embedded(
        dir: &Path,
        shards: usize,
        store: StoreOptions,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let names: Vec<String> = (0..shards).map(|i| format!("embedded-{i}")).collect();
        let map = ClusterMap::even(&names);
        let stores = (0..shards)
            .map(|i| {
                Store::open(dir.join(format!("shard-{i}")), store.clone())
                    .map(Arc::new)
                    .map_err(|e| open_error(i, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::embedded(map, stores, opts)
    }

    #[cfg(feature = "embedded")]
    /// Opens the shards under `dir` read-only (see `Store::open_read_only`), safe while a
    /// server or an embedded trainer uses them: `dir` is either one shard's directory (a
    /// server's `--data-dir`; it then answers for every key) or an embedded data directory
    /// holding `shard-0`, `shard-1`, …. Pushes and table changes are refused.
    pub fn open_embedded_read_only(
        dir: &Path,
        store: StoreOptions,
        opts: ClientOptions,
    ) -> Result<Client, ClientError> {
        let open = |i: usize, d: &Path| {
            Store::open_read_only(d, store.clone())
                .map(Arc::new)
                .map_err(|e| open_error(i, e))
        };
        let mut dirs = embedded_shard_dirs(dir);
        if dirs.is_empty() {
            // Not a store at all: the open says why.
            dirs.push(dir.to_path_buf());
        }
        let names: Vec<String> = (0..dirs.len()).map(|i| format!("embedded-{i}")).collect();
        let stores = dirs
            .iter()
            .enumerate()
            .map(|(i, d)| open(i, d))
            .collect::<Result<Vec<_>, _>>()?;
        Self::embedded(ClusterMap::even(&names), stores, opts)
    }

    fn build(map: ClusterMap, shards: Vec<Shard>, opts: ClientOptions) -> Client {
        // Never 0: 0 is the anonymous client, which gets no deduplication.
        let client_id = opts
            .client_id
            .unwrap_or_else(|| rand::rng().random::<u64>() | 1);
        Client {
            inner: Arc::new(Inner {
                map,
                shards,
                client_id,
                seq: AtomicU64::new(1),
                opts,
                dims: RwLock::new(HashMap::new()),
            }),
        }
    }

    pub fn cluster(&self) -> &ClusterMap {
        &self.inner.map
    }

    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// The identity every shard's part of a write split into `parts` carries.
    fn write_id(&self, seq: u64, parts: usize) -> WriteId {
        WriteId {
            client: self.inner.client_id,
            seq,
            parts: u16::try_from(parts).unwrap_or(u16::MAX),
        }
    }

    /// Reserves the next sequence number (for callers that retry a push across their own
    /// restarts and must reuse it).
    pub fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` against shard `shard`, retrying retryable failures with backoff.
    async fn retry<T, F, Fut>(&self, shard: usize, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Shard) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let o = &self.inner.opts;
        let mut delay = o.backoff_initial;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let target = self.inner.shards[shard].pinned();
            let r = match tokio::time::timeout(o.timeout, f(target.clone())).await {
                Ok(r) => r,
                Err(_) => Err({
                    target.no_answer();
                    ClientError::Status {
                        shard,
                        code: Code::DeadlineExceeded,
                        message: format!("no answer within {:?}", o.timeout),
                    }
                }),
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt <= o.max_retries => {
                    tracing::debug!(shard, attempt, error = %e, "retrying");
                    let jitter = rand::rng().random_range(0.5..1.5);
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay = (delay * 2).min(o.backoff_max);
                }
                Err(e) if attempt > 1 && e.is_retryable() => {
                    return Err(ClientError::RetriesExhausted {
                        shard,
                        address: self.inner.map.shards[shard].addresses().join(","),
                        attempts: attempt,
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` on every shard in parallel.
    async fn all<T, F, Fut>(&self, f: F) -> Vec<Result<T, ClientError>>
    where
        F: Fn(Shard) -> Fut + Clone,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        futures::future::join_all((0..self.inner.shards.len()).map(|i| {
            let f = f.clone();
            async move { self.retry(i, f).await }
        }))
        .await
    }

    /// Creates the table on every shard. Re-running after a partial failure completes it.
    pub async fn create_table(&self, spec: TableSpec) -> Result<(), ClientError> {
        let results = self
            .all(|s| {
                let spec = spec.clone();
                async move { s.create_table(&spec).await }
            })
            .await;
        settle(results, Code::AlreadyExists)
    }

    /// Drops the table on every shard.
    pub async fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        let results = self
            .all(|s| {
                let name = name.to_string();
                async move { s.drop_table(&name).await }
            })
            .await;
        self.inner
            .dims
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        settle(results, Code::NotFound)
    }

    pub async fn list_tables(&self) -> Result<Vec<TableSpec>, ClientError> {
        self.retry(0, |s| async move { s.list_tables().await })
            .await
    }

    /// Replaces the table's lifecycle policies on every shard (`max_rows` caps each shard's
    /// part). Setting the same policies again is harmless, so re-running after a partial
    /// failure completes it.
    pub async fn set_lifecycle(
        &self,
        name: &str,
        lifecycle: paramdb_types::Lifecycle,
    ) -> Result<(), ClientError> {
        let results = self
            .all(|s| {
                let name = name.to_string();
                async move { s.set_lifecycle(&name, lifecycle).await }
            })
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(())
    }

    pub async fn describe_table(&self, name: &str) -> Result<TableSpec, ClientError> {
        let n = name.to_string();
        let spec = self
            .retry(0, |s| {
                let n = n.clone();
                async move { s.describe_table(&n).await }
            })
            .await?;
        self.inner
            .dims
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), spec.dim);
        Ok(spec)
    }

    async fn dim(&self, table: &str) -> Result<u32, ClientError> {
        if let Some(d) = self
            .inner
            .dims
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
        {
            return Ok(*d);
        }
        Ok(self.describe_table(table).await?.dim)
    }

    /// Weights of `keys`, `keys.len() × dim` floats row after row (read within the client's
    /// `read_lag`).
    pub async fn pull(&self, table: &str, keys: &[u64]) -> Result<Vec<f32>, ClientError> {
        self.pull_within(table, keys, self.inner.opts.read_lag)
            .await
    }

    /// [`Client::pull`] with its own staleness bound (`None`: from the leaders only).
    pub async fn pull_within(
        &self,
        table: &str,
        keys: &[u64],
        max_lag: Option<MaxLag>,
    ) -> Result<Vec<f32>, ClientError> {
        if keys.is_empty() {
            return Err(ClientError::Invalid("pull of no keys".into()));
        }
        let dim = self.dim(table).await? as usize;
        let parts = routing::split_keys(&self.inner.map, keys)?;
        let fetched = futures::future::try_join_all(parts.iter().map(|(shard, idx)| {
            let sub: Vec<u64> = idx.iter().map(|&i| keys[i]).collect();
            self.retry(*shard, move |s| {
                let (sub, table) = (sub.clone(), table.to_string());
                async move { s.pull(&table, sub, max_lag).await }
            })
        }))
        .await?;
        for ((shard, idx), vals) in parts.iter().zip(&fetched) {
            if vals.len() != idx.len() * dim {
                return Err(ClientError::Status {
                    shard: *shard,
                    code: Code::Internal,
                    message: format!("{} values for {} keys of dim {dim}", vals.len(), idx.len()),
                });
            }
        }
        if parts.len() == 1 {
            // One shard answered for every key, in the caller's order.
            return Ok(fetched.into_iter().next().unwrap_or_default());
        }
        let mut out = vec![0.0f32; keys.len() * dim];
        for ((_, idx), vals) in parts.iter().zip(fetched) {
            for (j, &i) in idx.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&vals[j * dim..(j + 1) * dim]);
            }
        }
        Ok(out)
    }

    /// Pushes `values` (`keys.len() × dim`) with a fresh sequence number.
    pub async fn push(
        &self,
        table: &str,
        keys: &[u64],
        values: &[f32],
    ) -> Result<PushResult, ClientError> {
        let seq = self.next_seq();
        self.push_with_seq(table, seq, keys, values).await
    }

    /// Pushes with a given sequence number: resending the same push with the same `seq` is
    /// applied once.
    pub async fn push_with_seq(
        &self,
        table: &str,
        seq: u64,
        keys: &[u64],
        values: &[f32],
    ) -> Result<PushResult, ClientError> {
        if keys.is_empty() || !values.len().is_multiple_of(keys.len()) {
            return Err(ClientError::Invalid(format!(
                "{} values for {} keys",
                values.len(),
                keys.len()
            )));
        }
        let dim = values.len() / keys.len();
        check_push(table, keys, values, dim)?;
        let parts = routing::split_keys(&self.inner.map, keys)?;
        let id = self.write_id(seq, parts.len());
        let acks: Vec<ShardAck> =
            futures::future::try_join_all(parts.iter().map(|(shard, idx)| {
                let sub_k: Vec<u64> = idx.iter().map(|&i| keys[i]).collect();
                let mut sub_v = Vec::with_capacity(idx.len() * dim);
                for &i in idx {
                    sub_v.extend_from_slice(&values[i * dim..(i + 1) * dim]);
                }
                // Shared by every attempt; the gRPC transport sends it without another copy.
                let sub_v: Arc<[f32]> = sub_v.into();
                self.retry(*shard, move |s| {
                    let (k, v, table) = (sub_k.clone(), sub_v.clone(), table.to_string());
                    async move { s.push(&table, id, k, v).await }
                })
            }))
            .await?;
        Ok(PushResult {
            seq,
            duplicate: acks.iter().all(|a| a.duplicate),
        })
    }

    /// Pushes the contiguous block of rows `[start, start + rows)` as one flat array.
    pub async fn push_range(
        &self,
        table: &str,
        start: u64,
        values: &[f32],
    ) -> Result<PushResult, ClientError> {
        let dim = self.dim(table).await? as usize;
        if values.is_empty() || !values.len().is_multiple_of(dim) {
            return Err(ClientError::Invalid(format!(
                "{} values do not make whole rows of dim {dim}",
                values.len()
            )));
        }
        let rows = (values.len() / dim) as u64;
        let parts = routing::split_block(&self.inner.map, start, rows)?;
        let seq = self.next_seq();
        let id = self.write_id(seq, parts.len());
        let acks: Vec<ShardAck> =
            futures::future::try_join_all(parts.into_iter().map(|(shard, first, off, n)| {
                let v: Arc<[f32]> = values[off as usize * dim..(off + n) as usize * dim].into();
                self.retry(shard, move |s| {
                    let (v, table) = (v.clone(), table.to_string());
                    async move { s.push_range(&table, id, first, v).await }
                })
            }))
            .await?;
        Ok(PushResult {
            seq,
            duplicate: acks.iter().all(|a| a.duplicate),
        })
    }

    /// Deletes `keys` with a fresh sequence number: logged and applied once per shard, like a
    /// push (retries reuse the sequence number). A deleted row pulls its initializer again,
    /// and a push starts it from there. Repeated keys are harmless.
    pub async fn delete(&self, table: &str, keys: &[u64]) -> Result<PushResult, ClientError> {
        let seq = self.next_seq();
        self.delete_with_seq(table, seq, keys).await
    }

    /// Deletes with a given sequence number (see `push_with_seq`).
    pub async fn delete_with_seq(
        &self,
        table: &str,
        seq: u64,
        keys: &[u64],
    ) -> Result<PushResult, ClientError> {
        if keys.is_empty() {
            return Err(ClientError::Invalid(format!(
                "a delete from table {} names no keys",
                paramdb_types::quote(table)
            )));
        }
        let parts = routing::split_keys(&self.inner.map, keys)?;
        let id = self.write_id(seq, parts.len());
        let acks: Vec<ShardAck> =
            futures::future::try_join_all(parts.iter().map(|(shard, idx)| {
                let sub_k: Vec<u64> = idx.iter().map(|&i| keys[i]).collect();
                self.retry(*shard, move |s| {
                    let (k, table) = (sub_k.clone(), table.to_string());
                    async move { s.delete(&table, id, k).await }
                })
            }))
            .await?;
        Ok(PushResult {
            seq,
            duplicate: acks.iter().all(|a| a.duplicate),
        })
    }

    /// Deletes every row of `range`, stored or not: each shard deletes its part, all under
    /// one sequence number.
    pub async fn delete_range(
        &self,
        table: &str,
        range: KeyRange,
    ) -> Result<PushResult, ClientError> {
        if range.is_empty() {
            return Err(ClientError::Invalid(format!(
                "empty key range {range} for table {}: nothing to delete",
                paramdb_types::quote(table)
            )));
        }
        let parts = routing::split_range(&self.inner.map, range);
        let seq = self.next_seq();
        let id = self.write_id(seq, parts.len());
        let acks: Vec<ShardAck> =
            futures::future::try_join_all(parts.into_iter().map(|(shard, part)| {
                self.retry(shard, move |s| {
                    let table = table.to_string();
                    async move { s.delete_range(&table, id, part).await }
                })
            }))
            .await?;
        Ok(PushResult {
            seq,
            duplicate: acks.iter().all(|a| a.duplicate),
        })
    }

    /// The stored rows of `range`, in key order: each shard's part streamed in turn. A part
    /// interrupted by a retryable failure resumes after its last delivered key.
    pub fn pull_range(&self, table: &str, range: KeyRange) -> RowStream {
        self.ranges(table, range, None)
    }

    /// `pull_range` of only the rows each shard `i` changed after its LSN `since[i]` (the end
    /// LSNs of a backup, for a delta export): rows last pushed or imported since.
    pub fn pull_range_since(
        &self,
        table: &str,
        range: KeyRange,
        since: &[u64],
    ) -> Result<RowStream, ClientError> {
        self.check_lsns(since)?;
        Ok(self.ranges(table, range, Some(since.to_vec())))
    }

    /// The keys of `range` that each shard `i` deleted, expired or evicted after its LSN
    /// `since[i]`, none of them live now, and the ranges deleted since: what a delta export
    /// lists beside `pull_range_since`'s rows. Apply them before the rows; a deleted range
    /// may hold rows pushed again, which `pull_range` of it gives. A key may be listed that
    /// was already gone at `since`. Refused for LSNs older than a shard's retention of gone
    /// keys (`StoreOptions::gone_retention_secs`).
    pub async fn gone_since(
        &self,
        table: &str,
        range: KeyRange,
        since: &[u64],
    ) -> Result<Gone, ClientError> {
        self.check_lsns(since)?;
        let mut gone = Gone::default();
        for (shard, part) in routing::split_range(&self.inner.map, range) {
            let lsn = since[shard];
            let table = table.to_string();
            let g = self
                .retry(shard, move |s| {
                    let t = table.clone();
                    async move { s.gone_since(&t, part, lsn).await }
                })
                .await?;
            gone.keys.extend(g.keys);
            for r in g.ranges {
                // A range deleted across shards comes back in parts that touch.
                match gone.ranges.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => gone.ranges.push(r),
                }
            }
        }
        Ok(gone)
    }

    /// One LSN per shard.
    fn check_lsns(&self, since: &[u64]) -> Result<(), ClientError> {
        if since.len() != self.inner.shards.len() {
            return Err(ClientError::Invalid(format!(
                "{} LSNs for {} shards",
                since.len(),
                self.inner.shards.len()
            )));
        }
        Ok(())
    }

    fn ranges(&self, table: &str, range: KeyRange, since: Option<Vec<u64>>) -> RowStream {
        let parts = routing::split_range(&self.inner.map, range);
        let client = self.clone();
        let table = table.to_string();
        stream::iter(parts)
            .flat_map(move |(shard, part)| {
                let since = since.as_ref().map(|s| s[shard]);
                client.shard_range(shard, table.clone(), part, since)
            })
            .boxed()
    }

    fn shard_range(
        &self,
        shard: usize,
        table: String,
        part: KeyRange,
        since: Option<u64>,
    ) -> RowStream {
        struct St {
            client: Client,
            shard: usize,
            table: String,
            cursor: u64,
            end: u64,
            inner: Option<futures::stream::BoxStream<'static, Result<RowBlock, ClientError>>>,
            failures: u32,
            done: bool,
        }
        let st = St {
            client: self.clone(),
            shard,
            table,
            cursor: part.start,
            end: part.end,
            inner: None,
            failures: 0,
            done: false,
        };
        stream::unfold(st, move |mut st| async move {
            loop {
                if st.done || st.cursor >= st.end {
                    return None;
                }
                if st.inner.is_none() {
                    let range = KeyRange::new(st.cursor, st.end);
                    let t = st.table.clone();
                    match st
                        .client
                        .retry(st.shard, move |s| {
                            let t = t.clone();
                            async move { s.pull_range(&t, range, since).await }
                        })
                        .await
                    {
                        Ok(s) => st.inner = Some(s),
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    }
                }
                match st.inner.as_mut().expect("opened above").next().await {
                    None => return None,
                    Some(Ok(block)) => {
                        if let Some(&last) = block.keys.last() {
                            st.cursor = last.saturating_add(1);
                            if last == u64::MAX {
                                st.done = true;
                            }
                        }
                        return Some((Ok(block), st));
                    }
                    Some(Err(e))
                        if e.is_retryable() && st.failures < st.client.inner.opts.max_retries =>
                    {
                        st.failures += 1;
                        st.inner = None; // reopen from the cursor
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                }
            }
        })
        .boxed()
    }

    /// Checkpoints every shard; returns each shard's checkpoint LSN.
    pub async fn checkpoint(&self) -> Result<Vec<u64>, ClientError> {
        self.all(|s| async move { s.checkpoint().await })
            .await
            .into_iter()
            .collect()
    }

    /// Every shard's inspect report, in shard order. `exact_rows` counts rows with a scan.
    pub async fn inspect(&self, exact_rows: bool) -> Result<Vec<ShardReport>, ClientError> {
        self.all(|s| async move { s.inspect(exact_rows).await })
            .await
            .into_iter()
            .collect()
    }

    /// Every shard's verification report, in shard order.
    pub async fn verify(&self) -> Result<Vec<VerifyReport>, ClientError> {
        self.all(|s| async move { s.verify().await })
            .await
            .into_iter()
            .collect()
    }

    /// The cluster map the client routes by.
    pub fn map(&self) -> &ClusterMap {
        &self.inner.map
    }

    pub(crate) fn shards(&self) -> &[Shard] {
        &self.inner.shards
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    pub(crate) fn shard(&self, shard: usize) -> Result<Shard, ClientError> {
        self.inner.shards.get(shard).cloned().ok_or_else(|| {
            ClientError::Invalid(format!(
                "no shard {shard}: the cluster has {}",
                self.inner.shards.len()
            ))
        })
    }

    /// Shard `shard`'s log records with LSN ≥ `from`, at most `limit`.
    pub async fn log_dump(
        &self,
        shard: usize,
        from: u64,
        limit: u32,
    ) -> Result<LogDump, ClientError> {
        let s = self.inner.shards.get(shard).ok_or_else(|| {
            ClientError::Invalid(format!(
                "no shard {shard}: the cluster has {}",
                self.inner.shards.len()
            ))
        })?;
        s.log_dump(from, limit).await
    }

    /// Compacts every shard's RocksDB.
    pub async fn compact(&self) -> Result<(), ClientError> {
        self.all(|s| async move { s.compact().await })
            .await
            .into_iter()
            .collect()
    }

    /// Makes shard `shard`'s replica group exactly `members` (id, address), through its
    /// leader: replicas new to it join as learners and catch up first, then the voters change
    /// in one step; replicas left out leave. Answers the leader's standing after the change.
    pub async fn set_members(
        &self,
        shard: usize,
        members: Vec<(u64, String)>,
    ) -> Result<crate::transport::ReplicaInfo, ClientError> {
        if shard >= self.inner.shards.len() {
            return Err(ClientError::Invalid(format!(
                "there is no shard {shard} ({} shards)",
                self.inner.shards.len()
            )));
        }
        self.retry(shard, |s| {
            let members = members.clone();
            async move { s.set_members(&members).await }
        })
        .await
    }

    /// For each shard, each of its replicas' standing (address, then what it reports).
    pub async fn replica_status(
        &self,
    ) -> Vec<Vec<(String, Result<crate::transport::ReplicaInfo, ClientError>)>> {
        futures::future::join_all(self.inner.shards.iter().map(|s| s.replica_status())).await
    }

    pub async fn stats(&self) -> Result<Vec<ShardStats>, ClientError> {
        self.all(|s| async move { s.stats().await })
            .await
            .into_iter()
            .collect()
    }
}
