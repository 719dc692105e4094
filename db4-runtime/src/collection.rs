//! Typed CRUD and optimistic locking over a backend, outside or inside a transaction.

use crate::backend::{Access, Connection, Row, run};
use crate::change::{Change, ChangeKind};
use crate::db::Db;
use crate::document::{Document, DocumentId, IdArg};
use crate::error::{Error, Result};
use crate::field::Field;
use crate::lock::{CasResult, Numeric, RetryPolicy, with_optimistic_lock};
use crate::meta::CollectionMeta;
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

impl<T: Document> Collection<T> {
    pub(crate) fn new(db: Db, meta: Arc<CollectionMeta>) -> Self {
        Self { db, meta, _marker: PhantomData }
    }

    fn exec(&self) -> Exec<'_> {
        Exec::Db(&self.db)
    }
}

/// The documents of type `T` inside a [`Transaction`], from [`Transaction::collection`]: the
/// same operations as [`Collection`], seeing the transaction's own writes.
pub struct TxCollection<'tx, T> {
    tx: &'tx Transaction<'tx>,
    meta: Arc<CollectionMeta>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TxCollection<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxCollection").field("collection", &self.meta.collection).finish()
    }
}

impl<'tx, T: Document> TxCollection<'tx, T> {
    pub(crate) fn new(tx: &'tx Transaction<'tx>, meta: Arc<CollectionMeta>) -> Self {
        Self { tx, meta, _marker: PhantomData }
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
            self.meta.collection
        }

        /// Stores a new document.
        ///
        /// # Errors
        ///
        /// [`Error::AlreadyExists`] if the id is taken, [`Error::TooLarge`] above the size
        /// limit, [`Error::InvalidValue`] for an empty id or a non-finite indexed float,
        /// [`Error::Serialization`] if the document does not serialize. Nothing is written
        /// then.
        pub fn insert(&self, doc: &T) -> Result<()> {
            insert(self.exec(), &self.meta, doc)
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
            write_many(self.exec(), &self.meta, docs, insert_encoded)
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
            write_many(self.exec(), &self.meta, docs, upsert_encoded)
        }

        /// Reads the document with this id.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidValue`] for an id that cannot exist (empty),
        /// [`Error::Serialization`] if the stored document no longer deserializes into `T`.
        pub fn get(&self, id: impl IdArg<T::Id>) -> Result<Option<T>> {
            let key = id_value::<T>(&self.meta, &id)?;
            self.exec().read(|conn| select_one(conn, &self.meta, &key))
        }

        /// Reads many documents at once. The result is aligned with `ids`: `None` where no
        /// document has that id.
        ///
        /// # Errors
        ///
        /// As [`get`](Self::get).
        pub fn get_many<I: IdArg<T::Id>>(&self, ids: impl IntoIterator<Item = I>) -> Result<Vec<Option<T>>> {
            get_many(self.exec(), &self.meta, ids)
        }

        /// Replaces a stored document.
        ///
        /// With a `#[version]` field, the stored version must equal `doc`'s; the stored
        /// version then becomes one more (read the document again, or add one to your copy,
        /// before the next update).
        ///
        /// # Errors
        ///
        /// [`Error::NotFound`] if no document has this id, [`Error::Conflict`] if the version
        /// is stale, and the input errors of [`insert`](Self::insert). Nothing is written
        /// then.
        pub fn update(&self, doc: &T) -> Result<()> {
            let enc = encode(&self.meta, doc)?;
            self.exec().write(Access::Write, |ctx| update_encoded(ctx, &self.meta, &enc))
        }

        /// Inserts the document, or replaces the stored one with the same id (checking and
        /// bumping the version as [`update`](Self::update) does when `T` has a `#[version]`).
        ///
        /// # Errors
        ///
        /// [`Error::Conflict`] on a stale version, and the input errors of
        /// [`insert`](Self::insert).
        pub fn upsert(&self, doc: &T) -> Result<()> {
            let enc = encode(&self.meta, doc)?;
            let access = if self.meta.versioned { Access::Atomic } else { Access::Write };
            self.exec().write(access, |ctx| upsert_encoded(ctx, &self.meta, &enc))
        }

