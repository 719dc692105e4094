//! `include_cold(true)`: the live documents of the segments of a collection that may hold a
//! match ([`Prune`]: by id range and by the value ranges of indexed fields), filtered and
//! ordered in memory by the query evaluator (`query::eval`) exactly as the SQL path filters
//! and orders hot rows, to be merged with them.

use super::segment::{ColdDoc, Manifest, cmp_ids};
use super::{ColdTier, TOMBSTONES, generation};
use crate::backend::Connection;
use crate::error::Result;
use crate::query::eval::{DocFields, Matcher, compare_fields, value_cmp};
use crate::query::filter::{Atom, CmpOp, Expr};
use crate::store::codec::IdKey;
use crate::store::meta::CollectionMeta;
use crate::value::Value;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::ops::Bound;

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

/// What an `include_cold` read knows its documents must satisfy, to skip the segments that
/// cannot hold one: ranges of values of fields, each `(field, lower, upper)` (all of them
/// must hold). A segment is skipped when one range misses its id range (for the id field) or
/// the value range its manifest records for the field; a field the manifest has no range for
/// (an old manifest, a field without an index) skips nothing.
#[derive(Debug, Default, Clone)]
pub(crate) struct Prune {
    ranges: Vec<(usize, Bound<Value>, Bound<Value>)>,
}

impl Prune {
    /// What `filters` (all must hold) imply: the comparisons, `between`s, `in_list`s and
    /// `starts_with`s at their top level and under `and`s (not under `or` or `not`).
    pub(crate) fn of_filters(filters: &[Expr]) -> Self {
        let mut prune = Prune::default();
        let mut stack: Vec<&Expr> = filters.iter().collect();
        while let Some(expr) = stack.pop() {
            match expr {
                Expr::And(items) => stack.extend(items.iter()),
                Expr::Atom(atom) => prune.atom(atom),
                Expr::Not(_) | Expr::Or(_) => {}
            }
        }
        prune
    }

    fn atom(&mut self, atom: &Atom) {
        use Bound::{Excluded, Included, Unbounded};
        // `None` operands (tests for `None`) and NaNs imply no range.
        let some = |v: &Value| !matches!(v, Value::Null) && !matches!(v, Value::Real(r) if !r.is_finite());
        match atom {
            Atom::Compare { field, op, value } if some(value) => {
                let v = value.clone();
                let (lower, upper) = match op {
                    CmpOp::Eq => (Included(v.clone()), Included(v)),
                    CmpOp::Gt => (Excluded(v), Unbounded),
                    CmpOp::Gte => (Included(v), Unbounded),
                    CmpOp::Lt => (Unbounded, Excluded(v)),
                    CmpOp::Lte => (Unbounded, Included(v)),
                    CmpOp::Ne => return,
                };
                self.range(*field, lower, upper);
            }
            Atom::Between { field, low, high } if some(low) && some(high) => {
                self.range(*field, Included(low.clone()), Included(high.clone()));
            }
            Atom::In { field, values } if !values.is_empty() && values.iter().all(some) => {
                let min = values.iter().min_by(|a, b| value_cmp(a, b));
                let max = values.iter().max_by(|a, b| value_cmp(a, b));
                if let (Some(min), Some(max)) = (min, max) {
                    self.range(*field, Included(min.clone()), Included(max.clone()));
                }
            }
            // Text starting with the prefix sorts at or after it (and after every number).
            Atom::StartsWith { field, prefix } => self.range(*field, Included(Value::Text(prefix.clone())), Unbounded),
            _ => {}
        }
    }

    /// Adds a range `field` must be in (values ordered by `value_cmp`; `None` is below
    /// every value, so a lower bound excludes it).
    pub(crate) fn range(&mut self, field: usize, lower: Bound<Value>, upper: Bound<Value>) {
        if !matches!((&lower, &upper), (Bound::Unbounded, Bound::Unbounded)) {
            self.ranges.push((field, lower, upper));
        }
    }

    /// Whether segment `m` may hold a document of these ranges.
    pub(crate) fn admits(&self, meta: &CollectionMeta, m: &Manifest) -> bool {
        let fields = meta.schema.fields();
        self.ranges.iter().all(|(field, lower, upper)| {
            let Some(def) = fields.get(*field) else { return true };
            let (range, nulls) = if def.is_id() {
                (Some((m.min(), m.max())), 0)
            } else {
                match m.fields.iter().find(|f| f.key == def.key()) {
                    Some(stats) => (stats.range(), stats.nulls),
                    None => return true,
                }
            };
            // A `None` is in a range without a lower bound.
            let null_in = nulls > 0 && matches!(lower, Bound::Unbounded);
            let overlap = range.is_some_and(|(min, max)| {
                let above = match lower {
                    Bound::Unbounded => true,
                    Bound::Included(b) => value_cmp(&max, b) != Ordering::Less,
                    Bound::Excluded(b) => value_cmp(&max, b) == Ordering::Greater,
                };
                let below = match upper {
                    Bound::Unbounded => true,
                    Bound::Included(b) => value_cmp(&min, b) != Ordering::Greater,
                    Bound::Excluded(b) => value_cmp(&min, b) == Ordering::Less,
                };
                above && below
            });
            null_in || overlap
        })
    }
}

/// Every live cold document of `meta`'s collection in the segments `prune` admits (those
/// segments read whole, checksums checked; the others not read at all).
pub(crate) fn live(cold: &ColdTier, conn: &dyn Connection, meta: &CollectionMeta, prune: &Prune) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for m in cold.segments(conn, meta.collection)?.iter().filter(|m| prune.admits(meta, m)) {
        cold.reads.fetch_add(m.blocks.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let file = cold
            .get(conn, &m.key)?
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
    let prune = Prune::of_filters(filters);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let before = generation(conn)?;
        // Cold first: a document brought back hot meanwhile is then seen in both, never in
        // neither.
        let cold_rows = live(cold, conn, meta, &prune)?;
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
