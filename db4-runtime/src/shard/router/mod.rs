//! The native shard router: one database per shard behind a [`ShardTransport`], writes routed
//! by the partition key through the pure core's [`HashRing`], queries scattered over the
//! shards a [`QueryPlan`] names and merged, and splits driven through a persisted
//! [`MigrationPlan`] (`split.rs`). See `docs/sharding.md`.

mod query;
mod range;
mod search;
mod split;
mod transport;

pub use query::ShardQuery;
pub use range::ShardRange;
pub use search::ShardSearch;

pub use transport::{DirTransport, MemoryTransport, ShardTransport};

use super::QueryPlan;
use super::config::ShardRouterConfig;
use super::hot::{HotConfig, HotTracker, KeyLoad};
use super::merge::plan_query;
use super::plan::MigrationPlan;
use super::ring::{HashRing, ShardId, partition_key_bytes};
use super::{IdValue, get_under, require_under, stored_under_key};
use crate::collection::{CasResult, Collection, Numeric, TxCollection};
use crate::error::{Error, Result};
use crate::query::Field;
use crate::query::Filter;
use crate::retry::RetryPolicy;
use crate::schema::{Document, IdArg, Partitioned};
use crate::value::{Value, to_value};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Instant;

/// Operations between two checks for a hot shard when [`ShardRouterConfig::auto_split`] is on.
pub const AUTO_SPLIT_EVERY: u64 = 4096;

/// Scatter-gather threads at most per query.
const MAX_QUERY_THREADS: usize = 8;

/// One shard's figures, from [`ShardRouter::stats`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The shard.
    pub id: ShardId,
    /// Documents it holds (including moved copies not yet cleaned up during a split).
    pub documents: u64,
    /// Bytes of its documents' JSON.
    pub bytes: u64,
    /// Operations per second routed to it over the window.
    pub ops_per_sec: f64,
    /// Above [`ShardRouterConfig::hot_shard_threshold`].
    pub hot: bool,
    /// Its busiest partition keys over the window, busiest first.
    pub top_keys: Vec<KeyLoad>,
    /// For a hot shard: the single partition key carrying most of its load, which a split
    /// cannot divide (splitting would only move it).
    pub hot_key: Option<KeyLoad>,
    /// Hot, and a split would relieve it.
    pub splittable: bool,
}

/// The routing state: the ring documents are routed by and a migration in progress. Stored as
/// the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    collection: String,
    ring: HashRing,
    plan: Option<MigrationPlan>,
}

const MANIFEST_FORMAT: u32 = 1;

struct Inner<T> {
    transport: Box<dyn ShardTransport>,
    config: ShardRouterConfig,
    /// Writes hold it shared for their whole write; the switch of a split holds it exclusively,
    /// so no write is in flight across the switch.
    state: RwLock<Manifest>,
    shards: Mutex<HashMap<ShardId, Collection<T>>>,
    hot: Mutex<HotTracker>,
    clock: Instant,
    ops: std::sync::atomic::AtomicU64,
    /// One migration at a time.
    migration: Mutex<()>,
}

/// Documents of type `T` spread over shards by their `#[partition_key]`: natively one SQLite
/// database per shard, opened lazily. Cheap to clone and safe to share between threads.
///
/// Writes and reads of one document go to the shard of its partition key;
/// [`query`](Self::query) asks every shard the filters may match (one when they pin the partition
/// key) and merges their answers; [`split`](Self::split) moves half of a shard's keys to a new
/// shard without losing or duplicating a document, while writes go on. See
/// `docs/sharding.md`.
pub struct ShardRouter<T: Partitioned> {
    inner: Arc<Inner<T>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T: Partitioned> Clone for ShardRouter<T> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner), _marker: PhantomData }
    }
}

impl<T: Partitioned> std::fmt::Debug for ShardRouter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = read(&self.inner.state);
        f.debug_struct("ShardRouter")
            .field("collection", &state.collection)
            .field("shards", &state.ring.shards().len())
            .field("epoch", &state.ring.epoch())
            .finish()
    }
}

