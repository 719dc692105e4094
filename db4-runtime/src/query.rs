//! Typed queries compiled to parameterised SQL.

use crate::backend::Access;
use crate::change::{Change, ChangeKind};
use crate::collection::{Exec, count, decode};
use crate::document::Document;
use crate::error::{Error, Result};
use crate::field::{CmpOp, Expr, Filter, Order};
use crate::meta::{CollectionMeta, FieldSql, MetaSlot};
use crate::value::{Value, ValueRef};
use std::marker::PhantomData;
use std::sync::Arc;

/// Above this many values an `in_list` is bound as one JSON array instead of one parameter
/// per value, which keeps every list under SQLite's parameter limit.
const INLINE_LIST_MAX: usize = 256;

/// How deeply `not` / `and` / `or` may nest (long flat lists do not count: they are balanced).
/// SQLite refuses expressions deeper than 1000; rendering stays well within the stack.
const MAX_FILTER_DEPTH: usize = 200;

/// A query over a collection, from [`Collection::query`](crate::Collection::query).
///
/// Filters added with [`filter`](Query::filter) must all hold. Without
/// [`order_by`](Query::order_by) the order of results is unspecified.
#[must_use = "a query does nothing until run with all(), first(), count() or delete()"]
pub struct Query<'c, T> {
    exec: Exec<'c>,
    meta: Arc<CollectionMeta>,
    _marker: PhantomData<fn() -> T>,
    filters: Vec<Expr>,
    order: Vec<(usize, bool)>,
    limit: Option<usize>,
    offset: usize,
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
    pub(crate) fn new(exec: Exec<'c>, slot: &'c MetaSlot) -> Self {
        let meta = slot.get();
        Self { exec, meta, _marker: PhantomData, filters: Vec::new(), order: Vec::new(), limit: None, offset: 0 }
    }

    /// Keeps only documents matching `filter` (in addition to earlier filters).
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter.expr);
        self
    }

    /// Sorts by a field; later calls break ties of earlier ones.
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

    /// Runs the query and returns the matching documents.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if a filter value could not be bound (a NaN, a comparison of
    /// order with `None`), [`Error::Serialization`] if a stored document no longer
    /// deserializes, or a backend error.
    pub fn all(self) -> Result<Vec<T>> {
        let meta = &self.meta;
        let mut sql = Sql::new(meta);
        sql.push(&format!("SELECT {} FROM {}", meta.doc_columns, meta.table));
        self.tail(&mut sql, true)?;
        let mut out = Vec::new();
        self.exec.read(|conn| {
            conn.query(&sql.text, &sql.params, &mut |row| {
                out.push(decode::<T>(meta, row, 0)?);
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// Runs the query and returns the first matching document.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn first(self) -> Result<Option<T>> {
        let limit = self.limit.map_or(1, |n| n.min(1));
        Ok(self.limit(limit).all()?.pop())
    }

    /// Counts the matching documents (within `limit` and `offset`, if set).
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn count(self) -> Result<u64> {
        let meta = &self.meta;
        let mut sql = Sql::new(meta);
        if self.limit.is_none() && self.offset == 0 {
            sql.push(&format!("SELECT count(*) FROM {}", meta.table));
            self.tail(&mut sql, false)?;
        } else {
            sql.push(&format!("SELECT count(*) FROM (SELECT 1 FROM {}", meta.table));
            self.tail(&mut sql, true)?;
            sql.push(")");
        }
        self.exec.read(|conn| count(conn, &sql.text, &sql.params))
    }

    /// Deletes the matching documents (within `order_by`, `limit` and `offset`, if set) and
    /// returns how many were deleted.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn delete(self) -> Result<u64> {
        let meta = &self.meta;
        if let Exec::Tx(_) = self.exec {
            // Inside a transaction a savepoint may need the rows back: find them first.
            let mut select = Sql::new(meta);
            select.push(&format!("SELECT \"_id\" FROM {}", meta.table));
            self.tail(&mut select, true)?;
            let ids = self.exec.read(|conn| {
                let mut ids = Vec::new();
                conn.query(&select.text, &select.params, &mut |row| {
                    ids.push(row.get(0)?.to_owned());
                    Ok(())
                })?;
                Ok(ids)
            })?;
            let json = serde_json::Value::Array(
                ids.iter()
                    .map(|id| match id.as_ref() {
                        ValueRef::Integer(i) => serde_json::Value::from(i),
                        ValueRef::Text(s) => serde_json::Value::from(s),
                        _ => serde_json::Value::Null,
                    })
                    .collect(),
            );
            let refs: Vec<&Value> = ids.iter().collect();
            let n = self.exec.write(Access::Write, |ctx| {
                ctx.tracked(meta, &refs, ChangeKind::Delete, || {
                    ctx.conn.execute(&meta.sql.delete_ids, &[Value::Text(json.to_string())])
                })
            })?;
            return Ok(n as u64);
        }
        let mut sql = Sql::new(meta);
        if self.limit.is_none() && self.offset == 0 {
            sql.push(&format!("DELETE FROM {}", meta.table));
            self.tail(&mut sql, false)?;
        } else {
            sql.push(&format!("DELETE FROM {0} WHERE \"_id\" IN (SELECT \"_id\" FROM {0}", meta.table));
            self.tail(&mut sql, true)?;
            sql.push(")");
        }
        sql.push(" RETURNING \"_id\"");
        let n = self.exec.write(Access::Write, |ctx| {
            let mut deleted = Vec::new();
            ctx.conn.query(&sql.text, &sql.params, &mut |row| {
                deleted.push(Change {
                    collection: meta.collection,
                    id: row.get(0)?.to_owned(),
                    kind: ChangeKind::Delete,
                });
                Ok(())
            })?;
            let n = deleted.len();
            ctx.record(deleted);
            Ok(n)
        })?;
        Ok(n as u64)
    }

    /// Appends `WHERE`, and with `paging` also `ORDER BY` and `LIMIT`/`OFFSET`.
    fn tail(&self, sql: &mut Sql<'_>, paging: bool) -> Result<()> {
        for f in &self.filters {
            let depth = f.depth();
            if depth > MAX_FILTER_DEPTH {
                return Err(Error::invalid_query(
                    self.meta.collection,
                    format!("the filter is nested {depth} levels deep; at most {MAX_FILTER_DEPTH} are supported"),
                ));
            }
        }
        if !self.filters.is_empty() {
            sql.push(" WHERE ");
            for (i, e) in self.filters.iter().enumerate() {
                if i > 0 {
                    sql.push(" AND ");
                }
                sql.expr(e)?;
            }
        }
        if !paging {
            return Ok(());
        }
        for (i, &(field, descending)) in self.order.iter().enumerate() {
            sql.push(if i == 0 { " ORDER BY " } else { ", " });
            sql.field(field)?;
            sql.push(if descending { " DESC" } else { " ASC" });
        }
        if self.limit.is_some() || self.offset > 0 {
            let limit = self.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
            sql.push(" LIMIT ? OFFSET ?");
            sql.params.push(Value::Integer(limit));
            sql.params.push(Value::Integer(i64::try_from(self.offset).unwrap_or(i64::MAX)));
        }
        Ok(())
    }
}

/// SQL text and its parameters, built together so placeholders and values stay in step.
pub(crate) struct Sql<'m> {
    meta: &'m CollectionMeta,
    pub text: String,
    pub params: Vec<Value>,
}

impl<'m> Sql<'m> {
    pub fn new(meta: &'m CollectionMeta) -> Self {
        Self { meta, text: String::with_capacity(128), params: Vec::new() }
    }

    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn bind(&mut self, v: Value) {
        self.text.push('?');
        self.params.push(v);
    }

    fn invalid(&self, field: usize, reason: impl std::fmt::Display) -> Error {
        Error::invalid_query(self.meta.collection, format!("field `{}`: {reason}", self.meta.field_name(field)))
    }

    pub fn field(&mut self, field: usize) -> Result<()> {
        match self.meta.field_sql(field)? {
            FieldSql::Column(c) => self.text.push_str(c),
            FieldSql::Json(path) => {
                let path = path.clone();
                self.text.push_str("json_extract(\"_doc\", ");
                self.bind(Value::Text(path));
                self.text.push(')');
            }
        }
        Ok(())
    }

    pub fn expr(&mut self, e: &Expr) -> Result<()> {
        match e {
            Expr::Compare { field, op, value } => {
                let null = matches!(value, Value::Null);
                let sym = match (op, null) {
                    (CmpOp::Eq, true) => " IS NULL",
                    (CmpOp::Ne, true) => " IS NOT NULL",
                    (CmpOp::Eq, false) => " = ",
                    (CmpOp::Ne, false) => " IS NOT ",
                    (_, true) => return Err(self.invalid(*field, "cannot compare order with None")),
                    (CmpOp::Gt, false) => " > ",
                    (CmpOp::Gte, false) => " >= ",
                    (CmpOp::Lt, false) => " < ",
                    (CmpOp::Lte, false) => " <= ",
                };
                self.push("(");
                self.field(*field)?;
                self.push(sym);
                if !null {
                    self.bind(value.clone());
                }
                self.push(")");
            }
            Expr::Between { field, low, high } => {
                if matches!(low, Value::Null) || matches!(high, Value::Null) {
                    return Err(self.invalid(*field, "between bounds cannot be None"));
                }
                self.push("(");
                self.field(*field)?;
                self.push(" BETWEEN ");
                self.bind(low.clone());
                self.push(" AND ");
                self.bind(high.clone());
                self.push(")");
            }
            Expr::In { field, values } => self.in_list(*field, values)?,
            Expr::StartsWith { field, prefix } => {
                // The lower bound lets an index narrow the scan; substr() checks the prefix
                // exactly (LIKE would be case-insensitive and treat `%`/`_` as wildcards).
                self.push("(");
                self.field(*field)?;
                self.push(" >= ");
                self.bind(Value::Text(prefix.clone()));
                self.push(" AND substr(");
                self.field(*field)?;
                self.push(", 1, ");
                self.bind(Value::Integer(prefix.chars().count() as i64));
                self.push(") = ");
                self.bind(Value::Text(prefix.clone()));
                self.push(")");
            }
            Expr::IsNull { field, negated } => {
                self.push("(");
                self.field(*field)?;
                self.push(if *negated { " IS NOT NULL)" } else { " IS NULL)" });
            }
            Expr::And(all) => self.list(all, " AND ", "1")?,
            Expr::Or(any) => self.list(any, " OR ", "0")?,
            Expr::Not(inner) => {
                self.push("(NOT ");
                self.expr(inner)?;
                self.push(")");
            }
            Expr::Invalid { field, reason } => return Err(self.invalid(*field, reason)),
        }
        Ok(())
    }

    /// Renders `a OP b OP c ...` as a balanced tree of parenthesised halves, so a list of
    /// thousands of conditions stays far below SQLite's expression depth limit (1000).
    fn list(&mut self, items: &[Expr], sep: &str, empty: &str) -> Result<()> {
        match items {
            [] => self.push(empty),
            [one] => self.expr(one)?,
            _ => {
                let (left, right) = items.split_at(items.len() / 2);
                self.push("(");
                self.list(left, sep, empty)?;
                self.push(sep);
                self.list(right, sep, empty)?;
                self.push(")");
            }
        }
        Ok(())
    }

    fn in_list(&mut self, field: usize, values: &[Value]) -> Result<()> {
        let has_null = values.iter().any(|v| matches!(v, Value::Null));
        let values: Vec<&Value> = values.iter().filter(|v| !matches!(v, Value::Null)).collect();
        self.push("(");
        self.field(field)?;
        if values.len() <= INLINE_LIST_MAX {
            self.push(" IN (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    self.push(", ");
                }
                self.bind((*v).clone());
            }
            self.push(")");
        } else {
            let array = values
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => Ok(serde_json::Value::from(*i)),
                    Value::Real(r) => Ok(serde_json::Value::from(*r)),
                    Value::Text(s) => Ok(serde_json::Value::from(s.as_str())),
                    _ => Err(self.invalid(field, "binary values cannot be used in a long in_list")),
                })
                .collect::<Result<Vec<_>>>()?;
            self.push(" IN (SELECT value FROM json_each(");
            self.bind(Value::Text(serde_json::Value::Array(array).to_string()));
            self.push("))");
        }
        if has_null {
            self.push(" OR ");
            self.field(field)?;
            self.push(" IS NULL");
        }
        self.push(")");
        Ok(())
    }
}
