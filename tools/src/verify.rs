//! `paramdb verify` and `paramdb log dump`: checks of a shard's files, run on a data
//! directory here (reading without locking or changing anything, so safe while a server runs
//! on it) or by each server of a cluster on its own directory.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use anyhow::{bail, Context};
use paramdb_engine::verify_dir;
use paramdb_engine::wal::dump::dump;
use serde_json::json;

use crate::target::{shard_dirs, Target};

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct LogDumpArgs {
    /// Which shard (of an embedded data directory or a cluster).
    #[arg(long, default_value_t = 0)]
    pub shard: usize,
    /// First LSN to show.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Stop after this many records.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let reports = if args.target.cluster.is_some() {
        args.target.connect_read_only()?.verify()?
    } else {
        shard_dirs(&args.target.data_dir)?
            .iter()
            .map(|d| verify_dir(d))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut out = std::io::stdout().lock();
    let problems: usize = reports.iter().map(|r| r.problems.len()).sum();
    if args.json {
        let shards: Vec<_> = reports
            .iter()
            .map(|r| {
                json!({
                    "dir": r.dir.display().to_string(),
                    "ok": r.ok(),
                    "checkpoint_lsn": r.checkpoint_lsn,
                    "segments": r.segments,
                    "records": r.records,
                    "log_bytes": r.log_bytes,
                    "tables": r.tables,
                    "rows": r.rows,
                    "sst_files": r.sst_files,
                    "notes": r.notes,
                    "problems": r.problems.iter().map(|p| json!({"area": p.area.name(), "detail": p.detail})).collect::<Vec<_>>(),
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({ "ok": problems == 0, "shards": shards }))?
        )?;
    } else {
        for r in &reports {
            writeln!(
                out,
                "{}: {}: log {} segments, {} records; rocksdb {} tables, {} rows, {} files",
                r.dir.display(),
                if r.ok() { "ok" } else { "DAMAGED" },
                r.segments,
                r.records,
                r.tables,
                r.rows,
                r.sst_files
            )?;
            for n in &r.notes {
                writeln!(out, "  note: {n}")?;
            }
            for p in &r.problems {
                writeln!(out, "  problem: {p}")?;
            }
        }
    }
    if problems > 0 {
        bail!(
            "{problems} problem{} found",
            if problems == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

pub fn log_dump(args: LogDumpArgs) -> anyhow::Result<()> {
    let (names, (records, trouble)) = if args.target.cluster.is_some() {
        let client = args.target.connect_read_only()?;
        let report = client.inspect(false)?;
        let names = report
            .get(args.shard)
            .map(|r| r.tables.iter().map(|t| (t.id, t.name.clone())).collect())
            .unwrap_or_default();
        (names, client.log_dump(args.shard, args.from, args.limit)?)
    } else {
        let dirs = shard_dirs(&args.target.data_dir)?;
        let dir = dirs.get(args.shard).with_context(|| {
            format!(
                "{} has {} shards; no shard {}",
                args.target.data_dir.display(),
                dirs.len(),
                args.shard
            )
        })?;
        // Table names when the catalog can be read; ids otherwise (it may be the broken one).
        let names: HashMap<u32, String> = paramdb_engine::table_names(dir)
            .map(|v| v.into_iter().collect())
            .unwrap_or_default();
        let wal = dir.join("wal");
        let dump = dump(&wal, args.from, args.limit as usize)
            .with_context(|| format!("reading {}", wal.display()))?;
        (names, dump)
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    if !args.json {
        writeln!(
            out,
            "{:>8} {:>10} {:>10} {:>5} {:>20} {:>10} {:<20} {:>8} {:>10}",
            "segment", "offset", "lsn", "type", "client", "seq", "table", "rows", "bytes"
        )?;
    }
    for r in &records {
        let table = names
            .get(&r.table)
            .cloned()
            .unwrap_or_else(|| format!("#{}", r.table));
        if args.json {
            writeln!(
                out,
                "{}",
                json!({
                    "segment": r.segment, "offset": r.offset, "lsn": r.lsn, "type": r.kind,
                    "client": r.client, "seq": r.seq, "table": table, "table_id": r.table,
                    "dim": r.dim, "rows": r.rows, "first_key": r.first_key, "bytes": r.bytes,
                })
            )?;
        } else {
            writeln!(
                out,
                "{:>8} {:>10} {:>10} {:>5} {:>20} {:>10} {table:<20} {:>8} {:>10}",
                r.segment, r.offset, r.lsn, r.kind, r.client, r.seq, r.rows, r.bytes
            )?;
        }
    }
    for t in &trouble {
        if args.json {
            writeln!(out, "{}", json!({ "trouble": t }))?;
        } else {
            writeln!(out, "{t}")?;
        }
    }
    Ok(out.flush()?)
}
