//! The shard store: tables of rows in RocksDB, the gradient log in front of them, and the rules
//! that tie them together (validate → log → apply → acknowledge when durable; checkpoint;
//! recover). Synchronous: callers on an async runtime run it on blocking threads.
//!
//! Where a row lives: pushes change rows in the *dirty* layer (memory); a checkpoint freezes
//! that layer, writes it to RocksDB in one atomic batch with the checkpoint LSN, then drops
//! it. Reads look in dirty, then frozen, then RocksDB, then the initializer. Everything in
//! dirty and frozen is also in the log, so a crash loses nothing that was acknowledged.
//!
//! In front of RocksDB sits the hot-row cache (`cache`): clean copies of the most used rows in
//! a memory-mapped file. Reads that miss dirty and frozen look there before RocksDB; a
//! checkpoint refreshes the cached copies of the rows it writes.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::WriteBatch;
use rustc_hash::FxHashMap;

use crate::cache::{CacheStats, RowCache};
use crate::dedup::{SeqWindow, Verdict};
use crate::error::{Result, StoreError};
use crate::options::{StoreOptions, SyncPolicy};
use crate::rocks::{key_bytes, Rocks};
use crate::row::{self, Row};
use crate::table::{self, TableSpec};
use crate::types::{ClientId, Key, KeyRange, PushAck};
use crate::wal::recovery::{self, RecoveryReport};
use crate::wal::writer::LogWriter;
use crate::wal::{LogFs, ReadOnlyFs, Record, StdFs};

/// Version of the store's own metadata layout (meta column family, directory layout).
pub const STORE_FORMAT_VERSION: u32 = 1;

pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_CHECKPOINT: &[u8] = b"checkpoint_lsn";
const META_NEXT_TABLE: &[u8] = b"next_table_id";
const META_TABLE_PREFIX: &[u8] = b"table/";
pub(crate) const META_CLIENT_PREFIX: &[u8] = b"client/";

/// A table as the store knows it: the user's spec plus its id and column family.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub id: u32,
    pub spec: TableSpec,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) id: u32,
    pub(crate) spec: TableSpec,
    pub(crate) cf: String,
}

impl Table {
    fn dim(&self) -> usize {
        self.spec.dim as usize
    }
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) by_name: HashMap<String, Arc<Table>>,
    pub(crate) by_id: HashMap<u32, Arc<Table>>,
    pub(crate) next_id: u32,
}

/// Rows by table id, then key. A hash map: a B-tree costs several cache misses per lookup at a
/// million rows, and lookups are the hot path of pushes, pulls and replay. Range scans sort
/// the keys they need once (see `scan`).
pub(crate) type Rows = HashMap<u32, TableRows>;
/// One table's rows in a layer.
pub(crate) type TableRows = FxHashMap<Key, Row>;

#[derive(Debug)]
pub(crate) struct State {
    log: LogWriter,
    pub(crate) dirty: Rows,
    /// Bytes of the rows in `dirty` (`Row::encoded_len` each).
    dirty_bytes: u64,
    /// Rows of the checkpoint in progress, until RocksDB has them.
    pub(crate) frozen: Option<Arc<Rows>>,
    /// Clean copies of hot rows (see `cache`).
    pub(crate) cache: RowCache,
    /// Bumped when a checkpoint completes: rows read from RocksDB before that may be stale.
    generation: u64,
    dedup: HashMap<u64, SeqWindow>,
    checkpoint_lsn: u64,
    log_bytes_at_checkpoint: u64,
    last_checkpoint: Instant,
}

impl State {
    /// The in-memory row for `key`, if it is in the dirty or frozen layer.
    /// The dirty and frozen rows of a table (looked up once, then per key with `lookup`).
    pub(crate) fn layers(&self, table: u32) -> (Option<&TableRows>, Option<&TableRows>) {
        (
            self.dirty.get(&table),
            self.frozen.as_ref().and_then(|f| f.get(&table)),
        )
    }
}

/// A row in the dirty layer, else in the frozen one.
pub(crate) fn lookup<'a>(
    dirty: Option<&'a TableRows>,
    frozen: Option<&'a TableRows>,
    key: Key,
) -> Option<&'a Row> {
    dirty
        .and_then(|d| d.get(&key))
        .or_else(|| frozen.and_then(|f| f.get(&key)))
}

#[derive(Debug, Default)]
struct DurState {
    synced: u64,
    syncing: bool,
}

#[derive(Debug, Default)]
struct Counters {
    pushes: AtomicU64,
    duplicate_pushes: AtomicU64,
    rows_pushed: AtomicU64,
    pulls: AtomicU64,
    rows_pulled: AtomicU64,
    fsyncs: AtomicU64,
    checkpoints: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    /// Opened by `open_read_only`: refuses every change and leaves the files alone.
    read_only: bool,
    opts: StoreOptions,
    pub(crate) rocks: Rocks,
    catalog: RwLock<Catalog>,
    pub(crate) state: Mutex<State>,
    dur: Mutex<DurState>,
    dur_cv: Condvar,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    /// Serialises catalog changes and checkpoints (both end in a RocksDB flush).
    ddl: Mutex<()>,
    stop: Mutex<bool>,
    wake: Condvar,
    counters: Counters,
}

/// Counters and positions, for the stats call and the tools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub tables: usize,
    pub pushes: u64,
    pub duplicate_pushes: u64,
    pub rows_pushed: u64,
    pub pulls: u64,
    pub rows_pulled: u64,
    pub dirty_rows: usize,
    /// Bytes the dirty rows hold (see `StoreOptions::checkpoint_dirty_bytes`).
    pub dirty_bytes: u64,
    pub log_segments: usize,
    pub log_bytes_since_checkpoint: u64,
    pub last_lsn: u64,
    pub durable_lsn: u64,
    pub checkpoint_lsn: u64,
    pub checkpoints: u64,
    pub fsyncs: u64,
    /// Log bytes written since the store was opened.
    pub log_bytes_written: u64,
    /// Time since the last checkpoint (or since the store was opened).
    pub checkpoint_age: std::time::Duration,
    pub poisoned: Option<String>,
    pub cache: CacheStats,
}

