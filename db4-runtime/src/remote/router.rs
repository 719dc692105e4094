//! [`DurableRouter`]: the router of a Worker, in front of one shard object per shard, with
//! the shard map kept by a coordinator object and cached in the isolate.

use super::protocol::{
    CoordinatorOp, PROTOCOL_VERSION, ShardMap, ShardOp, ShardReply, StreamPage, WireChange, WireOrder, WireStats,
    WireValue, encode_expr, to_bytes, to_raw,
};
use crate::collection::{CasResult, Numeric};
use crate::error::{Error, Result};
use crate::query::{Field, Filter, Order};
use crate::schema::{Document, IdArg, Partitioned};
use crate::shard::{
    HashRing, QueryPlan, RoutingCache, ShardId, ShardRouterConfig, merge_sorted_by, partition_key_bytes, plan_query,
    shard_fetch_limit,
};
use crate::value::{Value, to_value};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;

/// A boxed future, as [`ShardClient`] returns (not `Send`: a Worker is single-threaded).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How a [`DurableRouter`] reaches its shard objects and its coordinator: over a Durable
/// Object namespace in a Worker (`WorkerShards` in `db4::cloudflare`), or in
/// process natively ([`LocalShards`](super::LocalShards)).
///
/// # Contract
///
/// - [`shard`](Self::shard) delivers `body` to the shard object of `(collection, shard)` and
///   returns its reply's bytes; every call for the same pair reaches the same object.
/// - [`coordinator`](Self::coordinator) delivers `body` to the one coordinator object.
/// - [`cluster`](Self::cluster) names the deployment (the namespace), so routers of
///   different deployments in one isolate do not share cached maps.
pub trait ShardClient: 'static {
    /// Sends a request to a shard object.
    fn shard<'a>(&'a self, collection: &'a str, shard: ShardId, body: Vec<u8>) -> BoxFuture<'a, Result<Vec<u8>>>;

    /// Sends a request to the coordinator.
    fn coordinator(&self, body: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>>;

    /// The deployment's name.
    fn cluster(&self) -> &str;

    /// Waits `ms` milliseconds (backing off while a split switches); by default not at all.
    fn sleep(&self, ms: u64) -> BoxFuture<'_, ()> {
        let _ = ms;
        Box::pin(std::future::ready(()))
    }
}

/// When a shard object should split ([`DurableRouter::hot_shards`]): either limit reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitTrigger {
    /// Requests per second (over the last minute) a shard object answers.
    pub ops_per_sec: f64,
    /// Bytes its database takes.
    pub database_bytes: u64,
}

impl Default for SplitTrigger {
    /// 200 requests per second (a Durable Object serves a few hundred writes a second), or
    /// 5 GiB (half of the 10 GB a Durable Object may store, so the split's copy fits).
    fn default() -> Self {
        SplitTrigger { ops_per_sec: 200.0, database_bytes: 5 << 30 }
    }
}

/// Requests in flight at once in a scatter-gather: a Worker opens at most six connections at
/// a time (more wait), and each shard request is one subrequest of the incoming request's
/// budget.
pub const MAX_IN_FLIGHT: usize = 6;

/// Attempts of one operation across stale-epoch redirects before giving up.
const MAX_ATTEMPTS: usize = 8;

/// Partition keys whose shard a router remembers.
const ROUTING_CACHE: usize = 4096;

thread_local! {
    /// The shard maps this isolate has seen, by (cluster, collection): a new router starts
    /// from them without asking the coordinator; a shard's stale-epoch reply corrects them.
    static MAPS: RefCell<HashMap<(String, String), ShardMap>> = RefCell::new(HashMap::new());
}

struct Inner {
    client: Box<dyn ShardClient>,
    collection: &'static str,
    map: RefCell<ShardMap>,
    cache: RefCell<RoutingCache>,
}

