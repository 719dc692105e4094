//! The embedded default backend: bundled SQLite through rusqlite.

use super::{Access, Backend, Connection, HeldTransaction, Row};
use crate::error::{BackendError, BackendErrorKind, Result};
use crate::value::{Value, ValueRef};
use rusqlite::types::{ToSqlOutput, ValueRef as SqlValueRef};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How hard SQLite works to make a commit survive a power loss (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit is fsynced: durable across process crashes and power loss (the default).
    #[default]
    Full,
    /// In WAL mode, commits survive a process crash but the last ones may be lost on power
    /// loss; much faster for many small transactions.
    Normal,
}

/// Options for opening a SQLite database.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// Durability of commits.
    pub synchronous: Synchronous,
    /// The longest a write waits, in total, for the database's write lock while another
    /// connection holds it (another `Db` on the same file, another process); then it fails
    /// with [`BackendErrorKind::Busy`] and writes nothing. SQLite's busy handler and db4's
    /// retries (see [`busy_retries`](Self::busy_retries)) share this one deadline. Default:
    /// 5 s.
    ///
    /// Not counted: a write waiting for another thread of this process that is writing
    /// through the same `Db` (they take turns on its one writer connection, and the wait ends
    /// with that thread's transaction). A write that would wait for a transaction the calling
    /// thread itself holds, through the same `Db` or another `Db` on the same file, fails at
    /// once with [`BackendErrorKind::WouldDeadlock`].
    pub busy_timeout: Duration,
    /// Into how many waits, after the first, db4 splits the wait for the write lock: each
    /// attempt waits up to `busy_timeout / (busy_retries + 1)` in SQLite's busy handler, with a
    /// jittered pause between attempts, and attempts go on until `busy_timeout` has passed
    /// (so the pauses make for somewhat fewer retries). SQLite's own waiting is not fair
    /// between connections (it polls, up to 100 ms apart); fresh attempts poll more often.
    /// 0: a single wait of `busy_timeout`. Default: 10.
    pub busy_retries: u32,
    /// How many prepared statements each connection keeps.
    pub statement_cache_capacity: usize,
    /// How many read-only connections serve reads next to the one writer (file databases
    /// only; an in-memory database has one connection). Readers see the last committed state
    /// and never wait for the writer (WAL).
    pub readers: usize,
    /// The size in bytes a WAL file is cut back to once its content is checkpointed into the
    /// database (SQLite's `PRAGMA journal_size_limit`). A large transaction makes the WAL at
    /// least as large as itself; without a limit the file keeps that size until the database
    /// is closed. Default: 8 MiB (twice what SQLite's automatic checkpoints let a WAL reach
    /// with small transactions, so ordinary work never truncates it).
    ///
    /// On close the WAL is checkpointed and removed (or, while other connections still use
    /// the file, truncated to zero bytes when they let it).
    pub journal_size_limit: u64,
    /// The most memory, in KiB, the writer connection's page cache may use (SQLite's
    /// `PRAGMA cache_size = -N`; readers keep SQLite's default of 2 MiB). A transaction
    /// whose changed pages outgrow the cache writes them out early and may write some twice:
    /// a large `insert_many`, whose documents and change-log rows both fill it, runs about a
    /// fifth faster with 64 MiB than with SQLite's 2 MiB (`docs/benchmarks.md`). The memory
    /// is taken only as pages are cached. Default: 65 536 (64 MiB).
    pub writer_cache_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            busy_retries: 10,
            statement_cache_capacity: 256,
            readers: 4,
            journal_size_limit: 8 << 20,
            writer_cache_kib: 64 << 10,
        }
    }
}

/// A SQLite database file in WAL mode, with one writer connection and a small pool of
/// read-only connections (or an in-memory database behind one connection).
///
/// Writes are serialized on the writer; a write transaction takes SQLite's write lock up
/// front (`BEGIN IMMEDIATE`), so two processes never deadlock upgrading read locks, and a
/// lock held by another connection is waited for up to [`SqliteOptions::busy_timeout`] in
/// total.
///
/// Dropping it closes the readers first and the writer last, checkpointing the WAL: the last
/// connection to a file removes its `-wal` and `-shm` files, which a read-only connection
/// cannot do.
pub struct SqliteBackend {
    busy: BusyWait,
    /// The database file, canonical; `None` in memory. Two backends on one file are told
    /// apart from two files by it, to refuse a same-thread wait that could never end.
    file: Option<Arc<Path>>,
    read_only: bool,
    conn: Mutex<rusqlite::Connection>,
    readers: Vec<Mutex<rusqlite::Connection>>,
    /// Other connections' commits, watched once a cache asks ([`Backend::foreign_commits`]).
    watch: std::sync::OnceLock<Option<super::wal_watch::WalWatch>>,
}

