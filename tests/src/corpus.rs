//! Generated corpora with known contents, for counting tests and benchmarks.

use std::io::Write;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A planted 5-gram: its words are in no other line, it occurs `count` times, each time after
/// one of `left` marker words (also in no other line), in turn.
#[derive(Debug, Clone)]
pub struct Plant {
    pub words: Vec<String>,
    pub count: usize,
    pub left: usize,
}

/// Writes about `tokens` tokens of Zipf(1.0) text over `vocab` words, with `plants` put in
/// random lines after their marker words. Returns the tokens written.
pub fn zipf_corpus(path: &Path, tokens: usize, vocab: usize, plants: &[Plant], seed: u64) -> usize {
    let mut rng = SmallRng::seed_from_u64(seed);
    let cum: Vec<f64> = (1..=vocab)
        .scan(0.0, |s, r| {
            *s += 1.0 / r as f64;
            Some(*s)
        })
        .collect();
    let total = *cum.last().unwrap();
    let lines = tokens / 20;
    // Which lines get a plant occurrence: (line, plant, occurrence).
    let mut at: Vec<(usize, usize, usize)> = Vec::new();
    for (p, plant) in plants.iter().enumerate() {
        for i in 0..plant.count {
            at.push((rng.random_range(0..lines), p, i));
        }
    }
    at.sort_unstable();
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0;
    let mut next = 0;
    for line in 0..lines {
        let len = rng.random_range(10..31);
        let mut words: Vec<String> = (0..len)
            .map(|_| {
                let x = rng.random::<f64>() * total;
                format!("z{}", cum.partition_point(|&c| c < x))
            })
            .collect();
        while next < at.len() && at[next].0 == line {
            let (_, p, i) = at[next];
            let plant = &plants[p];
            let pos = rng.random_range(1..words.len());
            let mut ins = vec![format!("left{p}x{}", i % plant.left)];
            ins.extend(plant.words.iter().cloned());
            words.splice(pos..pos, ins);
            next += 1;
        }
        written += words.len();
        writeln!(w, "{}", words.join(" ")).unwrap();
    }
    w.flush().unwrap();
    written
}
