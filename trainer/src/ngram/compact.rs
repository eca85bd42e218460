//! The compact form of a Kneser-Ney model: one read-only file, built once from the servers'
//! count tables and loaded whole for queries (as KenLM's binary format is), so that scoring
//! needs no server, no RocksDB and no batching.
//!
//! It holds what `Kn` reads, not precomputed probabilities, so a query computes exactly what
//! `eval perplexity` computes against the servers:
//!
//! - a header: magic `PDBKNC01`, format version, the model's name, `Meta`, count-of-counts,
//!   the empty context's row, `<unk>`'s key, and per order the place of its section and the
//!   CRC-32 of that section; then the header's own CRC-32;
//! - per order `k`, its rows sorted by n-gram key: first the keys (u64 each), then the
//!   values, the count (u32) plus, below the highest order, the statistics as a context (sum,
//!   N1, N2, N3+: u32 each), all little-endian; then a bucket index by the key's top bits
//!   (u32 row offsets). A lookup reads the index, one bucket of about 8 keys (a cache line) and
//!   the values. Rows that are all zero are left out, as the servers' absent rows are.
//!
//! Counts above 2^32 − 1 are refused at build. The file is written to a temporary name,
//! synced and renamed, so a half-written file never has the real name; `open` checks every
//! CRC, so a damaged file is an error, never wrong scores.

use std::io::Write;
use std::path::Path;

use paramdb_client::{BlockingClient, KeyRange};

use super::{count_table, dim_of, CountOfCounts, Kn, Meta, Perplexity, Row, Sentences};
use crate::error::{Result, TrainError};

const MAGIC: &[u8; 8] = b"PDBKNC01";
const VERSION: u32 = 1;
/// Average rows per index bucket.
const PER_BUCKET: u64 = 8;
const MAX_BITS: u32 = 26;

/// Where an order's rows are in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Section {
    offset: u64,
    rows: u64,
    /// Bytes of a row's values: 4, or 20 for an order below the highest.
    width: u32,
    /// Index buckets are the top `bits` bits of a key.
    bits: u32,
    crc: u32,
}

impl Section {
    fn values_offset(&self) -> u64 {
        self.offset + self.rows * 8
    }

    fn index_offset(&self) -> u64 {
        self.values_offset() + self.rows * u64::from(self.width)
    }

    fn len(&self) -> u64 {
        self.index_offset() - self.offset + 4 * ((1u64 << self.bits) + 1)
    }
}

/// What a build wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Built {
    /// Rows of each order (index 0 unused).
    pub rows: Vec<u64>,
    pub bytes: u64,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> TrainError {
    TrainError::Invalid(format!(
        "{} is not a usable compact Kneser-Ney model: {why}",
        path.display()
    ))
}

fn io(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::io(format!("writing {}", path.display()), e)
}