/// Documents of type `T` spread over shard objects by their `#[partition_key]`, seen from a
/// Worker: the async counterpart of [`ShardRouter`](crate::shard::ShardRouter).
///
/// Each shard is its own Durable Object (a [`ShardServer`](super::ShardServer) over its
/// storage); the ring, its epoch and any split in progress live in a coordinator object
/// ([`CoordinatorServer`](super::CoordinatorServer)) and are cached in the isolate. Writes and
/// reads of one document go to the shard of its partition key; [`query`](Self::query) asks
/// the shards the filters may match, at most [`MAX_IN_FLIGHT`] at a time, and merges their
/// answers as one database would. Every request carries the ring's epoch: a shard holding a
/// newer ring redirects the router, which reloads the map and routes again, so an old map
/// never yields a wrong answer.
///
/// Cheap to clone; not `Send` (a Worker isolate is single-threaded).
pub struct DurableRouter<T: Partitioned> {
    inner: Rc<Inner>,
    _marker: PhantomData<fn() -> T>,
}

impl<T: Partitioned> Clone for DurableRouter<T> {
    fn clone(&self) -> Self {
        Self { inner: Rc::clone(&self.inner), _marker: PhantomData }
    }
}

impl<T: Partitioned> std::fmt::Debug for DurableRouter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.inner.map.borrow();
        f.debug_struct("DurableRouter")
            .field("collection", &self.inner.collection)
            .field("shards", &map.ring.shards().len())
            .field("epoch", &map.ring.epoch())
            .finish()
    }
}

/// What one shard answered.
pub(super) enum Reply {
    Ok(Box<RawValue>),
    /// The shard holds a newer ring.
    Stale,
}

/// A position in a partition key's change stream ([`DurableRouter::stream`]): the shard
/// holding its documents and the last LSN of that shard's log already seen. Written
/// `"<shard>:<lsn>"` (as an SSE event id, say), read back with `str::parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    /// The shard.
    pub shard: ShardId,
    /// The last LSN seen in its log.
    pub lsn: u64,
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.shard.get(), self.lsn)
    }
}

impl std::str::FromStr for StreamPosition {
    type Err = Error;

    /// Parses `"<shard>:<lsn>"`.
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            || Error::invalid_query("change stream", format!("a stream position is \"<shard>:<lsn>\", not {s:?}"));
        let (shard, lsn) = s.split_once(':').ok_or_else(bad)?;
        let shard: u32 = shard.parse().map_err(|_| bad())?;
        let lsn: u64 = lsn.parse().map_err(|_| bad())?;
        Ok(Self { shard: ShardId::new(shard), lsn })
    }
}

/// A page of a partition key's change stream, from [`DurableRouter::stream`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StreamBatch {
    /// The key's committed changes after the position asked for, in commit order.
    pub events: Vec<WireChange>,
    /// Where to continue: pass it to the next call.
    pub position: StreamPosition,
    /// Whether the shard had nothing newer when it answered (wait before asking again).
    pub caught_up: bool,
    /// Events passed over because nothing told their partition: deletes, when the shard
    /// databases keep no before images (open them with `DbOptions::before_images(true)`, or
    /// mark the collection `#[db4(changes = "full")]`, for a stream with its deletes).
    pub unattributed: u64,
}

impl<T: Partitioned> DurableRouter<T> {
    /// The router of `T`'s collection over `client`. The shard map comes from the isolate's
    /// cache, else from the coordinator; a collection without one gets a new ring from
    /// `config` (`shard_count`, `virtual_nodes`, `consistent_hashing`), stored in the
    /// coordinator by the first router to ask (racing routers agree on that one).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShardConfig`] for a bad `config` or a stored map of another format;
    /// the client's error if the coordinator cannot be reached.
    pub async fn open(client: impl ShardClient, config: ShardRouterConfig) -> Result<Self> {
        let collection = T::schema().collection();
        let key = (client.cluster().to_owned(), collection.to_owned());
        let cached = MAPS.with(|m| m.borrow().get(&key).cloned());
        let map = match cached {
            Some(map) => map,
            None => {
                let map = match load(&client, collection).await? {
                    Some(map) => map,
                    None => {
                        let ring = if config.consistent_hashing {
                            HashRing::new(config.shard_count, config.virtual_nodes)?
                        } else {
                            HashRing::modulo(config.shard_count)?
                        };
                        let fresh = ShardMap { format: 1, collection: collection.to_owned(), ring, plan: None };
                        let op = CoordinatorOp::Init { map: Box::new(fresh) };
                        let stored: Option<ShardMap> = coordinator(&client, collection, &op).await?;
                        stored.ok_or_else(|| Error::migration_state("the coordinator stored no shard map"))?
                    }
                };
                check_map(&map, collection)?;
                MAPS.with(|m| m.borrow_mut().insert(key, map.clone()));
                map
            }
        };
        Ok(Self {
            inner: Rc::new(Inner {
                client: Box::new(client),
                collection,
                map: RefCell::new(map),
                cache: RefCell::new(RoutingCache::new(ROUTING_CACHE)),
            }),
            _marker: PhantomData,
        })
    }

