//! Change-data capture: the durable change log of a database, read back.
//!
//! Every committed change to a document is appended to a table of the same database inside
//! the same backend transaction as the change itself (`store::outbox`), so the log and the
//! data never disagree: an event exists exactly when its change committed. Savepoint
//! rollbacks, failed nested transactions and rolled-back transactions leave none.
//!
//! Reading it:
//!
//! - [`Db::changes_since`] hands back every event after an [`Lsn`], in LSN order, paging
//!   lazily;
//! - [`Db::consumer`] gives a named [`Consumer`] whose position is stored in the database, so
//!   a restarted process resumes where it acknowledged, with no gap and no duplicate;
//! - [`Db::changes`] (natively) is a live, blocking [`ChangeStream`] of events as they commit;
//! - [`Db::truncate_changes`] and [`DbOptions::change_retention`](crate::DbOptions) drop old
//!   events, never ones a registered consumer has not acknowledged;
//! - [`replay`] applies one database's log to another.
//!
//! This file holds the event type and the log's readers; `consumer.rs`, `stream.rs` and
//! `replay.rs` hold the rest.

mod consumer;
mod replay;
#[cfg(not(target_arch = "wasm32"))]
mod stream;

pub use consumer::{Consumer, ConsumerInfo};
pub use replay::replay;
#[cfg(not(target_arch = "wasm32"))]
pub use stream::ChangeStream;

use crate::backend::{Access, Connection, run};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::store::change::{Change, ChangeKind};
use crate::store::outbox::{self, CHANGES, COLUMNS, SPLIT_IMAGES, damaged, row_crc};
use crate::trace;
use crate::value::{Value, ValueRef};
use std::collections::VecDeque;
use std::sync::Arc;

/// Events read per page.
const PAGE_ROWS: usize = 256;
/// A page stops taking rows once their images hold this many bytes (the rest come with the
/// next page), so a page of large documents stays small in memory.
const PAGE_BYTES: usize = 8 << 20;

/// What a change did to a document, in the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeOp {
    /// A new document was stored.
    Insert,
    /// A stored document was replaced.
    Update,
    /// A document was deleted.
    Delete,
    /// A document was inserted or replaced, and the log could not tell which (written only by
    /// a [`BatchStore`](crate::BatchStore) upsert that did not read the entry first).
    Upsert,
    /// The document moved from the hot tables to the cold tier ([`Db::compact`]): it still
    /// exists, unchanged, and reads still find it. **Not a delete**: a consumer mirroring the
    /// data ignores it. No images; `version` is `None`. Debezium letter `a` (not a Debezium
    /// operation; the envelope also says `"db4_op": "archive"`).
    Archive,
    /// The document moved back from the cold tier to the hot tables, unchanged, because a
    /// write touched it (that write's own event follows in the same transaction). **Not an
    /// insert**; `after` is the document as it was in the cold tier. Debezium letter `r`
    /// (Debezium's "read": the current state, which a mirror may upsert; the envelope also
    /// says `"db4_op": "restore"`).
    Restore,
}

impl ChangeOp {
    /// The operation of a change the pipeline recorded.
    // Only the live stream (native only) builds events from changes: unused on wasm32.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn of(kind: ChangeKind) -> Self {
        match kind {
            ChangeKind::Insert => ChangeOp::Insert,
            ChangeKind::Update => ChangeOp::Update,
            ChangeKind::Delete => ChangeOp::Delete,
            ChangeKind::Upsert => ChangeOp::Upsert,
            ChangeKind::Archive => ChangeOp::Archive,
            ChangeKind::Restore => ChangeOp::Restore,
        }
    }

    fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => ChangeOp::Insert,
            2 => ChangeOp::Update,
            3 => ChangeOp::Delete,
            4 => ChangeOp::Upsert,
            5 => ChangeOp::Archive,
            6 => ChangeOp::Restore,
            _ => return None,
        })
    }

    /// Debezium's letter for the operation: `c`reate, `u`pdate, `d`elete (an upsert reads as
    /// an update).
    pub fn debezium(self) -> &'static str {
        match self {
            ChangeOp::Insert => "c",
            ChangeOp::Update | ChangeOp::Upsert => "u",
            ChangeOp::Delete => "d",
            ChangeOp::Archive => "a",
            ChangeOp::Restore => "r",
        }
    }
}

