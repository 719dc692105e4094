//! Bin-packed batch storage: many small documents packed into a few rows.
//!
//! A Durable Object bills per row read and written and refuses rows above 2 MiB, so storing
//! each small document in its own row is the expensive layout. A [`BatchStore`] appends
//! documents into blobs (rows) of at most [`BatchOptions::max_blob_bytes`] and keeps a
//! directory from document id to (blob, offset, length), so each document stays readable,
//! replaceable and deletable on its own. Replacing or deleting leaves the old bytes in place
//! (dead bytes) until [`BatchStore::compact`] repacks under-filled blobs; a blob whose last
//! live document goes is dropped at once.
//!
//! Packed entry format (all integers little-endian):
//! `id_len: u32 | doc_len: u32 | crc32(id ++ doc): u32 | id (UTF-8) | doc (JSON)`.

use crate::backend::{Access, Connection, Row, run};
use crate::checksum::crc32;
use crate::db::Db;
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::schema::is_valid_name;
use crate::sql::quote_ident;
use crate::value::{Value, ValueRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

/// The default row size of a [`BatchStore`]: 1 MiB, half of the largest row a Durable Object
/// stores, leaving room for the row's other columns.
pub const DEFAULT_MAX_BLOB_BYTES: usize = 1024 * 1024;

/// Bytes of framing each packed document takes next to its id and its JSON: two lengths and
/// a CRC-32.
pub const BATCH_ENTRY_OVERHEAD: usize = 12;

const MIN_BLOB_BYTES: usize = 64;
/// Well below SQLite's default value limit (1e9 bytes), which concatenation must stay under.
const MAX_BLOB_BYTES: usize = 512 * 1024 * 1024;
const DEFAULT_COMPACT_BELOW: f64 = 0.75;

/// Options for [`BatchStore::open`].
///
/// # Example
///
/// ```
/// let options = db4_runtime::BatchOptions::default().max_blob_bytes(64 * 1024).compact_below(0.5);
/// assert_eq!(options.max_blob_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchOptions {
    /// The largest blob (row payload) in bytes; also the largest packed document
    /// (`BATCH_ENTRY_OVERHEAD` + id bytes + JSON bytes). Between 64 bytes and 512 MiB;
    /// default [`DEFAULT_MAX_BLOB_BYTES`]. On a Durable Object keep it below 2 MiB.
    pub max_blob_bytes: usize,
    /// [`BatchStore::compact`] repacks the blobs whose live documents fill less than this
    /// fraction of `max_blob_bytes` (0.0 to 1.0; default 0.75).
    pub compact_below: f64,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { max_blob_bytes: DEFAULT_MAX_BLOB_BYTES, compact_below: DEFAULT_COMPACT_BELOW }
    }
}

impl BatchOptions {
    /// Sets the largest blob size in bytes.
    ///
    /// # Example
    ///
    /// ```
    /// let options = db4_runtime::BatchOptions::default().max_blob_bytes(4096);
    /// assert_eq!(options.max_blob_bytes, 4096);
    /// ```
    pub fn max_blob_bytes(mut self, bytes: usize) -> Self {
        self.max_blob_bytes = bytes;
        self
    }

    /// Sets the fill ratio under which [`BatchStore::compact`] repacks a blob.
    ///
    /// # Example
    ///
    /// ```
    /// let options = db4_runtime::BatchOptions::default().compact_below(1.0);
    /// assert_eq!(options.compact_below, 1.0);
    /// ```
    pub fn compact_below(mut self, ratio: f64) -> Self {
        self.compact_below = ratio;
        self
    }
}

/// Space accounting of a [`BatchStore`], from [`BatchStore::stats`].
///
/// Byte counts are of packed entries (JSON, id and [`BATCH_ENTRY_OVERHEAD`] each).
///
/// # Example
///
/// ```
/// # fn main() -> db4_runtime::Result<()> {
/// # let db = db4_runtime::Db::open_in_memory()?;
/// let store = db4_runtime::BatchStore::open(&db, "notes", Default::default())?;
/// store.put("n1", "hello")?;
/// let stats = store.stats()?;
/// assert_eq!((stats.documents, stats.rows), (1, 1));
/// assert_eq!(stats.live_bytes, 12 + 2 + 7); // overhead + "n1" + "\"hello\""
/// assert!(stats.fill_ratio() > 0.0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BatchStats {
    /// Documents held.
    pub documents: u64,
    /// Rows (blobs) used.
    pub rows: u64,
    /// Bytes of the documents held.
    pub live_bytes: u64,
    /// Bytes stored in the blobs: live plus dead.
    pub allocated_bytes: u64,
    /// Bytes of replaced or deleted documents still in blobs, until compaction.
    pub dead_bytes: u64,
    /// Room left for appends in the blobs: `max_blob_bytes` minus each blob's size.
    pub free_bytes: u64,
    /// The store's `max_blob_bytes`.
    pub row_limit: u64,
}

impl BatchStats {
    /// The room of the rows used: `rows * row_limit`.
    ///
    /// # Example
    ///
    /// ```
    /// let stats = db4_runtime::BatchStats::default();
    /// assert_eq!(stats.capacity_bytes(), 0);
    /// ```
    pub fn capacity_bytes(&self) -> u64 {
        self.rows.saturating_mul(self.row_limit)
    }

    /// How much of the rows' room holds live documents, 0.0 to 1.0 (0.0 with no rows).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(db4_runtime::BatchStats::default().fill_ratio(), 0.0);
    /// ```
    pub fn fill_ratio(&self) -> f64 {
        match self.capacity_bytes() {
            0 => 0.0,
            cap => self.live_bytes as f64 / cap as f64,
        }
    }
}

/// What [`BatchStore::compact`] did.
///
/// # Example
///
/// ```
/// # fn main() -> db4_runtime::Result<()> {
/// # let db = db4_runtime::Db::open_in_memory()?;
/// let store = db4_runtime::BatchStore::open(&db, "empty", Default::default())?;
/// let report = store.compact()?;
/// assert_eq!(report.rows_freed(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Rows (blobs) in the store before.
    pub rows_before: u64,
    /// Rows (blobs) in the store after.
    pub rows_after: u64,
    /// Blobs read and replaced by repacked ones.
    pub blobs_rewritten: u64,
    /// Documents moved to a new place.
    pub documents_moved: u64,
    /// Dead bytes dropped.
    pub bytes_reclaimed: u64,
}

impl CompactionReport {
    /// Rows given back: `rows_before - rows_after`.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(db4_runtime::CompactionReport::default().rows_freed(), 0);
    /// ```
    pub fn rows_freed(&self) -> u64 {
        self.rows_before.saturating_sub(self.rows_after)
    }
}

/// Many small documents bin-packed into blobs of bounded size, each readable, replaceable and
/// deletable by its string id (the counterpart of the seed's `createBatchOperations`).
///
/// Documents are any `serde` type, stored as JSON; a store does not fix their type. Each
/// mutating call is atomic. Cheap to clone. Calls go straight to the database, so they cannot
/// be made inside [`Db::transaction`](crate::Db::transaction)'s closure.
///
/// # Example
///
/// ```
/// # fn main() -> db4_runtime::Result<()> {
/// use db4_runtime::{BatchOptions, BatchStore, Db};
///
/// let db = Db::open_in_memory()?;
/// let events = BatchStore::open(&db, "events", BatchOptions::default())?;
/// events.put("e1", &("click", 3))?;
/// events.put_many([("e2", &("scroll", 1)), ("e3", &("click", 9))])?;
/// assert_eq!(events.get::<(String, u32)>("e3")?, Some(("click".to_owned(), 9)));
/// assert!(events.delete("e2")?);
/// assert_eq!(events.ids()?, ["e1", "e3"]);
/// assert_eq!(events.stats()?.rows, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BatchStore {
    db: Db,
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    options: BatchOptions,
    limit: u64,
    sql: Statements,
}

impl fmt::Debug for BatchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchStore").field("name", &self.inner.name).field("options", &self.inner.options).finish()
    }
}

/// A document ready to write: its id and its packed entry.
struct Entry {
    id: String,
    bytes: Vec<u8>,
}

/// Where a stored document lives.
#[derive(Debug, Clone, Copy)]
struct Location {
    blob: i64,
    len: u64,
}

