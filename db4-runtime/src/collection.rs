//! Typed CRUD and optimistic locking over a backend, outside or inside a transaction.

use crate::backend::{Access, Connection, Row, run};
use crate::change::{Change, ChangeKind};
use crate::db::Db;
use crate::document::{Document, DocumentId, IdArg};
use crate::error::{Error, Result};
use crate::field::Field;
use crate::lock::{CasResult, Numeric, RetryPolicy, with_optimistic_lock};
use crate::meta::{CollectionMeta, MetaSlot, VersionMode};
use crate::query::Query;
use crate::txn::Transaction;
use crate::value::{Value, ValueRef};
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

/// Where a collection's operations run: straight on the database, or inside a transaction.
#[derive(Clone, Copy)]
pub(crate) enum Exec<'a> {
    Db(&'a Db),
    Tx(&'a Transaction<'a>),
}

/// A connection to write through, plus where the writes are recorded: the transaction (if
/// any), which may have to undo them to a savepoint, and the change set handed to
/// [`Db::on_commit`] observers once the writes commit.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'c> {
    pub conn: &'c dyn Connection,
    tx: Option<&'c Transaction<'c>>,
    changes: Option<&'c RefCell<Vec<Change>>>,
}

impl Ctx<'_> {
    /// Runs `write`, a single statement changing the rows `ids` in the way `kind` says, and
    /// returns how many rows it changed. The write is recorded only if it changed something
    /// (a failed statement changes nothing). Before-images for savepoints are read before the
    /// statement runs.
    pub fn tracked(
        &self,
        meta: &Arc<CollectionMeta>,
        ids: &[&Value],
        kind: ChangeKind,
        write: impl FnOnce() -> Result<usize>,
    ) -> Result<usize> {
        let undo = match self.tx {
            Some(tx) => tx.before_images(meta, ids, kind == ChangeKind::Insert)?,
            None => Vec::new(),
        };
        let n = write()?;
        if n > 0 {
            let changes = ids.iter().map(|id| Change { collection: meta.collection, id: (*id).clone(), kind });
            match self.tx {
                Some(tx) => tx.record(undo, changes),
                None => self.record(changes),
            }
        }
        Ok(n)
    }

    /// Records committed-to-be changes of a write outside a transaction.
    pub fn record(&self, changes: impl IntoIterator<Item = Change>) {
        if let Some(sink) = self.changes {
            sink.borrow_mut().extend(changes);
        }
    }
}

impl Exec<'_> {
    pub fn read<R>(self, f: impl FnOnce(&dyn Connection) -> Result<R>) -> Result<R> {
        match self {
            Exec::Db(db) => run(db.backend(), Access::Read, f),
            Exec::Tx(tx) => f(tx.conn()?),
        }
    }

    /// Runs writes: with [`Access::Atomic`] all-or-nothing (inside a transaction: undone to
    /// where they started on error, the transaction going on).
    pub fn write<R>(self, access: Access, f: impl FnOnce(Ctx<'_>) -> Result<R>) -> Result<R> {
        match self {
            Exec::Db(db) => {
                db.check_not_observing()?;
                let changes = RefCell::new(Vec::new());
                let mut ticket = None;
                let out = run(db.backend(), access, |conn| {
                    let out = f(Ctx { conn, tx: None, changes: db.observed().then_some(&changes) })?;
                    ticket = db.commit_ticket();
                    Ok(out)
                })?;
                if let Some(ticket) = ticket {
                    ticket.deliver(&changes.borrow());
                }
                Ok(out)
            }
            Exec::Tx(tx) if access == Access::Atomic => {
                tx.transaction(|tx| f(Ctx { conn: tx.conn()?, tx: Some(tx), changes: None }))
            }
            Exec::Tx(tx) => f(Ctx { conn: tx.conn()?, tx: Some(tx), changes: None }),
        }
    }

    fn in_transaction(self) -> bool {
        matches!(self, Exec::Tx(_))
    }
}

/// The documents of type `T` in a [`Db`], from [`Db::collection`].
///
/// Cheap to clone; each call runs on its own (use [`Db::transaction`] to group calls).
pub struct Collection<T> {
    db: Db,
    slot: Arc<MetaSlot>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Self { db: self.db.clone(), slot: Arc::clone(&self.slot), _marker: PhantomData }
    }
}

