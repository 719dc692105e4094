//! Range queries over ordered indexes, keyset pagination with signed cursors, and lazy
//! iteration: [`Collection::range`] over a `#[range_index]` field, [`Collection::range_index`]
//! over a composite index (`#[db4(index(...))]`), then a [`Range`] builder that fetches a
//! [`Page`] or iterates. The ordering of every type, the cursor format and the limits are in
//! `docs/range.md`.

mod cursor;
mod index;
mod sql;

pub use cursor::{Cursor, MAX_CURSOR_CHARS};
use cursor::{CursorKey, CursorSigner};
pub use index::{Direction, IndexEntry, IndexRange, KeyType, MAX_RANGE_FIELDS, RangeField, RangeIndex};

use crate::collection::Collection;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::query::Field;
use crate::query::Filter;
use crate::query::filter::{Atom, CmpOp, Expr};
use crate::schema::{Document, Ordered, QueryValue, Schema};
use crate::sql::Slot;
use crate::store::codec::{decode, with_id};
use crate::store::slot::MetaSlot;
use crate::trace;
use crate::txn::{Runner, Scope};
use crate::value::{Value, ValueError, ValueRef, to_value};
use cursor::encode_value;
use serde::Serialize;
use sql::{Key, Op};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

/// The page size of a [`Range`] without [`limit`](Range::limit).
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// The bound type of a range over a named index ([`Collection::range_index`]): its keys may
/// have different types, so bounds and prefixes take any serializable value, checked against
/// the stored values' order when the range runs (see `docs/range.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyValue {}

impl<V: Serialize> QueryValue<AnyValue> for V {
    fn into_value(self) -> Result<Value, ValueError> {
        to_value(&self)
    }
}

/// The values of the leading keys of an index, for [`Range::prefix`]: one value (any
/// [`Ordered`] type, or `&str`), or a tuple of up to six values, one per key.
pub trait KeyPrefix {
    /// The values, one per key, as SQL values.
    ///
    /// # Errors
    ///
    /// Why a value cannot be bound (a NaN, an integer out of range).
    fn key_values(&self) -> Result<Vec<Value>, ValueError>;
}

impl<V: Ordered + Serialize> KeyPrefix for V {
    fn key_values(&self) -> Result<Vec<Value>, ValueError> {
        Ok(vec![to_value(self)?])
    }
}

impl KeyPrefix for &str {
    fn key_values(&self) -> Result<Vec<Value>, ValueError> {
        Ok(vec![Value::Text((*self).to_owned())])
    }
}

macro_rules! tuple_prefix {
    ($($name:ident),+) => {
        impl<$($name: Serialize),+> KeyPrefix for ($($name,)+) {
            #[allow(non_snake_case)]
            fn key_values(&self) -> Result<Vec<Value>, ValueError> {
                let ($($name,)+) = self;
                Ok(vec![$(to_value($name)?),+])
            }
        }
    };
}
tuple_prefix!(A);
tuple_prefix!(A, B);
tuple_prefix!(A, B, C);
tuple_prefix!(A, B, C, D);
tuple_prefix!(A, B, C, D, E);
tuple_prefix!(A, B, C, D, E, F);

/// One page of a range: at most `limit` documents in the range's order, and the cursors
/// around them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Page<T> {
    /// The documents, in the range's order (also when paging backwards with
    /// [`Range::before`]).
    pub items: Vec<T>,
    /// Where the next page starts ([`Range::after`]); `None` when no document follows (as far
    /// as this read saw).
    pub next: Option<Cursor>,
    /// Where the previous page ends ([`Range::before`]); `None` on the first page.
    pub prev: Option<Cursor>,
    /// Whether more documents follow in the direction this page was read (forwards, or
    /// backwards with [`Range::before`]): learned by reading one document more than `limit`,
    /// never by counting.
    pub has_more: bool,
}

/// The index a range reads, resolved against the document type's schema.
#[derive(Debug, Clone)]
pub(crate) struct IndexKeys {
    /// How cursors name it: `field:<name>` or `index:<name>`.
    pub(crate) name: String,
    /// The keys (field index, descending in the index), the id last.
    pub(crate) keys: Vec<(usize, bool)>,
}

/// Who signs a range's cursors, written first in the context they are signed over: a
/// cursor of one kind is refused by the other even under the same secret (the shard
/// router signs with its lowest shard's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CursorScope {
    /// A range over one collection ([`Collection::range`]).
    Database,
    /// A range over a shard router's shards (`ShardRouter::range`).
    #[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
    Router,
}

/// A range query over an ordered index, from [`Collection::range`] or
/// [`Collection::range_index`]: bounds on the first key after the [`prefix`](Self::prefix),
/// a direction, filters, a page size and a cursor, then [`fetch`](Self::fetch) a page or
/// [`iter`](Self::iter) lazily.
///
/// Documents come in the index's order with the id as the last key: ascending fields smallest
/// first, descending ones largest first, `None` below every value (first ascending, last
/// descending), ties broken by id in the direction of the index's last field.
/// [`descending`](Self::descending) reverses all of it.
///
/// `B` is the type of the bounds: the field's type for [`Collection::range`],
/// [`AnyValue`] for a named index.
#[must_use = "a range does nothing until run with fetch() or iter()"]
pub struct Range<'c, T, B = AnyValue> {
    runner: Runner<'c>,
    slot: &'c MetaSlot,
    key: &'c CursorKey,
    index: std::result::Result<IndexKeys, String>,
    spec: Spec,
    filters: Vec<Expr>,
    include_cold: bool,
    _marker: PhantomData<fn() -> (T, B)>,
}

impl<T, B> std::fmt::Debug for Range<'_, T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Range")
            .field("index", &self.index)
            .field("spec", &self.spec)
            .field("filters", &self.filters)
            .finish()
    }
}

