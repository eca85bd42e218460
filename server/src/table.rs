//! Table definitions: dimension, initializer and update rule, their validation, their text
//! form (`adagrad(0.1,1e-8,0.1)`) and their persisted binary form in the catalog.

use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

/// Largest row dimension a table may declare. A row must fit comfortably in one log record and
/// one RocksDB value; 1M floats (4 MiB of weights) is far above any embedding in use.
pub const MAX_DIM: u32 = 1 << 20;
/// Longest table name in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// How a row that was never written is initialised (a function of table seed and key).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Initializer {
    #[default]
    Zeros,
    /// Uniform on `[low, high)`.
    Uniform { low: f32, high: f32 },
    /// Gaussian with mean 0 and standard deviation `std`.
    Normal { std: f32 },
}

/// How a pushed vector changes a row. The rule runs on the server, so optimizer state never
/// leaves the shard.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum UpdateRule {
    /// `w += g`: the pushed vector is a delta (Hogwild-style trainers).
    #[default]
    Add,
    /// `w -= lr * g`.
    Sgd { lr: f32 },
    /// `acc += g²; w -= lr * g / (sqrt(acc) + eps)`, `acc` starting at `initial_accumulator`.
    Adagrad {
        lr: f32,
        eps: f32,
        initial_accumulator: f32,
    },
    /// Adam with bias correction; the step count is the row's update counter.
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
}

impl UpdateRule {
    /// Number of `dim`-sized optimizer state vectors stored after the weights.
    pub fn state_slots(&self) -> usize {
        match self {
            UpdateRule::Add | UpdateRule::Sgd { .. } => 0,
            UpdateRule::Adagrad { .. } => 1,
            UpdateRule::Adam { .. } => 2,
        }
    }

    /// The tag stored in each row header.
    pub fn tag(&self) -> u8 {
        match self {
            UpdateRule::Add => 0,
            UpdateRule::Sgd { .. } => 1,
            UpdateRule::Adagrad { .. } => 2,
            UpdateRule::Adam { .. } => 3,
        }
    }
}

/// A table as the user defines it.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSpec {
    pub name: String,
    pub dim: u32,
    pub init: Initializer,
    pub rule: UpdateRule,
    /// Seed of the initializer stream.
    pub seed: u64,
}

impl TableSpec {
    pub fn new(name: impl Into<String>, dim: u32) -> Self {
        Self {
            name: name.into(),
            dim,
            init: Initializer::Zeros,
            rule: UpdateRule::Add,
            seed: 0,
        }
    }

    pub fn with_init(mut self, init: Initializer) -> Self {
        self.init = init;
        self
    }

