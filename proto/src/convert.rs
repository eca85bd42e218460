//! Conversions between the protobuf messages and paramdb's plain types (`paramdb-types`), in
//! both directions, written once: the server encodes with them and the gRPC client decodes.
//! The in-process client never calls them.

use std::time::Duration;

use paramdb_types::{
    CacheStats, ClientWindow, FenceReport, KeyRange, LifecycleCounts, LogRecord, Problem,
    ProblemArea, ShardBackup, ShardReport, StoreStats, TableReport, TableSpec, VerifyReport,
};

use crate::v1;

pub fn spec_to_wire(s: &TableSpec) -> v1::TableSpec {
    v1::TableSpec {
        name: s.name.clone(),
        dim: s.dim,
        init: s.init.to_string(),
        rule: s.rule.to_string(),
        seed: s.seed,
        lifecycle: s.lifecycle.to_string(),
    }
}

/// A table definition off the wire; an empty initializer or rule takes its default. The error
/// says which field does not parse.
pub fn spec_from_wire(s: v1::TableSpec) -> Result<TableSpec, String> {
    Ok(TableSpec {
        init: if s.init.is_empty() {
            Default::default()
        } else {
            s.init.parse()?
        },
        rule: if s.rule.is_empty() {
            Default::default()
        } else {
            s.rule.parse()?
        },
        lifecycle: s.lifecycle.parse()?,
        name: s.name,
        dim: s.dim,
        seed: s.seed,
    })
}

pub fn info_to_wire(id: u32, spec: &TableSpec) -> v1::TableInfo {
    v1::TableInfo {
        id,
        spec: Some(spec_to_wire(spec)),
    }
}

/// A shard's counters as the wire carries them, with the shard's number and range.
pub fn stats_to_wire(shard: u32, range: KeyRange, s: StoreStats) -> v1::StatsResponse {
    v1::StatsResponse {
        shard,
        range_start: range.start,
        range_end: range.end,
        tables: s.tables as u64,
        pushes: s.pushes,
        duplicate_pushes: s.duplicate_pushes,
        rows_pushed: s.rows_pushed,
        deletes: s.deletes,
        pulls: s.pulls,
        rows_pulled: s.rows_pulled,
        dirty_rows: s.dirty_rows as u64,
        log_segments: s.log_segments as u64,
        log_bytes_since_checkpoint: s.log_bytes_since_checkpoint,
        last_lsn: s.last_lsn,
        durable_lsn: s.durable_lsn,
        checkpoint_lsn: s.checkpoint_lsn,
        checkpoints: s.checkpoints,
        fsyncs: s.fsyncs,
        poisoned: s.poisoned.unwrap_or_default(),
        cache_budget_bytes: s.cache.budget_bytes,
        cache_resident_bytes: s.cache.resident_bytes,
        cache_resident_rows: s.cache.resident_rows,
        cache_hits: s.cache.hits,
        cache_misses: s.cache.misses,
        cache_admitted: s.cache.admitted,
        cache_declined: s.cache.declined,
        cache_evictions: s.cache.evictions,
        dirty_bytes: s.dirty_bytes,
        log_bytes_written: s.log_bytes_written,
        checkpoint_age_ms: s.checkpoint_age.as_millis() as u64,
        rows_admitted: s.lifecycle.admitted,
        rows_unadmitted: s.lifecycle.unadmitted,
        rows_expired: s.lifecycle.expired,
        rows_evicted: s.lifecycle.evicted,
    }
}

/// The shard's number, its range and its counters.
pub fn stats_from_wire(r: v1::StatsResponse) -> (u32, KeyRange, StoreStats) {
    let stats = StoreStats {
        tables: r.tables as usize,
        pushes: r.pushes,
        duplicate_pushes: r.duplicate_pushes,
        rows_pushed: r.rows_pushed,
        deletes: r.deletes,
        lifecycle: LifecycleCounts {
            admitted: r.rows_admitted,
            unadmitted: r.rows_unadmitted,
            expired: r.rows_expired,
            evicted: r.rows_evicted,
        },
        pulls: r.pulls,
        rows_pulled: r.rows_pulled,
        dirty_rows: r.dirty_rows as usize,
        dirty_bytes: r.dirty_bytes,
        log_segments: r.log_segments as usize,
        log_bytes_since_checkpoint: r.log_bytes_since_checkpoint,
        last_lsn: r.last_lsn,
        durable_lsn: r.durable_lsn,
        checkpoint_lsn: r.checkpoint_lsn,
        checkpoints: r.checkpoints,
        fsyncs: r.fsyncs,
        log_bytes_written: r.log_bytes_written,
        checkpoint_age: Duration::from_millis(r.checkpoint_age_ms),
        poisoned: (!r.poisoned.is_empty()).then_some(r.poisoned),
        cache: CacheStats {
            budget_bytes: r.cache_budget_bytes,
            resident_bytes: r.cache_resident_bytes,
            resident_rows: r.cache_resident_rows,
            hits: r.cache_hits,
            misses: r.cache_misses,
            admitted: r.cache_admitted,
            declined: r.cache_declined,
            evictions: r.cache_evictions,
            warm_rows: 0,
        },
    };
    (r.shard, KeyRange::new(r.range_start, r.range_end), stats)
}

