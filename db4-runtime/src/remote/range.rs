//! [`DurableRouter::range`] and [`DurableRouter::range_index`]: keyset-paged ranges over the
//! shard objects, merged as one database holding every document would page them.
//!
//! The algorithm is the in-process router's (see
//! [`ShardRouter::range`](crate::shard::ShardRouter::range)): a page is the first `limit` rows
//! after its position and one more telling whether more follow; each shard the plan names
//! reads its rows after the position with their scan keys ([`ShardOp::RangeRows`]), first its
//! share, then more only from the shards whose last row sorts before the page's end; the rows
//! merge by scan key. The cursor is one global position, the scan key of the page's first or
//! last row, signed with the secret of the router's lowest shard (fetched once per isolate
//! with [`ShardOp::CursorSecret`]), so it holds across a split: whichever shard holds a
//! document, its place in the order is the same.
//!
//! While a split's source still holds copies of the moved documents (between the switch and
//! the cleanup), the source answers with its own documents only.

use super::protocol::{MAX_RANGE_ROWS, RangeRows, ShardOp, WireBound, WirePosition, WireValue, encode_expr};
use super::router::DurableRouter;
use crate::error::{Error, Result};
use crate::query::eval::value_cmp;
use crate::query::filter::Expr;
use crate::query::{Field, Filter};
use crate::range::{
    AnyValue, Cursor, CursorScope, IndexKeys, KeyPrefix, Page, Position, Spec, check_cursor_id, field_index_keys,
    finish_page, named_index_keys, prepare_spec, scan_directions,
};
use crate::schema::{DocumentId, Ordered, Partitioned, QueryValue};
use crate::shard::ShardId;
use crate::shard::{first_round_fetch, kmerge_by, range_shards, shards_needing_more};
use crate::store::secret::CursorKey;
use crate::value::Value;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::RangeBounds;

/// Attempts of a page across stale-epoch redirects.
const ATTEMPTS: usize = 8;

/// The largest page a router range reads: a shard answers at most [`MAX_RANGE_ROWS`] rows,
/// the page and the one telling whether more follow.
pub const MAX_RANGE_PAGE: usize = MAX_RANGE_ROWS - 1;

thread_local! {
    /// The cursor secrets this isolate has fetched, by (cluster, collection).
    static KEYS: RefCell<HashMap<(String, String), CursorKey>> = RefCell::new(HashMap::new());
}

impl<T: Partitioned> DurableRouter<T> {
    /// A range over a field's index on every shard object, merged (as
    /// [`Collection::range`](crate::Collection::range)): smallest value first, ties broken by
    /// id. Pages, cursors and `has_more` are those of one database holding every document;
    /// cursors are the router's own (a single collection's are refused, and the other way
    /// round).
    pub fn range<V: Ordered>(&self, field: Field<T, V>) -> DurableRange<'_, T, V> {
        DurableRange::new(self, field_index_keys(T::schema(), field.index()))
    }

    /// A range over the composite index `name` (or the index of the field called `name`) on
    /// every shard object, as [`Collection::range_index`](crate::Collection::range_index). A
    /// [`prefix`](DurableRange::prefix) that fixes the partition key reads one shard.
    ///
    /// An unknown name fails with [`Error::InvalidQuery`] when the range runs.
    pub fn range_index(&self, name: &str) -> DurableRange<'_, T, AnyValue> {
        DurableRange::new(self, named_index_keys(T::schema(), name))
    }

    /// The key this router signs range cursors with: the lowest shard's secret, fetched once
    /// per isolate (the router never removes a shard, so it is the same shard for its life).
    async fn cursor_key(&self) -> Result<CursorKey> {
        let cache = (self.client().cluster().to_owned(), self.collection().to_owned());
        if let Some(key) = KEYS.with(|k| k.borrow().get(&cache).cloned()) {
            return Ok(key);
        }
        for _ in 0..ATTEMPTS {
            let first = *self.shards().first().ok_or_else(|| Error::migration_state("the ring holds no shard"))?;
            let Some(mut replies) = self.scatter(&[first], |_| ShardOp::CursorSecret).await? else { continue };
            let hex: String = match replies.pop() {
                Some((_, raw)) => self.decode(&raw)?,
                None => return Err(Error::migration_state("the lowest shard did not answer")),
            };
            let key = CursorKey::from_hex(&hex).ok_or_else(|| {
                Error::corrupted(
                    self.collection(),
                    None,
                    format!("shard {} sent a cursor secret of another form", first.get()),
                )
            })?;
            KEYS.with(|k| k.borrow_mut().insert(cache, key.clone()));
            return Ok(key);
        }
        Err(self.gave_up())
    }
}

