//! A parameter row in memory (weights + optimizer state + update counter), its byte layout in
//! RocksDB (drawn in `docs/row-format.md`) and the update rules applied to it.

use paramdb_types::{TableSpec, UpdateRule};

use crate::init;

/// Version byte at the start of every stored row. Version 2 added the row's time (when it was
/// last pushed); version-1 rows still read, with time 0.
pub const ROW_FORMAT_VERSION: u8 = 2;
/// Bytes before the floats: version, rule tag, reserved, dim, update counter, time, reserved,
/// LSN.
pub const ROW_HEADER_LEN: usize = 32;
/// The header of a version-1 row (no time).
const V1_HEADER_LEN: usize = 16;

/// The tag a row's header carries for its table's update rule.
pub fn rule_tag(rule: &UpdateRule) -> u8 {
    match rule {
        UpdateRule::Add => 0,
        UpdateRule::Sgd { .. } => 1,
        UpdateRule::Adagrad { .. } => 2,
        UpdateRule::Adam { .. } => 3,
    }
}

/// One row: `data` holds the weights followed by `rule.state_slots()` state vectors, each `dim`
/// long. `updates` counts the pushes applied to the row (Adam's step count). `time` is when it
/// was last pushed or imported: the time of that log record, in whole seconds since the Unix
/// epoch (0: unknown, for rows stored before format 2): expiry goes by it. `lsn` is the LSN of
/// that push's record (for an imported row, the last LSN when it was staged): eviction, least
/// recently pushed first, goes by it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub updates: u64,
    pub time: u32,
    pub lsn: u64,
    pub data: Box<[f32]>,
}

impl Row {
    /// The row a key has before any push: initializer weights, fresh optimizer state.
    pub fn initial(spec: &TableSpec, key: u64) -> Row {
        let dim = spec.dim as usize;
        let mut data = vec![0.0f32; dim * (1 + spec.rule.state_slots())].into_boxed_slice();
        init::fill(&spec.init, spec.seed, key, &mut data[..dim]);
        if let UpdateRule::Adagrad {
            initial_accumulator,
            ..
        } = spec.rule
        {
            data[dim..].fill(initial_accumulator);
        }
        Row {
            updates: 0,
            time: 0,
            lsn: 0,
            data,
        }
    }

    pub fn weights(&self, dim: usize) -> &[f32] {
        &self.data[..dim]
    }

    /// Applies one pushed vector `g` (length `dim`) under `rule`.
    pub fn apply(&mut self, rule: &UpdateRule, g: &[f32]) {
        let dim = g.len();
        self.updates += 1;
        match *rule {
            UpdateRule::Add => {
                for (w, g) in self.data[..dim].iter_mut().zip(g) {
                    *w += *g;
                }
            }
            UpdateRule::Sgd { lr } => {
                for (w, g) in self.data[..dim].iter_mut().zip(g) {
                    *w -= lr * *g;
                }
            }
            UpdateRule::Adagrad { lr, eps, .. } => {
                let (w, acc) = self.data.split_at_mut(dim);
                for ((w, a), g) in w.iter_mut().zip(acc.iter_mut()).zip(g) {
                    *a += *g * *g;
                    *w -= lr * *g / (a.sqrt() + eps);
                }
            }
            UpdateRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                // Bias corrections in f64: beta^t underflows gracefully and stays exact enough
                // for large step counts.
                let t = self.updates as f64;
                let bc1 = (1.0 - (beta1 as f64).powf(t)) as f32;
                let bc2 = (1.0 - (beta2 as f64).powf(t)) as f32;
                let (w, rest) = self.data.split_at_mut(dim);
                let (m, v) = rest.split_at_mut(dim);
                for (((w, m), v), g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                    *m = beta1 * *m + (1.0 - beta1) * *g;
                    *v = beta2 * *v + (1.0 - beta2) * *g * *g;
                    let m_hat = *m / bc1;
                    let v_hat = *v / bc2;
                    *w -= lr * m_hat / (v_hat.sqrt() + eps);
                }
            }
        }
    }

    /// The stored form (see `docs/row-format.md`).
    pub fn encode(&self, rule: &UpdateRule, dim: u32, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(ROW_HEADER_LEN + self.data.len() * 4);
        out.push(ROW_FORMAT_VERSION);
        out.push(rule_tag(rule));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&dim.to_le_bytes());
        out.extend_from_slice(&self.updates.to_le_bytes());
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.lsn.to_le_bytes());
        crate::le::extend_f32s(out, &self.data);
    }

    /// Bytes of the stored form.
    pub fn encoded_len(&self) -> usize {
        ROW_HEADER_LEN + self.data.len() * 4
    }

    /// Decodes a stored row of a table with this `rule` and `dim`.
    pub fn decode(b: &[u8], rule: &UpdateRule, dim: u32) -> Result<Row, String> {
        let h = check_header(b, rule, dim)?;
        let updates = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        let mut data = vec![0.0f32; (b.len() - h) / 4].into_boxed_slice();
        crate::le::read_f32s_into(&b[h..], &mut data);
        Ok(Row {
            updates,
            time: stored_time(b),
            lsn: stored_lsn(b),
            data,
        })
    }
}

