//! Delivery of committed changes to [`Db::on_commit`](crate::Db::on_commit) observers, in
//! commit order.
//!
//! A commit takes a [`Ticket`] while it still holds the write lock, so ticket order is commit
//! order; once durable and unlocked, it waits for the earlier tickets, then hands its changes
//! to the observers. A ticket dropped without delivering (a failed commit) is skipped, so later
//! commits never wait forever.

use crate::backend::Connection;
use crate::error::{Error, Result};
use crate::store::change::Change;
use crate::store::outbox::{self, ChangeRetention};
use crate::store::pipeline::WriteLog;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Called with the changes of each commit, in commit order; returns `false` to be removed.
type CommitObserver = Box<dyn Fn(&[Change]) -> bool + Send + Sync>;

/// The observers of a database's commits and the order they are delivered in.
#[derive(Default)]
pub(crate) struct Commits {
    observers: Mutex<Vec<Arc<CommitObserver>>>,
    has_observers: AtomicBool,
    /// Changes carry before-images ([`DbOptions::before_images`](crate::DbOptions)).
    before_images: bool,
    /// Committed changes are appended to the change log
    /// ([`DbOptions::change_log`](crate::DbOptions::change_log)).
    change_log: bool,
    retention: ChangeRetention,
    tickets: Mutex<Tickets>,
    turn: Condvar,
}

#[derive(Default)]
struct Tickets {
    issued: u64,
    delivered: u64,
}

impl Commits {
    pub fn new(before_images: bool, change_log: bool, retention: ChangeRetention) -> Self {
        Self { before_images, change_log, retention, ..Self::default() }
    }

    /// Whether committed changes go to the change log.
    pub fn logs(&self) -> bool {
        self.change_log
    }

    /// Appends a unit of work's changes to the change log (if it is on), giving them their
    /// LSNs. Call inside the unit's backend transaction, just before it commits.
    pub fn append(&self, conn: &dyn Connection, changes: &mut [Change]) -> Result<()> {
        if self.change_log { outbox::append(conn, changes, &self.retention) } else { Ok(()) }
    }

    pub fn observe(&self, observer: impl Fn(&[Change]) + Send + Sync + 'static) {
        self.observe_while(move |changes| {
            observer(changes);
            true
        });
    }

    /// Adds an observer that stays until it returns `false`.
    pub fn observe_while(&self, observer: impl Fn(&[Change]) -> bool + Send + Sync + 'static) {
        self.observers.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::new(Box::new(observer)));
        self.has_observers.store(true, Ordering::Release);
    }

    /// A log for a new unit of work: collecting changes if the change log is on or someone
    /// observes commits.
    pub fn log(&self) -> WriteLog {
        WriteLog::new(self.change_log || self.has_observers.load(Ordering::Acquire), self.before_images)
            .resolve_upserts(self.change_log)
    }

    /// Refuses a write from inside a commit observer of this thread: it would wait for the
    /// observer's own delivery to finish.
    pub fn check_not_observing(&self) -> Result<()> {
        if self.has_observers.load(Ordering::Acquire) && DELIVERING.with(std::cell::Cell::get) {
            return Err(Error::transaction_state(
                "an on_commit observer cannot write to the database it observes (hand the work to another thread)",
            ));
        }
        Ok(())
    }

    /// A place in the delivery order, taken while holding the write lock just before
    /// committing; `None` when nobody observes commits.
    pub fn ticket(&self) -> Option<Ticket<'_>> {
        if !self.has_observers.load(Ordering::Acquire) {
            return None;
        }
        let mut t = self.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        let number = t.issued;
        t.issued += 1;
        Some(Ticket { commits: self, number, done: false })
    }
}

/// A commit's place in the order observers see commits in. Delivered (or, if dropped,
/// skipped) exactly once.
pub(crate) struct Ticket<'a> {
    commits: &'a Commits,
    number: u64,
    done: bool,
}

impl Ticket<'_> {
    /// Waits for the earlier commits to be delivered, then hands `changes` to the observers.
    /// Call after the commit is durable and the write lock released.
    pub fn deliver(mut self, changes: &[Change]) {
        let span = crate::trace::step("deliver", None);
        span.rows(changes.len());
        self.advance(Some(changes));
    }

    fn advance(&mut self, changes: Option<&[Change]>) {
        self.done = true;
        let commits = self.commits;
        let mut t = commits.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        while t.delivered != self.number {
            t = commits.turn.wait(t).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(changes) = changes.filter(|c| !c.is_empty()) {
            drop(t);
            let observers = commits.observers.lock().unwrap_or_else(PoisonError::into_inner).clone();
            DELIVERING.with(|d| d.set(true));
            let mut done = Vec::new();
            for observer in &observers {
                // Observers are the caller's code: a panicking one must not stall later
                // commits (nor stop the others).
                let keep = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observer(changes)));
                if matches!(keep, Ok(false)) {
                    done.push(Arc::clone(observer));
                }
            }
            DELIVERING.with(|d| d.set(false));
            if !done.is_empty() {
                let mut all = commits.observers.lock().unwrap_or_else(PoisonError::into_inner);
                all.retain(|o| !done.iter().any(|d| Arc::ptr_eq(o, d)));
                commits.has_observers.store(!all.is_empty(), Ordering::Release);
            }
            t = commits.tickets.lock().unwrap_or_else(PoisonError::into_inner);
        }
        t.delivered += 1;
        commits.turn.notify_all();
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
