//! Writing documents: [`BatchStore::put`], [`put_many`](BatchStore::put_many),
//! [`delete`](BatchStore::delete) and [`delete_many`](BatchStore::delete_many), and the steps
//! they share with compaction: encoding an entry, placing it (with `pack.rs`), writing new and
//! appended blobs, and taking released documents off their blobs' counters.
//!
//! Each call writes through the unit of work's [`Writer`] (the write pipeline, see
//! `store/pipeline.rs`). After each statement that changed rows, and only while a savepoint is
//! active, it records the statements that put exactly those rows back. Inside a transaction
//! each call is atomic as a nested transaction, whose own savepoint is active while it runs, so
//! a call that fails halfway is undone as far as it got and the transaction goes on; what it
//! recorded is forgotten when it ends unless a savepoint of the caller is still active. Outside
//! a transaction nothing of this is recorded: the backend's transaction undoes a failed call.
//!
//! An append is undone by cutting the appended bytes off again and a counter by the opposite
//! adjustment, so neither reads anything; the one before-image read is that of a blob row
//! dropped with its last live document, which its `DELETE` hands back. Once done, a call
//! records one [`Change`] per document it changed, only when someone observes commits.

use super::codec::encode_entry;
use super::pack::{Bin, Packer};
use super::sql::{id_list, int, signed};
use super::{BATCH_ENTRY_OVERHEAD, BatchStore, Entry, Release};
use crate::backend::{Access, Connection};
use crate::error::{Error, Result};
use crate::store::change::{Change, ChangeKind};
use crate::store::pipeline::{Undo, Writer};
use crate::txn::Scope;
use crate::value::{Value, ValueRef};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Where a stored document lives, and its JSON when a change reports its before-image.
#[derive(Debug, Clone)]
struct Location {
    blob: i64,
    pos: u64,
    len: u64,
    json: Option<String>,
}

impl Location {
    /// The directory row of document `id` as it is, in `upsert_doc`'s parameter layout.
    fn row(&self, id: &str) -> Vec<Value> {
        vec![Value::Text(id.to_owned()), Value::Integer(self.blob), int(self.pos), int(self.len)]
    }
}

/// Records the statements that undo the statement just run; they are built only while a
/// savepoint is active.
pub(super) fn undo(w: &Writer<'_>, statements: impl FnOnce() -> Vec<(Arc<str>, Vec<Value>)>) {
    w.record_external(Vec::new, || Some(Undo::Statements(statements())));
}

impl<S: Scope> BatchStore<S> {
    /// Stores `doc` under `id`, replacing any document with that id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an empty id, [`Error::TooLarge`] if the packed document
    /// (JSON + id + [`BATCH_ENTRY_OVERHEAD`]) exceeds `max_blob_bytes`,
    /// [`Error::Serialization`] if it does not serialize; nothing is written then. A backend
    /// error (kind `Corrupt` if the store's rows are damaged).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// use db4_runtime::{BatchOptions, BatchStore, Db, Error};
    ///
    /// let db = Db::open_in_memory()?;
    /// let store = BatchStore::open(&db, "small", BatchOptions::default().max_blob_bytes(64))?;
    /// store.put("k", &vec![1, 2, 3])?;
    /// store.put("k", &vec![4])?; // replaces
    /// assert_eq!(store.get::<Vec<u8>>("k")?, Some(vec![4]));
    /// let big = "x".repeat(100);
    /// assert!(matches!(store.put("big", &big), Err(Error::TooLarge { limit: 64, .. })));
    /// # Ok(()) }
    /// ```
    pub fn put<T: Serialize + ?Sized>(&self, id: &str, doc: &T) -> Result<()> {
        let span = crate::trace::op("batch.put", Some(self.name()));
        let entry = self.encode(id, doc)?;
        span.rows_of(self.write(vec![entry]), |_| 1)
    }

