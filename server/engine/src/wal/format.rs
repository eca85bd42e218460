//! Byte layout of the gradient log (drawn in `docs/wal-format.md`): a segment header, then
//! 8-byte-aligned frames `len u32 | crc32(len ‖ payload) u32 | payload | zero padding`.
//!
//! Frames are aligned so that recovery can look for a later valid frame after a damaged one by
//! stepping 8 bytes at a time: that is how a torn tail is told apart from corruption.

/// Version of the segment and record layout; stored in every segment header. Version 2 added
/// the delete records (types 3 and 4); version 3 the record time (bytes 44..48) and the
/// lifecycle records (types 5 and 6); version 4 the write's fan-out (bytes 2..4); version 5
/// the note records (type 7). Older segments read as before, with time 0 and fan-out 0.
pub const WAL_FORMAT_VERSION: u32 = 5;
pub const SEGMENT_MAGIC: [u8; 8] = *b"PDBGLOG\0";
pub const SEGMENT_HEADER_LEN: usize = 40;
pub const FRAME_HEADER_LEN: usize = 8;
/// Fixed part of a record payload, before keys/values.
pub const RECORD_FIXED_LEN: usize = 48;
/// Largest payload a frame may carry; larger lengths are treated as damage.
pub const MAX_PAYLOAD: usize = 1 << 30;

pub const TYPE_PUSH_KEYS: u8 = 1;
pub const TYPE_PUSH_RANGE: u8 = 2;
pub const TYPE_DELETE_KEYS: u8 = 3;
pub const TYPE_DELETE_RANGE: u8 = 4;
pub const TYPE_LIFECYCLE: u8 = 5;
pub const TYPE_EVICT: u8 = 6;
pub const TYPE_NOTE: u8 = 7;
/// Largest note a record may carry.
pub const MAX_NOTE: usize = 1 << 20;
/// Body bytes of a lifecycle record: ttl seconds u64 (0: none), admit_after u32, reserved u32,
/// max_rows u64 (0: none).
const LIFECYCLE_BODY: usize = 24;

/// Segment header: what each segment file starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub segment: u64,
    pub first_lsn: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        // 12..16 flags, zero.
        b[16..24].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        // 36..40 reserved, zero.
        b
    }

    /// Decodes a header; `Err` says what is wrong.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Short);
        }
        let stored = u32::from_le_bytes(b[32..36].try_into().expect("4 bytes"));
        let actual = crc32fast::hash(&b[..32]);
        if stored != actual || b[..8] != SEGMENT_MAGIC {
            return Err(HeaderError::Damaged {
                expected: stored,
                actual,
            });
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version > WAL_FORMAT_VERSION {
            return Err(HeaderError::NewerVersion(version));
        }
        Ok(SegmentHeader {
            version,
            segment: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            first_lsn: u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    Damaged { expected: u32, actual: u32 },
    NewerVersion(u32),
}

/// Which rows a record touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKeys<'a> {
    /// An explicit key list, `n × u64` little-endian.
    List(&'a [u8]),
    /// The contiguous block `[start, start + n)`.
    Range { start: u64 },
    /// Every key in `[start, end)`, stored or not (a range delete; `rows` is 0).
    Span { start: u64, end: u64 },
    /// No keys: the record is about the table (a lifecycle record) or about the log (a note).
    None,
}

/// What a record does to its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Adds an update vector to each row (through the table's rule).
    Push,
    /// Deletes the rows: afterwards they pull their initializer, as if never written.
    Delete,
    /// Sets the table's lifecycle policies (`Record::lifecycle`).
    Lifecycle,
    /// Evicts every row of the table last pushed before an LSN (`Record::eviction`).
    Evict,
    /// Changes no row: opaque bytes written by a layer above the engine (a replicated log's
    /// position and membership), kept with the LSN they were logged at (`Record::note`).
    Note,
}

/// One logged write, borrowed from a segment buffer (or built for writing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record<'a> {
    pub kind: RecordKind,
    pub lsn: u64,
    pub client: u64,
    pub seq: u64,
    pub table: u32,
    pub dim: u32,
    pub rows: u32,
    /// When the record was logged, in whole seconds since the Unix epoch (0 in segments
    /// before version 3). Never decreases from one LSN to the next.
    pub time: u32,
    /// How many shards the client split this write into (0 or 1: one shard; 0 in segments
    /// before version 4). A backup's cut uses it to tell a write that reached only some of
    /// its shards.
    pub parts: u16,
    pub keys: RecordKeys<'a>,
    /// `rows × dim` f32, little-endian; a lifecycle record's body.
    pub values: &'a [u8],
}

