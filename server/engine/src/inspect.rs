//! `Store::inspect`: what `paramdb inspect` reports about a shard: its tables (dims, rules, rows, bytes on disk,
//! key range), its log, its checkpoint and the format versions on disk. Computed by a live
//! store (the stats call's bigger sibling) or by a read-only open of a shard's directory.

use std::path::Path;

use paramdb_types::{KeyRange, ShardReport, TableReport};

use crate::cache::CACHE_FORMAT_VERSION;
use crate::catalog::STORE_FORMAT_VERSION;
use crate::error::{PullError, StorageError};
use crate::fault::RocksFaults;
use crate::rocks::Rocks;
use crate::row::ROW_FORMAT_VERSION;
use crate::scan::RangeScan;
use crate::store::Store;
use crate::wal::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use crate::wal::fs::parse_segment_name;

impl Store {
    /// A report on this shard. `exact_rows` counts every table's rows with a scan (reads the
    /// whole table); otherwise row counts are estimates.
    pub fn inspect(&self, exact_rows: bool) -> Result<ShardReport, PullError> {
        let shared = &self.core;
        let sst = shared.rocks.sst_files()?;
        let stats = self.stats();
        let mut tables = Vec::new();
        for info in self.list_tables() {
            let t = shared.table(&info.spec.name)?;
            let files: Vec<_> = sst.iter().filter(|f| f.cf == t.cf).collect();
            let stored_bounds = shared.rocks.key_bounds(&t.cf)?;
            let (dirty_rows, mem_bounds) = {
                let layers = shared.state.read();
                let (dirty, frozen) = layers.of(t.id);
                let mut n = 0u64;
                let mut bounds: Option<(u64, u64)> = None;
                for layer in [dirty, frozen].into_iter().flatten() {
                    n += layer.len() as u64;
                    for &k in layer.rows.keys() {
                        bounds = Some(bounds.map_or((k, k), |(lo, hi)| (lo.min(k), hi.max(k))));
                    }
                }
                (n, bounds)
            };
            let key_range = match (stored_bounds, mem_bounds) {
                (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
                (a, b) => a.or(b),
            };
            let (rows, rows_exact) = if exact_rows {
                let mut n = 0u64;
                for row in RangeScan::new(shared.clone(), t.clone(), KeyRange::new(0, u64::MAX)) {
                    row?;
                    n += 1;
                }
                (n, true)
            } else {
                let stored = shared
                    .rocks
                    .estimate_keys(&t.cf)?
                    .unwrap_or_else(|| files.iter().map(|f| f.entries).sum());
                (stored + dirty_rows, false)
            };
            tables.push(TableReport {
                name: info.spec.name.clone(),
                id: info.id,
                dim: info.spec.dim,
                rule: info.spec.rule.to_string(),
                floats_per_row: info.spec.dim * (1 + info.spec.rule.state_slots() as u32),
                rows,
                rows_exact,
                sst_files: files.len() as u64,
                sst_bytes: files.iter().map(|f| f.size).sum(),
                dirty_rows,
                key_range,
                lifecycle: info.spec.lifecycle.to_string(),
                lifecycle_counts: shared.lifecycle_counts(&t),
            });
        }
        let (log_segments, log_bytes, log_format) = log_files(&self.dir().join("wal"));
        Ok(ShardReport {
            dir: self.dir().to_path_buf(),
            read_only: self.is_read_only(),
            store_format: STORE_FORMAT_VERSION,
            log_format,
            row_format: ROW_FORMAT_VERSION as u32,
            cache_format: CACHE_FORMAT_VERSION,
            checkpoint_lsn: stats.checkpoint_lsn,
            last_lsn: stats.last_lsn,
            log_segments,
            log_bytes,
            rocksdb_bytes: tree_bytes(&self.dir().join("rocksdb"), false),
            cache_file_bytes: tree_bytes(&self.dir().join("cache"), true),
            dirty_rows: stats.dirty_rows as u64,
            cache: stats.cache,
            tables,
        })
    }
}

/// The ids and names of the tables of the shard in `dir`, from RocksDB alone (opened as a
/// secondary, so safe beside a server), without replaying the log: for tools that only need
/// to label tables, such as `log dump`.
pub fn table_names(dir: &Path) -> Result<Vec<(u32, String)>, StorageError> {
    let (rocks, _) = Rocks::open_secondary(&dir.join("rocksdb"), 1 << 20, RocksFaults::none())?;
    let catalog = crate::catalog::load(&rocks)?;
    Ok(catalog
        .by_id
        .values()
        .map(|t| (t.id, t.spec.name.clone()))
        .collect())
}

/// (segments, bytes, highest format version) of the log's segment files. Files a running
/// server deletes meanwhile are skipped.
fn log_files(wal: &Path) -> (u64, u64, u32) {
    let (mut n, mut bytes, mut version) = (0, 0, 0);
    for e in std::fs::read_dir(wal).into_iter().flatten().flatten() {
        let name = e.file_name();
        if parse_segment_name(&name.to_string_lossy()).is_none() {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        n += 1;
        bytes += meta.len();
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        let read = std::fs::File::open(e.path())
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
        if read.is_ok() {
            if let Ok(h) = SegmentHeader::decode(&head) {
                version = version.max(h.version);
            }
        }
    }
    (n, bytes, version)
}

/// Bytes of the files under `dir` (recursively); `allocated` counts disk blocks instead of
/// lengths, for sparse files.
fn tree_bytes(dir: &Path, allocated: bool) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            total += tree_bytes(&e.path(), allocated);
        } else if allocated {
            total += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        } else {
            total += meta.len();
        }
    }
    total
}
