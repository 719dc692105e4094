//! The embedded default backend: bundled SQLite through rusqlite.

use super::{Access, Backend, Connection, HeldTransaction, Row};
use crate::error::{BackendError, BackendErrorKind, Result};
use crate::value::{Value, ValueRef};
use rusqlite::types::{ToSqlOutput, ValueRef as SqlValueRef};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

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
    /// How long a statement waits for a lock held by another connection (SQLite's busy
    /// timeout).
    pub busy_timeout: Duration,
    /// How many more times a write transaction that still found the database locked after
    /// `busy_timeout` is retried, after a jittered backoff, before failing with
    /// [`BackendErrorKind::Busy`]. SQLite's own waiting is not fair between connections, so
    /// under heavy contention from other processes one wait can run out.
    pub busy_retries: u32,
    /// How many prepared statements each connection keeps.
    pub statement_cache_capacity: usize,
    /// How many read-only connections serve reads next to the one writer (file databases
    /// only; an in-memory database has one connection). Readers see the last committed state
    /// and never wait for the writer (WAL).
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            busy_retries: 10,
            statement_cache_capacity: 256,
            readers: 4,
        }
    }
}

/// A SQLite database file in WAL mode, with one writer connection and a small pool of
/// read-only connections (or an in-memory database behind one connection).
///
/// Writes are serialized on the writer; a write transaction takes SQLite's write lock up
/// front (`BEGIN IMMEDIATE`), so two processes never deadlock upgrading read locks, and a
/// lock held by another process is waited for up to the busy timeout.
pub struct SqliteBackend {
    busy_retries: u32,
    conn: Mutex<rusqlite::Connection>,
    readers: Vec<Mutex<rusqlite::Connection>>,
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
    /// A backend error if the file cannot be opened or is not a SQLite database.
    pub fn open(path: impl AsRef<Path>, options: &SqliteOptions) -> Result<Self> {
        let path = path.as_ref();
        let conn = rusqlite::Connection::open(path).map_err(backend_error)?;
        let mut backend = Self::configure(conn, options, true)?;
        for _ in 0..options.readers {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_URI;
            let reader = rusqlite::Connection::open_with_flags(path, flags).map_err(backend_error)?;
            harden(&reader)?;
            reader.busy_timeout(options.busy_timeout).map_err(backend_error)?;
            reader.set_prepared_statement_cache_capacity(options.statement_cache_capacity);
            backend.readers.push(Mutex::new(reader));
        }
        Ok(backend)
    }

    /// Opens a private in-memory database.
    ///
    /// # Errors
    ///
    /// A backend error if SQLite cannot allocate it.
    pub fn open_in_memory(options: &SqliteOptions) -> Result<Self> {
        let conn = rusqlite::Connection::open_in_memory().map_err(backend_error)?;
        Self::configure(conn, options, false)
    }

    fn configure(conn: rusqlite::Connection, options: &SqliteOptions, wal: bool) -> Result<Self> {
        harden(&conn)?;
        conn.busy_timeout(options.busy_timeout).map_err(backend_error)?;
        conn.set_prepared_statement_cache_capacity(options.statement_cache_capacity);
        if wal {
            let mode: String =
                conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(backend_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(BackendError::new(
                    BackendErrorKind::Io,
                    format!("cannot switch the database to WAL mode (journal_mode is {mode})"),
                )
                .into());
            }
        }
        let sync = match options.synchronous {
            Synchronous::Full => "PRAGMA synchronous = FULL",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        };
        conn.execute_batch(sync).map_err(backend_error)?;
        Ok(Self { busy_retries: options.busy_retries, conn: Mutex::new(conn), readers: Vec::new() })
    }
}