fn db_of<'a>(runner: Runner<'a>) -> &'a Db {
    match runner {
        Runner::Db(db) => db,
        Runner::Tx(tx) => tx.db(),
    }
}

impl<T: Document, S: Scope> Collection<T, S> {
    /// A range over a field's index (`#[range_index]`; an `#[index]`ed field, the partition
    /// key and the id work too), smallest value first, ties broken by id.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_runtime as db4;
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// struct Event { #[id] id: i64, #[range_index] at: i64 }
    ///
    /// # fn main() -> db4::Result<()> {
    /// let events = db4::Db::open_in_memory()?.collection::<Event>()?;
    /// for i in 0..10 { events.insert(&Event { id: i, at: 100 - i })?; }
    ///
    /// let page = events.range(Event::fields().at).between(92..=97).limit(3).fetch()?;
    /// assert_eq!(page.items.iter().map(|e| e.at).collect::<Vec<_>>(), [92, 93, 94]);
    /// let cursor = db4::Cursor::parse(&page.next.unwrap().to_string())?;
    /// let page2 = events.range(Event::fields().at).between(92..=97).after(&cursor).limit(3).fetch()?;
    /// assert_eq!(page2.items.iter().map(|e| e.at).collect::<Vec<_>>(), [95, 96, 97]);
    /// assert!(!page2.has_more);
    /// # Ok(()) }
    /// ```
    pub fn range<V: Ordered>(&self, field: Field<T, V>) -> Range<'_, T, V> {
        self.new_range(field_index_keys(T::schema(), field.index()))
    }

    /// A range over the composite index `name` (declared with
    /// `#[db4(index(name = "...", fields(...)))]`) or over the index of the field called
    /// `name`. Bounds apply to the first key after the [`prefix`](Range::prefix).
    ///
    /// An unknown name fails with [`Error::InvalidQuery`] when the range runs.
    pub fn range_index(&self, name: &str) -> Range<'_, T, AnyValue> {
        self.new_range(named_index_keys(T::schema(), name))
    }

    fn new_range<B>(&self, index: std::result::Result<IndexKeys, String>) -> Range<'_, T, B> {
        let runner = self.runner();
        Range {
            runner,
            slot: self.slot(),
            key: db_of(runner).cursor_key(),
            index,
            spec: Spec::default(),
            filters: Vec::new(),
            include_cold: false,
            _marker: PhantomData,
        }
    }

    /// A range over `index` with the builder state of another (a shard router's): its
    /// spec (whose cursors are ignored: the caller passes the position to
    /// [`Range::rows`]) and filters.
    #[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
    pub(crate) fn range_of<B>(
        &self,
        index: std::result::Result<IndexKeys, String>,
        spec: Spec,
        filters: Vec<Expr>,
    ) -> Range<'_, T, B> {
        Range { spec, filters, ..self.new_range(index) }
    }
}

/// Per value of a row's scan key (the keys after the first `prefix`, the id last): whether
/// a page read at `position` scans it descending. Rows compare in scan order by
/// [`value_cmp`](crate::query::eval::value_cmp) of each value, reversed where this says.
#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
pub(crate) fn scan_directions(index: &IndexKeys, prefix: usize, descending: bool, position: &Position) -> Vec<bool> {
    let flip = descending ^ position.backward();
    let last_desc = index.keys.last().is_some_and(|k| k.1);
    index.keys.get(prefix..).unwrap_or(&[]).iter().map(|k| k.1 ^ flip).chain([last_desc ^ flip]).collect()
}

/// The index [`Collection::range`] reads for the field at `field`, or why there is none.
pub(crate) fn field_index_keys(schema: &Schema, field: usize) -> std::result::Result<IndexKeys, String> {
    match schema.fields().get(field) {
        Some(def) if def.is_id() => Ok(IndexKeys { name: format!("field:{}", def.name()), keys: Vec::new() }),
        Some(def) if def.has_column() => {
            Ok(IndexKeys { name: format!("field:{}", def.name()), keys: vec![(field, false)] })
        }
        Some(def) => Err(format!(
            "field `{}` has no index to range over: mark it `#[range_index]`, or declare a composite index \
             that starts with it and use `range_index`",
            def.name()
        )),
        None => Err(format!("field #{field} does not belong to this collection")),
    }
}

/// The index [`Collection::range_index`] reads for `name`, or why there is none.
pub(crate) fn named_index_keys(schema: &Schema, name: &str) -> std::result::Result<IndexKeys, String> {
    let position = |field: &str| schema.fields().iter().position(|f| f.name() == field);
    if let Some(def) = schema.composite_indexes().iter().find(|i| i.name() == name) {
        def.fields()
            .iter()
            .map(|k| position(k.field()).map(|i| (i, k.is_descending())))
            .collect::<Option<Vec<_>>>()
            .map(|keys| IndexKeys { name: format!("index:{name}"), keys })
            .ok_or_else(|| format!("index `{name}` names a field the schema does not have"))
    } else {
        match schema.fields().iter().position(|f| f.name() == name) {
            Some(i) if schema.fields()[i].is_id() => Ok(IndexKeys { name: format!("field:{name}"), keys: vec![] }),
            Some(i) if schema.fields()[i].has_column() => {
                Ok(IndexKeys { name: format!("field:{name}"), keys: vec![(i, false)] })
            }
            _ => {
                let known: Vec<&str> = schema
                    .composite_indexes()
                    .iter()
                    .map(|i| i.name())
                    .chain(schema.fields().iter().filter(|f| f.has_column()).map(|f| f.name()))
                    .collect();
                Err(format!("no index named `{name}`; the indexes are: {}", known.join(", ")))
            }
        }
    }
}