impl<T> std::fmt::Debug for Collection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection").field("collection", &self.slot.schema().collection()).finish()
    }
}

impl<T: Document> Collection<T> {
    pub(crate) fn new(db: Db, slot: Arc<MetaSlot>) -> Self {
        Self { db, slot, _marker: PhantomData }
    }

    fn exec(&self) -> Exec<'_> {
        Exec::Db(&self.db)
    }
}

/// The documents of type `T` inside a [`Transaction`], from [`Transaction::collection`]: the
/// same operations as [`Collection`], seeing the transaction's own writes.
pub struct TxCollection<'tx, T> {
    tx: &'tx Transaction<'tx>,
    slot: Arc<MetaSlot>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TxCollection<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxCollection").field("collection", &self.slot.schema().collection()).finish()
    }
}

impl<'tx, T: Document> TxCollection<'tx, T> {
    pub(crate) fn new(tx: &'tx Transaction<'tx>, slot: Arc<MetaSlot>) -> Self {
        Self { tx, slot, _marker: PhantomData }
    }

    fn exec(&self) -> Exec<'_> {
        Exec::Tx(self.tx)
    }
}

/// The operations shared by [`Collection`] and [`TxCollection`], written once.
macro_rules! collection_methods {
    () => {
        /// The collection's name.
        pub fn name(&self) -> &'static str {
            self.slot.schema().collection()
        }

        /// Stores a new document.
        ///
        /// # Errors
        ///
        /// [`Error::AlreadyExists`] if the id is taken, [`Error::TooLarge`] above the size
        /// limit, [`Error::InvalidValue`] for an empty id, a non-finite float or a document
        /// nested deeper than stored documents can be read back,
        /// [`Error::Serialization`] if the document does not serialize. Nothing is written
        /// then.
        pub fn insert(&self, doc: &T) -> Result<()> {
            write(self.exec(), &self.slot, Access::Write, |ctx, meta| insert_encoded(ctx, meta, &encode(meta, doc)?))
        }

        /// Stores many new documents atomically: all of them, or none.
        ///
        /// # Errors
        ///
        /// As [`insert`](Self::insert), for the first document that fails; then none is
        /// stored.
        pub fn insert_many<'d>(&self, docs: impl IntoIterator<Item = &'d T>) -> Result<()>
        where
            T: 'd,
        {
            write_many(self.exec(), &self.slot, docs, insert_encoded)
        }

        /// Inserts or replaces many documents atomically (as [`upsert`](Self::upsert) each):
        /// all of them, or none.
        ///
        /// # Errors
        ///
        /// As [`upsert`](Self::upsert), for the first document that fails; then none is
        /// written.
        pub fn upsert_many<'d>(&self, docs: impl IntoIterator<Item = &'d T>) -> Result<()>
        where
            T: 'd,
        {
            write_many(self.exec(), &self.slot, docs, upsert_encoded)
        }

        /// Reads the document with this id.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidValue`] for an id that cannot exist (empty),
        /// [`Error::Serialization`] if the stored document no longer deserializes into `T`.
        pub fn get(&self, id: impl IdArg<T::Id>) -> Result<Option<T>> {
            let key = id_value::<T>(&self.slot.get(), &id)?;
            read(self.exec(), &self.slot, |conn, meta| select_one(conn, meta, &key))
        }

        /// Reads many documents at once. The result is aligned with `ids`: `None` where no
        /// document has that id.
        ///
        /// # Errors
        ///
        /// As [`get`](Self::get).
        pub fn get_many<I: IdArg<T::Id>>(&self, ids: impl IntoIterator<Item = I>) -> Result<Vec<Option<T>>> {
            get_many(self.exec(), &self.slot, ids)
        }

        /// Replaces a stored document and returns its new version: `Some(v)` for a type with
        /// a `#[version]` field, `None` otherwise.
        ///
        /// With a `#[version]` field, the stored version must equal `doc`'s; the stored
        /// version then becomes one more, which is returned (set it on your copy, or read the
        /// document again, before the next update). Keys the stored document holds that `T`
        /// does not declare (written by another version of the type) are kept.
        ///
        /// # Errors
        ///
        /// [`Error::NotFound`] if no document has this id, [`Error::Conflict`] if the version
        /// is stale, and the input errors of [`insert`](Self::insert). Nothing is written
        /// then.
        ///
        /// # Example
        ///
        /// ```
        /// # use db4_runtime as db4;
        /// # use db4::{Db, Document, FieldDef, Schema, Result};
        /// # #[derive(serde::Serialize, serde::Deserialize)]
        /// # struct Note { id: String, text: String, version: u64 }
        /// # static FIELDS: [FieldDef; 3] = [FieldDef::new("id", "id", "String").id(),
        /// #     FieldDef::new("text", "text", "String"), FieldDef::new("version", "version", "u64").version()];
        /// # static SCHEMA: Schema = Schema::new("notes", "Note", &FIELDS);
        /// # impl Document for Note {
        /// #     type Id = String; type Fields = ();
        /// #     fn schema() -> &'static Schema { &SCHEMA }
        /// #     fn fields() {}
        /// #     fn id(&self) -> &String { &self.id }
        /// #     fn version(&self) -> Option<u64> { Some(self.version) }
        /// #     fn set_version(&mut self, v: u64) { self.version = v }
        /// # }
        /// # fn main() -> Result<()> {
        /// let notes = Db::open_in_memory()?.collection::<Note>()?;
        /// let mut note = Note { id: "n1".into(), text: "draft".into(), version: 0 };
        /// notes.insert(&note)?;
        /// note.text = "final".into();
        /// note.version = notes.update(&note)?.expect("Note has a #[version] field");
        /// note.text = "final, really".into();
        /// assert_eq!(notes.update(&note)?, Some(2)); // no Conflict: the copy is current
        /// # Ok(()) }
        /// ```
        pub fn update(&self, doc: &T) -> Result<Option<u64>> {
            write(self.exec(), &self.slot, Access::Write, |ctx, meta| update_encoded(ctx, meta, &encode(meta, doc)?))
        }

        /// Inserts the document, or replaces the stored one with the same id (checking and
        /// bumping the version as [`update`](Self::update) does when `T` has a `#[version]`).
        ///
        /// # Errors
        ///
        /// [`Error::Conflict`] on a stale version, and the input errors of
        /// [`insert`](Self::insert).
        pub fn upsert(&self, doc: &T) -> Result<()> {
            write(self.exec(), &self.slot, Access::Atomic, |ctx, meta| upsert_encoded(ctx, meta, &encode(meta, doc)?))
        }

        /// Deletes the document with this id; returns whether there was one.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidValue`] for an id that cannot exist, or a backend error.
        pub fn delete(&self, id: impl IdArg<T::Id>) -> Result<bool> {
            let key = id_value::<T>(&self.slot.get(), &id)?;
            write(self.exec(), &self.slot, Access::Write, |ctx, meta| {
                let n = ctx.tracked(meta, &[&key], ChangeKind::Delete, || {
                    ctx.conn.execute(&meta.sql.delete, std::slice::from_ref(&key))
                })?;
                Ok(n > 0)
            })
        }

        /// How many documents the collection holds.
        ///
        /// # Errors
        ///
        /// A backend error.
        pub fn count(&self) -> Result<u64> {
            read(self.exec(), &self.slot, |conn, meta| count(conn, meta.collection, &meta.sql.count, &[]))
        }

        /// Starts a query over the collection.
        pub fn query(&self) -> Query<'_, T> {
            Query::new(self.exec(), &self.slot)
        }

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
            let key = id_value::<T>(&self.slot.get(), &id)?;
            read_modify_write(self.exec(), &self.slot, &key, &policy, |doc| {
                f(doc);
                true
            })
            .and_then(|doc| doc.ok_or_else(|| Error::invalid_query(self.name(), "update_with declined to write")))
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
            let key = id_value::<T>(&self.slot.get(), &id)?;
            read_modify_write(self.exec(), &self.slot, &key, &RetryPolicy::default(), |doc| {
                if !predicate(doc) {
                    return false;
                }
                f(doc);
                true
            })
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
            let key = id_value::<T>(&self.slot.get(), &id)?;
            let (expected, new) = (json_of(name, &expected.into())?, json_of(name, &new.into())?);
            let current = patch_field::<T>(self.exec(), &self.slot, &key, field.index(), |_, current| {
                Ok((*current == expected).then(|| new.clone()))
            })?;
            let swapped = current.1;
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
            let key = id_value::<T>(&self.slot.get(), &id)?;
            let (value, _) = patch_field::<T>(self.exec(), &self.slot, &key, field.index(), |meta, current| {
                let name = meta.field_name(field.index());
                let n: N = serde_json::from_value(current.clone()).map_err(|e| {
                    Error::invalid_value(meta.collection, name, format!("cannot increment {current}: {e}"))
                })?;
                let sum = n.checked_add(delta).ok_or_else(|| {
                    Error::invalid_value(meta.collection, name, "the increment overflows the field's type")
                })?;
                Ok(Some(json_of(meta.collection, &sum)?))
            })?;
            serde_json::from_value(value).map_err(|e| Error::serialization(self.name(), None, e))
        }
    };
}