/// One committed change, as the change log holds it.
///
/// The events of one transaction have consecutive LSNs, share its `tx_id` (the LSN of its
/// first event) and its commit time `at`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChangeEvent {
    /// The event's position in the log: strictly increasing, never reused.
    pub lsn: Lsn,
    /// The transaction that committed it: the LSN of the transaction's first event.
    pub tx_id: u64,
    /// The collection (or [`BatchStore`](crate::BatchStore)) written.
    pub collection: String,
    /// The document's id.
    pub id: Value,
    /// What happened to the document.
    pub op: ChangeOp,
    /// The document's version after the change (for a delete: the version it had, when its
    /// before-image was recorded), in a collection with a version column.
    pub version: Option<u64>,
    /// When the transaction committed, in milliseconds since the Unix epoch.
    pub at: u64,
    /// The document before the change (JSON text), when before-images are recorded
    /// ([`DbOptions::before_images`](crate::DbOptions::before_images)); `None` for an insert.
    pub before: Option<String>,
    /// The document after the change (JSON text); `None` for a delete.
    pub after: Option<String>,
    /// The name of the database the event was read from
    /// ([`DbOptions::name`](crate::DbOptions::name)), for [`to_json`](Self::to_json).
    source: Arc<str>,
}

impl ChangeEvent {
    /// The event of a change the log gave its LSN (`None` if the change log is off).
    // Used by the live stream only, which is native only: unused on wasm32.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn from_change(change: &Change, source: &Arc<str>) -> Option<Self> {
        Some(Self {
            lsn: change.lsn?,
            tx_id: change.tx_id?,
            collection: change.collection.to_string(),
            id: change.id.clone(),
            op: ChangeOp::of(change.kind),
            version: change.version,
            at: change.at,
            before: change.before.clone(),
            after: change.after.clone(),
            source: Arc::clone(source),
        })
    }

    /// The document after the change, deserialized as `T`; `None` for a delete.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] if the stored JSON does not deserialize as `T`.
    pub fn after<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.image(self.after.as_deref())
    }

    /// The document before the change, deserialized as `T`; `None` for an insert, or when
    /// before-images are not recorded.
    ///
    /// # Errors
    ///
    /// As [`after`](Self::after).
    pub fn before<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.image(self.before.as_deref())
    }

    fn image<T: serde::de::DeserializeOwned>(&self, json: Option<&str>) -> Result<Option<T>> {
        json.map(|json| {
            serde_json::from_str(json)
                .map_err(|e| Error::serialization(&self.collection, Some(crate::store::codec::id_text(&self.id)), e))
        })
        .transpose()
    }

    /// The event as a Debezium-shaped envelope: `before`, `after` (the documents, or `null`),
    /// `op` (`c`, `u` or `d`), `ts_ms` (the commit time) and
    /// `source { db, collection, id, lsn, tx_id, version }`. `db` is the
    /// [`DbOptions::name`](crate::DbOptions::name) of the database the event came from.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] if a stored image is not JSON.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = db4_runtime::Db::open_in_memory()?;
    /// db.collection::<Note>()?.insert(&Note { id: 1, text: "hi".into() })?;
    /// let event = db.changes_since(db4_runtime::Lsn::ZERO)?.next().unwrap()?;
    /// let envelope = event.to_json()?;
    /// assert_eq!(envelope["op"], "c");
    /// assert_eq!(envelope["after"]["text"], "hi");
    /// assert_eq!(envelope["source"]["lsn"], 1);
    /// # Ok(()) }
    /// ```
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let db = &*self.source;
        let image = |json: Option<&str>| -> Result<serde_json::Value> {
            json.map_or(Ok(serde_json::Value::Null), |json| {
                serde_json::from_str(json).map_err(|e| {
                    Error::corrupted(
                        &self.collection,
                        Some(crate::store::codec::id_text(&self.id)),
                        format!("change {}: an image is not JSON: {e}", self.lsn),
                    )
                })
            })
        };
        let id = match &self.id {
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Text(t) => serde_json::Value::from(t.as_str()),
            other => serde_json::Value::from(crate::store::codec::id_text(other)),
        };
        let mut envelope = serde_json::json!({
            "before": image(self.before.as_deref())?,
            "after": image(self.after.as_deref())?,
            "op": self.op.debezium(),
            "ts_ms": self.at,
            "source": {
                "db": db,
                "collection": self.collection,
                "id": id,
                "lsn": self.lsn.get(),
                "tx_id": self.tx_id,
                "version": self.version,
            },
        });
        // A tier move says so in words too, for consumers that only know Debezium's letters.
        let tier_op = match self.op {
            ChangeOp::Archive => Some("archive"),
            ChangeOp::Restore => Some("restore"),
            _ => None,
        };
        if let (Some(op), Some(map)) = (tier_op, envelope.as_object_mut()) {
            map.insert("db4_op".to_owned(), serde_json::Value::from(op));
        }
        Ok(envelope)
    }
}

