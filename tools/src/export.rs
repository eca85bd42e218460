//! `paramdb export TABLE --format …`: a table (or a key range of it) streamed to a file in
//! key order, holding one block of rows at a time. Rows are labelled with words when the
//! table belongs to a word2vec model (`<model>.in` / `<model>.out`, or `--vocab MODEL`).
//!
//! - `word2vec-text`, `word2vec-bin`: gensim's `load_word2vec_format` reads them.
//! - `npy`: the vectors as float32 `(rows, dim)` in OUT, the keys as uint64 in
//!   `<stem>.keys.npy`.
//! - `safetensors`: one file with tensors `vectors` (F32, rows × dim) and `keys` (U64).
//! - `tsv`: vectors in OUT and labels in `<stem>.metadata.tsv`, for TensorBoard's projector.
//!
//! Formats whose header holds the row count get a fixed-width header that is filled in at the
//! end, so nothing is read twice.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use paramdb_client::{BlockingRows, KeyRange};
use paramdb_trainer::vocab;

use crate::target::Target;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Word2vecText,
    Word2vecBin,
    Npy,
    Safetensors,
    Tsv,
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
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub target: Target,
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}{suffix}"))
}

/// `.npy` header for `shape`, padded so the data starts at a multiple of 64 bytes. The row
/// count is written in a fixed-width field so the header can be rewritten in place.
fn npy_header(descr: &str, rows: u64, dim: Option<usize>) -> Vec<u8> {
    let shape = match dim {
        Some(d) => format!("({rows:<20}, {d})"),
        None => format!("({rows:<20},)"),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let len = (10 + dict.len() + 1).next_multiple_of(64) - 10;
    h.extend_from_slice(&(len as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(10 + len - 1, b' ');
    h.push(b'\n');
    h
}

fn safetensors_header(rows: u64, dim: usize) -> Vec<u8> {
    let vec_bytes = rows * dim as u64 * 4;
    let json = format!(
        "{{\"vectors\":{{\"dtype\":\"F32\",\"shape\":[{rows},{dim}],\"data_offsets\":[0,{vec_bytes}]}},\
         \"keys\":{{\"dtype\":\"U64\",\"shape\":[{rows}],\"data_offsets\":[{vec_bytes},{}]}}}}",
        vec_bytes + rows * 8
    );
    // Fixed size, padded with spaces (allowed by the format), so it can be rewritten in place.
    let mut j = json.into_bytes();
    j.resize(256, b' ');
    let mut h = (j.len() as u64).to_le_bytes().to_vec();
    h.extend_from_slice(&j);
    h
}

fn w2v_header(rows: u64, dim: usize) -> Vec<u8> {
    format!("{rows:<20} {dim}\n").into_bytes()
}

/// Words for keys visited in increasing order, read from a vocabulary stream in step.
struct Labels {
    rows: Option<BlockingRows>,
    block: Vec<(u64, String)>,
    pos: usize,
}

impl Labels {
    /// The word of `key`, or the key itself when the vocabulary has no such word. Keys must
    /// come in increasing order.
    fn label(&mut self, key: u64) -> anyhow::Result<String> {
        loop {
            while self.block.get(self.pos).is_some_and(|(k, _)| *k < key) {
                self.pos += 1;
            }
            if let Some((k, w)) = self.block.get(self.pos) {
                return Ok(if *k == key {
                    w.clone()
                } else {
                    key.to_string()
                });
            }
            let Some(block) = self.rows.as_mut().and_then(|r| r.next()) else {
                return Ok(key.to_string());
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
                    self.block.push((*k, w));
                }
            }
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.start >= args.end {
        bail!("--start {} is not below --end {}", args.start, args.end);
    }
    let client = args.target.connect_read_only()?;
    let dim = client
        .describe_table(&args.table)
        .with_context(|| format!("table {:?}", args.table))?
        .dim as usize;
    let model = args.vocab.clone().or_else(|| {
        ["in", "out"]
            .iter()
            .find_map(|s| args.table.strip_suffix(&format!(".{s}")).map(String::from))
    });
    let range = KeyRange::new(args.start, args.end);
    // The vocabulary is keyed like the vectors (by word hash), so it is read alongside them
    // in key order, a block at a time: memory does not grow with the vocabulary.
    let mut labels = Labels {
        rows: match &model {
            Some(m) if client.describe_table(&vocab::table(m)).is_ok() => {
                Some(client.pull_range(&vocab::table(m), range))
            }
            _ => None,
        },
        block: Vec::new(),
        pos: 0,
    };
    let io = |e| anyhow::anyhow!("writing {}: {e}", args.out.display());
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&args.out).map_err(io)?);
    let mut side: Option<(PathBuf, BufWriter<File>)> = match args.format {
        Format::Npy => Some(sibling(&args.out, ".keys.npy")),
        Format::Tsv => Some(sibling(&args.out, ".metadata.tsv")),
        Format::Safetensors => Some(sibling(&args.out, ".keys.tmp")),
        _ => None,
    }
    .map(|p| -> anyhow::Result<_> {
        let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok((p, BufWriter::new(f)))
    })
    .transpose()?;
    match args.format {
        Format::Word2vecText | Format::Word2vecBin => {
            out.write_all(&w2v_header(0, dim)).map_err(io)?
        }
        Format::Npy => {
            out.write_all(&npy_header("<f4", 0, Some(dim)))
                .map_err(io)?;
            let (_, s) = side.as_mut().expect("keys file");
            s.write_all(&npy_header("<u8", 0, None))?;
        }
        Format::Safetensors => out.write_all(&safetensors_header(0, dim)).map_err(io)?,
        Format::Tsv => {}
    }
    // A bar sized by the table's estimated rows (exact counts would read the table twice);
    // drawn only on a terminal.
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let whole = args.start == 0 && args.end == u64::MAX;
        let estimate: u64 = if whole {
            client
                .inspect(false)?
                .iter()
                .flat_map(|r| r.tables.iter().filter(|t| t.name == args.table))
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
        bar
    };
    let mut rows = 0u64;
    for block in client.pull_range(&args.table, range) {
        let block = block?;
        bar.inc(block.keys.len() as u64);
        for (k, v) in block.keys.iter().zip(block.values.chunks(dim)) {
            match args.format {
                Format::Word2vecText => {
                    write!(out, "{}", labels.label(*k)?).map_err(io)?;
                    for x in v {
                        write!(out, " {x}").map_err(io)?;
                    }
                    out.write_all(b"\n").map_err(io)?;
                }
                Format::Word2vecBin => {
                    write!(out, "{} ", labels.label(*k)?).map_err(io)?;
                    for x in v {
                        out.write_all(&x.to_le_bytes()).map_err(io)?;
                    }
                    out.write_all(b"\n").map_err(io)?;
                }
                Format::Npy | Format::Safetensors => {
                    for x in v {
                        out.write_all(&x.to_le_bytes()).map_err(io)?;
                    }
                    side.as_mut().expect("keys").1.write_all(&k.to_le_bytes())?;
                }
                Format::Tsv => {
                    let line: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                    writeln!(out, "{}", line.join("\t")).map_err(io)?;
                    writeln!(side.as_mut().expect("metadata").1, "{}", labels.label(*k)?)?;
                }
            }
            rows += 1;
        }
    }
    bar.finish_and_clear();
    // Headers with the real row count, same length as the placeholders.
    let mut f = out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", args.out.display()))?;
    let header = match args.format {
        Format::Word2vecText | Format::Word2vecBin => Some(w2v_header(rows, dim)),
        Format::Npy => Some(npy_header("<f4", rows, Some(dim))),
        Format::Safetensors => Some(safetensors_header(rows, dim)),
        Format::Tsv => None,
    };
    if let Some(h) = header {
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        f.write_all(&h).map_err(io)?;
    }
    if let Some((path, s)) = side {
        let mut s = s
            .into_inner()
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        match args.format {
            Format::Npy => {
                s.seek(SeekFrom::Start(0))?;
                s.write_all(&npy_header("<u8", rows, None))?;
            }
            Format::Safetensors => {
                // The keys follow the vectors.
                drop(s);
                f.seek(SeekFrom::End(0)).map_err(io)?;
                std::io::copy(&mut File::open(&path)?, &mut f).map_err(io)?;
                std::fs::remove_file(&path)?;
            }
            _ => {}
        }
    }
    f.sync_all().map_err(io)?;
    println!(
        "exported {rows} rows of {} (dim {dim}) to {} as {:?}",
        args.table,
        args.out.display(),
        args.format
    );
    Ok(())
}
