#![doc = include_str!("../../README.md")]

// The facade names every public item it re-exports, so that a new item in the engine becomes
// public here only by a decision: the core at the root, each capability in its own module.

/// The derive macro; it shares the trait's name.
pub use db4_derive::Document;

// The core: databases, collections, queries, transactions, errors.
pub use db4_runtime::{
    CasResult, Change, ChangeKind, Collection, CollectionStats, DEFAULT_MAX_DOCUMENT_BYTES, Db, DbOptions, DbStats,
    Error, Field, Filter, IsolationLevel, MigrationReport, Order, Query, Result, RetryPolicy, Scope, Transaction,
    TransactionOptions, TxCollection, is_retryable, with_optimistic_lock,
};
// Ranges over ordered indexes, with keyset cursors.
pub use db4_runtime::{Cursor, Page, Range};
// Documents and their schemas (what `#[derive(Document)]` implements and builds).
/// The sharded router, also in [`shard`].
#[cfg(all(feature = "sqlite", feature = "fs"))]
pub use db4_runtime::shard::{ShardRouter, ShardRouterConfig};
pub use db4_runtime::{
    Document, DocumentId, FieldDef, FtsText, IdArg, IdKind, IndexDef, IndexField, IndexKind, Numeric, OptionField,
    Ordered, Partitioned, QueryValue, Schema, TextField, Tokenizer, VersionValue,
};
// Values as SQLite stores them.
pub use db4_runtime::{Value, ValueError, ValueRef, to_value};
// The storage seam and its backends.
#[cfg(feature = "cloudflare")]
pub use db4_runtime::DurableBackend;
pub use db4_runtime::{Access, Backend, BackendError, BackendErrorKind, Connection, HeldTransaction, Row};
#[cfg(feature = "sqlite")]
pub use db4_runtime::{SqliteBackend, SqliteOptions, Synchronous};
// The change log (change-data capture).
#[cfg(not(target_arch = "wasm32"))]
pub use db4_runtime::ChangeStream;
pub use db4_runtime::{
    ChangeEvent, ChangeLogStats, ChangeOp, ChangeRetention, ChangesSince, Consumer, ConsumerInfo, Lsn,
};
// Bin-packed batch storage.
pub use db4_runtime::{
    BATCH_ENTRY_OVERHEAD, BatchOptions, BatchStats, BatchStore, CompactionReport, DEFAULT_MAX_BLOB_BYTES, TxBatchStore,
};

/// The storage seam and its backends, also at the crate root.
pub mod backend {
    #[cfg(feature = "cloudflare")]
    pub use db4_runtime::DurableBackend;
    pub use db4_runtime::{Access, Backend, BackendError, BackendErrorKind, Connection, HeldTransaction, Row};
    #[cfg(feature = "sqlite")]
    pub use db4_runtime::{SqliteBackend, SqliteOptions, Synchronous};
}

/// Bin-packed batch storage of many small documents, also at the crate root.
pub mod batch {
    pub use db4_runtime::{
        BATCH_ENTRY_OVERHEAD, BatchOptions, BatchStats, BatchStore, CompactionReport, DEFAULT_MAX_BLOB_BYTES,
        TxBatchStore,
    };
}

/// Change-data capture, also at the crate root: the durable change log every committed write
/// is appended to, in the same transaction ([`Db::changes_since`], [`Db::consumer`],
/// natively [`Db::changes`], [`Db::truncate_changes`]), and [`replay`](cdc::replay) of one
/// database's log into another.
///
/// # Example
///
/// ```
/// use db4::{Db, Document, Lsn};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
/// struct Order { #[id] id: String, total: i64 }
///
/// # fn main() -> db4::Result<()> {
/// let db = Db::open_in_memory()?;
/// let orders = db.collection::<Order>()?;
/// orders.insert(&Order { id: "o1".into(), total: 30 })?;
///
/// for event in db.changes_since(Lsn::ZERO)? {
///     let event = event?;
///     let order: Option<Order> = event.after::<Order>()?;
///     assert_eq!(order.map(|o| o.total), Some(30));
///     assert_eq!(event.to_json()?["op"], "c");
/// }
/// # Ok(()) }
/// ```
pub mod cdc {
    #[cfg(not(target_arch = "wasm32"))]
    pub use db4_runtime::ChangeStream;
    pub use db4_runtime::{
        ChangeEvent, ChangeLogStats, ChangeOp, ChangeRetention, ChangesSince, Consumer, ConsumerInfo, Lsn, replay,
    };
}