impl Record<'_> {
    pub fn key(&self, i: usize) -> u64 {
        match self.keys {
            RecordKeys::List(b) => {
                u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            }
            RecordKeys::Range { start } => start + i as u64,
            RecordKeys::Span { start, .. } => start + i as u64,
            RecordKeys::None => unreachable!("a lifecycle record has no keys"),
        }
    }

    /// The policies a lifecycle record sets.
    pub fn lifecycle(&self) -> Option<paramdb_types::Lifecycle> {
        if self.kind != RecordKind::Lifecycle {
            return None;
        }
        let b = self.values;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let nonzero = |v: u64| (v != 0).then_some(v);
        Some(paramdb_types::Lifecycle {
            ttl_secs: nonzero(u64_at(0)),
            admit_after: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            max_rows: nonzero(u64_at(16)),
        })
    }

    /// An eviction record's LSN (rows last pushed before it go) and the rows it evicted.
    pub fn eviction(&self) -> Option<(u64, u64)> {
        let u64_at = |o: usize| u64::from_le_bytes(self.values[o..o + 8].try_into().expect("8"));
        (self.kind == RecordKind::Evict).then(|| (u64_at(0), u64_at(8)))
    }

    /// A note record's bytes.
    pub fn note(&self) -> Option<&[u8]> {
        (self.kind == RecordKind::Note).then_some(self.values)
    }

    /// Decodes the values of row `i` into `out` (length `dim`).
    pub fn values_into(&self, i: usize, out: &mut [f32]) {
        let d = self.dim as usize;
        let b = &self.values[i * d * 4..(i + 1) * d * 4];
        crate::le::read_f32s_into(b, out);
    }
}

/// What a record carries, for writing.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// A push of `values` (rows × dim) to a key list (`Ok`) or a block from a start (`Err`).
    Push {
        keys: Result<&'a [u64], u64>,
        values: &'a [f32],
    },
    /// A delete of a key list.
    DeleteKeys(&'a [u64]),
    /// A delete of every key in `[start, end)`.
    DeleteRange { start: u64, end: u64 },
    /// New lifecycle policies for the table.
    Lifecycle(paramdb_types::Lifecycle),
    /// An eviction of the table's rows whose last push has an LSN below `before`.
    Evict { before: u64, rows: u64 },
    /// A note (at most `MAX_NOTE` bytes): logged, and applied to no row.
    Note(&'a [u8]),
}

impl<'a> Body<'a> {
    fn rows(&self, dim: u32) -> usize {
        match *self {
            Body::Push { keys: Ok(k), .. } | Body::DeleteKeys(k) => k.len(),
            Body::Push { values, .. } => values.len() / dim.max(1) as usize,
            Body::Note(b) => b.len(),
            Body::DeleteRange { .. } | Body::Lifecycle(_) | Body::Evict { .. } => 0,
        }
    }

    fn record_type(&self) -> u8 {
        match self {
            Body::Push { keys: Ok(_), .. } => TYPE_PUSH_KEYS,
            Body::Push { keys: Err(_), .. } => TYPE_PUSH_RANGE,
            Body::DeleteKeys(_) => TYPE_DELETE_KEYS,
            Body::DeleteRange { .. } => TYPE_DELETE_RANGE,
            Body::Lifecycle(_) => TYPE_LIFECYCLE,
            Body::Evict { .. } => TYPE_EVICT,
            Body::Note(_) => TYPE_NOTE,
        }
    }

    fn values(&self) -> &'a [f32] {
        match *self {
            Body::Push { values, .. } => values,
            _ => &[],
        }
    }
}

/// Payload length of a push record with these sizes.
pub fn payload_len(rows: usize, dim: usize, range: bool) -> usize {
    RECORD_FIXED_LEN + if range { 8 } else { rows * 8 } + rows * dim * 4
}

fn body_len(body: &Body<'_>) -> usize {
    match *body {
        Body::Push { keys, values } => {
            RECORD_FIXED_LEN + keys.map_or(8, |k| k.len() * 8) + values.len() * 4
        }
        Body::DeleteKeys(k) => RECORD_FIXED_LEN + k.len() * 8,
        Body::DeleteRange { .. } => RECORD_FIXED_LEN + 16,
        Body::Lifecycle(_) => RECORD_FIXED_LEN + LIFECYCLE_BODY,
        Body::Evict { .. } => RECORD_FIXED_LEN + 16,
        Body::Note(b) => RECORD_FIXED_LEN + b.len(),
    }
}

/// Padded size of a frame carrying `payload` bytes.
pub fn frame_len(payload: usize) -> usize {
    (FRAME_HEADER_LEN + payload + 7) & !7
}