/// A shard's inspect report as the wire carries it.
pub fn report_to_wire(shard: u32, range: KeyRange, r: ShardReport) -> v1::InspectResponse {
    v1::InspectResponse {
        shard,
        range_start: range.start,
        range_end: range.end,
        dir: r.dir.display().to_string(),
        read_only: r.read_only,
        store_format: r.store_format,
        log_format: r.log_format,
        row_format: r.row_format,
        cache_format: r.cache_format,
        checkpoint_lsn: r.checkpoint_lsn,
        last_lsn: r.last_lsn,
        log_segments: r.log_segments,
        log_bytes: r.log_bytes,
        rocksdb_bytes: r.rocksdb_bytes,
        cache_file_bytes: r.cache_file_bytes,
        dirty_rows: r.dirty_rows,
        cache_budget_bytes: r.cache.budget_bytes,
        cache_resident_rows: r.cache.resident_rows,
        cache_hits: r.cache.hits,
        cache_misses: r.cache.misses,
        tables: r
            .tables
            .into_iter()
            .map(|t| v1::TableReport {
                name: t.name,
                id: t.id,
                dim: t.dim,
                rule: t.rule,
                floats_per_row: t.floats_per_row,
                rows: t.rows,
                rows_exact: t.rows_exact,
                sst_files: t.sst_files,
                sst_bytes: t.sst_bytes,
                dirty_rows: t.dirty_rows,
                has_keys: t.key_range.is_some(),
                first_key: t.key_range.map_or(0, |r| r.0),
                last_key: t.key_range.map_or(0, |r| r.1),
                lifecycle: t.lifecycle,
                rows_admitted: t.lifecycle_counts.admitted,
                rows_unadmitted: t.lifecycle_counts.unadmitted,
                rows_expired: t.lifecycle_counts.expired,
                rows_evicted: t.lifecycle_counts.evicted,
            })
            .collect(),
    }
}

/// The inverse of `report_to_wire` (what a client makes of a shard's answer).
pub fn report_from_wire(r: v1::InspectResponse) -> ShardReport {
    ShardReport {
        dir: r.dir.into(),
        read_only: r.read_only,
        store_format: r.store_format,
        log_format: r.log_format,
        row_format: r.row_format,
        cache_format: r.cache_format,
        checkpoint_lsn: r.checkpoint_lsn,
        last_lsn: r.last_lsn,
        log_segments: r.log_segments,
        log_bytes: r.log_bytes,
        rocksdb_bytes: r.rocksdb_bytes,
        cache_file_bytes: r.cache_file_bytes,
        dirty_rows: r.dirty_rows,
        cache: CacheStats {
            budget_bytes: r.cache_budget_bytes,
            resident_rows: r.cache_resident_rows,
            hits: r.cache_hits,
            misses: r.cache_misses,
            ..Default::default()
        },
        tables: r
            .tables
            .into_iter()
            .map(|t| TableReport {
                name: t.name,
                id: t.id,
                dim: t.dim,
                rule: t.rule,
                floats_per_row: t.floats_per_row,
                rows: t.rows,
                rows_exact: t.rows_exact,
                sst_files: t.sst_files,
                sst_bytes: t.sst_bytes,
                dirty_rows: t.dirty_rows,
                key_range: t.has_keys.then_some((t.first_key, t.last_key)),
                lifecycle: t.lifecycle,
                lifecycle_counts: LifecycleCounts {
                    admitted: t.rows_admitted,
                    unadmitted: t.rows_unadmitted,
                    expired: t.rows_expired,
                    evicted: t.rows_evicted,
                },
            })
            .collect(),
    }
}

pub fn verify_to_wire(r: VerifyReport) -> v1::VerifyResponse {
    v1::VerifyResponse {
        dir: r.dir.display().to_string(),
        has_checkpoint_lsn: r.checkpoint_lsn.is_some(),
        checkpoint_lsn: r.checkpoint_lsn.unwrap_or(0),
        segments: r.segments,
        records: r.records,
        log_bytes: r.log_bytes,
        tables: r.tables,
        rows: r.rows,
        sst_files: r.sst_files,
        notes: r.notes,
        problems: r
            .problems
            .into_iter()
            .map(|p| v1::VerifyProblem {
                area: p.area.name().to_string(),
                detail: p.detail,
            })
            .collect(),
    }
}

/// The inverse of `verify_to_wire`. A problem in an area this build does not know is kept,
/// filed under `meta` with the area's name in front.
pub fn verify_from_wire(r: v1::VerifyResponse) -> VerifyReport {
    VerifyReport {
        dir: r.dir.into(),
        checkpoint_lsn: r.has_checkpoint_lsn.then_some(r.checkpoint_lsn),
        segments: r.segments,
        records: r.records,
        log_bytes: r.log_bytes,
        tables: r.tables,
        rows: r.rows,
        sst_files: r.sst_files,
        notes: r.notes,
        problems: r
            .problems
            .into_iter()
            .map(|p| match ProblemArea::from_name(&p.area) {
                Some(area) => Problem {
                    area,
                    detail: p.detail,
                },
                None => Problem {
                    area: ProblemArea::Meta,
                    detail: format!("{}: {}", p.area, p.detail),
                },
            })
            .collect(),
    }
}

