//! The crate boundaries the architecture promises, checked with `cargo tree` (no build): the
//! engine has no tokio, tonic or prost; a gRPC-only client does not link the engine or
//! RocksDB; the trainer sees only the client.

use std::path::Path;
use std::process::Command;

/// The packages (`name vX`) in `args`' dependency tree, one per line.
fn tree(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["tree", "--offline", "--prefix", "none", "-e", "normal"])
        .args(args)
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(' ').next().map(String::from))
        .collect()
}

#[test]
fn crate_boundaries_hold() {
    let engine = tree(&["-p", "paramdb-engine"]);
    for rpc in ["tokio", "tonic", "prost", "paramdb-proto", "paramdb-server"] {
        assert!(
            !engine.iter().any(|p| p == rpc),
            "paramdb-engine depends on {rpc}"
        );
    }
    // The replica groups speak raft through a connector the server supplies: no wire types.
    let replica = tree(&["-p", "paramdb-replica"]);
    for rpc in ["tonic", "prost", "paramdb-proto", "paramdb-server"] {
        assert!(
            !replica.iter().any(|p| p == rpc),
            "paramdb-replica depends on {rpc}"
        );
    }
    assert!(replica.iter().any(|p| p == "openraft"));
    let grpc_client = tree(&["-p", "paramdb-client", "--no-default-features"]);
    for storage in ["paramdb-engine", "librocksdb-sys", "rocksdb"] {
        assert!(
            !grpc_client.iter().any(|p| p == storage),
            "the gRPC-only client depends on {storage}"
        );
    }
    assert!(grpc_client.iter().any(|p| p == "tonic"));
    // The check sees what it looks for: the default client (with the in-process transport)
    // does link RocksDB.
    let embedded_client = tree(&["-p", "paramdb-client"]);
    assert!(embedded_client.iter().any(|p| p == "librocksdb-sys"));
    let trainer = tree(&["-p", "paramdb-trainer", "--depth", "1"]);
    for layer in ["paramdb-engine", "paramdb-server", "paramdb-proto"] {
        assert!(
            !trainer.iter().any(|p| p == layer),
            "the trainer depends on {layer}"
        );
    }
    let types = tree(&["-p", "paramdb-types", "--depth", "1"]);
    assert!(
        types
            .iter()
            .all(|p| p == "paramdb-types" || p == "thiserror"),
        "paramdb-types depends on {types:?}"
    );
}