fn owned_bound<Q: Clone + QueryValue<B>, B>(bound: Bound<&Q>, invalid: &mut Option<String>) -> Bound<Value> {
    let mut value = |q: &Q| match q.clone().into_value() {
        Ok(v) => v,
        Err(e) => {
            invalid.get_or_insert(e.0);
            Value::Null
        }
    };
    match bound {
        Bound::Included(q) => Bound::Included(value(q)),
        Bound::Excluded(q) => Bound::Excluded(value(q)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl<'c, T: Document, B> Range<'c, T, B> {
    /// Keeps the keys within `bounds` (`a..b`, `a..=b`, `a..`, `..b`, `..`, or a pair of
    /// [`Bound`]s), inclusive or exclusive as written, on the first key after the prefix.
    /// Replaces earlier bounds.
    pub fn between<Q: QueryValue<B> + Clone>(mut self, bounds: impl RangeBounds<Q>) -> Self {
        self.spec.between(bounds);
        self
    }

    /// Keeps keys greater than `value` (replacing the lower bound).
    pub fn gt(mut self, value: impl QueryValue<B>) -> Self {
        self.spec.bound(false, false, value.into_value());
        self
    }

    /// Keeps keys greater than or equal to `value` (replacing the lower bound).
    pub fn gte(mut self, value: impl QueryValue<B>) -> Self {
        self.spec.bound(false, true, value.into_value());
        self
    }

    /// Keeps keys less than `value` (replacing the upper bound); `None` is less than every
    /// value.
    pub fn lt(mut self, value: impl QueryValue<B>) -> Self {
        self.spec.bound(true, false, value.into_value());
        self
    }

    /// Keeps keys less than or equal to `value` (replacing the upper bound).
    pub fn lte(mut self, value: impl QueryValue<B>) -> Self {
        self.spec.bound(true, true, value.into_value());
        self
    }

    /// Fixes the leading keys of the index to `values` (one value, or a tuple with one per
    /// key): `range_index("by_tenant_created").prefix("acme")` is tenant `acme`'s documents
    /// by creation time. Bounds then apply to the next key (the id, once every field is
    /// fixed). Replaces an earlier prefix.
    pub fn prefix(mut self, values: impl KeyPrefix) -> Self {
        self.spec.prefix(&values);
        self
    }

    /// The index's own order (the default).
    pub fn ascending(mut self) -> Self {
        self.spec.descending = false;
        self
    }

    /// The reverse of the index's order, every key and the id reversed.
    pub fn descending(mut self) -> Self {
        self.spec.descending = true;
        self
    }

    /// Keeps only documents matching `filter` too (added to earlier filters). The index
    /// still gives the order; documents the filter rejects are skipped.
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter.expr);
        self
    }

    /// At most `n` documents per page (default [`DEFAULT_PAGE_SIZE`]); at least 1.
    pub fn limit(mut self, n: usize) -> Self {
        self.spec.limit = n;
        self
    }

    /// Starts after `cursor` (a [`Page::next`] or [`Page::prev`] of this same range).
    /// Replaces [`before`](Self::before).
    pub fn after(mut self, cursor: &Cursor) -> Self {
        self.spec.cursor(cursor, true);
        self
    }

    /// Ends before `cursor`: the page is the `limit` documents just before it, in the range's
    /// order. Replaces [`after`](Self::after).
    pub fn before(mut self, cursor: &Cursor) -> Self {
        self.spec.cursor(cursor, false);
        self
    }

    /// Reads one page.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`] for a cursor not issued for this range by this database,
    /// [`Error::InvalidQuery`] for an unknown index, a prefix longer than the index, a value
    /// that cannot be bound, a `limit` of 0 or a filter past a statement limit,
    /// [`Error::Serialization`] naming a stored document that no longer deserializes, or a
    /// backend error.
    pub fn fetch(self) -> Result<Page<T>> {
        self.fetch_page()
    }

    /// Also reads the cold tier ([`Db::compact`](crate::Db::compact)): each page merges the
    /// hot rows with the live documents of every segment that fall in the range (prefix,
    /// bounds, filters, after or before the cursor), in the range's order, so
    /// [`fetch`](Self::fetch), cursors in both directions and [`iter`](Self::iter) work as
    /// over one table. Each page reads whole the segments that may hold one of its rows: a
    /// segment is skipped when the prefix, the bounds, the cursor's position or the filters
    /// (their ranges on the id or on an indexed field, see
    /// [`Query::include_cold`](crate::Query::include_cold)) miss the id range or the field's
    /// value range its manifest records. Cursors of such a range are signed for it (a range without
    /// `include_cold` refuses them). Without a cold store it changes nothing.
    pub fn include_cold(mut self, include: bool) -> Self {
        self.include_cold = include;
        self
    }

    fn fetch_page(self) -> Result<Page<T>> {
        let span = trace::op("range", Some(self.slot.schema().collection()));
        let page =
            self.prepare().and_then(|(keys, context, position)| self.page(&keys, &context, &position, self.spec.limit));
        span.rows_of(page, |p| p.items.len() as u64)
    }

    /// Iterates over every document of the range, reading `page_size` at a time as the
    /// iterator advances (each page a read of its own: writes between pages are seen, and no
    /// document present throughout is skipped or repeated). Starts after the
    /// [`after`](Self::after) cursor if set; with [`before`](Self::before), walks backwards
    /// from it, nearest first. Stops after the first error.
    pub fn iter(self, page_size: usize) -> impl Iterator<Item = Result<T>> + 'c
    where
        T: 'c,
        B: 'c,
    {
        let start =
            self.prepare().map(|(index, context, position)| (Prepared { range: self, index, context }, position));
        Pager::new(start, page_size)
    }

    fn collection(&self) -> &'static str {
        self.slot.schema().collection()
    }

    fn invalid_query(&self, reason: impl Into<String>) -> Error {
        Error::invalid_query(self.collection(), reason)
    }

    /// Checks the range and the cursor: the keys of the scan, the context cursors are signed
    /// over, and where to start.
    fn prepare(&self) -> Result<(IndexKeys, Vec<u8>, Position)> {
        self.prepare_in(self.key, CursorScope::Database)
    }

    /// [`prepare`](Self::prepare) for cursors signed by `key` in `scope`.
    pub(crate) fn prepare_in(&self, key: &CursorKey, scope: CursorScope) -> Result<(IndexKeys, Vec<u8>, Position)> {
        let schema = self.slot.schema();
        let prepared =
            prepare_spec(schema, self.index.clone(), &self.spec, &self.filters, self.include_cold, key, scope)?;
        check_cursor_id(&prepared.2, self.slot.get().id_kind)?;
        Ok(prepared)
    }

    /// Reads the page at `position`: `limit` + 1 rows, to learn whether more follow.
    fn page(&self, index: &IndexKeys, context: &[u8], position: &Position, limit: usize) -> Result<Page<T>> {
        let (rows, has_more) = self.rows(index, position, limit, false)?;
        Ok(finish_page(self.key, context, position, rows, has_more))
    }

    /// The rows of the page at `position` in scan order (reversed when reading backwards),
    /// at most `limit`, each with its scan key (the keys after the prefix, the id last) if
    /// `every_key` or it is the first or last row, and whether more follow (`limit` + 1
    /// rows are read).
    pub(crate) fn rows(
        &self,
        index: &IndexKeys,
        position: &Position,
        limit: usize,
        every_key: bool,
    ) -> Result<KeyedRows<T>> {
        let schema = self.slot.schema();
        let id_field = schema.fields().iter().position(|f| f.is_id()).unwrap_or(0);
        let flip = self.spec.descending ^ position.backward();
        let last_desc = index.keys.last().is_some_and(|k| k.1);
        let p = self.spec.prefix.len();
        self.runner.read_meta(self.slot, |conn, meta| {
            let nullable =
                |field: usize| field != id_field && meta.kinds.get(field).copied().flatten().is_none_or(|k| k.nullable);
            let keys: Vec<Key> = index
                .keys
                .iter()
                .map(|&(field, desc)| Key { field, descending: desc ^ flip, nullable: nullable(field) })
                .chain([Key { field: id_field, descending: last_desc ^ flip, nullable: false }])
                .collect();
            let scan = self.spec.scan(&keys, position);
            let mut sql = meta.statement();
            sql.push(&format!("SELECT \"_id\", {}", meta.doc_columns));
            for key in &keys[p..keys.len() - 1] {
                sql.push(", ");
                sql.field(key.field)?;
            }
            sql.push(&format!(" FROM {}", meta.table));
            let filtered = !self.filters.is_empty();
            if filtered {
                // The filter sits under one AND, with the range's conditions beside it.
                sql.push(" WHERE (");
                sql.filters(&self.filters, 1)?;
                sql.push(")");
            }
            let conditions = scan.push_conditions(&mut sql, if filtered { " AND " } else { " WHERE " })?;
            sql.fit(and_height(&conditions) + usize::from(filtered), crate::sql::MAX_EXPR_DEPTH)?;
            scan.push_order_and_limit(&mut sql, limit)?;
            let (text, params) = sql.finish()?;
            let first_key = 1 + meta.doc_columns.matches(',').count() + 1;
            let mut rows: Vec<(T, Vec<Value>)> = Vec::with_capacity(crate::sql::rows_capacity(Some(limit)));
            let mut more = false;
            let cold = if self.include_cold { db_of(self.runner).cold() } else { None };
            // The page's cursors need the scan keys of its first and last rows only; merging
            // with the cold tier needs every row's. The latest row's keys live in `latest`,
            // whose buffers each row reuses.
            let mut latest = vec![Value::Null; keys.len() - p];
            conn.query(&text, &params, &mut |row| {
                if rows.len() == limit {
                    // The probe row: more follow.
                    more = true;
                    return Ok(());
                }
                let Some((id, fields)) = latest.split_last_mut() else {
                    return Err(Error::invalid_query(meta.collection, "a range scan without its id key"));
                };
                row.get(0)?.write_to(id);
                let doc = decode::<T>(meta, row, 1).map_err(|e| with_id(e, id))?;
                for (i, value) in fields.iter_mut().enumerate() {
                    row.get(first_key + i)?.write_to(value);
                }
                let key = if every_key || cold.is_some() || rows.is_empty() { latest.clone() } else { Vec::new() };
                rows.push((doc, key));
                Ok(())
            })?;
            if let Some(cold) = cold {
                return self.merge_cold(cold, conn, meta, &keys, position, (rows, more), limit);
            }
            if let Some(last) = rows.last_mut().filter(|r| r.1.is_empty()) {
                last.1 = latest;
            }
            Ok((rows, more))
        })
    }
}

