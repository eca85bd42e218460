//! Hot backups of a shard, backup sets, and restores. Format: `docs/backup-format.md`.
//!
//! A shard's backup is the state at one LSN `end`: a RocksDB checkpoint of the rows as of the
//! last paramdb checkpoint `c` (hard links to the live table files where the file system
//! allows and the caller does not ask for copies), plus the log segments holding the records
//! `c+1 ..= end`. It is a shard directory as `Store::open` reads it, so restoring is copying
//! it out and running `verify_dir` on the result.
//!
//! How a backup of a live store stays consistent while pushes go on:
//! 1. Under the `ddl` lock (no checkpoint, table change or import until the backup is done, so
//!    RocksDB stays at `c` and no segment after `c` is purged), the sequencer seals the log
//!    segment: every segment up to it is complete and immutable, and holds exactly the
//!    records up to `end`. Pushes go on into the new segment at once.
//! 2. RocksDB's checkpoint is taken into a staging directory inside the data directory (hard
//!    links, no copying), and its files and the sealed segments after `c` are moved into the
//!    backup: reused from the previous backup of the same store when it holds the same file
//!    (link within the target), linked from staging, or copied with a CRC-32.
//! 3. The shard's manifest (`SHARD`: every file with its size and CRC, the LSNs) is written
//!    last, to a temporary name, fsynced, and renamed into place.
//!
//! A set of backups lives in one target directory: `backup-000001/`, `backup-000002/`, … each
//! with its shards (`shard-<i>/`) and a set manifest (`BACKUP`). A set is built in
//! `.partial-backup-<n>/` and renamed to its name only when every shard's part and the set
//! manifest are durable, so a killed backup leaves only a partial directory, which restore
//! refuses and the next backup removes.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use paramdb_types::{quote, KeyRange, ShardBackup};

use crate::error::{BackupError, InputError, StorageError};
use crate::store::Core;

/// Version of the manifests (`SHARD`, `BACKUP`) this build writes and reads.
pub const BACKUP_FORMAT_VERSION: u32 = 1;
const SHARD_MANIFEST: &str = "SHARD";
const SET_MANIFEST: &str = "BACKUP";
const STORE_ID: &str = "STORE_ID";
const STAGING: &str = "backup-staging";
const PARTIAL_PREFIX: &str = ".partial-";
const SET_PREFIX: &str = "backup-";

/// How a backup moves files.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Copy every file, never hard-link the live data directory's table files (a backup on
    /// another disk, or one that must not share inodes with the store).
    pub copy: bool,
    /// Set by the caller to abandon the backup (its requester went away): it stops at the next
    /// file or MiB and removes what it wrote.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl BackupOptions {
    fn check(&self) -> Result<(), StorageError> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(StorageError::io(
                "backup",
                io::Error::new(
                    io::ErrorKind::Interrupted,
                    "cancelled: its requester went away",
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileEntry {
    /// Relative to the shard's backup directory, `/`-separated.
    path: String,
    size: u64,
    /// CRC-32 of the bytes; `None` for a table file linked from the live store, which
    /// RocksDB's own block checksums cover (`verify_dir` reads them all).
    crc: Option<u32>,
}

/// A shard backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ShardManifest {
    store_id: String,
    checkpoint_lsn: u64,
    end_lsn: u64,
    files: Vec<FileEntry>,
}

/// One shard in a set manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetShard {
    pub index: u32,
    pub range: KeyRange,
    pub checkpoint_lsn: u64,
    pub end_lsn: u64,
}

/// A complete backup set: what `paramdb restore` restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupSet {
    pub dir: PathBuf,
    /// Seconds since the Unix epoch when the set was committed.
    pub created: u64,
    /// Restored as `shard-<i>` directories (an embedded data directory or a cluster), not as
    /// one shard's directory (a server's `--data-dir`).
    pub nested: bool,
    pub shards: Vec<SetShard>,
}

