//! User strings in messages, cut short: an error that echoes a 75 KB table name would not fit
//! in gRPC's status metadata, and nobody reads past the first few dozen characters anyway.

/// Characters of a user string an error message shows.
const SHOWN: usize = 64;

/// `s` in quotes (Rust's `{:?}` form), cut to its first 64 characters with its length noted
/// when it is longer.
pub fn quote(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{:?}… ({} bytes)", &s[..i], s.len()),
        None => format!("{s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn long_strings_are_cut() {
        assert_eq!(quote("emb"), "\"emb\"");
        let q = quote(&"x".repeat(100_000));
        assert!(q.len() < 100 && q.contains("100000 bytes"), "{q}");
        // Cut on a character boundary.
        let q = quote(&"é".repeat(100));
        assert!(q.starts_with('"') && q.contains("200 bytes"), "{q}");
    }
}