/// A frame in three parts, written with one vectored write so a push's values are not copied
/// into a buffer first: the frame header, record header and keys (`head`), the values (as they
/// lie in memory, on a little-endian machine; empty for a delete), and the padding to 8 bytes.
#[derive(Debug)]
pub struct PushFrame<'a> {
    pub head: &'a [u8],
    pub values: std::borrow::Cow<'a, [u8]>,
    pub pad: &'static [u8],
}

impl PushFrame<'_> {
    pub fn len(&self) -> usize {
        self.head.len() + self.values.len() + self.pad.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn parts(&self) -> [&[u8]; 3] {
        [self.head, &self.values, self.pad]
    }
}

/// Builds the frame of a record logged at `time`, its head in `head` (cleared first). Values
/// are little-endian f32.
#[allow(clippy::too_many_arguments)]
pub fn encode_frame<'a>(
    head: &'a mut Vec<u8>,
    lsn: u64,
    (client, seq, parts): (u64, u64, u16),
    table: u32,
    dim: u32,
    time: u32,
    body: Body<'a>,
) -> PushFrame<'a> {
    const PAD: [u8; 8] = [0; 8];
    let rows = body.rows(dim);
    let len = body_len(&body);
    head.clear();
    head.extend_from_slice(&(len as u32).to_le_bytes());
    head.extend_from_slice(&[0; 4]); // crc, filled below
    head.push(body.record_type());
    head.push(0);
    head.extend_from_slice(&parts.to_le_bytes());
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&lsn.to_le_bytes());
    head.extend_from_slice(&client.to_le_bytes());
    head.extend_from_slice(&seq.to_le_bytes());
    head.extend_from_slice(&table.to_le_bytes());
    head.extend_from_slice(&dim.to_le_bytes());
    head.extend_from_slice(&(rows as u32).to_le_bytes());
    head.extend_from_slice(&time.to_le_bytes());
    match body {
        Body::Push { keys: Ok(k), .. } | Body::DeleteKeys(k) => {
            for key in k {
                head.extend_from_slice(&key.to_le_bytes());
            }
        }
        Body::Push { keys: Err(s), .. } => head.extend_from_slice(&s.to_le_bytes()),
        Body::DeleteRange { start, end } => {
            head.extend_from_slice(&start.to_le_bytes());
            head.extend_from_slice(&end.to_le_bytes());
        }
        Body::Lifecycle(l) => {
            head.extend_from_slice(&l.ttl_secs.unwrap_or(0).to_le_bytes());
            head.extend_from_slice(&l.admit_after.to_le_bytes());
            head.extend_from_slice(&[0; 4]);
            head.extend_from_slice(&l.max_rows.unwrap_or(0).to_le_bytes());
        }
        Body::Evict { before, rows } => {
            head.extend_from_slice(&before.to_le_bytes());
            head.extend_from_slice(&rows.to_le_bytes());
        }
        Body::Note(b) => head.extend_from_slice(b),
    }
    let values = crate::le::f32s_as_le_bytes(body.values());
    debug_assert_eq!(head.len() + values.len(), FRAME_HEADER_LEN + len);
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..4]);
    h.update(&head[FRAME_HEADER_LEN..]);
    h.update(&values);
    let crc = h.finalize();
    head[4..8].copy_from_slice(&crc.to_le_bytes());
    let pad = frame_len(len) - FRAME_HEADER_LEN - len;
    PushFrame {
        head,
        values,
        pad: &PAD[..pad],
    }
}

/// Appends a complete frame for a record to `out` (the frame `encode_frame` describes, in one
/// buffer).
pub fn encode_record(
    out: &mut Vec<u8>,
    lsn: u64,
    client: u64,
    seq: u64,
    table: u32,
    dim: u32,
    body: Body<'_>,
) {
    let mut head = Vec::new();
    let f = encode_frame(&mut head, lsn, (client, seq, 0), table, dim, 0, body);
    for p in f.parts() {
        out.extend_from_slice(p);
    }
}

/// Appends a complete frame for a push to `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode_push(
    out: &mut Vec<u8>,
    lsn: u64,
    client: u64,
    seq: u64,
    table: u32,
    dim: u32,
    keys: Result<&[u64], u64>,
    values: &[f32],
) {
    encode_record(
        out,
        lsn,
        client,
        seq,
        table,
        dim,
        Body::Push { keys, values },
    );
}