/// Checks a range over `schema` and its cursor: the keys of the scan, the context cursors
/// are signed over, and where to start (the cursor verified under `key` in `scope`).
pub(crate) fn prepare_spec(
    schema: &Schema,
    index: std::result::Result<IndexKeys, String>,
    spec: &Spec,
    filters: &[Expr],
    include_cold: bool,
    key: &CursorKey,
    scope: CursorScope,
) -> Result<(IndexKeys, Vec<u8>, Position)> {
    let collection = schema.collection();
    let index = index.map_err(|e| Error::invalid_query(collection, e))?;
    spec.check(collection)?;
    check_prefix(collection, &index, spec.prefix.len())?;
    let context = range_context(schema, &index, spec, filters, include_cold, scope);
    // The cursor holds the keys after the prefix, and the id.
    let expected = index.keys.len() - spec.prefix.len() + 1;
    let position = spec.position(key, &context, expected)?;
    Ok((index, context, position))
}

/// Refuses a prefix longer than the index.
pub(crate) fn check_prefix(collection: &str, index: &IndexKeys, prefix: usize) -> Result<()> {
    if prefix > index.keys.len() {
        return Err(Error::invalid_query(
            collection,
            format!(
                "the prefix has {prefix} values and index `{}` has {} fields",
                index.name.split(':').nth(1).unwrap_or(""),
                index.keys.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses a cursor whose id is not of the collection's id type.
pub(crate) fn check_cursor_id(position: &Position, id_kind: crate::schema::IdKind) -> Result<()> {
    use crate::schema::IdKind;
    let id_ok = matches!(
        (position.key().and_then(<[Value]>::last), id_kind),
        (None, _) | (Some(Value::Integer(_)), IdKind::Integer) | (Some(Value::Text(_)), IdKind::Text)
    );
    if id_ok { Ok(()) } else { Err(Error::invalid_cursor("its id is not of this collection's id type")) }
}

/// What a cursor of a range is signed over: the scope, the collection, the index and its
/// keys, the direction, the prefix, the bounds and the filters.
fn range_context(
    schema: &Schema,
    index: &IndexKeys,
    spec: &Spec,
    filters: &[Expr],
    include_cold: bool,
    scope: CursorScope,
) -> Vec<u8> {
    let mut out = match scope {
        CursorScope::Database => b"db4 range v1\0".to_vec(),
        CursorScope::Router => b"db4 shard router range v1\0".to_vec(),
    };
    let text = |out: &mut Vec<u8>, s: &str| encode_value(out, ValueRef::Text(s));
    text(&mut out, schema.collection());
    text(&mut out, &index.name);
    for &(field, desc) in &index.keys {
        let def = &schema.fields()[field];
        text(&mut out, def.name());
        text(&mut out, def.key());
        out.push(u8::from(desc));
    }
    spec.encode(&mut out);
    encode_filters(&mut out, filters);
    if include_cold {
        out.extend_from_slice(b"\0include cold");
    }
    out
}

/// A page's documents with their scan keys, and whether more follow.
pub(crate) type KeyedRows<T> = (Vec<(T, Vec<Value>)>, bool);

impl<T: Document, B> Range<'_, T, B> {
    /// [`rows`](Self::rows) with every key, keeping only the documents `keep` accepts: reads
    /// on past the others until `limit` + 1 are kept or none is left (a shard that still holds
    /// copies of documents a split moved away).
    pub(crate) fn rows_kept(
        &self,
        index: &IndexKeys,
        position: &Position,
        limit: usize,
        mut keep: impl FnMut(&T) -> Result<bool>,
    ) -> Result<KeyedRows<T>> {
        let mut kept: Vec<(T, Vec<Value>)> = Vec::new();
        let mut at = position.clone();
        loop {
            let (rows, more) = self.rows(index, &at, limit, true)?;
            let last = rows.last().map(|r| r.1.clone());
            for (doc, key) in rows {
                if keep(&doc)? {
                    kept.push((doc, key));
                }
            }
            if kept.len() > limit {
                kept.truncate(limit);
                return Ok((kept, true));
            }
            match last {
                Some(key) if more => {
                    at = if position.backward() { Position::Before(key, false) } else { Position::After(key, false) }
                }
                _ => return Ok((kept, false)),
            }
        }
    }
}

impl<T: Document, B> Range<'_, T, B> {
    /// Merges the hot rows of a page (`limit` at most, in scan order) with the live cold
    /// documents that belong on it; returns the page's rows and whether more follow.
    #[allow(clippy::too_many_arguments)]
    fn merge_cold(
        &self,
        cold: &crate::tier::cold::ColdTier,
        conn: &dyn crate::backend::Connection,
        meta: &crate::store::meta::CollectionMeta,
        keys: &[Key],
        position: &Position,
        (hot, hot_more): KeyedRows<T>,
        limit: usize,
    ) -> Result<KeyedRows<T>> {
        use crate::query::eval::{DocFields, Matcher, value_cmp};
        use std::cmp::Ordering;
        let schema = meta.schema;
        let p = self.spec.prefix.len();
        let matcher = Matcher::new(schema, &self.filters)?;
        let scan_cmp = |a: &[Value], b: &[Value]| {
            for (k, (x, y)) in keys[p..].iter().zip(a.iter().zip(b)) {
                let o = value_cmp(x, y);
                let o = if k.descending { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        };
        let in_bound = |v: &Value, bound: &Bound<Value>, upper: bool| match bound {
            Bound::Unbounded => true,
            _ if matches!(v, Value::Null) => false,
            Bound::Included(b) | Bound::Excluded(b) => {
                let o = value_cmp(v, b);
                let o = if upper { o.reverse() } else { o };
                o == Ordering::Greater || (matches!(bound, Bound::Included(_)) && o == Ordering::Equal)
            }
        };
        let hot_ids: std::collections::HashSet<crate::store::codec::IdKey> = hot
            .iter()
            .filter_map(|(_, k)| k.last())
            .map(|id| crate::store::codec::IdKey::from_ref(id.as_ref()))
            .collect();
        let mut cold_rows: Vec<(crate::tier::cold::merge::Row, Vec<Value>)> = Vec::new();
        // The segments that may hold a row of this page: the filters' ranges, the prefix's
        // values, the bounds of the first key after it, and (reading on from a cursor) that
        // key at or past the cursor's.
        let mut prune = crate::tier::cold::merge::Prune::of_filters(&self.filters);
        for (key, value) in keys.iter().zip(&self.spec.prefix) {
            prune.range(key.field, Bound::Included(value.clone()), Bound::Included(value.clone()));
        }
        if p < keys.len() - 1 {
            prune.range(keys[p].field, self.spec.lower.clone(), self.spec.upper.clone());
        }
        if let (Position::After(c, _) | Position::Before(c, _), Some(key)) = (position, keys.get(p))
            && let Some(at) = c.first().filter(|v| !matches!(v, Value::Null))
        {
            // Rows at or past the cursor in scan order have this key at or past its value.
            match key.descending {
                false => prune.range(key.field, Bound::Included(at.clone()), Bound::Unbounded),
                true => prune.range(key.field, Bound::Unbounded, Bound::Included(at.clone())),
            }
        }
        for row in crate::tier::cold::merge::live(cold, conn, meta, &prune)? {
            if hot_ids.contains(&crate::store::codec::IdKey::from_ref(row.id.as_ref())) {
                continue;
            }
            let fields = DocFields::parse(&row.json)
                .map_err(|e| Error::serialization(meta.collection, Some(crate::store::codec::id_text(&row.id)), e))?;
            let value_of = |field: usize| {
                if schema.fields()[field].is_id() { row.id.clone() } else { fields.value(schema.fields()[field].key()) }
            };
            let prefix_ok = self.spec.prefix.iter().enumerate().all(|(i, v)| {
                let x = value_of(keys[i].field);
                !matches!(x, Value::Null) && value_cmp(&x, v) == Ordering::Equal
            });
            if !prefix_ok || !matcher.matches(&fields) {
                continue;
            }
            if p < keys.len() - 1 {
                let first = value_of(keys[p].field);
                if !in_bound(&first, &self.spec.lower, false) || !in_bound(&first, &self.spec.upper, true) {
                    continue;
                }
            }
            let key: Vec<Value> = keys[p..].iter().map(|k| value_of(k.field)).collect();
            let after = match position {
                Position::Start => true,
                Position::After(c, inclusive) | Position::Before(c, inclusive) => {
                    let o = scan_cmp(&key, c);
                    o == Ordering::Greater || (*inclusive && o == Ordering::Equal)
                }
            };
            if after {
                cold_rows.push((row, key));
            }
        }
        cold_rows.sort_by(|a, b| scan_cmp(&a.1, &b.1));
        let mut out = Vec::with_capacity(limit + 1);
        let (mut hot, mut cold_iter) = (hot.into_iter().peekable(), cold_rows.into_iter().peekable());
        while out.len() <= limit {
            let take_hot = match (hot.peek(), cold_iter.peek()) {
                (Some(h), Some(c)) => scan_cmp(&h.1, &c.1) != Ordering::Greater,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_hot {
                out.extend(hot.next());
            } else if let Some((row, key)) = cold_iter.next() {
                let version = if meta.versioned { row.version } else { None };
                let doc =
                    crate::store::codec::decode_json::<T>(meta, &row.json, version).map_err(|e| with_id(e, &row.id))?;
                out.push((doc, key));
            }
        }
        let more = hot_more || out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }
}

/// What both range builders gather before they run ([`Range`] and
/// [`IndexRange`](index::IndexRange)): their builder methods are these.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) prefix: Vec<Value>,
    pub(crate) lower: Bound<Value>,
    pub(crate) upper: Bound<Value>,
    pub(crate) descending: bool,
    pub(crate) limit: usize,
    after: Option<Cursor>,
    before: Option<Cursor>,
    /// The first value that could not be bound, reported when the range runs.
    invalid: Option<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            prefix: Vec::new(),
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
            descending: false,
            limit: DEFAULT_PAGE_SIZE,
            after: None,
            before: None,
            invalid: None,
        }
    }
}

impl Spec {
    pub(crate) fn between<Q: QueryValue<B> + Clone, B>(&mut self, bounds: impl RangeBounds<Q>) {
        self.lower = owned_bound(bounds.start_bound(), &mut self.invalid);
        self.upper = owned_bound(bounds.end_bound(), &mut self.invalid);
    }

    /// Sets the upper bound (`upper`) or the lower one to `value`, `inclusive` or not.
    pub(crate) fn bound(&mut self, upper: bool, inclusive: bool, value: std::result::Result<Value, ValueError>) {
        let value = value.unwrap_or_else(|e| {
            self.invalid.get_or_insert(e.0);
            Value::Null
        });
        let bound = if inclusive { Bound::Included(value) } else { Bound::Excluded(value) };
        if upper {
            self.upper = bound;
        } else {
            self.lower = bound;
        }
    }

    pub(crate) fn prefix(&mut self, values: &impl KeyPrefix) {
        match values.key_values() {
            Ok(values) => self.prefix = values,
            Err(e) => {
                self.invalid.get_or_insert(e.0);
            }
        }
    }

    /// Starts after `cursor` (`after`) or ends before it, replacing the other.
    pub(crate) fn cursor(&mut self, cursor: &Cursor, after: bool) {
        (self.after, self.before) = if after { (Some(cursor.clone()), None) } else { (None, Some(cursor.clone())) };
    }

    /// Refuses what the builder methods could not: a value that cannot be bound, a limit of 0.
    fn check(&self, collection: &str) -> Result<()> {
        if let Some(reason) = &self.invalid {
            return Err(Error::invalid_query(collection, format!("a range bound or prefix cannot be bound: {reason}")));
        }
        if self.limit == 0 {
            return Err(Error::invalid_query(collection, "a range's limit must be at least 1"));
        }
        Ok(())
    }

    /// Where the page starts, the cursor checked against `context` and `expected` values.
    fn position(&self, key: &CursorKey, context: &[u8], expected: usize) -> Result<Position> {
        Position::of(key, context, self.after.as_ref(), self.before.as_ref(), expected)
    }

    fn scan<'a>(&'a self, keys: &'a [Key], position: &'a Position) -> Scan<'a> {
        Scan { keys, prefix: &self.prefix, lower: &self.lower, upper: &self.upper, position }
    }

    /// Writes what a cursor is signed over besides its index: the direction, the prefix and
    /// the bounds.
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.descending));
        encode_value(out, ValueRef::Integer(self.prefix.len() as i64));
        for v in &self.prefix {
            encode_value(out, v.as_ref());
        }
        for bound in [&self.lower, &self.upper] {
            match bound {
                Bound::Unbounded => out.push(0),
                Bound::Included(v) => {
                    out.push(1);
                    encode_value(out, v.as_ref());
                }
                Bound::Excluded(v) => {
                    out.push(2);
                    encode_value(out, v.as_ref());
                }
            }
        }
    }
}

