//! The cold tier: documents compacted out of the hot tables into immutable segments in a
//! [`ColdStore`](crate::tier::ColdStore), found again through a table of segments kept in the
//! hot database. See `docs/tiers-cold.md` for the format, the tables and crash safety.
//!
//! A document is in exactly one place: a hot row, or a *live* copy in one segment (a copy in a
//! segment is dead once a tombstone `(segment, id)` names it). Compaction adds segments and
//! removes the moved rows in one transaction; a write to a cold document brings it back hot
//! (the row inserted, the copy tombstoned) in the transaction of the write; a delete of a cold
//! document tombstones its copy.

mod compact;
pub(crate) mod merge;
pub(crate) mod segment;
mod store;

pub use compact::CompactionReport;
#[cfg(feature = "fs")]
pub use store::DirStore;
pub use store::MemoryStore;
pub(crate) use store::check_key;

use crate::backend::Connection;
use crate::error::{BackendErrorKind, Result};
use crate::schema::Document;
use crate::store::codec::{count, decode_json, with_id};
use crate::store::meta::CollectionMeta;
use crate::tier::{ColdStore, TierConfig};
use crate::value::{Value, ValueRef};
use segment::{ColdDoc, Manifest, damaged};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The hot-side table of segments: one row per live segment.
pub(crate) const SEGMENTS: &str = "\"_db4_cold_segments\"";
/// Dead copies: `(segment, id)` of documents brought back hot or deleted since compaction.
pub(crate) const TOMBSTONES: &str = "\"_db4_cold_tombstones\"";
/// One row: the segment generation (bumped whenever the segment table changes, so every
/// handle's cache of manifests notices) and the counter segment keys are numbered by.
pub(crate) const STATE: &str = "\"_db4_cold_state\"";
/// New objects of a store that [defers writes](ColdStore::defers_writes), kept hot until
/// uploaded: `(key, part)` → up to [`PENDING_PART`] bytes.
pub(crate) const PENDING: &str = "\"_db4_cold_pending\"";
/// The bytes of one pending row: under the Durable Object limit of 2 MB per value.
const PENDING_PART: usize = 1 << 20;

/// Creates the cold tier's tables.
pub(crate) fn init(conn: &dyn Connection) -> Result<()> {
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {SEGMENTS} (\"key\" TEXT PRIMARY KEY NOT NULL, \"collection\" TEXT NOT NULL, \
         \"seq\" INTEGER NOT NULL, \"min_id\" ANY, \"max_id\" ANY, \"docs\" INTEGER NOT NULL, \
         \"bytes\" INTEGER NOT NULL, \"manifest\" TEXT NOT NULL)"
    ))?;
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {TOMBSTONES} (\"segment\" TEXT NOT NULL, \"id\" ANY NOT NULL, \
         PRIMARY KEY (\"segment\", \"id\")) WITHOUT ROWID"
    ))?;
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {STATE} (\"k\" INTEGER PRIMARY KEY, \"generation\" INTEGER NOT NULL, \
         \"seq\" INTEGER NOT NULL)"
    ))?;
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {PENDING} (\"key\" TEXT NOT NULL, \"part\" INTEGER NOT NULL, \
         \"bytes\" BLOB NOT NULL, PRIMARY KEY (\"key\", \"part\")) WITHOUT ROWID"
    ))?;
    conn.execute(&format!("INSERT OR IGNORE INTO {STATE} (\"k\", \"generation\", \"seq\") VALUES (1, 0, 0)"), &[])?;
    Ok(())
}

/// The cold tier of a database handle: its store, and a cache of the segments' manifests
/// (id ranges, blooms, block index) per collection, valid for one segment generation.
pub(crate) struct ColdTier {
    config: Arc<TierConfig>,
    cache: Mutex<Cache>,
    reads: AtomicU64,
    found: AtomicU64,
}

#[derive(Default)]
struct Cache {
    generation: i64,
    collections: HashMap<String, Arc<[Arc<Manifest>]>>,
}

/// The cold tier's figures, for [`Db::tier_stats`](crate::Db) (wired with the warm tier's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ColdStats {
    /// Live segments.
    pub segments: u64,
    /// Live documents in them (documents minus tombstones).
    pub documents: u64,
    /// Bytes of the segment files.
    pub bytes: u64,
    /// Block reads this handle made (point reads that got past the id ranges and blooms).
    pub reads: u64,
    /// Point reads that found their document in a segment.
    pub found: u64,
}

