//! Scatter-gather: which shards a query needs, and merging their answers as one database
//! holding every document would answer.
//!
//! # Limit and offset
//!
//! A query with `offset(o).limit(l)` asks each shard for its first `o + l` documents (offset 0,
//! limit `o + l`: [`shard_fetch_limit`]), merges them in order, then skips `o` and keeps `l`.
//! That is exact: a document among the first `o + l` of all documents is among the first
//! `o + l` of its own shard, since every document before it in its shard is before it
//! overall. Asking each shard for its own offset would be wrong (the skipped documents are
//! not spread evenly), so deep offsets cost `shards × (o + l)` rows; use keyset cursors
//! (range queries) for deep pages.

use super::ring::{HashRing, ShardId, partition_key_bytes};
use crate::error::{Error, Result};
use crate::query::eval::{DocFields, Matcher, compare_fields};
use crate::query::filter::{Atom, CmpOp, Expr, Filter, Order, Stripped, strip};
use crate::schema::{Document, DocumentId, Schema};
use crate::value::Value;
use std::cmp::Ordering;

/// How many documents to ask each shard for, for a merged page at `offset` of at most
/// `limit` documents: `offset + limit` (saturating), `None` for no limit.
pub fn shard_fetch_limit(offset: usize, limit: Option<usize>) -> Option<usize> {
    limit.map(|l| l.saturating_add(offset))
}

/// The first round's per-shard fetch for a merged page of `want` (`offset + limit`) items over
/// `shards` shards: about twice an even share plus a margin, never more than `want`.
///
/// Asking every shard for all `want` items is exact but reads `shards × want` rows where
/// about `want` are kept. Fetching in rounds ([`shards_needing_more`]) reads each shard's
/// share and asks again only the shards that may hold more of the page.
///
/// # Example
///
/// ```
/// use db4_runtime::shard::first_round_fetch;
///
/// assert_eq!(first_round_fetch(100, 16), 21); // instead of 100 from each of 16 shards
/// assert_eq!(first_round_fetch(10, 1), 10);
/// ```
pub fn first_round_fetch(want: usize, shards: usize) -> usize {
    want.min(want.saturating_mul(2).div_ceil(shards.max(1)).saturating_add(8))
}

/// After a round of fetching, the shards (indexes into `parts`) that must be asked for more
/// for the merged first `want` items to be exact: each `parts[i]` is shard `i`'s first items
/// in `cmp` order, `asked[i]` how many it was asked for.
///
/// A shard that returned fewer than it was asked for has nothing more. Otherwise, let `t` be
/// the `want`-th item of all fetched so far: a shard whose last item sorts before `t` may hold
/// more items before `t` and is asked again; one whose last item is `t` or after holds only
/// later items (its unfetched items sort after its last one). With fewer than `want` items
/// fetched in all, every shard that filled its fetch is asked again. `cmp` must be a total
/// order (db4's merges break ties by id), so `t` is well defined.
///
/// # Example
///
/// ```
/// use db4_runtime::shard::shards_needing_more;
///
/// // Top 4 of three shards, each asked for 2: shard 0's items are all among the top 4 and it
/// // may have more; shard 1 ran out; shard 2's last item is past the 4th.
/// let parts = vec![vec![1, 2], vec![3], vec![4, 9]];
/// assert_eq!(shards_needing_more(&parts, &[2, 2, 2], 4, |a, b| a.cmp(b)), vec![0]);
/// ```
pub fn shards_needing_more<I>(
    parts: &[Vec<I>],
    asked: &[usize],
    want: usize,
    mut cmp: impl FnMut(&I, &I) -> Ordering,
) -> Vec<usize> {
    let full = |i: usize| asked.get(i).is_some_and(|&n| parts[i].len() >= n && n < want);
    let mut all: Vec<&I> = parts.iter().flatten().collect();
    if want == 0 {
        return Vec::new();
    }
    if all.len() < want {
        return (0..parts.len()).filter(|&i| full(i)).collect();
    }
    let (_, t, _) = all.select_nth_unstable_by(want - 1, |a, b| cmp(a, b));
    let t: &I = t;
    (0..parts.len())
        .filter(|&i| full(i) && parts[i].last().is_some_and(|last| cmp(last, t) == Ordering::Less))
        .collect()
}

