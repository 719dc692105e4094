//! Ranges over a shard router: [`ShardRouter::range`] and [`ShardRouter::range_index`], the
//! builder of [`Range`](crate::Range) over every shard the filters (and a prefix on the
//! partition key) may match, merged as one database holding every document would answer.
//!
//! # A page
//!
//! A page is the first `limit` rows after its position, and one more tells whether more
//! follow: `limit + 1` rows merged. Each shard of the plan reads rows after the position,
//! each with its scan key (the index keys after the prefix, then the id), and the rows are
//! merged by that key with the comparator the single database's range uses (`value_cmp` per
//! key, reversed for a descending key). Reading `limit + 1` from every shard is exact (a row
//! among the first `limit + 1` overall is among the first `limit + 1` of its own shard) but
//! reads `shards × (limit + 1)` rows where `limit + 1` are kept, so it goes in rounds, as the
//! router's queries do: each shard's share first ([`first_round_fetch`]), then again, up to
//! `limit + 1`, only from the shards whose last row sorts before the `limit + 1`-th row read
//! ([`shards_needing_more`]). More follow exactly when more than `limit` rows were read.
//!
//! # The cursor: one global position
//!
//! The issue asked for "a vector of per-shard positions". A router cursor holds one key
//! position instead, the scan key of the page's first or last row, and each shard reads from
//! it. The two are equivalent because the order is total over (keys, id): a position in it
//! splits every shard's rows into those before and those after it, and the rows of shard `s`
//! after the page's last row are exactly the rows after `s`'s own last row on that page (or,
//! for a shard with no row on the page, after its last row before it). A vector of positions
//! says nothing the single key does not. It is better because it does not name shards: a
//! split moves documents from one shard to another between two pages, and a per-shard
//! position of the source says nothing about the moved documents on the target (they would be
//! skipped or repeated), while a global key holds for whichever shard holds a document. It
//! also keeps the cursor's size independent of the number of shards, and the format
//! ([`Cursor`]) the single database's.
//!
//! Router cursors are signed with the cursor secret of the router's lowest shard (the
//! router never removes a shard, so it is the same shard for the router's life), over a
//! context that starts with a tag of its own: a cursor of a single collection (that shard's
//! included) is refused by the router and a router cursor by a collection, with
//! [`Error::InvalidCursor`], as are cursors of another index, direction, prefix, bounds or
//! filter.
//!
//! # During a split
//!
//! Between a split's switch and its cleanup, a source still holds copies of the documents
//! that moved: its rows whose partition key routes elsewhere are skipped, and it reads on
//! past them until it has `limit` + 1 rows of its own (or none is left).

use super::{ShardRouter, read};
use crate::error::{Error, Result};
use crate::query::eval::value_cmp;
use crate::query::filter::Expr;
use crate::query::{Field, Filter};
use crate::range::{
    AnyValue, Cursor, CursorScope, IndexKeys, KeyPrefix, KeyedRows, Page, PageSource, Pager, Position, Spec,
    field_index_keys, finish_page, named_index_keys, scan_directions,
};
use crate::schema::{Ordered, Partitioned, QueryValue};
use crate::shard::plan::MigrationStep;
use crate::shard::ring::{HashRing, ShardId};
use crate::shard::{first_round_fetch, kmerge_by, partition_key_of, range_shards, shards_needing_more};
use crate::store::secret::CursorKey;
use crate::trace;
use crate::value::Value;
use std::cmp::Ordering;
use std::marker::PhantomData;
use std::ops::RangeBounds;

/// A range over a [`ShardRouter`], from [`ShardRouter::range`] or
/// [`ShardRouter::range_index`]: the builder of [`Range`](crate::Range), with the same
/// meaning. Its pages equal the pages of the same range over one database holding every
/// document (items, `has_more`, forwards and backwards), in the index's order with the id as
/// the last key; its cursors ([`Page::next`], [`Page::prev`]) are router cursors, refused by
/// a single collection (and a collection's cursors by the router).
///
/// `B` is the type of the bounds: the field's type for [`ShardRouter::range`], [`AnyValue`]
/// for a named index.
#[must_use = "a range does nothing until run with fetch() or iter()"]
pub struct ShardRange<'r, T: Partitioned, B = AnyValue> {
    router: &'r ShardRouter<T>,
    index: std::result::Result<IndexKeys, String>,
    spec: Spec,
    filters: Vec<Expr>,
    _marker: PhantomData<fn() -> B>,
}

impl<T: Partitioned, B> std::fmt::Debug for ShardRange<'_, T, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardRange")
            .field("index", &self.index)
            .field("spec", &self.spec)
            .field("filters", &self.filters)
            .finish()
    }
}