impl ColdTier {
    /// The cold tier of `config`, if it has a cold store; creates its tables.
    pub(crate) fn open(backend: &dyn crate::backend::Backend, config: &Arc<TierConfig>) -> Result<Option<Self>> {
        if config.cold.is_none() {
            return Ok(None);
        }
        match crate::backend::run(backend, crate::backend::Access::Atomic, init) {
            // Read-only: the tables are there or there is nothing cold.
            Err(e) if e.backend_kind() == Some(BackendErrorKind::ReadOnly) => {}
            other => other?,
        }
        Ok(Some(Self {
            config: Arc::clone(config),
            cache: Mutex::default(),
            reads: AtomicU64::new(0),
            found: AtomicU64::new(0),
        }))
    }

    pub(crate) fn store(&self) -> &dyn ColdStore {
        // `open` made sure there is one.
        match self.config.cold.as_deref() {
            Some(store) => store,
            None => &NO_STORE,
        }
    }

    pub(crate) fn config(&self) -> &TierConfig {
        &self.config
    }

    /// Stores a new object: in the store, or in the pending table (in the transaction of
    /// `conn`) if the store defers its writes.
    pub(crate) fn put(&self, conn: &dyn Connection, key: &str, bytes: &[u8]) -> Result<()> {
        if !self.store().defers_writes() {
            return self.store().put(key, bytes);
        }
        store::check_key(key)?;
        if pending_len(conn, key)?.is_some() {
            return Err(store::exists(key));
        }
        let parts: Vec<&[u8]> = if bytes.is_empty() { vec![&[]] } else { bytes.chunks(PENDING_PART).collect() };
        for (i, part) in parts.into_iter().enumerate() {
            conn.execute(
                &format!("INSERT INTO {PENDING} (\"key\", \"part\", \"bytes\") VALUES (?1, ?2, ?3)"),
                &[Value::Text(key.to_owned()), Value::Integer(i as i64), Value::Blob(part.to_vec())],
            )?;
        }
        Ok(())
    }

    /// The whole object under `key`: pending in the hot database, else from the store.
    pub(crate) fn get(&self, conn: &dyn Connection, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_range(conn, key, 0..u64::MAX)
    }

    /// The bytes `range` of the object under `key` (clamped to its end): pending in the hot
    /// database, else from the store.
    pub(crate) fn get_range(
        &self,
        conn: &dyn Connection,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Vec<u8>>> {
        if self.store().defers_writes()
            && let Some(bytes) = pending_range(conn, key, &range)?
        {
            return Ok(Some(bytes));
        }
        if range == (0..u64::MAX) { self.store().get(key) } else { self.store().get_range(key, range) }
    }

    /// Forgets the cached manifests (after this handle changed the segment table).
    fn invalidate(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.generation = -1;
        cache.collections.clear();
    }

    /// The live segments of `collection`, newest first, as the transaction of `conn` sees
    /// them: the cache if it is of the stored generation (one read), else reloaded.
    pub(crate) fn segments(&self, conn: &dyn Connection, collection: &str) -> Result<Arc<[Arc<Manifest>]>> {
        let generation = generation(conn)?;
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.generation != generation {
                cache.generation = generation;
                cache.collections.clear();
            } else if let Some(segs) = cache.collections.get(collection) {
                return Ok(Arc::clone(segs));
            }
        }
        let mut rows = Vec::new();
        conn.query(
            &format!("SELECT \"key\", \"manifest\" FROM {SEGMENTS} WHERE \"collection\" = ?1 ORDER BY \"seq\" DESC"),
            &[Value::Text(collection.to_owned())],
            &mut |row| {
                let (ValueRef::Text(key), ValueRef::Text(manifest)) = (row.get(0)?, row.get(1)?) else {
                    return Err(damaged(collection, "?", "the segment table holds a non-text key or manifest"));
                };
                rows.push((key.to_owned(), manifest.to_owned()));
                Ok(())
            },
        )?;
        let segs: Arc<[Arc<Manifest>]> = rows
            .iter()
            .map(|(key, json)| Manifest::parse(collection, key, json).map(Arc::new))
            .collect::<Result<Vec<_>>>()?
            .into();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation == generation {
            cache.collections.insert(collection.to_owned(), Arc::clone(&segs));
        }
        Ok(segs)
    }

