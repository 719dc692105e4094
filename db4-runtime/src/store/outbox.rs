//! The change log's table: an outbox written inside the backend transaction of the work it
//! records, so the log and the data commit together or not at all.
//!
//! Every unit of work that changed documents appends, just before it commits, one row per
//! change to `_db4_changes`, in the order the writes were made. Its changes get consecutive
//! LSNs after the largest one in the table, read under the write lock, and share a
//! transaction id (the LSN of its first change) and a commit time. Each row carries a CRC-32
//! over its fields, checked when the row is read back (`cdc`).
//!
//! What a savepoint undid or a failed nested transaction wrote is no longer in the unit's
//! change set when it commits, so it never reaches the table; a unit that rolls back takes its
//! rows with it. Retention (`truncate`) never deletes the newest row, so the next LSN is always
//! the largest stored one plus one and LSNs are never handed out twice.

use crate::backend::Connection;
use crate::checksum::crc32;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::store::change::{Change, ChangeKind};
use crate::value::{Value, ValueRef};
use std::sync::OnceLock;
use std::time::Duration;

/// The change log's table.
pub(crate) const CHANGES: &str = "\"_db4_changes\"";
/// The named consumers' positions.
pub(crate) const CONSUMERS: &str = "\"_db4_consumers\"";
/// Before-images too large to share a row with their event: a Durable Object stores at most
/// 2 MB per row, and a before- plus an after-image of large documents can pass that. The
/// event row then holds `before` NULL and `split` 1, and the image lives here.
pub(crate) const SPLIT_IMAGES: &str = "\"_db4_change_images\"";
/// The most bytes of images an event row holds; beyond, its before-image goes to
/// [`SPLIT_IMAGES`]. Below the 2 MB row limit, with room for the other columns.
const MAX_ROW_IMAGES: usize = crate::limits::MAX_VALUE_BYTES - 64 * 1024;

/// The columns of a change row, in the order statements bind and read them.
pub(crate) const COLUMNS: &str = "\"lsn\", \"tx_id\", \"collection\", \"doc_id\", \"op\", \"version\", \"at\", \"before\", \"after\", \"crc\", \"split\"";
const WIDTH: usize = 11;
/// Rows per `INSERT`: as many as fit in a statement's 100 parameters.
const ROWS_PER_INSERT: usize = crate::limits::MAX_PARAMS / WIDTH;
/// Automatic retention runs when a commit's LSNs cross a multiple of this.
const RETENTION_EVERY: u64 = 1024;

/// How long the change log keeps events, for
/// [`DbOptions::change_retention`](crate::DbOptions::change_retention). Whatever the bounds, an event a registered
/// [`Consumer`](crate::Consumer) has not acknowledged is kept, and so is the newest event.
///
/// The default keeps everything: the log grows until
/// [`Db::truncate_changes`](crate::Db::truncate_changes) or a retention bound drops the old part.
///
/// # Example
///
/// ```
/// use db4_runtime::{ChangeRetention, DbOptions};
/// use std::time::Duration;
///
/// let options = DbOptions::default()
///     .change_retention(ChangeRetention { max_events: Some(100_000), max_age: Some(Duration::from_secs(7 * 86_400)) });
/// assert_eq!(options.change_retention.max_events, Some(100_000));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeRetention {
    /// Keep at most this many of the newest events.
    pub max_events: Option<u64>,
    /// Drop events committed longer ago than this.
    pub max_age: Option<Duration>,
}

impl ChangeRetention {
    /// Whether a bound is set.
    pub(crate) fn is_bounded(&self) -> bool {
        self.max_events.is_some() || self.max_age.is_some()
    }
}

/// Creates the change log's tables if the database has none.
pub(crate) fn init(conn: &dyn Connection) -> Result<()> {
    // `doc_id` has no declared type, so an id is kept as it was bound: integer or text.
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {CHANGES} (\"lsn\" INTEGER PRIMARY KEY NOT NULL, \"tx_id\" INTEGER NOT NULL, \
         \"collection\" TEXT NOT NULL, \"doc_id\" NOT NULL, \"op\" INTEGER NOT NULL, \"version\" INTEGER, \
         \"at\" INTEGER NOT NULL, \"before\" TEXT, \"after\" TEXT, \"crc\" INTEGER NOT NULL, \
         \"split\" INTEGER NOT NULL DEFAULT 0)"
    ))?;
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {SPLIT_IMAGES} (\"lsn\" INTEGER PRIMARY KEY NOT NULL, \"before\" TEXT NOT NULL)"
    ))?;
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {CONSUMERS} (\"name\" TEXT PRIMARY KEY NOT NULL, \"acked\" INTEGER NOT NULL, \
         \"at\" INTEGER NOT NULL)"
    ))
}