    /// The epoch of the ring this router routes by.
    pub fn epoch(&self) -> u64 {
        self.inner.map.borrow().ring.epoch()
    }

    /// The shards, in id order.
    pub fn shards(&self) -> Vec<ShardId> {
        self.inner.map.borrow().ring.shards().to_vec()
    }

    /// A copy of the ring documents are routed by.
    pub fn ring(&self) -> HashRing {
        self.inner.map.borrow().ring.clone()
    }

    /// The shard `key` is routed to now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] if the key does not serialize to a value.
    pub fn shard_for(&self, key: &T::PartitionKey) -> Result<ShardId> {
        let value = key_value::<T>(key)?;
        Ok(self.route(&value))
    }

    /// The shards a query with these filters asks, and why.
    ///
    /// # Errors
    ///
    /// As [`plan_query`].
    pub fn plan(&self, filters: &[Filter<T>]) -> Result<QueryPlan> {
        plan_query(&self.inner.map.borrow().ring, filters)
    }

    /// Reloads the shard map from the coordinator.
    ///
    /// # Errors
    ///
    /// The client's error; [`Error::MigrationState`] if the coordinator holds no map.
    pub async fn refresh(&self) -> Result<()> {
        let map = load(&*self.inner.client, self.inner.collection)
            .await?
            .ok_or_else(|| Error::migration_state("the coordinator holds no shard map for this collection"))?;
        check_map(&map, self.inner.collection)?;
        self.set_map(map);
        Ok(())
    }

    /// A copy of the shard map this router routes by (the ring and a split in progress).
    pub fn map(&self) -> ShardMap {
        self.inner.map.borrow().clone()
    }

    /// Makes `map` the router's and the isolate's cached one.
    pub(super) fn set_map(&self, map: ShardMap) {
        let key = (self.inner.client.cluster().to_owned(), self.inner.collection.to_owned());
        MAPS.with(|m| m.borrow_mut().insert(key, map.clone()));
        if map.ring.epoch() != self.epoch() {
            self.inner.cache.borrow_mut().clear();
        }
        *self.inner.map.borrow_mut() = map;
    }

    pub(super) fn client(&self) -> &dyn ShardClient {
        &*self.inner.client
    }

