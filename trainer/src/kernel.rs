//! The inner loop of word2vec: one training example against its positive target and its
//! negatives. It is compiled twice, plainly and with AVX2 + FMA, and `best()` picks the
//! second on machines that have those (as gensim's BLAS does at run time).

use rand::rngs::SmallRng;
use rand::Rng;

/// One example: `(hidden, grad, out rows, target, pool, negatives, alpha, dim, σ table, rng)`
/// → loss. See `negatives`.
pub(crate) type Kernel = fn(
    &[f32],
    &mut [f32],
    &mut [f32],
    usize,
    &[u32],
    usize,
    f32,
    usize,
    &SigmoidTable,
    &mut SmallRng,
) -> f64;

/// The fastest kernel this CPU runs.
pub(crate) fn best() -> Kernel {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return avx2_fma;
    }
    negatives::<false>
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code, clippy::too_many_arguments)]
fn avx2_fma(
    h: &[f32],
    grad: &mut [f32],
    out: &mut [f32],
    target: usize,
    pool: &[u32],
    k: usize,
    alpha: f32,
    dim: usize,
    sig: &SigmoidTable,
    rng: &mut SmallRng,
) -> f64 {
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    fn inner(
        h: &[f32],
        grad: &mut [f32],
        out: &mut [f32],
        target: usize,
        pool: &[u32],
        k: usize,
        alpha: f32,
        dim: usize,
        sig: &SigmoidTable,
        rng: &mut SmallRng,
    ) -> f64 {
        negatives::<true>(h, grad, out, target, pool, k, alpha, dim, sig, rng)
    }
    // SAFETY: `best()` hands out this function only after checking that the CPU has AVX2 and
    // FMA, and nothing else calls it.
    unsafe { inner(h, grad, out, target, pool, k, alpha, dim, sig, rng) }
}

const MAX_EXP: f32 = 6.0;
const EXP_TABLE: usize = 1000;

/// σ(x) and log σ(x) on [-6, 6], tabulated as in word2vec.
#[derive(Debug)]
pub(crate) struct SigmoidTable {
    sig: Vec<f32>,
    log_sig: Vec<f32>,
}

impl SigmoidTable {
    pub(crate) fn new() -> Self {
        let xs = (0..=EXP_TABLE).map(|i| (i as f32 / EXP_TABLE as f32 * 2.0 - 1.0) * MAX_EXP);
        let sig: Vec<f32> = xs.map(|x| 1.0 / (1.0 + (-x).exp())).collect();
        let log_sig = sig.iter().map(|s| s.max(1e-7).ln()).collect();
        SigmoidTable { sig, log_sig }
    }

    fn index(x: f32) -> usize {
        ((x + MAX_EXP) * (EXP_TABLE as f32 / MAX_EXP / 2.0)) as usize
    }
}

/// One example: the positive `target` and `k` negatives from `pool` against the hidden
/// vector `h`. Updates the output rows in place and accumulates the gradient for `h` into
/// `grad`. Returns the example's loss.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn negatives<const FMA: bool>(
    h: &[f32],
    grad: &mut [f32],
    out: &mut [f32],
    target: usize,
    pool: &[u32],
    k: usize,
    alpha: f32,
    dim: usize,
    sig: &SigmoidTable,
    rng: &mut SmallRng,
) -> f64 {
    let mut loss = 0.0f64;
    for d in 0..=k {
        let (o, label) = if d == 0 {
            (target, 1.0f32)
        } else {
            let o = pool[rng.random_range(0..pool.len())] as usize;
            if o == target {
                continue;
            }
            (o, 0.0)
        };
        let row = &mut out[o * dim..(o + 1) * dim];
        let f = dot::<FMA>(h, row);
        let g = if f > MAX_EXP {
            loss -= if label == 1.0 {
                0.0
            } else {
                sig.log_sig[0] as f64
            };
            (label - 1.0) * alpha
        } else if f < -MAX_EXP {
            loss -= if label == 1.0 {
                sig.log_sig[0] as f64
            } else {
                0.0
            };
            label * alpha
        } else {
            let i = SigmoidTable::index(f);
            let s = sig.sig[i];
            // log σ(-f) = log σ at the mirrored index.
            loss -= if label == 1.0 {
                sig.log_sig[i]
            } else {
                sig.log_sig[EXP_TABLE - i]
            } as f64;
            (label - s) * alpha
        };
        axpy_f::<FMA>(grad, g, row);
        axpy_f::<FMA>(row, g, h);
    }
    loss
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Dot product with 8 independent lanes, so it vectorizes.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] = madd::<FMA>(x[k], y[k], acc[k]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy_f<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = madd::<FMA>(a, *x, *y);
    }
}

/// `y += a·x`.
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_f::<false>(y, a, x);
}

/// `y += a·x`, as a function chosen once for this CPU (see `best_axpy`): CBOW sums and
/// scatters several rows per example, so this loop matters as much as `negatives` there.
pub(crate) type Axpy = fn(&mut [f32], f32, &[f32]);

/// The fastest `axpy` this CPU runs.
pub(crate) fn best_axpy() -> Axpy {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return axpy_avx2_fma;
    }
    axpy
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn axpy_avx2_fma(y: &mut [f32], a: f32, x: &[f32]) {
    #[target_feature(enable = "avx2,fma")]
    fn inner(y: &mut [f32], a: f32, x: &[f32]) {
        axpy_f::<true>(y, a, x)
    }
    // SAFETY: `best_axpy()` hands out this function only after checking that the CPU has AVX2
    // and FMA, and nothing else calls it.
    unsafe { inner(y, a, x) }
}

/// `y *= a`.
pub(crate) fn scale(y: &mut [f32], a: f32) {
    for y in y {
        *y *= a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot::<false>(&a, &b) - plain).abs() < 1e-3);
        assert!((dot::<true>(&a, &b) - plain).abs() < 1e-3);
    }

    #[test]
    fn both_axpys_agree() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 * 0.25).collect();
        let (mut a, mut b) = (vec![1.0f32; 37], vec![1.0f32; 37]);
        axpy(&mut a, 0.5, &x);
        best_axpy()(&mut b, 0.5, &x);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
        assert_eq!(a[4], 1.5);
    }

    #[test]
    fn both_kernels_agree() {
        let dim = 20;
        let sig = SigmoidTable::new();
        let h: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin() * 0.3).collect();
        let out0: Vec<f32> = (0..dim * 6)
            .map(|i| (i as f32 * 0.11).cos() * 0.2)
            .collect();
        let pool = [1u32, 2, 3, 4, 5];
        let run = |k: Kernel| {
            let (mut grad, mut out) = (vec![0.0; dim], out0.clone());
            let mut rng = SmallRng::seed_from_u64(3);
            let loss = k(
                &h, &mut grad, &mut out, 0, &pool, 5, 0.025, dim, &sig, &mut rng,
            );
            (loss, grad, out)
        };
        let (l1, g1, o1) = run(negatives::<false>);
        let (l2, g2, o2) = run(best());
        assert!((l1 - l2).abs() < 1e-4);
        for (a, b) in g1.iter().zip(&g2).chain(o1.iter().zip(&o2)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert!(g1.iter().any(|&g| g != 0.0));
    }
}
