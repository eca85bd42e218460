//! Creating and dropping tables. The catalog entry in RocksDB's meta column family is the
//! commit point of both: a column family without an entry is dropped by the next open.

use std::sync::Arc;

use paramdb_types::TableSpec;
use rocksdb::WriteBatch;

use crate::catalog::{self, Table, TableInfo, META_NEXT_TABLE};
use crate::error::{InputError, TableError};
use crate::lifecycle::Life;
use crate::store::Core;

impl Core {
    pub(crate) fn create_table(&self, spec: TableSpec) -> Result<TableInfo, TableError> {
        self.check_writable("create a table")?;
        spec.validate().map_err(InputError::from)?;
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.poison.check()?;
        let id = {
            let cat = self.catalog();
            if cat.by_name.contains_key(&spec.name) {
                return Err(InputError::TableExists { name: spec.name }.into());
            }
            cat.next_id
        };
        let t = Arc::new(Table::new(id, spec.clone()));
        self.rocks.create_cf(&t.cf)?;
        let life = Life::new(spec.lifecycle, self.now(), self.opts.admission_counters);
        let mut b = WriteBatch::default();
        let meta = self.rocks.cf(crate::rocks::META_CF)?;
        b.put_cf(
            &meta,
            catalog::entry_key(&spec.name),
            catalog::encode_entry(id, &spec),
        );
        b.put_cf(&meta, catalog::life_key(id), life.encode());
        b.put_cf(&meta, META_NEXT_TABLE, (id + 1).to_le_bytes());
        drop(meta);
        self.rocks.commit(b, &[])?;
        // Before the table is visible, so its first push finds its policies.
        self.state.write().life.insert(id, life);
        // A cache that cannot take the table only costs speed: the table works without it.
        if let Err(e) = self.cache().rows.add_table(id, &spec) {
            tracing::warn!(error = %e, table = %spec.name, "table created without a cache");
        }
        let mut cat = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        cat.insert(t);
        cat.next_id = id + 1;
        tracing::info!(table = %spec.name, id, dim = spec.dim, rule = %spec.rule, lifecycle = %spec.lifecycle, "table created");
        Ok(TableInfo { id, spec })
    }

    pub(crate) fn drop_table(&self, name: &str) -> Result<(), TableError> {
        self.check_writable("drop a table")?;
        let _ddl = self.ddl.lock().unwrap_or_else(|e| e.into_inner());
        self.poison.check()?;
        let t = self.table(name)?;
        // The catalog entry is the commit point: once it is gone, the next open drops the
        // column family if we crash before doing it here, and log records of the table's id
        // are skipped.
        let mut b = WriteBatch::default();
        let meta = self.rocks.cf(crate::rocks::META_CF)?;
        b.delete_cf(&meta, catalog::entry_key(name));
        b.delete_cf(&meta, catalog::life_key(t.id));
        crate::gone::forget_table(&mut b, &meta, t.id);
        drop(meta);
        self.rocks.commit(b, &[])?;
        {
            // Under the sequencer: no push of this table is between its checks and its apply.
            let _log = self.log.sequencer();
            let mut layers = self.state.write();
            let mut cat = self.catalog.write().unwrap_or_else(|e| e.into_inner());
            cat.by_name.remove(name);
            cat.by_id.remove(&t.id);
            if let Some(rows) = layers.dirty.remove(&t.id) {
                layers.dirty_bytes = layers.dirty_bytes.saturating_sub(rows.bytes());
            }
            layers.life.remove(&t.id);
            drop(cat);
            drop(layers);
            if let Err(e) = self.cache().rows.remove_table(t.id) {
                tracing::warn!(error = %e, table = %name, "could not shrink the cache after a drop");
            }
        }
        self.rocks.drop_cf(&t.cf)?;
        tracing::info!(table = %name, id = t.id, "table dropped");
        Ok(())
    }
}
