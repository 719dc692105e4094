//! Typed queries: the filter and sort AST built from typed fields (`filter`), its rendering
//! as parameterised SQL within the platform limits (`render`, over `sql::Statement`), and the
//! [`Query`] builder that runs it.

pub(crate) mod eval;
pub(crate) mod filter;
mod render;

pub use filter::{Field, Filter, Order};

use crate::backend::Access;
use crate::error::Result;
use crate::schema::Document;
use crate::sql::Statement;
use crate::store::codec::{Stored, count, decode, with_id};
use crate::store::meta::CollectionMeta;
use crate::store::pipeline::Op;
use crate::store::slot::MetaSlot;
use crate::trace;
use crate::txn::Runner;
use crate::value::Value;
use filter::Expr;
use std::marker::PhantomData;
use std::sync::Arc;

/// What a query's `SELECT` reads besides the stored id (see `Query::select`).
#[derive(Debug, Clone, Copy)]
struct Columns {
    keys: bool,
    document: bool,
}

impl Columns {
    const DOCUMENT: Self = Self { keys: false, document: true };
    const KEYS: Self = Self { keys: true, document: false };
    #[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
    const KEYS_AND_DOCUMENT: Self = Self { keys: true, document: true };
}

/// A row of [`Query::keys_and_stored`]: the stored id, the sort keys, the stored document.
#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
pub(crate) type KeyedStored = (Value, Vec<Value>, Stored);

/// A query over a collection, from [`Collection::query`](crate::Collection::query).
///
/// Filters added with [`filter`](Query::filter) must all hold. Without
/// [`order_by`](Query::order_by) the order of results is unspecified; with it, documents
/// equal on every key are ordered by id, in the direction of the last key, so the order is
/// total (the same one [`Collection::range`](crate::Collection::range) pages through). Filters mean what they
/// mean in Rust over the document's values, `None` ordering below every value (see
/// [`Filter`]).
///
/// # Limits
///
/// A query runs as one SQL statement, which must fit the limits of every backend (a Durable
/// Object's SQLite: 100 bound values, expressions 100 levels deep, 100 KB of SQL text, 2 MB per
/// value). Values beyond the first hundred or so are bound together as one JSON array, and
/// lists of conditions are balanced, so any number of values, `in_list` entries, conditions
/// and `filter` calls fits, up to the text limit. What cannot fit fails with
/// [`Error::InvalidQuery`](crate::Error::InvalidQuery) naming the limit, before anything runs:
/// `and` and `or` alternating more than about 95 levels deep, or some thousands of conditions
/// (an `in_list` of the same values takes a few bytes).
#[must_use = "a query does nothing until run with all(), first(), count() or delete()"]
pub struct Query<'c, T> {
    runner: Runner<'c>,
    slot: &'c MetaSlot,
    _marker: PhantomData<fn() -> T>,
    filters: Vec<Expr>,
    order: Vec<(usize, bool)>,
    limit: Option<usize>,
    offset: usize,
    include_cold: bool,
}

impl<T> std::fmt::Debug for Query<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("filters", &self.filters)
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish()
    }
}

impl<'c, T: Document> Query<'c, T> {
    pub(crate) fn new(runner: Runner<'c>, slot: &'c MetaSlot) -> Self {
        Self {
            runner,
            slot,
            _marker: PhantomData,
            filters: Vec::new(),
            order: Vec::new(),
            limit: None,
            offset: 0,
            include_cold: false,
        }
    }

