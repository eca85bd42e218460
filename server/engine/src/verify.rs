//! `paramdb verify`: checks every byte of a shard's directory that can be checked, without
//! changing anything (RocksDB is opened as a secondary instance, the log read with plain
//! reads), so it is safe while a server runs. It reports each problem and goes on.
//!
//! - log: each segment's header, every frame's checksum and payload, the LSN sequence within
//!   and across segments, and that the log continues the checkpoint;
//! - RocksDB: every block of every column family read with checksums verified, every row
//!   decoded (format version, rule tag, dim, length);
//! - metadata: the store format version, the checkpoint LSN, the catalog against the column
//!   families, the exactly-once windows.

use std::path::Path;

use paramdb_types::{Problem, ProblemArea, VerifyReport};

use crate::catalog::{self, is_table_cf, Catalog, STORE_FORMAT_VERSION};
use crate::dedup::SeqWindow;
use crate::error::StorageError;
use crate::fault::RocksFaults;
use crate::rocks::{key_from, Rocks};
use crate::row::Row;
use crate::wal::fs::{parse_segment_name, segment_path};
use crate::wal::reader::{self, Scan};
use crate::wal::recovery::damage_error;

/// Problems reported per table before the rest are only counted.
const MAX_ROW_PROBLEMS: usize = 10;

fn problem(report: &mut VerifyReport, area: ProblemArea, detail: impl Into<String>) {
    report.problems.push(Problem {
        area,
        detail: detail.into(),
    });
}

/// Verifies the shard directory `dir`. Fails only when `dir` is not a shard directory at
/// all; everything found inside is reported in the `VerifyReport`.
///
/// A server running on `dir` may checkpoint between the reading of RocksDB and of the log,
/// deleting segments the older checkpoint still needed. A gap is therefore re-checked while
/// RocksDB shows a newer checkpoint than the one verified.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, StorageError> {
    let mut attempts = 0;
    loop {
        let (report, log_gap) = verify_once(dir)?;
        attempts += 1;
        if !log_gap || attempts == 5 {
            return Ok(report);
        }
        let now = Rocks::open_secondary(&dir.join("rocksdb"), 1 << 20, RocksFaults::none())
            .ok()
            .and_then(|(r, _)| r.meta_get(catalog::META_CHECKPOINT).ok().flatten())
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_le_bytes);
        if now.is_none() || now == report.checkpoint_lsn {
            return Ok(report);
        }
        tracing::debug!(?now, was = ?report.checkpoint_lsn, "checkpoint moved while verifying; again");
    }
}

/// The report, and whether the log does not reach back to the checkpoint: damage, unless a
/// running server took a newer checkpoint (and deleted the segments) after RocksDB was read.
fn verify_once(dir: &Path) -> Result<(VerifyReport, bool), StorageError> {
    if !dir.is_dir() {
        return Err(StorageError::NotAStore {
            path: dir.to_path_buf(),
            reason: "no such directory".into(),
        });
    }
    let rocks_dir = dir.join("rocksdb");
    if !rocks_dir.join("CURRENT").is_file() {
        return Err(StorageError::NotAStore {
            path: dir.to_path_buf(),
            reason: "no rocksdb/CURRENT inside".into(),
        });
    }
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let catalog = match Rocks::open_secondary(&rocks_dir, 8 << 20, RocksFaults::none()) {
        Ok((rocks, cf_names)) => verify_rocks(&rocks, &cf_names, &mut report),
        Err(e) => {
            problem(&mut report, ProblemArea::Rocksdb, crate::error::chain(&e));
            None
        }
    };
    let log_gap = verify_log(&dir.join("wal"), catalog.as_ref(), &mut report);
    Ok((report, log_gap))
}

/// Metadata, catalog and rows. Returns the catalog when it could be read.
fn verify_rocks(rocks: &Rocks, cf_names: &[String], report: &mut VerifyReport) -> Option<Catalog> {
    verify_meta(rocks, report);
    let catalog = match catalog::load(rocks) {
        Ok(c) => c,
        Err(e) => {
            problem(report, ProblemArea::Catalog, crate::error::chain(&e));
            return None;
        }
    };
    verify_tables(rocks, cf_names, &catalog, report);
    Some(catalog)
}

