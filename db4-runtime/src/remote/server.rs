//! The shard object's side of the protocol: [`ShardServer`] answers [`ShardRequest`]s over a
//! [`Db`] (a Durable Object's storage, or a native file in tests), and [`CoordinatorServer`]
//! keeps each collection's [`ShardMap`].
//!
//! Both are plain code over a `Db`: natively they run in `cargo test` behind an in-process
//! client ([`LocalShards`](super::LocalShards)), and inside a Durable Object the same code
//! answers `fetch`.

use super::protocol::{
    CoordinatorOp, MAX_RANGE_ROWS, MAX_STREAM_SCAN, PROTOCOL_VERSION, RangeRows, ScanPage, SearchPart, ShardMap,
    ShardOp, ShardReply, ShardRequest, StreamPage, WireChange, WireError, WireHit, WireMatch, WireStats, WireValue,
    decode_expr, to_raw,
};
use crate::backend::{Access, Connection, run};
use crate::collection::Collection;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::fts::global;
use crate::query::eval::DocFields;
use crate::query::filter::Filter;
use crate::query::{Field, Order};
use crate::range::{
    AnyValue, KeyedRows, Position, Spec, check_cursor_id, check_prefix, field_index_keys, named_index_keys,
};
use crate::schema::{DocumentId, IdArg, Partitioned};
use crate::shard::{
    HashRing, MovedRange, ShardId, get_under, key_hash, partition_key_bytes, partition_key_of, require_under,
};
use crate::value::{Value, ValueError, ValueRef};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

/// The table a shard object keeps its identity in: per collection, its shard id and the ring
/// it last accepted.
const SHARD_STATE: &str = "\"_db4_shard_state\"";

/// Documents a split's scan reads per request at most.
const MAX_SCAN: usize = 1000;

/// Bytes of documents (as JSON) a split's copy puts in one reply, about: a page of large
/// documents stops early, so neither side holds more than this and one document.
const MAX_SCAN_BYTES: usize = 8 << 20;

/// The table the coordinator keeps shard maps in.
const SHARD_MAPS: &str = "\"_db4_shard_maps\"";

/// What a shard object knows about one collection: which shard it is, by which ring.
#[derive(Debug, Clone)]
pub(crate) struct ShardState {
    shard: ShardId,
    ring: HashRing,
    /// The shard still holds copies of documents a split moved away (between the switch and
    /// the end of the cleanup): queries leave them out.
    foreign: bool,
}

impl ShardState {
    /// Whether `key` routes here.
    fn owns(&self, key: &Value) -> bool {
        self.ring.shard_for_value(key) == self.shard
    }
}

/// Serves one shard of one or more collections over the protocol.
///
/// Register each document type the shard holds with [`serve`](Self::serve); a request for
/// another collection is refused. Requests carry the router's ring epoch: an older one gets
/// [`ShardReply::Stale`] and a newer one [`ShardReply::NeedsRing`], so a router with an old
/// map is redirected and never answered from the wrong shard.
pub struct ShardServer {
    db: Db,
    handlers: HashMap<&'static str, Box<dyn Handler>>,
    /// The accepted state of each collection, read from the table on first use.
    states: Mutex<HashMap<String, Option<ShardState>>>,
    /// The requests answered, for the load in [`WireStats::ops_per_sec`].
    load: Mutex<RateWindow>,
}

/// Events per second over a sliding minute: twelve buckets of five seconds.
#[derive(Debug, Default)]
struct RateWindow {
    buckets: [u64; RATE_BUCKETS],
    /// The bucket last written (milliseconds / bucket width).
    at: u64,
    /// When the first event came: the rate of a young object is over its age.
    since: Option<u64>,
}

const RATE_BUCKETS: usize = 12;
const RATE_BUCKET_MS: u64 = 5_000;

impl RateWindow {
    /// Clears the buckets the clock has passed since the last write.
    fn advance(&mut self, now_ms: u64) {
        let now = now_ms / RATE_BUCKET_MS;
        if now > self.at {
            let passed = (now - self.at).min(RATE_BUCKETS as u64);
            for i in 1..=passed {
                self.buckets[((self.at + i) % RATE_BUCKETS as u64) as usize] = 0;
            }
            self.at = now;
        }
    }

    fn record(&mut self, now_ms: u64) {
        self.advance(now_ms);
        self.since.get_or_insert(now_ms);
        self.buckets[(self.at % RATE_BUCKETS as u64) as usize] += 1;
    }

