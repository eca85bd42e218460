//! One shard behind either transport: a gRPC channel to a shard server, or an embedded store
//! in this process (calls run on blocking threads). Both report errors the same way: as the
//! gRPC status a server would have sent.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use paramdb_proto::http2::{CONNECTION_WINDOW, STREAM_WINDOW};
use paramdb_proto::packed;
use paramdb_proto::v1::{self, paramdb_client::ParamdbClient};
use paramdb_server::rpc::service::{
    dump_from_wire, report_from_wire, stats_to_wire, verify_from_wire,
};
use paramdb_server::rpc::status::code_of;
use paramdb_server::verify::VerifyReport;
use paramdb_server::wal::dump::RecordInfo;
use paramdb_server::{ClientId, KeyRange, ShardReport, Store, StoreError, TableSpec};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::error::ClientError;

/// Rows of a range, as one block.
#[derive(Clone, Debug, PartialEq)]
pub struct RowBlock {
    pub dim: u32,
    pub keys: Vec<u64>,
    /// `keys.len() × dim` values, row after row.
    pub values: Vec<f32>,
}

/// TLS and the bearer token for every gRPC shard.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub tls: Option<ClientTlsConfig>,
    pub token: Option<AsciiMetadataValue>,
}

/// Adds the bearer token, if any, to every call.
#[derive(Clone, Debug)]
pub struct Auth(Option<AsciiMetadataValue>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A shard's log records (no values) and its torn or damaged segments.
pub type LogDump = (Vec<RecordInfo>, Vec<String>);

/// Acknowledgement of a push by one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardAck {
    pub lsn: u64,
    pub duplicate: bool,
}

impl From<v1::PushResponse> for ShardAck {
    fn from(r: v1::PushResponse) -> Self {
        ShardAck {
            lsn: r.lsn,
            duplicate: r.duplicate,
        }
    }
}