/// Merges lists each already sorted by `cmp` into one sorted list, then skips `offset` and
/// keeps at most `limit` items: a k-way merge over a heap of the lists' heads, O(log k) per
/// item taken, stopping after `offset + limit`. Equal items keep their order: a list's own,
/// and across lists the earlier list first, so the result is deterministic.
pub fn kmerge_by<I>(
    parts: Vec<Vec<I>>,
    mut cmp: impl FnMut(&I, &I) -> Ordering,
    offset: usize,
    limit: Option<usize>,
) -> Vec<I> {
    let wanted = shard_fetch_limit(offset, limit).unwrap_or(usize::MAX);
    let mut iters: Vec<std::vec::IntoIter<I>> = parts.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<I>> = iters.iter_mut().map(Iterator::next).collect();
    let mut heap: Vec<usize> = (0..heads.len()).filter(|&p| heads[p].is_some()).collect();
    for at in (0..heap.len() / 2).rev() {
        sift_down(&mut heap, at, &heads, &mut cmp);
    }
    let mut out = Vec::new();
    let mut taken = 0usize;
    while taken < wanted {
        let Some(&part) = heap.first() else { break };
        let Some(item) = heads[part].take() else { break };
        heads[part] = iters[part].next();
        if heads[part].is_none() {
            let last = heap.len() - 1;
            heap.swap(0, last);
            heap.pop();
        }
        sift_down(&mut heap, 0, &heads, &mut cmp);
        if taken >= offset {
            out.push(item);
        }
        taken += 1;
    }
    out
}

/// Whether list `a`'s head comes before list `b`'s: by `cmp`, then the earlier list.
fn before<I>(heads: &[Option<I>], a: usize, b: usize, cmp: &mut impl FnMut(&I, &I) -> Ordering) -> bool {
    match (&heads[a], &heads[b]) {
        (Some(x), Some(y)) => cmp(x, y).then(a.cmp(&b)) == Ordering::Less,
        _ => false,
    }
}

fn sift_down<I>(heap: &mut [usize], mut at: usize, heads: &[Option<I>], cmp: &mut impl FnMut(&I, &I) -> Ordering) {
    loop {
        let (l, r) = (2 * at + 1, 2 * at + 2);
        let mut first = at;
        if l < heap.len() && before(heads, heap[l], heap[first], cmp) {
            first = l;
        }
        if r < heap.len() && before(heads, heap[r], heap[first], cmp) {
            first = r;
        }
        if first == at {
            return;
        }
        heap.swap(at, first);
        at = first;
    }
}

/// Merges per-shard query results, each sorted by `order` (as each shard's `order_by` sorts:
/// the order `order_by` puts documents in on one database), skipping `offset` and keeping at
/// most `limit`. Each shard should have been asked for [`shard_fetch_limit`] documents.
///
/// Documents equal on every key come in shard order (the first list first); give the order a
/// unique last key (the id) for a result that does not depend on how documents are spread.
///
/// # Errors
///
/// [`Error::InvalidQuery`] for an order on a field `T` does not have,
/// [`Error::Serialization`] if a document does not serialize.
pub fn merge_sorted<T: Document>(
    parts: Vec<Vec<T>>,
    order: &[Order<T>],
    offset: usize,
    limit: Option<usize>,
) -> Result<Vec<T>> {
    let order: Vec<(usize, bool)> = order.iter().map(|o| (o.field, o.descending)).collect();
    merge_sorted_by(parts, T::schema(), &order, offset, limit)
}

