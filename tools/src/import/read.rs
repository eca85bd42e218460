//! Readers of the export formats (see `export::sink`), one row at a time, with errors that
//! name the file and the row: a wrong number of values, a truncated file, a value that is not
//! a finite number, a header that does not parse.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::export::{sibling, Format};

/// How a row is named in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A word (or, in a table of no model, a key written as a number).
    Word(String),
    Key(u64),
}

pub struct Reader {
    path: PathBuf,
    dim: usize,
    /// Rows the header promises (none for GloVe text and tsv).
    rows: Option<u64>,
    kind: Kind,
    values: Vec<f32>,
    row: u64,
}

enum Kind {
    Text {
        lines: std::io::Lines<BufReader<File>>,
        /// The first row, when the file has no header (GloVe).
        first: Option<String>,
    },
    Bin(Span),
    /// Raw little-endian f32 rows, with keys from a side file or tensor (or the row index),
    /// read from memory maps: no copy through a read buffer, and an aligned row is used in
    /// place.
    Dense {
        data: Span,
        keys: Option<Span>,
    },
    Tsv {
        lines: std::io::Lines<BufReader<File>>,
        labels: Option<std::io::Lines<BufReader<File>>>,
        first: Option<String>,
    },
}

/// The bytes of a file from `at` on, mapped.
struct Span {
    map: memmap2::Mmap,
    at: usize,
    /// Pages before this were read and given back, so the map's resident size stays within
    /// `RESIDENT` whatever the file's size.
    released: usize,
}

/// Bytes of a map read past before they are given back.
const RESIDENT: usize = 64 << 20;

impl Span {
    #[allow(unsafe_code)]
    fn map(path: &Path, at: u64) -> anyhow::Result<Span> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the map is read only; a file truncated while it is imported can fault the
        // process, as with any reader of a memory map (the cache and the log's readers too).
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("mapping {}", path.display()))?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let at = (at as usize).min(map.len());
        Ok(Span {
            map,
            at,
            released: at,
        })
    }

    /// The next `n` bytes, or `None` where the file ends first. The bytes before them are
    /// not read again.
    #[allow(unsafe_code)]
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.at - self.released >= RESIDENT {
            let upto = self.at & !4095;
            // SAFETY: a read-only shared map of a file; pages dropped are read from the file
            // again if touched, and nothing refers to them (rows before `at` were handed out
            // and are no longer borrowed).
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )
            };
            self.released = upto;
        }
        let b = self.map.get(self.at..self.at + n)?;
        self.at += n;
        Some(b)
    }
}

fn open(path: &Path) -> anyhow::Result<BufReader<File>> {
    Ok(BufReader::with_capacity(
        1 << 20,
        File::open(path).with_context(|| format!("opening {}", path.display()))?,
    ))
}

