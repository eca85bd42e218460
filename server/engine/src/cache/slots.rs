//! One table's slots: a memory-mapped file `cache/t<id>.slots` of fixed-size slots, with its
//! header (version, checkpoint LSN, high-water mark, CRC), each slot's CRC, and the index,
//! CLOCK bits and free list over them. `RowCache` (the parent module) decides what goes in.
//! One of two modules with `unsafe`: mapping the file.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use paramdb_types::{Key, TableSpec};
use rustc_hash::FxHashMap;

use super::{Result, CACHE_FORMAT_VERSION, HEADER_BYTES, MAGIC, SLOT_HEADER, SLOT_OVERHEAD};
use crate::error::StorageError;
use crate::row::Row;

#[derive(Debug)]
pub(super) struct TableCache {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) map: Option<MmapMut>,
    pub(super) id: u32,
    pub(super) dim: u32,
    pub(super) rule_tag: u8,
    pub(super) floats: usize,
    pub(super) slot_bytes: usize,
    pub(super) capacity: usize,
    pub(super) index: FxHashMap<Key, u32>,
    /// Key of each slot below the high-water mark (`keys.len()`); `None` when free. Grows as
    /// slots are first used, so a large budget costs nothing until it is filled.
    pub(super) keys: Vec<Option<Key>>,
    pub(super) referenced: Vec<bool>,
    /// Freed slots below the high-water mark.
    pub(super) free: Vec<u32>,
    pub(super) hand: usize,
}

pub(super) fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(format!("{what} {}", path.display()), e)
}

/// Maps `file` (at least `len` bytes long) read-write.
#[allow(unsafe_code)]
pub(super) fn map(file: &File, len: usize, path: &Path) -> Result<Option<MmapMut>> {
    if len == 0 {
        return Ok(None);
    }
    // SAFETY: the file is private to this store (it lives in the store's data directory, which
    // RocksDB's lock file keeps to one process), nothing else truncates or writes it while it
    // is mapped, and every access goes through the cache's mutex.
    let m = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file) }
        .map_err(|e| io("mapping", path, e))?;
    Ok(Some(m))
}

/// Asks the CPU to start loading `bytes` into its caches. A hint only: it reads nothing and
/// cannot fault, so a batch of lookups can have many slots in flight at once instead of
/// waiting on each in turn.
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has, and has no effect on
        // memory: it is a hint about an address inside a live slice.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

impl TableCache {
    /// Copies the weights of `keys[i]` for each `i` in `want` into row `i` of `out` (rows of
    /// `out.len() / keys.len()` floats), marking each referenced, and keeps in `want` the
    /// indices whose key is not cached. Returns the number found. Two passes, so the index
    /// probes and the slot loads of a batch overlap instead of running one after the other.
    pub(super) fn read_weights(
        &mut self,
        keys: &[Key],
        want: &mut Vec<usize>,
        out: &mut [f32],
        found: &mut Vec<(usize, u32)>,
    ) -> usize {
        let dim = out.len() / keys.len().max(1);
        found.clear();
        want.retain(|&i| match self.index.get(&keys[i]) {
            Some(&s) => {
                found.push((i, s));
                false
            }
            None => true,
        });
        for &(_, s) in found.iter() {
            let r = self.slot_range(s);
            if let Some(m) = &self.map {
                prefetch(&m[r.start + SLOT_HEADER..r.start + SLOT_HEADER + dim * 4]);
            }
        }
        for &(i, s) in found.iter() {
            self.referenced[s as usize] = true;
            out[i * dim..(i + 1) * dim].copy_from_slice(&self.floats_of(s)[..dim]);
        }
        found.len()
    }

