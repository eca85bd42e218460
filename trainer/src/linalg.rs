//! Dense kernels for the neural language model: a checked wrapper over `matrixmultiply`'s
//! sgemm (AVX2/FMA kernels picked at run time), and a log-sum-exp that vectorizes.
//!
//! Matrices are row-major slices; `T` marks an operand used transposed.

/// A row-major `rows × cols` view, or its transpose.
#[derive(Clone, Copy, Debug)]
pub(crate) struct M<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Strides of the logical (possibly transposed) matrix.
    rs: usize,
    cs: usize,
}

impl<'a> M<'a> {
    /// `data` as a `rows × cols` row-major matrix.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> M<'a> {
        assert!(
            data.len() >= rows * cols,
            "matrix of {rows}×{cols} in {} floats",
            data.len()
        );
        M {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// `rows × cols` whose rows start every `stride` floats (a matrix stored with extra
    /// columns, such as a layer's weights followed by its bias).
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> M<'a> {
        assert!(cols <= stride && (rows == 0 || data.len() >= (rows - 1) * stride + cols));
        M {
            data,
            rows,
            cols,
            rs: stride,
            cs: 1,
        }
    }

    /// The transpose (a view, nothing is copied).
    pub(crate) fn t(self) -> M<'a> {
        M {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `c = alpha · a · b + beta · c`, `c` being `a.rows × b.cols` row-major.
pub(crate) fn gemm(alpha: f32, a: M<'_>, b: M<'_>, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions {k} and {}", b.rows);
    assert!(c.len() >= m * n, "output of {m}×{n} in {} floats", c.len());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|x| *x *= beta);
        return;
    }
    // The views were checked to lie inside their slices when made (`M::new`), and `t` only
    // swaps strides, so every index sgemm forms is in bounds; `c` is exclusive.
    #[allow(unsafe_code)]
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `e^x` to about 2 ulp for `x` in [-87, 88], written so that the compiler vectorizes loops
/// over it (Cody-Waite reduction, degree-6 polynomial).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Round to nearest by adding 1.5·2^23: the sum's low mantissa bits are then `n` itself,
    // so 2^n is built with integer adds and a shift (no float-to-int conversion, no library
    // call), which vectorizes.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    p * f32::from_bits(t.to_bits().wrapping_sub(0x4b40_0000 - 127) << 23)
}

/// Adds `Σ_j e^(row_j − shift)` of each row of `logits` (`rows × cols`) to `sums`.
pub(crate) fn add_exp_sums(logits: &[f32], cols: usize, shift: &[f32], sums: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        fn inner(logits: &[f32], cols: usize, shift: &[f32], sums: &mut [f64]) {
            exp_sums(logits, cols, shift, sums)
        }
        // The features were just detected.
        #[allow(unsafe_code)]
        unsafe {
            return inner(logits, cols, shift, sums);
        }
    }
    exp_sums(logits, cols, shift, sums)
}

#[inline(always)]
fn exp_sums(logits: &[f32], cols: usize, shift: &[f32], sums: &mut [f64]) {
    for ((row, &s), sum) in logits.chunks_exact(cols).zip(shift).zip(sums.iter_mut()) {
        let mut acc = [0.0f32; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a += exp(x - s);
            }
        }
        let mut tail = 0.0f32;
        for &x in chunks.remainder() {
            tail += exp(x - s);
        }
        *sum += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
}

/// `tanh` of every element, through `exp` (vectorizes; about 1e-7 absolute error).
pub(crate) fn tanh_in_place(v: &mut [f32]) {
    for x in v.iter_mut() {
        // tanh(x) = 1 − 2/(e^{2x} + 1); `exp` clamps, so large |x| give ±1.
        *x = 1.0 - 2.0 / (exp(2.0 * *x) + 1.0);
    }
}

/// Adds `bias` to every row of `logits` (`rows × bias.len()`) and returns each row's maximum.
pub(crate) fn add_bias_max(logits: &mut [f32], bias: &[f32], max: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        fn inner(logits: &mut [f32], bias: &[f32], max: &mut [f32]) {
            bias_max(logits, bias, max)
        }
        // The features were just detected.
        #[allow(unsafe_code)]
        unsafe {
            return inner(logits, bias, max);
        }
    }
    bias_max(logits, bias, max)
}

#[inline(always)]
fn bias_max(logits: &mut [f32], bias: &[f32], max: &mut [f32]) {
    for (row, m) in logits.chunks_exact_mut(bias.len()).zip(max.iter_mut()) {
        // Sixteen independent lanes: an element-wise max vectorizes where a running one
        // (a reduction the compiler may not reorder) would not.
        let mut lanes = [f32::NEG_INFINITY; 16];
        let mut rows = row.chunks_exact_mut(16);
        let mut bs = bias.chunks_exact(16);
        for (c, b) in (&mut rows).zip(&mut bs) {
            for ((l, x), &b) in lanes.iter_mut().zip(c.iter_mut()).zip(b) {
                *x += b;
                *l = if *x > *l { *x } else { *l };
            }
        }
        let mut best = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (x, &b) in rows.into_remainder().iter_mut().zip(bs.remainder()) {
            *x += b;
            best = best.max(*x);
        }
        *m = best;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_the_definition_with_transposes() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = |i: usize, j: usize| (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum::<f32>();
        let mut c = vec![1.0; m * n];
        gemm(1.0, M::new(&a, m, k), M::new(&b, k, n), 0.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * n + j] - want(i, j)).abs() < 1e-5);
            }
        }
        // (bᵀ aᵀ) = (a b)ᵀ, accumulated onto c.
        let mut ct = vec![0.0; n * m];
        gemm(
            1.0,
            M::new(&b, k, n).t(),
            M::new(&a, m, k).t(),
            0.0,
            &mut ct,
        );
        for i in 0..m {
            for j in 0..n {
                assert!((ct[j * m + i] - want(i, j)).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        for i in -8700..8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "exp({x}) = {got}, want {want}"
            );
        }
        let mut t: Vec<f32> = (-300..300).map(|i| i as f32 / 20.0).collect();
        let want: Vec<f32> = t.iter().map(|x| x.tanh()).collect();
        tanh_in_place(&mut t);
        for (g, w) in t.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} {w}");
        }
        let mut sums = vec![0.0; 2];
        let logits: Vec<f32> = (0..2 * 37).map(|i| i as f32 * 0.1).collect();
        add_exp_sums(&logits, 37, &[1.0, 2.0], &mut sums);
        for (r, s) in sums.iter().enumerate() {
            let want: f64 = logits[r * 37..(r + 1) * 37]
                .iter()
                .map(|&x| ((x - (r + 1) as f32) as f64).exp())
                .sum();
            assert!((s - want).abs() / want < 1e-6);
        }
    }
}
