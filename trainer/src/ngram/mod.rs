//! n-gram counts in the parameter server, and interpolated modified Kneser-Ney on them, with
//! KenLM's conventions.
//!
//! **Sentences.** A line `w1 … wm` is `<s> w1 … wm </s>`. `<s>` is context only, never
//! predicted; `</s>` is predicted once per line; a word never seen in training is `<unk>`.
//!
//! **Counts.** Order `k`'s n-grams live in `<m>.kn<k>`, keyed by `ngram_key` of their word
//! keys. The highest order `N` keeps raw counts, as do the n-grams that begin with `<s>`
//! (they have no left context); every other n-gram keeps its *adjusted* count, the number of
//! distinct words seen to its left (Chen & Goodman; KenLM's `adjust_counts`). A row of order
//! `k < N` also holds the n-gram's statistics *as a context* of order `k + 1`: the sum of its
//! extensions' counts and how many extensions have count 1, 2 and 3 or more. `<m>.kn0` holds
//! the empty context's (the unigrams'). Rows are `add` rows of exact integers (`Counter`).
//!
//! **Counting** (`count`) streams in bounded memory: counts in a fixed-size table, spilled as
//! sorted runs, merged in suffix order to find adjusted counts and context statistics in one
//! pass, and loaded into the shards in bulk (RocksDB table files ingested, not pushes through
//! the log). Counts are exact whatever the budget. One process counts; if it dies, the next
//! run counts again (the model is only marked complete at the end, and a bulk import that did
//! not finish leaves nothing).
//!
//! **Probabilities** (`Kn`): for an n-gram `c w` of order `k`, with `a` its count,
//! `p(w|c) = max(a − D_k(a), 0)/S(c) + γ(c)·p(w|c′)`, `γ(c) = (D1·N1(c) + D2·N2(c) +
//! D3·N3+(c))/S(c)`, `c′` the context without its first word, and a context never seen backs off
//! with weight 1. Unigrams interpolate with the uniform distribution over the vocabulary
//! (`<unk>` included, `<s>` not), so `<unk>` gets exactly that share.

pub mod arpa;
pub mod compact;
mod count;
pub mod spell;
mod sync;

use sync::Peers;

use std::path::Path;

use rustc_hash::FxHashMap;

use paramdb_client::{BlockingClient, KeyRange, TableSpec, UpdateRule};

use crate::corpus::PartReader;
use crate::error::{Result, TrainError};
use crate::keys::{state_fields, state_row, word_key, STATE_DIM};

pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
/// Highest order supported.
pub const MAX_ORDER: usize = 8;
/// Keys per pull or push.
const CHUNK: usize = 65_536;

/// The key of an n-gram: a unigram's is its word's key (`keys::word_key`), a longer n-gram's
/// the XXH3-64 of its word keys (little-endian). Every tool finds a row from the words alone.
pub fn ngram_key(words: &[u64]) -> u64 {
    if let [w] = words {
        return *w;
    }
    let mut buf = [0u8; 8 * MAX_ORDER];
    for (i, w) in words.iter().enumerate() {
        buf[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&buf[..8 * words.len()])
}

/// The key of the empty context's row in `<m>.kn0`.
const EMPTY: u64 = 0;

pub fn count_table(model: &str, order: usize) -> String {
    format!("{model}.kn{order}")
}

/// The model's state table (configuration, count-of-counts, the neural trainer's positions).
pub fn state_table(model: &str) -> String {
    format!("{model}.lm")
}

pub(crate) const META_KEY: u64 = 0;
/// Row `COC_KEY + k`: order `k`'s count-of-counts.
const COC_KEY: u64 = 100;
/// Row `GRAMS_KEY + k`: how many n-grams of order `k` are spelled in `<m>.ng<k>`.
const GRAMS_KEY: u64 = COC_KEY + 100;

/// Fields of a count row: the n-gram's count, then its statistics as a context.
const A: usize = 0;
const SUM: usize = 1;
const N1: usize = 2;
const FIELDS: usize = 5;

/// Counters in rows: an integer below 2^40 as two exact floats, 16 low bits then the rest.
struct Counter;

impl Counter {
    const LOW: u64 = 1 << 16;

    fn put(row: &mut [f32], field: usize, x: u64) {
        row[2 * field] = (x % Self::LOW) as f32;
        row[2 * field + 1] = (x / Self::LOW) as f32;
    }

    fn get(row: &[f32], field: usize) -> Option<u64> {
        let (lo, hi) = (row[2 * field], row[2 * field + 1]);
        let ok = |v: f32, max: f32| (0.0..max).contains(&v) && v.fract() == 0.0;
        (ok(lo, Self::LOW as f32) && ok(hi, (1u64 << 24) as f32))
            .then(|| lo as u64 + hi as u64 * Self::LOW)
    }
}

/// What a count row holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// The n-gram's count (raw or adjusted, see the module docs).
    pub count: u64,
    /// As a context: the sum of its extensions' counts.
    pub sum: u64,
    /// As a context: extensions with count 1, 2 and 3 or more.
    pub n: [u64; 3],
}

