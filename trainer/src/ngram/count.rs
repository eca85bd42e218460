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

use paramdb_client::{BlockingClient, KeyRange};

use super::sync::Peers;
use super::{
    count_table, dim_of, is_dev, ngram_key, spell, CountConfig, CountOfCounts, Row, BOS, EMPTY,
    EOS, MAX_ORDER,
};
use crate::corpus::PartReader;
use crate::error::{Result, TrainError};
use crate::keys::word_key;

/// Smallest memory budget accepted.
pub const MIN_MEMORY: usize = 64 << 10;
/// What a counting process needs beside its working memory: its code, the client and its
/// buffers, the reading thread's batches, the vocabulary and its spellings (measured: about
/// 30 MiB against a server).
const RESERVE: usize = 32 << 20;

/// Bytes the count table, or the sort buffer, may take of a budget of `memory` bytes: 85% of
/// what the reserve leaves, and at least a quarter of the budget. Only one of them exists at
/// a time.
fn working(memory: usize) -> usize {
    (memory.saturating_sub(RESERVE) / 20 * 17).max(memory / 4)
}
/// Budgets from which the spellings are imported beside the rows, not after them.
const CONCURRENT_SPELLINGS: usize = 256 << 20;
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

/// Words to dense ids, and back to their keys and spellings.
#[derive(Default)]
struct Vocab {
    ids: FxHashMap<u64, u32>,
    keys: Vec<u64>,
    /// Spellings end to end; word `i` ends at `ends[i]`.
    text: String,
    ends: Vec<usize>,
}

impl Vocab {
    /// The word's number and key.
    fn id(&mut self, word: &str) -> Result<(u32, u64)> {
        let key = word_key(word);
        if let Some(&i) = self.ids.get(&key) {
            return Ok((i, key));
        }
        let i = u32::try_from(self.keys.len())
            .ok()
            .filter(|&i| i < NONE)
            .ok_or_else(|| TrainError::Invalid("more than 2^32 - 1 distinct words".into()))?;
        self.ids.insert(key, i);
        self.keys.push(key);
        self.text.push_str(word);
        self.ends.push(self.text.len());
        Ok((i, key))
    }

