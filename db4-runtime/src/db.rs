//! The database handle.

use crate::backend::{Access, Backend, run};
use crate::error::Result;
use crate::schema::quote_ident;
use crate::store::change::Change;
use crate::store::codec::count;
use crate::store::commit::Commits;
use crate::store::migrate;
use crate::store::outbox;
use crate::store::registry::Registry;
use crate::store::tally::Totals;
use crate::trace;
use std::sync::Arc;

/// The default document size limit: 2 MiB, the largest row a Durable Object stores.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 2 * 1024 * 1024;

/// Options for a [`Db`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DbOptions {
    /// Documents whose serialized JSON is larger than this are refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge). Default: [`DEFAULT_MAX_DOCUMENT_BYTES`].
    pub max_document_bytes: usize,
    /// SQLite settings, for databases opened with [`Db::open_with`].
    #[cfg(feature = "sqlite")]
    pub sqlite: crate::backend::SqliteOptions,
    /// Open the database file read-only ([`Db::open_with`]): reads work,
    /// [`Db::collection`] works as long as the stored schema needs no change, and every write
    /// fails with [`BackendErrorKind::ReadOnly`](crate::BackendErrorKind::ReadOnly). Nothing
    /// on disk is created or changed, so it also serves a database in a directory the process
    /// cannot write (see [`SqliteBackend::open_read_only`](crate::SqliteBackend::open_read_only)
    /// for what that costs). Default: `false`. An in-memory database or a Durable Object
    /// cannot be opened read-only.
    #[cfg(feature = "sqlite")]
    pub read_only: bool,
    /// Record each change's before-image for [`Db::on_commit`] observers
    /// ([`Change::before`](crate::Change)): the document as it was before an update or
    /// delete. It costs one read of the row before each such write, and only while someone
    /// observes commits. Default: `false`.
    ///
    /// The change log records them too: with this on, every event of
    /// [`Db::changes_since`](crate::Db::changes_since) carries its before-image
    /// ([`ChangeEvent::before`](crate::ChangeEvent::before)).
    pub before_images: bool,
    /// Keep the durable change log ([`Db::changes_since`](crate::Db::changes_since),
    /// [`Db::consumer`](crate::Db::consumer)): each committed change is appended to a table of
    /// the same database, inside the same transaction. It costs one row per changed document.
    /// Off, nothing is logged and the writes cost what they cost without it (events committed
    /// meanwhile are missing from the log for good). Default: `true`.
    pub change_log: bool,
    /// How long the change log keeps events (default: until
    /// [`Db::truncate_changes`](crate::Db::truncate_changes)).
    pub change_retention: crate::store::outbox::ChangeRetention,
    /// The database's name in the change log's Debezium envelopes
    /// ([`ChangeEvent::to_json`](crate::ChangeEvent::to_json), `source.db`). Default: `"db4"`.
    pub name: String,
    /// The storage tiers beyond hot: the warm cache and the cold store ([`DbOptions::tiers`]).
    /// Shared by the clones of these options.
    pub(crate) tiers: Arc<crate::tier::TierConfig>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            #[cfg(feature = "sqlite")]
            sqlite: crate::backend::SqliteOptions::default(),
            #[cfg(feature = "sqlite")]
            read_only: false,
            before_images: false,
            change_log: true,
            change_retention: crate::store::outbox::ChangeRetention::default(),
            name: "db4".to_owned(),
            tiers: Arc::default(),
        }
    }
}

impl DbOptions {
    /// Sets the document size limit in bytes.
    pub fn max_document_bytes(mut self, bytes: usize) -> Self {
        self.max_document_bytes = bytes;
        self
    }

    /// Sets the SQLite durability level.
    #[cfg(feature = "sqlite")]
    pub fn synchronous(mut self, synchronous: crate::backend::Synchronous) -> Self {
        self.sqlite.synchronous = synchronous;
        self
    }