impl Row {
    fn decode(r: &[f32]) -> Option<Row> {
        let f = |i| Counter::get(r, i);
        if r.len() == 2 {
            return Some(Row {
                count: f(A)?,
                ..Row::default()
            });
        }
        Some(Row {
            count: f(A)?,
            sum: f(SUM)?,
            n: [f(N1)?, f(N1 + 1)?, f(N1 + 2)?],
        })
    }

    fn encode(&self, dim: usize) -> Vec<f32> {
        let mut r = vec![0.0; dim];
        Counter::put(&mut r, A, self.count);
        if dim > 2 {
            Counter::put(&mut r, SUM, self.sum);
            for (i, &n) in self.n.iter().enumerate() {
                Counter::put(&mut r, N1 + i, n);
            }
        }
        r
    }
}

fn dim_of(order: usize, max: usize) -> usize {
    if order == max {
        2
    } else {
        2 * FIELDS
    }
}

/// How many n-grams of one order have count 1, 2, 3 and 4, and how many have any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountOfCounts {
    pub t: [u64; 4],
    pub distinct: u64,
}

impl CountOfCounts {
    /// Adds another part's counts (of disjoint n-grams) to these.
    fn merge(&mut self, other: &CountOfCounts) {
        for (t, o) in self.t.iter_mut().zip(other.t) {
            *t += o;
        }
        self.distinct += other.distinct;
    }

    fn add(&mut self, old: u64, new: u64) {
        if (1..=4).contains(&old) {
            self.t[old as usize - 1] -= 1;
        }
        if (1..=4).contains(&new) {
            self.t[new as usize - 1] += 1;
        }
        if old == 0 && new > 0 {
            self.distinct += 1;
        }
    }

    /// Modified Kneser-Ney discounts for counts 1, 2 and 3+ (Chen & Goodman's estimates).
    /// Where they are undefined or out of range (tiny corpora), KenLM's fallback 0.5, 1, 1.5.
    pub fn discounts(&self) -> [f64; 3] {
        let t = self.t.map(|x| x as f64);
        let y = t[0] / (t[0] + 2.0 * t[1]);
        let d: [f64; 3] = std::array::from_fn(|i| {
            let k = i as f64 + 1.0;
            k - (k + 1.0) * y * t[i + 1] / t[i]
        });
        if d.iter()
            .enumerate()
            .all(|(i, &d)| d > 0.0 && d <= i as f64 + 1.0)
        {
            d
        } else {
            [0.5, 1.0, 1.5]
        }
    }
}

/// The model's configuration row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub order: u64,
    pub corpus_len: u64,
    /// About one line in `dev_every` is held out (chosen by a hash of its byte offset, so any
    /// reader of any part of the file agrees); 0: none.
    pub dev_every: u64,
    /// Lines and predicted tokens (words and `</s>`) counted.
    pub lines: u64,
    pub tokens: u64,
}

impl Meta {
    fn encode(&self) -> Vec<f32> {
        state_row(&[
            self.order,
            self.corpus_len,
            self.dev_every,
            self.lines,
            self.tokens,
        ])
    }