    pub(super) fn collection(&self) -> &'static str {
        self.inner.collection
    }

    fn route(&self, key: &Value) -> ShardId {
        let map = self.inner.map.borrow();
        self.inner.cache.borrow_mut().shard_for(&map.ring, &partition_key_bytes(key))
    }

    /// Sends `op` to `shard` under the current ring; assigns the ring first if the shard asks.
    async fn send(&self, shard: ShardId, op: &ShardOp) -> Result<Reply> {
        let ring = self.ring();
        self.send_with(shard, &ring, op).await
    }

    /// Sends `op` to `shard` under `ring` (its epoch on the request; assigned if the shard
    /// asks for it).
    pub(super) async fn send_with(&self, shard: ShardId, ring: &HashRing, op: &ShardOp) -> Result<Reply> {
        for _ in 0..2 {
            let body = self.request(shard, ring.epoch(), op)?;
            let reply = self.inner.client.shard(self.inner.collection, shard, body).await?;
            match parse_reply(&reply, shard)? {
                ShardReply::Ok { result } => return Ok(Reply::Ok(result)),
                ShardReply::Stale { .. } => return Ok(Reply::Stale),
                ShardReply::NeedsRing { .. } => self.assign(shard, ring).await?,
                ShardReply::Err { error } => return Err(error.into_error(shard.get())),
            }
        }
        Err(Error::migration_state(format!("shard {} did not accept the ring of epoch {}", shard.get(), ring.epoch())))
    }

    /// [`send_with`](Self::send_with), a stale reply an error: for a split's steps, whose
    /// epochs are the plan's.
    pub(super) async fn send_exact<R: DeserializeOwned>(
        &self,
        shard: ShardId,
        ring: &HashRing,
        op: &ShardOp,
    ) -> Result<R> {
        match self.send_with(shard, ring, op).await? {
            Reply::Ok(raw) => self.decode(&raw),
            Reply::Stale => Err(Error::migration_state(format!(
                "shard {} holds a ring newer than epoch {}: another split is under way",
                shard.get(),
                ring.epoch()
            ))),
        }
    }

    fn request(&self, shard: ShardId, epoch: u64, op: &ShardOp) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Req<'a> {
            version: u32,
            epoch: u64,
            shard: u32,
            collection: &'a str,
            op: &'a ShardOp,
        }
        let req = Req { version: PROTOCOL_VERSION, epoch, shard: shard.get(), collection: self.inner.collection, op };
        to_bytes(self.inner.collection, &req)
    }

    async fn assign(&self, shard: ShardId, ring: &HashRing) -> Result<()> {
        let epoch = ring.epoch();
        let op = ShardOp::Assign { ring: Box::new(ring.clone()) };
        let body = self.request(shard, epoch, &op)?;
        let reply = self.inner.client.shard(self.inner.collection, shard, body).await?;
        match parse_reply(&reply, shard)? {
            ShardReply::Ok { .. } => Ok(()),
            ShardReply::Err { error } => Err(error.into_error(shard.get())),
            ShardReply::Stale { .. } | ShardReply::NeedsRing { .. } => {
                Err(Error::migration_state(format!("shard {} refused the ring of epoch {epoch}", shard.get())))
            }
        }
    }

    /// Runs `op` on the shard of `key`, following stale-epoch redirects.
    async fn keyed<R: DeserializeOwned>(&self, key: &Value, op: ShardOp) -> Result<R> {
        for _ in 0..MAX_ATTEMPTS {
            let shard = self.route(key);
            match self.send(shard, &op).await? {
                Reply::Ok(raw) => return self.decode(&raw),
                Reply::Stale => self.wait_for_map().await?,
            }
        }
        Err(self.gave_up())
    }

    /// After a stale reply: reloads the map, waiting a little first when the coordinator has
    /// not published the newer ring yet (a split between its freeze and its switch).
    async fn wait_for_map(&self) -> Result<()> {
        let before = self.epoch();
        for attempt in 0..MAX_ATTEMPTS as u32 {
            self.refresh().await?;
            if self.epoch() != before {
                return Ok(());
            }
            self.inner.client.sleep(5 << attempt).await;
        }
        Ok(())
    }

    pub(super) fn gave_up(&self) -> Error {
        Error::migration_state(format!(
            "the shards of {:?} kept reporting a newer ring than the coordinator's (epoch {}); a split is \
             switching: try again",
            self.inner.collection,
            self.epoch()
        ))
    }

    pub(super) fn decode<R: DeserializeOwned>(&self, raw: &RawValue) -> Result<R> {
        serde_json::from_str(raw.get()).map_err(|e| Error::serialization(self.inner.collection, None, e))
    }

    fn doc_op(doc: &T, make: fn(Box<RawValue>) -> ShardOp) -> Result<(Value, ShardOp)> {
        let key = key_value::<T>(doc.partition_key())?;
        let raw = to_raw(T::schema().collection(), doc)?;
        Ok((key, make(raw)))
    }

    /// Stores a new document on its shard.
    ///
    /// # Errors
    ///
    /// As [`Collection::insert`](crate::Collection::insert); the client's error if the shard
    /// cannot be reached.
    pub async fn insert(&self, doc: &T) -> Result<()> {
        let (key, op) = Self::doc_op(doc, |doc| ShardOp::Insert { doc })?;
        self.keyed::<()>(&key, op).await
    }

    /// Stores new documents, each on its shard: one request (and one transaction) per shard,
    /// at most [`MAX_IN_FLIGHT`] at once.
    ///
    /// All or nothing **per shard**: a shard whose batch fails (a duplicate id, a document too
    /// large) stores none of its batch, while other shards may have stored theirs; the first
    /// error is returned. Nothing spans shards atomically.
    ///
    /// # Errors
    ///
    /// As [`Collection::insert_many`](crate::Collection::insert_many) on each shard.
    pub async fn insert_many(&self, docs: &[T]) -> Result<()> {
        let mut raw: Vec<(Value, Box<RawValue>)> = Vec::with_capacity(docs.len());
        for doc in docs {
            raw.push((key_value::<T>(doc.partition_key())?, to_raw(T::schema().collection(), doc)?));
        }
        let mut pending: Vec<usize> = (0..raw.len()).collect();
        for _ in 0..MAX_ATTEMPTS {
            if pending.is_empty() {
                return Ok(());
            }
            let mut groups: Vec<(ShardId, Vec<usize>)> = Vec::new();
            for &i in &pending {
                let shard = self.route(&raw[i].0);
                match groups.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, v)) => v.push(i),
                    None => groups.push((shard, vec![i])),
                }
            }
            let ops: Vec<(ShardId, ShardOp)> = groups
                .iter()
                .map(|(s, idx)| (*s, ShardOp::InsertMany { docs: idx.iter().map(|&i| raw[i].1.clone()).collect() }))
                .collect();
            let replies: Vec<Result<Reply>> = futures_util::stream::iter(ops.iter().map(|(s, op)| self.send(*s, op)))
                .buffered(MAX_IN_FLIGHT)
                .collect()
                .await;
            let mut stale = Vec::new();
            let mut first_error = None;
            for ((_, idx), reply) in groups.into_iter().zip(replies) {
                match reply {
                    Ok(Reply::Ok(_)) => {}
                    Ok(Reply::Stale) => stale.extend(idx),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            pending = stale;
            if !pending.is_empty() {
                self.wait_for_map().await?;
            }
        }
        Err(self.gave_up())
    }

    /// Reads the document with this partition key and id.
    ///
    /// # Errors
    ///
    /// As [`Collection::get`](crate::Collection::get).
    pub async fn get(&self, key: &T::PartitionKey, id: impl IdArg<T::Id>) -> Result<Option<T>> {
        let key = key_value::<T>(key)?;
        let id = id_wire::<T>(&id)?;
        self.keyed(&key, ShardOp::Get { key: (&key).into(), id }).await
    }

    /// Replaces a stored document; returns its new version (in a collection with one).
    ///
    /// # Errors
    ///
    /// As [`Collection::update`](crate::Collection::update).
    pub async fn update(&self, doc: &T) -> Result<Option<u64>> {
        let (key, op) = Self::doc_op(doc, |doc| ShardOp::Update { doc })?;
        self.keyed(&key, op).await
    }

    /// Inserts or replaces a document on its shard.
    ///
    /// # Errors
    ///
    /// As [`Collection::upsert`](crate::Collection::upsert).
    pub async fn upsert(&self, doc: &T) -> Result<()> {
        let (key, op) = Self::doc_op(doc, |doc| ShardOp::Upsert { doc })?;
        self.keyed::<()>(&key, op).await
    }

    /// Deletes the document with this partition key and id; returns whether there was one.
    ///
    /// # Errors
    ///
    /// As [`Collection::delete`](crate::Collection::delete).
    pub async fn delete(&self, key: &T::PartitionKey, id: impl IdArg<T::Id>) -> Result<bool> {
        let key = key_value::<T>(key)?;
        let id = id_wire::<T>(&id)?;
        self.keyed(&key, ShardOp::Delete { key: (&key).into(), id }).await
    }

    /// Atomically adds `delta` to a numeric field; returns the new value.
    ///
    /// # Errors
    ///
    /// As [`Collection::increment`](crate::Collection::increment).
    pub async fn increment<N: Numeric>(
        &self,
        key: &T::PartitionKey,
        id: impl IdArg<T::Id>,
        field: Field<T, N>,
        delta: N,
    ) -> Result<N> {
        let key = key_value::<T>(key)?;
        let id = id_wire::<T>(&id)?;
        let delta = serde_json::to_value(delta).map_err(|e| Error::serialization(T::schema().collection(), None, e))?;
        let field = field_name::<T>(field.index())?;
        self.keyed(&key, ShardOp::Increment { key: (&key).into(), id, field, delta }).await
    }

    /// Atomically sets `field` to `new` if it equals `expected`.
    ///
    /// # Errors
    ///
    /// As [`Collection::compare_and_swap`](crate::Collection::compare_and_swap).
    pub async fn compare_and_swap<V>(
        &self,
        key: &T::PartitionKey,
        id: impl IdArg<T::Id>,
        field: Field<T, V>,
        expected: impl Into<V>,
        new: impl Into<V>,
    ) -> Result<CasResult<V>>
    where
        V: Serialize + DeserializeOwned,
    {
        let name = T::schema().collection();
        let json = |v: V| serde_json::to_value(v).map_err(|e| Error::serialization(name, None, e));
        let key = key_value::<T>(key)?;
        let id = id_wire::<T>(&id)?;
        let op = ShardOp::CompareAndSwap {
            key: (&key).into(),
            id,
            field: field_name::<T>(field.index())?,
            expected: json(expected.into())?,
            new: json(new.into())?,
        };
        #[derive(serde::Deserialize)]
        struct Cas<V> {
            swapped: bool,
            current: V,
        }
        let r: Cas<V> = self.keyed(&key, op).await?;
        Ok(CasResult { swapped: r.swapped, current: r.current })
    }

    /// A query over every shard the filters may match, merged.
    pub fn query(&self) -> DurableQuery<'_, T> {
        DurableQuery { router: self, filters: Vec::new(), order: Vec::new(), limit: None, offset: 0 }
    }

    /// Each shard's documents, bytes and last change-log LSN, in shard order.
    ///
    /// # Errors
    ///
    /// The client's or a shard's error.
    pub async fn stats(&self) -> Result<Vec<(ShardId, WireStats)>> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(parts) = self.scatter(&self.shards(), |_| ShardOp::Stats).await? {
                return parts.into_iter().map(|(shard, raw)| Ok((shard, self.decode(&raw)?))).collect();
            }
        }
        Err(self.gave_up())
    }

    /// The shards that should split under `trigger`: those at or above its request rate or
    /// its database size, the most loaded first (by the larger of the two ratios).
    ///
    /// The rate is each shard object's own count of the requests it answered over the last
    /// minute, from every router, not this router's share.
    ///
    /// # Errors
    ///
    /// As [`stats`](Self::stats).
    pub async fn hot_shards(&self, trigger: &SplitTrigger) -> Result<Vec<(ShardId, WireStats)>> {
        let load = |s: &WireStats| {
            let rate = if trigger.ops_per_sec > 0.0 { s.ops_per_sec / trigger.ops_per_sec } else { 0.0 };
            let size =
                if trigger.database_bytes > 0 { s.database_bytes as f64 / trigger.database_bytes as f64 } else { 0.0 };
            rate.max(size)
        };
        let mut hot: Vec<(ShardId, WireStats)> =
            self.stats().await?.into_iter().filter(|(_, s)| load(s) >= 1.0).collect();
        hot.sort_by(|a, b| load(&b.1).total_cmp(&load(&a.1)).then(a.0.cmp(&b.0)));
        Ok(hot)
    }

    /// Up to `limit` events of `shard`'s change log for this collection, after LSN `after`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownShard`] for a shard the ring does not hold; the shard's error (such as
    /// [`Error::LogTruncated`]).
    pub async fn changes(&self, shard: ShardId, after: u64, limit: usize) -> Result<Vec<WireChange>> {
        for _ in 0..MAX_ATTEMPTS {
            if !self.inner.map.borrow().ring.contains(shard) {
                return Err(Error::UnknownShard { shard: shard.get(), epoch: self.epoch() });
            }
            match self.send(shard, &ShardOp::Changes { after, limit }).await? {
                Reply::Ok(raw) => return self.decode(&raw),
                Reply::Stale => self.wait_for_map().await?,
            }
        }
        Err(self.gave_up())
    }

    /// The next page of the change stream of the documents under `key`: their committed
    /// changes after `after`, in commit order, at most `limit` (and at most
    /// [`MAX_STREAM_SCAN`](super::protocol::MAX_STREAM_SCAN) events examined on the shard),
    /// with the position to continue from. No event of another partition key is in it.
    ///
    /// A key's documents live on one shard, so its stream is that shard's log, filtered; a
    /// position is `(shard, lsn)`. `None`, or a position on a shard the key is no longer routed
    /// to (it moved there in a split), starts at the beginning of the current shard's log;
    /// the documents a split copied there then come again as that shard's inserts.
    ///
    /// Deletes are in the stream when the shard databases keep before images (see
    /// [`StreamBatch::unattributed`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for a key that does not serialize; the shard's error (such as
    /// [`Error::LogTruncated`] if its log no longer holds the events after the position).
    pub async fn stream(
        &self,
        key: &T::PartitionKey,
        after: Option<StreamPosition>,
        limit: usize,
    ) -> Result<StreamBatch> {
        let value = key_value::<T>(key)?;
        for _ in 0..MAX_ATTEMPTS {
            let shard = self.route(&value);
            let from = after.filter(|p| p.shard == shard).map_or(0, |p| p.lsn);
            let op = ShardOp::Stream { after: from, limit, partition: (&value).into() };
            match self.send(shard, &op).await? {
                Reply::Ok(raw) => {
                    let page: StreamPage = self.decode(&raw)?;
                    let caught_up = page.next >= page.last_lsn;
                    return Ok(StreamBatch {
                        events: page.events,
                        position: StreamPosition { shard, lsn: page.next },
                        caught_up,
                        unattributed: page.unattributed,
                    });
                }
                Reply::Stale => self.wait_for_map().await?,
            }
        }
        Err(self.gave_up())
    }

    /// `op(shard)` on each of `shards`, at most [`MAX_IN_FLIGHT`] at once, in `shards` order;
    /// `None` (after reloading the map) when a shard reports a newer ring, so callers re-plan.
    pub(super) async fn scatter(
        &self,
        shards: &[ShardId],
        op: impl Fn(ShardId) -> ShardOp,
    ) -> Result<Option<Vec<(ShardId, Box<RawValue>)>>> {
        let ops: Vec<(ShardId, ShardOp)> = shards.iter().map(|&s| (s, op(s))).collect();
        let replies: Vec<Result<Reply>> = futures_util::stream::iter(ops.iter().map(|(s, op)| self.send(*s, op)))
            .buffered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let mut out = Vec::with_capacity(replies.len());
        let mut stale = false;
        for ((shard, _), reply) in ops.iter().zip(replies) {
            match reply? {
                Reply::Ok(raw) => out.push((*shard, raw)),
                Reply::Stale => stale = true,
            }
        }
        if stale {
            self.wait_for_map().await?;
            return Ok(None);
        }
        Ok(Some(out))
    }
}

