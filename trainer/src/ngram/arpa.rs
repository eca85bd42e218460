//! The ARPA export: a Kneser-Ney model as the standard back-off text file that KenLM, SRILM and
//! the decoders built on them read.
//!
//! An n-gram `c w` of order `k` gets `log10 p(w|c)`, the interpolated probability `Kn`
//! computes (so a reader that backs off, `p(w|c) = b(c)·p(w|c′)` for an n-gram it does not
//! have, gets what `eval perplexity` gets), and, below the highest order and when it is a
//! context, its back-off weight `log10 γ(c w)`. `<s>` is a context only (`-99`, as KenLM
//! writes it); `<unk>` gets the uniform share of the empty context's mass.
//!
//! The n-grams come from the spelling tables (`spell`), streamed a block at a time, one order
//! after another. `p(w|c) = max(a − D(a), 0)/S(c) + γ(c)·p(w|c′)` needs the n-gram's row, its
//! context's, and the probability of its suffix `c′w` in the order below: each order's
//! probabilities go to a temporary file in stream order, and the next order reads them
//! forward as its suffixes advance (their places only grow). The rows are looked up in the
//! model's compact form (`compact`), built first into the export's temporary directory and
//! loaded whole: two random lookups per n-gram, each a few cache misses rather than a RocksDB
//! read. The vocabulary and that form are what the export holds in memory.

use std::io::Write;

use rustc_hash::FxHashMap;

use paramdb_client::BlockingClient;

use super::compact::Compact;
use super::{ngram_key, spell, state_table, Kn, Row, BOS, GRAMS_KEY, UNK};
use crate::error::{Result, TrainError};
use crate::keys::{state_fields, word_key, STATE_DIM};

/// N-grams scored per batch of lookups.
const BATCH: usize = 1 << 20;

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// N-grams of each order (index 0 unused).
    pub grams: Vec<u64>,
}

fn io(e: std::io::Error) -> TrainError {
    TrainError::io("writing the ARPA file", e)
}