impl Reader {
    pub fn open(format: Format, path: &Path) -> anyhow::Result<Reader> {
        let (dim, rows, kind) = match format {
            Format::Word2vecText => {
                let mut lines = open(path)?.lines();
                let first = next_line(&mut lines, path)?
                    .with_context(|| format!("{} is empty", path.display()))?;
                match w2v_header(&first) {
                    Some((rows, dim)) => (dim, Some(rows), Kind::Text { lines, first: None }),
                    None => {
                        // GloVe: no header; the first row gives the dim.
                        let dim = first.split_whitespace().count().saturating_sub(1);
                        let kind = Kind::Text {
                            lines,
                            first: Some(first),
                        };
                        (dim, None, kind)
                    }
                }
            }
            Format::Word2vecBin => {
                let mut line = String::new();
                open(path)?
                    .read_line(&mut line)
                    .with_context(|| format!("reading {}", path.display()))?;
                let (rows, dim) = w2v_header(&line).with_context(|| {
                    format!(
                        "{}: the first line is not a word2vec header (`ROWS DIM`)",
                        path.display()
                    )
                })?;
                (
                    dim,
                    Some(rows),
                    Kind::Bin(Span::map(path, line.len() as u64)?),
                )
            }
            Format::Npy => {
                let (descr, shape, at) = npy_header(&mut open(path)?, path)?;
                let [rows, dim] = shape[..] else {
                    bail!("{}: shape {shape:?} is not (rows, dim)", path.display());
                };
                if descr != "<f4" {
                    bail!(
                        "{}: dtype {descr:?}; import reads float32 (<f4)",
                        path.display()
                    );
                }
                let keys_path = sibling(path, ".keys.npy");
                let keys = if keys_path.exists() {
                    let (kd, ks, kat) = npy_header(&mut open(&keys_path)?, &keys_path)?;
                    if kd != "<u8" || ks != [rows] {
                        bail!(
                            "{}: keys must be uint64 (<u8) of shape ({rows},), not {kd:?} {ks:?}",
                            keys_path.display()
                        );
                    }
                    Some(Span::map(&keys_path, kat)?)
                } else {
                    None
                };
                let data = Span::map(path, at)?;
                (dim as usize, Some(rows), Kind::Dense { data, keys })
            }
            Format::Safetensors => safetensors(path)?,
            Format::Arpa => anyhow::bail!(
                "an ARPA file cannot be imported: it holds probabilities, not a model's counts \
                 (count the corpus with `paramdb train ngram-lm`)"
            ),
            Format::KnCompact => anyhow::bail!(
                "a compact Kneser-Ney file is not imported: `eval perplexity --compact FILE` \
                 reads it as it is"
            ),
            Format::Tsv => {
                let mut lines = open(path)?.lines();
                let first = next_line(&mut lines, path)?
                    .with_context(|| format!("{} is empty", path.display()))?;
                let dim = first.split('\t').count();
                let labels_path = sibling(path, ".metadata.tsv");
                let labels = if labels_path.exists() {
                    Some(open(&labels_path)?.lines())
                } else {
                    None
                };
                (
                    dim,
                    None,
                    Kind::Tsv {
                        lines,
                        labels,
                        first: Some(first),
                    },
                )
            }
        };
        if dim == 0 {
            bail!("{}: rows of no values", path.display());
        }
        Ok(Reader {
            path: path.to_path_buf(),
            dim,
            rows,
            kind,
            values: vec![0.0; dim],
            row: 0,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows_hint(&self) -> Option<u64> {
        self.rows
    }

    /// The next row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> anyhow::Result<Option<(Label, &[f32])>> {
        if self.rows.is_some_and(|r| self.row >= r) {
            return Ok(None);
        }
        let row = self.row + 1;
        let path = &self.path;
        let dim = self.dim;
        let label = match &mut self.kind {
            Kind::Text { lines, first } => {
                let line = match first.take() {
                    Some(l) => l,
                    None => match next_line(lines, path)? {
                        Some(l) => l,
                        None => return Ok(None),
                    },
                };
                let mut tokens = line.split_whitespace();
                let word = tokens.next().unwrap_or_default().to_string();
                parse_values(tokens, &mut self.values, path, row)?;
                Label::Word(word)
            }
            Kind::Bin(r) => {
                let cut = || {
                    anyhow::anyhow!(
                        "{} is truncated: its header promises {} rows, it ends in row {row}",
                        path.display(),
                        self.rows.unwrap_or(0)
                    )
                };
                // A row is `word ` and dim floats; word2vec.c ends each with a newline, which
                // the next word's start skips.
                let rest = r.map.get(r.at..).unwrap_or_default();
                let start = rest.iter().take_while(|&&b| b == b'\n').count();
                let len = rest[start..]
                    .iter()
                    .position(|&b| b == b' ')
                    .ok_or_else(cut)?;
                let word = r.take(start + len + 1).ok_or_else(cut)?[start..start + len].to_vec();
                let bytes = r.take(dim * 4).ok_or_else(cut)?;
                bytemuck::cast_slice_mut::<f32, u8>(&mut self.values).copy_from_slice(bytes);
                check_row(&self.values, path, row)?;
                let word = String::from_utf8(word).map_err(|_| {
                    anyhow::anyhow!("{}: row {row}: the word is not UTF-8", path.display())
                })?;
                Label::Word(word)
            }
            Kind::Dense { data, keys } => {
                let label = match keys {
                    Some(k) => {
                        let b = k.take(8).with_context(|| {
                            format!("the keys beside {} end in row {row}", path.display())
                        })?;
                        Label::Key(u64::from_le_bytes(b.try_into().expect("8 bytes")))
                    }
                    None => Label::Key(row - 1),
                };
                let bytes = data
                    .take(dim * 4)
                    .ok_or_else(|| truncated(path, row, self.rows))?;
                let values = match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                    Ok(v) => v,
                    Err(_) => {
                        bytemuck::cast_slice_mut::<f32, u8>(&mut self.values)
                            .copy_from_slice(bytes);
                        &self.values
                    }
                };
                check_row(values, path, row)?;
                self.row = row;
                return Ok(Some((label, values)));
            }
            Kind::Tsv {
                lines,
                labels,
                first,
            } => {
                let line = match first.take() {
                    Some(l) => l,
                    None => match next_line(lines, path)? {
                        Some(l) => l,
                        None => return Ok(None),
                    },
                };
                parse_values(line.split('\t'), &mut self.values, path, row)?;
                match labels {
                    Some(l) => match l.next() {
                        Some(Ok(w)) => Label::Word(w),
                        _ => bail!(
                            "{}: the labels end before row {row}",
                            sibling(path, ".metadata.tsv").display()
                        ),
                    },
                    None => Label::Key(row - 1),
                }
            }
        };
        debug_assert_eq!(self.values.len(), dim);
        self.row = row;
        Ok(Some((label, &self.values)))
    }

    /// Fails unless `n` rows is what the header promised and nothing follows them.
    pub fn check_count(&mut self, n: u64) -> anyhow::Result<()> {
        if let Some(r) = self.rows {
            if n != r {
                bail!(
                    "{} is truncated: its header promises {r} rows, it holds {n}",
                    self.path.display()
                );
            }
        }
        Ok(())
    }
}

fn next_line(
    lines: &mut std::io::Lines<BufReader<File>>,
    path: &Path,
) -> anyhow::Result<Option<String>> {
    loop {
        match lines.next() {
            None => return Ok(None),
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {}", path.display())),
            Some(Ok(l)) if l.trim().is_empty() => continue,
            Some(Ok(l)) => return Ok(Some(l)),
        }
    }
}

/// `ROWS DIM` (word2vec's header), or `None` when the line is something else.
fn w2v_header(line: &str) -> Option<(u64, usize)> {
    let mut t = line.split_whitespace();
    let (a, b) = (t.next()?, t.next()?);
    if t.next().is_some() {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn parse_values<'a>(
    tokens: impl Iterator<Item = &'a str>,
    out: &mut [f32],
    path: &Path,
    row: u64,
) -> anyhow::Result<()> {
    let mut n = 0;
    for t in tokens {
        if n == out.len() {
            bail!(
                "{}: row {row} has more than {} values",
                path.display(),
                out.len()
            );
        }
        let v: f32 = t.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: row {row}: value {} is {}, not a number",
                path.display(),
                n + 1,
                paramdb_types::quote(t)
            )
        })?;
        check_finite(v, path, row, n)?;
        out[n] = v;
        n += 1;
    }
    if n != out.len() {
        bail!(
            "{}: row {row} has {n} values, not {} (the first row's)",
            path.display(),
            out.len()
        );
    }
    Ok(())
}