/// [`merge_sorted`] with the order as a query holds it: (field index, descending) pairs.
pub(crate) fn merge_sorted_by<T: Document>(
    parts: Vec<Vec<T>>,
    schema: &Schema,
    order: &[(usize, bool)],
    offset: usize,
    limit: Option<usize>,
) -> Result<Vec<T>> {
    if let Some(&(field, _)) = order.iter().find(|(f, _)| schema.fields().get(*f).is_none()) {
        return Err(Error::invalid_query(
            schema.collection(),
            format!("field #{field} does not belong to this collection"),
        ));
    }
    if order.is_empty() || parts.len() <= 1 {
        // Nothing to interleave: concatenate, as an unordered query may.
        let all: Vec<T> = parts.into_iter().flatten().collect();
        return Ok(kmerge_by(vec![all], |_, _| Ordering::Equal, offset, limit));
    }
    // Each document's JSON text once, read as SQLite reads it, so comparisons are the SQL ones.
    let texts: Vec<Vec<String>> = parts
        .iter()
        .map(|part| {
            part.iter()
                .map(|doc| {
                    serde_json::to_string(doc)
                        .map_err(|e| Error::serialization(schema.collection(), Some(doc.id().to_display()), e))
                })
                .collect::<Result<Vec<String>>>()
        })
        .collect::<Result<_>>()?;
    let fields: Vec<Vec<DocFields<'_>>> = texts
        .iter()
        .map(|part| {
            part.iter()
                .map(|t| DocFields::parse(t).map_err(|e| Error::serialization(schema.collection(), None, e)))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let positions: Vec<Vec<(usize, usize)>> =
        parts.iter().enumerate().map(|(p, part)| (0..part.len()).map(|i| (p, i)).collect()).collect();
    let picked = kmerge_by(
        positions,
        |&(pa, ia), &(pb, ib)| compare_fields(schema, order, &fields[pa][ia], &fields[pb][ib]),
        offset,
        limit,
    );
    let mut slots: Vec<Vec<Option<T>>> = parts.into_iter().map(|p| p.into_iter().map(Some).collect()).collect();
    Ok(picked.into_iter().filter_map(|(p, i)| slots[p][i].take()).collect())
}

/// Merges per-shard search hits, each list sorted best first: by descending `score` (a NaN
/// score last), ties broken by `tie` (give a stable key, such as the id, so the order does not
/// depend on the shards), skipping `offset` and keeping at most `limit`.
///
/// Scores from different shards are only comparable if they were computed from the same
/// term statistics (global document frequencies); per-shard BM25 is not.
pub fn merge_by_score<H>(
    parts: Vec<Vec<H>>,
    score: impl Fn(&H) -> f64,
    mut tie: impl FnMut(&H, &H) -> Ordering,
    offset: usize,
    limit: Option<usize>,
) -> Vec<H> {
    kmerge_by(parts, |a, b| score_order(score(a), score(b)).then_with(|| tie(a, b)), offset, limit)
}

/// Best first: the larger score, NaN after every number, `-0.0 == 0.0`.
fn score_order(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// The partition-key values a document matching every filter must have, if the filters pin
/// them: a conjunction (through `and`, the list of `filter` calls, and negations by De
/// Morgan) containing `pk.eq(v)` (or `!pk.ne(v)`) or `pk.in_list(..)`. Several pins
/// intersect (an empty list: no document can match). `None` when nothing pins the key (an
/// `or`, a range, another field) or `T` has no partition key: every shard must be asked.
pub fn pinned_partition_keys<T: Document>(filters: &[Filter<T>]) -> Option<Vec<Value>> {
    let exprs: Vec<&Expr> = filters.iter().map(|f| &f.expr).collect();
    pinned_keys(T::schema(), &exprs)
}

/// [`pinned_partition_keys`] over a query's untyped filters.
pub(crate) fn pinned_keys(schema: &Schema, filters: &[&Expr]) -> Option<Vec<Value>> {
    let pk = schema.fields().iter().position(|f| f.is_partition_key())?;
    let mut pinned: Option<Vec<(Vec<u8>, Value)>> = None;
    let mut stack: Vec<(&Expr, bool)> = filters.iter().map(|&e| (e, false)).collect();
    while let Some((e, neg)) = stack.pop() {
        let values: &[Value] = match strip(e, neg) {
            Stripped::List { conj: true, items, neg } => {
                stack.extend(items.iter().map(|i| (i, neg)));
                continue;
            }
            Stripped::List { conj: false, .. } => continue,
            Stripped::Atom(Atom::Compare { field, op, value }, neg)
                if *field == pk && (if neg { op.negated() } else { *op }) == CmpOp::Eq =>
            {
                std::slice::from_ref(value)
            }
            Stripped::Atom(Atom::In { field, values }, false) if *field == pk => values,
            Stripped::Atom(..) => continue,
        };
        let mut set: Vec<(Vec<u8>, Value)> = values.iter().map(|v| (partition_key_bytes(v), v.clone())).collect();
        set.sort_by(|a, b| a.0.cmp(&b.0));
        set.dedup_by(|a, b| a.0 == b.0);
        pinned = Some(match pinned {
            None => set,
            // Equal values have equal bytes; values sharing bytes may be kept when only one
            // matches, which asks a shard too many, never one too few.
            Some(mut kept) => {
                kept.retain(|(bytes, _)| set.binary_search_by(|s| s.0.cmp(bytes)).is_ok());
                kept
            }
        });
    }
    pinned.map(|set| set.into_iter().map(|(_, v)| v).collect())
}

/// Why a query goes to the shards a [`QueryPlan`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanReason {
    /// The filters pin the partition key to this many values (0: nothing can match).
    Pinned {
        /// Distinct pinned values.
        keys: usize,
    },
    /// Nothing pins the partition key: every shard.
    Unpinned,
    /// The document type has no partition key: every shard.
    NoPartitionKey,
}

/// The shards a query touches, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPlan {
    /// In id order, without repeats.
    pub shards: Vec<ShardId>,
    /// Why these.
    pub reason: PlanReason,
}

impl QueryPlan {
    /// Whether the query goes to a single shard (no merge needed).
    pub fn is_single_shard(&self) -> bool {
        self.shards.len() == 1
    }
}

/// The shards of `ring` a query with `filters` must ask.
///
/// # Errors
///
/// [`Error::InvalidQuery`] for a filter the query would refuse to run (a value that cannot be
/// bound, an order comparison with `None`), so that a plan that asks no shard still fails as
/// the query would.
pub fn plan_query<T: Document>(ring: &HashRing, filters: &[Filter<T>]) -> Result<QueryPlan> {
    let exprs: Vec<&Expr> = filters.iter().map(|f| &f.expr).collect();
    plan_exprs(ring, T::schema(), &exprs)
}

/// [`plan_query`] over a query's untyped filters.
pub(crate) fn plan_exprs(ring: &HashRing, schema: &Schema, filters: &[&Expr]) -> Result<QueryPlan> {
    let owned: Vec<Expr> = filters.iter().map(|&e| e.clone()).collect();
    Matcher::new(schema, &owned)?;
    if schema.partition_key_field().is_none() {
        return Ok(QueryPlan { shards: ring.shards().to_vec(), reason: PlanReason::NoPartitionKey });
    }
    Ok(match pinned_keys(schema, filters) {
        None => QueryPlan { shards: ring.shards().to_vec(), reason: PlanReason::Unpinned },
        Some(values) => {
            let mut shards: Vec<ShardId> = values.iter().map(|v| ring.shard_for_value(v)).collect();
            shards.sort_unstable();
            shards.dedup();
            QueryPlan { shards, reason: PlanReason::Pinned { keys: values.len() } }
        }
    })
}

/// The shards a range over `index` reads: those of the filters' plan, narrowed to the shard
/// of the partition key when `prefix` (the index's leading values) fixes it.
pub(crate) fn range_shards(
    ring: &HashRing,
    schema: &Schema,
    index: &[(usize, bool)],
    prefix: &[Value],
    filters: &[Expr],
) -> Result<Vec<ShardId>> {
    let filters: Vec<&Expr> = filters.iter().collect();
    let plan = plan_exprs(ring, schema, &filters)?;
    let Some(pk) = schema.fields().iter().position(|f| f.is_partition_key()) else { return Ok(plan.shards) };
    let pins: Vec<Expr> = index
        .iter()
        .zip(prefix)
        .filter(|((field, _), _)| *field == pk)
        .map(|(_, value)| Expr::Atom(Atom::Compare { field: pk, op: CmpOp::Eq, value: value.clone() }))
        .collect();
    if pins.is_empty() {
        return Ok(plan.shards);
    }
    let all: Vec<&Expr> = filters.into_iter().chain(&pins).collect();
    Ok(match pinned_keys(schema, &all) {
        None => plan.shards,
        Some(values) => {
            let mut shards: Vec<ShardId> = values.iter().map(|v| ring.shard_for_value(v)).collect();
            shards.sort_unstable();
            shards.dedup();
            shards
        }
    })
}

/// `doc`'s partition-key value as the query evaluator reads it from the stored JSON (hash it
/// with [`partition_key_bytes`], or route it with [`HashRing::shard_for_value`]); `None` if
/// `T` has no partition key.
///
/// # Errors
///
/// [`Error::Serialization`] if the document does not serialize.
pub fn partition_key_of<T: Document>(doc: &T) -> Result<Option<Value>> {
    let schema = T::schema();
    let Some(pk) = schema.partition_key_field() else { return Ok(None) };
    let ser = |e| Error::serialization(schema.collection(), Some(doc.id().to_display()), e);
    let json = serde_json::to_string(doc).map_err(ser)?;
    let fields = DocFields::parse(&json).map_err(ser)?;
    Ok(Some(fields.value(pk.key())))
}
