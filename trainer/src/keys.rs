//! Keys and exact integers in rows.
//!
//! A word's key is the XXH3-64 hash of its UTF-8 bytes: stable across runs, machines and
//! versions, so any worker or tool finds a word's rows without the vocabulary. The parameter
//! server stores only f32 rows, so integers (counts, offsets) travel as four 16-bit pieces,
//! each an exactly representable f32.

/// The key of `word`'s rows.
pub fn word_key(word: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(word.as_bytes())
}

/// `x` as four f32 holding 16 bits each (low first).
pub fn u64_to_f32s(x: u64) -> [f32; 4] {
    std::array::from_fn(|i| ((x >> (16 * i)) & 0xffff) as f32)
}

/// The inverse of `u64_to_f32s`; `None` if a piece is not an integer in `[0, 65536)`.
pub fn f32s_to_u64(v: &[f32]) -> Option<u64> {
    let mut x = 0u64;
    for (i, &p) in v.iter().take(4).enumerate() {
        if !(0.0..65536.0).contains(&p) || p.fract() != 0.0 {
            return None;
        }
        x |= (p as u64) << (16 * i);
    }
    Some(x)
}

/// Floats in a state row: five u64 fields of four 16-bit pieces.
pub(crate) const STATE_DIM: usize = 20;

/// A state row holding `fields`, 4 floats each.
pub(crate) fn state_row(fields: &[u64]) -> Vec<f32> {
    let mut r = vec![0.0; STATE_DIM];
    for (chunk, &f) in r.chunks_mut(4).zip(fields) {
        chunk.copy_from_slice(&u64_to_f32s(f));
    }
    r
}

/// The first `N` fields of a state row.
pub(crate) fn state_fields<const N: usize>(r: &[f32]) -> Option<[u64; N]> {
    let mut out = [0u64; N];
    for (o, chunk) in out.iter_mut().zip(r.chunks(4)) {
        *o = f32s_to_u64(chunk)?;
    }
    Some(out)
}

/// Sets a row of an `add` table to `new`, given that it holds `old`: pushes the difference.
/// Exact for the 16-bit integer pieces used in state rows.
pub(crate) fn set_row(
    client: &paramdb_client::BlockingClient,
    table: &str,
    key: u64,
    old: &[f32],
    new: &[f32],
) -> crate::error::Result<()> {
    let delta: Vec<f32> = new.iter().zip(old).map(|(n, o)| n - o).collect();
    client.push(table, &[key], &delta)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_through_f32() {
        for x in [0, 1, 65535, 65536, u64::MAX, 0x1234_5678_9abc_def0] {
            assert_eq!(f32s_to_u64(&u64_to_f32s(x)), Some(x));
        }
        assert_eq!(f32s_to_u64(&[0.5, 0.0, 0.0, 0.0]), None);
    }

    #[test]
    fn word_keys_are_stable() {
        // Pinned: changing the hash would orphan every stored model.
        assert_eq!(word_key("the"), xxhash_rust::xxh3::xxh3_64(b"the"));
        assert_ne!(word_key("the"), word_key("The"));
    }
}
