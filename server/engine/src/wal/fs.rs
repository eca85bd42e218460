//! The file-system operations the gradient log needs, behind a trait so tests can inject torn
//! writes, lost unsynced data and failed fsyncs (`wal::fault`). `StdFs` is the real thing.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An append-only log file. Methods take `&self` so a sync can run while another thread
/// appends (group commit): an fsync covers every byte appended before it started.
pub trait LogFile: Send + Sync + Debug {
    fn append(&self, buf: &[u8]) -> io::Result<()>;
    /// Appends `parts` as one write, in order. By default they are joined and appended (so a
    /// fault-injecting file sees one write); the real file writes them vectored, without
    /// joining them first.
    fn append_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        self.append(&parts.concat())
    }
    /// Makes every byte appended so far durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

/// Directory and whole-file operations of the log.
pub trait LogFs: Send + Sync + Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) directly in `dir`; a missing directory lists as empty.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads a whole file into `buf` (replacing its contents), reusing its allocation.
    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        *buf = self.read(path)?;
        Ok(())
    }
    /// The first `n` bytes of a file (fewer if it is shorter).
    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>>;
    /// Creates (or truncates) a file for appending.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>>;
    /// Writes a whole new file and syncs it.
    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Cuts a file to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's file system.
/// Writes every byte of `parts`, in order, with vectored writes.
fn write_parts(mut file: &File, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

#[derive(Debug)]
struct StdFile(File);

impl LogFile for StdFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.0).write_all(buf)
    }

    fn append_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        write_parts(&self.0, parts)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl LogFs for StdFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    names.push(n.to_string());
                }
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        let mut v = Vec::with_capacity(f.metadata().map(|m| m.len() as usize).unwrap_or(0));
        f.read_to_end(&mut v)?;
        Ok(v)
    }

    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        File::open(path)?.read_to_end(buf)?;
        Ok(())
    }

    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(n);
        File::open(path)?.take(n as u64).read_to_end(&mut v)?;
        Ok(v)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(StdFile(f)))
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The real file system for reading, with every change discarded: how a tool reads the log
/// of a shard that a server may be writing. Recovery may decide to cut a torn tail (the
/// record the server is appending right now) or to start a new segment; here those decisions
/// have no effect on disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadOnlyFs;

#[derive(Debug)]
struct DiscardFile;

impl LogFile for DiscardFile {
    fn append(&self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

impl LogFs for ReadOnlyFs {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFs.list(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }

    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        StdFs.read_into(path, buf)
    }

    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        StdFs.read_prefix(path, n)
    }

    fn create(&self, _: &Path) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(DiscardFile))
    }

    fn write_new(&self, _: &Path, _: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn truncate(&self, _: &Path, _: u64) -> io::Result<()> {
        Ok(())
    }

    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        Ok(())
    }

    fn remove(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }

    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Ok(())
    }
}

/// The real file system, noting in a journal how long each log file was at each successful
/// fsync (`<length> <path>` lines). After a SIGKILL, cutting every segment back to its last
/// journaled length leaves exactly what a power cut at that moment would have left: how the
/// cluster's power-loss test makes a killed shard lose its unsynced log tail.
#[derive(Debug, Clone)]
pub struct SyncJournalFs {
    journal: Arc<std::sync::Mutex<File>>,
}

impl SyncJournalFs {
    pub fn new(journal: &Path) -> io::Result<SyncJournalFs> {
        let f = OpenOptions::new().create(true).append(true).open(journal)?;
        Ok(SyncJournalFs {
            journal: Arc::new(std::sync::Mutex::new(f)),
        })
    }

    fn note(&self, path: &Path, len: u64) -> io::Result<()> {
        // One write per line: a process killed mid-note leaves no half line to merge with
        // the next.
        let line = format!("{len} {}\n", path.display());
        let mut j = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        j.write_all(line.as_bytes())
    }
}

#[derive(Debug)]
struct JournaledFile {
    file: File,
    path: PathBuf,
    fs: SyncJournalFs,
}

impl LogFile for JournaledFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        (&self.file).write_all(buf)
    }

    fn append_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        write_parts(&self.file, parts)
    }

    fn sync(&self) -> io::Result<()> {
        // The length before the sync: bytes appended while it runs may not be covered.
        let len = self.file.metadata()?.len();
        self.file.sync_data()?;
        self.fs.note(&self.path, len)
    }
}

impl LogFs for SyncJournalFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdFs.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdFs.list(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdFs.read(path)
    }

    fn read_into(&self, path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
        StdFs.read_into(path, buf)
    }

    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        StdFs.read_prefix(path, n)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        self.note(path, 0)?;
        Ok(Arc::new(JournaledFile {
            file,
            path: path.to_path_buf(),
            fs: self.clone(),
        }))
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        StdFs.write_new(path, data)?;
        self.note(path, data.len() as u64)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        StdFs.truncate(path, len)?;
        self.note(path, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdFs.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        StdFs.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdFs.sync_dir(dir)
    }
}

/// `<dir>/<segment number, 20 digits>.log`: names sort in segment order.
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segment number of a file name, if it is a segment's.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let n = name.strip_suffix(".log")?;
    if n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()) {
        n.parse().ok()
    } else {
        None
    }
}
