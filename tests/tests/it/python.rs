//! The proto is usable from another language as is: a Python client generated with
//! grpcio-tools (PyPI) checks health and reflection, creates a table, pushes and pulls.

use std::path::PathBuf;
use std::process::Command;

use crate::cluster::Cluster;

/// The Python with grpcio, grpcio-tools, grpcio-health-checking and grpcio-reflection:
/// `PARAMDB_PYTHON`, else the repository's `.venv` (both set up by `make test`).
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("PARAMDB_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with grpcio: run `make test` (it creates .venv) or set PARAMDB_PYTHON"
    );
    venv
}

#[test]
fn python_client_from_the_proto() {
    let cluster = Cluster::start(1, &[]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(python())
        .arg(root.join("tests/python/test_proto_client.py"))
        .arg(&cluster.map.shards[0].address)
        .arg(root.join("proto"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
    cluster.stop();
}
