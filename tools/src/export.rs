//! `paramdb export TABLE --format …`: a table (or a key range of it) streamed to a file.
//! Rows are labelled with words when the table belongs to a word2vec model (`<model>.in` /
//! `<model>.out`, or `--vocab MODEL`), and then come most frequent word first, as every
//! word2vec tool writes them (`--order key` keeps key order). Memory stays bounded: key order
//! holds one block of rows at a time, and count order sorts within `--sort-memory` and merges
//! runs spilled beside the output beyond it (`sort`). The formats are in `sink`.

mod sink;
mod sort;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use paramdb_client::{BlockingClient, BlockingRows, ClientError, KeyRange, RowBlock};
use paramdb_trainer::vocab;

use sink::Sink;
pub use sink::{sibling, Format};
use sort::{Entry, Sorter};

use crate::target::Target;

/// The order rows are written in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Most frequent word first, ties by word; rows without a word last, by key.
    Count,
    /// Increasing key.
    Key,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The table to export (e.g. `w2v.in`).
    pub table: String,
    #[arg(long, value_enum)]
    pub format: Format,
    #[arg(long, short)]
    pub out: PathBuf,
    /// First key (inclusive).
    #[arg(long, default_value_t = 0)]
    pub start: u64,
    /// Last key (exclusive); the whole key space by default.
    #[arg(long, default_value_t = u64::MAX)]
    pub end: u64,
    /// Label rows with this word2vec model's vocabulary (default: the model the table's name
    /// names, if it has one).
    #[arg(long)]
    pub vocab: Option<String>,
    /// Row order: `count` (most frequent word first; the default when rows have a
    /// vocabulary) or `key`.
    #[arg(long, value_enum)]
    pub order: Option<Order>,
    /// Memory for sorting by count (bytes; K, M and G suffixes). A larger export is sorted in
    /// runs spilled to a temporary directory beside --out, then merged.
    #[arg(long, default_value = "256M", value_parser = parse_bytes)]
    pub sort_memory: u64,
    /// A delta: only the rows changed since a backup (a set, or a target directory's newest
    /// set), plus the keys deleted, expired or evicted since then, listed in `<out
    /// stem>.deleted.txt`. Or since LSNs, one per shard (`12,40,7`), as recent as the shards'
    /// retention of gone keys (`serve --gone-retention`, one day unless told).
    #[arg(long)]
    pub since: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub target: Target,
}

/// What a delta export is relative to.
#[derive(Debug, Clone)]
pub struct Since {
    /// Each shard's LSN: rows last pushed after it changed.
    pub lsns: Vec<u64>,
    /// The backup the LSNs are the end of, to find the keys deleted since.
    pub backup: Option<paramdb_engine::backup::BackupSet>,
}

impl Since {
    /// `--since`: LSNs (comma-separated, one per shard) or a backup's directory.
    fn parse(spec: &str, client: &BlockingClient) -> anyhow::Result<Since> {
        let map = client.inner().map();
        if let Ok(lsns) = spec
            .split(',')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<Vec<u64>, _>>()
        {
            if lsns.len() != map.shards.len() {
                bail!(
                    "--since {spec}: {} LSNs for {} shards (one per shard, in order)",
                    lsns.len(),
                    map.shards.len()
                );
            }
            return Ok(Since { lsns, backup: None });
        }
        let set = paramdb_engine::backup::find_set(Path::new(spec))?;
        let ranges: Vec<[u64; 2]> = set
            .shards
            .iter()
            .map(|s| [s.range.start, s.range.end])
            .collect();
        let ours: Vec<[u64; 2]> = map.shards.iter().map(|s| s.range).collect();
        if ranges != ours {
            bail!(
                "the backup {} has shards {ranges:?}; the target has {ours:?}",
                set.dir.display()
            );
        }
        Ok(Since {
            lsns: set.shards.iter().map(|s| s.end_lsn).collect(),
            backup: Some(set),
        })
    }
}

/// `123`, `64K`, `256M`, `4G` (powers of 1024) as bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: the suffix must be K, M, G or T")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M)"))?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("{s:?} is not a size (e.g. 512M)"));
    }
    Ok((n * mult as f64) as u64)
}