    fn per_sec(&mut self, now_ms: u64) -> f64 {
        self.advance(now_ms);
        let Some(since) = self.since else { return 0.0 };
        let window = RATE_BUCKET_MS * RATE_BUCKETS as u64;
        let span = now_ms.saturating_sub(since).clamp(1_000, window);
        self.buckets.iter().sum::<u64>() as f64 * 1000.0 / span as f64
    }
}

impl std::fmt::Debug for ShardServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.handlers.keys().copied().collect();
        names.sort_unstable();
        f.debug_struct("ShardServer").field("collections", &names).finish()
    }
}

impl ShardServer {
    /// A server over `db`, serving no collection yet.
    ///
    /// # Errors
    ///
    /// A backend error if its state table cannot be created.
    pub fn new(db: Db) -> Result<Self> {
        run(db.backend(), Access::Write, |conn| {
            conn.execute_ddl(&format!(
                "CREATE TABLE IF NOT EXISTS {SHARD_STATE} (\"collection\" TEXT PRIMARY KEY NOT NULL, \
                 \"shard\" INTEGER NOT NULL, \"epoch\" INTEGER NOT NULL, \"ring\" TEXT NOT NULL, \
                 \"foreign\" INTEGER NOT NULL DEFAULT 0)"
            ))
        })?;
        Ok(Self {
            db,
            handlers: HashMap::new(),
            states: Mutex::new(HashMap::new()),
            load: Mutex::new(RateWindow::default()),
        })
    }

    /// Serves the collection of `T` too.
    #[must_use]
    pub fn serve<T: Partitioned>(mut self) -> Self {
        self.handlers.insert(T::schema().collection(), Box::new(Typed::<T>(PhantomData)));
        self
    }

    /// The database the shard's documents are in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Answers one request (JSON bytes) with a reply (JSON bytes). Never fails: an error is a
    /// [`ShardReply::Err`].
    pub fn handle(&self, body: &[u8]) -> Vec<u8> {
        let reply = match serde_json::from_slice::<ShardRequest>(body) {
            Ok(req) => self.answer(req),
            Err(e) => err_reply(WireError::Protocol { reason: format!("not a shard request: {e}") }),
        };
        serde_json::to_vec(&reply).unwrap_or_else(|e| {
            // Only a result that does not serialize gets here; say so in a reply that does.
            let reply = err_reply(WireError::Other { backend: None, message: format!("reply: {e}") });
            serde_json::to_vec(&reply).unwrap_or_default()
        })
    }

    fn answer(&self, req: ShardRequest) -> ShardReply {
        if req.version != PROTOCOL_VERSION {
            return err_reply(WireError::Protocol {
                reason: format!("protocol version {} (this shard speaks {PROTOCOL_VERSION})", req.version),
            });
        }
        let Some(handler) = self.handlers.get(req.collection.as_str()) else {
            return err_reply(WireError::Protocol {
                reason: format!("this shard object does not serve collection {:?}", req.collection),
            });
        };
        let state = match self.state(&req.collection) {
            Ok(s) => s,
            Err(e) => return err_reply((&e).into()),
        };
        if let ShardOp::Assign { ring } = req.op {
            return match self.assign(&req.collection, ShardId::new(req.shard), *ring, state.as_ref()) {
                Ok(()) => ok_null(),
                Err(e) => err_reply((&e).into()),
            };
        }
        if let (ShardOp::FinishClean, Some(held)) = (&req.op, &state) {
            if req.epoch != held.ring.epoch() {
                return ShardReply::Stale { epoch: held.ring.epoch() };
            }
            let cleaned = ShardState { foreign: false, ..held.clone() };
            return match self.store_state(&req.collection, cleaned) {
                Ok(()) => ok_null(),
                Err(e) => err_reply((&e).into()),
            };
        }
        let Some(state) = state else { return ShardReply::NeedsRing { epoch: 0 } };
        let epoch = state.ring.epoch();
        if req.epoch < epoch {
            return ShardReply::Stale { epoch };
        }
        if req.epoch > epoch {
            return ShardReply::NeedsRing { epoch };
        }
        if state.shard.get() != req.shard {
            return err_reply(WireError::Protocol {
                reason: format!("this object is shard {}, not shard {}", state.shard.get(), req.shard),
            });
        }
        let ops_per_sec = {
            let mut load = self.load.lock().unwrap_or_else(|e| e.into_inner());
            let now = crate::store::outbox::now_ms();
            load.record(now);
            load.per_sec(now)
        };
        match handler.handle(&self.db, &state, req.op, ops_per_sec) {
            Ok(result) => ShardReply::Ok { result },
            Err(e) => err_reply((&e).into()),
        }
    }