    fn word(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// The spelling tables' rows of every word (`spell`), keyed by `process` and number.
    fn import(&self, client: &BlockingClient, model: &str, process: u64) -> Result<()> {
        let mut more = Vec::new();
        let mut import = client.import(&spell::words_table(model))?;
        for i in 0..self.keys.len() {
            let key = spell::row_key(process, i as u64);
            let (first, rest) = spell::encode_word(key, self.word(i));
            import.add(key, &first)?;
            more.extend(rest);
        }
        import.finish()?;
        if !more.is_empty() {
            more.sort_unstable_by_key(|(k, _)| *k);
            let mut import = client.import(&spell::more_table(model))?;
            for (k, r) in &more {
                import.add(*k, r)?;
            }
            import.finish()?;
        }
        Ok(())
    }
}

/// What the streamed count found.
pub(super) struct Counted {
    pub lines: u64,
    pub tokens: u64,
    /// Sorted runs of the first phase written to disk.
    pub runs: u64,
    pub coc: Vec<CountOfCounts>,
    /// N-grams of each order spelled in `<m>.ng<k>`.
    pub grams: Vec<u64>,
}

/// Counts `corpus` (`len` bytes; lines outside the dev split) into `model`'s count tables,
/// which exist and are empty, holding about `cfg.memory` bytes.
pub(super) fn count(
    client: &BlockingClient,
    model: &str,
    corpus: &Path,
    len: u64,
    cfg: &CountConfig,
    peers: &Peers<'_>,
    on_progress: &dyn Fn(u64, u64),
) -> Result<Counted> {
    let (n, dev_every, memory) = (cfg.order, cfg.dev_every, cfg.memory);
    let process = cfg.process as u64;
    let mut scratch = Scratch::new(cfg.temp_dir.as_deref(), memory)?;

    // 1. Count into the table, spilling sorted runs. One thread reads the corpus and numbers
    // its words, the other counts their n-grams.
    let mut vocab = Vocab::default();
    let mut runs = Vec::new();
    let (lines, tokens) = {
        let need = entries_bound(corpus, len, n)?.saturating_mul(ENTRY_BYTES) / 7 * 8;
        let mut table = Table::new(working(memory).min(need.max(1 << 20)));
        let mut spill = |table: &mut Table, runs: &mut Vec<PathBuf>| {
            table.drain_sorted(|live| {
                runs.push(write_run(&mut scratch, live)?);
                Ok(())
            })
        };
        let vocab = &mut vocab;
        std::thread::scope(|s| -> Result<(u64, u64)> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Sentences>(2);
            let part = (process, cfg.processes as u64);
            let reader =
                s.spawn(move || read_sentences(corpus, len, dev_every, part, memory, vocab, tx));
            for batch in rx {
                let mut start = 0;
                let split = !batch.mine.is_empty();
                for &end in &batch.ends {
                    let ids = &batch.ids[start..end];
                    let mine = |last: usize| !split || batch.mine[start + last];
                    // The highest order's windows, and the shorter n-grams that begin with
                    // <s>. (A unigram model counts words and </s>, not <s>.)
                    let from = usize::from(n == 1);
                    for (i, g) in ids[from..].windows(n).enumerate() {
                        if mine(from + i + n - 1) && add_gram(&mut table, g) {
                            spill(&mut table, &mut runs)?;
                        }
                    }
                    for k in 2..n.min(ids.len() + 1) {
                        if mine(k - 1) && add_gram(&mut table, &ids[..k]) {
                            spill(&mut table, &mut runs)?;
                        }
                    }
                    start = end;
                }
                on_progress(batch.position, len);
            }
            let counted = reader.join().expect("the corpus reader does not panic")?;
            if table.len > 0 {
                spill(&mut table, &mut runs)?;
            }
            Ok(counted)
        })?
    };
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
    let mut spells: Vec<(PathBuf, BufWriter<File>)> =
        (0..=n).map(|_| scratch.file()).collect::<Result<_>>()?;
    let mut grams = vec![0u64; n + 1];
    let mut empty = Row::default();
    {
        let mut merge = Merge::<Entry>::open(&mut scratch, runs)?;
        let mut emit = Emitter {
            vocab: &vocab,
            items: &mut items,
            spells: &mut spells,
            grams: &mut grams,
            suffix: [0; MAX_ORDER + 1],
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
            // Spellings name each n-gram's suffix by its place in the order below, so an
            // n-gram is emitted before its suffix and after every shorter n-gram that sorts
            // before that suffix: completed suffixes first, longest first, then the n-gram.
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
                    for (k, &a) in adjusted.iter().enumerate().take(plen).skip(l + 1).rev() {
                        emit.gram(&p.words[..k], a)?;
                    }
                    if l >= 1 {
                        adjusted[l] += 1;
                    }
                    l
                }
                None => 0,
            };
            emit.gram(&e.words[..len], e.count)?;
            for a in adjusted.iter_mut().take(len).skip(common + 1) {
                *a = 1;
            }
            prev = Some(e);
            cur = next;
        }
        if let Some(p) = prev {
            for (k, &a) in adjusted.iter().enumerate().take(p.len()).skip(1).rev() {
                emit.gram(&p.words[..k], a)?;
            }
        }
    }
    vocab.import(client, model, process)?;
    drop(vocab);

    let mut spelled = Vec::new();
    for (path, mut w) in spells.into_iter().skip(1) {
        w.flush().map_err(write_err)?;
        drop(w);
        spelled.push(path);
    }

    // 3. Each order's records sorted by key, grouped into rows, imported; meanwhile, on a
    // second thread, the spellings (they take no sorting, and the sort leaves a core idle).
    // A second import in flight holds its own buffers, so a small budget imports them after.
    let buf = scratch.buf;
    let at_once = memory >= CONCURRENT_SPELLINGS;
    let spellings = || -> Result<()> {
        for (i, path) in spelled.iter().enumerate() {
            import_spellings(client, model, i + 1, buf, path, process)?;
        }
        Ok(())
    };
    let coc = std::thread::scope(|s| {
        let spelling = at_once.then(|| s.spawn(spellings));
        let into = |k: usize| match cfg.processes {
            1 => count_table(model, k),
            _ => staging_table(model, k, cfg.process),
        };
        let coc = import_rows(client, &into, n, &mut scratch, items, memory, &empty);
        let spelled = match spelling {
            Some(t) => t.join().expect("the spelling import does not panic"),
            None => coc.as_ref().map_or(Ok(()), |_| spellings()),
        };
        spelled.and(coc)
    })?;
    // 4. With several processes, the rows above are this process's share of every row;
    // each process now sums all shares of the rows in its key range.
    let coc = if cfg.processes == 1 {
        coc
    } else {
        peers.barrier(super::sync::STAGED)?;
        let range = key_range(cfg.process, cfg.processes);
        (0..=n)
            .map(|k| {
                let from: Vec<String> = (0..cfg.processes)
                    .map(|p| staging_table(model, k, p))
                    .collect();
                sum_shares(client, &from, range, &count_table(model, k), dim_of(k, n))
            })
            .collect::<Result<_>>()?
    };
    Ok(Counted {
        lines,
        tokens,
        runs: n_runs,
        coc,
        grams,
    })
}