/// What a checkpoint did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Every record up to this LSN is now in RocksDB.
    pub lsn: u64,
    pub rows_written: usize,
    pub segments_removed: usize,
}

/// A shard's durable store. Dropping it without `close` behaves like a crash of the store
/// (after a final log sync): the next open replays the log.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    background: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
    /// Set by `crash`: skip the final log sync on drop.
    crashed: bool,
}

/// Keys of a push: a list, or the contiguous block `[start, start + count)`.
#[derive(Clone, Copy, Debug)]
enum PushKeys<'a> {
    List(&'a [Key]),
    Range { start: Key, count: u64 },
}

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from the log.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Self::open_with_fs(dir, opts, Arc::new(StdFs))
    }

    /// Like `open`, with the log's file I/O going through `fs` (fault injection in tests).
    pub fn open_with_fs(
        dir: impl AsRef<Path>,
        opts: StoreOptions,
        fs: Arc<dyn LogFs>,
    ) -> Result<Store> {
        Self::open_impl(dir.as_ref(), opts, fs, false)
    }

    /// Opens the store in `dir` for reading only, while a server may be running on it: RocksDB
    /// as a secondary instance, the log read (never written) and replayed in memory, so reads
    /// see every record the log holds. Nothing under `dir` is created, locked or changed.
    /// Writes, table changes and checkpoints are refused (`ReadOnly`); the hot-row cache is
    /// not used.
    ///
    /// A checkpoint of the running server may delete the log segments this open needs between
    /// its reading of RocksDB and of the log; such an open is retried with RocksDB caught up.
    pub fn open_read_only(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref();
        let rocks = dir.join("rocksdb");
        if !dir.is_dir() {
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
                reason: "no such directory".into(),
            });
        }
        if !rocks.join("CURRENT").is_file() {
            return Err(StoreError::NotAStore {
                path: dir.to_path_buf(),
                reason: "no rocksdb/CURRENT inside".into(),
            });
        }
        let opts = StoreOptions {
            background: false,
            cache_bytes: 0,
            recovery: crate::wal::RecoveryMode::Strict,
            ..opts
        };
        let mut attempt = 0;
        loop {
            match Self::open_impl(dir, opts.clone(), Arc::new(ReadOnlyFs), true) {
                // A segment listed, then deleted before it was read, is the same race.
                Err(e) if attempt < 20 && e.is_raced_by_checkpoint() => {
                    tracing::debug!(error = %e, "log changed under a read-only open; retrying");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20 * attempt));
                }
                r => return r,
            }
        }
    }

    fn open_impl(
        dir: &Path,
        opts: StoreOptions,
        fs: Arc<dyn LogFs>,
        read_only: bool,
    ) -> Result<Store> {
        let dir = dir.to_path_buf();
        let started = Instant::now();
        let (rocks, cf_names) = if read_only {
            Rocks::open_secondary(&dir.join("rocksdb"), opts.block_cache_bytes)?
        } else {
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
            Rocks::open(&dir.join("rocksdb"), opts.block_cache_bytes)?
        };

        match rocks.meta_get(META_FORMAT)? {
            Some(v) => {
                let found = v
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or_else(|| StoreError::CorruptMeta {
                        reason: "format version entry is not 4 bytes".into(),
                    })?;
                if found > STORE_FORMAT_VERSION {
                    return Err(StoreError::UnsupportedFormat {
                        what: format!("store at {}", dir.display()),
                        found,
                        supported: STORE_FORMAT_VERSION,
                    });
                }
            }
            None if read_only => {
                return Err(StoreError::NotAStore {
                    path: dir,
                    reason: "its RocksDB has no paramdb format entry".into(),
                })
            }
            None => {
                let mut b = WriteBatch::default();
                b.put_cf(
                    &rocks.cf(crate::rocks::META_CF)?,
                    META_FORMAT,
                    STORE_FORMAT_VERSION.to_le_bytes(),
                );
                rocks.commit(b, &[])?;
            }
        }

        let catalog = load_catalog(&rocks)?;
        // Column families without a catalog entry are left over from a create or drop that
        // crashed half-way; the catalog entry is the commit point.
        for name in &cf_names {
            let is_table_cf =
                name.starts_with('t') && name[1..].bytes().all(|b| b.is_ascii_digit());
            if is_table_cf && !read_only && !catalog.by_name.values().any(|t| &t.cf == name) {
                tracing::info!(cf = %name, "dropping column family of an unfinished table create/drop");
                rocks.drop_cf(name)?;
            }
        }
        let checkpoint_lsn = match rocks.meta_get(META_CHECKPOINT)? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                StoreError::CorruptMeta {
                    reason: "checkpoint LSN entry is not 8 bytes".into(),
                }
            })?),
            None => 0,
        };
        let mut dedup = HashMap::new();
        for (k, v) in rocks.meta_prefix(META_CLIENT_PREFIX)? {
            let id = crate::rocks::key_from(&k[META_CLIENT_PREFIX.len()..]);
            let w = SeqWindow::decode(&v);
            match (id, w) {
                (Some(id), Some(w)) => {
                    dedup.insert(id, w);
                }
                _ => {
                    return Err(StoreError::CorruptMeta {
                        reason: "unreadable client sequence window".into(),
                    })
                }
            }
        }

        let cache_tables: Vec<(u32, TableSpec)> = catalog
            .by_id
            .values()
            .map(|t| (t.id, t.spec.clone()))
            .collect();
        let cache = if read_only {
            RowCache::disabled()
        } else {
            RowCache::open(
                &dir.join("cache"),
                opts.cache_bytes,
                &cache_tables,
                checkpoint_lsn,
            )?
        };

        // Replay the log after the checkpoint into the dirty layer.
        let wal_dir = dir.join("wal");
        fs.create_dir_all(&wal_dir)
            .map_err(|e| StoreError::io(format!("creating {}", wal_dir.display()), e))?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let mut parts: Vec<Rows> = (0..threads).map(|_| Rows::new()).collect();
        let report =
            recovery::recover(&fs, &wal_dir, checkpoint_lsn, opts.recovery, &mut |recs| {
                replay_records(&rocks, &catalog, &mut parts, &mut dedup, recs)
            })?;
        let mut dirty: Rows = HashMap::new();
        for part in parts {
            for (table, rows) in part {
                let d = dirty.entry(table).or_default();
                if d.is_empty() {
                    *d = rows;
                } else {
                    d.extend(rows);
                }
            }
        }
        let log = LogWriter::start(
            fs.clone(),
            &wal_dir,
            report.live_segments.clone(),
            report.next_segment,
            report.next_lsn,
            opts.max_segment_bytes,
        )
        .map_err(|e| StoreError::io("starting a log segment", e))?;
        let last_lsn = log.last_lsn();
        tracing::info!(
            dir = %dir.display(),
            checkpoint_lsn,
            replayed = report.records_replayed,
            log_bytes = report.bytes_read,
            last_lsn,
            ms = started.elapsed().as_millis() as u64,
            "store opened"
        );

        let shared = Arc::new(Shared {
            dir,
            read_only,
            rocks,
            catalog: RwLock::new(catalog),
            state: Mutex::new(State {
                log,
                dirty_bytes: dirty
                    .values()
                    .flat_map(|t| t.values())
                    .map(|r| r.encoded_len() as u64)
                    .sum(),
                dirty,
                frozen: None,
                cache,
                generation: 0,
                dedup,
                checkpoint_lsn,
                log_bytes_at_checkpoint: 0,
                last_checkpoint: Instant::now(),
            }),
            // Everything recovered is on disk: it was read from there.
            dur: Mutex::new(DurState {
                synced: last_lsn,
                syncing: false,
            }),
            dur_cv: Condvar::new(),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            ddl: Mutex::new(()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            counters: Counters::default(),
            opts,
        });
        if !report.lost.is_empty() && !read_only {
            // Salvage moved records out of the log; make what was kept durable without it.
            shared.checkpoint()?;
        }
        let background = if shared.opts.background {
            let s = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("paramdb-store".into())
                    .spawn(move || s.background_loop())
                    .map_err(|e| StoreError::io("starting the store thread", e))?,
            )
        } else {
            None
        };
        Ok(Store {
            shared,
            background,
            recovery: report,
            crashed: false,
        })
    }

    /// What recovery found and did when this store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn options(&self) -> &StoreOptions {
        &self.shared.opts
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Compacts RocksDB: rewrites every table's files into the bottom level, dropping row
    /// versions that later checkpoints overwrote. Reads and pushes go on meanwhile.
    pub fn compact(&self) -> Result<()> {
        self.shared.check_writable("compact")?;
        self.shared.check_poisoned()?;
        self.shared.rocks.compact(&self.shared.table_cfs())
    }

    /// Checks every byte of this store's files that can be checked (see `verify`), reading
    /// them as a separate reader would: the store's own state is not consulted.
    pub fn verify(&self) -> Result<crate::verify::VerifyReport> {
        crate::verify::verify_dir(self.dir())
    }

    /// The log's records with LSN ≥ `from` (at most `limit`), and its torn or damaged
    /// segments.
    pub fn dump_log(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<crate::wal::dump::RecordInfo>, Vec<String>)> {
        let wal = self.dir().join("wal");
        crate::wal::dump::dump(&wal, from, limit)
            .map_err(|e| StoreError::io(format!("reading {}", wal.display()), e))
    }

    /// Whether this store was opened with `open_read_only`.
    pub fn is_read_only(&self) -> bool {
        self.shared.read_only
    }

    /// Creates a table; its definition is durable when this returns.
    pub fn create_table(&self, spec: TableSpec) -> Result<TableInfo> {
        self.shared.create_table(spec)
    }

    /// Drops a table and all its rows.
    pub fn drop_table(&self, name: &str) -> Result<()> {
        self.shared.drop_table(name)
    }

    pub fn list_tables(&self) -> Vec<TableInfo> {
        let cat = self
            .shared
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<TableInfo> = cat
            .by_id
            .values()
            .map(|t| TableInfo {
                id: t.id,
                spec: t.spec.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    pub fn describe_table(&self, name: &str) -> Result<TableInfo> {
        let t = self.shared.table(name)?;
        Ok(TableInfo {
            id: t.id,
            spec: t.spec.clone(),
        })
    }

    /// Weights of `keys` (row after row, `keys.len() × dim` floats). Keys never written pull
    /// their initial value.
    pub fn pull(&self, table: &str, keys: &[Key]) -> Result<Vec<f32>> {
        let t = self.shared.table(table)?;
        let mut out = vec![0.0; keys.len() * t.dim()];
        self.shared.pull_into(&t, keys, &mut out)?;
        Ok(out)
    }

    /// Like `pull`, into a caller's buffer of `keys.len() × dim` floats.
    pub fn pull_into(&self, table: &str, keys: &[Key], out: &mut [f32]) -> Result<()> {
        let t = self.shared.table(table)?;
        self.shared.pull_into(&t, keys, out)
    }

    /// Applies `values` (`keys.len() × dim`, row after row) to `keys` under the table's update
    /// rule. Returns once the push is durable under the sync policy. A retry with the same
    /// `(client, seq)` is acknowledged again and not applied twice. Duplicate keys within one
    /// push are refused (the client sums them).
    pub fn push(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        keys: &[Key],
        values: &[f32],
    ) -> Result<PushAck> {
        self.shared
            .push(table, client, seq, PushKeys::List(keys), values)
    }

    /// Pushes a contiguous block of rows `[start, start + values.len() / dim)` as one flat
    /// array: how dense parameters are updated.
    pub fn push_range(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        start: Key,
        values: &[f32],
    ) -> Result<PushAck> {
        let t = self.shared.table(table)?;
        if values.len() % t.dim() != 0 {
            return Err(StoreError::DimensionMismatch {
                table: table.to_string(),
                dim: t.spec.dim,
                keys: values.len() / t.dim(),
                values: values.len(),
            });
        }
        let count = (values.len() / t.dim()) as u64;
        self.shared
            .push(table, client, seq, PushKeys::Range { start, count }, values)
    }

    /// Streams the stored rows of `range` (rows that were pushed at least once) in key order,
    /// holding at most a batch of rows in memory.
    pub fn scan(&self, table: &str, range: KeyRange) -> Result<crate::scan::RangeScan> {
        let t = self.shared.table(table)?;
        Ok(crate::scan::RangeScan::new(self.shared.clone(), t, range))
    }

    /// Persists every row changed since the last checkpoint to RocksDB and deletes the log
    /// segments it covers.
    pub fn checkpoint(&self) -> Result<CheckpointInfo> {
        self.shared.checkpoint()
    }

    /// Makes every acknowledged push durable now, whatever the sync policy.
    pub fn sync(&self) -> Result<()> {
        let last = self.shared.lock_state().log.last_lsn();
        self.shared.wait_durable(last)
    }

    pub fn stats(&self) -> StoreStats {
        let s = &self.shared;
        let c = &s.counters;
        let st = s.lock_state();
        let dirty_rows = st.dirty.values().map(|t| t.len()).sum();
        let (dirty_bytes, log_segments, log_bytes_written) = (
            st.dirty_bytes,
            st.log.segments().count(),
            st.log.bytes_appended(),
        );
        let log_bytes = log_bytes_written - st.log_bytes_at_checkpoint;
        let (last_lsn, checkpoint_lsn, cache) =
            (st.log.last_lsn(), st.checkpoint_lsn, st.cache.stats());
        let checkpoint_age = st.last_checkpoint.elapsed();
        drop(st);
        StoreStats {
            tables: s
                .catalog
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .by_id
                .len(),
            pushes: c.pushes.load(Ordering::Relaxed),
            duplicate_pushes: c.duplicate_pushes.load(Ordering::Relaxed),
            rows_pushed: c.rows_pushed.load(Ordering::Relaxed),
            pulls: c.pulls.load(Ordering::Relaxed),
            rows_pulled: c.rows_pulled.load(Ordering::Relaxed),
            dirty_rows,
            dirty_bytes,
            log_segments,
            log_bytes_since_checkpoint: log_bytes,
            last_lsn,
            durable_lsn: s.dur.lock().unwrap_or_else(|e| e.into_inner()).synced,
            checkpoint_lsn,
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            log_bytes_written,
            checkpoint_age,
            poisoned: s.poison_reason(),
            cache,
        }
    }

    /// Clean shutdown: checkpoint, so the next open has nothing to replay.
    pub fn close(mut self) -> Result<()> {
        self.stop_background();
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(self.shared.poisoned_error());
        }
        self.shared.close()
    }

    /// Clean shutdown through a shared handle (other holders may still read): the final
    /// checkpoint, and the cache files marked reusable by the next open.
    pub fn close_shared(&self) -> Result<()> {
        self.shared.close()
    }

    /// Ends the store as a killed process would: no checkpoint and no final log sync.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn crash(mut self) {
        self.crashed = true;
    }

    fn stop_background(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.background.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_background();
        if !self.crashed && !self.shared.read_only && !self.shared.poisoned.load(Ordering::SeqCst) {
            let last = self.shared.lock_state().log.last_lsn();
            if let Err(e) = self.shared.wait_durable(last) {
                tracing::error!(error = %e, "final log sync failed");
            }
            // Reusable without a final checkpoint: the next open replays the log into the
            // dirty layer as usual.
            if let Err(e) = self.shared.mark_cache_reusable() {
                tracing::warn!(error = %e, "could not mark the hot-row cache reusable");
            }
        }
    }
}