    fn state(&self, collection: &str) -> Result<Option<ShardState>> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = states.get(collection) {
            return Ok(s.clone());
        }
        let loaded = run(self.db.backend(), Access::Read, |conn| load_state(conn, collection))?;
        states.insert(collection.to_owned(), loaded.clone());
        Ok(loaded)
    }

    fn assign(&self, collection: &str, shard: ShardId, ring: HashRing, held: Option<&ShardState>) -> Result<()> {
        if let Some(held) = held {
            if ring.epoch() < held.ring.epoch() {
                return Err(Error::migration_state(format!(
                    "shard {} holds the ring of epoch {}; refusing the older epoch {}",
                    held.shard.get(),
                    held.ring.epoch(),
                    ring.epoch()
                )));
            }
            if held.shard != shard {
                return Err(Error::migration_state(format!(
                    "this object is shard {} of {collection:?}, not shard {}",
                    held.shard.get(),
                    shard.get()
                )));
            }
            if ring.epoch() == held.ring.epoch() {
                return Ok(());
            }
        }
        // A ring taking hashes away from this shard leaves it holding their documents until
        // the split's cleanup.
        let foreign = match held {
            Some(held) => {
                held.foreign
                    || crate::shard::MigrationPlan::between(&held.ring, &ring)
                        .map_or(true, |p| p.ranges_from(shard).next().is_some())
            }
            None => false,
        };
        self.store_state(collection, ShardState { shard, ring, foreign })
    }

    fn store_state(&self, collection: &str, state: ShardState) -> Result<()> {
        let text = serde_json::to_string(&state.ring).map_err(|e| Error::serialization(collection, None, e))?;
        let epoch = i64::try_from(state.ring.epoch()).unwrap_or(i64::MAX);
        run(self.db.backend(), Access::Write, |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO {SHARD_STATE} (\"collection\", \"shard\", \"epoch\", \"ring\", \"foreign\") \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (\"collection\") DO UPDATE SET \
                     \"shard\" = excluded.\"shard\", \"epoch\" = excluded.\"epoch\", \"ring\" = excluded.\"ring\", \
                     \"foreign\" = excluded.\"foreign\""
                ),
                &[
                    Value::Text(collection.to_owned()),
                    Value::Integer(i64::from(state.shard.get())),
                    Value::Integer(epoch),
                    Value::Text(text.clone()),
                    Value::Integer(i64::from(state.foreign)),
                ],
            )
            .map(drop)
        })?;
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.insert(collection.to_owned(), Some(state));
        Ok(())
    }
}

fn load_state(conn: &dyn Connection, collection: &str) -> Result<Option<ShardState>> {
    let mut out = None;
    conn.query(
        &format!("SELECT \"shard\", \"ring\", \"foreign\" FROM {SHARD_STATE} WHERE \"collection\" = ?1"),
        &[Value::Text(collection.to_owned())],
        &mut |row| {
            let (ValueRef::Integer(shard), ValueRef::Text(ring)) = (row.get(0)?, row.get(1)?) else {
                return Err(Error::corrupted(collection, None, "the shard state row has unexpected types"));
            };
            let ring: HashRing = serde_json::from_str(ring)
                .map_err(|e| Error::corrupted(collection, None, format!("the shard state's ring: {e}")))?;
            let shard = u32::try_from(shard)
                .map_err(|_| Error::corrupted(collection, None, format!("shard id {shard} out of range")))?;
            let foreign = matches!(row.get(2)?, ValueRef::Integer(n) if n != 0);
            out = Some(ShardState { shard: ShardId::new(shard), ring, foreign });
            Ok(())
        },
    )?;
    Ok(out)
}

fn err_reply(error: WireError) -> ShardReply {
    ShardReply::Err { error }
}

fn ok_null() -> ShardReply {
    ShardReply::Ok { result: null_raw() }
}

fn null_raw() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// One collection's operations.
trait Handler: Send + Sync {
    fn handle(&self, db: &Db, state: &ShardState, op: ShardOp, ops_per_sec: f64) -> Result<Box<RawValue>>;
}

struct Typed<T>(PhantomData<fn() -> T>);

/// An id as it came over the wire; its type is checked where it is bound.
struct WireId(Value);

impl<I: DocumentId> IdArg<I> for WireId {
    fn id_value(&self) -> std::result::Result<Value, ValueError> {
        Ok(self.0.clone())
    }
}

