//! The warm tier: a bounded in-process cache of decoded documents, in front of the hot tier.
//!
//! One [`WarmTier`] per database handle (shared by the `Db`'s clones), holding the documents
//! of every collection within one budget of bytes
//! ([`TierConfig::warm_bytes`](crate::tier::TierConfig::warm_bytes)), evicted least-recently-used first (a CLOCK: a hit
//! sets a bit, the eviction hand clears it or evicts). A `Clone` document type is kept decoded
//! and cloned out on a hit; another type is kept as its stored JSON and decoded on a hit.
//! Either way a hit reads no SQLite.
//!
//! Coherence (see `docs/tiers.md`):
//!
//! - every write through the write pipeline marks its document *pending* (its entry is
//!   dropped and nothing may fill it) until the unit of work it belongs to has committed or
//!   rolled back; then the entry is dropped again and the tier's epoch moves on;
//! - a miss fills the entry only if the epoch has not moved since the miss looked, the
//!   document is not pending, and the count of other connections' commits is the one the
//!   miss saw;
//! - commits by other connections (other handles, other processes) are counted by the backend
//!   ([`Backend::foreign_commits`](crate::Backend::foreign_commits)); when the count moves,
//!   the whole tier is dropped, and when the backend cannot tell, the tier is bypassed.
//!
//! Reads inside a transaction bypass the tier (they must see the transaction's own writes).
//!
//! This module is the cache and its coherence marks, below the store in the layering; the
//! read path that consults it is `collection/warm.rs`.

use crate::value::{Value, ValueRef};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What an entry is charged beyond its stored JSON and its id: the map slot, the entry and
/// the allocations of a decoded copy, roughly.
pub(crate) const ENTRY_OVERHEAD: usize = 96;

/// A stored id, as the tier keys documents by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum WarmId {
    Integer(i64),
    Text(String),
}

impl WarmId {
    /// `None` for a value no document id can be.
    pub(crate) fn of(id: &Value) -> Option<Self> {
        match id.as_ref() {
            ValueRef::Integer(i) => Some(Self::Integer(i)),
            ValueRef::Text(s) => Some(Self::Text(s.to_owned())),
            _ => None,
        }
    }
}

/// A cached document's address: its collection and its stored id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    collection: &'static str,
    pub(crate) id: WarmId,
}

impl Key {
    /// The key of document `id` of `collection`; `None` for an id no document can have.
    pub(crate) fn new(collection: &'static str, id: &Value) -> Option<Self> {
        WarmId::of(id).map(|id| Self { collection, id })
    }

    fn bytes(&self) -> usize {
        match &self.id {
            WarmId::Text(s) => s.len(),
            WarmId::Integer(_) => 8,
        }
    }
}

/// A cached document: decoded (a `Clone` type), or as stored (JSON and version column).
#[derive(Clone)]
pub(crate) enum Cached {
    Typed(Arc<dyn Any + Send + Sync>),
    Json { json: Arc<str>, version: Option<i64> },
}

struct Entry {
    key: Key,
    value: Cached,
    bytes: usize,
    referenced: bool,
}

#[derive(Default)]
struct State {
    map: HashMap<Key, usize>,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    hand: usize,
    bytes: usize,
    /// Moves on each finished unit of work that wrote, and each drop of the whole tier.
    epoch: u64,
    /// Documents written by a unit of work that has not finished, with how many writes.
    pending: HashMap<Key, u32>,
    /// The backend's count of other connections' commits the contents are valid at.
    foreign: u64,
}

