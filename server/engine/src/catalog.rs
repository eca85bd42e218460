//! The catalog: the tables a store has (name, id, column family, definition), their persisted
//! form in RocksDB's meta column family, and the meta keys the store keeps beside them.

use std::collections::HashMap;
use std::sync::Arc;

use paramdb_types::{Initializer, TableSpec, UpdateRule};

use crate::error::StorageError;
use crate::rocks::Rocks;

/// Version of the store's own metadata layout (meta column family, directory layout).
pub const STORE_FORMAT_VERSION: u32 = 1;

pub(crate) const META_FORMAT: &[u8] = b"format";
pub(crate) const META_CHECKPOINT: &[u8] = b"checkpoint_lsn";
pub(crate) const META_NEXT_TABLE: &[u8] = b"next_table_id";
pub(crate) const META_TABLE_PREFIX: &[u8] = b"table/";
pub(crate) const META_CLIENT_PREFIX: &[u8] = b"client/";
/// A table's lifecycle state as of the checkpoint: `life/<table id, u32 BE>`.
pub(crate) const META_LIFE_PREFIX: &[u8] = b"life/";
/// Time of the last record the checkpoint covers (u32 seconds).
pub(crate) const META_CLOCK: &[u8] = b"clock";
/// The last note the checkpoint covers: its LSN (u64 LE), then its bytes.
pub(crate) const META_NOTE: &[u8] = b"note";

/// The meta key of table `id`'s lifecycle state.
pub(crate) fn life_key(id: u32) -> Vec<u8> {
    [META_LIFE_PREFIX, &id.to_be_bytes()].concat()
}

/// A table as the store knows it: the user's spec plus its id.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub id: u32,
    pub spec: TableSpec,
}

/// A live table: its id, definition and column family.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) id: u32,
    pub(crate) spec: TableSpec,
    pub(crate) cf: String,
}

impl Table {
    pub(crate) fn new(id: u32, spec: TableSpec) -> Table {
        Table {
            id,
            spec,
            cf: cf_name(id),
        }
    }

    pub(crate) fn dim(&self) -> usize {
        self.spec.dim as usize
    }

    pub(crate) fn info(&self) -> TableInfo {
        TableInfo {
            id: self.id,
            spec: self.spec.clone(),
        }
    }
}

/// The column family of table `id`.
pub(crate) fn cf_name(id: u32) -> String {
    format!("t{id}")
}

/// Whether `name` is a table's column family (as opposed to `meta` or `default`).
pub(crate) fn is_table_cf(name: &str) -> bool {
    name.len() > 1 && name.starts_with('t') && name[1..].bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) by_name: HashMap<String, Arc<Table>>,
    pub(crate) by_id: HashMap<u32, Arc<Table>>,
    pub(crate) next_id: u32,
}

impl Catalog {
    pub(crate) fn insert(&mut self, t: Arc<Table>) {
        self.by_name.insert(t.spec.name.clone(), t.clone());
        self.by_id.insert(t.id, t);
    }
}

/// Reads the catalog from RocksDB's meta column family.
pub(crate) fn load(rocks: &Rocks) -> Result<Catalog, StorageError> {
    let mut cat = Catalog::default();
    for (k, v) in rocks.meta_prefix(META_TABLE_PREFIX)? {
        let (id, spec) = decode_entry(&v).map_err(|reason| StorageError::CorruptMeta {
            reason: format!("catalog entry {:?}: {reason}", String::from_utf8_lossy(&k)),
        })?;
        cat.insert(Arc::new(Table::new(id, spec)));
    }
    cat.next_id =
        match rocks.meta_get(META_NEXT_TABLE)? {
            Some(v) => u32::from_le_bytes(v.as_slice().try_into().map_err(|_| {
                StorageError::CorruptMeta {
                    reason: "next table id entry is not 4 bytes".into(),
                }
            })?),
            None => 1,
        };
    Ok(cat)
}

/// The meta key of table `name`'s catalog entry.
pub(crate) fn entry_key(name: &str) -> Vec<u8> {
    [META_TABLE_PREFIX, name.as_bytes()].concat()
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
    b.push(crate::row::rule_tag(&spec.rule));
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
            // A table's policies live in its lifecycle state (`life/<id>`), not here.
            lifecycle: Default::default(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