/// How a write waits for the write lock: `total` in all, in waits of `slice` in SQLite's
/// busy handler.
#[derive(Debug, Clone, Copy)]
struct BusyWait {
    total: Duration,
    slice: Duration,
}

impl BusyWait {
    fn new(options: &SqliteOptions) -> Self {
        let total = options.busy_timeout;
        Self { total, slice: total / options.busy_retries.saturating_add(1) }
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend").finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) the database file at `path` in WAL mode.
    ///
    /// # Errors
    ///
    /// A backend error if the file cannot be opened or is not a SQLite database;
    /// [`BackendErrorKind::Unsupported`] for `""` and `":memory:"`, which SQLite would open as
    /// a private temporary or in-memory database instead of a file (use
    /// [`open_in_memory`](Self::open_in_memory)).
    pub fn open(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self> {
        let path = path.as_ref();
        check_file_path(path)?;
        let conn = rusqlite::Connection::open(path).map_err(backend_error)?;
        let mut backend = Self::configure(conn, options, Some(canonical(path)), false)?;
        backend.readers = open_readers(path, options)?;
        Ok(backend)
    }

    /// Opens an existing database file read-only: reads work, every write fails with
    /// [`BackendErrorKind::ReadOnly`], and nothing is created or changed on disk (not even
    /// the journal mode). Atomic closures run in a deferred read transaction.
    ///
    /// A WAL-mode database needs its `-wal` and `-shm` files beside it. When they do not
    /// exist and cannot be created (a directory the process cannot write), SQLite cannot open
    /// it normally, and the file is opened as *immutable* instead: no locks, no change
    /// detection. The `-wal` file's absence means nothing is waiting in it to be
    /// checkpointed, so every committed write is in the file; but another process writing
    /// the database while this handle reads it would go unnoticed and could make reads fail
    /// or answer from a half-changed file.
    ///
    /// # Errors
    ///
    /// A backend error if the file does not exist or cannot be read; as
    /// [`open`](Self::open) for `""` and `":memory:"`.
    pub fn open_read_only(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self> {
        let path = path.as_ref();
        check_file_path(path)?;
        let mut target = path.to_path_buf();
        let conn = open_reader(&target, options)?;
        let conn = match probe(&conn) {
            Ok(()) => conn,
            Err(e) if cannot_open_wal(&e, path) => {
                drop(conn);
                target = immutable_uri(path).ok_or_else(|| backend_error(e))?;
                let conn = open_reader(&target, options)?;
                probe(&conn).map_err(backend_error)?;
                conn
            }
            Err(e) => return Err(backend_error(e)),
        };
        let mut backend = Self::configure(conn, options, Some(canonical(path)), true)?;
        backend.readers = open_readers(&target, options)?;
        Ok(backend)
    }

    /// Opens a private in-memory database.
    ///
    /// # Errors
    ///
    /// A backend error if SQLite cannot allocate it.
    pub fn open_in_memory(options: &SqliteOptions) -> Result<Self> {
        let conn = rusqlite::Connection::open_in_memory().map_err(backend_error)?;
        Self::configure(conn, options, None, false)
    }

    fn configure(
        conn: rusqlite::Connection,
        options: &SqliteOptions,
        file: Option<Arc<Path>>,
        read_only: bool,
    ) -> Result<Self> {
        let busy = BusyWait::new(options);
        harden(&conn)?;
        // Only BEGIN IMMEDIATE waits for a lock on this connection; it waits in slices.
        set_busy_timeout(&conn, busy.slice)?;
        conn.set_prepared_statement_cache_capacity(options.statement_cache_capacity);
        if file.is_some() && !read_only {
            let mode: String =
                conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(backend_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(BackendError::new(
                    BackendErrorKind::Io,
                    format!(
                        "cannot switch the database to WAL mode (journal_mode is {mode}): db4 needs a database \
                         file on a file system that supports WAL (for an in-memory database use Db::open_in_memory)"
                    ),
                )
                .into());
            }
            let limit = i64::try_from(options.journal_size_limit).unwrap_or(i64::MAX);
            conn.pragma_update(None, "journal_size_limit", limit).map_err(backend_error)?;
            // Negative: a size in KiB rather than in pages.
            conn.pragma_update(None, "cache_size", -i64::from(options.writer_cache_kib.max(1)))
                .map_err(backend_error)?;
        }
        let sync = match options.synchronous {
            Synchronous::Full => "PRAGMA synchronous = FULL",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        };
        conn.execute_batch(sync).map_err(backend_error)?;
        Ok(Self {
            busy,
            file,
            read_only,
            conn: Mutex::new(conn),
            readers: Vec::new(),
            watch: std::sync::OnceLock::new(),
        })
    }
}

/// Refuses the names SQLite opens as something other than a file.
fn check_file_path(path: &Path) -> Result<()> {
    let name = path.as_os_str();
    if name.is_empty() || name == ":memory:" {
        return Err(BackendError::new(
            BackendErrorKind::Unsupported,
            format!(
                "{path:?} names no database file: SQLite would open a private temporary or in-memory database, \
                 which db4's reader connections cannot share and which is gone on close; pass a file path, or \
                 use Db::open_in_memory() for an in-memory database"
            ),
        )
        .into());
    }
    Ok(())
}

/// The file's canonical path (the given one if it cannot be resolved): the identity of the
/// database file among this process's handles.
fn canonical(path: &Path) -> Arc<Path> {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).into()
}

/// A read-only connection with db4's settings.
fn open_reader(target: &Path, options: &SqliteOptions) -> Result<rusqlite::Connection> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let reader = rusqlite::Connection::open_with_flags(target, flags).map_err(backend_error)?;
    harden(&reader)?;
    set_busy_timeout(&reader, options.busy_timeout)?;
    reader.set_prepared_statement_cache_capacity(options.statement_cache_capacity);
    Ok(reader)
}

fn open_readers(target: &Path, options: &SqliteOptions) -> Result<Vec<Mutex<rusqlite::Connection>>> {
    (0..options.readers).map(|_| open_reader(target, options).map(Mutex::new)).collect()
}

/// SQLite opens a file lazily: reading the schema makes it open the WAL too.
fn probe(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
}

/// Whether a read-only connection failed because the WAL-mode database's `-wal` / `-shm`
/// files neither exist nor can be created; SQLite reports that as "cannot open" or as
/// "read-only directory".
fn cannot_open_wal(e: &rusqlite::Error, path: &Path) -> bool {
    use rusqlite::ErrorCode as C;
    let sidecar = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    matches!(e.sqlite_error_code(), Some(C::CannotOpen | C::ReadOnly))
        && !sidecar("-wal").exists()
        && !sidecar("-shm").exists()
}

/// `file:<path>?immutable=1`, the path percent-encoded; `None` if the path is not UTF-8.
fn immutable_uri(path: &Path) -> Option<PathBuf> {
    let path = std::fs::canonicalize(path).ok()?;
    let mut uri = String::from("file:");
    for b in path.to_str()?.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    Some(PathBuf::from(uri))
}

/// Sets SQLite's busy timeout; rusqlite panics above `i32::MAX` milliseconds, so longer ones
/// are cut to that (24 days).
fn set_busy_timeout(conn: &rusqlite::Connection, timeout: Duration) -> Result<()> {
    conn.busy_timeout(timeout.min(Duration::from_millis(i32::MAX as u64))).map_err(backend_error)
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        // Readers first: the last connection to close a WAL-mode file checkpoints the WAL and
        // deletes it, and a read-only connection cannot, so the writer must be that one.
        self.readers.clear();
        if self.file.is_some() && !self.read_only {
            let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
            // Still-open connections elsewhere may be using the WAL; a destructor must not wait
            // for them: checkpoint what can be now, and truncate only if nobody is in it.
            let _ = conn.busy_timeout(Duration::ZERO);
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
}

impl Backend for SqliteBackend {
    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> Result<()>) -> Result<()> {
        // A panic in an earlier closure poisons the mutex, but the transaction guard below has
        // already rolled that work back, so the connection is in a clean state.
        if access == Access::Read && !self.readers.is_empty() {
            return f(&SqliteConnection(&self.reader()));
        }
        if access == Access::Write && self.read_only {
            return Err(read_only());
        }
        let writer = self.lock_writer()?;
        let conn = SqliteConnection(&writer.conn);
        if access == Access::Read {
            return f(&conn);
        }
        // Writes take the write lock up front (BEGIN IMMEDIATE), where a busy database can be
        // waited for and retried safely; once held, no statement of the closure meets a lock.
        self.begin_transaction(&writer)?;
        let mut guard = Rollback { conn: conn.0, armed: true };
        f(&conn)?;
        conn.0.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).map_err(backend_error)?;
        guard.armed = false;
        self.account_own_commit(conn.0);
        Ok(())
    }