impl Shared {
    /// Clean shutdown of a store whose handle is shared: a final checkpoint, then the cache
    /// files are marked reusable for that checkpoint.
    pub(crate) fn close(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.checkpoint()?;
        self.mark_cache_reusable()
    }

    /// Marks the cache files reusable at the last checkpoint. Cached rows equal RocksDB's,
    /// which only checkpoints write, so they match that checkpoint whenever the store has not
    /// crashed or been poisoned.
    fn mark_cache_reusable(&self) -> Result<()> {
        let mut st = self.lock_state();
        let lsn = st.checkpoint_lsn;
        st.cache.close(lsn)
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves rows half-updated in memory; the log is the
        // truth, so carrying on serving reads is no worse than the panic itself. Writes are
        // refused because the panic poisoned nothing durable but we cannot vouch for memory.
        self.state.lock().unwrap_or_else(|e| {
            self.poison("a thread panicked while updating rows".into());
            e.into_inner()
        })
    }

    pub(crate) fn table(&self, name: &str) -> Result<Arc<Table>> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_name
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownTable {
                name: name.to_string(),
            })
    }

    fn table_live(&self, id: u32) -> bool {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .contains_key(&id)
    }

    fn poison(&self, reason: String) {
        let mut r = self.poison_reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::error!(%reason, "store poisoned: refusing writes until reopened");
            *r = Some(reason);
        }
        self.poisoned.store(true, Ordering::SeqCst);
        drop(r);
        let _g = self.dur.lock().unwrap_or_else(|e| e.into_inner());
        self.dur_cv.notify_all();
    }

    fn poison_reason(&self) -> Option<String> {
        self.poison_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn poisoned_error(&self) -> StoreError {
        StoreError::Poisoned {
            reason: self.poison_reason().unwrap_or_default(),
        }
    }

    fn check_writable(&self, op: &'static str) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly { op });
        }
        Ok(())
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            Err(self.poisoned_error())
        } else {
            Ok(())
        }
    }

    /// Waits until the log is durable up to `lsn`, syncing it if no other thread is (group
    /// commit: one fsync covers every record written before it started).
    fn wait_durable(&self, lsn: u64) -> Result<()> {
        let mut g = self.dur.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.synced >= lsn {
                return Ok(());
            }
            self.check_poisoned()?;
            if g.syncing {
                g = self.dur_cv.wait(g).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            g.syncing = true;
            drop(g);
            let (file, upto) = {
                let st = self.lock_state();
                (st.log.file(), st.log.last_lsn())
            };
            let started = Instant::now();
            let r = file.sync();
            // A no-op unless the binary installed a recorder (`paramdb serve --metrics-listen`).
            metrics::histogram!("paramdb_fsync_duration_seconds").record(started.elapsed());
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            g = self.dur.lock().unwrap_or_else(|e| e.into_inner());
            g.syncing = false;
            match r {
                Ok(()) => g.synced = g.synced.max(upto),
                Err(e) => {
                    drop(g);
                    self.poison(format!("fsync of the gradient log failed: {e}"));
                    g = self.dur.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
            self.dur_cv.notify_all();
        }
    }

    fn mark_durable(&self, lsn: u64) {
        let mut g = self.dur.lock().unwrap_or_else(|e| e.into_inner());
        g.synced = g.synced.max(lsn);
        self.dur_cv.notify_all();
    }

    fn validate_push(&self, t: &Table, keys: PushKeys<'_>, values: &[f32]) -> Result<u64> {
        let name = || t.spec.name.clone();
        let n = match keys {
            PushKeys::List(k) => k.len() as u64,
            PushKeys::Range { count, .. } => count,
        };
        if n == 0 {
            return Err(StoreError::EmptyRequest { table: name() });
        }
        let bytes = values.len() as u64 * 4
            + if let PushKeys::List(_) = keys {
                n * 8
            } else {
                8
            };
        if bytes > self.opts.max_request_bytes {
            return Err(StoreError::RequestTooLarge {
                bytes,
                limit: self.opts.max_request_bytes,
            });
        }
        if values.len() as u64 != n * t.spec.dim as u64 {
            return Err(StoreError::DimensionMismatch {
                table: name(),
                dim: t.spec.dim,
                keys: n as usize,
                values: values.len(),
            });
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let row = i / t.dim();
            let key = match keys {
                PushKeys::List(k) => k[row],
                PushKeys::Range { start, .. } => start.wrapping_add(row as u64),
            };
            return Err(StoreError::NonFinite {
                table: name(),
                key,
                index: i % t.dim(),
                value: values[i],
            });
        }
        match keys {
            PushKeys::List(k) => {
                let mut sorted = k.to_vec();
                sorted.sort_unstable();
                if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
                    return Err(StoreError::DuplicateKey {
                        table: name(),
                        key: w[0],
                    });
                }
            }
            PushKeys::Range { start, count } => {
                if start.checked_add(count - 1).is_none() {
                    return Err(StoreError::KeyRangeOverflow { start, count });
                }
            }
        }
        Ok(n)
    }

    fn push(
        &self,
        table: &str,
        client: ClientId,
        seq: u64,
        keys: PushKeys<'_>,
        values: &[f32],
    ) -> Result<PushAck> {
        self.check_writable("push")?;
        let t = self.table(table)?;
        let n = self.validate_push(&t, keys, values)?;
        if client != ClientId::ANONYMOUS && seq == 0 {
            return Err(StoreError::InvalidSequence { client: client.0 });
        }
        self.check_poisoned()?;
        let budget = self.opts.checkpoint_dirty_bytes;
        if budget > 0 && self.lock_state().dirty_bytes >= 2 * budget {
            // Pushes outran the background checkpoints: write rows back before adding more,
            // so the dirty layer's memory stays bounded.
            self.checkpoint()?;
        }
        let range_keys: Vec<Key>;
        let key_list: &[Key] = match keys {
            PushKeys::List(k) => k,
            PushKeys::Range { start, count } => {
                range_keys = (start..=start + (count - 1)).collect();
                &range_keys
            }
        };
        let dim = t.dim();

        let lsn = loop {
            // Phase 1: which rows must come from RocksDB? Read them without holding the lock.
            let (generation, missing, mut fetched) = {
                let mut guard = self.lock_state();
                if let Some(ack) = self.duplicate(&guard, client, seq)? {
                    drop(guard);
                    return self.ack_duplicate(ack);
                }
                let st = &mut *guard;
                let dirty = st.dirty.get(&t.id);
                let frozen = st.frozen.as_ref().and_then(|f| f.get(&t.id));
                let mut missing = Vec::new();
                let mut cached = HashMap::new();
                for &k in key_list {
                    if lookup(dirty, frozen, k).is_some() {
                        continue;
                    }
                    match st.cache.get_row(t.id, k) {
                        Some(r) => {
                            cached.insert(k, r);
                        }
                        None => missing.push(k),
                    }
                }
                (st.generation, missing, cached)
            };
            fetched.extend(self.load_rows(&t, &missing)?);

            // Phase 2: log and apply, in LSN order, under the lock.
            let mut guard = self.lock_state();
            let st = &mut *guard;
            if st.generation != generation {
                continue; // a checkpoint finished: fetched rows may be older than RocksDB's
            }
            if !self.table_live(t.id) {
                return Err(StoreError::UnknownTable {
                    name: table.to_string(),
                });
            }
            if let Some(ack) = self.duplicate(st, client, seq)? {
                drop(guard);
                return self.ack_duplicate(ack);
            }
            self.check_poisoned()?;
            let log_keys = match keys {
                PushKeys::List(k) => Ok(k),
                PushKeys::Range { start, .. } => Err(start),
            };
            let (lsn, _) = match st
                .log
                .append_push(client.0, seq, t.id, t.spec.dim, log_keys, values)
            {
                Ok(v) => v,
                Err(e) => {
                    drop(guard);
                    self.poison(format!("writing the gradient log failed: {e}"));
                    return Err(StoreError::io("writing the gradient log", e));
                }
            };
            let frozen = st.frozen.as_ref().and_then(|f| f.get(&t.id));
            let dirty = st.dirty.entry(t.id).or_default();
            let mut added = 0u64;
            for (i, &k) in key_list.iter().enumerate() {
                let row = match dirty.entry(k) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        let base = frozen
                            .and_then(|f| f.get(&k).cloned())
                            .or_else(|| fetched.remove(&k));
                        let base = match base {
                            Some(r) => r,
                            // Dirty when phase 1 looked, frozen-then-flushed since would have
                            // bumped the generation; so this is only reachable after a drop
                            // and re-create race. Read it again rather than guess.
                            None => self
                                .load_rows(&t, &[k])?
                                .remove(&k)
                                .unwrap_or_else(|| Row::initial(&t.spec, k)),
                        };
                        added += base.encoded_len() as u64;
                        v.insert(base)
                    }
                };
                row.apply(&t.spec.rule, &values[i * dim..(i + 1) * dim]);
            }
            if client != ClientId::ANONYMOUS {
                st.dedup.entry(client.0).or_default().mark(seq);
            }
            st.dirty_bytes += added;
            let over = st.log.bytes_appended() - st.log_bytes_at_checkpoint
                >= self.opts.checkpoint_log_bytes
                || (budget > 0 && st.dirty_bytes >= budget);
            drop(guard);
            if over {
                self.wake.notify_all();
            }
            break lsn;
        };
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        self.counters.rows_pushed.fetch_add(n, Ordering::Relaxed);
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        Ok(PushAck {
            lsn,
            duplicate: false,
        })
    }

    /// `Some(lsn)` when `(client, seq)` was applied already: the LSN to be durable before the
    /// retry may be acknowledged (conservatively, everything logged so far).
    fn duplicate(&self, st: &State, client: ClientId, seq: u64) -> Result<Option<u64>> {
        if client == ClientId::ANONYMOUS {
            return Ok(None);
        }
        match st
            .dedup
            .get(&client.0)
            .map_or(Verdict::New, |w| w.check(seq))
        {
            Verdict::New => Ok(None),
            Verdict::Duplicate => Ok(Some(st.log.last_lsn())),
            Verdict::TooOld { oldest } => Err(StoreError::SequenceTooOld {
                client: client.0,
                seq,
                oldest,
            }),
        }
    }

    fn ack_duplicate(&self, lsn: u64) -> Result<PushAck> {
        self.counters
            .duplicate_pushes
            .fetch_add(1, Ordering::Relaxed);
        // The original may still be waiting for its fsync: a retry is acknowledged no sooner.
        if self.opts.sync == SyncPolicy::Sync {
            self.wait_durable(lsn)?;
        }
        Ok(PushAck {
            lsn,
            duplicate: true,
        })
    }

    /// Rows of `keys` from RocksDB, or their initial value when never stored.
    fn load_rows(&self, t: &Table, keys: &[Key]) -> Result<HashMap<Key, Row>> {
        let stored = self.rocks.get_rows(&t.cf, keys)?;
        let mut out = HashMap::with_capacity(keys.len());
        for (&k, v) in keys.iter().zip(stored) {
            out.insert(k, stored_or_initial(t, k, v)?);
        }
        Ok(out)
    }

    fn pull_into(&self, t: &Table, keys: &[Key], out: &mut [f32]) -> Result<()> {
        let dim = t.dim();
        if keys.is_empty() {
            return Err(StoreError::EmptyRequest {
                table: t.spec.name.clone(),
            });
        }
        let bytes = keys.len() as u64 * (8 + 4 * dim as u64);
        if bytes > self.opts.max_request_bytes {
            return Err(StoreError::RequestTooLarge {
                bytes,
                limit: self.opts.max_request_bytes,
            });
        }
        if out.len() != keys.len() * dim {
            return Err(StoreError::DimensionMismatch {
                table: t.spec.name.clone(),
                dim: t.spec.dim,
                keys: keys.len(),
                values: out.len(),
            });
        }
        // Rows in memory (changed or cached) are copied under the lock; a key not in memory
        // now has its latest value in RocksDB, and reading it after the lock can only see
        // something newer.
        let mut missing = Vec::new();
        let (generation, offer) = {
            let mut guard = self.lock_state();
            let st = &mut *guard;
            let dirty = st.dirty.get(&t.id);
            let frozen = st.frozen.as_ref().and_then(|f| f.get(&t.id));
            for (i, &k) in keys.iter().enumerate() {
                let o = &mut out[i * dim..(i + 1) * dim];
                match lookup(dirty, frozen, k) {
                    Some(r) => o.copy_from_slice(r.weights(dim)),
                    None if st.cache.read_weights(t.id, k, o) => {}
                    None => missing.push(i),
                }
            }
            (st.generation, st.cache.has_room_for(t.id))
        };
        if !missing.is_empty() {
            let mk: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
            let stored = self.rocks.get_rows(&t.cf, &mk)?;
            if !offer {
                // No cache for this table: decode just the weights.
                for ((&i, &k), v) in missing.iter().zip(&mk).zip(stored) {
                    let o = &mut out[i * dim..(i + 1) * dim];
                    match v {
                        Some(b) => row::decode_weights_into(&b, &t.spec.rule, t.spec.dim, o)
                            .map_err(|reason| StoreError::CorruptRow {
                                table: t.spec.name.clone(),
                                key: k,
                                reason,
                            })?,
                        None => crate::init::fill(&t.spec.init, t.spec.seed, k, o),
                    }
                }
            } else {
                let mut loaded = Vec::with_capacity(mk.len());
                for ((&i, &k), v) in missing.iter().zip(&mk).zip(stored) {
                    let row = stored_or_initial(t, k, v)?;
                    out[i * dim..(i + 1) * dim].copy_from_slice(row.weights(dim));
                    loaded.push((k, row));
                }
                // Offered to the cache only if no checkpoint rewrote rows since they were read.
                let mut st = self.lock_state();
                if st.generation == generation {
                    for (k, row) in &loaded {
                        st.cache.offer(t.id, *k, row);
                    }
                }
            }
        }
        self.counters.pulls.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rows_pulled
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn table_cfs(&self) -> Vec<String> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .values()
            .map(|t| t.cf.clone())
            .collect()
    }

    fn create_table(&self, spec: TableSpec) -> Result<TableInfo> {
        self.check_writable("create a table")?;
        spec.validate()?;
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.check_poisoned()?;
        let id = {
            let cat = self.catalog.read().unwrap_or_else(|e| e.into_inner());
            if cat.by_name.contains_key(&spec.name) {
                return Err(StoreError::TableExists { name: spec.name });
            }
            cat.next_id
        };
        let cf = format!("t{id}");
        self.rocks.create_cf(&cf)?;
        let mut b = WriteBatch::default();
        let meta = self.rocks.cf(crate::rocks::META_CF)?;
        b.put_cf(
            &meta,
            [META_TABLE_PREFIX, spec.name.as_bytes()].concat(),
            table::encode_entry(id, &spec),
        );
        b.put_cf(&meta, META_NEXT_TABLE, (id + 1).to_le_bytes());
        drop(meta);
        self.rocks.commit(b, &[])?;
        let t = Arc::new(Table {
            id,
            spec: spec.clone(),
            cf,
        });
        // A cache that cannot take the table only costs speed: the table works without it.
        if let Err(e) = self.lock_state().cache.add_table(id, &spec) {
            tracing::warn!(error = %e, table = %spec.name, "table created without a cache");
        }
        let mut cat = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        cat.by_name.insert(spec.name.clone(), t.clone());
        cat.by_id.insert(id, t);
        cat.next_id = id + 1;
        tracing::info!(table = %spec.name, id, dim = spec.dim, rule = %spec.rule, "table created");
        Ok(TableInfo { id, spec })
    }

    fn drop_table(&self, name: &str) -> Result<()> {
        self.check_writable("drop a table")?;
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.check_poisoned()?;
        let t = self.table(name)?;
        // The catalog entry is the commit point: once it is gone, the next open drops the
        // column family if we crash before doing it here, and log records of the table's id
        // are skipped.
        let mut b = WriteBatch::default();
        b.delete_cf(
            &self.rocks.cf(crate::rocks::META_CF)?,
            [META_TABLE_PREFIX, name.as_bytes()].concat(),
        );
        self.rocks.commit(b, &[])?;
        {
            let mut st = self.lock_state();
            let mut cat = self.catalog.write().unwrap_or_else(|e| e.into_inner());
            cat.by_name.remove(name);
            cat.by_id.remove(&t.id);
            st.dirty.remove(&t.id);
            if let Err(e) = st.cache.remove_table(t.id) {
                tracing::warn!(error = %e, table = %name, "could not shrink the cache after a drop");
            }
        }
        self.rocks.drop_cf(&t.cf)?;
        tracing::info!(table = %name, id = t.id, "table dropped");
        Ok(())
    }

    pub(crate) fn checkpoint(&self) -> Result<CheckpointInfo> {
        self.check_writable("checkpoint")?;
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.check_poisoned()?;
        let started = Instant::now();
        let (frozen, lsn, dedup) = {
            let mut st = self.lock_state();
            let lsn = st.log.last_lsn();
            if lsn == st.checkpoint_lsn {
                return Ok(CheckpointInfo {
                    lsn,
                    ..Default::default()
                });
            }
            // Seal the segment so that every segment before the new one is covered by this
            // checkpoint and can be deleted once it is durable.
            match st.log.rotate() {
                Ok(durable) => self.mark_durable(durable),
                Err(e) => {
                    drop(st);
                    self.poison(format!("sealing a log segment failed: {e}"));
                    return Err(StoreError::io("sealing a log segment", e));
                }
            }
            let frozen = Arc::new(std::mem::take(&mut st.dirty));
            st.dirty_bytes = 0;
            st.frozen = Some(frozen.clone());
            (frozen, lsn, st.dedup.clone())
        };

        let result = (|| -> Result<usize> {
            // Reserved up front: growing a batch of hundreds of MB by doubling copies it and
            // faults in fresh pages each time.
            let estimate: usize = frozen
                .values()
                .map(|trows| {
                    trows
                        .values()
                        .next()
                        .map_or(0, |r| trows.len() * (r.encoded_len() + 32))
                })
                .sum();
            let mut b = WriteBatch::with_capacity_bytes(estimate + 4096);
            let mut rows = 0;
            let mut buf = Vec::new();
            let cfs = self.table_cfs();
            for (tid, trows) in frozen.iter() {
                let t = match self
                    .catalog
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .by_id
                    .get(tid)
                {
                    Some(t) => t.clone(),
                    None => continue, // dropped
                };
                let cf = self.rocks.cf(&t.cf)?;
                // In key order: RocksDB's memtable skip list inserts ascending keys without
                // searching from the top each time.
                let mut sorted: Vec<(&Key, &Row)> = trows.iter().collect();
                sorted.sort_unstable_by_key(|(k, _)| **k);
                for (&k, row) in sorted {
                    row.encode(&t.spec.rule, t.spec.dim, &mut buf);
                    b.put_cf(&cf, key_bytes(k), &buf);
                    rows += 1;
                }
            }
            let meta = self.rocks.cf(crate::rocks::META_CF)?;
            b.put_cf(&meta, META_CHECKPOINT, lsn.to_le_bytes());
            for (client, w) in &dedup {
                b.put_cf(
                    &meta,
                    [META_CLIENT_PREFIX, &key_bytes(*client)].concat(),
                    w.encode(),
                );
            }
            drop(meta);
            self.rocks.commit(b, &cfs)?;
            Ok(rows)
        })();
        let rows = match result {
            Ok(r) => r,
            Err(e) => {
                self.poison(format!("checkpoint failed: {e}"));
                return Err(e);
            }
        };

        let removed = {
            let mut guard = self.lock_state();
            let st = &mut *guard;
            // RocksDB now holds the frozen rows: cached copies must match them.
            for (tid, trows) in frozen.iter() {
                for (&k, row) in trows {
                    st.cache.refresh(*tid, k, row);
                }
            }
            st.frozen = None;
            st.generation += 1;
            st.checkpoint_lsn = lsn;
            st.log_bytes_at_checkpoint = st.log.bytes_appended();
            st.last_checkpoint = Instant::now();
            st.log.remove_through(lsn)
        };
        let removed = removed.unwrap_or_else(|e| {
            // Harmless: recovery removes segments a checkpoint covers.
            tracing::warn!(error = %e, "could not delete log segments covered by a checkpoint");
            0
        });
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            lsn,
            rows,
            segments_removed = removed,
            ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        drop(frozen);
        crate::process::release_free_memory();
        Ok(CheckpointInfo {
            lsn,
            rows_written: rows,
            segments_removed: removed,
        })
    }

    fn background_loop(&self) {
        let tick = match self.opts.sync {
            SyncPolicy::Interval(d) => d,
            _ => std::time::Duration::from_millis(200),
        };
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            stop = self
                .wake
                .wait_timeout(stop, tick)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if *stop {
                return;
            }
            drop(stop);
            if self.poisoned.load(Ordering::SeqCst) {
                stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            if let SyncPolicy::Interval(_) = self.opts.sync {
                let last = self.lock_state().log.last_lsn();
                if let Err(e) = self.wait_durable(last) {
                    tracing::error!(error = %e, "interval sync failed");
                }
            }
            let due = {
                let st = self.lock_state();
                let changed = st.log.last_lsn() > st.checkpoint_lsn;
                let bytes = st.log.bytes_appended() - st.log_bytes_at_checkpoint;
                let budget = self.opts.checkpoint_dirty_bytes;
                changed
                    && (bytes >= self.opts.checkpoint_log_bytes
                        || (budget > 0 && st.dirty_bytes >= budget)
                        || self
                            .opts
                            .checkpoint_interval
                            .is_some_and(|i| st.last_checkpoint.elapsed() >= i))
            };
            if due {
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "background checkpoint failed");
                }
            }
            stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A row as stored in RocksDB, or the key's initial row when nothing is stored.