/// Where a page starts.
#[derive(Debug, Clone)]
pub(crate) enum Position {
    Start,
    /// After the key; `true`: at or after it.
    After(Vec<Value>, bool),
    /// Before the key; `true`: at or before it.
    Before(Vec<Value>, bool),
}

impl Position {
    /// Where `after` or `before` (at most one is set) says a page starts, once `key` has
    /// checked the cursor against `context` and its key holds `expected` values.
    fn of(
        key: &CursorKey,
        context: &[u8],
        after: Option<&Cursor>,
        before: Option<&Cursor>,
        expected: usize,
    ) -> Result<Position> {
        Ok(match (after, before) {
            (Some(c), _) => {
                let (inclusive, values) = key.verify(context, c, expected)?;
                Position::After(values, inclusive)
            }
            (None, Some(c)) => {
                let (inclusive, values) = key.verify(context, c, expected)?;
                Position::Before(values, inclusive)
            }
            (None, None) => Position::Start,
        })
    }

    pub(crate) fn backward(&self) -> bool {
        matches!(self, Position::Before(..))
    }

    /// The cursor's key, if the page starts at one.
    fn key(&self) -> Option<&[Value]> {
        match self {
            Position::Start => None,
            Position::After(values, _) | Position::Before(values, _) => Some(values),
        }
    }