/// A query over a [`DurableRouter`], from [`DurableRouter::query`]: the same builder as
/// [`Query`](crate::Query), with the same answer as one database holding every document
/// (documents equal on every sort key come by id; without `order_by`, by id).
#[must_use = "a query does nothing until run with all(), first() or count()"]
pub struct DurableQuery<'r, T: Partitioned> {
    router: &'r DurableRouter<T>,
    filters: Vec<Filter<T>>,
    order: Vec<Order<T>>,
    limit: Option<usize>,
    offset: usize,
}

impl<T: Partitioned> std::fmt::Debug for DurableQuery<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableQuery")
            .field("filters", &self.filters)
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish()
    }
}

impl<T: Partitioned> DurableQuery<'_, T> {
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

    fn wire_filters(&self) -> Vec<Vec<super::protocol::WireNode>> {
        self.filters.iter().map(|f| encode_expr(T::schema(), &f.expr)).collect()
    }

    fn wire_order(&self) -> Result<Vec<WireOrder>> {
        self.order
            .iter()
            .map(|o| Ok(WireOrder { field: field_name::<T>(o.field)?, descending: o.descending }))
            .collect()
    }

    /// Runs the query on the shards (at most [`MAX_IN_FLIGHT`] requests at once) and returns
    /// the merged page.
    ///
    /// # Errors
    ///
    /// As [`Query::all`](crate::Query::all) on each shard; the client's error.
    pub async fn all(self) -> Result<Vec<T>> {
        let router = self.router;
        let filters = self.wire_filters();
        let order = self.wire_order()?;
        for _ in 0..MAX_ATTEMPTS {
            let plan = router.plan(&self.filters)?;
            if plan.shards.is_empty() {
                return Ok(Vec::new());
            }
            let single = plan.shards.len() == 1;
            let (offset, limit) =
                if single { (self.offset, self.limit) } else { (0, shard_fetch_limit(self.offset, self.limit)) };
            let parts = router
                .scatter(&plan.shards, |_| ShardOp::Query {
                    filters: filters.clone(),
                    order: order.clone(),
                    offset,
                    limit,
                })
                .await;
            let Some(parts) = parts? else { continue };
            let mut docs: Vec<Vec<T>> = Vec::with_capacity(parts.len());
            for (_, raw) in parts {
                docs.push(router.decode(&raw)?);
            }
            if single {
                return Ok(docs.pop().unwrap_or_default());
            }
            let mut keys: Vec<(usize, bool)> = self.order.iter().map(|o| (o.field, o.descending)).collect();
            let last_desc = keys.last().is_some_and(|k| k.1);
            keys.push((id_index::<T>(), last_desc && !self.order.is_empty()));
            return merge_sorted_by(docs, T::schema(), &keys, self.offset, self.limit);
        }
        Err(router.gave_up())
    }

    /// Runs the query and returns the first matching document.
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub async fn first(self) -> Result<Option<T>> {
        let limit = self.limit.map_or(1, |n| n.min(1));
        Ok(self.limit(limit).all().await?.into_iter().next())
    }

    /// Counts the matching documents (within `limit` and `offset`, if set).
    ///
    /// # Errors
    ///
    /// As [`all`](Self::all).
    pub async fn count(self) -> Result<u64> {
        let router = self.router;
        let filters = self.wire_filters();
        for _ in 0..MAX_ATTEMPTS {
            let plan = router.plan(&self.filters)?;
            let parts = router.scatter(&plan.shards, |_| ShardOp::Count { filters: filters.clone() }).await;
            let Some(parts) = parts? else { continue };
            let mut total = 0u64;
            for (_, raw) in parts {
                total += router.decode::<u64>(&raw)?;
            }
            let after = total.saturating_sub(self.offset as u64);
            return Ok(self.limit.map_or(after, |n| after.min(n as u64)));
        }
        Err(router.gave_up())
    }
}

