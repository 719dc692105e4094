//! Operation rates per shard and per partition key over a sliding window, and which shards
//! are hot. The clock is the caller's: every call takes `now_ms` (milliseconds on any
//! monotonic-enough scale), so this runs the same natively, on wasm and in tests.

use super::hasher::KeyHashBuilder;
use super::ring::ShardId;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// How a [`HotTracker`] measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotConfig {
    /// The sliding window's length in milliseconds.
    pub window_ms: u64,
    /// The buckets the window is cut into: the window slides by `window_ms / buckets`.
    pub buckets: u32,
    /// A shard above this many operations per second (over the window) is hot.
    pub hot_shard_threshold: f64,
    /// The keys each shard's sketch monitors per bucket: more keys, smaller error bounds.
    pub top_k: usize,
    /// A hot shard one key of which carries at least this share of its operations (counted
    /// by the key's guaranteed lower bound) cannot be relieved by a split.
    pub hot_key_share: f64,
}

impl Default for HotConfig {
    /// A 60 s window of 12 buckets, hot above 1000 operations per second, 32 keys per bucket,
    /// a hot key at half of its shard's load.
    fn default() -> Self {
        HotConfig { window_ms: 60_000, buckets: 12, hot_shard_threshold: 1000.0, top_k: 32, hot_key_share: 0.5 }
    }
}

/// A partition key's share of a shard's operations in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyLoad {
    /// The partition key's bytes.
    pub key: Vec<u8>,
    /// The estimated operations: never below the true count.
    pub count: u64,
    /// How far `count` may be above the true count (`count - error <= true <= count`).
    pub error: u64,
    /// `count` per second of window.
    pub ops_per_sec: f64,
}

/// One shard's load in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLoad {
    /// The shard.
    pub shard: ShardId,
    /// Operations recorded in the window.
    pub ops: u64,
    /// `ops` per second of window.
    pub ops_per_sec: f64,
    /// Above [`HotConfig::hot_shard_threshold`].
    pub hot: bool,
    /// The busiest keys, largest estimate first (at most [`HotConfig::top_k`]).
    pub top_keys: Vec<KeyLoad>,
    /// For a hot shard, the one key that carries at least [`HotConfig::hot_key_share`] of it:
    /// splitting the shard would move the key, not divide its load.
    pub hot_key: Option<KeyLoad>,
}

impl ShardLoad {
    /// Hot, and a split would relieve it (no single key carries its load).
    pub fn splittable(&self) -> bool {
        self.hot && self.hot_key.is_none()
    }
}

/// A bounded top-k summary of a stream of keys: the space-saving algorithm (Metwally, Agrawal
/// and El Abbadi, 2005). It monitors at most `capacity` keys; a new key takes the place of the
/// one counted least, inheriting its count as its error. A monitored key's true count lies in
/// `[count - error, count]`; a key not monitored occurred at most [`floor`](Self::floor)
/// times, and every key occurring more than `n / capacity` times in `n` is monitored.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    counters: Vec<(Vec<u8>, u64, u64)>,
    index: HashMap<Vec<u8>, usize, KeyHashBuilder>,
    total: u64,
}

impl SpaceSaving {
    /// An empty summary monitoring at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving { capacity: capacity.max(1), counters: Vec::new(), index: HashMap::default(), total: 0 }
    }

    /// Counts one occurrence of `key`. O(1) for a monitored key, O(capacity) when replacing.
    pub fn insert(&mut self, key: &[u8]) {
        self.total += 1;
        if let Some(&at) = self.index.get(key) {
            self.counters[at].1 += 1;
            return;
        }
        if self.counters.len() < self.capacity {
            self.index.insert(key.to_vec(), self.counters.len());
            self.counters.push((key.to_vec(), 1, 0));
            return;
        }
        // Replace the least counted (the first of them, for determinism).
        let Some((at, _)) = self.counters.iter().enumerate().min_by_key(|(i, c)| (c.1, *i)) else { return };
        // The evicted key's buffers are reused: no allocation per replacement.
        let counter = &mut self.counters[at];
        let mut index_key = self.index.remove_entry(&counter.0).map_or_else(Vec::new, |(k, _)| k);
        index_key.clear();
        index_key.extend_from_slice(key);
        counter.0.clear();
        counter.0.extend_from_slice(key);
        counter.2 = counter.1;
        counter.1 += 1;
        self.index.insert(index_key, at);
    }

    /// The most a key that is not monitored can have occurred: the least count when full, 0
    /// before.
    pub fn floor(&self) -> u64 {
        if self.counters.len() < self.capacity { 0 } else { self.counters.iter().map(|c| c.1).min().unwrap_or(0) }
    }

    /// `(count, error)` for `key` if monitored.
    pub fn get(&self, key: &[u8]) -> Option<(u64, u64)> {
        self.index.get(key).map(|&at| (self.counters[at].1, self.counters[at].2))
    }

    /// The monitored keys with `(count, error)`, largest count first (ties: key order).
    pub fn top(&self) -> Vec<(&[u8], u64, u64)> {
        let mut out: Vec<(&[u8], u64, u64)> = self.counters.iter().map(|c| (c.0.as_slice(), c.1, c.2)).collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        out
    }

    /// Occurrences counted in all.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// One bucket of one shard.
#[derive(Debug, Clone)]
struct Bucket {
    /// `now_ms / bucket_ms` of the operations counted here.
    index: u64,
    ops: u64,
    keys: SpaceSaving,
}

