//! Delivery of committed changes to [`Db::on_commit`](crate::Db::on_commit) observers, in
//! commit order.
//!
//! A commit takes a [`Ticket`] while it still holds the write lock, so ticket order is commit
//! order; once durable and unlocked, it waits for the earlier tickets, then hands its changes
//! to the observers. A ticket dropped without delivering (a failed commit) is skipped, so later
//! commits never wait forever.

use crate::error::{Error, Result};
use crate::store::change::Change;
use crate::store::pipeline::WriteLog;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Called with the changes of each commit, in commit order.
type CommitObserver = Box<dyn Fn(&[Change]) + Send + Sync>;

/// The observers of a database's commits and the order they are delivered in.
#[derive(Default)]
pub(crate) struct Commits {
    observers: Mutex<Vec<Arc<CommitObserver>>>,
    has_observers: AtomicBool,
    /// Changes carry before-images ([`DbOptions::before_images`](crate::DbOptions)).
    before_images: bool,
    tickets: Mutex<Tickets>,
    turn: Condvar,
}

#[derive(Default)]
struct Tickets {
    issued: u64,
    delivered: u64,
}

impl Commits {
    pub fn new(before_images: bool) -> Self {
        Self { before_images, ..Self::default() }
    }

    pub fn observe(&self, observer: impl Fn(&[Change]) + Send + Sync + 'static) {
        self.observers.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::new(Box::new(observer)));
        self.has_observers.store(true, Ordering::Release);
    }

    /// A log for a new unit of work: collecting changes only if someone observes commits.
    pub fn log(&self) -> WriteLog {
        WriteLog::new(self.has_observers.load(Ordering::Acquire), self.before_images)
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
            // Observers are the caller's code: a panicking one must not stall later commits.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for observer in &observers {
                    observer(changes);
                }
            }));
            DELIVERING.with(|d| d.set(false));
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
