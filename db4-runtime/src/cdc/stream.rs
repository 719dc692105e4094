//! Live delivery of committed events to blocking subscribers (natively).

use super::ChangeEvent;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::Duration;

/// The events a [`ChangeStream`] buffers by default before it counts as lagging.
pub(crate) const DEFAULT_CAPACITY: usize = 4096;

/// A live stream of the change log's events as they commit, from [`Db::changes`]: a blocking
/// iterator.
///
/// Each commit's events are handed to the stream after the commit is durable, in commit
/// order, into a bounded buffer. A subscriber that does not keep up is not silently skipped
/// past: once its buffer is full, the stream yields [`Error::Lagged`] with the last event it
/// delivered, and ends; [`Db::changes_since`] reads the rest from the durable log.
///
/// The iterator ends (`None`) when every handle of the database is dropped, or after it
/// reported a lag.
pub struct ChangeStream {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
}

struct State {
    buffer: VecDeque<ChangeEvent>,
    /// The last event delivered to the buffer (or the position the stream started at).
    delivered: Lsn,
    /// The buffer overflowed: report it once the buffered events are read.
    lagged: bool,
    /// Reported the lag or the error already: the stream is over.
    finished: bool,
    /// The database is gone.
    closed: bool,
    /// The change log is off: the stream can only report it.
    unlogged: bool,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ChangeStream")
            .field("buffered", &state.buffer.len())
            .field("capacity", &self.shared.capacity)
            .field("lagged", &state.lagged)
            .finish()
    }
}

/// Marks the stream closed when the observer holding it is dropped with the database.
struct Closer(Weak<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
            shared.ready.notify_all();
        }
    }
}

impl ChangeStream {
    fn new(db: &Db, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let unlogged = !db.options().change_log;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buffer: VecDeque::new(),
                delivered: Lsn::ZERO,
                lagged: false,
                finished: false,
                closed: false,
                unlogged,
            }),
            ready: Condvar::new(),
            capacity,
        });
        if !unlogged {
            let source = db.source_name();
            let closer = Closer(Arc::downgrade(&shared));
            db.commits().observe_while(move |changes| {
                let Some(shared) = closer.0.upgrade() else { return false };
                let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state.lagged || state.finished {
                    return !state.finished;
                }
                for change in changes {
                    let Some(event) = ChangeEvent::from_change(change, &source) else { continue };
                    if state.buffer.len() >= shared.capacity {
                        state.lagged = true;
                        break;
                    }
                    state.delivered = event.lsn;
                    state.buffer.push_back(event);
                }
                drop(state);
                shared.ready.notify_all();
                true
            });
        }
        Self { shared }
    }

    /// The next event if one is buffered, without waiting.
    pub fn try_next(&mut self) -> Option<Result<ChangeEvent>> {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        take(&mut state)
    }

    /// The next event, waiting at most `timeout` for one; `None` if none came (or the
    /// stream ended).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<ChangeEvent>> {
        let deadline = std::time::Instant::now().checked_add(timeout);
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(out) = take(&mut state) {
                return Some(out);
            }
            if state.closed || state.finished {
                return None;
            }
            let left = deadline.map_or(Duration::MAX, |d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_zero() {
                return None;
            }
            state = self.shared.ready.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// The next buffered event, or the lag or the error once the buffer is drained.
fn take(state: &mut State) -> Option<Result<ChangeEvent>> {
    if state.finished {
        return None;
    }
    if state.unlogged {
        state.finished = true;
        return Some(Err(Error::change_log(
            "the change log is off for this database (DbOptions::change_log(false)): there is nothing to stream",
        )));
    }
    if let Some(event) = state.buffer.pop_front() {
        return Some(Ok(event));
    }
    if state.lagged {
        state.finished = true;
        return Some(Err(Error::Lagged { resume_after: state.delivered }));
    }
    None
}

impl Iterator for ChangeStream {
    type Item = Result<ChangeEvent>;

    /// The next event, waiting for one to commit.
    fn next(&mut self) -> Option<Self::Item> {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(out) = take(&mut state) {
                return Some(out);
            }
            if state.closed {
                return None;
            }
            state = self.shared.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        // The observer sees the stream gone at the next commit and removes itself.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).finished = true;
    }
}

impl Db {
    /// A live stream of committed events: every change committed after this call, as
    /// [`ChangeEvent`]s with their LSNs, in commit order. It buffers up to 4096 events; see
    /// [`changes_with_capacity`](Self::changes_with_capacity).
    ///
    /// Natively only: the iterator blocks the thread while it waits.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64 }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = db4_runtime::Db::open_in_memory()?;
    /// let notes = db.collection::<Note>()?;
    /// let mut live = db.changes();
    /// let writer = std::thread::spawn(move || notes.insert(&Note { id: 7 }));
    /// let event = live.next().expect("the database is open")?;
    /// assert_eq!(event.id, db4_runtime::Value::Integer(7));
    /// writer.join().unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn changes(&self) -> ChangeStream {
        self.changes_with_capacity(DEFAULT_CAPACITY)
    }

    /// [`changes`](Self::changes) with a buffer of `capacity` events (at least 1): a
    /// subscriber more than that many events behind gets [`Error::Lagged`].
    pub fn changes_with_capacity(&self, capacity: usize) -> ChangeStream {
        let stream = ChangeStream::new(self, capacity);
        if let Ok(last) = self.last_lsn() {
            let mut state = stream.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.delivered == Lsn::ZERO {
                state.delivered = last;
            }
        }
        stream
    }
}
