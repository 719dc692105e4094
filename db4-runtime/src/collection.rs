//! Typed CRUD over a backend.

use crate::backend::{Access, Connection, Row, run};
use crate::db::Db;
use crate::document::{Document, DocumentId, IdArg};
use crate::error::{Error, Result};
use crate::meta::CollectionMeta;
use crate::query::Query;
use crate::value::{Value, ValueRef};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// The documents of type `T` in a [`Db`], from [`Db::collection`].
///
/// Cheap to clone; every call runs against the database directly.
pub struct Collection<T> {
    db: Db,
    meta: Arc<CollectionMeta>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Self { db: self.db.clone(), meta: Arc::clone(&self.meta), _marker: PhantomData }
    }
}

impl<T> std::fmt::Debug for Collection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection").field("collection", &self.meta.collection).finish()
    }
}

/// A document ready to write: its parameters in the layout of the collection's statements.
pub(crate) struct Encoded {
    pub id: String,
    pub version: Option<u64>,
    pub params: Vec<Value>,
}

impl<T: Document> Collection<T> {
    pub(crate) fn new(db: Db, meta: Arc<CollectionMeta>) -> Self {
        Self { db, meta, _marker: PhantomData }
    }

    /// The collection's name.
    pub fn name(&self) -> &'static str {
        self.meta.collection
    }

    pub(crate) fn meta(&self) -> &CollectionMeta {
        &self.meta
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Stores a new document.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyExists`] if the id is taken, [`Error::TooLarge`] above the size limit,
    /// [`Error::InvalidValue`] for an empty id or a non-finite indexed float,
    /// [`Error::Serialization`] if the document does not serialize. Nothing is written then.
    pub fn insert(&self, doc: &T) -> Result<()> {
        let enc = self.encode(doc)?;
        run(self.db.backend(), Access::Write, |conn| insert_encoded(conn, &self.meta, &enc))
    }

    /// Stores many new documents in one transaction: all of them, or none.
    ///
    /// # Errors
    ///
    /// As [`insert`](Self::insert), for the first document that fails; then none is stored.
    pub fn insert_many<'a>(&self, docs: impl IntoIterator<Item = &'a T>) -> Result<()>
    where
        T: 'a,
    {
        let encoded = docs.into_iter().map(|d| self.encode(d)).collect::<Result<Vec<_>>>()?;
        run(self.db.backend(), Access::Atomic, |conn| {
            encoded.iter().try_for_each(|enc| insert_encoded(conn, &self.meta, enc))
        })
    }

    /// Reads the document with this id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an id that cannot exist (empty), [`Error::Serialization`]
    /// if the stored document no longer deserializes into `T`.
    pub fn get(&self, id: impl IdArg<T::Id>) -> Result<Option<T>> {
        let key = self.id_value(&id)?;
        run(self.db.backend(), Access::Read, |conn| {
            let mut out = None;
            conn.query(&self.meta.sql.select_one, &[key], &mut |row| {
                out = Some(decode::<T>(&self.meta, row, 0)?);
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Reads many documents at once. The result is aligned with `ids`: `None` where no
    /// document has that id.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub fn get_many<I: IdArg<T::Id>>(&self, ids: impl IntoIterator<Item = I>) -> Result<Vec<Option<T>>> {
        let keys = ids.into_iter().map(|id| self.id_value(&id)).collect::<Result<Vec<_>>>()?;
        let json = serde_json::Value::Array(
            keys.iter()
                .map(|k| match k {
                    Value::Integer(i) => serde_json::Value::from(*i),
                    Value::Text(s) => serde_json::Value::from(s.as_str()),
                    _ => serde_json::Value::Null,
                })
                .collect(),
        );
        let mut positions: HashMap<IdKey, Vec<usize>> = HashMap::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            positions.entry(IdKey::from_ref(k.as_ref())).or_default().push(i);
        }
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(keys.len()).collect();
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.meta.sql.select_many, &[Value::Text(json.to_string())], &mut |row| {
                let key = IdKey::from_ref(row.get(0)?);
                // A duplicated id in the request gets its own decoded copy at each position.
                for &pos in positions.get(&key).map_or(&[][..], Vec::as_slice) {
                    out[pos] = Some(decode::<T>(&self.meta, row, 1)?);
                }
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// Replaces a stored document.
    ///
    /// With a `#[version]` field, the stored version must equal `doc`'s; the stored version
    /// then becomes one more (read the document again, or add one to your copy, before the
    /// next update).
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if no document has this id, [`Error::Conflict`] if the version is
    /// stale, and the input errors of [`insert`](Self::insert). Nothing is written then.
    pub fn update(&self, doc: &T) -> Result<()> {
        let enc = self.encode(doc)?;
        run(self.db.backend(), Access::Write, |conn| update_encoded(conn, &self.meta, &enc))
    }

    /// Inserts the document, or replaces the stored one with the same id (checking and
    /// bumping the version as [`update`](Self::update) does when `T` has a `#[version]`).
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] on a stale version, and the input errors of
    /// [`insert`](Self::insert).
    pub fn upsert(&self, doc: &T) -> Result<()> {
        let enc = self.encode(doc)?;
        if !self.meta.versioned {
            return run(self.db.backend(), Access::Write, |conn| conn.execute(&self.meta.sql.upsert, &enc.params))
                .map(drop);
        }
        run(self.db.backend(), Access::Atomic, |conn| match stored_version(conn, &self.meta, &enc.params[0])? {
            None => insert_encoded(conn, &self.meta, &enc),
            Some(_) => update_encoded(conn, &self.meta, &enc),
        })
    }

    /// Deletes the document with this id; returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an id that cannot exist, or a backend error.
    pub fn delete(&self, id: impl IdArg<T::Id>) -> Result<bool> {
        let key = self.id_value(&id)?;
        run(self.db.backend(), Access::Write, |conn| conn.execute(&self.meta.sql.delete, &[key])).map(|n| n > 0)
    }

    /// How many documents the collection holds.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn count(&self) -> Result<u64> {
        run(self.db.backend(), Access::Read, |conn| count(conn, &self.meta.sql.count, &[]))
    }

    /// Starts a query over the collection.
    pub fn query(&self) -> Query<'_, T> {
        Query::new(self)
    }

    fn id_value(&self, id: &impl IdArg<T::Id>) -> Result<Value> {
        id.id_value().map_err(|e| Error::invalid_value(self.meta.collection, self.id_field(), e.0))
    }

    fn id_field(&self) -> &'static str {
        self.meta.schema.id_field().map_or("id", |f| f.name())
    }

    /// Serializes and checks a document: everything that can fail does so before any write.
    fn encode(&self, doc: &T) -> Result<Encoded> {
        let meta = &*self.meta;
        let id_key = doc.id().to_value().map_err(|e| Error::invalid_value(meta.collection, self.id_field(), e.0))?;
        let id = doc.id().to_display();
        let json =
            serde_json::to_string(doc).map_err(|e| Error::serialization(meta.collection, Some(id.clone()), e))?;
        if json.len() > meta.max_document_bytes {
            return Err(Error::TooLarge {
                collection: meta.collection.to_owned(),
                id,
                size: json.len(),
                limit: meta.max_document_bytes,
            });
        }
        let mut params = Vec::with_capacity(3 + meta.columns.len());
        params.push(id_key);
        params.push(Value::Text(json));
        let version = doc.version();
        if meta.versioned {
            let v = version.unwrap_or(0);
            // The stored counter is an SQLite integer and an update adds one to it.
            if v >= i64::MAX as u64 {
                let field = meta.schema.version_field().map_or("version", |f| f.name());
                return Err(Error::invalid_value(meta.collection, field, format!("version {v} is too large")));
            }
            params.push(Value::Integer(v as i64));
        }
        doc.index_values(&mut params)?;
        Ok(Encoded { id, version, params })
    }
}

