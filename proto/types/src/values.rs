//! Checks on the values of rows.

/// The index of the first NaN or infinity in `values`, if any. Values are checked in blocks
/// whose test compiles to vector instructions, so a clean row costs about a memory read.
pub fn first_non_finite(values: &[f32]) -> Option<usize> {
    const BLOCK: usize = 64;
    const EXP: u32 = 0x7f80_0000;
    for (b, block) in values.chunks(BLOCK).enumerate() {
        let bad = block
            .iter()
            .fold(false, |bad, v| bad | (v.to_bits() & EXP == EXP));
        if bad {
            return block
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| b * BLOCK + i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_nan_or_infinity() {
        let mut v = vec![1.5f32; 300];
        assert_eq!(first_non_finite(&v), None);
        assert_eq!(first_non_finite(&[]), None);
        for (i, x) in [
            (0, f32::NAN),
            (63, f32::INFINITY),
            (64, f32::NEG_INFINITY),
            (299, f32::NAN),
        ] {
            v[i] = x;
            assert_eq!(first_non_finite(&v), Some(i), "{x} at {i}");
            v[i] = f32::MAX;
        }
        assert_eq!(first_non_finite(&v), None, "f32::MAX is finite");
        v[200] = -0.0;
        v[201] = f32::MIN_POSITIVE / 2.0;
        assert_eq!(
            first_non_finite(&v),
            None,
            "zeros and subnormals are finite"
        );
    }
}
