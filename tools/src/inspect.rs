//! Reading commands (`inspect`, `get`, `scan`) and the two maintenance calls (`checkpoint`,
//! `compact`). Reading commands go through the client: to a running cluster, or to a data
//! directory opened read-only, which is safe while a server runs on it.

use std::io::{BufWriter, Write};

use anyhow::{bail, Context};
use paramdb_client::KeyRange;
use paramdb_client::ShardReport;
use paramdb_trainer::keys::word_key;
use serde_json::json;

use crate::target::Target;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Count every table's rows with a scan (reads the whole table) instead of estimating.
    #[arg(long)]
    pub exact: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    pub table: String,
    /// Keys to read.
    pub keys: Vec<u64>,
    /// Words to read (their keys are the words' hashes, as the word2vec trainer stores them).
    #[arg(long = "word", num_args = 1..)]
    pub words: Vec<String>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    pub table: String,
    /// Keys to delete.
    pub keys: Vec<u64>,
    /// Words to delete (a word2vec model's tables are keyed by the words' hashes).
    #[arg(long = "word", num_args = 1..)]
    pub words: Vec<String>,
    /// Every key in `START..END` (end exclusive; either side may be left out).
    #[arg(long)]
    pub range: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct LifecycleArgs {
    pub table: String,
    /// Rows not pushed for this long expire (`90s`, `30m`, `12h`, `7d`, `2w`).
    #[arg(long, value_parser = paramdb_client::parse_duration_secs)]
    pub ttl: Option<u64>,
    /// Remove the TTL (rows expired under it stay gone).
    #[arg(long, conflicts_with = "ttl")]
    pub no_ttl: bool,
    /// A key gets a stored row only from its N-th push (2 to 255; 1 turns admission off).
    #[arg(long)]
    pub admit_after: Option<u32>,
    /// Cap each shard's part of the table at about N rows, evicting the least recently pushed.
    #[arg(long)]
    pub max_rows: Option<u64>,
    /// Remove the size cap.
    #[arg(long, conflicts_with = "max_rows")]
    pub no_max_rows: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    pub table: String,
    /// `START..END` (end exclusive; either side may be left out).
    #[arg(long, default_value = "..")]
    pub range: String,
    /// Stop after this many rows.
    #[arg(long)]
    pub limit: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub target: Target,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let client = args.target.connect_read_only()?;
    let reports = client.inspect(args.exact)?;
    let ranges: Vec<(u64, u64)> = client
        .inner()
        .cluster()
        .shards
        .iter()
        .map(|s| (s.range[0], s.range[1]))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let shards: Vec<_> = reports
            .iter()
            .zip(&ranges)
            .enumerate()
            .map(|(i, (r, range))| shard_json(i, *range, r))
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({ "shards": shards }))?
        )?;
        return Ok(());
    }
    for (i, (r, (start, end))) in reports.iter().zip(&ranges).enumerate() {
        writeln!(
            out,
            "shard {i}  keys [{start}, {end})  {}{}",
            r.dir.display(),
            if r.read_only {
                "  (opened read-only)"
            } else {
                ""
            }
        )?;
        writeln!(
            out,
            "  formats: store {}, log {}, row {}, cache {}",
            r.store_format, r.log_format, r.row_format, r.cache_format
        )?;
        writeln!(
            out,
            "  checkpoint LSN {}, last LSN {}, {} rows changed since",
            r.checkpoint_lsn, r.last_lsn, r.dirty_rows
        )?;
        writeln!(
            out,
            "  log: {} segments, {}; rocksdb: {}; cache files: {}",
            r.log_segments,
            human_bytes(r.log_bytes),
            human_bytes(r.rocksdb_bytes),
            human_bytes(r.cache_file_bytes)
        )?;
        if r.read_only {
            writeln!(
                out,
                "  cache hit rate: n/a (read from the directory, not a server)"
            )?;
        } else {
            let c = &r.cache;
            writeln!(
                out,
                "  cache: {:.1}% hits of {} lookups, {} rows resident, budget {}",
                100.0 * c.hit_rate(),
                c.hits + c.misses,
                c.resident_rows,
                human_bytes(c.budget_bytes)
            )?;
        }
        writeln!(
            out,
            "  {:<24} {:>4} {:>5} {:<36} {:>12} {:>10} {:>8} {:>23}",
            "table", "id", "dim", "rule", "rows", "on disk", "B/param", "keys"
        )?;
        for t in &r.tables {
            let rows = if t.rows_exact {
                t.rows.to_string()
            } else {
                format!("~{}", t.rows)
            };
            let keys = t
                .key_range
                .map_or_else(|| "-".to_string(), |(a, b)| format!("{a}..={b}"));
            let bpp = t
                .bytes_per_parameter()
                .map_or_else(|| "-".to_string(), |b| format!("{b:.2}"));
            writeln!(
                out,
                "  {:<24} {:>4} {:>5} {:<36} {:>12} {:>10} {:>8} {:>23}",
                t.name,
                t.id,
                t.dim,
                t.rule,
                rows,
                human_bytes(t.sst_bytes),
                bpp,
                keys
            )?;
            if t.lifecycle != "none" && !t.lifecycle.is_empty() {
                let c = &t.lifecycle_counts;
                writeln!(
                    out,
                    "    lifecycle {}: {} admitted, {} pushes not admitted, {} expired, {} evicted",
                    t.lifecycle, c.admitted, c.unadmitted, c.expired, c.evicted
                )?;
            }
        }
    }
    Ok(())
}

