//! Compaction: [`Db::compact`] moves the documents the [`CompactionPolicy`] selects from the
//! hot tables into new cold segments.

use super::segment::{self, ColdDoc, Manifest, cmp_ids};
use super::{ColdTier, PENDING, SEGMENTS, STATE, TOMBSTONES};
use crate::backend::{Access, Connection};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::sql::{FieldSql, MAX_VALUE_BYTES, json_lists};
use crate::store::codec::{IdKey, corrupt};
use crate::store::meta::CollectionMeta;
use crate::store::pipeline::{Op, Writer};
use crate::tier::CompactionPolicy;
use crate::txn::Runner;
use crate::value::{Value, ValueRef};
use std::collections::{HashMap, HashSet};

/// The most documents one segment holds; a compaction moving more writes several.
const MAX_SEGMENT_DOCS: usize = 50_000;

/// What [`Db::compact`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactionReport {
    /// Documents moved from the hot tables to the cold tier.
    pub moved: u64,
    /// Segments written (including those rewriting older segments without their dead copies).
    pub segments: u64,
    /// Bytes of the segments written (compressed, as stored).
    pub bytes: u64,
    /// Older segments dropped: rewritten into the new ones, or with no live document left.
    pub dropped: u64,
    /// Objects deleted from the cold store that no segment row named: left by a compaction
    /// that did not commit, or by segments dropped earlier.
    pub orphans: u64,
}

impl Db {
    /// Moves the documents the [`CompactionPolicy`] selects, in every collection this handle
    /// has opened, from the hot tables into new segments in the cold store; drops segments
    /// whose documents are all dead, and rewrites those with more dead copies than live ones.
    ///
    /// Runs as one write transaction: the segments are written to the store (and made
    /// durable) first, then the segment rows, the removal of the moved rows and the change
    /// log's [`ChangeOp::Archive`](crate::ChangeOp::Archive) events commit together. A crash
    /// before the commit leaves unnamed objects in the store, which reads ignore and the next
    /// `compact` deletes. With no cold store configured it does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if `older_than` names a field that is not an integer; a backend
    /// error from SQLite or the store (nothing is moved then).
    pub fn compact(&self) -> Result<CompactionReport> {
        let span = crate::trace::op("compact", None);
        let Some(cold) = self.cold() else { return Ok(CompactionReport::default()) };
        let now = crate::store::outbox::now_ms() as i64;
        let slots = self.registry().all();
        let mut report = CompactionReport::default();
        Runner::Db(self).write(Access::Atomic, |w| {
            report = CompactionReport::default();
            report.orphans = delete_orphans(w.conn, cold)?;
            for slot in &slots {
                let meta = slot.fresh(w.conn)?;
                compact_collection(w, cold, &meta, now, &mut report)?;
            }
            if report.segments > 0 || report.dropped > 0 {
                w.conn
                    .execute(&format!("UPDATE {STATE} SET \"generation\" = \"generation\" + 1 WHERE \"k\" = 1"), &[])?;
            }
            Ok(())
        })?;
        cold.invalidate();
        span.rows(report.moved as usize);
        Ok(report)
    }
}

/// What a collection keeps hot once it went over `limit` (`hot_max_documents` or
/// `hot_max_bytes`): `memory_pressure × limit` (the fraction clamped to `0.0..=1.0`; a NaN or
/// infinite one ignored), else the limit itself.
fn low_water(limit: u64, pressure: Option<f64>) -> u64 {
    match pressure {
        Some(f) if f.is_finite() => ((limit as f64) * f.clamp(0.0, 1.0)).floor() as u64,
        _ => limit,
    }
}