/// Live-data changes to one blob: bytes and documents leaving it.
#[derive(Debug, Default, Clone, Copy)]
struct Release {
    bytes: u64,
    count: u64,
}

impl BatchStore {
    /// Opens the store named `name` in `db`, creating its tables if missing.
    ///
    /// Names follow collection names: 1-64 ASCII letters, digits or `_`, starting with a
    /// letter or `_`, not starting with `_db4` or `sqlite_`. As SQL identifiers they are
    /// case-insensitive: `Events` and `events` open the same store. Options may differ between
    /// opens: blobs larger than a lowered `max_blob_bytes` stay readable.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for a bad name or options, or a backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// use db4_runtime::{BatchOptions, BatchStore, Db, Error};
    ///
    /// let db = Db::open_in_memory()?;
    /// let store = BatchStore::open(&db, "logs", BatchOptions::default().max_blob_bytes(256 * 1024))?;
    /// assert_eq!(store.name(), "logs");
    /// assert!(matches!(BatchStore::open(&db, "no spaces", BatchOptions::default()), Err(Error::InvalidValue { .. })));
    /// # Ok(()) }
    /// ```
    pub fn open(db: &Db, name: &str, options: BatchOptions) -> Result<BatchStore> {
        if !is_valid_name(name) {
            return Err(Error::invalid_value(
                name,
                "name",
                format!(
                    "batch store name {name:?} must be 1-64 ASCII letters, digits or `_`, start with a letter or `_`, and not start with `_db4` or `sqlite_`"
                ),
            ));
        }
        if !(MIN_BLOB_BYTES..=MAX_BLOB_BYTES).contains(&options.max_blob_bytes) {
            return Err(Error::invalid_value(
                name,
                "max_blob_bytes",
                format!("{} is outside {MIN_BLOB_BYTES}..={MAX_BLOB_BYTES} bytes", options.max_blob_bytes),
            ));
        }
        if !(0.0..=1.0).contains(&options.compact_below) {
            return Err(Error::invalid_value(
                name,
                "compact_below",
                format!("{} is not a fraction between 0.0 and 1.0", options.compact_below),
            ));
        }
        let sql = Statements::new(name);
        run(db.backend(), Access::Atomic, |conn| sql.create.iter().try_for_each(|ddl| conn.execute_ddl(ddl)))?;
        let limit = options.max_blob_bytes as u64;
        Ok(BatchStore { db: db.clone(), inner: Arc::new(Inner { name: name.to_owned(), options, limit, sql }) })
    }

