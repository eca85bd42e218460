//! The cluster file: the shards, the contiguous key range each owns, and its address.
//!
//! ```toml
//! [[shard]]
//! range = [0, 6148914691236517205]      # [start, end)
//! address = "10.0.0.1:7070"
//!
//! [[shard]]
//! range = [6148914691236517205, 18446744073709551615]
//! address = "10.0.0.2:7070"
//! ```
//!
//! Shards are numbered in file order. Ranges must be non-empty, sorted, and must not overlap;
//! gaps are allowed (keys in a gap belong to no shard and are refused).
//!
//! A replicated shard lists its group's replicas instead of one address (replica `i` is the
//! `i`-th, from 1; a server is started with `--shard N --replica I`):
//!
//! ```toml
//! [[shard]]
//! range = [0, 9223372036854775808]
//! replicas = ["10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"]
//! ```
//!
//! A group has an odd number of replicas (an even one tolerates no more failures than one
//! fewer), and no address serves two replicas. Replica `i` of the list has id `i` (from 1)
//! unless `replica_ids` says otherwise: a replica that replaces a lost one takes a new id,
//!
//! ```toml
//! replicas = ["10.0.0.1:7070", "10.0.0.9:7070", "10.0.0.3:7070"]
//! replica_ids = [1, 4, 3]          # 10.0.0.9 replaced replica 2
//! ```
//!
//! and `paramdb cluster set-members` makes the group's membership what the file lists.
//!
//! Servers that require TLS or bearer tokens are reached with, before the shards:
//!
//! ```toml
//! token_file = "paramdb.token"    # the token to send (a file, so it is not in the cluster file)
//! [tls]
//! ca = "ca.pem"                   # the CA that signed the servers' certificates
//! domain = "paramdb"              # the name to expect in them (default: the address's host)
//! cert = "client.pem"             # a client certificate and key, for mutual TLS
//! key = "client.key"
//! ```
//!
//! Relative paths are relative to the cluster file.

use std::path::{Path, PathBuf};

use paramdb_types::quote;
use serde::{Deserialize, Serialize};

/// One shard of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// `[start, end)`.
    pub range: [u64; 2],
    /// The shard server's address (an unreplicated shard).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The addresses of the shard's replica group, replica 1 first (a replicated shard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The replicas' ids, in the order of `replicas` (empty: 1, 2, 3, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_ids: Vec<u64>,
}

impl ShardEntry {
    /// An unreplicated shard.
    pub fn new(range: [u64; 2], address: impl Into<String>) -> ShardEntry {
        ShardEntry {
            range,
            address: address.into(),
            replicas: Vec::new(),
            replica_ids: Vec::new(),
        }
    }

    /// The replicas' ids, in the order of `replicas`.
    pub fn replica_ids(&self) -> Vec<u64> {
        if self.replica_ids.is_empty() {
            (1..=self.replicas.len() as u64).collect()
        } else {
            self.replica_ids.clone()
        }
    }

    /// Each replica's id and address.
    pub fn members(&self) -> Vec<(u64, &str)> {
        self.replica_ids()
            .into_iter()
            .zip(self.replicas.iter().map(String::as_str))
            .collect()
    }

    /// Where the shard is served: its replicas, or its one address.
    pub fn addresses(&self) -> Vec<&str> {
        if self.replicas.is_empty() {
            vec![self.address.as_str()]
        } else {
            self.replicas.iter().map(String::as_str).collect()
        }
    }

    pub fn is_replicated(&self) -> bool {
        !self.replicas.is_empty()
    }
}

/// How to reach servers that serve TLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    pub ca: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// The whole cluster file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMap {
    /// A file holding the bearer token to send with every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTls>,
    #[serde(rename = "shard")]
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("reading cluster file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("cluster map: {0}")]
    Invalid(String),
}