/// Writes `model` as ARPA to `out`. `on_progress(done, total)` counts n-grams.
pub fn write(
    client: &BlockingClient,
    model: &str,
    out: &mut impl Write,
    on_progress: &dyn Fn(u64, u64),
) -> Result<Written> {
    let started = std::time::Instant::now();
    let kn = Kn::load(client, model)?;
    let n = kn.order();
    if client.describe_table(&spell::words_table(model)).is_err() {
        return Err(TrainError::Invalid(format!(
            "model {} was counted before paramdb kept n-gram spellings, so its n-grams cannot \
             be written as words; count it again",
            crate::quote(model)
        )));
    }
    let st = state_table(model);
    let keys: Vec<u64> = (1..=n as u64).map(|k| GRAMS_KEY + k).collect();
    let mut grams = vec![0u64];
    for r in client.pull(&st, &keys)?.chunks(STATE_DIM) {
        let [g] = state_fields(r).ok_or_else(|| {
            TrainError::Invalid(format!(
                "n-gram totals of {} do not decode",
                crate::quote(model)
            ))
        })?;
        grams.push(g);
    }
    // Each word's spelling and key, by its row key.
    let words: FxHashMap<u64, (String, u64)> = spell::load_words(client, model)?
        .into_iter()
        .map(|(k, w)| {
            let key = word_key(&w);
            (k, (w, key))
        })
        .collect();
    let processes = spell::processes(client, model)?;
    let scratch = tempfile::Builder::new()
        .prefix("paramdb-arpa-")
        .tempdir()
        .map_err(|e| TrainError::io("creating the export's temporary directory", e))?;
    // The count rows are looked up at random, two per n-gram: from the model's compact form,
    // built first into the scratch directory, rather than from the servers.
    let compact_path = scratch.path().join("model.knc");
    super::compact::build(client, &kn, &compact_path, &|_, _| {})?;
    let counts = Compact::open(&compact_path)?;
    let _ = std::fs::remove_file(&compact_path);
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "compact form built for the lookups"
    );
    let (bos, unk) = (word_key(BOS), kn.unk());
    let unk_seen = counts.row(1, unk).count > 0;
    let total: u64 = grams.iter().sum();

    writeln!(out, "\\data\\").map_err(io)?;
    for (k, &g) in grams.iter().enumerate().skip(1) {
        let extra = if k == 1 { 1 + u64::from(!unk_seen) } else { 0 };
        writeln!(out, "ngram {k}={}", g + extra).map_err(io)?;
    }
    let mut done = 0;
    let mut line = String::new();
    for k in 1..=n {
        write!(out, "\n\\{k}-grams:\n").map_err(io)?;
        if k == 1 {
            // <s> predicts nothing; <unk>, unless the corpus had it, only its uniform share.
            let b = backoff_of(&counts, &kn, 1, bos);
            line.clear();
            push_line(&mut line, -99.0, BOS, b, n == 1);
            if !unk_seen {
                let lp = kn.log_probs(client, &[(&[], unk)])?[0] / std::f64::consts::LN_10;
                let b = backoff_of(&counts, &kn, 1, unk);
                push_line(&mut line, lp, UNK, b, n == 1);
            }
            out.write_all(line.as_bytes()).map_err(io)?;
        }
        let table = spell::grams_table(model, k);
        for &process in &processes {
            // This order's probabilities, in stream order, for the order above; the order
            // below's, read as the suffixes advance.
            let mut below = match k {
                1 => None,
                _ => Some(Probs::open(&probs_path(&scratch, k - 1, process))?),
            };
            let mut mine = if k < n {
                let path = probs_path(&scratch, k, process);
                let f = std::fs::File::create(&path)
                    .map_err(|e| TrainError::io(format!("creating {}", path.display()), e))?;
                Some(std::io::BufWriter::with_capacity(1 << 20, f))
            } else {
                None
            };
            let mut batch = Batch::default();
            let mut grams = spell::Grams::open(client, model, k, process);
            loop {
                let next = grams.next_gram()?;
                let Some(ids) = next else { break };
                for &id in ids {
                    let (w, key) =
                        words
                            .get(&spell::row_key(process, id as u64))
                            .ok_or_else(|| {
                                TrainError::Invalid(format!(
                                    "{table} names word {id} of counting process {process}, which \
                                 {} does not spell",
                                    spell::words_table(model)
                                ))
                            })?;
                    batch.keys.push(*key);
                    batch.spelled.push(w);
                }
                let lower = match (&mut below, grams.suffix()) {
                    (Some(b), Some(i)) => b.at(i)?,
                    _ => 1.0 / kn.vocab_size as f64,
                };
                batch.lower.push(lower);
                if batch.lower.len() == BATCH {
                    done += batch.write(&counts, &kn, k, &mut line, out, mine.as_mut())?;
                    on_progress(done, total);
                }
            }
            done += batch.write(&counts, &kn, k, &mut line, out, mine.as_mut())?;
            on_progress(done, total);
            if let Some(mut w) = mine {
                w.flush()
                    .map_err(|e| TrainError::io("writing the export's probabilities", e))?;
            }
            if k > 1 {
                let _ = std::fs::remove_file(probs_path(&scratch, k - 1, process));
            }
        }
        tracing::info!(
            order = k,
            grams = grams[k],
            seconds = started.elapsed().as_secs_f64(),
            "written"
        );
    }
    writeln!(out, "\n\\end\\").map_err(io)?;
    Ok(Written { grams })
}

/// `log10 γ` of order-`k` n-gram `key` as a context, `None` if it is not one.
fn backoff_of(table: &Compact, kn: &Kn, k: usize, key: u64) -> Option<f64> {
    if k >= kn.order() {
        return None;
    }
    backoff(kn, k, &table.row(k, key))
}

fn backoff(kn: &Kn, k: usize, r: &Row) -> Option<f64> {
    let d = kn.discounts[k + 1];
    (r.sum > 0).then(|| {
        let g = (d[0] * r.n[0] as f64 + d[1] * r.n[1] as f64 + d[2] * r.n[2] as f64) / r.sum as f64;
        g.log10()
    })
}

/// Where the probabilities of order `k`'s n-grams of `process` wait for the order above.
fn probs_path(dir: &tempfile::TempDir, k: usize, process: u64) -> std::path::PathBuf {
    dir.path().join(format!("p{k}.{process}"))
}

/// An order's probabilities in stream order, read forward.
struct Probs {
    r: std::io::BufReader<std::fs::File>,
    /// How many have been read, and the last.
    read: u64,
    last: f64,
}