    fn decode(r: &[f32]) -> Option<Meta> {
        let [order, corpus_len, dev_every, lines, tokens] = state_fields(r)?;
        (order > 0).then_some(Meta {
            order,
            corpus_len,
            dev_every,
            lines,
            tokens,
        })
    }

    /// Whether the line starting at byte `offset` of the corpus is in the dev split.
    pub fn is_dev(&self, offset: u64) -> bool {
        is_dev(self.dev_every, offset)
    }
}

pub(crate) fn is_dev(dev_every: u64, offset: u64) -> bool {
    dev_every > 0 && xxhash_rust::xxh3::xxh3_64(&offset.to_le_bytes()).is_multiple_of(dev_every)
}

/// The stored configuration of `model`, if its counts are complete.
pub fn meta(client: &BlockingClient, model: &str) -> Option<Meta> {
    client
        .pull(&state_table(model), &[META_KEY])
        .ok()
        .and_then(|r| Meta::decode(&r))
}

/// Word keys of a line as the model sees it: `<s> w1 … wm </s>`. `<s>` and `</s>` written in
/// the text are skipped (KenLM's `--skip_symbols`): they only mark sentence boundaries.
pub fn sentence(line: &str, out: &mut Vec<u64>) {
    out.clear();
    out.push(word_key(BOS));
    out.extend(
        line.split_whitespace()
            .filter(|w| *w != BOS && *w != EOS)
            .map(word_key),
    );
    out.push(word_key(EOS));
}

/// What counting did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CountReport {
    pub meta: Option<Meta>,
    /// Sorted runs written to disk while counting (1 when everything fit in memory).
    pub runs: u64,
    pub coc: Vec<CountOfCounts>,
    pub seconds: f64,
}

/// Counting settings.
#[derive(Clone, Debug)]
pub struct CountConfig {
    pub order: usize,
    pub dev_every: u64,
    /// Bytes counting holds in memory (at least `MIN_COUNT_MEMORY`); beyond them it writes
    /// sorted runs to `temp_dir`.
    pub memory: usize,
    /// Where the sorted runs go (default: the system's temporary directory).
    pub temp_dir: Option<std::path::PathBuf>,
    /// This process's number, of `processes` counting the model at once against one cluster
    /// (see `count`).
    pub process: usize,
    pub processes: usize,
    /// How long a process waits for the others at each step before it gives up.
    pub wait: std::time::Duration,
}

impl CountConfig {
    /// Order `order`, no dev split, 1 GiB, one process.
    pub fn new(order: usize) -> CountConfig {
        CountConfig {
            order,
            dev_every: 0,
            memory: 1 << 30,
            temp_dir: None,
            process: 0,
            processes: 1,
            wait: std::time::Duration::from_secs(1800),
        }
    }
}

/// Most counting processes of one model.
pub const MAX_PROCESSES: usize = 256;

pub use count::MIN_MEMORY as MIN_COUNT_MEMORY;

