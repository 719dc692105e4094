//! Named consumers of the change log, their positions stored in the database.

use super::{ChangeEvent, read_page};
use crate::backend::{Access, Connection, run};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::store::outbox::{self, CONSUMERS, now_ms};
use crate::value::{Value, ValueRef};
use std::sync::{Mutex, PoisonError};

/// The longest consumer name, in bytes.
const MAX_NAME_BYTES: usize = 256;
/// The most events one [`Consumer::poll`] hands back.
pub(crate) const MAX_POLL: usize = 10_000;

/// A named reader of the change log, from [`Db::consumer`]: [`poll`](Self::poll) hands back
/// the next events, [`ack`](Self::ack) stores how far the application has processed them.
///
/// The acknowledged position is stored in the database, so a consumer opened again (after a
/// restart, or in another process) resumes right after it: nothing acknowledged is handed
/// back again and nothing after it is skipped. Events a registered consumer has not
/// acknowledged are never dropped by retention or [`Db::truncate_changes`].
///
/// Within one `Consumer` value, each `poll` goes on after the previous one, acknowledged or
/// not; a new value starts after the acknowledged position.
pub struct Consumer {
    db: Db,
    name: String,
    /// The last event handed back by `poll` (or the acknowledged position).
    polled: Mutex<Lsn>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("name", &self.name).field("polled", &self.polled_lsn()).finish()
    }
}