    pub fn with_rule(mut self, rule: UpdateRule) -> Self {
        self.rule = rule;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks everything a table needs to be usable; the error says which field is wrong.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |reason: String| Err(StoreError::InvalidTableSpec { reason });
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return bad(format!(
                "table name must be 1 to {MAX_NAME_LEN} bytes, got {}",
                self.name.len()
            ));
        }
        if !self
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return bad(format!(
                "table name {:?} may only use ASCII letters, digits, '_', '-' and '.'",
                self.name
            ));
        }
        if self.dim == 0 || self.dim > MAX_DIM {
            return bad(format!("dim must be 1 to {MAX_DIM}, got {}", self.dim));
        }
        match self.init {
            Initializer::Zeros => {}
            Initializer::Uniform { low, high } => {
                if !(low.is_finite() && high.is_finite() && low < high) {
                    return bad(format!("uniform({low},{high}) needs finite low < high"));
                }
            }
            Initializer::Normal { std } => {
                if !(std.is_finite() && std >= 0.0) {
                    return bad(format!("normal({std}) needs a finite std >= 0"));
                }
            }
        }
        let positive = |what: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(StoreError::InvalidTableSpec {
                    reason: format!("{what} must be finite and > 0, got {v}"),
                })
            }
        };
        match self.rule {
            UpdateRule::Add => {}
            UpdateRule::Sgd { lr } => positive("lr", lr)?,
            UpdateRule::Adagrad {
                lr,
                eps,
                initial_accumulator,
            } => {
                positive("lr", lr)?;
                positive("eps", eps)?;
                if !(initial_accumulator.is_finite() && initial_accumulator >= 0.0) {
                    return bad(format!(
                        "initial_accumulator must be finite and >= 0, got {initial_accumulator}"
                    ));
                }
            }
            UpdateRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                positive("lr", lr)?;
                positive("eps", eps)?;
                for (what, b) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(b.is_finite() && (0.0..1.0).contains(&b)) {
                        return bad(format!("{what} must be in [0, 1), got {b}"));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Parses `name(a,b,…)` into the name and its numeric arguments.
fn parse_call(s: &str) -> Result<(String, Vec<f32>), String> {
    let s = s.trim();
    let (name, args) = match s.find('(') {
        None => (s, ""),
        Some(i) => {
            let rest = s[i + 1..]
                .strip_suffix(')')
                .ok_or_else(|| format!("missing ')' in {s:?}"))?;
            (&s[..i], rest)
        }
    };
    let args = args
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            // Accept `lr=0.1` as well as `0.1`; the order is what counts.
            let v = a.rsplit('=').next().unwrap_or(a).trim();
            v.parse::<f32>()
                .map_err(|_| format!("{v:?} is not a number in {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.trim().to_ascii_lowercase(), args))
}

fn arg(args: &[f32], i: usize, default: f32) -> f32 {
    args.get(i).copied().unwrap_or(default)
}

fn at_most(s: &str, args: &[f32], n: usize) -> Result<(), String> {
    if args.len() > n {
        Err(format!("{s:?} takes at most {n} arguments"))
    } else {
        Ok(())
    }
}

impl FromStr for UpdateRule {
    type Err = String;

    /// `add`, `sgd(lr)`, `adagrad(lr[,eps[,initial_accumulator]])`,
    /// `adam(lr[,beta1[,beta2[,eps]]])`; missing trailing arguments take the usual defaults.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, a) = parse_call(s)?;
        let rule = match name.as_str() {
            "add" => {
                at_most(s, &a, 0)?;
                UpdateRule::Add
            }
            "sgd" => {
                at_most(s, &a, 1)?;
                UpdateRule::Sgd {
                    lr: arg(&a, 0, 0.01),
                }
            }
            "adagrad" => {
                at_most(s, &a, 3)?;
                UpdateRule::Adagrad {
                    lr: arg(&a, 0, 0.01),
                    eps: arg(&a, 1, 1e-8),
                    initial_accumulator: arg(&a, 2, 0.1),
                }
            }
            "adam" => {
                at_most(s, &a, 4)?;
                UpdateRule::Adam {
                    lr: arg(&a, 0, 0.001),
                    beta1: arg(&a, 1, 0.9),
                    beta2: arg(&a, 2, 0.999),
                    eps: arg(&a, 3, 1e-8),
                }
            }
            other => {
                return Err(format!(
                    "unknown update rule {other:?} (add, sgd, adagrad, adam)"
                ))
            }
        };
        Ok(rule)
    }
}

impl fmt::Display for UpdateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UpdateRule::Add => write!(f, "add"),
            UpdateRule::Sgd { lr } => write!(f, "sgd({lr})"),
            UpdateRule::Adagrad {
                lr,
                eps,
                initial_accumulator,
            } => write!(f, "adagrad({lr},{eps},{initial_accumulator})"),
            UpdateRule::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => write!(f, "adam({lr},{beta1},{beta2},{eps})"),
        }
    }
}

impl FromStr for Initializer {
    type Err = String;

    /// `zeros`, `uniform(low,high)`, `normal(std)`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, a) = parse_call(s)?;
        match name.as_str() {
            "zeros" | "zero" => {
                at_most(s, &a, 0)?;
                Ok(Initializer::Zeros)
            }
            "uniform" => {
                at_most(s, &a, 2)?;
                let low = arg(&a, 0, -0.5);
                Ok(Initializer::Uniform {
                    low,
                    high: arg(&a, 1, -low),
                })
            }
            "normal" => {
                at_most(s, &a, 1)?;
                Ok(Initializer::Normal {
                    std: arg(&a, 0, 0.01),
                })
            }
            other => Err(format!(
                "unknown initializer {other:?} (zeros, uniform, normal)"
            )),
        }
    }
}

impl fmt::Display for Initializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Initializer::Zeros => write!(f, "zeros"),
            Initializer::Uniform { low, high } => write!(f, "uniform({low},{high})"),
            Initializer::Normal { std } => write!(f, "normal({std})"),
        }
    }
}

/// Version of the catalog entry encoding below.
const CATALOG_ENTRY_VERSION: u8 = 1;

/// Encodes a catalog entry: `version u8 | id u32 | dim u32 | seed u64 | init tag u8 + 2×f32 |
/// rule tag u8 + 4×f32 | name` (little-endian; the name takes the rest).
pub(crate) fn encode_entry(id: u32, spec: &TableSpec) -> Vec<u8> {
    let mut b = Vec::with_capacity(48 + spec.name.len());
    b.push(CATALOG_ENTRY_VERSION);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&spec.dim.to_le_bytes());
    b.extend_from_slice(&spec.seed.to_le_bytes());
    let (it, ip) = match spec.init {
        Initializer::Zeros => (0u8, [0.0, 0.0]),
        Initializer::Uniform { low, high } => (1, [low, high]),
        Initializer::Normal { std } => (2, [std, 0.0]),
    };
    b.push(it);
    for p in ip {
        b.extend_from_slice(&p.to_le_bytes());
    }
    let rp = match spec.rule {
        UpdateRule::Add => [0.0; 4],
        UpdateRule::Sgd { lr } => [lr, 0.0, 0.0, 0.0],
        UpdateRule::Adagrad {
            lr,
            eps,
            initial_accumulator,
        } => [lr, eps, initial_accumulator, 0.0],
        UpdateRule::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => [lr, beta1, beta2, eps],
    };
    b.push(spec.rule.tag());
    for p in rp {
        b.extend_from_slice(&p.to_le_bytes());
    }
    b.extend_from_slice(spec.name.as_bytes());
    b
}

