//! Counting in bounded memory, streamed (KenLM's `lmplz` pipeline in outline), then loaded into
//! the shards in bulk.
//!
//! 1. **Count.** Words get dense ids. Each line's highest-order windows, and the shorter
//!    n-grams that begin with `<s>`, go into an open-addressing table of fixed size (words
//!    stored last word first, so sorting them is sorting by suffix). A full table is compacted
//!    in place, sorted and written to disk as a run: no second copy of it is made.
//! 2. **Adjust.** The runs are merged (equal n-grams summed) into one stream in suffix order.
//!    N-grams that share a suffix of length `k` are then consecutive, so one pass gives every
//!    lower order's adjusted count: the number of distinct words to the left of a suffix is the
//!    number of times the next word to the left changes inside its group. Every n-gram found
//!    (with its raw or adjusted count) becomes two records of 16 bytes: its count, keyed by its
//!    row key, and a contribution to its context's statistics, keyed by the context's key.
//! 3. **Rows.** Each order's records are sorted by key (in memory, or as runs merged from
//!    disk) and grouped: a key's count record and its contributions make its row. Rows leave in
//!    key order through the client's bulk import (RocksDB table files ingested by each shard,
//!    never the gradient log), so each shard's files do not overlap.
//!
//! Memory: the count table and the sort buffer each take `working` of the budget, and only one
//! of them exists at a time; readers and writers of runs take buffers sized from the budget, and
//! runs are merged in several passes when there are too many for their buffers. Against a
//! server, a count's peak RSS stays within the budget + 10% from about 48 MiB up (tested).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use paramdb_client::BlockingClient;

use super::{
    count_table, dim_of, is_dev, ngram_key, sentence, CountConfig, CountOfCounts, Row, EMPTY,
    MAX_ORDER,
};
use crate::corpus::PartReader;
use crate::error::{Result, TrainError};

/// Smallest memory budget accepted.
pub const MIN_MEMORY: usize = 64 << 10;
/// What a counting process needs beside its working memory: its code, the client and its
/// buffers, the vocabulary of a large corpus (measured: about 26 MiB against a server).
const RESERVE: usize = 24 << 20;

/// Bytes the count table, or the sort buffer, may take of a budget of `memory` bytes: 85% of
/// what the reserve leaves (half of a budget too small to leave as much as the reserve). Only
/// one of them exists at a time.
fn working(memory: usize) -> usize {
    if memory >= 2 * RESERVE {
        (memory - RESERVE) / 20 * 17
    } else {
        memory / 2
    }
}
/// No word: an empty slot, or the words past an n-gram's end.
const NONE: u32 = u32::MAX;
/// Marks a record that is a contribution to a context's statistics, not a count.
const CONTRIB: u64 = 1 << 63;

/// An n-gram's word ids, last word first (`NONE` after its first word), and its count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    words: [u32; MAX_ORDER],
    count: u64,
}

const ENTRY_BYTES: usize = 4 * MAX_ORDER + 8;
const VACANT: Entry = Entry {
    words: [NONE; MAX_ORDER],
    count: 0,
};

impl Entry {
    fn len(&self) -> usize {
        self.words
            .iter()
            .position(|&w| w == NONE)
            .unwrap_or(MAX_ORDER)
    }

    fn encode(&self, out: &mut [u8; ENTRY_BYTES]) {
        for (i, w) in self.words.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        out[4 * MAX_ORDER..].copy_from_slice(&self.count.to_le_bytes());
    }

    fn decode(b: &[u8; ENTRY_BYTES]) -> Entry {
        let mut words = [NONE; MAX_ORDER];
        for (i, w) in words.iter_mut().enumerate() {
            *w = u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        }
        let count = u64::from_le_bytes(b[4 * MAX_ORDER..].try_into().expect("8 bytes"));
        Entry { words, count }
    }
}