/// Full-text search over FTS5: [`Collection::search`] over a collection's `#[fts]` fields,
/// [`FullTextIndex`](fts::FullTextIndex) without the derive, and the query language on its
/// own: [`parse_query`](fts::parse_query) reads what a user typed (`title:rust "web server"
/// wasm* NOT java`) into a [`SearchQuery`](fts::SearchQuery) tree, and
/// [`to_fts5`](fts::to_fts5) renders it as an FTS5 `MATCH` expression in which every term is a
/// quoted string, so no operator can be smuggled through one. See `docs/search.md`.
///
/// # Example
///
/// ```
/// use db4::fts::{QueryNode, parse_query, to_fts5};
///
/// # fn main() -> db4::Result<()> {
/// let query = parse_query("title:rust OR \"web server\" NOT java")?;
/// assert_eq!(to_fts5(&query), r#"title : "rust" OR ("web server" NOT "java")"#);
/// assert_eq!(query.fields(), vec![("title", 0)]);
/// assert!(matches!(query.root(), QueryNode::Or(nodes) if nodes.len() == 2));
///
/// let err = parse_query("NOT java").unwrap_err();
/// assert!(err.to_string().contains("at byte 0: `NOT` needs a term before it"));
/// # Ok(()) }
/// ```
///
/// A search of a collection:
///
/// ```
/// use db4::{Db, Document};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Document, Serialize, Deserialize, Debug, Clone, PartialEq)]
/// struct Article {
///     #[id]
///     id: String,
///     #[fts(weight = 2.0)]
///     title: String,
///     #[fts]
///     body: String,
///     #[index]
///     published: bool,
/// }
///
/// # fn main() -> db4::Result<()> {
/// let db = Db::open_in_memory()?;
/// let articles = db.collection::<Article>()?;
/// articles.insert(&Article { id: "a1".into(), title: "Edge databases".into(), body: "SQLite at the edge".into(), published: true })?;
/// articles.insert(&Article { id: "a2".into(), title: "Gardening".into(), body: "A database of plants".into(), published: true })?;
///
/// let res = articles
///     .search("database")
///     .filter(Article::fields().published.eq(true))
///     .highlight("<em>", "</em>")
///     .snippet(16)
///     .limit(10)
///     .with_total()
///     .run()?;
/// assert_eq!(res.total, Some(2));
/// assert_eq!(res.hits[0].doc.id, "a1"); // the title match weighs twice
/// assert_eq!(res.hits[0].highlights, vec![("title", "Edge <em>databases</em>".to_owned())]);
/// # Ok(()) }
/// ```
pub mod fts {
    pub use db4_runtime::fts::{
        FullTextIndex, Hit, IndexSearch, MAX_FIELD_NAME_BYTES, MAX_QUERY_BYTES, MAX_QUERY_DEPTH, MAX_QUERY_TERMS,
        MAX_SNIPPET_TOKENS, QueryNode, Search, SearchQuery, SearchResults, parse_query, to_fts5,
    };
}

