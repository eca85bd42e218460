//! Spellings: what lets a model leave paramdb as words (the ARPA export), since count rows are
//! keyed by hashes.
//!
//! A counting process numbers its words densely from 0; `row_key(process, i)` keys what it
//! writes, so processes do not collide.
//!
//! - `<m>.words`: word `i`'s row, `[byte length, 2 bytes per float …]` holding its first
//!   `WORD_BYTES` bytes. A longer word goes on in `<m>.words.more`, a row of the same form per
//!   further `WORD_BYTES` bytes, keyed by `part_key(row key, part)`; most words need one row.
//! - `<m>.ng<k>`: the n-grams of order `k` in suffix order (by last word, then the one before,
//!   …), as counting finds them, `GRAM_BLOCK` to a row (row `j` of a process holds its
//!   n-grams `GRAM_BLOCK·j …`). A unigram is its word's number. A longer n-gram is its first
//!   word's number and how far its suffix (the n-gram without its first word, order `k − 1`)
//!   is past the previous n-gram's suffix in order `k − 1`'s sequence: n-grams that share a
//!   suffix are consecutive, so this is mostly 0 or 1, and the words follow from the shorter
//!   orders read alongside (`Grams`). Numbers are two floats of 16 bits each; the last row of
//!   a process is padded with `PAD`.
//!
//! One row holds many n-grams because a row costs about the same to write whatever its width,
//! and an n-gram is two numbers whatever its order: spelled out word by word, IMDb's 50M
//! n-grams added a fifth to the time of counting.

use rustc_hash::FxHashMap;

use paramdb_client::{BlockingClient, KeyRange};

use crate::error::{Result, TrainError};

/// Bytes of a word in one row.
pub const WORD_BYTES: usize = 32;
/// Dim of the spelling tables' rows.
pub const WORD_DIM: usize = 1 + WORD_BYTES / 2;
/// N-grams in a row of `<m>.ng<k>`.
pub const GRAM_BLOCK: usize = 256;
/// Floats per word number in an n-gram.
pub const ID_FLOATS: usize = 2;
/// What fills the rest of a process's last n-gram row.
pub const PAD: f32 = -1.0;
/// Bits below a process's number in a row key.
const PROCESS_SHIFT: u32 = 40;

/// The key of a process's `i`th word, or `i`th row of n-grams.
pub fn row_key(process: u64, i: u64) -> u64 {
    process << PROCESS_SHIFT | i
}

/// The process whose word or n-gram row `key` is.
pub fn process_of(key: u64) -> u64 {
    key >> PROCESS_SHIFT
}

/// Floats per n-gram of order `k` in `<m>.ng<k>`.
pub fn gram_floats(k: usize) -> usize {
    if k == 1 {
        ID_FLOATS
    } else {
        2 * ID_FLOATS
    }
}

/// Dim of `<m>.ng<k>`.
pub fn grams_dim(k: usize) -> usize {
    GRAM_BLOCK * gram_floats(k)
}

pub fn words_table(model: &str) -> String {
    format!("{model}.words")
}

pub fn more_table(model: &str) -> String {
    format!("{model}.words.more")
}

pub fn grams_table(model: &str, order: usize) -> String {
    format!("{model}.ng{order}")
}

/// The key of part `part` (from 1) of a long word's spelling.
pub fn part_key(word: u64, part: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&word.to_le_bytes());
    b[8..].copy_from_slice(&part.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&b)
}

/// The rows spelling `word`: the first (for `<m>.words`), then each further part with its
/// key (for `<m>.words.more`).
pub fn encode_word(key: u64, word: &str) -> (Vec<f32>, Vec<(u64, Vec<f32>)>) {
    let mut parts = word.as_bytes().chunks(WORD_BYTES);
    let row = |chunk: Option<&[u8]>, len: usize| {
        let mut r = vec![0.0f32; WORD_DIM];
        r[0] = len as f32;
        for (i, pair) in chunk.unwrap_or_default().chunks(2).enumerate() {
            let hi = pair.get(1).copied().unwrap_or(0) as u32;
            r[1 + i] = (pair[0] as u32 | hi << 8) as f32;
        }
        r
    };
    let first = row(parts.next(), word.len());
    let more = parts
        .enumerate()
        .map(|(i, c)| (part_key(key, i as u64 + 1), row(Some(c), c.len())))
        .collect();
    (first, more)
}

