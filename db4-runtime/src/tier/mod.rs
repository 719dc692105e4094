//! Storage tiers: hot (the SQLite tables), warm (a bounded in-process cache of documents) and
//! cold (immutable, checksummed segments in an object store), with compaction moving documents
//! from hot to cold and every read falling through hot -> warm -> cold.
//!
//! This module holds the configuration and the seams both backends share: [`TierConfig`] and
//! [`CompactionPolicy`] (given to [`DbOptions::tiers`](crate::DbOptions::tiers)) and the
//! [`ColdStore`] trait an object store implements (a directory natively, R2 on Cloudflare).
//! The tier logic itself is pure (no I/O of its own, builds for wasm32).

mod stats;
pub(crate) mod warm;

pub use stats::{ColdTierStats, HotTierStats, TierStats, WarmTierStats};
pub(crate) mod cold;

#[cfg(feature = "fs")]
pub use cold::DirStore;
pub use cold::{CompactionReport, MemoryStore};
pub use staged::{AsyncColdStore, DEFAULT_CACHE_BYTES, FlushReport, StagedStats, StagedStore};

mod staged;

use crate::error::Result;
use std::fmt;
use std::ops::Range;

/// How a database keeps its storage tiers ([`DbOptions::tiers`](crate::DbOptions::tiers)).
///
/// `Default` is a database without tiers beyond hot: no warm cache, no cold store.
///
/// Not `#[non_exhaustive]`: it is built with a struct literal, as in DESIGN's example.
#[derive(Default)]
pub struct TierConfig {
    /// The warm tier's budget in bytes: decoded documents kept in memory, per database, the
    /// least recently used evicted first. `0` turns the warm tier off.
    pub warm_bytes: usize,
    /// Where compaction puts cold segments; `None` keeps every document hot.
    pub cold: Option<Box<dyn ColdStore>>,
    /// Which documents compaction moves to the cold tier.
    pub policy: CompactionPolicy,
}

impl TierConfig {
    /// A configuration with these parts (the same as the struct literal).
    pub fn new(warm_bytes: usize, cold: Option<Box<dyn ColdStore>>, policy: CompactionPolicy) -> Self {
        Self { warm_bytes, cold, policy }
    }
}

impl fmt::Debug for TierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierConfig")
            .field("warm_bytes", &self.warm_bytes)
            .field("cold", &self.cold.as_ref().map(|c| c.describe()))
            .field("policy", &self.policy)
            .finish()
    }
}

/// Which documents [`Db::compact`](crate::Db::compact) moves from the hot tier to the cold
/// one. Every rule that is set selects documents; a document any rule selects moves.
/// `Default` selects nothing.
///
/// Built with a struct literal, for example
/// `CompactionPolicy { hot_max_documents: Some(10_000), ..Default::default() }`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactionPolicy {
    /// `(field, age)`: documents whose integer `#[range_index]` field `field`, read as a Unix
    /// time in milliseconds, is more than `age` milliseconds before now.
    pub older_than: Option<(&'static str, i64)>,
    /// Keep at most this many documents hot per collection: the excess moves, oldest first
    /// (by the `older_than` field when one is set, else by id).
    pub hot_max_documents: Option<u64>,
    /// Keep at most this many bytes of stored documents hot per collection: the excess moves,
    /// in the same order as for `hot_max_documents`.
    pub hot_max_bytes: Option<u64>,
    /// The low-water mark of every budget, as a fraction in `0.0..=1.0` (clamped; a NaN or
    /// infinite value is ignored, as `None`): a tier that goes over its budget is brought down
    /// to this fraction of it at once, rather than just below the budget, so that the next
    /// write does not push it over again.
    ///
    /// - The warm tier: an insertion that would take it over
    ///   [`TierConfig::warm_bytes`] evicts, least recently used first, down to
    ///   `memory_pressure × warm_bytes`.
    /// - Compaction ([`Db::compact`](crate::Db::compact)): a collection holding more than
    ///   `hot_max_documents` documents keeps `⌊memory_pressure × hot_max_documents⌋` of them
    ///   hot, and one holding more than `hot_max_bytes` bytes keeps at most
    ///   `⌊memory_pressure × hot_max_bytes⌋`; the others move, oldest first. A collection
    ///   within its limits moves nothing on their account. `older_than` is not affected.
    ///
    /// For example `hot_max_documents: Some(10_000), memory_pressure: Some(0.8)`: a compaction
    /// finding 10_001 hot documents moves 2_001 of them, leaving 8_000.
    pub memory_pressure: Option<f64>,
}

/// One object a [`ColdStore`] holds, as [`ColdStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// The object's key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

impl ObjectInfo {
    /// An object of `size` bytes under `key`.
    pub fn new(key: impl Into<String>, size: u64) -> Self {
        Self { key: key.into(), size }
    }
}

/// An object store for the cold tier: immutable objects under text keys.
///
/// db4 writes each object once ([`put`](Self::put) refuses a key that exists) and never
/// changes it; it deletes objects it no longer needs. Keys are made of ASCII letters, digits,
/// `-`, `_`, `.` and `/`, and never start with `/` or contain `..`.
pub trait ColdStore: Send + Sync {
    /// Stores `bytes` under `key`, durably once it returns.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`](crate::Error::Conflict) if `key` exists; an I/O failure as a
    /// backend error.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;

    /// The whole object under `key`, or `None` if there is none.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// The bytes `range` of the object under `key` (clamped to its end), or `None` if there is
    /// no such object.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>>;

    /// The objects whose keys start with `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Removes the object under `key`; removing a missing object is not an error.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn delete(&self, key: &str) -> Result<()>;

    /// A short description for `Debug` output and errors (for example the directory).
    fn describe(&self) -> String {
        "cold store".to_owned()
    }

    /// Whether this store takes its writes later, asynchronously (R2 from a Durable Object):
    /// then compaction does not call [`put`](Self::put) but keeps each new object in the hot
    /// database (table `_db4_cold_pending`, committed with the compaction), reads find it
    /// there until it is uploaded, and [`StagedStore::flush`] uploads it and drops the hot
    /// copy. `false` (the default) for stores whose `put` is durable when it returns.
    fn defers_writes(&self) -> bool {
        false
    }
}
