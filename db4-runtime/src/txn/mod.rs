//! Transactions, savepoints and nesting.
//!
//! A transaction is one backend transaction ([`Access::Atomic`], or [`Backend::begin`] for an
//! explicit one). Savepoints do not use SQL `SAVEPOINT` (a Durable Object rejects it): while a
//! savepoint is active, every write first records the row's before-image in an undo log, and
//! `rollback_to` replays that log backwards. Both backends use this one mechanism, so they
//! behave identically; with no savepoint active nothing is logged and a write costs what it
//! costs outside a transaction.
//!
//! [`Backend::begin`]: crate::Backend::begin

mod scope;

pub(crate) use scope::Runner;
pub use scope::Scope;

use crate::backend::{Access, Connection, HeldTransaction};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::retry::{RetryPolicy, is_retryable};
use crate::schema::Schema;
use crate::store::change::Change;
use crate::store::meta::CollectionMeta;
use crate::store::pipeline::{WriteLog, restore};
use crate::store::slot::MetaSlot;
use crate::store::tally::Tally;
use crate::trace::{self, OpSpan};
use std::cell::RefCell;
use std::sync::Arc;

/// The isolation a transaction asks for.
///
/// Both backends run write transactions one at a time (SQLite has a single writer; a Durable
/// Object runs one request's transaction at a time), so every level is in fact
/// **serializable**: a transaction sees only committed data plus its own writes, and no other
/// write interleaves with it. Reads outside a transaction see the last committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// Served as serializable.
    ReadCommitted,
    /// Served as serializable.
    RepeatableRead,
    /// Serializable (the default).
    #[default]
    Serializable,
}

/// Options for [`Db::transaction_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TransactionOptions {
    /// The isolation level; see [`IsolationLevel`] for what each backend guarantees.
    pub isolation: IsolationLevel,
    /// How to retry the whole transaction when it fails with a version conflict or a busy
    /// database. The closure runs again from the start on each retry.
    pub retry: RetryPolicy,
}

impl TransactionOptions {
    /// Sets the isolation level.
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = level;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }
}

struct Savepoint {
    id: u64,
    name: Option<String>,
    /// Where the write log stood when the savepoint was taken.
    mark: (usize, usize),
}

#[derive(Default)]
struct TxState {
    savepoints: Vec<Savepoint>,
    next_savepoint: u64,
    /// Collections first created inside this transaction: registered with the `Db` only once
    /// the transaction commits.
    new_collections: Vec<Arc<MetaSlot>>,
    /// Set when an undo failed half-way: the transaction can only be rolled back.
    broken: bool,
    /// Collection layouts (slot address, generation) already checked against the stored
    /// schema in this transaction. Nobody else can change a schema while the transaction
    /// holds the write lock, so one check per collection is enough, until the transaction
    /// migrates a collection itself.
    checked: Vec<(usize, i64)>,
}

enum TxConn<'a> {
    Lent(&'a dyn Connection),
    Held(Box<dyn HeldTransaction + 'a>),
}

/// An open transaction: from [`Db::transaction`] (as `&Transaction` inside the closure) or
/// [`Db::begin`] (owned, finished with [`commit`](Self::commit) or
/// [`rollback`](Self::rollback), rolled back if dropped).
///
/// Reads through it see its own writes.
pub struct Transaction<'a> {
    db: &'a Db,
    conn: TxConn<'a>,
    state: RefCell<TxState>,
    /// What the transaction's writes recorded: undo entries while a savepoint is active, and
    /// the changes reported on commit (minus what savepoints undid).
    log: RefCell<WriteLog>,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Transaction")
            .field("savepoints", &state.savepoints.iter().map(|s| s.name.as_deref()).collect::<Vec<_>>())
            .field("undo_entries", &self.log.borrow().mark().0)
            .finish_non_exhaustive()
    }
}

impl<'a> Transaction<'a> {
    fn new(db: &'a Db, conn: TxConn<'a>) -> Self {
        Self {
            db,
            conn,
            state: RefCell::new(TxState::default()),
            log: RefCell::new(db.commits().log().warm(db.warm())),
        }
    }