/// Decodes a catalog entry into `(id, spec)`.
pub(crate) fn decode_entry(b: &[u8]) -> Result<(u32, TableSpec), String> {
    const FIXED: usize = 1 + 4 + 4 + 8 + 1 + 8 + 1 + 16;
    if b.len() < FIXED {
        return Err(format!(
            "catalog entry is {} bytes, shorter than {FIXED}",
            b.len()
        ));
    }
    if b[0] != CATALOG_ENTRY_VERSION {
        return Err(format!(
            "catalog entry version {} (this build reads {CATALOG_ENTRY_VERSION})",
            b[0]
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let f32_at = |o: usize| f32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let id = u32_at(1);
    let dim = u32_at(5);
    let seed = u64::from_le_bytes(b[9..17].try_into().expect("8 bytes"));
    let init = match b[17] {
        0 => Initializer::Zeros,
        1 => Initializer::Uniform {
            low: f32_at(18),
            high: f32_at(22),
        },
        2 => Initializer::Normal { std: f32_at(18) },
        t => return Err(format!("unknown initializer tag {t}")),
    };
    let p = [f32_at(27), f32_at(31), f32_at(35), f32_at(39)];
    let rule = match b[26] {
        0 => UpdateRule::Add,
        1 => UpdateRule::Sgd { lr: p[0] },
        2 => UpdateRule::Adagrad {
            lr: p[0],
            eps: p[1],
            initial_accumulator: p[2],
        },
        3 => UpdateRule::Adam {
            lr: p[0],
            beta1: p[1],
            beta2: p[2],
            eps: p[3],
        },
        t => return Err(format!("unknown update rule tag {t}")),
    };
    let name = String::from_utf8(b[FIXED..].to_vec()).map_err(|_| "table name is not UTF-8")?;
    Ok((
        id,
        TableSpec {
            name,
            dim,
            init,
            rule,
            seed,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print() {
        for s in [
            "add",
            "sgd(0.5)",
            "adagrad(0.1,0.001,0.1)",
            "adam(0.001,0.9,0.999,0.00000001)",
        ] {
            let r: UpdateRule = s.parse().unwrap();
            assert_eq!(r.to_string().parse::<UpdateRule>().unwrap(), r);
        }
        assert_eq!(
            "adagrad(lr=0.2)".parse::<UpdateRule>().unwrap(),
            UpdateRule::Adagrad {
                lr: 0.2,
                eps: 1e-8,
                initial_accumulator: 0.1
            }
        );
        assert!("rmsprop(1)".parse::<UpdateRule>().is_err());
        assert!("sgd(1,2)".parse::<UpdateRule>().is_err());
        assert!("sgd(x)".parse::<UpdateRule>().is_err());
        assert_eq!(
            "uniform(-1,1)".parse::<Initializer>().unwrap(),
            Initializer::Uniform {
                low: -1.0,
                high: 1.0
            }
        );
    }

    #[test]
    fn validation_names_the_field() {
        let err = |s: TableSpec| s.validate().unwrap_err().to_string();
        assert!(err(TableSpec::new("", 4)).contains("name"));
        assert!(err(TableSpec::new("a b", 4)).contains("name"));
        assert!(err(TableSpec::new("t", 0)).contains("dim"));
        assert!(
            err(TableSpec::new("t", 4).with_rule(UpdateRule::Sgd { lr: f32::NAN })).contains("lr")
        );
        assert!(err(TableSpec::new("t", 4).with_rule(UpdateRule::Adam {
            lr: 0.1,
            beta1: 1.0,
            beta2: 0.9,
            eps: 1e-8
        }))
        .contains("beta1"));
        assert!(err(TableSpec::new("t", 4).with_init(Initializer::Uniform {
            low: 1.0,
            high: 1.0
        }))
        .contains("uniform"));
        TableSpec::new("emb.in_v2-x", 100).validate().unwrap();
    }

    #[test]
    fn catalog_entry_round_trips() {
        let spec = TableSpec::new("words", 100)
            .with_seed(99)
            .with_init(Initializer::Normal { std: 0.1 })
            .with_rule(UpdateRule::Adam {
                lr: 0.01,
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-6,
            });
        let b = encode_entry(7, &spec);
        assert_eq!(decode_entry(&b).unwrap(), (7, spec));
        assert!(decode_entry(&b[..10]).is_err());
    }
}
