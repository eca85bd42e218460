//! Several hosts: two shard servers each in its own network namespace (`ip netns`), joined to
//! the trainer's namespace by a veth pair, so each is a separate host reachable only at the
//! address the cluster file lists. A word2vec run (the demo's, through `--cluster`) trains
//! through both and must learn the planted structure. Needs root, as CI has.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};

use crate::cluster::paramdb_bin;

pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// While held, this host forwards between its links (`ip_forward` = 1), so that a process on
/// one netns host reaches a server on another. Tests in one process share it: the first
/// turns forwarding on, the last to drop its guard restores what was there.
pub(crate) struct Forwarding(());

/// How many guards are held, and `ip_forward` as it was before the first.
static FORWARDING: std::sync::Mutex<(usize, String)> = std::sync::Mutex::new((0, String::new()));

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Forwarding {
    pub(crate) fn on() -> Forwarding {
        let mut f = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 == 0 {
            f.1 = std::fs::read_to_string(IP_FORWARD).unwrap();
            std::fs::write(IP_FORWARD, "1").unwrap();
        }
        f.0 += 1;
        Forwarding(())
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let mut f = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
        f.0 -= 1;
        if f.0 == 0 {
            let _ = std::fs::write(IP_FORWARD, f.1.trim());
        }
    }
}