fn check_finite(v: f32, path: &Path, row: u64, i: usize) -> anyhow::Result<()> {
    if !v.is_finite() {
        bail!(
            "{}: row {row}: value {} is {v} (NaN and infinities are refused)",
            path.display(),
            i + 1
        );
    }
    Ok(())
}

/// `check_finite` on a whole row, scanned in vector-sized blocks first.
fn check_row(values: &[f32], path: &Path, row: u64) -> anyhow::Result<()> {
    match paramdb_types::first_non_finite(values) {
        Some(i) => check_finite(values[i], path, row, i),
        None => Ok(()),
    }
}

fn truncated(path: &Path, row: u64, rows: Option<u64>) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is truncated: it ends inside row {row}{}",
        path.display(),
        rows.map(|r| format!(" of the {r} its header promises"))
            .unwrap_or_default()
    )
}

/// The dtype and shape of a version 1–3 `.npy` header, and the offset of its data (where `r`
/// is left).
fn npy_header(r: &mut impl Read, path: &Path) -> anyhow::Result<(String, Vec<u64>, u64)> {
    let bad = || anyhow::anyhow!("{} is not a .npy file", path.display());
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| bad())?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(bad());
    }
    let (len, at) = if magic[6] == 1 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).map_err(|_| bad())?;
        (u16::from_le_bytes(b) as usize, 10)
    } else {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|_| bad())?;
        (u32::from_le_bytes(b) as usize, 12)
    };
    let mut h = vec![0u8; len];
    r.read_exact(&mut h).map_err(|_| bad())?;
    let h = String::from_utf8_lossy(&h);
    let field = |name: &str| -> Option<&str> {
        let i = h.find(&format!("'{name}'"))? + name.len() + 2;
        let rest = h[i..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(bad)?
        .to_string();
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        bail!("{}: Fortran-ordered arrays are not read", path.display());
    }
    let shape = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(bad)?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| bad()))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok((descr, shape, at + len as u64))
}

