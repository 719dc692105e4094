//! The layout a handle uses for a collection, kept current when another handle or process
//! changes the collection's schema.

use crate::backend::Connection;
use crate::error::Result;
use crate::schema::Schema;
use crate::store::meta::CollectionMeta;
use std::sync::{Arc, PoisonError, RwLock};

/// The current [`CollectionMeta`] of a collection, shared by every handle on it in one `Db`.
///
/// Another handle or process may migrate the collection (drop an index, add `#[version]`,
/// learn new document keys). Writes check the schema record's generation inside their
/// transaction and reload first if it moved, so they never bypass the new schema; reads that
/// fail (a dropped column is an error, since double-quoted string literals are off) reload
/// and run once more. A reload that cannot serve the type is [`Error::SchemaMismatch`].
#[derive(Debug)]
pub(crate) struct MetaSlot {
    current: RwLock<Arc<CollectionMeta>>,
}

impl MetaSlot {
    pub fn new(meta: Arc<CollectionMeta>) -> Self {
        Self { current: RwLock::new(meta) }
    }

    pub fn get(&self) -> Arc<CollectionMeta> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn schema(&self) -> &'static Schema {
        self.get().schema
    }

    /// The meta to use for a statement run through `conn` now: the current one, or a fresh one
    /// if the stored schema changed since it was built.
    pub fn fresh(&self, conn: &dyn Connection) -> Result<Arc<CollectionMeta>> {
        let meta = self.get();
        let generation = crate::store::migrate::generation(conn, meta.collection)?;
        if generation == Some(meta.generation) {
            return Ok(meta);
        }
        self.reload(conn, &meta)
    }

    fn reload(&self, conn: &dyn Connection, old: &CollectionMeta) -> Result<Arc<CollectionMeta>> {
        let meta = Arc::new(crate::store::migrate::load(conn, old)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&meta);
        Ok(meta)
    }
}