/// The stored code of a change's operation.
pub(crate) fn op_code(kind: ChangeKind) -> i64 {
    match kind {
        ChangeKind::Insert => 1,
        ChangeKind::Update => 2,
        ChangeKind::Delete => 3,
        // The log resolves upserts (the pipeline reads whether the row existed); an upsert
        // still unresolved is stored as such and read back as an update-or-insert.
        ChangeKind::Upsert => 4,
        ChangeKind::Archive => 5,
        ChangeKind::Restore => 6,
    }
}

/// The CRC-32 of a change row's fields.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_crc(
    lsn: u64,
    tx_id: u64,
    collection: &str,
    id: ValueRef<'_>,
    op: i64,
    version: Option<u64>,
    at: u64,
    before: Option<&str>,
    after: Option<&str>,
) -> u32 {
    let (id_tag, id_int, id_text): (&[u8], [u8; 8], &[u8]) = match id {
        ValueRef::Integer(i) => (b"i", i.to_le_bytes(), b""),
        ValueRef::Text(t) => (b"t", [0; 8], t.as_bytes()),
        _ => (b"?", [0; 8], b""),
    };
    let image = |image: Option<&str>| match image {
        Some(text) => (b"s" as &[u8], (text.len() as u64).to_le_bytes()),
        None => (b"n" as &[u8], [0; 8]),
    };
    let (before_tag, before_len) = image(before);
    let (after_tag, after_len) = image(after);
    let version = version.map_or([0xff; 9], |v| {
        let mut out = [0; 9];
        out[1..].copy_from_slice(&v.to_le_bytes());
        out
    });
    crc32(&[
        &lsn.to_le_bytes(),
        &tx_id.to_le_bytes(),
        &(collection.len() as u64).to_le_bytes(),
        collection.as_bytes(),
        id_tag,
        &id_int,
        &(id_text.len() as u64).to_le_bytes(),
        id_text,
        &op.to_le_bytes(),
        &version,
        &at.to_le_bytes(),
        before_tag,
        &before_len,
        before.unwrap_or("").as_bytes(),
        after_tag,
        &after_len,
        after.unwrap_or("").as_bytes(),
    ])
}

/// Milliseconds since the Unix epoch, by the platform's clock.
pub(crate) fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        // `SystemTime::now` panics on wasm32; a Worker has JavaScript's clock.
        js_sys::Date::now() as u64
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The largest LSN in the log, [`Lsn::ZERO`] if it is empty.
pub(crate) fn last_lsn(conn: &dyn Connection) -> Result<Lsn> {
    lsn_query(conn, &format!("SELECT max(\"lsn\") FROM {CHANGES}"))
}

/// The smallest LSN in the log, [`Lsn::ZERO`] if it is empty.
pub(crate) fn first_lsn(conn: &dyn Connection) -> Result<Lsn> {
    lsn_query(conn, &format!("SELECT min(\"lsn\") FROM {CHANGES}"))
}

fn lsn_query(conn: &dyn Connection, sql: &str) -> Result<Lsn> {
    let mut out = Lsn::ZERO;
    conn.query(sql, &[], &mut |row| {
        out = match row.get(0)? {
            ValueRef::Null => Lsn::ZERO,
            ValueRef::Integer(n) if n >= 0 => Lsn::new(n as u64),
            other => return Err(damaged(0, format!("an LSN is {}", other.type_name()))),
        };
        Ok(())
    })?;
    Ok(out)
}

/// The error for a damaged change row or log table.
pub(crate) fn damaged(lsn: u64, reason: impl Into<String>) -> Error {
    Error::wal_corrupted(lsn, format!("change log: {}", reason.into()))
}

/// Appends `changes` (one unit of work's, in write order) to the log, giving each its LSN,
/// transaction id and commit time; then applies `retention` if their LSNs crossed a
/// retention point. Call inside the unit's backend transaction, just before it commits.
pub(crate) fn append(conn: &dyn Connection, changes: &mut [Change], retention: &ChangeRetention) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let span = crate::trace::step("change_log", None);
    let base = last_lsn(conn)?.get();
    let tx_id = base + 1;
    let at = now_ms();
    for (n, change) in changes.iter_mut().enumerate() {
        change.lsn = Some(Lsn::new(base + 1 + n as u64));
        change.tx_id = Some(tx_id);
        change.at = at;
    }
    for chunk in changes.chunks(ROWS_PER_INSERT) {
        let mut params = Vec::with_capacity(chunk.len() * WIDTH);
        for change in chunk {
            let lsn = change.lsn.map_or(0, Lsn::get);
            let op = op_code(change.kind);
            let crc = row_crc(
                lsn,
                tx_id,
                &change.collection,
                change.id.as_ref(),
                op,
                change.version,
                at,
                change.before.as_deref(),
                change.after.as_deref(),
            );
            params.extend([
                Value::Integer(lsn as i64),
                Value::Integer(tx_id as i64),
                Value::Text(change.collection.to_string()),
                change.id.clone(),
                Value::Integer(op),
                change.version.map_or(Value::Null, |v| Value::Integer(v as i64)),
                Value::Integer(at as i64),
            ]);
            let images = change.before.as_ref().map_or(0, String::len) + change.after.as_ref().map_or(0, String::len);
            let split = images > MAX_ROW_IMAGES && change.before.is_some();
            params.extend([
                if split { Value::Null } else { change.before.clone().map_or(Value::Null, Value::Text) },
                change.after.clone().map_or(Value::Null, Value::Text),
                Value::Integer(i64::from(crc)),
                Value::Integer(i64::from(split)),
            ]);
            if split && let Some(before) = &change.before {
                conn.execute(
                    &format!("INSERT INTO {SPLIT_IMAGES} (\"lsn\", \"before\") VALUES (?1, ?2)"),
                    &[Value::Integer(lsn as i64), Value::Text(before.clone())],
                )?;
            }
        }
        conn.execute(insert_sql(chunk.len()), &params)?;
    }
    span.rows(changes.len());
    let last = base + changes.len() as u64;
    if retention.is_bounded() && base / RETENTION_EVERY != last / RETENTION_EVERY {
        retain(conn, Lsn::new(last), retention, at)?;
    }
    Ok(())
}

