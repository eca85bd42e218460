//! A summary of every record in a log directory (`paramdb log dump`), read with plain reads
//! so it is safe while a server appends. For debugging a recovery: what is in the log, where.

use std::path::Path;

use paramdb_types::LogRecord as RecordInfo;

use super::format::{RecordKeys, RecordKind};
use super::fs::{parse_segment_name, segment_path};
use super::reader::{self, Scan};

/// The records of the log in `wal` with LSN ≥ `from`, at most `limit`, plus a line for each
/// segment that ends in a torn tail or damage.
pub fn dump(
    wal: &Path,
    from: u64,
    limit: usize,
) -> std::io::Result<(Vec<RecordInfo>, Vec<String>)> {
    let mut numbers: Vec<u64> = std::fs::read_dir(wal)?
        .flatten()
        .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()))
        .collect();
    numbers.sort_unstable();
    let mut records = Vec::new();
    let mut trouble = Vec::new();
    for (i, &n) in numbers.iter().enumerate() {
        let path = segment_path(wal, n);
        let buf = match std::fs::read(&path) {
            Ok(b) => b,
            // Removed by a running server's checkpoint since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let frames = match reader::scan(&buf, i + 1 == numbers.len()) {
            Scan::Ok(s) => {
                if s.torn {
                    trouble.push(format!(
                        "segment {n}: torn tail at offset {} (recovery cuts it)",
                        s.valid_end
                    ));
                }
                s.frames
            }
            Scan::TornHeader => {
                trouble.push(format!("segment {n}: header not written"));
                Vec::new()
            }
            Scan::Damaged { frames, damage } => {
                trouble.push(format!("segment {n}: damaged: {damage:?}"));
                frames
            }
        };
        for (rec, &off) in reader::records(&buf, &frames).zip(&frames) {
            if rec.lsn < from {
                continue;
            }
            if records.len() >= limit {
                return Ok((records, trouble));
            }
            records.push(RecordInfo {
                segment: n,
                offset: off as u64,
                lsn: rec.lsn,
                kind: match (rec.kind, rec.keys) {
                    (RecordKind::Push, RecordKeys::List(_)) => "keys",
                    (RecordKind::Push, _) => "range",
                    (RecordKind::Delete, RecordKeys::List(_)) => "delete-keys",
                    (RecordKind::Delete, _) => "delete-range",
                    (RecordKind::Lifecycle, _) => "lifecycle",
                    (RecordKind::Evict, _) => "evict",
                    (RecordKind::Note, _) => "note",
                },
                client: rec.client,
                seq: rec.seq,
                table: rec.table,
                dim: rec.dim,
                rows: rec.rows,
                first_key: match rec.keys {
                    RecordKeys::Span { start, .. } => Some(start),
                    RecordKeys::None => None,
                    _ => (rec.rows > 0).then(|| rec.key(0)),
                },
                bytes: (rec.values.len() + 8 * rec.rows as usize) as u64,
            });
        }
    }
    Ok((records, trouble))
}
