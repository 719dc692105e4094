//! How documents are stored and read back: the parameters a write binds, and strict readers of
//! what a row holds (a value of an unexpected type is corruption, reported as
//! [`Error::Corrupted`] naming the document, never read leniently).

use crate::backend::{Connection, Row};
use crate::error::{Error, Result};
use crate::schema::{Document, DocumentId, IdArg};
use crate::store::meta::{CollectionMeta, VersionMode};
use crate::value::{Value, ValueRef};

/// A document ready to write: its parameters in the layout of the collection's statements.
pub(crate) struct Encoded {
    pub version: Option<u64>,
    pub params: Vec<Value>,
}

pub(crate) fn id_value<T: Document>(meta: &CollectionMeta, id: &impl IdArg<T::Id>) -> Result<Value> {
    id.id_value().map_err(|e| Error::invalid_value(meta.collection, id_field(meta), e.0))
}

pub(crate) fn id_field(meta: &CollectionMeta) -> &'static str {
    meta.schema.id_field().map_or("id", |f| f.name())
}

/// The error for a document that cannot be encoded.
pub(crate) fn json_error(meta: &CollectionMeta, e: crate::json::JsonError, id: impl Fn() -> String) -> Error {
    match e {
        crate::json::JsonError::Serde(e) => Error::serialization(meta.collection, Some(id()), e),
        crate::json::JsonError::NonFinite(path) => Error::invalid_value(
            meta.collection,
            path.trim_start_matches('.'),
            format!(
                "document {}: NaN and infinite floats cannot be stored (JSON has no such numbers)",
                crate::error::Short(&id())
            ),
        ),
        crate::json::JsonError::TooDeep(path) => Error::invalid_value(
            meta.collection,
            path.trim_start_matches('.'),
            format!(
                "document {}: nested more than {} levels deep, which could not be read back",
                crate::error::Short(&id()),
                crate::json::MAX_DEPTH
            ),
        ),
    }
}

/// Serializes and checks a document: everything that can fail does so before any write.
pub(crate) fn encode<T: Document>(meta: &CollectionMeta, doc: &T) -> Result<Encoded> {
    let id_key = doc.id().to_value().map_err(|e| Error::invalid_value(meta.collection, id_field(meta), e.0))?;
    // The id as text is only needed for an error message: built then, not on every write.
    let id = || doc.id().to_display();
    let json = crate::json::to_json(doc).map_err(|e| json_error(meta, e, id))?;
    check_size(meta, json.len(), id)?;
    let mut params = Vec::with_capacity(3);
    params.push(id_key);
    params.push(Value::Text(json));
    let version = doc.version();
    match meta.version_mode {
        VersionMode::None => {}
        VersionMode::Checked => {
            let v = version.unwrap_or(0);
            // The stored counter is an SQLite integer and an update adds one to it, which the
            // field's own type must also hold.
            if v >= i64::MAX as u64 || !T::version_fits(v + 1) {
                let field = meta.schema.version_field().map_or("version", |f| f.name());
                return Err(Error::invalid_value(meta.collection, field, format!("version {v} is too large")));
            }
            params.push(Value::Integer(v as i64));
        }
        // The table counts versions the type does not declare: the statements bump them.
        VersionMode::Bumped => params.push(Value::Null),
    }
    Ok(Encoded { version, params })
}

pub(crate) fn check_size(meta: &CollectionMeta, size: usize, id: impl Fn() -> String) -> Result<()> {
    if size > meta.max_document_bytes {
        return Err(Error::TooLarge {
            collection: meta.collection.to_owned(),
            id: id(),
            size,
            limit: meta.max_document_bytes,
        });
    }
    Ok(())
}

