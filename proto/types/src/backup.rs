//! What shards report while a backup is cut and taken.

/// One client's exactly-once window on a shard, as a backup's cut needs it: which recent
/// sequence numbers the shard applied, and how many shards each recent multi-shard write of
/// the client went to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientWindow {
    pub client: u64,
    /// The highest sequence number applied.
    pub high: u64,
    /// Bit `i` of word `i / 64` set: sequence `high - i` was applied (`WINDOW` bits).
    pub bits: Vec<u64>,
    /// `(seq, parts)` for the client's most recent writes that went to more than one shard.
    pub parts: Vec<(u64, u32)>,
}

impl ClientWindow {
    /// Whether `seq` was applied: `None` when it is below the window (too old to tell; a
    /// write that old is long complete).
    pub fn applied(&self, seq: u64) -> Option<bool> {
        if seq > self.high {
            return Some(false);
        }
        let i = self.high - seq;
        let word = self.bits.get((i / 64) as usize)?;
        Some(word >> (i % 64) & 1 == 1)
    }
}

/// A shard's answer to a write fence: no new write is applied until the fence is lifted, its
/// lease runs out, or the write is owed (`Store::owe`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FenceReport {
    /// Names this fence in the calls that follow.
    pub fence: u64,
    /// The last LSN applied when the fence went up.
    pub lsn: u64,
    pub clients: Vec<ClientWindow>,
}

/// What one shard's backup holds and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardBackup {
    /// RocksDB's part holds every record up to this LSN.
    pub checkpoint_lsn: u64,
    /// The log part holds the records after `checkpoint_lsn` up to this one: the backup is
    /// the shard's state at this LSN.
    pub end_lsn: u64,
    pub files: u64,
    /// Bytes of all the files of the backup.
    pub bytes: u64,
    /// Bytes copied (read and written).
    pub bytes_copied: u64,
    /// Bytes hard-linked from the live data directory.
    pub bytes_linked: u64,
    /// Bytes hard-linked from the previous backup in the target.
    pub bytes_reused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_answers_within_and_below() {
        let w = ClientWindow {
            client: 7,
            high: 100,
            bits: {
                let mut b = vec![0u64; 16];
                b[0] = 0b101; // 100 and 98
                b
            },
            parts: vec![],
        };
        assert_eq!(w.applied(101), Some(false));
        assert_eq!(w.applied(100), Some(true));
        assert_eq!(w.applied(99), Some(false));
        assert_eq!(w.applied(98), Some(true));
        let old = ClientWindow {
            high: 5000,
            ..w.clone()
        };
        assert_eq!(old.applied(1), None);
    }
}
