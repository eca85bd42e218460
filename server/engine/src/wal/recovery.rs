//! Recovery on open: list the segments, validate every byte needed after the checkpoint, replay
//! the records in LSN order, and only then change anything on disk (cut a torn tail, drop
//! segments a finished checkpoint made stale, quarantine in salvage mode).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{self, FrameError, HeaderError, Record, SegmentHeader, WAL_FORMAT_VERSION};
use super::fs::{parse_segment_name, segment_path, LogFs};
use super::reader::{self, Damage, Scan};
use super::writer::SegmentInfo;
use crate::error::StorageError;

type Result<T> = std::result::Result<T, StorageError>;

/// What to do with corruption before the tail.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open, change nothing.
    #[default]
    Strict,
    /// Keep the records before the damage, move the damaged segment to `wal/quarantine/`, go
    /// on with the next segment, and report the LSNs lost.
    Salvage,
}

/// A run of LSNs that salvage could not recover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostRange {
    pub first_lsn: u64,
    /// Last lost LSN, when a later segment tells it.
    pub last_lsn: Option<u64>,
    pub moved_to: PathBuf,
    pub damage: String,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments_read: usize,
    pub bytes_read: u64,
    pub records_replayed: u64,
    /// Records at or below the checkpoint (already in RocksDB).
    pub records_skipped: u64,
    /// A cut torn tail: (segment, offset, bytes cut, where the bytes were kept).
    pub torn_tail: Option<(PathBuf, u64, u64, PathBuf)>,
    pub stale_segments_removed: usize,
    pub lost: Vec<LostRange>,
    /// Segments that stay live, oldest first.
    pub live_segments: Vec<SegmentInfo>,
    pub next_lsn: u64,
    pub next_segment: u64,
}

enum Action {
    Remove(PathBuf),
    Quarantine(PathBuf, PathBuf),
    CutTail {
        path: PathBuf,
        offset: u64,
        tail: Vec<u8>,
        keep_at: PathBuf,
        remove: bool,
    },
}

/// Replays the log in `dir` after `checkpoint_lsn`: `apply` gets the records with a larger
/// LSN, a segment's worth at a time, in LSN order. On a strict-mode error nothing on disk has
/// been changed.
///
/// Three phases: the segments' headers say which segments a checkpoint already covered
/// (`stale_prefix`); every other segment is read (one ahead, on a reader thread), validated
/// and replayed (`Replaying::segment`); only then are the changes recovery decided on made
/// (`apply_actions`).
pub fn recover(
    fs: &Arc<dyn LogFs>,
    dir: &Path,
    checkpoint_lsn: u64,
    mode: RecoveryMode,
    apply: &mut dyn FnMut(&[Record<'_>]) -> Result<()>,
) -> Result<RecoveryReport> {
    let mut numbers: Vec<u64> = fs
        .list(dir)
        .map_err(|e| io("listing", dir, e))?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .collect();
    numbers.sort_unstable();
    let mut r = Replaying {
        dir,
        checkpoint_lsn,
        mode,
        expected: None,
        actions: Vec::new(),
        report: RecoveryReport {
            next_lsn: checkpoint_lsn + 1,
            next_segment: numbers.last().map_or(1, |n| n + 1),
            ..Default::default()
        },
    };
    let start = stale_prefix(fs, dir, &numbers, checkpoint_lsn)?;
    for &n in &numbers[..start] {
        r.actions.push(Action::Remove(segment_path(dir, n)));
        r.report.stale_segments_removed += 1;
    }
    // A reader thread fetches the next segment while this one is replayed, so reading and
    // applying overlap (one segment of read-ahead).
    let todo: Vec<u64> = numbers[start..].to_vec();
    let last = numbers.last().copied();
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // Buffers come back once replayed, so segments are read into memory that is already
        // mapped (a fresh 64 MiB buffer per segment costs page faults and zeroing).
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        let reader_fs = fs.clone();
        scope.spawn(move || {
            for n in todo {
                let path = segment_path(dir, n);
                let mut buf = recycled.try_recv().unwrap_or_default();
                let read = reader_fs
                    .read_into(&path, &mut buf)
                    .map(|()| buf)
                    .map_err(|e| io("reading", &path, e));
                if tx.send((n, read)).is_err() {
                    return; // recovery stopped early
                }
            }
        });
        for (n, buf) in rx {
            let buf = buf?;
            r.segment(n, &buf, Some(n) == last, apply)?;
            let _ = recycle.send(buf);
        }
        Ok(())
    })?;
    r.report.next_lsn = r
        .expected
        .map_or(checkpoint_lsn + 1, |e| e.max(checkpoint_lsn + 1));
    apply_actions(fs, dir, r.actions)?;
    Ok(r.report)
}

