//! Shard server processes for benchmarks: `paramdb serve` on 127.0.0.1 with OS-chosen ports,
//! unreplicated or in replica groups.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use paramdb_client::ClusterMap;

/// The `paramdb` binary beside the running test or bench binary (both live in
/// `target/<profile>/deps/`), built by `cargo build --release --workspace --bins`, which `make
/// test` runs first: `cargo test` builds a package's binaries only for its own integration tests.
pub fn paramdb_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("paramdb"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --release --workspace --bins` (`make test` does it first)",
        bin.display()
    );
    bin
}

/// Starts `paramdb serve` for shard `i` of `cluster_file` with its data in `dir/shard-<i>`,
/// listening on `listen`; returns it and the address it bound.
pub fn spawn_shard(
    paramdb: &Path,
    dir: &Path,
    cluster_file: &Path,
    i: usize,
    listen: &str,
    extra: &[&str],
) -> (Child, String) {
    spawn_serve(
        paramdb,
        &dir.join(format!("shard-{i}")),
        cluster_file,
        i,
        listen,
        extra,
        Stdio::inherit(),
    )
}

/// Starts `paramdb serve` for shard `i` with its data in `data_dir`, once it listens; returns
/// it and the address it bound.
fn spawn_serve(
    paramdb: &Path,
    data_dir: &Path,
    cluster_file: &Path,
    i: usize,
    listen: &str,
    extra: &[&str],
    stderr: Stdio,
) -> (Child, String) {
    let mut child = Command::new(paramdb)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", listen, "--shard", &i.to_string(), "--cluster"])
        .arg(cluster_file)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn paramdb serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read listening line");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("unexpected first line from shard {i}: {line:?}"))
        .to_string();
    (child, addr)
}

/// Running servers; killed on drop.
#[derive(Debug)]
pub struct Servers(pub Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `n` shards of an even split under `dir` with `extra` flags; returns them and a
/// cluster file with the addresses they bound.
pub fn start(paramdb: &Path, dir: &Path, n: usize, extra: &[&str]) -> (Servers, PathBuf) {
    let server_map = ClusterMap::even(&vec!["127.0.0.1:0".to_string(); n]);
    let file = dir.join("servers.toml");
    std::fs::write(&file, server_map.to_toml()).expect("cluster file");
    let mut map = server_map.clone();
    let mut procs = Servers(Vec::new());
    for i in 0..n {
        let (child, addr) = spawn_shard(paramdb, dir, &file, i, "127.0.0.1:0", extra);
        map.shards[i].address = addr;
        procs.0.push(child);
    }
    let client_file = dir.join("cluster.toml");
    std::fs::write(&client_file, map.to_toml()).expect("cluster file");
    (procs, client_file)
}

/// `shards` key ranges, each a replica group of `replicas` `paramdb serve --replica`
/// processes (data in `dir/shard-<s>-replica-<r>`); returns them and the cluster file. The
/// groups elect their leaders on their own: the first calls retry until they have.
pub fn start_groups(
    paramdb: &Path,
    dir: &Path,
    shards: usize,
    replicas: usize,
    extra: &[&str],
) -> (Servers, PathBuf) {
    let mut map = ClusterMap::even(&vec![String::new(); shards]);
    let addrs = free_addresses(shards * replicas);
    for (i, s) in map.shards.iter_mut().enumerate() {
        s.address.clear();
        s.replicas = addrs[i * replicas..(i + 1) * replicas].to_vec();
    }
    let file = dir.join("cluster.toml");
    std::fs::write(&file, map.to_toml()).expect("cluster file");
    let mut procs = Servers(Vec::new());
    for (s, entry) in map.shards.iter().enumerate() {
        for (r, addr) in entry.replicas.iter().enumerate() {
            let id = (r + 1).to_string();
            let args: Vec<&str> = ["--replica", id.as_str()]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            let data_dir = dir.join(format!("shard-{s}-replica-{id}"));
            let (child, _) = spawn_serve(paramdb, &data_dir, &file, s, addr, &args, Stdio::null());
            procs.0.push(child);
        }
    }
    (procs, file)
}

/// `n` addresses on 127.0.0.1 with ports the OS picks, released for servers to bind: a
/// replicated shard's cluster file names every replica before any starts.
pub fn free_addresses(n: usize) -> Vec<String> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect()
}