/// Operation counts per shard and per partition key over a sliding window.
///
/// # Example
///
/// ```
/// use db4_runtime::shard::{HotConfig, HotTracker, ShardId};
/// # fn main() -> db4_runtime::Result<()> {
/// let config = HotConfig { window_ms: 10_000, buckets: 10, hot_shard_threshold: 50.0, ..HotConfig::default() };
/// let mut hot = HotTracker::new(config)?;
/// for i in 0..1000u64 {
///     hot.record(ShardId::new(3), b"celebrity", i * 5); // 200 ops/s on one key, for 5 s
/// }
/// let load = &hot.snapshot(5_000)[0];
/// assert!(load.hot && !load.splittable()); // one key: a split would not help
/// assert_eq!(load.hot_key.as_ref().map(|k| k.key.as_slice()), Some(&b"celebrity"[..]));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HotTracker {
    config: HotConfig,
    bucket_ms: u64,
    shards: BTreeMap<ShardId, Vec<Bucket>>,
}

impl HotTracker {
    /// A tracker measuring as `config` says.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShardConfig`] for no buckets, a window shorter than its bucket count in
    /// milliseconds, a threshold that is negative or not a number, a key share outside
    /// `(0, 1]`, or more than 65536 buckets or keys.
    pub fn new(config: HotConfig) -> Result<HotTracker> {
        let bad = |what: String| Err(Error::invalid_shard_config(format!("hot-shard detection: {what}")));
        if config.buckets == 0 || config.buckets > 1 << 16 {
            return bad(format!("{} buckets (1 to 65536)", config.buckets));
        }
        if config.window_ms < u64::from(config.buckets) {
            return bad(format!("a window of {} ms cannot hold {} buckets", config.window_ms, config.buckets));
        }
        if !(config.hot_shard_threshold >= 0.0 && config.hot_shard_threshold.is_finite()) {
            return bad(format!("threshold {} ops/s", config.hot_shard_threshold));
        }
        if !(config.hot_key_share > 0.0 && config.hot_key_share <= 1.0) {
            return bad(format!("hot key share {} (above 0, at most 1)", config.hot_key_share));
        }
        if config.top_k == 0 || config.top_k > 1 << 16 {
            return bad(format!("top_k {} (1 to 65536)", config.top_k));
        }
        Ok(HotTracker { config, bucket_ms: config.window_ms / u64::from(config.buckets), shards: BTreeMap::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &HotConfig {
        &self.config
    }

    /// Counts one operation on `key` in `shard` at `now_ms`. An operation older than the
    /// window (behind the newest bucket of its shard by a window or more) is not counted.
    pub fn record(&mut self, shard: ShardId, key: &[u8], now_ms: u64) {
        let index = now_ms / self.bucket_ms;
        let n = self.config.buckets as usize;
        let top_k = self.config.top_k;
        let ring = self.shards.entry(shard).or_default();
        if ring.is_empty() {
            ring.extend((0..n).map(|_| Bucket { index: u64::MAX, ops: 0, keys: SpaceSaving::new(top_k) }));
        }
        let slot = &mut ring[(index % n as u64) as usize];
        if slot.index != index {
            if slot.index != u64::MAX && slot.index > index {
                return; // a late operation whose bucket already gave way to a newer one
            }
            *slot = Bucket { index, ops: 0, keys: SpaceSaving::new(top_k) };
        }
        slot.ops += 1;
        slot.keys.insert(key);
    }

    /// Forgets a shard (removed from the ring).
    pub fn forget(&mut self, shard: ShardId) {
        self.shards.remove(&shard);
    }

    /// Each shard's load in the window ending at `now_ms`, in shard order: the buckets of
    /// the last `buckets` bucket periods (the current one partly elapsed), over the window's
    /// full length (so a rate is never above the true one by more than one bucket's worth).
    pub fn snapshot(&self, now_ms: u64) -> Vec<ShardLoad> {
        let current = now_ms / self.bucket_ms;
        let first = current.saturating_sub(u64::from(self.config.buckets) - 1);
        let secs = self.config.window_ms as f64 / 1000.0;
        let mut out = Vec::with_capacity(self.shards.len());
        for (&shard, ring) in &self.shards {
            let live: Vec<&Bucket> = ring.iter().filter(|b| b.index >= first && b.index <= current).collect();
            let ops: u64 = live.iter().map(|b| b.ops).sum();
            let ops_per_sec = ops as f64 / secs;
            let hot = ops_per_sec > self.config.hot_shard_threshold;
            let mut top_keys = merge_sketches(&live, secs);
            top_keys.truncate(self.config.top_k);
            let hot_key = top_keys
                .first()
                .filter(|k| hot && (k.count - k.error) as f64 >= self.config.hot_key_share * ops as f64)
                .cloned();
            out.push(ShardLoad { shard, ops, ops_per_sec, hot, top_keys, hot_key });
        }
        out
    }
}

/// The window's keys: each monitored key's count summed over the buckets, a bucket that does
/// not monitor it adding its floor to the estimate and to the error.
fn merge_sketches(buckets: &[&Bucket], secs: f64) -> Vec<KeyLoad> {
    let mut keys: BTreeMap<&[u8], ()> = BTreeMap::new();
    for b in buckets {
        for (key, _, _) in b.keys.top() {
            keys.insert(key, ());
        }
    }
    let mut out: Vec<KeyLoad> = keys
        .into_keys()
        .map(|key| {
            let (mut count, mut error) = (0, 0);
            for b in buckets {
                match b.keys.get(key) {
                    Some((c, e)) => {
                        count += c;
                        error += e;
                    }
                    None => {
                        let floor = b.keys.floor();
                        count += floor;
                        error += floor;
                    }
                }
            }
            KeyLoad { key: key.to_vec(), count, error, ops_per_sec: count as f64 / secs }
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then((a.count - a.error).cmp(&(b.count - b.error)).reverse()));
    out
}
