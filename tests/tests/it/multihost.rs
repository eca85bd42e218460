//! Several hosts: two shard servers each in its own network namespace (`ip netns`), joined to
//! the trainer's namespace by a veth pair, so each is a separate host reachable only at the
//! address the cluster file lists. A word2vec run (the demo's, through `--cluster`) trains
//! through both and must learn the planted structure. Needs root, as CI has.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};

use crate::cluster::paramdb_bin;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces (and the servers in them), removed on drop.
struct Hosts {
    names: Vec<String>,
    servers: Vec<Child>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in &self.names {
            // Deleting a namespace also deletes the veth pair that reaches into it.
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn word2vec_trains_through_shards_on_separate_hosts() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test creates network namespaces: run it as root (CI does)"
    );
    let pid = std::process::id();
    let tag = pid % 100_000;
    let net = 100 + pid % 100; // 10.<net>.<host>.0/30 per host
    let mut hosts = Hosts {
        names: Vec::new(),
        servers: Vec::new(),
    };
    let host_ip = |i: usize| format!("10.{net}.{}.2", i + 1);
    for i in 0..2 {
        let ns = format!("pdb{tag}h{i}");
        let (outer, inner) = (format!("pdb{tag}v{i}"), format!("pdb{tag}p{i}"));
        ip(&["netns", "add", &ns]);
        hosts.names.push(ns.clone());
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns]);
        ip(&[
            "addr",
            "add",
            &format!("10.{net}.{}.1/30", i + 1),
            "dev",
            &outer,
        ]);
        ip(&["link", "set", &outer, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("{}/30", host_ip(i)), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    let server_file = dir.path().join("servers.toml");
    let ports: Vec<String> = (0..2).map(|i| format!("{}:0", host_ip(i))).collect();
    std::fs::write(&server_file, ClusterMap::even(&ports).to_toml()).unwrap();
    let mut map = ClusterMap::even(&ports);
    for (i, listen) in ports.iter().enumerate() {
        // `ip netns exec` execs the server: the child's pid is the server's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &hosts.names[i]])
            .arg(paramdb_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join(format!("shard-{i}")))
            .args(["--listen", listen, "--shard", &i.to_string()])
            .arg("--cluster")
            .arg(&server_file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(addr.starts_with(&host_ip(i)), "{line}");
        map.shards[i].address = addr;
        hosts.servers.push(child);
    }
    // Separate hosts: a server's port is not open on this host's loopback.
    for s in &map.shards {
        let port = s.address.rsplit(':').next().unwrap();
        assert!(
            TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
            "{} is reachable on this host's loopback",
            s.address
        );
    }
    let trainer_file = dir.path().join("cluster.toml");
    std::fs::write(&trainer_file, map.to_toml()).unwrap();

    let out = Command::new(paramdb_bin())
        .args(["demo", "--sentences", "20000", "--epochs", "3", "--cluster"])
        .arg(&trainer_file)
        .arg("--data-dir")
        .arg(dir.path().join("work"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("against the cluster in"), "{text}");

    // Both hosts hold rows of the model.
    let client = BlockingClient::connect(map.clone(), ClientOptions::default()).unwrap();
    let stats = client.stats().unwrap();
    for s in &stats {
        assert!(s.store.rows_pushed > 1000, "shard {}: {s:?}", s.shard);
    }
    println!(
        "hosts {} and {}: rows pushed {} and {}; {}",
        map.shards[0].address,
        map.shards[1].address,
        stats[0].store.rows_pushed,
        stats[1].store.rows_pushed,
        text.lines()
            .find(|l| l.contains("nearest neighbours"))
            .unwrap_or_default()
    );
    for s in &hosts.servers {
        let _ = Command::new("kill")
            .args(["-TERM", &s.id().to_string()])
            .status();
    }
    for s in &mut hosts.servers {
        assert!(s.wait().unwrap().success());
    }
    hosts.servers.clear();
}