impl<T: Partitioned> ShardRouter<T> {
    /// A range over a field's index on every shard, merged (as
    /// [`Collection::range`](crate::Collection::range)): smallest value first, ties broken
    /// by id.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_runtime as db4;
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// use db4::shard::{ShardRouter, ShardRouterConfig};
    ///
    /// #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// struct Event { #[id] id: i64, #[partition_key] tenant: String, #[range_index] at: i64 }
    ///
    /// # fn main() -> db4::Result<()> {
    /// let router = ShardRouter::<Event>::in_memory(ShardRouterConfig::default())?;
    /// for i in 0..10 { router.insert(&Event { id: i, tenant: format!("t{}", i % 3), at: 100 - i })?; }
    ///
    /// let page = router.range(Event::fields().at).between(92..=97).limit(3).fetch()?;
    /// assert_eq!(page.items.iter().map(|e| e.at).collect::<Vec<_>>(), [92, 93, 94]);
    /// let cursor = db4::Cursor::parse(&page.next.unwrap().to_string())?;
    /// let page2 = router.range(Event::fields().at).between(92..=97).after(&cursor).limit(3).fetch()?;
    /// assert_eq!(page2.items.iter().map(|e| e.at).collect::<Vec<_>>(), [95, 96, 97]);
    /// assert!(!page2.has_more);
    /// # Ok(()) }
    /// ```
    pub fn range<V: Ordered>(&self, field: Field<T, V>) -> ShardRange<'_, T, V> {
        ShardRange::new(self, field_index_keys(T::schema(), field.index()))
    }

    /// A range over the composite index `name` (or the index of the field called `name`) on
    /// every shard, as [`Collection::range_index`](crate::Collection::range_index). A
    /// [`prefix`](ShardRange::prefix) that fixes the partition key reads one shard.
    ///
    /// An unknown name fails with [`Error::InvalidQuery`] when the range runs.
    pub fn range_index(&self, name: &str) -> ShardRange<'_, T, AnyValue> {
        ShardRange::new(self, named_index_keys(T::schema(), name))
    }
}

impl<'r, T: Partitioned, B> ShardRange<'r, T, B> {
    fn new(router: &'r ShardRouter<T>, index: std::result::Result<IndexKeys, String>) -> Self {
        ShardRange { router, index, spec: Spec::default(), filters: Vec::new(), _marker: PhantomData }
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
    /// [`DEFAULT_PAGE_SIZE`](crate::range::DEFAULT_PAGE_SIZE)); at least 1.
    pub fn limit(mut self, n: usize) -> Self {
        self.spec.limit = n;
        self
    }

    /// Starts after `cursor` (a [`Page::next`] or [`Page::prev`] of this same range over
    /// this router). Replaces [`before`](Self::before).
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

    /// Reads one page from the shards and merges it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`] for a cursor not issued for this range by this router (a
    /// single collection's cursor included), and the errors of
    /// [`Range::fetch`](crate::Range::fetch) on each shard.
    pub fn fetch(self) -> Result<Page<T>> {
        let span = trace::op("shard range", Some(T::schema().collection()));
        let limit = self.spec.limit;
        let page = self.prepare().and_then(|(prepared, position)| prepared.read(&position, limit));
        span.rows_of(page, |p| p.items.len() as u64)
    }

    /// Iterates over every document of the range through the router, reading `page_size` at
    /// a time as the iterator advances (each page a read of its own, as
    /// [`Range::iter`](crate::Range::iter)). Stops after the first error.
    pub fn iter(self, page_size: usize) -> impl Iterator<Item = Result<T>> + 'r
    where
        B: 'r,
    {
        Pager::new(self.prepare(), page_size)
    }

    /// Checks the range and its cursor against the router's secret, and resolves the index.
    fn prepare(self) -> Result<(Prepared<'r, T>, Position)> {
        let first = {
            let state = read(&self.router.inner.state);
            *state.ring.shards().first().ok_or_else(|| Error::migration_state("the ring holds no shard"))?
        };
        let c = self.router.collection(first)?;
        let key = c.db().cursor_key().clone();
        let (index, context, position) = c
            .range_of::<AnyValue>(self.index, self.spec.clone(), self.filters.clone())
            .prepare_in(&key, CursorScope::Router)?;
        Ok((Prepared { router: self.router, index, spec: self.spec, filters: self.filters, key, context }, position))
    }
}

/// A router range checked and ready to read pages.
struct Prepared<'r, T: Partitioned> {
    router: &'r ShardRouter<T>,
    index: IndexKeys,
    /// The builder's state; its cursors are not read again (pages start at a [`Position`]).
    spec: Spec,
    filters: Vec<Expr>,
    key: CursorKey,
    context: Vec<u8>,
}

