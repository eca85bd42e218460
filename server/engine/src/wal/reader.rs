//! Parses one segment into its valid frames and decides what a damaged frame means: in the
//! last segment, damage with no valid frame after it is a torn tail (the write that was in
//! flight at the crash); damage anywhere else is corruption.

use super::format::{self, FrameError, HeaderError, Record, SegmentHeader};

/// What a segment holds.
#[derive(Debug)]
pub struct SegmentScan {
    pub header: SegmentHeader,
    /// Offsets of the valid frames, in order.
    pub frames: Vec<usize>,
    /// End of the last valid frame.
    pub valid_end: usize,
    /// Set when the segment ends in a torn tail starting at `valid_end`.
    pub torn: bool,
}

/// Damage that is not a torn tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    Header(HeaderError),
    Frame {
        offset: usize,
        error: FrameError,
    },
    Sequence {
        offset: usize,
        expected: u64,
        found: u64,
    },
}

/// A segment whose header itself is torn (created, then the crash came before it was synced).
#[derive(Debug)]
pub enum Scan {
    Ok(SegmentScan),
    /// The whole file is a torn tail: it may be removed.
    TornHeader,
    Damaged {
        /// Offsets of the valid frames before the damage (what salvage can keep).
        frames: Vec<usize>,
        damage: Damage,
    },
}

/// Scans a segment. `expected_lsn` is the LSN its first record must carry; `is_last` says
/// whether a torn tail is allowed.
pub fn scan(buf: &[u8], is_last: bool) -> Scan {
    let header = match SegmentHeader::decode(buf) {
        Ok(h) => h,
        Err(e @ (HeaderError::Short | HeaderError::Damaged { .. })) => {
            if is_last && !valid_frame_after(buf, format::SEGMENT_HEADER_LEN - 8, 0) {
                return Scan::TornHeader;
            }
            return Scan::Damaged {
                frames: Vec::new(),
                damage: Damage::Header(e),
            };
        }
        Err(e) => {
            return Scan::Damaged {
                frames: Vec::new(),
                damage: Damage::Header(e),
            }
        }
    };
    let mut frames = Vec::new();
    let mut off = format::SEGMENT_HEADER_LEN;
    let mut expected = header.first_lsn;
    loop {
        match format::read_frame(buf, off) {
            Ok((rec, next)) => {
                if rec.lsn != expected {
                    return Scan::Damaged {
                        frames,
                        damage: Damage::Sequence {
                            offset: off,
                            expected,
                            found: rec.lsn,
                        },
                    };
                }
                frames.push(off);
                expected += 1;
                off = next;
            }
            Err(FrameError::ShortHeader) if off == buf.len() => {
                return Scan::Ok(SegmentScan {
                    header,
                    frames,
                    valid_end: off,
                    torn: false,
                })
            }
            Err(error) => {
                if is_last && !valid_frame_after(buf, off, expected) {
                    return Scan::Ok(SegmentScan {
                        header,
                        frames,
                        valid_end: off,
                        torn: true,
                    });
                }
                return Scan::Damaged {
                    frames,
                    damage: Damage::Frame { offset: off, error },
                };
            }
        }
    }
}

/// Whether a valid frame carrying an LSN ≥ `min_lsn` starts at any 8-aligned offset after
/// `off`. Frames are aligned, so a later record that survived cannot be missed.
fn valid_frame_after(buf: &[u8], off: usize, min_lsn: u64) -> bool {
    let mut p = off + 8;
    while p + format::FRAME_HEADER_LEN <= buf.len() {
        if let Ok((rec, _)) = format::read_frame(buf, p) {
            if rec.lsn >= min_lsn {
                return true;
            }
        }
        p += 8;
    }
    false
}

/// The records at `frames` (offsets from a successful scan).
pub fn records<'a>(buf: &'a [u8], frames: &'a [usize]) -> impl Iterator<Item = Record<'a>> + 'a {
    frames.iter().map(move |&o| format::validated_frame(buf, o))
}