    /// The position a page's cursor continues from, in the direction this one reads.
    pub(crate) fn continued(&self, cursor: &Cursor) -> Position {
        let (inclusive, values) = cursor.decoded().unwrap_or_default();
        if self.backward() { Position::Before(values, inclusive) } else { Position::After(values, inclusive) }
    }
}

/// What both kinds of range scan the same way: the keys, the prefix, the bounds and where
/// the page starts.
struct Scan<'a> {
    /// Every key of the scan, the id last, each in the direction this page reads it.
    keys: &'a [Key],
    prefix: &'a [Value],
    lower: &'a Bound<Value>,
    upper: &'a Bound<Value>,
    position: &'a Position,
}

/// A value for a key comparison: `None` for NULL, which [`sql::compare`] writes as `IS NULL`.
fn bind_key(sql: &mut crate::sql::Statement<'_>, v: &Value) -> Result<Option<Slot>> {
    if matches!(v, Value::Null) { Ok(None) } else { sql.bind(v.clone()).map(Some) }
}

impl Scan<'_> {
    /// Writes `<lead>(<prefix> AND <bounds> AND <position>)`, if there is any of them, and
    /// returns the height of each condition.
    fn push_conditions(&self, sql: &mut crate::sql::Statement<'_>, lead: &str) -> Result<Vec<usize>> {
        let mut conditions: Vec<usize> = Vec::new();
        let bounded = !matches!((self.lower, self.upper), (Bound::Unbounded, Bound::Unbounded));
        if self.prefix.is_empty() && !bounded && self.position.key().is_none() {
            return Ok(conditions);
        }
        sql.push(lead);
        sql.push("(");
        let sep = |sql: &mut crate::sql::Statement<'_>, conditions: &Vec<usize>| {
            if !conditions.is_empty() {
                sql.push(" AND ");
            }
        };
        for (key, value) in self.keys.iter().zip(self.prefix) {
            sep(sql, &conditions);
            let slot = bind_key(sql, value)?;
            conditions.push(sql::compare(sql, key.field, Op::Eq, slot)?);
        }
        let field = self.keys[self.prefix.len()].field;
        for (bound, inclusive, exclusive) in [(self.lower, Op::Gte, Op::Gt), (self.upper, Op::Lte, Op::Lt)] {
            let (op, value) = match bound {
                Bound::Unbounded => continue,
                Bound::Included(v) => (inclusive, v),
                Bound::Excluded(v) => (exclusive, v),
            };
            sep(sql, &conditions);
            let slot = bind_key(sql, value)?;
            conditions.push(sql::compare(sql, field, op, slot)?);
        }
        if let Position::After(values, inclusive) | Position::Before(values, inclusive) = self.position {
            sep(sql, &conditions);
            let slots = values.iter().map(|v| bind_key(sql, v)).collect::<Result<Vec<_>>>()?;
            conditions.push(sql::after(sql, &self.keys[self.prefix.len()..], &slots, *inclusive)?);
        }
        sql.push(")");
        Ok(conditions)
    }

    /// Writes `ORDER BY` over the keys after the prefix (the prefix's equalities fix the
    /// others, and sorting by them too only costs) and `LIMIT` one more row than `limit`.
    fn push_order_and_limit(&self, sql: &mut crate::sql::Statement<'_>, limit: usize) -> Result<()> {
        for (i, key) in self.keys[self.prefix.len()..].iter().enumerate() {
            sql.push(if i == 0 { " ORDER BY " } else { ", " });
            sql.field(key.field)?;
            sql.push(if key.descending { " DESC" } else { " ASC" });
        }
        sql.push(" LIMIT ");
        sql.push_integer(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX));
        Ok(())
    }
}