/// Sharding's pure core, usable on its own and the same natively and in a Worker: the
/// consistent-hash [`HashRing`](shard::HashRing) (xxh3, virtual nodes, a modulo mode), the
/// [`RoutingCache`](shard::RoutingCache), hot-shard detection
/// ([`HotTracker`](shard::HotTracker)), [`MigrationPlan`](shard::MigrationPlan)s for
/// lossless splits, and the merging of per-shard query results
/// ([`plan_query`](shard::plan_query), [`merge_sorted`](shard::merge_sorted),
/// [`merge_by_score`](shard::merge_by_score)). No I/O: the clock is passed in, the state
/// serializes. See `docs/sharding.md`.
///
/// # Example
///
/// ```
/// use db4::shard::{HashRing, MigrationPlan};
///
/// # fn main() -> db4::Result<()> {
/// let mut ring = HashRing::new(16, 128)?;
/// let acme = ring.shard_for(b"acme");
/// assert_eq!(ring.shard_for(b"acme"), acme); // the same on every machine
///
/// let (plan, new) = MigrationPlan::add_shard(&ring)?;
/// assert!(plan.ranges().iter().all(|r| r.to == new)); // keys move only to the new shard
/// ring = plan.after().clone();
/// assert_eq!(ring.shards().len(), 17);
/// assert_eq!(ring.epoch(), 1);
/// let moved = ring.shard_for(b"acme");
/// assert!(moved == acme || moved == new);
/// # Ok(()) }
/// ```
///
/// The native router, [`ShardRouter`]: one SQLite database per shard,
/// documents routed by their `#[partition_key]`, queries scattered and merged, splits that
/// lose nothing.
///
/// ```
/// use db4::shard::{ShardRouter, ShardRouterConfig};
/// use db4::{Document, Error};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
/// struct Order { #[id] id: i64, #[partition_key] tenant: String, total: i64 }
///
/// # fn main() -> db4::Result<()> {
/// let orders = ShardRouter::<Order>::in_memory(ShardRouterConfig { shard_count: 4, ..Default::default() })?;
/// for i in 0..40 {
///     orders.insert(&Order { id: i, tenant: format!("t{}", i % 8), total: i * 10 })?;
/// }
/// let t3 = "t3".to_string();
/// assert_eq!(orders.get(&t3, 3)?.map(|o| o.total), Some(30));
/// // Every shard asked, the answers merged: the same page one database would give.
/// let top = orders.query().order_by(Order::fields().total.desc()).limit(3).all()?;
/// assert_eq!(top.iter().map(|o| o.id).collect::<Vec<_>>(), [39, 38, 37]);
/// // A filter on the partition key asks one shard.
/// assert!(orders.plan(&[Order::fields().tenant.eq("t3")])?.is_single_shard());
/// // A transaction holds one shard's keys.
/// let other = (0..8).map(|i| format!("t{i}")).find(|t| orders.shard_for(t).ok() != orders.shard_for(&t3).ok());
/// if let Some(other) = other {
///     let refused = orders.transaction(&t3, |tx| tx.insert(&Order { id: 100, tenant: other, total: 0 }));
///     assert!(matches!(refused, Err(Error::CrossShard { .. })));
/// }
/// // Half of a shard's keys move to a new shard; nothing is lost or doubled.
/// let report = orders.split(orders.shard_for(&t3)?)?;
/// assert_eq!(orders.shards().len(), 5);
/// assert_eq!(orders.query().count()?, 40);
/// assert_eq!(report.epoch, 1);
/// # Ok(()) }
/// ```
pub mod shard {
    pub use db4_runtime::shard::ShardRouterConfig;
    #[cfg(all(feature = "sqlite", feature = "fs"))]
    pub use db4_runtime::shard::{
        AUTO_SPLIT_EVERY, DirTransport, MemoryTransport, ShardInfo, ShardQuery, ShardRange, ShardRouter, ShardSearch,
        ShardTransaction, ShardTransport, SplitReport,
    };
    pub use db4_runtime::shard::{
        CacheStats, HashRing, HotConfig, HotTracker, KeyLoad, MAX_RING_POINTS, MAX_SHARDS, MigrationPlan,
        MigrationStep, MovedRange, Placement, PlanReason, QueryPlan, RoutingCache, ShardId, ShardLoad, SourceProgress,
        SpaceSaving, VirtualNode, hash_to_i64, key_hash, kmerge_by, merge_by_score, merge_sorted, partition_key_bytes,
        partition_key_of, pinned_partition_keys, plan_query, shard_fetch_limit,
    };
}

/// A write-ahead log of document changes, usable on its own: [`MemoryWal`](wal::MemoryWal)
/// in memory and, with the `fs` feature (on by default, not on wasm),
/// [`FileWal`](wal::FileWal) in a directory of checksummed segment files that survives
/// crashes. The record format is in `docs/wal.md`.
///
/// The images of a record are `serde_json::Value`s.
///
/// # Example
///
/// ```
/// use db4::wal::{Lsn, MemoryWal, WalConfig, WalRecord};
///
/// # fn main() -> db4::Result<()> {
/// let mut wal = MemoryWal::new(WalConfig::default().max_entries(1_000).checkpoint_interval(100));
/// let lsn = wal.append(WalRecord::delete("users", "u1").version(3).tx_id(7))?;
/// wal.append(WalRecord::commit(7))?;
///
/// let mut ops = Vec::new();
/// wal.replay(Lsn::ZERO, |entry| {
///     ops.push((entry.lsn, entry.record.op));
///     Ok(())
/// })?
/// .into_result()?;
/// assert_eq!(ops.len(), 2);
/// assert_eq!(ops[0].0, lsn);
///
/// let checkpoint = wal.checkpoint();
/// wal.truncate(checkpoint);
/// assert_eq!(wal.stats().entries, 0);
/// # Ok(()) }
/// ```
pub mod wal {
    /// Applies one database's change log to another (the same function as
    /// [`cdc::replay`](crate::cdc::replay)).
    pub use db4_runtime::replay;
    #[cfg(feature = "fs")]
    pub use db4_runtime::{FileWal, FileWalOptions, RecoveryReport, TornTail};
    pub use db4_runtime::{Lsn, MemoryWal, ReplayReport, StopReason, WalConfig, WalEntry, WalOp, WalRecord, WalStats};
}