pub fn dump_to_wire((records, trouble): (Vec<LogRecord>, Vec<String>)) -> v1::LogDumpResponse {
    v1::LogDumpResponse {
        records: records
            .into_iter()
            .map(|r| v1::LogRecordInfo {
                segment: r.segment,
                offset: r.offset,
                lsn: r.lsn,
                kind: r.kind.to_string(),
                client: r.client,
                seq: r.seq,
                table: r.table,
                dim: r.dim,
                rows: r.rows,
                has_first_key: r.first_key.is_some(),
                first_key: r.first_key.unwrap_or(0),
                bytes: r.bytes,
            })
            .collect(),
        trouble,
    }
}

pub fn dump_from_wire(d: v1::LogDumpResponse) -> (Vec<LogRecord>, Vec<String>) {
    let records = d
        .records
        .into_iter()
        .map(|r| LogRecord {
            segment: r.segment,
            offset: r.offset,
            lsn: r.lsn,
            kind: match r.kind.as_str() {
                "range" => "range",
                "delete-keys" => "delete-keys",
                "delete-range" => "delete-range",
                "lifecycle" => "lifecycle",
                "evict" => "evict",
                _ => "keys",
            },
            client: r.client,
            seq: r.seq,
            table: r.table,
            dim: r.dim,
            rows: r.rows,
            first_key: r.has_first_key.then_some(r.first_key),
            bytes: r.bytes,
        })
        .collect();
    (records, d.trouble)
}

pub fn fence_to_wire(r: FenceReport) -> v1::FenceResponse {
    v1::FenceResponse {
        fence: r.fence,
        lsn: r.lsn,
        clients: r
            .clients
            .into_iter()
            .map(|w| v1::ClientWindow {
                client: w.client,
                high: w.high,
                bits: w.bits,
                part_seqs: w.parts.iter().map(|p| p.0).collect(),
                part_counts: w.parts.iter().map(|p| p.1).collect(),
            })
            .collect(),
    }
}

pub fn fence_from_wire(r: v1::FenceResponse) -> FenceReport {
    FenceReport {
        fence: r.fence,
        lsn: r.lsn,
        clients: r
            .clients
            .into_iter()
            .map(|w| ClientWindow {
                client: w.client,
                high: w.high,
                bits: w.bits,
                parts: w.part_seqs.into_iter().zip(w.part_counts).collect(),
            })
            .collect(),
    }
}

pub fn backup_to_wire(b: ShardBackup) -> v1::BackupResponse {
    v1::BackupResponse {
        checkpoint_lsn: b.checkpoint_lsn,
        end_lsn: b.end_lsn,
        files: b.files,
        bytes: b.bytes,
        bytes_copied: b.bytes_copied,
        bytes_linked: b.bytes_linked,
        bytes_reused: b.bytes_reused,
    }
}

pub fn backup_from_wire(b: v1::BackupResponse) -> ShardBackup {
    ShardBackup {
        checkpoint_lsn: b.checkpoint_lsn,
        end_lsn: b.end_lsn,
        files: b.files,
        bytes: b.bytes,
        bytes_copied: b.bytes_copied,
        bytes_linked: b.bytes_linked,
        bytes_reused: b.bytes_reused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_and_backup_round_trip() {
        let f = FenceReport {
            fence: 3,
            lsn: 99,
            clients: vec![ClientWindow {
                client: 7,
                high: 12,
                bits: vec![5; 16],
                parts: vec![(11, 3), (12, 2)],
            }],
        };
        assert_eq!(fence_from_wire(fence_to_wire(f.clone())), f);
        let b = ShardBackup {
            checkpoint_lsn: 1,
            end_lsn: 2,
            files: 3,
            bytes: 4,
            bytes_copied: 5,
            bytes_linked: 6,
            bytes_reused: 7,
        };
        assert_eq!(backup_from_wire(backup_to_wire(b.clone())), b);
    }

    #[test]
    fn stats_round_trip() {
        let s = StoreStats {
            pushes: 3,
            dirty_bytes: 9,
            checkpoint_age: Duration::from_millis(1500),
            poisoned: Some("disk".into()),
            lifecycle: LifecycleCounts {
                admitted: 1,
                unadmitted: 2,
                expired: 3,
                evicted: 4,
            },
            cache: CacheStats {
                hits: 4,
                ..Default::default()
            },
            ..Default::default()
        };
        let (shard, range, back) =
            stats_from_wire(stats_to_wire(2, KeyRange::new(5, 9), s.clone()));
        assert_eq!((shard, range), (2, KeyRange::new(5, 9)));
        assert_eq!(back, s);
    }
}