    pub(super) fn open(
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
            rule_tag: crate::row::rule_tag(&spec.rule),
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

    pub(super) fn resize_file(&mut self, slots: usize) -> Result<()> {
        self.map = None;
        let len = HEADER_BYTES + slots * self.slot_bytes;
        self.file
            .set_len(len as u64)
            .map_err(|e| io("sizing", &self.path, e))?;
        self.map = map(&self.file, len, &self.path)?;
        Ok(())
    }

    /// Changes the number of slots; rows in slots past the new end are evicted.
    pub(super) fn resize(&mut self, capacity: usize) -> Result<()> {
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

    pub(super) fn slot_range(&self, s: u32) -> std::ops::Range<usize> {
        let start = HEADER_BYTES + s as usize * self.slot_bytes;
        start..start + self.slot_bytes
    }

    pub(super) fn slot(&self, s: u32) -> &[u8] {
        let r = self.slot_range(s);
        &self.map.as_ref().expect("mapped")[r]
    }

    pub(super) fn slot_mut(&mut self, s: u32) -> &mut [u8] {
        let r = self.slot_range(s);
        &mut self.map.as_mut().expect("mapped")[r]
    }

    pub(super) fn floats_of(&self, s: u32) -> &[f32] {
        let n = self.floats;
        bytemuck::cast_slice(&self.slot(s)[SLOT_HEADER..SLOT_HEADER + n * 4])
    }

    pub(super) fn row_of(&self, s: u32) -> Row {
        let b = self.slot(s);
        Row {
            updates: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            time: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
            lsn: u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
            data: self.floats_of(s).into(),
        }
    }

    /// The time and LSN of the cached row of `key`, if it is cached.
    pub(super) fn stamp_of(&self, key: Key) -> Option<(u32, u64)> {
        let s = *self.index.get(&key)?;
        let b = self.slot(s);
        Some((
            u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
            u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")),
        ))
    }

    pub(super) fn write_slot(&mut self, s: u32, key: Key, row: &Row) {
        let n = self.floats;
        let b = self.slot_mut(s);
        b[0..8].copy_from_slice(&key.to_le_bytes());
        b[8..16].copy_from_slice(&row.updates.to_le_bytes());
        b[24..28].copy_from_slice(&row.time.to_le_bytes());
        b[32..40].copy_from_slice(&row.lsn.to_le_bytes());
        let data: &mut [f32] = bytemuck::cast_slice_mut(&mut b[SLOT_HEADER..SLOT_HEADER + n * 4]);
        data.copy_from_slice(&row.data);
        let crc = slot_crc(b, n);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    pub(super) fn clear_slot(&mut self, s: u32) {
        // Writing to a page never written allocates it, in memory and on disk.
        if self.slot(s)[..SLOT_HEADER].iter().any(|&b| b != 0) {
            self.slot_mut(s)[..SLOT_HEADER].fill(0);
        }
    }

    /// The key of slot `s` if its contents check out (warm restart).
    pub(super) fn valid_slot(&self, s: u32) -> Option<Key> {
        let b = self.slot(s);
        let stored = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        let marker = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
        (marker == 1 && stored == slot_crc(b, self.floats))
            .then(|| u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")))
    }

    pub(super) fn insert(&mut self, key: Key, row: &Row) {
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

    /// Frees the slot of `key`, if it is cached.
    pub(super) fn remove(&mut self, key: Key) {
        if let Some(s) = self.index.remove(&key) {
            self.keys[s as usize] = None;
            self.clear_slot(s);
            self.free.push(s);
        }
    }

    /// Frees one slot by CLOCK: the hand passes over referenced slots, clearing their bit.
    pub(super) fn evict_one(&mut self) {
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

    pub(super) fn read_header(&self) -> Option<Header> {
        let len = self.file.metadata().ok()?.len() as usize;
        if len < HEADER_BYTES {
            return None;
        }
        let m = map(&self.file, HEADER_BYTES, &self.path).ok()??;
        let h = Header::decode(&m[..])?;
        (h.table == self.id && h.dim == self.dim && h.rule_tag == self.rule_tag).then_some(h)
    }

    pub(super) fn write_header(&mut self, clean: bool, checkpoint_lsn: u64) -> Result<()> {
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
    pub(super) fn mark_open(&mut self) -> Result<()> {
        self.write_header(false, 0)
    }

    pub(super) fn close(&mut self, checkpoint_lsn: u64) -> Result<()> {
        if let Some(m) = self.map.as_ref() {
            m.flush().map_err(|e| io("syncing", &self.path, e))?;
        }
        self.write_header(true, checkpoint_lsn)
    }
}

fn slot_crc(slot: &[u8], floats: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&slot[0..16]);
    h.update(&slot[24..28]);
    h.update(&slot[32..40]);
    h.update(&slot[SLOT_HEADER..SLOT_HEADER + floats * 4]);
    h.finalize()
}

#[derive(Debug, PartialEq)]
pub(super) struct Header {
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
    pub(super) fn encode(&self, b: &mut [u8]) {
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

    pub(super) fn decode(b: &[u8]) -> Option<Header> {
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
