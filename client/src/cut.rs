//! A consistent cut across shards for a cluster backup: every client's write is in it on all
//! of its shards or on none.
//!
//! Each shard's part of a write carries how many shards' parts the client split it into, and
//! each shard remembers that for its clients' recent multi-shard writes (beside the
//! exactly-once window). The coordinator puts a write fence up on every shard: from then on a
//! shard logs no new write. A write that some shards applied before their fences and others
//! have not (it was in flight) is found by comparing the windows: fewer shards applied it
//! than it has parts. Those shards are told to let it through (*owed*), and the coordinator
//! waits until every such write is applied on as many shards as it has parts. Then each
//! shard's cut is its log's end, which the shard's backup fixes before lifting its fence.
//! A write held at a fence was applied nowhere before the cut and goes after it everywhere.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use paramdb_types::FenceReport;

use crate::client::Client;
use crate::error::ClientError;

/// A write split over several shards, and which shards have applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Partial {
    parts: u32,
    /// Per shard: applied (or too old to tell, which means long complete).
    applied: Vec<bool>,
}

impl Partial {
    fn complete(&self) -> bool {
        self.applied.iter().filter(|&&a| a).count() as u32 >= self.parts
    }
}

/// The writes some shards applied and others may still owe, by `(client, seq)`.
fn partial_writes(reports: &[FenceReport]) -> BTreeMap<(u64, u64), Partial> {
    let windows: Vec<HashMap<u64, &paramdb_types::ClientWindow>> = reports
        .iter()
        .map(|r| r.clients.iter().map(|w| (w.client, w)).collect())
        .collect();
    let mut out = BTreeMap::new();
    for r in reports {
        for w in &r.clients {
            for &(seq, parts) in &w.parts {
                out.entry((w.client, seq)).or_insert_with(|| Partial {
                    parts,
                    applied: windows
                        .iter()
                        .map(|ws| {
                            ws.get(&w.client)
                                .is_some_and(|w| w.applied(seq).unwrap_or(true))
                        })
                        .collect(),
                });
            }
        }
    }
    out.retain(|_, p| !p.complete());
    out
}

/// A cut in place: every shard fenced, every write caught on some of its shards completed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Each shard's fence, to pass to its backup (which lifts it).
    pub fences: Vec<u64>,
    /// Writes found on fewer shards than their parts, and completed.
    pub caught: usize,
    /// Writes left on fewer shards than their parts (`allow_partial`): `(client, seq, shards
    /// that have it, parts)`. The cluster itself holds them so; their clients gave up.
    pub partial: Vec<(u64, u64, usize, u32)>,
}

