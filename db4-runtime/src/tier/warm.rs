//! The warm tier: a bounded in-process cache of decoded documents, in front of the hot tier.
//!
//! One [`WarmTier`] per database handle (shared by the `Db`'s clones), holding the documents
//! of every collection within one budget of bytes ([`TierConfig::warm_bytes`]
//! (crate::tier::TierConfig::warm_bytes)), evicted least-recently-used first (a CLOCK: a hit
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
//!   document is not pending, and no other connection committed meanwhile;
//! - commits by other connections (other handles, other processes) are counted by the backend
//!   ([`Backend::foreign_commits`](crate::Backend::foreign_commits)); when the count moves,
//!   the whole tier is dropped, and when the backend cannot tell, the tier is bypassed.
//!
//! Reads inside a transaction bypass the tier (they must see the transaction's own writes).

use crate::backend::Row;
use crate::db::Db;
use crate::error::Result;
use crate::schema::Document;
use crate::store::codec::{IdKey, corrupt, decode, decode_json, with_id};
use crate::store::meta::CollectionMeta;
use crate::store::slot::MetaSlot;
use crate::txn::Runner;
use crate::value::{Value, ValueRef};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What an entry is charged beyond its stored JSON and its id: the map slot, the entry and
/// the allocations of a decoded copy, roughly.
pub(crate) const ENTRY_OVERHEAD: usize = 96;

/// A cached document's address: its collection and its stored id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    collection: &'static str,
    id: IdKey,
}

impl Key {
    /// The key of document `id` of `collection`; `None` for an id no document can have.
    fn new(collection: &'static str, id: &Value) -> Option<Self> {
        match IdKey::from_ref(id.as_ref()) {
            IdKey::Other => None,
            id => Some(Self { collection, id }),
        }
    }

    fn bytes(&self) -> usize {
        match &self.id {
            IdKey::Text(s) => s.len(),
            _ => 8,
        }
    }
}

/// A cached document: decoded (a `Clone` type), or as stored.
#[derive(Clone)]
enum Cached {
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
enum Lookup {
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

