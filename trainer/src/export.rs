//! Word vectors out of (and back into) the word2vec formats that gensim's
//! `KeyedVectors.load_word2vec_format` reads: text (`V D` header, then `word v1 … vD` per line)
//! and binary (the same header, then per word `word`, a space, D little-endian f32, `\n`).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use paramdb_client::BlockingClient;

use crate::error::{Result, TrainError};
use crate::keys::word_key;
use crate::vocab;

/// Words (most frequent first) and their vectors, row after row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embeddings {
    pub words: Vec<String>,
    pub dim: usize,
    pub vectors: Vec<f32>,
}

impl Embeddings {
    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }
}

/// Reads model `model`'s word vectors (`<model>.in`) for its whole vocabulary from the server.
pub fn from_server(client: &BlockingClient, model: &str) -> Result<Embeddings> {
    let vocab = vocab::load(client, model)?;
    let table = crate::word2vec::in_table(model);
    let dim = client.describe_table(&table)?.dim as usize;
    let mut vectors = Vec::with_capacity(vocab.len() * dim);
    for chunk in vocab.words.chunks(16_384) {
        let keys: Vec<u64> = chunk.iter().map(|w| word_key(w)).collect();
        vectors.extend(client.pull(&table, &keys)?);
    }
    Ok(Embeddings {
        words: vocab.words,
        dim,
        vectors,
    })
}

/// Writes `e` in word2vec format, binary or text.
pub fn write_word2vec(e: &Embeddings, path: &Path, binary: bool) -> Result<()> {
    let io = |err| TrainError::io(format!("writing {}", path.display()), err);
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    writeln!(w, "{} {}", e.words.len(), e.dim).map_err(io)?;
    for (i, word) in e.words.iter().enumerate() {
        if word.is_empty() || word.contains(char::is_whitespace) {
            return Err(TrainError::Invalid(format!(
                "word {word:?} cannot be written in word2vec format"
            )));
        }
        w.write_all(word.as_bytes()).map_err(io)?;
        let v = e.vector(i);
        if binary {
            w.write_all(b" ").map_err(io)?;
            for x in v {
                w.write_all(&x.to_le_bytes()).map_err(io)?;
            }
        } else {
            for x in v {
                write!(w, " {x}").map_err(io)?;
            }
        }
        w.write_all(b"\n").map_err(io)?;
    }
    w.flush().map_err(io)
}

/// Reads a word2vec file (text or binary, detected from the bytes after the header).
pub fn read_word2vec(path: &Path, binary: bool) -> Result<Embeddings> {
    let io = |err| TrainError::io(format!("reading {}", path.display()), err);
    let bad = |m: String| TrainError::Invalid(format!("{}: {m}", path.display()));
    let f = std::fs::File::open(path).map_err(io)?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut header = String::new();
    r.read_line(&mut header).map_err(io)?;
    let mut it = header.split_whitespace().map(str::parse::<usize>);
    let (Some(Ok(n)), Some(Ok(dim))) = (it.next(), it.next()) else {
        return Err(bad(format!(
            "header {:?} is not `count dim`",
            header.trim()
        )));
    };
    let mut e = Embeddings {
        words: Vec::with_capacity(n),
        dim,
        vectors: Vec::with_capacity(n * dim),
    };
    for i in 0..n {
        if binary {
            let mut word = Vec::new();
            r.read_until(b' ', &mut word).map_err(io)?;
            let word = String::from_utf8_lossy(&word).trim().to_string();
            let mut buf = vec![0u8; dim * 4];
            r.read_exact(&mut buf)
                .map_err(|_| bad(format!("vector {i} is cut short")))?;
            e.vectors.extend(
                buf.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            e.words.push(word);
        } else {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(io)? == 0 {
                return Err(bad(format!("{n} words announced, {i} found")));
            }
            let mut parts = line.split_whitespace();
            let word = parts
                .next()
                .ok_or_else(|| bad(format!("line {} is empty", i + 2)))?;
            let before = e.vectors.len();
            for p in parts {
                e.vectors.push(
                    p.parse()
                        .map_err(|_| bad(format!("bad number {p:?} for {word:?}")))?,
                );
            }
            if e.vectors.len() - before != dim {
                return Err(bad(format!(
                    "{word:?} has {} values, not {dim}",
                    e.vectors.len() - before
                )));
            }
            e.words.push(word.to_string());
        }
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_round_trip() {
        let e = Embeddings {
            words: vec!["the".into(), "naïve".into(), "x".into()],
            dim: 3,
            vectors: vec![0.1, -2.5, 3e-7, 1.0, 0.0, -0.0, f32::MAX, 1e-30, 7.0],
        };
        let dir = tempfile::tempdir().unwrap();
        for binary in [false, true] {
            let p = dir.path().join(format!("v{binary}"));
            write_word2vec(&e, &p, binary).unwrap();
            assert_eq!(read_word2vec(&p, binary).unwrap(), e);
        }
    }
}
