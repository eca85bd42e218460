//! The vocabulary: words with their counts, stored in the parameter server.
//!
//! Nothing here holds the whole vocabulary in a trainer's memory:
//!
//! - **Counting** streams over the corpus with a bounded table of distinct words. When it has
//!   `spill_entries` words it adds their counts to the server and starts again, so the counts
//!   are exact and memory is bounded however many distinct words the corpus has.
//! - **Summaries** (`summarize`) stream over the stored vocabulary once: its size, total count,
//!   the normalizer of the unigram^0.75 noise distribution and the `top` most frequent words.
//!   Rows of words below `min_count` are deleted there, so afterwards "in the vocabulary" is
//!   simply "count above zero" (a deleted row pulls zeros) for every process and tool, and
//!   the rare words' rows take no space.
//! - **Noise** (`noise_table`) is a fixed-size table of keys filled in proportion to
//!   count^0.75 in a second streaming pass, as word2vec's own table is.
//!
//! The vocabulary table `<model>.vocab` is keyed like the word's rows (`keys::word_key`), so
//! tools look words up and export by word without the corpus. A row is
//! `[count as 4 × 16 bits][byte length][2 bytes per float …]`, under the `add` rule.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use rustc_hash::FxHashMap;

use paramdb_client::{BlockingClient, KeyRange, TableSpec, UpdateRule};

use crate::corpus::PartReader;
use crate::error::{Result, TrainError};
use crate::keys::{f32s_to_u64, u64_to_f32s, word_key};

/// Longest word kept, in bytes (as word2vec's `MAX_STRING`).
pub const MAX_WORD_BYTES: usize = 100;
/// Dim of the vocabulary table: 4 floats of count, 1 of length, 2 bytes per float after.
pub const VOCAB_DIM: u32 = 5 + MAX_WORD_BYTES.div_ceil(2) as u32;
/// Keys per pull or push while counting and summarizing.
const CHUNK: usize = 16_384;

/// Whether `word` can be in a vocabulary at all.
pub fn acceptable(word: &str) -> bool {
    !word.is_empty() && word.len() <= MAX_WORD_BYTES
}

/// Words and counts, sorted by count (descending), then by word: a whole vocabulary in
/// memory, for tools that need it (evaluation, neighbours). Trainers never build one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vocab {
    pub words: Vec<String>,
    pub counts: Vec<u64>,
    index: FxHashMap<String, u32>,
}

