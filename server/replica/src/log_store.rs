//! The replicated log's storage on one replica: openraft's entries in crc-framed segment files,
//! the vote, and the last purged log id.
//!
//! ```text
//! <replica dir>/raft/vote                   the vote (framed, replaced atomically)
//! <replica dir>/raft/purged                 the last purged log id (framed, replaced atomically)
//! <replica dir>/raft/<first index>.seg      entries, each `len u32 | crc32 u32 | bincode(entry)`
//! ```
//!
//! An append is durable under the sync policy before openraft hears of it: under `sync` its
//! segment is fsynced first (one fsync for every entry of the append); under `interval` a
//! thread syncs the current segment that often; under `none` only sealing a segment syncs.
//! Entries are read back from the files (the in-memory index holds where each lies and its log
//! id, not its bytes). Opening reads every segment, truncates a torn tail of the last one and
//! refuses damage anywhere else.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use paramdb_engine::SyncPolicy;

use crate::{NodeId, TypeConfig};

const FRAME_HEADER: usize = 8;
/// A segment is sealed and the next started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// The newest entries are kept decoded in memory, up to about this many bytes, so that
/// replicating them to followers reads neither the files nor decodes them again.
const CACHE_BYTES: usize = 64 << 20;

/// An entry found decoded in the cache, or where to read it.
type Cached = Result<Entry<TypeConfig>, Slot>;
/// The segment files by first index.
type Files = BTreeMap<u64, Arc<File>>;

/// Where one entry lies.
#[derive(Clone, Copy, Debug)]
struct Slot {
    log_id: LogId<NodeId>,
    segment: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    file: Arc<File>,
    bytes: u64,
}

#[derive(Debug)]
struct State {
    dir: PathBuf,
    sync: SyncPolicy,
    /// Segments by their first index; the last one takes appends.
    segments: BTreeMap<u64, Segment>,
    entries: BTreeMap<u64, Slot>,
    purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    /// Set when a write failed: the files' tails are unknown, so nothing more is written.
    broken: Option<String>,
    /// The newest entries, decoded, with their encoded sizes (see `CACHE_BYTES`).
    cache: BTreeMap<u64, (Arc<Entry<TypeConfig>>, usize)>,
    cache_bytes: usize,
}