impl<T: Partitioned> Typed<T> {
    fn name() -> &'static str {
        T::schema().collection()
    }

    fn doc(raw: &RawValue) -> Result<T> {
        serde_json::from_str(raw.get()).map_err(|e| Error::serialization(Self::name(), None, e))
    }

    /// Refuses a key that does not route to this shard under its ring.
    fn check_key(state: &ShardState, key: &Value) -> Result<()> {
        if state.owns(key) {
            return Ok(());
        }
        let other = state.ring.shard_for_value(key);
        Err(Error::CrossShard {
            collection: Self::name().to_owned(),
            shard: state.shard.get(),
            other: other.get(),
            key: crate::store::codec::id_text(key),
        })
    }

    fn check_doc(state: &ShardState, doc: &T) -> Result<()> {
        match partition_key_of(doc)? {
            Some(key) => Self::check_key(state, &key),
            None => Err(Error::invalid_value(Self::name(), "partition key", "the document has no partition key")),
        }
    }

    /// The documents of `docs` whose partition key routes to this shard.
    fn own(state: &ShardState, docs: Vec<T>) -> Result<Vec<T>> {
        let mut kept = Vec::with_capacity(docs.len());
        for doc in docs {
            if partition_key_of(&doc)?.is_some_and(|k| state.owns(&k)) {
                kept.push(doc);
            }
        }
        Ok(kept)
    }

    /// Up to `limit` documents after id `after`, of those whose key hashes into `ranges`, with
    /// the last id scanned and whether the scan is at the end.
    #[allow(clippy::type_complexity)]
    fn scan(
        c: &Collection<T>,
        ranges: &[MovedRange],
        after: Option<super::protocol::WireValue>,
        limit: usize,
    ) -> Result<(Vec<(Value, T)>, Option<super::protocol::WireValue>, bool)> {
        let limit = limit.clamp(1, MAX_SCAN);
        let after = after.map(Value::from);
        let page = c.page_by_id(after.as_ref(), limit)?;
        let mut done = page.len() < limit;
        let mut next = page.last().map(|(id, _)| id.into()).or(after.as_ref().map(Into::into));
        let mut moving = Vec::new();
        let mut bytes = 0usize;
        let scanned = page.len();
        for (i, (id, doc)) in page.into_iter().enumerate() {
            let Some(key) = partition_key_of(&doc)? else { continue };
            let hash = key_hash(&partition_key_bytes(&key));
            if ranges.iter().any(|r| r.contains(hash)) {
                bytes += serde_json::to_string(&doc).map_or(0, |j| j.len());
                let last = (&id).into();
                moving.push((id, doc));
                // A reply of at most about MAX_SCAN_BYTES (and one document): the next call
                // goes on after the last document taken.
                if bytes >= MAX_SCAN_BYTES && i + 1 < scanned {
                    next = Some(last);
                    done = false;
                    break;
                }
            }
        }
        Ok((moving, next, done))
    }

    fn field(name: &str) -> Result<usize> {
        T::schema()
            .fields()
            .iter()
            .position(|f| f.name() == name)
            .ok_or_else(|| Error::invalid_query(Self::name(), format!("no field {name:?} in this collection")))
    }

    /// What a search of `T` runs over, and `query` parsed for it.
    fn search_target(query: &str) -> Result<(global::Target<'static>, global::Prepared)> {
        let target = global::target_of::<T>();
        if target.fields.is_empty() {
            return Err(Error::invalid_query(
                Self::name(),
                format!("`{}` has no `#[fts]` field to search", T::schema().type_name()),
            ));
        }
        let prepared = global::prepare(&target, query)?;
        Ok((target, prepared))
    }

    fn filters(filters: Vec<Vec<super::protocol::WireNode>>) -> Result<Vec<Filter<T>>> {
        filters.into_iter().map(|nodes| Ok(Filter::new(decode_expr(T::schema(), nodes)?))).collect()
    }

    fn query<'c>(
        c: &'c Collection<T>,
        filters: Vec<Filter<T>>,
        order: &[super::protocol::WireOrder],
    ) -> Result<crate::query::Query<'c, T>> {
        let mut q = c.query();
        for f in filters {
            q = q.filter(f);
        }
        for o in order {
            let field = Field::<T, ()>::__new(Self::field(&o.field)?);
            let order: Order<T> = if o.descending { field.desc() } else { field.asc() };
            q = q.order_by(order);
        }
        if order.is_empty() {
            // As one database answers a query without an order: by id.
            let id = T::schema().fields().iter().position(|f| f.is_id()).unwrap_or(0);
            q = q.order_by(Field::<T, ()>::__new(id).asc());
        }
        Ok(q)
    }
}

