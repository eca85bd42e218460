//! Shard server processes for benchmarks: `paramdb serve` on 127.0.0.1 with OS-chosen ports.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use paramdb_client::ClusterMap;

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
        let mut child = Command::new(paramdb)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join(format!("shard-{i}")))
            .args(["--listen", "127.0.0.1:0", "--shard"])
            .arg(i.to_string())
            .arg("--cluster")
            .arg(&file)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("paramdb serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening line");
        map.shards[i].address = line.trim().rsplit(' ').next().expect("address").to_string();
        procs.0.push(child);
    }
    let client_file = dir.join("cluster.toml");
    std::fs::write(&client_file, map.to_toml()).expect("cluster file");
    (procs, client_file)
}
