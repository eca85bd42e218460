//! Everything the store asks of RocksDB: one column family per table (keys big-endian `u64`,
//! values in the row format), a `meta` column family (catalog, checkpoint LSN, dedup windows),
//! and durable atomic commits without RocksDB's own WAL.
//!
//! Row writes never use RocksDB's WAL: the gradient log is the write-ahead log. A commit
//! writes one batch with the WAL disabled and then flushes every column family with
//! `atomic_flush`, so a checkpoint is durable and all-or-nothing across tables.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, BoundColumnFamily, Cache, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, FlushOptions, MultiThreaded, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::error::{Result, StoreError};

pub(crate) const META_CF: &str = "meta";

type Db = DBWithThreadMode<MultiThreaded>;

pub(crate) struct Rocks {
    db: Db,
    cf_opts: Options,
}

impl std::fmt::Debug for Rocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rocks")
            .field("path", &self.db.path())
            .finish()
    }
}

/// Big-endian key bytes: byte order is numeric order, so iteration is key order.
pub(crate) fn key_bytes(k: u64) -> [u8; 8] {
    k.to_be_bytes()
}

pub(crate) fn key_from(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

impl Rocks {
    /// Opens (or creates) the database at `path` with every column family it has.
    pub(crate) fn open(path: &Path, block_cache_bytes: usize) -> Result<(Rocks, Vec<String>)> {
        let cache = Cache::new_lru_cache(block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(false);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        // f32 rows are close to incompressible; compression would cost CPU for nothing.
        cf_opts.set_compression_type(DBCompressionType::None);

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
        let descs = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_opts.clone()));
        let db = Db::open_cf_descriptors(&opts, path, descs)
            .map_err(|e| StoreError::rocks("open", e))?;
        Ok((Rocks { db, cf_opts }, names))
    }

    pub(crate) fn cf(&self, name: &str) -> Result<Arc<BoundColumnFamily<'_>>> {
        self.db.cf_handle(name).ok_or_else(|| StoreError::Rocks {
            op: "column family",
            message: format!("column family {name:?} is missing"),
        })
    }

    pub(crate) fn create_cf(&self, name: &str) -> Result<()> {
        self.db
            .create_cf(name, &self.cf_opts)
            .map_err(|e| StoreError::rocks("create column family", e))
    }

    pub(crate) fn drop_cf(&self, name: &str) -> Result<()> {
        self.db
            .drop_cf(name)
            .map_err(|e| StoreError::rocks("drop column family", e))
    }

    pub(crate) fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let cf = self.cf(META_CF)?;
        self.db
            .get_cf(&cf, key)
            .map_err(|e| StoreError::rocks("read meta", e))
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
        it.status().map_err(|e| StoreError::rocks("scan meta", e))?;
        Ok(out)
    }

    /// Stored values of `keys` in the column family `cf`, in the same order.
    pub(crate) fn get_rows(&self, cf: &str, keys: &[u64]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
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
                .map_err(|e| StoreError::rocks("read rows", e))?
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
            let key = key_from(k).ok_or_else(|| StoreError::CorruptMeta {
                reason: format!("row key of {} bytes in column family", k.len()),
            })?;
            out.push((key, v.to_vec()));
            it.next();
        }
        it.status().map_err(|e| StoreError::rocks("scan rows", e))?;
        Ok(out)
    }

    /// Writes `batch` without RocksDB's WAL, then flushes the column families `cfs` (and meta)
    /// atomically and waits: when this returns, the batch is durable, all of it or none.
    pub(crate) fn commit(&self, batch: WriteBatch, cfs: &[String]) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| StoreError::rocks("write batch", e))?;
        let mut handles = vec![self.cf(META_CF)?];
        for n in cfs {
            handles.push(self.cf(n)?);
        }
        let refs: Vec<&Arc<BoundColumnFamily<'_>>> = handles.iter().collect();
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        self.db
            .flush_cfs_opt(&refs, &fo)
            .map_err(|e| StoreError::rocks("flush", e))
    }
}