/// The events of the change log after an LSN, in LSN order, read a page at a time: from
/// [`Db::changes_since`].
///
/// It ends when it has handed back the newest event committed when it read its last page; a
/// page read after events were truncated from under it yields [`Error::LogTruncated`] and
/// ends.
pub struct ChangesSince {
    db: Db,
    /// The last event handed back (or the start).
    after: Lsn,
    page: VecDeque<ChangeEvent>,
    /// The last page was short: the log had nothing more.
    exhausted: bool,
    done: bool,
}

impl std::fmt::Debug for ChangesSince {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangesSince").field("after", &self.after).field("buffered", &self.page.len()).finish()
    }
}

impl ChangesSince {
    fn fill(&mut self) -> Result<()> {
        let (events, full) = read_page(&self.db, self.after, PAGE_ROWS)?;
        self.exhausted = !full;
        self.page.extend(events);
        Ok(())
    }
}

impl Iterator for ChangesSince {
    type Item = Result<ChangeEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.page.is_empty() {
            if self.exhausted {
                self.done = true;
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        match self.page.pop_front() {
            Some(event) => {
                self.after = event.lsn;
                Some(Ok(event))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

/// Reads up to `max` events after `after`; `true` with them if the page was cut by `max` or
/// by its byte budget (more may follow), `false` if it reached the end of the log.
///
/// # Errors
///
/// [`Error::LogTruncated`] if the event after `after` was truncated; [`Error::WalCorrupted`]
/// naming the LSN of a damaged event (none after it is handed back).
pub(crate) fn read_page(db: &Db, after: Lsn, max: usize) -> Result<(Vec<ChangeEvent>, bool)> {
    let span = trace::op("changes_since", None);
    let max = max.clamp(1, PAGE_ROWS);
    let source = db.source_name();
    let out = run(db.backend(), Access::Read, |conn| read_page_on(conn, &source, after, max))?;
    span.rows(out.0.len());
    Ok(out)
}

fn read_page_on(conn: &dyn Connection, source: &Arc<str>, after: Lsn, max: usize) -> Result<(Vec<ChangeEvent>, bool)> {
    // The page size as a literal: a bound LIMIT makes SQLite prepare the statement again on
    // every run (see `sql::Statement::push_integer`).
    let sql = format!("SELECT {COLUMNS} FROM {CHANGES} WHERE \"lsn\" > ?1 ORDER BY \"lsn\" LIMIT {max}");
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut rows = 0;
    let mut splits = Vec::new();
    let mut failure = None;
    conn.query(&sql, &[lsn_value(after)], &mut |row| {
        rows += 1;
        if failure.is_some() || bytes > PAGE_BYTES {
            return Ok(());
        }
        match decode(row, source) {
            Ok((event, stored, split)) => {
                // A split row's CRC is checked once its before-image is read, below.
                if split {
                    splits.push((events.len(), stored));
                } else if let Err(e) = verify(&event, stored) {
                    failure = Some(e);
                    return Ok(());
                }
                bytes += event.before.as_ref().map_or(0, String::len) + event.after.as_ref().map_or(0, String::len);
                events.push(event);
            }
            Err(e) => failure = Some(e),
        }
        Ok(())
    })?;
    // Before-images kept apart from their rows (too large to share one), read after the
    // query so that no statement runs while another is being read.
    for (index, stored) in splits {
        let event = &mut events[index];
        let lsn = event.lsn.get();
        let mut before = None;
        conn.query(
            &format!("SELECT \"before\" FROM {SPLIT_IMAGES} WHERE \"lsn\" = ?1"),
            &[lsn_value(event.lsn)],
            &mut |row| {
                before = Some(match row.get(0)? {
                    ValueRef::Text(t) => t.to_owned(),
                    other => {
                        return Err(damaged(lsn, format!("event {lsn}: the before image is {}", other.type_name())));
                    }
                });
                Ok(())
            },
        )?;
        event.before = Some(before.ok_or_else(|| damaged(lsn, format!("event {lsn}: its before image is missing")))?);
        if let Err(e) = verify(event, stored) {
            // The events before it are handed back; the damage is reported when it is next.
            events.truncate(index);
            failure = Some(e);
            break;
        }
    }
    let expected = after.get() + 1;
    match events.first() {
        // LSNs are consecutive: a gap before the first event is a truncated part.
        Some(first) if first.lsn.get() > expected => return Err(Error::LogTruncated { oldest: first.lsn }),
        Some(_) => {}
        None if failure.is_none() => {
            let oldest = outbox::first_lsn(conn)?;
            if oldest.get() > expected {
                return Err(Error::LogTruncated { oldest });
            }
        }
        None => {}
    }
    // Events before a damaged one are handed back; the damage is reported when it is next.
    if let Some(e) = failure {
        if events.is_empty() {
            return Err(e);
        }
        return Ok((events, true));
    }
    let full = rows == max || events.len() < rows;
    Ok((events, full))
}

fn lsn_value(lsn: Lsn) -> Value {
    Value::Integer(i64::try_from(lsn.get()).unwrap_or(i64::MAX))
}

/// Reads one change row strictly; returns the event, its stored CRC and whether its
/// before-image is kept apart ([`SPLIT_IMAGES`]).
fn decode(row: &dyn crate::backend::Row, source: &Arc<str>) -> Result<(ChangeEvent, i64, bool)> {
    let int = |i: usize, what: &str, lsn: u64| -> Result<i64> {
        match row.get(i)? {
            ValueRef::Integer(v) => Ok(v),
            other => Err(damaged(lsn, format!("event {lsn}: the {what} is {}", other.type_name()))),
        }
    };
    let lsn = u64::try_from(int(0, "LSN", 0)?).map_err(|_| damaged(0, "a negative LSN"))?;
    let tx_id = u64::try_from(int(1, "transaction id", lsn)?).map_err(|_| damaged(lsn, "a negative transaction id"))?;
    let collection = match row.get(2)? {
        ValueRef::Text(t) => t.to_owned(),
        other => return Err(damaged(lsn, format!("event {lsn}: the collection is {}", other.type_name()))),
    };
    let id = match row.get(3)? {
        v @ (ValueRef::Integer(_) | ValueRef::Text(_)) => v.to_owned(),
        other => return Err(damaged(lsn, format!("event {lsn}: the document id is {}", other.type_name()))),
    };
    let code = int(4, "operation", lsn)?;
    let op = ChangeOp::from_code(code).ok_or_else(|| damaged(lsn, format!("event {lsn}: unknown operation {code}")))?;
    let version = match row.get(5)? {
        ValueRef::Null => None,
        ValueRef::Integer(v) if v >= 0 => Some(v as u64),
        other => return Err(damaged(lsn, format!("event {lsn}: the version is {}", other.type_name()))),
    };
    let at = u64::try_from(int(6, "commit time", lsn)?).map_err(|_| damaged(lsn, "a negative commit time"))?;
    let text = |i: usize, what: &str| -> Result<Option<String>> {
        match row.get(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(t) => Ok(Some(t.to_owned())),
            other => Err(damaged(lsn, format!("event {lsn}: the {what} image is {}", other.type_name()))),
        }
    };
    let before = text(7, "before")?;
    let after = text(8, "after")?;
    let stored = int(9, "checksum", lsn)?;
    let split = match int(10, "split flag", lsn)? {
        0 => false,
        1 if before.is_none() => true,
        other => return Err(damaged(lsn, format!("event {lsn}: the split flag is {other}"))),
    };
    let source = Arc::clone(source);
    Ok((
        ChangeEvent { lsn: Lsn::new(lsn), tx_id, collection, id, op, version, at, before, after, source },
        stored,
        split,
    ))
}

/// Checks an event against the CRC stored with it.
fn verify(event: &ChangeEvent, stored: i64) -> Result<()> {
    let kind = match event.op {
        ChangeOp::Insert => ChangeKind::Insert,
        ChangeOp::Update => ChangeKind::Update,
        ChangeOp::Delete => ChangeKind::Delete,
        ChangeOp::Upsert => ChangeKind::Upsert,
        ChangeOp::Archive => ChangeKind::Archive,
        ChangeOp::Restore => ChangeKind::Restore,
    };
    let computed = row_crc(
        event.lsn.get(),
        event.tx_id,
        &event.collection,
        event.id.as_ref(),
        outbox::op_code(kind),
        event.version,
        event.at,
        event.before.as_deref(),
        event.after.as_deref(),
    );
    if stored != i64::from(computed) {
        let lsn = event.lsn;
        return Err(damaged(
            lsn.get(),
            format!("event {lsn}: stored checksum {stored:#010x}, computed {computed:#010x} (the row was changed)"),
        ));
    }
    Ok(())
}

impl Db {
    /// Every committed change after `lsn`, in LSN order: from [`Lsn::ZERO`], the whole log.
    /// The first page is read before this returns, the next ones as the iterator reaches
    /// them, so events committed meanwhile are included.
    ///
    /// # Errors
    ///
    /// [`Error::LogTruncated`] if the events right after `lsn` are no longer kept (the
    /// iterator yields it too, if they are truncated while it reads);
    /// [`Error::WalCorrupted`] naming the LSN of a damaged event (the iterator yields the
    /// events before it, then the error); a backend error.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{ChangeOp, Db, Lsn};
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = Db::open_in_memory()?;
    /// let notes = db.collection::<Note>()?;
    /// notes.insert(&Note { id: 1, text: "hi".into() })?;
    /// notes.delete(1)?;
    ///
    /// let events = db.changes_since(Lsn::ZERO)?.collect::<db4_runtime::Result<Vec<_>>>()?;
    /// assert_eq!(events.iter().map(|e| (e.lsn.get(), e.op)).collect::<Vec<_>>(), [(1, ChangeOp::Insert), (2, ChangeOp::Delete)]);
    /// assert_eq!(events[0].after::<Note>()?, Some(Note { id: 1, text: "hi".into() }));
    /// // Resuming after the first event sees only the second.
    /// assert_eq!(db.changes_since(events[0].lsn)?.count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn changes_since(&self, lsn: Lsn) -> Result<ChangesSince> {
        let mut since =
            ChangesSince { db: self.clone(), after: lsn, page: VecDeque::new(), exhausted: false, done: false };
        since.fill()?;
        Ok(since)
    }

    /// The LSN of the newest event in the change log ([`Lsn::ZERO`] if it has none).
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn last_lsn(&self) -> Result<Lsn> {
        run(self.backend(), Access::Read, outbox::last_lsn)
    }

    /// The LSN of the oldest event the change log keeps ([`Lsn::ZERO`] if it has none).
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn oldest_lsn(&self) -> Result<Lsn> {
        run(self.backend(), Access::Read, outbox::first_lsn)
    }

    /// Drops the events before `before` from the change log, and returns how many it
    /// dropped. It keeps the newest event (so LSNs are never handed out twice) and every
    /// event a registered [`Consumer`] has not acknowledged; remove a consumer
    /// ([`remove_consumer`](Self::remove_consumer)) to let its events go.
    ///
    /// # Errors
    ///
    /// A backend error; nothing is dropped then.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Db, Error, Lsn};
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64 }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = Db::open_in_memory()?;
    /// let notes = db.collection::<Note>()?;
    /// for id in 1..=5 {
    ///     notes.insert(&Note { id })?;
    /// }
    /// assert_eq!(db.truncate_changes(Lsn::new(4))?, 3);
    /// assert!(matches!(db.changes_since(Lsn::ZERO), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(4)));
    /// assert_eq!(db.changes_since(Lsn::new(3))?.count(), 2);
    /// # Ok(()) }
    /// ```
    pub fn truncate_changes(&self, before: Lsn) -> Result<u64> {
        let span = trace::op("truncate_changes", None);
        let n = run(self.backend(), Access::Atomic, |conn| outbox::truncate(conn, before))?;
        span.rows(n as usize);
        Ok(n)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests;