/// Why bytes at some offset are not a valid frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer than a frame header's bytes remain.
    ShortHeader,
    /// Length and checksum are both zero: zero-filled space.
    Zeroed,
    /// The length is outside what a record can be.
    BadLength(u32),
    /// The frame runs past the end of the data.
    PastEnd { len: u32 },
    /// The checksum does not match.
    Checksum { expected: u32, actual: u32 },
    /// Checksum fine but the payload does not parse.
    Malformed(&'static str),
}

/// Tries to read one frame at `off`; on success returns the record and the next frame offset.
pub fn read_frame(buf: &[u8], off: usize) -> Result<(Record<'_>, usize), FrameError> {
    let rest = &buf[off.min(buf.len())..];
    if rest.len() < FRAME_HEADER_LEN {
        return Err(FrameError::ShortHeader);
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 && stored == 0 {
        return Err(FrameError::Zeroed);
    }
    if (len as usize) < RECORD_FIXED_LEN || len as usize > MAX_PAYLOAD {
        return Err(FrameError::BadLength(len));
    }
    if FRAME_HEADER_LEN + len as usize > rest.len() {
        return Err(FrameError::PastEnd { len });
    }
    let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len as usize];
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[..4]);
    h.update(payload);
    let actual = h.finalize();
    if actual != stored {
        return Err(FrameError::Checksum {
            expected: stored,
            actual,
        });
    }
    let rec = parse_payload(payload)?;
    Ok((rec, off + frame_len(len as usize)))
}

/// Re-reads a frame that `read_frame` already validated, without computing its checksum again.
pub fn validated_frame(buf: &[u8], off: usize) -> Record<'_> {
    let len = u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
    let payload = &buf[off + FRAME_HEADER_LEN..off + FRAME_HEADER_LEN + len];
    parse_payload(payload).expect("frame validated before")
}