/// What to export, for the command and for callers such as `paramdb word2vec -output`.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub table: &'a str,
    pub format: Format,
    pub out: &'a Path,
    pub range: KeyRange,
    /// The model whose vocabulary labels the rows (`None`: the one the table's name names).
    pub vocab: Option<&'a str>,
    /// `None`: by count when there is a vocabulary, else by key.
    pub order: Option<Order>,
    pub sort_memory: u64,
    pub quiet: bool,
    /// A delta export: only what changed since.
    pub since: Option<Since>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub rows: u64,
    pub dim: usize,
    pub order: Order,
    /// Sorted runs spilled to disk (0 when the rows fit `sort_memory`).
    pub runs: usize,
    /// A delta: the keys (and deleted ranges) gone since, and the file listing them.
    pub deleted: Option<(u64, PathBuf)>,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.format.is_lm() {
        return lm_file(&args);
    }
    let client = args.target.connect_read_only()?;
    let since = args
        .since
        .as_deref()
        .map(|s| Since::parse(s, &client))
        .transpose()?;
    let req = Request {
        table: &args.table,
        format: args.format,
        out: &args.out,
        range: KeyRange::new(args.start, args.end),
        vocab: args.vocab.as_deref(),
        order: args.order,
        sort_memory: args.sort_memory,
        quiet: args.quiet,
        since,
    };
    if args.start >= args.end {
        bail!("--start {} is not below --end {}", args.start, args.end);
    }
    let w = export(&client, &req)?;
    println!(
        "exported {} rows of {} (dim {}) to {} as {:?}, in {} order",
        w.rows,
        args.table,
        w.dim,
        args.out.display(),
        args.format,
        match w.order {
            Order::Count => "count",
            Order::Key => "key",
        }
    );
    if let Some((n, path)) = &w.deleted {
        println!(
            "{n} keys deleted or expired since the {}, listed in {}",
            match req.since.as_ref().and_then(|s| s.backup.as_ref()) {
                Some(_) => "backup",
                None => "LSNs",
            },
            path.display()
        );
    }
    Ok(())
}

