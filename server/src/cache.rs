//! The hot-row cache: each table's most used rows (weights, optimizer state and update count)
//! in fixed-size slots of a memory-mapped file, in front of RocksDB.
//!
//! The cache holds *clean* rows only: a cached row is byte for byte what RocksDB holds for
//! its key. Rows changed since the last checkpoint live in the store's dirty layer, which
//! lookups consult first; a checkpoint refreshes the slots of the rows it writes. So the cache
//! never holds the only copy of anything, and a crash can at worst cost it its contents.
//!
//! - **Layout**: one file per table, `cache/t<id>.slots`: a 4 KiB header, then slots of
//!   `[key u64][updates u64][crc32 u32][used u32][floats f32 × dim × (1 + state)]`. The file is
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

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::error::{Result, StoreError};
use crate::row::Row;
use crate::table::TableSpec;
use crate::types::Key;

const MAGIC: &[u8; 8] = b"PDBCACHE";
/// Version of the cache file layout.
pub const CACHE_FORMAT_VERSION: u32 = 2;
const HEADER_BYTES: usize = 4096;
const SLOT_HEADER: usize = 24;
/// Memory each slot costs besides its bytes in the file: its index entry (about 32 bytes in a
/// hash table at its load factor), its key (16), reference bit, free-list entry, and a
/// doorkeeper entry (up to about 34). Counted in the budget, so the budget is what the cache
/// costs.
pub const SLOT_OVERHEAD: usize = 96;

/// Cache counters, as the stats call reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Budget of the whole store, in bytes.
    pub budget_bytes: u64,
    /// Bytes of slots holding a row.
    pub resident_bytes: u64,
    pub resident_rows: u64,
    /// Lookups that found their row in the cache / that did not.
    pub hits: u64,
    pub misses: u64,
    /// Rows admitted, and rows a full cache declined (first miss of a key).
    pub admitted: u64,
    pub declined: u64,
    pub evictions: u64,
    /// Rows reused from the cache file at open (a warm restart).
    pub warm_rows: u64,
}

impl CacheStats {
    /// Hits over lookups (0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

/// The cache of one store: a table cache per live table, all under the store's state lock.
#[derive(Debug)]
pub(crate) struct RowCache {
    dir: PathBuf,
    budget: u64,
    tables: FxHashMap<u32, TableCache>,
    /// Keys that missed once while their table was full; a second miss admits them.
    doorkeeper: FxHashSet<(u32, Key)>,
    stats: CacheStats,
}

#[derive(Debug)]
struct TableCache {
    path: PathBuf,
    file: File,
    map: Option<MmapMut>,
    id: u32,
    dim: u32,
    rule_tag: u8,
    floats: usize,
    slot_bytes: usize,
    capacity: usize,
    index: FxHashMap<Key, u32>,
    /// Key of each slot below the high-water mark (`keys.len()`); `None` when free. Grows as
    /// slots are first used, so a large budget costs nothing until it is filled.
    keys: Vec<Option<Key>>,
    referenced: Vec<bool>,
    /// Freed slots below the high-water mark.
    free: Vec<u32>,
    hand: usize,
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
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
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

    /// The cached row of `key`: copies its weights into `out` and returns true, or counts a
    /// miss and returns false.
    pub(crate) fn read_weights(&mut self, table: u32, key: Key, out: &mut [f32]) -> bool {
        let Some(t) = self.tables.get_mut(&table) else {
            return false;
        };
        match t.index.get(&key) {
            Some(&s) => {
                t.referenced[s as usize] = true;
                out.copy_from_slice(&t.floats_of(s)[..out.len()]);
                self.stats.hits += 1;
                true
            }
            None => {
                self.stats.misses += 1;
                false
            }
        }
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

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(format!("{what} {}", path.display()), e)
}

/// Maps `file` (at least `len` bytes long) read-write.
#[allow(unsafe_code)]
fn map(file: &File, len: usize, path: &Path) -> Result<Option<MmapMut>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the file is private to this store (it lives in the store's data directory, which
    // RocksDB's lock file keeps to one process), nothing else truncates or writes it while it
    // is mapped, and every access goes through the store's state lock.
    let m = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file) }
        .map_err(|e| io("mapping", path, e))?;
    Ok(Some(m))
}

