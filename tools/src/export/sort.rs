//! Rows of a model's table in the order word2vec tools write them: most frequent word first,
//! ties by word (bytes), then rows whose key has no word, by key. Sorted in memory while the
//! rows fit a budget; beyond it, sorted runs are spilled to files in a temporary directory and
//! merged, so memory stays bounded whatever the table's size.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// One row with what it sorts by.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub count: u64,
    /// The row's word, if the vocabulary has one for its key.
    pub word: Option<Box<str>>,
    pub key: u64,
    pub values: Box<[f32]>,
}

impl Entry {
    /// Descending count, rows with a word before rows without, then word, then key.
    fn order(&self, other: &Entry) -> Ordering {
        other
            .count
            .cmp(&self.count)
            .then_with(|| other.word.is_some().cmp(&self.word.is_some()))
            .then_with(|| self.word.cmp(&other.word))
            .then_with(|| self.key.cmp(&other.key))
    }

    /// Bytes the entry costs in memory (allocations and their headers included, roughly).
    fn cost(&self) -> usize {
        std::mem::size_of::<Entry>()
            + self.values.len() * 4
            + self.word.as_ref().map_or(0, |w| w.len())
            + 32
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(&self.count.to_le_bytes())?;
        w.write_all(&self.key.to_le_bytes())?;
        match &self.word {
            Some(word) => {
                w.write_all(&(word.len() as u32).to_le_bytes())?;
                w.write_all(word.as_bytes())?;
            }
            None => w.write_all(&u32::MAX.to_le_bytes())?,
        }
        for v in self.values.iter() {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    }

    /// The next entry of a run, `None` at its end.
    fn read(r: &mut impl Read, dim: usize) -> std::io::Result<Option<Entry>> {
        let mut head = [0u8; 20];
        match r.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        r.read_exact(&mut head[1..])?;
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (count, key) = (u64_at(0), u64_at(8));
        let len = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
        let word = if len == u32::MAX {
            None
        } else {
            let mut b = vec![0u8; len as usize];
            r.read_exact(&mut b)?;
            let s = String::from_utf8(b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            Some(s.into_boxed_str())
        };
        let mut raw = vec![0u8; dim * 4];
        r.read_exact(&mut raw)?;
        let values = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        Ok(Some(Entry {
            count,
            word,
            key,
            values,
        }))
    }
}

/// Collects entries, then hands them back in order.
#[derive(Debug)]
pub struct Sorter {
    dim: usize,
    budget: usize,
    buf: Vec<Entry>,
    buf_bytes: usize,
    /// Where runs go: a temporary directory made at the first spill, inside `spill_parent`.
    spill_parent: PathBuf,
    dir: Option<tempfile::TempDir>,
    runs: Vec<PathBuf>,
}

impl Sorter {
    /// A sorter holding at most about `budget` bytes of rows before it spills a run into a
    /// temporary directory under `spill_parent`.
    pub fn new(dim: usize, budget: usize, spill_parent: &Path) -> Sorter {
        Sorter {
            dim,
            budget: budget.max(1),
            buf: Vec::new(),
            buf_bytes: 0,
            spill_parent: spill_parent.to_path_buf(),
            dir: None,
            runs: Vec::new(),
        }
    }

    /// Runs written so far (0 while everything fits the budget).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    pub fn push(&mut self, e: Entry) -> anyhow::Result<()> {
        debug_assert_eq!(e.values.len(), self.dim);
        self.buf_bytes += e.cost();
        self.buf.push(e);
        if self.buf_bytes >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> anyhow::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix(".paramdb-sort-")
                .tempdir_in(&self.spill_parent)
                .with_context(|| {
                    format!(
                        "making a directory for sorted runs in {}",
                        self.spill_parent.display()
                    )
                })?;
            self.dir = Some(dir);
        }
        let path = self
            .dir
            .as_ref()
            .expect("made above")
            .path()
            .join(format!("run-{}", self.runs.len()));
        self.buf.sort_unstable_by(Entry::order);
        let io = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", path.display());
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io)?);
        for e in self.buf.drain(..) {
            e.write(&mut w).map_err(io)?;
        }
        w.flush().map_err(io)?;
        // Give the memory back, not only the entries.
        self.buf = Vec::new();
        self.buf_bytes = 0;
        self.runs.push(path);
        Ok(())
    }

    /// Calls `f` with every entry, in order. Spilled runs are merged with a heap.
    pub fn finish(mut self, mut f: impl FnMut(Entry) -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.runs.is_empty() {
            self.buf.sort_unstable_by(Entry::order);
            return self.buf.into_iter().try_for_each(f);
        }
        self.spill()?;
        let mut readers = self
            .runs
            .iter()
            .map(|p| {
                File::open(p)
                    .map(|f| BufReader::with_capacity(256 << 10, f))
                    .with_context(|| format!("reading {}", p.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dim = self.dim;
        let mut heap = BinaryHeap::with_capacity(readers.len());
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(e) = Entry::read(r, dim).context("reading a sorted run")? {
                heap.push(Head(e, i));
            }
        }
        while let Some(Head(e, i)) = heap.pop() {
            if let Some(next) = Entry::read(&mut readers[i], dim).context("reading a sorted run")? {
                heap.push(Head(next, i));
            }
            f(e)?;
        }
        Ok(())
    }
}

/// A run's next entry in the merge heap (a max-heap, so the order is reversed).
struct Head(Entry, usize);

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.order(&self.0).then_with(|| other.1.cmp(&self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn entries(n: usize, dim: usize) -> Vec<Entry> {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        (0..n)
            .map(|i| Entry {
                count: rng.random_range(0..20),
                // Some rows without a word, some words sharing a count.
                word: (i % 7 != 0).then(|| format!("w{}", rng.random_range(0..1000)).into()),
                key: i as u64 * 31 % 1009,
                values: (0..dim).map(|d| (i * dim + d) as f32).collect(),
            })
            .collect()
    }

    fn sorted_by(budget: usize, input: &[Entry], dim: usize) -> (Vec<Entry>, usize) {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(dim, budget, tmp.path());
        for e in input {
            s.push(e.clone()).unwrap();
        }
        let runs = s.runs();
        let mut out = Vec::new();
        s.finish(|e| {
            out.push(e);
            Ok(())
        })
        .unwrap();
        (out, runs)
    }

    #[test]
    fn spilled_runs_merge_to_the_in_memory_order() {
        let dim = 3;
        let input = entries(2000, dim);
        let mut model = input.clone();
        model.sort_by(Entry::order);
        let (in_memory, runs) = sorted_by(usize::MAX, &input, dim);
        assert_eq!(runs, 0);
        assert_eq!(in_memory, model);
        let (spilled, runs) = sorted_by(10_000, &input, dim);
        assert!(runs > 5, "{runs} runs");
        assert_eq!(spilled, model);
        // Most frequent first; among equal counts, rows with words first, by word.
        assert!(model.windows(2).all(|w| w[0].count >= w[1].count));
        let ties: Vec<&Entry> = model.iter().filter(|e| e.count == model[0].count).collect();
        let words: Vec<&str> = ties.iter().filter_map(|e| e.word.as_deref()).collect();
        assert!(words.windows(2).all(|w| w[0] <= w[1]));
    }
}
