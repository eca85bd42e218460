//! Opening a store: RocksDB at its last checkpoint, the catalog and the exactly-once windows,
//! the hot-row cache, then the log replayed after the checkpoint into the state machine, and
//! a new log segment to write. Recovery validates everything before it changes anything on
//! disk (see `wal::recovery`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rocksdb::WriteBatch;

use crate::cache::RowCache;
use crate::catalog::STORE_FORMAT_VERSION;
use crate::catalog::{self, is_table_cf, META_CHECKPOINT, META_CLIENT_PREFIX, META_FORMAT};
use crate::dedup::SeqWindow;
use crate::error::{OpenError, StorageError};
use crate::fault::RocksFaults;
use crate::log::Log;
use crate::options::StoreOptions;
use crate::poison::Poison;
use crate::read_path::HotRows;
use crate::rocks::Rocks;
use crate::state_machine::{Dedup, Replay};
use crate::store::{CheckpointMark, Core, Counters, Stop, Store};
use crate::wal::recovery;
use crate::wal::writer::LogWriter;
use crate::wal::{LogFs, ReadOnlyFs, RecoveryMode, StdFs};

impl Store {
    /// Opens (or creates) the store in `dir`, recovering from the log.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, OpenError> {
        Self::open_with_fs(dir, opts, Arc::new(StdFs))
    }

    /// Like `open`, with the log's file I/O going through `fs` (fault injection in tests).
    pub fn open_with_fs(
        dir: impl AsRef<Path>,
        opts: StoreOptions,
        fs: Arc<dyn LogFs>,
    ) -> Result<Store, OpenError> {
        open(dir.as_ref(), opts, fs, false, RocksFaults::none())
    }

    /// Like `open_with_fs`, with RocksDB reads and commits failing as `faults` says.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn open_with_faults(
        dir: impl AsRef<Path>,
        opts: StoreOptions,
        fs: Arc<dyn LogFs>,
        faults: Arc<RocksFaults>,
    ) -> Result<Store, OpenError> {
        open(dir.as_ref(), opts, fs, false, faults)
    }

    /// Opens the store in `dir` for reading only, while a server may be running on it: RocksDB
    /// as a secondary instance, the log read (never written) and replayed in memory, so reads
    /// see every record the log holds. Nothing under `dir` is created, locked or changed.
    /// Writes, table changes and checkpoints are refused (`ReadOnly`); the hot-row cache is
    /// not used.
    ///
    /// A checkpoint of the running server may delete the log segments this open needs between
    /// its reading of RocksDB and of the log; such an open is retried with RocksDB caught up.
    pub fn open_read_only(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store, OpenError> {
        let dir = dir.as_ref();
        let not_a_store = |reason: &str| StorageError::NotAStore {
            path: dir.to_path_buf(),
            reason: reason.into(),
        };
        if !dir.is_dir() {
            return Err(not_a_store("no such directory").into());
        }
        if !dir.join("rocksdb").join("CURRENT").is_file() {
            return Err(not_a_store("no rocksdb/CURRENT inside").into());
        }
        let opts = StoreOptions {
            background: false,
            cache_bytes: 0,
            recovery: RecoveryMode::Strict,
            ..opts
        };
        let mut attempt = 0;
        loop {
            let r = open(
                dir,
                opts.clone(),
                Arc::new(ReadOnlyFs),
                true,
                RocksFaults::none(),
            );
            match r {
                // A segment listed, then deleted before it was read, is the same race.
                Err(OpenError::Storage(e)) if attempt < 20 && e.is_raced_by_checkpoint() => {
                    tracing::debug!(error = %e, "log changed under a read-only open; retrying");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20 * attempt));
                }
                r => return r,
            }
        }
    }
}