impl State {
    fn remove(&mut self, key: &Key) {
        if let Some(i) = self.map.remove(key)
            && let Some(entry) = self.slots.get_mut(i).and_then(Option::take)
        {
            self.bytes -= entry.bytes;
            self.free.push(i);
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.free.clear();
        self.hand = 0;
        self.bytes = 0;
        self.epoch += 1;
    }

    /// Evicts, least recently used first, until at most `target` bytes are held; returns
    /// how many entries went.
    fn evict_to(&mut self, target: usize) -> u64 {
        let mut evicted = 0;
        while self.bytes > target && !self.map.is_empty() {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let i = self.hand;
            self.hand += 1;
            let Some(entry) = self.slots[i].as_mut() else { continue };
            if entry.referenced {
                entry.referenced = false;
                continue;
            }
            let key = entry.key.clone();
            self.remove(&key);
            evicted += 1;
        }
        evicted
    }
}

/// The warm tier of one database handle. See the module documentation.
pub(crate) struct WarmTier {
    capacity: usize,
    /// Where an eviction stops: `memory_pressure × capacity`, else the capacity itself.
    low_water: usize,
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// What a lookup found.
pub(crate) enum Lookup {
    Hit(Cached),
    /// A miss, at this epoch (a fill must find the same).
    Miss(u64),
}

/// The warm tier's figures at one moment, for [`Db::tier_stats`](crate::Db::tier_stats).
pub(crate) struct Snapshot {
    pub entries: u64,
    pub bytes: u64,
    pub capacity: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl WarmTier {
    /// A tier of `capacity` bytes, `None` for 0 (off). `pressure` is
    /// [`CompactionPolicy::memory_pressure`](crate::tier::CompactionPolicy::memory_pressure).
    pub(crate) fn new(capacity: usize, pressure: Option<f64>) -> Option<Arc<Self>> {
        if capacity == 0 {
            return None;
        }
        let low_water = match pressure {
            Some(f) if f.is_finite() => (capacity as f64 * f.clamp(0.0, 1.0)) as usize,
            _ => capacity,
        };
        Some(Arc::new(Self {
            capacity,
            low_water,
            state: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lookup(&self, key: &Key, foreign: u64) -> Lookup {
        let mut st = self.lock();
        if st.foreign != foreign {
            st.clear();
            st.foreign = foreign;
        }
        let found = st.map.get(key).copied();
        match found.and_then(|i| st.slots.get_mut(i)).and_then(Option::as_mut) {
            Some(entry) => {
                entry.referenced = true;
                let value = entry.value.clone();
                drop(st);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(value)
            }
            None => {
                let epoch = st.epoch;
                drop(st);
                self.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss(epoch)
            }
        }
    }

    /// Stores a document read after a miss at `epoch`, unless something wrote since.
    pub(crate) fn fill(&self, key: Key, value: Cached, json_bytes: usize, epoch: u64, foreign: u64) {
        let bytes = json_bytes + key.bytes() + ENTRY_OVERHEAD;
        if bytes > self.capacity {
            return;
        }
        let mut st = self.lock();
        if st.epoch != epoch || st.foreign != foreign || st.pending.contains_key(&key) {
            return;
        }
        st.remove(&key);
        if st.bytes + bytes > self.capacity {
            let target = self.low_water.min(self.capacity - bytes);
            let evicted = st.evict_to(target);
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        let entry = Entry { key: key.clone(), value, bytes, referenced: false };
        let i = match st.free.pop() {
            Some(i) => {
                st.slots[i] = Some(entry);
                i
            }
            None => {
                st.slots.push(Some(entry));
                st.slots.len() - 1
            }
        };
        st.map.insert(key, i);
        st.bytes += bytes;
    }

    /// A write of `key` is under way: drop its entry and refuse fills until released.
    fn mark(&self, key: &Key) {
        let mut st = self.lock();
        st.remove(key);
        *st.pending.entry(key.clone()).or_insert(0) += 1;
    }

    /// The unit of work that wrote `keys` has finished (committed or rolled back).
    fn release(&self, keys: &[Key]) {
        let mut st = self.lock();
        for key in keys {
            st.remove(key);
            if let Some(n) = st.pending.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    st.pending.remove(key);
                }
            }
        }
        st.epoch += 1;
    }

    /// The current epoch (a fill at it is refused if anything writes first).
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// A read that could not use the tier (the backend could not vouch for it).
    pub(crate) fn bypassed(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            entries: st.map.len() as u64,
            bytes: st.bytes as u64,
            capacity: self.capacity as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Whether the tier holds more than its memory-pressure fraction of the budget.
    #[allow(
        dead_code,
        reason = "not read: compaction applies memory_pressure to its own limits (hot_max_documents, hot_max_bytes)"
    )]
    pub(crate) fn under_pressure(&self) -> bool {
        self.low_water < self.capacity && self.lock().bytes > self.low_water
    }
}

/// The documents a unit of work wrote, pending in the warm tier until it is dropped: after
/// the unit committed (or rolled back), never before a commit.
pub(crate) struct Touched {
    tier: Arc<WarmTier>,
    keys: Vec<Key>,
}

impl Touched {
    pub(crate) fn new(tier: &Arc<WarmTier>) -> Self {
        Self { tier: Arc::clone(tier), keys: Vec::new() }
    }

    /// Marks document `id` of `collection` written.
    pub(crate) fn touch(&mut self, collection: &'static str, id: &Value) {
        if let Some(key) = Key::new(collection, id) {
            self.tier.mark(&key);
            self.keys.push(key);
        }
    }
}

impl Drop for Touched {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.tier.release(&self.keys);
        }
    }
}
