//! Replaying one database's change log into another.

use super::{ChangeEvent, ChangeOp, read_page};
use crate::backend::Access;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::store::codec::Encoded;
use crate::store::pipeline::Op;
use crate::txn::Runner;
use crate::value::Value;
use crate::wal::{ReplayReport, StopReason};

/// Source events applied per target transaction (whole source transactions at a time).
const EVENTS_PER_COMMIT: usize = 1024;

/// Applies the change log of `source` to `target`: every event from the start of the log, or
/// up to and including the transaction that committed `up_to`. Replaying the whole log of a
/// database into an empty one reproduces its documents (ids, JSON and versions); replaying up
/// to LSN k reproduces them as they were right after the transaction that committed k.
///
/// The target must have opened each collection the events name (`target.collection::<T>()`),
/// so that it has the table and knows its layout. Events are applied a whole source
/// transaction at a time, several per target transaction, through the target's write
/// pipeline: the target's own change log records them (with LSNs of its own) and its
/// observers see them. The source's log must hold its beginning (nothing truncated).
///
/// [`BatchStore`](crate::BatchStore) events are not replayed (a batch store keeps its own
/// blobs); they end the replay with [`StopReason::Callback`].
///
/// # Errors
///
/// [`Error::LogTruncated`] if the source log no longer starts at LSN 1; a backend error. An
/// event that cannot be applied (a collection the target has not opened, a document the
/// target refuses) ends the replay before its transaction, and the report says which and why
/// (`stopped`, [`StopReason::Callback`]); the target then holds every source transaction
/// before it. A damaged source event ends it with [`StopReason::Malformed`] before the
/// transaction it may belong to (the one of the event before it).
///
/// # Example
///
/// ```
/// # use db4_derive::Document;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
/// # #[db4(crate = "db4_runtime")]
/// # struct Note { #[id] id: i64, text: String }
/// use db4_runtime::{Db, Lsn, replay};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let live = Db::open_in_memory()?;
/// let notes = live.collection::<Note>()?;
/// notes.insert(&Note { id: 1, text: "first".into() })?;
/// let first = live.last_lsn()?;
/// notes.insert(&Note { id: 2, text: "second".into() })?;
///
/// // The state right after the first insert committed.
/// let copy = Db::open_in_memory()?;
/// let copied = copy.collection::<Note>()?;
/// let report = replay(&live, &copy, Some(first))?;
/// assert_eq!((report.applied, report.last), (1, first));
/// assert_eq!(copied.count()?, 1);
/// # Ok(()) }
/// ```
pub fn replay(source: &Db, target: &Db, up_to: Option<Lsn>) -> Result<ReplayReport> {
    let span = crate::trace::op("replay", None);
    // The log as it is now: events committed during the replay (also the target's own, when
    // both are one database) are not part of it.
    let end = match (source.last_lsn()?, up_to) {
        (last, Some(up_to)) => last.min(up_to),
        (last, None) => last,
    };
    let mut report = ReplayReport { applied: 0, last: Lsn::ZERO, stopped: None };
    let mut pending: Vec<ChangeEvent> = Vec::new();
    let mut after = Lsn::ZERO;
    // Once the event at `end` is read, the rest of its transaction is still applied.
    let mut final_tx: Option<u64> = None;
    'read: while after < end || final_tx.is_some() {
        let (events, more) = match read_page(source, after, 256) {
            Ok(page) => page,
            Err(Error::WalCorrupted { lsn, reason }) => {
                report.stopped = Some(StopReason::Malformed { lsn: Lsn::new(lsn), reason });
                // The damaged event may belong to the last transaction read: that one is
                // not whole, so it is not applied.
                if let Some(tx) = pending.last().map(|e| e.tx_id) {
                    pending.retain(|e| e.tx_id != tx);
                }
                break;
            }
            Err(e) => return Err(e),
        };
        for event in events {
            if final_tx.is_some_and(|tx| tx != event.tx_id) {
                break 'read;
            }
            after = event.lsn;
            if event.lsn == end {
                final_tx = Some(event.tx_id);
            }
            // At a transaction boundary with enough pending, apply what is pending.
            if pending.len() >= EVENTS_PER_COMMIT && pending.last().is_some_and(|p| p.tx_id != event.tx_id) {
                if let Err(stop) = apply(target, &pending, &mut report) {
                    report.stopped = Some(stop);
                    pending.clear();
                    break 'read;
                }
                pending.clear();
            }
            pending.push(event);
        }
        if !more {
            break;
        }
    }
    if !pending.is_empty()
        && let Err(stop) = apply(target, &pending, &mut report)
    {
        report.stopped = Some(stop);
    }
    span.rows(report.applied as usize);
    Ok(report)
}

