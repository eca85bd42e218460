//! Rows on the wire: values are one `bytes` field of little-endian f32, row after row.

/// Little-endian bytes of `values`.
pub fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(values.len() * 4);
    for v in values {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// The f32 values of little-endian `bytes`; `None` when the length is not a multiple of 4.
pub fn bytes_to_f32s(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = [1.5f32, -0.0, f32::MAX, 3.25e-7];
        assert_eq!(bytes_to_f32s(&f32s_to_bytes(&v)).unwrap(), v);
        assert!(bytes_to_f32s(&[0, 1, 2]).is_none());
    }
}
