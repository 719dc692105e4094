//! A bounded LRU cache from partition keys to shards, invalidated by the ring's epoch.

use super::hasher::KeyHashBuilder;
use super::ring::{HashRing, ShardId};
use std::collections::HashMap;

/// No entry: the end of the recency list.
const NIL: usize = usize::MAX;

struct Entry {
    key: Vec<u8>,
    shard: ShardId,
    epoch: u64,
    /// Towards the most recently used end.
    newer: usize,
    /// Towards the least recently used end.
    older: usize,
}

/// What a [`RoutingCache`] has done since it was made (or [`clear`](RoutingCache::clear)ed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups not answered: absent, or cached at an older epoch.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Entries dropped because they were cached at another epoch.
    pub stale: u64,
    /// Entries held now.
    pub len: usize,
    /// The most entries held.
    pub capacity: usize,
}

impl CacheStats {
    /// Hits over lookups, 0 before the first lookup.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 { 0.0 } else { self.hits as f64 / lookups as f64 }
    }
}

/// A bounded least-recently-used map from partition-key bytes to the shard the ring gave them,
/// each entry stamped with the ring's epoch: an entry from another epoch is a miss (and is
/// dropped), so a cache never routes by a ring that has changed.
///
/// Natively a ring lookup (xxh3 and a binary search) costs about what a hash-map probe does,
/// so the cache pays where the ring is dear to consult (a Worker asking a coordinator, a
/// ring behind a lock); see `docs/sharding.md`.
///
/// # Example
///
/// ```
/// use db4_runtime::shard::{HashRing, RoutingCache};
/// # fn main() -> db4_runtime::Result<()> {
/// let mut ring = HashRing::new(4, 64)?;
/// let mut cache = RoutingCache::new(1000);
/// let shard = cache.shard_for(&ring, b"acme");
/// assert_eq!(cache.shard_for(&ring, b"acme"), shard);
/// ring.add_shard()?; // a new epoch: the cached answer is not used
/// assert_eq!(cache.shard_for(&ring, b"acme"), ring.shard_for(b"acme"));
/// assert_eq!((cache.stats().hits, cache.stats().misses), (1, 2));
/// # Ok(()) }
/// ```
pub struct RoutingCache {
    capacity: usize,
    index: HashMap<Vec<u8>, usize, KeyHashBuilder>,
    entries: Vec<Entry>,
    free: Vec<usize>,
    /// Most recently used.
    newest: usize,
    /// Least recently used: evicted first.
    oldest: usize,
    stats: CacheStats,
}

impl std::fmt::Debug for RoutingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingCache").field("stats", &self.stats()).finish()
    }
}

impl RoutingCache {
    /// A cache holding at most `capacity` keys (0: caches nothing, every lookup misses).
    pub fn new(capacity: usize) -> RoutingCache {
        RoutingCache {
            capacity,
            index: HashMap::default(),
            entries: Vec::new(),
            free: Vec::new(),
            newest: NIL,
            oldest: NIL,
            stats: CacheStats { capacity, ..CacheStats::default() },
        }
    }

    /// The shard cached for `key` at `epoch`, marking it most recently used; `None` (a miss)
    /// if absent or cached at another epoch, in which case the entry is dropped.
    pub fn get(&mut self, key: &[u8], epoch: u64) -> Option<ShardId> {
        let Some(&at) = self.index.get(key) else {
            self.stats.misses += 1;
            return None;
        };
        if self.entries[at].epoch != epoch {
            self.stats.misses += 1;
            self.stats.stale += 1;
            self.remove_at(at);
            return None;
        }
        self.stats.hits += 1;
        self.unlink(at);
        self.link_newest(at);
        Some(self.entries[at].shard)
    }

    /// Caches `shard` for `key` at `epoch` as the most recently used entry, evicting the least
    /// recently used one if the cache is full.
    pub fn insert(&mut self, key: &[u8], shard: ShardId, epoch: u64) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&at) = self.index.get(key) {
            let e = &mut self.entries[at];
            e.shard = shard;
            e.epoch = epoch;
            self.unlink(at);
            self.link_newest(at);
            return;
        }
        if self.index.len() >= self.capacity && self.oldest != NIL {
            self.remove_at(self.oldest);
            self.stats.evictions += 1;
        }
        let entry = Entry { key: key.to_vec(), shard, epoch, newer: NIL, older: NIL };
        let at = match self.free.pop() {
            Some(at) => {
                self.entries[at] = entry;
                at
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        self.index.insert(key.to_vec(), at);
        self.link_newest(at);
    }

    /// The shard `ring` gives `key`: from the cache when it holds it at the ring's epoch,
    /// else from the ring, then cached.
    pub fn shard_for(&mut self, ring: &HashRing, key: &[u8]) -> ShardId {
        if let Some(shard) = self.get(key, ring.epoch()) {
            return shard;
        }
        let shard = ring.shard_for(key);
        self.insert(key, shard, ring.epoch());
        shard
    }

    /// Drops every entry and resets the counters.
    pub fn clear(&mut self) {
        let capacity = self.capacity;
        *self = RoutingCache::new(capacity);
    }

    /// The number of entries held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The counters and sizes.
    pub fn stats(&self) -> CacheStats {
        CacheStats { len: self.index.len(), ..self.stats }
    }

    /// The cached keys, most recently used first.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut at = self.newest;
        std::iter::from_fn(move || {
            let e = self.entries.get(at)?;
            at = e.older;
            Some(e.key.as_slice())
        })
    }

    fn remove_at(&mut self, at: usize) {
        self.unlink(at);
        let key = std::mem::take(&mut self.entries[at].key);
        self.index.remove(&key);
        self.free.push(at);
    }

    fn unlink(&mut self, at: usize) {
        let (newer, older) = (self.entries[at].newer, self.entries[at].older);
        match self.entries.get_mut(newer) {
            Some(e) => e.older = older,
            None => self.newest = older,
        }
        match self.entries.get_mut(older) {
            Some(e) => e.newer = newer,
            None => self.oldest = newer,
        }
        let e = &mut self.entries[at];
        e.newer = NIL;
        e.older = NIL;
    }

    fn link_newest(&mut self, at: usize) {
        let old_newest = self.newest;
        self.entries[at].older = old_newest;
        self.entries[at].newer = NIL;
        match self.entries.get_mut(old_newest) {
            Some(e) => e.newer = at,
            None => self.oldest = at,
        }
        self.newest = at;
    }
}