fn shard_json(index: usize, range: (u64, u64), r: &ShardReport) -> serde_json::Value {
    let tables: Vec<_> = r
        .tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "id": t.id,
                "dim": t.dim,
                "rule": t.rule,
                "floats_per_row": t.floats_per_row,
                "rows": t.rows,
                "rows_exact": t.rows_exact,
                "sst_files": t.sst_files,
                "sst_bytes": t.sst_bytes,
                "bytes_per_parameter": t.bytes_per_parameter(),
                "dirty_rows": t.dirty_rows,
                "first_key": t.key_range.map(|k| k.0),
                "last_key": t.key_range.map(|k| k.1),
                "lifecycle": t.lifecycle,
                "rows_admitted": t.lifecycle_counts.admitted,
                "rows_unadmitted": t.lifecycle_counts.unadmitted,
                "rows_expired": t.lifecycle_counts.expired,
                "rows_evicted": t.lifecycle_counts.evicted,
            })
        })
        .collect();
    json!({
        "shard": index,
        "range": [range.0, range.1],
        "dir": r.dir.display().to_string(),
        "read_only": r.read_only,
        "formats": {
            "store": r.store_format,
            "log": r.log_format,
            "row": r.row_format,
            "cache": r.cache_format,
        },
        "checkpoint_lsn": r.checkpoint_lsn,
        "last_lsn": r.last_lsn,
        "dirty_rows": r.dirty_rows,
        "log_segments": r.log_segments,
        "log_bytes": r.log_bytes,
        "rocksdb_bytes": r.rocksdb_bytes,
        "cache_file_bytes": r.cache_file_bytes,
        "cache": {
            "budget_bytes": r.cache.budget_bytes,
            "resident_rows": r.cache.resident_rows,
            "hits": r.cache.hits,
            "misses": r.cache.misses,
            "hit_rate": if r.read_only { None } else { Some(r.cache.hit_rate()) },
        },
        "tables": tables,
    })
}

pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One row as a text line (`key<TAB>v1 v2 …`, floats printed so they read back exactly) or a
/// JSON object.
fn write_row(
    out: &mut impl Write,
    json: bool,
    key: u64,
    word: Option<&str>,
    values: &[f32],
) -> std::io::Result<()> {
    if json {
        let mut v = json!({ "key": key, "values": values });
        if let Some(w) = word {
            v["word"] = json!(w);
        }
        return writeln!(out, "{v}");
    }
    if let Some(w) = word {
        write!(out, "{w}\t")?;
    }
    write!(out, "{key}\t")?;
    for (i, x) in values.iter().enumerate() {
        if i > 0 {
            out.write_all(b" ")?;
        }
        write!(out, "{x:?}")?;
    }
    writeln!(out)
}

pub fn get(args: GetArgs) -> anyhow::Result<()> {
    if args.keys.is_empty() && args.words.is_empty() {
        bail!("give keys, or words with --word");
    }
    let client = args.target.connect_read_only()?;
    let dim = client
        .describe_table(&args.table)
        .with_context(|| format!("table {:?}", args.table))?
        .dim as usize;
    let mut wanted: Vec<(u64, Option<&str>)> = args.keys.iter().map(|&k| (k, None)).collect();
    wanted.extend(args.words.iter().map(|w| (word_key(w), Some(w.as_str()))));
    let keys: Vec<u64> = wanted.iter().map(|w| w.0).collect();
    let values = client.pull(&args.table, &keys)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    for ((key, word), row) in wanted.iter().zip(values.chunks_exact(dim)) {
        write_row(&mut out, args.json, *key, *word, row)?;
    }
    out.flush()?;
    Ok(())
}

