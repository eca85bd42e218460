//! Pure routing over a cluster map: which shard owns which keys, and how a key range or a
//! contiguous block splits across shards. No I/O.

use paramdb_proto::cluster::ClusterMap;
use paramdb_types::KeyRange;

use crate::error::ClientError;

/// For each shard touched, the positions (into `keys`) of its keys, in their original order.
pub fn split_keys(map: &ClusterMap, keys: &[u64]) -> Result<Vec<(usize, Vec<usize>)>, ClientError> {
    let mut per: Vec<Vec<usize>> = vec![Vec::new(); map.shards.len()];
    for (i, &k) in keys.iter().enumerate() {
        let s = map.shard_of(k).ok_or(ClientError::NoShard { key: k })?;
        per[s].push(i);
    }
    Ok(per
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .collect())
}

/// The parts of `range` each shard owns, in key order. Gaps between shards hold no keys and
/// are skipped.
pub fn split_range(map: &ClusterMap, range: KeyRange) -> Vec<(usize, KeyRange)> {
    map.shards
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let start = range.start.max(s.range[0]);
            let end = range.end.min(s.range[1]);
            (start < end).then_some((i, KeyRange::new(start, end)))
        })
        .collect()
}

/// A contiguous block of `rows` rows from `start` split by shard: `(shard, first key, first
/// row index within the block, rows)`. Fails if any row falls in no shard.
pub fn split_block(
    map: &ClusterMap,
    start: u64,
    rows: u64,
) -> Result<Vec<(usize, u64, u64, u64)>, ClientError> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    let last = start.checked_add(rows - 1).ok_or_else(|| {
        ClientError::Invalid(format!("{rows} rows from {start} overflow the key space"))
    })?;
    let mut out = Vec::new();
    let mut k = start;
    loop {
        let s = map.shard_of(k).ok_or(ClientError::NoShard { key: k })?;
        let end = map.shards[s].range[1]; // exclusive
        let part_last = last.min(end - 1);
        out.push((s, k, k - start, part_last - k + 1));
        if part_last == last {
            return Ok(out);
        }
        k = part_last + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paramdb_proto::cluster::ShardEntry;
    use proptest::prelude::*;

    fn map() -> ClusterMap {
        let e = |a, b| ShardEntry::new([a, b], String::new());
        ClusterMap {
            shards: vec![e(0, 100), e(100, 250), e(300, 1000)],
            ..ClusterMap::default()
        }
    }

    #[test]
    fn keys_blocks_and_ranges_split_by_shard() {
        let m = map();
        assert_eq!(
            split_keys(&m, &[5, 120, 7, 999]).unwrap(),
            vec![(0, vec![0, 2]), (1, vec![1]), (2, vec![3])]
        );
        assert!(matches!(
            split_keys(&m, &[260]),
            Err(ClientError::NoShard { key: 260 })
        ));
        assert_eq!(
            split_block(&m, 90, 20).unwrap(),
            vec![(0, 90, 0, 10), (1, 100, 10, 10)]
        );
        assert!(
            split_block(&m, 240, 20).is_err(),
            "rows 250..260 are in a gap"
        );
        assert_eq!(
            split_range(&m, KeyRange::new(50, 400)),
            vec![
                (0, KeyRange::new(50, 100)),
                (1, KeyRange::new(100, 250)),
                (2, KeyRange::new(300, 400))
            ]
        );
    }

    proptest! {
        #[test]
        fn split_keys_is_a_partition(keys in proptest::collection::vec(0u64..1000, 0..50)) {
            let m = map();
            if let Ok(parts) = split_keys(&m, &keys) {
                let mut seen: Vec<usize> = parts.iter().flat_map(|(_, v)| v.clone()).collect();
                seen.sort();
                prop_assert_eq!(seen, (0..keys.len()).collect::<Vec<_>>());
                for (s, idx) in parts {
                    for i in idx {
                        prop_assert_eq!(m.shard_of(keys[i]), Some(s));
                    }
                }
            }
        }
    }
}
