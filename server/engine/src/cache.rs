//! The hot-row cache: each table's most used rows (weights, optimizer state and update count)
//! in fixed-size slots of a memory-mapped file, in front of RocksDB.
//!
//! The cache holds *clean* rows only: a cached row is byte for byte what RocksDB holds for
//! its key. Rows changed since the last checkpoint live in the store's dirty layer, which
//! lookups consult first; a checkpoint refreshes the slots of the rows it writes. So the cache
//! never holds the only copy of anything, and a crash can at worst cost it its contents.
//!
//! - **Layout**: one file per table, `cache/t<id>.slots`: a 4 KiB header, then slots of
//!   `[key u64][updates u64][crc32 u32][used u32][time u32][reserved u32][lsn u64][floats f32 ×
//!   dim × (1 + state)]`. The file is
//!   sparse: pages are only touched as slots are used.
//! - **Budget**: `cache_bytes` is split evenly between the live tables.
//! - **Admission and eviction**: CLOCK (a reference bit per slot). While a table has free
//!   slots every miss is admitted; once full, a key is admitted only on its second miss within
//!   a window (a "doorkeeper" set), so one pass over cold keys does not flush the hot set.
//!   Range scans never admit.
//! - **Restart**: a clean close (or dropping the store without a crash: RocksDB then still holds
//!   the last checkpoint's rows, which is what the cache matches) writes the header with the
//!   checkpoint LSN and a checksum, and
//!   every slot carries the CRC of its row. On open, a table's file is reused only if its
//!   header is intact, marked clean, and names the store's checkpoint LSN; slots whose CRC does
//!   not match are dropped. Anything else (a crash, a different checkpoint) starts empty.

mod slots;

use std::path::{Path, PathBuf};

use rustc_hash::{FxHashMap, FxHashSet};
use slots::TableCache;

use paramdb_types::{CacheStats, Key, KeyRange, TableSpec};

use crate::error::StorageError;
use crate::row::Row;

type Result<T> = std::result::Result<T, StorageError>;

const MAGIC: &[u8; 8] = b"PDBCACHE";
/// Version of the cache file layout.
pub const CACHE_FORMAT_VERSION: u32 = 3;
const HEADER_BYTES: usize = 4096;
const SLOT_HEADER: usize = 40;
/// Memory each slot costs besides its bytes in the file: its index entry (about 32 bytes in a
/// hash table at its load factor), its key (16), reference bit, free-list entry, and a
/// doorkeeper entry (up to about 34). Counted in the budget, so the budget is what the cache
/// costs.
pub const SLOT_OVERHEAD: usize = 96;

/// The cache of one store: a table cache per live table, all under the store's state lock.
#[derive(Debug)]
pub(crate) struct RowCache {
    dir: PathBuf,
    budget: u64,
    tables: FxHashMap<u32, TableCache>,
    /// Keys that missed once while their table was full; a second miss admits them.
    doorkeeper: FxHashSet<(u32, Key)>,
    stats: CacheStats,
    /// Scratch of `read_weights`: (index, slot) of the keys found.
    found: Vec<(usize, u32)>,
}

