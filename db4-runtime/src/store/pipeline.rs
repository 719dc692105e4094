//! The one write pipeline: every change to a stored document goes through [`Writer::apply`].
//!
//! Collections (`insert`, `update`, `upsert`, `delete`, the `_many` forms and the atomic
//! operations), a query's `delete`, a migration's rewrite and a
//! [`BatchStore`](crate::BatchStore) all write through a [`Writer`], inside the backend
//! transaction of the work they belong to. For each write it
//!
//! 1. reads the row's before-image, **only** if a hook needs it: the undo log while a savepoint
//!    is active, or change observers when [`DbOptions::before_images`](crate::DbOptions) asks
//!    for them (an insert needs none: the row does not exist);
//! 2. runs the statement;
//! 3. if the statement changed a row, records it in the [`WriteLog`] of the unit of work: an
//!    undo entry (savepoints), a [`Change`] (commit observers; the change log hooks here) and
//!    its count in the unit's [`Tally`] ([`Db::stats`](crate::Db::stats)).
//!
//! Nothing is recorded for a failed statement or one that changed nothing, and nothing is read
//! or copied that no hook asks for: outside a savepoint, without observers and with the change
//! log off, a write costs its statement alone.

use crate::backend::Connection;
use crate::error::{BackendErrorKind, Error, Result};
use crate::sql::{MAX_VALUE_BYTES, Statement, json_lists};
use crate::store::change::{Change, ChangeKind};
use crate::store::codec::{Encoded, id_text};
use crate::store::meta::{CollectionMeta, VersionMode};
use crate::store::tally::Tally;
use crate::tier::cold::ColdTier;
use crate::value::{Value, ValueRef};
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

/// What the writes of one unit of work (a single operation, or a whole transaction) leave
/// behind for the hooks: undo entries for savepoints, changes for observers and the count of
/// what was written.
#[derive(Default)]
pub(crate) struct WriteLog {
    undo: Vec<Undo>,
    changes: Vec<Change>,
    tally: Tally,
    /// Writes keep before-images to be undone (a savepoint is active).
    keep_undo: bool,
    /// Changes are collected (someone observes commits).
    collect: bool,
    /// Collected changes carry before-images.
    before_images: bool,
    /// Upserts read whether the row existed, to be recorded as an insert or an update (the
    /// change log records no upserts).
    resolve_upserts: bool,
    /// The documents written, pending in the warm tier (when it is on) until this is dropped.
    warm: Option<crate::tier::warm::Touched>,
}

impl WriteLog {
    /// A log collecting changes if `collect`, with their before-images if `before_images`.
    pub fn new(collect: bool, before_images: bool) -> Self {
        Self { collect, before_images: collect && before_images, ..Self::default() }
    }

    /// Records upserts as inserts or updates, reading whether the row existed.
    pub fn resolve_upserts(mut self, resolve: bool) -> Self {
        self.resolve_upserts = resolve && self.collect;
        self
    }

    /// Marks the documents written pending in `tier` (the database's warm tier, if on) until
    /// the log, or what [`take_warm`](Self::take_warm) hands out, is dropped.
    pub fn warm(mut self, tier: Option<&Arc<crate::tier::warm::WarmTier>>) -> Self {
        self.warm = tier.map(crate::tier::warm::Touched::new);
        self
    }

    /// The warm tier's pending documents, to be released once the unit of work committed
    /// (the log itself may be dropped before the commit).
    pub fn take_warm(&mut self) -> Option<crate::tier::warm::Touched> {
        self.warm.take()
    }

    /// The changes recorded so far, for the change log to give them their LSNs.
    pub fn changes_mut(&mut self) -> &mut [Change] {
        &mut self.changes
    }

    /// Starts or stops keeping undo entries; stopping forgets the ones kept.
    pub fn keep_undo(&mut self, keep: bool) {
        self.keep_undo = keep;
        if !keep {
            self.undo.clear();
        }
    }

    /// The lengths of the undo log and the change set: a savepoint's mark.
    pub fn mark(&self) -> (usize, usize) {
        (self.undo.len(), self.changes.len())
    }

