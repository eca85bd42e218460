//! `paramdb backup` and `paramdb restore`.
//!
//! A backup of embedded shards or of one server's data directory opens them (refused while a
//! server or trainer has them open) and backs each shard up at once. A backup of a running
//! cluster (`--cluster`) first cuts it consistently (`Client::fence_cut`: a write fence on
//! every shard, writes caught half-applied completed), then each shard server writes its part
//! into the target on its own host, so the target must be a path every shard's host can write
//! (one machine, or a shared mount). The set becomes a backup only once every part and the
//! set's manifest are durable (`paramdb_engine::backup::PendingSet`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paramdb_client::{BackupRequest, KeyRange, ShardBackup};
use paramdb_engine::backup::{find_set, restore_set, PendingSet};

use crate::inspect::human_bytes;
use crate::target::Target;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: Target,
    /// The target directory: it holds a set of backups (`backup-000001`, …); a new one reuses
    /// the unchanged files of the last.
    #[arg(long)]
    pub to: PathBuf,
    /// Copy every file instead of hard-linking the live table files (a backup that shares no
    /// inode with the data directory, as on another disk).
    #[arg(long)]
    pub copy: bool,
    /// How long the write fences of a cluster backup may stay up if this command dies.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub lease: Duration,
    /// How long to wait for writes caught on some shards but not yet on others.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub wait: Duration,
    /// Back up writes still on only some of their shards after --wait (their clients gave
    /// up on them) as the cluster holds them, and list them, instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A backup set (`…/backup-000002`), or a target directory (its newest complete set).
    #[arg(long)]
    pub from: PathBuf,
    /// A new or empty directory: one server's shard is restored into it, the shards of a
    /// cluster or of embedded shards into `shard-<i>` inside it.
    #[arg(long)]
    pub to: PathBuf,
}

fn duration(s: &str) -> Result<Duration, String> {
    let ms = match s.strip_suffix("ms") {
        Some(v) => v.parse::<u64>().map_err(|e| e.to_string())?,
        None => paramdb_client::parse_duration_secs(s)? * 1000,
    };
    if ms == 0 {
        return Err("must be more than zero".into());
    }
    Ok(Duration::from_millis(ms))
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(p))
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = args.target.connect_existing()?;
    let cluster = args.target.cluster.is_some();
    let nested =
        cluster || crate::target::shard_dirs(&args.target.data_dir)?[0] != args.target.data_dir;
    let root = absolute(&args.to)?;
    let pending = PendingSet::begin(&root)?;
    let map = client.inner().map().clone();
    let n = map.shards.len();
    // Short log parts: every shard writes its rows back first (writes go on meanwhile).
    client.checkpoint()?;
    let cut = if n > 1 {
        client.block_on(
            client
                .inner()
                .fence_cut(args.lease, args.wait, args.allow_partial),
        )?
    } else {
        paramdb_client::Cut {
            fences: vec![0],
            ..Default::default()
        }
    };
    let (fences, caught) = (&cut.fences, cut.caught);
    let cut_at = started.elapsed();
    let parts: Vec<Result<ShardBackup, _>> =
        client.block_on(futures::future::join_all((0..n).map(|i| {
            let req = BackupRequest {
                fence: fences[i],
                dest: pending.shard_dir(i as u32),
                previous: pending.previous_shard_dir(i as u32).filter(|d| d.is_dir()),
                copy: args.copy,
            };
            client.inner().backup_shard(i, req)
        })));
    let mut done = Vec::with_capacity(n);
    for (i, p) in parts.into_iter().enumerate() {
        match p {
            Ok(b) => done.push(b),
            Err(e) => {
                client.block_on(client.inner().unfence(fences));
                return Err(anyhow::Error::from(e).context(format!("backing up shard {i}")));
            }
        }
    }
    let ranges: Vec<(u32, KeyRange)> = map
        .shards
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, KeyRange::new(s.range[0], s.range[1])))
        .collect();
    let set = pending.commit(&ranges, nested)?;
    println!(
        "backup {} ({:.2} s; cut in {:.3} s, {caught} writes caught on some shards completed)",
        set.dir.display(),
        started.elapsed().as_secs_f64(),
        cut_at.as_secs_f64()
    );
    for (i, b) in done.iter().enumerate() {
        println!(
            "  shard {i}: LSN {} (rows at {}, log after), {} files, {}: copied {}, linked {}, reused {}",
            b.end_lsn,
            b.checkpoint_lsn,
            b.files,
            human_bytes(b.bytes),
            human_bytes(b.bytes_copied),
            human_bytes(b.bytes_linked),
            human_bytes(b.bytes_reused),
        );
    }
    for (c, s, have, parts) in &cut.partial {
        println!("  left partial: write {s} of client {c:#x}, on {have} of its {parts} shards");
    }
    let copied: u64 = done.iter().map(|b| b.bytes_copied).sum();
    let reused: u64 = done.iter().map(|b| b.bytes_reused).sum();
    println!("bytes copied {copied} reused {reused}");
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let set = find_set(&args.from)?;
    if set.shards.is_empty() {
        bail!("{} lists no shards", set.dir.display());
    }
    let dirs = restore_set(&set, &args.to)?;
    println!(
        "restored {} into {} (verified)",
        set.dir.display(),
        args.to.display()
    );
    for ((dir, range), s) in dirs.iter().zip(&set.shards) {
        println!(
            "  shard {}: {} range {range} at LSN {}",
            s.index,
            dir.display(),
            s.end_lsn
        );
    }
    Ok(())
}
