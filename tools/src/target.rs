//! Where a command's parameters live: embedded shards in a directory (the default), or a
//! running cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};
use paramdb_engine::{StoreOptions, SyncPolicy};

#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// Embedded shards in this directory (created if missing), used when no --cluster is given.
    #[arg(long, default_value = "paramdb-data")]
    pub data_dir: PathBuf,
    /// Number of embedded shards (must match the directory's, once created).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// A running cluster's file (shards, key ranges, addresses) instead of embedded shards.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Embedded shards: how long expired and evicted rows stay on disk and deleted keys are
    /// remembered, for `export --since LSN` (default one day; 0 drops them at once).
    #[arg(long, default_value_t = paramdb_engine::DEFAULT_GONE_RETENTION_SECS)]
    pub gone_retention_secs: u32,
}

impl Target {
    /// For commands that only read: the cluster, or the shards in `--data-dir` opened
    /// read-only (a RocksDB secondary and the log read without writing), which is safe while a
    /// server or a trainer is using them. The directory may be one server's shard directory or
    /// an embedded data directory; its layout says which.
    pub fn connect_read_only(&self) -> anyhow::Result<BlockingClient> {
        self.connect_read_only_cached(32 << 20)
    }

    /// `connect_read_only` with a RocksDB block cache of `block_cache_bytes` for embedded
    /// shards: for commands that look many rows up at random (`eval perplexity`), where every
    /// miss reads a block from the file system and checks its checksum again.
    pub fn connect_read_only_cached(
        &self,
        block_cache_bytes: usize,
    ) -> anyhow::Result<BlockingClient> {
        if let Some(file) = &self.cluster {
            let map = ClusterMap::load(file)?;
            return Ok(BlockingClient::connect(map, tool_client_options())?);
        }
        shard_dirs(&self.data_dir)?;
        let store = StoreOptions {
            block_cache_bytes,
            gone_retention_secs: self.gone_retention_secs,
            ..StoreOptions::default()
        };
        Ok(BlockingClient::open_embedded_read_only(
            &self.data_dir,
            store,
            tool_client_options(),
        )?)
    }

    /// For maintenance commands (checkpoint, compact): the cluster, or the shards already in
    /// `--data-dir` opened read-write (refused while another process has them open). Creates
    /// nothing.
    pub fn connect_existing(&self) -> anyhow::Result<BlockingClient> {
        if let Some(file) = &self.cluster {
            let map = ClusterMap::load(file)?;
            return Ok(BlockingClient::connect(map, tool_client_options())?);
        }
        let dir = &self.data_dir;
        let dirs = shard_dirs(dir)?;
        if dirs[0] == *dir {
            // One server's shard directory.
            let opts = StoreOptions {
                gone_retention_secs: self.gone_retention_secs,
                ..StoreOptions::default()
            };
            let store =
                paramdb_engine::Store::open(dir, opts).map_err(|e| in_use(dir, e.into()))?;
            let map = ClusterMap::even(&["local".to_string()]);
            return Ok(BlockingClient::embedded(
                map,
                vec![std::sync::Arc::new(store)],
                ClientOptions::default(),
            )?);
        }
        let shards = dirs.len();
        Target {
            shards,
            ..self.clone()
        }
        .connect()
    }

    pub fn connect(&self) -> anyhow::Result<BlockingClient> {
        if let Some(file) = &self.cluster {
            let map = ClusterMap::load(file)?;
            return Ok(BlockingClient::connect(map, ClientOptions::default())?);
        }
        if self.shards == 0 {
            bail!("--shards must be at least 1");
        }
        let existing = std::fs::read_dir(&self.data_dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("shard-"))
                    .count()
            })
            .unwrap_or(0);
        if existing != 0 && existing != self.shards {
            bail!(
                "{} holds {existing} embedded shards; pass --shards {existing} (keys are placed by shard count)",
                self.data_dir.display()
            );
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let store = StoreOptions {
            // Training resumes from its recorded position, so a power cut may cost the last
            // 50 ms of pushes; a killed process loses nothing.
            sync: SyncPolicy::Interval(Duration::from_millis(50)),
            gone_retention_secs: self.gone_retention_secs,
            ..StoreOptions::default()
        };
        BlockingClient::open_embedded(&self.data_dir, self.shards, store, ClientOptions::default())
            .map_err(|e| in_use(&self.data_dir, e.into()))
    }
}

/// RocksDB's lock error, said plainly.
fn in_use(dir: &std::path::Path, e: anyhow::Error) -> anyhow::Error {
    if e.to_string().contains("LOCK") {
        anyhow::anyhow!(
            "{} is in use by another process (a server or a trainer); commands that change it go through the server with --cluster, and reading commands open it read-only",
            dir.display()
        )
    } else {
        e
    }
}

/// A tool talks to a server once: an unreachable one should fail in seconds, not after a
/// trainer's patient retries.
fn tool_client_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        max_retries: 2,
        ..ClientOptions::default()
    }
}

/// The shard directories under `dir`: `dir` itself when it is a shard's, else its
/// `shard-<i>` directories.
pub fn shard_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let dirs = paramdb_client::embedded_shard_dirs(dir);
    if dirs.is_empty() {
        bail!(
            "{} is not a paramdb data directory (no rocksdb/ or shard-0/ inside)",
            dir.display()
        );
    }
    Ok(dirs)
}