/// The bytes a spelling row holds (at most `WORD_BYTES`), and the length its first field says.
fn decode_part(r: &[f32], out: &mut Vec<u8>) -> Option<usize> {
    let len = r
        .first()
        .copied()
        .filter(|v| v.fract() == 0.0 && *v >= 0.0)? as usize;
    let here = len.min(WORD_BYTES);
    for &v in r.get(1..1 + here.div_ceil(2))? {
        if !(0.0..65536.0).contains(&v) || v.fract() != 0.0 {
            return None;
        }
        let v = v as u32;
        out.push((v & 0xff) as u8);
        out.push((v >> 8) as u8);
    }
    let start = out.len() - 2 * here.div_ceil(2);
    out.truncate(start + here);
    Some(len)
}

/// Every word `model` spells, by its row key.
pub fn load_words(client: &BlockingClient, model: &str) -> Result<FxHashMap<u64, String>> {
    let t = words_table(model);
    let mut out = FxHashMap::default();
    let mut long: Vec<(u64, Vec<u8>, usize)> = Vec::new();
    let bad =
        |t: &str, k: u64| TrainError::Invalid(format!("spelling row {k} of {t} does not decode"));
    for block in client.pull_range(&t, KeyRange::all()) {
        let block = block?;
        for (&k, r) in block
            .keys
            .iter()
            .zip(block.values.chunks(block.dim as usize))
        {
            let mut bytes = Vec::new();
            let len = decode_part(r, &mut bytes).ok_or_else(|| bad(&t, k))?;
            if len > WORD_BYTES {
                long.push((k, bytes, len));
            } else {
                let w = String::from_utf8(bytes).map_err(|_| bad(&t, k))?;
                out.insert(k, w);
            }
        }
    }
    let more = more_table(model);
    for (k, mut bytes, len) in long {
        let parts = len.div_ceil(WORD_BYTES) as u64;
        let keys: Vec<u64> = (1..parts).map(|p| part_key(k, p)).collect();
        let rows = client.pull(&more, &keys)?;
        for r in rows.chunks(WORD_DIM) {
            decode_part(r, &mut bytes).ok_or_else(|| bad(&more, k))?;
        }
        if bytes.len() != len {
            return Err(bad(&more, k));
        }
        out.insert(k, String::from_utf8(bytes).map_err(|_| bad(&t, k))?);
    }
    Ok(out)
}

/// Word number `id` in n-gram rows.
pub fn put_id(id: u32, out: &mut [f32]) {
    out[0] = (id & 0xffff) as f32;
    out[1] = (id >> 16) as f32;
}

/// The word number at the front of `v`; `None` for padding or a value that is not one.
pub fn get_id(v: &[f32]) -> Option<u32> {
    let ok = |p: f32| (0.0..65536.0).contains(&p) && p.fract() == 0.0;
    (ok(v[0]) && ok(v[1])).then(|| v[0] as u32 | (v[1] as u32) << 16)
}

/// The counting processes that wrote `model`'s spellings.
pub fn processes(client: &BlockingClient, model: &str) -> Result<Vec<u64>> {
    let mut out: Vec<u64> = Vec::new();
    for block in client.pull_range(&grams_table(model, 1), KeyRange::all()) {
        for &k in &block?.keys {
            if out.last() != Some(&process_of(k)) {
                out.push(process_of(k));
            }
        }
    }
    Ok(out)
}

/// One order's sequence, read a row at a time: each n-gram's first word and the index of its
/// suffix in the order below.
struct Level {
    rows: paramdb_client::BlockingRows,
    table: String,
    /// (first word, suffix index) of the current row's n-grams not yet read, reversed.
    pending: Vec<(u32, u64)>,
    suffix: u64,
    /// Index of the n-gram last read (`u64::MAX`: none yet), and its words.
    index: u64,
    words: Vec<u32>,
}

