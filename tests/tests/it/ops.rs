//! Operating a server: one configuration file with environment variables and flags over it,
//! `--print-config`, unknown keys refused; the Prometheus endpoint's counters moving with
//! traffic; JSON logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap, TableSpec};

use crate::cluster::paramdb_bin;

fn serve(args: &[&str]) -> Command {
    let mut c = Command::new(paramdb_bin());
    c.arg("serve").args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PARAMDB_") {
            c.env_remove(k);
        }
    }
    c
}

fn print_config(cmd: &mut Command) -> String {
    let out = cmd.arg("--print-config").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn refused(cmd: &mut Command) -> String {
    let out = cmd.arg("--print-config").output().unwrap();
    assert!(!out.status.success(), "accepted: {:?}", cmd);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.starts_with("paramdb: "), "{err}");
    err
}

#[test]
fn configuration_layers_file_env_and_flags_and_refuses_unknown_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    write(
        r#"
listen = "127.0.0.1:0"
data_dir = "data"              # relative to this file
cluster = "cluster.toml"
shard = 0
sync = "none"
cache_bytes = 1000
checkpoint_interval_secs = 5.0

[limits]
max_keys = 10
"#,
    );
    let f = file.to_str().unwrap();
    // The file alone: its values, defaults for the rest, paths made absolute.
    let only_file = print_config(&mut serve(&["--config", f]));
    let d = dir.path().display();
    for want in [
        "listen = \"127.0.0.1:0\"".to_string(),
        format!("data_dir = \"{d}/data\""),
        format!("cluster = \"{d}/cluster.toml\""),
        "shard = 0".into(),
        "sync = \"none\"".into(),
        "cache_bytes = 1000".into(),
        "checkpoint_interval_secs = 5.0".into(),
        "max_keys = 10".into(),
        "log_format = \"text\"".into(),
        "max_concurrent = 1024".into(),
        "block_cache_bytes = ".into(),
    ] {
        assert!(only_file.contains(&want), "{want:?} not in:\n{only_file}");
    }
    // The environment overrides the file, and flags override both.
    let layered = print_config(
        serve(&["--config", f, "--sync", "interval=7", "--max-keys", "20"])
            .env("PARAMDB_CACHE_BYTES", "2000")
            .env("PARAMDB_SYNC", "sync")
            .env("PARAMDB_LOG_FORMAT", "json"),
    );
    for want in [
        "cache_bytes = 2000",
        "sync = \"interval=7\"",
        "max_keys = 20",
        "log_format = \"json\"",
        "listen = \"127.0.0.1:0\"",
    ] {
        assert!(layered.contains(want), "{want:?} not in:\n{layered}");
    }
    // The config file itself can come from the environment.
    let via_env = print_config(serve(&[]).env("PARAMDB_CONFIG", f));
    assert_eq!(via_env, only_file);

    // Unknown keys, at the top or in a section, and wrong types are errors naming the file.
    write("listen = \"127.0.0.1:0\"\ncache_byte = 5\n");
    let err = refused(&mut serve(&["--config", f]));
    assert!(
        err.contains("unknown field `cache_byte`") && err.contains(f),
        "{err}"
    );
    write("[limits]\nmax_key = 3\n");
    let err = refused(&mut serve(&["--config", f]));
    assert!(err.contains("unknown field `max_key`"), "{err}");
    write("shard = \"zero\"\n");
    let err = refused(&mut serve(&["--config", f]));
    assert!(
        err.contains("line 1 (`shard = \"zero\"`)")
            && err.contains(f)
            && err.trim().lines().count() == 1,
        "{err}"
    );
    write("sync = \"sometimes\"\ndata_dir = \"d\"\ncluster = \"c\"\nshard = 0\n");
    let err = refused(&mut serve(&["--config", f]));
    assert!(err.contains("unknown sync policy"), "{err}");
    // What is required says where it can come from.
    let err = refused(&mut serve(&["--cluster", "c.toml", "--shard", "0"]));
    assert!(
        err.contains("--data-dir") && err.contains("PARAMDB_DATA_DIR"),
        "{err}"
    );
    let err = refused(&mut serve(&[
        "--data-dir",
        "d",
        "--cluster",
        "c",
        "--shard",
        "0",
        "--tls-cert",
        "x.pem",
    ]));
    assert!(err.contains("--tls-key"), "{err}");
    // The README's example configuration is accepted as written.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let example = readme
        .split("```toml\n# server.toml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's server.toml example");
    write(example);
    let printed = print_config(&mut serve(&["--config", f]));
    assert!(
        printed.contains("checkpoint_interval_secs = 60.0"),
        "{printed}"
    );
    println!("configuration: file < environment < flags; 5 kinds of bad configuration refused");
}