    /// The store's name.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "cache", Default::default())?;
    /// assert_eq!(store.name(), "cache");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The options this handle was opened with.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "cache", Default::default())?;
    /// assert_eq!(store.options().max_blob_bytes, db4_runtime::DEFAULT_MAX_BLOB_BYTES);
    /// # Ok(()) }
    /// ```
    pub fn options(&self) -> &BatchOptions {
        &self.inner.options
    }

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
        let entry = self.encode(id, doc)?;
        self.write(vec![entry])
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
        self.write(entries)
    }

    /// Reads the document stored under `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an empty id, [`Error::Serialization`] if the stored JSON
    /// does not deserialize into `T`, a backend error of kind `Corrupt` if the stored bytes
    /// are damaged.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "names", Default::default())?;
    /// store.put("u1", "Ada")?;
    /// assert_eq!(store.get::<String>("u1")?.as_deref(), Some("Ada"));
    /// assert_eq!(store.get::<String>("u2")?, None);
    /// # Ok(()) }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        self.check_id(id)?;
        let mut out = None;
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.inner.sql.get_one, &[Value::Text(id.to_owned())], &mut |row| {
                let doc = self.entry_in_row(row, 0, id)?;
                out = Some(serde_json::from_slice(doc).map_err(|e| self.serialization(id, e))?);
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// Reads many documents in one query. The result is aligned with `ids`: `None` where no
    /// document has that id.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "nums", Default::default())?;
    /// store.put_many([("a", &1), ("c", &3)])?;
    /// assert_eq!(store.get_many::<i32, _>(["a", "b", "c"])?, [Some(1), None, Some(3)]);
    /// # Ok(()) }
    /// ```
    pub fn get_many<T: DeserializeOwned, K: AsRef<str>>(
        &self,
        ids: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<T>>> {
        let ids: Vec<String> = ids.into_iter().map(|id| id.as_ref().to_owned()).collect();
        ids.iter().try_for_each(|id| self.check_id(id))?;
        let mut positions: HashMap<&str, Vec<usize>> = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            positions.entry(id.as_str()).or_default().push(i);
        }
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(ids.len()).collect();
        if ids.is_empty() {
            return Ok(out);
        }
        let list = json_list(positions.keys());
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.inner.sql.get_many, std::slice::from_ref(&list), &mut |row| {
                let id = self.text(row, 0, "document id")?;
                let doc = self.entry_in_row(row, 1, id)?;
                // A repeated id gets its own decoded copy at each position.
                for &pos in positions.get(id).map_or(&[][..], Vec::as_slice) {
                    out[pos] = Some(serde_json::from_slice(doc).map_err(|e| self.serialization(id, e))?);
                }
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// Whether a document is stored under `id`.
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
    /// let store = db4_runtime::BatchStore::open(&db, "flags", Default::default())?;
    /// store.put("on", &true)?;
    /// assert!(store.contains("on")? && !store.contains("off")?);
    /// # Ok(()) }
    /// ```
    pub fn contains(&self, id: &str) -> Result<bool> {
        self.check_id(id)?;
        let mut found = false;
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.inner.sql.contains, &[Value::Text(id.to_owned())], &mut |_| {
                found = true;
                Ok(())
            })
        })?;
        Ok(found)
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
        let ids: BTreeSet<String> = ids.into_iter().map(|id| id.as_ref().to_owned()).collect();
        ids.iter().try_for_each(|id| self.check_id(id))?;
        if ids.is_empty() {
            return Ok(0);
        }
        let list = json_list(ids.iter());
        run(self.db.backend(), Access::Atomic, |conn| {
            let found = self.locate(conn, &list)?;
            if found.is_empty() {
                return Ok(0);
            }
            conn.execute(&self.inner.sql.delete_docs, std::slice::from_ref(&list))?;
            let mut releases: BTreeMap<i64, Release> = BTreeMap::new();
            for loc in found.values() {
                let r = releases.entry(loc.blob).or_default();
                r.bytes += loc.len;
                r.count += 1;
            }
            self.apply_releases(conn, &releases)?;
            Ok(found.len() as u64)
        })
    }

    /// The ids of all stored documents, sorted.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "ids", Default::default())?;
    /// store.put_many([("b", &()), ("a", &())])?;
    /// assert_eq!(store.ids()?, ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.inner.sql.ids, &[], &mut |row| {
                out.push(self.text(row, 0, "document id")?.to_owned());
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// How many documents the store holds.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "count", Default::default())?;
    /// store.put("x", &0)?;
    /// assert_eq!(store.len()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> Result<u64> {
        let mut n = 0;
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.inner.sql.count, &[], &mut |row| {
                n = self.uint(row, 0, "document count")?;
                Ok(())
            })
        })?;
        Ok(n)
    }

    /// Whether the store holds no document.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "count", Default::default())?;
    /// assert!(store.is_empty()?);
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Counts documents, rows and bytes, from the per-blob counters (one query, no payload
    /// read).
    ///
    /// # Errors
    ///
    /// A backend error of kind `Corrupt` if the directory and the blob counters disagree.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "stats", Default::default())?;
    /// store.put("a", &1)?;
    /// store.put("a", &2)?; // the first version becomes dead bytes
    /// let stats = store.stats()?;
    /// assert_eq!(stats.live_bytes, 14);
    /// assert_eq!(stats.dead_bytes, 14);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<BatchStats> {
        let mut out = None;
        run(self.db.backend(), Access::Read, |conn| {
            conn.query(&self.inner.sql.stats, &[int(self.inner.limit)], &mut |row| {
                let documents = self.uint(row, 0, "document count")?;
                let doc_bytes = self.uint(row, 1, "document bytes")?;
                let rows = self.uint(row, 2, "blob count")?;
                let allocated_bytes = self.uint(row, 3, "blob sizes")?;
                let live_bytes = self.uint(row, 4, "live bytes")?;
                let live_count = self.uint(row, 5, "live count")?;
                let free_bytes = self.uint(row, 6, "free bytes")?;
                if documents != live_count || doc_bytes != live_bytes || live_bytes > allocated_bytes {
                    return Err(self.corrupt(format!(
                        "the directory holds {documents} documents of {doc_bytes} bytes but the blobs count {live_count} documents of {live_bytes} bytes in {allocated_bytes} bytes"
                    )));
                }
                out = Some(BatchStats {
                    documents,
                    rows,
                    live_bytes,
                    allocated_bytes,
                    dead_bytes: allocated_bytes - live_bytes,
                    free_bytes,
                    row_limit: self.inner.limit,
                });
                Ok(())
            })
        })?;
        out.ok_or_else(|| self.corrupt("the statistics query returned no row"))
    }

    /// Reads every blob and checks that each entry decodes (lengths, checksum, UTF-8 id),
    /// that each directory row points at an entry with its id, and that the counters match;
    /// returns the statistics so checked.
    ///
    /// # Errors
    ///
    /// A backend error of kind `Corrupt` naming the first inconsistency found.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "checked", Default::default())?;
    /// store.put("a", "text")?;
    /// assert_eq!(store.verify()?, store.stats()?);
    /// # Ok(()) }
    /// ```
    pub fn verify(&self) -> Result<BatchStats> {
        let sql = &self.inner.sql;
        // Atomic: two statements must see the same state, which a WAL reader does not promise.
        run(self.db.backend(), Access::Atomic, |conn| {
            let mut docs: HashMap<i64, Vec<(u64, u64, String)>> = HashMap::new();
            let mut documents = 0u64;
            conn.query(&sql.all_docs, &[], &mut |row| {
                let id = self.text(row, 0, "document id")?.to_owned();
                let blob = self.int(row, 1, "blob id")?;
                let pos = self.uint(row, 2, "entry offset")?;
                let len = self.uint(row, 3, "entry length")?;
                docs.entry(blob).or_default().push((pos, len, id));
                documents += 1;
                Ok(())
            })?;
            let mut stats = BatchStats { documents, row_limit: self.inner.limit, ..BatchStats::default() };
            conn.query(&sql.all_blobs, &[], &mut |row| {
                let blob = self.int(row, 0, "blob id")?;
                let ValueRef::Blob(payload) = row.get(1)? else {
                    return Err(self.corrupt(format!("blob {blob}: the payload is not a BLOB")));
                };
                let used = self.uint(row, 2, "blob size")?;
                let live_bytes = self.uint(row, 3, "live bytes")?;
                let live_count = self.uint(row, 4, "live count")?;
                if used != payload.len() as u64 {
                    return Err(self.corrupt(format!("blob {blob}: {} bytes, recorded as {used}", payload.len())));
                }
                let entries = split_entries(payload).map_err(|e| self.corrupt(format!("blob {blob}: {e}")))?;
                let mine = docs.remove(&blob).unwrap_or_default();
                let (mut bytes, mut count) = (0u64, 0u64);
                for (pos, len, id) in &mine {
                    let at = usize::try_from(*pos).ok().and_then(|p| entries.get(&p));
                    match at {
                        Some((entry_len, entry_id)) if *entry_len as u64 == *len && entry_id == id => {}
                        _ => {
                            return Err(self.corrupt(format!(
                                "document {id:?} points at blob {blob} offset {pos}, where no entry of it starts"
                            )));
                        }
                    }
                    bytes += len;
                    count += 1;
                }
                if bytes != live_bytes || count != live_count || count == 0 {
                    return Err(self.corrupt(format!(
                        "blob {blob}: counters say {live_count} documents of {live_bytes} bytes, the directory {count} of {bytes}"
                    )));
                }
                stats.rows += 1;
                stats.allocated_bytes += used;
                stats.live_bytes += live_bytes;
                stats.free_bytes += self.inner.limit.saturating_sub(used);
                Ok(())
            })?;
            if let Some((blob, list)) = docs.iter().next() {
                let id = list.first().map(|d| d.2.as_str()).unwrap_or_default();
                return Err(self.corrupt(format!("document {id:?} points at missing blob {blob}")));
            }
            stats.dead_bytes = stats.allocated_bytes - stats.live_bytes;
            Ok(stats)
        })
    }

    /// Repacks the blobs whose live documents fill less than
    /// [`BatchOptions::compact_below`] of `max_blob_bytes`, dropping their dead bytes, in one
    /// atomic call. Nothing is rewritten unless it frees a row or reclaims dead bytes; no
    /// document is lost or duplicated.
    ///
    /// The blobs repacked are read into memory together.
    ///
    /// # Errors
    ///
    /// A backend error (kind `Corrupt` if an entry to move is damaged; then nothing changes).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// use db4_runtime::{BatchOptions, BatchStore, Db};
    ///
    /// let db = Db::open_in_memory()?;
    /// let store = BatchStore::open(&db, "packed", BatchOptions::default().max_blob_bytes(64))?;
    /// for id in ["a", "b", "c", "d", "e", "f"] {
    ///     store.put(id, "0123456789")?; // 12 + 1 + 12 = 25 bytes: two per blob
    /// }
    /// store.delete_many(["b", "d"])?;
    /// assert_eq!(store.stats()?.rows, 3);
    /// let report = store.compact()?;
    /// assert_eq!((report.rows_before, report.rows_after), (3, 2));
    /// assert_eq!(store.len()?, 4);
    /// # Ok(()) }
    /// ```
    pub fn compact(&self) -> Result<CompactionReport> {
        let sql = &self.inner.sql;
        let limit = self.inner.limit;
        let threshold = (limit as f64 * self.inner.options.compact_below).ceil() as u64;
        run(self.db.backend(), Access::Atomic, |conn| {
            let rows_before = self.count(conn, &sql.blob_count)?;
            let unchanged = CompactionReport { rows_before, rows_after: rows_before, ..CompactionReport::default() };
            let mut candidates: Vec<(i64, u64, u64, u64)> = Vec::new();
            conn.query(&sql.candidates, &[int(threshold)], &mut |row| {
                let blob = self.int(row, 0, "blob id")?;
                let used = self.uint(row, 1, "blob size")?;
                let live = self.uint(row, 2, "live bytes")?;
                let count = self.uint(row, 3, "live count")?;
                if live > used {
                    return Err(self.corrupt(format!("blob {blob}: {live} live bytes in {used} bytes")));
                }
                candidates.push((blob, used, live, count));
                Ok(())
            })?;
            let live: u64 = candidates.iter().map(|c| c.2).sum();
            let dead: u64 = candidates.iter().map(|c| c.1 - c.2).sum();
            if dead == 0 && candidates.len() as u64 <= live.div_ceil(limit).max(1) {
                return Ok(unchanged);
            }
            let blob_list =
                Value::Text(serde_json::Value::from(candidates.iter().map(|c| c.0).collect::<Vec<_>>()).to_string());
            let mut payloads: HashMap<i64, Vec<u8>> = HashMap::with_capacity(candidates.len());
            conn.query(&sql.payloads, std::slice::from_ref(&blob_list), &mut |row| {
                let blob = self.int(row, 0, "blob id")?;
                let ValueRef::Blob(payload) = row.get(1)? else {
                    return Err(self.corrupt(format!("blob {blob}: the payload is not a BLOB")));
                };
                payloads.insert(blob, payload.to_vec());
                Ok(())
            })?;
            let mut entries: Vec<Entry> = Vec::new();
            let mut seen: HashMap<i64, Release> = HashMap::new();
            conn.query(&sql.docs_in_blobs, std::slice::from_ref(&blob_list), &mut |row| {
                let id = self.text(row, 0, "document id")?;
                let blob = self.int(row, 1, "blob id")?;
                let pos = self.uint(row, 2, "entry offset")?;
                let len = self.uint(row, 3, "entry length")?;
                let payload = payloads.get(&blob).ok_or_else(|| self.corrupt(format!("blob {blob} vanished")))?;
                let bytes = slice_at(payload, pos, len).ok_or_else(|| {
                    self.corrupt(format!(
                        "document {id:?}: {len} bytes at offset {pos} run past the end of blob {blob}"
                    ))
                })?;
                self.check_entry(bytes, id)?;
                let r = seen.entry(blob).or_default();
                r.bytes += len;
                r.count += 1;
                entries.push(Entry { id: id.to_owned(), bytes: bytes.to_vec() });
                Ok(())
            })?;
            for &(blob, _, live, count) in &candidates {
                let r = seen.get(&blob).copied().unwrap_or_default();
                if (r.bytes, r.count) != (live, count) {
                    return Err(self.corrupt(format!(
                        "blob {blob}: counters say {count} documents of {live} bytes, the directory {} of {}",
                        r.count, r.bytes
                    )));
                }
            }
            entries.sort_by(|a, b| b.bytes.len().cmp(&a.bytes.len()).then_with(|| a.id.cmp(&b.id)));
            let mut packer = Packer::new(limit, self.next_blob_id(conn)?);
            let placed: Vec<(i64, u64)> = entries.iter().map(|e| packer.place(&e.bytes)).collect();
            let new_rows = packer.bins.len();
            if new_rows > candidates.len() || (new_rows == candidates.len() && dead == 0) {
                return Ok(unchanged);
            }
            for &(blob, ..) in &candidates {
                conn.execute(&sql.delete_blob, &[Value::Integer(blob)])?;
            }
            for bin in packer.bins {
                self.insert_bin(conn, bin)?;
            }
            for (entry, (blob, pos)) in entries.iter().zip(placed) {
                conn.execute(&sql.move_doc, &[Value::Text(entry.id.clone()), Value::Integer(blob), int(pos)])?;
            }
            Ok(CompactionReport {
                rows_before,
                rows_after: rows_before - candidates.len() as u64 + new_rows as u64,
                blobs_rewritten: candidates.len() as u64,
                documents_moved: entries.len() as u64,
                bytes_reclaimed: dead,
            })
        })
    }

    // ---- writing ----

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
        let list = json_list(entries.iter().map(|e| &e.id));
        run(self.db.backend(), Access::Atomic, |conn| {
            let old = self.locate(conn, &list)?;
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
                self.insert_bin(conn, bin)?;
            }
            for bin in existing {
                let r = releases.remove(&bin.blob).unwrap_or_default();
                let changed = conn.execute(
                    &sql.append,
                    &[
                        Value::Integer(bin.blob),
                        Value::Blob(bin.append),
                        int(bin.used - bin.base),
                        Value::Integer(signed(bin.used - bin.base) - signed(r.bytes)),
                        Value::Integer(signed(bin.added_count) - signed(r.count)),
                        int(bin.base),
                    ],
                )?;
                // Zero means the guard failed; a Durable Object may count index writes too, so not `!= 1`.
                if changed == 0 {
                    return Err(
                        self.corrupt(format!("blob {}: its size or counters disagree with its payload", bin.blob))
                    );
                }
            }
            self.apply_releases(conn, &releases)?;
            for (entry, (blob, pos)) in entries.iter().zip(placed) {
                conn.execute(
                    &sql.upsert_doc,
                    &[Value::Text(entry.id.clone()), Value::Integer(blob), int(pos), int(entry.bytes.len() as u64)],
                )?;
            }
            Ok(())
        })
    }

    fn insert_bin(&self, conn: &dyn Connection, bin: Bin) -> Result<()> {
        conn.execute(
            &self.inner.sql.insert_blob,
            &[Value::Integer(bin.blob), int(bin.used), Value::Blob(bin.append), int(bin.added_count)],
        )
        .map(drop)
    }

    /// Takes released documents off their blobs' counters and drops blobs left empty.
    fn apply_releases(&self, conn: &dyn Connection, releases: &BTreeMap<i64, Release>) -> Result<()> {
        for (&blob, r) in releases {
            let params = [Value::Integer(blob), Value::Integer(-signed(r.bytes)), Value::Integer(-signed(r.count))];
            if conn.execute(&self.inner.sql.release, &params)? == 0 {
                return Err(self.corrupt(format!("blob {blob}: missing, or its counters are below what it holds")));
            }
            conn.execute(&self.inner.sql.drop_empty, &[Value::Integer(blob)])?;
        }
        Ok(())
    }

    /// Where the documents with the ids in the JSON array `list` are stored.
    fn locate(&self, conn: &dyn Connection, list: &Value) -> Result<HashMap<String, Location>> {
        let mut out = HashMap::new();
        conn.query(&self.inner.sql.locate, std::slice::from_ref(list), &mut |row| {
            let id = self.text(row, 0, "document id")?.to_owned();
            let blob = self.int(row, 1, "blob id")?;
            let len = self.uint(row, 2, "entry length")?;
            out.insert(id, Location { blob, len });
            Ok(())
        })?;
        Ok(out)
    }

    fn next_blob_id(&self, conn: &dyn Connection) -> Result<i64> {
        let mut next = 1;
        conn.query(&self.inner.sql.next_blob_id, &[], &mut |row| {
            next = self.int(row, 0, "next blob id")?;
            Ok(())
        })?;
        Ok(next)
    }

    fn count(&self, conn: &dyn Connection, sql: &str) -> Result<u64> {
        let mut n = 0;
        conn.query(sql, &[], &mut |row| {
            n = self.uint(row, 0, "count")?;
            Ok(())
        })?;
        Ok(n)
    }

    // ---- reading rows ----

    /// The JSON of the entry in a row of `blob, pos, len, substr(payload)` starting at column
    /// `at`, checked to be `id`'s.
    fn entry_in_row<'r>(&self, row: &'r dyn Row, at: usize, id: &str) -> Result<&'r [u8]> {
        let blob = self.int(row, at, "blob id")?;
        let pos = self.uint(row, at + 1, "entry offset")?;
        let len = self.uint(row, at + 2, "entry length")?;
        let bytes = match row.get(at + 3)? {
            ValueRef::Blob(b) => b,
            ValueRef::Null => return Err(self.corrupt(format!("document {id:?} points at missing blob {blob}"))),
            other => {
                return Err(self.corrupt(format!("blob {blob}: the payload is {}, not a BLOB", other.type_name())));
            }
        };
        if bytes.len() as u64 != len {
            return Err(
                self.corrupt(format!("document {id:?}: {len} bytes at offset {pos} run past the end of blob {blob}"))
            );
        }
        self.check_entry(bytes, id)
    }

    /// Decodes one packed entry and checks that it is `id`'s; returns its JSON.
    fn check_entry<'b>(&self, bytes: &'b [u8], id: &str) -> Result<&'b [u8]> {
        let (stored, doc) = decode_entry(bytes).map_err(|e| self.corrupt(format!("document {id:?}: {e}")))?;
        if stored != id {
            return Err(self.corrupt(format!("the entry of document {id:?} holds document {stored:?}")));
        }
        Ok(doc)
    }

    fn int(&self, row: &dyn Row, index: usize, what: &str) -> Result<i64> {
        match row.get(index)? {
            ValueRef::Integer(v) => Ok(v),
            other => Err(self.corrupt(format!("{what} is {}, not an INTEGER", other.type_name()))),
        }
    }

    fn uint(&self, row: &dyn Row, index: usize, what: &str) -> Result<u64> {
        let v = self.int(row, index, what)?;
        u64::try_from(v).map_err(|_| self.corrupt(format!("{what} is negative ({v})")))
    }

    fn text<'r>(&self, row: &'r dyn Row, index: usize, what: &str) -> Result<&'r str> {
        match row.get(index)? {
            ValueRef::Text(s) => Ok(s),
            other => Err(self.corrupt(format!("{what} is {}, not TEXT", other.type_name()))),
        }
    }

    // ---- errors ----

    fn check_id(&self, id: &str) -> Result<()> {
        if id.is_empty() {
            return Err(Error::invalid_value(&self.inner.name, "id", "a document id must not be empty"));
        }
        Ok(())
    }

    fn serialization(&self, id: &str, e: serde_json::Error) -> Error {
        Error::serialization(&self.inner.name, Some(id.to_owned()), e)
    }

    fn corrupt(&self, what: impl fmt::Display) -> Error {
        BackendError::new(BackendErrorKind::Corrupt, format!("batch store `{}`: {what}", self.inner.name)).into()
    }
}