/// Counts `corpus` into `model`'s tables (created here; any left by an unfinished count are
/// dropped first) and marks the model complete.
pub fn count(
    client: &BlockingClient,
    model: &str,
    corpus: &Path,
    cfg: &CountConfig,
    on_progress: &dyn Fn(u64, u64),
) -> Result<CountReport> {
    let n = cfg.order;
    if !(1..=MAX_ORDER).contains(&n) {
        return Err(TrainError::Invalid(format!(
            "--order {n}: expected 1 to {MAX_ORDER}"
        )));
    }
    if cfg.memory < count::MIN_MEMORY {
        return Err(TrainError::Invalid(format!(
            "a counting memory of {} bytes is below the minimum of {} KiB",
            cfg.memory,
            count::MIN_MEMORY >> 10
        )));
    }
    let (me, procs) = (cfg.process, cfg.processes);
    if procs == 0 || procs > MAX_PROCESSES || me >= procs {
        return Err(TrainError::Invalid(format!(
            "--process {me} --processes {procs}: expected 1 to {MAX_PROCESSES} processes, \
             numbered from 0"
        )));
    }
    let len = std::fs::metadata(corpus)
        .map_err(|e| TrainError::io(format!("reading {}", corpus.display()), e))?
        .len();
    let started = std::time::Instant::now();
    let st = state_table(model);
    let peers = Peers {
        client,
        table: st.clone(),
        process: me,
        processes: procs,
        wait: cfg.wait,
    };
    if me == 0 {
        create_tables(client, model, n)?;
        // What the others check their flags against (one process: nobody).
        if procs > 1 {
            client.push(&st, &[sync::CREATED], &sync::config_row(cfg, len))?;
        }
    } else {
        peers.joined(cfg, len)?;
    }
    if procs > 1 {
        for k in 0..=n {
            let t = count::staging_table(model, k, me);
            drop_if_present(client, &t)?;
            client.create_table(TableSpec::new(t, dim_of(k, n) as u32))?;
        }
    }
    let counted = count::count(client, model, corpus, len, cfg, &peers, on_progress)?;
    let (lines, tokens) = (counted.lines, counted.tokens);
    let mut report = CountReport {
        runs: counted.runs,
        ..CountReport::default()
    };
    let meta = Meta {
        order: n as u64,
        corpus_len: len,
        dev_every: cfg.dev_every,
        lines,
        tokens,
    };
    // Count-of-counts and spelled n-grams: this process's share, summed by process 0.
    let (mut coc, mut grams) = (counted.coc, counted.grams);
    if procs > 1 {
        let (keys, rows) = totals_rows(&coc, &grams, sync::parts_key(me), n);
        client.push(&st, &keys, &rows)?;
        peers.barrier(sync::ROWS_DONE)?;
        if me == 0 {
            for p in 1..procs {
                let (c, g) = read_totals(client, model, sync::parts_key(p), n)?;
                for k in 1..=n {
                    coc[k].merge(&c[k]);
                    grams[k] += g[k];
                }
            }
            for p in 0..procs {
                for k in 0..=n {
                    drop_if_present(client, &count::staging_table(model, k, p))?;
                }
            }
        }
    }
    if me == 0 {
        let (keys, rows) = totals_rows(&coc, &grams, COC_KEY, n);
        client.push(&st, &keys, &rows)?;
        // The meta row last: it marks the counts complete.
        client.push(&st, &[META_KEY], &meta.encode())?;
        client.checkpoint()?;
    } else {
        peers.wait_for("process 0 to mark the counts complete", || {
            Ok(self::meta(client, model).is_some())
        })?;
        (coc, _) = read_totals(client, model, COC_KEY, n)?;
    }
    report.meta = Some(meta);
    report.coc = coc;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Drops whatever an earlier count of `model` left and creates its tables for order `n`.
fn create_tables(client: &BlockingClient, model: &str, n: usize) -> Result<()> {
    for k in 0..=MAX_ORDER {
        drop_if_present(client, &count_table(model, k))?;
        drop_if_present(client, &spell::grams_table(model, k))?;
    }
    drop_if_present(client, &state_table(model))?;
    drop_if_present(client, &spell::words_table(model))?;
    drop_if_present(client, &spell::more_table(model))?;
    for k in 0..=n {
        client.create_table(
            TableSpec::new(count_table(model, k), dim_of(k, n) as u32).with_rule(UpdateRule::Add),
        )?;
    }
    for k in 1..=n {
        client.create_table(TableSpec::new(
            spell::grams_table(model, k),
            spell::grams_dim(k) as u32,
        ))?;
    }
    for t in [spell::words_table(model), spell::more_table(model)] {
        client.create_table(TableSpec::new(t, spell::WORD_DIM as u32))?;
    }
    client.create_table(TableSpec::new(state_table(model), STATE_DIM as u32))?;
    Ok(())
}

/// State rows from `base`: order k's count-of-counts at `base + k`, its spelled n-grams at
/// `base + 100 + k` (`COC_KEY` and `GRAMS_KEY` for the model's).
fn totals_rows(coc: &[CountOfCounts], grams: &[u64], base: u64, n: usize) -> (Vec<u64>, Vec<f32>) {
    let (mut keys, mut rows) = (Vec::new(), Vec::new());
    for k in 1..=n {
        let c = &coc[k];
        keys.push(base + k as u64);
        rows.extend(state_row(&[c.t[0], c.t[1], c.t[2], c.t[3], c.distinct]));
        keys.push(base + 100 + k as u64);
        rows.extend(state_row(&[grams[k]]));
    }
    (keys, rows)
}

type Totals = (Vec<CountOfCounts>, Vec<u64>);

fn read_totals(client: &BlockingClient, model: &str, base: u64, n: usize) -> Result<Totals> {
    let keys: Vec<u64> = (1..=n as u64)
        .flat_map(|k| [base + k, base + 100 + k])
        .collect();
    let rows = client.pull(&state_table(model), &keys)?;
    let bad = || {
        TrainError::Invalid(format!(
            "count totals of {} do not decode",
            crate::quote(model)
        ))
    };
    let mut coc = vec![CountOfCounts::default()];
    let mut grams = vec![0];
    for pair in rows.chunks(2 * STATE_DIM) {
        let [t1, t2, t3, t4, distinct] = state_fields(&pair[..STATE_DIM]).ok_or_else(bad)?;
        let [g] = state_fields(&pair[STATE_DIM..]).ok_or_else(bad)?;
        coc.push(CountOfCounts {
            t: [t1, t2, t3, t4],
            distinct,
        });
        grams.push(g);
    }
    Ok((coc, grams))
}

fn drop_if_present(client: &BlockingClient, table: &str) -> Result<()> {
    if client.describe_table(table).is_ok() {
        client.drop_table(table)?;
    }
    Ok(())
}

fn undecodable(table: &str, key: u64) -> TrainError {
    TrainError::Invalid(format!("count row {key} of {table} does not decode"))
}

/// The stored rows of order-`order` n-grams of `model` by key (the empty context is order 0,
/// key 0), for tools and checks.
pub fn rows(client: &BlockingClient, model: &str, order: usize, keys: &[u64]) -> Result<Vec<Row>> {
    let t = count_table(model, order);
    let dim = client.describe_table(&t)?.dim as usize;
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let r = client.pull(&t, chunk)?;
        for (&k, r) in chunk.iter().zip(r.chunks(dim)) {
            out.push(Row::decode(r).ok_or_else(|| undecodable(&t, k))?);
        }
    }
    Ok(out)
}

