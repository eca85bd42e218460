//! Per-table lifecycle: expiry (`ttl`), admission (`admit_after`) and the size cap
//! (`max_rows`). The exact semantics, which the tests model:
//!
//! - **Time.** Every log record carries a time in whole seconds (the store's clock, never going
//!   back from one LSN to the next), and a row carries the time of the last push applied to it
//!   (an imported row, the time of its import). Expiry and eviction compare the two, so replay
//!   makes the same decisions as the live pushes did.
//! - **`ttl`**: a row expires once `ttl` seconds pass without a push: at time `T` a row of time
//!   `p` is expired when `T − max(p, s) ≥ ttl`, where `s` is when the table got its TTL (rows
//!   already old then get one TTL of grace). Reads treat an expired row as absent at once
//!   (they return the initializer); a push to one starts again from the initializer. Expired
//!   rows are dropped lazily: by the checkpoint that would write them, by RocksDB's compaction
//!   (a compaction filter), and from the hot-row cache when a read finds one.
//! - **`admit_after = n`**: a key without a stored row gets one only at its n-th push. Pushes
//!   before that are counted in a count-min sketch of 8-bit counters, with conservative update,
//!   and their values are dropped; pulls return the initializer. The sketch's memory is fixed
//!   (`StoreOptions::admission_counters`, 4 Mi counters = 4 MiB per table by default) and its
//!   counters are halved every `counters / 8` counts (per partition, see below), so counts
//!   reflect recent pushes. A count can only be over-estimated, so a key may be admitted early,
//!   never late: with `d = 4` hashes over `w` counters and `N` distinct keys counted since the
//!   last halving, a key's first push is admitted with probability about
//!   `(1 − e^(−4N/w))^4`, at most 2.4% (for `n = 2`), since halving keeps `N ≤ w/8`.
//! - **`max_rows = m`**: after every checkpoint, if the table may hold more than `m` rows (rows
//!   counted at the last pass, plus rows created since), a pass reads the LSN of every row's
//!   last push and logs an eviction of every row whose LSN is below the `m − m/16`-th largest.
//!   That is least recently pushed first, in exact log order; the rows of one push share an
//!   LSN and go together. Evicted rows are gone for reads at once, like expired ones, and
//!   dropped the same lazy ways. So the cap is enforced at checkpoints (between two, the table
//!   can grow by one checkpoint's worth of new rows), and evicting to 15/16 of `m` keeps the
//!   passes rare.
//!
//! Changing a table's policies is a logged record too, so every record is replayed under the
//! policies it was applied with. Shortening or removing a TTL never brings expired rows back:
//! the old TTL's cut-off becomes a floor below which rows stay gone.
//!
//! The sketch is split into `SKETCH_PARTS` partitions by key, with the same partitioning as
//! replay (`state_machine::partition`), so each replay thread owns its partitions' counters
//! and replays them in log order: the bits after a crash equal the bits before.

use paramdb_types::{Key, Lifecycle, LifecycleCounts};

/// Partitions of an admission sketch; replay threads own whole partitions.
pub(crate) const SKETCH_PARTS: usize = 64;
/// Hash functions of the sketch.
const SKETCH_HASHES: u64 = 4;
/// Version of the encoded lifecycle state in RocksDB's meta column family.
const LIFE_VERSION: u8 = 1;

/// Which sketch partition `key` belongs to.
pub(crate) fn part_of(key: Key) -> usize {
    ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % SKETCH_PARTS as u64) as usize
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One partition of a count-min sketch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SketchPart {
    counters: Vec<u8>,
    /// Counts since the counters were last halved.
    since_halving: u32,
}

/// Push counts of keys without a stored row, in bounded memory.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sketch {
    parts: Vec<SketchPart>,
}

impl Sketch {
    /// A sketch of about `counters` counters (rounded to a power of two per partition).
    pub(crate) fn new(counters: usize) -> Sketch {
        let width = (counters / SKETCH_PARTS).max(64).next_power_of_two();
        Sketch {
            parts: vec![
                SketchPart {
                    counters: vec![0; width],
                    since_halving: 0,
                };
                SKETCH_PARTS
            ],
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.counters.len()).sum()
    }

    /// Counts one push of `key` and returns its estimated count, this push included.
    pub(crate) fn observe(&mut self, key: Key) -> u32 {
        let part = &mut self.parts[part_of(key)];
        let w = part.counters.len() as u64;
        let h = splitmix(key ^ 0x5EED_AD41_7AF7_E800);
        let (h1, h2) = (h, (h >> 32) | 1);
        let at = |i: u64| (h1.wrapping_add(i.wrapping_mul(h2)) & (w - 1)) as usize;
        let min = (0..SKETCH_HASHES)
            .map(|i| part.counters[at(i)])
            .min()
            .unwrap_or(0);
        if min < u8::MAX {
            // Conservative update: only the counters at the minimum grow.
            for i in 0..SKETCH_HASHES {
                let c = &mut part.counters[at(i)];
                if *c == min {
                    *c += 1;
                }
            }
        }
        part.since_halving += 1;
        if part.since_halving as u64 >= (w / 8).max(1) {
            for c in &mut part.counters {
                *c >>= 1;
            }
            part.since_halving = 0;
        }
        min as u32 + 1
    }