    /// Drops the changes after `mark` and hands back the undo entries after it, oldest first;
    /// the writes they undo are no longer counted.
    pub fn rewind(&mut self, mark: (usize, usize)) -> Vec<Undo> {
        self.changes.truncate(mark.1);
        let undone = self.undo.split_off(mark.0.min(self.undo.len()));
        for entry in &undone {
            if let Undo::Document { meta, kind, .. } = entry {
                self.tally.undo(meta.collection, *kind);
            }
        }
        undone
    }

    /// The changes recorded, in write order, and the count of the writes.
    pub fn into_parts(self) -> (Vec<Change>, Tally) {
        (self.changes, self.tally)
    }

    fn needs_before(&self) -> bool {
        self.keep_undo || self.before_images
    }

    /// Whether changes of `meta`'s collection carry before-images: asked for by the database
    /// ([`DbOptions::before_images`](crate::DbOptions::before_images)) or by the collection
    /// (`#[db4(changes = "full")]`).
    fn images_before(&self, meta: &CollectionMeta) -> bool {
        self.before_images || (self.collect && meta.schema.records_full_changes())
    }
}

/// A write a savepoint may have to undo.
pub(crate) enum Undo {
    /// A document row: deleted, then re-inserted as it was if it existed.
    Document {
        meta: Arc<CollectionMeta>,
        /// What the write did (its count is taken back when it is undone).
        kind: ChangeKind,
        id: Value,
        /// The row in the collection's insert-parameter layout; `None` if it did not exist.
        before: Option<Vec<Value>>,
    },
    /// Statements that put rows of db4's own tables back as they were (a batch store's blobs
    /// and directory), run in order.
    Statements(Vec<(Arc<str>, Vec<Value>)>),
}

/// Puts back what `entries` (oldest first) changed, newest first.
///
/// # Errors
///
/// A backend error; the rows are then partly restored, and the caller must roll back.
pub(crate) fn restore(conn: &dyn Connection, entries: Vec<Undo>) -> Result<()> {
    for entry in entries.into_iter().rev() {
        match entry {
            Undo::Document { meta, id, before, .. } => {
                if let Some(fts) = &meta.fts_sql {
                    conn.execute(&fts.unindex, std::slice::from_ref(&id))?;
                }
                conn.execute(&meta.sql.delete, std::slice::from_ref(&id))?;
                if let Some(row) = before {
                    conn.execute(&meta.sql.insert, &row)?;
                    if let Some(fts) = &meta.fts_sql {
                        conn.execute(&fts.index, &row[..2])?;
                    }
                }
            }
            Undo::Statements(statements) => {
                for (sql, params) in statements {
                    conn.execute(&sql, &params)?;
                }
            }
        }
    }
    Ok(())
}