fn open(
    dir: &Path,
    opts: StoreOptions,
    fs: Arc<dyn LogFs>,
    read_only: bool,
    faults: Arc<RocksFaults>,
) -> Result<Store, OpenError> {
    let started = Instant::now();
    let (rocks, catalog, checkpoint_lsn, dedup) = open_rocks(dir, &opts, read_only, faults)?;
    if !read_only {
        crate::import::remove_stale_staging(dir);
        crate::backup::remove_stale_staging(dir);
    }
    let cache = if read_only {
        RowCache::disabled()
    } else {
        let tables: Vec<_> = catalog
            .by_id
            .values()
            .map(|t| (t.id, t.spec.clone()))
            .collect();
        RowCache::open(
            &dir.join("cache"),
            opts.cache_bytes,
            &tables,
            checkpoint_lsn,
        )?
    };

    // Replay the log after the checkpoint into the state machine, then start a new segment.
    let wal_dir = dir.join("wal");
    fs.create_dir_all(&wal_dir)
        .map_err(|e| StorageError::io(format!("creating {}", wal_dir.display()), e))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let clock = load_clock(&rocks)?;
    let lives = load_lives(&rocks, &catalog, opts.admission_counters)?;
    let history = load_history(&rocks, checkpoint_lsn)?;
    for t in catalog.by_id.values() {
        // Safe from the start: every record after the checkpoint is at or past the
        // history's anchor.
        if let Some(f) = rocks.filter(&t.cf) {
            let c = history.drop_cutoff(t.id);
            f.cutoff.store(c.time, std::sync::atomic::Ordering::Relaxed);
            f.evict_lsn
                .store(c.lsn, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let mut replay = Replay::new(threads, dedup, lives, opts.admission_counters);
    let report = recovery::recover(&fs, &wal_dir, checkpoint_lsn, opts.recovery, &mut |recs| {
        replay.apply(&rocks, &catalog, recs)
    })?;
    let last_time = replay.last_time.max(clock);
    let note = match replay.last_note.take() {
        Some(n) => Some(n),
        None => load_note(&rocks)?,
    };
    let state = replay.finish();
    let writer = LogWriter::start(
        fs.clone(),
        &wal_dir,
        report.live_segments.clone(),
        report.next_segment,
        report.next_lsn,
        opts.max_segment_bytes,
        last_time,
    )
    .map_err(|e| StorageError::io("starting a log segment", e))?;
    tracing::info!(
        dir = %dir.display(),
        checkpoint_lsn,
        replayed = report.records_replayed,
        log_bytes = report.bytes_read,
        last_lsn = writer.last_lsn(),
        ms = started.elapsed().as_millis() as u64,
        "store opened"
    );
    let log_bytes = writer.bytes_appended();
    let core = Arc::new(Core {
        dir: dir.to_path_buf(),
        read_only,
        rocks,
        catalog: RwLock::new(catalog),
        log: Log::new(writer, &wal_dir),
        state,
        cache: Mutex::new(HotRows {
            rows: cache,
            generation: 0,
        }),
        poison: Poison::default(),
        ddl: Mutex::new(()),
        mark: Mutex::new(CheckpointMark {
            lsn: checkpoint_lsn,
            log_bytes,
            at: Instant::now(),
        }),
        stop: Stop::default(),
        counters: Counters::default(),
        time: std::sync::atomic::AtomicU32::new(last_time),
        fence: Default::default(),
        history: Mutex::new(history),
        note: Mutex::new(note),
        opts,
    });
    if !report.lost.is_empty() && !read_only {
        // Salvage moved records out of the log; make what was kept durable without it.
        core.checkpoint().map_err(|e| match e {
            crate::error::CheckpointError::Storage(s) => OpenError::Storage(s),
            other => OpenError::Storage(StorageError::CorruptMeta {
                reason: other.to_string(),
            }),
        })?;
    }
    start(core, report)
}

/// RocksDB at its last checkpoint: the database, its catalog (with column families left by
/// an interrupted table create or drop dropped), the checkpoint LSN and the exactly-once
/// windows saved with it.
fn open_rocks(
    dir: &Path,
    opts: &StoreOptions,
    read_only: bool,
    faults: Arc<RocksFaults>,
) -> Result<(Rocks, crate::catalog::Catalog, u64, Dedup), OpenError> {
    let (rocks, cf_names) = if read_only {
        Rocks::open_secondary(&dir.join("rocksdb"), opts.block_cache_bytes, faults)?
    } else {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        Rocks::open(&dir.join("rocksdb"), opts.block_cache_bytes, faults)?
    };
    check_format(&rocks, dir, read_only)?;
    let catalog = catalog::load(&rocks)?;
    // Column families without a catalog entry are left over from a create or drop that
    // crashed half-way; the catalog entry is the commit point.
    for name in &cf_names {
        if is_table_cf(name) && !read_only && !catalog.by_name.values().any(|t| &t.cf == name) {
            tracing::info!(cf = %name, "dropping column family of an unfinished table create/drop");
            rocks.drop_cf(name)?;
        }
    }
    let checkpoint_lsn =
        match rocks.meta_get(META_CHECKPOINT)? {
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                StorageError::CorruptMeta {
                    reason: "checkpoint LSN entry is not 8 bytes".into(),
                }
            })?),
            None => 0,
        };
    let dedup = load_dedup(&rocks)?;
    Ok((rocks, catalog, checkpoint_lsn, dedup))
}

