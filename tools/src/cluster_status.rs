//! `paramdb cluster status`: each shard's replicas, who leads, the term, and each replica's
//! applied entry and lag behind the leader's last entry.

use std::path::PathBuf;

use anyhow::Context;
use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The cluster file.
    #[arg(long, env = "PARAMDB_CLUSTER")]
    cluster: PathBuf,
    /// One JSON object per replica instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let map = ClusterMap::load(&args.cluster)?;
    let client = BlockingClient::connect(map.clone(), ClientOptions::default())
        .with_context(|| format!("connecting to {}", args.cluster.display()))?;
    if !args.json {
        println!(
            "{:<6} {:<22} {:<3} {:<10} {:>6} {:>6} {:>10} {:>8}  log",
            "shard", "replica", "id", "role", "term", "leader", "applied", "lag"
        );
    }
    for (shard, replicas) in client.replica_status().into_iter().enumerate() {
        // The lag is behind the newest entry any replica of the group has logged.
        let newest = replicas
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok().and_then(|i| i.last_log))
            .max();
        for (addr, r) in replicas {
            match r {
                Ok(i) => {
                    let lag = match (newest, i.applied) {
                        (Some(n), Some(a)) => Some(n.saturating_sub(a)),
                        (Some(n), None) => Some(n + 1),
                        _ => None,
                    };
                    if args.json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "shard": shard, "address": addr, "id": i.id, "role": i.role,
                                "term": i.term, "leader": i.leader, "applied": i.applied,
                                "first_log": i.first_log, "last_log": i.last_log, "lag": lag,
                            })
                        );
                    } else {
                        let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
                        println!(
                            "{:<6} {:<22} {:<3} {:<10} {:>6} {:>6} {:>10} {:>8}  {}..{}",
                            shard,
                            addr,
                            i.id,
                            i.role,
                            i.term,
                            opt(i.leader),
                            opt(i.applied),
                            opt(lag),
                            opt(i.first_log),
                            opt(i.last_log)
                        );
                    }
                }
                Err(e) => {
                    if args.json {
                        println!(
                            "{}",
                            serde_json::json!({"shard": shard, "address": addr, "error": e.to_string()})
                        );
                    } else {
                        println!("{shard:<6} {addr:<22} unreachable: {e}");
                    }
                }
            }
        }
    }
    Ok(())
}
