//! The export formats: one writer that takes rows (label, key, vector) in the order they are
//! to appear and fills in the headers that hold the row count at the end.
//!
//! - `word2vec-text`, `word2vec-bin`: gensim's `load_word2vec_format` reads them.
//! - `npy`: the vectors as float32 `(rows, dim)` in OUT, the keys as uint64 in
//!   `<stem>.keys.npy`.
//! - `safetensors`: one file with tensors `vectors` (F32, rows × dim) and `keys` (U64).
//! - `tsv`: vectors in OUT and labels in `<stem>.metadata.tsv`, for TensorBoard's projector.
//!
//! Headers that hold the row count are fixed-width placeholders rewritten in place at the end,
//! so nothing is read twice.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Word2vecText,
    Word2vecBin,
    Npy,
    Safetensors,
    Tsv,
    /// A Kneser-Ney model as an ARPA back-off file (`paramdb export MODEL --format arpa`).
    Arpa,
    /// A Kneser-Ney model's compact read-only form, for `eval perplexity --compact`.
    KnCompact,
}

impl Format {
    /// Written from an n-gram model, not from a table's rows.
    pub fn is_lm(self) -> bool {
        matches!(self, Format::Arpa | Format::KnCompact)
    }
}

/// The file beside `out` with `suffix` after its stem (`v.npy` → `v.keys.npy`).
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}{suffix}"))
}

/// `.npy` header for `shape`, padded so the data starts at a multiple of 64 bytes. The row
/// count is written in a fixed-width field so the header can be rewritten in place.
pub fn npy_header(descr: &str, rows: u64, dim: Option<usize>) -> Vec<u8> {
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

pub fn safetensors_header(rows: u64, dim: usize) -> Vec<u8> {
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

pub fn w2v_header(rows: u64, dim: usize) -> Vec<u8> {
    format!("{rows:<20} {dim}\n").into_bytes()
}

/// Writes rows in one format.
pub struct Sink {
    format: Format,
    path: PathBuf,
    dim: usize,
    out: BufWriter<File>,
    /// The second file: keys (npy, and safetensors until the end) or labels (tsv).
    side: Option<(PathBuf, BufWriter<File>)>,
    rows: u64,
    text: String,
}

impl Sink {
    pub fn create(format: Format, path: &Path, dim: usize) -> anyhow::Result<Sink> {
        if format.is_lm() {
            anyhow::bail!("{format:?} is written from an n-gram model, not from a table");
        }
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        let side_path = match format {
            Format::Npy => Some(sibling(path, ".keys.npy")),
            Format::Tsv => Some(sibling(path, ".metadata.tsv")),
            Format::Safetensors => Some(sibling(path, ".keys.tmp")),
            _ => None,
        };
        let mut side = side_path
            .map(|p| -> anyhow::Result<_> {
                let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
                Ok((p, BufWriter::new(f)))
            })
            .transpose()?;
        let header = match format {
            Format::Word2vecText | Format::Word2vecBin => w2v_header(0, dim),
            Format::Npy => {
                if let Some((_, s)) = side.as_mut() {
                    s.write_all(&npy_header("<u8", 0, None))?;
                }
                npy_header("<f4", 0, Some(dim))
            }
            Format::Safetensors => safetensors_header(0, dim),
            Format::Tsv | Format::Arpa | Format::KnCompact => Vec::new(),
        };
        out.write_all(&header)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Sink {
            format,
            path: path.to_path_buf(),
            dim,
            out,
            side,
            rows: 0,
            text: String::new(),
        })
    }

    /// Appends a row. `label` is used by the labelled formats only.
    pub fn row(&mut self, label: &str, key: u64, v: &[f32]) -> anyhow::Result<()> {
        debug_assert_eq!(v.len(), self.dim);
        self.write_row(label, key, v)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.rows += 1;
        Ok(())
    }

    fn write_row(&mut self, label: &str, key: u64, v: &[f32]) -> std::io::Result<()> {
        use std::fmt::Write as _;
        let out = &mut self.out;
        match self.format {
            Format::Word2vecText => {
                self.text.clear();
                self.text.push_str(label);
                for x in v {
                    let _ = write!(self.text, " {x}");
                }
                self.text.push('\n');
                out.write_all(self.text.as_bytes())
            }
            Format::Word2vecBin => {
                out.write_all(label.as_bytes())?;
                out.write_all(b" ")?;
                out.write_all(bytemuck_bytes(v))?;
                out.write_all(b"\n")
            }
            Format::Npy | Format::Safetensors => {
                out.write_all(bytemuck_bytes(v))?;
                match self.side.as_mut() {
                    Some((_, s)) => s.write_all(&key.to_le_bytes()),
                    None => Ok(()),
                }
            }
            Format::Arpa | Format::KnCompact => unreachable!("Sink::create refuses models"),
            Format::Tsv => {
                self.text.clear();
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        self.text.push('\t');
                    }
                    let _ = write!(self.text, "{x}");
                }
                self.text.push('\n');
                out.write_all(self.text.as_bytes())?;
                match self.side.as_mut() {
                    Some((_, s)) => writeln!(s, "{label}"),
                    None => Ok(()),
                }
            }
        }
    }

    /// Fills in the headers and makes the files durable; returns the number of rows.
    pub fn finish(self) -> anyhow::Result<u64> {
        let Sink {
            format,
            path,
            dim,
            out,
            side,
            rows,
            ..
        } = self;
        let io = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
        let mut f = out.into_inner().map_err(|e| io(e.into_error()))?;
        let header = match format {
            Format::Word2vecText | Format::Word2vecBin => Some(w2v_header(rows, dim)),
            Format::Npy => Some(npy_header("<f4", rows, Some(dim))),
            Format::Safetensors => Some(safetensors_header(rows, dim)),
            Format::Tsv | Format::Arpa | Format::KnCompact => None,
        };
        if let Some(h) = header {
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            f.write_all(&h).map_err(io)?;
        }
        if let Some((side_path, s)) = side {
            let side_io =
                |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", side_path.display());
            let mut s = s.into_inner().map_err(|e| side_io(e.into_error()))?;
            match format {
                Format::Npy => {
                    s.seek(SeekFrom::Start(0)).map_err(side_io)?;
                    s.write_all(&npy_header("<u8", rows, None))
                        .map_err(side_io)?;
                    s.sync_all().map_err(side_io)?;
                }
                Format::Safetensors => {
                    // The keys follow the vectors.
                    drop(s);
                    f.seek(SeekFrom::End(0)).map_err(io)?;
                    std::io::copy(&mut File::open(&side_path).map_err(side_io)?, &mut f)
                        .map_err(io)?;
                    std::fs::remove_file(&side_path).map_err(side_io)?;
                }
                _ => s.sync_all().map_err(side_io)?,
            }
        }
        f.sync_all().map_err(io)?;
        Ok(rows)
    }
}

/// The little-endian bytes of `v` (every target paramdb builds for is little-endian).
fn bytemuck_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}