/// The store handle, with its background thread running unless the options say not to.
fn start(core: Arc<Core>, recovery: crate::wal::RecoveryReport) -> Result<Store, OpenError> {
    let background = if core.opts.background && !core.read_only {
        let c = core.clone();
        Some(
            std::thread::Builder::new()
                .name("paramdb-store".into())
                .spawn(move || c.background_loop())
                .map_err(|e| StorageError::io("starting the store thread", e))?,
        )
    } else {
        None
    };
    Ok(Store {
        core,
        background,
        recovery,
        crashed: false,
    })
}

/// Checks the store's format version, writing it into a new store.
fn check_format(rocks: &Rocks, dir: &Path, read_only: bool) -> Result<(), StorageError> {
    match rocks.meta_get(META_FORMAT)? {
        Some(v) => {
            let found = v
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| StorageError::CorruptMeta {
                    reason: "format version entry is not 4 bytes".into(),
                })?;
            if found > STORE_FORMAT_VERSION {
                return Err(StorageError::UnsupportedFormat {
                    what: format!("store at {}", dir.display()),
                    found,
                    supported: STORE_FORMAT_VERSION,
                });
            }
            Ok(())
        }
        None if read_only => Err(StorageError::NotAStore {
            path: dir.to_path_buf(),
            reason: "its RocksDB has no paramdb format entry".into(),
        }),
        None => {
            let mut b = WriteBatch::default();
            b.put_cf(
                &rocks.cf(crate::rocks::META_CF)?,
                META_FORMAT,
                STORE_FORMAT_VERSION.to_le_bytes(),
            );
            rocks.commit(b, &[])
        }
    }
}

/// The time of the last record the last checkpoint covers (0 before any).
fn load_clock(rocks: &Rocks) -> Result<u32, StorageError> {
    match rocks.meta_get(catalog::META_CLOCK)? {
        Some(v) => Ok(u32::from_le_bytes(v.as_slice().try_into().map_err(
            |_| StorageError::CorruptMeta {
                reason: "clock entry is not 4 bytes".into(),
            },
        )?)),
        None => Ok(0),
    }
}

/// The last note the checkpoint covers.
fn load_note(rocks: &Rocks) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
    match rocks.meta_get(catalog::META_NOTE)? {
        Some(v) if v.len() >= 8 => {
            let lsn = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
            Ok(Some((lsn, v[8..].to_vec())))
        }
        Some(_) => Err(StorageError::CorruptMeta {
            reason: "note entry is shorter than its LSN".into(),
        }),
        None => Ok(None),
    }
}

/// The cut-off history the last checkpoint saved; a store from before it starts one at its
/// checkpoint.
fn load_history(rocks: &Rocks, checkpoint_lsn: u64) -> Result<crate::gone::History, StorageError> {
    match rocks.meta_get(crate::gone::META_HISTORY)? {
        Some(v) => crate::gone::History::decode(&v).map_err(|reason| StorageError::CorruptMeta {
            reason: format!("cut-off history: {reason}"),
        }),
        None => Ok(crate::gone::History::starting(checkpoint_lsn)),
    }
}

/// Every table's lifecycle state as the last checkpoint saved it (no policies for a table
/// created before lifecycle policies existed).
fn load_lives(
    rocks: &Rocks,
    cat: &crate::catalog::Catalog,
    counters: usize,
) -> Result<crate::state_machine::Lives, StorageError> {
    let mut lives = HashMap::new();
    for t in cat.by_id.values() {
        let life = match rocks.meta_get(&catalog::life_key(t.id))? {
            Some(v) => {
                crate::lifecycle::Life::decode(&v).map_err(|reason| StorageError::CorruptMeta {
                    reason: format!("lifecycle state of table {:?}: {reason}", t.spec.name),
                })?
            }
            None => crate::lifecycle::Life::new(Default::default(), 0, counters),
        };
        lives.insert(t.id, life);
    }
    Ok(lives)
}

/// The exactly-once windows the last checkpoint saved.
fn load_dedup(rocks: &Rocks) -> Result<Dedup, StorageError> {
    let mut dedup = HashMap::new();
    for (k, v) in rocks.meta_prefix(META_CLIENT_PREFIX)? {
        let id = crate::rocks::key_from(&k[META_CLIENT_PREFIX.len()..]);
        match (id, SeqWindow::decode(&v)) {
            (Some(id), Some(w)) => {
                dedup.insert(id, w);
            }
            _ => {
                return Err(StorageError::CorruptMeta {
                    reason: "unreadable client sequence window".into(),
                })
            }
        }
    }
    Ok(dedup)
}