impl Vocab {
    /// Builds from (word, count) pairs: keeps those with `count >= min_count`, sorts them.
    pub fn from_counts(counts: impl IntoIterator<Item = (String, u64)>, min_count: u64) -> Vocab {
        let mut v: Vec<(String, u64)> = counts
            .into_iter()
            .filter(|(w, c)| *c >= min_count && acceptable(w))
            .collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let index = v
            .iter()
            .enumerate()
            .map(|(i, (w, _))| (w.clone(), i as u32))
            .collect();
        let (words, counts) = v.into_iter().unzip();
        Vocab {
            words,
            counts,
            index,
        }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn get(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// Total count of the words in the vocabulary.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Name of a model's vocabulary table.
pub fn table(model: &str) -> String {
    format!("{model}.vocab")
}

/// The vocabulary row of `word` with `count` (what `decode` reads back).
pub fn encode(word: &str, count: u64) -> Vec<f32> {
    let mut row = vec![0.0f32; VOCAB_DIM as usize];
    row[..4].copy_from_slice(&u64_to_f32s(count));
    row[4] = word.len() as f32;
    for (i, pair) in word.as_bytes().chunks(2).enumerate() {
        let hi = pair.get(1).copied().unwrap_or(0) as u32;
        row[5 + i] = (pair[0] as u32 | hi << 8) as f32;
    }
    row
}

/// The word and count a vocabulary row holds. A row never written, or zeroed because its word
/// fell below the minimum count, decodes as `("", 0)`.
pub fn decode(row: &[f32]) -> Option<(String, u64)> {
    let count = f32s_to_u64(&row[..4])?;
    let len = row[4] as usize;
    if len > MAX_WORD_BYTES || row[4].fract() != 0.0 {
        return None;
    }
    let mut bytes = Vec::with_capacity(len + 1);
    for &v in &row[5..5 + len.div_ceil(2)] {
        let v = v as u32;
        bytes.push((v & 0xff) as u8);
        bytes.push((v >> 8) as u8);
    }
    bytes.truncate(len);
    Some((String::from_utf8(bytes).ok()?, count))
}

/// The count a vocabulary row holds (0 for a word not in the vocabulary).
pub fn decode_count(row: &[f32]) -> Option<u64> {
    f32s_to_u64(&row[..4])
}

/// The error for a vocabulary row that does not decode.
pub(crate) fn undecodable(model: &str, key: u64) -> TrainError {
    TrainError::Mismatch {
        model: model.to_string(),
        reason: format!("vocabulary row {key} does not decode"),
    }
}

/// What counting saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CountReport {
    /// Tokens counted (words of acceptable length).
    pub tokens: u64,
    /// Times the in-memory table was added to the server.
    pub spills: u64,
    /// Distinct words whose 64-bit keys collided with another word's (counted together).
    pub collisions: u64,
}

/// Counts the words of `corpus` into the model's vocabulary table, which this creates (it must
/// not exist). At most `spill_entries` distinct words are held in memory at once.
pub fn count_into(
    client: &BlockingClient,
    model: &str,
    corpus: &Path,
    spill_entries: usize,
) -> Result<CountReport> {
    let t = table(model);
    client.create_table(TableSpec::new(&t, VOCAB_DIM).with_rule(UpdateRule::Add))?;
    let len = std::fs::metadata(corpus)
        .map_err(|e| TrainError::io(format!("reading {}", corpus.display()), e))?
        .len();
    let mut r = PartReader::open(corpus, 0, len, None)?;
    let mut counts: FxHashMap<u64, (Box<str>, u64)> = FxHashMap::default();
    let mut report = CountReport::default();
    while let Some(line) = r.next_line()? {
        for w in line.split_whitespace().filter(|w| acceptable(w)) {
            report.tokens += 1;
            counts
                .entry(word_key(w))
                .and_modify(|e| e.1 += 1)
                .or_insert_with(|| (w.into(), 1));
        }
        if counts.len() >= spill_entries.max(1) {
            report.collisions += spill(client, model, &mut counts)?;
            report.spills += 1;
            tracing::debug!(spills = report.spills, "added word counts to the server");
        }
    }
    report.collisions += spill(client, model, &mut counts)?;
    report.spills += 1;
    Ok(report)
}

/// Loads the counts of a word2vec.c vocabulary file (`word count` per line, as `-save-vocab`
/// writes it) into the model's vocabulary table, which this creates, instead of counting a
/// corpus. `</s>` (word2vec.c's sentence end) is skipped, and words longer than
/// `MAX_WORD_BYTES` are left out as they are when counting. A word listed twice has its counts
/// added. At most `spill_entries` distinct words are held in memory at once.
pub fn load_counts_file(
    client: &BlockingClient,
    model: &str,
    file: &Path,
    spill_entries: usize,
) -> Result<CountReport> {
    use std::io::BufRead;
    let t = table(model);
    let io = |e| TrainError::io(format!("reading {}", file.display()), e);
    let f = std::fs::File::open(file).map_err(io)?;
    client.create_table(TableSpec::new(&t, VOCAB_DIM).with_rule(UpdateRule::Add))?;
    let mut counts: FxHashMap<u64, (Box<str>, u64)> = FxHashMap::default();
    let mut report = CountReport::default();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io)?;
        let mut parts = line.split_whitespace();
        let (Some(word), Some(count), None) = (parts.next(), parts.next(), parts.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(TrainError::Invalid(format!(
                "{} line {}: expected `word count`, found {}",
                file.display(),
                n + 1,
                crate::quote(&line)
            )));
        };
        let count: u64 = count.parse().map_err(|_| {
            TrainError::Invalid(format!(
                "{} line {}: the count {} is not a whole number",
                file.display(),
                n + 1,
                crate::quote(count)
            ))
        })?;
        if word == "</s>" || !acceptable(word) {
            continue;
        }
        report.tokens += count;
        counts
            .entry(word_key(word))
            .and_modify(|e| e.1 += count)
            .or_insert_with(|| (word.into(), count));
        if counts.len() >= spill_entries.max(1) {
            report.collisions += spill(client, model, &mut counts)?;
            report.spills += 1;
        }
    }
    report.collisions += spill(client, model, &mut counts)?;
    report.spills += 1;
    Ok(report)
}