fn stored_or_initial(t: &Table, k: Key, stored: Option<Vec<u8>>) -> Result<Row> {
    match stored {
        Some(b) => {
            Row::decode(&b, &t.spec.rule, t.spec.dim).map_err(|reason| StoreError::CorruptRow {
                table: t.spec.name.clone(),
                key: k,
                reason,
            })
        }
        None => Ok(Row::initial(&t.spec, k)),
    }
}

pub(crate) fn load_catalog(rocks: &Rocks) -> Result<Catalog> {
    let mut cat = Catalog::default();
    for (k, v) in rocks.meta_prefix(META_TABLE_PREFIX)? {
        let (id, spec) = table::decode_entry(&v).map_err(|reason| StoreError::CorruptMeta {
            reason: format!("catalog entry {:?}: {reason}", String::from_utf8_lossy(&k)),
        })?;
        let t = Arc::new(Table {
            id,
            cf: format!("t{id}"),
            spec,
        });
        cat.by_name.insert(t.spec.name.clone(), t.clone());
        cat.by_id.insert(id, t);
    }
    cat.next_id =
        match rocks.meta_get(META_NEXT_TABLE)? {
            Some(v) => u32::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                StoreError::CorruptMeta {
                    reason: "next table id entry is not 4 bytes".into(),
                }
            })?),
            None => 1,
        };
    Ok(cat)
}

