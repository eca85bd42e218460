//! Per-table lifecycle policies: expiry (`ttl`), admission (`admit_after`) and a size cap
//! (`max_rows`), their validation and their text form (`ttl=7d,admit_after=2,max_rows=1000000`).
//! The engine documents and enforces their exact semantics (`server/engine/src/lifecycle.rs`).

use std::fmt;
use std::str::FromStr;

use crate::spec::SpecError;
use crate::text::quote;

/// Longest TTL a table may have: about 68 years, so that every row time (whole seconds since
/// the Unix epoch, in a `u32`) minus the TTL stays representable.
pub const MAX_TTL_SECS: u64 = (i32::MAX as u64) - 1;
/// Largest `admit_after`: admission counters are 8 bits.
pub const MAX_ADMIT_AFTER: u32 = 255;

/// What a table does with rows over their lifetime. The default keeps every row forever.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lifecycle {
    /// Rows not pushed for this many seconds expire.
    pub ttl_secs: Option<u64>,
    /// A key gets a stored row only from its n-th push (0 and 1: from its first).
    pub admit_after: u32,
    /// The table keeps at most about this many rows, evicting the least recently pushed.
    pub max_rows: Option<u64>,
}

impl Lifecycle {
    pub fn is_none(&self) -> bool {
        *self == Lifecycle::default()
    }

    /// Whether admission is on (`admit_after` of 2 or more).
    pub fn admits(&self) -> bool {
        self.admit_after >= 2
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |reason: String| Err(SpecError { reason });
        match self.ttl_secs {
            Some(0) => return bad("ttl must be at least 1 second".into()),
            Some(t) if t > MAX_TTL_SECS => {
                return bad(format!(
                    "ttl must be at most {MAX_TTL_SECS} seconds, got {t}"
                ))
            }
            _ => {}
        }
        if self.admit_after > MAX_ADMIT_AFTER {
            return bad(format!(
                "admit_after must be at most {MAX_ADMIT_AFTER}, got {}",
                self.admit_after
            ));
        }
        if self.max_rows == Some(0) {
            return bad("max_rows must be at least 1".into());
        }
        Ok(())
    }
}

/// Parses a duration: a number of seconds, or a number with one of `s`, `m`, `h`, `d`, `w`.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{} is not a duration (e.g. 90s, 30m, 12h, 7d)", quote(s)))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{} has an unknown unit (s, m, h, d, w)", quote(s))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{} is too long", quote(s)))
}

fn format_duration(secs: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (unit, n) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(n) {
            return write!(f, "{}{unit}", secs / n);
        }
    }
    write!(f, "{secs}s")
}

impl fmt::Display for Lifecycle {
    /// `none`, or the policies that are set: `ttl=7d,admit_after=2,max_rows=1000000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return write!(f, "none");
        }
        let mut sep = "";
        if let Some(t) = self.ttl_secs {
            write!(f, "ttl=")?;
            format_duration(t, f)?;
            sep = ",";
        }
        if self.admit_after >= 2 {
            write!(f, "{sep}admit_after={}", self.admit_after)?;
            sep = ",";
        }
        if let Some(m) = self.max_rows {
            write!(f, "{sep}max_rows={m}")?;
        }
        Ok(())
    }
}

impl FromStr for Lifecycle {
    type Err = String;

    /// `none` (or empty), or comma-separated `ttl=DURATION`, `admit_after=N`, `max_rows=N`,
    /// each at most once.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let mut l = Lifecycle::default();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(l);
        }
        let mut seen = Vec::new();
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{} is not name=value", quote(part)))?;
            let k = k.trim().to_ascii_lowercase();
            if seen.contains(&k) {
                return Err(format!("{} is given twice in {}", quote(&k), quote(s)));
            }
            let number = |v: &str| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{} is not a whole number", quote(v)))
            };
            match k.as_str() {
                "ttl" => l.ttl_secs = Some(parse_duration_secs(v)?),
                "admit_after" => {
                    l.admit_after = u32::try_from(number(v)?)
                        .map_err(|_| format!("admit_after {} is too large", quote(v)))?
                }
                "max_rows" => l.max_rows = Some(number(v)?),
                _ => {
                    return Err(format!(
                        "unknown policy {} (ttl, admit_after, max_rows)",
                        quote(&k)
                    ))
                }
            }
            seen.push(k);
        }
        l.validate().map_err(|e| e.reason)?;
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for s in [
            "none",
            "ttl=2d",
            "ttl=1w",
            "ttl=90s,admit_after=2,max_rows=10",
            "max_rows=5",
        ] {
            let l: Lifecycle = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        assert_eq!(
            "ttl=3600".parse::<Lifecycle>().unwrap().ttl_secs,
            Some(3600)
        );
        assert!("ttl=0".parse::<Lifecycle>().is_err());
        assert!("ttl=1d,ttl=2d".parse::<Lifecycle>().is_err());
        assert!("admit_after=256".parse::<Lifecycle>().is_err());
        assert!("max_rows=0".parse::<Lifecycle>().is_err());
        assert!("colour=red".parse::<Lifecycle>().is_err());
        assert!("ttl=5y".parse::<Lifecycle>().is_err());
    }
}
