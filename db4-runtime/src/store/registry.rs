//! The collections a [`Db`](crate::Db) handle has created or migrated, by name.

use crate::error::Result;
use crate::schema::{Document, DocumentId};
use crate::store::migrate;
use crate::store::pipeline::Writer;
use crate::store::slot::MetaSlot;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The layouts of the collections a handle knows, shared by all its clones.
#[derive(Default)]
pub(crate) struct Registry {
    known: Mutex<HashMap<&'static str, Arc<MetaSlot>>>,
}

impl Registry {
    /// `T`'s collection if this handle has already created or migrated it.
    pub fn get<T: Document>(&self) -> Option<Arc<MetaSlot>> {
        let schema = T::schema();
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(schema.collection()).filter(|slot| std::ptr::eq(slot.schema(), schema)).map(Arc::clone)
    }

    /// The collection named `name`, if this handle has created or migrated it.
    pub fn by_name(&self, name: &str) -> Option<Arc<MetaSlot>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).get(name).map(Arc::clone)
    }

    /// Every collection this handle knows, in name order.
    pub fn all(&self) -> Vec<Arc<MetaSlot>> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let mut slots: Vec<_> = known.values().map(Arc::clone).collect();
        slots.sort_by_key(|s| s.schema().collection());
        slots
    }

    /// Creates or migrates `T`'s collection (inside a write transaction); register it once
    /// that commits.
    pub fn prepare<T: Document>(writer: &Writer<'_>, max_document_bytes: usize) -> Result<Arc<MetaSlot>> {
        let _span = crate::trace::step("prepare", Some(T::schema().collection()));
        let meta = migrate::ensure::<T>(writer, T::Id::KIND, max_document_bytes)?;
        Ok(Arc::new(MetaSlot::new(meta)))
    }

    /// Remembers collections whose creation or migration has committed.
    pub fn register(&self, slots: Vec<Arc<MetaSlot>>) {
        if slots.is_empty() {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in slots {
            known.insert(slot.schema().collection(), slot);
        }
    }
}