impl ClusterMap {
    pub fn load(path: &Path) -> Result<ClusterMap, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut map = Self::parse(&text).map_err(|e| match e {
            ClusterError::Parse { message, .. } => ClusterError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(t) = &mut map.token_file {
            resolve(t);
        }
        if let Some(tls) = &mut map.tls {
            resolve(&mut tls.ca);
            tls.cert.as_mut().map(resolve);
            tls.key.as_mut().map(resolve);
        }
        Ok(map)
    }

    pub fn parse(text: &str) -> Result<ClusterMap, ClusterError> {
        let map: ClusterMap = toml::from_str(text).map_err(|e| ClusterError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        map.validate()?;
        Ok(map)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// `n` shards splitting the whole key space evenly, at the given addresses.
    pub fn even(addresses: &[String]) -> ClusterMap {
        let n = addresses.len().max(1) as u128;
        let span = u64::MAX as u128 + 1;
        let shards = addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let start = (span * i as u128 / n) as u64;
                let end = if i as u128 + 1 == n {
                    u64::MAX
                } else {
                    (span * (i as u128 + 1) / n) as u64
                };
                ShardEntry::new([start, end], a.clone())
            })
            .collect();
        ClusterMap {
            shards,
            ..ClusterMap::default()
        }
    }

    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.shards.is_empty() {
            return Err(ClusterError::Invalid("no shards".into()));
        }
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        for (i, s) in self.shards.iter().enumerate() {
            match (s.address.is_empty(), s.replicas.is_empty()) {
                (true, true) => {
                    return Err(ClusterError::Invalid(format!(
                        "shard {i} has neither an address nor replicas"
                    )))
                }
                (false, false) => {
                    return Err(ClusterError::Invalid(format!(
                        "shard {i} has both an address and replicas: list its replicas only"
                    )))
                }
                _ => {}
            }
            if s.replicas.len() % 2 == 0 && !s.replicas.is_empty() {
                return Err(ClusterError::Invalid(format!(
                    "shard {i} has {} replicas: a group needs an odd number (a group of {} \
                     survives no more failures than one of {})",
                    s.replicas.len(),
                    s.replicas.len(),
                    s.replicas.len() - 1
                )));
            }
            if !s.replica_ids.is_empty() {
                if s.replica_ids.len() != s.replicas.len() {
                    return Err(ClusterError::Invalid(format!(
                        "shard {i} lists {} replica_ids for {} replicas",
                        s.replica_ids.len(),
                        s.replicas.len()
                    )));
                }
                let mut ids = std::collections::BTreeSet::new();
                for &id in &s.replica_ids {
                    if id == 0 || !ids.insert(id) {
                        return Err(ClusterError::Invalid(format!(
                            "shard {i}'s replica_ids must be distinct and from 1 ({id} is not)"
                        )));
                    }
                }
            }
            for a in &s.replicas {
                if a.is_empty() {
                    return Err(ClusterError::Invalid(format!(
                        "shard {i} lists an empty replica address"
                    )));
                }
                if let Some(other) = seen.insert(a.as_str(), i) {
                    return Err(ClusterError::Invalid(if other == i {
                        format!("shard {i} lists replica {} twice", quote(a))
                    } else {
                        format!(
                            "replica {} is listed in shard {other} and in shard {i}: a \
                             replica serves one range",
                            quote(a)
                        )
                    }));
                }
            }
            if s.range[0] >= s.range[1] {
                return Err(ClusterError::Invalid(format!(
                    "shard {i} has an empty range [{}, {})",
                    s.range[0], s.range[1]
                )));
            }
            if i > 0 && self.shards[i - 1].range[1] > s.range[0] {
                return Err(ClusterError::Invalid(format!(
                    "shard {i} range [{}, {}) overlaps or precedes shard {}",
                    s.range[0],
                    s.range[1],
                    i - 1
                )));
            }
        }
        Ok(())
    }

    /// The shard owning `key`, if any.
    pub fn shard_of(&self, key: u64) -> Option<usize> {
        let i = self.shards.partition_point(|s| s.range[1] <= key);
        (i < self.shards.len() && self.shards[i].range[0] <= key).then_some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_validates_and_routes() {
        let m = ClusterMap::parse(
            "[[shard]]\nrange = [0, 100]\naddress = \"a:1\"\n[[shard]]\nrange = [200, 300]\naddress = \"b:2\"\n",
        )
        .unwrap();
        assert_eq!(m.shard_of(0), Some(0));
        assert_eq!(m.shard_of(99), Some(0));
        assert_eq!(m.shard_of(150), None);
        assert_eq!(m.shard_of(299), Some(1));
        assert_eq!(m.shard_of(300), None);
        assert_eq!(ClusterMap::parse(&m.to_toml()).unwrap(), m);
        assert!(ClusterMap::parse("[[shard]]\nrange = [5, 5]\naddress = \"a\"\n").is_err());
        assert!(
            ClusterMap::parse("[[shard]]\nrange = [0, 9]\naddress = \"a\"\nport = 1\n").is_err()
        );
        assert!(ClusterMap::parse(
            "[[shard]]\nrange = [0, 10]\naddress = \"a\"\n[[shard]]\nrange = [5, 20]\naddress = \"b\"\n"
        )
        .is_err());
    }

    #[test]
    fn even_split_covers_the_key_space() {
        let m = ClusterMap::even(&["a".into(), "b".into(), "c".into()]);
        m.validate().unwrap();
        assert_eq!(m.shards[0].range[0], 0);
        assert_eq!(m.shards[2].range[1], u64::MAX);
        assert_eq!(m.shards[0].range[1], m.shards[1].range[0]);
        assert_eq!(m.shard_of(u64::MAX / 2), Some(1));
    }
}