/// A document write, in the terms the pipeline records it.
pub(crate) enum Op<'a> {
    /// Stores a new document; fails with [`Error::AlreadyExists`] if the id is taken.
    Insert(&'a Encoded),
    /// Replaces a stored document (version-checked in a versioned collection); changes
    /// nothing if none matches.
    Update(&'a Encoded),
    /// Inserts or replaces (a collection without a version field or foreign keys).
    Upsert(&'a Encoded),
    /// Deletes the document with this id.
    Delete(&'a Value),
    /// Deletes the documents with these ids.
    DeleteIds(&'a [Value]),
    /// Deletes what a `DELETE` statement selects; the pipeline adds its `RETURNING` clause.
    /// Not while undo entries are kept ([`Writer::keeps_undo`]): a row would come back only
    /// once deleted, too late to refuse one that could not be restored.
    DeleteWhere(Statement<'a>),
    /// Replaces the stored JSON, keeping the version (a migration).
    Rewrite { id: &'a Value, json: String },
    /// Stores the row exactly as given, version included, replacing any stored one (a
    /// replay of another database's change log): recorded as an insert or an update.
    Put(&'a Encoded),
    /// Removes the rows with these ids from the hot table because compaction moved them to
    /// the cold tier: recorded as [`ChangeKind::Archive`], not as deletes.
    Archive(&'a [Value]),
}

/// A connection to write through, and the log of the unit of work the writes belong to.
#[derive(Clone, Copy)]
pub(crate) struct Writer<'c> {
    pub conn: &'c dyn Connection,
    log: &'c RefCell<WriteLog>,
    /// The database's cold tier: writes to documents there bring them back hot first.
    cold: Option<&'c ColdTier>,
}

impl<'c> Writer<'c> {
    pub fn new(conn: &'c dyn Connection, log: &'c RefCell<WriteLog>) -> Self {
        Self { conn, log, cold: None }
    }

    /// The writer, aware of the database's cold tier (if it has one).
    pub fn with_cold(mut self, cold: Option<&'c ColdTier>) -> Self {
        self.cold = cold;
        self
    }

    /// Brings the document `id` back from the cold tier if a live segment holds it: inserts
    /// its row (and full-text terms) into the hot table as it was, tombstones the cold copy,
    /// and records a [`ChangeKind::Restore`] (undone with the rest on a rollback). Returns
    /// whether it did. Without a cold tier, or for an id no segment may hold, it reads
    /// nothing beyond the segment generation.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] naming a missing or damaged segment; a backend error.
    pub fn ensure_hot(&self, meta: &Arc<CollectionMeta>, id: &Value) -> Result<bool> {
        let Some(cold) = self.cold else { return Ok(false) };
        let Some((segment, doc)) = cold.find(self.conn, meta, id)? else { return Ok(false) };
        let row = crate::tier::cold::row_of(meta, &doc);
        self.conn.execute(&meta.sql.insert, &row)?;
        if let Some(fts) = &meta.fts_sql {
            self.conn.execute(&fts.index, &row[..2])?;
        }
        let undo = crate::tier::cold::tombstone(self.conn, &segment.key, id)?;
        let version = doc.version.and_then(|v| u64::try_from(v).ok()).filter(|_| meta.row_width() > 2);
        self.count(meta, ChangeKind::Restore, 1);
        self.record(meta, ChangeKind::Restore, id, None, Some(Cow::Borrowed(doc.doc.as_str())), version)?;
        self.record_external(Vec::new, || Some(Undo::Statements(vec![undo])));
        Ok(true)
    }

    /// Deletes `id` from the cold tier if a live segment holds it (tombstones the copy,
    /// recorded as a delete); returns whether it did.
    fn delete_cold(&self, meta: &Arc<CollectionMeta>, id: &Value) -> Result<bool> {
        let Some(cold) = self.cold else { return Ok(false) };
        let Some((segment, doc)) = cold.find(self.conn, meta, id)? else { return Ok(false) };
        let undo = crate::tier::cold::tombstone(self.conn, &segment.key, id)?;
        let version = doc.version.and_then(|v| u64::try_from(v).ok()).filter(|_| meta.row_width() > 2);
        self.count(meta, ChangeKind::Delete, 1);
        // No before-image: the undo entry must not put the document back hot.
        self.record(meta, ChangeKind::Delete, id, None, None, version)?;
        self.record_external(Vec::new, || Some(Undo::Statements(vec![undo])));
        Ok(true)
    }

    /// Whether writes to `meta`'s collection read before-images (for the undo log, or for
    /// changes that carry them).
    fn needs_before_of(&self, meta: &CollectionMeta) -> bool {
        let log = self.log.borrow();
        log.needs_before() || log.images_before(meta)
    }

    /// Whether writes keep undo entries (a savepoint is active): a query's `delete` then
    /// selects the ids first (see [`Op::DeleteWhere`]), and a batch store hands its own.
    pub fn keeps_undo(&self) -> bool {
        self.log.borrow().keep_undo
    }

    /// Whether changes are collected.
    pub fn collects(&self) -> bool {
        self.log.borrow().collect
    }

    /// Runs a document write and records it; returns how many rows it changed.
    pub fn apply(&self, meta: &Arc<CollectionMeta>, op: Op<'_>) -> Result<usize> {
        let conn = self.conn;
        // The cold tier first: a write must see a document compacted out of the hot table.
        if self.cold.is_some() {
            match &op {
                Op::Insert(enc) => {
                    if self.in_cold(meta, &enc.params[0])? {
                        return Err(Error::AlreadyExists {
                            collection: meta.collection.to_owned(),
                            id: id_text(&enc.params[0]),
                        });
                    }
                }
                Op::Update(enc) | Op::Upsert(enc) | Op::Put(enc) => {
                    self.ensure_hot(meta, &enc.params[0])?;
                }
                Op::Delete(id) => {
                    if self.delete_cold(meta, id)? {
                        return Ok(1);
                    }
                }
                Op::Rewrite { .. } | Op::DeleteIds(_) | Op::DeleteWhere(_) | Op::Archive(_) => {}
            }
        }
        let (kind, id, after) = match &op {
            Op::Insert(enc) => (ChangeKind::Insert, &enc.params[0], Some(enc)),
            Op::Update(enc) => (ChangeKind::Update, &enc.params[0], Some(enc)),
            Op::Upsert(enc) | Op::Put(enc) => (ChangeKind::Upsert, &enc.params[0], Some(enc)),
            Op::Delete(id) => (ChangeKind::Delete, *id, None),
            Op::Rewrite { id, .. } => (ChangeKind::Update, *id, None),
            Op::DeleteIds(ids) => return self.delete_ids(meta, ids, ChangeKind::Delete),
            Op::Archive(ids) => return self.delete_ids(meta, ids, ChangeKind::Archive),
            Op::DeleteWhere(_) => {
                let Op::DeleteWhere(statement) = op else { unreachable!("matched above") };
                return self.delete_where(meta, statement);
            }
        };
        // 1. The before-image, if a hook needs it (checked before anything is written).
        let before = match kind {
            ChangeKind::Insert => None,
            _ if self.needs_before_of(meta) => Some(self.before_image(meta, id)?),
            ChangeKind::Upsert if self.log.borrow().resolve_upserts => Some(self.before_image(meta, id)?),
            // A rewrite keeps the version, and its change reports it: read it from the row (a
            // versioned collection, changes collected), else the change says `None`.
            _ if matches!(op, Op::Rewrite { .. }) && meta.row_width() > 2 && self.collects() => {
                Some(self.before_image(meta, id)?)
            }
            _ => None,
        };
        // 2. The statement, with the full-text index kept in step: terms are removed while the
        // row still has its rowid, and indexed once it holds the new text.
        let fts = meta.fts_sql.as_ref();
        if let (Some(fts), Op::Delete(_) | Op::Put(_)) = (fts, &op) {
            conn.execute(&fts.unindex, std::slice::from_ref(id))?;
        }
        let mut replaced = false;
        let changed = match &op {
            Op::Insert(enc) => match conn.execute(&meta.sql.insert, &enc.params) {
                Err(e) if e.backend_kind() == Some(BackendErrorKind::Constraint) => {
                    return Err(Error::AlreadyExists { collection: meta.collection.to_owned(), id: id_text(id) });
                }
                other => other?,
            },
            Op::Update(enc) => conn.execute(&meta.sql.update, &enc.params)?,
            Op::Upsert(enc) => conn.execute(&meta.sql.upsert, &enc.params)?,
            Op::Delete(id) => conn.execute(&meta.sql.delete, std::slice::from_ref(*id))?,
            Op::Rewrite { id, json } => conn.execute(&meta.sql.rewrite, &[(*id).clone(), Value::Text(json.clone())])?,
            Op::Put(enc) => {
                replaced = conn.execute(&meta.sql.delete, std::slice::from_ref(id))? > 0;
                conn.execute(&meta.sql.insert, &enc.params)?
            }
            Op::DeleteIds(_) | Op::DeleteWhere(_) | Op::Archive(_) => unreachable!("returned above"),
        };
        if changed == 0 {
            return Ok(0);
        }
        if let Some(fts) = fts {
            match &op {
                Op::Insert(enc) | Op::Upsert(enc) | Op::Put(enc) => {
                    conn.execute(&fts.index, &enc.params[..2])?;
                }
                Op::Update(enc) => {
                    if conn.execute(&fts.unindex_changed, &enc.params[..2])? > 0 {
                        conn.execute(&fts.index, &enc.params[..2])?;
                    }
                }
                Op::Rewrite { id, json } => {
                    let params = [(*id).clone(), Value::Text(json.clone())];
                    if conn.execute(&fts.unindex_changed, &params)? > 0 {
                        conn.execute(&fts.index, &params)?;
                    }
                }
                Op::Delete(_) | Op::DeleteIds(_) | Op::DeleteWhere(_) | Op::Archive(_) => {}
            }
        }
        // 3. The record.
        let kind = match (kind, &before) {
            (ChangeKind::Upsert, _) if matches!(op, Op::Put(_)) => {
                if replaced {
                    ChangeKind::Update
                } else {
                    ChangeKind::Insert
                }
            }
            (ChangeKind::Upsert, Some(None)) => ChangeKind::Insert,
            (ChangeKind::Upsert, Some(Some(_))) => ChangeKind::Update,
            (kind, _) => kind,
        };
        let after = match (&op, after) {
            (Op::Rewrite { json, .. }, _) => Some(Cow::Borrowed(json.as_str())),
            (_, Some(enc)) => match &enc.params[1] {
                Value::Text(json) => Some(Cow::Borrowed(json.as_str())),
                _ => None,
            },
            _ => None,
        };
        let stored = before.as_ref().and_then(|b| b.as_deref());
        let version = match op {
            // A rewrite keeps the version.
            Op::Rewrite { .. } => stored.and_then(|row| stored_version(meta, row)),
            // A put stores the version it was given.
            Op::Put(enc) if meta.row_width() > 2 => match enc.params.get(2) {
                Some(Value::Integer(v)) => u64::try_from(*v).ok(),
                _ => None,
            },
            Op::Put(_) => None,
            _ => new_version(meta, kind, after_version(&op), stored),
        };
        self.count(meta, kind, changed);
        self.touch(meta, std::slice::from_ref(id));
        self.record(meta, kind, id, before.flatten(), after, version)?;
        Ok(changed)
    }

    /// Marks written documents in the warm tier, if it is on (before the unit commits).
    fn touch(&self, meta: &CollectionMeta, ids: &[Value]) {
        if let Some(warm) = &mut self.log.borrow_mut().warm {
            for id in ids {
                warm.touch(meta.collection, id);
            }
        }
    }

    /// Records writes made outside [`apply`](Self::apply): their changes in write order (if
    /// collected; none for a statement that only needs undoing) and what undoes them (if a
    /// savepoint is active).
    pub fn record_external(&self, changes: impl FnOnce() -> Vec<Change>, undo: impl FnOnce() -> Option<Undo>) {
        let mut log = self.log.borrow_mut();
        if log.keep_undo
            && let Some(undo) = undo()
        {
            log.undo.push(undo);
        }
        if log.collect {
            log.changes.extend(changes());
        }
    }

    /// Counts `rows` rows written as `kind`.
    fn count(&self, meta: &CollectionMeta, kind: ChangeKind, rows: usize) {
        self.log.borrow_mut().tally.add(meta.collection, kind, rows as u64);
    }

    fn record(
        &self,
        meta: &Arc<CollectionMeta>,
        kind: ChangeKind,
        id: &Value,
        before: Option<Vec<Value>>,
        after: Option<Cow<'_, str>>,
        version: Option<u64>,
    ) -> Result<()> {
        let mut log = self.log.borrow_mut();
        if log.collect {
            // The version inside a stored document is the one its writer held; the column is
            // the truth, and the images carry it.
            let key = meta.schema.version_field().map(|f| f.key());
            let image = |json: &str, version: Option<u64>| match (key, version) {
                (Some(key), Some(v)) => {
                    crate::json::with_top_level_number(json, key, v).unwrap_or_else(|| json.to_owned())
                }
                _ => json.to_owned(),
            };
            let before_doc = match before.as_ref().and_then(|row| row.get(1)) {
                Some(Value::Text(json)) if log.images_before(meta) => {
                    Some(image(json, before.as_deref().and_then(|row| stored_version(meta, row))))
                }
                _ => None,
            };
            let after = after.map(|json| match key {
                Some(_) => image(&json, version),
                None => json.into_owned(),
            });
            log.changes.push(Change::new(Cow::Borrowed(meta.collection), id.clone(), kind, version, after, before_doc));
        }
        if log.keep_undo {
            log.undo.push(Undo::Document { meta: Arc::clone(meta), kind, id: id.clone(), before });
        }
        Ok(())
    }

    /// The row `id` as it is before a write, made fit for the undo log if one is kept.
    fn before_image(&self, meta: &CollectionMeta, id: &Value) -> Result<Option<Vec<Value>>> {
        let row = select_row(self.conn, meta, id)?;
        if !self.log.borrow().keep_undo {
            return Ok(row);
        }
        row.map(|row| exact_row(meta, id, row)).transpose()
    }

    /// Whether a live cold segment holds `id`.
    fn in_cold(&self, meta: &CollectionMeta, id: &Value) -> Result<bool> {
        match self.cold {
            Some(cold) => Ok(cold.find(self.conn, meta, id)?.is_some()),
            None => Ok(false),
        }
    }

    /// Deletes rows by id, recorded as `kind` (a delete, or a move to the cold tier).
    fn delete_ids(&self, meta: &Arc<CollectionMeta>, ids: &[Value], kind: ChangeKind) -> Result<usize> {
        let mut cold_deleted = 0;
        let hot_ids: Cow<'_, [Value]> = if self.cold.is_some() && kind == ChangeKind::Delete {
            let mut hot = Vec::with_capacity(ids.len());
            for id in ids {
                if self.delete_cold(meta, id)? {
                    cold_deleted += 1;
                } else {
                    hot.push(id.clone());
                }
            }
            Cow::Owned(hot)
        } else {
            Cow::Borrowed(ids)
        };
        let ids = &*hot_ids;
        let befores = if kind == ChangeKind::Delete && self.needs_before_of(meta) {
            ids.iter().map(|id| self.before_image(meta, id)).collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut changed = 0;
        for list in json_lists(ids.iter().map(Value::as_ref), MAX_VALUE_BYTES) {
            if let Some(fts) = &meta.fts_sql {
                self.conn.execute(&fts.unindex_ids, std::slice::from_ref(&list))?;
            }
            changed += self.conn.execute(&meta.sql.delete_ids, &[list])?;
        }
        if changed == 0 {
            return Ok(cold_deleted);
        }
        self.count(meta, kind, changed);
        self.touch(meta, ids);
        let mut befores = befores.into_iter();
        for id in ids {
            match befores.next() {
                // Known not to exist: nothing was deleted there.
                Some(None) => {}
                Some(Some(row)) => {
                    let version = stored_version(meta, &row);
                    self.record(meta, kind, id, Some(row), None, version)?;
                }
                None => self.record(meta, kind, id, None, None, None)?,
            }
        }
        Ok(changed + cold_deleted)
    }

    fn delete_where(&self, meta: &Arc<CollectionMeta>, mut statement: Statement<'_>) -> Result<usize> {
        if self.log.borrow().keep_undo {
            // The rows come back only once deleted, too late to refuse one the undo log could
            // not restore: the caller selects the ids first and deletes them with `DeleteIds`.
            return Err(Error::transaction_state(
                "internal: a DELETE by condition cannot keep undo entries; select the ids first",
            ));
        }
        let whole = self.log.borrow().images_before(meta);
        statement.push(if whole { &meta.sql.returning_row } else { " RETURNING \"_id\"" });
        // The deleted rows' rowids, to remove their terms from the full-text index.
        if meta.fts_sql.is_some() {
            statement.push(", rowid");
        }
        let (text, params) = statement.finish()?;
        let width = if whole { meta.row_width() } else { 1 };
        let mut rows: Vec<Vec<Value>> = Vec::new();
        let mut rowids: Vec<Value> = Vec::new();
        self.conn.query(&text, &params, &mut |row| {
            rows.push((0..width).map(|i| row.get(i).map(ValueRef::to_owned)).collect::<Result<_>>()?);
            if meta.fts_sql.is_some() {
                rowids.push(row.get(width)?.to_owned());
            }
            Ok(())
        })?;
        if let Some(fts) = &meta.fts_sql {
            for list in json_lists(rowids.iter().map(Value::as_ref), MAX_VALUE_BYTES) {
                self.conn.execute(&fts.unindex_rowids, &[list])?;
            }
        }
        let n = rows.len();
        self.count(meta, ChangeKind::Delete, n);
        for mut row in rows {
            let id = row[0].clone();
            self.touch(meta, std::slice::from_ref(&id));
            if whole {
                let version = stored_version(meta, &row);
                self.record(meta, ChangeKind::Delete, &id, Some(std::mem::take(&mut row)), None, version)?;
            } else {
                self.record(meta, ChangeKind::Delete, &id, None, None, None)?;
            }
        }
        Ok(n)
    }
}

/// The version a write's parameters set, if they say.
fn after_version(op: &Op<'_>) -> Option<u64> {
    match op {
        Op::Insert(enc) | Op::Update(enc) | Op::Upsert(enc) => enc.version,
        _ => None,
    }
}

/// The version a changed document has after the write, where it is known without a read.
fn new_version(meta: &CollectionMeta, kind: ChangeKind, written: Option<u64>, before: Option<&[Value]>) -> Option<u64> {
    let stored = before.and_then(|row| stored_version(meta, row));
    match (meta.version_mode, kind) {
        (VersionMode::None, _) => None,
        (_, ChangeKind::Delete) => stored,
        (VersionMode::Checked, ChangeKind::Insert) => Some(written.unwrap_or(0)),
        (VersionMode::Checked, ChangeKind::Update) => written.map(|v| v + 1),
        (VersionMode::Bumped, ChangeKind::Insert) => Some(0),
        (_, _) => stored.map(|v| v + 1),
    }
}

/// The version in a row of the insert-parameter layout.
fn stored_version(meta: &CollectionMeta, row: &[Value]) -> Option<u64> {
    match (meta.row_width() > 2, row.get(2)) {
        (true, Some(Value::Integer(v))) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// Reads a whole row in the insert-parameter layout, or `None` if it does not exist.
fn select_row(conn: &dyn Connection, meta: &CollectionMeta, id: &Value) -> Result<Option<Vec<Value>>> {
    let mut out = None;
    let width = meta.row_width();
    conn.query(&meta.sql.select_row, std::slice::from_ref(id), &mut |row| {
        out = Some((0..width).map(|i| row.get(i).map(ValueRef::to_owned)).collect::<Result<Vec<_>>>()?);
        Ok(())
    })?;
    Ok(out)
}

/// A before-image fit to be written back as it was read. The id is the one the write was
/// addressed by, not the one read back: on a Durable Object an integer id beyond 2^53 reads
/// back rounded (through JavaScript), and restoring the rounded one would move the document.
/// A version that did not read back as an integer (the same rounding) is refused rather than
/// restored wrongly.
fn exact_row(meta: &CollectionMeta, id: &Value, mut row: Vec<Value>) -> Result<Vec<Value>> {
    if let Some(slot) = row.first_mut() {
        *slot = id.clone();
    }
    // The layout is id, document and, when the table has one, version.
    if row.get(2).is_some_and(|v| !matches!(v, Value::Integer(_))) {
        return Err(crate::BackendError::new(
            BackendErrorKind::Unsupported,
            format!(
                "{}: the stored version of a document cannot be read back exactly (beyond 2^53 on a Durable \
                 Object), so a savepoint could not restore it",
                meta.collection
            ),
        )
        .into());
    }
    Ok(row)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    //! What the pipeline reads and records for each combination of hooks: nothing beyond the
    //! statement when no hook asks, a before-image when the undo log or observers do.

    use super::*;
    use crate::backend::{Access, Row, SqliteBackend, SqliteOptions, run};
    use crate::schema::{Document, IdKind};
    use crate::store::codec::encode;
    use std::cell::Cell;

    #[derive(serde::Serialize, serde::Deserialize, db4_derive::Document)]
    #[db4(crate = "crate", collection = "notes")]
    struct Note {
        #[id]
        id: String,
        text: String,
        #[version]
        version: u64,
    }

    /// A connection that counts the statements it is asked to run.
    struct Counting<'c> {
        inner: &'c dyn Connection,
        reads: Cell<usize>,
        writes: Cell<usize>,
    }

    impl Connection for Counting<'_> {
        fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
            self.writes.set(self.writes.get() + 1);
            self.inner.execute(sql, params)
        }

        fn query(&self, sql: &str, params: &[Value], row: &mut dyn FnMut(&dyn Row) -> Result<()>) -> Result<()> {
            self.reads.set(self.reads.get() + 1);
            self.inner.query(sql, params, row)
        }
    }

    fn note(id: &str, text: &str, version: u64) -> Note {
        Note { id: id.into(), text: text.into(), version }
    }

    /// Runs an insert, an update and a delete through a log with the given hooks; returns the
    /// reads the pipeline made and what the log recorded.
    fn run_writes(collect: bool, before_images: bool, keep_undo: bool) -> (usize, usize, Vec<Change>, usize) {
        let backend = SqliteBackend::open_in_memory(&SqliteOptions::default()).unwrap();
        let meta = Arc::new(CollectionMeta::fresh(Note::schema(), IdKind::Text).unwrap());
        run(&backend, Access::Atomic, |conn| {
            for ddl in Note::schema().ddl(IdKind::Text) {
                conn.execute_ddl(&ddl)?;
            }
            let counting = Counting { inner: conn, reads: Cell::new(0), writes: Cell::new(0) };
            let mut log = WriteLog::new(collect, before_images);
            log.keep_undo(keep_undo);
            let log = RefCell::new(log);
            let w = Writer::new(&counting, &log);
            w.apply(&meta, Op::Insert(&encode(&meta, &note("n1", "a", 0))?))?;
            w.apply(&meta, Op::Update(&encode(&meta, &note("n1", "b", 0))?))?;
            w.apply(&meta, Op::Delete(&Value::Text("n1".into())))?;
            // A write that changes nothing records nothing.
            assert_eq!(w.apply(&meta, Op::Delete(&Value::Text("n1".into())))?, 0);
            let log = log.into_inner();
            let undo = log.mark().0;
            Ok((counting.reads.get(), counting.writes.get(), log.into_parts().0, undo))
        })
        .unwrap()
    }

    #[test]
    fn without_hooks_a_write_is_its_statement_alone() {
        let (reads, writes, changes, undo) = run_writes(false, false, false);
        assert_eq!((reads, writes, changes.len(), undo), (0, 4, 0, 0));
    }

    #[test]
    fn observers_get_changes_without_extra_reads_unless_they_ask_for_before_images() {
        let (reads, _, changes, undo) = run_writes(true, false, false);
        assert_eq!((reads, undo), (0, 0));
        let kinds: Vec<_> = changes.iter().map(|c| (c.kind, c.version, c.before.is_some())).collect();
        assert_eq!(
            kinds,
            [
                (ChangeKind::Insert, Some(0), false),
                (ChangeKind::Update, Some(1), false),
                (ChangeKind::Delete, None, false)
            ]
        );

        // With before-images: one read before the update and each delete, none for the insert.
        let (reads, _, changes, undo) = run_writes(true, true, false);
        assert_eq!((reads, undo), (3, 0));
        let befores: Vec<_> = changes.iter().map(|c| (c.before.is_some(), c.version)).collect();
        assert_eq!(befores, [(false, Some(0)), (true, Some(1)), (true, Some(1))]);
    }

    #[test]
    fn the_undo_log_reads_before_images_and_restores_them() {
        let (reads, _, changes, undo) = run_writes(false, false, true);
        assert_eq!((reads, changes.len(), undo), (3, 0, 3));

        // Restoring the entries, newest first, puts the table back as it was before them.
        let backend = SqliteBackend::open_in_memory(&SqliteOptions::default()).unwrap();
        let meta = Arc::new(CollectionMeta::fresh(Note::schema(), IdKind::Text).unwrap());
        let docs = run(&backend, Access::Atomic, |conn| {
            for ddl in Note::schema().ddl(IdKind::Text) {
                conn.execute_ddl(&ddl)?;
            }
            let log = RefCell::new(WriteLog::new(false, false));
            let w = Writer::new(conn, &log);
            w.apply(&meta, Op::Insert(&encode(&meta, &note("kept", "k", 0))?))?;
            log.borrow_mut().keep_undo(true);
            let mark = log.borrow().mark();
            w.apply(&meta, Op::Update(&encode(&meta, &note("kept", "changed", 0))?))?;
            w.apply(&meta, Op::Insert(&encode(&meta, &note("new", "n", 0))?))?;
            w.apply(&meta, Op::DeleteIds(&[Value::Text("kept".into()), Value::Text("absent".into())]))?;
            let entries = log.borrow_mut().rewind(mark);
            restore(conn, entries)?;
            let mut docs = Vec::new();
            conn.query("SELECT _id, _doc, _version FROM notes ORDER BY _id", &[], &mut |row| {
                docs.push((row.get(0)?.to_owned(), row.get(1)?.to_owned(), row.get(2)?.to_owned()));
                Ok(())
            })?;
            Ok(docs)
        })
        .unwrap();
        assert_eq!(
            docs,
            [(
                Value::Text("kept".into()),
                Value::Text(r#"{"id":"kept","text":"k","version":0}"#.into()),
                Value::Integer(0)
            )]
        );
    }
}
