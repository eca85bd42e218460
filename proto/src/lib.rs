//! paramdb's wire contract: the protobuf messages and gRPC service generated from
//! `proto/paramdb.proto`, the descriptor set for server reflection, the packed row encoding,
//! the conversions between messages and paramdb's plain types (`convert`), and the cluster
//! file (which shard owns which key range, at which address).

pub mod cluster;
pub mod convert;
pub mod packed;

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("paramdb.v1");
}

/// The encoded `FileDescriptorSet` of `paramdb.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("paramdb_descriptor");

/// HTTP/2 settings both ends use. A pull or push batch is hundreds of KB (1,000 rows of dim
/// 100 is 400 KB), so the default 64 KB windows and 16 KB frames would cost a WINDOW_UPDATE
/// round trip every 64 KB and stall several batches in flight on one connection.
pub mod http2 {
    /// Flow-control window of a whole connection.
    pub const CONNECTION_WINDOW: u32 = 16 << 20;
    /// Flow-control window of one call.
    pub const STREAM_WINDOW: u32 = 4 << 20;
    /// Largest HTTP/2 frame the server accepts.
    pub const MAX_FRAME: u32 = 1 << 20;
}