impl From<paramdb_server::PushAck> for ShardAck {
    fn from(a: paramdb_server::PushAck) -> Self {
        ShardAck {
            lsn: a.lsn,
            duplicate: a.duplicate,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcShard {
    index: usize,
    client: ParamdbClient<InterceptedService<Channel, Auth>>,
}

#[derive(Clone, Debug)]
pub struct EmbeddedShard {
    index: usize,
    store: Arc<Store>,
    range: KeyRange,
}

/// One shard, reached over gRPC or in process.
#[derive(Clone, Debug)]
pub enum Shard {
    Grpc(GrpcShard),
    Embedded(EmbeddedShard),
}

/// The largest message the client sends or accepts.
const MAX_MESSAGE: usize = 256 << 20;

impl Shard {
    /// A lazily connected gRPC shard: a shard that is down shows up as `UNAVAILABLE` on calls
    /// (which retry), not as a failure to build the client.
    pub fn grpc(
        index: usize,
        address: &str,
        connect_timeout: Duration,
        security: &Security,
    ) -> Result<Shard, ClientError> {
        let scheme = if security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = if address.contains("://") {
            address.to_string()
        } else {
            format!("{scheme}://{address}")
        };
        let connect_error = |e: &dyn std::fmt::Display| ClientError::Connect {
            shard: index,
            address: address.to_string(),
            message: e.to_string(),
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| connect_error(&e))?;
        if let Some(tls) = &security.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| connect_error(&e))?;
        }
        let endpoint = endpoint
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW);
        let client =
            ParamdbClient::with_interceptor(endpoint.connect_lazy(), Auth(security.token.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
        Ok(Shard::Grpc(GrpcShard { index, client }))
    }

    pub fn embedded(index: usize, store: Arc<Store>, range: KeyRange) -> Shard {
        Shard::Embedded(EmbeddedShard {
            index,
            store,
            range,
        })
    }

    pub fn index(&self) -> usize {
        match self {
            Shard::Grpc(g) => g.index,
            Shard::Embedded(e) => e.index,
        }
    }

    fn status(&self, s: tonic::Status) -> ClientError {
        ClientError::status(self.index(), s)
    }

    pub async fn create_table(&self, spec: &TableSpec) -> Result<(), ClientError> {
        match self {
            Shard::Grpc(g) => {
                let req = v1::CreateTableRequest {
                    spec: Some(spec_to_wire(spec)),
                };
                g.client
                    .clone()
                    .create_table(req)
                    .await
                    .map_err(|s| self.status(s))?;
                Ok(())
            }
            Shard::Embedded(e) => {
                let spec = spec.clone();
                e.run(move |s| s.create_table(spec).map(|_| ())).await
            }
        }
    }

    pub async fn drop_table(&self, name: &str) -> Result<(), ClientError> {
        match self {
            Shard::Grpc(g) => {
                let req = v1::DropTableRequest { name: name.into() };
                g.client
                    .clone()
                    .drop_table(req)
                    .await
                    .map_err(|s| self.status(s))?;
                Ok(())
            }
            Shard::Embedded(e) => {
                let name = name.to_string();
                e.run(move |s| s.drop_table(&name)).await
            }
        }
    }

    pub async fn list_tables(&self) -> Result<Vec<TableSpec>, ClientError> {
        match self {
            Shard::Grpc(g) => {
                let r = g
                    .client
                    .clone()
                    .list_tables(v1::ListTablesRequest {})
                    .await
                    .map_err(|s| self.status(s))?;
                r.into_inner()
                    .tables
                    .into_iter()
                    .map(|t| spec_from_wire(self.index(), t.spec.unwrap_or_default()))
                    .collect()
            }
            Shard::Embedded(e) => Ok(e.store.list_tables().into_iter().map(|t| t.spec).collect()),
        }
    }

    pub async fn describe_table(&self, name: &str) -> Result<TableSpec, ClientError> {
        match self {
            Shard::Grpc(g) => {
                let r = g
                    .client
                    .clone()
                    .describe_table(v1::DescribeTableRequest { name: name.into() })
                    .await
                    .map_err(|s| self.status(s))?;
                spec_from_wire(self.index(), r.into_inner().spec.unwrap_or_default())
            }
            Shard::Embedded(e) => e
                .store
                .describe_table(name)
                .map(|t| t.spec)
                .map_err(|err| e.error(err)),
        }
    }

    pub async fn pull(&self, table: &str, keys: Vec<u64>) -> Result<Vec<f32>, ClientError> {
        match self {
            Shard::Grpc(g) => {
                let req = v1::PullRequest {
                    table: table.into(),
                    keys,
                };
                let r = g
                    .client
                    .clone()
                    .pull(req)
                    .await
                    .map_err(|s| self.status(s))?
                    .into_inner();
                packed::bytes_to_f32s(&r.values).ok_or_else(|| ClientError::Status {
                    shard: self.index(),
                    code: tonic::Code::Internal,
                    message: "pull response values are not whole f32s".into(),
                })
            }
            Shard::Embedded(e) => {
                e.check_keys(&keys)?;
                let table = table.to_string();
                e.run(move |s| s.pull(&table, &keys)).await
            }
        }
    }

    pub async fn push(
        &self,
        table: &str,
        client: u64,
        seq: u64,
        keys: Vec<u64>,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        match self {
            Shard::Grpc(g) => {
                let req = v1::PushRequest {
                    table: table.into(),
                    client_id: client,
                    seq,
                    keys,
                    values: packed::f32s_into_bytes(values),
                };
                let r = g.client.clone().push(req).await;
                Ok(r.map_err(|s| self.status(s))?.into_inner().into())
            }
            Shard::Embedded(e) => {
                e.check_keys(&keys)?;
                let table = table.to_string();
                e.run(move |s| s.push(&table, ClientId(client), seq, &keys, &values))
                    .await
                    .map(ShardAck::from)
            }
        }
    }

    pub async fn push_range(
        &self,
        table: &str,
        client: u64,
        seq: u64,
        start: u64,
        values: Arc<[f32]>,
    ) -> Result<ShardAck, ClientError> {
        match self {
            Shard::Grpc(g) => {
                let req = v1::PushRangeRequest {
                    table: table.into(),
                    client_id: client,
                    seq,
                    start,
                    values: packed::f32s_into_bytes(values),
                };
                let r = g.client.clone().push_range(req).await;
                Ok(r.map_err(|s| self.status(s))?.into_inner().into())
            }
            Shard::Embedded(e) => {
                e.check_keys(&[start])?;
                let table = table.to_string();
                e.run(move |s| s.push_range(&table, ClientId(client), seq, start, &values))
                    .await
                    .map(ShardAck::from)
            }
        }
    }

    /// The stored rows of `range` (inside this shard's range), streamed in blocks.
    pub async fn pull_range(
        &self,
        table: &str,
        range: KeyRange,
    ) -> Result<BoxStream<'static, Result<RowBlock, ClientError>>, ClientError> {
        let index = self.index();
        match self {
            Shard::Grpc(g) => {
                let req = v1::PullRangeRequest {
                    table: table.into(),
                    start: range.start,
                    end: range.end,
                    block_rows: 0,
                };
                let stream = g
                    .client
                    .clone()
                    .pull_range(req)
                    .await
                    .map_err(|s| self.status(s))?
                    .into_inner();
                Ok(stream
                    .map(move |m| {
                        let m = m.map_err(|s| ClientError::status(index, s))?;
                        let values = packed::bytes_to_f32s(&m.values).ok_or_else(|| {
                            ClientError::Status {
                                shard: index,
                                code: tonic::Code::Internal,
                                message: "range block values are not whole f32s".into(),
                            }
                        })?;
                        Ok(RowBlock {
                            dim: m.dim,
                            keys: m.keys,
                            values,
                        })
                    })
                    .boxed())
            }
            Shard::Embedded(e) => {
                let dim = e
                    .store
                    .describe_table(table)
                    .map_err(|err| e.error(err))?
                    .spec
                    .dim;
                let scan = e.store.scan(table, range).map_err(|err| e.error(err))?;
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let shard = e.clone();
                tokio::task::spawn_blocking(move || {
                    let mut block = RowBlock {
                        dim,
                        keys: Vec::new(),
                        values: Vec::new(),
                    };
                    for row in scan {
                        match row {
                            Ok((k, w)) => {
                                block.keys.push(k);
                                block.values.extend_from_slice(&w);
                            }
                            Err(err) => {
                                let _ = tx.blocking_send(Err(shard.error(err)));
                                return;
                            }
                        }
                        if block.keys.len() == 1024 {
                            let full = std::mem::replace(
                                &mut block,
                                RowBlock {
                                    dim,
                                    keys: Vec::new(),
                                    values: Vec::new(),
                                },
                            );
                            if tx.blocking_send(Ok(full)).is_err() {
                                return;
                            }
                        }
                    }
                    if !block.keys.is_empty() {
                        let _ = tx.blocking_send(Ok(block));
                    }
                });
                Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
            }
        }
    }

    pub async fn checkpoint(&self) -> Result<u64, ClientError> {
        match self {
            Shard::Grpc(g) => Ok(g
                .client
                .clone()
                .checkpoint(v1::CheckpointRequest {})
                .await
                .map_err(|s| self.status(s))?
                .into_inner()
                .lsn),
            Shard::Embedded(e) => e.run(|s| s.checkpoint().map(|c| c.lsn)).await,
        }
    }

    pub async fn inspect(&self, exact_rows: bool) -> Result<ShardReport, ClientError> {
        match self {
            Shard::Grpc(g) => Ok(report_from_wire(
                g.client
                    .clone()
                    .inspect(v1::InspectRequest { exact_rows })
                    .await
                    .map_err(|s| self.status(s))?
                    .into_inner(),
            )),
            Shard::Embedded(e) => e.run(move |s| s.inspect(exact_rows)).await,
        }
    }

    pub async fn verify(&self) -> Result<VerifyReport, ClientError> {
        match self {
            Shard::Grpc(g) => Ok(verify_from_wire(
                g.client
                    .clone()
                    .verify(v1::VerifyRequest {})
                    .await
                    .map_err(|s| self.status(s))?
                    .into_inner(),
            )),
            Shard::Embedded(e) => e.run(|s| s.verify()).await,
        }
    }

    pub async fn log_dump(&self, from: u64, limit: u32) -> Result<LogDump, ClientError> {
        match self {
            Shard::Grpc(g) => Ok(dump_from_wire(
                g.client
                    .clone()
                    .log_dump(v1::LogDumpRequest {
                        from_lsn: from,
                        limit,
                    })
                    .await
                    .map_err(|s| self.status(s))?
                    .into_inner(),
            )),
            Shard::Embedded(e) => e.run(move |s| s.dump_log(from, limit as usize)).await,
        }
    }

    pub async fn compact(&self) -> Result<(), ClientError> {
        match self {
            Shard::Grpc(g) => {
                g.client
                    .clone()
                    .compact(v1::CompactRequest {})
                    .await
                    .map_err(|s| self.status(s))?;
                Ok(())
            }
            Shard::Embedded(e) => e.run(|s| s.compact()).await,
        }
    }

    pub async fn stats(&self) -> Result<v1::StatsResponse, ClientError> {
        match self {
            Shard::Grpc(g) => Ok(g
                .client
                .clone()
                .stats(v1::StatsRequest {})
                .await
                .map_err(|s| self.status(s))?
                .into_inner()),
            Shard::Embedded(e) => Ok(stats_to_wire(e.index as u32, e.range, e.store.stats())),
        }
    }
}

impl EmbeddedShard {
    fn error(&self, e: StoreError) -> ClientError {
        ClientError::Status {
            shard: self.index,
            code: code_of(&e),
            message: e.to_string(),
        }
    }

