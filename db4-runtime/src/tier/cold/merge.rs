//! `include_cold(true)`: the live documents of every segment of a collection, filtered and
//! ordered in memory by the query evaluator (`query::eval`) exactly as the SQL path filters
//! and orders hot rows, to be merged with them.

use super::segment::{ColdDoc, cmp_ids};
use super::{ColdTier, TOMBSTONES, generation};
use crate::backend::Connection;
use crate::error::Result;
use crate::query::eval::{DocFields, Matcher, compare_fields};
use crate::query::filter::Expr;
use crate::store::codec::IdKey;
use crate::store::meta::CollectionMeta;
use crate::value::Value;
use std::cmp::Ordering;
use std::collections::HashSet;

/// A document of a merge: its stored id, its JSON as a query sees it (the version column
/// written into the version field) and its version column.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: Value,
    pub json: String,
    pub version: Option<i64>,
}

impl Row {
    pub(crate) fn new(meta: &CollectionMeta, id: Value, json: String, version: Option<i64>) -> Self {
        // The version column is authoritative; the JSON's copy may be older.
        let key = meta.schema.version_field().map(|f| f.key());
        let json = match (key, version) {
            (Some(key), Some(v)) if v >= 0 => crate::json::with_top_level_number(&json, key, v as u64).unwrap_or(json),
            _ => json,
        };
        Row { id, json, version }
    }
}

/// Every live cold document of `meta`'s collection (segments read whole, checksums checked).
pub(crate) fn live(cold: &ColdTier, conn: &dyn Connection, meta: &CollectionMeta) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for m in cold.segments(conn, meta.collection)?.iter() {
        cold.reads.fetch_add(m.blocks.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let file = cold
            .store()
            .get(&m.key)?
            .ok_or_else(|| super::segment::damaged(meta.collection, &m.key, "missing from the cold store"))?;
        let docs = super::segment::decode_all(m, &file)?;
        let mut dead: HashSet<IdKey> = HashSet::new();
        conn.query(
            &format!("SELECT \"id\" FROM {TOMBSTONES} WHERE \"segment\" = ?1"),
            &[Value::Text(m.key.clone())],
            &mut |row| {
                dead.insert(IdKey::from_ref(row.get(0)?));
                Ok(())
            },
        )?;
        out.extend(
            docs.into_iter()
                .filter(|d| !dead.contains(&IdKey::from_ref(d.id.as_ref())))
                .map(|ColdDoc { id, doc, version }| Row::new(meta, id, doc, version)),
        );
    }
    Ok(out)
}

/// Runs `hot` (the hot rows a query selects) and merges them with the live cold documents
/// that match `filters`, in the order of `order` with the id breaking ties (in the direction
/// of the last key; ascending without keys). A document in both (a rehydration committing
/// between the two reads) counts once, hot. Outside a transaction the reads repeat if a
/// compaction committed between them.
pub(crate) fn merged(
    cold: &ColdTier,
    conn: &dyn Connection,
    meta: &CollectionMeta,
    filters: &[Expr],
    order: &[(usize, bool)],
    hot: &mut dyn FnMut() -> Result<Vec<Row>>,
) -> Result<Vec<Row>> {
    let matcher = Matcher::new(meta.schema, filters)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = generation(conn)?;
        // Cold first: a document brought back hot meanwhile is then seen in both, never in
        // neither.
        let cold_rows = live(cold, conn, meta)?;
        let hot_rows = hot()?;
        if generation(conn)? != before && attempts < 4 {
            continue;
        }
        let hot_ids: HashSet<IdKey> = hot_rows.iter().map(|r| IdKey::from_ref(r.id.as_ref())).collect();
        let mut rows = hot_rows;
        for row in cold_rows {
            if hot_ids.contains(&IdKey::from_ref(row.id.as_ref())) {
                continue;
            }
            let fields = DocFields::parse(&row.json).map_err(|e| {
                crate::Error::serialization(meta.collection, Some(crate::store::codec::id_text(&row.id)), e)
            })?;
            if matcher.matches(&fields) {
                rows.push(row);
            }
        }
        sort(meta, order, &mut rows);
        return Ok(rows);
    }
}

/// Sorts rows as `ORDER BY` the keys, then the id in the direction of the last key.
pub(crate) fn sort(meta: &CollectionMeta, order: &[(usize, bool)], rows: &mut [Row]) {
    let id_desc = order.last().is_some_and(|k| k.1);
    let parsed: Vec<Option<DocFields<'_>>> = rows.iter().map(|r| DocFields::parse(&r.json).ok()).collect();
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    idx.sort_by(|&a, &b| {
        let keys = match (&parsed[a], &parsed[b]) {
            (Some(fa), Some(fb)) => compare_fields(meta.schema, order, fa, fb),
            _ => Ordering::Equal,
        };
        keys.then_with(|| {
            let o = cmp_ids(&rows[a].id, &rows[b].id);
            if id_desc { o.reverse() } else { o }
        })
    });
    drop(parsed);
    let sorted: Vec<Row> = idx.iter().map(|&i| rows[i].clone()).collect();
    for (slot, row) in rows.iter_mut().zip(sorted) {
        *slot = row;
    }
}
