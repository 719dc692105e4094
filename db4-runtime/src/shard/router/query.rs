//! Scatter-gather queries: each shard of the plan asked on its own thread (at most
//! `MAX_QUERY_THREADS` at once) for its first `offset + limit` documents, the answers merged by
//! the sort keys and the id.

use super::{MAX_QUERY_THREADS, ShardRouter, read};
use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::query::Query;
use crate::query::eval::value_cmp;
use crate::query::{Filter, Order};
use crate::schema::Partitioned;
use crate::shard::merge::{
    first_round_fetch, kmerge_by, merge_sorted_by, partition_key_of, plan_query, shard_fetch_limit, shards_needing_more,
};
use crate::shard::plan::MigrationStep;
use crate::shard::ring::{HashRing, ShardId};
use crate::store::codec::{Stored, with_id};
use crate::store::meta::CollectionMeta;
use crate::value::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A query over a [`ShardRouter`], from [`ShardRouter::query`] (the shards the filters may
/// match) or [`ShardRouter::query_in_shard`] (one shard). The same builder as
/// [`Query`](crate::Query), with the same meaning: the answer equals the one a single
/// database holding every document would give (with `order_by`, documents equal on every key
/// come by id; without it, by id).
#[must_use = "a query does nothing until run with all(), first() or count()"]
pub struct ShardQuery<'r, T: Partitioned> {
    router: &'r ShardRouter<T>,
    shard: Option<ShardId>,
    filters: Vec<Filter<T>>,
    order: Vec<Order<T>>,
    limit: Option<usize>,
    offset: usize,
}

impl<T: Partitioned> std::fmt::Debug for ShardQuery<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardQuery")
            .field("shard", &self.shard)
            .field("filters", &self.filters)
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish()
    }
}

/// Per-shard answers from this size on are fetched on several threads.
const PARALLEL_FETCH: usize = 2_000;

/// One shard's candidate for a page: the shard's index in the query's shard list, the
/// document's id, its sort keys, and (gathered in one phase) its stored document.
type Entry = (usize, Value, Vec<Value>, Option<Stored>);

/// Pages of up to this many documents (`offset + limit`) are gathered in one phase; bigger
/// ones hold only ids and keys until the merge has picked (see [`ShardQuery::all`]).
const ONE_PHASE_MAX: usize = 1_000;

/// What each asked shard runs.
#[derive(Clone, Copy)]
struct Ask<'q, T> {
    filters: &'q [Filter<T>],
    order: &'q [Order<T>],
    /// Per shard: `offset + limit`, or everything.
    fetch: Option<usize>,
}

impl<'r, T: Partitioned> ShardQuery<'r, T> {
    pub(super) fn new(router: &'r ShardRouter<T>, shard: Option<ShardId>) -> Self {
        Self { router, shard, filters: Vec::new(), order: Vec::new(), limit: None, offset: 0 }
    }

    /// Keeps only documents matching `filter` (in addition to earlier filters).
    pub fn filter(mut self, filter: Filter<T>) -> Self {
        self.filters.push(filter);
        self
    }