/// A range over a [`DurableRouter`], from [`DurableRouter::range`] or
/// [`DurableRouter::range_index`]: the builder of [`Range`](crate::Range), with the same
/// meaning, run with the async [`fetch`](Self::fetch). Pages hold at most
/// [`MAX_RANGE_PAGE`] documents.
///
/// `B` is the type of the bounds: the field's type for [`DurableRouter::range`],
/// [`AnyValue`] for a named index.
#[must_use = "a range does nothing until `fetch` is awaited"]
pub struct DurableRange<'r, T: Partitioned, B = AnyValue> {
    router: &'r DurableRouter<T>,
    index: std::result::Result<IndexKeys, String>,
    spec: Spec,
    filters: Vec<Expr>,
    _marker: PhantomData<fn() -> B>,
}

impl<T: Partitioned, B> std::fmt::Debug for DurableRange<'_, T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableRange")
            .field("index", &self.index)
            .field("spec", &self.spec)
            .field("filters", &self.filters)
            .finish_non_exhaustive()
    }
}

impl<'r, T: Partitioned, B> DurableRange<'r, T, B> {
    fn new(router: &'r DurableRouter<T>, index: std::result::Result<IndexKeys, String>) -> Self {
        DurableRange { router, index, spec: Spec::default(), filters: Vec::new(), _marker: PhantomData }
    }

    /// Keeps the keys within `bounds`, as [`Range::between`](crate::Range::between).
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

    /// Fixes the leading keys of the index, as [`Range::prefix`](crate::Range::prefix). A
    /// prefix that fixes the partition key reads only the shard of that key.
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

