//! A served shard whose log can no longer grow (its file-size limit lowered under it with
//! `prlimit`, so writes fail with EFBIG as they would with ENOSPC on a full disk): pushes get a
//! clear UNAVAILABLE error and are never acknowledged unlogged, reads go on, and once the limit
//! is lifted a restart recovers every acknowledged push.

use std::process::Command;
use std::time::Duration;

use paramdb_client::{BlockingClient, ClientOptions, TableSpec, UpdateRule};

use crate::cluster::Cluster;

fn prlimit(pid: u32, fsize: &str) {
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={fsize}")])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --fsize={fsize} failed");
}

#[test]
fn a_log_that_cannot_grow_refuses_pushes_clearly_and_recovers() {
    let mut cluster = Cluster::start(1, &[]);
    let quick = ClientOptions {
        max_retries: 0,
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    cluster
        .client()
        .create_table(TableSpec::new("t", 64).with_rule(UpdateRule::Add))
        .unwrap();
    let client = BlockingClient::connect(cluster.map.clone(), quick.clone()).unwrap();
    let row = vec![1.0f32; 64];
    let mut acked = Vec::new();
    for k in 0..50u64 {
        client.push("t", &[k], &row).unwrap();
        acked.push(k);
    }

    // The log segment may grow by about 40 more records, then writes fail.
    let wal = cluster.data_dir(0).join("wal");
    let biggest = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap();
    let pid = cluster.procs[0].id();
    prlimit(pid, &format!("{}:unlimited", biggest + 40 * 600));
    let mut refused = None;
    for k in 50..2000u64 {
        match client.push("t", &[k], &row) {
            Ok(_) => acked.push(k),
            Err(e) => {
                refused = Some((k, e));
                break;
            }
        }
    }
    let (first_refused, e) = refused.expect("pushes went on past the file-size limit");
    let msg = e.to_string();
    assert_eq!(e.code(), Some(paramdb_client::Code::Unavailable), "{msg}");
    assert!(
        msg.contains("File too large") || msg.contains("poisoned"),
        "{msg}"
    );
    // Later pushes are refused too (the store is poisoned), with the reason; reads go on.
    let again = client.push("t", &[first_refused + 1], &row).unwrap_err();
    assert!(again.to_string().contains("poisoned"), "{again}");
    assert_eq!(client.pull("t", &[0]).unwrap(), row);

    // Space is back; the poisoned store wants a restart, which recovers everything acknowledged.
    prlimit(pid, "unlimited:unlimited");
    cluster.kill(0);
    cluster.restart(0);
    let patient = BlockingClient::connect(cluster.map.clone(), ClientOptions::default()).unwrap();
    let keys: Vec<u64> = (0..first_refused + 2).collect();
    let values = patient.pull("t", &keys).unwrap();
    for &k in &acked {
        assert_eq!(
            values[k as usize * 64],
            1.0,
            "acknowledged push of key {k} lost"
        );
    }
    let unacked_applied = (first_refused..first_refused + 2)
        .filter(|&k| values[k as usize * 64] != 0.0)
        .count();
    assert_eq!(unacked_applied, 0, "a refused push was applied");
    patient.push("t", &[5000], &row).unwrap();
    assert_eq!(patient.pull("t", &[5000]).unwrap(), row);
    println!(
        "disk trouble: {} pushes acknowledged before the log hit its limit, refused with {msg:?}; all recovered after the restart",
        acked.len()
    );
    cluster.stop();
}