/// A safetensors file with `vectors` (F32, rows × dim) and optionally `keys` (U64, rows).
fn safetensors(path: &Path) -> anyhow::Result<(usize, Option<u64>, Kind)> {
    let mut f = open(path)?;
    let bad = |why: &str| {
        anyhow::anyhow!(
            "{}: not a safetensors file paramdb reads: {why}",
            path.display()
        )
    };
    let mut b = [0u8; 8];
    f.read_exact(&mut b).map_err(|_| bad("no header"))?;
    let len = u64::from_le_bytes(b);
    if len > 100 << 20 {
        return Err(bad("the header length is implausible"));
    }
    let mut h = vec![0u8; len as usize];
    f.read_exact(&mut h)
        .map_err(|_| bad("the header is cut short"))?;
    let h: serde_json::Value =
        serde_json::from_slice(&h).map_err(|_| bad("the header is not JSON"))?;
    let tensor = |name: &str| -> Option<(String, Vec<u64>, u64, u64)> {
        let t = h.get(name)?;
        let dtype = t.get("dtype")?.as_str()?.to_string();
        let shape = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|v| v.as_u64())
            .collect::<Option<Vec<u64>>>()?;
        let off = t.get("data_offsets")?.as_array()?;
        Some((dtype, shape, off.first()?.as_u64()?, off.get(1)?.as_u64()?))
    };
    let (dtype, shape, start, end) = tensor("vectors").ok_or_else(|| bad("no `vectors` tensor"))?;
    let [rows, dim] = shape[..] else {
        return Err(bad("`vectors` is not rows × dim"));
    };
    if dtype != "F32" || end - start != rows * dim * 4 {
        return Err(bad("`vectors` must be F32 with rows × dim × 4 bytes"));
    }
    let base = 8 + len;
    let data = Span::map(path, base + start)?;
    let keys = match tensor("keys") {
        Some((kd, ks, ks0, ks1)) => {
            if kd != "U64" || ks != [rows] || ks1 - ks0 != rows * 8 {
                return Err(bad("`keys` must be U64 with one key per row"));
            }
            Some(Span::map(path, base + ks0)?)
        }
        None => None,
    };
    Ok((dim as usize, Some(rows), Kind::Dense { data, keys }))
}