impl BackupSet {
    /// The directory of shard `index`'s part.
    pub fn shard_dir(&self, index: u32) -> PathBuf {
        self.dir.join(format!("shard-{index}"))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
    let what = what.into();
    move |e| StorageError::io(what, e)
}

/// Manifest text with a CRC-32 line at the end; `decode_checked` verifies and strips it.
fn seal_text(body: String) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    format!("{body}crc {crc:08x}\n")
}

fn decode_checked(path: &Path, text: &str) -> Result<Vec<Vec<String>>, StorageError> {
    let bad = |reason: String| StorageError::NotABackup {
        path: path.to_path_buf(),
        reason,
    };
    let Some(cut) = text.trim_end_matches('\n').rfind('\n') else {
        return Err(bad("manifest is empty or truncated".into()));
    };
    let (body, last) = text.split_at(cut + 1);
    let stored = last
        .trim()
        .strip_prefix("crc ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| bad("manifest has no checksum line (truncated?)".into()))?;
    let actual = crc32fast::hash(body.as_bytes());
    if stored != actual {
        return Err(bad(format!(
            "manifest checksum mismatch (stored {stored:08x}, actual {actual:08x})"
        )));
    }
    Ok(body
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect())
}

fn header(path: &Path, lines: &[Vec<String>], magic: &str) -> Result<(), StorageError> {
    let first = lines
        .first()
        .map(|l| l.iter().map(String::as_str).collect::<Vec<_>>());
    match first.as_deref() {
        Some([m, v]) if *m == magic => {
            let v: u32 = v.parse().map_err(|_| StorageError::NotABackup {
                path: path.to_path_buf(),
                reason: "unreadable format version".into(),
            })?;
            if v > BACKUP_FORMAT_VERSION {
                return Err(StorageError::UnsupportedFormat {
                    what: format!("backup manifest {}", path.display()),
                    found: v,
                    supported: BACKUP_FORMAT_VERSION,
                });
            }
            Ok(())
        }
        _ => Err(StorageError::NotABackup {
            path: path.to_path_buf(),
            reason: format!("manifest does not start with {magic:?}"),
        }),
    }
}

fn num(path: &Path, field: &str, s: Option<&String>) -> Result<u64, StorageError> {
    s.and_then(|v| v.parse().ok())
        .ok_or_else(|| StorageError::NotABackup {
            path: path.to_path_buf(),
            reason: format!("manifest field {field} is missing or not a number"),
        })
}

impl ShardManifest {
    fn encode(&self) -> String {
        let mut s = format!("paramdb-shard-backup {BACKUP_FORMAT_VERSION}\n");
        s += &format!("store_id {}\n", self.store_id);
        s += &format!("checkpoint_lsn {}\n", self.checkpoint_lsn);
        s += &format!("end_lsn {}\n", self.end_lsn);
        for f in &self.files {
            let crc = f.crc.map_or("-".to_string(), |c| format!("{c:08x}"));
            s += &format!("file {} {} {crc}\n", f.path, f.size);
        }
        seal_text(s)
    }

    fn read(dir: &Path) -> Result<ShardManifest, StorageError> {
        let path = dir.join(SHARD_MANIFEST);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::NotABackup {
                    path: dir.to_path_buf(),
                    reason: format!("no {SHARD_MANIFEST} manifest (an unfinished backup?)"),
                })
            }
            Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e)),
        };
        let lines = decode_checked(&path, &text)?;
        header(&path, &lines, "paramdb-shard-backup")?;
        let mut m = ShardManifest {
            store_id: String::new(),
            checkpoint_lsn: 0,
            end_lsn: 0,
            files: Vec::new(),
        };
        for l in &lines[1..] {
            match l.first().map(String::as_str) {
                Some("store_id") => m.store_id = l.get(1).cloned().unwrap_or_default(),
                Some("checkpoint_lsn") => {
                    m.checkpoint_lsn = num(&path, "checkpoint_lsn", l.get(1))?
                }
                Some("end_lsn") => m.end_lsn = num(&path, "end_lsn", l.get(1))?,
                Some("file") => {
                    let name = l.get(1).cloned().unwrap_or_default();
                    if name.is_empty() || name.split('/').any(|c| c == ".." || c.is_empty()) {
                        return Err(StorageError::NotABackup {
                            path: path.clone(),
                            reason: format!("bad file name {}", quote(&name)),
                        });
                    }
                    let size = num(&path, "file size", l.get(2))?;
                    let crc = match l.get(3).map(String::as_str) {
                        Some("-") => None,
                        Some(h) => Some(u32::from_str_radix(h, 16).map_err(|_| {
                            StorageError::NotABackup {
                                path: path.clone(),
                                reason: format!("bad checksum of {}", quote(&name)),
                            }
                        })?),
                        None => None,
                    };
                    m.files.push(FileEntry {
                        path: name,
                        size,
                        crc,
                    });
                }
                _ => {}
            }
        }
        Ok(m)
    }
}