/// Range queries over ordered indexes, also at the crate root: [`Collection::range`] over a
/// `#[range_index]` field and [`Collection::range_index`] over a composite index declared with
/// `#[db4(index(name = "...", fields(a, b desc)))]`, keyset pagination with signed
/// [`Cursor`]s and lazy iteration. The order of every type, the cursor format
/// and the limits are in `docs/range.md`.
///
/// # Example
///
/// ```
/// use db4::{Db, Document};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Document, Serialize, Deserialize, Debug)]
/// #[db4(index(name = "by_tenant_created", fields(tenant_id, created_at desc)))]
/// struct Article { #[id] id: String, tenant_id: String, created_at: i64 }
///
/// # fn main() -> db4::Result<()> {
/// let articles = Db::open_in_memory()?.collection::<Article>()?;
/// for i in 0..5 {
///     articles.insert(&Article { id: format!("a{i}"), tenant_id: "acme".into(), created_at: i })?;
/// }
/// // Newest first, two at a time.
/// let newest = articles.range_index("by_tenant_created").prefix("acme").limit(2);
/// let page = newest.fetch()?;
/// assert_eq!(page.items.iter().map(|a| a.created_at).collect::<Vec<_>>(), [4, 3]);
/// let next = db4::Cursor::parse(&page.next.unwrap().to_string())?;
/// let page2 = articles.range_index("by_tenant_created").prefix("acme").after(&next).limit(2).fetch()?;
/// assert_eq!(page2.items.iter().map(|a| a.created_at).collect::<Vec<_>>(), [2, 1]);
///
/// let all: Vec<Article> = articles.range_index("by_tenant_created").prefix("acme").iter(2).collect::<db4::Result<_>>()?;
/// assert_eq!(all.len(), 5);
/// # Ok(()) }
/// ```
pub mod range {
    pub use db4_runtime::{
        AnyValue, Cursor, DEFAULT_PAGE_SIZE, Direction, IndexDef, IndexEntry, IndexField, IndexRange, KeyPrefix,
        KeyType, MAX_CURSOR_CHARS, MAX_RANGE_FIELDS, Page, Range, RangeField, RangeIndex,
    };
}

/// Shards as separate objects behind a versioned wire protocol: [`DurableRouter`](remote::DurableRouter)
/// (the Worker's router), [`ShardServer`](remote::ShardServer) (a shard object's side),
/// [`CoordinatorServer`](remote::CoordinatorServer) (the shard maps) and the
/// [`ShardClient`](remote::ShardClient) seam, with [`LocalShards`](remote::LocalShards) to run
/// them in one process. In a Worker, the `cloudflare` module (feature `cloudflare`) adds
/// the Durable Object client and glue. See `docs/cloudflare.md`.
pub mod remote {
    #[cfg(feature = "sqlite")]
    pub use db4_runtime::remote::LocalShards;
    pub use db4_runtime::remote::protocol;
    pub use db4_runtime::remote::{
        BoxFuture, CoordinatorServer, DurableQuery, DurableRange, DurableRouter, DurableSearch, MAX_IN_FLIGHT,
        MAX_RANGE_PAGE, PROTOCOL_VERSION, ShardClient, ShardMap, ShardServer, SplitTrigger, StreamBatch,
        StreamPosition,
    };
}

/// Storage tiers: hot SQLite tables, a warm in-process cache, a cold object store, and the
/// compaction that moves documents between them. See `docs/tiers.md`.
pub mod tier {
    #[cfg(feature = "fs")]
    pub use db4_runtime::tier::DirStore;
    pub use db4_runtime::tier::{
        AsyncColdStore, ColdStore, ColdTierStats, CompactionPolicy, CompactionReport, DEFAULT_CACHE_BYTES, FlushReport,
        HotTierStats, MemoryStore, ObjectInfo, StagedStats, StagedStore, TierConfig, TierStats, WarmTierStats,
    };
}

/// Sharding on Cloudflare: a Durable Object per shard, routed from the Worker by
/// [`DurableRouter`](cloudflare::DurableRouter) over [`WorkerShards`](cloudflare::WorkerShards);
/// a shard object answers with [`serve_shard`](cloudflare::serve_shard), the coordinator with
/// [`serve_coordinator`](cloudflare::serve_coordinator). See `docs/cloudflare.md`.
#[cfg(feature = "cloudflare")]
pub mod cloudflare {
    pub use db4_runtime::remote::{
        COORDINATOR_NAME, CoordinatorServer, DurableQuery, DurableRange, DurableRouter, DurableSearch, MAX_IN_FLIGHT,
        MAX_RANGE_PAGE, R2Store, ShardClient, ShardServer, SplitTrigger, StreamBatch, StreamPosition, WorkerShards,
        serve_coordinator, serve_shard, shard_object_name,
    };
}

/// Support for code generated by `#[derive(Document)]`. Not a public API.
#[doc(hidden)]
pub use db4_runtime::__private;

/// What a typical user of db4 imports: `use db4::prelude::*;`.
pub mod prelude {
    pub use crate::tier::{CompactionPolicy, TierConfig};
    pub use crate::{
        Collection, Db, DbOptions, Document, Error, Filter, Result, RetryPolicy, Transaction, TransactionOptions,
    };
}