    /// The live cold copy of `id` in `meta`'s collection, with the segment holding it.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`](crate::Error::Corrupted) naming the segment if the block that
    /// would hold it is missing or damaged.
    pub(crate) fn find(
        &self,
        conn: &dyn Connection,
        meta: &CollectionMeta,
        id: &Value,
    ) -> Result<Option<(Arc<Manifest>, ColdDoc)>> {
        let segs = self.segments(conn, meta.collection)?;
        for m in segs.iter().filter(|m| m.may_contain(id)) {
            let Some(block) = m.block_for(id) else { continue };
            if tombstoned(conn, &m.key, id)? {
                continue;
            }
            self.reads.fetch_add(1, Ordering::Relaxed);
            let bytes = self
                .get_range(conn, &m.key, block.offset..block.offset + block.length)?
                .ok_or_else(|| damaged(meta.collection, &m.key, "missing from the cold store"))?;
            if let Some(doc) = segment::find_in_block(m, block, &bytes, id)? {
                self.found.fetch_add(1, Ordering::Relaxed);
                return Ok(Some((Arc::clone(m), doc)));
            }
        }
        Ok(None)
    }

    /// The cold tier's figures (see [`ColdStats`]), as `conn` sees the segment table.
    ///
    /// For `Db::tier_stats`, which the warm tier's work adds; wired when both land.
    pub(crate) fn stats(&self, conn: &dyn Connection) -> Result<ColdStats> {
        let segments = count(conn, "cold", &format!("SELECT count(*) FROM {SEGMENTS}"), &[])?;
        let docs = count(conn, "cold", &format!("SELECT coalesce(sum(\"docs\"), 0) FROM {SEGMENTS}"), &[])?;
        let dead = count(conn, "cold", &format!("SELECT count(*) FROM {TOMBSTONES}"), &[])?;
        let bytes = count(conn, "cold", &format!("SELECT coalesce(sum(\"bytes\"), 0) FROM {SEGMENTS}"), &[])?;
        Ok(ColdStats {
            segments,
            documents: docs.saturating_sub(dead),
            bytes,
            reads: self.reads.load(Ordering::Relaxed),
            found: self.found.load(Ordering::Relaxed),
        })
    }
}

impl crate::db::Db {
    /// The cold tier's figures ([`ColdStats`]: live segments, live documents, segment bytes,
    /// block reads and cold hits of this handle), `None` without a cold store. For
    /// `Db::tier_stats`, which the warm tier's work adds; wired when both land.
    #[allow(dead_code, reason = "wired into Db::tier_stats with the warm tier")]
    pub(crate) fn cold_stats(&self) -> Result<Option<ColdStats>> {
        let Some(cold) = self.cold() else { return Ok(None) };
        crate::backend::run(self.backend(), crate::backend::Access::Read, |conn| cold.stats(conn)).map(Some)
    }
}

/// Stands in for a missing store (never reached: a cold tier exists only with a store).
struct NoStore;
static NO_STORE: NoStore = NoStore;

impl ColdStore for NoStore {
    fn put(&self, _: &str, _: &[u8]) -> Result<()> {
        Err(no_store())
    }
    fn get(&self, _: &str) -> Result<Option<Vec<u8>>> {
        Err(no_store())
    }
    fn get_range(&self, _: &str, _: std::ops::Range<u64>) -> Result<Option<Vec<u8>>> {
        Err(no_store())
    }
    fn list(&self, _: &str) -> Result<Vec<crate::tier::ObjectInfo>> {
        Err(no_store())
    }
    fn delete(&self, _: &str) -> Result<()> {
        Err(no_store())
    }
}

fn no_store() -> crate::Error {
    crate::BackendError::new(BackendErrorKind::Unsupported, "no cold store is configured").into()
}

/// The stored segment generation.
fn generation(conn: &dyn Connection) -> Result<i64> {
    let mut g = None;
    conn.query(&format!("SELECT \"generation\" FROM {STATE} WHERE \"k\" = 1"), &[], &mut |row| {
        g = match row.get(0)? {
            ValueRef::Integer(v) => Some(v),
            _ => None,
        };
        Ok(())
    })?;
    g.ok_or_else(|| crate::Error::corrupted("cold", None, "the cold tier's state row is missing or damaged"))
}

/// The size of the pending object `key`, if there is one.
fn pending_len(conn: &dyn Connection, key: &str) -> Result<Option<u64>> {
    let mut len = None;
    conn.query(
        &format!("SELECT sum(length(\"bytes\")) FROM {PENDING} WHERE \"key\" = ?1 HAVING count(*) > 0"),
        &[Value::Text(key.to_owned())],
        &mut |row| {
            len = match row.get(0)? {
                ValueRef::Integer(n) => Some(n.max(0) as u64),
                _ => Some(0),
            };
            Ok(())
        },
    )?;
    Ok(len)
}