/// The time of a stored row (0 for a version-1 row, or one too short to have a header).
pub fn stored_time(b: &[u8]) -> u32 {
    if b.len() >= ROW_HEADER_LEN && b[0] >= 2 {
        u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"))
    } else {
        0
    }
}

/// The LSN of a stored row's last push (0 for a version-1 row).
pub fn stored_lsn(b: &[u8]) -> u64 {
    if b.len() >= ROW_HEADER_LEN && b[0] >= 2 {
        u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"))
    } else {
        0
    }
}

/// Checks a stored row's header and length; returns the header's length.
fn check_header(b: &[u8], rule: &UpdateRule, dim: u32) -> Result<usize, String> {
    if b.len() < V1_HEADER_LEN {
        return Err(format!("row is {} bytes, shorter than its header", b.len()));
    }
    let header = match b[0] {
        1 => V1_HEADER_LEN,
        ROW_FORMAT_VERSION => ROW_HEADER_LEN,
        v => {
            return Err(format!(
                "row format version {v} (this build reads 1 to {ROW_FORMAT_VERSION})"
            ))
        }
    };
    let want = header + dim as usize * (1 + rule.state_slots()) * 4;
    if b[1] != rule_tag(rule) {
        return Err(format!(
            "row rule tag {} but the table's is {}",
            b[1],
            rule_tag(rule)
        ));
    }
    let stored_dim = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if stored_dim != dim {
        return Err(format!("row dim {stored_dim} but the table's is {dim}"));
    }
    if b.len() != want {
        return Err(format!("row is {} bytes, expected {want}", b.len()));
    }
    Ok(header)
}