/// The `INSERT` of `rows` change rows (1 ..= [`ROWS_PER_INSERT`]); the texts are built once.
fn insert_sql(rows: usize) -> &'static str {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (1..=ROWS_PER_INSERT)
            .map(|n| {
                let row = format!("({})", ["?"; WIDTH].join(", "));
                format!("INSERT INTO {CHANGES} ({COLUMNS}) VALUES {}", vec![row; n].join(", "))
            })
            .collect()
    });
    &texts[rows.clamp(1, ROWS_PER_INSERT) - 1]
}

/// Deletes what `retention` lets go, up to the newest event `last`: an event goes when
/// either bound says so (and no consumer still needs it).
fn retain(conn: &dyn Connection, last: Lsn, retention: &ChangeRetention, now: u64) -> Result<u64> {
    // Each bound is the first LSN it keeps.
    let mut keep_from = 0;
    if let Some(max) = retention.max_events {
        keep_from = keep_from.max(last.get().saturating_sub(max.max(1)) + 1);
    }
    if let Some(age) = retention.max_age {
        let cutoff = now.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        // The first event young enough. `at` grows with the LSN (but for a clock stepping
        // back), so the scan stops at the first row kept.
        let young = lsn_query_params(
            conn,
            &format!("SELECT \"lsn\" FROM {CHANGES} WHERE \"at\" >= ?1 ORDER BY \"lsn\" LIMIT 1"),
            &[Value::Integer(i64::try_from(cutoff).unwrap_or(i64::MAX))],
        )?;
        keep_from = keep_from.max(if young == Lsn::ZERO { last.get() } else { young.get() });
    }
    truncate(conn, Lsn::new(keep_from))
}

fn lsn_query_params(conn: &dyn Connection, sql: &str, params: &[Value]) -> Result<Lsn> {
    let mut out = Lsn::ZERO;
    conn.query(sql, params, &mut |row| {
        if let ValueRef::Integer(n) = row.get(0)?
            && n >= 0
        {
            out = Lsn::new(n as u64);
        }
        Ok(())
    })?;
    Ok(out)
}

/// The smallest position a registered consumer has acknowledged, if there is a consumer.
pub(crate) fn min_acked(conn: &dyn Connection) -> Result<Option<Lsn>> {
    let mut out = None;
    conn.query(&format!("SELECT min(\"acked\") FROM {CONSUMERS}"), &[], &mut |row| {
        out = match row.get(0)? {
            ValueRef::Null => None,
            ValueRef::Integer(n) if n >= 0 => Some(Lsn::new(n as u64)),
            other => return Err(damaged(0, format!("a consumer's position is {}", other.type_name()))),
        };
        Ok(())
    })?;
    Ok(out)
}

/// Deletes the events before `before`, except the newest event and any a registered consumer
/// has not acknowledged. Returns how many it deleted.
pub(crate) fn truncate(conn: &dyn Connection, before: Lsn) -> Result<u64> {
    let last = last_lsn(conn)?;
    let mut bound = before.min(last);
    if let Some(acked) = min_acked(conn)? {
        // A consumer at `acked` reads `acked + 1` next.
        bound = bound.min(Lsn::new(acked.get().saturating_add(1)));
    }
    if bound <= Lsn::new(1) {
        return Ok(0);
    }
    let bound = Value::Integer(bound.get() as i64);
    conn.execute(&format!("DELETE FROM {SPLIT_IMAGES} WHERE \"lsn\" < ?1"), std::slice::from_ref(&bound))?;
    let n = conn.execute(&format!("DELETE FROM {CHANGES} WHERE \"lsn\" < ?1"), &[bound])?;
    Ok(n as u64)
}