/// The height of conditions joined by `AND`: `a AND b AND c` nests to the left.
fn and_height(conditions: &[usize]) -> usize {
    let mut height = 0;
    for (i, &h) in conditions.iter().enumerate() {
        height = if i == 0 { h } else { 1 + height.max(h) };
    }
    height
}

/// The page of `rows` (each with its cursor key) read at `position`, in the range's order,
/// with its cursors signed over `context`.
pub(crate) fn finish_page<I>(
    key: &CursorKey,
    context: &[u8],
    position: &Position,
    mut rows: Vec<(I, Vec<Value>)>,
    has_more: bool,
) -> Page<I> {
    if position.backward() {
        rows.reverse();
    }
    let sign = |values: &[Value], inclusive: bool| {
        let refs: Vec<ValueRef<'_>> = values.iter().map(Value::as_ref).collect();
        key.sign(context, &refs, inclusive)
    };
    let first = rows.first().map(|r| sign(&r.1, false));
    let last = rows.last().map(|r| sign(&r.1, false));
    // An empty page read from a cursor: the way back (or on) starts at that cursor,
    // including its own row, which the page it came from ended with.
    let reopened = |values: &[Value]| Some(sign(values, true));
    let (next, prev) = match position {
        Position::Start => (if has_more { last } else { None }, None),
        Position::After(values, _) => {
            (if has_more { last } else { None }, if rows.is_empty() { reopened(values) } else { first })
        }
        Position::Before(values, _) => {
            (if rows.is_empty() { reopened(values) } else { last }, if has_more { first } else { None })
        }
    };
    Page { items: rows.into_iter().map(|r| r.0).collect(), next, prev, has_more }
}