/// Applies whole source transactions in one target transaction; if one of them fails, applies
/// the ones before it (each in a transaction of its own) and reports the failure.
fn apply(target: &Db, events: &[ChangeEvent], report: &mut ReplayReport) -> std::result::Result<(), StopReason> {
    let stop = match apply_once(target, events, report) {
        Ok(()) => return Ok(()),
        Err(stop) => stop,
    };
    let failed_tx = events.iter().find(|e| e.lsn >= stop.lsn()).map_or(u64::MAX, |e| e.tx_id);
    let mut start = 0;
    while start < events.len() && events[start].tx_id != failed_tx {
        let tx = events[start].tx_id;
        let end = events[start..].iter().position(|e| e.tx_id != tx).map_or(events.len(), |n| start + n);
        apply_once(target, &events[start..end], report)?;
        start = end;
    }
    Err(stop)
}

/// Applies `events` in one target transaction.
fn apply_once(target: &Db, events: &[ChangeEvent], report: &mut ReplayReport) -> std::result::Result<(), StopReason> {
    let mut failed: Option<StopReason> = None;
    let result = Runner::Db(target).write(Access::Atomic, |w| {
        for event in events {
            let stop = |error: Error| StopReason::Callback { lsn: event.lsn, error };
            let Some(slot) = target.registry().by_name(&event.collection) else {
                failed = Some(stop(Error::change_log(format!(
                    "replay: the target has not opened collection {:?} (call target.collection::<T>() first{})",
                    event.collection, ", or it is a batch store, which is not replayed"
                ))));
                return Err(Error::change_log("replay stopped"));
            };
            let meta = match slot.fresh(w.conn) {
                Ok(meta) => meta,
                Err(e) => {
                    failed = Some(stop(e));
                    return Err(Error::change_log("replay stopped"));
                }
            };
            let outcome = match event.op {
                // A cold copy is brought back hot first and deleted as a hot document is
                // (the same change, before-image included, as `Collection::delete`).
                ChangeOp::Delete => {
                    w.ensure_hot(&meta, &event.id).and_then(|_| w.apply(&meta, Op::Delete(&event.id))).map(drop)
                }
                // A move between tiers changes no document: the target keeps its copy.
                ChangeOp::Archive | ChangeOp::Restore => Ok(()),
                ChangeOp::Insert | ChangeOp::Update | ChangeOp::Upsert => match &event.after {
                    Some(json) => {
                        let mut params = vec![event.id.clone(), Value::Text(json.clone())];
                        if meta.row_width() > 2 {
                            params.push(event.version.map_or(Value::Null, |v| Value::Integer(v as i64)));
                        }
                        w.apply(&meta, Op::Put(&Encoded { version: event.version, params })).map(drop)
                    }
                    None => Err(Error::change_log(format!("replay: event {} has no after-image", event.lsn))),
                },
            };
            if let Err(e) = outcome {
                failed = Some(stop(e));
                return Err(Error::change_log("replay stopped"));
            }
        }
        Ok(())
    });
    match (result, failed) {
        (Ok(()), _) => {
            report.applied += events.len() as u64;
            report.last = events.last().map_or(report.last, |e| e.lsn);
            Ok(())
        }
        (Err(_), Some(stop)) => Err(stop),
        (Err(error), None) => Err(StopReason::Callback { lsn: events[0].lsn, error }),
    }
}
