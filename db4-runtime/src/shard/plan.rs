//! Migration plans: which hashes change shard between two rings, and the steps of moving
//! them, as pure state transitions a router persists and drives (the copying is its I/O).

use super::ring::{HashRing, Placement, ShardId, key_hash};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use serde::{Deserialize, Serialize};

/// Hashes `start..=end` (never wrapping: an arc across 2^64 is two ranges) that move from
/// shard `from` to shard `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MovedRange {
    /// The first hash, inclusive.
    pub start: u64,
    /// The last hash, inclusive.
    pub end: u64,
    /// Where the hashes are before the switch.
    pub from: ShardId,
    /// Where they are after.
    pub to: ShardId,
}

impl MovedRange {
    /// Whether `hash` lies in the range.
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.end
    }
}

/// Where a migration is. Each step is persisted before its work starts, so a restarted router
/// resumes the step it finds:
///
/// `Planned` → `Copying` (each source's documents of the moving hashes are copied, in
/// batches, to their new shard; writes still go to the source) → `CatchingUp` (the sources'
/// change-log events since copying began are applied to the new shards) → `Switched` (the
/// router routes by the new ring: its epoch is newer) → `Cleaned` (the moved documents are
/// deleted from the sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MigrationStep {
    /// Computed, nothing done yet.
    Planned,
    /// Copying documents; progress per source in [`MigrationPlan::sources`].
    Copying,
    /// Replaying the sources' change logs onto the targets.
    CatchingUp,
    /// Routing by the new ring; the sources still hold the moved copies.
    Switched,
    /// Done.
    Cleaned,
}

/// One source shard's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProgress {
    /// The shard documents move out of.
    pub shard: ShardId,
    /// The source's change-log position when copying began: the catch-up replays what came
    /// after it. `None` until [`MigrationPlan::begin_copy`].
    pub start_lsn: Option<Lsn>,
    /// The router's position in the copy (for example the last `(key hash, id)` copied,
    /// encoded as it likes); `None` before the first batch.
    pub cursor: Option<String>,
    /// Every moving document of this source is copied.
    pub copied: bool,
    /// Change-log events up to this position are applied to the targets.
    pub caught_up_to: Option<Lsn>,
}

/// The hashes that change shard between two rings, and the state of moving them.
///
/// For consistent rings the moving hashes are [`ranges`](Self::ranges), so a copier can
/// select documents by the hash of their partition key (stored with
/// [`hash_to_i64`](super::hash_to_i64) for SQLite). Between rings where either is a modulo
/// ring, hashes move one by one and there are no ranges: [`moves`](Self::moves) answers
/// from the rings.
///
/// # Example
///
/// ```
/// use db4_runtime::shard::{HashRing, MigrationPlan, ShardId};
/// # fn main() -> db4_runtime::Result<()> {
/// let ring = HashRing::new(4, 64)?;
/// let (plan, new) = MigrationPlan::split(&ring, ShardId::new(2))?;
/// for key in [&b"a"[..], b"b", b"c"] {
///     match plan.moves_key(key) {
///         Some((from, to)) => assert_eq!((from, to), (ShardId::new(2), new)),
///         None => assert_eq!(ring.shard_for(key), plan.after().shard_for(key)),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PlanData", into = "PlanData")]
pub struct MigrationPlan {
    before: HashRing,
    after: HashRing,
    ranges: Vec<MovedRange>,
    step: MigrationStep,
    sources: Vec<SourceProgress>,
}

