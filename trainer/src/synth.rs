//! Generated corpora with planted structure, for the README's main job and for tests: each
//! sentence is drawn from one topic, so words of a topic share contexts and should end up
//! each other's nearest neighbours.

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, TrainError};

/// Topic names; word `j` of topic `t` is `<name><j>` (`fruit0`, `fruit1`, …).
pub const TOPICS: [&str; 8] = [
    "fruit", "color", "animal", "city", "music", "sport", "metal", "tool",
];

/// The word `j` of topic `t`.
pub fn word(t: usize, j: usize) -> String {
    format!("{}{j}", TOPICS[t % TOPICS.len()])
}

/// Writes `sentences` sentences of `len` words: each picks a topic, then draws its words from
/// that topic's `per_topic` words (Zipf-like: low indices are more frequent), with one in
/// five replaced by a shared filler word (`the`, `and`, …) that carries no topic.
pub fn topic_corpus(
    path: &Path,
    per_topic: usize,
    sentences: usize,
    len: usize,
    seed: u64,
) -> Result<u64> {
    const FILLER: [&str; 6] = ["the", "and", "of", "a", "to", "is"];
    let io = |e| TrainError::io(format!("writing {}", path.display()), e);
    let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut words = 0u64;
    for _ in 0..sentences {
        let t = rng.random_range(0..TOPICS.len());
        let mut line = String::new();
        for i in 0..len {
            if i > 0 {
                line.push(' ');
            }
            if rng.random_range(0..5) == 0 {
                line.push_str(FILLER[rng.random_range(0..FILLER.len())]);
            } else {
                // Index ~ 1/(rank): skewed like real text, but every word is frequent enough.
                let r: f64 = rng.random();
                let j = ((per_topic as f64).powf(r) - 1.0) as usize;
                line.push_str(&word(t, j.min(per_topic - 1)));
            }
            words += 1;
        }
        line.push('\n');
        w.write_all(line.as_bytes()).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(words)
}

/// Share of the `k` nearest neighbours of every word of a `topic_corpus` (with `per_topic`
/// words per topic) that belong to the word's own topic: about 1/8 for random vectors, near 1
/// once the planted structure is learned.
pub fn topic_purity(index: &crate::eval::Index, per_topic: usize, k: usize) -> f64 {
    let (mut same, mut total) = (0, 0);
    for (t, name) in TOPICS.iter().enumerate() {
        for j in 0..per_topic {
            if let Some(n) = index.neighbours(&word(t, j), k) {
                same += n.iter().filter(|(w, _)| w.starts_with(name)).count();
                total += n.len();
            }
        }
    }
    same as f64 / total.max(1) as f64
}