/// Copies just the weights of a stored row into `out` (length `dim`), without decoding state.
pub fn decode_weights_into(
    b: &[u8],
    rule: &UpdateRule,
    dim: u32,
    out: &mut [f32],
) -> Result<(), String> {
    let h = check_header(b, rule, dim)?;
    crate::le::read_f32s_into(&b[h..h + dim as usize * 4], out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paramdb_types::Initializer;

    fn spec(rule: UpdateRule) -> TableSpec {
        TableSpec::new("t", 2).with_rule(rule)
    }

    fn close(a: f32, b: f64) -> bool {
        ((a as f64) - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn add_rule_by_hand() {
        let s = spec(UpdateRule::Add);
        let mut r = Row::initial(&s, 1);
        r.apply(&s.rule, &[1.5, -2.0]);
        r.apply(&s.rule, &[0.25, 3.0]);
        assert_eq!(r.weights(2), &[1.75, 1.0]);
        assert_eq!(r.updates, 2);
    }

    #[test]
    fn sgd_rule_by_hand() {
        let s = spec(UpdateRule::Sgd { lr: 0.5 });
        let mut r = Row::initial(&s, 1);
        r.apply(&s.rule, &[1.0, -4.0]);
        // 0 - 0.5*1 = -0.5; 0 - 0.5*(-4) = 2
        assert_eq!(r.weights(2), &[-0.5, 2.0]);
    }

    #[test]
    fn adagrad_rule_by_hand() {
        let s = spec(UpdateRule::Adagrad {
            lr: 0.1,
            eps: 1e-3,
            initial_accumulator: 0.5,
        });
        let mut r = Row::initial(&s, 1);
        assert_eq!(&r.data[2..], &[0.5, 0.5]);
        r.apply(&s.rule, &[1.0, 2.0]);
        // acc = 0.5 + 1 = 1.5; w = -0.1 * 1 / (sqrt(1.5) + 0.001)
        // acc = 0.5 + 4 = 4.5; w = -0.1 * 2 / (sqrt(4.5) + 0.001)
        let w0 = -0.1 / (1.5f64.sqrt() + 0.001);
        let w1 = -0.2 / (4.5f64.sqrt() + 0.001);
        assert!(close(r.data[0], w0) && close(r.data[1], w1), "{:?}", r.data);
        assert_eq!(&r.data[2..], &[1.5, 4.5]);
        r.apply(&s.rule, &[-1.0, 0.0]);
        // acc = 2.5; w = w0 + 0.1 / (sqrt(2.5) + 0.001); second coordinate unchanged.
        let w0b = w0 + 0.1 / (2.5f64.sqrt() + 0.001);
        assert!(
            close(r.data[0], w0b) && close(r.data[1], w1),
            "{:?}",
            r.data
        );
    }

    #[test]
    fn adam_rule_by_hand() {
        let (lr, b1, b2, eps) = (0.01f64, 0.9f64, 0.999f64, 1e-8f64);
        let s = spec(UpdateRule::Adam {
            lr: lr as f32,
            beta1: b1 as f32,
            beta2: b2 as f32,
            eps: eps as f32,
        });
        let mut r = Row::initial(&s, 1);
        let grads = [[1.0f64, -0.5], [0.5, 0.5], [-2.0, 1.0]];
        let (mut w, mut m, mut v) = ([0.0f64; 2], [0.0f64; 2], [0.0f64; 2]);
        for (t, g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..2 {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                let mh = m[i] / (1.0 - b1.powi(t));
                let vh = v[i] / (1.0 - b2.powi(t));
                w[i] -= lr * mh / (vh.sqrt() + eps);
            }
            r.apply(&s.rule, &[g[0] as f32, g[1] as f32]);
        }
        assert_eq!(r.updates, 3);
        for i in 0..2 {
            assert!(
                ((r.data[i] as f64) - w[i]).abs() < 1e-5,
                "w {:?} vs {:?}",
                r.data,
                w
            );
            assert!(((r.data[2 + i] as f64) - m[i]).abs() < 1e-5);
            assert!(((r.data[4 + i] as f64) - v[i]).abs() < 1e-5);
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_mismatch() {
        let s = TableSpec::new("t", 3)
            .with_init(Initializer::Normal { std: 1.0 })
            .with_rule(UpdateRule::Adam {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
            });
        let mut r = Row::initial(&s, 5);
        r.apply(&s.rule, &[1.0, 2.0, 3.0]);
        let mut b = Vec::new();
        r.encode(&s.rule, 3, &mut b);
        assert_eq!(b.len(), 32 + 9 * 4);
        assert_eq!(Row::decode(&b, &s.rule, 3).unwrap(), r);
        r.time = 1_800_000_000;
        r.lsn = 1 << 40;
        r.encode(&s.rule, 3, &mut b);
        assert_eq!((stored_time(&b), stored_lsn(&b)), (1_800_000_000, 1 << 40));
        assert_eq!(Row::decode(&b, &s.rule, 3).unwrap(), r);
        // A version-1 row: no time.
        let mut v1 = vec![1, b[1], 0, 0];
        v1.extend_from_slice(&b[4..16]);
        v1.extend_from_slice(&b[32..]);
        let old = Row::decode(&v1, &s.rule, 3).unwrap();
        assert_eq!((old.time, old.lsn, &old.data), (0, 0, &r.data));
        let mut w = [0.0; 3];
        decode_weights_into(&b, &s.rule, 3, &mut w).unwrap();
        assert_eq!(&w, r.weights(3));
        assert!(Row::decode(&b, &s.rule, 4).unwrap_err().contains("dim"));
        assert!(Row::decode(&b, &UpdateRule::Add, 3)
            .unwrap_err()
            .contains("tag"));
        b[0] = 9;
        assert!(Row::decode(&b, &s.rule, 3).unwrap_err().contains("version"));
    }
}