impl MigrationPlan {
    /// The plan moving from `before` to `after`.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] if `after`'s epoch is not newer than `before`'s (routers
    /// tell the two apart by it).
    pub fn between(before: &HashRing, after: &HashRing) -> Result<MigrationPlan> {
        if after.epoch() <= before.epoch() {
            return Err(Error::migration_state(format!(
                "the new ring's epoch {} is not newer than the old one's {}",
                after.epoch(),
                before.epoch()
            )));
        }
        let ranges = moved_ranges(before, after);
        let mut sources: Vec<ShardId> = if has_ranges(before, after) {
            ranges.iter().map(|r| r.from).collect()
        } else {
            // Key by key: every shard of the old ring that loses hashes. (Shards both rings
            // hold at other positions lose some; a shard only the old ring has loses all.)
            before.shards().iter().copied().filter(|&s| loses_hashes(before, after, s)).collect()
        };
        sources.sort_unstable();
        sources.dedup();
        Ok(MigrationPlan {
            before: before.clone(),
            after: after.clone(),
            ranges,
            step: MigrationStep::Planned,
            sources: sources
                .into_iter()
                .map(|shard| SourceProgress { shard, start_lsn: None, cursor: None, copied: false, caught_up_to: None })
                .collect(),
        })
    }

    /// The plan adding a shard to `ring` ([`HashRing::add_shard`]), and the new shard.
    ///
    /// # Errors
    ///
    /// As [`HashRing::add_shard`].
    pub fn add_shard(ring: &HashRing) -> Result<(MigrationPlan, ShardId)> {
        let mut after = ring.clone();
        let new = after.add_shard()?;
        Ok((Self::between(ring, &after)?, new))
    }

    /// The plan splitting `shard` of `ring` ([`HashRing::split_shard`]), and the new shard.
    ///
    /// # Errors
    ///
    /// As [`HashRing::split_shard`].
    pub fn split(ring: &HashRing, shard: ShardId) -> Result<(MigrationPlan, ShardId)> {
        let mut after = ring.clone();
        let new = after.split_shard(shard)?;
        Ok((Self::between(ring, &after)?, new))
    }

    /// The plan removing `shard` from `ring` ([`HashRing::remove_shard`]).
    ///
    /// # Errors
    ///
    /// As [`HashRing::remove_shard`].
    pub fn remove_shard(ring: &HashRing, shard: ShardId) -> Result<MigrationPlan> {
        let mut after = ring.clone();
        after.remove_shard(shard)?;
        Self::between(ring, &after)
    }

    /// The ring before the move.
    pub fn before(&self) -> &HashRing {
        &self.before
    }

    /// The ring after the move.
    pub fn after(&self) -> &HashRing {
        &self.after
    }

    /// The ring to route by now: the old one until the step is [`MigrationStep::Switched`].
    pub fn routing_ring(&self) -> &HashRing {
        match self.step {
            MigrationStep::Switched | MigrationStep::Cleaned => &self.after,
            _ => &self.before,
        }
    }

    /// The moving hash ranges, in hash order, adjacent ones with the same shards joined;
    /// empty when a modulo ring is involved (see [`MigrationPlan`]).
    pub fn ranges(&self) -> &[MovedRange] {
        &self.ranges
    }

    /// Whether [`ranges`](Self::ranges) describe every move.
    pub fn has_ranges(&self) -> bool {
        has_ranges(&self.before, &self.after)
    }