impl Client {
    /// Puts a write fence up on every shard for `lease` and completes the writes caught
    /// half-applied, waiting at most `wait` for them. A write still incomplete then (its
    /// client gave up on some shard) fails the cut, or with `allow_partial` is left as the
    /// cluster holds it and reported. On failure every fence is taken down again.
    pub async fn fence_cut(
        &self,
        lease: Duration,
        wait: Duration,
        allow_partial: bool,
    ) -> Result<Cut, ClientError> {
        let shards = self.shards();
        let results = futures::future::join_all(shards.iter().map(|s| s.fence(lease))).await;
        let mut reports = Vec::with_capacity(results.len());
        let mut failed = None;
        for r in results {
            match r {
                Ok(r) => reports.push(r),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        let fences: Vec<u64> = reports.iter().map(|r| r.fence).collect();
        if let Some(e) = failed {
            self.unfence(&fences).await;
            return Err(e);
        }
        match self
            .complete_partials(&fences, &reports, wait, allow_partial)
            .await
        {
            Ok((caught, partial)) => Ok(Cut {
                fences,
                caught,
                partial,
            }),
            Err(e) => {
                self.unfence(&fences).await;
                Err(e)
            }
        }
    }

    async fn complete_partials(
        &self,
        fences: &[u64],
        reports: &[FenceReport],
        wait: Duration,
        allow_partial: bool,
    ) -> Result<(usize, Vec<(u64, u64, usize, u32)>), ClientError> {
        let mut partial = partial_writes(reports);
        let caught = partial.len();
        let shards = self.shards();
        let deadline = Instant::now() + wait;
        while !partial.is_empty() {
            for (i, s) in shards.iter().enumerate() {
                let owed: Vec<(u64, u64)> = partial
                    .iter()
                    .filter(|(_, p)| !p.applied[i])
                    .map(|(&k, _)| k)
                    .collect();
                if owed.is_empty() {
                    continue;
                }
                let applied = s.owe(fences[i], owed.clone()).await?;
                for (k, a) in owed.into_iter().zip(applied) {
                    if let Some(p) = partial.get_mut(&k) {
                        p.applied[i] |= a;
                    }
                }
            }
            partial.retain(|_, p| !p.complete());
            if let Some((&(client, seq), p)) = partial.iter().next() {
                if Instant::now() >= deadline {
                    let have = |p: &Partial| p.applied.iter().filter(|&&a| a).count();
                    if allow_partial {
                        let left = partial
                            .iter()
                            .map(|(&(c, s), p)| (c, s, have(p), p.parts))
                            .collect();
                        return Ok((caught, left));
                    }
                    return Err(ClientError::Cut(format!(
                        "write {seq} of client {client:#x} reached {} of its {} shards and \
                         no more within {:?}, so the backup cannot cut it whole ({} such \
                         writes); if its client gave up on it, --allow-partial backs up the \
                         cluster as it holds them",
                        have(p),
                        p.parts,
                        wait,
                        partial.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok((caught, Vec::new()))
    }

    /// Takes the fences down (best effort: each also ends with its lease).
    pub async fn unfence(&self, fences: &[u64]) {
        let shards = self.shards();
        let _ =
            futures::future::join_all(shards.iter().zip(fences).map(|(s, &f)| s.unfence(f))).await;
    }

    /// Shard `shard`'s backup (see `Store::backup`; paths are on the shard's host). Not
    /// retried: a backup run again is a new backup.
    pub async fn backup_shard(
        &self,
        shard: usize,
        req: crate::transport::BackupRequest,
    ) -> Result<paramdb_types::ShardBackup, ClientError> {
        self.shard(shard)?.backup(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paramdb_types::ClientWindow;

    fn window(client: u64, applied: &[u64], parts: &[(u64, u32)]) -> ClientWindow {
        let high = applied.iter().copied().max().unwrap_or(0);
        let mut bits = vec![0u64; 16];
        for &s in applied {
            let i = high - s;
            bits[(i / 64) as usize] |= 1 << (i % 64);
        }
        ClientWindow {
            client,
            high,
            bits,
            parts: parts.to_vec(),
        }
    }

    fn report(clients: Vec<ClientWindow>) -> FenceReport {
        FenceReport {
            fence: 1,
            lsn: 0,
            clients,
        }
    }

    #[test]
    fn finds_writes_applied_on_fewer_shards_than_their_parts() {
        // Client 1: write 5 went to shards 0 and 1 and is whole; write 6 went to all three
        // and reached only shard 0. Client 2: write 9 to shards 1 and 2, whole.
        let reports = vec![
            report(vec![window(1, &[5, 6], &[(5, 2), (6, 3)])]),
            report(vec![window(1, &[5], &[(5, 2)]), window(2, &[9], &[(9, 2)])]),
            report(vec![window(2, &[9], &[(9, 2)])]),
        ];
        let p = partial_writes(&reports);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[&(1, 6)],
            Partial {
                parts: 3,
                applied: vec![true, false, false]
            }
        );
    }

    #[test]
    fn a_write_below_a_shards_window_counts_as_applied_there() {
        let reports = vec![
            report(vec![window(1, &[3], &[(3, 2)])]),
            report(vec![window(1, &[5000], &[])]),
        ];
        assert!(partial_writes(&reports).is_empty());
    }
}