/// A blob being filled: an existing one that may receive appends, or a fresh one.
struct Bin {
    blob: i64,
    /// Size before this call.
    base: u64,
    /// Size after the planned appends.
    used: u64,
    fresh: bool,
    append: Vec<u8>,
    added_count: u64,
}

/// Best-fit placement of entries into blobs of at most `limit` bytes.
struct Packer {
    limit: u64,
    next_id: i64,
    bins: Vec<Bin>,
    /// Bins that can still take something, by size.
    open: BTreeSet<(u64, usize)>,
}

impl Packer {
    fn new(limit: u64, next_id: i64) -> Self {
        Self { limit, next_id, bins: Vec::new(), open: BTreeSet::new() }
    }

    fn add_existing(&mut self, blob: i64, used: u64) {
        self.open.insert((used, self.bins.len()));
        self.bins.push(Bin { blob, base: used, used, fresh: false, append: Vec::new(), added_count: 0 });
    }

    /// Appends `entry` to the fullest bin it fits in, or to a new bin; returns the bin's blob
    /// id and the entry's offset. An entry above the limit (stored under a larger earlier
    /// limit) gets a bin of its own.
    fn place(&mut self, entry: &[u8]) -> (i64, u64) {
        let len = entry.len() as u64;
        let fit =
            self.limit.checked_sub(len).and_then(|room| self.open.range(..=(room, usize::MAX)).next_back().copied());
        let index = match fit {
            Some(key) => {
                self.open.remove(&key);
                key.1
            }
            None => {
                self.bins.push(Bin {
                    blob: self.next_id,
                    base: 0,
                    used: 0,
                    fresh: true,
                    append: Vec::new(),
                    added_count: 0,
                });
                self.next_id += 1;
                self.bins.len() - 1
            }
        };
        let bin = &mut self.bins[index];
        let pos = bin.used;
        bin.used += len;
        bin.append.extend_from_slice(entry);
        bin.added_count += 1;
        if bin.used < self.limit {
            self.open.insert((bin.used, index));
        }
        (bin.blob, pos)
    }
}

