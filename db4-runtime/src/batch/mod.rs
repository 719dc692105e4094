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
//!
//! This file holds the public types, [`BatchStore::open`], [`Transaction::batch`] and the
//! store's error helpers; the rest of `BatchStore` is spread over one file per job:
//!
//! - `read.rs`: `get`, `get_many`, `contains`, `ids`, `len`, `is_empty`;
//! - `write.rs`: `put`, `put_many`, `delete`, `delete_many`, and how their writes are recorded
//!   (changes for observers, undo entries for savepoints);
//! - `verify.rs`: `stats` and `verify`;
//! - `compact.rs`: `compact`;
//! - `pack.rs`: the best-fit placement of entries into blobs;
//! - `codec.rs`: the packed entry format;
//! - `rows.rs`: the strict readers of stored rows;
//! - `sql.rs`: the tables and statements of a store;
//! - `model.rs` (tests only): the store against a `BTreeMap` model, and shared test helpers;
//! - `tx_tests.rs` (tests only): the store inside transactions, savepoints and observers.

mod codec;
mod compact;
#[cfg(all(test, feature = "sqlite"))]
mod model;
mod pack;
mod read;
mod rows;
mod sql;
#[cfg(all(test, feature = "sqlite"))]
mod tx_tests;
mod verify;
mod write;

use crate::backend::{Access, run};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::schema::is_valid_name;
use crate::txn::{Runner, Scope, Transaction};
use sql::StoreSql;
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
/// deletable by its string id (the counterpart of the seed's `createBatchOperations`), over a
/// scope `S`: the [`Db`] (the default, from [`BatchStore::open`]), where each call runs on its
/// own, or a transaction ([`TxBatchStore`], from [`Transaction::batch`]), where each call joins
/// it and sees its writes.
///
/// Documents are any `serde` type, stored as JSON; a store does not fix their type. Each
/// mutating call is atomic; its writes go through db4's write pipeline, so they commit or roll
/// back with the transaction they belong to, are undone by
/// [`Transaction::rollback_to`](crate::Transaction::rollback_to) and failed nested
/// transactions, and reach [`Db::on_commit`](crate::Db::on_commit) observers once committed:
/// one [`Change`](crate::Change) per document, its `collection` the store's name, its id a
/// [`Value::Text`](crate::Value::Text). Cheap to clone.
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
///
/// // Inside a transaction, with a savepoint.
/// db.transaction(|tx| {
///     let events = tx.batch(&events);
///     events.put("e4", &("click", 1))?;
///     tx.savepoint("more")?;
///     events.delete("e1")?;
///     tx.rollback_to("more")?;
///     assert_eq!(events.ids()?, ["e1", "e3", "e4"]);
///     Ok(())
/// })?;
/// assert_eq!(events.len()?, 3);
/// # Ok(()) }
/// ```
pub struct BatchStore<S = Db> {
    scope: S,
    inner: Arc<Inner>,
}

/// A [`BatchStore`] inside a [`Transaction`], from [`Transaction::batch`]: the same operations
/// as on the [`Db`], seeing the transaction's own writes.
pub type TxBatchStore<'tx> = BatchStore<&'tx Transaction<'tx>>;

struct Inner {
    name: String,
    options: BatchOptions,
    limit: u64,
    sql: StoreSql,
}

impl<S: Clone> Clone for BatchStore<S> {
    fn clone(&self) -> Self {
        Self { scope: self.scope.clone(), inner: Arc::clone(&self.inner) }
    }
}

impl<S> fmt::Debug for BatchStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchStore").field("name", &self.inner.name).field("options", &self.inner.options).finish()
    }
}

/// A document ready to write: its id and its packed entry.
struct Entry {
    id: String,
    bytes: Vec<u8>,
}

impl Entry {
    /// The document's JSON, for its change.
    fn json(&self) -> String {
        // Written by serde_json, so UTF-8; the lossy conversion never changes it.
        String::from_utf8_lossy(self.bytes.get(BATCH_ENTRY_OVERHEAD + self.id.len()..).unwrap_or_default()).into_owned()
    }
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
        let sql = StoreSql::new(name);
        run(db.backend(), Access::Atomic, |conn| sql.create.iter().try_for_each(|ddl| conn.execute_ddl(ddl)))?;
        let limit = options.max_blob_bytes as u64;
        Ok(BatchStore { scope: db.clone(), inner: Arc::new(Inner { name: name.to_owned(), options, limit, sql }) })
    }
}

impl<'a> Transaction<'a> {
    /// `store` inside this transaction: its reads see the transaction's writes, and its writes
    /// commit or roll back with the transaction (and are undone by savepoints).
    ///
    /// The store's tables must exist in the transaction's database: open the store on that
    /// database with [`BatchStore::open`] (the handle names the tables; calls run on the
    /// transaction's connection).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// use db4_runtime::{BatchStore, Db, Error};
    ///
    /// let db = Db::open_in_memory()?;
    /// let store = BatchStore::open(&db, "drafts", Default::default())?;
    /// let failed = db.transaction(|tx| {
    ///     tx.batch(&store).put("d1", "lost")?;
    ///     Err::<(), _>(Error::aborted("changed my mind"))
    /// });
    /// assert!(failed.is_err());
    /// assert!(store.is_empty()?);
    /// # Ok(()) }
    /// ```
    pub fn batch(&self, store: &BatchStore) -> TxBatchStore<'_> {
        BatchStore { scope: self, inner: Arc::clone(&store.inner) }
    }
}

impl<S> BatchStore<S> {
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
        Error::corrupted(&self.inner.name, None, what.to_string())
    }
}

impl<S: Scope> BatchStore<S> {
    fn runner(&self) -> Runner<'_> {
        self.scope.runner()
    }

    /// The database the store's calls run on.
    fn db(&self) -> &Db {
        match self.runner() {
            Runner::Db(db) => db,
            Runner::Tx(tx) => tx.db(),
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use std::collections::HashMap;

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
}