/// The format version, the checkpoint LSN, the exactly-once windows, the meta column family's
/// blocks and the SST file list.
fn verify_meta(rocks: &Rocks, report: &mut VerifyReport) {
    match rocks.meta_get(catalog::META_FORMAT) {
        Ok(Some(v)) => match v.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4"))) {
            Some(found) if found > STORE_FORMAT_VERSION => problem(report, ProblemArea::Meta,
                format!("store format version {found} is newer than this build's {STORE_FORMAT_VERSION}"),
            ),
            Some(_) => {}
            None => problem(report, ProblemArea::Meta, "format version entry is not 4 bytes"),
        },
        Ok(None) => problem(report, ProblemArea::Meta, "no paramdb format entry in RocksDB"),
        Err(e) => problem(report, ProblemArea::Meta, crate::error::chain(&e)),
    }
    match rocks.meta_get(catalog::META_CHECKPOINT) {
        Ok(Some(v)) => match <[u8; 8]>::try_from(v.as_slice()) {
            Ok(b) => report.checkpoint_lsn = Some(u64::from_le_bytes(b)),
            Err(_) => problem(
                report,
                ProblemArea::Meta,
                "checkpoint LSN entry is not 8 bytes",
            ),
        },
        Ok(None) => report.checkpoint_lsn = Some(0),
        Err(e) => problem(report, ProblemArea::Meta, crate::error::chain(&e)),
    }
    match rocks.meta_prefix(catalog::META_CLIENT_PREFIX) {
        Ok(entries) => {
            for (k, v) in entries {
                let id = key_from(&k[catalog::META_CLIENT_PREFIX.len()..]);
                if id.is_none() || SeqWindow::decode(&v).is_none() {
                    problem(
                        report,
                        ProblemArea::Meta,
                        format!(
                            "unreadable exactly-once window {:?}",
                            String::from_utf8_lossy(&k)
                        ),
                    );
                }
            }
        }
        Err(e) => problem(report, ProblemArea::Meta, crate::error::chain(&e)),
    }
    if let Err(e) = rocks.verify_cf(crate::rocks::META_CF, &mut |_, _| {}) {
        problem(
            report,
            ProblemArea::Rocksdb,
            format!("meta column family: {}", crate::error::chain(&e)),
        );
    }
    match rocks.sst_files() {
        Ok(files) => report.sst_files = files.len() as u64,
        Err(e) => problem(report, ProblemArea::Rocksdb, crate::error::chain(&e)),
    }
}

/// The catalog against the column families, and every table's rows.
fn verify_tables(rocks: &Rocks, cf_names: &[String], catalog: &Catalog, report: &mut VerifyReport) {
    for name in cf_names {
        if is_table_cf(name) && !catalog.by_id.values().any(|t| &t.cf == name) {
            report.notes.push(format!(
                "column family {name} has no catalog entry (left by an interrupted table create or drop; the next open drops it)"
            ));
        }
    }
    let mut tables: Vec<_> = catalog.by_id.values().cloned().collect();
    tables.sort_by_key(|t| t.id);
    for t in tables {
        report.tables += 1;
        if t.id >= catalog.next_id {
            problem(
                report,
                ProblemArea::Catalog,
                format!(
                    "table {:?} has id {} but the next table id is {}",
                    t.spec.name, t.id, catalog.next_id
                ),
            );
        }
        if !cf_names.contains(&t.cf) {
            problem(
                report,
                ProblemArea::Catalog,
                format!("table {:?} has no column family {}", t.spec.name, t.cf),
            );
            continue;
        }
        let mut bad = 0usize;
        let mut problems = Vec::new();
        let result = rocks.verify_cf(&t.cf, &mut |k, v| {
            let reason = match key_from(k) {
                None => Some((None, format!("key of {} bytes", k.len()))),
                Some(key) => Row::decode(v, &t.spec.rule, t.spec.dim)
                    .err()
                    .map(|r| (Some(key), r)),
            };
            if let Some((key, reason)) = reason {
                bad += 1;
                if problems.len() < MAX_ROW_PROBLEMS {
                    problems.push(match key {
                        Some(key) => format!("table {:?} row {key}: {reason}", t.spec.name),
                        None => format!("table {:?}: {reason}", t.spec.name),
                    });
                }
            }
        });
        match result {
            Ok(n) => report.rows += n,
            Err(e) => problem(
                report,
                ProblemArea::Rocksdb,
                format!(
                    "table {:?} (column family {}): {}",
                    t.spec.name,
                    t.cf,
                    crate::error::chain(&e)
                ),
            ),
        }
        for p in problems {
            problem(report, ProblemArea::Rocksdb, p);
        }
        if bad > MAX_ROW_PROBLEMS {
            problem(
                report,
                ProblemArea::Rocksdb,
                format!(
                    "table {:?}: {} more unreadable rows",
                    t.spec.name,
                    bad - MAX_ROW_PROBLEMS
                ),
            );
        }
    }
}

