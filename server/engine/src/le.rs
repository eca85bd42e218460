//! Little-endian f32 arrays, the form rows take in the gradient log and in RocksDB. On
//! little-endian machines these are plain copies.

/// Appends the little-endian bytes of `values` to `out`.
pub fn extend_f32s(out: &mut Vec<u8>, values: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(values));
    } else {
        out.reserve(values.len() * 4);
        for v in values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The little-endian bytes of `values`: borrowed as they are on little-endian machines,
/// converted on others.
pub fn f32s_as_le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        let mut out = Vec::new();
        extend_f32s(&mut out, values);
        std::borrow::Cow::Owned(out)
    }
}

/// Fills `out` from little-endian `bytes` (`bytes.len() == out.len() * 4`).
pub fn read_f32s_into(bytes: &[u8], out: &mut [f32]) {
    assert_eq!(bytes.len(), out.len() * 4, "f32 byte length");
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(bytes);
    } else {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_is_little_endian() {
        let v = [1.0f32, -2.5, f32::MIN_POSITIVE, -0.0];
        let mut b = vec![7u8];
        super::extend_f32s(&mut b, &v);
        assert_eq!(&b[1..5], &1.0f32.to_le_bytes());
        let mut back = [0.0f32; 4];
        super::read_f32s_into(&b[1..], &mut back);
        assert_eq!(back.map(f32::to_bits), v.map(f32::to_bits));
    }
}