    fn begin(&self) -> Result<Box<dyn HeldTransaction + '_>> {
        let conn = self.lock_writer()?;
        self.begin_transaction(&conn)?;
        Ok(Box::new(SqliteHeld { conn, open: true, watch: self.watch.get().and_then(Option::as_ref) }))
    }

    fn foreign_commits(&self) -> Option<u64> {
        let Some(file) = &self.file else {
            // A private in-memory database: only this backend writes it.
            return Some(0);
        };
        let watch = self.watch.get_or_init(|| {
            let writer = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
            super::wal_watch::WalWatch::start(file, &writer)
        });
        let watch = watch.as_ref()?;
        if let Ok(foreign) = watch.check() {
            return Some(foreign);
        }
        // Something committed since the last account: find out who, if the writer is free
        // (when it is not, the commit may be this backend's own, accounted for once it ends).
        let writer = match self.conn.try_lock() {
            Ok(writer) => writer,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        if !writer.is_autocommit() {
            return None;
        }
        watch.sync(&writer)
    }
}

impl SqliteBackend {
    /// Accounts for a commit of the writer connection (which the caller still holds) in the
    /// watch over other connections' commits, if one runs.
    fn account_own_commit(&self, writer: &rusqlite::Connection) {
        if let Some(Some(watch)) = self.watch.get() {
            // Unaccounted, the next check finds the header moved and syncs then.
            let _ = watch.sync(writer);
        }
    }

