//! Keys, key ranges and the ids that make pushes exactly-once.

/// A row key. Stored big-endian in RocksDB so that byte order is key order.
pub type Key = u64;

/// Half-open key range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    pub start: Key,
    pub end: Key,
}

impl KeyRange {
    pub fn new(start: Key, end: Key) -> Self {
        Self { start, end }
    }

    /// The whole key space that a `u64` range can express (`u64::MAX` itself is excluded).
    pub fn all() -> Self {
        Self {
            start: 0,
            end: u64::MAX,
        }
    }

    pub fn contains(&self, key: Key) -> bool {
        self.start <= key && key < self.end
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
}

/// The keys of a table deleted, expired or evicted since an LSN, as a delta export lists
/// them: none of them is live now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gone {
    /// In key order.
    pub keys: Vec<Key>,
    /// Deleted ranges, in key order, merged where they overlap or touch. The keys a range
    /// delete removed are not known one by one; a key inside one may be live again.
    pub ranges: Vec<KeyRange>,
}

impl std::fmt::Display for KeyRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Identifies a pushing client for exactly-once delivery. Client 0 is anonymous: its pushes
/// are applied every time they arrive, with no deduplication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ClientId(pub u64);

impl ClientId {
    pub const ANONYMOUS: ClientId = ClientId(0);
}

/// What a shard answers to an accepted push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushAck {
    /// Log sequence number of the record that carries this push (for a duplicate: the
    /// durable position at which the original was already known to be applied).
    pub lsn: u64,
    /// True when `(client, seq)` had already been applied: acknowledged again, not re-applied.
    pub duplicate: bool,
}