impl<T: Partitioned> PageSource for Prepared<'_, T> {
    type Item = T;

    fn read(&self, position: &Position, limit: usize) -> Result<Page<T>> {
        let state = read(&self.router.inner.state);
        let shards = self.shards(&state.ring)?;
        // After a split's switch and before its cleanup, a source still holds copies of the
        // documents that moved.
        let stale: Vec<ShardId> = match &state.plan {
            Some(p) if p.step() == MigrationStep::Switched => p.sources().iter().map(|s| s.shard).collect(),
            _ => Vec::new(),
        };
        let directions = scan_directions(&self.index, self.spec.prefix.len(), self.spec.descending, position);
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
        // The page and the row that tells whether more follow: `want` rows merged. In rounds:
        // each shard's share first, then more only from the shards that may hold more of
        // them (`shards_needing_more`), up to `want` each.
        let want = limit.saturating_add(1);
        let mut fetch = first_round_fetch(want, shards.len());
        let mut asked = vec![fetch; shards.len()];
        let mut parts = Vec::with_capacity(shards.len());
        for &shard in &shards {
            parts.push(self.shard_rows(shard, stale.contains(&shard), &state.ring, position, fetch)?.0);
        }
        loop {
            let again = shards_needing_more(&parts, &asked, want, cmp);
            if again.is_empty() {
                break;
            }
            fetch = fetch.saturating_mul(4).min(want);
            for i in again {
                // On from the shard's last row read: the rows before it are not read again.
                let Some(last) = parts[i].last().map(|r| r.1.clone()) else { continue };
                let on = if position.backward() { Position::Before(last, false) } else { Position::After(last, false) };
                let more = fetch - parts[i].len();
                let rows = self.shard_rows(shards[i], stale.contains(&shards[i]), &state.ring, &on, more)?.0;
                parts[i].extend(rows);
                asked[i] = fetch;
            }
        }
        drop(state);
        // Every shard that may hold one of the first `want` rows was read that far: more
        // follow exactly when more than `limit` were read.
        let total: usize = parts.iter().map(Vec::len).sum();
        let rows = kmerge_by(parts, cmp, 0, Some(limit));
        Ok(finish_page(&self.key, &self.context, position, rows, total > limit))
    }

    fn invalid(&self, reason: &str) -> Error {
        Error::invalid_query(T::schema().collection(), reason)
    }
}

impl<T: Partitioned> Prepared<'_, T> {
    /// The shards the range reads: those of the filters' plan, narrowed to the shard of the
    /// partition key when the prefix fixes it.
    fn shards(&self, ring: &HashRing) -> Result<Vec<ShardId>> {
        range_shards(ring, T::schema(), &self.index.keys, &self.spec.prefix, &self.filters)
    }

    /// One shard's first `limit` rows at `position` with their scan keys, and whether more
    /// follow; for a `stale` shard, only the rows whose partition key routes to it.
    fn shard_rows(
        &self,
        shard: ShardId,
        stale: bool,
        ring: &HashRing,
        position: &Position,
        limit: usize,
    ) -> Result<KeyedRows<T>> {
        let c = self.router.collection(shard)?;
        let range = c.range_of::<AnyValue>(Ok(self.index.clone()), self.spec.clone(), self.filters.clone());
        if !stale {
            return range.rows(&self.index, position, limit, true);
        }
        range.rows_kept(&self.index, position, limit, |doc| {
            Ok(partition_key_of(doc)?.map(|v| ring.shard_for_value(&v)) == Some(shard))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::router::ShardRouterConfig;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, db4_derive::Document)]
    #[db4(crate = "crate", collection = "visits", index(name = "by_tenant_at", fields(tenant, at)))]
    struct Visit {
        #[id]
        id: i64,
        #[partition_key]
        tenant: String,
        #[range_index]
        at: i64,
    }

    fn shards_of(range: ShardRange<'_, Visit, impl Sized>) -> Result<Vec<ShardId>> {
        let router = range.router;
        let (prepared, _) = range.prepare()?;
        prepared.shards(&read(&router.inner.state).ring)
    }

    #[test]
    fn a_prefix_or_filter_on_the_partition_key_reads_one_shard() -> Result<()> {
        let router = ShardRouter::<Visit>::in_memory(ShardRouterConfig { shard_count: 5, ..Default::default() })?;
        let every = router.shards();
        let acme = router.shard_for(&"acme".to_owned())?;
        let f = Visit::fields();
        assert_eq!(shards_of(router.range(f.at))?, every);
        assert_eq!(shards_of(router.range_index("by_tenant_at"))?, every);
        assert_eq!(shards_of(router.range_index("by_tenant_at").prefix("acme"))?, [acme]);
        assert_eq!(shards_of(router.range_index("by_tenant_at").prefix(("acme", 3)))?, [acme]);
        assert_eq!(shards_of(router.range(f.at).filter(f.tenant.eq("acme".to_owned())))?, [acme]);
        // A prefix and a filter pinning different keys: nothing can match.
        let other = (0..100).map(|i| format!("k{i}")).find(|k| router.shard_for(k).ok() != Some(acme));
        let other = other.unwrap_or_default();
        let both = router.range_index("by_tenant_at").prefix("acme").filter(f.tenant.eq(other));
        assert_eq!(shards_of(both)?, []);
        let page = router.range_index("by_tenant_at").prefix("acme").filter(f.tenant.eq("zed".to_owned())).fetch()?;
        assert!(page.items.is_empty() && !page.has_more && page.next.is_none());
        Ok(())
    }
}