/// Sentences as word numbers (`<s> … </s>`), a batch at a time from the reading thread.
struct Sentences {
    ids: Vec<u32>,
    /// With several processes: whether each word is this process's (n-grams belong to the
    /// process of their last word).
    mine: Vec<bool>,
    /// Where each sentence ends in `ids`.
    ends: Vec<usize>,
    /// The reader's byte position after the batch.
    position: u64,
}

/// Reads `corpus` (`len` bytes; lines outside the dev split) into batches of sentences, words
/// numbered by `vocab`, sent to `tx`; the lines and predicted tokens read. Stops early, with
/// no error, if the receiver is gone.
fn read_sentences(
    corpus: &Path,
    len: u64,
    dev_every: u64,
    (process, processes): (u64, u64),
    memory: usize,
    vocab: &mut Vocab,
    tx: std::sync::mpsc::SyncSender<Sentences>,
) -> Result<(u64, u64)> {
    let batch_ids = (memory / 256).clamp(4096, 1 << 18);
    let mut reader = PartReader::open(corpus, 0, len, None)?;
    let (bos, eos) = (vocab.id(BOS)?, vocab.id(EOS)?);
    let split = processes > 1;
    let (mut lines, mut tokens) = (0u64, 0u64);
    let fresh = || Sentences {
        ids: Vec::with_capacity(batch_ids + 4096),
        mine: Vec::new(),
        ends: Vec::new(),
        position: 0,
    };
    let mut batch = fresh();
    loop {
        let at = reader.position();
        let Some(line) = reader.next_line()? else {
            break;
        };
        if is_dev(dev_every, at) {
            continue;
        }
        // As `sentence` reads a line.
        let start = batch.ids.len();
        let mut push = |(id, key): (u32, u64)| {
            batch.ids.push(id);
            if split {
                batch.mine.push(key % processes == process);
            }
        };
        push(bos);
        for w in line.split_whitespace().filter(|w| *w != BOS && *w != EOS) {
            push(vocab.id(w)?);
        }
        push(eos);
        batch.ends.push(batch.ids.len());
        lines += 1;
        tokens += (batch.ids.len() - start) as u64 - 1;
        if batch.ids.len() >= batch_ids {
            batch.position = reader.position();
            if tx.send(std::mem::replace(&mut batch, fresh())).is_err() {
                return Ok((lines, tokens));
            }
        }
    }
    batch.position = reader.position();
    let _ = tx.send(batch);
    Ok((lines, tokens))
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

/// Sorts each order's records (`items`, a file per order) by key, groups them into rows and
/// imports them, with the empty context's row; the count-of-counts of each order.
fn import_rows(
    client: &BlockingClient,
    into: &dyn Fn(usize) -> String,
    n: usize,
    scratch: &mut Scratch,
    items: Vec<(PathBuf, BufWriter<File>)>,
    memory: usize,
    empty: &Row,
) -> Result<Vec<CountOfCounts>> {
    let mut coc = vec![CountOfCounts::default(); n + 1];
    for (k, (path, mut w)) in items.into_iter().enumerate() {
        w.flush().map_err(write_err)?;
        drop(w);
        if k == 0 {
            continue;
        }
        let dim = dim_of(k, n);
        let mut import = client.import(&into(k))?;
        let mut put = |key: u64, row: Row| -> Result<()> {
            coc[k].add(0, row.count);
            import.add(key, &row.encode(dim))?;
            Ok(())
        };
        sorted_items(scratch, &path, memory, &mut |group| {
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
    let mut import = client.import(&into(0))?;
    import.add(EMPTY, &empty.encode(dim_of(0, n)))?;
    import.finish()?;
    Ok(coc)
}

/// Where process `p` stages its share of order `k`'s rows for the others.
pub(super) fn staging_table(model: &str, k: usize, p: usize) -> String {
    format!("{model}.kn{k}.part{p}")
}

/// The keys whose rows process `p` of `n` writes: an `n`th of the key space (keys are hashes).
fn key_range(p: usize, n: usize) -> KeyRange {
    let at = |i: usize| ((i as u128) << 64) / n as u128;
    let end = if p + 1 == n {
        u64::MAX
    } else {
        at(p + 1) as u64
    };
    KeyRange::new(at(p) as u64, end)
}

/// Sums the shares of the rows of `range` staged in `from` (each in key order) into `into`;
/// the count-of-counts of the rows written.
fn sum_shares(
    client: &BlockingClient,
    from: &[String],
    range: KeyRange,
    into: &str,
    dim: usize,
) -> Result<CountOfCounts> {
    /// One staged table's rows, a block at a time.
    struct Share {
        rows: paramdb_client::BlockingRows,
        table: String,
        block: paramdb_client::RowBlock,
        at: usize,
    }
    impl Share {
        fn head(&mut self) -> Result<Option<u64>> {
            while self.at == self.block.keys.len() {
                match self.rows.next() {
                    None => return Ok(None),
                    Some(b) => (self.block, self.at) = (b?, 0),
                }
            }
            Ok(Some(self.block.keys[self.at]))
        }
        fn take(&mut self) -> Result<Row> {
            let d = self.block.dim as usize;
            let r = &self.block.values[self.at * d..(self.at + 1) * d];
            let key = self.block.keys[self.at];
            self.at += 1;
            Row::decode(r).ok_or_else(|| super::undecodable(&self.table, key))
        }
    }
    let mut shares: Vec<Share> = from
        .iter()
        .map(|t| Share {
            rows: client.pull_range(t, range),
            table: t.clone(),
            block: paramdb_client::RowBlock {
                dim: dim as u32,
                keys: Vec::new(),
                values: Vec::new(),
            },
            at: 0,
        })
        .collect();
    let mut coc = CountOfCounts::default();
    let mut import = client.import(into)?;
    loop {
        let mut next: Option<u64> = None;
        for s in &mut shares {
            if let Some(k) = s.head()? {
                next = Some(next.map_or(k, |n| n.min(k)));
            }
        }
        let Some(key) = next else { break };
        let mut row = Row::default();
        for s in &mut shares {
            if s.head()? == Some(key) {
                let r = s.take()?;
                row.count += r.count;
                row.sum += r.sum;
                for i in 0..3 {
                    row.n[i] += r.n[i];
                }
            }
        }
        coc.add(0, row.count);
        import.add(key, &row.encode(dim))?;
    }
    import.finish()?;
    Ok(coc)
}

/// Imports order `k`'s spellings (`spell`: a word number and, above order 1, a suffix step
/// per n-gram, in `path`) into `<m>.ng<k>`, `GRAM_BLOCK` n-grams a row.
fn import_spellings(
    client: &BlockingClient,
    model: &str,
    k: usize,
    buf: usize,
    path: &Path,
    process: u64,
) -> Result<()> {
    let f =
        File::open(path).map_err(|e| TrainError::io(format!("reading {}", path.display()), e))?;
    let mut r = BufReader::with_capacity(buf, f);
    let mut import = client.import(&spell::grams_table(model, k))?;
    let per = spell::gram_floats(k);
    let mut b = vec![0u8; 2 * per];
    let mut row = vec![spell::PAD; spell::grams_dim(k)];
    let (mut at, mut seq) = (0, 0);
    while read_full(&mut r, &mut b)? {
        for (i, w) in b.chunks(4).enumerate() {
            let x = u32::from_le_bytes(w.try_into().expect("4 bytes"));
            spell::put_id(x, &mut row[at + spell::ID_FLOATS * i..]);
        }
        at += per;
        if at == row.len() {
            import.add(spell::row_key(process, seq), &row)?;
            (at, seq) = (0, seq + 1);
        }
    }
    if at > 0 {
        row[at..].fill(spell::PAD);
        import.add(spell::row_key(process, seq), &row)?;
    }
    import.finish()?;
    drop(r);
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Writes the records of the n-grams the merge finds.
struct Emitter<'a> {
    vocab: &'a Vocab,
    items: &'a mut [(PathBuf, BufWriter<File>)],
    /// Per order, the n-grams' word numbers.
    spells: &'a mut [(PathBuf, BufWriter<File>)],
    grams: &'a mut [u64],
    /// Per order, the index of the last n-gram's suffix in the order below.
    suffix: [u64; MAX_ORDER + 1],
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
        // Its first word, and how far its suffix is past the last one's (`spell`).
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&rev[k - 1].to_le_bytes());
        let bytes = if k == 1 {
            4
        } else {
            let at = self.grams[k - 1];
            let delta = u32::try_from(at - self.suffix[k]).map_err(|_| {
                TrainError::Invalid("more than 2^32 n-grams between two suffixes".into())
            })?;
            self.suffix[k] = at;
            rec[4..].copy_from_slice(&delta.to_le_bytes());
            8
        };
        self.spells[k]
            .1
            .write_all(&rec[..bytes])
            .map_err(write_err)?;
        self.grams[k] += 1;
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
