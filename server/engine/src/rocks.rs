//! Everything the store asks of RocksDB: one column family per table (keys big-endian `u64`,
//! values in the row format), a `meta` column family (catalog, checkpoint LSN, dedup windows),
//! and durable atomic commits without RocksDB's own WAL.
//!
//! Row writes never use RocksDB's WAL: the gradient log is the write-ahead log. A commit
//! writes one batch with the WAL disabled and then flushes every column family with
//! `atomic_flush`, so a checkpoint is durable and all-or-nothing across tables.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, FlushOptions, IngestExternalFileOptions, MultiThreaded, Options, ReadOptions,
    SstFileWriter, WriteBatch, WriteBufferManager, WriteOptions,
};

use crate::error::{OpenError, StorageError};
use crate::fault::RocksFaults;

type Result<T, E = StorageError> = std::result::Result<T, E>;

pub(crate) const META_CF: &str = "meta";

type Db = DBWithThreadMode<MultiThreaded>;

pub(crate) struct Rocks {
    db: Db,
    cf_opts: Options,
    faults: Arc<RocksFaults>,
    /// Each table column family's compaction filter state, by column family name, with the
    /// options of the column families created since the open: they own the filter, and
    /// RocksDB keeps only the open's options alive. Declared after `db`, so dropped after it.
    filters: Mutex<Filters>,
    /// A secondary instance's own directory (its info log). Declared after `db`, so it is
    /// removed only once the database is closed.
    _secondary: Option<tempfile::TempDir>,
}

/// One SST file of a column family, as `live_files` reports it.
#[derive(Clone, Debug)]
pub(crate) struct SstFile {
    pub(crate) cf: String,
    pub(crate) size: u64,
    pub(crate) entries: u64,
}

impl std::fmt::Debug for Rocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rocks")
            .field("path", &self.db.path())
            .finish()
    }
}

/// The compaction filters by column family name, with the options that own them (see
/// `Rocks::filters`).
type Filters = HashMap<String, (Arc<ExpiryFilter>, Option<Options>)>;

/// What a table's compaction filter drops: rows of a time below `cutoff` (expired) and rows
/// last pushed before LSN `evict_lsn` (evicted). The store raises `cutoff` after each checkpoint to the cut-off as of that
/// checkpoint's last record, which every later record is at or past, so a row the filter
/// drops is one that every later read, push and replay treats as absent anyway.
#[derive(Debug, Default)]
pub(crate) struct ExpiryFilter {
    pub(crate) cutoff: AtomicU32,
    /// Rows last pushed below this LSN were evicted (and counted when they were).
    pub(crate) evict_lsn: AtomicU64,
    /// Expired rows the filter dropped.
    pub(crate) expired: AtomicU64,
}

impl ExpiryFilter {
    fn decide(&self, value: &[u8]) -> rocksdb::compaction_filter::Decision {
        use rocksdb::compaction_filter::Decision;
        let (cutoff, evict) = (
            self.cutoff.load(Ordering::Relaxed),
            self.evict_lsn.load(Ordering::Relaxed),
        );
        if cutoff == 0 && evict == 0 {
            return Decision::Keep;
        }
        if crate::row::stored_lsn(value) < evict {
            return Decision::Remove;
        }
        if crate::row::stored_time(value) < cutoff {
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Decision::Remove;
        }
        Decision::Keep
    }
}

/// Big-endian key bytes: byte order is numeric order, so iteration is key order.
pub(crate) fn key_bytes(k: u64) -> [u8; 8] {
    k.to_be_bytes()
}

/// Installs `f` as the compaction filter of a column family's options.
fn with_filter(o: &mut Options, f: Arc<ExpiryFilter>) {
    o.set_compaction_filter(
        "paramdb-expiry",
        move |_level: u32, _key: &[u8], value: &[u8]| f.decide(value),
    );
}

/// Adds the deletion of every key in `range` to `batch` (one range tombstone).
pub(crate) fn delete_range(
    batch: &mut WriteBatch,
    cf: &Arc<BoundColumnFamily<'_>>,
    range: paramdb_types::KeyRange,
) {
    batch.delete_range_cf(cf, key_bytes(range.start), key_bytes(range.end));
}