/// Network namespaces (and the servers in them), removed on drop.
struct Hosts {
    names: Vec<String>,
    servers: Vec<Child>,
    /// Held while this host routes between the hosts.
    forwarding: Option<Forwarding>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        self.forwarding = None;
        for n in &self.names {
            // Deleting a namespace also deletes the veth pair that reaches into it.
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// `n` hosts, each a network namespace with a shard server, joined to this host, and the
/// cluster map with the addresses the servers bound. `id` (0 or 1) keeps the names and
/// subnets of two tests in one process apart.
fn start_hosts(n: usize, dir: &std::path::Path, id: u32) -> (Hosts, ClusterMap) {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test creates network namespaces: run it as root (CI does)"
    );
    let pid = std::process::id();
    let tag = format!("{}{}", pid % 100_000, ["w", "n"][id as usize]);
    let net = 100 + 2 * (pid % 70) + id; // 10.<net>.<host>.0/30 per host
    let mut hosts = Hosts {
        names: Vec::new(),
        servers: Vec::new(),
        forwarding: None,
    };
    let host_ip = |i: usize| format!("10.{net}.{}.2", i + 1);
    for i in 0..n {
        let ns = format!("pdb{tag}h{i}");
        let (outer, inner) = (format!("pdb{tag}v{i}"), format!("pdb{tag}p{i}"));
        ip(&["netns", "add", &ns]);
        hosts.names.push(ns.clone());
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns]);
        let gateway = format!("10.{net}.{}.1", i + 1);
        ip(&["addr", "add", &format!("{gateway}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &ns, "ip"];
            a.extend_from_slice(args);
            ip(&a);
        };
        inside(&["addr", "add", &format!("{}/30", host_ip(i)), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        // Other hosts are reached through this one.
        inside(&["route", "add", "default", "via", &gateway]);
    }

    let server_file = dir.join("servers.toml");
    let ports: Vec<String> = (0..n).map(|i| format!("{}:0", host_ip(i))).collect();
    std::fs::write(&server_file, ClusterMap::even(&ports).to_toml()).unwrap();
    let mut map = ClusterMap::even(&ports);
    for (i, listen) in ports.iter().enumerate() {
        // `ip netns exec` execs the server: the child's pid is the server's.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &hosts.names[i]])
            .arg(paramdb_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join(format!("shard-{i}")))
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
    (hosts, map)
}

impl Hosts {
    /// Lets this host forward between the hosts' links (restored on drop), so that a process
    /// on one host reaches the server on another.
    fn route_between(&mut self) {
        self.forwarding = Some(Forwarding::on());
    }

    /// SIGTERMs the servers: they must exit 0.
    fn stop(&mut self) {
        for s in &self.servers {
            let _ = Command::new("kill")
                .args(["-TERM", &s.id().to_string()])
                .status();
        }
        for s in &mut self.servers {
            assert!(s.wait().unwrap().success());
        }
        self.servers.clear();
    }
}

#[test]
fn word2vec_trains_through_shards_on_separate_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hosts, map) = start_hosts(2, dir.path(), 0);
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
    hosts.stop();
}

/// Two trainer processes, each on its own host beside a shard, count one n-gram model through
/// the cluster: the rows (counts, context statistics, count-of-counts) are those one process
/// writes, and the ARPA exports hold the same lines.
#[test]
fn ngram_counts_from_two_processes_on_separate_hosts_equal_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (mut hosts, map) = start_hosts(2, dir.path(), 1);
    hosts.route_between();
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, map.to_toml()).unwrap();
    let corpus = dir.path().join("corpus.txt");
    crate::lm::markov_corpus(&corpus, 20_000, 400, 31);
    let order = 4;
    let count = |model: &str, process: usize, processes: usize| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &hosts.names[process]])
            .arg(paramdb_bin())
            .args([
                "train",
                "ngram-lm",
                "--kn-only",
                "--dev-every",
                "0",
                "--quiet",
            ])
            .args([
                "--order",
                &order.to_string(),
                "--model",
                model,
                "--memory",
                "256K",
            ])
            .args(["--process", &process.to_string()])
            .args(["--processes", &processes.to_string()])
            .arg("--train")
            .arg(&corpus)
            .arg("--cluster")
            .arg(&file)
            .arg("--temp-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let finish = |c: Child| {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let one = finish(count("one", 0, 1));
    // Process 1 starts first: it waits for process 0 to create the tables.
    let p1 = count("two", 1, 2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let p0 = count("two", 0, 2);
    let (out0, out1) = (finish(p0), finish(p1));
    let summary = |t: &str| {
        t.lines()
            .filter(|l| l.contains("n-grams"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(summary(&out0), summary(&one), "{out0}");
    assert_eq!(summary(&out1), summary(&one), "{out1}");

    let client = BlockingClient::connect(map.clone(), ClientOptions::default()).unwrap();
    let all = |table: &str| -> Vec<(u64, Vec<f32>)> {
        let mut rows = Vec::new();
        for b in client.pull_range(table, paramdb_client::KeyRange::all()) {
            let b = b.unwrap();
            for (k, v) in b.keys.iter().zip(b.values.chunks(b.dim as usize)) {
                rows.push((*k, v.to_vec()));
            }
        }
        rows
    };
    for k in 0..=order {
        let (a, b) = (all(&format!("one.kn{k}")), all(&format!("two.kn{k}")));
        assert!(!a.is_empty(), "order {k}");
        assert!(
            a == b,
            "order {k}: {} rows from one process, {} from two",
            a.len(),
            b.len()
        );
    }
    // Count-of-counts and totals; the processes' working rows are gone.
    let keys: Vec<u64> = (0..=300).collect();
    assert_eq!(
        client.pull("one.lm", &keys).unwrap(),
        client.pull("two.lm", &keys).unwrap()
    );
    let tables: Vec<String> = client
        .list_tables()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(!tables.iter().any(|t| t.contains(".part")), "{tables:?}");

    // The spellings: the same ARPA lines, in another order.
    let arpa = |model: &str| {
        let out = dir.path().join(format!("{model}.arpa"));
        let r = Command::new(paramdb_bin())
            .args(["export", model, "--format", "arpa", "--quiet", "--out"])
            .arg(&out)
            .arg("--cluster")
            .arg(&file)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        let mut lines: Vec<String> = std::fs::read_to_string(out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    let (a, b) = (arpa("one"), arpa("two"));
    assert!(a.len() > 1000);
    assert!(a == b, "the ARPA files differ");
    hosts.stop();
}