    /// Opens the writer's transaction: a deferred one (reads only) on a read-only database,
    /// otherwise one holding the write lock.
    fn begin_transaction(&self, writer: &Writer<'_>) -> Result<()> {
        if self.read_only {
            return writer
                .conn
                .prepare_cached("BEGIN")
                .and_then(|mut s| s.execute([]))
                .map(drop)
                .map_err(backend_error);
        }
        if let Some(file) = &self.file {
            let waits_for_itself = HELD_WRITERS
                .with(|held| held.borrow().iter().any(|h| h.key != writer.key && h.writing.as_ref() == Some(file)));
            if waits_for_itself {
                return Err(BackendError::new(
                    BackendErrorKind::WouldDeadlock,
                    format!(
                        "this thread holds a write transaction on {} through another Db handle, which this write \
                         would wait for forever: write through that transaction, or finish it first",
                        file.display()
                    ),
                )
                .into());
            }
        }
        self.begin_immediate(&writer.conn)?;
        if let Some(file) = &self.file {
            HELD_WRITERS.with(|held| {
                if let Some(h) = held.borrow_mut().iter_mut().find(|h| h.key == writer.key) {
                    h.writing = Some(Arc::clone(file));
                }
            });
        }
        Ok(())
    }

    /// `BEGIN IMMEDIATE`, waiting for another connection's write lock in slices of SQLite's
    /// busy handler with jittered pauses in between, until `busy_timeout` has passed.
    fn begin_immediate(&self, conn: &rusqlite::Connection) -> Result<()> {
        // A deadline too far to represent is no deadline.
        let deadline = Instant::now().checked_add(self.busy.total);
        let left = || deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(Instant::now()));
        let policy = crate::retry::RetryPolicy::default();
        let mut attempt = 0;
        let mut narrowed = false;
        let outcome = loop {
            match conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])) {
                Ok(_) => break Ok(()),
                Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                    if left().is_zero() {
                        break Err(BackendError::new(
                            BackendErrorKind::Busy,
                            format!(
                                "another connection held the database's write lock for the whole busy timeout of \
                                 {:?}; nothing was written",
                                self.busy.total
                            ),
                        )
                        .with_source(e)
                        .into());
                    }
                    std::thread::sleep(policy.backoff(attempt).min(left()));
                    attempt = attempt.saturating_add(1);
                    // The last slice ends at the deadline.
                    if left() < self.busy.slice {
                        let _ = set_busy_timeout(conn, left());
                        narrowed = true;
                    }
                }
                Err(e) => break Err(backend_error(e)),
            }
        };
        if narrowed {
            // Ignored on failure: it cannot fail, and an open transaction must be returned as Ok.
            let _ = set_busy_timeout(conn, self.busy.slice);
        }
        outcome
    }
}