/// `paramdb export MODEL --format arpa|kn-compact`: the Kneser-Ney model named by the table
/// argument.
fn lm_file(args: &ExportArgs) -> anyhow::Result<()> {
    let what = match args.format {
        Format::Arpa => "an ARPA export",
        _ => "a compact export",
    };
    if args.since.is_some() || args.vocab.is_some() || args.order.is_some() {
        bail!("--since, --vocab and --order do not apply to {what}");
    }
    if (args.start, args.end) != (0, u64::MAX) {
        bail!("--start and --end do not apply to {what}: it writes the whole model");
    }
    if args.format == Format::KnCompact {
        return compact(args);
    }
    // The lookups go to the model's compact form (`ngram::arpa`); the servers are read in
    // order only.
    let client = args.target.connect_read_only()?;
    let model = &args.table;
    let started = std::time::Instant::now();
    let tmp = sibling(&args.out, ".arpa.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let bar = crate::progress::progress_bar(args.quiet, 0);
    let written = paramdb_trainer::ngram::arpa::write(&client, model, &mut out, &|done, total| {
        crate::progress::show(&bar, done, total)
    });
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
    };
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), args.out.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let counts: Vec<String> = written.grams[1..]
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{g} {}-grams", i + 1))
        .collect();
    println!(
        "exported {} as ARPA to {}: {} ({:.1} s)",
        paramdb_types::quote(model),
        args.out.display(),
        counts.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `paramdb export MODEL --format kn-compact`: the model's count rows, streamed once in key
/// order into the compact read-only form.
fn compact(args: &ExportArgs) -> anyhow::Result<()> {
    let client = args.target.connect_read_only()?;
    let model = &args.table;
    let started = std::time::Instant::now();
    let bar = crate::progress::progress_bar(args.quiet, 0);
    let built =
        paramdb_trainer::ngram::compact::write(&client, model, &args.out, &|done, total| {
            crate::progress::show(&bar, done, total)
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let rows: Vec<String> = built.rows[1..]
        .iter()
        .enumerate()
        .map(|(i, g)| format!("{g} of order {}", i + 1))
        .collect();
    println!(
        "exported {} in compact form to {}: {} bytes, rows {} ({:.1} s)",
        paramdb_types::quote(model),
        args.out.display(),
        built.bytes,
        rows.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Exports `req.table` through `client`.
pub fn export(client: &BlockingClient, req: &Request<'_>) -> anyhow::Result<Written> {
    let dim = client
        .describe_table(req.table)
        .with_context(|| format!("table {:?}", req.table))?
        .dim as usize;
    let model = crate::import::model_of(req.table, req.vocab);
    let vocab_table = model
        .as_deref()
        .map(vocab::table)
        .filter(|t| client.describe_table(t).is_ok());
    let order = match (req.order, &vocab_table) {
        (Some(Order::Count), None) => bail!(
            "--order count needs a vocabulary: {:?} belongs to no word2vec model (name one with --vocab MODEL)",
            req.table
        ),
        (Some(o), _) => o,
        (None, Some(_)) => Order::Count,
        (None, None) => Order::Key,
    };
    // The vocabulary is keyed like the vectors (by word hash), so it is read alongside them
    // in key order, a block at a time: memory does not grow with the vocabulary.
    let mut words = Words {
        rows: vocab_table.map(|t| client.pull_range(&t, req.range)),
        block: Vec::new(),
        pos: 0,
    };
    // Since LSNs, the keys gone since are asked for first: a key gone and then pushed again
    // is a changed row, and a deleted range's rows pushed since are all re-sent.
    let gone = match &req.since {
        Some(s) if s.backup.is_none() => Some(
            client
                .gone_since(req.table, req.range, &s.lsns)
                .with_context(|| format!("the keys of {:?} gone since", req.table))?,
        ),
        _ => None,
    };
    let bar = progress(client, req)?;
    let rows = || -> anyhow::Result<Box<dyn Iterator<Item = Result<RowBlock, ClientError>>>> {
        let Some(s) = &req.since else {
            return Ok(Box::new(client.pull_range(req.table, req.range)));
        };
        let deleted = gone.as_ref().map_or(&[][..], |g| &g.ranges[..]);
        let mut parts: Vec<BlockingRows> = Vec::new();
        let mut at = req.range.start;
        for r in deleted {
            if at < r.start {
                let part = KeyRange::new(at, r.start);
                parts.push(client.pull_range_since(req.table, part, &s.lsns)?);
            }
            parts.push(client.pull_range(req.table, *r));
            at = r.end;
        }
        if at < req.range.end {
            let part = KeyRange::new(at, req.range.end);
            parts.push(client.pull_range_since(req.table, part, &s.lsns)?);
        }
        Ok(Box::new(parts.into_iter().flatten()))
    };
    let mut sink = Sink::create(req.format, req.out, dim)?;
    let mut runs = 0;
    match order {
        Order::Key => {
            for block in rows()? {
                let block = block?;
                bar.inc(block.keys.len() as u64);
                for (&k, v) in block.keys.iter().zip(block.values.chunks(dim)) {
                    let label = match words.find(k)? {
                        Some((w, _)) => w.to_string(),
                        None => k.to_string(),
                    };
                    sink.row(&label, k, v)?;
                }
            }
        }
        Order::Count => {
            let parent = spill_dir(req.out);
            let budget = usize::try_from(req.sort_memory).unwrap_or(usize::MAX);
            let mut sorter = Sorter::new(dim, budget, parent);
            for block in rows()? {
                let block = block?;
                bar.inc(block.keys.len() as u64);
                for (&key, v) in block.keys.iter().zip(block.values.chunks(dim)) {
                    let (word, count) = match words.find(key)? {
                        Some((w, c)) => (Some(w.into()), c),
                        None => (None, 0),
                    };
                    sorter.push(Entry {
                        count,
                        word,
                        key,
                        values: v.into(),
                    })?;
                }
            }
            runs = sorter.runs();
            let mut label = String::new();
            sorter.finish(|e| {
                label.clear();
                match &e.word {
                    Some(w) => label.push_str(w),
                    None => label.push_str(&e.key.to_string()),
                }
                sink.row(&label, e.key, &e.values)
            })?;
        }
    }
    bar.finish_and_clear();
    let rows = sink.finish()?;
    let deleted = match (req.since.as_ref().and_then(|s| s.backup.as_ref()), gone) {
        (Some(set), _) => Some(write_deleted(client, set, req)?),
        (None, Some(g)) => Some(write_gone(&g, req)?),
        (None, None) => None,
    };
    Ok(Written {
        rows,
        dim,
        order,
        runs,
        deleted,
    })
}

/// The keys of `req.table` the backup `set` holds and the target no longer does (deleted,
/// expired or evicted since), one per line in key order in `<out stem>.deleted.txt`: both
/// key sets streamed in key order and merged, so memory stays at a block of each.
fn write_deleted(
    client: &BlockingClient,
    set: &paramdb_engine::backup::BackupSet,
    req: &Request<'_>,
) -> anyhow::Result<(u64, PathBuf)> {
    use std::io::Write;
    let backup = open_backup(set)?;
    let path = sibling(req.out, ".deleted.txt");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut n = 0;
    if backup.describe_table(req.table).is_ok() {
        let keys = |rows: BlockingRows| {
            rows.flat_map(|b| match b {
                Ok(b) => b.keys.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        };
        let mut now = keys(client.pull_range(req.table, req.range)).peekable();
        for k in keys(backup.pull_range(req.table, req.range)) {
            let k = k?;
            let mut gone = true;
            while let Some(c) = now.peek() {
                match c {
                    Ok(c) if *c < k => {
                        now.next();
                    }
                    Ok(c) => {
                        gone = *c != k;
                        break;
                    }
                    Err(_) => {
                        now.next().expect("peeked")?;
                    }
                }
            }
            if gone {
                writeln!(out, "{k}")?;
                n += 1;
            }
        }
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((n, path))
}

/// The keys and ranges gone since LSNs, in `<out stem>.deleted.txt`: the ranges first, a line
/// `START..END` each (every key from START up to END, END excluded), then a key a line.
fn write_gone(g: &paramdb_client::Gone, req: &Request<'_>) -> anyhow::Result<(u64, PathBuf)> {
    use std::io::Write;
    let path = sibling(req.out, ".deleted.txt");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    for r in &g.ranges {
        writeln!(out, "{}..{}", r.start, r.end)?;
    }
    for k in &g.keys {
        writeln!(out, "{k}")?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((g.keys.len() as u64, path))
}

/// A backup set's shards, opened read-only in this process with the set's key ranges.
fn open_backup(set: &paramdb_engine::backup::BackupSet) -> anyhow::Result<BlockingClient> {
    let mut map = paramdb_client::ClusterMap::even(
        &(0..set.shards.len())
            .map(|i| format!("backup-{i}"))
            .collect::<Vec<_>>(),
    );
    let mut stores = Vec::new();
    for (entry, s) in map.shards.iter_mut().zip(&set.shards) {
        entry.range = [s.range.start, s.range.end];
        let dir = set.shard_dir(s.index);
        let store = paramdb_engine::Store::open_read_only(&dir, Default::default())
            .with_context(|| format!("opening the backup's {}", dir.display()))?;
        stores.push(std::sync::Arc::new(store));
    }
    Ok(BlockingClient::embedded(
        map,
        stores,
        paramdb_client::ClientOptions::default(),
    )?)
}

/// The directory of `file`, where sorted runs are spilled (same file system as the output).
fn spill_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Calls `f` with every word of `model`'s vocabulary and its count, most frequent first, ties
/// by word, in bounded memory (runs spill into a temporary directory beside `beside`).
pub fn for_each_word_by_count(
    client: &BlockingClient,
    model: &str,
    beside: &Path,
    mut f: impl FnMut(&str, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut sorter = Sorter::new(0, 256 << 20, spill_dir(beside));
    for block in client.pull_range(&vocab::table(model), KeyRange::all()) {
        let block = block?;
        let dim = block.dim as usize;
        for (&key, row) in block.keys.iter().zip(block.values.chunks(dim)) {
            let (word, count) = vocab::decode(row)
                .with_context(|| format!("vocabulary row {key} does not decode"))?;
            if count > 0 {
                sorter.push(Entry {
                    count,
                    word: Some(word.into()),
                    key,
                    values: Box::new([]),
                })?;
            }
        }
    }
    sorter.finish(|e| f(e.word.as_deref().unwrap_or_default(), e.count))
}

/// A bar sized by the table's estimated rows (exact counts would read the table twice); drawn
/// only on a terminal.
fn progress(client: &BlockingClient, req: &Request<'_>) -> anyhow::Result<indicatif::ProgressBar> {
    if req.quiet {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let whole = req.range == KeyRange::new(0, u64::MAX);
    let estimate: u64 = if whole {
        client
            .inspect(false)?
            .iter()
            .flat_map(|r| r.tables.iter().filter(|t| t.name == req.table))
            .map(|t| t.rows)
            .sum()
    } else {
        0
    };
    let bar = indicatif::ProgressBar::new(estimate);
    bar.set_style(
        indicatif::ProgressStyle::with_template(if whole {
            "{bar:40} {human_pos}/~{human_len} rows  {elapsed} (eta {eta})"
        } else {
            "{spinner} {human_pos} rows  {elapsed}"
        })
        .expect("template"),
    );
    Ok(bar)
}

/// Words and counts for keys visited in increasing order, read from a vocabulary stream in
/// step.
struct Words {
    rows: Option<BlockingRows>,
    block: Vec<(u64, String, u64)>,
    pos: usize,
}

impl Words {
    /// The word and count of `key`, or `None` when the vocabulary has no word for it. Keys
    /// must come in increasing order.
    fn find(&mut self, key: u64) -> anyhow::Result<Option<(&str, u64)>> {
        loop {
            while self.block.get(self.pos).is_some_and(|(k, _, _)| *k < key) {
                self.pos += 1;
            }
            if self.pos < self.block.len() {
                let (k, w, c) = &self.block[self.pos];
                return Ok((*k == key).then_some((w.as_str(), *c)));
            }
            let Some(block) = self.rows.as_mut().and_then(|r| r.next()) else {
                return Ok(None);
            };
            let block = block?;
            let dim = block.dim as usize;
            self.block.clear();
            self.pos = 0;
            for (k, row) in block.keys.iter().zip(block.values.chunks(dim)) {
                let (w, count) = vocab::decode(row)
                    .with_context(|| format!("vocabulary row {k} does not decode"))?;
                // A zeroed row is a word that fell below the minimum count.
                if count > 0 {
                    self.block.push((*k, w, count));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("123"), Ok(123));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("256m"), Ok(256 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert!(parse_bytes("12Q").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1").is_err());
    }
}
