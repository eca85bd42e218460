//! paramdb's wire contract: the protobuf messages and gRPC service generated from
//! `proto/paramdb.proto`, the descriptor set for server reflection, the packed row encoding,
//! and the cluster file (which shard owns which key range, at which address).

pub mod cluster;
pub mod packed;

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("paramdb.v1");
}

/// The encoded `FileDescriptorSet` of `paramdb.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("paramdb_descriptor");
