//! Sharding's pure core: the hash ring, the routing cache, hot-shard detection, migration
//! plans and the merging of per-shard results.
//!
//! Nothing here does I/O, reads a clock, starts a thread or touches SQLite: time comes in as
//! `now_ms` arguments, and the state is plain data (the ring and plans serialize with serde),
//! so the same code runs in a native router and in a Worker routing to Durable Objects, and
//! builds for `wasm32-unknown-unknown`.
//!
//! - [`HashRing`]: xxh3-hashed partition keys on a ring of virtual nodes ([`Placement`]:
//!   balanced, hashed or modulo), [`add_shard`](HashRing::add_shard),
//!   [`split_shard`](HashRing::split_shard) and [`remove_shard`](HashRing::remove_shard)
//!   moving only the keys that must move, and an epoch bumped by each change.
//! - [`RoutingCache`]: a bounded LRU from key to shard, stale when the epoch changes.
//! - [`HotTracker`]: operations per shard and per key over a sliding window (a space-saving
//!   sketch for the keys), the hot-shard threshold, and the hot key a split cannot divide.
//! - [`MigrationPlan`]: the hash ranges that move between two rings and the resumable steps
//!   of a split ([`MigrationStep`]).
//! - Merging: [`plan_query`] (which shards a filter needs), [`merge_sorted`] (by sort keys,
//!   with the evaluator's SQLite order and a correct global limit and offset),
//!   [`merge_by_score`] (search hits), [`kmerge_by`].
//!
//! What a router adds on top: opening one database (or Durable Object) per shard, routing
//! each write by [`partition_key_of`], asking the shards of a [`QueryPlan`] for
//! [`shard_fetch_limit`] documents each, recording operations into a [`HotTracker`] with its
//! clock, and driving a [`MigrationPlan`]'s steps (copy by hash range, catch up from the
//! change log, switch, clean), persisting the plan before each step.
//!
//! See `docs/sharding.md` for the balance figures and the design.

mod cache;
mod config;
mod hasher;
mod hot;
mod keyed;
mod merge;
mod plan;
mod ring;
#[cfg(all(feature = "sqlite", feature = "fs"))]
mod router;

pub use cache::{CacheStats, RoutingCache};
pub use config::{ShardRouterConfig, SplitReport};
pub use hot::{HotConfig, HotTracker, KeyLoad, ShardLoad, SpaceSaving};
#[allow(unused_imports, reason = "stored_under_key is for the native router only")]
pub(crate) use keyed::{IdValue, get_under, require_under, stored_under_key};
pub use merge::{
    PlanReason, QueryPlan, first_round_fetch, kmerge_by, merge_by_score, merge_sorted, partition_key_of,
    pinned_partition_keys, plan_query, shard_fetch_limit, shards_needing_more,
};
#[allow(unused_imports, reason = "for the router, which holds a query's untyped parts")]
pub(crate) use merge::{merge_sorted_by, pinned_keys, plan_exprs, range_shards};
pub use plan::{MigrationPlan, MigrationStep, MovedRange, SourceProgress};
pub use ring::{
    HashRing, MAX_RING_POINTS, MAX_SHARDS, Placement, ShardId, VirtualNode, hash_to_i64, key_hash, partition_key_bytes,
};

#[cfg(all(feature = "sqlite", feature = "fs"))]
pub use router::{
    AUTO_SPLIT_EVERY, DirTransport, MemoryTransport, ShardInfo, ShardQuery, ShardRange, ShardRouter, ShardSearch,
    ShardTransaction, ShardTransport,
};

#[cfg(test)]
mod tests;