    /// Sets the longest a write waits, in total, for another connection's write lock before
    /// failing with [`BackendErrorKind::Busy`](crate::BackendErrorKind::Busy)
    /// ([`SqliteOptions::busy_timeout`](crate::SqliteOptions::busy_timeout); default 5 s).
    #[cfg(feature = "sqlite")]
    pub fn busy_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.sqlite.busy_timeout = timeout;
        self
    }

    /// Records before-images of changes for commit observers, or not (see
    /// [`before_images`](Self::before_images)).
    ///
    /// # Example
    ///
    /// ```
    /// let options = db4_runtime::DbOptions::default().before_images(true);
    /// assert!(options.before_images);
    /// ```
    pub fn before_images(mut self, before_images: bool) -> Self {
        self.before_images = before_images;
        self
    }

    /// Keeps the durable change log, or not (see [`change_log`](Self::change_log)).
    ///
    /// # Example
    ///
    /// ```
    /// let options = db4_runtime::DbOptions::default().change_log(false);
    /// assert!(!options.change_log);
    /// ```
    pub fn change_log(mut self, on: bool) -> Self {
        self.change_log = on;
        self
    }

    /// Sets how long the change log keeps events (see [`ChangeRetention`](crate::ChangeRetention)).
    pub fn change_retention(mut self, retention: crate::store::outbox::ChangeRetention) -> Self {
        self.change_retention = retention;
        self
    }

    /// Names the database in the change log's envelopes (see [`name`](Self::name)).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the storage tiers beyond hot: the warm cache's budget, the cold store and the
    /// compaction policy (see [`TierConfig`](crate::tier::TierConfig)).
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::DbOptions;
    /// use db4_runtime::tier::{CompactionPolicy, TierConfig};
    ///
    /// let options = DbOptions::default().tiers(TierConfig::new(64 << 20, None, CompactionPolicy::default()));
    /// assert_eq!(options.tier_config().warm_bytes, 64 << 20);
    /// ```
    pub fn tiers(mut self, tiers: crate::tier::TierConfig) -> Self {
        self.tiers = Arc::new(tiers);
        self
    }

    /// The storage tiers these options set ([`tiers`](Self::tiers)).
    pub fn tier_config(&self) -> &crate::tier::TierConfig {
        &self.tiers
    }

    /// Opens the database read-only, or not (see [`read_only`](Self::read_only)).
    #[cfg(feature = "sqlite")]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Refuses `read_only` where there is no file to read.
    #[cfg(feature = "sqlite")]
    fn check_writable(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(crate::BackendError::new(
                crate::BackendErrorKind::Unsupported,
                format!("{what} cannot be opened read-only (DbOptions::read_only is for database files)"),
            )
            .into());
        }
        Ok(())
    }
}

/// What a database holds and what this handle has done to it, from [`Db::stats`].
///
/// Figures about the write-ahead log, shards and storage tiers will join these as db4 gains
/// them (the struct is `#[non_exhaustive]`, so adding fields breaks nobody).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbStats {
    /// Every collection stored in the database, also those other handles or processes
    /// created, in name order.
    pub collections: Vec<CollectionStats>,
    /// The change log: the events it keeps and its registered consumers.
    pub change_log: ChangeLogStats,
}

/// The change log's figures in [`DbStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChangeLogStats {
    /// Events the log keeps (LSNs are consecutive, so this is `last - oldest + 1`).
    pub events: u64,
    /// The oldest event kept ([`Lsn::ZERO`](crate::Lsn::ZERO) if none).
    pub oldest: crate::lsn::Lsn,
    /// The newest event ([`Lsn::ZERO`](crate::Lsn::ZERO) if none).
    pub last: crate::lsn::Lsn,
    /// Registered consumers ([`Db::consumer`](crate::Db::consumer)).
    pub consumers: u64,
}

impl DbStats {
    /// The figures of the collection named `name`, if the database holds it.
    pub fn collection(&self, name: &str) -> Option<&CollectionStats> {
        self.collections.iter().find(|c| c.name == name)
    }
}

