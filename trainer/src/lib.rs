//! paramdb's trainers. They see only `paramdb-client`: every parameter lives in the parameter
//! server (embedded shards or a cluster), and a trainer pulls what a minibatch needs, trains
//! locally and pushes deltas.
//!
//! - `keys`: stable 64-bit word keys, and exact integers carried in f32 rows.
//! - `corpus`: reading a corpus in byte-range parts, one per worker thread.
//! - `vocab`: streaming word counts with pruning, and the vocabulary table in the server.
//! - `word2vec`: skip-gram and CBOW with negative sampling, asynchronous SGD, resumable.
//! - `ngram`: n-gram counts in the servers and interpolated modified Kneser-Ney on them.
//! - `nlm`: a feed-forward neural n-gram model (sampled softmax), and its interpolation.
//! - `export`: word2vec text and binary formats.
//! - `eval`: word analogies, word similarity (Spearman), nearest neighbours.
//! - `linreg`: the classic dense ps/worker example (linear regression, SGD on the servers).
//! - `synth`: generated corpora with planted structure (the README's main job, tests).

pub mod corpus;
pub mod error;
pub mod eval;
pub mod export;
mod kernel;
pub mod keys;
mod linalg;
pub mod linreg;
pub mod ngram;
pub mod nlm;
pub mod synth;
pub mod vocab;
pub mod word2vec;

pub use error::TrainError;

/// `s` quoted for an error message, cut to its first 64 characters: a huge line or name must
/// not swamp the message.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}… ({} bytes)", &s[..i], s.len()),
        None => format!("{s:?}"),
    }
}
