//! A fault-injecting, in-memory `LogFs` for crash tests, in the manner of redb's crash tests:
//! every file has a *live* image (what a reader sees now) and a *durable* image (what survives
//! a power cut). `crash` builds the file system a restarted process would find, optionally
//! keeping a torn or zero-filled piece of the unsynced tail; `fail_syncs_after` makes an fsync
//! fail so the store must poison itself.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::fs::{LogFile, LogFs};

#[derive(Debug, Default, Clone)]
struct Image {
    live: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    files: Mutex<BTreeMap<PathBuf, Image>>,
    /// Syncs still allowed to succeed; negative means unlimited.
    syncs_left: AtomicI64,
    /// Appends still allowed to complete; negative means unlimited. The one after them writes
    /// only `tear_keep` bytes and fails.
    writes_left: AtomicI64,
    tear_keep: AtomicUsize,
}

/// What survives of each file's unsynced tail at a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTail {
    /// Nothing past the last sync.
    Drop,
    /// A prefix of the unsynced bytes, `n` of them (capped to what there is).
    Torn(usize),
    /// `n` zero bytes in place of unsynced data (size extended, data never written).
    Zeroed(usize),
}

/// The in-memory fault-injecting file system. Clones share the same files.
#[derive(Debug, Clone)]
pub struct FaultFs {
    inner: Arc<Inner>,
}

impl Default for FaultFs {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultFs {
    pub fn new() -> Self {
        let inner = Inner::default();
        inner.syncs_left.store(-1, Ordering::SeqCst);
        inner.writes_left.store(-1, Ordering::SeqCst);
        FaultFs {
            inner: Arc::new(inner),
        }
    }

    /// After `n` more successful syncs, every sync fails with an I/O error.
    pub fn fail_syncs_after(&self, n: u64) {
        self.inner.syncs_left.store(n as i64, Ordering::SeqCst);
    }

    /// After `n` more complete appends, the next append writes only its first `keep` bytes and
    /// fails, as a write cut short by a crash or a full disk; later appends fail too.
    pub fn tear_write_after(&self, n: u64, keep: usize) {
        self.inner.tear_keep.store(keep, Ordering::SeqCst);
        self.inner.writes_left.store(n as i64, Ordering::SeqCst);
    }

    /// The file system as a restarted machine would find it. `tail` picks, per file, what
    /// survives of the bytes written since its last sync.
    pub fn crash(&self, mut tail: impl FnMut(&Path, usize) -> CrashTail) -> FaultFs {
        let files = self.inner.files.lock().expect("fault fs lock");
        let mut out = BTreeMap::new();
        for (p, img) in files.iter() {
            let mut d = img.durable.clone();
            let unsynced = img.live.len().saturating_sub(d.len());
            match tail(p, unsynced) {
                CrashTail::Drop => {}
                CrashTail::Torn(n) => {
                    let n = n.min(unsynced);
                    d.extend_from_slice(&img.live[img.durable.len()..img.durable.len() + n]);
                }
                CrashTail::Zeroed(n) => d.resize(d.len() + n.min(unsynced), 0),
            }
            out.insert(
                p.clone(),
                Image {
                    live: d.clone(),
                    durable: d,
                },
            );
        }
        let fs = FaultFs::new();
        *fs.inner.files.lock().expect("fault fs lock") = out;
        fs
    }

    /// Live contents of a file (for tests that damage bytes on purpose).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.inner
            .files
            .lock()
            .expect("fault fs lock")
            .get(path)
            .map(|i| i.live.clone())
    }

    /// Replaces a file's contents, live and durable.
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) {
        self.inner.files.lock().expect("fault fs lock").insert(
            path.to_path_buf(),
            Image {
                live: data.clone(),
                durable: data,
            },
        );
    }

    fn sync_allowed(&self) -> io::Result<()> {
        let left = self.inner.syncs_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(io::Error::other("injected fsync failure"));
        }
        if left > 0 {
            self.inner.syncs_left.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    path: PathBuf,
}

impl LogFile for FaultFile {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        let mut files = self.fs.inner.files.lock().expect("fault fs lock");
        let img = files
            .get_mut(&self.path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file removed"))?;
        let left = self.fs.inner.writes_left.load(Ordering::SeqCst);
        if left == 0 {
            let keep = self
                .fs
                .inner
                .tear_keep
                .swap(0, Ordering::SeqCst)
                .min(buf.len());
            img.live.extend_from_slice(&buf[..keep]);
            return Err(io::Error::other("injected torn write"));
        }
        if left > 0 {
            self.fs.inner.writes_left.fetch_sub(1, Ordering::SeqCst);
        }
        img.live.extend_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.fs.sync_allowed()?;
        let mut files = self.fs.inner.files.lock().expect("fault fs lock");
        if let Some(img) = files.get_mut(&self.path) {
            img.durable = img.live.clone();
        }
        Ok(())
    }
}

impl LogFs for FaultFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let files = self.inner.files.lock().expect("fault fs lock");
        Ok(files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.contents(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }

    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        let mut v = self.read(path)?;
        v.truncate(n);
        Ok(v)
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn LogFile>> {
        // Creation counts as durable (as after a directory sync): the crash model here is
        // about file contents, which is where a log's torn writes and lost data live.
        self.inner
            .files
            .lock()
            .expect("fault fs lock")
            .insert(path.to_path_buf(), Image::default());
        Ok(Arc::new(FaultFile {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.sync_allowed()?;
        self.set_contents(path, data.to_vec());
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.sync_allowed()?;
        let mut files = self.inner.files.lock().expect("fault fs lock");
        let img = files
            .get_mut(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))?;
        img.live.truncate(len as usize);
        img.durable = img.live.clone();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut files = self.inner.files.lock().expect("fault fs lock");
        let img = files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.display().to_string()))?;
        files.insert(to.to_path_buf(), img);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.files.lock().expect("fault fs lock").remove(path);
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        self.sync_allowed()
    }
}
