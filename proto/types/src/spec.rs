//! Table definitions: dimension, initializer and update rule, their validation and their text
//! form (`adagrad(0.1,1e-8,0.1)`), which is also how the wire carries them.

use std::fmt;
use std::str::FromStr;

use crate::text::quote;

/// A table definition that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid table definition: {reason}")]
pub struct SpecError {
    pub reason: String,
}

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
    /// Expiry, admission and size cap; changeable after creation.
    pub lifecycle: crate::Lifecycle,
}

impl TableSpec {
    pub fn new(name: impl Into<String>, dim: u32) -> Self {
        Self {
            name: name.into(),
            dim,
            init: Initializer::Zeros,
            rule: UpdateRule::Add,
            seed: 0,
            lifecycle: crate::Lifecycle::default(),
        }
    }

    pub fn with_lifecycle(mut self, lifecycle: crate::Lifecycle) -> Self {
        self.lifecycle = lifecycle;
        self
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
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |reason: String| Err(SpecError { reason });
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
                "table name {} may only use ASCII letters, digits, '_', '-' and '.'",
                quote(&self.name)
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
                Err(SpecError {
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
        self.lifecycle.validate()
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
                .ok_or_else(|| format!("missing ')' in {}", quote(s)))?;
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
                .map_err(|_| format!("{} is not a number in {}", quote(v), quote(s)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.trim().to_ascii_lowercase(), args))
}

fn arg(args: &[f32], i: usize, default: f32) -> f32 {
    args.get(i).copied().unwrap_or(default)
}

fn at_most(s: &str, args: &[f32], n: usize) -> Result<(), String> {
    if args.len() > n {
        Err(format!("{} takes at most {n} arguments", quote(s)))
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
                    "unknown update rule {} (add, sgd, adagrad, adam)",
                    quote(other)
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
                "unknown initializer {} (zeros, uniform, normal)",
                quote(other)
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
    fn errors_quote_long_user_strings_short() {
        let e = "x".repeat(50_000).parse::<UpdateRule>().unwrap_err();
        assert!(e.len() < 200, "{e}");
        let e = TableSpec::new("a b".repeat(40), 4).validate().unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }
}
