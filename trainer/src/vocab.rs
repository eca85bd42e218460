//! The vocabulary: words with their counts, most frequent first.
//!
//! Counting streams over the corpus with word2vec's pruning: when the table of distinct words
//! passes a limit, every word seen at most `min_reduce` times is dropped and `min_reduce`
//! grows, so memory stays bounded however many rare words the corpus has (the counts of the
//! words kept stay exact whenever they are above the final `min_reduce`).
//!
//! The vocabulary is also stored in the parameter server, in a table `<model>.vocab` keyed
//! like the word's rows, so tools can look words up and export by word without the corpus. A
//! row of that table is `[count as 4 × 16 bits][byte length][2 bytes per float …]`.

use rustc_hash::FxHashMap;
use std::path::Path;

use paramdb_client::{BlockingClient, KeyRange, TableSpec};

use crate::corpus::PartReader;
use crate::error::{Result, TrainError};
use crate::keys::{f32s_to_u64, u64_to_f32s, word_key};

/// Longest word kept, in bytes (as word2vec's `MAX_STRING`).
pub const MAX_WORD_BYTES: usize = 100;
/// Dim of the vocabulary table: 4 floats of count, 1 of length, 2 bytes per float after.
pub const VOCAB_DIM: u32 = 5 + MAX_WORD_BYTES.div_ceil(2) as u32;

/// Words and counts, sorted by count (descending), then by word.
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
            .filter(|(w, c)| *c >= min_count && !w.is_empty() && w.len() <= MAX_WORD_BYTES)
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

    pub fn keys(&self) -> Vec<u64> {
        self.words.iter().map(|w| word_key(w)).collect()
    }
}

/// Counts the words of `corpus` with pruning past `max_entries` distinct words.
pub fn count(corpus: &Path, max_entries: usize) -> Result<FxHashMap<String, u64>> {
    let len = std::fs::metadata(corpus)
        .map_err(|e| TrainError::io(format!("reading {}", corpus.display()), e))?
        .len();
    let mut r = PartReader::open(corpus, 0, len, None)?;
    let mut counts: FxHashMap<String, u64> = FxHashMap::default();
    let mut min_reduce = 1;
    while let Some(line) = r.next_line()? {
        for w in line.split_whitespace() {
            match counts.get_mut(w) {
                Some(c) => *c += 1,
                None => {
                    counts.insert(w.to_string(), 1);
                }
            }
        }
        if counts.len() > max_entries {
            counts.retain(|_, c| *c > min_reduce);
            tracing::info!(
                min_reduce,
                kept = counts.len(),
                "pruned rare words while counting"
            );
            min_reduce += 1;
        }
    }
    Ok(counts)
}

/// Name of a model's vocabulary table.
pub fn table(model: &str) -> String {
    format!("{model}.vocab")
}

fn encode(word: &str, count: u64) -> Vec<f32> {
    let mut row = vec![0.0f32; VOCAB_DIM as usize];
    row[..4].copy_from_slice(&u64_to_f32s(count));
    row[4] = word.len() as f32;
    for (i, pair) in word.as_bytes().chunks(2).enumerate() {
        let hi = pair.get(1).copied().unwrap_or(0) as u32;
        row[5 + i] = (pair[0] as u32 | hi << 8) as f32;
    }
    row
}

/// The word and count a vocabulary row holds.
pub fn decode(row: &[f32]) -> Option<(String, u64)> {
    let count = f32s_to_u64(&row[..4])?;
    let len = row[4] as usize;
    if len > MAX_WORD_BYTES {
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

/// Stores `vocab` in the server (the table must not exist yet).
pub fn store(client: &BlockingClient, model: &str, vocab: &Vocab) -> Result<()> {
    let t = table(model);
    client.create_table(TableSpec::new(&t, VOCAB_DIM))?;
    for chunk in (0..vocab.len()).collect::<Vec<_>>().chunks(8192) {
        let keys: Vec<u64> = chunk.iter().map(|&i| word_key(&vocab.words[i])).collect();
        let values: Vec<f32> = chunk
            .iter()
            .flat_map(|&i| encode(&vocab.words[i], vocab.counts[i]))
            .collect();
        client.push(&t, &keys, &values)?;
    }
    Ok(())
}

/// Reads a model's vocabulary back from the server.
pub fn load(client: &BlockingClient, model: &str) -> Result<Vocab> {
    let t = table(model);
    let mut pairs = Vec::new();
    for block in client.pull_range(&t, KeyRange::new(0, u64::MAX)) {
        let block = block?;
        let dim = block.dim as usize;
        for (k, row) in block.keys.iter().zip(block.values.chunks(dim)) {
            let (w, c) = decode(row).ok_or_else(|| TrainError::Mismatch {
                model: model.to_string(),
                reason: format!("vocabulary row {k} does not decode"),
            })?;
            pairs.push((w, c));
        }
    }
    Ok(Vocab::from_counts(pairs, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn counting_prunes_rare_words_but_keeps_frequent_ones_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!("the cat rare{i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let c = count(&path, 100).unwrap();
        assert_eq!(c["the"], 2000);
        assert_eq!(c["cat"], 2000);
        assert!(c.len() <= 101);
        let v = Vocab::from_counts(c, 2);
        assert_eq!(v.words, vec!["cat", "the"]);
        assert_eq!(v.get("the"), Some(1));
    }
}