/// Writes `text` to `dir/name` durably: a temporary file, fsync, rename, fsync of `dir`.
fn write_durable(dir: &Path, name: &str, text: &str) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, dir.join(name)).map_err(io_err(format!("renaming {}", tmp.display())))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("syncing directory {}", dir.display())))
}

/// Copies `from` to `to` (new), not yet synced (see `sync_files`), returning its size and
/// CRC-32. Syncing every file as it is copied would wait for each file's write-back before
/// reading the next; synced together at the end, the writes overlap the reads.
fn copy_with_crc(from: &Path, to: &Path) -> Result<(u64, u32), StorageError> {
    copy_checked(from, to, &BackupOptions::default())
}

/// fsyncs files written by `copy_with_crc`.
fn sync_files(files: &[PathBuf]) -> Result<(), StorageError> {
    for f in files {
        File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(io_err(format!("syncing {}", f.display())))?;
    }
    Ok(())
}

fn copy_checked(from: &Path, to: &Path, opts: &BackupOptions) -> Result<(u64, u32), StorageError> {
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err(format!("creating {}", to.display())))?;
    read_with_crc(from, |chunk| {
        opts.check()?;
        dst.write_all(chunk)
            .map_err(io_err(format!("writing {}", to.display())))
    })
}

/// Reads `path` through, handing each chunk to `each`; returns its size and CRC-32.
fn read_with_crc(
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<(), StorageError>,
) -> Result<(u64, u32), StorageError> {
    let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if k == 0 {
            return Ok((n, h.finalize()));
        }
        h.update(&buf[..k]);
        each(&buf[..k])?;
        n += k as u64;
    }
}

/// RocksDB never changes a table (or blob) file once written: those may be shared by links.
fn immutable(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

/// The store's identity for incremental backups: a random id in `STORE_ID`, made on first
/// use. A restore gives its result a new one, so files of two lineages are never confused.
fn store_id(dir: &Path) -> Result<String, StorageError> {
    let path = dir.join(STORE_ID);
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Ok(_) | Err(_) => {
            let id = new_store_id();
            write_durable(dir, STORE_ID, &format!("{id}\n"))?;
            Ok(id)
        }
    }
}

fn new_store_id() -> String {
    let word = || {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

/// Files to carry over from the previous backup of the same store: by relative path, its
/// size and CRC.
struct Previous {
    dir: PathBuf,
    files: HashMap<String, FileEntry>,
}

impl Previous {
    fn load(dir: Option<&Path>, store_id: &str) -> Option<Previous> {
        let dir = dir?;
        let m = ShardManifest::read(dir).ok()?;
        (m.store_id == store_id).then(|| Previous {
            dir: dir.to_path_buf(),
            files: m.files.into_iter().map(|f| (f.path.clone(), f)).collect(),
        })
    }
}

/// Puts one file into the backup: reused from the previous backup, linked, or copied.
struct Mover<'a> {
    dest: &'a Path,
    previous: Option<Previous>,
    opts: &'a BackupOptions,
    out: ShardBackup,
    files: Vec<FileEntry>,
    /// Copied, to be synced before the manifest is written.
    copied: Vec<PathBuf>,
}

impl Mover<'_> {
    fn add(&mut self, src: &Path, rel: &str, shareable: bool) -> Result<(), StorageError> {
        self.opts.check()?;
        let to = self.dest.join(rel);
        let size = fs::metadata(src)
            .map_err(io_err(format!("reading {}", src.display())))?
            .len();
        if let Some(p) = &self.previous {
            if let Some(e) = p.files.get(rel).filter(|e| e.size == size && shareable) {
                if fs::hard_link(p.dir.join(rel), &to).is_ok() {
                    self.out.bytes_reused += size;
                    self.finish(e.clone());
                    return Ok(());
                }
            }
        }
        if shareable && !self.opts.copy && fs::hard_link(src, &to).is_ok() {
            self.out.bytes_linked += size;
            self.finish(FileEntry {
                path: rel.to_string(),
                size,
                crc: None,
            });
            return Ok(());
        }
        let (n, crc) = copy_checked(src, &to, self.opts)?;
        self.copied.push(to);
        self.out.bytes_copied += n;
        self.finish(FileEntry {
            path: rel.to_string(),
            size: n,
            crc: Some(crc),
        });
        Ok(())
    }

    fn finish(&mut self, e: FileEntry) {
        self.out.files += 1;
        self.out.bytes += e.size;
        self.files.push(e);
    }
}