    /// The moving ranges out of `shard`.
    pub fn ranges_from(&self, shard: ShardId) -> impl Iterator<Item = &MovedRange> + '_ {
        self.ranges.iter().filter(move |r| r.from == shard)
    }

    /// `(from, to)` if keys hashing to `hash` change shard, `None` if they stay.
    pub fn moves(&self, hash: u64) -> Option<(ShardId, ShardId)> {
        if !self.has_ranges() {
            let (from, to) = (self.before.shard_for_hash(hash), self.after.shard_for_hash(hash));
            return (from != to).then_some((from, to));
        }
        let at = self.ranges.partition_point(|r| r.end < hash);
        self.ranges.get(at).filter(|r| r.contains(hash)).map(|r| (r.from, r.to))
    }

    /// [`moves`](Self::moves) for a partition key's bytes.
    pub fn moves_key(&self, key: &[u8]) -> Option<(ShardId, ShardId)> {
        self.moves(key_hash(key))
    }

    /// The step the migration is at.
    pub fn step(&self) -> MigrationStep {
        self.step
    }

    /// Progress per source shard, in shard order.
    pub fn sources(&self) -> &[SourceProgress] {
        &self.sources
    }

    /// Starts copying: `Planned` → `Copying`, recording each source's change-log position
    /// (read before the first document is copied, so the catch-up misses nothing).
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] if the plan is not `Planned`, or a source has no position
    /// in `start_lsns` (or one that is not a source); the plan is unchanged.
    pub fn begin_copy(&mut self, start_lsns: &[(ShardId, Lsn)]) -> Result<()> {
        self.expect(MigrationStep::Planned, "begin copying")?;
        for &(shard, _) in start_lsns {
            self.source_index(shard)?;
        }
        let mut starts = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            match start_lsns.iter().find(|(shard, _)| *shard == s.shard) {
                Some(&(_, lsn)) => starts.push(lsn),
                None => return Err(Error::migration_state(format!("no change-log position for source {}", s.shard))),
            }
        }
        for (s, lsn) in self.sources.iter_mut().zip(starts) {
            s.start_lsn = Some(lsn);
            s.caught_up_to = Some(lsn);
        }
        self.step = MigrationStep::Copying;
        Ok(())
    }

    /// Records a copied batch of `shard`: the router's position after it.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] unless `Copying` with `shard` a source not yet copied.
    pub fn record_copied(&mut self, shard: ShardId, cursor: String) -> Result<()> {
        self.expect(MigrationStep::Copying, "record a copied batch")?;
        let at = self.source_index(shard)?;
        if self.sources[at].copied {
            return Err(Error::migration_state(format!("source {shard} is already copied")));
        }
        self.sources[at].cursor = Some(cursor);
        Ok(())
    }

    /// Marks `shard`'s copy complete (again: no change).
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] unless `Copying` and `shard` is a source.
    pub fn finish_copy(&mut self, shard: ShardId) -> Result<()> {
        self.expect(MigrationStep::Copying, "finish a copy")?;
        let at = self.source_index(shard)?;
        self.sources[at].copied = true;
        Ok(())
    }

    /// `Copying` → `CatchingUp`, once every source is copied.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] if not `Copying` or a source is not copied.
    pub fn begin_catch_up(&mut self) -> Result<()> {
        self.expect(MigrationStep::Copying, "begin the catch-up")?;
        if let Some(s) = self.sources.iter().find(|s| !s.copied) {
            return Err(Error::migration_state(format!("source {} is not copied yet", s.shard)));
        }
        self.step = MigrationStep::CatchingUp;
        Ok(())
    }

    /// Records that `shard`'s change-log events through `lsn` are applied to the targets.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] unless `CatchingUp`, `shard` is a source, and `lsn` is not
    /// behind the position already recorded.
    pub fn record_caught_up(&mut self, shard: ShardId, lsn: Lsn) -> Result<()> {
        self.expect(MigrationStep::CatchingUp, "record catch-up progress")?;
        let at = self.source_index(shard)?;
        if self.sources[at].caught_up_to.is_some_and(|done| lsn < done) {
            return Err(Error::migration_state(format!(
                "source {shard}: catch-up position {lsn} is behind the recorded {}",
                self.sources[at].caught_up_to.unwrap_or(Lsn::ZERO)
            )));
        }
        self.sources[at].caught_up_to = Some(lsn);
        Ok(())
    }

    /// `CatchingUp` → `Switched`: from now on [`routing_ring`](Self::routing_ring) is the new
    /// ring. The router must have applied every event its sources acknowledged before the
    /// switch (writes to the moving hashes paused, or the last events replayed under the
    /// same lock as the switch); the plan cannot see that.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] if not `CatchingUp`.
    pub fn switch(&mut self) -> Result<&HashRing> {
        self.expect(MigrationStep::CatchingUp, "switch")?;
        self.step = MigrationStep::Switched;
        Ok(&self.after)
    }

    /// `Switched` → `Cleaned`, once the moved documents are deleted from the sources.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] if not `Switched`.
    pub fn finish_cleanup(&mut self) -> Result<()> {
        self.expect(MigrationStep::Switched, "finish the cleanup")?;
        self.step = MigrationStep::Cleaned;
        Ok(())
    }

    fn expect(&self, step: MigrationStep, what: &str) -> Result<()> {
        if self.step == step {
            Ok(())
        } else {
            Err(Error::migration_state(format!("cannot {what} at step {:?} (needs {step:?})", self.step)))
        }
    }

    fn source_index(&self, shard: ShardId) -> Result<usize> {
        self.sources
            .binary_search_by_key(&shard, |s| s.shard)
            .map_err(|_| Error::migration_state(format!("shard {shard} is not a source of this migration")))
    }
}

