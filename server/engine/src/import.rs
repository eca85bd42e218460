//! Bulk import: rows are written as RocksDB table files (SST) and ingested in one step, instead
//! of being sent through the gradient log one push at a time.
//!
//! 1. **Stage** (`Import::add`, no store lock): rows are checked (dim, finite values) and
//!    buffered; a full buffer (`budget` bytes) is sorted by key (a key twice in it is refused)
//!    and written to a table file in a staging directory inside the data directory, on a
//!    background thread while the next buffer fills (two runs at once, so one's sync overlaps
//!    the next one's encoding; buffers are reused from run to run). An imported
//!    row is the table's initial row for its key (optimizer state included) with the given
//!    weights.
//! 2. **Ingest** (`Import::finish`): a checkpoint first writes the table's changes back to
//!    RocksDB; then, under the sequencer (no push or delete in between), with nothing of the
//!    table left in memory, every staged file is ingested in one atomic call (hard-linked, not
//!    copied), and the table's cached rows are dropped (the cache's generation is bumped, so no
//!    read from before can install an old row).
//!
//! Durability: the import is durable when `finish` returns (RocksDB syncs the ingested files
//! and its MANIFEST before it answers), and it is all or nothing: a crash before the ingest
//! leaves only the staging directory, which the next open removes. Imported rows replace any
//! stored rows with the same keys; other rows are kept. Keys repeated across buffers: the
//! later row wins.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use paramdb_types::Key;

use crate::catalog::Table;
use crate::error::{CheckpointError, ImportError, InputError, StorageError};
use crate::row::Row;
use crate::store::Core;

/// Prefix of the staging directories inside a data directory.
pub(crate) const STAGING_PREFIX: &str = "import-";
/// Times `finish` checkpoints and looks again when the table keeps changing.
const INGEST_ATTEMPTS: usize = 50;

/// An import in progress into one table; see the module's notes.
#[derive(Debug)]
pub struct Import {
    core: Arc<Core>,
    table: Arc<Table>,
    staging: tempfile::TempDir,
    /// Rows per run (a run is `budget` bytes of keys and weights).
    run_rows: usize,
    keys: Vec<Key>,
    values: Vec<f32>,
    files: Vec<PathBuf>,
    /// Runs being written on background threads while the next one fills, oldest first, so
    /// reading the input, encoding table files and syncing them to disk overlap. At most
    /// `IN_FLIGHT`: memory stays within `IN_FLIGHT + 1` runs.
    writing: std::collections::VecDeque<std::thread::JoinHandle<Result<Written, ImportError>>>,
    /// A written run's buffers, kept for the next run (no new pages to fault in).
    spare: Option<(Vec<Key>, Vec<f32>)>,
    rows: u64,
}

/// Runs written at once: one can wait on its file's sync while the next one is encoded.
const IN_FLIGHT: usize = 2;

/// A run written as a table file, and its buffers for reuse.
type Written = (PathBuf, Vec<Key>, Vec<f32>);

/// What an import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportInfo {
    pub rows: u64,
    /// Table files ingested.
    pub files: usize,
    pub bytes: u64,
}

/// Removes staging directories a crash left behind (nothing in them was ingested).
pub(crate) fn remove_stale_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "could not remove an import's staging directory");
            }
        }
    }
}

impl Core {
    pub(crate) fn begin_import(
        self: &Arc<Self>,
        table: &str,
        budget: usize,
    ) -> Result<Import, ImportError> {
        self.check_writable("import")?;
        self.poison.check()?;
        let t = self.table(table)?;
        let staging = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(&self.dir)
            .map_err(|e| StorageError::io("creating an import's staging directory", e))?;
        let run_rows = (budget.max(1 << 20) / (t.dim() * 4 + 8)).max(1);
        Ok(Import {
            core: self.clone(),
            table: t,
            staging,
            run_rows,
            keys: Vec::new(),
            values: Vec::new(),
            files: Vec::new(),
            writing: Default::default(),
            spare: None,
            rows: 0,
        })
    }
}

impl Import {
    pub fn dim(&self) -> usize {
        self.table.dim()
    }

    /// Stages row `key` with `weights` (the table's dim). Bad input leaves the import usable.
    pub fn add(&mut self, key: Key, weights: &[f32]) -> Result<(), ImportError> {
        self.add_rows(&[key], weights)
    }

    /// Stages rows `keys` with `weights` (`keys.len()` × the table's dim, row after row). Bad
    /// input stages none of them and leaves the import usable.
    pub fn add_rows(&mut self, keys: &[Key], weights: &[f32]) -> Result<(), ImportError> {
        let t = &self.table;
        let dim = t.dim();
        if weights.len() != keys.len() * dim {
            return Err(InputError::DimensionMismatch {
                table: t.spec.name.clone(),
                dim: t.spec.dim,
                keys: keys.len(),
                values: weights.len(),
            }
            .into());
        }
        if let Some(i) = paramdb_types::first_non_finite(weights) {
            return Err(InputError::NonFinite {
                table: t.spec.name.clone(),
                key: keys[i / dim.max(1)],
                index: i % dim.max(1),
                value: weights[i],
            }
            .into());
        }
        let mut at = 0;
        while at < keys.len() {
            if self.keys.capacity() == 0 {
                let (mut k, mut v) = self.spare.take().unwrap_or_default();
                k.reserve_exact(self.run_rows);
                v.reserve_exact(self.run_rows * dim);
                (self.keys, self.values) = (k, v);
            }
            let n = (self.run_rows - self.keys.len()).min(keys.len() - at);
            self.keys.extend_from_slice(&keys[at..at + n]);
            self.values
                .extend_from_slice(&weights[at * dim..(at + n) * dim]);
            at += n;
            if self.keys.len() >= self.run_rows {
                self.write_run()?;
            }
        }
        self.rows += keys.len() as u64;
        Ok(())
    }