    pub(crate) fn conn(&self) -> Result<&dyn Connection> {
        if self.state.borrow().broken {
            return Err(broken());
        }
        Ok(match &self.conn {
            TxConn::Lent(c) => *c,
            TxConn::Held(h) => h.as_connection(),
        })
    }

    pub(crate) fn db(&self) -> &'a Db {
        self.db
    }

    pub(crate) fn log(&self) -> &RefCell<WriteLog> {
        &self.log
    }

    /// A collection first created by this transaction, not yet registered with the `Db`.
    pub(crate) fn pending_collection(&self, schema: &'static Schema) -> Option<Arc<MetaSlot>> {
        self.state.borrow().new_collections.iter().find(|m| std::ptr::eq(m.schema(), schema)).map(Arc::clone)
    }

    /// Remembers a collection this transaction created or migrated, to register on commit.
    pub(crate) fn add_pending_collection(&self, slot: Arc<MetaSlot>) {
        let mut state = self.state.borrow_mut();
        state.new_collections.push(slot);
        // The migration may have moved a schema other handles' layouts were checked against.
        state.checked.clear();
    }

    /// `slot`'s layout, checked against the stored schema once per transaction.
    pub(crate) fn fresh_meta(&self, slot: &MetaSlot) -> Result<Arc<CollectionMeta>> {
        let key = std::ptr::from_ref(slot) as usize;
        let meta = slot.get();
        if self.state.borrow().checked.contains(&(key, meta.generation)) {
            return Ok(meta);
        }
        let meta = slot.fresh(self.conn()?)?;
        self.state.borrow_mut().checked.push((key, meta.generation));
        Ok(meta)
    }

    /// Marks a savepoint named `name`; [`rollback_to`](Self::rollback_to) undoes every write
    /// made after it. Names may repeat: the most recent one wins.
    ///
    /// # Errors
    ///
    /// An error only if the transaction is broken by a failed undo.
    pub fn savepoint(&self, name: &str) -> Result<()> {
        let _span = trace::op("savepoint", None);
        self.push_savepoint(Some(name.to_owned())).map(drop)
    }

    /// Undoes every write made since savepoint `name`. The savepoint stays active (savepoints
    /// created after it are removed), so it can be rolled back to again.
    ///
    /// Inside a nested [`transaction`](Self::transaction), only the savepoints it created
    /// itself can be rolled back to: undoing the enclosing transaction's work from inside
    /// would pull the nested transaction's own start away from under it.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSavepoint`] if no active savepoint has this name;
    /// [`Error::TransactionState`] if it belongs to a transaction enclosing the current
    /// nested one (nothing is undone then, and both transactions go on); a backend error
    /// while undoing, after which the transaction can only be rolled back.
    pub fn rollback_to(&self, name: &str) -> Result<()> {
        let span = trace::op("rollback_to", None);
        let index = self.find_own(name, "roll back to")?;
        span.rows(self.undo_to(index, false)?);
        Ok(())
    }

    /// Forgets savepoint `name` and the ones created after it, keeping their writes (they
    /// still commit or roll back with the transaction).
    ///
    /// Inside a nested [`transaction`](Self::transaction), only the savepoints it created
    /// itself can be released.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownSavepoint`] if no active savepoint has this name;
    /// [`Error::TransactionState`] if it belongs to a transaction enclosing the current
    /// nested one (nothing changes then).
    pub fn release(&self, name: &str) -> Result<()> {
        let _span = trace::op("release", None);
        let index = self.find_own(name, "release")?;
        self.truncate_savepoints(index);
        Ok(())
    }

    /// Runs `f` as a nested transaction: if it returns `Err` (or panics), only its own writes
    /// are undone and the error is returned (the panic continues); the enclosing transaction
    /// goes on.
    ///
    /// # Errors
    ///
    /// Whatever `f` returns, or a backend error while undoing.
    pub fn transaction<R>(&self, f: impl FnOnce(&Self) -> Result<R>) -> Result<R> {
        let _span = trace::op("transaction", None);
        self.nested(f)
    }

    /// [`transaction`](Self::transaction) for a closure with an error type of its own: any
    /// `Err` (or a panic) undoes only the nested transaction's writes and is returned as it
    /// is. db4's errors inside `f` convert with `?` through `E: From<db4::Error>`.
    ///
    /// # Errors
    ///
    /// Whatever `f` returns, or a db4 error (converted into `E`) while undoing.
    pub fn try_transaction<R, E: From<Error>>(&self, f: impl FnOnce(&Self) -> Result<R, E>) -> Result<R, E> {
        let _span = trace::op("try_transaction", None);
        self.nested(f)
    }

    /// A nested transaction, without a span of its own (an atomic write inside a transaction
    /// runs as one).
    pub(crate) fn nested<R, E: From<Error>>(&self, f: impl FnOnce(&Self) -> Result<R, E>) -> Result<R, E> {
        let id = self.push_savepoint(None)?;
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(result) => result,
            Err(panic) => {
                // Undo the inner part, then let the panic go on: a caller that catches it
                // finds the enclosing transaction as it was before the nested one.
                let index = self.state.borrow().savepoints.iter().position(|s| s.id == id);
                if let Some(index) = index {
                    let _ = self.undo_to(index, true);
                }
                std::panic::resume_unwind(panic);
            }
        };
        let index = self.state.borrow().savepoints.iter().position(|s| s.id == id);
        let Some(index) = index else {
            // Unreachable through the API (rollback_to and release refuse to reach past a
            // nested transaction's start), but if it happened the work is not ours to judge.
            return Err(result
                .err()
                .unwrap_or_else(|| Error::transaction_state("a nested transaction lost its own savepoint").into()));
        };
        if result.is_err() {
            self.undo_to(index, true)?;
        } else {
            self.truncate_savepoints(index);
        }
        result
    }

    /// Commits an explicit transaction from [`Db::begin`].
    ///
    /// # Errors
    ///
    /// A backend error; the transaction is rolled back then. Committing a transaction whose
    /// savepoint undo failed is refused (and rolls it back).
    pub fn commit(self) -> Result<()> {
        let span = trace::op("commit", None);
        let is_broken = self.state.borrow().broken;
        let new_collections = std::mem::take(&mut self.state.borrow_mut().new_collections);
        // Released once committed (or rolled back), when this function returns.
        let _warm = self.log.borrow_mut().take_warm();
        let (mut changes, tally) = std::mem::take(&mut *self.log.borrow_mut()).into_parts();
        let db = self.db;
        match self.conn {
            TxConn::Held(held) if !is_broken => {
                // Dropping `held` on an error rolls the data and the log back together.
                db.commits().append(held.as_connection(), &mut changes)?;
                // Taken while the held transaction still has the write lock.
                let ticket = db.commits().ticket();
                held.commit()?;
                db.registry().register(new_collections);
                db.committed().add(&tally);
                span.rows(tally.total());
                if let Some(ticket) = ticket {
                    ticket.deliver(&changes);
                }
                Ok(())
            }
            TxConn::Held(held) => {
                held.rollback()?;
                Err(broken())
            }
            TxConn::Lent(_) => Err(Error::transaction_state(
                "a closure transaction cannot be committed by hand: it commits when its closure returns Ok",
            )),
        }
    }

    /// Rolls back an explicit transaction from [`Db::begin`]. Dropping it does the same.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn rollback(self) -> Result<()> {
        let _span = trace::op("rollback", None);
        match self.conn {
            TxConn::Held(held) => held.rollback(),
            TxConn::Lent(_) => Err(Error::transaction_state(
                "a closure transaction cannot be rolled back by hand: return Err from its closure",
            )),
        }
    }

    fn push_savepoint(&self, name: Option<String>) -> Result<u64> {
        let mut state = self.state.borrow_mut();
        if state.broken {
            return Err(broken());
        }
        let id = state.next_savepoint;
        state.next_savepoint += 1;
        let mut log = self.log.borrow_mut();
        let mark = log.mark();
        log.keep_undo(true);
        state.savepoints.push(Savepoint { id, name, mark });
        Ok(id)
    }

    /// The savepoint named `name`, if the innermost nested transaction (or the transaction
    /// itself, outside any nested one) owns it. `action` names the refused call.
    fn find_own(&self, name: &str, action: &str) -> Result<usize> {
        let state = self.state.borrow();
        let index = state
            .savepoints
            .iter()
            .rposition(|s| s.name.as_deref() == Some(name))
            .ok_or_else(|| Error::UnknownSavepoint { name: name.to_owned() })?;
        // Unnamed savepoints are the starts of nested transactions still running.
        if state.savepoints[index + 1..].iter().any(|s| s.name.is_none()) {
            return Err(Error::transaction_state(format!(
                "cannot {action} savepoint {:?} from inside a nested transaction: it belongs to an enclosing \
                 transaction (return Err from the nested closure to undo the nested part)",
                crate::error::Short(name)
            )));
        }
        Ok(index)
    }

    fn truncate_savepoints(&self, index: usize) {
        let mut state = self.state.borrow_mut();
        state.savepoints.truncate(index);
        if state.savepoints.is_empty() {
            // Nothing can roll back to these writes any more but the whole transaction,
            // which the backend does by itself.
            self.log.borrow_mut().keep_undo(false);
        }
    }

    /// Undoes the writes after savepoint `index`; removes the savepoint too if `remove`.
    /// Returns how many writes it undid.
    fn undo_to(&self, index: usize, remove: bool) -> Result<usize> {
        let (entries, none_left) = {
            let mut state = self.state.borrow_mut();
            let mark = state.savepoints[index].mark;
            state.savepoints.truncate(if remove { index } else { index + 1 });
            (self.log.borrow_mut().rewind(mark), state.savepoints.is_empty())
        };
        let undone = entries.len();
        if let Err(e) = restore(self.conn()?, entries) {
            self.state.borrow_mut().broken = true;
            return Err(e);
        }
        if none_left {
            self.log.borrow_mut().keep_undo(false);
        }
        Ok(undone)
    }

    /// What the transaction leaves to do once committed: collections to register, changes
    /// to report and writes to count.
    fn into_outcome(self) -> (Vec<Arc<MetaSlot>>, Vec<Change>, Tally) {
        let (changes, tally) = self.log.into_inner().into_parts();
        (self.state.into_inner().new_collections, changes, tally)
    }
}