/// `START..END`, either side optional.
fn parse_range(s: &str) -> anyhow::Result<KeyRange> {
    let (a, b) = s
        .split_once("..")
        .with_context(|| format!("range {s:?} is not START..END"))?;
    let num = |v: &str, default: u64| -> anyhow::Result<u64> {
        let v = v.trim();
        if v.is_empty() {
            Ok(default)
        } else {
            v.parse()
                .with_context(|| format!("{v:?} in range {s:?} is not a key"))
        }
    };
    let (start, end) = (num(a, 0)?, num(b, u64::MAX)?);
    if start >= end {
        bail!("range {s:?} is empty");
    }
    Ok(KeyRange::new(start, end))
}

pub fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let mut keys = args.keys.clone();
    keys.extend(
        args.words
            .iter()
            .map(|w| paramdb_trainer::keys::word_key(w)),
    );
    if keys.is_empty() && args.range.is_none() {
        anyhow::bail!("name keys, --word WORD or --range START..END to delete");
    }
    let client = args.target.connect_existing()?;
    client
        .describe_table(&args.table)
        .with_context(|| format!("table {:?}", args.table))?;
    if !keys.is_empty() {
        client.delete(&args.table, &keys)?;
        println!("deleted {} keys of {}", keys.len(), args.table);
    }
    if let Some(r) = &args.range {
        let range = parse_range(r)?;
        client.delete_range(&args.table, range)?;
        println!("deleted the keys {range} of {}", args.table);
    }
    Ok(())
}

/// Shows a table's lifecycle policies, or changes the ones named (the others stay).
pub fn lifecycle(args: LifecycleArgs) -> anyhow::Result<()> {
    let client = args.target.connect_existing()?;
    let spec = client
        .describe_table(&args.table)
        .with_context(|| format!("table {:?}", args.table))?;
    let mut l = spec.lifecycle;
    let changes = args.ttl.is_some()
        || args.no_ttl
        || args.admit_after.is_some()
        || args.max_rows.is_some()
        || args.no_max_rows;
    if args.no_ttl {
        l.ttl_secs = None;
    }
    if let Some(t) = args.ttl {
        l.ttl_secs = Some(t);
    }
    if let Some(n) = args.admit_after {
        l.admit_after = if n <= 1 { 0 } else { n };
    }
    if args.no_max_rows {
        l.max_rows = None;
    }
    if let Some(m) = args.max_rows {
        l.max_rows = Some(m);
    }
    if changes {
        l.validate().map_err(|e| anyhow::anyhow!("{}", e.reason))?;
        client.set_lifecycle(&args.table, l)?;
    }
    println!("{}: {l}", args.table);
    Ok(())
}

pub fn scan(args: ScanArgs) -> anyhow::Result<()> {
    let range = parse_range(&args.range)?;
    let client = args.target.connect_read_only()?;
    client
        .describe_table(&args.table)
        .with_context(|| format!("table {:?}", args.table))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut n = 0u64;
    'blocks: for block in client.pull_range(&args.table, range) {
        let block = block?;
        let dim = block.dim as usize;
        for (k, row) in block.keys.iter().zip(block.values.chunks_exact(dim)) {
            if args.limit.is_some_and(|l| n >= l) {
                break 'blocks;
            }
            match write_row(&mut out, args.json, *k, None, row) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r?,
            }
            n += 1;
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

pub fn checkpoint(args: AdminArgs) -> anyhow::Result<()> {
    let client = args.target.connect_existing()?;
    for (i, lsn) in client.checkpoint()?.iter().enumerate() {
        println!("shard {i}: checkpoint at LSN {lsn}");
    }
    Ok(())
}

pub fn compact(args: AdminArgs) -> anyhow::Result<()> {
    let client = args.target.connect_existing()?;
    let before: u64 = client.inspect(false)?.iter().map(|r| r.rocksdb_bytes).sum();
    client.compact()?;
    let after: u64 = client.inspect(false)?.iter().map(|r| r.rocksdb_bytes).sum();
    println!(
        "compacted: rocksdb {} -> {}",
        human_bytes(before),
        human_bytes(after)
    );
    Ok(())
}