fn hash(words: &[u32; MAX_ORDER]) -> u64 {
    let mut h = 0u64;
    for &w in words {
        h = (h ^ w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    h ^ (h >> 29)
}

/// An open-addressing count table of fixed size (linear probing).
struct Table {
    slots: Vec<Entry>,
    len: usize,
    /// Entries held before the table counts as full (7/8 of the slots).
    cap: usize,
}

impl Table {
    fn new(bytes: usize) -> Table {
        let n = (bytes / ENTRY_BYTES).max(16);
        Table {
            slots: vec![VACANT; n],
            len: 0,
            cap: n / 8 * 7,
        }
    }

    /// Counts `words` once more; whether the table is now full.
    fn add(&mut self, words: &[u32; MAX_ORDER]) -> bool {
        let n = self.slots.len();
        let mut i = ((hash(words) as u128 * n as u128) >> 64) as usize;
        loop {
            let s = &mut self.slots[i];
            if s.words[0] == NONE {
                *s = Entry {
                    words: *words,
                    count: 1,
                };
                self.len += 1;
                return self.len >= self.cap;
            }
            if s.words == *words {
                s.count += 1;
                return false;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Moves the entries to the front in suffix order, hands them to `f`, and empties the table.
    fn drain_sorted(&mut self, f: impl FnOnce(&[Entry]) -> Result<()>) -> Result<()> {
        let mut j = 0;
        for i in 0..self.slots.len() {
            if self.slots[i].words[0] != NONE {
                self.slots.swap(i, j);
                j += 1;
            }
        }
        let live = &mut self.slots[..j];
        live.sort_unstable_by_key(|e| e.words);
        let r = f(live);
        live.fill(VACANT);
        self.len = 0;
        r
    }
}

/// Temporary files of one count.
struct Scratch {
    dir: tempfile::TempDir,
    next: usize,
    /// Bytes of a run reader's or writer's buffer, and how many runs one pass merges.
    buf: usize,
    fan_in: usize,
}

impl Scratch {
    fn new(parent: Option<&Path>, memory: usize) -> Result<Scratch> {
        let dir = match parent {
            Some(p) => tempfile::Builder::new()
                .prefix("paramdb-count-")
                .tempdir_in(p),
            None => tempfile::Builder::new().prefix("paramdb-count-").tempdir(),
        }
        .map_err(|e| TrainError::io("creating the counting's temporary directory", e))?;
        // Merging holds fan_in readers and one writer; they share a quarter of the budget.
        let buf = (memory / 4 / 64).clamp(4 << 10, 1 << 20);
        let fan_in = (memory / 4 / buf).clamp(2, 64) - 1;
        Ok(Scratch {
            dir,
            next: 0,
            buf,
            fan_in,
        })
    }

    fn file(&mut self) -> Result<(PathBuf, BufWriter<File>)> {
        let path = self.dir.path().join(format!("{:06}", self.next));
        self.next += 1;
        let f = File::create(&path)
            .map_err(|e| TrainError::io(format!("creating {}", path.display()), e))?;
        Ok((path, BufWriter::with_capacity(self.buf, f)))
    }

    fn open(&self, path: &Path) -> Result<BufReader<File>> {
        let f = File::open(path)
            .map_err(|e| TrainError::io(format!("reading {}", path.display()), e))?;
        Ok(BufReader::with_capacity(self.buf, f))
    }
}

fn write_err(e: std::io::Error) -> TrainError {
    TrainError::io("writing the counting's temporary files", e)
}

fn read_err(e: std::io::Error) -> TrainError {
    TrainError::io("reading the counting's temporary files", e)
}

/// Fixed-size records in runs on disk.
trait Record: Copy {
    const BYTES: usize;
    type Key: Ord + Copy;
    fn key(&self) -> Self::Key;
    fn put(&self, w: &mut impl Write) -> Result<()>;
    fn get(r: &mut impl Read) -> Result<Option<Self>>;
}

impl Record for Entry {
    const BYTES: usize = ENTRY_BYTES;
    type Key = [u32; MAX_ORDER];
    fn key(&self) -> Self::Key {
        self.words
    }
    fn put(&self, w: &mut impl Write) -> Result<()> {
        let mut b = [0u8; ENTRY_BYTES];
        self.encode(&mut b);
        w.write_all(&b).map_err(write_err)
    }
    fn get(r: &mut impl Read) -> Result<Option<Entry>> {
        let mut b = [0u8; ENTRY_BYTES];
        Ok(read_full(r, &mut b)?.then(|| Entry::decode(&b)))
    }
}

/// A row key and a count (or, with `CONTRIB`, a contribution to the row's statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Item {
    key: u64,
    value: u64,
}

impl Record for Item {
    const BYTES: usize = 16;
    type Key = u64;
    fn key(&self) -> u64 {
        self.key
    }
    fn put(&self, w: &mut impl Write) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.key.to_le_bytes());
        b[8..].copy_from_slice(&self.value.to_le_bytes());
        w.write_all(&b).map_err(write_err)
    }
    fn get(r: &mut impl Read) -> Result<Option<Item>> {
        let mut b = [0u8; 16];
        Ok(read_full(r, &mut b)?.then(|| Item {
            key: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            value: u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
        }))
    }
}

/// Fills `b` from `r`: false at a clean end, an error inside a record.
fn read_full(r: &mut impl Read, b: &mut [u8]) -> Result<bool> {
    let mut got = 0;
    while got < b.len() {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(TrainError::Invalid(
                    "a temporary run of the counting ends inside a record".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
    Ok(true)
}

fn write_run<R: Record>(scratch: &mut Scratch, records: &[R]) -> Result<PathBuf> {
    let (path, mut w) = scratch.file()?;
    for r in records {
        r.put(&mut w)?;
    }
    w.flush().map_err(write_err)?;
    Ok(path)
}

/// The records of sorted runs in key order, merged. The runs' files are removed when it is
/// dropped.
struct Merge<R: Record> {
    readers: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(R::Key, usize)>>,
    heads: Vec<Option<R>>,
    paths: Vec<PathBuf>,
}

impl<R: Record> Drop for Merge<R> {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl<R: Record> Merge<R> {
    /// Merges `runs`, first in passes of `fan_in` runs when there are more.
    fn open(scratch: &mut Scratch, mut runs: Vec<PathBuf>) -> Result<Merge<R>> {
        while runs.len() > scratch.fan_in {
            let mut merged = Vec::new();
            for group in runs.chunks(scratch.fan_in) {
                let mut m = Merge::<R>::of(scratch, group)?;
                let (path, mut w) = scratch.file()?;
                while let Some(r) = m.next()? {
                    r.put(&mut w)?;
                }
                w.flush().map_err(write_err)?;
                merged.push(path);
            }
            runs = merged;
        }
        Merge::of(scratch, &runs)
    }

    fn of(scratch: &Scratch, runs: &[PathBuf]) -> Result<Merge<R>> {
        let mut m = Merge {
            readers: Vec::with_capacity(runs.len()),
            heap: BinaryHeap::with_capacity(runs.len()),
            heads: Vec::with_capacity(runs.len()),
            paths: runs.to_vec(),
        };
        for (i, p) in runs.iter().enumerate() {
            let mut r = scratch.open(p)?;
            let head = R::get(&mut r)?;
            if let Some(h) = head {
                m.heap.push(Reverse((h.key(), i)));
            }
            m.readers.push(r);
            m.heads.push(head);
        }
        Ok(m)
    }

    fn next(&mut self) -> Result<Option<R>> {
        let Some(Reverse((_, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let out = self.heads[i].take().expect("a run in the heap has a head");
        let next = R::get(&mut self.readers[i])?;
        if let Some(n) = next {
            self.heap.push(Reverse((n.key(), i)));
        }
        self.heads[i] = next;
        Ok(Some(out))
    }
}

/// Words to dense ids, and back to their keys.
#[derive(Default)]
struct Vocab {
    ids: FxHashMap<u64, u32>,
    keys: Vec<u64>,
}

impl Vocab {
    fn id(&mut self, key: u64) -> Result<u32> {
        if let Some(&i) = self.ids.get(&key) {
            return Ok(i);
        }
        let i = u32::try_from(self.keys.len())
            .ok()
            .filter(|&i| i < NONE)
            .ok_or_else(|| TrainError::Invalid("more than 2^32 - 1 distinct words".into()))?;
        self.ids.insert(key, i);
        self.keys.push(key);
        Ok(i)
    }
}

/// What the streamed count found.
pub(super) struct Counted {
    pub lines: u64,
    pub tokens: u64,
    /// Sorted runs of the first phase written to disk.
    pub runs: u64,
    pub coc: Vec<CountOfCounts>,
}

/// Counts `corpus` (`len` bytes; lines outside the dev split) into `model`'s count tables,
/// which exist and are empty, holding about `cfg.memory` bytes.
pub(super) fn count(
    client: &BlockingClient,
    model: &str,
    corpus: &Path,
    len: u64,
    cfg: &CountConfig,
    on_progress: &dyn Fn(u64, u64),
) -> Result<Counted> {
    let (n, dev_every, memory) = (cfg.order, cfg.dev_every, cfg.memory);
    let mut scratch = Scratch::new(cfg.temp_dir.as_deref(), memory)?;

    // 1. Count into the table, spilling sorted runs.
    let mut vocab = Vocab::default();
    let mut runs = Vec::new();
    let (mut lines, mut tokens) = (0u64, 0u64);
    {
        let need = entries_bound(corpus, len, n)?.saturating_mul(ENTRY_BYTES) / 7 * 8;
        let mut table = Table::new(working(memory).min(need.max(1 << 20)));
        let mut reader = PartReader::open(corpus, 0, len, None)?;
        let (mut keys, mut ids) = (Vec::new(), Vec::new());
        let mut spill = |table: &mut Table, runs: &mut Vec<PathBuf>| {
            table.drain_sorted(|live| {
                runs.push(write_run(&mut scratch, live)?);
                Ok(())
            })
        };
        loop {
            let at = reader.position();
            let Some(line) = reader.next_line()? else {
                break;
            };
            if is_dev(dev_every, at) {
                continue;
            }
            sentence(line, &mut keys);
            lines += 1;
            tokens += keys.len() as u64 - 1;
            ids.clear();
            for &k in &keys {
                ids.push(vocab.id(k)?);
            }
            // The highest order's windows, and the shorter n-grams that begin with <s>. (A
            // unigram model counts words and </s>, not <s>.)
            for g in ids[usize::from(n == 1)..].windows(n) {
                if add_gram(&mut table, g) {
                    spill(&mut table, &mut runs)?;
                }
            }
            for k in 2..n.min(ids.len() + 1) {
                if add_gram(&mut table, &ids[..k]) {
                    spill(&mut table, &mut runs)?;
                }
            }
            if lines.is_multiple_of(65_536) {
                on_progress(reader.position(), len);
            }
        }
        if table.len > 0 {
            spill(&mut table, &mut runs)?;
        }
    }
    let n_runs = runs.len() as u64;
    on_progress(len, len);
    tracing::info!(
        runs = n_runs,
        words = vocab.keys.len(),
        "counted; adjusting"
    );

    // 2. Merge in suffix order; adjusted counts; records by row key.
    let mut items: Vec<(PathBuf, BufWriter<File>)> =
        (0..=n).map(|_| scratch.file()).collect::<Result<_>>()?;
    let mut empty = Row::default();
    {
        let mut merge = Merge::<Entry>::open(&mut scratch, runs)?;
        let mut emit = Emitter {
            vocab: &vocab,
            items: &mut items,
            empty: &mut empty,
        };
        let mut prev: Option<Entry> = None;
        let mut adjusted = [0u64; MAX_ORDER + 1];
        let mut cur = merge.next()?;
        while let Some(mut e) = cur {
            // Equal n-grams from different runs are summed.
            let mut next = merge.next()?;
            while let Some(x) = next.filter(|x| x.words == e.words) {
                e.count += x.count;
                next = merge.next()?;
            }
            let len = e.len();
            emit.gram(&e.words[..len], e.count)?;
            let common = match &prev {
                Some(p) => {
                    let plen = p.len();
                    let l = p
                        .words
                        .iter()
                        .zip(&e.words)
                        .take_while(|(a, b)| a == b)
                        .count()
                        .min(plen - 1)
                        .min(len - 1);
                    // Suffixes of the previous n-gram longer than `l` are complete.
                    for (k, &a) in adjusted.iter().enumerate().take(plen).skip(l + 1) {
                        emit.gram(&p.words[..k], a)?;
                    }
                    if l >= 1 {
                        adjusted[l] += 1;
                    }
                    l
                }
                None => 0,
            };
            for a in adjusted.iter_mut().take(len).skip(common + 1) {
                *a = 1;
            }
            prev = Some(e);
            cur = next;
        }
        if let Some(p) = prev {
            for (k, &a) in adjusted.iter().enumerate().take(p.len()).skip(1) {
                emit.gram(&p.words[..k], a)?;
            }
        }
    }
    drop(vocab);

    // 3. Each order's records sorted by key, grouped into rows, imported.
    let mut coc = vec![CountOfCounts::default(); n + 1];
    for (k, (path, mut w)) in items.into_iter().enumerate() {
        w.flush().map_err(write_err)?;
        drop(w);
        if k == 0 {
            continue;
        }
        let dim = dim_of(k, n);
        let mut import = client.import(&count_table(model, k))?;
        let mut put = |key: u64, row: Row| -> Result<()> {
            coc[k].add(0, row.count);
            import.add(key, &row.encode(dim))?;
            Ok(())
        };
        sorted_items(&mut scratch, &path, memory, &mut |group| {
            let mut row = Row::default();
            for it in group {
                if it.value & CONTRIB != 0 {
                    let c = it.value & !CONTRIB;
                    row.sum += c;
                    row.n[c.min(3) as usize - 1] += 1;
                } else {
                    // Two n-grams whose keys collide share a row, as pushes to it would.
                    row.count += it.value;
                }
            }
            put(group[0].key, row)
        })?;
        import.finish()?;
    }
    let mut import = client.import(&count_table(model, 0))?;
    import.add(EMPTY, &empty.encode(dim_of(0, n)))?;
    import.finish()?;
    Ok(Counted {
        lines,
        tokens,
        runs: n_runs,
        coc,
    })
}

/// About how many entries counting `corpus` (`len` bytes) can make, at most: one per token
/// plus `n − 2` `<s>` n-grams per line, from the first 8 MiB (exact for a smaller file), with
/// a 10% margin. The count table is no larger than this needs, so a small corpus does not take
/// the whole budget; an estimate that falls short costs a run, not a wrong count.
fn entries_bound(corpus: &Path, len: u64, n: usize) -> Result<usize> {
    const SAMPLE: u64 = 8 << 20;
    let mut buf = Vec::new();
    File::open(corpus)
        .and_then(|f| f.take(SAMPLE).read_to_end(&mut buf))
        .map_err(|e| TrainError::io(format!("reading {}", corpus.display()), e))?;
    let tokens = buf
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .count() as u64;
    let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
    let entries = tokens + lines * (n.saturating_sub(2) as u64 + 1);
    if len <= SAMPLE {
        return Ok(entries as usize);
    }
    let scaled = entries as f64 * len as f64 / buf.len().max(1) as f64 * 1.1;
    Ok(scaled.min(usize::MAX as f64) as usize)
}

/// Counts the n-gram of ids `g` once more; whether the table is now full.
fn add_gram(table: &mut Table, g: &[u32]) -> bool {
    let mut w = [NONE; MAX_ORDER];
    for (slot, &id) in w.iter_mut().zip(g.iter().rev()) {
        *slot = id;
    }
    table.add(&w)
}

/// Writes the records of the n-grams the merge finds.
struct Emitter<'a> {
    vocab: &'a Vocab,
    items: &'a mut [(PathBuf, BufWriter<File>)],
    empty: &'a mut Row,
}

impl Emitter<'_> {
    /// An n-gram (`rev`: its ids last word first) and its count: a count record for its row,
    /// and a contribution to its context's (the n-gram without its last word).
    fn gram(&mut self, rev: &[u32], count: u64) -> Result<()> {
        let k = rev.len();
        let mut keys = [0u64; MAX_ORDER];
        for (slot, &id) in keys.iter_mut().zip(rev.iter().rev()) {
            *slot = self.vocab.keys[id as usize];
        }
        let key = ngram_key(&keys[..k]);
        Item { key, value: count }.put(&mut self.items[k].1)?;
        if k == 1 {
            self.empty.sum += count;
            self.empty.n[count.min(3) as usize - 1] += 1;
        } else {
            let ctx = ngram_key(&keys[..k - 1]);
            Item {
                key: ctx,
                value: count | CONTRIB,
            }
            .put(&mut self.items[k - 1].1)?;
        }
        Ok(())
    }
}

/// Calls `f` with each group of equal keys of the records in `path`, in key order: sorted in
/// memory when they fit in the budget, otherwise as sorted runs merged.
fn sorted_items(
    scratch: &mut Scratch,
    path: &Path,
    memory: usize,
    f: &mut dyn FnMut(&[Item]) -> Result<()>,
) -> Result<()> {
    let cap = (working(memory) / Item::BYTES).max(16);
    let mut runs = Vec::new();
    let mut buf: Vec<Item> = Vec::with_capacity(cap);
    {
        let mut r = scratch.open(path)?;
        while let Some(it) = Item::get(&mut r)? {
            buf.push(it);
            if buf.len() == cap {
                buf.sort_unstable_by_key(|i| i.key);
                runs.push(write_run(scratch, &buf)?);
                buf.clear();
            }
        }
    }
    let _ = std::fs::remove_file(path);
    let mut group: Vec<Item> = Vec::new();
    if runs.is_empty() {
        buf.sort_unstable_by_key(|i| i.key);
        for g in buf.chunk_by(|a, b| a.key == b.key) {
            f(g)?;
        }
        return Ok(());
    }
    if !buf.is_empty() {
        buf.sort_unstable_by_key(|i| i.key);
        runs.push(write_run(scratch, &buf)?);
    }
    drop(buf);
    let mut merge = Merge::<Item>::open(scratch, runs)?;
    while let Some(it) = merge.next()? {
        if group.first().is_some_and(|g| g.key != it.key) {
            f(&group)?;
            group.clear();
        }
        group.push(it);
    }
    if !group.is_empty() {
        f(&group)?;
    }
    Ok(())
}