pub(crate) fn stored_doc(conn: &dyn Connection, meta: &CollectionMeta, id: &Value) -> Result<Option<String>> {
    let mut out = None;
    conn.query(&meta.sql.select_doc, std::slice::from_ref(id), &mut |row| {
        let ValueRef::Text(json) = row.get(0)? else { return Err(corrupt(meta, "document", id)) };
        out = Some(json.to_owned());
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn stored_version(conn: &dyn Connection, meta: &CollectionMeta, id: &Value) -> Result<Option<u64>> {
    let mut out = None;
    conn.query(&meta.sql.select_version, std::slice::from_ref(id), &mut |row| {
        out = Some(stored_version_value(meta, row.get(0)?, id)?);
        Ok(())
    })?;
    Ok(out)
}

/// A stored version, read strictly: anything but a non-negative integer is corruption.
pub(crate) fn stored_version_value(meta: &CollectionMeta, v: ValueRef<'_>, id: &Value) -> Result<u64> {
    match v {
        ValueRef::Integer(v) => u64::try_from(v).map_err(|_| corrupt(meta, "version", id)),
        _ => Err(corrupt(meta, "version", id)),
    }
}

pub(crate) fn select_one<T: Document>(conn: &dyn Connection, meta: &CollectionMeta, key: &Value) -> Result<Option<T>> {
    let mut out = None;
    conn.query(&meta.sql.select_one, std::slice::from_ref(key), &mut |row| {
        out = Some(decode::<T>(meta, row, 0).map_err(|e| with_id(e, key))?);
        Ok(())
    })?;
    Ok(out)
}

/// A stored id as the text error messages show.
pub(crate) fn id_text(id: &Value) -> String {
    match id {
        Value::Text(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Names the document in a (de)serialization or corruption error that lacks its id.
pub(crate) fn with_id(e: Error, id: &Value) -> Error {
    match e {
        Error::Serialization { collection, id: None, source } => {
            Error::Serialization { collection, id: Some(id_text(id)), source }
        }
        Error::Corrupted { what, collection, id: None } => Error::Corrupted { what, collection, id: Some(id_text(id)) },
        other => other,
    }
}

/// Stored data of an unexpected type: corruption, named with the document it is in.
pub(crate) fn corrupt(meta: &CollectionMeta, what: &str, id: &Value) -> Error {
    let id = (!matches!(id, Value::Null)).then(|| id_text(id));
    Error::corrupted(meta.collection, id, format!("the stored {what} has an unexpected type or value"))
}

pub(crate) fn count(conn: &dyn Connection, collection: &str, sql: &str, params: &[Value]) -> Result<u64> {
    let mut n = None;
    conn.query(sql, params, &mut |row| {
        n = match row.get(0)? {
            ValueRef::Integer(c) => u64::try_from(c).ok(),
            _ => None,
        };
        Ok(())
    })?;
    n.ok_or_else(|| Error::corrupted(collection, None, "count(*) did not return a non-negative integer"))
}

/// Reads a document from `row`, whose column `at` is `_doc` (and `at + 1` is `_version` in a
/// versioned collection).
pub(crate) fn decode<T: Document>(meta: &CollectionMeta, row: &dyn Row, at: usize) -> Result<T> {
    // The caller names the document (`with_id`): the row may not hold its id.
    let ValueRef::Text(json) = row.get(at)? else { return Err(corrupt(meta, "document", &Value::Null)) };
    decode_json(meta, json, version_column(meta, row, at + 1)?)
}

/// The `_version` column at `at`, for a versioned collection.
fn version_column(meta: &CollectionMeta, row: &dyn Row, at: usize) -> Result<Option<i64>> {
    if !meta.versioned {
        return Ok(None);
    }
    match row.get(at)? {
        ValueRef::Integer(v) if v >= 0 => Ok(Some(v)),
        _ => Err(corrupt(meta, "version", &Value::Null)),
    }
}

/// A stored document read but not decoded yet: its JSON text and `_version` column. The shard
/// router reads a page's candidates from every shard this way and decodes only the ones the
/// merge keeps.
#[derive(Debug, Clone)]
#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
pub(crate) struct Stored {
    json: String,
    version: Option<i64>,
}

#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
impl Stored {
    /// The document at column `at` of `row` (and its version after it), as [`decode`] reads it.
    pub(crate) fn read(meta: &CollectionMeta, row: &dyn Row, at: usize) -> Result<Self> {
        let ValueRef::Text(json) = row.get(at)? else { return Err(corrupt(meta, "document", &Value::Null)) };
        Ok(Self { json: json.to_owned(), version: version_column(meta, row, at + 1)? })
    }

    /// The document, decoded as [`decode`] would have.
    pub(crate) fn decode<T: Document>(&self, meta: &CollectionMeta) -> Result<T> {
        decode_json(meta, &self.json, self.version)
    }
}

/// Deserializes a stored document; `version` is its `_version` column, which is authoritative
/// (updates bump it without rewriting the JSON's copy).
///
/// A document written before the type had its `#[version]` field (or by a handle whose type
/// lacks it) has no such key; it reads with the column's value, with no serde attribute
/// needed. The fallback runs only after the plain deserialization failed.
pub(crate) fn decode_json<T: Document>(meta: &CollectionMeta, json: &str, version: Option<i64>) -> Result<T> {
    let mut doc = match serde_json::from_str::<T>(json) {
        Ok(doc) => doc,
        // Only a document lacking the version key can read with it added.
        Err(e) => match (version, meta.schema.version_field(), serde_json::from_str(json)) {
            (Some(_), Some(f), Ok(doc @ serde_json::Value::Object(_))) if doc.get(f.key()).is_none() => {
                decode_value(meta, doc, version).map_err(|_| Error::serialization(meta.collection, None, e))?
            }
            _ => return Err(Error::serialization(meta.collection, None, e)),
        },
    };
    if let (true, Some(v)) = (meta.versioned, version) {
        doc.set_version(u64::try_from(v).map_err(|_| corrupt(meta, "version", &Value::Null))?);
    }
    Ok(doc)
}

/// [`decode_json`] for a parsed document.
pub(crate) fn decode_value<T: Document>(
    meta: &CollectionMeta,
    mut doc: serde_json::Value,
    version: Option<i64>,
) -> Result<T> {
    if let (Some(v), Some(f), serde_json::Value::Object(map)) = (version, meta.schema.version_field(), &mut doc) {
        map.entry(f.key().to_owned()).or_insert(v.into());
    }
    serde_json::from_value(doc).map_err(|e| Error::serialization(meta.collection, None, e))
}

/// An id as a hashable map key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IdKey {
    Integer(i64),
    Text(String),
    Other,
}

impl IdKey {
    pub(crate) fn from_ref(v: ValueRef<'_>) -> Self {
        match v {
            ValueRef::Integer(i) => IdKey::Integer(i),
            ValueRef::Text(s) => IdKey::Text(s.to_owned()),
            _ => IdKey::Other,
        }
    }
}