/// The bytes `range` (clamped) of the pending object `key`, if there is one.
fn pending_range(conn: &dyn Connection, key: &str, range: &std::ops::Range<u64>) -> Result<Option<Vec<u8>>> {
    let part = PENDING_PART as u64;
    let (first, last) = (range.start / part, range.end.saturating_sub(1) / part);
    let mut found = false;
    let mut out = Vec::new();
    let mut base = None;
    // Parts from the one holding `start`: the object exists if any part does (the first
    // query also tells an object from a range past its end).
    conn.query(
        &format!(
            "SELECT \"part\", \"bytes\" FROM {PENDING} WHERE \"key\" = ?1 AND \"part\" BETWEEN ?2 AND ?3 ORDER BY \"part\""
        ),
        &[Value::Text(key.to_owned()), Value::Integer(first.min(i64::MAX as u64) as i64), Value::Integer(last.min(i64::MAX as u64) as i64)],
        &mut |row| {
            found = true;
            let (ValueRef::Integer(i), ValueRef::Blob(b)) = (row.get(0)?, row.get(1)?) else {
                return Err(crate::Error::corrupted("cold", None, format!("pending object {key}: a damaged part")));
            };
            base.get_or_insert(i as u64 * part);
            out.extend_from_slice(b);
            Ok(())
        },
    )?;
    if !found {
        if pending_len(conn, key)?.is_none() {
            return Ok(None);
        }
        return Ok(Some(Vec::new()));
    }
    let base = base.unwrap_or(0);
    let start = usize::try_from(range.start.saturating_sub(base)).unwrap_or(usize::MAX).min(out.len());
    let end = usize::try_from(range.end.saturating_sub(base)).unwrap_or(usize::MAX).min(out.len()).max(start);
    out.truncate(end);
    out.drain(..start);
    Ok(Some(out))
}

impl crate::db::Db {
    /// The objects compaction left in the pending table for a store that defers its writes,
    /// with their sizes, in key order.
    pub(crate) fn cold_pending(&self) -> Result<Vec<(String, u64)>> {
        if self.cold().is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        crate::backend::run(self.backend(), crate::backend::Access::Read, |conn| {
            out.clear();
            conn.query(
                &format!("SELECT \"key\", sum(length(\"bytes\")) FROM {PENDING} GROUP BY \"key\" ORDER BY \"key\""),
                &[],
                &mut |row| {
                    if let (ValueRef::Text(k), ValueRef::Integer(n)) = (row.get(0)?, row.get(1)?) {
                        out.push((k.to_owned(), n.max(0) as u64));
                    }
                    Ok(())
                },
            )
        })?;
        Ok(out)
    }

    /// The pending object `key`, whole.
    pub(crate) fn cold_pending_object(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if self.cold().is_none() {
            return Ok(None);
        }
        crate::backend::run(self.backend(), crate::backend::Access::Read, |conn| {
            pending_range(conn, key, &(0..u64::MAX))
        })
    }

    /// Drops the hot copy of the pending object `key`, now in the store.
    pub(crate) fn cold_uploaded(&self, key: &str) -> Result<()> {
        if self.cold().is_none() {
            return Ok(());
        }
        crate::txn::Runner::Db(self).write(crate::backend::Access::Atomic, |w| {
            w.conn.execute(&format!("DELETE FROM {PENDING} WHERE \"key\" = ?1"), &[Value::Text(key.to_owned())])
        })?;
        Ok(())
    }
}

/// Whether the copy of `id` in segment `key` is dead.
fn tombstoned(conn: &dyn Connection, key: &str, id: &Value) -> Result<bool> {
    let mut dead = false;
    conn.query(
        &format!("SELECT 1 FROM {TOMBSTONES} WHERE \"segment\" = ?1 AND \"id\" = ?2"),
        &[Value::Text(key.to_owned()), id.clone()],
        &mut |_| {
            dead = true;
            Ok(())
        },
    )?;
    Ok(dead)
}

/// Marks the copy of `id` in segment `key` dead; returns the statement that undoes it.
pub(crate) fn tombstone(conn: &dyn Connection, key: &str, id: &Value) -> Result<(Arc<str>, Vec<Value>)> {
    let params = vec![Value::Text(key.to_owned()), id.clone()];
    conn.execute(&format!("INSERT OR IGNORE INTO {TOMBSTONES} (\"segment\", \"id\") VALUES (?1, ?2)"), &params)?;
    let undo: Arc<str> = Arc::from(format!("DELETE FROM {TOMBSTONES} WHERE \"segment\" = ?1 AND \"id\" = ?2"));
    Ok((undo, params))
}

