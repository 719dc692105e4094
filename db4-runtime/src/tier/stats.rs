//! [`Db::tier_stats`]: what each storage tier holds and how the warm tier is doing.

use crate::backend::{Access, run};
use crate::db::Db;
use crate::error::Result;
use crate::schema::quote_ident;
use crate::store::codec::count;
use crate::store::migrate;
use crate::trace;

/// What each storage tier holds, from [`Db::tier_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct TierStats {
    /// The hot tier: the documents in the SQLite tables.
    pub hot: HotTierStats,
    /// The warm tier: the in-process cache of this handle (and its clones).
    pub warm: WarmTierStats,
    /// The cold tier: compacted segments in the object store.
    pub cold: ColdTierStats,
}

/// The hot tier's figures in [`TierStats`]: every collection of the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HotTierStats {
    /// Documents stored in the SQLite tables.
    pub documents: u64,
    /// The length of their stored JSON, as SQLite's `length` counts it (characters; bytes for
    /// ASCII), not counting indexes and SQLite's own overhead.
    pub bytes: u64,
}

/// The warm tier's figures in [`TierStats`], for this handle and its clones since it was
/// opened. All zeros when the warm tier is off
/// ([`TierConfig::warm_bytes`](crate::tier::TierConfig::warm_bytes) `= 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WarmTierStats {
    /// Documents it holds now.
    pub entries: u64,
    /// Bytes it charges for them: each document's stored JSON, its id and a fixed overhead
    /// per entry. Never more than `capacity`.
    pub bytes: u64,
    /// Its budget in bytes ([`TierConfig::warm_bytes`](crate::tier::TierConfig::warm_bytes)).
    pub capacity: u64,
    /// Reads it answered without touching the hot tier.
    pub hits: u64,
    /// Reads it could not answer (the document was not cached, or it could not vouch for
    /// its copy); reads inside transactions do not consult it and count in neither.
    pub misses: u64,
    /// Documents evicted to stay within the budget (not those dropped because they were
    /// written).
    pub evictions: u64,
}

impl WarmTierStats {
    /// The share of reads it answered: `hits / (hits + misses)`, `0.0` before any read.
    pub fn hit_rate(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 { 0.0 } else { self.hits as f64 / reads as f64 }
    }
}

/// The cold tier's figures in [`TierStats`].
///
/// All zeros until the cold tier fills them in (compaction and cold reads come with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ColdTierStats {
    /// Segments in the cold store.
    pub segments: u64,
    /// Documents they hold.
    pub documents: u64,
    /// Their bytes in the store.
    pub bytes: u64,
    /// Reads of the cold store this handle made.
    pub reads: u64,
}

impl Db {
    /// What each storage tier holds: the hot tier's documents and bytes (read from the
    /// database, every collection, each counted by a statement of its own), the warm tier's
    /// contents and hit counts (this handle's), and the cold tier's segments.
    ///
    /// # Errors
    ///
    /// A backend error, or [`Error::Corrupted`](crate::Error::Corrupted) if db4's schema
    /// table holds something other than collection names.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Db, DbOptions};
    /// use db4_runtime::tier::TierConfig;
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize, Clone)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Note { #[id] id: i64, text: String }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = Db::open_in_memory_with(DbOptions::default().tiers(TierConfig { warm_bytes: 1 << 20, ..Default::default() }))?;
    /// let notes = db.collection::<Note>()?;
    /// notes.insert(&Note { id: 1, text: "hi".into() })?;
    /// notes.get(1)?; // a miss, which fills the warm tier
    /// notes.get(1)?; // a hit
    /// let stats = db.tier_stats()?;
    /// assert_eq!((stats.hot.documents, stats.warm.entries, stats.warm.hits, stats.warm.misses), (1, 1, 1, 1));
    /// assert_eq!(stats.warm.hit_rate(), 0.5);
    /// # Ok(()) }
    /// ```
    pub fn tier_stats(&self) -> Result<TierStats> {
        let _span = trace::op("tier_stats", None);
        let hot = run(self.backend(), Access::Read, |conn| {
            let mut hot = HotTierStats::default();
            for name in migrate::collections(conn)? {
                let table = quote_ident(&name);
                hot.documents += count(conn, &name, &format!("SELECT count(*) FROM {table}"), &[])?;
                hot.bytes +=
                    count(conn, &name, &format!("SELECT coalesce(sum(length(\"_doc\")), 0) FROM {table}"), &[])?;
            }
            Ok(hot)
        })?;
        let warm = self.warm().map_or_else(WarmTierStats::default, |tier| {
            let s = tier.snapshot();
            WarmTierStats {
                entries: s.entries,
                bytes: s.bytes,
                capacity: s.capacity,
                hits: s.hits,
                misses: s.misses,
                evictions: s.evictions,
            }
        });
        // The cold tier fills this in (segments, documents, bytes, reads).
        let cold = ColdTierStats::default();
        Ok(TierStats { hot, warm, cold })
    }
}