/// Every segment: header, frames, LSN continuity, and that the log continues the checkpoint.
/// Returns whether records between the checkpoint and the first segment are missing.
fn verify_log(wal: &Path, catalog: Option<&Catalog>, report: &mut VerifyReport) -> bool {
    let mut log_gap = false;
    let Some(numbers) = segment_numbers(wal, report) else {
        return false;
    };
    let checkpoint = report.checkpoint_lsn;
    // LSN the next segment must start at, once a segment was read whole.
    let mut next_lsn: Option<u64> = None;
    let mut covered = false;
    for (i, &n) in numbers.iter().enumerate() {
        let path = segment_path(wal, n);
        let buf = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.notes.push(format!(
                    "{} was removed while verifying (a checkpoint of the running server)",
                    path.display()
                ));
                next_lsn = None;
                continue;
            }
            Err(e) => {
                problem(
                    report,
                    ProblemArea::Log,
                    format!("reading {}: {e}", path.display()),
                );
                next_lsn = None;
                continue;
            }
        };
        report.segments += 1;
        report.log_bytes += buf.len() as u64;
        let is_last = i + 1 == numbers.len();
        let (header, frames) = match reader::scan(&buf, is_last) {
            Scan::Ok(s) => {
                if s.torn {
                    report.notes.push(format!(
                        "{}: torn tail of {} bytes at offset {} (a write in flight at a crash, or being written now; recovery cuts it)",
                        path.display(),
                        buf.len() - s.valid_end,
                        s.valid_end
                    ));
                }
                (s.header, s.frames)
            }
            Scan::TornHeader => {
                report.notes.push(format!(
                    "{}: header not yet written (a segment created just before a crash, or being created now)",
                    path.display()
                ));
                continue;
            }
            Scan::Damaged { frames, damage } => {
                problem(
                    report,
                    ProblemArea::Log,
                    damage_error(&path, &buf, &damage).to_string(),
                );
                report.records += frames.len() as u64;
                next_lsn = None;
                continue;
            }
        };
        if let Some(expected) = next_lsn {
            if header.first_lsn != expected {
                problem(
                    report,
                    ProblemArea::Log,
                    format!(
                        "{} starts at LSN {} but the segment before it ends at LSN {}",
                        path.display(),
                        header.first_lsn,
                        expected - 1
                    ),
                );
            }
        }
        if let (Some(c), false) = (checkpoint, covered) {
            covered = true;
            log_gap |= !continues_checkpoint(&path, c, header.first_lsn, report);
        }
        check_records(&path, &buf, &frames, catalog, report);
        report.records += frames.len() as u64;
        next_lsn = Some(header.first_lsn + frames.len() as u64);
    }
    log_gap
}

/// The log's segment numbers in order, or `None` (and a problem) when the folder cannot be
/// listed. A missing folder is an empty log.
fn segment_numbers(wal: &Path, report: &mut VerifyReport) -> Option<Vec<u64>> {
    let mut numbers: Vec<u64> = match std::fs::read_dir(wal) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problem(
                report,
                ProblemArea::Log,
                format!("listing {}: {e}", wal.display()),
            );
            return None;
        }
    };
    numbers.sort_unstable();
    Some(numbers)
}

/// Whether the first segment read after the checkpoint at `checkpoint` (starting at
/// `first_lsn`) continues it; a problem names the missing records when it does not.
fn continues_checkpoint(
    path: &Path,
    checkpoint: u64,
    first_lsn: u64,
    report: &mut VerifyReport,
) -> bool {
    if first_lsn <= checkpoint + 1 {
        return true;
    }
    problem(
        report,
        ProblemArea::Log,
        format!(
            "records {}..{} are missing: the checkpoint is at LSN {checkpoint} and {} starts at LSN {first_lsn}",
            checkpoint + 1,
            first_lsn - 1,
            path.display(),
        ),
    );
    false
}

/// Records whose table exists must carry its dim.
fn check_records(
    path: &Path,
    buf: &[u8],
    frames: &[usize],
    catalog: Option<&Catalog>,
    report: &mut VerifyReport,
) {
    let Some(catalog) = catalog else { return };
    for (rec, &off) in reader::records(buf, frames).zip(frames) {
        if let Some(t) = catalog.by_id.get(&rec.table) {
            if rec.dim != t.spec.dim {
                problem(report, ProblemArea::Log,
                    format!(
                        "{} offset {off}: record LSN {} for table {:?} has dim {}, the table has {}",
                        path.display(),
                        rec.lsn,
                        t.spec.name,
                        rec.dim,
                        t.spec.dim
                    ),
                );
            }
        }
    }
}
