//! Scatter-gather queries: each shard of the plan asked on its own thread (at most
//! `MAX_QUERY_THREADS` at once) for its first `offset + limit` documents, the answers merged by
//! the sort keys and the id.

use super::{MAX_QUERY_THREADS, ShardRouter, read};
use crate::error::{Error, Result};
use crate::query::{Filter, Order};
use crate::schema::Partitioned;
use crate::shard::merge::{merge_sorted_by, partition_key_of, plan_query, shard_fetch_limit};
use crate::shard::plan::MigrationStep;
use crate::shard::ring::{HashRing, ShardId};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// What each asked shard runs.
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
            let mut q = c.query();
            for f in &self.filters {
                q = q.filter(f.clone());
            }
            for o in &self.order {
                q = q.order_by(*o);
            }
            if self.order.is_empty() {
                q = q.order_by(id_order::<T>(false));
            }
            if let Some(n) = self.limit {
                q = q.limit(n);
            }
            return q.offset(self.offset).all();
        }
        let ask = Ask { filters: &self.filters, order: &self.order, fetch: shard_fetch_limit(self.offset, self.limit) };
        let parts = self.scatter(&shards, &stale, &state.ring, &ask)?;
        drop(state);
        let mut order: Vec<(usize, bool)> = self.order.iter().map(|o| (o.field, o.descending)).collect();
        let last_desc = order.last().is_some_and(|o| o.1);
        order.push((id_index::<T>(), last_desc));
        merge_sorted_by(parts, T::schema(), &order, self.offset, self.limit)
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
        for shard in shards {
            let c = self.router.collection(shard)?;
            let mut q = c.query();
            for f in &self.filters {
                q = q.filter(f.clone());
            }
            total += q.count()?;
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

    /// Each shard's answer, asked on up to [`MAX_QUERY_THREADS`] threads.
    fn scatter(&self, shards: &[ShardId], stale: &[ShardId], ring: &HashRing, ask: &Ask<'_, T>) -> Result<Vec<Vec<T>>> {
        let one = |shard: ShardId| -> Result<Vec<T>> {
            let c = self.router.collection(shard)?;
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
            let is_stale = stale.contains(&shard);
            if let (Some(n), false) = (ask.fetch, is_stale) {
                q = q.limit(n);
            }
            let mut docs = q.all()?;
            if is_stale {
                let mut kept = Vec::with_capacity(docs.len());
                for doc in docs {
                    let owner = partition_key_of(&doc)?.map(|v| ring.shard_for_value(&v));
                    if owner == Some(shard) {
                        kept.push(doc);
                    }
                }
                docs = kept;
            }
            Ok(docs)
        };
        let threads = shards.len().min(MAX_QUERY_THREADS);
        if threads <= 1 {
            return shards.iter().map(|&s| one(s)).collect();
        }
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<Result<Vec<T>>>>> = Mutex::new((0..shards.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&shard) = shards.get(i) else { break };
                        let answer = one(shard);
                        super::lock(&slots)[i] = Some(answer);
                    }
                });
            }
        });
        let slots = slots.into_inner().unwrap_or_else(|e| e.into_inner());
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(Error::invalid_query(T::schema().collection(), "a shard did not answer"))))
            .collect()
    }
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