impl RowCache {
    /// Opens the cache in `dir` for `tables` (id, spec), reusing files a clean close left for
    /// checkpoint `checkpoint_lsn`. A budget of 0 turns the cache off.
    pub(crate) fn open(
        dir: &Path,
        budget: u64,
        tables: &[(u32, TableSpec)],
        checkpoint_lsn: u64,
    ) -> Result<RowCache> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("creating {}", dir.display()), e))?;
        // Files of tables that no longer exist.
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let live = tables.iter().any(|(id, _)| name == format!("t{id}.slots"));
                if !live {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut c = RowCache {
            dir: dir.to_path_buf(),
            budget,
            tables: FxHashMap::default(),
            doorkeeper: FxHashSet::default(),
            found: Vec::new(),
            stats: CacheStats {
                budget_bytes: budget,
                ..CacheStats::default()
            },
        };
        let share = c.share(tables.len());
        for (id, spec) in tables {
            let mut t = TableCache::open(dir, *id, spec, share, checkpoint_lsn)?;
            c.stats.warm_rows += t.index.len() as u64;
            t.mark_open()?;
            c.tables.insert(*id, t);
        }
        Ok(c)
    }

    /// A cache that holds nothing and has no files (read-only opens).
    pub(crate) fn disabled() -> RowCache {
        RowCache {
            dir: PathBuf::new(),
            budget: 0,
            tables: FxHashMap::default(),
            doorkeeper: FxHashSet::default(),
            found: Vec::new(),
            stats: CacheStats::default(),
        }
    }

    fn share(&self, tables: usize) -> u64 {
        self.budget / tables.max(1) as u64
    }

    /// The counters, with resident rows and bytes counted now.
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            resident_rows: self.tables.values().map(|t| t.index.len() as u64).sum(),
            resident_bytes: self
                .tables
                .values()
                .map(|t| (t.index.len() * t.slot_bytes) as u64)
                .sum(),
            ..self.stats
        }
    }

    /// Whether `table` has any slots: if not, rows read from RocksDB need not be offered.
    pub(crate) fn has_room_for(&self, table: u32) -> bool {
        self.tables.get(&table).is_some_and(|t| t.capacity > 0)
    }

    /// Makes room for a new table and splits the budget again.
    pub(crate) fn add_table(&mut self, id: u32, spec: &TableSpec) -> Result<()> {
        let share = self.share(self.tables.len() + 1);
        let _ = std::fs::remove_file(self.dir.join(format!("t{id}.slots")));
        let mut t = TableCache::open(&self.dir, id, spec, share, u64::MAX)?;
        t.mark_open()?;
        self.tables.insert(id, t);
        self.rebalance()
    }

    /// Forgets a dropped table and gives its share to the others.
    pub(crate) fn remove_table(&mut self, id: u32) -> Result<()> {
        if let Some(t) = self.tables.remove(&id) {
            let path = t.path.clone();
            drop(t);
            let _ = std::fs::remove_file(path);
        }
        self.doorkeeper.retain(|(t, _)| *t != id);
        self.rebalance()
    }

    fn rebalance(&mut self) -> Result<()> {
        let share = self.share(self.tables.len());
        for t in self.tables.values_mut() {
            t.resize(share as usize / (t.slot_bytes + SLOT_OVERHEAD))?;
        }
        Ok(())
    }

    /// The cached weights of `keys[i]` for each `i` in `want`, copied into row `i` of `out`;
    /// `want` keeps the indices that missed. A cached row of a time below `cutoff` (expired or
    /// evicted) is dropped and counts as a miss. Counts hits and misses.
    pub(crate) fn read_weights(
        &mut self,
        table: u32,
        keys: &[Key],
        want: &mut Vec<usize>,
        out: &mut [f32],
        cutoff: crate::lifecycle::Cutoff,
    ) {
        let Some(t) = self.tables.get_mut(&table) else {
            return;
        };
        let asked = want.len() as u64;
        if !cutoff.keeps_all() {
            for &i in want.iter() {
                if t.stamp_of(keys[i])
                    .is_some_and(|(time, lsn)| !cutoff.keeps(time, lsn))
                {
                    t.remove(keys[i]);
                }
            }
        }
        let hits = t.read_weights(keys, want, out, &mut self.found) as u64;
        self.stats.hits += hits;
        self.stats.misses += asked - hits;
    }

    /// A copy of the cached row of `key`, counting a hit or a miss.
    pub(crate) fn get_row(&mut self, table: u32, key: Key) -> Option<Row> {
        let t = self.tables.get_mut(&table)?;
        match t.index.get(&key) {
            Some(&s) => {
                t.referenced[s as usize] = true;
                self.stats.hits += 1;
                Some(t.row_of(s))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Offers a row just read from RocksDB: admitted if the table has a free slot, or if the
    /// key missed before (then a CLOCK victim makes room).
    pub(crate) fn offer(&mut self, table: u32, key: Key, row: &Row) {
        let Some(t) = self.tables.get_mut(&table) else {
            return;
        };
        if t.capacity == 0 || t.index.contains_key(&key) {
            return;
        }
        if t.index.len() >= t.capacity {
            if !self.doorkeeper.remove(&(table, key)) {
                if self.doorkeeper.len() >= self.doorkeeper_cap() {
                    self.doorkeeper.clear();
                }
                self.doorkeeper.insert((table, key));
                self.stats.declined += 1;
                return;
            }
            let t = self.tables.get_mut(&table).expect("table cache");
            t.evict_one();
            self.stats.evictions += 1;
        }
        let t = self.tables.get_mut(&table).expect("table cache");
        t.insert(key, row);
        self.stats.admitted += 1;
    }

    /// A checkpoint wrote `row` for `key`: the cached copy (if any) must match it, and a hot
    /// row not cached yet may come in.
    pub(crate) fn refresh(&mut self, table: u32, key: Key, row: &Row) {
        let Some(t) = self.tables.get_mut(&table) else {
            return;
        };
        match t.index.get(&key) {
            Some(&s) => t.write_slot(s, key, row),
            None => self.offer(table, key, row),
        }
    }

    /// A checkpoint deleted `key`: its cached copy goes.
    pub(crate) fn forget(&mut self, table: u32, key: Key) {
        if let Some(t) = self.tables.get_mut(&table) {
            t.remove(key);
        }
    }

    /// A checkpoint deleted every key in `range`: their cached copies go. Walks the table's
    /// index (the cache is a hash table, not ordered).
    pub(crate) fn forget_range(&mut self, table: u32, range: KeyRange) {
        if let Some(t) = self.tables.get_mut(&table) {
            let gone: Vec<Key> = t
                .index
                .keys()
                .copied()
                .filter(|&k| range.contains(k))
                .collect();
            for k in gone {
                t.remove(k);
            }
        }
    }

    /// Every cached row of `table` goes (its stored rows were replaced wholesale).
    pub(crate) fn forget_table(&mut self, table: u32) {
        if let Some(t) = self.tables.get_mut(&table) {
            let gone: Vec<Key> = t.index.keys().copied().collect();
            for k in gone {
                t.remove(k);
            }
        }
    }

    fn doorkeeper_cap(&self) -> usize {
        self.tables
            .values()
            .map(|t| t.capacity)
            .sum::<usize>()
            .max(1024)
    }

    /// Writes the headers of a clean close: the files are reused by the next open of a store
    /// at checkpoint `checkpoint_lsn`.
    pub(crate) fn close(&mut self, checkpoint_lsn: u64) -> Result<()> {
        for t in self.tables.values_mut() {
            t.close(checkpoint_lsn)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paramdb_types::UpdateRule;

    fn spec() -> TableSpec {
        TableSpec::new("t", 4).with_rule(UpdateRule::Adagrad {
            lr: 0.1,
            eps: 1e-8,
            initial_accumulator: 0.1,
        })
    }

    fn row(v: f32) -> Row {
        Row {
            updates: v as u64,
            time: v as u32,
            lsn: v as u64,
            data: vec![v; 8].into(),
        }
    }

    /// Budget per slot of the test table: its bytes in the file plus its memory overhead.
    fn slot_bytes() -> u64 {
        (SLOT_HEADER + 8 * 4 + SLOT_OVERHEAD) as u64
    }

    #[test]
    fn second_miss_admits_when_full_and_clock_keeps_referenced_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = RowCache::open(dir.path(), 2 * slot_bytes(), &[(1, spec())], 0).unwrap();
        c.offer(1, 10, &row(1.0));
        c.offer(1, 11, &row(2.0));
        assert_eq!(c.stats().resident_rows, 2);
        // 10 is used: the hand clears its bit and evicts 11 instead.
        assert!(c.get_row(1, 10).is_some());
        c.offer(1, 12, &row(3.0)); // first miss while full: declined
        assert!(c.get_row(1, 12).is_none());
        c.offer(1, 12, &row(3.0)); // second: admitted
        assert_eq!(c.get_row(1, 12), Some(row(3.0)));
        assert_eq!(c.get_row(1, 10), Some(row(1.0)));
        assert!(c.get_row(1, 11).is_none());
        let s = c.stats();
        assert_eq!((s.evictions, s.declined, s.resident_rows), (1, 1, 2));
        // A batch: the cached keys are copied, the others stay wanted.
        let mut w = [0.0; 12];
        let mut want = vec![0, 1, 2];
        c.read_weights(1, &[12, 11, 10], &mut want, &mut w, Default::default());
        assert_eq!(want, vec![1]);
        assert_eq!((&w[..4], &w[8..]), (&[3.0; 4][..], &[1.0; 4][..]));
        assert_eq!(w[4..8], [0.0; 4]);
    }

    #[test]
    fn clean_close_is_reused_and_anything_else_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 16 * slot_bytes();
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 7).unwrap();
        for k in 0..5 {
            c.offer(1, k, &row(k as f32));
        }
        c.close(7).unwrap();
        drop(c);
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 7).unwrap();
        assert_eq!(c.stats().warm_rows, 5);
        assert_eq!(c.get_row(1, 3), Some(row(3.0)));
        drop(c); // no clean close: like a crash
        let c = RowCache::open(dir.path(), budget, &[(1, spec())], 7).unwrap();
        assert_eq!(c.stats().warm_rows, 0);

        // A clean file for another checkpoint is not trusted either.
        let mut c = c;
        c.offer(1, 1, &row(1.0));
        c.close(7).unwrap();
        drop(c);
        let c = RowCache::open(dir.path(), budget, &[(1, spec())], 8).unwrap();
        assert_eq!(c.stats().warm_rows, 0);
    }

    #[test]
    fn warm_reopens_leave_unused_slots_unwritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        // A 64 MiB share, of which 3 slots are used.
        let budget = 64 << 20;
        let path = dir.path().join("t1.slots");
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 0).unwrap();
        for k in 0..3 {
            c.offer(1, k, &row(k as f32));
        }
        for _ in 0..3 {
            c.close(0).unwrap();
            drop(c);
            c = RowCache::open(dir.path(), budget, &[(1, spec())], 0).unwrap();
            assert_eq!(c.stats().warm_rows, 3);
        }
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            allocated < 1 << 20,
            "{allocated} bytes allocated for 3 rows of a sparse 64 MiB file"
        );
        // Rows added after a warm open land past the ones kept, and survive the next one.
        c.offer(1, 10, &row(10.0));
        c.close(0).unwrap();
        drop(c);
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 0).unwrap();
        assert_eq!(c.stats().warm_rows, 4);
        assert_eq!(c.get_row(1, 10), Some(row(10.0)));
    }

    #[test]
    fn a_corrupt_slot_is_dropped_on_warm_open() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 4 * slot_bytes();
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 0).unwrap();
        c.offer(1, 5, &row(5.0));
        c.offer(1, 6, &row(6.0));
        c.close(0).unwrap();
        drop(c);
        let path = dir.path().join("t1.slots");
        let mut b = std::fs::read(&path).unwrap();
        b[HEADER_BYTES + SLOT_HEADER + 2] ^= 0x40; // a weight of the first slot
        std::fs::write(&path, b).unwrap();
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 0).unwrap();
        assert_eq!(c.stats().warm_rows, 1);
        assert!(c.get_row(1, 5).is_none());
        assert_eq!(c.get_row(1, 6), Some(row(6.0)));
    }

    #[test]
    fn budget_is_split_between_tables() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 8 * slot_bytes();
        let mut c = RowCache::open(dir.path(), budget, &[(1, spec())], 0).unwrap();
        for k in 0..8 {
            c.offer(1, k, &row(1.0));
        }
        assert_eq!(c.stats().resident_rows, 8);
        c.add_table(2, &spec()).unwrap();
        assert_eq!(c.stats().resident_rows, 4);
        assert!(c.stats().resident_bytes <= budget);
        c.remove_table(2).unwrap();
        assert!(!dir.path().join("t2.slots").exists());
    }
}
