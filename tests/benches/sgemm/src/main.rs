//! matrixmultiply's sgemm against the `gemm` crate's, one thread each, at the shapes the
//! neural language model multiplies (`trainer/src/nlm.rs`): the exact-softmax evaluation's
//! tile (256 projections × 1,024 output rows, d = 128, the output rows used transposed) and
//! the training step's products for a minibatch of 1,024 tokens. Best of three timed loops of
//! about 40 GFLOP each; the two results must agree.

use std::time::Instant;

/// `c = a · b`: `a` is `m × k` row-major; `b` is `k × n` row-major, or (`bt`) `n × k`
/// row-major used transposed.
struct Product<'a> {
    m: usize,
    k: usize,
    n: usize,
    a: &'a [f32],
    b: &'a [f32],
    bt: bool,
}

impl Product<'_> {
    fn b_strides(&self) -> (isize, isize) {
        if self.bt {
            (1, self.k as isize)
        } else {
            (self.n as isize, 1)
        }
    }

    fn matrixmultiply(&self, c: &mut [f32]) {
        let (rs, cs) = self.b_strides();
        assert!(self.a.len() >= self.m * self.k && self.b.len() >= self.k * self.n);
        assert!(c.len() >= self.m * self.n);
        // In bounds: the lengths were checked above for these shapes and strides.
        unsafe {
            matrixmultiply::sgemm(
                self.m,
                self.k,
                self.n,
                1.0,
                self.a.as_ptr(),
                self.k as isize,
                1,
                self.b.as_ptr(),
                rs,
                cs,
                0.0,
                c.as_mut_ptr(),
                self.n as isize,
                1,
            );
        }
    }

    fn gemm(&self, c: &mut [f32]) {
        let (rs, cs) = self.b_strides();
        assert!(self.a.len() >= self.m * self.k && self.b.len() >= self.k * self.n);
        assert!(c.len() >= self.m * self.n);
        // gemm takes (column stride, row stride) pairs; same bounds as above.
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                c.as_mut_ptr(),
                1,
                self.n as isize,
                false,
                self.a.as_ptr(),
                1,
                self.k as isize,
                self.b.as_ptr(),
                cs,
                rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

fn main() {
    let shapes: &[(usize, usize, usize, bool, &str)] = &[
        (256, 128, 1024, true, "eval tile: 256 × 128 · (1024 × 128)ᵀ"),
        (
            1024,
            512,
            512,
            false,
            "train hidden: 1024 × 512 · 512 × 512",
        ),
        (
            1024,
            512,
            128,
            false,
            "train output projection: 1024 × 512 · 512 × 128",
        ),
        (
            1024,
            128,
            1024,
            true,
            "train noise logits: 1024 × 128 · (1024 × 128)ᵀ",
        ),
        (
            512,
            1024,
            512,
            false,
            "train hidden weights' gradient: 512 × 1024 · 1024 × 512",
        ),
    ];
    println!("| product | matrixmultiply GFLOP/s | gemm GFLOP/s | gemm / matrixmultiply |");
    println!("|---|---|---|---|");
    for &(m, k, n, bt, what) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let p = Product {
            m,
            k,
            n,
            a: &a,
            b: &b,
            bt,
        };
        let (mut c1, mut c2) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        let flops = 2.0 * (m * k * n) as f64;
        let reps = ((4e10 / flops) as usize).max(3);
        let rate = |f: &mut dyn FnMut()| {
            f();
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                best = best.min(t.elapsed().as_secs_f64() / reps as f64);
            }
            flops / best / 1e9
        };
        let g1 = rate(&mut || p.matrixmultiply(&mut c1));
        let g2 = rate(&mut || p.gemm(&mut c2));
        let diff = c1
            .iter()
            .zip(&c2)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "{what}: the kernels disagree by {diff}");
        println!("| {what} | {g1:.1} | {g2:.1} | {:.2} |", g2 / g1);
    }
}