async fn load(client: &dyn ShardClient, collection: &str) -> Result<Option<ShardMap>> {
    coordinator(client, collection, &CoordinatorOp::Load { collection: collection.to_owned() }).await
}

pub(super) async fn coordinator<R: DeserializeOwned>(
    client: &dyn ShardClient,
    collection: &str,
    op: &CoordinatorOp,
) -> Result<R> {
    let reply = client.coordinator(to_bytes(collection, op)?).await?;
    match serde_json::from_slice::<ShardReply>(&reply) {
        Ok(ShardReply::Ok { result }) => {
            serde_json::from_str(result.get()).map_err(|e| Error::serialization(collection, None, e))
        }
        Ok(ShardReply::Err { error }) => Err(error.into_error(0)),
        Ok(other) => Err(Error::migration_state(format!("the coordinator answered {other:?}"))),
        Err(e) => Err(Error::corrupted(collection, None, format!("the coordinator's reply is not a reply: {e}"))),
    }
}

fn parse_reply(bytes: &[u8], shard: ShardId) -> Result<ShardReply> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::corrupted(
            "shard",
            None,
            format!(
                "shard {}'s reply is not a reply ({e}): {}",
                shard.get(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        )
    })
}

fn check_map(map: &ShardMap, collection: &str) -> Result<()> {
    if map.format != 1 || map.collection != collection {
        return Err(Error::invalid_shard_config(format!(
            "the coordinator's shard map is for collection {:?} (format {}), not {collection:?}",
            map.collection, map.format
        )));
    }
    Ok(())
}

fn key_value<T: Partitioned>(key: &T::PartitionKey) -> Result<Value> {
    let name = T::schema().partition_key_field().map_or("partition key", |f| f.name());
    to_value(key).map_err(|e| Error::invalid_value(T::schema().collection(), name, e.0))
}

fn id_wire<T: Document>(id: &impl IdArg<T::Id>) -> Result<WireValue> {
    let v = id.id_value().map_err(|e| Error::invalid_value(T::schema().collection(), "id", e.0))?;
    Ok((&v).into())
}

fn field_name<T: Document>(index: usize) -> Result<String> {
    T::schema()
        .fields()
        .get(index)
        .map(|f| f.name().to_owned())
        .ok_or_else(|| Error::invalid_query(T::schema().collection(), format!("field #{index} does not belong here")))
}

fn id_index<T: Document>() -> usize {
    T::schema().fields().iter().position(|f| f.is_id()).unwrap_or(0)
}
