//! Deterministic row initializers: the value of a row that was never written is a pure
//! function of (table seed, key), so an unseen key pulls the same bits every time and on every
//! shard, without the store writing anything.

use paramdb_types::Initializer;

/// SplitMix64 step: a fast, well-mixed 64-bit generator (Steele, Lea, Flood 2014). We use our
/// own rather than a `rand` RNG because the stream is part of the stored-data contract and must
/// not change when a dependency is upgraded.
#[inline]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream start for (seed, key): both are mixed so neighbouring keys get unrelated streams.
fn stream(seed: u64, key: u64) -> u64 {
    let mut s = seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let a = splitmix64(&mut s);
    let mut k = key ^ a;
    splitmix64(&mut k)
}

/// Fills `out` (the row's weights) with the initial values for `key`.
pub fn fill(init: &Initializer, seed: u64, key: u64, out: &mut [f32]) {
    match *init {
        Initializer::Zeros => out.fill(0.0),
        Initializer::Uniform { low, high } => {
            let mut s = stream(seed, key);
            let span = high as f64 - low as f64;
            for v in out.iter_mut() {
                // 53 random bits → [0, 1).
                let u = (splitmix64(&mut s) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                *v = (low as f64 + span * u) as f32;
            }
        }
        Initializer::Normal { std } => {
            let mut s = stream(seed, key);
            let mut i = 0;
            while i < out.len() {
                // Box–Muller on (0, 1] × [0, 1): u1 never 0, so ln is finite.
                let u1 = ((splitmix64(&mut s) >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
                let u2 = (splitmix64(&mut s) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                let r = (-2.0 * u1.ln()).sqrt() * std as f64;
                let t = std::f64::consts::TAU * u2;
                out[i] = (r * t.cos()) as f32;
                if i + 1 < out.len() {
                    out[i + 1] = (r * t.sin()) as f32;
                }
                i += 2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_in_seed_and_key() {
        let init = Initializer::Uniform {
            low: -0.5,
            high: 0.5,
        };
        let mut a = vec![0.0; 16];
        let mut b = vec![0.0; 16];
        fill(&init, 7, 42, &mut a);
        fill(&init, 7, 42, &mut b);
        assert_eq!(a, b);
        fill(&init, 7, 43, &mut b);
        assert_ne!(a, b);
        fill(&init, 8, 42, &mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|v| (-0.5..0.5).contains(v)));
    }

    #[test]
    fn normal_has_roughly_the_asked_spread() {
        let init = Initializer::Normal { std: 2.0 };
        let mut v = vec![0.0f32; 20_001];
        fill(&init, 1, 9, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.05, "std {}", var.sqrt());
    }
}