fn io(what: &str, p: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(format!("{what} {}", p.display()), e)
}

/// How many leading segments a checkpoint covered: a segment is stale when the next one
/// starts at or below checkpoint + 1 (a checkpoint covered it and the crash came before it
/// was deleted).
fn stale_prefix(
    fs: &Arc<dyn LogFs>,
    dir: &Path,
    numbers: &[u64],
    checkpoint_lsn: u64,
) -> Result<usize> {
    let mut first_lsns = Vec::with_capacity(numbers.len());
    for &n in numbers {
        let p = segment_path(dir, n);
        let head = fs
            .read_prefix(&p, format::SEGMENT_HEADER_LEN)
            .map_err(|e| io("reading", &p, e))?;
        first_lsns.push(SegmentHeader::decode(&head).ok().map(|h| h.first_lsn));
    }
    let mut start = 0;
    while start + 1 < numbers.len()
        && first_lsns[start + 1].is_some_and(|f| f <= checkpoint_lsn + 1)
    {
        start += 1;
    }
    Ok(start)
}

/// Replay in progress: what it has decided and found so far.
struct Replaying<'a> {
    dir: &'a Path,
    checkpoint_lsn: u64,
    mode: RecoveryMode,
    /// The LSN the next record must carry, once one was read.
    expected: Option<u64>,
    actions: Vec<Action>,
    report: RecoveryReport,
}

