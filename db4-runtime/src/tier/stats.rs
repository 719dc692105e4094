//! What [`Db::tier_stats`](crate::Db::tier_stats) reports: what each storage tier holds and
//! how the warm tier is doing. (The method itself is in `db.rs`: it reads the store, a later
//! layer than the tiers.)

/// What each storage tier holds, from [`Db::tier_stats`](crate::Db::tier_stats).
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
    /// The figures of a warm tier at one moment.
    pub(crate) fn of(tier: &crate::tier::warm::WarmTier) -> Self {
        let s = tier.snapshot();
        Self {
            entries: s.entries,
            bytes: s.bytes,
            capacity: s.capacity,
            hits: s.hits,
            misses: s.misses,
            evictions: s.evictions,
        }
    }

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
    /// Reads of the cold store this handle made (point reads that got past the segments' id
    /// ranges and filters, each one ranged get of a block).
    pub reads: u64,
    /// Those reads that found their document.
    pub hits: u64,
}

impl ColdTierStats {
    /// The share of cold reads that found their document (`0.0` before any read).
    pub fn hit_rate(&self) -> f64 {
        if self.reads == 0 { 0.0 } else { self.hits as f64 / self.reads as f64 }
    }
}