/// A registered consumer and its acknowledged position, from [`Db::consumers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// The consumer's name.
    pub name: String,
    /// The last event it acknowledged.
    pub acked: Lsn,
    /// When it was registered or last acknowledged, in milliseconds since the Unix epoch.
    pub at: u64,
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next events, at most `max` (at most 10 000 per call; 0 gives none), in LSN order.
    /// An empty `Vec` means the consumer has seen everything committed so far.
    ///
    /// # Errors
    ///
    /// [`Error::LogTruncated`] if the next event is no longer kept (possible only if this
    /// consumer was removed meanwhile); [`Error::WalCorrupted`] naming a damaged event (the
    /// events before it are handed back by this call, the error by the next); a backend
    /// error.
    pub fn poll(&self, max: usize) -> Result<Vec<ChangeEvent>> {
        let max = max.min(MAX_POLL);
        let mut polled = self.polled.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        while out.len() < max {
            let after = out.last().map_or(*polled, |e: &ChangeEvent| e.lsn);
            let (events, more) = match read_page(&self.db, after, max - out.len()) {
                Ok(page) => page,
                // The events read before a failure (a damaged event) are handed back now; the
                // next poll starts after them and reports the failure.
                Err(_) if !out.is_empty() => break,
                Err(e) => return Err(e),
            };
            out.extend(events);
            if !more {
                break;
            }
        }
        if let Some(last) = out.last() {
            *polled = last.lsn;
        }
        Ok(out)
    }

    /// Stores that the application has processed every event up to `lsn`: a consumer opened
    /// again starts after it, and retention may drop those events. Acknowledging a position
    /// at or before the stored one changes nothing (so acknowledging twice is harmless).
    ///
    /// # Errors
    ///
    /// [`Error::ChangeLog`] if `lsn` is beyond the newest event, or the consumer was removed
    /// ([`Db::remove_consumer`]); a backend error. Nothing changes then.
    pub fn ack(&self, lsn: Lsn) -> Result<()> {
        let span = crate::trace::op("ack", None);
        let name = Value::Text(self.name.clone());
        run(self.db.backend(), Access::Atomic, |conn| {
            let last = outbox::last_lsn(conn)?;
            if lsn > last {
                return Err(Error::change_log(format!(
                    "consumer {:?} cannot acknowledge LSN {lsn}: the newest event is {last}",
                    crate::error::Short(&self.name)
                )));
            }
            let n = conn.execute(
                &format!("UPDATE {CONSUMERS} SET \"acked\" = max(\"acked\", ?2), \"at\" = ?3 WHERE \"name\" = ?1"),
                &[name.clone(), lsn_value(lsn), Value::Integer(i64::try_from(now_ms()).unwrap_or(i64::MAX))],
            )?;
            if n == 0 {
                return Err(Error::change_log(format!(
                    "consumer {:?} was removed: open it again with Db::consumer",
                    crate::error::Short(&self.name)
                )));
            }
            Ok(())
        })?;
        span.rows(1);
        let mut polled = self.polled.lock().unwrap_or_else(PoisonError::into_inner);
        *polled = (*polled).max(lsn);
        Ok(())
    }

    /// The acknowledged position, as stored.
    ///
    /// # Errors
    ///
    /// [`Error::ChangeLog`] if the consumer was removed; a backend error.
    pub fn position(&self) -> Result<Lsn> {
        run(self.db.backend(), Access::Read, |conn| acked(conn, &self.name))?
            .ok_or_else(|| Error::change_log(format!("consumer {:?} was removed", crate::error::Short(&self.name))))
    }

    /// The last event [`poll`](Self::poll) handed back, or the acknowledged position it
    /// started from.
    pub fn polled_lsn(&self) -> Lsn {
        *self.polled.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn lsn_value(lsn: Lsn) -> Value {
    Value::Integer(i64::try_from(lsn.get()).unwrap_or(i64::MAX))
}

/// The stored position of consumer `name`, `None` if it is not registered.
fn acked(conn: &dyn Connection, name: &str) -> Result<Option<Lsn>> {
    let mut out = None;
    conn.query(
        &format!("SELECT \"acked\" FROM {CONSUMERS} WHERE \"name\" = ?1"),
        &[Value::Text(name.to_owned())],
        &mut |row| {
            out = Some(match row.get(0)? {
                ValueRef::Integer(n) if n >= 0 => Lsn::new(n as u64),
                other => {
                    return Err(outbox::damaged(
                        0,
                        format!("consumer {name:?}: the position is {}", other.type_name()),
                    ));
                }
            });
            Ok(())
        },
    )?;
    Ok(out)
}

impl Db {
    /// The consumer named `name`, registered in the database if it is new. A new consumer
    /// starts before the oldest event the log keeps, so its first [`poll`](Consumer::poll)
    /// sees everything still in the log; an existing one resumes after its acknowledged
    /// position.
    ///
    /// # Errors
    ///
    /// [`Error::ChangeLog`] if `name` is empty or longer than 256 bytes; a backend error.
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
    /// notes.insert(&Note { id: 1 })?;
    /// notes.insert(&Note { id: 2 })?;
    ///
    /// let etl = db.consumer("etl")?;
    /// let batch = etl.poll(1)?;
    /// assert_eq!(batch.len(), 1);
    /// etl.ack(batch[0].lsn)?;
    ///
    /// // Opened again (say, after a restart): it resumes after what it acknowledged.
    /// let etl = db.consumer("etl")?;
    /// let next = etl.poll(100)?;
    /// assert_eq!(next.iter().map(|e| e.lsn.get()).collect::<Vec<_>>(), [2]);
    /// # Ok(()) }
    /// ```
    pub fn consumer(&self, name: &str) -> Result<Consumer> {
        let _span = crate::trace::op("consumer", None);
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(Error::change_log(format!(
                "a consumer name must be 1 to {MAX_NAME_BYTES} bytes long, not {}",
                name.len()
            )));
        }
        let position = run(self.backend(), Access::Atomic, |conn| {
            if let Some(at) = acked(conn, name)? {
                return Ok(at);
            }
            let oldest = outbox::first_lsn(conn)?;
            let start = if oldest == Lsn::ZERO { outbox::last_lsn(conn)? } else { Lsn::new(oldest.get() - 1) };
            conn.execute(
                &format!("INSERT INTO {CONSUMERS} (\"name\", \"acked\", \"at\") VALUES (?1, ?2, ?3)"),
                &[
                    Value::Text(name.to_owned()),
                    lsn_value(start),
                    Value::Integer(i64::try_from(now_ms()).unwrap_or(i64::MAX)),
                ],
            )?;
            Ok(start)
        })?;
        Ok(Consumer { db: self.clone(), name: name.to_owned(), polled: Mutex::new(position) })
    }

    /// Removes the consumer named `name`, so retention may drop the events it had not
    /// acknowledged; `false` if there was none.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn remove_consumer(&self, name: &str) -> Result<bool> {
        let n = run(self.backend(), Access::Atomic, |conn| {
            conn.execute(&format!("DELETE FROM {CONSUMERS} WHERE \"name\" = ?1"), &[Value::Text(name.to_owned())])
        })?;
        Ok(n > 0)
    }

    /// The registered consumers and their positions, in name order.
    ///
    /// # Errors
    ///
    /// A backend error, or [`Error::WalCorrupted`] if the consumers' table is damaged.
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        run(self.backend(), Access::Read, |conn| {
            let mut out = Vec::new();
            conn.query(
                &format!("SELECT \"name\", \"acked\", \"at\" FROM {CONSUMERS} ORDER BY \"name\""),
                &[],
                &mut |row| match (row.get(0)?, row.get(1)?, row.get(2)?) {
                    (ValueRef::Text(name), ValueRef::Integer(acked), ValueRef::Integer(at)) if acked >= 0 => {
                        out.push(ConsumerInfo {
                            name: name.to_owned(),
                            acked: Lsn::new(acked as u64),
                            at: u64::try_from(at).unwrap_or(0),
                        });
                        Ok(())
                    }
                    _ => Err(outbox::damaged(0, "a row of the consumers' table has the wrong types")),
                },
            )?;
            Ok(out)
        })
    }
}