/// One collection's figures in [`DbStats`].
///
/// The write counts are the writes **this handle** (and its clones) committed to the
/// collection since it was opened: each stored, replaced or deleted document counts once.
/// Writes that were rolled back (a transaction that failed, a savepoint rolled back to, a
/// nested transaction that returned `Err`) or that changed nothing (a delete of a missing id)
/// do not count, and neither do other handles' writes. A migration that rewrites documents
/// counts them as updates, as [`Db::on_commit`] observers see them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CollectionStats {
    /// The collection's name.
    pub name: String,
    /// How many documents it holds now.
    pub documents: u64,
    /// Documents this handle inserted.
    pub inserts: u64,
    /// Documents this handle replaced.
    pub updates: u64,
    /// Documents this handle wrote with an upsert that did not need to know whether the
    /// document existed (see [`ChangeKind::Upsert`](crate::ChangeKind::Upsert)); an upsert
    /// that did know counts as an insert or an update.
    pub upserts: u64,
    /// Documents this handle deleted.
    pub deletes: u64,
}

/// A database: a storage backend plus the collections opened on it.
///
/// Cheap to clone (all clones share one backend) and safe to share between threads.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    backend: Box<dyn Backend>,
    options: DbOptions,
    /// Commit observers and the order commits reach them in.
    commits: Commits,
    /// Collections already created or migrated by this handle.
    registry: Registry,
    /// The writes this handle has committed, by collection.
    committed: Totals,
    /// The secret range cursors are signed with (kept in the database).
    cursor_key: crate::store::secret::CursorKey,
    /// [`DbOptions::name`], shared by the change events read through this handle.
    source: Arc<str>,
    /// The warm tier ([`TierConfig::warm_bytes`](crate::tier::TierConfig::warm_bytes)); `None` when off.
    warm: Option<Arc<crate::tier::warm::WarmTier>>,
    /// The cold tier, when [`DbOptions::tiers`] gives a cold store.
    cold: Option<crate::tier::cold::ColdTier>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) a SQLite database file in WAL mode.
    ///
    /// `path` must name a file: `""` and `":memory:"`, which SQLite would open as a private
    /// temporary or in-memory database, are refused rather than opened, because such a
    /// database is not shared with the reader connections db4 opens next to the writer and is
    /// lost on close, which a caller of `open` does not expect. Use
    /// [`open_in_memory`](Self::open_in_memory) for an in-memory database.
    ///
    /// Dropping the last clone of the `Db` checkpoints the WAL and removes the `-wal` and
    /// `-shm` files (unless other connections still use the file).
    ///
    /// # Errors
    ///
    /// A backend error if the file cannot be opened or is not a db4 / SQLite database;
    /// [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported) for `""` and
    /// `":memory:"`.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let dir = std::env::temp_dir().join(format!("db4-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(&dir).unwrap();
    /// let db = db4_runtime::Db::open(dir.join("app.db"))?;
    /// # drop(db); std::fs::remove_dir_all(&dir).ok();
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::open_with(path, DbOptions::default())
    }

    /// Opens a SQLite database file with options; with
    /// [`read_only`](DbOptions::read_only), an existing file without changing it.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open). Read-only: a backend error if the file does not exist, and
    /// [`BackendErrorKind::ReadOnly`](crate::BackendErrorKind::ReadOnly) if it is not a db4
    /// database yet (its schema table would have to be created).
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{BackendErrorKind, Db, DbOptions};
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-doc-ro-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let path = dir.join("notes.db");
    /// Db::open(&path)?.collection::<Note>()?.insert(&Note { id: 1, text: "hi".into() })?;
    ///
    /// let db = Db::open_with(&path, DbOptions::default().read_only(true))?;
    /// let notes = db.collection::<Note>()?;
    /// assert_eq!(notes.get(1)?.map(|n| n.text), Some("hi".to_owned()));
    /// let refused = notes.insert(&Note { id: 2, text: "no".into() }).unwrap_err();
    /// assert_eq!(refused.backend_kind(), Some(BackendErrorKind::ReadOnly));
    /// # drop((notes, db)); std::fs::remove_dir_all(&dir).ok();
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sqlite")]
    pub fn open_with(path: impl AsRef<std::path::Path>, options: DbOptions) -> Result<Self> {
        let backend = if options.read_only {
            crate::backend::SqliteBackend::open_read_only(path, &options.sqlite)?
        } else {
            crate::backend::SqliteBackend::open(path, &options.sqlite)?
        };
        Self::with_backend(backend, options)
    }

    /// Opens a private in-memory SQLite database, gone when the last clone is dropped.
    ///
    /// # Errors
    ///
    /// A backend error if SQLite cannot allocate it.
    #[cfg(feature = "sqlite")]
    pub fn open_in_memory() -> Result<Self> {
        Self::open_in_memory_with(DbOptions::default())
    }

    /// Opens a private in-memory SQLite database with options.
    ///
    /// # Errors
    ///
    /// As [`open_in_memory`](Self::open_in_memory);
    /// [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported) with
    /// [`read_only`](DbOptions::read_only).
    #[cfg(feature = "sqlite")]
    pub fn open_in_memory_with(options: DbOptions) -> Result<Self> {
        options.check_writable("an in-memory database")?;
        let backend = crate::backend::SqliteBackend::open_in_memory(&options.sqlite)?;
        Self::with_backend(backend, options)
    }

    /// The database of a Cloudflare Durable Object: its own SQLite storage
    /// (`state.storage()`), with the same collections, queries and transactions as natively.
    ///
    /// # Errors
    ///
    /// A backend error creating db4's schema table.
    #[cfg(feature = "cloudflare")]
    pub fn durable(storage: &worker::Storage) -> Result<Self> {
        Self::durable_with(storage, DbOptions::default())
    }

    /// [`Db::durable`] with options.
    ///
    /// # Errors
    ///
    /// As [`durable`](Self::durable);
    /// [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported) with
    /// `read_only` (when the `sqlite` feature provides it).
    #[cfg(feature = "cloudflare")]
    pub fn durable_with(storage: &worker::Storage, options: DbOptions) -> Result<Self> {
        #[cfg(feature = "sqlite")]
        options.check_writable("a Durable Object's storage")?;
        Self::with_backend(crate::backend::DurableBackend::new(storage), options)
    }

    /// A database on any [`Backend`].
    ///
    /// # Errors
    ///
    /// A backend error creating db4's schema table.
    pub fn with_backend(backend: impl Backend, options: DbOptions) -> Result<Self> {
        let backend: Box<dyn Backend> = Box::new(backend);
        run(&*backend, Access::Atomic, migrate::init)?;
        match run(&*backend, Access::Atomic, outbox::init) {
            // A database from before the change log, opened read-only: it has no log to read
            // (reading it fails), and nothing can be written to it anyway.
            Err(e) if e.backend_kind() == Some(crate::BackendErrorKind::ReadOnly) => {}
            other => other?,
        }
        let cursor_key = crate::store::secret::CursorKey::load(&*backend)?;
        let warm = crate::tier::warm::WarmTier::new(options.tiers.warm_bytes, options.tiers.policy.memory_pressure);
        if warm.is_some() {
            // Starts the backend's watch over other connections' commits, before any fill.
            let _ = backend.foreign_commits();
        }
        let cold = crate::tier::cold::ColdTier::open(&*backend, &options.tiers)?;
        Ok(Self {
            inner: Arc::new(DbInner {
                backend,
                commits: Commits::new(options.before_images, options.change_log, options.change_retention),
                source: Arc::from(options.name.as_str()),
                options,
                registry: Registry::default(),
                committed: Totals::default(),
                cursor_key,
                warm,
                cold,
            }),
        })
    }

    /// Calls `observer` after every commit with the changes it made (an operation outside a
    /// transaction commits on its own). Only committed work is reported: nothing from a
    /// transaction that rolled back, from writes undone to a savepoint, or from a failed
    /// operation. Observers run in commit order, on the committing thread, after the data is
    /// durable; keep them short.
    ///
    /// Each [`Change`] names the collection and document, says what happened, and carries the
    /// version and the stored JSON after the write; with [`DbOptions::before_images`] also the
    /// JSON before it. Every writer reports through the same pipeline: collections, query
    /// deletes, migrations that rewrite documents, and [`BatchStore`](crate::BatchStore)s.
    ///
    /// An observer cannot write to the database it observes (it would wait for its own
    /// delivery): such a write fails with
    /// [`Error::TransactionState`](crate::Error::TransactionState). Opening a collection this
    /// handle has not opened yet counts as a write (it may create or migrate the table); reads
    /// are fine.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{ChangeKind, Db, Value};
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    /// use std::sync::{Arc, Mutex};
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = Db::open_in_memory()?;
    /// let notes = db.collection::<Note>()?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let sink = Arc::clone(&seen);
    /// db.on_commit(move |changes| sink.lock().unwrap().extend(changes.iter().map(|c| (c.kind, c.id.clone()))));
    /// notes.insert(&Note { id: 1, text: "hi".into() })?;
    /// notes.delete(1)?;
    /// assert_eq!(*seen.lock().unwrap(), [(ChangeKind::Insert, Value::Integer(1)), (ChangeKind::Delete, Value::Integer(1))]);
    /// # Ok(()) }
    /// ```
    pub fn on_commit(&self, observer: impl Fn(&[Change]) + Send + Sync + 'static) {
        self.inner.commits.observe(observer);
    }

    /// What the database holds and what this handle has committed to it: per collection, the
    /// documents it holds and the writes this handle committed (see [`CollectionStats`]), and
    /// the change log's extent ([`ChangeLogStats`]).
    ///
    /// Reads db4's schema table, then counts each collection's documents with a statement of
    /// its own: each count sees the data committed when it runs, not one snapshot of them all.
    ///
    /// # Errors
    ///
    /// A backend error, or [`Error::Corrupted`](crate::Error::Corrupted) if the schema table
    /// holds something other than collection names.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = db4_runtime::Db::open_in_memory()?;
    /// let notes = db.collection::<Note>()?;
    /// notes.insert(&Note { id: 1, text: "hi".into() })?;
    /// notes.delete(1)?;
    /// notes.insert(&Note { id: 2, text: "again".into() })?;
    /// let stats = db.stats()?;
    /// let note_stats = stats.collection("note").expect("the collection is stored");
    /// assert_eq!((note_stats.documents, note_stats.inserts, note_stats.deletes), (1, 2, 1));
    /// assert_eq!((stats.change_log.events, stats.change_log.last.get()), (3, 3));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<DbStats> {
        let span = trace::op("stats", None);
        let mut collections = Vec::new();
        let mut change_log = ChangeLogStats::default();
        run(self.backend(), Access::Read, |conn| {
            collections.clear();
            for name in migrate::collections(conn)? {
                let documents = count(conn, &name, &format!("SELECT count(*) FROM {}", quote_ident(&name)), &[])?;
                collections.push((name, documents));
            }
            let (oldest, last) = (outbox::first_lsn(conn)?, outbox::last_lsn(conn)?);
            let events = if last == crate::lsn::Lsn::ZERO { 0 } else { last.get() - oldest.get() + 1 };
            let consumers = count(conn, "_db4_consumers", &format!("SELECT count(*) FROM {}", outbox::CONSUMERS), &[])?;
            change_log = ChangeLogStats { events, oldest, last, consumers };
            Ok(())
        })?;
        let committed = self.committed().snapshot();
        let collections: Vec<CollectionStats> = collections
            .into_iter()
            .map(|(name, documents)| {
                let ops = committed.get(name.as_str()).copied().unwrap_or_default();
                CollectionStats {
                    name,
                    documents,
                    inserts: ops.inserts,
                    updates: ops.updates,
                    upserts: ops.upserts,
                    deletes: ops.deletes,
                }
            })
            .collect();
        span.rows(collections.len());
        Ok(DbStats { collections, change_log })
    }

    /// The bytes the database takes in its storage: SQLite's pages natively, the object's
    /// `databaseSize` on a Durable Object (which caps it at 10 GB). A sharded deployment
    /// splits a shard long before that (see `DurableRouter::hot_shards`).
    ///
    /// # Errors
    ///
    /// A backend error reading the size.
    pub fn database_bytes(&self) -> Result<u64> {
        self.backend().database_bytes()
    }

    /// The rows this handle's statements wrote so far as the storage bills them, where the
    /// backend counts them: on a Durable Object, the sum of `rowsWritten` (each table row and
    /// each index entry written; Cloudflare bills per million). `None` natively.
    ///
    /// The difference across a call is what that call cost, for example
    /// `before = db.rows_written(); coll.insert(&doc)?; db.rows_written() - before`.
    pub fn rows_written(&self) -> Option<u64> {
        self.backend().rows_written()
    }

    /// The options this database was opened with.
    pub fn options(&self) -> &DbOptions {
        &self.inner.options
    }

    /// The database's name for change events' envelopes, shared by the events.
    pub(crate) fn source_name(&self) -> Arc<str> {
        Arc::clone(&self.inner.source)
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    pub(crate) fn commits(&self) -> &Commits {
        &self.inner.commits
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Where the writes of each unit of work are counted once it commits.
    pub(crate) fn cursor_key(&self) -> &crate::store::secret::CursorKey {
        &self.inner.cursor_key
    }

    pub(crate) fn committed(&self) -> &Totals {
        &self.inner.committed
    }

    /// The warm tier, if it is on.
    pub(crate) fn warm(&self) -> Option<&Arc<crate::tier::warm::WarmTier>> {
        self.inner.warm.as_ref()
    }
}

impl Db {
    /// What each storage tier holds: the hot tier's documents and bytes (read from the
    /// database, every collection, each counted by a statement of its own), the warm tier's
    /// contents and hit counts (this handle's), and the cold tier's segments.
    ///
    /// # Errors
    ///
    /// A backend error, or [`Error::Corrupted`](crate::Error::Corrupted) if db4's schema
    /// table holds something other than collection names.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Db, DbOptions};
    /// use db4_runtime::tier::TierConfig;
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize, Clone)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = Db::open_in_memory_with(DbOptions::default().tiers(TierConfig { warm_bytes: 1 << 20, ..Default::default() }))?;
    /// let notes = db.collection::<Note>()?;
    /// notes.insert(&Note { id: 1, text: "hi".into() })?;
    /// notes.get(1)?; // a miss, which fills the warm tier
    /// notes.get(1)?; // a hit
    /// let stats = db.tier_stats()?;
    /// assert_eq!((stats.hot.documents, stats.warm.entries, stats.warm.hits, stats.warm.misses), (1, 1, 1, 1));
    /// assert_eq!(stats.warm.hit_rate(), 0.5);
    /// # Ok(()) }
    /// ```
    pub fn tier_stats(&self) -> Result<crate::tier::TierStats> {
        let _span = trace::op("tier_stats", None);
        let hot = run(self.backend(), Access::Read, |conn| {
            let mut hot = crate::tier::HotTierStats::default();
            for name in migrate::collections(conn)? {
                let table = quote_ident(&name);
                hot.documents += count(conn, &name, &format!("SELECT count(*) FROM {table}"), &[])?;
                hot.bytes +=
                    count(conn, &name, &format!("SELECT coalesce(sum(length(\"_doc\")), 0) FROM {table}"), &[])?;
            }
            Ok(hot)
        })?;
        let warm =
            self.warm().map_or_else(crate::tier::WarmTierStats::default, |tier| crate::tier::WarmTierStats::of(tier));
        let cold =
            self.cold_stats()?.map_or_else(crate::tier::ColdTierStats::default, |c| crate::tier::ColdTierStats {
                segments: c.segments,
                documents: c.documents,
                bytes: c.bytes,
                reads: c.reads,
                hits: c.found,
            });
        Ok(crate::tier::TierStats { hot, warm, cold })
    }

    /// The cold tier, if a cold store is configured.
    pub(crate) fn cold(&self) -> Option<&crate::tier::cold::ColdTier> {
        self.inner.cold.as_ref()
    }
}
