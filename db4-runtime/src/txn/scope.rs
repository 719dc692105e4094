//! Where operations run: straight on the database (each call its own transaction), or inside
//! a [`Transaction`]. A [`Collection`](crate::Collection) is generic over its scope.

use crate::backend::{Access, Connection, run};
use crate::db::Db;
use crate::error::{BackendErrorKind, Result};
use crate::store::meta::CollectionMeta;
use crate::store::pipeline::Writer;
use crate::store::slot::MetaSlot;
use crate::txn::Transaction;
use std::cell::RefCell;
use std::sync::Arc;

/// Where a [`Collection`](crate::Collection) runs its operations: a [`Db`] (each call runs on
/// its own) or a `&Transaction` (each call joins the transaction). Implemented by db4 only.
pub trait Scope: sealed::Sealed {}

impl Scope for Db {}
impl<'tx> Scope for &'tx Transaction<'tx> {}

mod sealed {
    /// The private half of [`Scope`](super::Scope).
    pub trait Sealed {
        /// The database or transaction to run on.
        fn runner(&self) -> super::Runner<'_>;
    }

    impl Sealed for crate::db::Db {
        fn runner(&self) -> super::Runner<'_> {
            super::Runner::Db(self)
        }
    }

    impl<'tx> Sealed for &'tx crate::txn::Transaction<'tx> {
        fn runner(&self) -> super::Runner<'_> {
            super::Runner::Tx(self)
        }
    }
}

/// A scope, resolved: the database or the transaction to run on. Nominally public only
/// because the sealed half of [`Scope`] returns it; nothing outside the crate can reach it.
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum Runner<'a> {
    /// Each call on its own.
    Db(&'a Db),
    /// Inside the transaction.
    Tx(&'a Transaction<'a>),
}

impl<'a> Runner<'a> {
    /// Runs reads: on a reader connection, or through the transaction (seeing its writes).
    pub(crate) fn read<R>(self, f: impl FnOnce(&dyn Connection) -> Result<R>) -> Result<R> {
        match self {
            Runner::Db(db) => run(db.backend(), Access::Read, f),
            Runner::Tx(tx) => f(tx.conn()?),
        }
    }

    /// Runs writes through the write pipeline: with [`Access::Atomic`] all-or-nothing (inside a
    /// transaction: undone to where they started on error, the transaction going on).
    /// Outside a transaction the writes commit on their own, and their changes then reach the
    /// commit observers.
    pub(crate) fn write<R>(self, access: Access, f: impl FnOnce(Writer<'_>) -> Result<R>) -> Result<R> {
        match self {
            Runner::Db(db) => {
                let commits = db.commits();
                commits.check_not_observing()?;
                let log = RefCell::new(commits.log().warm(db.warm()));
                let mut ticket = None;
                // The change log's rows commit with the data, so the writes must be atomic.
                let access = if commits.logs() { Access::Atomic } else { access };
                let out = run(db.backend(), access, |conn| {
                    let out = f(Writer::new(conn, &log).with_cold(db.cold()))?;
                    commits.append(conn, log.borrow_mut().changes_mut())?;
                    // Taken while the write lock is held: ticket order is commit order.
                    ticket = commits.ticket();
                    Ok(out)
                })?;
                let (changes, tally) = log.into_inner().into_parts();
                db.committed().add(&tally);
                if let Some(ticket) = ticket {
                    ticket.deliver(&changes);
                }
                Ok(out)
            }
            Runner::Tx(tx) if access == Access::Atomic => {
                tx.nested(|tx| f(Writer::new(tx.conn()?, tx.log()).with_cold(tx.db().cold())))
            }
            Runner::Tx(tx) => f(Writer::new(tx.conn()?, tx.log()).with_cold(tx.db().cold())),
        }
    }

    /// The database the scope is on.
    pub(crate) fn db(self) -> &'a Db {
        match self {
            Runner::Db(db) => db,
            Runner::Tx(tx) => tx.db(),
        }
    }

    pub(crate) fn in_transaction(self) -> bool {
        matches!(self, Runner::Tx(_))
    }

    /// Runs a read with the slot's current meta. A read that fails with a backend error may
    /// have met a schema another handle changed (a dropped index column is an error, never a
    /// string): if the stored schema moved, it runs once more with a fresh meta.
    pub(crate) fn read_meta<R>(
        self,
        slot: &MetaSlot,
        mut f: impl FnMut(&dyn Connection, &Arc<CollectionMeta>) -> Result<R>,
    ) -> Result<R> {
        let meta = slot.get();
        match self.read(|conn| f(conn, &meta)) {
            Err(e) if e.backend_kind() == Some(BackendErrorKind::Other) => {
                let fresh = self.read(|conn| slot.fresh(conn))?;
                if fresh.generation == meta.generation {
                    return Err(e);
                }
                self.read(|conn| f(conn, &fresh))
            }
            other => other,
        }
    }

    /// Runs a read with a meta checked against the stored schema first (one lookup in the
    /// schema table): for reads that must notice a schema change that would not make their
    /// statement fail.
    pub(crate) fn read_fresh_meta<R>(
        self,
        slot: &MetaSlot,
        f: impl FnOnce(&dyn Connection, &Arc<CollectionMeta>) -> Result<R>,
    ) -> Result<R> {
        self.read(|conn| {
            let meta = match self {
                Runner::Tx(tx) => tx.fresh_meta(slot)?,
                Runner::Db(_) => slot.fresh(conn)?,
            };
            f(conn, &meta)
        })
    }

    /// Runs writes with a meta checked against the stored schema inside the write
    /// transaction, so a write never bypasses a schema another handle or process has changed
    /// since.
    pub(crate) fn write_meta<R>(
        self,
        slot: &MetaSlot,
        access: Access,
        f: impl FnOnce(Writer<'_>, &Arc<CollectionMeta>) -> Result<R>,
    ) -> Result<R> {
        self.write(access, |writer| {
            let meta = match self {
                Runner::Tx(tx) => tx.fresh_meta(slot)?,
                Runner::Db(_) => slot.fresh(writer.conn)?,
            };
            f(writer, &meta)
        })
    }
}
