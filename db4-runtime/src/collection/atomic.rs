//! Atomic read-modify-write operations on one document: `update_with` and
//! `conditional_update` (optimistic, retried on a version conflict), `compare_and_swap` and
//! `increment` (one field, in one write transaction).

use super::{Collection, update_encoded};
use crate::backend::Access;
use crate::error::{Error, Result};
use crate::query::Field;
use crate::retry::{RetryPolicy, with_optimistic_lock};
use crate::schema::{Document, IdArg};
use crate::store::codec::{
    Encoded, corrupt, decode_value, encode, id_field, id_text, id_value, select_one, stored_version_value, with_id,
};
use crate::store::meta::CollectionMeta;
use crate::store::slot::MetaSlot;
use crate::trace;
use crate::txn::{Runner, Scope};
use crate::value::{Value, ValueRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The outcome of [`Collection::compare_and_swap`](crate::Collection::compare_and_swap).
#[derive(Debug, Clone, PartialEq)]
pub struct CasResult<V> {
    /// Whether the field held the expected value and now holds the new one.
    pub swapped: bool,
    /// The field's value after the call.
    pub current: V,
}

/// A number type that [`Collection::increment`](crate::Collection::increment) can add to.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a number db4 can increment",
    label = "`increment` needs an integer or float field"
)]
pub trait Numeric: Copy + Serialize + DeserializeOwned {
    /// `self + delta`, or `None` on overflow (or a non-finite float result).
    fn checked_add(self, delta: Self) -> Option<Self>;
}

macro_rules! numeric_int {
    ($($t:ty),*) => {$(
        impl Numeric for $t {
            fn checked_add(self, delta: Self) -> Option<Self> {
                <$t>::checked_add(self, delta)
            }
        }
    )*};
}
numeric_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Numeric for f64 {
    fn checked_add(self, delta: Self) -> Option<Self> {
        Some(self + delta).filter(|v| v.is_finite())
    }
}

impl Numeric for f32 {
    fn checked_add(self, delta: Self) -> Option<Self> {
        Some(self + delta).filter(|v| v.is_finite())
    }
}

impl<T: Document, S: Scope> Collection<T, S> {
    /// Reads the document, applies `f` to it and writes it back, returning the stored
    /// result.
    ///
    /// With a `#[version]` field this is optimistic: the read takes no lock, and if
    /// another writer updated the document in between, the write fails with a conflict
    /// and the whole read-modify-write is retried (with `policy`'s backoff), so `f` may
    /// run several times. Without a version field (and inside a transaction) the read and
    /// the write run atomically and `f` runs once.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`], [`Error::Conflict`] once the retries are spent,
    /// [`Error::InvalidValue`] if `f` changes the id or the `#[version]` field, and the
    /// input errors of [`update`](Self::update).
    pub fn update_with(&self, id: impl IdArg<T::Id>, policy: RetryPolicy, mut f: impl FnMut(&mut T)) -> Result<T> {
        let span = trace::op("update_with", Some(self.name()));
        let key = id_value::<T>(&self.slot.get(), &id)?;
        let doc = read_modify_write(self.runner(), &self.slot, &key, &policy, |doc| {
            f(doc);
            true
        })?
        .ok_or_else(|| Error::invalid_query(self.name(), "update_with declined to write"))?;
        span.rows(1);
        Ok(doc)
    }

    /// [`update_with`](Self::update_with) whose `f` may decline the write by returning
    /// `false` after looking at the changed document; returns `None` then, with nothing
    /// written.
    #[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
    pub(crate) fn update_with_declinable(
        &self,
        id: impl IdArg<T::Id>,
        policy: RetryPolicy,
        f: impl FnMut(&mut T) -> bool,
    ) -> Result<Option<T>> {
        let key = id_value::<T>(&self.slot.get(), &id)?;
        read_modify_write(self.runner(), &self.slot, &key, &policy, f)
    }