impl Probs {
    fn open(path: &std::path::Path) -> Result<Probs> {
        let f = std::fs::File::open(path)
            .map_err(|e| TrainError::io(format!("reading {}", path.display()), e))?;
        Ok(Probs {
            r: std::io::BufReader::with_capacity(1 << 20, f),
            read: 0,
            last: 0.0,
        })
    }

    /// The probability of n-gram `i` (at or after the last one asked for).
    fn at(&mut self, i: u64) -> Result<f64> {
        use std::io::Read;
        while self.read <= i {
            let mut b = [0u8; 8];
            self.r
                .read_exact(&mut b)
                .map_err(|e| TrainError::io("reading the export's probabilities", e))?;
            self.last = f64::from_le_bytes(b);
            self.read += 1;
        }
        Ok(self.last)
    }
}

/// N-grams of one order waiting to be scored: their words' keys and spellings, and each
/// one's suffix's probability in the order below (the uniform share for unigrams).
#[derive(Default)]
struct Batch<'a> {
    keys: Vec<u64>,
    spelled: Vec<&'a str>,
    lower: Vec<f64>,
}

impl Batch<'_> {
    /// Scores the batch as `Kn` does, one order at a time: `p(w|c) = max(a − D(a), 0)/S(c) +
    /// γ(c)·p(w|c′)`, from the n-gram's row, its context's and its suffix's probability. Writes
    /// the lines to `out` and the probabilities to `probs`; empties the batch, returns its size.
    fn write(
        &mut self,
        table: &Compact,
        kn: &Kn,
        k: usize,
        line: &mut String,
        out: &mut dyn Write,
        mut probs: Option<&mut std::io::BufWriter<std::fs::File>>,
    ) -> Result<u64> {
        let n = self.lower.len();
        if n == 0 {
            return Ok(0);
        }
        let gkeys: Vec<u64> = self.keys.chunks(k).map(ngram_key).collect();
        let grows: Vec<Row> = gkeys.iter().map(|&g| table.row(k, g)).collect();
        let crows = if k == 1 {
            vec![kn.empty; n]
        } else {
            let ckeys: Vec<u64> = self
                .keys
                .chunks(k)
                .map(|g| ngram_key(&g[..k - 1]))
                .collect();
            ckeys.iter().map(|&c| table.row(k - 1, c)).collect()
        };
        let d = &kn.discounts[k];
        line.clear();
        let mut text = String::new();
        for i in 0..n {
            let (g, c) = (&grows[i], &crows[i]);
            let s = c.sum as f64;
            let disc = |a: u64| {
                if a == 0 {
                    0.0
                } else {
                    d[a.min(3) as usize - 1]
                }
            };
            let gamma = (d[0] * c.n[0] as f64 + d[1] * c.n[1] as f64 + d[2] * c.n[2] as f64) / s;
            let p = (g.count as f64 - disc(g.count)).max(0.0) / s + gamma * self.lower[i];
            if let Some(w) = probs.as_mut() {
                w.write_all(&p.to_le_bytes())
                    .map_err(|e| TrainError::io("writing the export's probabilities", e))?;
            }
            text.clear();
            for (j, w) in self.spelled[i * k..(i + 1) * k].iter().enumerate() {
                if j > 0 {
                    text.push(' ');
                }
                text.push_str(w);
            }
            let b = if k < kn.order() {
                backoff(kn, k, g)
            } else {
                None
            };
            push_line(
                line,
                p.ln() / std::f64::consts::LN_10,
                &text,
                b,
                k == kn.order(),
            );
        }
        out.write_all(line.as_bytes()).map_err(io)?;
        self.keys.clear();
        self.spelled.clear();
        self.lower.clear();
        Ok(n as u64)
    }
}

/// One ARPA line: `log10 p`, the words, and below the highest order (`top` false) the
/// back-off (0 when the n-gram is not a context).
fn push_line(line: &mut String, lp: f64, words: &str, backoff: Option<f64>, top: bool) {
    use std::fmt::Write as _;
    let _ = write!(line, "{}\t{words}", lp as f32);
    if !top {
        let _ = write!(line, "\t{}", backoff.unwrap_or(0.0) as f32);
    }
    line.push('\n');
}