    /// Sorts by a field; later calls break ties of earlier ones, the id the last ties.
    pub fn order_by(mut self, order: Order<T>) -> Self {
        self.order.push(order);
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

    /// Runs the query on the shards and returns the merged page.
    ///
    /// # Errors
    ///
    /// As [`Query::all`](crate::Query::all) on each shard;
    /// [`Error::UnknownShard`] for [`query_in_shard`](ShardRouter::query_in_shard) of a shard
    /// the ring does not hold.
    pub fn all(self) -> Result<Vec<T>> {
        let state = read(&self.router.inner.state);
        let shards = self.shards(&state.ring)?;
        // After a split's switch and before its cleanup, a source still holds copies of the
        // documents that moved: those are dropped, so the source is asked for everything.
        let stale: Vec<ShardId> = match &state.plan {
            Some(p) if p.step() == MigrationStep::Switched => p.sources().iter().map(|s| s.shard).collect(),
            _ => Vec::new(),
        };
        let single = shards.len() == 1 && !stale.contains(&shards[0]);
        if single {
            let c = self.router.collection(shards[0])?;
            let ask = Ask { filters: &self.filters, order: &self.order, fetch: self.limit };
            return self.shard_query(&c, &ask).offset(self.offset).all();
        }
        let ask = Ask { filters: &self.filters, order: &self.order, fetch: shard_fetch_limit(self.offset, self.limit) };
        let mut order: Vec<(usize, bool)> = self.order.iter().map(|o| (o.field, o.descending)).collect();
        let last_desc = order.last().is_some_and(|o| o.1);
        if !stale.is_empty() {
            let parts = scatter(&shards, true, |&shard| self.documents(shard, &stale, &state.ring, &ask))?;
            drop(state);
            order.push((id_index::<T>(), last_desc));
            return merge_sorted_by(parts, T::schema(), &order, self.offset, self.limit);
        }
        // Threads pay for big answers only: for a page, each shard's statement is a few tens of
        // microseconds, less than starting and joining threads (measured in db4-compare).
        let parallel = ask.fetch.is_none_or(|n| n >= PARALLEL_FETCH);
        if order.is_empty() {
            order.push((id_index::<T>(), false));
        }
        let cmp = |a: &Entry, b: &Entry| {
            for (i, &(_, descending)) in order.iter().enumerate() {
                let c = value_cmp(&a.2[i], &b.2[i]);
                let c = if descending { c.reverse() } else { c };
                if c != std::cmp::Ordering::Equal {
                    return c;
                }
            }
            let c = value_cmp(&a.1, &b.1);
            if last_desc { c.reverse() } else { c }
        };
        // A page of up to `ONE_PHASE_MAX` documents is gathered with one statement per shard
        // (and round): each candidate's id, sort keys and stored text, only the kept ones
        // decoded. Bigger answers take two phases, so the shards' candidates are held as keys
        // only: the ids and sort keys merged, then only the documents kept fetched.
        let one_phase = ask.fetch.is_none_or(|n| n <= ONE_PHASE_MAX);
        let mut metas: Vec<Option<Arc<CollectionMeta>>> = vec![None; shards.len()];
        let fetch_of = |i: usize, fetch: Option<usize>| -> Result<(Option<Arc<CollectionMeta>>, Vec<Entry>)> {
            let c = self.router.collection(shards[i])?;
            let q = self.shard_query(&c, &Ask { fetch, ..ask });
            if one_phase {
                let (meta, rows) = q.keys_and_stored()?;
                Ok((Some(meta), rows.into_iter().map(|(id, keys, doc)| (i, id, keys, Some(doc))).collect()))
            } else {
                Ok((None, q.keys()?.into_iter().map(|(id, keys)| (i, id, keys, None)).collect()))
            }
        };
        if shards.is_empty() {
            // A filter no shard can match (partition keys pinned to nothing).
            return Ok(Vec::new());
        }
        let all: Vec<usize> = (0..shards.len()).collect();
        let mut parts = Vec::with_capacity(shards.len());
        let mut asked = vec![ask.fetch.map_or(usize::MAX, |want| first_round_fetch(want, shards.len())); shards.len()];
        for (i, (meta, entries)) in
            scatter(&all, parallel, |&i| fetch_of(i, ask.fetch.map(|_| asked[i])))?.into_iter().enumerate()
        {
            metas[i] = meta;
            parts.push(entries);
        }
        // In rounds: each shard's share first, then more only from the shards that may hold
        // more of the page (`shards_needing_more`), up to `offset + limit` each.
        if let Some(want) = ask.fetch {
            let mut fetch = asked.first().copied().unwrap_or(want);
            loop {
                let more = shards_needing_more(&parts, &asked, want, cmp);
                if more.is_empty() {
                    break;
                }
                fetch = fetch.saturating_mul(4).min(want);
                let again = scatter(&more, parallel, |&i| fetch_of(i, Some(fetch)))?;
                for (i, (meta, entries)) in more.into_iter().zip(again) {
                    asked[i] = fetch;
                    metas[i] = meta;
                    parts[i] = entries;
                }
            }
        }
        let picked = kmerge_by(parts, cmp, self.offset, self.limit);
        if one_phase {
            drop(state);
            let mut out = Vec::with_capacity(picked.len());
            for (i, id, _, doc) in picked {
                if let (Some(meta), Some(doc)) = (&metas[i], doc) {
                    out.push(doc.decode::<T>(meta).map_err(|e| with_id(e, &id))?);
                }
            }
            return Ok(out);
        }
        let mut wanted: Vec<(ShardId, Vec<Value>)> = Vec::new();
        for (i, id, _, _) in &picked {
            match wanted.iter_mut().find(|(s, _)| *s == shards[*i]) {
                Some((_, ids)) => ids.push(id.clone()),
                None => wanted.push((shards[*i], vec![id.clone()])),
            }
        }
        let fetched = scatter(&wanted, parallel, |(shard, ids)| self.router.collection(*shard)?.get_keys(ids))?;
        drop(state);
        let mut docs: Vec<std::vec::IntoIter<Option<T>>> = fetched.into_iter().map(Vec::into_iter).collect();
        let mut out = Vec::with_capacity(picked.len());
        for (i, _, _, _) in &picked {
            let at = wanted.iter().position(|(s, _)| *s == shards[*i]).unwrap_or(0);
            // A document deleted between the two phases is left out.
            if let Some(Some(doc)) = docs.get_mut(at).and_then(Iterator::next) {
                out.push(doc);
            }
        }
        Ok(out)
    }

    /// Runs the query and returns the first matching document.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn first(self) -> Result<Option<T>> {
        let limit = self.limit.map_or(1, |n| n.min(1));
        Ok(self.limit(limit).all()?.into_iter().next())
    }