    /// Takes partition `q` from `other` (replay merges the partitions each thread owned).
    pub(crate) fn take_part(&mut self, q: usize, other: &mut Sketch) {
        std::mem::swap(&mut self.parts[q], &mut other.parts[q]);
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.parts.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.parts[0].counters.len() as u32).to_le_bytes());
        for p in &self.parts {
            out.extend_from_slice(&p.since_halving.to_le_bytes());
            out.extend_from_slice(&p.counters);
        }
    }

    fn decode(b: &[u8]) -> Result<Sketch, String> {
        let u32_at = |o: usize| -> Result<u32, String> {
            b.get(o..o + 4)
                .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
                .ok_or_else(|| "admission sketch is truncated".to_string())
        };
        let (parts, width) = (u32_at(0)? as usize, u32_at(4)? as usize);
        if parts != SKETCH_PARTS || !width.is_power_of_two() {
            return Err(format!(
                "admission sketch has {parts} partitions of {width} counters"
            ));
        }
        if b.len() != 8 + parts * (4 + width) {
            return Err("admission sketch has the wrong length".into());
        }
        let mut out = Vec::with_capacity(parts);
        for q in 0..parts {
            let o = 8 + q * (4 + width);
            out.push(SketchPart {
                since_halving: u32_at(o)?,
                counters: b[o + 4..o + 4 + width].to_vec(),
            });
        }
        Ok(Sketch { parts: out })
    }
}

/// What is absent at some time: rows of a time below `time` (expired, or below a floor an
/// earlier TTL left) and rows whose last push's LSN is below `lsn` (evicted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cutoff {
    pub(crate) time: u32,
    pub(crate) lsn: u64,
}

impl Cutoff {
    /// Whether a row of this time and LSN is live.
    pub(crate) fn keeps(&self, time: u32, lsn: u64) -> bool {
        time >= self.time && lsn >= self.lsn
    }

    pub(crate) fn keeps_row(&self, r: &crate::row::Row) -> bool {
        self.keeps(r.time, r.lsn)
    }

    /// Whether every row is live.
    pub(crate) fn keeps_all(&self) -> bool {
        self.time == 0 && self.lsn == 0
    }
}

/// A table's lifecycle state: its policies, the floors they left, the admission sketch and
/// what they did. Part of the state machine: changed only by applying log records, and
/// written by every checkpoint as of its LSN.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Life {
    pub(crate) policy: Lifecycle,
    /// Rows of a time below this are gone: expiries under a TTL since changed.
    pub(crate) floor: u32,
    /// Rows whose last push's LSN is below this are evicted.
    pub(crate) evict_lsn: u64,
    /// When the table got its current TTL.
    pub(crate) ttl_since: u32,
    pub(crate) sketch: Option<Sketch>,
    /// What the policies did, over the store's life (checkpointed with the rest).
    pub(crate) counts: LifecycleCounts,
    /// Live rows the last eviction pass left (`None`: no pass since the store opened).
    pub(crate) rows_at_pass: Option<u64>,
    /// Rows created since that pass (an upper bound on the growth).
    pub(crate) rows_since_pass: u64,
}

impl Life {
    pub(crate) fn new(policy: Lifecycle, now: u32, counters: usize) -> Life {
        Life {
            policy,
            floor: 0,
            evict_lsn: 0,
            ttl_since: now,
            sketch: policy.admits().then(|| Sketch::new(counters)),
            counts: LifecycleCounts::default(),
            rows_at_pass: None,
            rows_since_pass: 0,
        }
    }

    /// What is absent at time `now`.
    pub(crate) fn cutoff(&self, now: u32) -> Cutoff {
        Cutoff {
            time: self.floor.max(self.ttl_cutoff(now)),
            lsn: self.evict_lsn,
        }
    }

    fn ttl_cutoff(&self, now: u32) -> u32 {
        match self.policy.ttl_secs {
            // Expired: now − max(p, since) ≥ ttl, i.e. max(p, since) ≤ now − ttl.
            Some(ttl) if (now as u64) >= ttl && self.ttl_since as u64 <= now as u64 - ttl => {
                (now as u64 - ttl + 1) as u32
            }
            _ => 0,
        }
    }

    /// Applies new policies at time `now` (a logged lifecycle record).
    pub(crate) fn set_policy(&mut self, policy: Lifecycle, now: u32, counters: usize) {
        // What expired under the old TTL stays gone whatever the new one says.
        self.floor = self.floor.max(self.ttl_cutoff(now));
        if self.policy.ttl_secs.is_none() {
            self.ttl_since = now;
        }
        if !policy.admits() {
            self.sketch = None;
        } else if self.sketch.is_none() {
            self.sketch = Some(Sketch::new(counters));
        }
        self.policy = policy;
    }