/// Writes the filters into a cursor's context, unambiguously: each node in preorder with its
/// kind and number of children (iteratively: filters nest as deeply as memory allows).
fn encode_filters(out: &mut Vec<u8>, filters: &[Expr]) {
    let int = |out: &mut Vec<u8>, n: usize| encode_value(out, ValueRef::Integer(n as i64));
    int(out, filters.len());
    let mut stack: Vec<&Expr> = filters.iter().rev().collect();
    while let Some(e) = stack.pop() {
        match e {
            Expr::Not(inner) => {
                out.push(b'!');
                stack.push(inner);
            }
            Expr::And(items) | Expr::Or(items) => {
                out.push(if matches!(e, Expr::And(_)) { b'&' } else { b'|' });
                int(out, items.len());
                stack.extend(items.iter().rev());
            }
            Expr::Atom(atom) => {
                out.push(b'a');
                match atom {
                    Atom::Compare { field, op, value } => {
                        let op = match op {
                            CmpOp::Eq => 0,
                            CmpOp::Ne => 1,
                            CmpOp::Gt => 2,
                            CmpOp::Gte => 3,
                            CmpOp::Lt => 4,
                            CmpOp::Lte => 5,
                        };
                        out.extend([0, op]);
                        int(out, *field);
                        encode_value(out, value.as_ref());
                    }
                    Atom::Between { field, low, high } => {
                        out.push(1);
                        int(out, *field);
                        encode_value(out, low.as_ref());
                        encode_value(out, high.as_ref());
                    }
                    Atom::In { field, values } => {
                        out.push(2);
                        int(out, *field);
                        int(out, values.len());
                        for v in values {
                            encode_value(out, v.as_ref());
                        }
                    }
                    Atom::StartsWith { field, prefix } => {
                        out.push(3);
                        int(out, *field);
                        encode_value(out, ValueRef::Text(prefix));
                    }
                    Atom::IsNull { field, negated } => {
                        out.extend([4, u8::from(*negated)]);
                        int(out, *field);
                    }
                    Atom::Invalid { field, reason } => {
                        out.push(5);
                        int(out, *field);
                        encode_value(out, ValueRef::Text(reason));
                    }
                }
            }
        }
    }
}

/// A range checked and ready to read pages, for [`Pager`].
struct Prepared<'c, T, B> {
    range: Range<'c, T, B>,
    index: IndexKeys,
    context: Vec<u8>,
}

impl<T: Document, B> PageSource for Prepared<'_, T, B> {
    type Item = T;

    fn read(&self, position: &Position, limit: usize) -> Result<Page<T>> {
        self.range.page(&self.index, &self.context, position, limit)
    }

    fn invalid(&self, reason: &str) -> Error {
        self.range.invalid_query(reason)
    }
}

/// What [`Pager`] reads pages from.
pub(crate) trait PageSource {
    type Item;

    /// The page of at most `limit` items at `position`.
    fn read(&self, position: &Position, limit: usize) -> Result<Page<Self::Item>>;

    /// The error for a range that cannot run.
    fn invalid(&self, reason: &str) -> Error;
}

/// The iterator of the ranges' `iter`: one page read at a time, from the position of the
/// last page's cursor.
pub(crate) struct Pager<S: PageSource> {
    /// The checked start, taken on the first call.
    start: Option<Result<(S, Position)>>,
    state: Option<(S, Position)>,
    page_size: usize,
    buffer: VecDeque<S::Item>,
    done: bool,
}

impl<S: PageSource> Pager<S> {
    pub(crate) fn new(start: Result<(S, Position)>, page_size: usize) -> Self {
        Pager { start: Some(start), state: None, page_size, buffer: VecDeque::new(), done: false }
    }
}

impl<S: PageSource> Iterator for Pager<S> {
    type Item = Result<S::Item>;

    fn next(&mut self) -> Option<Result<S::Item>> {
        loop {
            let backward = self.state.as_ref().is_some_and(|s| s.1.backward());
            let item = if backward { self.buffer.pop_back() } else { self.buffer.pop_front() };
            if let Some(item) = item {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            if let Some(start) = self.start.take() {
                match start {
                    Ok(state) => self.state = Some(state),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let (source, position) = self.state.as_mut()?;
            if self.page_size == 0 {
                self.done = true;
                return Some(Err(source.invalid("a range's page size must be at least 1")));
            }
            match source.read(position, self.page_size) {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(page) => {
                    let cursor = if position.backward() { page.prev } else { page.next };
                    match cursor {
                        Some(cursor) if page.has_more => *position = position.continued(&cursor),
                        _ => self.done = true,
                    }
                    self.buffer.extend(page.items);
                }
            }
        }
    }
}
