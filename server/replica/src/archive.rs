//! A snapshot's bytes: the files of an engine backup (RocksDB checkpoint files, log segments,
//! manifest) packed into one file, so openraft can send it in chunks.
//!
//! ```text
//! "PDBSNAP1"
//! per file: path length u32 | path (UTF-8, '/'-separated, relative) | size u64 | bytes
//! end:      0 u32 | CRC-32 of every byte before the end marker
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path};

const MAGIC: &[u8; 8] = b"PDBSNAP1";

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.crc.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashingRead<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for HashingRead<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(b)?;
        self.crc.update(&b[..n]);
        Ok(n)
    }
}

fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            files_under(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).map_err(io::Error::other)?;
            let rel = rel
                .to_str()
                .ok_or_else(|| io::Error::other(format!("{} is not UTF-8", p.display())))?;
            out.push(rel.to_string());
        }
    }
    Ok(())
}

/// Packs every file under `dir` into `to` (synced). Returns its size.
pub(crate) fn pack(dir: &Path, to: &Path) -> io::Result<u64> {
    let mut names = Vec::new();
    files_under(dir, dir, &mut names)?;
    names.sort();
    let f = File::create(to)?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    for name in &names {
        let mut src = File::open(dir.join(name))?;
        let size = src.metadata()?.len();
        w.write_all(&(name.len() as u32).to_le_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&size.to_le_bytes())?;
        let copied = io::copy(&mut (&mut src).take(size), &mut w)?;
        if copied != size {
            return Err(io::Error::other(format!(
                "{name} changed while it was packed"
            )));
        }
    }
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&0u32.to_le_bytes())?;
    inner.write_all(&crc.to_le_bytes())?;
    let f = inner.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    f.metadata().map(|m| m.len())
}

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Unpacks `from` into `dir` (which must not exist), checking the checksum before it returns.
pub(crate) fn unpack(from: &Path, dir: &Path) -> io::Result<()> {
    let mut r = HashingRead {
        inner: BufReader::with_capacity(1 << 20, File::open(from)?),
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("not a paramdb snapshot"));
    }
    fs::create_dir(dir)?;
    loop {
        let mut len = [0u8; 4];
        let before = r.crc.clone();
        r.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            let mut stored = [0u8; 4];
            r.inner.read_exact(&mut stored)?;
            if u32::from_le_bytes(stored) != before.finalize() {
                return Err(bad("snapshot checksum mismatch"));
            }
            return Ok(());
        }
        if len > 4096 {
            return Err(bad("snapshot file name too long"));
        }
        let mut name = vec![0u8; len];
        r.read_exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| bad("snapshot file name not UTF-8"))?;
        let rel = Path::new(&name);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad(format!(
                "snapshot file name {name:?} leaves its directory"
            )));
        }
        let mut size = [0u8; 8];
        r.read_exact(&mut size)?;
        let size = u64::from_le_bytes(size);
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            fs::create_dir_all(p)?;
        }
        let mut out = BufWriter::new(File::create(&path)?);
        let copied = io::copy(&mut (&mut r).take(size), &mut out)?;
        if copied != size {
            return Err(bad(format!("snapshot cut short in {name}")));
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_back_and_damage_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("top"), b"hello").unwrap();
        fs::write(src.join("a/b/deep"), vec![7u8; 100_000]).unwrap();
        let packed = t.path().join("p.snap");
        pack(&src, &packed).unwrap();
        let out = t.path().join("out");
        unpack(&packed, &out).unwrap();
        assert_eq!(fs::read(out.join("top")).unwrap(), b"hello");
        assert_eq!(fs::read(out.join("a/b/deep")).unwrap(), vec![7u8; 100_000]);
        let mut b = fs::read(&packed).unwrap();
        b[5000] ^= 1;
        fs::write(&packed, &b).unwrap();
        assert!(unpack(&packed, &t.path().join("out2")).is_err());
    }
}