impl Backend for SqliteBackend {
    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> Result<()>) -> Result<()> {
        // A panic in an earlier closure poisons the mutex, but the transaction guard below has
        // already rolled that work back, so the connection is in a clean state.
        if access == Access::Read && !self.readers.is_empty() {
            return f(&SqliteConnection(&self.reader()));
        }
        let writer = self.lock_writer()?;
        let conn = SqliteConnection(&writer.conn);
        if access == Access::Read {
            return f(&conn);
        }
        // Writes take the write lock up front (BEGIN IMMEDIATE), where a busy database can be
        // waited for and retried safely; once held, no statement of the closure meets a lock.
        self.begin_immediate(conn.0)?;
        let mut guard = Rollback { conn: conn.0, armed: true };
        f(&conn)?;
        conn.0.prepare_cached("COMMIT").and_then(|mut s| s.execute([])).map_err(backend_error)?;
        guard.armed = false;
        Ok(())
    }

    fn begin(&self) -> Result<Box<dyn HeldTransaction + '_>> {
        let conn = self.lock_writer()?;
        self.begin_immediate(&conn.conn)?;
        Ok(Box::new(SqliteHeld { conn, open: true }))
    }
}

impl SqliteBackend {
    /// `BEGIN IMMEDIATE`, retried with jittered backoff while another connection holds the
    /// write lock past the busy timeout.
    fn begin_immediate(&self, conn: &rusqlite::Connection) -> Result<()> {
        let policy = crate::lock::RetryPolicy::default();
        let mut attempt = 0;
        loop {
            match conn.prepare_cached("BEGIN IMMEDIATE").and_then(|mut s| s.execute([])) {
                Ok(_) => return Ok(()),
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && attempt < self.busy_retries =>
                {
                    std::thread::sleep(policy.backoff(attempt));
                    attempt += 1;
                }
                Err(e) => return Err(backend_error(e)),
            }
        }
    }
}

/// The limits a Cloudflare Durable Object's SQLite enforces, applied to every native
/// connection too, so that a statement db4 builds fails the same way on both backends (and the
/// native test suite catches what production on a Durable Object would refuse).
pub(crate) const PLATFORM_LIMITS: [(rusqlite::limits::Limit, i32); 5] = {
    use rusqlite::limits::Limit as L;
    [
        (L::SQLITE_LIMIT_VARIABLE_NUMBER, crate::sql::MAX_PARAMS as i32),
        (L::SQLITE_LIMIT_EXPR_DEPTH, crate::sql::MAX_EXPR_DEPTH as i32),
        (L::SQLITE_LIMIT_SQL_LENGTH, crate::sql::MAX_SQL_BYTES as i32),
        (L::SQLITE_LIMIT_COLUMN, crate::sql::MAX_COLUMNS as i32),
        (L::SQLITE_LIMIT_FUNCTION_ARG, crate::sql::MAX_FUNCTION_ARGS as i32),
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

thread_local! {
    /// The backends whose writer connection this thread holds.
    static HELD_WRITERS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The writer connection, locked by this thread.
struct Writer<'a> {
    conn: MutexGuard<'a, rusqlite::Connection>,
    key: usize,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        HELD_WRITERS.with(|held| held.borrow_mut().retain(|k| *k != self.key));
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
        if HELD_WRITERS.with(|held| held.borrow().contains(&key)) {
            return Err(BackendError::new(
                BackendErrorKind::WouldDeadlock,
                "this thread is inside a transaction on this database: use the transaction's collections \
                 (tx.collection::<T>()) instead of the Db's, or finish the transaction first",
            )
            .into());
        }
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        HELD_WRITERS.with(|held| held.borrow_mut().push(key));
        Ok(Writer { conn, key })
    }
}

/// An explicit transaction: the writer connection, locked until commit or rollback.
struct SqliteHeld<'a> {
    conn: Writer<'a>,
    open: bool,
}

impl SqliteHeld<'_> {
    fn finish(&mut self, sql: &str) -> Result<()> {
        self.conn.conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map_err(backend_error)?;
        // Only now: if COMMIT failed, drop still rolls back.
        self.open = false;
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
        Some(C::CannotOpen | C::SystemIoFailure | C::DiskFull | C::ReadOnly | C::PermissionDenied) => {
            BackendErrorKind::Io
        }
        _ => BackendErrorKind::Other,
    };
    BackendError::new(kind, e.to_string()).with_source(e).into()
}