    /// Keeps only documents matching `filter` (in addition to earlier filters).
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter.expr);
        self
    }

    /// Sorts by a field; later calls break ties of earlier ones, and the id breaks the last
    /// ties (ascending after an ascending key, descending after a descending one).
    pub fn order_by(mut self, order: Order<T>) -> Self {
        self.order.push((order.field, order.descending));
        self
    }

    /// Returns at most `n` documents.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Skips the first `n` matching documents.
    pub fn offset(mut self, n: usize) -> Self {
        self.offset = n;
        self
    }

    /// Also answers from the cold tier ([`Db::compact`](crate::Db::compact)): the matching
    /// documents of every live segment are merged with the hot ones, in the query's order
    /// (the id breaking ties), before `offset` and `limit` apply. It reads whole every
    /// segment that may hold a match: a segment is skipped when the filters' ranges on the
    /// id (or on an indexed field, whose value range the segment's manifest records) miss
    /// it; the conditions counted are those at the top level or under `and` (see
    /// `docs/tiers-cold.md`, "Pruning"). Without such conditions it reads every segment of
    /// the collection, and costs what the cold tier holds. Without a cold store it
    /// changes nothing. [`delete`](Self::delete) refuses it (deleting cold documents by
    /// condition is not supported; delete them by id).
    pub fn include_cold(mut self, include: bool) -> Self {
        self.include_cold = include;
        self
    }

    /// Runs the query and returns the matching documents.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`](crate::Error::InvalidQuery) if a filter value could not be
    /// bound (a NaN, a comparison of order with `None`) or the query is past a limit (see
    /// [`Query`]), [`Error::Serialization`](crate::Error::Serialization) naming the document if
    /// a stored document no longer deserializes, or a backend error.
    pub fn all(self) -> Result<Vec<T>> {
        let span = trace::op("all", Some(self.slot.schema().collection()));
        span.rows_of(self.fetch(), |docs| docs.len() as u64)
    }

    /// Runs the query and returns the matching documents.
    fn fetch(self) -> Result<Vec<T>> {
        if self.include_cold && self.runner.db().cold().is_some() {
            return self.merged().and_then(|(meta, rows)| {
                rows.into_iter()
                    .map(|r| {
                        let version = if meta.versioned { r.version } else { None };
                        crate::store::codec::decode_json::<T>(&meta, &r.json, version).map_err(|e| with_id(e, &r.id))
                    })
                    .collect()
            });
        }
        self.runner.read_meta(self.slot, |conn, meta| {
            let (text, params) = self.select(meta, Columns::DOCUMENT)?;
            let mut out = Vec::with_capacity(crate::sql::rows_capacity(self.limit));
            conn.query(&text, &params, &mut |row| {
                let doc = decode::<T>(meta, row, 1).map_err(|e| match row.get(0) {
                    Ok(id) => with_id(e, &id.to_owned()),
                    Err(_) => e,
                })?;
                out.push(doc);
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// The hot rows the query selects (up to `offset + limit`) merged with the matching cold
    /// documents, then `offset` and `limit` applied.
    fn merged(
        &self,
    ) -> Result<(std::sync::Arc<crate::store::meta::CollectionMeta>, Vec<crate::tier::cold::merge::Row>)> {
        use crate::tier::cold::merge::{Row, merged};
        let Some(cold) = self.runner.db().cold() else {
            return Err(crate::Error::invalid_query(self.slot.schema().collection(), "no cold tier"));
        };
        let hot_query = Query {
            runner: self.runner,
            slot: self.slot,
            _marker: PhantomData::<fn() -> T>,
            filters: self.filters.clone(),
            order: self.order.clone(),
            limit: self.limit.map(|l| l.saturating_add(self.offset)),
            offset: 0,
            include_cold: false,
        };
        self.runner.read_meta(self.slot, |conn, meta| {
            let mut hot = || {
                let (text, params) = hot_query.select(meta, Columns::DOCUMENT)?;
                let mut rows = Vec::with_capacity(crate::sql::rows_capacity(hot_query.limit));
                conn.query(&text, &params, &mut |row| {
                    let id = row.get(0)?.to_owned();
                    let crate::value::ValueRef::Text(json) = row.get(1)? else {
                        return Err(crate::store::codec::corrupt(meta, "document", &id));
                    };
                    let version = match (meta.versioned, row.get(2)) {
                        (true, Ok(crate::value::ValueRef::Integer(v))) => Some(v),
                        (true, _) => return Err(crate::store::codec::corrupt(meta, "version", &id)),
                        (false, _) => None,
                    };
                    rows.push(Row::new(meta, id, json.to_owned(), version));
                    Ok(())
                })?;
                Ok(rows)
            };
            let rows = merged(cold, conn, meta, &self.filters, &self.order, &mut hot)?;
            let rows = rows.into_iter().skip(self.offset).take(self.limit.unwrap_or(usize::MAX)).collect();
            Ok((std::sync::Arc::clone(meta), rows))
        })
    }

    /// Runs the query and returns, instead of the documents, each one's stored id and the
    /// values of its sort keys as SQLite orders them (what a merge of several databases'
    /// answers needs before it reads the documents it keeps).
    #[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
    pub(crate) fn keys(self) -> Result<Vec<(Value, Vec<Value>)>> {
        self.runner.read_meta(self.slot, |conn, meta| {
            let (text, params) = self.select(meta, Columns::KEYS)?;
            let mut out = Vec::with_capacity(crate::sql::rows_capacity(self.limit));
            conn.query(&text, &params, &mut |row| {
                let id = row.get(0)?.to_owned();
                let keys = (1..=self.order.len()).map(|i| row.get(i).map(|v| v.to_owned())).collect::<Result<_>>()?;
                out.push((id, keys));
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// The matching rows' stored ids, sort keys and documents, not decoded (see
    /// [`Stored`]), with the layout they were read with: the shard router's one-statement
    /// gather, which decodes only what its merge keeps.
    #[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
    pub(crate) fn keys_and_stored(self) -> Result<(Arc<CollectionMeta>, Vec<KeyedStored>)> {
        self.runner.read_meta(self.slot, |conn, meta| {
            let (text, params) = self.select(meta, Columns::KEYS_AND_DOCUMENT)?;
            let k = self.order.len();
            let mut out = Vec::with_capacity(crate::sql::rows_capacity(self.limit));
            conn.query(&text, &params, &mut |row| {
                let id = row.get(0)?.to_owned();
                let keys = (1..=k).map(|i| row.get(i).map(|v| v.to_owned())).collect::<Result<_>>()?;
                let stored = Stored::read(meta, row, k + 1).map_err(|e| with_id(e, &id))?;
                out.push((id, keys, stored));
                Ok(())
            })?;
            Ok((Arc::clone(meta), out))
        })
    }

    /// Runs the query and returns the first matching document.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn first(self) -> Result<Option<T>> {
        let span = trace::op("first", Some(self.slot.schema().collection()));
        let limit = self.limit.map_or(1, |n| n.min(1));
        let doc = self.limit(limit).fetch().map(|mut docs| docs.pop());
        span.rows_of(doc, |doc| u64::from(doc.is_some()))
    }

    /// Counts the matching documents (within `limit` and `offset`, if set).
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn count(self) -> Result<u64> {
        let span = trace::op("count", Some(self.slot.schema().collection()));
        if self.include_cold && self.runner.db().cold().is_some() {
            let n = self.merged().map(|(_, rows)| rows.len() as u64);
            return span.rows_of(n, |&n| n);
        }
        let n = self.runner.read_meta(self.slot, |conn, meta| {
            let mut sql = meta.statement();
            if self.limit.is_none() && self.offset == 0 {
                sql.push(&format!("SELECT count(*) FROM {}", meta.table));
                self.tail(&mut sql, false, 0)?;
            } else {
                // A subquery in FROM is a statement of its own to SQLite: no expression around it.
                sql.push(&format!("SELECT count(*) FROM (SELECT 1 FROM {}", meta.table));
                self.tail(&mut sql, true, 0)?;
                sql.push(")");
            }
            let (text, params) = sql.finish()?;
            count(conn, meta.collection, &text, &params)
        });
        span.rows_of(n, |&n| n)
    }

    /// Deletes the matching documents (within `order_by`, `limit` and `offset`, if set) and
    /// returns how many were deleted.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn delete(self) -> Result<u64> {
        let span = trace::op("delete", Some(self.slot.schema().collection()));
        if self.include_cold && self.runner.db().cold().is_some() {
            return Err(crate::Error::invalid_query(
                self.slot.schema().collection(),
                "include_cold(true) does not apply to delete(): cold documents are deleted by id",
            ));
        }
        let n = self.runner.write_meta(self.slot, Access::Write, |w, meta| {
            if w.keeps_undo() {
                // A savepoint may need the rows back: find them first, so the pipeline reads
                // their before-images before anything is deleted.
                let mut select = meta.statement();
                select.push(&format!("SELECT \"_id\" FROM {}", meta.table));
                self.tail(&mut select, true, 0)?;
                let (text, params) = select.finish()?;
                let mut ids = Vec::new();
                w.conn.query(&text, &params, &mut |row| {
                    ids.push(row.get(0)?.to_owned());
                    Ok(())
                })?;
                return w.apply(meta, Op::DeleteIds(&ids));
            }
            let mut sql = meta.statement();
            if self.limit.is_none() && self.offset == 0 {
                sql.push(&format!("DELETE FROM {}", meta.table));
                self.tail(&mut sql, false, 0)?;
            } else {
                // The page of ids is a subquery in FROM of the subquery in IN: SQLite then counts
                // two levels of expression around the filter. (Directly in the IN subquery's
                // WHERE, the filter would count twice: once in the IN expression, once
                // resolving the subquery.)
                sql.push(&format!(
                    "DELETE FROM {0} WHERE \"_id\" IN (SELECT \"_id\" FROM (SELECT \"_id\" FROM {0}",
                    meta.table
                ));
                self.tail(&mut sql, true, 2)?;
                sql.push("))");
            }
            w.apply(meta, Op::DeleteWhere(sql))
        })?;
        span.rows(n);
        Ok(n as u64)
    }

    /// Appends `WHERE`, and with `paging` also `ORDER BY` and `LIMIT`/`OFFSET`. `enclosing`
    /// is the height of the expression the statement's `WHERE` sits in, if any.
    /// The query's `SELECT`, ready to run: the stored id, then the values of the sort keys
    /// (with `columns.keys`), then the document's columns (with `columns.document`).
    fn select(&self, meta: &CollectionMeta, columns: Columns) -> Result<(String, Vec<Value>)> {
        let mut sql = meta.statement();
        sql.push("SELECT \"_id\"");
        if columns.keys {
            for &(field, _) in &self.order {
                sql.push(", ");
                sql.field(field)?;
            }
        }
        if columns.document {
            sql.push(", ");
            sql.push(meta.doc_columns);
        }
        sql.push(" FROM ");
        sql.push(&meta.table);
        self.tail(&mut sql, true, 0)?;
        sql.finish()
    }

    fn tail(&self, sql: &mut Statement<'_>, paging: bool, enclosing: usize) -> Result<()> {
        if !self.filters.is_empty() {
            sql.push(" WHERE ");
            // All filter() calls as one list: balanced, however many there are.
            sql.filters(&self.filters, enclosing)?;
        }
        if !paging {
            return Ok(());
        }
        for (i, &(field, descending)) in self.order.iter().enumerate() {
            sql.push(if i == 0 { " ORDER BY " } else { ", " });
            sql.field(field)?;
            sql.push(if descending { " DESC" } else { " ASC" });
        }
        // Ties are broken by id, in the direction of the last key, so the order is total (and
        // an index over the key, which holds the row's id after it, still serves it).
        if let Some(&(_, descending)) = self.order.last() {
            sql.push(if descending { ", \"_id\" DESC" } else { ", \"_id\" ASC" });
        }
        if self.limit.is_some() || self.offset > 0 {
            let limit = self.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
            let offset = i64::try_from(self.offset).unwrap_or(i64::MAX);
            sql.push(" LIMIT ");
            sql.push_integer(limit);
            sql.push(" OFFSET ");
            sql.push_integer(offset);
        }
        Ok(())
    }
}