/// Builds the compact form of `model` into `out`: every count table streamed once in key
/// order. `on_progress(rows done, rows in all)`.
pub fn write(
    client: &BlockingClient,
    model: &str,
    out: &Path,
    on_progress: &dyn Fn(u64, u64),
) -> Result<Built> {
    let kn = Kn::load(client, model)?;
    let tmp = out.with_extension("compact.tmp");
    let result = build(client, &kn, &tmp, on_progress);
    match result {
        Ok(built) => {
            std::fs::rename(&tmp, out).map_err(|e| io(out, e))?;
            Ok(built)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub(crate) fn build(
    client: &BlockingClient,
    kn: &Kn,
    path: &Path,
    on_progress: &dyn Fn(u64, u64),
) -> Result<Built> {
    let n = kn.order();
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    // The header's size does not depend on the sections, so it is written once with empty
    // sections, then again at the end.
    let header_len = header(kn, &vec![Section::default(); n + 1]).len() as u64;
    let mut sections = vec![Section::default()];
    w.write_all(&vec![0u8; header_len as usize])
        .map_err(|e| io(path, e))?;
    let mut at = header_len;
    // Rows to go, about: the n-grams of each order (plus contexts that are no n-gram).
    let total: u64 = kn.coc.iter().skip(1).map(|c| c.distinct).sum();
    let mut done = 0u64;
    let mut built = Built {
        rows: vec![0],
        bytes: 0,
    };
    for k in 1..=n {
        let t = count_table(&kn.model, k);
        let dim = dim_of(k, n);
        let width: u32 = if k == n { 4 } else { 20 };
        // Values go to a temporary file first: they follow all the keys.
        let mut values = tempfile::tempfile().map_err(|e| io(path, e))?;
        let mut keys: Vec<u64> = Vec::new();
        let mut crc = crc32fast::Hasher::new();
        {
            let mut vw = std::io::BufWriter::with_capacity(1 << 20, &mut values);
            for block in client.pull_range(&t, KeyRange::all()) {
                let block = block?;
                for (&key, r) in block.keys.iter().zip(block.values.chunks(dim)) {
                    let row = Row::decode(r).ok_or_else(|| super::undecodable(&t, key))?;
                    if row == Row::default() {
                        continue;
                    }
                    let fit = |x: u64, what: &str| {
                        u32::try_from(x).map_err(|_| {
                            TrainError::Invalid(format!(
                                "{what} {x} of n-gram {key} in {t} is above 2^32 − 1: the \
                                 compact form cannot hold it"
                            ))
                        })
                    };
                    let mut rec = [0u8; 20];
                    rec[..4].copy_from_slice(&fit(row.count, "count")?.to_le_bytes());
                    if k < n {
                        rec[4..8].copy_from_slice(&fit(row.sum, "context sum")?.to_le_bytes());
                        for (i, &x) in row.n.iter().enumerate() {
                            let o = 8 + 4 * i;
                            rec[o..o + 4].copy_from_slice(&fit(x, "context count")?.to_le_bytes());
                        }
                    }
                    vw.write_all(&rec[..width as usize])
                        .map_err(|e| io(path, e))?;
                    let kb = key.to_le_bytes();
                    crc.update(&kb);
                    w.write_all(&kb).map_err(|e| io(path, e))?;
                    keys.push(key);
                }
                done += block.keys.len() as u64;
                on_progress(done, total.max(done));
            }
            vw.flush().map_err(|e| io(path, e))?;
        }
        let rows_n = keys.len() as u64;
        let bits = bits_for(rows_n);
        // index[b] = the first row whose key's top bits are ≥ b.
        let buckets = 1usize << bits;
        let mut index = vec![0u32; buckets + 1];
        let mut next = 0usize;
        for (i, key) in keys.iter().enumerate() {
            let b = bucket(*key, bits);
            while next <= b {
                index[next] = i as u32;
                next += 1;
            }
        }
        while next <= buckets {
            index[next] = rows_n as u32;
            next += 1;
        }
        drop(keys);
        // The values behind the keys, then the index, the CRC covering all three.
        use std::io::{Read, Seek};
        values
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let got = values.read(&mut buf).map_err(|e| io(path, e))?;
            if got == 0 {
                break;
            }
            crc.update(&buf[..got]);
            w.write_all(&buf[..got]).map_err(|e| io(path, e))?;
        }
        let idx: Vec<u8> = index.iter().flat_map(|x| x.to_le_bytes()).collect();
        crc.update(&idx);
        w.write_all(&idx).map_err(|e| io(path, e))?;
        let s = Section {
            offset: at,
            rows: rows_n,
            width,
            bits,
            crc: crc.finalize(),
        };
        at += s.len();
        sections.push(s);
        built.rows.push(rows_n);
    }
    let mut file = w.into_inner().map_err(|e| io(path, e.into_error()))?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| io(path, e))?;
    file.write_all(&header(kn, &sections))
        .map_err(|e| io(path, e))?;
    file.sync_all().map_err(|e| io(path, e))?;
    built.bytes = at;
    Ok(built)
}

fn bits_for(rows: u64) -> u32 {
    let mut bits = 0;
    while bits < MAX_BITS && (rows >> bits) > PER_BUCKET {
        bits += 1;
    }
    bits
}

fn bucket(key: u64, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        (key >> (64 - bits)) as usize
    }
}

