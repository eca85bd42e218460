//! paramdb's wire contract (protobuf, `proto/paramdb.proto`) and its generated code. The gRPC
//! service lands with issue #3; until then this crate is intentionally empty so that the
//! workspace layout is fixed from the start.
