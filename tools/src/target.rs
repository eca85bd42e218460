//! Where a command's parameters live: embedded shards in a directory (the default), or a
//! running cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use paramdb_client::{BlockingClient, ClientOptions, ClusterMap};
use paramdb_server::{StoreOptions, SyncPolicy};

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
}

impl Target {
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
            ..StoreOptions::default()
        };
        Ok(BlockingClient::open_embedded(
            &self.data_dir,
            self.shards,
            store,
            ClientOptions::default(),
        )?)
    }
}
