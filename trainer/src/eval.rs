//! Evaluation of word vectors, as gensim does it: analogies (`a b c d`: is `d` the nearest
//! word to `b − a + c`?) over the most frequent words, word-pair similarity against human
//! scores (Spearman's ρ), and nearest neighbours. Words are case-folded: the questions and the
//! vocabulary are lowercased, and the most frequent spelling of a word stands for it.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Result, TrainError};
use crate::export::Embeddings;

/// Unit-length vectors of the `limit` most frequent words, with a lowercase index.
#[derive(Debug)]
pub struct Index {
    pub words: Vec<String>,
    dim: usize,
    unit: Vec<f32>,
    by_word: HashMap<String, usize>,
}

impl Index {
    pub fn new(e: &Embeddings, limit: usize) -> Index {
        let n = e.words.len().min(limit);
        let mut unit = e.vectors[..n * e.dim].to_vec();
        for row in unit.chunks_mut(e.dim.max(1)) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
        let mut by_word = HashMap::new();
        for (i, w) in e.words[..n].iter().enumerate() {
            by_word.entry(w.to_lowercase()).or_insert(i);
        }
        Index {
            words: e.words[..n].to_vec(),
            dim: e.dim,
            unit,
            by_word,
        }
    }

    pub fn get(&self, word: &str) -> Option<usize> {
        self.by_word.get(&word.to_lowercase()).copied()
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.unit[i * self.dim..(i + 1) * self.dim]
    }

    /// The `k` words nearest to `query` (cosine), skipping `exclude`.
    pub fn nearest(&self, query: &[f32], k: usize, exclude: &[usize]) -> Vec<(usize, f32)> {
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
        for i in 0..self.words.len() {
            if exclude.contains(&i) {
                continue;
            }
            let s: f32 = self.row(i).iter().zip(query).map(|(a, b)| a * b).sum();
            if best.len() < k || s > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= s);
                best.insert(at, (i, s));
                best.truncate(k);
            }
        }
        best
    }

    /// Nearest neighbours of `word`.
    pub fn neighbours(&self, word: &str, k: usize) -> Option<Vec<(String, f32)>> {
        let i = self.get(word)?;
        Some(
            self.nearest(self.row(i), k, &[i])
                .into_iter()
                .map(|(j, s)| (self.words[j].clone(), s))
                .collect(),
        )
    }
}

/// Analogy results: per section and in total.
#[derive(Debug, Clone, Default)]
pub struct AnalogyScore {
    pub sections: Vec<(String, u64, u64)>,
    pub correct: u64,
    /// Questions whose four words are all in the index.
    pub evaluated: u64,
    /// Questions skipped for a word outside it.
    pub skipped: u64,
}

impl AnalogyScore {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.evaluated.max(1) as f64
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| TrainError::io(format!("reading {}", path.display()), e))
}

/// Scores `questions` (the questions-words.txt format) on `index`, on `threads` threads.
pub fn analogy(index: &Index, questions: &Path, threads: usize) -> Result<AnalogyScore> {
    let text = read(questions)?;
    let mut section = String::new();
    let mut qs: Vec<(usize, [usize; 4])> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut skipped = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix(':') {
            section = name.trim().to_string();
            names.push(section.clone());
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() != 4 {
            continue;
        }
        match (
            index.get(w[0]),
            index.get(w[1]),
            index.get(w[2]),
            index.get(w[3]),
        ) {
            (Some(a), Some(b), Some(c), Some(d)) => {
                qs.push((names.len().saturating_sub(1), [a, b, c, d]))
            }
            _ => skipped += 1,
        }
    }
    let _ = section;
    let correct: Vec<bool> = parallel_map(&qs, threads, |&(_, [a, b, c, d])| {
        let mut q = vec![0.0f32; index.dim];
        for (x, (ra, (rb, rc))) in q.iter_mut().zip(
            index
                .row(a)
                .iter()
                .zip(index.row(b).iter().zip(index.row(c))),
        ) {
            *x = rb - ra + rc;
        }
        index.nearest(&q, 1, &[a, b, c]).first().map(|p| p.0) == Some(d)
    });
    let mut score = AnalogyScore {
        sections: names.iter().map(|n| (n.clone(), 0, 0)).collect(),
        skipped,
        ..AnalogyScore::default()
    };
    for ((s, _), ok) in qs.iter().zip(correct) {
        if let Some(sec) = score.sections.get_mut(*s) {
            sec.2 += 1;
            sec.1 += ok as u64;
        }
        score.evaluated += 1;
        score.correct += ok as u64;
    }
    Ok(score)
}

/// Word-pair similarity: Spearman's ρ between human scores and cosines, the pairs used and
/// those skipped (a word outside the index). Lines: `word1 word2 score` (tab or space
/// separated); `#` starts a comment.
pub fn similarity(index: &Index, pairs: &Path) -> Result<(f64, usize, usize)> {
    let text = read(pairs)?;
    let (mut human, mut model, mut skipped) = (Vec::new(), Vec::new(), 0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(['\t', ' ']).filter(|s| !s.is_empty()).collect();
        if f.len() < 3 {
            continue;
        }
        let Ok(h) = f[2].parse::<f64>() else {
            continue;
        };
        match (index.get(f[0]), index.get(f[1])) {
            (Some(a), Some(b)) => {
                human.push(h);
                model.push(
                    index
                        .row(a)
                        .iter()
                        .zip(index.row(b))
                        .map(|(x, y)| x * y)
                        .sum::<f32>() as f64,
                );
            }
            _ => skipped += 1,
        }
    }
    Ok((spearman(&human, &model), human.len(), skipped))
}

/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("evaluation thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_data() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 25.0, 100.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![2.5, 1.0, 2.5]);
    }

    #[test]
    fn analogy_on_planted_vectors() {
        // king − man + woman = queen, in a 3-d toy space.
        let e = Embeddings {
            words: ["man", "woman", "king", "queen", "apple"]
                .map(String::from)
                .to_vec(),
            dim: 3,
            vectors: vec![
                1.0, 0.0, 0.0, //
                1.0, 1.0, 0.0, //
                1.0, 0.0, 1.0, //
                1.0, 1.0, 1.0, //
                -1.0, 0.2, -0.3,
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q.txt");
        std::fs::write(
            &q,
            ": family\nMan Woman King Queen\nman woman king apple\nman woman king zebra\n",
        )
        .unwrap();
        let s = analogy(&Index::new(&e, 100), &q, 2).unwrap();
        assert_eq!((s.correct, s.evaluated, s.skipped), (1, 2, 1));
        assert_eq!(s.sections, vec![("family".to_string(), 1, 2)]);
    }
}