pub(crate) fn insert_encoded(conn: &dyn Connection, meta: &CollectionMeta, enc: &Encoded) -> Result<()> {
    match conn.execute(&meta.sql.insert, &enc.params) {
        Ok(_) => Ok(()),
        Err(e) if e.backend_kind() == Some(crate::BackendErrorKind::Constraint) => {
            Err(Error::AlreadyExists { collection: meta.collection.to_owned(), id: enc.id.clone() })
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn update_encoded(conn: &dyn Connection, meta: &CollectionMeta, enc: &Encoded) -> Result<()> {
    if conn.execute(&meta.sql.update, &enc.params)? > 0 {
        return Ok(());
    }
    let not_found = || Error::NotFound { collection: meta.collection.to_owned(), id: enc.id.clone() };
    if !meta.versioned {
        return Err(not_found());
    }
    match stored_version(conn, meta, &enc.params[0])? {
        None => Err(not_found()),
        Some(actual) => Err(Error::Conflict {
            collection: meta.collection.to_owned(),
            id: enc.id.clone(),
            expected: enc.version.unwrap_or(0),
            actual,
        }),
    }
}

fn stored_version(conn: &dyn Connection, meta: &CollectionMeta, id: &Value) -> Result<Option<u64>> {
    let mut out = None;
    conn.query(&meta.sql.select_version, std::slice::from_ref(id), &mut |row| {
        out = Some(match row.get(0)? {
            ValueRef::Integer(v) => u64::try_from(v).unwrap_or(0),
            _ => 0,
        });
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn count(conn: &dyn Connection, sql: &str, params: &[Value]) -> Result<u64> {
    let mut n = 0;
    conn.query(sql, params, &mut |row| {
        if let ValueRef::Integer(c) = row.get(0)? {
            n = u64::try_from(c).unwrap_or(0);
        }
        Ok(())
    })?;
    Ok(n)
}

/// Reads a document from `row`, whose column `at` is `_doc` (and `at + 1` is `_version` in a
/// versioned collection).
pub(crate) fn decode<T: Document>(meta: &CollectionMeta, row: &dyn Row, at: usize) -> Result<T> {
    let corrupt = |what: &str| {
        Error::Backend(crate::BackendError::new(
            crate::BackendErrorKind::Corrupt,
            format!("{}: stored {what} has an unexpected type", meta.collection),
        ))
    };
    let ValueRef::Text(json) = row.get(at)? else { return Err(corrupt("document")) };
    let mut doc: T = serde_json::from_str(json).map_err(|e| Error::serialization(meta.collection, None, e))?;
    if meta.versioned {
        // The column is authoritative: updates bump it without rewriting the JSON's copy.
        let ValueRef::Integer(v) = row.get(at + 1)? else { return Err(corrupt("version")) };
        doc.set_version(u64::try_from(v).unwrap_or(0));
    }
    Ok(doc)
}

/// An id as a hashable map key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum IdKey {
    Integer(i64),
    Text(String),
    Other,
}

impl IdKey {
    fn from_ref(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Integer(i) => IdKey::Integer(i),
            ValueRef::Text(s) => IdKey::Text(s.to_owned()),
            _ => IdKey::Other,
        }
    }
}