impl Level {
    fn fill(&mut self, order: usize) -> Result<bool> {
        while self.pending.is_empty() {
            let Some(block) = self.rows.next() else {
                return Ok(false);
            };
            let block = block?;
            let per = gram_floats(order);
            for (&key, row) in block
                .keys
                .iter()
                .zip(block.values.chunks(block.dim as usize))
            {
                let bad =
                    || TrainError::Invalid(format!("row {key} of {} does not decode", self.table));
                for g in row.chunks(per) {
                    if g[0] == PAD {
                        break;
                    }
                    let id = get_id(g).ok_or_else(bad)?;
                    if order > 1 {
                        self.suffix += get_id(&g[ID_FLOATS..]).ok_or_else(bad)? as u64;
                    }
                    self.pending.push((id, self.suffix));
                }
            }
            self.pending.reverse();
        }
        Ok(true)
    }
}

/// The n-grams of one order that one counting process wrote, in its order, as word numbers
/// (look them up with `row_key(process, id)`): that order's table read alongside the shorter
/// orders' tables, a row of each at a time.
pub struct Grams {
    levels: Vec<Level>,
}

impl std::fmt::Debug for Grams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grams")
            .field("order", &self.levels.len())
            .finish()
    }
}

impl Grams {
    pub fn open(client: &BlockingClient, model: &str, order: usize, process: u64) -> Grams {
        let range = KeyRange::new(row_key(process, 0), row_key(process + 1, 0));
        let levels = (1..=order)
            .map(|k| {
                let table = grams_table(model, k);
                Level {
                    rows: client.pull_range(&table, range),
                    table,
                    pending: Vec::new(),
                    suffix: 0,
                    index: u64::MAX,
                    words: Vec::new(),
                }
            })
            .collect();
        Grams { levels }
    }

    /// The place of the last n-gram's suffix in the order below (none for unigrams).
    pub fn suffix(&self) -> Option<u64> {
        let k = self.levels.len();
        (k > 1).then(|| self.levels[k - 2].index)
    }

    /// The next n-gram's word numbers, first word first.
    pub fn next_gram(&mut self) -> Result<Option<&[u32]>> {
        let k = self.levels.len();
        if !advance(&mut self.levels, k - 1, None)? {
            return Ok(None);
        }
        Ok(Some(&self.levels[k - 1].words))
    }
}

/// Moves level `j` to its next n-gram, or (`to`) on to the n-gram with that index; whether
/// there was one.
fn advance(levels: &mut [Level], j: usize, to: Option<u64>) -> Result<bool> {
    let (below, rest) = levels.split_at_mut(j);
    let level = &mut rest[0];
    loop {
        if to.is_some_and(|t| level.index != u64::MAX && level.index >= t) {
            return if level.index == to.unwrap_or_default() {
                Ok(true)
            } else {
                Err(TrainError::Invalid(format!(
                    "{} skips n-gram {} that an order above names",
                    level.table,
                    to.unwrap_or_default()
                )))
            };
        }
        if !level.fill(j + 1)? {
            return match to {
                None => Ok(false),
                Some(t) => Err(TrainError::Invalid(format!(
                    "{} ends before n-gram {t} that an order above names",
                    level.table
                ))),
            };
        }
        let (id, suffix) = level.pending.pop().expect("filled");
        level.index = level.index.wrapping_add(1);
        level.words.clear();
        level.words.push(id);
        if j > 0 {
            advance(below, j - 1, Some(suffix))?;
            level.words.extend_from_slice(&below[j - 1].words);
        }
        if to.is_none() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_numbers_round_trip_through_two_floats() {
        for id in [0u32, 1, 65_535, 65_536, u32::MAX - 1] {
            let mut f = [0.0; ID_FLOATS];
            put_id(id, &mut f);
            assert_eq!(get_id(&f), Some(id));
        }
        assert_eq!(get_id(&[0.5, 0.0]), None);
    }

    #[test]
    fn words_of_any_length_round_trip() {
        for w in [
            "a",
            "ab",
            "naïve",
            &"x".repeat(32),
            &"é".repeat(40),
            &"y".repeat(101),
        ] {
            let (first, more) = encode_word(7, w);
            assert_eq!(first.len(), WORD_DIM);
            assert_eq!(more.len(), w.len().div_ceil(WORD_BYTES).saturating_sub(1));
            let mut bytes = Vec::new();
            assert_eq!(decode_part(&first, &mut bytes), Some(w.len()));
            for (i, (k, r)) in more.iter().enumerate() {
                assert_eq!(*k, part_key(7, i as u64 + 1));
                decode_part(r, &mut bytes).unwrap();
            }
            assert_eq!(String::from_utf8(bytes).unwrap(), w);
        }
    }
}