/// Deletes the objects no segment row names (inside the write transaction, so no other
/// compaction is writing segments meanwhile).
fn delete_orphans(conn: &dyn Connection, cold: &ColdTier) -> Result<u64> {
    let mut named = HashSet::new();
    conn.query(&format!("SELECT \"key\" FROM {SEGMENTS}"), &[], &mut |row| {
        if let ValueRef::Text(k) = row.get(0)? {
            named.insert(k.to_owned());
        }
        Ok(())
    })?;
    let mut n = 0;
    for object in cold.store().list("")? {
        let base = object.key.strip_suffix(".manifest.json").unwrap_or(&object.key);
        if !named.contains(base) {
            cold.store().delete(&object.key)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The SQL expression of the policy's age field in `meta`'s collection, if it has that field.
fn age_expr(meta: &CollectionMeta, policy: &CompactionPolicy) -> Result<Option<(String, Option<Value>)>> {
    let Some((field, _)) = policy.older_than else { return Ok(None) };
    let Some(i) = meta.schema.fields().iter().position(|f| f.name() == field || f.key() == field) else {
        return Ok(None);
    };
    let def = &meta.schema.fields()[i];
    if def.is_id() {
        return Err(Error::invalid_query(meta.collection, format!("older_than: `{field}` is the id")));
    }
    Ok(Some(match &meta.fields[i] {
        FieldSql::Column(c) => (c.clone(), None),
        FieldSql::Json(path) => ("json_extract(\"_doc\", ?1)".to_owned(), Some(Value::Text(path.clone()))),
    }))
}

fn compact_collection(
    w: Writer<'_>,
    cold: &ColdTier,
    meta: &std::sync::Arc<CollectionMeta>,
    now: i64,
    report: &mut CompactionReport,
) -> Result<()> {
    let conn = w.conn;
    let policy = &cold.config().policy;
    let table = &meta.table;
    let age = age_expr(meta, policy)?;
    let order = match &age {
        Some((expr, _)) => format!("ORDER BY {expr}, \"_id\""),
        None => "ORDER BY \"_id\"".to_owned(),
    };
    // ?1 is the age field's JSON path when it is not a column (bound, never spliced); a
    // statement that does not use it still names it, so that every one binds the same first
    // parameter.
    let path = age.as_ref().and_then(|(_, p)| p.clone());
    let pad = if path.is_some() { "1" } else { "?1 IS NULL" };
    let path = path.unwrap_or(Value::Null);
    let mut chosen: Vec<Value> = Vec::new();
    let mut seen: HashSet<IdKey> = HashSet::new();
    let mut take = |id: Value| {
        if seen.insert(IdKey::from_ref(id.as_ref())) {
            chosen.push(id);
        }
    };
    let ids = |sql: &str, params: &[Value], out: &mut dyn FnMut(Value)| {
        conn.query(sql, params, &mut |row| {
            out(row.get(0)?.to_owned());
            Ok(())
        })
    };
    if let (Some((expr, _)), Some((_, older))) = (&age, policy.older_than) {
        let cutoff = now.saturating_sub(older);
        let sql = format!("SELECT \"_id\" FROM {table} WHERE {pad} AND typeof({expr}) = 'integer' AND {expr} < ?2");
        ids(&sql, &[path.clone(), Value::Integer(cutoff)], &mut take)?;
    }
    if let Some(max) = policy.hot_max_documents {
        let n = crate::store::codec::count(conn, meta.collection, &meta.sql.count, &[])?;
        if n > max {
            let keep = low_water(max, policy.memory_pressure);
            let sql = format!("SELECT \"_id\" FROM {table} WHERE {pad} {order} LIMIT ?2");
            ids(&sql, &[path.clone(), Value::Integer((n - keep).min(i64::MAX as u64) as i64)], &mut take)?;
        }
    }
    if let Some(max) = policy.hot_max_bytes {
        let mut rows: Vec<(Value, u64)> = Vec::new();
        let sql = format!("SELECT \"_id\", length(\"_doc\") FROM {table} WHERE {pad} {order}");
        conn.query(&sql, std::slice::from_ref(&path), &mut |row| {
            let len = match row.get(1)? {
                ValueRef::Integer(n) => n.max(0) as u64,
                _ => return Err(corrupt(meta, "document", &row.get(0)?.to_owned())),
            };
            rows.push((row.get(0)?.to_owned(), len));
            Ok(())
        })?;
        let mut total: u64 = rows.iter().map(|r| r.1).sum();
        let keep = if total > max { low_water(max, policy.memory_pressure) } else { max };
        for (id, len) in rows {
            if total <= keep {
                break;
            }
            total -= len;
            take(id);
        }
    }

    // Segments worth rewriting: all dead (dropped), or more dead copies than live ones.
    let mut segs: Vec<(String, u64, u64)> = Vec::new();
    conn.query(
        &format!(
            "SELECT s.\"key\", s.\"docs\", (SELECT count(*) FROM {TOMBSTONES} t WHERE t.\"segment\" = s.\"key\") \
             FROM {SEGMENTS} s WHERE s.\"collection\" = ?1"
        ),
        &[Value::Text(meta.collection.to_owned())],
        &mut |row| {
            if let (ValueRef::Text(k), ValueRef::Integer(d), ValueRef::Integer(t)) =
                (row.get(0)?, row.get(1)?, row.get(2)?)
            {
                segs.push((k.to_owned(), d.max(0) as u64, t.max(0) as u64));
            }
            Ok(())
        },
    )?;
    let mut carried: Vec<ColdDoc> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    let manifests = cold.segments(conn, meta.collection)?;
    for (key, docs, dead) in segs {
        if dead == 0 || dead * 2 < docs {
            continue;
        }
        if dead < docs {
            let Some(m) = manifests.iter().find(|m| m.key == key) else { continue };
            // A damaged segment is left as it is (its reads report it); the rest compacts.
            let Ok(live) = live_docs(conn, cold, m) else { continue };
            carried.extend(live);
        }
        dropped.push(key);
    }
    if chosen.is_empty() && dropped.is_empty() {
        return Ok(());
    }

    // The rows to move, whole.
    let stored = if meta.row_width() > 2 { "\"_id\", \"_doc\", \"_version\"" } else { "\"_id\", \"_doc\"" };
    let mut docs: Vec<ColdDoc> = Vec::with_capacity(chosen.len() + carried.len());
    for list in json_lists(chosen.iter().map(Value::as_ref), MAX_VALUE_BYTES) {
        let sql = format!("SELECT {stored} FROM {table} WHERE \"_id\" IN (SELECT value FROM json_each(?1))");
        conn.query(&sql, &[list], &mut |row| {
            let id = row.get(0)?.to_owned();
            let ValueRef::Text(doc) = row.get(1)? else { return Err(corrupt(meta, "document", &id)) };
            let version = match meta.row_width() > 2 {
                true => match row.get(2)? {
                    ValueRef::Integer(v) => Some(v),
                    _ => return Err(corrupt(meta, "version", &id)),
                },
                false => None,
            };
            docs.push(ColdDoc { id, doc: doc.to_owned(), version });
            Ok(())
        })?;
    }
    let moved = docs.len() as u64;
    docs.extend(carried);
    docs.sort_by(|a, b| cmp_ids(&a.id, &b.id));

    // The value ranges `include_cold` reads prune segments by: every indexed field's (the
    // version field's copy in the document may be stale, so not that one).
    let stats: Vec<&str> = meta
        .schema
        .fields()
        .iter()
        .filter(|f| !f.is_id() && !f.is_version() && f.has_column())
        .map(|f| f.key())
        .collect();
    for chunk in docs.chunks(MAX_SEGMENT_DOCS) {
        let seq = next_seq(conn)?;
        let key = format!("{}/{seq:012}-{:08x}.jsonl.gz", meta.collection, key_token()?);
        let (file, manifest) = segment::build(&key, meta.collection, chunk, &stats)?;
        let json = manifest.to_json();
        cold.put(conn, &key, &file)?;
        cold.put(conn, &format!("{key}.manifest.json"), json.as_bytes())?;
        insert_segment(conn, &manifest, seq, &json)?;
        report.segments += 1;
        report.bytes += file.len() as u64;
    }
    for key in &dropped {
        let k = [Value::Text(key.clone())];
        conn.execute(&format!("DELETE FROM {SEGMENTS} WHERE \"key\" = ?1"), &k)?;
        conn.execute(&format!("DELETE FROM {TOMBSTONES} WHERE \"segment\" = ?1"), &k)?;
        // Not uploaded yet (a store that defers writes): it never needs to be.
        conn.execute(&format!("DELETE FROM {PENDING} WHERE \"key\" = ?1 OR \"key\" = ?1 || '.manifest.json'"), &k)?;
        report.dropped += 1;
    }
    if moved > 0 {
        w.apply(meta, Op::Archive(&chosen))?;
        report.moved += moved;
    }
    Ok(())
}

/// The random part of a segment key: a key is never used twice, even by a database deleted
/// and made again under the same store prefix (its counter starting over), so whatever keeps
/// an object's bytes by its key (an edge cache in front of R2) can never serve stale bytes.
fn key_token() -> Result<u32> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::Backend(crate::error::BackendError::new(
            crate::error::BackendErrorKind::Other,
            format!("no randomness for a segment key: {e}"),
        ))
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// The documents of segment `m` that no tombstone names.
fn live_docs(conn: &dyn Connection, cold: &ColdTier, m: &Manifest) -> Result<Vec<ColdDoc>> {
    let file = cold
        .get(conn, &m.key)?
        .ok_or_else(|| segment::damaged(&m.collection, &m.key, "missing from the cold store"))?;
    let all = segment::decode_all(m, &file)?;
    let mut dead: HashMap<IdKey, ()> = HashMap::new();
    conn.query(
        &format!("SELECT \"id\" FROM {TOMBSTONES} WHERE \"segment\" = ?1"),
        &[Value::Text(m.key.clone())],
        &mut |row| {
            dead.insert(IdKey::from_ref(row.get(0)?), ());
            Ok(())
        },
    )?;
    Ok(all.into_iter().filter(|d| !dead.contains_key(&IdKey::from_ref(d.id.as_ref()))).collect())
}

fn next_seq(conn: &dyn Connection) -> Result<i64> {
    let mut seq = None;
    conn.query(
        &format!("UPDATE {STATE} SET \"seq\" = \"seq\" + 1 WHERE \"k\" = 1 RETURNING \"seq\""),
        &[],
        &mut |row| {
            if let ValueRef::Integer(s) = row.get(0)? {
                seq = Some(s);
            }
            Ok(())
        },
    )?;
    seq.ok_or_else(|| Error::corrupted("cold", None, "the cold tier's state row is missing or damaged"))
}

fn insert_segment(conn: &dyn Connection, m: &Manifest, seq: i64, json: &str) -> Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO {SEGMENTS} (\"key\", \"collection\", \"seq\", \"min_id\", \"max_id\", \"docs\", \"bytes\", \
             \"manifest\") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        &[
            Value::Text(m.key.clone()),
            Value::Text(m.collection.clone()),
            Value::Integer(seq),
            m.min(),
            m.max(),
            Value::Integer(m.count as i64),
            Value::Integer(m.bytes as i64),
            Value::Text(json.to_owned()),
        ],
    )?;
    Ok(())
}
