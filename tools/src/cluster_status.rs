//! `paramdb cluster status`: each shard's replicas, who leads, the term, and each replica's
//! applied entry and lag behind the leader's last entry. `paramdb cluster set-members`: a
//! shard's group made what the cluster file lists.

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

#[derive(clap::Args, Debug)]
pub struct SetMembersArgs {
    /// The cluster file, listing the shard's replicas as they are to be (`replicas`, and
    /// `replica_ids` when ids are not 1, 2, 3, …). The group's leader must be among them.
    #[arg(long, env = "PARAMDB_CLUSTER")]
    cluster: PathBuf,
    /// The shard whose group changes.
    #[arg(long)]
    shard: usize,
    /// How long a new replica may take to catch up (it may be rebuilt from a snapshot).
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

pub fn set_members(args: SetMembersArgs) -> anyhow::Result<()> {
    let map = ClusterMap::load(&args.cluster)?;
    let Some(entry) = map.shards.get(args.shard) else {
        anyhow::bail!(
            "{} has no shard {} ({} shards)",
            args.cluster.display(),
            args.shard,
            map.shards.len()
        );
    };
    if !entry.is_replicated() {
        anyhow::bail!(
            "shard {} of {} is not replicated (it has an `address`, not `replicas`)",
            args.shard,
            args.cluster.display()
        );
    }
    let members: Vec<(u64, String)> = entry
        .members()
        .into_iter()
        .map(|(id, a)| (id, a.to_string()))
        .collect();
    let client = BlockingClient::connect(
        map.clone(),
        ClientOptions {
            timeout: std::time::Duration::from_secs(args.timeout_secs),
            ..ClientOptions::default()
        },
    )
    .with_context(|| format!("connecting to {}", args.cluster.display()))?;
    let st = client
        .set_members(args.shard, members)
        .with_context(|| format!("changing shard {}'s replica group", args.shard))?;
    let now: Vec<String> = st
        .members
        .iter()
        .map(|(id, address, _)| format!("{id} at {address}"))
        .collect();
    println!(
        "shard {}: replicas {} (replica {} leads, term {})",
        args.shard,
        now.join(", "),
        st.id,
        st.term
    );
    Ok(())
}