    fn lookup(&self, key: &Key, foreign: u64) -> Lookup {
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
    fn fill(&self, key: Key, value: Cached, json_bytes: usize, epoch: u64, foreign: u64) {
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

    /// A read that could not use the tier (the backend could not vouch for it).
    fn bypassed(&self) {
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
    #[allow(dead_code, reason = "for compaction (the cold tier)")]
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

/// The tier a read may use: the database's, outside a transaction, when the backend can vouch
/// for it (with the count of other connections' commits it vouches at).
fn usable<'a>(runner: Runner<'a>) -> Option<(&'a Db, &'a WarmTier, u64)> {
    let Runner::Db(db) = runner else { return None };
    let tier = db.warm()?;
    match db.backend().foreign_commits() {
        Some(foreign) => Some((db, tier, foreign)),
        None => {
            tier.bypassed();
            None
        }
    }
}

/// A document read from the hot tier, with what the warm tier keeps of it.
struct Fetched<T> {
    doc: T,
    json_bytes: usize,
    cached: Cached,
}

/// Decodes the document at column `at` of `row` (its version at `at + 1` in a versioned
/// collection), keeping a copy for the warm tier.
fn fetched<T: Document>(meta: &CollectionMeta, row: &dyn Row, at: usize, key: &Value) -> Result<Fetched<T>> {
    let ValueRef::Text(json) = row.get(at)? else { return Err(corrupt(meta, "document", key)) };
    let json_bytes = json.len();
    let doc = decode::<T>(meta, row, at).map_err(|e| with_id(e, key))?;
    let cached = match T::__warm_clone() {
        Some(clone) => Cached::Typed(Arc::new(clone(&doc))),
        None => {
            let version = if meta.versioned {
                match row.get(at + 1)? {
                    ValueRef::Integer(v) => Some(v),
                    _ => return Err(corrupt(meta, "version", key)),
                }
            } else {
                None
            };
            Cached::Json { json: Arc::from(json), version }
        }
    };
    Ok(Fetched { doc, json_bytes, cached })
}

/// A cached document as a `T`; `None` if it was cached as another type (then it is read
/// again).
fn restore<T: Document>(slot: &MetaSlot, cached: &Cached, key: &Value) -> Result<Option<T>> {
    match cached {
        Cached::Typed(any) => match (any.downcast_ref::<T>(), T::__warm_clone()) {
            (Some(doc), Some(clone)) => Ok(Some(clone(doc))),
            _ => Ok(None),
        },
        Cached::Json { json, version } => {
            decode_json::<T>(&slot.get(), json, *version).map(Some).map_err(|e| with_id(e, key))
        }
    }
}

/// [`Collection::get`](crate::Collection::get) through the warm tier: a hit reads nothing
/// else; a miss reads the hot tier (`hot` when the tier is not in the way) and fills.
pub(crate) fn get<T: Document>(
    runner: Runner<'_>,
    slot: &MetaSlot,
    id: &Value,
    hot: impl FnOnce() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let Some((db, tier, foreign)) = usable(runner) else { return hot() };
    let Some(key) = Key::new(slot.schema().collection(), id) else { return hot() };
    let epoch = match tier.lookup(&key, foreign) {
        Lookup::Hit(cached) => match restore::<T>(slot, &cached, id)? {
            Some(doc) => return Ok(Some(doc)),
            None => tier.lock().epoch,
        },
        Lookup::Miss(epoch) => epoch,
    };
    let found = runner.read_meta(slot, |conn, meta| {
        let mut out = None;
        conn.query(&meta.sql.select_one, std::slice::from_ref(id), &mut |row| {
            out = Some(fetched::<T>(meta, row, 0, id)?);
            Ok(())
        })?;
        Ok(out)
    })?;
    let Some(found) = found else { return Ok(None) };
    if db.backend().foreign_commits() == Some(foreign) {
        tier.fill(key, found.cached, found.json_bytes, epoch, foreign);
    }
    Ok(Some(found.doc))
}

/// [`Collection::get_many`](crate::Collection::get_many) through the warm tier: the hits
/// from it, the misses in one read of the hot tier (`hot` when the tier is not in the way).
pub(crate) fn get_many<T: Document>(
    runner: Runner<'_>,
    slot: &MetaSlot,
    ids: &[Value],
    hot: impl FnOnce() -> Result<Vec<Option<T>>>,
) -> Result<Vec<Option<T>>> {
    let Some((db, tier, foreign)) = usable(runner) else { return hot() };
    let collection = slot.schema().collection();
    let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(ids.len()).collect();
    // The misses: their position and key, by stored id.
    let mut misses: HashMap<IdKey, Vec<usize>> = HashMap::new();
    let mut keys: Vec<Value> = Vec::new();
    let mut epoch = None;
    for (i, id) in ids.iter().enumerate() {
        let Some(key) = Key::new(collection, id) else { continue };
        let at = match tier.lookup(&key, foreign) {
            Lookup::Hit(cached) => match restore::<T>(slot, &cached, id)? {
                Some(doc) => {
                    out[i] = Some(doc);
                    continue;
                }
                None => tier.lock().epoch,
            },
            Lookup::Miss(at) => at,
        };
        // The oldest epoch seen: fills must find nothing written since the first lookup.
        epoch = Some(epoch.map_or(at, |e: u64| e.min(at)));
        let positions = misses.entry(key.id).or_default();
        if positions.is_empty() {
            keys.push(id.clone());
        }
        positions.push(i);
    }
    let Some(epoch) = epoch else { return Ok(out) };
    let lists = crate::sql::json_lists(keys.iter().map(Value::as_ref), crate::sql::MAX_VALUE_BYTES);
    let found = runner.read_meta(slot, |conn, meta| {
        let mut found: Vec<(Value, Fetched<T>)> = Vec::new();
        for list in &lists {
            conn.query(&meta.sql.select_many, std::slice::from_ref(list), &mut |row| {
                let id = row.get(0)?.to_owned();
                if IdKey::from_ref(id.as_ref()) == IdKey::Other {
                    return Err(corrupt(meta, "id", &id));
                }
                let doc = fetched::<T>(meta, row, 1, &id)?;
                found.push((id, doc));
                Ok(())
            })?;
        }
        Ok(found)
    })?;
    let fill = db.backend().foreign_commits() == Some(foreign);
    let meta = slot.get();
    for (id, fetched) in found {
        let Some(key) = Key::new(collection, &id) else { continue };
        let positions = misses.get(&key.id).map_or(&[][..], Vec::as_slice);
        // A duplicated id in the request gets its own copy at each position.
        if let Some((&last, rest)) = positions.split_last() {
            for &pos in rest {
                out[pos] = restore::<T>(slot, &fetched.cached, &id)?
                    .map_or_else(|| decode_cached::<T>(&meta, &fetched, &id), |d| Ok(Some(d)))?;
            }
            if fill {
                tier.fill(key, fetched.cached, fetched.json_bytes, epoch, foreign);
            }
            out[last] = Some(fetched.doc);
        }
    }
    Ok(out)
}

/// A second copy of a fetched document when its cached form cannot give one (a type that
/// is not `Clone`, cached as JSON: never, the JSON decodes; kept for completeness).
fn decode_cached<T: Document>(meta: &CollectionMeta, fetched: &Fetched<T>, id: &Value) -> Result<Option<T>> {
    let json =
        serde_json::to_string(&fetched.doc).map_err(|e| crate::Error::serialization(meta.collection, None, e))?;
    decode_json::<T>(meta, &json, fetched.doc.version().map(|v| v as i64)).map(Some).map_err(|e| with_id(e, id))
}