/// The SQL of one store, built once from its validated name.
struct Statements {
    create: [String; 4],
    get_one: String,
    get_many: String,
    contains: String,
    locate: String,
    best_fit: String,
    fitting: String,
    next_blob_id: String,
    insert_blob: String,
    append: String,
    release: String,
    drop_empty: String,
    upsert_doc: String,
    delete_docs: String,
    ids: String,
    count: String,
    blob_count: String,
    stats: String,
    candidates: String,
    payloads: String,
    docs_in_blobs: String,
    delete_blob: String,
    move_doc: String,
    all_docs: String,
    all_blobs: String,
}

impl Statements {
    fn new(name: &str) -> Self {
        // Distinct suffixes keep every store's names apart, and the `_db4` prefix keeps them
        // apart from collections.
        let b = quote_ident(&format!("_db4_batch_{name}_blobs"));
        let d = quote_ident(&format!("_db4_batch_{name}_docs"));
        let b_used = quote_ident(&format!("_db4_batch_{name}_blobs_used"));
        let d_blob = quote_ident(&format!("_db4_batch_{name}_docs_blob"));
        let entry = r#"d."blob", d."pos", d."len", substr(b."payload", d."pos" + 1, d."len")"#;
        Self {
            create: [
                format!(
                    r#"CREATE TABLE IF NOT EXISTS {b} ("id" INTEGER PRIMARY KEY, "payload" BLOB NOT NULL, "used" INTEGER NOT NULL, "live_bytes" INTEGER NOT NULL, "live_count" INTEGER NOT NULL)"#
                ),
                format!(r#"CREATE INDEX IF NOT EXISTS {b_used} ON {b} ("used")"#),
                format!(
                    r#"CREATE TABLE IF NOT EXISTS {d} ("id" TEXT PRIMARY KEY NOT NULL, "blob" INTEGER NOT NULL, "pos" INTEGER NOT NULL, "len" INTEGER NOT NULL) WITHOUT ROWID"#
                ),
                format!(r#"CREATE INDEX IF NOT EXISTS {d_blob} ON {d} ("blob")"#),
            ],
            get_one: format!(
                r#"SELECT {entry} FROM {d} AS d LEFT JOIN {b} AS b ON b."id" = d."blob" WHERE d."id" = ?1"#
            ),
            get_many: format!(
                r#"SELECT d."id", {entry} FROM {d} AS d LEFT JOIN {b} AS b ON b."id" = d."blob" WHERE d."id" IN (SELECT "value" FROM json_each(?1))"#
            ),
            contains: format!(r#"SELECT 1 FROM {d} WHERE "id" = ?1"#),
            locate: format!(r#"SELECT "id", "blob", "len" FROM {d} WHERE "id" IN (SELECT "value" FROM json_each(?1))"#),
            best_fit: format!(r#"SELECT "id", "used" FROM {b} WHERE "used" <= ?1 ORDER BY "used" DESC, "id" LIMIT 1"#),
            fitting: format!(r#"SELECT "id", "used" FROM {b} WHERE "used" <= ?1 ORDER BY "id""#),
            next_blob_id: format!(r#"SELECT coalesce(max("id"), 0) + 1 FROM {b}"#),
            insert_blob: format!(
                r#"INSERT INTO {b} ("id", "used", "live_bytes", "payload", "live_count") VALUES (?1, ?2, ?2, ?3, ?4)"#
            ),
            // `||` yields TEXT; the CAST keeps the bytes and makes them a BLOB again.
            append: format!(
                r#"UPDATE {b} SET "payload" = CAST("payload" || ?2 AS BLOB), "used" = "used" + ?3, "live_bytes" = "live_bytes" + ?4, "live_count" = "live_count" + ?5 WHERE "id" = ?1 AND "used" = ?6 AND typeof("payload") = 'blob' AND length("payload") = ?6 AND "live_bytes" + ?4 >= 0 AND "live_count" + ?5 >= 0"#
            ),
            release: format!(
                r#"UPDATE {b} SET "live_bytes" = "live_bytes" + ?2, "live_count" = "live_count" + ?3 WHERE "id" = ?1 AND "live_bytes" + ?2 >= 0 AND "live_count" + ?3 >= 0"#
            ),
            drop_empty: format!(r#"DELETE FROM {b} WHERE "id" = ?1 AND "live_count" = 0"#),
            upsert_doc: format!(
                r#"INSERT INTO {d} ("id", "blob", "pos", "len") VALUES (?1, ?2, ?3, ?4) ON CONFLICT ("id") DO UPDATE SET "blob" = excluded."blob", "pos" = excluded."pos", "len" = excluded."len""#
            ),
            delete_docs: format!(r#"DELETE FROM {d} WHERE "id" IN (SELECT "value" FROM json_each(?1))"#),
            ids: format!(r#"SELECT "id" FROM {d} ORDER BY "id""#),
            count: format!(r#"SELECT count(*) FROM {d}"#),
            blob_count: format!(r#"SELECT count(*) FROM {b}"#),
            // One statement, so one snapshot even on a WAL reader.
            stats: format!(
                r#"SELECT (SELECT count(*) FROM {d}), (SELECT coalesce(sum("len"), 0) FROM {d}), count(*), coalesce(sum("used"), 0), coalesce(sum("live_bytes"), 0), coalesce(sum("live_count"), 0), coalesce(sum(max(?1 - "used", 0)), 0) FROM {b}"#
            ),
            candidates: format!(
                r#"SELECT "id", "used", "live_bytes", "live_count" FROM {b} WHERE "live_bytes" < ?1 ORDER BY "id""#
            ),
            payloads: format!(r#"SELECT "id", "payload" FROM {b} WHERE "id" IN (SELECT "value" FROM json_each(?1))"#),
            docs_in_blobs: format!(
                r#"SELECT "id", "blob", "pos", "len" FROM {d} WHERE "blob" IN (SELECT "value" FROM json_each(?1))"#
            ),
            delete_blob: format!(r#"DELETE FROM {b} WHERE "id" = ?1"#),
            move_doc: format!(r#"UPDATE {d} SET "blob" = ?2, "pos" = ?3 WHERE "id" = ?1"#),
            all_docs: format!(r#"SELECT "id", "blob", "pos", "len" FROM {d}"#),
            all_blobs: format!(r#"SELECT "id", "payload", "used", "live_bytes", "live_count" FROM {b} ORDER BY "id""#),
        }
    }
}

// ---- the packed entry format ----

fn encode_entry(id: &[u8], doc: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_ENTRY_OVERHEAD + id.len() + doc.len());
    // Both lengths are below the blob limit, itself far below u32::MAX.
    out.extend_from_slice(&(id.len() as u32).to_le_bytes());
    out.extend_from_slice(&(doc.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&[id, doc]).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(doc);
    out
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// The length of the entry starting at `bytes[0]`, checked to fit in `bytes`.
fn entry_extent(bytes: &[u8]) -> Result<(usize, usize), String> {
    let (Some(id_len), Some(doc_len)) = (read_u32(bytes, 0), read_u32(bytes, 4)) else {
        return Err(format!("truncated entry header ({} bytes)", bytes.len()));
    };
    let (id_len, doc_len) = (id_len as usize, doc_len as usize);
    match BATCH_ENTRY_OVERHEAD.checked_add(id_len).and_then(|n| n.checked_add(doc_len)) {
        Some(total) if total <= bytes.len() => Ok((total, id_len)),
        _ => Err(format!(
            "entry of {id_len} id bytes and {doc_len} document bytes runs past the {} bytes left",
            bytes.len()
        )),
    }
}

/// Decodes exactly one entry: its id and its JSON, after checking lengths and checksum.
fn decode_entry(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    let (total, id_len) = entry_extent(bytes)?;
    if total != bytes.len() {
        return Err(format!("entry is {total} bytes, its slot {}", bytes.len()));
    }
    let crc = read_u32(bytes, 8).ok_or("truncated entry header")?;
    let id = &bytes[BATCH_ENTRY_OVERHEAD..BATCH_ENTRY_OVERHEAD + id_len];
    let doc = &bytes[BATCH_ENTRY_OVERHEAD + id_len..];
    if crc32(&[id, doc]) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let id = std::str::from_utf8(id).map_err(|e| format!("id is not UTF-8: {e}"))?;
    Ok((id, doc))
}

/// Every entry of a payload, live or dead, by offset: (length, id).
fn split_entries(payload: &[u8]) -> Result<HashMap<usize, (usize, String)>, String> {
    let mut out = HashMap::new();
    let mut pos = 0;
    while pos < payload.len() {
        let rest = &payload[pos..];
        let (total, _) = entry_extent(rest).map_err(|e| format!("offset {pos}: {e}"))?;
        let (id, _) = decode_entry(&rest[..total]).map_err(|e| format!("offset {pos}: {e}"))?;
        out.insert(pos, (total, id.to_owned()));
        pos += total;
    }
    Ok(out)
}

fn slice_at(bytes: &[u8], pos: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(pos).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

// ---- small conversions ----

fn int(v: u64) -> Value {
    Value::Integer(signed(v))
}

/// Sizes and counts here are bounded by the blob limit times the row count, far below i64::MAX.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A JSON array of strings, bound as one parameter and read back with `json_each`.
fn json_list<S: AsRef<str>>(items: impl Iterator<Item = S>) -> Value {
    Value::Text(serde_json::Value::from(items.map(|s| s.as_ref().to_owned()).collect::<Vec<_>>()).to_string())
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Doc {
        n: u64,
        text: String,
    }

    /// splitmix64: small, deterministic, good enough to drive operations.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn id(&mut self, pool: u64) -> String {
            format!("doc-{}", self.below(pool))
        }
        fn doc(&mut self, max_text: u64) -> Doc {
            let len = self.below(max_text + 1) as usize;
            let text: String = (0..len).map(|i| char::from(b'a' + ((i as u64 + self.0) % 26) as u8)).collect();
            Doc { n: self.next() >> 12, text }
        }
    }

    fn entry_size(id: &str, doc: &impl Serialize) -> u64 {
        (BATCH_ENTRY_OVERHEAD + id.len() + serde_json::to_vec(doc).unwrap().len()) as u64
    }

    fn options(limit: usize) -> BatchOptions {
        BatchOptions::default().max_blob_bytes(limit).compact_below(1.0)
    }

    fn is_corrupt<T: fmt::Debug>(r: Result<T>) -> bool {
        match r {
            Err(e) => e.backend_kind() == Some(BackendErrorKind::Corrupt),
            Ok(v) => panic!("expected a Corrupt error, got Ok({v:?})"),
        }
    }

    /// Checks everything observable against the model.
    fn check(store: &BatchStore, model: &BTreeMap<String, Doc>) -> Result<()> {
        assert_eq!(store.ids()?, model.keys().cloned().collect::<Vec<_>>());
        assert_eq!(store.len()?, model.len() as u64);
        let got: Vec<Option<Doc>> = store.get_many(model.keys())?;
        assert_eq!(got, model.values().cloned().map(Some).collect::<Vec<_>>());
        let stats = store.verify()?;
        assert_eq!(stats, store.stats()?);
        assert_eq!(stats.documents, model.len() as u64);
        assert_eq!(stats.live_bytes, model.iter().map(|(id, d)| entry_size(id, d)).sum::<u64>());
        assert_eq!(stats.allocated_bytes, stats.live_bytes + stats.dead_bytes);
        Ok(())
    }

    /// Runs `steps` random operations against `store` and `model`, checking as it goes.
    fn random_ops(store: &BatchStore, model: &mut BTreeMap<String, Doc>, rng: &mut Rng, steps: usize) -> Result<()> {
        const POOL: u64 = 40;
        let limit = store.options().max_blob_bytes as u64;
        for step in 0..steps {
            match rng.below(100) {
                0..45 => {
                    let id = rng.id(POOL);
                    let max_text = if rng.below(20) == 0 { 400 } else { 120 };
                    let doc = rng.doc(max_text);
                    if entry_size(&id, &doc) > limit {
                        let before = store.stats()?;
                        assert!(matches!(store.put(&id, &doc), Err(Error::TooLarge { .. })));
                        assert_eq!(store.stats()?, before);
                    } else {
                        store.put(&id, &doc)?;
                        model.insert(id, doc);
                    }
                }
                45..60 => {
                    let n = rng.below(7);
                    let batch: Vec<(String, Doc)> = (0..n).map(|_| (rng.id(POOL), rng.doc(100))).collect();
                    let oversized = rng.below(8) == 0;
                    let mut batch = batch;
                    if oversized {
                        let at = rng.below(n + 1) as usize;
                        batch.insert(at, (rng.id(POOL), Doc { n: 0, text: "x".repeat(limit as usize) }));
                    }
                    let result = store.put_many(batch.iter().map(|(id, d)| (id, d)));
                    if oversized {
                        assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}");
                    } else {
                        result?;
                        model.extend(batch);
                    }
                }
                60..78 => {
                    let id = rng.id(POOL);
                    assert_eq!(store.delete(&id)?, model.remove(&id).is_some(), "delete {id}");
                }
                78..84 => {
                    let ids: Vec<String> = (0..rng.below(5)).map(|_| rng.id(POOL)).collect();
                    let expected =
                        ids.iter().collect::<BTreeSet<_>>().iter().filter(|id| model.contains_key(**id)).count();
                    assert_eq!(store.delete_many(&ids)?, expected as u64);
                    for id in &ids {
                        model.remove(id);
                    }
                }
                84..92 => {
                    let id = rng.id(POOL);
                    assert_eq!(store.get::<Doc>(&id)?.as_ref(), model.get(&id));
                    assert_eq!(store.contains(&id)?, model.contains_key(&id));
                }
                92..96 => {
                    let before = store.stats()?;
                    let report = store.compact()?;
                    let after = store.stats()?;
                    assert!(report.rows_after <= report.rows_before, "{report:?}");
                    assert_eq!((report.rows_before, report.rows_after), (before.rows, after.rows));
                    assert_eq!(after.live_bytes, before.live_bytes);
                    assert_eq!(after.dead_bytes + report.bytes_reclaimed, before.dead_bytes);
                    check(store, model)?;
                }
                _ => check(store, model)?,
            }
            if step % 50 == 0 {
                check(store, model)?;
            }
        }
        check(store, model)
    }

    #[test]
    fn random_operations_match_a_btreemap_model() -> Result<()> {
        for seed in 1..=4 {
            let db = Db::open_in_memory()?;
            let store = BatchStore::open(&db, "model", options(256))?;
            let mut model = BTreeMap::new();
            random_ops(&store, &mut model, &mut Rng(seed), 400)?;
            store.compact()?;
            check(&store, &model)?;
        }
        Ok(())
    }

    #[test]
    fn default_threshold_and_larger_blobs_match_the_model() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "model", BatchOptions::default().max_blob_bytes(1024))?;
        let mut model = BTreeMap::new();
        random_ops(&store, &mut model, &mut Rng(99), 500)
    }

    #[test]
    fn survives_reopening_a_file_database() -> Result<()> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("db4-batch-{}-{nanos}.db", std::process::id()));
        let open = || -> Result<(Db, BatchStore)> {
            let db = Db::open_with(&path, crate::DbOptions::default().synchronous(crate::Synchronous::Normal))?;
            let store = BatchStore::open(&db, "persist", options(300))?;
            Ok((db, store))
        };
        let result = (|| -> Result<()> {
            let mut model = BTreeMap::new();
            let mut rng = Rng(7);
            {
                let (_db, store) = open()?;
                random_ops(&store, &mut model, &mut rng, 300)?;
            }
            {
                let (_db, store) = open()?;
                check(&store, &model)?;
                store.compact()?;
                random_ops(&store, &mut model, &mut rng, 100)?;
            }
            let (_db, store) = open()?;
            check(&store, &model)
        })();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            std::fs::remove_file(p).ok();
        }
        result
    }

    #[test]
    fn stats_are_exact() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "exact", options(64))?;
        let empty = BatchStats { row_limit: 64, ..BatchStats::default() };
        assert_eq!(store.stats()?, empty);
        // "\"xxxx\"" is 6 bytes: 12 + 1 + 6 = 19 per entry; three fit in 64.
        for id in ["a", "b", "c", "d"] {
            store.put(id, "xxxx")?;
        }
        let stats = BatchStats {
            documents: 4,
            rows: 2,
            live_bytes: 76,
            allocated_bytes: 76,
            dead_bytes: 0,
            free_bytes: (64 - 57) + (64 - 19),
            row_limit: 64,
        };
        assert_eq!(store.stats()?, stats);
        assert_eq!(store.verify()?, stats);
        assert_eq!(stats.capacity_bytes(), 128);
        assert_eq!(stats.fill_ratio(), 76.0 / 128.0);
        // 17 bytes: no room in the first blob (7 left), so best fit is the second.
        store.put("a", "xx")?;
        let stats = BatchStats { live_bytes: 74, allocated_bytes: 93, dead_bytes: 19, free_bytes: 7 + 28, ..stats };
        assert_eq!(store.stats()?, stats);
        assert!(store.delete("b")?);
        let stats = BatchStats { documents: 3, live_bytes: 55, dead_bytes: 38, ..stats };
        assert_eq!(store.verify()?, stats);
        let report = store.compact()?;
        assert_eq!(
            report,
            CompactionReport {
                rows_before: 2,
                rows_after: 1,
                blobs_rewritten: 2,
                documents_moved: 3,
                bytes_reclaimed: 38
            }
        );
        assert_eq!(report.rows_freed(), 1);
        let stats = BatchStats {
            documents: 3,
            rows: 1,
            live_bytes: 55,
            allocated_bytes: 55,
            dead_bytes: 0,
            free_bytes: 9,
            row_limit: 64,
        };
        assert_eq!(store.verify()?, stats);
        // Nothing left to gain: a second compaction changes nothing.
        assert_eq!(store.compact()?, CompactionReport { rows_before: 1, rows_after: 1, ..CompactionReport::default() });
        assert_eq!(store.get::<String>("a")?.as_deref(), Some("xx"));
        assert_eq!(store.delete_many(["a", "c", "d"])?, 3);
        assert_eq!(store.verify()?, empty);
        Ok(())
    }

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
    fn bad_input_gets_specific_errors() -> Result<()> {
        let db = Db::open_in_memory()?;
        let long = "n".repeat(65);
        for name in ["", "1abc", "a-b", "a b", "_db4x", "sqlite_x", "Sqlite_master", long.as_str(), "x\"y", "é"] {
            assert!(
                matches!(BatchStore::open(&db, name, BatchOptions::default()), Err(Error::InvalidValue { .. })),
                "{name:?}"
            );
        }
        for bad in [BatchOptions::default().max_blob_bytes(63), BatchOptions::default().max_blob_bytes(1 << 30)] {
            assert!(matches!(BatchStore::open(&db, "ok", bad), Err(Error::InvalidValue { .. })));
        }
        for ratio in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            let bad = BatchOptions::default().compact_below(ratio);
            assert!(matches!(BatchStore::open(&db, "ok", bad), Err(Error::InvalidValue { .. })), "{ratio}");
        }
        let store = BatchStore::open(&db, "_ok", BatchOptions::default())?;
        assert!(matches!(store.put("", &1), Err(Error::InvalidValue { .. })));
        assert!(matches!(store.put_many([("a", &1), ("", &2)]), Err(Error::InvalidValue { .. })));
        assert!(matches!(store.get::<i32>(""), Err(Error::InvalidValue { .. })));
        assert!(matches!(store.get_many::<i32, _>(["a", ""]), Err(Error::InvalidValue { .. })));
        assert!(matches!(store.delete(""), Err(Error::InvalidValue { .. })));
        assert!(matches!(store.contains(""), Err(Error::InvalidValue { .. })));
        assert!(store.is_empty()?);

        // A map with non-string keys does not serialize to JSON.
        let unserializable: HashMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        assert!(matches!(store.put("m", &unserializable), Err(Error::Serialization { .. })));
        store.put("s", "text")?;
        match store.get::<u64>("s") {
            Err(Error::Serialization { collection, id, .. }) => {
                assert_eq!((collection.as_str(), id.as_deref()), ("_ok", Some("s")))
            }
            other => panic!("expected Serialization, got {other:?}"),
        }
        assert!(matches!(store.get_many::<u64, _>(["s"]), Err(Error::Serialization { .. })));
        Ok(())
    }

    #[test]
    fn stores_are_independent_and_names_case_insensitive() -> Result<()> {
        let db = Db::open_in_memory()?;
        let a = BatchStore::open(&db, "a", BatchOptions::default())?;
        let a_blobs = BatchStore::open(&db, "a_blobs", BatchOptions::default())?;
        a.put("x", &1)?;
        a_blobs.put("x", &2)?;
        assert_eq!((a.get::<i32>("x")?, a_blobs.get::<i32>("x")?), (Some(1), Some(2)));
        assert!(a.delete("x")?);
        assert_eq!(a_blobs.get::<i32>("x")?, Some(2));
        let upper = BatchStore::open(&db, "A_BLOBS", BatchOptions::default())?;
        assert_eq!(upper.get::<i32>("x")?, Some(2));
        Ok(())
    }

    #[test]
    fn get_many_is_aligned_and_repeats_ids() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "many", BatchOptions::default())?;
        store.put_many([("a", &1), ("b", &2), ("a", &3)])?;
        assert_eq!(store.get::<i32>("a")?, Some(3));
        assert_eq!(store.get_many::<i32, _>(["b", "zz", "a", "b"])?, [Some(2), None, Some(3), Some(2)]);
        assert_eq!(store.get_many::<i32, &str>([])?, Vec::<Option<i32>>::new());
        // The repeated id in put_many cost no dead bytes.
        assert_eq!(store.stats()?.dead_bytes, 0);
        store.put_many(std::iter::empty::<(&str, &i32)>())?;
        assert_eq!(store.delete_many(["a", "a"])?, 1);
        Ok(())
    }

    #[test]
    fn compaction_frees_rows_and_keeps_every_document() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "frag", options(200))?;
        let mut model = BTreeMap::new();
        let mut rng = Rng(42);
        for i in 0..120 {
            let doc = rng.doc(40);
            model.insert(format!("d{i:03}"), doc);
        }
        store.put_many(model.iter())?;
        let full = store.verify()?;
        // Delete two thirds, scattered over every blob.
        for i in (0..120).filter(|i| i % 3 != 0) {
            let id = format!("d{i:03}");
            assert!(store.delete(&id)?);
            model.remove(&id);
        }
        let before = store.verify()?;
        assert!(before.dead_bytes > 0 && before.rows <= full.rows, "{before:?}");
        let report = store.compact()?;
        let after = store.verify()?;
        assert!(after.rows < before.rows && after.dead_bytes == 0, "{report:?} {after:?}");
        assert_eq!(report.rows_after, after.rows);
        // A blob exactly full of kept documents is not a candidate.
        assert!(report.documents_moved > 0 && report.documents_moved <= 40, "{report:?}");
        check(&store, &model)?;
        Ok(())
    }

    #[test]
    fn a_lowered_limit_keeps_old_blobs_readable_and_compactable() -> Result<()> {
        let db = Db::open_in_memory()?;
        let wide = BatchStore::open(&db, "shrink", options(1024))?;
        let mut model = BTreeMap::new();
        for i in 0..20u64 {
            let doc = Doc { n: i, text: "z".repeat(if i % 5 == 0 { 100 } else { 10 }) };
            model.insert(format!("k{i:02}"), doc);
        }
        wide.put_many(model.iter())?;
        let narrow = BatchStore::open(&db, "shrink", options(96))?;
        check(&narrow, &model)?;
        for i in 0..20u64 {
            if i % 2 == 1 {
                let doc = Doc { n: i * 10, text: "w".repeat(5) };
                narrow.put(&format!("k{i:02}"), &doc)?;
                model.insert(format!("k{i:02}"), doc);
            }
        }
        check(&narrow, &model)?;
        narrow.compact()?;
        check(&narrow, &model)?;
        Ok(())
    }

    /// Runs one raw statement through the connection, as a damaged file or a stray writer
    /// would.
    fn raw(db: &Db, sql: &str, params: &[Value]) -> Result<usize> {
        run(db.backend(), Access::Write, |conn| conn.execute(sql, params))
    }

    fn payload(db: &Db, blobs: &str, blob: i64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        run(db.backend(), Access::Read, |conn| {
            conn.query(
                &format!(r#"SELECT "payload" FROM {blobs} WHERE "id" = ?1"#),
                &[Value::Integer(blob)],
                &mut |row| {
                    if let ValueRef::Blob(b) = row.get(0)? {
                        out = b.to_vec();
                    }
                    Ok(())
                },
            )
        })?;
        Ok(out)
    }

    #[test]
    fn damaged_rows_give_clean_corrupt_errors() -> Result<()> {
        let blobs = quote_ident("_db4_batch_hurt_blobs");
        let docs = quote_ident("_db4_batch_hurt_docs");
        let setup = || -> Result<(Db, BatchStore)> {
            let db = Db::open_in_memory()?;
            let store = BatchStore::open(&db, "hurt", options(256))?;
            // a: 20 bytes at 0, b: 21 bytes at 20, then c's 20 dead bytes at 41.
            store.put("a", "first")?;
            store.put("b", "second")?;
            store.put("c", "third")?;
            store.delete("c")?;
            Ok((db, store))
        };
        let set_payload =
            |db: &Db, bytes: Vec<u8>| raw(db, &format!(r#"UPDATE {blobs} SET "payload" = ?1"#), &[Value::Blob(bytes)]);

        // A flipped bit inside a document: the checksum catches it.
        let (db, store) = setup()?;
        let mut bytes = payload(&db, &blobs, 1)?;
        assert_eq!(bytes.len(), 61);
        bytes[38] ^= 0x01;
        set_payload(&db, bytes)?;
        assert!(is_corrupt(store.get::<String>("b")));
        assert_eq!(store.get::<String>("a")?.as_deref(), Some("first"));
        assert!(is_corrupt(store.get_many::<String, _>(["a", "b"])));
        assert!(is_corrupt(store.verify()));
        assert!(is_corrupt(store.compact()));

        // A truncated payload: the slice comes back short, appends refuse the blob.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {blobs} SET "payload" = substr("payload", 1, 30)"#), &[])?;
        assert!(is_corrupt(store.get::<String>("b")));
        assert!(is_corrupt(store.put("c", "third")));
        assert_eq!(store.ids()?, ["a", "b"]);
        assert!(is_corrupt(store.verify()));

        // Header lengths pointing far past the end.
        let (db, store) = setup()?;
        let mut bytes = payload(&db, &blobs, 1)?;
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        set_payload(&db, bytes)?;
        assert!(is_corrupt(store.get::<String>("a")));
        assert!(is_corrupt(store.verify()));

        // The payload replaced by text, by an integer.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {blobs} SET "payload" = 'garbage garbage garbage garbage garbage'"#), &[])?;
        assert!(is_corrupt(store.get::<String>("a")));
        assert!(is_corrupt(store.verify()));
        assert!(is_corrupt(store.compact()));
        raw(&db, &format!(r#"UPDATE {blobs} SET "payload" = 7"#), &[])?;
        assert!(is_corrupt(store.get::<String>("a")));

        // Directory rows pointing nowhere, or with impossible numbers.
        for (set, params) in [
            (r#""blob" = 99"#, vec![]),
            (r#""pos" = -5"#, vec![]),
            (r#""len" = -1"#, vec![]),
            (r#""len" = 3"#, vec![]),
            (r#""pos" = ?1"#, vec![Value::Integer(i64::MAX)]),
            (r#""blob" = 'one'"#, vec![]),
        ] {
            let (db, store) = setup()?;
            raw(&db, &format!(r#"UPDATE {docs} SET {set} WHERE "id" = 'b'"#), &params)?;
            assert!(is_corrupt(store.get::<String>("b")), "{set}");
            assert!(is_corrupt(store.verify()), "{set}");
            assert!(is_corrupt(store.compact()), "{set}");
        }

        // Deleting or replacing a document whose blob is gone fails cleanly and changes nothing.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {docs} SET "blob" = 99 WHERE "id" = 'b'"#), &[])?;
        assert!(is_corrupt(store.delete("b")));
        assert!(is_corrupt(store.put("b", "again")));
        assert_eq!(store.ids()?, ["a", "b"]);

        // Two entries swapped in the directory: each one's id check fails.
        let (db, store) = setup()?;
        for (from, to) in [("a", "t"), ("b", "a"), ("t", "b")] {
            let params = [Value::Text(to.into()), Value::Text(from.into())];
            raw(&db, &format!(r#"UPDATE {docs} SET "id" = ?1 WHERE "id" = ?2"#), &params)?;
        }
        assert!(is_corrupt(store.get::<String>("a")));
        assert!(is_corrupt(store.get::<String>("b")));
        assert!(is_corrupt(store.verify()));

        // Counters that disagree with the directory.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {blobs} SET "live_count" = 5"#), &[])?;
        assert!(is_corrupt(store.stats()));
        assert!(is_corrupt(store.verify()));
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

    #[test]
    fn entry_decoding_never_panics() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        let good = encode_entry(b"id-1", br#"{"k":[1,2,3]}"#);
        assert_eq!(decode_entry(&good), Ok(("id-1", &br#"{"k":[1,2,3]}"#[..])));
        let mut two = good.clone();
        two.extend(encode_entry(b"x", b"null"));
        assert_eq!(split_entries(&two).map(|m| m.len()), Ok(2));
        let mut rng = Rng(5);
        for _ in 0..20_000 {
            let mut bytes = if rng.below(2) == 0 { good.clone() } else { two.clone() };
            match rng.below(4) {
                0 => {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                2 => bytes.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                _ => bytes = (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
            }
            let decoded = decode_entry(&bytes);
            let split = split_entries(&bytes);
            if bytes != good {
                assert!(decoded.is_err(), "{bytes:?}");
            }
            if bytes != good && bytes != two && !bytes.is_empty() {
                assert!(split.is_err(), "{bytes:?}");
            }
        }
        assert!(slice_at(&good, u64::MAX, 1).is_none());
        assert!(slice_at(&good, 1, u64::MAX).is_none());
    }
}