/// Applies a segment's logged pushes during recovery, exactly as the live path applied them.
/// Rows are independent, so the work is split across threads by key: each thread owns the
/// rows of its partition (`parts[p]`) and applies their updates in log order, which gives the
/// same bits as a sequential replay.
fn replay_records(
    rocks: &Rocks,
    catalog: &Catalog,
    parts: &mut [Rows],
    dedup: &mut HashMap<u64, SeqWindow>,
    recs: &[Record<'_>],
) -> Result<()> {
    for rec in recs {
        if rec.client != 0 {
            let w = dedup.entry(rec.client).or_default();
            if w.check(rec.seq) != Verdict::New {
                // The writer never logs a duplicate; seeing one means the log disagrees with
                // the checkpointed windows, and applying it would double-count.
                return Err(StoreError::CorruptMeta {
                    reason: format!(
                        "log record LSN {} repeats client {} sequence {}",
                        rec.lsn, rec.client, rec.seq
                    ),
                });
            }
            w.mark(rec.seq);
        }
        if let Some(t) = catalog.by_id.get(&rec.table) {
            if rec.dim != t.spec.dim {
                return Err(StoreError::CorruptMeta {
                    reason: format!(
                        "log record LSN {} has dim {} for table {:?} of dim {}",
                        rec.lsn, rec.dim, t.spec.name, t.spec.dim
                    ),
                });
            }
        }
    }
    let n = parts.len();
    if n == 1 {
        return replay_partition(rocks, catalog, &mut parts[0], recs, 0, 1);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter_mut()
            .enumerate()
            .map(|(p, rows)| {
                std::thread::Builder::new()
                    .name(format!("paramdb-replay-{p}"))
                    .spawn_scoped(s, move || {
                        replay_partition(rocks, catalog, rows, recs, p, n)
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| StoreError::io("starting replay threads", e))?;
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(StoreError::CorruptMeta {
                    reason: "a replay thread panicked".into(),
                })
            })
        })
    })
}

