//! Bearer-token authentication: which tokens may read, which may also write. Tokens come from
//! a TOML file (`read = ["…"]`, `write = ["…"]`); a request carries one in its
//! `authorization: Bearer <token>` metadata. Health and reflection stay open, so probes work.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

/// The tokens a server accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    tokens: HashMap<Vec<u8>, Access>,
}

impl std::fmt::Debug for Tokens {
    // Never print the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.tokens.len())
            .finish()
    }
}

impl Tokens {
    /// Reads a token file. Unknown keys, empty tokens and a file without any token are errors.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading token file {}: {e}", path.display()))?;
        let file: TokenFile =
            toml::from_str(&text).map_err(|e| format!("token file {}: {e}", path.display()))?;
        let mut tokens = HashMap::new();
        for (list, access) in [(file.read, Access::Read), (file.write, Access::Write)] {
            for t in list {
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(format!("token file {}: an empty token", path.display()));
                }
                tokens.insert(t.into_bytes(), access);
            }
        }
        if tokens.is_empty() {
            return Err(format!("token file {} lists no tokens", path.display()));
        }
        Ok(Tokens { tokens })
    }

    /// `UNAUTHENTICATED` without a known token, `PERMISSION_DENIED` for a read-only token on a
    /// call that writes.
    pub fn check(&self, md: &MetadataMap, need: Access) -> Result<(), Status> {
        let given = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        // Compared in constant time against every token, so timing tells nothing about them.
        let mut found = None;
        for (t, access) in &self.tokens {
            if constant_time_eq(t, given.as_bytes()) {
                found = Some(*access);
            }
        }
        match (found, need) {
            (None, _) => Err(Status::unauthenticated("unknown bearer token")),
            (Some(Access::Read), Access::Write) => {
                Err(Status::permission_denied("this token may read, not write"))
            }
            _ => Ok(()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_write_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        std::fs::write(&p, "read = [\"r1\"]\nwrite = [\"w1\"]\n").unwrap();
        let t = Tokens::load(&p).unwrap();
        let md = |v: Option<&str>| {
            let mut m = MetadataMap::new();
            if let Some(v) = v {
                m.insert("authorization", v.parse().unwrap());
            }
            m
        };
        let code = |r: Result<(), Status>| r.err().map(|s| s.code());
        assert_eq!(code(t.check(&md(Some("Bearer w1")), Access::Write)), None);
        assert_eq!(code(t.check(&md(Some("Bearer r1")), Access::Read)), None);
        assert_eq!(
            code(t.check(&md(Some("Bearer r1")), Access::Write)),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(t.check(&md(Some("Bearer nope")), Access::Read)),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(t.check(&md(None), Access::Read)),
            Some(tonic::Code::Unauthenticated)
        );
        std::fs::write(&p, "reed = [\"x\"]\n").unwrap();
        assert!(Tokens::load(&p).unwrap_err().contains("unknown field"));
    }
}