/// A table file being written for an ingest.
pub(crate) struct TableFile<'a>(SstFileWriter<'a>);

impl TableFile<'_> {
    pub(crate) fn put(&mut self, key: u64, value: &[u8]) -> Result<()> {
        self.0
            .put(key_bytes(key), value)
            .map_err(|e| StorageError::rocks("write a table file", e))
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        self.0
            .finish()
            .map_err(|e| StorageError::rocks("finish a table file", e))
    }
}

pub(crate) fn key_from(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl Rocks {
    /// Options under which RocksDB's memory stays within `block_cache_bytes`: data blocks,
    /// index and filter blocks, and memtables (through a write buffer manager that charges
    /// them to the cache) all share the one block cache.
    fn cf_options(block_cache_bytes: usize) -> Options {
        let cache = Cache::new_lru_cache(block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        // Index and filter blocks grow with the data (about 1% of it): in the cache, they
        // count against its budget instead of adding to it. Level 0's stay pinned, as they are
        // consulted on every read.
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        // f32 rows are close to incompressible; compression would cost CPU for nothing.
        cf_opts.set_compression_type(DBCompressionType::None);
        // A buffer size of 0: no flushes of its own (checkpoints flush), only the charging.
        cf_opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
            0, false, cache,
        ));
        cf_opts
    }

    /// Opens (or creates) the database at `path` with every column family it has.
    pub(crate) fn open(
        path: &Path,
        block_cache_bytes: usize,
        faults: Arc<RocksFaults>,
    ) -> Result<(Rocks, Vec<String>), OpenError> {
        let cf_opts = Self::cf_options(block_cache_bytes);
        let mut opts = cf_opts.clone();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Writes skip RocksDB's WAL (the gradient log is ours), so flushes must be atomic
        // across column families for a checkpoint to be all-or-nothing.
        opts.set_atomic_flush(true);
        opts.set_max_background_jobs(2);
        opts.set_paranoid_checks(true);

        let mut names = match Db::list_cf(&opts, path) {
            Ok(names) => names,
            Err(_) => vec!["default".to_string()],
        };
        if !names.iter().any(|n| n == META_CF) {
            names.push(META_CF.to_string());
        }
        let mut filters = HashMap::new();
        let descs: Vec<ColumnFamilyDescriptor> = names
            .iter()
            .map(|n| {
                let mut o = cf_opts.clone();
                if crate::catalog::is_table_cf(n) {
                    let f = Arc::new(ExpiryFilter::default());
                    with_filter(&mut o, f.clone());
                    filters.insert(n.clone(), (f, None));
                }
                ColumnFamilyDescriptor::new(n, o)
            })
            .collect();
        let db = Db::open_cf_descriptors(&opts, path, descs).map_err(|e| {
            // RocksDB says "IO error: While lock file: …/LOCK: Resource temporarily unavailable".
            if e.as_ref().contains("LOCK") {
                OpenError::InUse {
                    path: path.parent().unwrap_or(path).to_path_buf(),
                    source: e,
                }
            } else {
                StorageError::rocks("open", e).into()
            }
        })?;
        Ok((
            Rocks {
                db,
                cf_opts,
                faults,
                filters: Mutex::new(filters),
                _secondary: None,
            },
            names,
        ))
    }

    /// Opens the database at `path` as a RocksDB *secondary* instance: it reads the files of a
    /// primary that may be running, takes no lock and writes nothing under `path` (its own info
    /// log goes to a temporary directory). Every table file is opened at once
    /// (`max_open_files = -1`), so files the primary's compactions delete afterwards stay
    /// readable through their open descriptors.
    pub(crate) fn open_secondary(
        path: &Path,
        block_cache_bytes: usize,
        faults: Arc<RocksFaults>,
    ) -> Result<(Rocks, Vec<String>)> {
        let cf_opts = Self::cf_options(block_cache_bytes);
        let mut opts = cf_opts.clone();
        opts.set_max_open_files(-1);
        opts.set_paranoid_checks(true);
        let names =
            Db::list_cf(&opts, path).map_err(|e| StorageError::rocks("list column families", e))?;
        let secondary = tempfile::Builder::new()
            .prefix("paramdb-secondary-")
            .tempdir()
            .map_err(|e| StorageError::io("creating a directory for a RocksDB secondary", e))?;
        let descs = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        let db = Db::open_cf_descriptors_as_secondary(&opts, path, secondary.path(), descs)
            .map_err(|e| StorageError::rocks("open as secondary", e))?;
        Ok((
            Rocks {
                db,
                cf_opts,
                faults,
                filters: Mutex::new(HashMap::new()),
                _secondary: Some(secondary),
            },
            names,
        ))
    }

    /// The SST files of every column family.
    pub(crate) fn sst_files(&self) -> Result<Vec<SstFile>> {
        let files = self
            .db
            .live_files()
            .map_err(|e| StorageError::rocks("list live files", e))?;
        Ok(files
            .into_iter()
            .map(|f| SstFile {
                cf: f.column_family_name,
                size: f.size as u64,
                entries: f.num_entries,
            })
            .collect())
    }

    /// RocksDB's estimate of the keys in `cf` (it counts overwritten versions not yet
    /// compacted away).
    pub(crate) fn estimate_keys(&self, cf: &str) -> Result<Option<u64>> {
        let cf = self.cf(cf)?;
        self.db
            .property_int_value_cf(&cf, "rocksdb.estimate-num-keys")
            .map_err(|e| StorageError::rocks("read a property", e))
    }

    /// The first and last stored keys of `cf`, if it has rows.
    pub(crate) fn key_bounds(&self, cf: &str) -> Result<Option<(u64, u64)>> {
        let cf = self.cf(cf)?;
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek_to_first();
        let first = it.key().and_then(key_from);
        it.seek_to_last();
        let last = it.key().and_then(key_from);
        it.status()
            .map_err(|e| StorageError::rocks("scan rows", e))?;
        Ok(first.zip(last))
    }

    /// Reads every entry of `cf` with block checksums verified and without filling the block
    /// cache, calling `each` with every key and value. Stops at the first error, which RocksDB
    /// words with the file and offset.
    pub(crate) fn verify_cf(&self, cf: &str, each: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let cf = self.cf(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_verify_checksums(true);
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek_to_first();
        let mut n = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            each(k, v);
            n += 1;
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks("read with checksums", e))?;
        Ok(n)
    }

    /// Compacts every column family into its bottom level (drops overwritten row versions).
    pub(crate) fn compact(&self, cfs: &[String]) -> Result<()> {
        for n in cfs.iter().map(String::as_str).chain([META_CF]) {
            let cf = self.cf(n)?;
            self.db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// A new table file at `path`, written with the column families' options, for
    /// `ingest`. Keys must be put in increasing order.
    pub(crate) fn table_file(&self, path: &Path) -> Result<TableFile<'_>> {
        let w = SstFileWriter::create(&self.cf_opts);
        w.open(path)
            .map_err(|e| StorageError::rocks("create a table file", e))?;
        Ok(TableFile(w))
    }

    /// Ingests `files` (from `table_file`) into column family `cf` in one atomic step, moving
    /// them (hard links) rather than copying. They may overlap each other and the data.
    pub(crate) fn ingest(&self, cf: &str, files: &[std::path::PathBuf]) -> Result<()> {
        let cf = self.cf(cf)?;
        let mut o = IngestExternalFileOptions::default();
        o.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(&cf, &o, files.to_vec())
            .map_err(|e| StorageError::rocks("ingest table files", e))
    }

    pub(crate) fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::CorruptMeta {
                reason: format!("column family {name:?} is missing"),
            })
    }

    pub(crate) fn create_cf(&self, name: &str) -> Result<()> {
        let mut o = self.cf_opts.clone();
        let f = Arc::new(ExpiryFilter::default());
        with_filter(&mut o, f.clone());
        self.db
            .create_cf(name, &o)
            .map_err(|e| StorageError::rocks("create column family", e))?;
        self.filters_lock().insert(name.to_string(), (f, Some(o)));
        Ok(())
    }

    pub(crate) fn drop_cf(&self, name: &str) -> Result<()> {
        self.db
            .drop_cf(name)
            .map_err(|e| StorageError::rocks("drop column family", e))?;
        // The options (and the filter they own) stay until the database closes: a compaction
        // of the dropped family may still be running.
        Ok(())
    }

    fn filters_lock(&self) -> std::sync::MutexGuard<'_, Filters> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compaction filter of table column family `cf` (none for a read-only open).
    pub(crate) fn filter(&self, cf: &str) -> Option<Arc<ExpiryFilter>> {
        self.filters_lock().get(cf).map(|f| f.0.clone())
    }

    pub(crate) fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(META_CF)?;
        self.db
            .get_cf(&cf, key)
            .map_err(|e| StorageError::rocks("read meta", e))
    }

    /// Every meta entry whose key starts with `prefix`.
    pub(crate) fn meta_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.cf(META_CF)?;
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek(prefix);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks("scan meta", e))?;
        Ok(out)
    }

    /// Every meta entry with a key in `[start, end)`.
    pub(crate) fn meta_between(&self, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.cf(META_CF)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(end.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek(start);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks("scan meta", e))?;
        Ok(out)
    }

    /// Calls `each` with every stored row of `cf` in `range`, in key order, without copying.
    pub(crate) fn for_each_row(
        &self,
        cf: &str,
        range: paramdb_types::KeyRange,
        each: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<()> {
        self.faults.check_read()?;
        let cf = self.cf(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(key_bytes(range.end).to_vec());
        // A one-off pass over the table: its blocks are not worth caching.
        ro.fill_cache(false);
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek(key_bytes(range.start));
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let key = key_from(k).ok_or_else(|| StorageError::CorruptMeta {
                reason: format!("row key of {} bytes in column family", k.len()),
            })?;
            each(key, v);
            it.next();
        }
        it.status().map_err(|e| StorageError::rocks("scan rows", e))
    }

    /// Stored values of `keys` in the column family `cf`, in the same order.
    pub(crate) fn get_rows(&self, cf: &str, keys: &[u64]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.faults.check_read()?;
        let cf = self.cf(cf)?;
        // Sorted input lets RocksDB skip sorting the batch itself.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| keys[i]);
        let kb: Vec<[u8; 8]> = order.iter().map(|&i| key_bytes(keys[i])).collect();
        let mut out = vec![None; keys.len()];
        for (&i, r) in order
            .iter()
            .zip(self.db.batched_multi_get_cf(&cf, kb.iter(), true))
        {
            out[i] = r
                .map_err(|e| StorageError::rocks("read rows", e))?
                .map(|s| s.to_vec());
        }
        Ok(out)
    }

    /// Up to `max` stored rows of `cf` with keys in `[start, end)`, in key order.
    pub(crate) fn range(
        &self,
        cf: &str,
        start: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let cf = self.cf(cf)?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(key_bytes(end).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(&cf, ro);
        it.seek(key_bytes(start));
        let mut out = Vec::new();
        while out.len() < max {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let key = key_from(k).ok_or_else(|| StorageError::CorruptMeta {
                reason: format!("row key of {} bytes in column family", k.len()),
            })?;
            out.push((key, v.to_vec()));
            it.next();
        }
        it.status()
            .map_err(|e| StorageError::rocks("scan rows", e))?;
        Ok(out)
    }

    /// A RocksDB checkpoint in `dir` (which must not exist): hard links to the table files,
    /// copies of the rest.
    pub(crate) fn checkpoint_to(&self, dir: &Path) -> Result<()> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| StorageError::rocks("checkpoint", e))
    }

    /// Writes `batch` without RocksDB's WAL, then flushes the column families `cfs` (and meta)
    /// atomically and waits: when this returns, the batch is durable, all of it or none.
    pub(crate) fn commit(&self, batch: WriteBatch, cfs: &[String]) -> Result<()> {
        self.faults.check_commit()?;
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StorageError::rocks("write batch", e))?;
        let mut handles = vec![self.cf(META_CF)?];
        for n in cfs {
            handles.push(self.cf(n)?);
        }
        let refs: Vec<&Arc<BoundColumnFamily<'_>>> = handles.iter().collect();
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.db
            .flush_cfs_opt(&refs, &fo)
            .map_err(|e| StorageError::rocks("flush", e))
    }
}