/// The log storage. Clones share one state (openraft asks for a reader besides the writer,
/// and the state machine looks log ids up in it).
#[derive(Clone, Debug)]
pub struct LogStore {
    state: Arc<Mutex<State>>,
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// `len | crc | payload`, the crc over the length and the payload.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of the frame at the start of `b`, if it is whole and its crc matches.
fn unframe(b: &[u8]) -> Option<&[u8]> {
    if b.len() < FRAME_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(b[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().ok()?);
    let payload = b.get(FRAME_HEADER..FRAME_HEADER + len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..4]);
    h.update(payload);
    (h.finalize() == crc).then_some(payload)
}

/// Writes `value` framed to `path` through a temporary file, renamed into place and synced.
fn write_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let payload = bincode::serialize(value).map_err(io::Error::other)?;
    let mut buf = Vec::new();
    frame(&payload, &mut buf);
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn read_framed<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    let b = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let payload = unframe(&b).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged (bad length or checksum)", path.display()),
        )
    })?;
    bincode::deserialize(payload).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path, sync: SyncPolicy) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let vote = read_framed(&dir.join("vote"))?;
        let purged: Option<LogId<NodeId>> = read_framed(&dir.join("purged"))?;
        let mut firsts = Vec::new();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".seg") {
                if let Ok(first) = n.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut entries = BTreeMap::new();
        let purged_index = purged.map(|p| p.index);
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let data = fs::read(&path)?;
            let last_segment = i + 1 == firsts.len();
            let mut off = 0usize;
            while off < data.len() {
                let Some(payload) = unframe(&data[off..]) else {
                    if !last_segment {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{} is damaged at offset {off}", path.display()),
                        ));
                    }
                    // A torn tail: the append in flight when the process died.
                    tracing::warn!(segment = %path.display(), offset = off, cut = data.len() - off,
                        "truncating a torn tail of the replicated log");
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(off as u64)?;
                    f.sync_all()?;
                    break;
                };
                let entry: Entry<TypeConfig> = bincode::deserialize(payload).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} at offset {off}: {e}", path.display()),
                    )
                })?;
                let index = entry.log_id.index;
                if purged_index.is_none_or(|p| index > p) {
                    // A truncation may have left later entries of an older term: the newest
                    // write of an index wins, and everything after it goes.
                    entries.split_off(&index);
                    entries.insert(
                        index,
                        Slot {
                            log_id: entry.log_id,
                            segment: first,
                            offset: off as u64,
                            len: payload.len() as u32,
                        },
                    );
                }
                off += FRAME_HEADER + payload.len();
            }
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            let bytes = file.metadata()?.len();
            segments.insert(
                first,
                Segment {
                    first,
                    file: Arc::new(file),
                    bytes,
                },
            );
        }
        let store = LogStore {
            state: Arc::new(Mutex::new(State {
                dir: dir.to_path_buf(),
                sync,
                segments,
                entries,
                purged,
                vote,
                broken: None,
                cache: BTreeMap::new(),
                cache_bytes: 0,
            })),
        };
        if let SyncPolicy::Interval(every) = sync {
            store.start_syncer(every);
        }
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Syncs the current segment every `every`, until the store is dropped.
    fn start_syncer(&self, every: Duration) {
        let weak = Arc::downgrade(&self.state);
        std::thread::Builder::new()
            .name("paramdb-raft-sync".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(state) = weak.upgrade() else { return };
                let file = {
                    let s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.segments.values().next_back().map(|s| s.file.clone())
                };
                drop(state);
                if let Some(f) = file {
                    if let Err(e) = f.sync_data() {
                        tracing::error!(error = %e, "syncing the replicated log failed");
                    }
                }
            })
            .map(drop)
            .unwrap_or_else(|e| tracing::error!(error = %e, "could not start the log syncer"));
    }

    /// The log id of the entry at `index`, if the log holds it or purged exactly it.
    pub(crate) fn log_id_at(&self, index: u64) -> Option<LogId<NodeId>> {
        let s = self.lock();
        if let Some(slot) = s.entries.get(&index) {
            return Some(slot.log_id);
        }
        s.purged.filter(|p| p.index == index)
    }

    /// The first and last index held, for status.
    pub fn span(&self) -> (Option<u64>, Option<u64>) {
        let s = self.lock();
        (
            s.entries.keys().next().copied(),
            s.entries.keys().next_back().copied(),
        )
    }

    fn read(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        // Cached entries are cloned under the lock; the others are read after it.
        let (wanted, files): (Vec<Cached>, Files) = {
            let s = self.lock();
            let wanted = s
                .entries
                .range((range.start_bound().cloned(), range.end_bound().cloned()))
                .map(|(i, slot)| match s.cache.get(i) {
                    Some((e, _)) => Ok((**e).clone()),
                    None => Err(*slot),
                })
                .collect();
            let files = s
                .segments
                .iter()
                .map(|(k, v)| (*k, v.file.clone()))
                .collect();
            (wanted, files)
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut buf = Vec::new();
        for w in wanted {
            let slot = match w {
                Ok(e) => {
                    out.push(e);
                    continue;
                }
                Err(slot) => slot,
            };
            let file = files
                .get(&slot.segment)
                .ok_or_else(|| read_err(format!("segment {} is gone", slot.segment)))?;
            buf.resize(FRAME_HEADER + slot.len as usize, 0);
            file.read_exact_at(&mut buf, slot.offset)
                .map_err(read_err)?;
            let payload = unframe(&buf).ok_or_else(|| {
                read_err(format!(
                    "entry {} of segment {} is damaged",
                    slot.log_id.index, slot.segment
                ))
            })?;
            out.push(bincode::deserialize(payload).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl State {
    fn check(&self) -> Result<(), StorageError<NodeId>> {
        match &self.broken {
            Some(why) => Err(write_err(format!("the replicated log is broken: {why}"))),
            None => Ok(()),
        }
    }

    fn fail(&mut self, what: &str, e: io::Error) -> StorageError<NodeId> {
        let why = format!("{what}: {e}");
        tracing::error!(error = %why, "replicated log write failed");
        self.broken = Some(why.clone());
        write_err(why)
    }

    /// Starts a segment for entries from `first`, sealing the current one.
    fn rotate(&mut self, first: u64) -> io::Result<()> {
        if let Some(cur) = self.segments.values().next_back() {
            cur.file.sync_data()?;
        }
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                first,
                file: Arc::new(file),
                bytes: 0,
            },
        );
        Ok(())
    }

    fn append(&mut self, entries: Vec<Entry<TypeConfig>>) -> io::Result<Option<Arc<File>>> {
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            return Ok(None);
        };
        let rotate = self
            .segments
            .values()
            .next_back()
            .is_none_or(|s| s.bytes >= SEGMENT_BYTES);
        if rotate {
            self.rotate(first)?;
        }
        let mut buf = Vec::new();
        let mut slots = Vec::with_capacity(entries.len());
        let mut sizes = Vec::with_capacity(entries.len());
        let seg = self.segments.values_mut().next_back().expect("a segment");
        for e in &entries {
            let payload = bincode::serialize(e).map_err(io::Error::other)?;
            sizes.push(payload.len());
            slots.push(Slot {
                log_id: e.log_id,
                segment: seg.first,
                offset: seg.bytes + buf.len() as u64,
                len: payload.len() as u32,
            });
            frame(&payload, &mut buf);
        }
        (&*seg.file).write_all(&buf)?;
        seg.bytes += buf.len() as u64;
        let file = seg.file.clone();
        for slot in slots {
            self.entries.split_off(&slot.log_id.index);
            self.entries.insert(slot.log_id.index, slot);
        }
        for (e, size) in entries.into_iter().zip(sizes) {
            let index = e.log_id.index;
            self.uncache_from(index);
            self.cache.insert(index, (Arc::new(e), size));
            self.cache_bytes += size;
        }
        while self.cache_bytes > CACHE_BYTES && self.cache.len() > 1 {
            if let Some((_, (_, size))) = self.cache.pop_first() {
                self.cache_bytes -= size;
            }
        }
        Ok(Some(file))
    }

    /// Drops the cached entries from `index` on.
    fn uncache_from(&mut self, index: u64) {
        for (_, (_, size)) in self.cache.split_off(&index) {
            self.cache_bytes -= size;
        }
    }

    /// Removes every entry from `index` on.
    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(slot) = self.entries.get(&index).copied() else {
            return Ok(());
        };
        self.entries.split_off(&index);
        self.uncache_from(index);
        let later: Vec<u64> = self
            .segments
            .range(slot.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for first in later {
            self.segments.remove(&first);
            fs::remove_file(segment_path(&self.dir, first))?;
        }
        let seg = self
            .segments
            .get_mut(&slot.segment)
            .expect("the entry's segment");
        seg.file.set_len(slot.offset)?;
        seg.file.sync_all()?;
        seg.bytes = slot.offset;
        sync_dir(&self.dir)
    }

    /// Forgets every entry up to `log_id`, deleting the segments that hold only such entries.
    fn purge(&mut self, log_id: LogId<NodeId>) -> io::Result<()> {
        write_atomic(&self.dir.join("purged"), &log_id)?;
        self.purged = Some(log_id);
        let rest = self.entries.split_off(&(log_id.index + 1));
        self.entries = rest;
        let kept = self.cache.split_off(&(log_id.index + 1));
        for (_, (_, size)) in std::mem::replace(&mut self.cache, kept) {
            self.cache_bytes -= size;
        }
        // A segment may go when the next one starts at or before the first entry kept.
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        for w in firsts.windows(2) {
            if w[1] <= log_id.index + 1 {
                self.segments.remove(&w[0]);
                fs::remove_file(segment_path(&self.dir, w[0]))?;
            }
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.read(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let s = self.lock();
        let last = s
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(s.purged);
        Ok(LogState {
            last_purged_log_id: s.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut s = self.lock();
        s.check()?;
        write_atomic(&s.dir.join("vote"), vote)
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::error(e))))?;
        s.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let (file, sync) = {
            let mut s = self.lock();
            s.check()?;
            match s.append(entries) {
                Ok(f) => (f, s.sync),
                Err(e) => return Err(s.fail("appending entries", e)),
            }
        };
        // The fsync runs with no lock held, so reads (replication to followers) go on.
        if let (Some(f), SyncPolicy::Sync) = (file, sync) {
            if let Err(e) = f.sync_data() {
                let err = self.lock().fail("syncing appended entries", e);
                callback.log_io_completed(Err(io::Error::other(err.to_string())));
                return Err(err);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut s = self.lock();
        s.check()?;
        s.truncate(log_id.index)
            .map_err(|e| s.fail("truncating the log", e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut s = self.lock();
        s.check()?;
        s.purge(log_id).map_err(|e| s.fail("purging the log", e))
    }
}