impl TableCache {
    fn open(
        dir: &Path,
        id: u32,
        spec: &TableSpec,
        share: u64,
        checkpoint_lsn: u64,
    ) -> Result<TableCache> {
        let path = dir.join(format!("t{id}.slots"));
        let floats = spec.dim as usize * (1 + spec.rule.state_slots());
        let slot_bytes = (SLOT_HEADER + floats * 4).next_multiple_of(8);
        let capacity = share as usize / (slot_bytes + SLOT_OVERHEAD);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        let mut t = TableCache {
            path,
            file,
            map: None,
            id,
            dim: spec.dim,
            rule_tag: spec.rule.tag(),
            floats,
            slot_bytes,
            capacity: 0,
            index: FxHashMap::default(),
            keys: Vec::new(),
            referenced: Vec::new(),
            free: Vec::new(),
            hand: 0,
        };
        let warm_header = t.read_header().filter(|h| {
            h.clean && h.checkpoint_lsn == checkpoint_lsn && h.slot_bytes == slot_bytes
        });
        // Slots past the high-water mark were never written: they are not read (reading pages
        // of a sparse file would map them) and stay free.
        let mut used = 0;
        let old_slots = if let Some(h) = &warm_header {
            let len = t.file.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            let slots = len.saturating_sub(HEADER_BYTES) / slot_bytes;
            used = (h.slots_used as usize).min(slots);
            slots
        } else {
            t.file
                .set_len(0)
                .map_err(|e| io("truncating", &t.path, e))?;
            0
        };
        t.resize_file(capacity.max(old_slots))?;
        t.capacity = capacity.max(old_slots);
        if warm_header.is_some() {
            t.keys = vec![None; used];
            t.referenced = vec![false; used];
            for s in 0..used as u32 {
                if let Some(k) = t.valid_slot(s) {
                    if t.index.insert(k, s).is_none() {
                        t.keys[s as usize] = Some(k);
                        continue;
                    }
                }
                t.clear_slot(s);
                t.free.push(s);
            }
            t.free.reverse();
        }
        t.resize(capacity)?;
        Ok(t)
    }

    fn resize_file(&mut self, slots: usize) -> Result<()> {
        self.map = None;
        let len = HEADER_BYTES + slots * self.slot_bytes;
        self.file
            .set_len(len as u64)
            .map_err(|e| io("sizing", &self.path, e))?;
        self.map = map(&self.file, len, &self.path)?;
        Ok(())
    }

    /// Changes the number of slots; rows in slots past the new end are evicted.
    fn resize(&mut self, capacity: usize) -> Result<()> {
        if capacity == self.capacity {
            return Ok(());
        }
        if capacity < self.keys.len() {
            for k in self.keys[capacity..].iter().flatten() {
                self.index.remove(k);
            }
            self.keys.truncate(capacity);
            self.referenced.truncate(capacity);
            self.free.retain(|&s| (s as usize) < capacity);
        }
        self.capacity = capacity;
        self.hand = 0;
        self.resize_file(capacity)
    }

    fn slot_range(&self, s: u32) -> std::ops::Range<usize> {
        let start = HEADER_BYTES + s as usize * self.slot_bytes;
        start..start + self.slot_bytes
    }

    fn slot(&self, s: u32) -> &[u8] {
        let r = self.slot_range(s);
        &self.map.as_ref().expect("mapped")[r]
    }

    fn slot_mut(&mut self, s: u32) -> &mut [u8] {
        let r = self.slot_range(s);
        &mut self.map.as_mut().expect("mapped")[r]
    }

    fn floats_of(&self, s: u32) -> &[f32] {
        let n = self.floats;
        bytemuck::cast_slice(&self.slot(s)[SLOT_HEADER..SLOT_HEADER + n * 4])
    }

    fn row_of(&self, s: u32) -> Row {
        let b = self.slot(s);
        Row {
            updates: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            data: self.floats_of(s).into(),
        }
    }

    fn write_slot(&mut self, s: u32, key: Key, row: &Row) {
        let n = self.floats;
        let b = self.slot_mut(s);
        b[0..8].copy_from_slice(&key.to_le_bytes());
        b[8..16].copy_from_slice(&row.updates.to_le_bytes());
        let data: &mut [f32] = bytemuck::cast_slice_mut(&mut b[SLOT_HEADER..SLOT_HEADER + n * 4]);
        data.copy_from_slice(&row.data);
        let crc = slot_crc(b, n);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn clear_slot(&mut self, s: u32) {
        // Writing to a page never written allocates it, in memory and on disk.
        if self.slot(s)[..SLOT_HEADER].iter().any(|&b| b != 0) {
            self.slot_mut(s)[..SLOT_HEADER].fill(0);
        }
    }

    /// The key of slot `s` if its contents check out (warm restart).
    fn valid_slot(&self, s: u32) -> Option<Key> {
        let b = self.slot(s);
        let stored = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        let marker = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
        (marker == 1 && stored == slot_crc(b, self.floats))
            .then(|| u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")))
    }

    fn insert(&mut self, key: Key, row: &Row) {
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                self.keys.push(None);
                self.referenced.push(false);
                (self.keys.len() - 1) as u32
            }
        };
        self.write_slot(s, key, row);
        self.slot_mut(s)[20..24].copy_from_slice(&1u32.to_le_bytes());
        self.keys[s as usize] = Some(key);
        self.referenced[s as usize] = false;
        self.index.insert(key, s);
    }