/// Which of `n` replay partitions owns `key`.
fn partition(key: Key, n: usize) -> usize {
    ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % n as u64) as usize
}

fn replay_partition(
    rocks: &Rocks,
    catalog: &Catalog,
    rows: &mut Rows,
    recs: &[Record<'_>],
    p: usize,
    n: usize,
) -> Result<()> {
    let mut scratch = Vec::new();
    let mut missing: Vec<(usize, Key)> = Vec::new();
    for rec in recs {
        let Some(t) = catalog.by_id.get(&rec.table) else {
            continue; // table dropped after this push
        };
        scratch.resize(t.dim(), 0.0);
        let rows = rows.entry(t.id).or_default();
        // Rows already in memory are updated in place (one lookup); the others are read from
        // RocksDB in one batch and updated after. Keys within a record are distinct, so each
        // row still sees its updates in log order.
        missing.clear();
        for i in 0..rec.rows as usize {
            let k = rec.key(i);
            if partition(k, n) != p {
                continue;
            }
            match rows.get_mut(&k) {
                Some(row) => {
                    rec.values_into(i, &mut scratch);
                    row.apply(&t.spec.rule, &scratch);
                }
                None => missing.push((i, k)),
            }
        }
        if missing.is_empty() {
            continue;
        }
        let keys: Vec<Key> = missing.iter().map(|m| m.1).collect();
        let stored = rocks.get_rows(&t.cf, &keys)?;
        for (&(i, k), v) in missing.iter().zip(stored) {
            let mut row = stored_or_initial(t, k, v)?;
            rec.values_into(i, &mut scratch);
            row.apply(&t.spec.rule, &scratch);
            rows.insert(k, row);
        }
    }
    Ok(())
}
