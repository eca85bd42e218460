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

/// Runs `tests/python/<script>` with `args`; it must exit 0 and print `ok_line`.
fn run_script(script: &str, args: &[&std::ffi::OsStr], ok_line: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(python())
        .arg(root.join("tests/python").join(script))
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_client_from_the_proto() {
    let cluster = Cluster::start(1, &[]);
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    run_script(
        "test_proto_client.py",
        &[cluster.map.shards[0].address.as_ref(), proto.as_os_str()],
        "python client: ok",
    );
    cluster.stop();
}

/// The pip-installed package (`client/python`, installed into the test Python by `make test`)
/// against 3 shards: routing, numpy round trips, exactly-once retries, errors.
#[test]
fn python_package_round_trips_through_three_shards() {
    let cluster = Cluster::start(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    run_script(
        "test_paramdb_client.py",
        &[file.as_os_str()],
        "python package: ok",
    );
    cluster.stop();
}

/// The package's retries: pushes go on while both shards are SIGKILLed and restarted; a push
/// whose answer was lost is retried with its sequence number, so every row ends up exactly
/// the number of pushes (none lost, none applied twice).
#[test]
fn python_package_retries_apply_each_push_once_across_shard_kills() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut cluster = Cluster::start(2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pushes = 300;
    let mut child = Command::new(python())
        .arg(root.join("tests/python/push_loop.py"))
        .arg(&file)
        .arg(pushes.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut kills = 0;
    let mut retries = 0;
    let mut last = String::new();
    for line in lines.by_ref() {
        last = line.unwrap();
        let acked: usize = last
            .strip_prefix("acked ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // Kill a shard every 60 acknowledged pushes, alternating, and bring it back.
        if acked > 0 && acked.is_multiple_of(60) && acked < pushes {
            let i = kills % 2;
            cluster.kill(i);
            std::thread::sleep(std::time::Duration::from_millis(50));
            cluster.restart(i);
            kills += 1;
        }
        if let Some(n) = last.strip_prefix("retries ") {
            retries = n.parse().unwrap();
        }
        if last.contains("push loop") {
            break;
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success() && last == "push loop: ok", "{last}\n{err}");
    assert_eq!(kills, 4);
    assert!(
        retries > 0,
        "no call was retried: the kills missed every push"
    );
    // And from Rust, after the last restart: exactly `pushes` on every key.
    let client = cluster.client();
    let keys: Vec<u64> = (0..100).map(|i| i * (u64::MAX / 100)).collect();
    let values = client.pull("loop", &keys).unwrap();
    assert!(values.iter().all(|&v| v == pushes as f32), "{values:?}");
    println!(
        "python package: {pushes} pushes through {kills} shard kills ({retries} calls retried), each applied once"
    );
}