/// A Kneser-Ney model read from the server: its order, discounts, vocabulary size and the
/// empty context. Rows are pulled per batch of queries (`log_probs`).
#[derive(Clone, Debug)]
pub struct Kn {
    pub model: String,
    pub meta: Meta,
    pub coc: Vec<CountOfCounts>,
    /// `discounts[k]`: order k's D1, D2, D3+.
    pub discounts: Vec<[f64; 3]>,
    /// Words with a unigram count, `</s>` and `<unk>` (not `<s>`).
    pub vocab_size: u64,
    empty: Row,
    unk: u64,
}

/// What a query batch needs: rows by (order, key).
type Rows = Vec<FxHashMap<u64, Row>>;

impl Kn {
    pub fn load(client: &BlockingClient, model: &str) -> Result<Kn> {
        let meta = meta(client, model).ok_or_else(|| {
            TrainError::Invalid(format!(
                "no complete n-gram counts for model {} (train it with `paramdb train \
                 ngram-lm --model {}`)",
                crate::quote(model),
                crate::quote(model)
            ))
        })?;
        let n = meta.order as usize;
        let keys: Vec<u64> = (1..=n as u64).map(|k| COC_KEY + k).collect();
        let rows = client.pull(&state_table(model), &keys)?;
        let mut coc = vec![CountOfCounts::default()];
        for r in rows.chunks(STATE_DIM) {
            let [t1, t2, t3, t4, distinct] = state_fields(r).ok_or_else(|| {
                TrainError::Invalid(format!("count-of-counts of {model:?} do not decode"))
            })?;
            coc.push(CountOfCounts {
                t: [t1, t2, t3, t4],
                distinct,
            });
        }
        let discounts = coc.iter().map(|c| c.discounts()).collect();
        let t0 = count_table(model, 0);
        let empty =
            Row::decode(&client.pull(&t0, &[EMPTY])?).ok_or_else(|| undecodable(&t0, EMPTY))?;
        let unk = word_key(UNK);
        // The unigrams with a count are the words and </s>; <unk> joins them unless the
        // corpus had it as a word.
        let unk_seen =
            Row::decode(&client.pull(&count_table(model, 1), &[unk])?).is_some_and(|r| r.count > 0);
        Ok(Kn {
            model: model.to_string(),
            vocab_size: coc[1].distinct + u64::from(!unk_seen),
            meta,
            coc,
            discounts,
            empty,
            unk,
        })
    }