fn read<S>(lock: &RwLock<S>) -> RwLockReadGuard<'_, S> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn lock<S>(lock: &Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Partitioned> ShardRouter<T> {
    /// The router over the directory `dir`: each shard a SQLite file in it, the ring and any
    /// migration in progress in `shards.json` beside them. A directory without a manifest
    /// gets a new ring from `config`; otherwise the stored ring is used, and a split that a
    /// crash interrupted is finished before this returns.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShardConfig`] for a bad `config` (no shards, no virtual nodes, a
    /// window of zero) or a manifest of another collection; [`Error::Corrupted`] for a
    /// manifest that does not read back; a backend error.
    pub fn open(dir: impl AsRef<std::path::Path>, config: ShardRouterConfig) -> Result<Self> {
        Self::with_transport(DirTransport::new(dir)?, config)
    }

    /// A router whose shards are in-memory databases (for tests): gone when dropped.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn in_memory(config: ShardRouterConfig) -> Result<Self> {
        Self::with_transport(MemoryTransport::default(), config)
    }

    /// A router over any [`ShardTransport`].
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub fn with_transport(transport: impl ShardTransport, config: ShardRouterConfig) -> Result<Self> {
        let window_ms = u64::try_from(config.hot_window.as_millis()).unwrap_or(u64::MAX);
        if window_ms < 12 {
            return Err(Error::invalid_shard_config("the hot window must be at least 12 ms"));
        }
        let hot = HotTracker::new(HotConfig {
            window_ms,
            hot_shard_threshold: config.hot_shard_threshold,
            ..HotConfig::default()
        })?;
        let collection = T::schema().collection().to_owned();
        let manifest = match transport.load_manifest()? {
            Some(text) => {
                let m: Manifest = serde_json::from_str(&text)
                    .map_err(|e| Error::corrupted(&collection, None, format!("the shard manifest: {e}")))?;
                if m.format != MANIFEST_FORMAT || m.collection != collection {
                    return Err(Error::invalid_shard_config(format!(
                        "the shard manifest is for collection {:?} (format {}), not {collection:?}",
                        m.collection, m.format
                    )));
                }
                m
            }
            None => {
                let ring = if config.consistent_hashing {
                    HashRing::new(config.shard_count, config.virtual_nodes)?
                } else {
                    HashRing::modulo(config.shard_count)?
                };
                let m = Manifest { format: MANIFEST_FORMAT, collection, ring, plan: None };
                transport.store_manifest(&to_json(&m)?)?;
                m
            }
        };
        let router = ShardRouter {
            inner: Arc::new(Inner {
                transport: Box::new(transport),
                config,
                state: RwLock::new(manifest),
                shards: Mutex::new(HashMap::new()),
                hot: Mutex::new(hot),
                clock: Instant::now(),
                ops: std::sync::atomic::AtomicU64::new(0),
                migration: Mutex::new(()),
            }),
            _marker: PhantomData,
        };
        router.resume()?;
        Ok(router)
    }

    /// The shard `key` is routed to now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] if the key does not serialize to a value.
    pub fn shard_for(&self, key: &T::PartitionKey) -> Result<ShardId> {
        let value = key_value::<T>(key)?;
        Ok(read(&self.inner.state).ring.shard_for_value(&value))
    }

    /// The shards, in id order.
    pub fn shards(&self) -> Vec<ShardId> {
        read(&self.inner.state).ring.shards().to_vec()
    }

    /// A copy of the ring documents are routed by now.
    pub fn ring(&self) -> HashRing {
        read(&self.inner.state).ring.clone()
    }

    /// The migration in progress, if a split is under way (a copy of its persisted plan).
    pub fn migration(&self) -> Option<MigrationPlan> {
        read(&self.inner.state).plan.clone()
    }

    /// The collection of one shard, opened on first use.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownShard`] for a shard the ring does not hold (nor a split in progress
    /// creates); a backend error.
    pub fn shard(&self, shard: ShardId) -> Result<Collection<T>> {
        {
            let state = read(&self.inner.state);
            let known = state.ring.contains(shard) || state.plan.as_ref().is_some_and(|p| p.after().contains(shard));
            if !known {
                return Err(Error::UnknownShard { shard: shard.get(), epoch: state.ring.epoch() });
            }
        }
        self.collection(shard)
    }

    fn collection(&self, shard: ShardId) -> Result<Collection<T>> {
        let mut shards = lock(&self.inner.shards);
        if let Some(c) = shards.get(&shard) {
            return Ok(c.clone());
        }
        let c = self.inner.transport.open_shard(shard)?.collection::<T>()?;
        shards.insert(shard, c.clone());
        Ok(c)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` on the shard of `key` with the routing held shared (a split's switch waits
    /// for it), records the operation, and checks for a hot shard afterwards.
    fn routed<R>(&self, key: &Value, f: impl FnOnce(&Collection<T>) -> Result<R>) -> Result<R> {
        let result = {
            let state = read(&self.inner.state);
            let shard = state.ring.shard_for_value(key);
            let collection = self.collection(shard)?;
            self.record(shard, key);
            f(&collection)
        };
        self.after_op();
        result
    }

    fn record(&self, shard: ShardId, key: &Value) {
        let now = self.now_ms();
        lock(&self.inner.hot).record(shard, &partition_key_bytes(key), now);
    }

    fn after_op(&self) {
        let n = self.inner.ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if self.inner.config.auto_split && n.is_multiple_of(AUTO_SPLIT_EVERY) {
            // Best effort: a failed automatic split leaves the routing as it was, and the
            // write that triggered the check has already succeeded.
            let _ = self.split_hot();
        }
    }

    fn routed_doc<R>(&self, doc: &T, f: impl FnOnce(&Collection<T>) -> Result<R>) -> Result<R> {
        self.routed(&key_value::<T>(doc.partition_key())?, f)
    }

    /// Stores a new document on its shard.
    ///
    /// # Errors
    ///
    /// As [`Collection::insert`]; [`Error::InvalidValue`] for a partition key that does not
    /// serialize to a value.
    pub fn insert(&self, doc: &T) -> Result<()> {
        self.routed_doc(doc, |c| c.insert(doc))
    }

    /// Reads the document with this partition key and id.
    ///
    /// # Errors
    ///
    /// As [`Collection::get`].
    pub fn get(&self, key: &T::PartitionKey, id: impl IdArg<T::Id>) -> Result<Option<T>> {
        let (key, id) = (key_value::<T>(key)?, id_value::<T>(&id)?);
        self.routed(&key, |c| get_under(c, &id, &key))
    }

    /// Reads many documents of one partition key, aligned with `ids`.
    ///
    /// # Errors
    ///
    /// As [`Collection::get_many`].
    pub fn get_many<I: IdArg<T::Id>>(
        &self,
        key: &T::PartitionKey,
        ids: impl IntoIterator<Item = I>,
    ) -> Result<Vec<Option<T>>> {
        let key = key_value::<T>(key)?;
        self.routed(&key, |c| {
            let docs = c.get_many(ids)?;
            docs.into_iter()
                .map(|doc| match doc {
                    Some(doc) if stored_under_key(&doc, &key)? => Ok(Some(doc)),
                    _ => Ok(None),
                })
                .collect()
        })
    }

    /// Replaces a stored document (on the shard of its partition key).
    ///
    /// # Errors
    ///
    /// As [`Collection::update`]: [`Error::NotFound`] also when the document was stored under
    /// another partition key (a partition key cannot change by update: delete and insert).
    pub fn update(&self, doc: &T) -> Result<Option<u64>> {
        self.routed_doc(doc, |c| c.update(doc))
    }

    /// Inserts or replaces a document on its shard.
    ///
    /// # Errors
    ///
    /// As [`Collection::upsert`].
    pub fn upsert(&self, doc: &T) -> Result<()> {
        self.routed_doc(doc, |c| c.upsert(doc))
    }

    /// Deletes the document with this partition key and id; returns whether there was one.
    ///
    /// # Errors
    ///
    /// As [`Collection::delete`].
    pub fn delete(&self, key: &T::PartitionKey, id: impl IdArg<T::Id>) -> Result<bool> {
        let (key, id) = (key_value::<T>(key)?, id_value::<T>(&id)?);
        self.routed(&key, |c| {
            c.db().transaction(|tx| {
                let c = tx.collection::<T>()?;
                match get_under(&c, &id, &key)? {
                    Some(_) => c.delete(IdValue(id.clone())),
                    None => Ok(false),
                }
            })
        })
    }

    /// Atomically adds `delta` to a numeric field; returns the new value.
    ///
    /// # Errors
    ///
    /// As [`Collection::increment`].
    pub fn increment<N: Numeric>(
        &self,
        key: &T::PartitionKey,
        id: impl IdArg<T::Id>,
        field: Field<T, N>,
        delta: N,
    ) -> Result<N> {
        let (key, id) = (key_value::<T>(key)?, id_value::<T>(&id)?);
        self.routed(&key, |c| {
            c.db().transaction(|tx| {
                let c = tx.collection::<T>()?;
                require_under(&c, &id, &key)?;
                c.increment(IdValue(id.clone()), field, delta)
            })
        })
    }

    /// Atomically sets `field` to `new` if it equals `expected`.
    ///
    /// # Errors
    ///
    /// As [`Collection::compare_and_swap`].
    pub fn compare_and_swap<V>(
        &self,
        key: &T::PartitionKey,
        id: impl IdArg<T::Id>,
        field: Field<T, V>,
        expected: impl Into<V>,
        new: impl Into<V>,
    ) -> Result<CasResult<V>>
    where
        V: Serialize + serde::de::DeserializeOwned,
    {
        let (key, id) = (key_value::<T>(key)?, id_value::<T>(&id)?);
        let (expected, new) = (expected.into(), new.into());
        self.routed(&key, |c| {
            c.db().transaction(|tx| {
                let c = tx.collection::<T>()?;
                require_under(&c, &id, &key)?;
                c.compare_and_swap(IdValue(id.clone()), field, expected, new)
            })
        })
    }

    /// Reads, changes with `f` and writes back a document, retrying on conflict.
    ///
    /// # Errors
    ///
    /// As [`Collection::update_with`]; [`Error::InvalidValue`] also if `f` changes the
    /// partition key (the document would then be on the wrong shard), and nothing is
    /// written then.
    pub fn update_with(
        &self,
        key: &T::PartitionKey,
        id: impl IdArg<T::Id>,
        policy: RetryPolicy,
        mut f: impl FnMut(&mut T),
    ) -> Result<T> {
        let value = key_value::<T>(key)?;
        let bytes = partition_key_bytes(&value);
        let mut moved = false;
        let written = self.routed(&value, |c| {
            c.update_with_declinable(id, policy, |doc| {
                f(doc);
                // A changed partition key would leave the document on the wrong shard: the
                // write is declined, and nothing changes.
                moved = key_value::<T>(doc.partition_key()).map(|v| partition_key_bytes(&v)).ok().as_deref()
                    != Some(&bytes[..]);
                !moved
            })
        })?;
        match written {
            Some(doc) => Ok(doc),
            None if moved => Err(Error::invalid_value(
                T::schema().collection(),
                pk_name::<T>(),
                "update_with must not change the partition key (nothing was written); delete the document \
                 and insert it under its new key",
            )),
            None => Err(Error::invalid_query(T::schema().collection(), "update_with declined to write")),
        }
    }

    /// Runs `f` in a transaction on the shard of `key`. Every document the transaction
    /// reads or writes must be of a partition key on that shard.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] if `f` touches a key of another shard (nothing is written
    /// then), and the errors of [`Db::transaction`](crate::Db::transaction).
    pub fn transaction<R>(
        &self,
        key: &T::PartitionKey,
        f: impl FnOnce(&ShardTransaction<'_, T>) -> Result<R>,
    ) -> Result<R> {
        let value = key_value::<T>(key)?;
        let result = {
            let state = read(&self.inner.state);
            let shard = state.ring.shard_for_value(&value);
            let collection = self.collection(shard)?;
            self.record(shard, &value);
            collection.db().transaction(|tx| {
                let tx = ShardTransaction { collection: tx.collection::<T>()?, shard, ring: &state.ring };
                f(&tx)
            })
        };
        self.after_op();
        result
    }

    /// A query over every shard the filters may match, merged.
    pub fn query(&self) -> ShardQuery<'_, T> {
        ShardQuery::new(self, None)
    }

    /// A query over one shard only (its documents, of whatever partition key).
    pub fn query_in_shard(&self, shard: ShardId) -> ShardQuery<'_, T> {
        ShardQuery::new(self, Some(shard))
    }

    /// The shards a query with these filters asks, and why.
    ///
    /// # Errors
    ///
    /// As [`plan_query`].
    pub fn plan(&self, filters: &[Filter<T>]) -> Result<QueryPlan> {
        plan_query(&read(&self.inner.state).ring, filters)
    }

    /// Each shard's documents, size and load over the window.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn stats(&self) -> Result<Vec<ShardInfo>> {
        let shards = self.shards();
        let loads = lock(&self.inner.hot).snapshot(self.now_ms());
        let mut out = Vec::with_capacity(shards.len());
        for id in shards {
            let c = self.collection(id)?;
            let load = loads.iter().find(|l| l.shard == id);
            out.push(ShardInfo {
                id,
                documents: c.count()?,
                bytes: c.stored_bytes()?,
                ops_per_sec: load.map_or(0.0, |l| l.ops_per_sec),
                hot: load.is_some_and(|l| l.hot),
                top_keys: load.map(|l| l.top_keys.clone()).unwrap_or_default(),
                hot_key: load.and_then(|l| l.hot_key.clone()),
                splittable: load.is_some_and(|l| l.splittable()),
            });
        }
        Ok(out)
    }

    fn store(&self, manifest: &Manifest) -> Result<()> {
        self.inner.transport.store_manifest(&to_json(manifest)?)
    }
}

/// A transaction on one shard, from [`ShardRouter::transaction`]: the operations of a
/// [`TxCollection`], each refusing a partition key of another shard.
pub struct ShardTransaction<'tx, T> {
    collection: TxCollection<'tx, T>,
    shard: ShardId,
    ring: &'tx HashRing,
}

impl<T> std::fmt::Debug for ShardTransaction<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTransaction").field("shard", &self.shard).finish()
    }
}

impl<'tx, T: Partitioned> ShardTransaction<'tx, T> {
    /// The shard the transaction runs on.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    fn check(&self, key: &T::PartitionKey) -> Result<()> {
        let value = key_value::<T>(key)?;
        let other = self.ring.shard_for_value(&value);
        if other == self.shard {
            return Ok(());
        }
        Err(Error::CrossShard {
            collection: T::schema().collection().to_owned(),
            shard: self.shard.get(),
            other: other.get(),
            key: crate::store::codec::id_text(&value),
        })
    }

    /// As [`Collection::insert`], inside the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] for a document of another shard; as [`Collection::insert`].
    pub fn insert(&self, doc: &T) -> Result<()> {
        self.check(doc.partition_key())?;
        self.collection.insert(doc)
    }

    /// As [`Collection::get`], inside the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] for a key of another shard; as [`Collection::get`].
    pub fn get(&self, key: &T::PartitionKey, id: impl IdArg<T::Id>) -> Result<Option<T>> {
        self.check(key)?;
        get_under(&self.collection, &id_value::<T>(&id)?, &key_value::<T>(key)?)
    }

    /// As [`Collection::update`], inside the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] for a document of another shard; as [`Collection::update`].
    pub fn update(&self, doc: &T) -> Result<Option<u64>> {
        self.check(doc.partition_key())?;
        self.collection.update(doc)
    }

    /// As [`Collection::upsert`], inside the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] for a document of another shard; as [`Collection::upsert`].
    pub fn upsert(&self, doc: &T) -> Result<()> {
        self.check(doc.partition_key())?;
        self.collection.upsert(doc)
    }

    /// As [`Collection::delete`], inside the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] for a key of another shard; as [`Collection::delete`].
    pub fn delete(&self, key: &T::PartitionKey, id: impl IdArg<T::Id>) -> Result<bool> {
        self.check(key)?;
        let id = id_value::<T>(&id)?;
        match get_under(&self.collection, &id, &key_value::<T>(key)?)? {
            Some(_) => self.collection.delete(IdValue(id)),
            None => Ok(false),
        }
    }

    /// As [`Collection::increment`], inside the transaction.
    ///
    /// # Errors
    ///
    /// [`Error::CrossShard`] for a key of another shard; as [`Collection::increment`].
    pub fn increment<N: Numeric>(
        &self,
        key: &T::PartitionKey,
        id: impl IdArg<T::Id>,
        field: Field<T, N>,
        delta: N,
    ) -> Result<N> {
        self.check(key)?;
        let id = id_value::<T>(&id)?;
        require_under(&self.collection, &id, &key_value::<T>(key)?)?;
        self.collection.increment(IdValue(id), field, delta)
    }
}

/// A partition key as the value it routes by.
/// An id as the value it is stored as.
fn id_value<T: Document>(id: &impl IdArg<T::Id>) -> Result<Value> {
    id.id_value().map_err(|e| Error::invalid_value(T::schema().collection(), "id", e.0))
}

fn key_value<T: Partitioned>(key: &T::PartitionKey) -> Result<Value> {
    to_value(key).map_err(|e| Error::invalid_value(T::schema().collection(), pk_name::<T>(), e.0))
}

fn pk_name<T: Document>() -> &'static str {
    T::schema().partition_key_field().map_or("partition key", |f| f.name())
}

fn to_json(manifest: &Manifest) -> Result<String> {
    serde_json::to_string(manifest).map_err(|e| Error::serialization(&manifest.collection, None, e))
}
