//! The ARPA export: a Kneser-Ney model as the standard back-off text file that KenLM, SRILM and
//! the decoders built on them read.
//!
//! An n-gram `c w` of order `k` gets `log10 p(w|c)`, the interpolated probability `Kn`
//! computes (so a reader that backs off, `p(w|c) = b(c)·p(w|c′)` for an n-gram it does not
//! have, gets what `eval perplexity` gets), and, below the highest order and when it is a
//! context, its back-off weight `log10 γ(c w)`. `<s>` is a context only (`-99`, as KenLM
//! writes it); `<unk>` gets the uniform share of the empty context's mass. The n-grams come
//! from the spelling tables (`spell`), streamed a block at a time; only the vocabulary is held
//! in memory.

use std::io::Write;

use rustc_hash::FxHashMap;

use paramdb_client::BlockingClient;

use super::{ngram_key, rows, spell, state_table, Kn, BOS, GRAMS_KEY, UNK};
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
    let (bos, unk) = (word_key(BOS), kn.unk());
    let unk_seen = rows(client, model, 1, &[unk])?[0].count > 0;
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
            let b = backoffs(client, &kn, 1, &[bos])?[0];
            line.clear();
            push_line(&mut line, -99.0, BOS, b, n == 1);
            if !unk_seen {
                let lp = kn.log_probs(client, &[(&[], unk)])?[0] / std::f64::consts::LN_10;
                let b = backoffs(client, &kn, 1, &[unk])?[0];
                push_line(&mut line, lp, UNK, b, n == 1);
            }
            out.write_all(line.as_bytes()).map_err(io)?;
        }
        let table = spell::grams_table(model, k);
        // The batch's n-grams: word keys, and the words.
        let mut keys: Vec<u64> = Vec::with_capacity(BATCH * k);
        let mut spelled: Vec<&str> = Vec::with_capacity(BATCH * k);
        let mut flush = |keys: &mut Vec<u64>, spelled: &mut Vec<&str>, out: &mut dyn Write| {
            if keys.is_empty() {
                return Ok::<(), TrainError>(());
            }
            let q: Vec<(&[u64], u64)> = keys.chunks(k).map(|g| (&g[..k - 1], g[k - 1])).collect();
            let lps = kn.log_probs(client, &q)?;
            let bos = if k < n {
                let grams: Vec<u64> = keys.chunks(k).map(ngram_key).collect();
                backoffs(client, &kn, k, &grams)?
            } else {
                vec![None; q.len()]
            };
            line.clear();
            let mut text = String::new();
            for ((g, lp), b) in spelled.chunks(k).zip(lps).zip(bos) {
                text.clear();
                for (i, w) in g.iter().enumerate() {
                    if i > 0 {
                        text.push(' ');
                    }
                    text.push_str(w);
                }
                push_line(&mut line, lp / std::f64::consts::LN_10, &text, b, k == n);
            }
            out.write_all(line.as_bytes()).map_err(io)?;
            done += q.len() as u64;
            on_progress(done, total);
            keys.clear();
            spelled.clear();
            Ok(())
        };
        for &process in &processes {
            let mut grams = spell::Grams::open(client, model, k, process);
            while let Some(ids) = grams.next_gram()? {
                for &id in ids {
                    let (w, key) =
                        words
                            .get(&spell::row_key(process, id as u64))
                            .ok_or_else(|| {
                                TrainError::Invalid(format!(
                            "{table} names word {id} of counting process {process}, which {} \
                             does not spell",
                            spell::words_table(model)
                        ))
                            })?;
                    keys.push(*key);
                    spelled.push(w);
                }
                if keys.len() >= BATCH * k {
                    flush(&mut keys, &mut spelled, out)?;
                }
            }
        }
        flush(&mut keys, &mut spelled, out)?;
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

/// `log10 γ` of each order-`k` n-gram of `keys` as a context, `None` for one that is not.
fn backoffs(client: &BlockingClient, kn: &Kn, k: usize, keys: &[u64]) -> Result<Vec<Option<f64>>> {
    if k >= kn.order() {
        return Ok(vec![None; keys.len()]);
    }
    let d = kn.discounts[k + 1];
    Ok(rows(client, &kn.model, k, keys)?
        .into_iter()
        .map(|r| {
            (r.sum > 0).then(|| {
                let g = (d[0] * r.n[0] as f64 + d[1] * r.n[1] as f64 + d[2] * r.n[2] as f64)
                    / r.sum as f64;
                g.log10()
            })
        })
        .collect())
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