    /// Like [`update_with`](Self::update_with) with the default retry policy, but writes
    /// only if `predicate` holds for the current document; returns `None` (and writes
    /// nothing) if it does not.
    ///
    /// # Errors
    ///
    /// As [`update_with`](Self::update_with).
    pub fn conditional_update(
        &self,
        id: impl IdArg<T::Id>,
        predicate: impl Fn(&T) -> bool,
        mut f: impl FnMut(&mut T),
    ) -> Result<Option<T>> {
        let span = trace::op("conditional_update", Some(self.name()));
        let key = id_value::<T>(&self.slot.get(), &id)?;
        let doc = read_modify_write(self.runner(), &self.slot, &key, &RetryPolicy::default(), |doc| {
            if !predicate(doc) {
                return false;
            }
            f(doc);
            true
        });
        span.rows_of(doc, |doc| u64::from(doc.is_some()))
    }

    /// Atomically sets `field` to `new` if it currently equals `expected`. Returns whether
    /// it swapped and the field's value afterwards. Bumps the `#[version]` on a swap.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidQuery`] on the id or version field; the input
    /// errors of [`update`](Self::update) for the changed document.
    pub fn compare_and_swap<V>(
        &self,
        id: impl IdArg<T::Id>,
        field: Field<T, V>,
        expected: impl Into<V>,
        new: impl Into<V>,
    ) -> Result<CasResult<V>>
    where
        V: serde::Serialize + DeserializeOwned,
    {
        let name = self.name();
        let span = trace::op("compare_and_swap", Some(name));
        let key = id_value::<T>(&self.slot.get(), &id)?;
        let (expected, new) = (json_of(name, &expected.into())?, json_of(name, &new.into())?);
        let current = patch_field::<T>(self.runner(), &self.slot, &key, field.index(), |_, current| {
            Ok((*current == expected).then(|| new.clone()))
        })?;
        let swapped = current.1;
        span.rows(u64::from(swapped));
        let current =
            serde_json::from_value(current.0).map_err(|e| Error::serialization(name, Some(id_text(&key)), e))?;
        Ok(CasResult { swapped, current })
    }

    /// Atomically adds `delta` to a numeric `field` and returns the new value. Bumps the
    /// `#[version]`.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`]; [`Error::InvalidValue`] if the field is missing, not a number
    /// or the sum overflows; [`Error::InvalidQuery`] on the id or version field.
    pub fn increment<N: Numeric>(&self, id: impl IdArg<T::Id>, field: Field<T, N>, delta: N) -> Result<N> {
        let span = trace::op("increment", Some(self.name()));
        let key = id_value::<T>(&self.slot.get(), &id)?;
        let (value, _) = patch_field::<T>(self.runner(), &self.slot, &key, field.index(), |meta, current| {
            let name = meta.field_name(field.index());
            let n: N = serde_json::from_value(current.clone())
                .map_err(|e| Error::invalid_value(meta.collection, name, format!("cannot increment {current}: {e}")))?;
            let sum = n.checked_add(delta).ok_or_else(|| {
                Error::invalid_value(meta.collection, name, "the increment overflows the field's type")
            })?;
            Ok(Some(json_of(meta.collection, &sum)?))
        })?;
        span.rows(1);
        serde_json::from_value(value).map_err(|e| Error::serialization(self.name(), None, e))
    }
}