/// Adds `counts` to the vocabulary table and empties it. Each row is read first so that it
/// stays normalized (every 16-bit piece below 65536) and a new word's bytes are written once.
fn spill(
    client: &BlockingClient,
    model: &str,
    counts: &mut FxHashMap<u64, (Box<str>, u64)>,
) -> Result<u64> {
    let t = table(model);
    let entries: Vec<(u64, (Box<str>, u64))> = counts.drain().collect();
    *counts = FxHashMap::default(); // give the memory back, not only the entries
    let mut collisions = 0;
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<u64> = chunk.iter().map(|(k, _)| *k).collect();
        let old = client.pull(&t, &keys)?;
        let mut delta = Vec::with_capacity(old.len());
        for ((key, (word, add)), old) in chunk.iter().zip(old.chunks(VOCAB_DIM as usize)) {
            let (stored, count) = decode(old).ok_or_else(|| undecodable(model, *key))?;
            let keep = if count == 0 { word.as_ref() } else { &stored };
            if count > 0 && stored != word.as_ref() {
                collisions += 1;
                tracing::warn!(key, stored = %stored, word = %word, "two words share a key; counting them as one");
            }
            delta.extend(
                encode(keep, count + add)
                    .iter()
                    .zip(old)
                    .map(|(n, o)| n - o),
            );
        }
        client.push(&t, &keys, &delta)?;
    }
    Ok(collisions)
}

/// One streaming pass over a stored vocabulary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Words in the vocabulary (count at least the minimum).
    pub words: u64,
    /// Their total count: the words one epoch trains on.
    pub total: u64,
    /// Σ count^0.75 over the vocabulary: the noise distribution's normalizer.
    pub noise_norm: f64,
    /// The most frequent words (key, count), at most the `top` asked for, most frequent first.
    pub top: Vec<(u64, u64)>,
}

impl Summary {
    /// Whether `top` is the whole vocabulary.
    pub fn complete(&self) -> bool {
        self.top.len() as u64 == self.words
    }
}

/// Reads the whole vocabulary table once, in blocks. With `min_count` above 1, rows below it
/// are deleted in the server (done once, by the process that counted): they pull zeros (the
/// table's initializer) and range reads no longer return them.
pub fn summarize(
    client: &BlockingClient,
    model: &str,
    min_count: u64,
    top: usize,
) -> Result<Summary> {
    let t = table(model);
    let mut s = Summary::default();
    let mut heap: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::with_capacity(top + 1);
    for block in client.pull_range(&t, KeyRange::new(0, u64::MAX)) {
        let block = block?;
        let dim = block.dim as usize;
        let mut drop_keys = Vec::new();
        for (&key, row) in block.keys.iter().zip(block.values.chunks(dim)) {
            let count = decode_count(row).ok_or_else(|| undecodable(model, key))?;
            if count == 0 {
                continue;
            }
            if count < min_count {
                drop_keys.push(key);
                continue;
            }
            s.words += 1;
            s.total += count;
            s.noise_norm += (count as f64).powf(0.75);
            if top > 0 {
                heap.push(Reverse((count, key)));
                if heap.len() > top {
                    heap.pop();
                }
            }
        }
        for keys in drop_keys.chunks(CHUNK) {
            client.delete(&t, keys)?;
        }
    }
    s.top = heap
        .into_sorted_vec()
        .into_iter()
        .map(|Reverse((c, k))| (k, c))
        .collect();
    Ok(s)
}