impl<T: Document> Collection<T> {
    collection_methods!();
}

impl<T: Document> TxCollection<'_, T> {
    collection_methods!();
}

/// Runs a read with the slot's current meta. A read that fails with a backend error may have
/// met a schema another handle changed (a dropped index column is an error, never a string):
/// if the stored schema moved, it runs once more with a fresh meta.
pub(crate) fn read<R>(
    exec: Exec<'_>,
    slot: &MetaSlot,
    mut f: impl FnMut(&dyn Connection, &Arc<CollectionMeta>) -> Result<R>,
) -> Result<R> {
    let meta = slot.get();
    match exec.read(|conn| f(conn, &meta)) {
        Err(e) if e.backend_kind() == Some(crate::BackendErrorKind::Other) => {
            let fresh = exec.read(|conn| slot.fresh(conn))?;
            if fresh.generation == meta.generation {
                return Err(e);
            }
            exec.read(|conn| f(conn, &fresh))
        }
        other => other,
    }
}

/// Runs writes with a meta checked against the stored schema inside the write transaction, so
/// a write never bypasses a schema another handle or process has changed since.
pub(crate) fn write<R>(
    exec: Exec<'_>,
    slot: &MetaSlot,
    access: Access,
    f: impl FnOnce(Ctx<'_>, &Arc<CollectionMeta>) -> Result<R>,
) -> Result<R> {
    exec.write(access, |ctx| {
        let meta = match ctx.tx {
            Some(tx) => tx.fresh_meta(slot)?,
            None => slot.fresh(ctx.conn)?,
        };
        f(ctx, &meta)
    })
}

/// A document ready to write: its parameters in the layout of the collection's statements.
pub(crate) struct Encoded {
    pub version: Option<u64>,
    pub params: Vec<Value>,
}

fn id_value<T: Document>(meta: &CollectionMeta, id: &impl IdArg<T::Id>) -> Result<Value> {
    id.id_value().map_err(|e| Error::invalid_value(meta.collection, id_field(meta), e.0))
}

fn id_field(meta: &CollectionMeta) -> &'static str {
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

fn check_size(meta: &CollectionMeta, size: usize, id: impl Fn() -> String) -> Result<()> {
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

fn write_many<'d, T: Document + 'd>(
    exec: Exec<'_>,
    slot: &MetaSlot,
    docs: impl IntoIterator<Item = &'d T>,
    write_one: fn(Ctx<'_>, &Arc<CollectionMeta>, &Encoded) -> Result<()>,
) -> Result<()> {
    // Encoded one at a time inside the transaction (hot in cache, no batch to build and free);
    // a document that fails to encode rolls back the ones already written.
    write(exec, slot, Access::Atomic, |ctx, meta| {
        docs.into_iter().try_for_each(|d| write_one(ctx, meta, &encode(meta, d)?))
    })
}

pub(crate) fn insert_encoded(ctx: Ctx<'_>, meta: &Arc<CollectionMeta>, enc: &Encoded) -> Result<()> {
    ctx.tracked(meta, &[&enc.params[0]], ChangeKind::Insert, || match ctx.conn.execute(&meta.sql.insert, &enc.params) {
        Err(e) if e.backend_kind() == Some(crate::BackendErrorKind::Constraint) => {
            Err(Error::AlreadyExists { collection: meta.collection.to_owned(), id: id_text(&enc.params[0]) })
        }
        other => other,
    })
    .map(drop)
}

fn upsert_encoded(ctx: Ctx<'_>, meta: &Arc<CollectionMeta>, enc: &Encoded) -> Result<()> {
    if !meta.versioned && meta.foreign_keys.is_empty() {
        return ctx
            .tracked(meta, &[&enc.params[0]], ChangeKind::Upsert, || ctx.conn.execute(&meta.sql.upsert, &enc.params))
            .map(drop);
    }
    let exists = if meta.versioned {
        stored_version(ctx.conn, meta, &enc.params[0])?.is_some()
    } else {
        stored_doc(ctx.conn, meta, &enc.params[0])?.is_some()
    };
    if exists { update_encoded(ctx, meta, enc).map(drop) } else { insert_encoded(ctx, meta, enc) }
}

/// Replaces a stored document; returns the new version in a versioned collection.
pub(crate) fn update_encoded(ctx: Ctx<'_>, meta: &Arc<CollectionMeta>, enc: &Encoded) -> Result<Option<u64>> {
    let carried = carry_foreign_keys(ctx.conn, meta, enc)?;
    let enc = carried.as_ref().unwrap_or(enc);
    if ctx.tracked(meta, &[&enc.params[0]], ChangeKind::Update, || ctx.conn.execute(&meta.sql.update, &enc.params))? > 0
    {
        return Ok(meta.versioned.then(|| enc.version.unwrap_or(0) + 1));
    }
    let conn = ctx.conn;
    let not_found = || Error::NotFound { collection: meta.collection.to_owned(), id: id_text(&enc.params[0]) };
    if !meta.versioned {
        return Err(not_found());
    }
    match stored_version(conn, meta, &enc.params[0])? {
        None => Err(not_found()),
        Some(actual) => Err(Error::Conflict {
            collection: meta.collection.to_owned(),
            id: id_text(&enc.params[0]),
            expected: enc.version.unwrap_or(0),
            actual,
        }),
    }
}

/// The document to write instead of `enc` when the stored one holds keys the running type
/// does not declare (written by another version of the type): those keys are kept. `None`
/// when there is nothing to carry over, which is the case (without any read) unless some type
/// that opened the collection declared keys this one lacks.
fn carry_foreign_keys(conn: &dyn Connection, meta: &CollectionMeta, enc: &Encoded) -> Result<Option<Encoded>> {
    if meta.foreign_keys.is_empty() {
        return Ok(None);
    }
    let id = &enc.params[0];
    let Some(stored) = stored_doc(conn, meta, id)? else { return Ok(None) };
    let Ok(serde_json::Value::Object(mut stored)) = serde_json::from_str::<serde_json::Value>(&stored) else {
        return Err(corrupt(meta, "document", id));
    };
    let carried: Vec<(String, serde_json::Value)> =
        meta.foreign_keys.iter().filter_map(|k| stored.remove(k).map(|v| (k.clone(), v))).collect();
    if carried.is_empty() {
        return Ok(None);
    }
    let Value::Text(json) = &enc.params[1] else { return Ok(None) };
    let Ok(serde_json::Value::Object(mut new)) = serde_json::from_str::<serde_json::Value>(json) else {
        // Not an object (a type with a custom Serialize): there is no key to keep.
        return Ok(None);
    };
    for (k, v) in carried {
        new.entry(k).or_insert(v);
    }
    let json = serde_json::Value::Object(new).to_string();
    check_size(meta, json.len(), || id_text(id))?;
    let mut params = enc.params.clone();
    params[1] = Value::Text(json);
    Ok(Some(Encoded { version: enc.version, params }))
}

fn stored_doc(conn: &dyn Connection, meta: &CollectionMeta, id: &Value) -> Result<Option<String>> {
    let mut out = None;
    conn.query(&meta.sql.select_doc, std::slice::from_ref(id), &mut |row| {
        let ValueRef::Text(json) = row.get(0)? else { return Err(corrupt(meta, "document", id)) };
        out = Some(json.to_owned());
        Ok(())
    })?;
    Ok(out)
}

fn stored_version(conn: &dyn Connection, meta: &CollectionMeta, id: &Value) -> Result<Option<u64>> {
    let mut out = None;
    conn.query(&meta.sql.select_version, std::slice::from_ref(id), &mut |row| {
        out = Some(stored_version_value(meta, row.get(0)?, id)?);
        Ok(())
    })?;
    Ok(out)
}

/// A stored version, read strictly: anything but a non-negative integer is corruption.
fn stored_version_value(meta: &CollectionMeta, v: ValueRef<'_>, id: &Value) -> Result<u64> {
    match v {
        ValueRef::Integer(v) => u64::try_from(v).map_err(|_| corrupt(meta, "version", id)),
        _ => Err(corrupt(meta, "version", id)),
    }
}

fn select_one<T: Document>(conn: &dyn Connection, meta: &CollectionMeta, key: &Value) -> Result<Option<T>> {
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

fn get_many<T: Document, I: IdArg<T::Id>>(
    exec: Exec<'_>,
    slot: &MetaSlot,
    ids: impl IntoIterator<Item = I>,
) -> Result<Vec<Option<T>>> {
    let keys = ids.into_iter().map(|id| id_value::<T>(&slot.get(), &id)).collect::<Result<Vec<_>>>()?;
    let json = serde_json::Value::Array(
        keys.iter()
            .map(|k| match k {
                Value::Integer(i) => serde_json::Value::from(*i),
                Value::Text(s) => serde_json::Value::from(s.as_str()),
                _ => serde_json::Value::Null,
            })
            .collect(),
    )
    .to_string();
    let mut positions: HashMap<IdKey, Vec<usize>> = HashMap::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        positions.entry(IdKey::from_ref(k.as_ref())).or_default().push(i);
    }
    read(exec, slot, |conn, meta| {
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(keys.len()).collect();
        conn.query(&meta.sql.select_many, &[Value::Text(json.clone())], &mut |row| {
            let key = IdKey::from_ref(row.get(0)?);
            if key == IdKey::Other {
                return Err(corrupt(meta, "id", &row.get(0)?.to_owned()));
            }
            // A duplicated id in the request gets its own decoded copy at each position.
            for &pos in positions.get(&key).map_or(&[][..], Vec::as_slice) {
                out[pos] = Some(decode::<T>(meta, row, 1).map_err(|e| with_id(e, &keys[pos]))?);
            }
            Ok(())
        })?;
        Ok(out)
    })
}

/// The read-modify-write behind `update_with` and `conditional_update`. `f` edits the document
/// and says whether to write it; `Ok(None)` when it declined.
fn read_modify_write<T: Document>(
    exec: Exec<'_>,
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
    if !slot.get().versioned || exec.in_transaction() {
        return write(exec, slot, Access::Atomic, |ctx, meta| {
            let doc = select_one::<T>(ctx.conn, meta, key)?.ok_or_else(|| not_found(meta))?;
            let Some((doc, enc)) = modify(meta, doc)? else { return Ok(None) };
            let version = update_encoded(ctx, meta, &enc)?;
            Ok(Some(finish(doc, version)))
        });
    }
    with_optimistic_lock(policy, || {
        let doc = read(exec, slot, |conn, meta| select_one::<T>(conn, meta, key))?;
        let meta = slot.get();
        let doc = doc.ok_or_else(|| not_found(&meta))?;
        let Some((doc, enc)) = modify(&meta, doc)? else { return Ok(None) };
        let version = write(exec, slot, Access::Write, |ctx, meta| update_encoded(ctx, meta, &enc))?;
        Ok(Some(finish(doc, version)))
    })
}

/// Atomically reads the document, hands the JSON value of field `field` to `decide`, and if
/// it returns a new value, writes the document with that value (re-validated as `T`, index
/// columns and version updated). Returns the field's value afterwards and whether it changed.
fn patch_field<T: Document>(
    exec: Exec<'_>,
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
    write(exec, slot, Access::Atomic, |ctx, meta| {
        let mut raw = None;
        ctx.conn.query(&meta.sql.select_one, std::slice::from_ref(key), &mut |row| {
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
        update_encoded(ctx, meta, &enc)?;
        Ok((new, true))
    })
}

fn json_of<V: serde::Serialize>(collection: &str, value: &V) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::serialization(collection, None, e))
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
    let version = if meta.versioned {
        match row.get(at + 1)? {
            ValueRef::Integer(v) if v >= 0 => Some(v),
            _ => return Err(corrupt(meta, "version", &Value::Null)),
        }
    } else {
        None
    };
    decode_json(meta, json, version)
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
        doc.set_version(u64::try_from(v).unwrap_or(0));
    }
    Ok(doc)
}

/// [`decode_json`] for a parsed document.
fn decode_value<T: Document>(meta: &CollectionMeta, mut doc: serde_json::Value, version: Option<i64>) -> Result<T> {
    if let (Some(v), Some(f), serde_json::Value::Object(map)) = (version, meta.schema.version_field(), &mut doc) {
        map.entry(f.key().to_owned()).or_insert(v.into());
    }
    serde_json::from_value(doc).map_err(|e| Error::serialization(meta.collection, None, e))
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