    /// Frees one slot by CLOCK: the hand passes over referenced slots, clearing their bit.
    fn evict_one(&mut self) {
        loop {
            let s = self.hand;
            self.hand = (self.hand + 1) % self.keys.len();
            match self.keys[s] {
                Some(_) if self.referenced[s] => self.referenced[s] = false,
                Some(k) => {
                    self.index.remove(&k);
                    self.keys[s] = None;
                    self.clear_slot(s as u32);
                    self.free.push(s as u32);
                    return;
                }
                None => {}
            }
        }
    }

    fn read_header(&self) -> Option<Header> {
        let len = self.file.metadata().ok()?.len() as usize;
        if len < HEADER_BYTES {
            return None;
        }
        let m = map(&self.file, HEADER_BYTES, &self.path).ok()??;
        let h = Header::decode(&m[..])?;
        (h.table == self.id && h.dim == self.dim && h.rule_tag == self.rule_tag).then_some(h)
    }

    fn write_header(&mut self, clean: bool, checkpoint_lsn: u64) -> Result<()> {
        let h = Header {
            table: self.id,
            dim: self.dim,
            rule_tag: self.rule_tag,
            slot_bytes: self.slot_bytes,
            checkpoint_lsn,
            clean,
            slots_used: self.keys.len() as u64,
        };
        let Some(m) = self.map.as_mut() else {
            return Ok(());
        };
        h.encode(&mut m[..HEADER_BYTES]);
        m.flush_range(0, HEADER_BYTES)
            .map_err(|e| io("syncing", &self.path, e))
    }

    /// Marks the file in use: until a clean close rewrites the header, the next open
    /// starts this table's cache empty.
    fn mark_open(&mut self) -> Result<()> {
        self.write_header(false, 0)
    }

    fn close(&mut self, checkpoint_lsn: u64) -> Result<()> {
        if let Some(m) = self.map.as_ref() {
            m.flush().map_err(|e| io("syncing", &self.path, e))?;
        }
        self.write_header(true, checkpoint_lsn)
    }
}

fn slot_crc(slot: &[u8], floats: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&slot[0..16]);
    h.update(&slot[SLOT_HEADER..SLOT_HEADER + floats * 4]);
    h.finalize()
}

#[derive(Debug, PartialEq)]
struct Header {
    table: u32,
    dim: u32,
    rule_tag: u8,
    slot_bytes: usize,
    checkpoint_lsn: u64,
    clean: bool,
    /// Slots below this index may hold rows; the ones above were never written.
    slots_used: u64,
}

impl Header {
    fn encode(&self, b: &mut [u8]) {
        b.fill(0);
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&CACHE_FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.table.to_le_bytes());
        b[16..20].copy_from_slice(&self.dim.to_le_bytes());
        b[20] = self.rule_tag;
        b[21] = self.clean as u8;
        b[24..32].copy_from_slice(&(self.slot_bytes as u64).to_le_bytes());
        b[32..40].copy_from_slice(&self.checkpoint_lsn.to_le_bytes());
        b[40..48].copy_from_slice(&self.slots_used.to_le_bytes());
        let crc = crc32fast::hash(&b[..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Header> {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if &b[0..8] != MAGIC
            || u32_at(8) != CACHE_FORMAT_VERSION
            || u32_at(48) != crc32fast::hash(&b[..48])
        {
            return None;
        }
        Some(Header {
            table: u32_at(12),
            dim: u32_at(16),
            rule_tag: b[20],
            clean: b[21] == 1,
            slot_bytes: u64_at(24) as usize,
            checkpoint_lsn: u64_at(32),
            slots_used: u64_at(40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::UpdateRule;

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
        let mut w = [0.0; 4];
        assert!(c.read_weights(1, 12, &mut w));
        assert_eq!(w, [3.0; 4]);
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