fn read_only() -> crate::Error {
    BackendError::new(
        BackendErrorKind::ReadOnly,
        "the database was opened read-only (DbOptions::read_only): writes are refused",
    )
    .into()
}

/// The limits a Cloudflare Durable Object's SQLite enforces, applied to every native
/// connection too, so that a statement db4 builds fails the same way on both backends (and the
/// native test suite catches what production on a Durable Object would refuse).
pub(crate) const PLATFORM_LIMITS: [(rusqlite::limits::Limit, i32); 5] = {
    use rusqlite::limits::Limit as L;
    [
        (L::SQLITE_LIMIT_VARIABLE_NUMBER, crate::limits::MAX_PARAMS as i32),
        (L::SQLITE_LIMIT_EXPR_DEPTH, crate::limits::MAX_EXPR_DEPTH as i32),
        (L::SQLITE_LIMIT_SQL_LENGTH, crate::limits::MAX_SQL_BYTES as i32),
        (L::SQLITE_LIMIT_COLUMN, crate::limits::MAX_COLUMNS as i32),
        (L::SQLITE_LIMIT_FUNCTION_ARG, crate::limits::MAX_FUNCTION_ARGS as i32),
    ]
};

/// Settings every connection gets before its first statement.
///
/// Double-quoted string literals are off: with SQLite's legacy fallback, `"f_status"` naming a
/// column that another handle has since dropped would silently become the string
/// `'f_status'` and a query would answer wrongly instead of failing.
fn harden(conn: &rusqlite::Connection) -> Result<()> {
    use rusqlite::config::DbConfig;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false).map_err(backend_error)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false).map_err(backend_error)?;
    for (limit, value) in PLATFORM_LIMITS {
        conn.set_limit(limit, value).map_err(backend_error)?;
    }
    Ok(())
}

/// A writer connection this thread holds.
struct HeldWriter {
    /// The backend's address.
    key: usize,
    /// The file whose write lock its transaction holds, once it holds it.
    writing: Option<Arc<Path>>,
}

thread_local! {
    /// The backends whose writer connection this thread holds. Only ever about this thread's
    /// own transactions, so it cannot mistake another thread's or process's lock for one.
    static HELD_WRITERS: std::cell::RefCell<Vec<HeldWriter>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The writer connection, locked by this thread.
struct Writer<'a> {
    conn: MutexGuard<'a, rusqlite::Connection>,
    key: usize,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Dropped after the transaction ended (the rollback guards are dropped first).
        HELD_WRITERS.with(|held| held.borrow_mut().retain(|h| h.key != self.key));
    }
}

impl SqliteBackend {
    /// A reader connection. Each thread prefers its own (its page cache stays warm for it) and
    /// takes another free one when that is busy; it waits only when all are.
    fn reader(&self) -> MutexGuard<'_, rusqlite::Connection> {
        thread_local! {
            static PREFERRED: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        }
        static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
        let n = self.readers.len();
        let first = PREFERRED.with(|p| *p) % n;
        for i in (0..n).map(|k| (first + k) % n) {
            match self.readers[i].try_lock() {
                Ok(guard) => return guard,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.readers[first].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the writer connection. A thread that already holds it (a transaction is open
    /// and code inside it writes through the `Db` instead of the transaction) gets an error
    /// rather than waiting for itself forever.
    fn lock_writer(&self) -> Result<Writer<'_>> {
        let key = self as *const Self as usize;
        if HELD_WRITERS.with(|held| held.borrow().iter().any(|h| h.key == key)) {
            return Err(BackendError::new(
                BackendErrorKind::WouldDeadlock,
                "this thread is inside a transaction on this database: use the transaction's collections \
                 (tx.collection::<T>()) instead of the Db's, or finish the transaction first",
            )
            .into());
        }
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        HELD_WRITERS.with(|held| held.borrow_mut().push(HeldWriter { key, writing: None }));
        Ok(Writer { conn, key })
    }
}

/// An explicit transaction: the writer connection, locked until commit or rollback.
struct SqliteHeld<'a> {
    conn: Writer<'a>,
    open: bool,
    watch: Option<&'a super::wal_watch::WalWatch>,
}

impl SqliteHeld<'_> {
    fn finish(&mut self, sql: &str) -> Result<()> {
        self.conn.conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map_err(backend_error)?;
        // Only now: if COMMIT failed, drop still rolls back.
        self.open = false;
        if let Some(watch) = self.watch {
            let _ = watch.sync(&self.conn.conn);
        }
        Ok(())
    }
}

