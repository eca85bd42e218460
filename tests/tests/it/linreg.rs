//! The classic ps/worker example: two worker processes train a dense linear model against two
//! shard processes, asynchronously and bulk-synchronously, and survive a shard being killed
//! and restarted mid-run.

use std::process::{Command, Stdio};
use std::time::Duration;

use paramdb_trainer::linreg;

use crate::cluster::{paramdb_bin, Cluster};

/// Learned parameters within this of the truth (noise σ = 0.1; runs end near 0.01).
const TOLERANCE: f32 = 0.05;

fn linreg_cmd(file: &std::path::Path, mode: &str, model: &str, steps: u64) -> Command {
    let mut c = Command::new(paramdb_bin());
    c.args(["train", "linreg", "--cluster"])
        .arg(file)
        .args(["--workers", "2", "--mode", mode, "--model", model])
        .args(["--steps", &steps.to_string(), "--every", "100"]);
    c
}

fn final_error(out: &str) -> f32 {
    out.lines()
        .find_map(|l| l.split("max |param - truth| = ").nth(1))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no final line in: {out}"))
}

#[test]
fn linreg_two_workers_converge_async_and_bulk_synchronous() {
    let cluster = Cluster::start(2, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    for mode in ["async", "bsp"] {
        let model = format!("lr_{mode}");
        let out = linreg_cmd(&file, mode, &model, 600).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Both worker processes ran all their steps.
        assert!(
            text.contains("worker 0 step 599") && text.contains("worker 1 step 599"),
            "{text}"
        );
        assert!(final_error(&text) < TOLERANCE, "{mode}: {text}");
        // Checked independently of the tool's own report.
        let p = linreg::params(&cluster.client(), &model).unwrap();
        let err = linreg::max_error(&p, 7);
        assert!(err < TOLERANCE, "{mode}: {err}");
        // An untrained model is far off: the check can fail.
        assert!(linreg::max_error(&vec![0.0; p.len()], 7) > 0.5);
    }
    cluster.stop();
}

#[test]
fn linreg_workers_carry_on_when_a_shard_is_killed_and_restarted() {
    let mut cluster = Cluster::start(2, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, cluster.map.to_toml()).unwrap();
    let mut run = linreg_cmd(&file, "async", "lr_kill", 2500)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run ended before the kill"
    );
    // W's rows 0..=100 span both shards' ranges? The key space splits at 2^63, so all rows
    // live on shard 0: that is the one to kill.
    cluster.kill(0); // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    cluster.restart(0);
    let out = run.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("worker 0 step 2499") && text.contains("worker 1 step 2499"),
        "{text}"
    );
    assert!(final_error(&text) < TOLERANCE, "{text}");
    cluster.stop();
}