impl<T: Partitioned> Typed<T> {
    /// A page of the change stream of the documents under `partition` (see
    /// [`ShardOp::Stream`]).
    fn stream(db: &Db, after: u64, limit: usize, partition: WireValue) -> Result<StreamPage> {
        let name = Self::name();
        let Some(pk) = T::schema().partition_key_field() else {
            return Err(Error::invalid_query(name, "a change stream needs a #[partition_key]"));
        };
        let key: Value = partition.into();
        let mut page = StreamPage { events: Vec::new(), next: after, last_lsn: db.last_lsn()?.get(), unattributed: 0 };
        for (scanned, event) in db.changes_since(crate::lsn::Lsn::new(after))?.enumerate() {
            if scanned >= MAX_STREAM_SCAN || page.events.len() >= limit {
                break;
            }
            let event = event?;
            page.next = event.lsn.get();
            if event.collection != name {
                continue;
            }
            // The document's image names its partition. A delete has one only with before
            // images (`DbOptions::before_images`, `#[db4(changes = "full")]`); without, it
            // cannot be told apart from another partition's and is left out, counted.
            let Some(doc) = event.after.as_deref().or(event.before.as_deref()) else {
                page.unattributed += 1;
                continue;
            };
            let fields = DocFields::parse(doc).map_err(|e| Error::serialization(name, None, e))?;
            if fields.value(pk.key()) == key {
                page.events.push(WireChange::from(&event));
            }
        }
        Ok(page)
    }
}