/// A cold document in the collection's insert-parameter layout (id, JSON, version).
pub(crate) fn row_of(meta: &CollectionMeta, doc: &ColdDoc) -> Vec<Value> {
    let mut row = vec![doc.id.clone(), Value::Text(doc.doc.clone())];
    if meta.row_width() > 2 {
        row.push(doc.version.map_or(Value::Null, Value::Integer));
    }
    row
}

/// The read path after a hot miss: the document from the cold tier, if the database has one
/// and a live segment holds `id`. Costs nothing without a cold store.
///
/// Reads outside a transaction run statement by statement, so a compaction or a write
/// bringing the document back hot may commit between the hot miss and the cold lookup: the
/// lookup checks that the segment generation did not move meanwhile and looks in the hot
/// table again (with `hot`) before saying "none", and starts over if the generation moved.
///
/// # Errors
///
/// [`Error::Corrupted`](crate::Error::Corrupted) naming a missing or damaged segment;
/// [`Error::Serialization`](crate::Error::Serialization) if the document does not read as `T`.
pub(crate) fn get<T: Document>(
    cold: Option<&ColdTier>,
    conn: &dyn Connection,
    meta: &CollectionMeta,
    id: &Value,
    hot: &dyn Fn() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let Some(cold) = cold else { return Ok(None) };
    match find_doc(cold, conn, meta, id)? {
        Some(doc) => decode(meta, &doc).map(Some),
        // Brought back hot (or written) since the hot miss?
        None => hot(),
    }
}

/// The live cold copy of `id`, as stored (id, JSON, version column), read as [`get`] reads
/// it: starting over (up to three times) if the segment generation moved meanwhile. `None`
/// if no live segment holds it; the caller then looks at the hot table again.
///
/// # Errors
///
/// [`Error::Corrupted`](crate::Error::Corrupted) naming a missing or damaged segment.
pub(crate) fn find_doc(
    cold: &ColdTier,
    conn: &dyn Connection,
    meta: &CollectionMeta,
    id: &Value,
) -> Result<Option<ColdDoc>> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = generation(conn)?;
        let found = cold.find(conn, meta, id);
        let moved = generation(conn)? != before;
        if moved && attempts < 4 {
            continue;
        }
        return found.map(|found| found.map(|(_, doc)| doc));
    }
}

/// A cold copy decoded as a `T` (its version column authoritative in a versioned collection).
///
/// # Errors
///
/// [`Error::Serialization`](crate::Error::Serialization) naming the document.
pub(crate) fn decode<T: Document>(meta: &CollectionMeta, doc: &ColdDoc) -> Result<T> {
    let version = if meta.versioned { doc.version } else { None };
    decode_json::<T>(meta, &doc.doc, version).map_err(|e| with_id(e, &doc.id))
}

/// Fills the `None`s of a `get_many` result from the cold tier.
pub(crate) fn fill<T: Document>(
    cold: Option<&ColdTier>,
    conn: &dyn Connection,
    meta: &CollectionMeta,
    keys: &[Value],
    out: &mut [Option<T>],
) -> Result<()> {
    if cold.is_none() {
        return Ok(());
    }
    for (key, slot) in keys.iter().zip(out.iter_mut()) {
        if slot.is_none() {
            *slot = get::<T>(cold, conn, meta, key, &|| crate::store::codec::select_one(conn, meta, key))?;
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use crate::tier::{CompactionPolicy, MemoryStore, TierConfig};
    use crate::{Db, DbOptions, Result};

    #[derive(serde::Serialize, serde::Deserialize, db4_derive::Document)]
    #[db4(crate = "crate", collection = "notes")]
    struct Note {
        #[id]
        id: i64,
        text: String,
    }

    #[test]
    fn cold_stats_count_segments_documents_bytes_and_reads() -> Result<()> {
        let plain = Db::open_in_memory()?;
        assert_eq!(plain.cold_stats()?, None);
        let policy = CompactionPolicy { hot_max_documents: Some(2), ..Default::default() };
        let tiers = TierConfig { warm_bytes: 0, cold: Some(Box::new(MemoryStore::new())), policy };
        let db = Db::open_in_memory_with(DbOptions::default().tiers(tiers))?;
        let notes = db.collection::<Note>()?;
        for id in 0..10 {
            notes.insert(&Note { id, text: format!("note {id}") })?;
        }
        db.compact()?;
        assert!(notes.get(3)?.is_some());
        assert!(notes.delete(4)?);
        let stats = db.cold_stats()?.expect("a cold tier");
        assert_eq!((stats.segments, stats.documents, stats.found), (1, 7, 2));
        assert!(stats.bytes > 0 && stats.reads >= 2);
        Ok(())
    }
}