fn broken() -> Error {
    Error::transaction_state("a savepoint rollback failed earlier; this transaction can only be rolled back")
}

impl Db {
    /// Runs `f` in a transaction: everything it writes commits together when it returns
    /// `Ok`, and nothing does when it returns `Err` or panics (the panic then continues).
    ///
    /// To leave with an error of the application's own, wrap it with [`Error::aborted`], or
    /// use [`try_transaction`](Self::try_transaction), whose closure returns any error type.
    ///
    /// # Errors
    ///
    /// Whatever `f` returns, or a backend error beginning or committing.
    ///
    /// # Example
    ///
    /// See the crate documentation for a transfer between accounts with a savepoint.
    pub fn transaction<R>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<R>) -> Result<R> {
        let span = trace::op("transaction", None);
        self.run_transaction(&span, f)
    }

    /// Runs `f` in a transaction, like [`transaction`](Self::transaction), for a closure that
    /// returns the application's own error type `E`: any `Err` rolls everything back and is
    /// returned unchanged (a panic rolls back too, and continues). db4's own errors inside `f`
    /// convert with `?` through `E: From<db4::Error>`.
    ///
    /// # Errors
    ///
    /// Whatever `f` returns, or a db4 error (converted into `E`) beginning or committing.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Db, Document, Result};
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// struct Account { #[id] id: String, balance: i64 }
    ///
    /// #[derive(Debug)]
    /// enum TransferError {
    ///     Insufficient { balance: i64 },
    ///     Db(db4_runtime::Error),
    /// }
    /// impl From<db4_runtime::Error> for TransferError {
    ///     fn from(e: db4_runtime::Error) -> Self { TransferError::Db(e) }
    /// }
    ///
    /// # fn main() -> Result<()> {
    /// let db = Db::open_in_memory()?;
    /// db.collection::<Account>()?.insert(&Account { id: "a1".into(), balance: 30 })?;
    /// let outcome = db.try_transaction(|tx| {
    ///     let accounts = tx.collection::<Account>()?;          // db4 errors convert with `?`
    ///     let mut a = accounts.get("a1")?.expect("seeded");
    ///     a.balance -= 100;
    ///     accounts.update(&a)?;
    ///     if a.balance < 0 {
    ///         return Err(TransferError::Insufficient { balance: a.balance }); // rolls back
    ///     }
    ///     Ok(a.balance)
    /// });
    /// assert!(matches!(outcome, Err(TransferError::Insufficient { balance: -70 })));
    /// assert_eq!(db.collection::<Account>()?.get("a1")?.map(|a| a.balance), Some(30));
    /// # Ok(()) }
    /// ```
    pub fn try_transaction<R, E: From<Error>>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<R, E>) -> Result<R, E> {
        let span = trace::op("try_transaction", None);
        self.run_transaction(&span, f)
    }

    /// Runs `f` in a transaction, recording on `span` how many writes committed.
    fn run_transaction<R, E: From<Error>>(
        &self,
        span: &OpSpan,
        f: impl FnOnce(&Transaction<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        self.commits().check_not_observing()?;
        let mut ticket = None;
        // The closure's own error waits here; the backend only needs to know to roll back.
        let mut failure: Option<E> = None;
        let mut warm = None;
        let outcome = crate::backend::run(self.backend(), Access::Atomic, |conn| {
            let tx = Transaction::new(self, TxConn::Lent(conn));
            let out = match f(&tx) {
                Ok(out) => out,
                Err(e) => {
                    failure = Some(e);
                    return Err(Error::transaction_state("the transaction's closure returned Err"));
                }
            };
            if tx.state.borrow().broken {
                return Err(broken());
            }
            self.commits().append(tx.conn()?, tx.log.borrow_mut().changes_mut())?;
            ticket = self.commits().ticket();
            // The warm tier's pending documents are released after the commit, below.
            warm = tx.log.borrow_mut().take_warm();
            Ok((out, tx.into_outcome()))
        });
        drop(warm);
        let (out, (new_collections, changes, tally)) = match (outcome, failure) {
            (Ok(done), _) => done,
            (Err(_), Some(e)) => return Err(e),
            (Err(e), None) => return Err(e.into()),
        };
        self.registry().register(new_collections);
        self.committed().add(&tally);
        span.rows(tally.total());
        if let Some(ticket) = ticket {
            ticket.deliver(&changes);
        }
        Ok(out)
    }

    /// Runs `f` in a transaction with options, re-running it from the start when it fails
    /// with a version conflict or a busy database, as `options.retry` allows.
    ///
    /// # Errors
    ///
    /// As [`transaction`](Self::transaction), after the retries are spent.
    pub fn transaction_with<R>(
        &self,
        options: &TransactionOptions,
        mut f: impl FnMut(&Transaction<'_>) -> Result<R>,
    ) -> Result<R> {
        let span = trace::op("transaction_with", None);
        let mut attempt = 0;
        loop {
            match self.run_transaction(&span, &mut f) {
                Err(e) if is_retryable(&e) && attempt < options.retry.max_retries => {
                    crate::retry::pause(options.retry.backoff(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Opens an explicit transaction, for code that cannot put its work in a closure. Finish
    /// it with [`Transaction::commit`] or [`Transaction::rollback`]; dropping it rolls back.
    /// Other writers wait until it finishes.
    ///
    /// # Errors
    ///
    /// A backend error; [`BackendErrorKind::Unsupported`](crate::BackendErrorKind::Unsupported)
    /// on backends with closure transactions only (Durable Objects).
    pub fn begin(&self) -> Result<Transaction<'_>> {
        let _span = trace::op("begin", None);
        self.commits().check_not_observing()?;
        let held = self.backend().begin()?;
        Ok(Transaction::new(self, TxConn::Held(held)))
    }
}
