//! The database handle.

use crate::backend::{Access, Backend, Connection, run};
use crate::change::{Change, CommitObserver};
use crate::collection::Collection;
use crate::document::{Document, DocumentId};
use crate::error::Result;
use crate::meta::MetaSlot;
use crate::migrate::{self, MigrationReport};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

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
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            #[cfg(feature = "sqlite")]
            sqlite: crate::backend::SqliteOptions::default(),
            #[cfg(feature = "sqlite")]
            read_only: false,
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
    /// Called with each commit's changes, in commit order.
    observers: Mutex<Vec<Arc<CommitObserver>>>,
    has_observers: AtomicBool,
    /// Delivery order: tickets are taken while holding the write lock (so their order is the
    /// commit order) and delivered one after the other once the lock is released.
    tickets: Mutex<Tickets>,
    turn: Condvar,
    /// Collections already created or migrated by this handle, by name.
    collections: Mutex<HashMap<&'static str, Arc<MetaSlot>>>,
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
        Ok(Self {
            inner: Arc::new(DbInner {
                backend,
                options,
                observers: Mutex::new(Vec::new()),
                has_observers: AtomicBool::new(false),
                tickets: Mutex::new(Tickets::default()),
                turn: Condvar::new(),
                collections: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Calls `observer` after every commit with the changes it made (an operation outside a
    /// transaction commits on its own). Only committed work is reported: nothing from a
    /// transaction that rolled back, from writes undone to a savepoint, or from a failed
    /// operation. Observers run in commit order, on the committing thread, after the data is
    /// durable; keep them short.
    pub fn on_commit(&self, observer: impl Fn(&[Change]) + Send + Sync + 'static) {
        self.inner.observers.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::new(Box::new(observer)));
        self.inner.has_observers.store(true, Ordering::Release);
    }

    /// A place in the delivery order, taken while holding the write lock just before
    /// committing; `None` when nobody observes commits.
    /// Whether anyone observes commits (change sets are only collected then).
    pub(crate) fn observed(&self) -> bool {
        self.inner.has_observers.load(Ordering::Acquire)
    }

    /// Refuses a write from inside a commit observer of this thread: it would wait for the
    /// observer's own delivery to finish.
    pub(crate) fn check_not_observing(&self) -> Result<()> {
        if self.inner.has_observers.load(Ordering::Acquire) && DELIVERING.with(std::cell::Cell::get) {
            return Err(crate::Error::transaction_state(
                "an on_commit observer cannot write to the database it observes (hand the work to another thread)",
            ));
        }
        Ok(())
    }

    pub(crate) fn commit_ticket(&self) -> Option<Ticket<'_>> {
        if !self.inner.has_observers.load(Ordering::Acquire) {
            return None;
        }
        let mut t = self.inner.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let number = t.issued;
        t.issued += 1;
        Some(Ticket { db: self, number, done: false })
    }

    /// The options this database was opened with.
    pub fn options(&self) -> &DbOptions {
        &self.inner.options
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.inner.backend
    }

    /// The collection of documents of type `T`.
    ///
    /// The first call for a collection creates its table and indexes, or migrates them to
    /// `T`'s schema: index columns (generated by SQLite from the stored JSON) are added or
    /// dropped, fields `T` has and stored documents lack are written into them with the values
    /// `T` reads them with (so serde defaults become queryable), and the change is recorded in
    /// db4's schema table, all in one transaction. Opening never removes or replaces what a
    /// stored document holds: keys `T` does not know are kept, also by later updates through
    /// `T` (see [`Db::migrate`] to drop them). Later calls are cheap. See `docs/design.md`.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) if the stored schema is
    /// incompatible with `T` (the id type changed, an indexed field's values would not read
    /// back as its new type), [`Error::Serialization`](crate::Error::Serialization) naming a
    /// stored document that does not deserialize as `T` when documents get new fields, or a
    /// backend error. Nothing is changed then.
    pub fn collection<T: Document>(&self) -> Result<Collection<T>> {
        if let Some(slot) = self.known_collection::<T>() {
            return Ok(Collection::new(self.clone(), slot));
        }
        let slot = run(self.backend(), Access::Atomic, |conn| self.prepare_collection::<T>(conn))?;
        self.register_collections(vec![Arc::clone(&slot)]);
        Ok(Collection::new(self.clone(), slot))
    }

    /// Rewrites every document of `T`'s collection through `T`, in one transaction, and
    /// reports what changed: keys `T` does not declare are removed from the stored documents
    /// (opening a collection keeps them, for other versions of the type), fields `T` has are
    /// filled with the values it reads them with, and the schema table forgets the other
    /// versions' keys, so updates no longer carry them over.
    ///
    /// Run it once every binary that used the old fields is gone: an older binary would then
    /// read its removed fields with its defaults, or fail to read the documents.
    ///
    /// # Errors
    ///
    /// As [`collection`](Self::collection), and [`Error::Serialization`](crate::Error::Serialization)
    /// naming a stored document that does not deserialize as `T`. Nothing is changed then.
    pub fn migrate<T: Document>(&self) -> Result<MigrationReport> {
        let (slot, report) = run(self.backend(), Access::Atomic, |conn| {
            let meta = migrate::ensure::<T>(conn, T::Id::KIND, self.inner.options.max_document_bytes)?;
            let report = migrate::rewrite_all::<T>(conn, &meta)?;
            let meta = migrate::load(conn, &meta)?;
            Ok((Arc::new(MetaSlot::new(meta)), report))
        })?;
        self.register_collections(vec![slot]);
        Ok(report)
    }

    /// `T`'s collection if this handle has already created or migrated it.
    pub(crate) fn known_collection<T: Document>(&self) -> Option<Arc<MetaSlot>> {
        let schema = T::schema();
        let known = self.inner.collections.lock().unwrap_or_else(PoisonError::into_inner);
        known.get(schema.collection()).filter(|slot| std::ptr::eq(slot.schema(), schema)).map(Arc::clone)
    }

    /// Creates or migrates `T`'s collection through `conn` (inside a transaction).
    pub(crate) fn prepare_collection<T: Document>(&self, conn: &dyn Connection) -> Result<Arc<MetaSlot>> {
        let meta = migrate::ensure::<T>(conn, T::Id::KIND, self.inner.options.max_document_bytes)?;
        Ok(Arc::new(MetaSlot::new(meta)))
    }

    /// Remembers collections whose creation or migration has committed.
    pub(crate) fn register_collections(&self, slots: Vec<Arc<MetaSlot>>) {
        if slots.is_empty() {
            return;
        }
        let mut known = self.inner.collections.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in slots {
            known.insert(slot.schema().collection(), slot);
        }
    }
}

#[derive(Default)]
struct Tickets {
    issued: u64,
    delivered: u64,
}

/// A commit's place in the order observers see commits in. Delivered (or, if dropped,
/// skipped) exactly once, so later commits never wait forever.
pub(crate) struct Ticket<'a> {
    db: &'a Db,
    number: u64,
    done: bool,
}

impl Ticket<'_> {
    /// Waits for the earlier commits to be delivered, then hands `changes` to the observers.
    /// Call after the commit is durable and the write lock released.
    pub(crate) fn deliver(mut self, changes: &[Change]) {
        self.advance(Some(changes));
    }

    fn advance(&mut self, changes: Option<&[Change]>) {
        self.done = true;
        let inner = &self.db.inner;
        let mut t = inner.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        while t.delivered != self.number {
            t = inner.turn.wait(t).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(changes) = changes.filter(|c| !c.is_empty()) {
            drop(t);
            let observers = inner.observers.lock().unwrap_or_else(PoisonError::into_inner).clone();
            DELIVERING.with(|d| d.set(true));
            // Observers are the caller's code: a panicking one must not stall later commits.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for observer in &observers {
                    observer(changes);
                }
            }));
            DELIVERING.with(|d| d.set(false));
            t = inner.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        }
        t.delivered += 1;
        inner.turn.notify_all();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.advance(None);
        }
    }
}

thread_local! {
    /// Set while this thread runs commit observers.
    static DELIVERING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