    pub fn order(&self) -> usize {
        self.meta.order as usize
    }

    pub fn unk(&self) -> u64 {
        self.unk
    }

    /// Which of `words` are in the vocabulary (have a unigram count).
    pub fn known(&self, client: &BlockingClient, words: &[u64]) -> Result<Vec<bool>> {
        let t = count_table(&self.model, 1);
        let mut out = Vec::with_capacity(words.len());
        for chunk in words.chunks(CHUNK) {
            let rows = client.pull(&t, chunk)?;
            for (&k, r) in chunk.iter().zip(rows.chunks(2 * FIELDS)) {
                let row = Row::decode(r).ok_or_else(|| undecodable(&t, k))?;
                out.push(row.count > 0 || k == self.unk);
            }
        }
        Ok(out)
    }

    /// Every word the model can predict with its unigram count, `<unk>` last (count 0 unless
    /// the corpus had it): one pass over the unigram table.
    pub fn vocabulary(&self, client: &BlockingClient) -> Result<Vec<(u64, u64)>> {
        let t = count_table(&self.model, 1);
        let mut out = Vec::new();
        let mut unk = 0;
        for block in client.pull_range(&t, KeyRange::all()) {
            let block = block?;
            for (&k, r) in block.keys.iter().zip(block.values.chunks(2 * FIELDS)) {
                let row = Row::decode(r).ok_or_else(|| undecodable(&t, k))?;
                if k == self.unk {
                    unk = row.count;
                } else if row.count > 0 {
                    out.push((k, row.count));
                }
            }
        }
        out.push((self.unk, unk));
        Ok(out)
    }

    /// Natural-log probabilities of `queries`: (history, word), the history being the words
    /// before `word` in its sentence (starting with `<s>`), unknown words already `<unk>`.
    /// Only the last `order − 1` words of a history are used.
    pub fn log_probs(
        &self,
        client: &BlockingClient,
        queries: &[(&[u64], u64)],
    ) -> Result<Vec<f64>> {
        let n = self.order();
        let mut want: Vec<Vec<u64>> = vec![Vec::new(); n + 1];
        let mut grams = Vec::with_capacity(n);
        for &(h, w) in queries {
            self.grams(h, w, &mut grams);
            for (k, &(g, c)) in grams.iter().enumerate() {
                want[k + 1].push(g);
                if k > 0 {
                    want[k].push(c);
                }
            }
        }
        let mut rows: Rows = vec![FxHashMap::default(); n + 1];
        for (k, keys) in want.iter_mut().enumerate().skip(1) {
            keys.sort_unstable();
            keys.dedup();
            let t = count_table(&self.model, k);
            let dim = dim_of(k, n);
            for chunk in keys.chunks(CHUNK) {
                let r = client.pull(&t, chunk)?;
                for (&key, r) in chunk.iter().zip(r.chunks(dim)) {
                    let row = Row::decode(r).ok_or_else(|| undecodable(&t, key))?;
                    if row != Row::default() {
                        rows[k].insert(key, row);
                    }
                }
            }
        }
        Ok(queries
            .iter()
            .map(|&(h, w)| {
                self.grams(h, w, &mut grams);
                self.prob(&grams, &rows).ln()
            })
            .collect())
    }

