//! Helpers shared by the scenarios: temporary stores, fault-injecting file systems.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use paramdb_engine::wal::fault::FaultFs;
use paramdb_engine::{Store, StoreOptions, SyncPolicy};

/// Options for deterministic tests: no background thread, checkpoints only by hand.
pub fn manual_opts() -> StoreOptions {
    StoreOptions {
        sync: SyncPolicy::Sync,
        background: false,
        block_cache_bytes: 8 << 20,
        ..StoreOptions::default()
    }
}

pub fn open_fault(
    dir: &Path,
    fs: &FaultFs,
    opts: StoreOptions,
) -> Result<Store, paramdb_engine::OpenError> {
    Store::open_with_fs(dir, opts, Arc::new(fs.clone()))
}

/// The log directory of a store in `dir`.
pub fn wal_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

/// Segment files of a store on the fault file system, in order.
pub fn segments(fs: &FaultFs, dir: &Path) -> Vec<PathBuf> {
    use paramdb_engine::wal::LogFs;
    let mut v: Vec<PathBuf> = fs
        .list(&wal_dir(dir))
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .map(|n| wal_dir(dir).join(n))
        .collect();
    v.sort();
    v
}

/// Every file under `dir` with its bytes, for "nothing changed on disk" checks.
pub fn snapshot_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}