/// Starts one shard from a configuration file; returns it, its address and its metrics URL.
fn start_with_metrics(dir: &Path) -> (Child, String, String) {
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        ClusterMap::even(&["127.0.0.1:0".to_string()]).to_toml(),
    )
    .unwrap();
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\ncluster = \"cluster.toml\"\nshard = 0\n\
         metrics_listen = \"127.0.0.1:0\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let mut child = serve(&["--config", config.to_str().unwrap()])
        .env("RUST_LOG", "paramdb_server=info,paramdb_engine=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    let addr = first.rsplit(' ').next().unwrap().to_string();
    let url = second
        .strip_prefix("paramdb: metrics on http://")
        .unwrap_or_else(|| panic!("no metrics line: {second:?}"))
        .to_string();
    (child, addr, url)
}

/// GET of `host:port/path` over plain HTTP/1.1: the body.
pub(crate) fn scrape(url: &str) -> String {
    let (host, path) = url.split_once('/').unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of the sample `name{labels}` (labels in the exporter's order), or 0 if absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn metrics_endpoint_counts_traffic_and_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, url) = start_with_metrics(dir.path());
    // Up once the store has replayed its log and serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let before = loop {
        let body = scrape(&url);
        if sample(&body, "paramdb_up{shard=\"0\"}") == 1.0 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "never up: {body}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(sample(&before, "paramdb_pushes_total{shard=\"0\"}"), 0.0);

    let mut map = ClusterMap::even(&["127.0.0.1:0".to_string()]);
    map.shards[0].address = addr;
    let c = BlockingClient::connect(map, ClientOptions::default()).unwrap();
    c.create_table(TableSpec::new("m", 4)).unwrap();
    for i in 0..10u64 {
        let keys: Vec<u64> = (i * 5..i * 5 + 5).collect();
        c.push("m", &keys, &[1.0; 20]).unwrap();
    }
    for _ in 0..3 {
        c.pull("m", &[1, 2, 3]).unwrap();
    }
    // NaN is refused by the client before any shard is sent its part: no request.
    assert!(c.push("m", &[1], &[f32::NAN, 0.0, 0.0, 0.0]).is_err());
    assert!(c.pull("nope", &[1]).is_err());
    // Wrong dimensions are the server's to refuse.
    assert!(c.push("m", &[1], &[1.0; 3]).is_err());
    assert!(c.push("m", &[1, 2], &[1.0; 6]).is_err());

    let after = scrape(&url);
    let get = |series: &str| sample(&after, series);
    assert_eq!(get("paramdb_pushes_total{shard=\"0\"}"), 10.0, "{after}");
    assert_eq!(get("paramdb_rows_pushed_total{shard=\"0\"}"), 50.0);
    assert_eq!(get("paramdb_pulls_total{shard=\"0\"}"), 3.0);
    assert_eq!(get("paramdb_rows_pulled_total{shard=\"0\"}"), 9.0);
    assert!(get("paramdb_log_bytes_written_total{shard=\"0\"}") > 10.0 * 5.0 * 16.0);
    assert!(get("paramdb_fsyncs_total{shard=\"0\"}") >= 1.0);
    assert_eq!(
        get("paramdb_requests_total{method=\"Push\"}"),
        12.0,
        "10 accepted, 2 refused"
    );
    assert_eq!(
        get("paramdb_rejected_requests_total{method=\"Push\",reason=\"invalid_argument\"}"),
        2.0
    );
    // The client learns a table's dim before its first pull: that call finds no table.
    assert_eq!(
        get("paramdb_rejected_requests_total{method=\"DescribeTable\",reason=\"not_found\"}"),
        1.0,
        "{}",
        after
            .lines()
            .filter(|l| l.contains("rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        get("paramdb_request_duration_seconds_count{method=\"Push\"}"),
        12.0
    );
    assert_eq!(
        get("paramdb_request_duration_seconds_bucket{method=\"Pull\",le=\"+Inf\"}"),
        3.0
    );
    assert!(
        get("paramdb_fsync_duration_seconds_count") >= 1.0,
        "{after}"
    );
    for gauge in [
        "paramdb_checkpoint_age_seconds{shard=\"0\"}",
        "paramdb_cache_hit_ratio{shard=\"0\"}",
        "paramdb_dirty_rows{shard=\"0\"}",
    ] {
        assert!(
            after.lines().any(|l| l.starts_with(gauge)),
            "{gauge} missing"
        );
    }
    assert_eq!(get("paramdb_dirty_rows{shard=\"0\"}"), 50.0);

    // The server still serves, then stops cleanly; every log line it wrote is a JSON object.
    c.pull("m", &[1]).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    // With the metrics endpoint running, shutdown still checkpoints: nothing is left to
    // replay in the log.
    let store = paramdb_engine::Store::open_read_only(
        dir.path().join("data"),
        paramdb_engine::StoreOptions::default(),
    )
    .unwrap();
    let st = store.stats();
    assert_eq!(
        (st.dirty_rows, st.last_lsn),
        (0, st.checkpoint_lsn),
        "shutdown did not checkpoint"
    );
    drop(store);
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
    println!(
        "metrics: {} series after traffic; {} JSON log lines",
        after.lines().filter(|l| !l.starts_with('#')).count(),
        lines.len()
    );
}

/// `tests/python/validate_k8s.py` on a manifest directory: the files its ConfigMap holds
/// (in a temporary directory), what it printed, and the pods of each StatefulSet.
fn validate_manifests(dir: &str) -> (tempfile::TempDir, String, Vec<usize>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(crate::python::python())
        .arg(root.join("tests/python/validate_k8s.py"))
        .arg(root.join(dir))
        .arg(out_dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let replicas = std::fs::read_to_string(out_dir.path().join("replicas"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out_dir, printed, replicas)
}

/// deploy/kubernetes validated against the Kubernetes schemas (kubernetes-validate, PyPI),
/// and its ConfigMap read by paramdb's own parsers: the cluster file has one shard per replica
/// at the StatefulSet's stable names, and the server configuration has no unknown keys.
#[test]
fn kubernetes_manifests_validate_and_their_configuration_parses() {
    let (out_dir, printed_by_validator, replicas) = validate_manifests("deploy/kubernetes");
    assert_eq!(replicas.len(), 1, "one StatefulSet");
    let replicas = replicas[0];
    let map = ClusterMap::load(&out_dir.path().join("cluster.toml")).unwrap();
    let even = ClusterMap::even(&vec![String::new(); replicas]);
    assert_eq!(map.shards.len(), replicas);
    for (i, (s, e)) in map.shards.iter().zip(&even.shards).enumerate() {
        assert_eq!(s.range, e.range, "shard {i}");
        assert_eq!(s.address, format!("paramdb-{i}.paramdb:7070"));
    }
    let config = out_dir.path().join("server.toml");
    let printed =
        print_config(serve(&["--config", config.to_str().unwrap()]).env("PARAMDB_SHARD", "1"));
    for want in [
        "shard = 1",
        "listen = \"0.0.0.0:7070\"",
        "metrics_listen = \"0.0.0.0:9100\"",
        "log_format = \"json\"",
    ] {
        assert!(printed.contains(want), "{want:?} not in:\n{printed}");
    }
    println!("{printed_by_validator}");
}

/// deploy/kubernetes/replicated: a replica group (StatefulSet) per range, validated as
/// above, with the group checks (anti-affinity, a majority-keeping PodDisruptionBudget,
/// readiness from gRPC health, the replica from the pod index); its cluster file lists each
/// range's replicas at the pods' stable names, and a pod's configuration names its shard and
/// replica.
#[test]
fn replicated_kubernetes_manifests_validate_and_name_each_group_s_replicas() {
    let (out_dir, printed_by_validator, replicas) =
        validate_manifests("deploy/kubernetes/replicated");
    let map = ClusterMap::load(&out_dir.path().join("cluster.toml")).unwrap();
    assert_eq!(map.shards.len(), replicas.len(), "a group per range");
    let even = ClusterMap::even(&vec![String::new(); replicas.len()]);
    for (i, (s, e)) in map.shards.iter().zip(&even.shards).enumerate() {
        assert_eq!(s.range, e.range, "shard {i}");
        assert!(s.is_replicated(), "shard {i}");
        let want: Vec<String> = (0..replicas[i])
            .map(|r| format!("paramdb-s{i}-{r}.paramdb:7070"))
            .collect();
        assert_eq!(s.replicas, want, "shard {i}");
    }
    let config = out_dir.path().join("server.toml");
    let printed = print_config(
        serve(&["--config", config.to_str().unwrap()])
            .env("PARAMDB_SHARD", "2")
            .env("PARAMDB_REPLICA_INDEX", "1"),
    );
    for want in ["shard = 2", "replica = 2", "listen = \"0.0.0.0:7070\""] {
        assert!(printed.contains(want), "{want:?} not in:\n{printed}");
    }
    println!("{printed_by_validator}");
}