    /// The keys of `w`'s n-grams of order 1, 2, … with `h` (and of their contexts).
    fn grams(&self, h: &[u64], w: u64, out: &mut Vec<(u64, u64)>) {
        out.clear();
        let n = self.order();
        let h = &h[h.len().saturating_sub(n - 1)..];
        let mut buf = [0u64; MAX_ORDER];
        for k in 1..=h.len() + 1 {
            let ctx = &h[h.len() + 1 - k..];
            buf[..k - 1].copy_from_slice(ctx);
            buf[k - 1] = w;
            let c = if k == 1 { EMPTY } else { ngram_key(ctx) };
            out.push((ngram_key(&buf[..k]), c));
        }
    }

    fn prob(&self, grams: &[(u64, u64)], rows: &Rows) -> f64 {
        self.prob_by(grams, |k, key| {
            rows[k].get(&key).copied().unwrap_or_default()
        })
    }

    /// `prob` with rows from `row(order, key)` (all zero for an n-gram the model lacks).
    fn prob_by(&self, grams: &[(u64, u64)], row: impl Fn(usize, u64) -> Row) -> f64 {
        let uniform = 1.0 / self.vocab_size as f64;
        let mut p = uniform;
        for (i, &(g, c)) in grams.iter().enumerate() {
            let k = i + 1;
            let ctx = if k == 1 { self.empty } else { row(k - 1, c) };
            if ctx.sum == 0 {
                // Never a context: this and every longer context back off with weight 1.
                break;
            }
            let count = row(k, g).count;
            let d = &self.discounts[k];
            let disc = |a: u64| {
                if a == 0 {
                    0.0
                } else {
                    d[a.min(3) as usize - 1]
                }
            };
            let s = ctx.sum as f64;
            let gamma =
                (d[0] * ctx.n[0] as f64 + d[1] * ctx.n[1] as f64 + d[2] * ctx.n[2] as f64) / s;
            p = (count as f64 - disc(count)).max(0.0) / s + gamma * p;
        }
        p
    }
}

/// Perplexity of a test file, KenLM's way.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Perplexity {
    /// Predicted tokens: words and one `</s>` per line.
    pub tokens: u64,
    pub oov: u64,
    /// Σ ln p over all tokens, and over the in-vocabulary ones.
    pub log_prob: f64,
    pub log_prob_known: f64,
}

impl Perplexity {
    pub fn add(&mut self, lp: f64, oov: bool) {
        self.tokens += 1;
        self.log_prob += lp;
        if oov {
            self.oov += 1;
        } else {
            self.log_prob_known += lp;
        }
    }

    pub fn including_oov(&self) -> f64 {
        (-self.log_prob / self.tokens.max(1) as f64).exp()
    }

    pub fn excluding_oov(&self) -> f64 {
        (-self.log_prob_known / (self.tokens - self.oov).max(1) as f64).exp()
    }
}

/// Sentences of a file in batches of about `batch_tokens` predicted tokens, words as keys with
/// unknown words replaced by `<unk>`, each with its OOV flags. `pick(offset)` chooses lines by
/// the byte offset they start at.
pub struct Sentences<'a> {
    /// Which of some words the model knows.
    known: Known<'a>,
    kn: &'a Kn,
    reader: PartReader,
    pick: Box<dyn Fn(u64) -> bool + 'a>,
    batch_tokens: usize,
}

impl std::fmt::Debug for Sentences<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentences")
            .field("reader", &self.reader)
            .finish()
    }
}

/// One batch: sentences (`<s> … </s>` as keys) and, per sentence, which tokens were OOV.
#[derive(Debug, Default)]
pub struct Batch {
    pub sentences: Vec<Vec<u64>>,
    pub oov: Vec<Vec<bool>>,
}

/// Which of some words a model knows (has a unigram count for, or is `<unk>`).
type Known<'a> = Box<dyn Fn(&[u64]) -> Result<Vec<bool>> + 'a>;

