//! A corpus is a text file of whitespace-separated tokens; a line is a sentence. Worker `i` of
//! `n` reads the byte range `[i·len/n, (i+1)·len/n)`, starting at the first line that begins
//! inside it, so the parts cover every line exactly once.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Result, TrainError};
use crate::keys::{state_fields, state_row};

/// Byte ranges of `parts` parts of a file of `len` bytes.
pub fn part_range(len: u64, part: usize, parts: usize) -> (u64, u64) {
    let p = parts.max(1) as u64;
    (len * part as u64 / p, len * (part as u64 + 1) / p)
}

/// Reads the lines of one part: those whose first byte lies in `[start, end)`.
#[derive(Debug)]
pub struct PartReader {
    reader: BufReader<File>,
    /// Offset of the next unread byte.
    pos: u64,
    end: u64,
    line: String,
}

impl PartReader {
    /// Opens the part `[start, end)` of `path`, resuming at `resume` (an offset this reader
    /// reported earlier) if given.
    pub fn open(path: &Path, start: u64, end: u64, resume: Option<u64>) -> Result<PartReader> {
        let f = File::open(path)
            .map_err(|e| TrainError::io(format!("opening {}", path.display()), e))?;
        let mut reader = BufReader::with_capacity(1 << 20, f);
        let mut pos = resume.unwrap_or(start);
        reader
            .seek(SeekFrom::Start(pos))
            .map_err(|e| TrainError::io("seeking the corpus", e))?;
        if resume.is_none() && start > 0 {
            // Is `start` the beginning of a line? Look at the byte before it.
            reader
                .seek(SeekFrom::Start(start - 1))
                .map_err(|e| TrainError::io("seeking the corpus", e))?;
            let mut skipped = Vec::new();
            let n = reader
                .read_until(b'\n', &mut skipped)
                .map_err(|e| TrainError::io("reading the corpus", e))?;
            pos = start - 1 + n as u64;
        }
        Ok(PartReader {
            reader,
            pos,
            end,
            line: String::new(),
        })
    }

    /// Offset of the next line to be read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next line of the part (without its newline), or `None` at the part's end.
    pub fn next_line(&mut self) -> Result<Option<&str>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.line).into_bytes();
        buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| TrainError::io("reading the corpus", e))?;
        if n == 0 {
            return Ok(None);
        }
        self.pos += n as u64;
        // Invalid UTF-8 is replaced rather than refused: one bad byte should not stop a run.
        self.line = match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Ok(Some(self.line.trim_end_matches(['\n', '\r'])))
    }
}

/// A trainer worker's recorded position in its part of a corpus: epochs finished, the offset
/// of its next line, and the units (words, tokens) it has processed over all epochs. Stored
/// as a state row; a resumed run continues from it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Position {
    pub epoch: u64,
    pub offset: u64,
    pub done: u64,
}

impl Position {
    pub fn encode(&self) -> Vec<f32> {
        state_row(&[self.epoch, self.offset, self.done])
    }

    pub fn decode(r: &[f32]) -> Option<Position> {
        let [epoch, offset, done] = state_fields(r)?;
        Some(Position {
            epoch,
            offset,
            done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        let lines: Vec<String> = (0..200).map(|i| format!("w{i} x{}", i * 7)).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        for parts in [1, 2, 3, 7] {
            let mut seen = Vec::new();
            for p in 0..parts {
                let (s, e) = part_range(len, p, parts);
                let mut r = PartReader::open(&path, s, e, None).unwrap();
                while let Some(l) = r.next_line().unwrap() {
                    seen.push(l.to_string());
                }
            }
            assert_eq!(seen, lines, "{parts} parts");
        }
    }
}