impl Connection for SqliteHeld<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        SqliteConnection(&self.conn.conn).execute(sql, params)
    }
    fn query(&self, sql: &str, params: &[Value], row: &mut dyn FnMut(&dyn Row) -> Result<()>) -> Result<()> {
        SqliteConnection(&self.conn.conn).query(sql, params, row)
    }
    fn execute_ddl(&self, sql: &str) -> Result<()> {
        SqliteConnection(&self.conn.conn).execute_ddl(sql)
    }
}

impl HeldTransaction for SqliteHeld<'_> {
    fn commit(mut self: Box<Self>) -> Result<()> {
        self.finish("COMMIT")
    }
    fn rollback(mut self: Box<Self>) -> Result<()> {
        self.finish("ROLLBACK")
    }
    fn as_connection(&self) -> &dyn Connection {
        self
    }
}

impl Drop for SqliteHeld<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.conn.is_autocommit() {
            // Dropped without commit (or a failed commit): undo everything.
            let _ = self.conn.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Rolls the open transaction back unless disarmed: on `Err` and on unwinding.
struct Rollback<'a> {
    conn: &'a rusqlite::Connection,
    armed: bool,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.armed && !self.conn.is_autocommit() {
            // Nothing useful can be done with a failed rollback here; SQLite rolls back an
            // open transaction itself when the connection is next used or closed.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

struct SqliteConnection<'a>(&'a rusqlite::Connection);

impl Connection for SqliteConnection<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let mut stmt = self.0.prepare_cached(sql).map_err(backend_error)?;
        stmt.execute(rusqlite::params_from_iter(params.iter())).map_err(backend_error)
    }

    fn query(&self, sql: &str, params: &[Value], row: &mut dyn FnMut(&dyn Row) -> Result<()>) -> Result<()> {
        let mut stmt = self.0.prepare_cached(sql).map_err(backend_error)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(backend_error)?;
        while let Some(r) = rows.next().map_err(backend_error)? {
            row(&SqliteRow(r))?;
        }
        Ok(())
    }

    fn execute_ddl(&self, sql: &str) -> Result<()> {
        self.0.execute_batch(sql).map_err(backend_error)
    }
}

struct SqliteRow<'a, 'b>(&'a rusqlite::Row<'b>);

impl Row for SqliteRow<'_, '_> {
    fn get(&self, index: usize) -> Result<ValueRef<'_>> {
        let v = self.0.get_ref(index).map_err(backend_error)?;
        Ok(match v {
            SqlValueRef::Null => ValueRef::Null,
            SqlValueRef::Integer(i) => ValueRef::Integer(i),
            SqlValueRef::Real(r) => ValueRef::Real(r),
            SqlValueRef::Text(t) => ValueRef::Text(std::str::from_utf8(t).map_err(|e| {
                BackendError::new(BackendErrorKind::Corrupt, format!("column {index} holds invalid UTF-8: {e}"))
            })?),
            SqlValueRef::Blob(b) => ValueRef::Blob(b),
        })
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => SqlValueRef::Null,
            Value::Integer(i) => SqlValueRef::Integer(*i),
            Value::Real(r) => SqlValueRef::Real(*r),
            Value::Text(s) => SqlValueRef::Text(s.as_bytes()),
            Value::Blob(b) => SqlValueRef::Blob(b),
        }))
    }
}

fn backend_error(e: rusqlite::Error) -> crate::Error {
    use rusqlite::ErrorCode as C;
    let kind = match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => BackendErrorKind::Busy,
        Some(C::ConstraintViolation) => BackendErrorKind::Constraint,
        Some(C::TooBig) => BackendErrorKind::TooBig,
        Some(C::DatabaseCorrupt | C::NotADatabase) => BackendErrorKind::Corrupt,
        Some(C::ReadOnly) => BackendErrorKind::ReadOnly,
        Some(C::CannotOpen | C::SystemIoFailure | C::DiskFull | C::PermissionDenied) => BackendErrorKind::Io,
        _ => BackendErrorKind::Other,
    };
    BackendError::new(kind, e.to_string()).with_source(e).into()
}