        /// Deletes the document with this id; returns whether there was one.
        ///
        /// # Errors
        ///
        /// [`Error::InvalidValue`] for an id that cannot exist, or a backend error.
        pub fn delete(&self, id: impl IdArg<T::Id>) -> Result<bool> {
            let key = id_value::<T>(&self.meta, &id)?;
            self.exec().write(Access::Write, |ctx| {
                let n = ctx.tracked(&self.meta, &[&key], ChangeKind::Delete, || {
                    ctx.conn.execute(&self.meta.sql.delete, std::slice::from_ref(&key))
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
            self.exec().read(|conn| count(conn, &self.meta.sql.count, &[]))
        }

        /// Starts a query over the collection.
        pub fn query(&self) -> Query<'_, T> {
            Query::new(self.exec(), &self.meta)
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
        /// [`Error::InvalidValue`] if `f` changes the id, and the input errors of
        /// [`update`](Self::update).
        pub fn update_with(&self, id: impl IdArg<T::Id>, policy: RetryPolicy, mut f: impl FnMut(&mut T)) -> Result<T> {
            let key = id_value::<T>(&self.meta, &id)?;
            read_modify_write(self.exec(), &self.meta, &key, &policy, |doc| {
                f(doc);
                true
            })
            .and_then(|doc| {
                doc.ok_or_else(|| Error::invalid_query(self.meta.collection, "update_with declined to write"))
            })
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
            let key = id_value::<T>(&self.meta, &id)?;
            read_modify_write(self.exec(), &self.meta, &key, &RetryPolicy::default(), |doc| {
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
            let key = id_value::<T>(&self.meta, &id)?;
            let (expected, new) = (json_of(&self.meta, &expected.into())?, json_of(&self.meta, &new.into())?);
            let current = patch_field::<T>(self.exec(), &self.meta, &key, field.index(), |current| {
                Ok((*current == expected).then(|| new.clone()))
            })?;
            let swapped = current.1;
            let current = serde_json::from_value(current.0)
                .map_err(|e| Error::serialization(self.meta.collection, Some(id_text(&key)), e))?;
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
            let key = id_value::<T>(&self.meta, &id)?;
            let meta = &self.meta;
            let name = meta.field_name(field.index());
            let (value, _) = patch_field::<T>(self.exec(), meta, &key, field.index(), |current| {
                let n: N = serde_json::from_value(current.clone()).map_err(|e| {
                    Error::invalid_value(meta.collection, name, format!("cannot increment {current}: {e}"))
                })?;
                let sum = n.checked_add(delta).ok_or_else(|| {
                    Error::invalid_value(meta.collection, name, "the increment overflows the field's type")
                })?;
                Ok(Some(json_of(meta, &sum)?))
            })?;
            serde_json::from_value(value).map_err(|e| Error::serialization(meta.collection, None, e))
        }
    };
}

impl<T: Document> Collection<T> {
    collection_methods!();
}

impl<T: Document> TxCollection<'_, T> {
    collection_methods!();
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

/// Serializes and checks a document: everything that can fail does so before any write.
pub(crate) fn encode<T: Document>(meta: &CollectionMeta, doc: &T) -> Result<Encoded> {
    let id_key = doc.id().to_value().map_err(|e| Error::invalid_value(meta.collection, id_field(meta), e.0))?;
    // The id as text is only needed for an error message: built then, not on every write.
    let id = || doc.id().to_display();
    let json = crate::json::to_json(doc).map_err(|e| match e {
        crate::json::JsonError::Serde(e) => Error::serialization(meta.collection, Some(id()), e),
        crate::json::JsonError::NonFinite(path) => Error::invalid_value(
            meta.collection,
            path.trim_start_matches('.'),
            format!("document {}: NaN and infinite floats cannot be stored (JSON has no such numbers)", id()),
        ),
    })?;
    if json.len() > meta.max_document_bytes {
        return Err(Error::TooLarge {
            collection: meta.collection.to_owned(),
            id: id(),
            size: json.len(),
            limit: meta.max_document_bytes,
        });
    }
    let mut params = Vec::with_capacity(3);
    params.push(id_key);
    params.push(Value::Text(json));
    let version = doc.version();
    if meta.versioned {
        let v = version.unwrap_or(0);
        // The stored counter is an SQLite integer and an update adds one to it, which the
        // field's own type must also hold.
        if v >= i64::MAX as u64 || !T::version_fits(v + 1) {
            let field = meta.schema.version_field().map_or("version", |f| f.name());
            return Err(Error::invalid_value(meta.collection, field, format!("version {v} is too large")));
        }
        params.push(Value::Integer(v as i64));
    }
    Ok(Encoded { version, params })
}

fn insert<T: Document>(exec: Exec<'_>, meta: &Arc<CollectionMeta>, doc: &T) -> Result<()> {
    let enc = encode(meta, doc)?;
    exec.write(Access::Write, |ctx| insert_encoded(ctx, meta, &enc))
}

fn write_many<'d, T: Document + 'd>(
    exec: Exec<'_>,
    meta: &Arc<CollectionMeta>,
    docs: impl IntoIterator<Item = &'d T>,
    write: fn(Ctx<'_>, &Arc<CollectionMeta>, &Encoded) -> Result<()>,
) -> Result<()> {
    // Encoded one at a time inside the transaction (hot in cache, no batch to build and free);
    // a document that fails to encode rolls back the ones already written.
    exec.write(Access::Atomic, |ctx| docs.into_iter().try_for_each(|d| write(ctx, meta, &encode(meta, d)?)))
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
    if !meta.versioned {
        return ctx
            .tracked(meta, &[&enc.params[0]], ChangeKind::Upsert, || ctx.conn.execute(&meta.sql.upsert, &enc.params))
            .map(drop);
    }
    match stored_version(ctx.conn, meta, &enc.params[0])? {
        None => insert_encoded(ctx, meta, enc),
        Some(_) => update_encoded(ctx, meta, enc),
    }
}

pub(crate) fn update_encoded(ctx: Ctx<'_>, meta: &Arc<CollectionMeta>, enc: &Encoded) -> Result<()> {
    if ctx.tracked(meta, &[&enc.params[0]], ChangeKind::Update, || ctx.conn.execute(&meta.sql.update, &enc.params))? > 0
    {
        return Ok(());
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

fn select_one<T: Document>(conn: &dyn Connection, meta: &CollectionMeta, key: &Value) -> Result<Option<T>> {
    let mut out = None;
    conn.query(&meta.sql.select_one, std::slice::from_ref(key), &mut |row| {
        out = Some(decode::<T>(meta, row, 0).map_err(|e| with_id(e, key))?);
        Ok(())
    })?;
    Ok(out)
}

/// A stored id as the text error messages show.
fn id_text(id: &Value) -> String {
    match id {
        Value::Text(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Names the document in a (de)serialization error that lacks its id.
pub(crate) fn with_id(e: Error, id: &Value) -> Error {
    match e {
        Error::Serialization { collection, id: None, source } => {
            Error::Serialization { collection, id: Some(id_text(id)), source }
        }
        other => other,
    }
}

fn get_many<T: Document, I: IdArg<T::Id>>(
    exec: Exec<'_>,
    meta: &CollectionMeta,
    ids: impl IntoIterator<Item = I>,
) -> Result<Vec<Option<T>>> {
    let keys = ids.into_iter().map(|id| id_value::<T>(meta, &id)).collect::<Result<Vec<_>>>()?;
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
    exec.read(|conn| {
        conn.query(&meta.sql.select_many, &[Value::Text(json.to_string())], &mut |row| {
            let key = IdKey::from_ref(row.get(0)?);
            // A duplicated id in the request gets its own decoded copy at each position.
            for &pos in positions.get(&key).map_or(&[][..], Vec::as_slice) {
                out[pos] = Some(decode::<T>(meta, row, 1).map_err(|e| with_id(e, &keys[pos]))?);
            }
            Ok(())
        })
    })?;
    Ok(out)
}

/// The read-modify-write behind `update_with` and `conditional_update`. `f` edits the document
/// and says whether to write it; `Ok(None)` when it declined.
fn read_modify_write<T: Document>(
    exec: Exec<'_>,
    meta: &Arc<CollectionMeta>,
    key: &Value,
    policy: &RetryPolicy,
    mut f: impl FnMut(&mut T) -> bool,
) -> Result<Option<T>> {
    let not_found = || Error::NotFound { collection: meta.collection.to_owned(), id: id_text(key) };
    let mut modify = |mut doc: T| -> Result<Option<(T, Encoded)>> {
        if !f(&mut doc) {
            return Ok(None);
        }
        let enc = encode(meta, &doc)?;
        if enc.params[0] != *key {
            return Err(Error::invalid_value(meta.collection, id_field(meta), "the update must not change the id"));
        }
        Ok(Some((doc, enc)))
    };
    let finish = |(mut doc, enc): (T, Encoded)| {
        if let Some(v) = enc.version {
            doc.set_version(v + 1);
        }
        doc
    };
    if !meta.versioned || exec.in_transaction() {
        return exec.write(Access::Atomic, |ctx| {
            let doc = select_one::<T>(ctx.conn, meta, key)?.ok_or_else(not_found)?;
            let Some((doc, enc)) = modify(doc)? else { return Ok(None) };
            update_encoded(ctx, meta, &enc)?;
            Ok(Some(finish((doc, enc))))
        });
    }
    with_optimistic_lock(policy, || {
        let doc = exec.read(|conn| select_one::<T>(conn, meta, key))?.ok_or_else(not_found)?;
        let Some((doc, enc)) = modify(doc)? else { return Ok(None) };
        exec.write(Access::Write, |ctx| update_encoded(ctx, meta, &enc))?;
        Ok(Some(finish((doc, enc))))
    })
}

/// Atomically reads the document, hands the JSON value of field `field` to `decide`, and if
/// it returns a new value, writes the document with that value (re-validated as `T`, index
/// columns and version updated). Returns the field's value afterwards and whether it changed.
fn patch_field<T: Document>(
    exec: Exec<'_>,
    meta: &Arc<CollectionMeta>,
    key: &Value,
    field: usize,
    decide: impl FnOnce(&serde_json::Value) -> Result<Option<serde_json::Value>>,
) -> Result<(serde_json::Value, bool)> {
    let def = meta
        .schema
        .fields()
        .get(field)
        .ok_or_else(|| Error::invalid_query(meta.collection, format!("field #{field} does not belong here")))?;
    if def.is_id() || def.is_version() {
        return Err(Error::invalid_query(
            meta.collection,
            format!("field `{}`: the id and the version cannot be changed this way", def.name()),
        ));
    }
    exec.write(Access::Atomic, |ctx| {
        let mut raw = None;
        ctx.conn.query(&meta.sql.select_one, std::slice::from_ref(key), &mut |row| {
            let ValueRef::Text(json) = row.get(0)? else { return Err(corrupt(meta, "document")) };
            let version = if meta.versioned { Some(row.get(1)?) } else { None };
            let version = match version {
                None => None,
                Some(ValueRef::Integer(v)) => Some(u64::try_from(v).unwrap_or(0)),
                Some(_) => return Err(corrupt(meta, "version")),
            };
            let doc: serde_json::Value =
                serde_json::from_str(json).map_err(|e| Error::serialization(meta.collection, Some(id_text(key)), e))?;
            raw = Some((doc, version));
            Ok(())
        })?;
        let (mut doc, version) =
            raw.ok_or_else(|| Error::NotFound { collection: meta.collection.to_owned(), id: id_text(key) })?;
        let serde_json::Value::Object(map) = &mut doc else { return Err(corrupt(meta, "document")) };
        let current = map.get(def.key()).cloned().unwrap_or(serde_json::Value::Null);
        let Some(new) = decide(&current)? else { return Ok((current, false)) };
        map.insert(def.key().to_owned(), new.clone());
        let mut typed: T =
            serde_json::from_value(doc).map_err(|e| Error::serialization(meta.collection, Some(id_text(key)), e))?;
        if let Some(v) = version {
            typed.set_version(v);
        }
        let enc = encode(meta, &typed)?;
        update_encoded(ctx, meta, &enc)?;
        Ok((new, true))
    })
}

fn json_of<V: serde::Serialize>(meta: &CollectionMeta, value: &V) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::serialization(meta.collection, None, e))
}

fn corrupt(meta: &CollectionMeta, what: &str) -> Error {
    Error::Backend(crate::BackendError::new(
        crate::BackendErrorKind::Corrupt,
        format!("{}: stored {what} has an unexpected type", meta.collection),
    ))
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
    let ValueRef::Text(json) = row.get(at)? else { return Err(corrupt(meta, "document")) };
    let mut doc: T = serde_json::from_str(json).map_err(|e| Error::serialization(meta.collection, None, e))?;
    if meta.versioned {
        // The column is authoritative: updates bump it without rewriting the JSON's copy.
        let ValueRef::Integer(v) = row.get(at + 1)? else { return Err(corrupt(meta, "version")) };
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
