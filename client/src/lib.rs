//! paramdb's client: one API over two transports (gRPC and in-process embedded shards), with a
//! pure key → shard routing module. Lands with issue #3; intentionally empty until then.