impl<T: Partitioned> Handler for Typed<T> {
    fn handle(&self, db: &Db, state: &ShardState, op: ShardOp, ops_per_sec: f64) -> Result<Box<RawValue>> {
        let name = Self::name();
        let c = db.collection::<T>()?;
        match op {
            ShardOp::Insert { doc } => {
                let doc = Self::doc(&doc)?;
                Self::check_doc(state, &doc)?;
                c.insert(&doc)?;
                Ok(null_raw())
            }
            ShardOp::InsertMany { docs } => {
                let docs = docs.iter().map(|d| Self::doc(d)).collect::<Result<Vec<T>>>()?;
                for doc in &docs {
                    Self::check_doc(state, doc)?;
                }
                c.insert_many(&docs)?;
                to_raw(name, &docs.len())
            }
            ShardOp::Update { doc } => {
                let doc = Self::doc(&doc)?;
                Self::check_doc(state, &doc)?;
                to_raw(name, &c.update(&doc)?)
            }
            ShardOp::Upsert { doc } => {
                let doc = Self::doc(&doc)?;
                Self::check_doc(state, &doc)?;
                c.upsert(&doc)?;
                Ok(null_raw())
            }
            // A document answers only to its own partition key: another key routed to the
            // same shard finds nothing, as it would on a shard of its own.
            ShardOp::Get { key, id } => {
                let key = Value::from(key);
                Self::check_key(state, &key)?;
                to_raw(name, &get_under(&c, &id.into(), &key)?)
            }
            ShardOp::Delete { key, id } => {
                let (key, id) = (Value::from(key), Value::from(id));
                Self::check_key(state, &key)?;
                let deleted = db.transaction(|tx| {
                    let c = tx.collection::<T>()?;
                    match get_under(&c, &id, &key)? {
                        Some(_) => c.delete(WireId(id.clone())),
                        None => Ok(false),
                    }
                })?;
                to_raw(name, &deleted)
            }
            ShardOp::Increment { key, id, field, delta } => {
                let (key, id) = (Value::from(key), Value::from(id));
                Self::check_key(state, &key)?;
                let index = Self::field(&field)?;
                db.transaction(|tx| {
                    let c = tx.collection::<T>()?;
                    require_under(&c, &id, &key)?;
                    let id = WireId(id.clone());
                    if let Some(d) = delta.as_i64() {
                        to_raw(name, &c.increment(id, Field::<T, i64>::__new(index), d)?)
                    } else if let Some(d) = delta.as_u64() {
                        to_raw(name, &c.increment(id, Field::<T, u64>::__new(index), d)?)
                    } else if let Some(d) = delta.as_f64() {
                        to_raw(name, &c.increment(id, Field::<T, f64>::__new(index), d)?)
                    } else {
                        Err(Error::invalid_value(name, &field, format!("the delta {delta} is not a number")))
                    }
                })
            }
            ShardOp::CompareAndSwap { key, id, field, expected, new } => {
                let (key, id) = (Value::from(key), Value::from(id));
                Self::check_key(state, &key)?;
                let f = Field::<T, serde_json::Value>::__new(Self::field(&field)?);
                db.transaction(|tx| {
                    let c = tx.collection::<T>()?;
                    require_under(&c, &id, &key)?;
                    let r = c.compare_and_swap(WireId(id.clone()), f, expected, new)?;
                    to_raw(name, &serde_json::json!({ "swapped": r.swapped, "current": r.current }))
                })
            }
            ShardOp::Query { filters, order, offset, limit } => {
                let q = Self::query(&c, Self::filters(filters)?, &order)?;
                if state.foreign {
                    // Moved copies are still here: read everything, keep this shard's own.
                    let docs = Self::own(state, q.all()?)?;
                    let page: Vec<T> = docs.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
                    return to_raw(name, &page);
                }
                let mut q = q.offset(offset);
                if let Some(n) = limit {
                    q = q.limit(n);
                }
                to_raw(name, &q.all()?)
            }
            ShardOp::Count { filters } => {
                let q = Self::query(&c, Self::filters(filters)?, &[])?;
                if state.foreign {
                    return to_raw(name, &Self::own(state, q.all()?)?.len());
                }
                to_raw(name, &q.count()?)
            }
            ShardOp::ScanMoving { ranges, after, limit } => {
                let (docs, next, done) = Self::scan(&c, &ranges, after, limit)?;
                let docs = docs.into_iter().map(|(_, d)| to_raw(name, &d)).collect::<Result<Vec<_>>>()?;
                to_raw(name, &ScanPage { docs, deleted: 0, next, done })
            }
            ShardOp::PutMany { docs } => {
                let docs = docs.iter().map(|d| Self::doc(d)).collect::<Result<Vec<T>>>()?;
                for doc in &docs {
                    Self::check_doc(state, doc)?;
                }
                to_raw(name, &c.put_many(&docs)?)
            }
            ShardOp::ApplyChanges { events } => {
                let n = events.len();
                db.transaction(|tx| {
                    let c = tx.collection::<T>()?;
                    for event in &events {
                        let doc = match event.op.as_str() {
                            "archive" | "restore" => continue,
                            "delete" => None,
                            _ => match &event.after {
                                Some(json) => Some(
                                    serde_json::from_str::<T>(json).map_err(|e| Error::serialization(name, None, e))?,
                                ),
                                None => None,
                            },
                        };
                        let owned = match &doc {
                            Some(d) => partition_key_of(d)?.is_some_and(|k| state.owns(&k)),
                            None => false,
                        };
                        match doc {
                            Some(mut d) if owned => {
                                if let Some(v) = event.version {
                                    d.set_version(v);
                                }
                                c.put_many([&d])?;
                            }
                            _ => {
                                c.delete_keys(&[Value::from(event.id.clone())])?;
                            }
                        }
                    }
                    Ok(())
                })?;
                to_raw(name, &n)
            }
            ShardOp::CleanMoving { ranges, after, limit } => {
                let (docs, next, done) = Self::scan(&c, &ranges, after, limit)?;
                let ids: Vec<Value> = docs.into_iter().map(|(id, _)| id).collect();
                let deleted = c.delete_keys(&ids)?;
                to_raw(name, &ScanPage { docs: Vec::new(), deleted, next, done })
            }
            ShardOp::FinishClean => Err(Error::migration_state("finish_clean is answered before the collection")),
            ShardOp::Changes { after, limit } => {
                let mut out = Vec::new();
                for event in db.changes_since(crate::lsn::Lsn::new(after))? {
                    if out.len() >= limit {
                        break;
                    }
                    let event = event?;
                    if event.collection == name {
                        out.push(WireChange::from(&event));
                    }
                }
                to_raw(name, &out)
            }
            ShardOp::Stream { after, limit, partition } => to_raw(name, &Self::stream(db, after, limit, partition)?),
            ShardOp::Stats => {
                let stats = WireStats {
                    documents: c.count()?,
                    bytes: c.stored_bytes()?,
                    last_lsn: db.last_lsn()?.get(),
                    ops_per_sec,
                    database_bytes: db.database_bytes()?,
                };
                to_raw(name, &stats)
            }
            ShardOp::SearchPart { query, filters } => {
                if state.foreign {
                    return Err(Error::migration_state(
                        "a search waits for the split's cleanup: this shard still holds copies of moved documents",
                    ));
                }
                let (target, prepared) = Self::search_target(&query)?;
                let exprs = filters
                    .map(|f| Self::filters(f).map(|fs| fs.into_iter().map(|f| f.expr).collect::<Vec<_>>()))
                    .transpose()?;
                let (stats, found) = global::part(&c, &target, &prepared, exprs.as_deref())?;
                let matches = found
                    .into_iter()
                    .map(|m| WireMatch { rowid: m.rowid, id: (&m.id).into(), length: m.length, hits: m.hits })
                    .collect();
                let part =
                    SearchPart { rows: stats.rows, tokens: stats.tokens, phrase_rows: stats.phrase_rows, matches };
                to_raw(name, &part)
            }
            ShardOp::SearchPage { query, highlight, snippet, ellipsis, wanted } => {
                let (target, prepared) = Self::search_target(&query)?;
                let options = global::Options { highlight, snippet, ellipsis, ..global::Options::default() };
                options.check(name)?;
                let wanted: Vec<(i64, Value)> = wanted.into_iter().map(|(r, id)| (r, id.into())).collect();
                let hits = global::page_of(&c, &target, &prepared, &options, &wanted)?
                    .into_iter()
                    .map(|(rowid, hit)| {
                        Ok(WireHit {
                            rowid,
                            doc: to_raw(name, &hit.doc)?,
                            highlights: hit.highlights.into_iter().map(|(f, t)| (f.to_owned(), t)).collect(),
                            snippet: hit.snippet,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                to_raw(name, &hits)
            }
            ShardOp::RangeRows { index, prefix, lower, upper, descending, filters, position, limit } => {
                let filters: Vec<_> = Self::filters(filters)?.into_iter().map(|f| f.expr).collect();
                let mut spec = Spec::default();
                spec.prefix = prefix.into_iter().map(Value::from).collect();
                spec.lower = lower.into();
                spec.upper = upper.into();
                spec.descending = descending;
                spec.limit = limit.max(1);
                let (rows, more) = Self::range_rows(&c, state, &index, spec, filters, position.into(), limit)?;
                let rows = rows
                    .into_iter()
                    .map(|(doc, key)| Ok((to_raw(name, &doc)?, key.iter().map(WireValue::from).collect())))
                    .collect::<Result<Vec<_>>>()?;
                to_raw(name, &RangeRows { rows, more })
            }
            ShardOp::CursorSecret => to_raw(name, &db.cursor_key().to_hex()),
            ShardOp::Assign { .. } => Err(Error::migration_state("assign is answered before the collection")),
        }
    }
}

impl<T: Partitioned> Typed<T> {
    /// A range's first `limit` rows on this shard at `position`, with their scan keys, and
    /// whether more follow; while the shard holds moved copies, only its own documents.
    fn range_rows(
        c: &Collection<T>,
        state: &ShardState,
        index: &str,
        spec: Spec,
        filters: Vec<crate::query::filter::Expr>,
        position: Position,
        limit: usize,
    ) -> Result<KeyedRows<T>> {
        let name = Self::name();
        if !(1..=MAX_RANGE_ROWS).contains(&limit) {
            return Err(Error::invalid_query(
                name,
                format!("a shard answers 1 to {MAX_RANGE_ROWS} range rows, not {limit}"),
            ));
        }
        let schema = T::schema();
        let keys = match index.split_once(':') {
            Some(("field", field)) => match schema.fields().iter().position(|f| f.name() == field) {
                Some(at) => field_index_keys(schema, at),
                None => Err(format!("no field {field:?} in this collection")),
            },
            Some(("index", index)) => named_index_keys(schema, index),
            _ => Err(format!("{index:?} does not name an index (`field:<name>` or `index:<name>`)")),
        }
        .map_err(|e| Error::invalid_query(name, e))?;
        check_prefix(name, &keys, spec.prefix.len())?;
        let expected = keys.keys.len() - spec.prefix.len() + 1;
        if let Position::After(key, _) | Position::Before(key, _) = &position
            && key.len() != expected
        {
            return Err(Error::invalid_cursor(format!("its key holds {} values, not {expected}", key.len())));
        }
        check_cursor_id(&position, <T::Id as crate::schema::DocumentId>::KIND)?;
        let range = c.range_of::<AnyValue>(Ok(keys.clone()), spec, filters);
        if !state.foreign {
            return range.rows(&keys, &position, limit, true);
        }
        // Moved copies are still here: only this shard's own documents count.
        range.rows_kept(&keys, &position, limit, |doc| Ok(partition_key_of(doc)?.is_some_and(|k| state.owns(&k))))
    }
}

/// Keeps each collection's [`ShardMap`] (the ring, its epoch and a split in progress): the
/// coordinator object's side of the protocol.
pub struct CoordinatorServer {
    db: Db,
}

impl std::fmt::Debug for CoordinatorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorServer").finish_non_exhaustive()
    }
}

impl CoordinatorServer {
    /// A coordinator over `db`.
    ///
    /// # Errors
    ///
    /// A backend error if its table cannot be created.
    pub fn new(db: Db) -> Result<Self> {
        run(db.backend(), Access::Write, |conn| {
            conn.execute_ddl(&format!(
                "CREATE TABLE IF NOT EXISTS {SHARD_MAPS} (\"collection\" TEXT PRIMARY KEY NOT NULL, \
                 \"epoch\" INTEGER NOT NULL, \"map\" TEXT NOT NULL)"
            ))
        })?;
        Ok(Self { db })
    }

    /// Answers one [`CoordinatorOp`] (JSON bytes) with a [`ShardReply`] (JSON bytes).
    pub fn handle(&self, body: &[u8]) -> Vec<u8> {
        let reply = match serde_json::from_slice::<CoordinatorOp>(body) {
            Ok(op) => match self.answer(op) {
                Ok(result) => ShardReply::Ok { result },
                Err(e) => err_reply((&e).into()),
            },
            Err(e) => err_reply(WireError::Protocol { reason: format!("not a coordinator request: {e}") }),
        };
        serde_json::to_vec(&reply).unwrap_or_default()
    }

    fn answer(&self, op: CoordinatorOp) -> Result<Box<RawValue>> {
        match op {
            CoordinatorOp::Load { collection } => {
                let text = run(self.db.backend(), Access::Read, |conn| load_map(conn, &collection))?;
                raw_text(&collection, text)
            }
            CoordinatorOp::Init { map } => {
                let collection = map.collection.clone();
                let text = to_text(&map)?;
                let stored = run(self.db.backend(), Access::Write, |conn| {
                    conn.execute(
                        &format!(
                            "INSERT INTO {SHARD_MAPS} (\"collection\", \"epoch\", \"map\") VALUES (?1, ?2, ?3) \
                             ON CONFLICT (\"collection\") DO NOTHING"
                        ),
                        &[Value::Text(collection.clone()), epoch_value(&map), Value::Text(text.clone())],
                    )?;
                    load_map(conn, &collection)
                })?;
                raw_text(&collection, stored)
            }
            CoordinatorOp::Store { expected, map } => {
                let collection = map.collection.clone();
                let text = to_text(&map)?;
                let expected = i64::try_from(expected).unwrap_or(i64::MAX);
                let changed = run(self.db.backend(), Access::Write, |conn| {
                    conn.execute(
                        &format!(
                            "UPDATE {SHARD_MAPS} SET \"epoch\" = ?2, \"map\" = ?3 WHERE \"collection\" = ?1 \
                             AND \"epoch\" = ?4"
                        ),
                        &[
                            Value::Text(collection.clone()),
                            epoch_value(&map),
                            Value::Text(text.clone()),
                            Value::Integer(expected),
                        ],
                    )
                })?;
                if changed != 1 {
                    return Err(Error::migration_state(format!(
                        "the shard map of {collection:?} is no longer at epoch {expected}: reload it"
                    )));
                }
                Ok(null_raw())
            }
        }
    }
}

fn epoch_value(map: &ShardMap) -> Value {
    Value::Integer(i64::try_from(map.ring.epoch()).unwrap_or(i64::MAX))
}

fn to_text(map: &ShardMap) -> Result<String> {
    serde_json::to_string(map).map_err(|e| Error::serialization(&map.collection, None, e))
}

fn load_map(conn: &dyn Connection, collection: &str) -> Result<Option<String>> {
    let mut out = None;
    conn.query(
        &format!("SELECT \"map\" FROM {SHARD_MAPS} WHERE \"collection\" = ?1"),
        &[Value::Text(collection.to_owned())],
        &mut |row| {
            let ValueRef::Text(t) = row.get(0)? else {
                return Err(Error::corrupted(collection, None, "a stored shard map is not text"));
            };
            out = Some(t.to_owned());
            Ok(())
        },
    )?;
    Ok(out)
}

fn raw_text(collection: &str, text: Option<String>) -> Result<Box<RawValue>> {
    match text {
        Some(t) => RawValue::from_string(t)
            .map_err(|e| Error::corrupted(collection, None, format!("a stored shard map is not JSON: {e}"))),
        None => Ok(null_raw()),
    }
}