    /// Counts the matching documents (within `limit` and `offset`, if set).
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub fn count(self) -> Result<u64> {
        let stale = {
            let state = read(&self.router.inner.state);
            state.plan.as_ref().is_some_and(|p| p.step() == MigrationStep::Switched)
        };
        if stale {
            // Rare (between a split's switch and its cleanup): count what a query returns.
            let (offset, limit) = (self.offset, self.limit);
            let n = self.offset(0).limit_opt(None).all()?.len();
            return Ok(window(n as u64, offset, limit));
        }
        let state = read(&self.router.inner.state);
        let shards = self.shards(&state.ring)?;
        let mut total = 0u64;
        let ask = Ask { filters: &self.filters, order: &[], fetch: None };
        for shard in shards {
            total += self.shard_query(&self.router.collection(shard)?, &ask).count()?;
        }
        Ok(window(total, self.offset, self.limit))
    }

    fn limit_opt(mut self, n: Option<usize>) -> Self {
        self.limit = n;
        self
    }

    fn shards(&self, ring: &HashRing) -> Result<Vec<ShardId>> {
        match self.shard {
            Some(s) if ring.contains(s) => {
                // Validate the filters as a query over every shard would.
                plan_query(ring, &self.filters)?;
                Ok(vec![s])
            }
            Some(s) => Err(Error::UnknownShard { shard: s.get(), epoch: ring.epoch() }),
            None => Ok(plan_query(ring, &self.filters)?.shards),
        }
    }

    /// The query one shard runs.
    fn shard_query<'c>(&self, c: &'c Collection<T>, ask: &Ask<'_, T>) -> Query<'c, T> {
        let mut q = c.query();
        for f in ask.filters {
            q = q.filter(f.clone());
        }
        for o in ask.order {
            q = q.order_by(*o);
        }
        if ask.order.is_empty() {
            q = q.order_by(id_order::<T>(false));
        }
        if let Some(n) = ask.fetch {
            q = q.limit(n);
        }
        q
    }

    /// A shard's matching documents, all of them, without the copies it still holds of
    /// documents that moved away (between a split's switch and its cleanup).
    fn documents(&self, shard: ShardId, stale: &[ShardId], ring: &HashRing, ask: &Ask<'_, T>) -> Result<Vec<T>> {
        let c = self.router.collection(shard)?;
        let all = Ask { fetch: if stale.contains(&shard) { None } else { ask.fetch }, ..*ask };
        let mut docs = self.shard_query(&c, &all).all()?;
        if stale.contains(&shard) {
            let mut kept = Vec::with_capacity(docs.len());
            for doc in docs {
                if partition_key_of(&doc)?.map(|v| ring.shard_for_value(&v)) == Some(shard) {
                    kept.push(doc);
                }
            }
            docs = kept;
        }
        Ok(docs)
    }
}

/// `f` of each item: with `parallel`, on up to [`MAX_QUERY_THREADS`] threads (no more than
/// the machine has cores), else on the calling thread.
fn scatter<I: Sync, R: Send>(items: &[I], parallel: bool, f: impl Fn(&I) -> Result<R> + Sync) -> Result<Vec<R>> {
    if !parallel || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let threads = items.len().min(MAX_QUERY_THREADS).min(cores());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<Result<R>>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let answer = f(item);
                    super::lock(&slots)[i] = Some(answer);
                }
            });
        }
    });
    let slots = slots.into_inner().unwrap_or_else(|e| e.into_inner());
    // Every slot is filled once the scope ends (a panicking closure would have propagated).
    slots.into_iter().map(|s| s.unwrap_or_else(|| Err(Error::migration_state("a scatter slot stayed empty")))).collect()
}

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup files
/// under `/proc` on Linux, which cost more than a page query on all shards did (measured with
/// `perf` on db4-compare's top-100: about three quarters of the router's time).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

/// `total` matches seen through `offset` and `limit`.
fn window(total: u64, offset: usize, limit: Option<usize>) -> u64 {
    let after = total.saturating_sub(offset as u64);
    limit.map_or(after, |n| after.min(n as u64))
}

fn id_index<T: Partitioned>() -> usize {
    T::schema().fields().iter().position(|f| f.is_id()).unwrap_or(0)
}

/// The order by id.
fn id_order<T: Partitioned>(descending: bool) -> Order<T> {
    let field = crate::query::Field::<T, T::Id>::__new(id_index::<T>());
    if descending { field.desc() } else { field.asc() }
}