/// Called under the sequencer once the log's end is fixed, before any file is moved: a
/// cluster backup lifts its write fence there, and fails if the fence was gone.
pub(crate) type AtEnd<'a> = &'a mut dyn FnMut() -> Result<(), BackupError>;

impl Core {
    /// Backs this shard up into `dest` (which must not exist), as of the log's end when the
    /// segment is sealed. `previous` is an earlier backup of this shard to reuse files from.
    pub(crate) fn backup(
        &self,
        dest: &Path,
        previous: Option<&Path>,
        opts: BackupOptions,
        at_end: AtEnd<'_>,
    ) -> Result<ShardBackup, BackupError> {
        self.check_writable("back up")?;
        if dest.exists() {
            return Err(InputError::BackupTargetExists {
                path: dest.display().to_string(),
            }
            .into());
        }
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.poison.check()?;
        let (end_lsn, segments) = {
            let mut log = self.log.sequencer();
            match log.rotate() {
                Ok(durable) => self.log.mark_durable(durable),
                Err(e) => {
                    drop(log);
                    self.poison(format!("sealing a log segment failed: {e}"));
                    return Err(StorageError::io("sealing a log segment", e).into());
                }
            }
            at_end()?;
            let segs: Vec<_> = log.segments().copied().collect();
            (log.last_lsn(), segs)
        };
        let checkpoint_lsn = self.mark().lsn;
        let id = store_id(&self.dir)?;
        let staging = self.dir.join(STAGING);
        remove_dir_if_exists(&staging)?;
        fs::create_dir_all(dest.join("rocksdb"))
            .and_then(|()| fs::create_dir_all(dest.join("wal")))
            .map_err(io_err(format!("creating {}", dest.display())))?;
        let result = (|| -> Result<ShardBackup, StorageError> {
            self.rocks.checkpoint_to(&staging)?;
            let mut mover = Mover {
                dest,
                previous: Previous::load(previous, &id),
                opts: &opts,
                out: ShardBackup {
                    checkpoint_lsn,
                    end_lsn,
                    ..Default::default()
                },
                files: Vec::new(),
                copied: Vec::new(),
            };
            let mut names: Vec<String> = fs::read_dir(&staging)
                .map_err(io_err(format!("listing {}", staging.display())))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                mover.add(&staging.join(&n), &format!("rocksdb/{n}"), immutable(&n))?;
            }
            // Sealed segments holding records after the checkpoint: all but the new one.
            let sealed = &segments[..segments.len() - 1];
            for (i, s) in sealed.iter().enumerate() {
                let covered = sealed
                    .get(i + 1)
                    .is_some_and(|next| next.first_lsn <= checkpoint_lsn + 1);
                if covered {
                    continue;
                }
                let name = format!("{:020}.log", s.segment);
                mover.add(
                    &self.dir.join("wal").join(&name),
                    &format!("wal/{name}"),
                    true,
                )?;
            }
            sync_files(&mover.copied)?;
            sync_dir(&dest.join("rocksdb"))?;
            sync_dir(&dest.join("wal"))?;
            let manifest = ShardManifest {
                store_id: id.clone(),
                checkpoint_lsn,
                end_lsn,
                files: mover.files,
            };
            write_durable(dest, SHARD_MANIFEST, &manifest.encode())?;
            Ok(mover.out)
        })();
        let _ = fs::remove_dir_all(&staging);
        if result.is_err() {
            // Without its manifest it is no backup anyway; removed, the call can be run again.
            let _ = fs::remove_dir_all(dest);
        }
        tracing::info!(dest = %dest.display(), end_lsn, ok = result.is_ok(), "shard backup");
        result.map_err(BackupError::from)
    }
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), StorageError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(StorageError::io(format!("removing {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// Removes what an interrupted backup left in a data directory (called at open).
pub(crate) fn remove_stale_staging(dir: &Path) {
    let _ = fs::remove_dir_all(dir.join(STAGING));
}

/// Checks a shard backup against its manifest: every file present with its size, and every
/// recorded CRC matching. Returns its LSNs.
pub fn check_shard_backup(dir: &Path) -> Result<(u64, u64), BackupError> {
    check_part(dir, true).map(|m| (m.checkpoint_lsn, m.end_lsn))
}

/// `check_shard_backup`, reading the files for their CRCs only when `crcs` (a commit checks
/// sizes: the part's writer computed the CRCs as it wrote).
fn check_part(dir: &Path, crcs: bool) -> Result<ShardManifest, BackupError> {
    let m = ShardManifest::read(dir)?;
    for f in &m.files {
        let p = dir.join(&f.path);
        let damaged = |reason: String| StorageError::NotABackup {
            path: dir.to_path_buf(),
            reason: format!("{}: {reason}", f.path),
        };
        let size = match fs::metadata(&p) {
            Ok(md) => md.len(),
            Err(e) => return Err(damaged(format!("missing ({e})")).into()),
        };
        if size != f.size {
            return Err(damaged(format!("{size} bytes, the manifest says {}", f.size)).into());
        }
        if let Some(want) = f.crc.filter(|_| crcs) {
            let (_, got) = read_with_crc(&p, |_| Ok(()))?;
            if got != want {
                return Err(
                    damaged(format!("checksum {got:08x}, the manifest says {want:08x}")).into(),
                );
            }
        }
    }
    Ok(m)
}

/// Restores the shard backup in `from` into `to`, which must not exist or be empty: table
/// files hard-linked where possible (RocksDB never changes them), everything else copied.
/// `to` gets a new store id. The result is checked by `verify_dir`; a problem it finds is an
/// error (the directory is left for inspection).
pub fn restore_shard(from: &Path, to: &Path) -> Result<paramdb_types::VerifyReport, BackupError> {
    check_empty_target(to)?;
    let m = check_part(from, true)?;
    restore_checked(from, &m, to)
}

/// `restore_shard` of a part already checked against its manifest `m`.
fn restore_checked(
    from: &Path,
    m: &ShardManifest,
    to: &Path,
) -> Result<paramdb_types::VerifyReport, BackupError> {
    for sub in ["rocksdb", "wal"] {
        fs::create_dir_all(to.join(sub)).map_err(io_err(format!("creating {}", to.display())))?;
    }
    let mut copied = Vec::new();
    for f in &m.files {
        let (src, dst) = (from.join(&f.path), to.join(&f.path));
        let name = f.path.rsplit('/').next().unwrap_or(&f.path);
        if !(immutable(name) && fs::hard_link(&src, &dst).is_ok()) {
            copy_with_crc(&src, &dst)?;
            copied.push(dst);
        }
    }
    sync_files(&copied)?;
    sync_dir(&to.join("rocksdb"))?;
    sync_dir(&to.join("wal"))?;
    write_durable(to, STORE_ID, &format!("{}\n", new_store_id()))?;
    let report = crate::verify::verify_dir(to)?;
    if !report.problems.is_empty() {
        return Err(StorageError::NotABackup {
            path: from.to_path_buf(),
            reason: format!(
                "the restored directory {} does not verify: {}",
                to.display(),
                report
                    .problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
        .into());
    }
    Ok(report)
}

/// A restore target must be new or an empty directory.
pub fn check_empty_target(to: &Path) -> Result<(), BackupError> {
    match fs::read_dir(to) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(InputError::RestoreTargetNotEmpty {
                    path: to.display().to_string(),
                }
                .into());
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(InputError::RestoreTargetNotEmpty {
                path: to.display().to_string(),
            }
            .into())
        }
        Err(e) => Err(StorageError::io(format!("reading {}", to.display()), e).into()),
    }
}

/// A backup set being written into a target directory: its shards' parts go into `dir()`,
/// and `commit` makes it a backup. Holds the target's lock until then.
#[derive(Debug)]
pub struct PendingSet {
    root: PathBuf,
    number: u64,
    tmp: PathBuf,
    previous: Option<BackupSet>,
    _lock: File,
}

impl PendingSet {
    /// Starts a new set in `root` (created if missing). Removes what killed backups left there.
    pub fn begin(root: &Path) -> Result<PendingSet, BackupError> {
        fs::create_dir_all(root).map_err(io_err(format!("creating {}", root.display())))?;
        let lock_path = root.join("LOCK");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        lock.try_lock().map_err(|_| InputError::BackupInProgress {
            path: root.display().to_string(),
        })?;
        let mut highest = 0;
        for e in fs::read_dir(root)
            .map_err(io_err(format!("listing {}", root.display())))?
            .filter_map(|e| e.ok())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(PARTIAL_PREFIX) {
                // A shard server may still be finishing its part of a killed backup: the
                // removal is best effort (the next backup tries again), and the number is
                // not reused.
                if let Some(n) = set_number(rest) {
                    highest = highest.max(n);
                }
                tracing::info!(dir = %e.path().display(), "removing an unfinished backup");
                if let Err(err) = remove_dir_if_exists(&e.path()) {
                    tracing::warn!(error = %err, "could not remove an unfinished backup yet");
                }
                continue;
            }
            if let Some(n) = set_number(&name) {
                highest = highest.max(n);
            }
        }
        let number = highest + 1;
        let tmp = root.join(format!("{PARTIAL_PREFIX}{SET_PREFIX}{number:06}"));
        fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        Ok(PendingSet {
            root: root.to_path_buf(),
            number,
            previous: latest_set(root).ok().flatten(),
            tmp,
            _lock: lock,
        })
    }

    /// Where shard `index`'s part is to be written (the directory must not exist yet).
    pub fn shard_dir(&self, index: u32) -> PathBuf {
        self.tmp.join(format!("shard-{index}"))
    }

    /// Shard `index`'s part of the previous set in the target, to reuse files from.
    pub fn previous_shard_dir(&self, index: u32) -> Option<PathBuf> {
        self.previous.as_ref().map(|s| s.shard_dir(index))
    }

    /// The set this one follows in the target, if any.
    pub fn previous(&self) -> Option<&BackupSet> {
        self.previous.as_ref()
    }

    /// Makes the set a backup: checks every shard's part, writes the set manifest, renames
    /// the directory to its name.
    pub fn commit(
        self,
        shards: &[(u32, KeyRange)],
        nested: bool,
    ) -> Result<BackupSet, BackupError> {
        let mut s = format!("paramdb-backup {BACKUP_FORMAT_VERSION}\n");
        let created = now_secs();
        s += &format!("created {created}\n");
        s += &format!("layout {}\n", if nested { "shards" } else { "single" });
        let mut out = Vec::new();
        for &(index, range) in shards {
            let dir = self.shard_dir(index);
            let ShardManifest {
                checkpoint_lsn,
                end_lsn,
                ..
            } = check_part(&dir, false)?;
            s += &format!(
                "shard {index} {} {} {checkpoint_lsn} {end_lsn}\n",
                range.start, range.end
            );
            out.push(SetShard {
                index,
                range,
                checkpoint_lsn,
                end_lsn,
            });
        }
        write_durable(&self.tmp, SET_MANIFEST, &seal_text(s))?;
        let name = self.root.join(format!("{SET_PREFIX}{:06}", self.number));
        fs::rename(&self.tmp, &name).map_err(io_err(format!("renaming {}", self.tmp.display())))?;
        sync_dir(&self.root)?;
        Ok(BackupSet {
            dir: name,
            created,
            nested,
            shards: out,
        })
    }
}

fn set_number(name: &str) -> Option<u64> {
    name.strip_prefix(SET_PREFIX)?.parse().ok()
}

/// The newest complete set in `root`, if any.
pub fn latest_set(root: &Path) -> Result<Option<BackupSet>, BackupError> {
    let mut sets: Vec<(u64, PathBuf)> = fs::read_dir(root)
        .map_err(io_err(format!("listing {}", root.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((set_number(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    sets.sort();
    for (_, dir) in sets.into_iter().rev() {
        if let Ok(s) = read_set(&dir) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Reads the set manifest in `dir`.
pub fn read_set(dir: &Path) -> Result<BackupSet, BackupError> {
    let path = dir.join(SET_MANIFEST);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::NotABackup {
                path: dir.to_path_buf(),
                reason: format!("no {SET_MANIFEST} manifest (an unfinished backup?)"),
            }
            .into())
        }
        Err(e) => return Err(StorageError::io(format!("reading {}", path.display()), e).into()),
    };
    let lines = decode_checked(&path, &text)?;
    header(&path, &lines, "paramdb-backup")?;
    let mut set = BackupSet {
        dir: dir.to_path_buf(),
        created: 0,
        nested: false,
        shards: Vec::new(),
    };
    for l in &lines[1..] {
        match l.first().map(String::as_str) {
            Some("created") => set.created = num(&path, "created", l.get(1))?,
            Some("layout") => set.nested = l.get(1).is_some_and(|v| v == "shards"),
            Some("shard") => set.shards.push(SetShard {
                index: num(&path, "shard index", l.get(1))? as u32,
                range: KeyRange {
                    start: num(&path, "shard start", l.get(2))?,
                    end: num(&path, "shard end", l.get(3))?,
                },
                checkpoint_lsn: num(&path, "checkpoint lsn", l.get(4))?,
                end_lsn: num(&path, "end lsn", l.get(5))?,
            }),
            _ => {}
        }
    }
    if set.shards.is_empty() {
        return Err(StorageError::NotABackup {
            path: dir.to_path_buf(),
            reason: "the manifest lists no shards".into(),
        }
        .into());
    }
    Ok(set)
}

/// The set `from` names: a set directory, or a target directory (its newest complete set).
pub fn find_set(from: &Path) -> Result<BackupSet, BackupError> {
    if from.join(SET_MANIFEST).exists() {
        return read_set(from);
    }
    if !from.is_dir() {
        return Err(StorageError::NotABackup {
            path: from.to_path_buf(),
            reason: "no such directory".into(),
        }
        .into());
    }
    latest_set(from)?.ok_or_else(|| {
        StorageError::NotABackup {
            path: from.to_path_buf(),
            reason: "it holds no complete backup (unfinished ones are not restored)".into(),
        }
        .into()
    })
}

/// Restores every shard of `set` under `to` (which must not exist or be empty): a server's
/// shard into `to` itself, the shards of a cluster or an embedded data directory into
/// `to/shard-<i>`. Returns each restored directory with its range.
pub fn restore_set(set: &BackupSet, to: &Path) -> Result<Vec<(PathBuf, KeyRange)>, BackupError> {
    check_empty_target(to)?;
    // Every part is checked before anything is written.
    let manifests = set
        .shards
        .iter()
        .map(|s| check_part(&set.shard_dir(s.index), true))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (s, m) in set.shards.iter().zip(&manifests) {
        let dir = if !set.nested {
            to.to_path_buf()
        } else {
            to.join(format!("shard-{}", s.index))
        };
        restore_checked(&set.shard_dir(s.index), m, &dir)?;
        out.push((dir, s.range));
    }
    Ok(out)
}
