//! Rows on the wire: values are one `bytes` field of little-endian f32, row after row. On
//! little-endian machines both directions are one copy.

/// Little-endian bytes of `values`.
pub fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(values).to_vec()
    } else {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// `values` as little-endian bytes, without a copy on little-endian machines: the `Bytes`
/// owns `values` and views its memory.
pub fn f32s_into_bytes<T>(values: T) -> prost::bytes::Bytes
where
    T: AsRef<[f32]> + Send + 'static,
{
    struct View<T>(T);
    impl<T: AsRef<[f32]>> AsRef<[u8]> for View<T> {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(self.0.as_ref())
        }
    }
    if cfg!(target_endian = "little") {
        prost::bytes::Bytes::from_owner(View(values))
    } else {
        f32s_to_bytes(values.as_ref()).into()
    }
}

/// The f32 values of little-endian `bytes`; `None` when the length is not a multiple of 4.
pub fn bytes_to_f32s(bytes: &[u8]) -> Option<Vec<f32>> {
    let mut out = vec![0.0f32; bytes.len() / 4];
    bytes_into_f32s(bytes, &mut out)?;
    Some(out)
}

/// Fills `out` from little-endian `bytes`; `None` unless `bytes` holds exactly `out.len()`
/// floats.
pub fn bytes_into_f32s(bytes: &[u8], out: &mut [f32]) -> Option<()> {
    if bytes.len() != out.len() * 4 {
        return None;
    }
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(bytes);
    } else {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = [1.5f32, -0.0, f32::MAX, 3.25e-7];
        assert_eq!(&f32s_to_bytes(&v)[..4], &1.5f32.to_le_bytes());
        assert_eq!(bytes_to_f32s(&f32s_to_bytes(&v)).unwrap(), v);
        assert!(bytes_to_f32s(&[0, 1, 2]).is_none());
        assert!(bytes_into_f32s(&[0; 8], &mut [0.0; 3]).is_none());
        assert_eq!(&f32s_into_bytes(v.to_vec())[..], &f32s_to_bytes(&v)[..]);
        let shared: std::sync::Arc<[f32]> = v.into();
        assert_eq!(&f32s_into_bytes(shared)[..], &f32s_to_bytes(&v)[..]);
    }
}