fn parse_payload(p: &[u8]) -> Result<Record<'_>, FrameError> {
    let u32_at = |o: usize| u32::from_le_bytes(p[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"));
    let ty = p[0];
    let parts = u16::from_le_bytes([p[2], p[3]]);
    let (lsn, client, seq) = (u64_at(8), u64_at(16), u64_at(24));
    let (table, dim, rows, time) = (u32_at(32), u32_at(36), u32_at(40), u32_at(44));
    let n = rows as u64;
    let (kind, want) = match ty {
        TYPE_PUSH_KEYS => (
            RecordKind::Push,
            n.checked_mul(dim as u64 * 4 + 8)
                .and_then(|v| v.checked_add(RECORD_FIXED_LEN as u64)),
        ),
        TYPE_PUSH_RANGE => (
            RecordKind::Push,
            n.checked_mul(dim as u64 * 4)
                .and_then(|v| v.checked_add(RECORD_FIXED_LEN as u64 + 8)),
        ),
        TYPE_DELETE_KEYS => (RecordKind::Delete, Some(RECORD_FIXED_LEN as u64 + n * 8)),
        TYPE_DELETE_RANGE if rows == 0 => (RecordKind::Delete, Some(RECORD_FIXED_LEN as u64 + 16)),
        TYPE_DELETE_RANGE => return Err(FrameError::Malformed("range delete with a row count")),
        TYPE_LIFECYCLE if rows == 0 => (
            RecordKind::Lifecycle,
            Some((RECORD_FIXED_LEN + LIFECYCLE_BODY) as u64),
        ),
        TYPE_EVICT if rows == 0 => (RecordKind::Evict, Some(RECORD_FIXED_LEN as u64 + 16)),
        TYPE_LIFECYCLE | TYPE_EVICT => {
            return Err(FrameError::Malformed("lifecycle record with a row count"))
        }
        TYPE_NOTE if rows as usize <= MAX_NOTE => {
            (RecordKind::Note, Some(RECORD_FIXED_LEN as u64 + n))
        }
        TYPE_NOTE => return Err(FrameError::Malformed("note longer than a note may be")),
        _ => return Err(FrameError::Malformed("unknown record type")),
    };
    if want != Some(p.len() as u64) {
        return Err(FrameError::Malformed(
            "record length does not match its row count and dim",
        ));
    }
    let body = &p[RECORD_FIXED_LEN..];
    let start = || u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let (keys, values) = match ty {
        TYPE_PUSH_RANGE => (RecordKeys::Range { start: start() }, &body[8..]),
        TYPE_DELETE_RANGE => {
            let end = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
            (
                RecordKeys::Span {
                    start: start(),
                    end,
                },
                &body[16..],
            )
        }
        TYPE_LIFECYCLE | TYPE_EVICT | TYPE_NOTE => (RecordKeys::None, body),
        _ => {
            let (k, v) = body.split_at(rows as usize * 8);
            (RecordKeys::List(k), v)
        }
    };
    Ok(Record {
        kind,
        lsn,
        client,
        seq,
        table,
        dim,
        rows,
        time,
        parts,
        keys,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        encode_push(
            &mut buf,
            7,
            3,
            11,
            2,
            2,
            Ok(&[5, 1 << 40]),
            &[1.0, 2.0, -3.5, f32::MIN_POSITIVE],
        );
        encode_push(&mut buf, 8, 0, 0, 2, 2, Err(100), &[0.5, 0.25]);
        assert_eq!(buf.len() % 8, 0);
        let (a, next) = read_frame(&buf, 0).unwrap();
        assert_eq!(
            (a.lsn, a.client, a.seq, a.table, a.dim, a.rows),
            (7, 3, 11, 2, 2, 2)
        );
        assert_eq!((a.key(0), a.key(1)), (5, 1 << 40));
        let mut v = [0.0; 2];
        a.values_into(1, &mut v);
        assert_eq!(v, [-3.5, f32::MIN_POSITIVE]);
        let (b, end) = read_frame(&buf, next).unwrap();
        assert_eq!(
            (b.lsn, b.rows, b.key(0), b.keys),
            (8, 1, 100, RecordKeys::Range { start: 100 })
        );
        assert_eq!(end, buf.len());
        assert_eq!(read_frame(&buf, end), Err(FrameError::ShortHeader));
    }

    #[test]
    fn delete_records_round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 3, 1, 2, 5, 4, Body::DeleteKeys(&[9, 1 << 50]));
        encode_record(
            &mut buf,
            4,
            1,
            3,
            5,
            4,
            Body::DeleteRange {
                start: 10,
                end: u64::MAX,
            },
        );
        let (a, next) = read_frame(&buf, 0).unwrap();
        assert_eq!(
            (a.kind, a.lsn, a.rows, a.key(0), a.key(1), a.values.len()),
            (RecordKind::Delete, 3, 2, 9, 1 << 50, 0)
        );
        let (b, end) = read_frame(&buf, next).unwrap();
        assert_eq!(
            (b.kind, b.rows, b.keys),
            (
                RecordKind::Delete,
                0,
                RecordKeys::Span {
                    start: 10,
                    end: u64::MAX
                }
            )
        );
        assert_eq!(end, buf.len());
    }

    #[test]
    fn lifecycle_records_round_trip() {
        let l = paramdb_types::Lifecycle {
            ttl_secs: Some(3600),
            admit_after: 3,
            max_rows: Some(1 << 40),
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut buf = Vec::new();
        for part in encode_frame(&mut a, 5, (0, 0, 0), 2, 8, 77, Body::Lifecycle(l)).parts() {
            buf.extend_from_slice(part);
        }
        let evict = Body::Evict {
            before: 1_700_000_000,
            rows: 12,
        };
        for part in encode_frame(&mut b, 6, (0, 0, 0), 2, 8, 78, evict).parts() {
            buf.extend_from_slice(part);
        }
        let (r, next) = read_frame(&buf, 0).unwrap();
        assert_eq!(
            (r.kind, r.time, r.lifecycle()),
            (RecordKind::Lifecycle, 77, Some(l))
        );
        let (e, end) = read_frame(&buf, next).unwrap();
        assert_eq!(
            (e.kind, e.time, e.eviction()),
            (RecordKind::Evict, 78, Some((1_700_000_000, 12)))
        );
        assert_eq!(end, buf.len());
    }

    #[test]
    fn damage_is_classified() {
        let mut buf = Vec::new();
        encode_push(&mut buf, 1, 1, 1, 1, 4, Ok(&[9]), &[1.0; 4]);
        let mut flipped = buf.clone();
        flipped[30] ^= 0x10;
        assert!(matches!(
            read_frame(&flipped, 0),
            Err(FrameError::Checksum { .. })
        ));
        assert_eq!(
            read_frame(&buf[..buf.len() - 9], 0).unwrap_err(),
            FrameError::PastEnd { len: 72 }
        );
        assert_eq!(read_frame(&[0u8; 64], 0).unwrap_err(), FrameError::Zeroed);
        let mut bad_len = buf.clone();
        bad_len[3] = 0x7f;
        assert!(matches!(
            read_frame(&bad_len, 0),
            Err(FrameError::BadLength(_))
        ));
    }

    #[test]
    fn header_round_trips() {
        let h = SegmentHeader {
            version: WAL_FORMAT_VERSION,
            segment: 4,
            first_lsn: 99,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        let mut d = b;
        d[20] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&d),
            Err(HeaderError::Damaged { .. })
        ));
        assert_eq!(SegmentHeader::decode(&b[..10]), Err(HeaderError::Short));
    }
}
