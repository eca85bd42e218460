//! Exactly-once bookkeeping: for each client, which sequence numbers were already applied.
//!
//! A sliding window of the last `WINDOW` sequence numbers per client (the anti-replay window
//! of IPsec, RFC 4303 §3.4.3): retries and reordered in-flight pushes are recognised exactly,
//! and memory per client is fixed. A sequence number that has fallen out of the window cannot
//! be judged, so it is refused rather than guessed.

/// How many sequence numbers below the highest seen are remembered per client.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;
/// Encoded size of one window without its parts list (all a window was before backups).
pub const ENCODED_LEN: usize = 8 + WORDS * 8;
/// How many recent multi-shard writes a window remembers the fan-out of (for a backup's cut:
/// a write still in flight is among its client's last few).
pub const RECENT_PARTS: usize = 64;

/// What the window says about a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
    /// Below the window: `oldest` is the smallest sequence number still judged.
    TooOld {
        oldest: u64,
    },
}

/// Bit `i` set means sequence `high - i` was applied.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SeqWindow {
    high: u64,
    bits: [u64; WORDS],
    /// `(seq, parts)` of the last `RECENT_PARTS` writes applied that went to more than one
    /// shard, oldest first.
    parts: std::collections::VecDeque<(u64, u16)>,
}

impl SeqWindow {
    pub fn check(&self, seq: u64) -> Verdict {
        if seq > self.high {
            return Verdict::New;
        }
        let i = self.high - seq;
        if i >= WINDOW {
            return Verdict::TooOld {
                oldest: self.high - WINDOW + 1,
            };
        }
        if self.bits[(i / 64) as usize] >> (i % 64) & 1 == 1 {
            Verdict::Duplicate
        } else {
            Verdict::New
        }
    }

    /// Records `seq` as applied, a write split into `parts` shards' parts (0 or 1: one
    /// shard). The caller checked it is `New`.
    pub fn mark(&mut self, seq: u64, parts: u16) {
        if parts > 1 {
            if self.parts.len() == RECENT_PARTS {
                self.parts.pop_front();
            }
            self.parts.push_back((seq, parts));
        }
        if seq > self.high {
            self.shift(seq - self.high);
            self.high = seq;
        }
        let i = self.high - seq;
        if i < WINDOW {
            self.bits[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// Moves every bit `by` places towards "older", dropping what falls off the end.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.bits = [0; WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for w in (0..WORDS).rev() {
            let src = w as isize - words as isize;
            let mut v = if src >= 0 {
                self.bits[src as usize] << bits
            } else {
                0
            };
            if bits > 0 && src > 0 {
                v |= self.bits[src as usize - 1] >> (64 - bits);
            }
            self.bits[w] = v;
        }
    }

    /// The window as a backup's cut reads it.
    pub fn report(&self, client: u64) -> paramdb_types::ClientWindow {
        paramdb_types::ClientWindow {
            client,
            high: self.high,
            bits: self.bits.to_vec(),
            parts: self.parts.iter().map(|&(s, p)| (s, p as u32)).collect(),
        }
    }

    /// The high mark and bits, then the count of recent parts (u16) and each as seq (u64),
    /// parts (u16). A window written before backups (`ENCODED_LEN` bytes) reads with none.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ENCODED_LEN + 2 + self.parts.len() * 10);
        b.extend_from_slice(&self.high.to_le_bytes());
        for w in self.bits {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&(self.parts.len() as u16).to_le_bytes());
        for &(s, p) in &self.parts {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&p.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<SeqWindow> {
        if b.len() < ENCODED_LEN {
            return None;
        }
        let mut w = SeqWindow {
            high: u64::from_le_bytes(b[..8].try_into().ok()?),
            bits: [0; WORDS],
            parts: Default::default(),
        };
        for (i, c) in b[8..ENCODED_LEN].chunks_exact(8).enumerate() {
            w.bits[i] = u64::from_le_bytes(c.try_into().ok()?);
        }
        let rest = &b[ENCODED_LEN..];
        if rest.is_empty() {
            return Some(w);
        }
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let list = &rest[2..];
        if n > RECENT_PARTS || list.len() != n * 10 {
            return None;
        }
        for c in list.chunks_exact(10) {
            let s = u64::from_le_bytes(c[..8].try_into().ok()?);
            let p = u16::from_le_bytes(c[8..].try_into().ok()?);
            w.parts.push_back((s, p));
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_retry_and_reorder() {
        let mut w = SeqWindow::default();
        assert_eq!(w.check(1), Verdict::New);
        w.mark(1, 1);
        assert_eq!(w.check(1), Verdict::Duplicate);
        w.mark(3, 3);
        assert_eq!(w.check(2), Verdict::New);
        w.mark(2, 0);
        assert_eq!(w.check(2), Verdict::Duplicate);
        w.mark(5000, 2);
        assert_eq!(
            w.check(3),
            Verdict::TooOld {
                oldest: 5000 - WINDOW + 1
            }
        );
        assert_eq!(w.check(5000 - WINDOW + 1), Verdict::New);
        assert_eq!(SeqWindow::decode(&w.encode()).unwrap(), w);
        assert_eq!(w.report(9).parts, vec![(3, 3), (5000, 2)]);
        // A window checkpointed before backups existed reads with no parts.
        let old = &w.encode()[..ENCODED_LEN];
        assert!(SeqWindow::decode(old).unwrap().parts.is_empty());
        for s in 0..2 * RECENT_PARTS as u64 {
            w.mark(6000 + s, 4);
        }
        assert_eq!(w.parts.len(), RECENT_PARTS);
        assert_eq!(SeqWindow::decode(&w.encode()).unwrap(), w);
    }

    proptest! {
        /// Against a model that remembers every applied sequence number.
        #[test]
        fn matches_a_set_model(seqs in proptest::collection::vec(1u64..3000, 1..400)) {
            let mut w = SeqWindow::default();
            let mut model = BTreeSet::new();
            for s in seqs {
                let high = model.iter().next_back().copied().unwrap_or(0);
                let expected = if s + WINDOW <= high {
                    Verdict::TooOld { oldest: high - WINDOW + 1 }
                } else if model.contains(&s) {
                    Verdict::Duplicate
                } else {
                    Verdict::New
                };
                prop_assert_eq!(w.check(s), expected);
                if expected == Verdict::New {
                    w.mark(s, 1);
                    model.insert(s);
                }
            }
        }
    }
}