/// A fixed-size table of word keys, each appearing in proportion to count^0.75: a uniform
/// draw from it is a draw from word2vec's noise distribution, whatever the vocabulary's size.
#[derive(Debug, Clone)]
pub struct NoiseTable {
    keys: Vec<u64>,
}

/// Fills a `NoiseTable` from (key, count) pairs in any fixed order.
#[derive(Debug)]
pub struct NoiseBuilder {
    keys: Vec<u64>,
    size: usize,
    norm: f64,
    cum: f64,
}

impl NoiseBuilder {
    /// A table of `size` entries for a vocabulary with Σ count^0.75 = `norm`.
    pub fn new(size: usize, norm: f64) -> NoiseBuilder {
        NoiseBuilder {
            keys: Vec::with_capacity(size),
            size: size.max(1),
            norm,
            cum: 0.0,
        }
    }

    /// The next word: it gets the entries up to its cumulative share of the table, so a word
    /// has `⌊share⌋` or `⌈share⌉` entries and a rare word may have none.
    pub fn add(&mut self, key: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.cum += (count as f64).powf(0.75);
        let upto = ((self.cum / self.norm * self.size as f64).round() as usize).min(self.size);
        while self.keys.len() < upto {
            self.keys.push(key);
        }
    }

    pub fn finish(mut self) -> NoiseTable {
        // Rounding can leave the last entry or so unfilled.
        let last = self.keys.last().copied().unwrap_or(0);
        self.keys.resize(self.size, last);
        NoiseTable { keys: self.keys }
    }
}