fn has_ranges(before: &HashRing, after: &HashRing) -> bool {
    before.placement() != Placement::Modulo && after.placement() != Placement::Modulo
}

/// Whether some hash of `shard` in `before` is elsewhere in `after` (modulo rings).
fn loses_hashes(before: &HashRing, after: &HashRing, shard: ShardId) -> bool {
    if !after.contains(shard) {
        return true;
    }
    let (b, a) = (before.shards(), after.shards());
    let (pb, pa) = (b.binary_search(&shard).unwrap_or(0), a.binary_search(&shard).unwrap_or(0));
    // A shard keeps all its hashes only if its position and the shard count are unchanged.
    !(after.placement() == Placement::Modulo
        && before.placement() == Placement::Modulo
        && b.len() == a.len()
        && pb == pa)
}

/// The hash ranges whose shard differs between two consistent rings: between consecutive
/// points of either ring each ring's owner is constant, the owner of the range's last hash.
fn moved_ranges(before: &HashRing, after: &HashRing) -> Vec<MovedRange> {
    if !has_ranges(before, after) {
        return Vec::new();
    }
    let mut bounds: Vec<u64> =
        before.virtual_nodes().iter().chain(after.virtual_nodes()).map(|n| n.point).chain([u64::MAX]).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<MovedRange> = Vec::new();
    let mut start = 0u64;
    for end in bounds {
        let (from, to) = (before.shard_for_hash(end), after.shard_for_hash(end));
        if from != to {
            match out.last_mut() {
                Some(r) if r.from == from && r.to == to && r.end.wrapping_add(1) == start => r.end = end,
                _ => out.push(MovedRange { start, end, from, to }),
            }
        }
        start = end.wrapping_add(1);
    }
    out
}

/// The serialized form of a plan: the ranges are computed again when it is read back.
#[derive(Serialize, Deserialize)]
struct PlanData {
    before: HashRing,
    after: HashRing,
    step: MigrationStep,
    sources: Vec<SourceProgress>,
}

impl From<MigrationPlan> for PlanData {
    fn from(p: MigrationPlan) -> Self {
        PlanData { before: p.before, after: p.after, step: p.step, sources: p.sources }
    }
}

impl TryFrom<PlanData> for MigrationPlan {
    type Error = Error;

    fn try_from(d: PlanData) -> Result<MigrationPlan> {
        let mut plan = MigrationPlan::between(&d.before, &d.after)?;
        let expected: Vec<ShardId> = plan.sources.iter().map(|s| s.shard).collect();
        let stored: Vec<ShardId> = d.sources.iter().map(|s| s.shard).collect();
        if expected != stored {
            return Err(Error::migration_state(format!(
                "a stored plan lists sources {stored:?}, its rings make {expected:?}"
            )));
        }
        let started = d.step != MigrationStep::Planned;
        if d.sources.iter().any(|s| s.start_lsn.is_some() != started) {
            return Err(Error::migration_state("a stored plan's change-log positions do not fit its step"));
        }
        plan.step = d.step;
        plan.sources = d.sources;
        Ok(plan)
    }
}