/// The header: everything but the sections' rows, then its CRC-32.
fn header(kn: &Kn, sections: &[Section]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    let name = kn.model.as_bytes();
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(name);
    let m = &kn.meta;
    for x in [m.order, m.corpus_len, m.dev_every, m.lines, m.tokens] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b.extend_from_slice(&kn.vocab_size.to_le_bytes());
    b.extend_from_slice(&kn.unk.to_le_bytes());
    let e = &kn.empty;
    for x in [e.count, e.sum, e.n[0], e.n[1], e.n[2]] {
        b.extend_from_slice(&x.to_le_bytes());
    }
    for c in &kn.coc {
        for x in [c.t[0], c.t[1], c.t[2], c.t[3], c.distinct] {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    for s in &sections[1..] {
        b.extend_from_slice(&s.offset.to_le_bytes());
        b.extend_from_slice(&s.rows.to_le_bytes());
        b.extend_from_slice(&s.width.to_le_bytes());
        b.extend_from_slice(&s.bits.to_le_bytes());
        b.extend_from_slice(&s.crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// A compact model opened for queries.
pub struct Compact {
    map: memmap2::Mmap,
    kn: Kn,
    sections: Vec<Section>,
}

impl std::fmt::Debug for Compact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compact")
            .field("model", &self.kn.model)
            .field("sections", &self.sections)
            .finish()
    }
}

impl Compact {
    /// Opens and checks `path` (every CRC). The file is read whole into anonymous memory
    /// backed by huge pages where the kernel allows (`MADV_HUGEPAGE`): a lookup touches a few
    /// random cache lines of a large table, and with 4 KiB pages each would also miss the TLB.
    pub fn open(path: &Path) -> Result<Compact> {
        use std::io::Read;
        let read_err = |e| TrainError::io(format!("reading {}", path.display()), e);
        let mut file = std::fs::File::open(path)
            .map_err(|e| TrainError::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(read_err)?.len();
        let len = usize::try_from(len).map_err(|_| bad(path, "it is too large to load"))?;
        let mut map = memmap2::MmapMut::map_anon(len.max(1)).map_err(read_err)?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        file.read_exact(&mut map[..len]).map_err(read_err)?;
        let map = map.make_read_only().map_err(read_err)?;
        let (kn, sections) = parse_header(&map).ok_or_else(|| {
            if map.starts_with(MAGIC) {
                bad(path, "its header is damaged or cut short")
            } else {
                bad(
                    path,
                    "it does not start with the compact form's magic bytes",
                )
            }
        })?;
        for (k, s) in sections.iter().enumerate().skip(1) {
            let end = s.offset.checked_add(s.len());
            let Some(bytes) = end.and_then(|e| map.get(s.offset as usize..e as usize)) else {
                return Err(bad(path, format!("order {k}'s rows run past its end")));
            };
            if crc32fast::hash(bytes) != s.crc {
                return Err(bad(path, format!("order {k}'s rows fail their CRC")));
            }
        }
        Ok(Compact { map, kn, sections })
    }

    /// The model's parameters (order, discounts, vocabulary size).
    pub fn kn(&self) -> &Kn {
        &self.kn
    }

    /// The row of order-`k` n-gram `key` (all zero when the model has none).
    pub fn row(&self, k: usize, key: u64) -> Row {
        let s = &self.sections[k];
        let b = bucket(key, s.bits);
        let idx = s.index_offset() as usize;
        let at = |i: usize| {
            u32::from_le_bytes(
                self.map[idx + 4 * i..idx + 4 * i + 4]
                    .try_into()
                    .expect("4"),
            ) as usize
        };
        let (lo, hi) = (at(b), at(b + 1));
        let base = s.offset as usize;
        // A bucket's keys are a cache line or two: scanned in order.
        let keys = &self.map[base + 8 * lo..base + 8 * hi];
        let Some(i) = keys
            .chunks_exact(8)
            .position(|k| u64::from_le_bytes(k.try_into().expect("8")) == key)
        else {
            return Row::default();
        };
        let w = s.width as usize;
        let v = s.values_offset() as usize + (lo + i) * w;
        let r = &self.map[v..v + w];
        let f = |o: usize| u64::from(u32::from_le_bytes(r[o..o + 4].try_into().expect("4")));
        if w == 4 {
            Row {
                count: f(0),
                ..Row::default()
            }
        } else {
            Row {
                count: f(0),
                sum: f(4),
                n: [f(8), f(12), f(16)],
            }
        }
    }

    /// Natural-log probability of `w` after history `h` (as `Kn::log_probs`).
    pub fn log_prob(&self, h: &[u64], w: u64, grams: &mut Vec<(u64, u64)>) -> f64 {
        self.kn.grams(h, w, grams);
        self.kn.prob_by(grams, |k, key| self.row(k, key)).ln()
    }

    /// Rows of each order (index 0 unused).
    pub fn rows(&self) -> Vec<u64> {
        self.sections.iter().map(|s| s.rows).collect()
    }
}

fn parse_header(b: &[u8]) -> Option<(Kn, Vec<Section>)> {
    let mut r = Reader { b, at: 0 };
    if r.take(8)? != MAGIC || r.u32()? != VERSION {
        return None;
    }
    let len = r.u32()? as usize;
    let model = String::from_utf8(r.take(len)?.to_vec()).ok()?;
    let meta = Meta {
        order: r.u64()?,
        corpus_len: r.u64()?,
        dev_every: r.u64()?,
        lines: r.u64()?,
        tokens: r.u64()?,
    };
    let n = usize::try_from(meta.order)
        .ok()
        .filter(|&n| (1..=super::MAX_ORDER).contains(&n))?;
    let vocab_size = r.u64()?;
    let unk = r.u64()?;
    let empty = Row {
        count: r.u64()?,
        sum: r.u64()?,
        n: [r.u64()?, r.u64()?, r.u64()?],
    };
    let mut coc = Vec::new();
    for _ in 0..=n {
        coc.push(CountOfCounts {
            t: [r.u64()?, r.u64()?, r.u64()?, r.u64()?],
            distinct: r.u64()?,
        });
    }
    let mut sections = vec![Section::default()];
    for _ in 1..=n {
        let s = Section {
            offset: r.u64()?,
            rows: r.u64()?,
            width: r.u32()?,
            bits: r.u32()?,
            crc: r.u32()?,
        };
        if s.bits > MAX_BITS || s.rows > u64::from(u32::MAX) || !matches!(s.width, 4 | 20) {
            return None;
        }
        sections.push(s);
    }
    let end = r.at;
    if crc32fast::hash(&b[..end]) != r.u32()? {
        return None;
    }
    let discounts = coc.iter().map(|c| c.discounts()).collect();
    Some((
        Kn {
            model,
            meta,
            coc,
            discounts,
            vocab_size,
            empty,
            unk,
        },
        sections,
    ))
}

/// The perplexity of the compact model on the lines of `path` that `pick` chooses: what
/// `ngram::perplexity` gives against the servers.
pub fn perplexity(c: &Compact, path: &Path, pick: impl Fn(u64) -> bool) -> Result<Perplexity> {
    let mut out = Perplexity::default();
    let known = |words: &[u64]| -> Result<Vec<bool>> {
        Ok(words
            .iter()
            .map(|&w| w == c.kn.unk || c.row(1, w).count > 0)
            .collect())
    };
    let mut lines = Sentences::open_with(Box::new(known), &c.kn, path, pick, 200_000)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    while let Some(b) = lines.next_batch()? {
        // The sentences split between threads; the log-probabilities are added in order, so
        // the sum is the same whatever the threads.
        let per = b.sentences.len().div_ceil(threads);
        let parts: Vec<Vec<f64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = b
                .sentences
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        let mut grams = Vec::new();
                        let mut lps = Vec::new();
                        for s in part {
                            for j in 1..s.len() {
                                lps.push(c.log_prob(&s[..j], s[j], &mut grams));
                            }
                        }
                        lps
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("scoring thread"))
                .collect()
        });
        let flags = b.oov.iter().flat_map(|o| o[1..].iter().copied());
        for (lp, oov) in parts.into_iter().flatten().zip(flags) {
            out.add(lp, oov);
        }
    }
    Ok(out)
}