impl NoiseTable {
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        self.keys[rng.random_range(0..self.keys.len())]
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Builds the noise table of `size` entries in a second streaming pass over the vocabulary.
pub fn noise_table(
    client: &BlockingClient,
    model: &str,
    summary: &Summary,
    size: usize,
) -> Result<NoiseTable> {
    let mut b = NoiseBuilder::new(size, summary.noise_norm);
    for block in client.pull_range(&table(model), KeyRange::new(0, u64::MAX)) {
        let block = block?;
        let dim = block.dim as usize;
        for (&key, row) in block.keys.iter().zip(block.values.chunks(dim)) {
            b.add(
                key,
                decode_count(row).ok_or_else(|| undecodable(model, key))?,
            );
        }
    }
    Ok(b.finish())
}

/// Reads a model's whole vocabulary into memory (for tools; trainers use `summarize`).
pub fn load(client: &BlockingClient, model: &str) -> Result<Vocab> {
    let t = table(model);
    let mut pairs = Vec::new();
    for block in client.pull_range(&t, KeyRange::new(0, u64::MAX)) {
        let block = block?;
        let dim = block.dim as usize;
        for (k, row) in block.keys.iter().zip(block.values.chunks(dim)) {
            let (w, c) = decode(row).ok_or_else(|| undecodable(model, *k))?;
            if c > 0 {
                pairs.push((w, c));
            }
        }
    }
    Ok(Vocab::from_counts(pairs, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use paramdb_client::{ClientOptions, StoreOptions};
    use rand::SeedableRng;

    fn client(dir: &Path, shards: usize) -> BlockingClient {
        BlockingClient::open_embedded(
            dir,
            shards,
            StoreOptions::default(),
            ClientOptions::default(),
        )
        .unwrap()
    }

    #[test]
    fn rows_round_trip_words_and_counts() {
        for (w, c) in [
            ("a", 1),
            ("hello", 123_456_789_012),
            ("naïve", 5),
            ("ab", 0),
        ] {
            assert_eq!(decode(&encode(w, c)), Some((w.to_string(), c)));
        }
        let long = "x".repeat(MAX_WORD_BYTES);
        assert_eq!(decode(&encode(&long, 2)), Some((long, 2)));
        assert_eq!(decode(&[0.0; VOCAB_DIM as usize]), Some((String::new(), 0)));
    }

    #[test]
    fn counts_spilled_to_the_server_are_exact_and_rare_words_are_dropped_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        let mut text = String::new();
        for i in 0..3000 {
            // 69,000 occurrences of "the" carry its count past the low 16-bit piece.
            text.push_str(&"the ".repeat(23));
            text.push_str(&format!("cat rare{i} rare{}\n", i / 2));
        }
        text.push_str(&format!("{} ok\n", "y".repeat(MAX_WORD_BYTES + 1)));
        std::fs::write(&path, text).unwrap();
        let c = client(&dir.path().join("db"), 2);
        // At most 50 distinct words in memory: many spills, each adding to stored counts.
        let r = count_into(&c, "m", &path, 50).unwrap();
        assert!(r.spills > 20, "{r:?}");
        assert_eq!(r.tokens, 3000 * 26 + 1);
        let all = load(&c, "m").unwrap();
        assert_eq!(all.words.len(), 2 + 3000 + 1);
        assert_eq!(all.counts[all.get("the").unwrap() as usize], 69_000);
        assert_eq!(all.counts[all.get("cat").unwrap() as usize], 3000);
        assert_eq!(all.counts[all.get("rare10").unwrap() as usize], 3);
        assert_eq!(all.counts[all.get("rare2000").unwrap() as usize], 1);
        assert!(all.get(&"y".repeat(MAX_WORD_BYTES + 1)).is_none());

        let s = summarize(&c, "m", 2, 3).unwrap();
        // Kept: the, cat and rare0 … rare1499 (3 each); rare1500 … rare2999 and ok have 1.
        let kept: Vec<(String, u64)> = all
            .words
            .iter()
            .cloned()
            .zip(all.counts.iter().copied())
            .filter(|(_, c)| *c >= 2)
            .collect();
        assert_eq!(s.words, kept.len() as u64);
        assert_eq!(s.total, kept.iter().map(|(_, c)| c).sum::<u64>());
        assert_eq!(
            s.top.iter().map(|(k, _)| *k).collect::<Vec<_>>()[..2],
            [word_key("the"), word_key("cat")]
        );
        assert!(!s.complete());
        // Words below the minimum are gone for every later reader, and a second summary
        // (a resumed or second trainer process) agrees with the first.
        let after = load(&c, "m").unwrap();
        assert_eq!(after.len(), kept.len());
        assert!(after.get("rare2000").is_none() && after.get("rare10").is_some());
        let again = summarize(&c, "m", 1, 3).unwrap();
        assert_eq!(again, s);
        assert!(summarize(&c, "m", 1, 10_000).unwrap().complete());
    }

    #[test]
    fn noise_table_draws_in_proportion_to_count_to_the_three_quarters() {
        let counts = [(7u64, 1000u64), (3, 100), (9, 10), (1, 1)];
        let norm: f64 = counts.iter().map(|(_, c)| (*c as f64).powf(0.75)).sum();
        let mut b = NoiseBuilder::new(1 << 16, norm);
        for (k, c) in counts {
            b.add(k, c);
        }
        let t = b.finish();
        assert_eq!(t.len(), 1 << 16);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let n = 400_000;
        let mut seen = FxHashMap::default();
        for _ in 0..n {
            *seen.entry(t.sample(&mut rng)).or_insert(0u64) += 1;
        }
        for (k, c) in counts {
            let want = (c as f64).powf(0.75) / norm;
            let got = seen.get(&k).copied().unwrap_or(0) as f64 / n as f64;
            assert!((got - want).abs() < 0.01, "key {k}: {got} vs {want}");
        }
    }
}