    /// Hands the buffered rows to a background thread, which sorts them by key and writes them
    /// as one table file, once fewer than `IN_FLIGHT` runs are being written.
    fn write_run(&mut self) -> Result<(), ImportError> {
        while self.writing.len() >= IN_FLIGHT {
            self.wait_for_run()?;
        }
        if self.keys.is_empty() {
            return Ok(());
        }
        let keys = std::mem::take(&mut self.keys);
        let values = std::mem::take(&mut self.values);
        let (core, table) = (self.core.clone(), self.table.clone());
        let path = self
            .staging
            .path()
            .join(format!("{:06}.sst", self.files.len() + self.writing.len()));
        let handle = std::thread::Builder::new()
            .name("paramdb-import".into())
            .spawn(move || {
                write_table_file(&core, &table, &path, &keys, &values)
                    .map(|()| (path, keys, values))
            })
            .map_err(|e| StorageError::io("starting an import thread", e))?;
        self.writing.push_back(handle);
        Ok(())
    }

    /// Waits for the oldest run being written, if any, records its file and keeps its
    /// buffers.
    fn wait_for_run(&mut self) -> Result<(), ImportError> {
        if let Some(h) = self.writing.pop_front() {
            let (path, mut keys, mut values) =
                h.join().map_err(|_| StorageError::CorruptMeta {
                    reason: "an import thread panicked".into(),
                })??;
            self.files.push(path);
            keys.clear();
            values.clear();
            self.spare = Some((keys, values));
        }
        Ok(())
    }

    /// Writes what is left and ingests every staged file at once. Returns what was imported.
    pub fn finish(mut self) -> Result<ImportInfo, ImportError> {
        self.write_run()?;
        while !self.writing.is_empty() {
            self.wait_for_run()?;
        }
        let bytes = self
            .files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum();
        let info = ImportInfo {
            rows: self.rows,
            files: self.files.len(),
            bytes,
        };
        if self.files.is_empty() {
            return Ok(info);
        }
        let core = &self.core;
        let t = &self.table;
        for _ in 0..INGEST_ATTEMPTS {
            core.checkpoint().map_err(|e| match e {
                CheckpointError::Input(i) => ImportError::Input(i),
                CheckpointError::Storage(s) => ImportError::Storage(s),
            })?;
            let _log = core.log.sequencer();
            let in_memory = {
                let layers = core.state.read();
                let (dirty, frozen) = layers.of(t.id);
                dirty.is_some_and(|d| d.len() > 0 || !d.deleted.is_empty()) || frozen.is_some()
            };
            if in_memory {
                continue; // pushed or deleted since the checkpoint: write it back first
            }
            if !core.table_live(t.id) {
                return Err(InputError::UnknownTable {
                    name: t.spec.name.clone(),
                }
                .into());
            }
            core.poison.check()?;
            core.rocks.ingest(&t.cf, &self.files)?;
            let mut cache = core.cache();
            cache.generation += 1;
            cache.rows.forget_table(t.id);
            tracing::info!(table = %t.spec.name, rows = info.rows, files = info.files, "import ingested");
            return Ok(info);
        }
        Err(InputError::Busy {
            table: t.spec.name.clone(),
            what: "an import",
        }
        .into())
    }
}

/// Sorts one run's rows by key and writes them as a table file at `path`. An imported row is
/// the table's initial row (its optimizer state) with the given weights.
fn write_table_file(
    core: &Core,
    t: &Table,
    path: &Path,
    keys: &[Key],
    values: &[f32],
) -> Result<(), ImportError> {
    let dim = t.dim();
    let mut order: Vec<u32> = (0..keys.len() as u32).collect();
    order.sort_unstable_by_key(|&i| keys[i as usize]);
    if let Some(w) = order
        .windows(2)
        .find(|w| keys[w[0] as usize] == keys[w[1] as usize])
    {
        return Err(InputError::DuplicateKey {
            table: t.spec.name.clone(),
            key: keys[w[0] as usize],
        }
        .into());
    }
    // The optimizer state does not depend on the key; only the weights change per row.
    let mut row = Row::initial(&t.spec, 0);
    // Imported rows count as pushed now, for expiry and eviction.
    row.time = core.now();
    row.lsn = core.log.last_lsn();
    let mut buf = Vec::new();
    let mut file = core.rocks.table_file(path)?;
    for &i in &order {
        let i = i as usize;
        row.data[..dim].copy_from_slice(&values[i * dim..(i + 1) * dim]);
        row.encode(&t.spec.rule, t.spec.dim, &mut buf);
        file.put(keys[i], &buf)?;
    }
    file.finish()?;
    Ok(())
}