    /// Keeps only documents matching `filter` too (added to earlier filters); one that pins
    /// the partition key reads only the shards of the pinned keys.
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter.expr);
        self
    }

    /// At most `n` documents per page (default
    /// [`DEFAULT_PAGE_SIZE`](crate::range::DEFAULT_PAGE_SIZE)), 1 to [`MAX_RANGE_PAGE`].
    pub fn limit(mut self, n: usize) -> Self {
        self.spec.limit = n;
        self
    }

    /// Starts after `cursor` (a [`Page::next`] or [`Page::prev`] of this same range over
    /// this router's collection). Replaces [`before`](Self::before).
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

    /// Reads one page from the shard objects (each round at most
    /// [`MAX_IN_FLIGHT`](super::MAX_IN_FLIGHT) requests at once) and merges it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`] for a cursor not issued for this range by a router of this
    /// collection (a single collection's cursor included); [`Error::InvalidQuery`] for a
    /// limit above [`MAX_RANGE_PAGE`] and as [`Range::fetch`](crate::Range::fetch); the
    /// client's error.
    pub async fn fetch(self) -> Result<Page<T>> {
        let schema = T::schema();
        let name = schema.collection();
        if self.spec.limit > MAX_RANGE_PAGE {
            return Err(Error::invalid_query(
                name,
                format!(
                    "a range page across shard objects holds at most {MAX_RANGE_PAGE} documents, not {}",
                    self.spec.limit
                ),
            ));
        }
        let key = self.router.cursor_key().await?;
        let (index, context, position) =
            prepare_spec(schema, self.index.clone(), &self.spec, &self.filters, false, &key, CursorScope::Router)?;
        check_cursor_id(&position, <T::Id as DocumentId>::KIND)?;
        let limit = self.spec.limit;
        for _ in 0..ATTEMPTS {
            let Some((rows, more)) = self.read(&index, &position, limit).await? else { continue };
            return Ok(finish_page(&key, &context, &position, rows, more));
        }
        Err(self.router.gave_up())
    }

    /// The page's rows at `position`, merged, and whether more follow; `None` if a shard
    /// redirected (the page starts again under the new map).
    #[allow(clippy::type_complexity)]
    async fn read(
        &self,
        index: &IndexKeys,
        position: &Position,
        limit: usize,
    ) -> Result<Option<(Vec<(T, Vec<Value>)>, bool)>> {
        let router = self.router;
        let shards = range_shards(&router.ring(), T::schema(), &index.keys, &self.spec.prefix, &self.filters)?;
        let directions = scan_directions(index, self.spec.prefix.len(), self.spec.descending, position);
        let cmp = |a: &(T, Vec<Value>), b: &(T, Vec<Value>)| {
            for (&descending, (x, y)) in directions.iter().zip(a.1.iter().zip(&b.1)) {
                let o = value_cmp(x, y);
                let o = if descending { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        };
        let filters: Vec<_> = self.filters.iter().map(|e| encode_expr(T::schema(), e)).collect();
        let op = |at: &Position, limit: usize| ShardOp::RangeRows {
            index: index.name.clone(),
            prefix: self.spec.prefix.iter().map(WireValue::from).collect(),
            lower: WireBound::from(&self.spec.lower),
            upper: WireBound::from(&self.spec.upper),
            descending: self.spec.descending,
            filters: filters.clone(),
            position: WirePosition::from(at),
            limit,
        };
        // `want` rows merged: the page and the one telling whether more follow. Each shard's
        // share first, then more only from the shards that may hold more of them.
        let want = limit.saturating_add(1);
        let mut fetch = first_round_fetch(want, shards.len());
        let Some(replies) = router.scatter(&shards, |_| op(position, fetch)).await? else { return Ok(None) };
        let mut parts: Vec<Vec<(T, Vec<Value>)>> = Vec::with_capacity(shards.len());
        for (_, raw) in replies {
            parts.push(self.decode_rows(&raw)?);
        }
        let mut asked = vec![fetch; shards.len()];
        loop {
            let again = shards_needing_more(&parts, &asked, want, cmp);
            if again.is_empty() {
                break;
            }
            fetch = fetch.saturating_mul(4).min(want);
            // On from each shard's last row read: the rows before it are not read again.
            let mut ons: Vec<(ShardId, Position, usize)> = Vec::with_capacity(again.len());
            for &i in &again {
                let Some(last) = parts[i].last().map(|r| r.1.clone()) else { continue };
                let on = if position.backward() { Position::Before(last, false) } else { Position::After(last, false) };
                ons.push((shards[i], on, fetch - parts[i].len()));
            }
            let asking: Vec<ShardId> = ons.iter().map(|o| o.0).collect();
            // Called for the shards of `asking` only, each in `ons` at the same place.
            let pick = |s: ShardId| {
                let (_, on, more) = &ons[asking.iter().position(|&a| a == s).unwrap_or(0)];
                op(on, *more)
            };
            let Some(replies) = router.scatter(&asking, pick).await? else { return Ok(None) };
            for (shard, raw) in replies {
                let Some(i) = shards.iter().position(|&s| s == shard) else { continue };
                let rows = self.decode_rows(&raw)?;
                parts[i].extend(rows);
                asked[i] = fetch;
            }
        }
        // Every shard that may hold one of the first `want` rows was read that far: more
        // follow exactly when more than `limit` were read.
        let total: usize = parts.iter().map(Vec::len).sum();
        Ok(Some((kmerge_by(parts, cmp, 0, Some(limit)), total > limit)))
    }

    fn decode_rows(&self, raw: &serde_json::value::RawValue) -> Result<Vec<(T, Vec<Value>)>> {
        let page: RangeRows = self.router.decode(raw)?;
        page.rows
            .into_iter()
            .map(|(doc, key)| {
                let doc: T = serde_json::from_str(doc.get())
                    .map_err(|e| Error::serialization(T::schema().collection(), None, e))?;
                Ok((doc, key.into_iter().map(Value::from).collect()))
            })
            .collect()
    }
}