impl<'a> Sentences<'a> {
    pub fn open(
        client: &'a BlockingClient,
        kn: &'a Kn,
        path: &Path,
        pick: impl Fn(u64) -> bool + 'a,
        batch_tokens: usize,
    ) -> Result<Sentences<'a>> {
        let known = Box::new(move |words: &[u64]| kn.known(client, words));
        Sentences::open_with(known, kn, path, pick, batch_tokens)
    }

    /// `open` with the vocabulary looked up by `known`.
    pub(crate) fn open_with(
        known: Known<'a>,
        kn: &'a Kn,
        path: &Path,
        pick: impl Fn(u64) -> bool + 'a,
        batch_tokens: usize,
    ) -> Result<Sentences<'a>> {
        let len = std::fs::metadata(path)
            .map_err(|e| TrainError::io(format!("reading {}", path.display()), e))?
            .len();
        Ok(Sentences {
            known,
            kn,
            reader: PartReader::open(path, 0, len, None)?,
            pick: Box::new(pick),
            batch_tokens,
        })
    }

    pub fn next_batch(&mut self) -> Result<Option<Batch>> {
        let mut b = Batch::default();
        let mut tokens = 0;
        let mut s = Vec::new();
        while tokens < self.batch_tokens {
            let at = self.reader.position();
            let Some(line) = self.reader.next_line()? else {
                break;
            };
            if !(self.pick)(at) {
                continue;
            }
            sentence(line, &mut s);
            tokens += s.len() - 1;
            b.sentences.push(s.clone());
        }
        if b.sentences.is_empty() {
            return Ok(None);
        }
        let mut words: Vec<u64> = b.sentences.iter().flatten().copied().collect();
        words.sort_unstable();
        words.dedup();
        let known: FxHashMap<u64, bool> =
            words.iter().copied().zip((self.known)(&words)?).collect();
        let bos = word_key(BOS);
        for s in &mut b.sentences {
            let mut flags = Vec::with_capacity(s.len());
            for w in s.iter_mut() {
                let oov = *w != bos && !known[w];
                if oov {
                    *w = self.kn.unk;
                }
                flags.push(oov);
            }
            b.oov.push(flags);
        }
        Ok(Some(b))
    }
}

/// The perplexity of `model`'s Kneser-Ney on the lines of `path` that `pick` chooses.
pub fn perplexity(
    client: &BlockingClient,
    kn: &Kn,
    path: &Path,
    pick: impl Fn(u64) -> bool,
) -> Result<Perplexity> {
    let mut out = Perplexity::default();
    let mut lines = Sentences::open(client, kn, path, pick, 200_000)?;
    while let Some(b) = lines.next_batch()? {
        let mut q = Vec::new();
        let mut flags = Vec::new();
        for (s, oov) in b.sentences.iter().zip(&b.oov) {
            for j in 1..s.len() {
                q.push((&s[..j], s[j]));
                flags.push(oov[j]);
            }
        }
        for (lp, oov) in kn.log_probs(client, &q)?.into_iter().zip(flags) {
            out.add(lp, oov);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exact_to_2_pow_40() {
        for x in [0u64, 1, 65_535, 65_536, 123_456_789, (1 << 40) - 1] {
            let mut r = [0.0f32; 2];
            Counter::put(&mut r, 0, x);
            assert_eq!(Counter::get(&r, 0), Some(x));
        }
        assert_eq!(Counter::get(&[0.5, 0.0], 0), None);
        assert_eq!(Counter::get(&[70_000.0, 0.0], 0), None);
    }

    #[test]
    fn sentences_are_bracketed_and_markers_in_the_text_skipped() {
        let mut s = Vec::new();
        sentence(" a <s> b\t</s> ", &mut s);
        let k = word_key;
        assert_eq!(s, vec![k(BOS), k("a"), k("b"), k(EOS)]);
        sentence("", &mut s);
        assert_eq!(s, vec![k(BOS), k(EOS)]);
    }

    #[test]
    fn discounts_follow_chen_and_goodman() {
        let c = CountOfCounts {
            t: [1000, 400, 200, 100],
            distinct: 2000,
        };
        let y = 1000.0 / 1800.0;
        let d = c.discounts();
        assert!((d[0] - (1.0 - 2.0 * y * 0.4)).abs() < 1e-12);
        assert!((d[1] - (2.0 - 3.0 * y * 0.5)).abs() < 1e-12);
        assert!((d[2] - (3.0 - 4.0 * y * 0.5)).abs() < 1e-12);
        let empty = CountOfCounts::default();
        assert_eq!(empty.discounts(), [0.5, 1.0, 1.5]);
    }
}