    /// Stores many documents in one atomic call: all of them, or none. A repeated id keeps its
    /// last document, as consecutive [`put`](Self::put)s would.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put), for the first document that fails; then nothing is written.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "points", Default::default())?;
    /// let docs = vec![("p1".to_owned(), [1.0, 2.0]), ("p2".to_owned(), [3.0, 4.0])];
    /// store.put_many(docs.iter().map(|(id, p)| (id, p)))?;
    /// assert_eq!(store.len()?, 2);
    /// # Ok(()) }
    /// ```
    pub fn put_many<'d, K, T>(&self, docs: impl IntoIterator<Item = (K, &'d T)>) -> Result<()>
    where
        K: AsRef<str>,
        T: Serialize + ?Sized + 'd,
    {
        let span = crate::trace::op("batch.put_many", Some(self.name()));
        let mut entries: Vec<Entry> = Vec::new();
        let mut slot: HashMap<String, usize> = HashMap::new();
        for (id, doc) in docs {
            let entry = self.encode(id.as_ref(), doc)?;
            match slot.get(&entry.id) {
                Some(&i) => entries[i] = entry,
                None => {
                    slot.insert(entry.id.clone(), entries.len());
                    entries.push(entry);
                }
            }
        }
        let n = entries.len() as u64;
        span.rows_of(self.write(entries), |_| n)
    }

    /// Deletes the document stored under `id`; returns whether there was one. A blob left
    /// without live documents is dropped; other space is reclaimed by
    /// [`compact`](Self::compact).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an empty id, or a backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "tmp", Default::default())?;
    /// store.put("a", &1)?;
    /// assert!(store.delete("a")?);
    /// assert!(!store.delete("a")?);
    /// assert_eq!(store.stats()?.rows, 0);
    /// # Ok(()) }
    /// ```
    pub fn delete(&self, id: &str) -> Result<bool> {
        self.delete_many([id]).map(|n| n > 0)
    }

    /// Deletes the documents stored under `ids` in one atomic call; returns how many there
    /// were (a repeated id counts once).
    ///
    /// # Errors
    ///
    /// As [`delete`](Self::delete); then nothing is deleted.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "tmp", Default::default())?;
    /// store.put_many([("a", &1), ("b", &2)])?;
    /// assert_eq!(store.delete_many(["a", "b", "c"])?, 2);
    /// # Ok(()) }
    /// ```
    pub fn delete_many<K: AsRef<str>>(&self, ids: impl IntoIterator<Item = K>) -> Result<u64> {
        let _span = crate::trace::op("batch.delete_many", Some(self.name()));
        let ids: BTreeSet<String> = ids.into_iter().map(|id| id.as_ref().to_owned()).collect();
        ids.iter().try_for_each(|id| self.check_id(id))?;
        if ids.is_empty() {
            return Ok(0);
        }
        let list = id_list(ids.iter());
        let sql = &self.inner.sql;
        self.runner().write(Access::Atomic, |w| {
            let found = self.locate(w.conn, &list, self.before_images(&w))?;
            if found.is_empty() {
                return Ok(0);
            }
            w.conn.execute(&sql.delete_docs, std::slice::from_ref(&list))?;
            undo(&w, || found.iter().map(|(id, loc)| (Arc::clone(&sql.upsert_doc), loc.row(id))).collect());
            let mut releases: BTreeMap<i64, Release> = BTreeMap::new();
            for loc in found.values() {
                let r = releases.entry(loc.blob).or_default();
                r.bytes += loc.len;
                r.count += 1;
            }
            self.apply_releases(&w, &releases)?;
            w.record_external(
                || {
                    let deleted = ids.iter().filter_map(|id| found.get(id).map(|loc| (id, loc)));
                    deleted.map(|(id, loc)| self.change(id, ChangeKind::Delete, None, loc.json.clone())).collect()
                },
                || None,
            );
            Ok(found.len() as u64)
        })
    }

    /// Serializes and checks one document: everything that can fail does so before any write.
    fn encode<T: Serialize + ?Sized>(&self, id: &str, doc: &T) -> Result<Entry> {
        self.check_id(id)?;
        let json = serde_json::to_vec(doc).map_err(|e| self.serialization(id, e))?;
        let size = BATCH_ENTRY_OVERHEAD.saturating_add(id.len()).saturating_add(json.len());
        if size > self.inner.options.max_blob_bytes {
            return Err(Error::TooLarge {
                collection: self.inner.name.clone(),
                id: id.to_owned(),
                size,
                limit: self.inner.options.max_blob_bytes,
            });
        }
        Ok(Entry { id: id.to_owned(), bytes: encode_entry(id.as_bytes(), &json) })
    }

    /// Places and writes `entries` (distinct ids, each fitting a blob) atomically.
    fn write(&self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let sql = &self.inner.sql;
        let limit = self.inner.limit;
        let list = id_list(entries.iter().map(|e| &e.id));
        self.runner().write(Access::Atomic, |w| {
            let conn = w.conn;
            let old = self.locate(conn, &list, self.before_images(&w))?;
            let mut packer = Packer::new(limit, self.next_blob_id(conn)?);
            // Only blobs with room for the smallest entry matter; a single put reads one row.
            let smallest = entries.iter().map(|e| e.bytes.len() as u64).min().unwrap_or(0);
            let fit_sql = if entries.len() == 1 { &sql.best_fit } else { &sql.fitting };
            conn.query(fit_sql, &[int(limit - smallest)], &mut |row| {
                packer.add_existing(self.int(row, 0, "blob id")?, self.uint(row, 1, "blob size")?);
                Ok(())
            })?;
            // Biggest first packs tighter (best-fit decreasing).
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(entries[i].bytes.len()));
            let mut placed = vec![(0i64, 0u64); entries.len()];
            for i in order {
                placed[i] = packer.place(&entries[i].bytes);
            }
            let mut releases: BTreeMap<i64, Release> = BTreeMap::new();
            for loc in old.values() {
                let r = releases.entry(loc.blob).or_default();
                r.bytes += loc.len;
                r.count += 1;
            }
            let (fresh, existing): (Vec<Bin>, Vec<Bin>) =
                packer.bins.into_iter().filter(|b| b.added_count > 0).partition(|b| b.fresh);
            for bin in fresh {
                self.insert_bin(&w, bin)?;
            }
            for bin in existing {
                let r = releases.remove(&bin.blob).unwrap_or_default();
                let bytes = signed(bin.used - bin.base) - signed(r.bytes);
                let count = signed(bin.added_count) - signed(r.count);
                let changed = conn.execute(
                    &sql.append,
                    &[
                        Value::Integer(bin.blob),
                        Value::Blob(bin.append),
                        int(bin.used - bin.base),
                        Value::Integer(bytes),
                        Value::Integer(count),
                        int(bin.base),
                    ],
                )?;
                // Zero means the guard failed; a Durable Object may count index writes too, so not `!= 1`.
                if changed == 0 {
                    return Err(
                        self.corrupt(format!("blob {}: its size or counters disagree with its payload", bin.blob))
                    );
                }
                undo(&w, || {
                    let params =
                        vec![Value::Integer(bin.blob), int(bin.base), Value::Integer(-bytes), Value::Integer(-count)];
                    vec![(Arc::clone(&sql.truncate), params)]
                });
            }
            self.apply_releases(&w, &releases)?;
            for (entry, &(blob, pos)) in entries.iter().zip(&placed) {
                conn.execute(
                    &sql.upsert_doc,
                    &[Value::Text(entry.id.clone()), Value::Integer(blob), int(pos), int(entry.bytes.len() as u64)],
                )?;
                undo(&w, || {
                    vec![match old.get(&entry.id) {
                        Some(loc) => (Arc::clone(&sql.upsert_doc), loc.row(&entry.id)),
                        None => (Arc::clone(&sql.delete_doc), vec![Value::Text(entry.id.clone())]),
                    }]
                });
            }
            w.record_external(
                || {
                    let change = |e: &Entry| match old.get(&e.id) {
                        Some(loc) => self.change(&e.id, ChangeKind::Update, Some(e.json()), loc.json.clone()),
                        None => self.change(&e.id, ChangeKind::Insert, Some(e.json()), None),
                    };
                    entries.iter().map(change).collect()
                },
                || None,
            );
            Ok(())
        })
    }

    /// Writes a fresh blob.
    pub(super) fn insert_bin(&self, w: &Writer<'_>, bin: Bin) -> Result<()> {
        let sql = &self.inner.sql;
        w.conn.execute(
            &sql.insert_blob,
            &[Value::Integer(bin.blob), int(bin.used), Value::Blob(bin.append), int(bin.added_count)],
        )?;
        undo(w, || vec![(Arc::clone(&sql.delete_blob), vec![Value::Integer(bin.blob)])]);
        Ok(())
    }

    /// Takes released documents off their blobs' counters and drops blobs left empty.
    fn apply_releases(&self, w: &Writer<'_>, releases: &BTreeMap<i64, Release>) -> Result<()> {
        let (sql, conn) = (&self.inner.sql, w.conn);
        for (&blob, r) in releases {
            let (bytes, count) = (signed(r.bytes), signed(r.count));
            let params = [Value::Integer(blob), Value::Integer(-bytes), Value::Integer(-count)];
            if conn.execute(&sql.release, &params)? == 0 {
                return Err(self.corrupt(format!("blob {blob}: missing, or its counters are below what it holds")));
            }
            undo(w, || {
                vec![(
                    Arc::clone(&sql.release),
                    vec![Value::Integer(blob), Value::Integer(bytes), Value::Integer(count)],
                )]
            });
            if !w.keeps_undo() {
                conn.execute(&sql.drop_empty, &[Value::Integer(blob)])?;
                continue;
            }
            // The dropped row comes back from its DELETE, exactly as it was, to be put back.
            let mut dropped: Option<Vec<Value>> = None;
            conn.query(&sql.drop_empty_returning, &[Value::Integer(blob)], &mut |row| {
                let mut values = vec![Value::Integer(blob)];
                for i in 0..4 {
                    values.push(row.get(i).map(ValueRef::to_owned)?);
                }
                dropped = Some(values);
                Ok(())
            })?;
            if let Some(row) = dropped {
                undo(w, || vec![(Arc::clone(&sql.restore_blob), row)]);
            }
        }
        Ok(())
    }

    /// Where the documents with the ids in the JSON array `list` are stored, with their JSON
    /// if `with_json`.
    fn locate(&self, conn: &dyn Connection, list: &Value, with_json: bool) -> Result<HashMap<String, Location>> {
        let mut out = HashMap::new();
        // `get_many` reads the same directory columns, then the entry.
        let sql = if with_json { &self.inner.sql.get_many } else { &self.inner.sql.locate };
        conn.query(sql, std::slice::from_ref(list), &mut |row| {
            let id = self.text(row, 0, "document id")?;
            let blob = self.int(row, 1, "blob id")?;
            let pos = self.uint(row, 2, "entry offset")?;
            let len = self.uint(row, 3, "entry length")?;
            let json = match with_json {
                false => None,
                true => {
                    let doc = self.entry_in_row(row, 1, id)?;
                    let text = std::str::from_utf8(doc)
                        .map_err(|e| self.corrupt(format!("document {id:?}: the JSON is not UTF-8: {e}")))?;
                    Some(text.to_owned())
                }
            };
            out.insert(id.to_owned(), Location { blob, pos, len, json });
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether changes carry before-images: someone observes commits and
    /// [`DbOptions::before_images`](crate::DbOptions::before_images) asks for them.
    fn before_images(&self, w: &Writer<'_>) -> bool {
        w.collects() && self.db().options().before_images
    }

    /// The change of one document of this store.
    fn change(&self, id: &str, kind: ChangeKind, after: Option<String>, before: Option<String>) -> Change {
        Change::new(Cow::Owned(self.inner.name.clone()), Value::Text(id.to_owned()), kind, None, after, before)
    }

    pub(super) fn next_blob_id(&self, conn: &dyn Connection) -> Result<i64> {
        let mut next = 1;
        conn.query(&self.inner.sql.next_blob_id, &[], &mut |row| {
            next = self.int(row, 0, "next blob id")?;
            Ok(())
        })?;
        Ok(next)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::backend::run;
    use crate::batch::model::{is_corrupt, options, raw};
    use crate::db::Db;
    use crate::schema::quote_ident;

    #[test]
    fn size_limit_is_exact_and_refusals_change_nothing() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "limits", options(64))?;
        store.put("seed", &1)?;
        let before = store.verify()?;
        // 12 + 3 + (47 + 2) = 64: fits exactly, in a blob of its own.
        let fits = "y".repeat(47);
        let over = "y".repeat(48);
        match store.put("big", &over) {
            Err(Error::TooLarge { collection, id, size, limit }) => {
                assert_eq!((collection.as_str(), id.as_str(), size, limit), ("limits", "big", 65, 64));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(store.put_many([("ok", &"small".to_owned()), ("big", &over)]), Err(Error::TooLarge { .. })));
        assert!(matches!(store.put_many([("seed", &"new".to_owned()), ("big", &over)]), Err(Error::TooLarge { .. })));
        assert_eq!(store.verify()?, before);
        assert_eq!(store.ids()?, ["seed"]);
        assert_eq!(store.get::<i32>("seed")?, Some(1));
        store.put("big", &fits)?;
        let stats = store.verify()?;
        assert_eq!((stats.rows, stats.live_bytes, stats.free_bytes), (2, 64 + 17, 64 - 17));
        assert_eq!(store.get::<String>("big")?, Some(fits));
        Ok(())
    }

    #[test]
    fn a_failure_midway_through_put_many_writes_nothing() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "atomic", options(64))?;
        store.put("a", "xxxx")?; // 19 bytes in blob 1
        // Blob 1's recorded size now disagrees with its payload, so appending to it fails.
        raw(&db, &format!(r#"UPDATE {} SET "used" = 20"#, quote_ident("_db4_batch_atomic_blobs")), &[])?;
        // "big" (60 bytes) needs a fresh blob, written first; "s" (19) then goes to blob 1 and fails.
        let big = "b".repeat(43);
        let result = store.put_many([("big", &big), ("s", &"xxxx".to_owned())]);
        assert!(is_corrupt(result));
        assert_eq!(store.ids()?, ["a"]);
        assert_eq!(store.get::<String>("big")?, None);
        let mut blobs = 0;
        run(db.backend(), Access::Read, |conn| {
            conn.query(&format!("SELECT count(*) FROM {}", quote_ident("_db4_batch_atomic_blobs")), &[], &mut |row| {
                blobs = store.uint(row, 0, "count")?;
                Ok(())
            })
        })?;
        assert_eq!(blobs, 1);
        Ok(())
    }
}