impl Replaying<'_> {
    /// Validates segment `n` (its bytes `buf`), replays its records after the checkpoint, and
    /// notes what must change on disk (a torn tail to cut, a damaged segment to quarantine).
    fn segment(
        &mut self,
        n: u64,
        buf: &[u8],
        is_last: bool,
        apply: &mut dyn FnMut(&[Record<'_>]) -> Result<()>,
    ) -> Result<()> {
        let path = segment_path(self.dir, n);
        self.report.segments_read += 1;
        self.report.bytes_read += buf.len() as u64;
        let (frames, damage, header) = match reader::scan(buf, is_last) {
            Scan::TornHeader => {
                let keep_at = torn_path(self.dir, n, 0);
                self.actions.push(Action::CutTail {
                    path: path.clone(),
                    offset: 0,
                    tail: buf.to_vec(),
                    keep_at: keep_at.clone(),
                    remove: true,
                });
                self.report.torn_tail = Some((path, 0, buf.len() as u64, keep_at));
                return Ok(());
            }
            Scan::Ok(s) => {
                if s.torn {
                    let keep_at = torn_path(self.dir, n, s.valid_end);
                    self.report.torn_tail = Some((
                        path.clone(),
                        s.valid_end as u64,
                        (buf.len() - s.valid_end) as u64,
                        keep_at.clone(),
                    ));
                    self.actions.push(Action::CutTail {
                        path: path.clone(),
                        offset: s.valid_end as u64,
                        tail: buf[s.valid_end..].to_vec(),
                        keep_at,
                        remove: false,
                    });
                }
                (s.frames, None, Some(s.header))
            }
            Scan::Damaged { frames, damage } => {
                let header = SegmentHeader::decode(buf).ok();
                (frames, Some(damage), header)
            }
        };
        if let Some(h) = header {
            self.check_sequence(&path, h.first_lsn)?;
        }
        let mut todo = Vec::with_capacity(frames.len());
        for rec in reader::records(buf, &frames) {
            self.expected = Some(rec.lsn + 1);
            if rec.lsn > self.checkpoint_lsn {
                todo.push(rec);
            } else {
                self.report.records_skipped += 1;
            }
        }
        self.report.records_replayed += todo.len() as u64;
        apply(&todo)?;
        if let Some(damage) = damage {
            let err = damage_error(&path, buf, &damage);
            if self.mode == RecoveryMode::Strict {
                return Err(err);
            }
            let moved_to = self.dir.join("quarantine").join(format!("{n:020}.log"));
            tracing::error!(segment = %path.display(), error = %err, "salvage: quarantining damaged log segment");
            self.report.lost.push(LostRange {
                first_lsn: self.expected.unwrap_or(self.checkpoint_lsn + 1),
                last_lsn: None,
                moved_to: moved_to.clone(),
                damage: err.to_string(),
            });
            self.actions.push(Action::Quarantine(path, moved_to));
            return Ok(());
        }
        if let Some(h) = header {
            self.report.live_segments.push(SegmentInfo {
                segment: n,
                first_lsn: h.first_lsn,
            });
        }
        Ok(())
    }

    /// Sequence continuity with the checkpoint and the previous segment.
    fn check_sequence(&mut self, path: &Path, first_lsn: u64) -> Result<()> {
        let want = self.expected.unwrap_or(first_lsn);
        let gap_ok = self.mode == RecoveryMode::Salvage && !self.report.lost.is_empty();
        if self.expected.is_none() && first_lsn > self.checkpoint_lsn + 1 {
            return Err(StorageError::LogGap {
                segment: path.to_path_buf(),
                expected: self.checkpoint_lsn + 1,
                found: first_lsn,
            });
        }
        if first_lsn != want && !(gap_ok && first_lsn > want) {
            if let Some(last) = self.report.lost.last_mut() {
                last.last_lsn.get_or_insert(first_lsn - 1);
            }
            return Err(StorageError::LogGap {
                segment: path.to_path_buf(),
                expected: want,
                found: first_lsn,
            });
        }
        if let Some(last) = self.report.lost.last_mut() {
            last.last_lsn.get_or_insert(first_lsn.saturating_sub(1));
        }
        self.expected = Some(first_lsn);
        Ok(())
    }
}

/// Everything validated: now change the disk.
fn apply_actions(fs: &Arc<dyn LogFs>, dir: &Path, actions: Vec<Action>) -> Result<()> {
    let touched = !actions.is_empty();
    for a in actions {
        match a {
            Action::Remove(p) => fs.remove(&p).map_err(|e| io("removing", &p, e))?,
            Action::Quarantine(from, to) => {
                let qdir = dir.join("quarantine");
                fs.create_dir_all(&qdir)
                    .map_err(|e| io("creating", &qdir, e))?;
                fs.rename(&from, &to)
                    .map_err(|e| io("quarantining", &from, e))?;
            }
            Action::CutTail {
                path,
                offset,
                tail,
                keep_at,
                remove,
            } => {
                let tdir = dir.join("torn");
                fs.create_dir_all(&tdir)
                    .map_err(|e| io("creating", &tdir, e))?;
                fs.write_new(&keep_at, &tail)
                    .map_err(|e| io("keeping torn tail in", &keep_at, e))?;
                if remove {
                    fs.remove(&path).map_err(|e| io("removing", &path, e))?;
                } else {
                    fs.truncate(&path, offset)
                        .map_err(|e| io("truncating", &path, e))?;
                }
                tracing::warn!(segment = %path.display(), offset, bytes = tail.len(), kept_at = %keep_at.display(), "cut torn tail of the log");
            }
        }
    }
    if touched {
        fs.sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
    }
    Ok(())
}

fn torn_path(dir: &Path, segment: u64, offset: usize) -> PathBuf {
    dir.join("torn").join(format!("{segment:020}-{offset}.bin"))
}

pub(crate) fn damage_error(path: &Path, buf: &[u8], damage: &Damage) -> StorageError {
    let segment = path.to_path_buf();
    match *damage {
        Damage::Header(HeaderError::NewerVersion(v)) => StorageError::UnsupportedFormat {
            what: format!("log segment {}", path.display()),
            found: v,
            supported: WAL_FORMAT_VERSION,
        },
        Damage::Header(HeaderError::Damaged { expected, actual }) => {
            StorageError::ChecksumMismatch {
                segment,
                offset: 0,
                expected,
                actual,
            }
        }
        Damage::Header(HeaderError::Short) => StorageError::CorruptLog {
            segment,
            offset: 0,
            reason: format!("segment is {} bytes, shorter than its header", buf.len()),
        },
        Damage::Frame { offset, error } => {
            let reason = match error {
                FrameError::Checksum { expected, actual } => {
                    return StorageError::ChecksumMismatch {
                        segment,
                        offset: offset as u64,
                        expected,
                        actual,
                    }
                }
                FrameError::BadLength(l) => {
                    format!("frame length {l} is impossible, and valid records follow")
                }
                FrameError::PastEnd { len } => {
                    format!("frame of {len} bytes runs past the end of the segment")
                }
                FrameError::Zeroed => "zeroed bytes followed by valid records".to_string(),
                FrameError::ShortHeader => "segment ends inside a frame header".to_string(),
                FrameError::Malformed(m) => m.to_string(),
            };
            StorageError::CorruptLog {
                segment,
                offset: offset as u64,
                reason,
            }
        }
        Damage::Sequence {
            offset,
            expected,
            found,
        } => StorageError::CorruptLog {
            segment,
            offset: offset as u64,
            reason: format!("record carries LSN {found}, expected {expected}"),
        },
    }
}