/// The read-modify-write behind `update_with` and `conditional_update`. `f` edits the document
/// and says whether to write it; `Ok(None)` when it declined.
fn read_modify_write<T: Document>(
    runner: Runner<'_>,
    slot: &MetaSlot,
    key: &Value,
    policy: &RetryPolicy,
    mut f: impl FnMut(&mut T) -> bool,
) -> Result<Option<T>> {
    let not_found =
        |meta: &CollectionMeta| Error::NotFound { collection: meta.collection.to_owned(), id: id_text(key) };
    let mut modify = |meta: &CollectionMeta, mut doc: T| -> Result<Option<(T, Encoded)>> {
        let version = doc.version();
        if !f(&mut doc) {
            return Ok(None);
        }
        let enc = encode(meta, &doc)?;
        if enc.params[0] != *key {
            return Err(Error::invalid_value(meta.collection, id_field(meta), "the update must not change the id"));
        }
        if doc.version() != version {
            let field = meta.schema.version_field().map_or("version", |f| f.name());
            return Err(Error::invalid_value(
                meta.collection,
                field,
                "the update must not change the #[version] field: db4 checks and bumps it",
            ));
        }
        Ok(Some((doc, enc)))
    };
    let finish = |mut doc: T, version: Option<u64>| {
        if let Some(v) = version {
            doc.set_version(v);
        }
        doc
    };
    if !slot.get().versioned || runner.in_transaction() {
        return runner.write_meta(slot, Access::Atomic, |w, meta| {
            w.ensure_hot(meta, key)?;
            let doc = select_one::<T>(w.conn, meta, key)?.ok_or_else(|| not_found(meta))?;
            let Some((doc, enc)) = modify(meta, doc)? else { return Ok(None) };
            let version = update_encoded(w, meta, &enc)?;
            Ok(Some(finish(doc, version)))
        });
    }
    with_optimistic_lock(policy, || {
        let cold = runner.db().cold();
        let doc = runner.read_meta(slot, |conn, meta| match select_one::<T>(conn, meta, key)? {
            None => crate::tier::cold::get(cold, conn, meta, key, &|| select_one(conn, meta, key)),
            hit => Ok(hit),
        })?;
        let meta = slot.get();
        let doc = doc.ok_or_else(|| not_found(&meta))?;
        let Some((doc, enc)) = modify(&meta, doc)? else { return Ok(None) };
        let version = runner.write_meta(slot, Access::Write, |w, meta| update_encoded(w, meta, &enc))?;
        Ok(Some(finish(doc, version)))
    })
}

/// Atomically reads the document, hands the JSON value of field `field` to `decide`, and if
/// it returns a new value, writes the document with that value (re-validated as `T`, index
/// columns and version updated). Returns the field's value afterwards and whether it changed.
fn patch_field<T: Document>(
    runner: Runner<'_>,
    slot: &MetaSlot,
    key: &Value,
    field: usize,
    decide: impl FnOnce(&CollectionMeta, &serde_json::Value) -> Result<Option<serde_json::Value>>,
) -> Result<(serde_json::Value, bool)> {
    let schema = slot.schema();
    let def = schema
        .fields()
        .get(field)
        .ok_or_else(|| Error::invalid_query(schema.collection(), format!("field #{field} does not belong here")))?;
    if def.is_id() || def.is_version() {
        return Err(Error::invalid_query(
            schema.collection(),
            format!("field `{}`: the id and the version cannot be changed this way", def.name()),
        ));
    }
    runner.write_meta(slot, Access::Atomic, |w, meta| {
        w.ensure_hot(meta, key)?;
        let mut raw = None;
        w.conn.query(&meta.sql.select_one, std::slice::from_ref(key), &mut |row| {
            let ValueRef::Text(json) = row.get(0)? else { return Err(corrupt(meta, "document", key)) };
            let version = if meta.versioned { Some(stored_version_value(meta, row.get(1)?, key)?) } else { None };
            let doc: serde_json::Value =
                serde_json::from_str(json).map_err(|e| Error::serialization(meta.collection, Some(id_text(key)), e))?;
            raw = Some((doc, version));
            Ok(())
        })?;
        let (mut doc, version) =
            raw.ok_or_else(|| Error::NotFound { collection: meta.collection.to_owned(), id: id_text(key) })?;
        let serde_json::Value::Object(map) = &mut doc else { return Err(corrupt(meta, "document", key)) };
        let current = map.get(def.key()).cloned().unwrap_or(serde_json::Value::Null);
        let Some(new) = decide(meta, &current)? else { return Ok((current, false)) };
        map.insert(def.key().to_owned(), new.clone());
        let mut typed: T = decode_value(meta, doc, version.map(|v| v as i64)).map_err(|e| with_id(e, key))?;
        if let Some(v) = version {
            typed.set_version(v);
        }
        let enc = encode(meta, &typed)?;
        update_encoded(w, meta, &enc)?;
        Ok((new, true))
    })
}

fn json_of<V: serde::Serialize>(collection: &str, value: &V) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::serialization(collection, None, e))
}