    /// The same range check a shard server makes, so both transports refuse alike.
    fn check_keys(&self, keys: &[u64]) -> Result<(), ClientError> {
        match keys.iter().find(|k| !self.range.contains(**k)) {
            Some(k) => Err(ClientError::Status {
                shard: self.index,
                code: tonic::Code::FailedPrecondition,
                message: format!(
                    "key {k} is outside shard {}'s range {}",
                    self.index, self.range
                ),
            }),
            None => Ok(()),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> paramdb_server::Result<T> + Send + 'static,
    ) -> Result<T, ClientError> {
        let store = self.store.clone();
        let shard = self.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(r) => r.map_err(|e| shard.error(e)),
            Err(e) => Err(ClientError::Status {
                shard: self.index,
                code: tonic::Code::Internal,
                message: format!("store task failed: {e}"),
            }),
        }
    }
}

pub fn spec_to_wire(s: &TableSpec) -> v1::TableSpec {
    v1::TableSpec {
        name: s.name.clone(),
        dim: s.dim,
        init: s.init.to_string(),
        rule: s.rule.to_string(),
        seed: s.seed,
    }
}

fn spec_from_wire(shard: usize, s: v1::TableSpec) -> Result<TableSpec, ClientError> {
    let bad = |m: String| ClientError::Status {
        shard,
        code: tonic::Code::Internal,
        message: m,
    };
    Ok(TableSpec {
        name: s.name,
        dim: s.dim,
        init: if s.init.is_empty() {
            Default::default()
        } else {
            s.init.parse().map_err(bad)?
        },
        rule: if s.rule.is_empty() {
            Default::default()
        } else {
            s.rule.parse().map_err(bad)?
        },
        seed: s.seed,
    })
}
