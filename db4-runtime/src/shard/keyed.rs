//! Reads and writes by (partition key, id) on one shard: a shard holds many partition keys,
//! and a document answers only to its own. Shared by the native router and the shard
//! objects' server; not part of the pure core (it reads collections).

use super::ring::partition_key_bytes;
use crate::error::{Error, Result};
use crate::schema::DocumentId;
use crate::value::Value;

/// An id already turned into its stored value, to pass where an [`IdArg`](crate::IdArg) goes
/// (its type was checked when it was made, or is checked where it is bound).
pub(crate) struct IdValue(pub(crate) Value);

impl<I: DocumentId> crate::schema::IdArg<I> for IdValue {
    fn id_value(&self) -> std::result::Result<Value, crate::value::ValueError> {
        Ok(self.0.clone())
    }
}

/// Whether `doc` is stored under the partition key `key` (as the ring hashes keys; the key
/// as the routers make it from the typed value).
pub(crate) fn stored_under_key<T: crate::schema::Partitioned>(doc: &T, key: &Value) -> Result<bool> {
    let own = crate::value::to_value(doc.partition_key()).map_err(|e| {
        let name = T::schema().partition_key_field().map_or("partition key", |f| f.name());
        Error::invalid_value(T::schema().collection(), name, e.0)
    })?;
    Ok(partition_key_bytes(&own) == partition_key_bytes(key))
}

/// The document `id` of `c`, if it is stored under the partition key `key`: a shard holds
/// many keys, and a document answers only to its own.
pub(crate) fn get_under<T: crate::schema::Partitioned, S: crate::txn::Scope>(
    c: &crate::collection::Collection<T, S>,
    id: &Value,
    key: &Value,
) -> Result<Option<T>> {
    match c.get(IdValue(id.clone()))? {
        Some(doc) if stored_under_key(&doc, key)? => Ok(Some(doc)),
        _ => Ok(None),
    }
}

/// [`get_under`], its absence [`Error::NotFound`].
pub(crate) fn require_under<T: crate::schema::Partitioned, S: crate::txn::Scope>(
    c: &crate::collection::Collection<T, S>,
    id: &Value,
    key: &Value,
) -> Result<()> {
    match get_under(c, id, key)? {
        Some(_) => Ok(()),
        None => Err(Error::NotFound {
            collection: T::schema().collection().to_owned(),
            id: crate::store::codec::id_text(id),
        }),
    }
}
