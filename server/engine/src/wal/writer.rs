//! Appends push records to the current segment, rotates segments, and deletes segments that a
//! checkpoint has made unnecessary. The writer never syncs on its own except when it seals a
//! segment: when to sync is the store's durability policy (group commit).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, Body, SegmentHeader, WAL_FORMAT_VERSION};
use super::fs::{segment_path, LogFile, LogFs};

/// A live segment: its number and the LSN of its first record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub segment: u64,
    pub first_lsn: u64,
}

#[derive(Debug)]
pub struct LogWriter {
    fs: Arc<dyn LogFs>,
    dir: PathBuf,
    file: Arc<dyn LogFile>,
    /// Every live segment, oldest first; the last is the one being written.
    segments: VecDeque<SegmentInfo>,
    segment_bytes: u64,
    max_segment_bytes: u64,
    next_lsn: u64,
    buf: Vec<u8>,
    bytes_appended: u64,
    /// Time of the last record (records never go back in time, whatever the clock does).
    last_time: u32,
}

/// What an append wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub lsn: u64,
    /// Bytes of the frame.
    pub len: u64,
    /// The record's time.
    pub time: u32,
}

impl LogWriter {
    /// Starts a new segment numbered `segment` whose first record will be `next_lsn`, after the
    /// live segments `older` (oldest first) that recovery kept; `last_time` is the time of the
    /// last record before it.
    pub fn start(
        fs: Arc<dyn LogFs>,
        dir: &Path,
        older: Vec<SegmentInfo>,
        segment: u64,
        next_lsn: u64,
        max_segment_bytes: u64,
        last_time: u32,
    ) -> io::Result<LogWriter> {
        let file = create_segment(fs.as_ref(), dir, segment, next_lsn)?;
        let mut segments: VecDeque<SegmentInfo> = older.into();
        segments.push_back(SegmentInfo {
            segment,
            first_lsn: next_lsn,
        });
        Ok(LogWriter {
            fs,
            dir: dir.to_path_buf(),
            file,
            segments,
            segment_bytes: format::SEGMENT_HEADER_LEN as u64,
            max_segment_bytes,
            next_lsn,
            buf: Vec::new(),
            bytes_appended: 0,
            last_time,
        })
    }

    /// Time of the last record appended (or recovered).
    pub fn last_time(&self) -> u32 {
        self.last_time
    }

    /// LSN of the last record appended (0 before any).
    pub fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// The file being appended to; a sync of it covers every record up to `last_lsn`, since
    /// older segments are synced when they are sealed.
    pub fn file(&self) -> Arc<dyn LogFile> {
        self.file.clone()
    }

    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.segments.iter()
    }

    /// Bytes appended since this writer started.
    pub fn bytes_appended(&self) -> u64 {
        self.bytes_appended
    }

    /// Bytes in all live segments (headers included).
    pub fn current_segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Appends one push record and returns its LSN and frame size. `keys` is the key list, or
    /// `Err(start)` for a contiguous block. On error the segment's tail is unknown: the caller
    /// must stop writing (poison).
    #[allow(clippy::too_many_arguments)]
    pub fn append_push(
        &mut self,
        client: u64,
        seq: u64,
        table: u32,
        dim: u32,
        now: u32,
        keys: Result<&[u64], u64>,
        values: &[f32],
    ) -> io::Result<Appended> {
        self.append(
            (client, seq, 0),
            table,
            dim,
            now,
            Body::Push { keys, values },
        )
    }

    /// Appends one record at time `now` (or the last record's, if the clock went back) and
    /// says what it wrote (see `append_push` on errors).
    /// `origin` is the writing client, its sequence number and the write's fan-out.
    pub fn append(
        &mut self,
        origin: (u64, u64, u16),
        table: u32,
        dim: u32,
        now: u32,
        body: Body<'_>,
    ) -> io::Result<Appended> {
        let lsn = self.next_lsn;
        let time = now.max(self.last_time);
        let frame = format::encode_frame(&mut self.buf, lsn, origin, table, dim, time, body);
        let len = frame.len() as u64;
        if self.segment_bytes + len > self.max_segment_bytes
            && self.segment_bytes > format::SEGMENT_HEADER_LEN as u64
        {
            // Rotating needs `self`; the frame is rebuilt after (it names no segment).
            drop(frame);
            self.rotate()?;
            let frame = format::encode_frame(&mut self.buf, lsn, origin, table, dim, time, body);
            self.file.append_parts(&frame.parts())?;
        } else {
            self.file.append_parts(&frame.parts())?;
        }
        self.segment_bytes += len;
        self.bytes_appended += len;
        self.next_lsn += 1;
        self.last_time = time;
        Ok(Appended { lsn, len, time })
    }

    /// Seals the current segment (sync) and starts the next. Returns the LSN up to which the
    /// log is now durable. A segment with no records is not rotated.
    pub fn rotate(&mut self) -> io::Result<u64> {
        self.file.sync()?;
        let durable = self.last_lsn();
        if self.segment_bytes == format::SEGMENT_HEADER_LEN as u64 {
            return Ok(durable);
        }
        let next = self.segments.back().map_or(1, |s| s.segment + 1);
        self.file = create_segment(self.fs.as_ref(), &self.dir, next, self.next_lsn)?;
        self.segments.push_back(SegmentInfo {
            segment: next,
            first_lsn: self.next_lsn,
        });
        self.segment_bytes = format::SEGMENT_HEADER_LEN as u64;
        Ok(durable)
    }

    /// Deletes every sealed segment whose records all have LSN ≤ `lsn`. Returns how many.
    pub fn remove_through(&mut self, lsn: u64) -> io::Result<usize> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn + 1 {
            let s = self.segments[0];
            self.fs.remove(&segment_path(&self.dir, s.segment))?;
            self.segments.pop_front();
            removed += 1;
        }
        if removed > 0 {
            self.fs.sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Creates a segment with its header, durable (file and directory entry) before any record.
fn create_segment(
    fs: &dyn LogFs,
    dir: &Path,
    segment: u64,
    first_lsn: u64,
) -> io::Result<Arc<dyn LogFile>> {
    let file = fs.create(&segment_path(dir, segment))?;
    let header = SegmentHeader {
        version: WAL_FORMAT_VERSION,
        segment,
        first_lsn,
    };
    file.append(&header.encode())?;
    file.sync()?;
    fs.sync_dir(dir)?;
    Ok(file)
}
