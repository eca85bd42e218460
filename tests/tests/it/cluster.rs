//! Shard server processes for the gRPC tests: `paramdb serve` on 127.0.0.1 with OS-chosen
//! ports, a cluster map with the ports they got, and cleanup on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};

pub use paramdb_tests::servers::paramdb_bin;

pub struct Cluster {
    _dir: tempfile::TempDir,
    cluster_file: PathBuf,
    extra: Vec<String>,
    pub procs: Vec<Child>,
    /// Ranges from the servers' cluster file, addresses as bound.
    pub map: ClusterMap,
}

impl Cluster {
    /// Starts `n` shards splitting the key space evenly; `extra` flags go to every server.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_with(ClusterMap::even(&vec!["127.0.0.1:0".to_string(); n]), extra)
    }

    pub fn start_with(server_map: ClusterMap, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster_file = dir.path().join("cluster.toml");
        std::fs::write(&cluster_file, server_map.to_toml()).expect("write cluster file");
        let mut map = server_map.clone();
        let mut procs = Vec::new();
        for i in 0..server_map.shards.len() {
            let (child, addr) = spawn_shard(dir.path(), &cluster_file, i, "127.0.0.1:0", extra);
            map.shards[i].address = addr;
            procs.push(child);
        }
        Cluster {
            _dir: dir,
            cluster_file,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            procs,
            map,
        }
    }

    /// Shard `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self._dir.path().join(format!("shard-{i}"))
    }

    /// SIGKILLs shard `i`'s server.
    pub fn kill(&mut self, i: usize) {
        self.procs[i].kill().expect("kill");
        self.procs[i].wait().expect("wait");
    }

    /// Starts shard `i` again on its data directory and address (after `kill`).
    pub fn restart(&mut self, i: usize) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, addr) = spawn_shard(
            self._dir.path(),
            &self.cluster_file,
            i,
            &self.map.shards[i].address,
            &extra,
        );
        assert_eq!(addr, self.map.shards[i].address);
        self.procs[i] = child;
    }

    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(self.map.clone(), ClientOptions::default()).expect("client")
    }

    /// SIGTERM every server and wait: they must exit 0.
    pub fn stop(mut self) {
        for p in &self.procs {
            let _ = Command::new("kill")
                .args(["-TERM", &p.id().to_string()])
                .status();
        }
        for p in self.procs.iter_mut() {
            let status = p.wait().expect("wait");
            assert!(status.success(), "shard exited with {status} after SIGTERM");
        }
        self.procs.clear();
    }
}

fn spawn_shard(dir: &Path, file: &Path, i: usize, listen: &str, extra: &[&str]) -> (Child, String) {
    paramdb_tests::servers::spawn_shard(&paramdb_bin(), dir, file, i, listen, extra)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}