    /// Applies an eviction of the rows last pushed before LSN `before` (a logged record).
    pub(crate) fn evict(&mut self, before: u64) {
        self.evict_lsn = self.evict_lsn.max(before);
    }

    /// Whether a push of `key`, which has no stored row, creates one (admission). Counts the
    /// push either way.
    pub(crate) fn admit(&mut self, key: Key) -> bool {
        let Some(sketch) = &mut self.sketch else {
            self.rows_since_pass += 1;
            return true;
        };
        if sketch.observe(key) >= self.policy.admit_after {
            self.counts.admitted += 1;
            self.rows_since_pass += 1;
            true
        } else {
            self.counts.unadmitted += 1;
            false
        }
    }

    /// The persisted form: `version u8 | ttl u64 | admit_after u32 | max_rows u64 | floor u32 |
    /// evict_lsn u64 | ttl_since u32 | admitted u64 | unadmitted u64 | expired u64 |
    /// evicted u64 | has_sketch u8 | sketch`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(48 + self.sketch.as_ref().map_or(0, |s| s.bytes() + 300));
        b.push(LIFE_VERSION);
        b.extend_from_slice(&self.policy.ttl_secs.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.policy.admit_after.to_le_bytes());
        b.extend_from_slice(&self.policy.max_rows.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.floor.to_le_bytes());
        b.extend_from_slice(&self.evict_lsn.to_le_bytes());
        b.extend_from_slice(&self.ttl_since.to_le_bytes());
        let c = &self.counts;
        for v in [c.admitted, c.unadmitted, c.expired, c.evicted] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        match &self.sketch {
            Some(s) => {
                b.push(1);
                s.encode(&mut b);
            }
            None => b.push(0),
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Life, String> {
        const FIXED: usize = 1 + 8 + 4 + 8 + 4 + 8 + 4 + 32 + 1;
        if b.len() < FIXED {
            return Err(format!("lifecycle entry is {} bytes", b.len()));
        }
        if b[0] != LIFE_VERSION {
            return Err(format!(
                "lifecycle entry version {} (this build reads {LIFE_VERSION})",
                b[0]
            ));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let nonzero = |v: u64| (v != 0).then_some(v);
        let policy = Lifecycle {
            ttl_secs: nonzero(u64_at(1)),
            admit_after: u32_at(9),
            max_rows: nonzero(u64_at(13)),
        };
        policy.validate().map_err(|e| e.reason)?;
        let sketch = match b[69] {
            0 => None,
            _ => Some(Sketch::decode(&b[70..])?),
        };
        Ok(Life {
            policy,
            floor: u32_at(21),
            evict_lsn: u64_at(25),
            ttl_since: u32_at(33),
            sketch,
            counts: LifecycleCounts {
                admitted: u64_at(37),
                unadmitted: u64_at(45),
                expired: u64_at(53),
                evicted: u64_at(61),
            },
            rows_at_pass: None,
            rows_since_pass: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_cutoff_follows_the_definition() {
        let policy = Lifecycle {
            ttl_secs: Some(10),
            ..Default::default()
        };
        let l = Life::new(policy, 100, 0);
        // Nothing expires before one TTL after the policy was set.
        assert_eq!(l.cutoff(109).time, 0);
        // At 110 a row of time 100 has gone 10 s unpushed: expired; 101 is not.
        assert_eq!(l.cutoff(110).time, 101);
        assert_eq!(l.cutoff(200).time, 191);
    }

    #[test]
    fn removing_a_ttl_keeps_expired_rows_gone() {
        let mut l = Life::new(
            Lifecycle {
                ttl_secs: Some(10),
                ..Default::default()
            },
            0,
            0,
        );
        l.set_policy(Lifecycle::default(), 50, 0);
        assert_eq!(l.cutoff(1000).time, 41);
        l.evict(60);
        assert_eq!(l.cutoff(1000), Cutoff { time: 41, lsn: 60 });
        assert!(!l.cutoff(1000).keeps(41, 59) && l.cutoff(1000).keeps(41, 60));
    }

    #[test]
    fn sketch_admits_at_the_nth_push_and_round_trips() {
        let policy = Lifecycle {
            admit_after: 3,
            ..Default::default()
        };
        let mut l = Life::new(policy, 0, 1 << 16);
        assert!(!l.admit(7));
        assert!(!l.admit(7));
        assert!(l.admit(7));
        assert!(!l.admit(8));
        let b = l.encode();
        let mut back = Life::decode(&b).unwrap();
        assert_eq!(back.counts, l.counts);
        back.rows_since_pass = l.rows_since_pass;
        assert_eq!(back, l);
        assert!(Life::decode(&b[..b.len() - 1]).is_err());
    }
}
