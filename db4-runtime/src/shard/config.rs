//! The configuration of a shard router and the report of a split, shared by the native router
//! and the Worker's.

use super::ring::ShardId;
use std::time::Duration;

/// How a `ShardRouter` (natively) or a `DurableRouter` (in a Worker) is
/// set up. A stored ring (from an earlier open of the same directory, or the coordinator's)
/// wins over `shard_count`, `virtual_nodes` and `consistent_hashing`, so a reopen
/// routes as before.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRouterConfig {
    /// Shards of a new router.
    pub shard_count: u32,
    /// Points per shard on the ring (ignored by modulo placement).
    pub virtual_nodes: u32,
    /// A shard above this many operations per second over `hot_window` is hot.
    pub hot_shard_threshold: f64,
    /// The sliding window the load is measured over.
    pub hot_window: Duration,
    /// Split a hot shard automatically (checked every `AUTO_SPLIT_EVERY` operations), unless
    /// one partition key carries its load.
    pub auto_split: bool,
    /// A consistent-hash ring ([`HashRing::new`](super::HashRing::new)); `false` routes by `hash % shards`
    /// ([`HashRing::modulo`](super::HashRing::modulo)), which cannot split.
    pub consistent_hashing: bool,
}

impl Default for ShardRouterConfig {
    /// 4 shards of 128 virtual nodes, hot above 1000 operations per second over 60 s, no
    /// automatic split, consistent hashing.
    fn default() -> Self {
        ShardRouterConfig {
            shard_count: 4,
            virtual_nodes: 128,
            hot_shard_threshold: 1000.0,
            hot_window: Duration::from_secs(60),
            auto_split: false,
            consistent_hashing: true,
        }
    }
}

/// What a split did, from `ShardRouter::split` natively or `DurableRouter::split` in a
/// Worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SplitReport {
    /// The shard that was split (for a resumed migration: its first source).
    pub source: ShardId,
    /// The shard it gave half its keys to.
    pub new_shard: ShardId,
    /// Documents copied to the new shard (again, after a resume).
    pub copied: u64,
    /// Change-log events of the source applied to the new shard after the copy began.
    pub caught_up: u64,
    /// Moved documents deleted from the source.
    pub deleted: u64,
    /// The ring's epoch after the switch.
    pub epoch: u64,
}
