//! The storage seam: a small synchronous SQL backend trait.
//!
//! db4 talks to storage only through [`Backend`] and [`Connection`]. The contract is shaped so
//! that a Cloudflare Durable Object's `SqlStorage` can implement it as well as rusqlite: it
//! never asks for SQL `BEGIN` or `SAVEPOINT`; atomicity is "run this closure atomically"
//! ([`Access::Atomic`]), which a Durable Object provides with `transactionSync`.

use crate::error::Result;
use crate::value::{Value, ValueRef};

#[cfg(feature = "cloudflare")]
mod durable;
#[cfg(feature = "cloudflare")]
pub use durable::DurableBackend;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod wal_watch;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteOptions, Synchronous};

/// What a closure passed to [`Backend::run`] is going to do with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads. The backend may run several readers at once.
    Read,
    /// Writes that need not commit together. The closure has the connection to itself (no
    /// other writer of this backend interleaves); a backend may commit each statement on its
    /// own, so a failure halfway can leave the statements already run in place (SQLite runs
    /// the closure in one transaction anyway, to take the write lock up front).
    Write,
    /// Writes that must commit together: if the closure returns `Ok`, all of its writes are
    /// durable when `run` returns; if it returns `Err` or panics, none of them happened.
    Atomic,
}

/// A storage backend: something that can lend a [`Connection`] to a closure.
///
/// # Contract
///
/// - `run` must not return before the closure's effects are as durable as the backend
///   promises (for SQLite: committed to the WAL).
/// - With [`Access::Atomic`], the closure's writes are all-or-nothing, also when the closure
///   panics: the backend rolls back and lets the panic continue.
/// - `run` is not re-entrant: the closure must not call `run` on the same backend.
/// - Errors are reported as [`Error::Backend`](crate::Error::Backend) with a classified
///   [`BackendErrorKind`](crate::BackendErrorKind); a backend's own error types never escape.
pub trait Backend: Send + Sync + 'static {
    /// Runs `f` with a connection, under the given access mode.
    ///
    /// # Errors
    ///
    /// Whatever `f` returns, or a backend error beginning or committing the transaction.
    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> Result<()>) -> Result<()>;

    /// Opens a transaction that stays open until [`HeldTransaction::commit`] or
    /// [`HeldTransaction::rollback`] is called; dropping it rolls back. Other writers of this
    /// backend wait meanwhile.
    ///
    /// Backends whose platform only offers closure transactions (a Durable Object's
    /// `transactionSync`) keep the default, which refuses.
    ///
    /// # Errors
    ///
    /// A backend error of kind [`Unsupported`](crate::BackendErrorKind::Unsupported) by
    /// default, or one beginning the transaction.
    fn begin(&self) -> Result<Box<dyn HeldTransaction + '_>> {
        Err(crate::BackendError::new(
            crate::BackendErrorKind::Unsupported,
            "this backend only runs transactions as closures: use Db::transaction",
        )
        .into())
    }

    /// For caches kept above the backend (the warm tier): a count of the commits that
    /// connections **other** than this backend's own made to its storage, as far as the
    /// backend has seen them, or `None` when it cannot vouch right now.
    ///
    /// # Contract
    ///
    /// - Called on every cache hit: it must be cheap and must not run a statement.
    /// - If another connection's commit completed before a call starts, that call returns a
    ///   larger count than any call that ended before the commit began, or `None`.
    /// - This backend's own commits never move it (its caller invalidates those itself).
    ///
    /// The default is `None`: caches are bypassed. A backend whose storage nobody else writes
    /// (an in-memory database, a Durable Object) returns a constant.
    fn foreign_commits(&self) -> Option<u64> {
        None
    }

    /// The bytes the database takes in its storage (what a Durable Object bills and caps at
    /// 10 GB). By default, SQLite's page count times its page size.
    ///
    /// # Errors
    ///
    /// A backend error reading the pragmas.
    fn database_bytes(&self) -> Result<u64> {
        database_bytes_by_pragma(self)
    }

    /// The rows this backend's statements wrote so far, as the storage bills them (a Durable
    /// Object's `rowsWritten`: table rows and index entries), if it counts them. `None` by
    /// default.
    fn rows_written(&self) -> Option<u64> {
        None
    }
}

/// [`Backend::database_bytes`] by default: SQLite's page count times its page size.
fn database_bytes_by_pragma<B: Backend + ?Sized>(backend: &B) -> Result<u64> {
    let mut n = [0i64; 2];
    backend.run(Access::Read, &mut |conn| {
        for (slot, pragma) in n.iter_mut().zip(["PRAGMA page_count", "PRAGMA page_size"]) {
            conn.query(pragma, &[], &mut |row| {
                if let ValueRef::Integer(v) = row.get(0)? {
                    *slot = v;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(u64::try_from(n[0].saturating_mul(n[1])).unwrap_or(0))
}

/// A transaction opened by [`Backend::begin`]: a connection whose writes become durable on
/// [`commit`](HeldTransaction::commit) and vanish on [`rollback`](HeldTransaction::rollback)
/// or drop.
pub trait HeldTransaction: Connection {
    /// Commits every write made through this connection.
    ///
    /// # Errors
    ///
    /// A backend error; the transaction is rolled back then.
    fn commit(self: Box<Self>) -> Result<()>;

    /// Discards every write made through this connection.
    ///
    /// # Errors
    ///
    /// A backend error.
    fn rollback(self: Box<Self>) -> Result<()>;

    /// This transaction as a plain connection.
    fn as_connection(&self) -> &dyn Connection;
}

/// A connection lent by a [`Backend`] for the duration of one [`Backend::run`] call.
///
/// SQL passed here is generated by db4 from validated schemas; values travel as parameters.
/// Implementations should cache prepared statements by SQL text: db4 reuses the same texts.
pub trait Connection {
    /// Runs one statement and returns how many rows it changed.
    ///
    /// # Errors
    ///
    /// A backend error (constraint violations are [`BackendErrorKind::Constraint`](crate::BackendErrorKind::Constraint)).
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize>;

    /// Runs one query and calls `row` for each result row, in order. An error from `row` stops
    /// the query and is returned.
    ///
    /// # Errors
    ///
    /// A backend error, or the first error `row` returns.
    fn query(&self, sql: &str, params: &[Value], row: &mut dyn FnMut(&dyn Row) -> Result<()>) -> Result<()>;

    /// Runs one statement without parameters and without a result (DDL).
    ///
    /// # Errors
    ///
    /// A backend error.
    fn execute_ddl(&self, sql: &str) -> Result<()> {
        self.execute(sql, &[]).map(drop)
    }
}

/// One result row.
pub trait Row {
    /// The value of column `index` (0-based).
    ///
    /// # Errors
    ///
    /// A backend error if the column does not exist.
    fn get(&self, index: usize) -> Result<ValueRef<'_>>;
}

/// Runs `f` through [`Backend::run`] and hands back its result.
pub(crate) fn run<R>(backend: &dyn Backend, access: Access, f: impl FnOnce(&dyn Connection) -> Result<R>) -> Result<R> {
    let mut f = Some(f);
    let mut out = None;
    backend.run(access, &mut |conn| {
        let f = f.take().ok_or_else(|| contract("Backend::run called its closure twice"))?;
        out = Some(f(conn)?);
        Ok(())
    })?;
    out.ok_or_else(|| contract("Backend::run returned Ok without running its closure"))
}

fn contract(what: &str) -> crate::Error {
    crate::BackendError::new(crate::BackendErrorKind::Other, what).into()
}
