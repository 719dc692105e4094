//! The consistent-hash ring: which shard holds a partition key.
//!
//! A key's hash is its xxh3 (64 bits, seed 0). The hash space is a circle of 2^64 points; each
//! shard owns some points (its virtual nodes), and a hash belongs to the virtual node at or
//! after it, wrapping past the largest point to the smallest. In [`Placement::Modulo`] there are
//! no points: a hash belongs to the shard at `hash % shard_count` in the list of shards.
//!
//! Everything here is a pure function of the ring's state, in integer arithmetic only, so a
//! native process and a Worker holding the same ring (built the same way, or shipped with
//! serde) route every key alike.

use crate::error::{Error, Result};
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::fmt;
use xxhash_rust::xxh3::xxh3_64;

/// The size of the hash space, 2^64, as a length.
const SPACE: u128 = 1 << 64;

/// The most points a ring holds (all shards' virtual nodes together): 2^20, 16 MiB of points.
pub const MAX_RING_POINTS: u64 = 1 << 20;

/// The most shards a ring holds.
pub const MAX_SHARDS: u32 = 1 << 16;

/// A shard's number: stable for the shard's life, never reused by its ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(u32);

impl ShardId {
    /// The shard numbered `id` (for reading one back from storage; rings hand them out).
    pub const fn new(id: u32) -> Self {
        Self(id)
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One point of the ring: hashes from the previous point (exclusive) up to `point`
/// (inclusive) belong to `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VirtualNode {
    /// The shard owning the arc ending here.
    pub shard: ShardId,
    /// The point on the circle of 64-bit hashes.
    pub point: u64,
}

/// How a ring places its shards' points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Placement {
    /// Points placed so that every shard owns the same share of the hash space: evenly spaced
    /// at first, then each added shard cuts its share out of the existing arcs in proportion
    /// to how much each shard holds above the new mean, and a removed shard's arcs go to the
    /// shards holding least. Deterministic from the ring's history (the operations that built
    /// it); ship the ring (serde) rather than rebuilding it elsewhere from other operations.
    Balanced,
    /// Each point is the xxh3 of `("db4-vnode", shard, index)`: the classic ring, a pure
    /// function of the shard ids and the number of virtual nodes (until a
    /// [`split_shard`](HashRing::split_shard), which cuts), and as unbalanced as random points
    /// are (see `docs/sharding.md`).
    Hashed,
    /// No points: `hash % shard_count` picks from the shards in id order (the seed's
    /// `enableConsistentHashing: false`). Adding or removing a shard moves most keys.
    Modulo,
}

/// A consistent-hash ring over shards with virtual nodes (or a modulo ring), with an epoch
/// that every change bumps.
///
/// # Example
///
/// ```
/// use db4_runtime::shard::HashRing;
/// # fn main() -> db4_runtime::Result<()> {
/// let mut ring = HashRing::new(16, 128)?;
/// let before = ring.shard_for(b"acme");
/// let added = ring.add_shard()?;
/// let after = ring.shard_for(b"acme");
/// assert!(after == before || after == added); // keys move only to the new shard
/// assert_eq!(ring.epoch(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingData", into = "RingData")]
pub struct HashRing {
    placement: Placement,
    virtual_nodes: u32,
    /// The shards, in id order.
    shards: Vec<ShardId>,
    /// The id the next added shard gets.
    next_shard: u32,
    /// Sorted by point, then shard; empty in modulo placement.
    nodes: Vec<VirtualNode>,
    epoch: u64,
    /// Derived from `nodes`: see [`Slices`].
    slices: Slices,
}

/// A lookup table over the points: the hash space cut into 2^bits equal slices (about as many
/// as points), and for each slice the first point at or after its start, so a lookup reads
/// the table and the one or two points of its slice instead of binary-searching all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slices {
    shift: u32,
    /// `first[i]`: the index of the first point `>= i << shift`; one more entry, the count.
    first: Vec<u32>,
}

impl Slices {
    fn of(nodes: &[VirtualNode]) -> Slices {
        if nodes.is_empty() {
            return Slices::default();
        }
        let bits = (usize::BITS - nodes.len().leading_zeros()).clamp(1, 21);
        let shift = 64 - bits;
        let mut first = Vec::with_capacity((1 << bits) + 1);
        let mut at = 0;
        for slice in 0..1u64 << bits {
            let start = slice << shift;
            while at < nodes.len() && nodes[at].point < start {
                at += 1;
            }
            first.push(at as u32);
        }
        first.push(nodes.len() as u32);
        Slices { shift, first }
    }
}

/// The xxh3 hash of a partition key: the point on the ring it is routed by.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// A hash mapped onto `i64` in the same order (`u64::MIN` to `i64::MIN`), to store and
/// compare hashes in SQLite, whose integers are signed.
pub const fn hash_to_i64(hash: u64) -> i64 {
    (hash ^ (1 << 63)) as i64
}

/// The bytes a partition key's value is hashed as: text as its UTF-8 bytes (so `"acme"` routes
/// as `b"acme"`), integers as decimal text, a float with no fraction that fits `i64` as that
/// integer (SQL compares `1.0` equal to `1`), other floats in Rust's shortest round-trip
/// form, blobs as they are, `None` as no bytes.
///
/// Values equal in SQL get the same bytes, so a filter's `pk.eq(v)` routes where a document
/// with that key is stored. Different values may share bytes (`"5"` and `5`, `""` and `None`):
/// they only share a shard.
pub fn partition_key_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::Null => Vec::new(),
        Value::Integer(i) => i.to_string().into_bytes(),
        Value::Real(r) => {
            // -2^63 <= r < 2^63, both exact as floats.
            if r.fract() == 0.0 && *r >= -9_223_372_036_854_775_808.0 && *r < 9_223_372_036_854_775_808.0 {
                (*r as i64).to_string().into_bytes()
            } else {
                format!("{r:?}").into_bytes()
            }
        }
        Value::Text(s) => s.as_bytes().to_vec(),
        Value::Blob(b) => b.clone(),
    }
}

impl HashRing {
    /// A balanced ring of `shard_count` shards (ids `0..shard_count`) with `virtual_nodes`
    /// points each ([`Placement::Balanced`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShardConfig`] for no shards, no virtual nodes, more than
    /// [`MAX_SHARDS`] shards or more than [`MAX_RING_POINTS`] points in all.
    pub fn new(shard_count: u32, virtual_nodes: u32) -> Result<HashRing> {
        Self::check(shard_count, virtual_nodes)?;
        let mut ring = Self::empty(Placement::Balanced, shard_count, virtual_nodes);
        // `shard_count * virtual_nodes` points evenly spaced from a fixed phase; each run of
        // `shard_count` consecutive points holds every shard once, in an order shuffled per
        // run, so that a removed shard's arcs pass to many different successors.
        let total = u64::from(shard_count) * u64::from(virtual_nodes);
        let phase = u128::from(xxh3_64(b"db4-ring-phase")) % (SPACE / u128::from(total));
        let mut order: Vec<u32> = (0..shard_count).collect();
        ring.nodes.reserve(total as usize);
        for run in 0..u64::from(virtual_nodes) {
            shuffle(&mut order, run);
            for (i, &shard) in order.iter().enumerate() {
                let k = u128::from(run * u64::from(shard_count) + i as u64);
                let point = (phase + k * SPACE / u128::from(total)) as u64;
                ring.nodes.push(VirtualNode { shard: ShardId(shard), point });
            }
        }
        ring.sort_nodes();
        Ok(ring)
    }

    /// A ring of `shard_count` shards whose `virtual_nodes` points each are hashes of the
    /// shard id and point index ([`Placement::Hashed`]).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn hashed(shard_count: u32, virtual_nodes: u32) -> Result<HashRing> {
        Self::check(shard_count, virtual_nodes)?;
        let mut ring = Self::empty(Placement::Hashed, shard_count, virtual_nodes);
        for shard in 0..shard_count {
            ring.push_hashed(ShardId(shard));
        }
        ring.sort_nodes();
        Ok(ring)
    }

    /// A ring routing `hash % shard_count` ([`Placement::Modulo`]).
    ///
    /// Adding a shard moves a key unless its hash gives the same shard modulo both counts
    /// (about `1 / (n + 1)` of the keys stay); removing one renumbers the positions of the
    /// shards after it, so most keys move there too. Use it where the seed's
    /// `enableConsistentHashing: false` is wanted; [`MigrationPlan`](super::MigrationPlan)
    /// handles its moves key by key, as it has no ranges.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShardConfig`] for no shards or more than [`MAX_SHARDS`].
    pub fn modulo(shard_count: u32) -> Result<HashRing> {
        Self::check(shard_count, 1)?;
        Ok(Self::empty(Placement::Modulo, shard_count, 0))
    }

    fn check(shard_count: u32, virtual_nodes: u32) -> Result<()> {
        if shard_count == 0 {
            return Err(Error::invalid_shard_config("a ring needs at least one shard"));
        }
        if virtual_nodes == 0 {
            return Err(Error::invalid_shard_config("a shard needs at least one virtual node"));
        }
        if shard_count > MAX_SHARDS {
            return Err(Error::invalid_shard_config(format!("{shard_count} shards, above the limit of {MAX_SHARDS}")));
        }
        let points = u64::from(shard_count) * u64::from(virtual_nodes);
        if points > MAX_RING_POINTS {
            return Err(Error::invalid_shard_config(format!(
                "{shard_count} shards of {virtual_nodes} virtual nodes are {points} points, above the limit of \
                 {MAX_RING_POINTS}"
            )));
        }
        Ok(())
    }

    fn empty(placement: Placement, shard_count: u32, virtual_nodes: u32) -> HashRing {
        HashRing {
            placement,
            virtual_nodes,
            shards: (0..shard_count).map(ShardId).collect(),
            next_shard: shard_count,
            nodes: Vec::new(),
            epoch: 0,
            slices: Slices::default(),
        }
    }

    fn push_hashed(&mut self, shard: ShardId) {
        for index in 0..self.virtual_nodes {
            let mut seed = [0u8; 17];
            seed[..9].copy_from_slice(b"db4-vnode");
            seed[9..13].copy_from_slice(&shard.0.to_le_bytes());
            seed[13..].copy_from_slice(&index.to_le_bytes());
            self.nodes.push(VirtualNode { shard, point: xxh3_64(&seed) });
        }
    }

    fn sort_nodes(&mut self) {
        self.nodes.sort_unstable_by_key(|n| (n.point, n.shard));
        // Two hashed points of one shard can coincide (a 64-bit collision); one routes alike.
        self.nodes.dedup();
        self.slices = Slices::of(&self.nodes);
    }

    /// The shard holding `key`.
    pub fn shard_for(&self, key: &[u8]) -> ShardId {
        self.shard_for_hash(key_hash(key))
    }

    /// The shard holding keys whose [`key_hash`] is `hash`.
    pub fn shard_for_hash(&self, hash: u64) -> ShardId {
        if self.placement == Placement::Modulo {
            let at = (hash % self.shards.len().max(1) as u64) as usize;
            return self.shards.get(at).copied().unwrap_or(ShardId(0));
        }
        // The first point >= hash lies in the hash's slice, or is the first of the next ones.
        let slice = (hash >> self.slices.shift) as usize;
        let (lo, hi) = match self.slices.first.get(slice..slice + 2) {
            Some(&[lo, hi]) => (lo as usize, hi as usize),
            _ => (0, self.nodes.len()),
        };
        let at = lo + self.nodes.get(lo..hi).map_or(0, |s| s.partition_point(|n| n.point < hash));
        // Past the largest point: wrap to the smallest. (A ring always has a point.)
        self.nodes.get(at).or(self.nodes.first()).map_or(ShardId(0), |n| n.shard)
    }

    /// The shard holding `value` as a partition key (hashed as [`partition_key_bytes`]).
    pub fn shard_for_value(&self, value: &Value) -> ShardId {
        self.shard_for(&partition_key_bytes(value))
    }

    /// The points, sorted by point (then shard); empty for a modulo ring.
    pub fn virtual_nodes(&self) -> &[VirtualNode] {
        &self.nodes
    }

    /// The shards, in id order.
    pub fn shards(&self) -> &[ShardId] {
        &self.shards
    }

    /// Whether the ring holds `shard`.
    pub fn contains(&self, shard: ShardId) -> bool {
        self.shards.binary_search(&shard).is_ok()
    }

    /// How points are placed.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The virtual nodes a shard gets when it is added (0 for a modulo ring). A balanced
    /// ring's shards can hold more after a removal, which hands its arcs to them.
    pub fn virtual_nodes_per_shard(&self) -> u32 {
        self.virtual_nodes
    }

    /// The ring's version: 0 when built, one more after each change. Routing decisions
    /// (cached, or carried in a request) made at an older epoch may be stale.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The share of the hash space each shard owns, as arc lengths summing to 2^64 (for a
    /// modulo ring, the hashes `h` with `h % n` at the shard's position), in shard order.
    pub fn ownership(&self) -> Vec<(ShardId, u128)> {
        let mut out: Vec<(ShardId, u128)> = self.shards.iter().map(|&s| (s, 0)).collect();
        if self.placement == Placement::Modulo {
            let n = self.shards.len() as u128;
            for (i, slot) in out.iter_mut().enumerate() {
                slot.1 = SPACE / n + u128::from((i as u128) < SPACE % n);
            }
            return out;
        }
        for (node, len) in self.nodes.iter().zip(arcs(&self.nodes)) {
            if let Ok(at) = self.shards.binary_search(&node.shard) {
                out[at].1 += len;
            }
        }
        out
    }

    /// Adds a shard with the next unused id and returns it. Keys move only to the new shard:
    /// in a consistent ring its points cut arcs of the others (a balanced ring takes an
    /// equal share, `1 / (n + 1)` of the keys); in a modulo ring see [`modulo`](Self::modulo).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShardConfig`] if the ring would pass [`MAX_SHARDS`] or
    /// [`MAX_RING_POINTS`], or has used up its ids; the ring is unchanged.
    pub fn add_shard(&mut self) -> Result<ShardId> {
        let shard = self.next_id()?;
        match self.placement {
            Placement::Modulo => {}
            Placement::Hashed => {
                self.push_hashed(shard);
                self.sort_nodes();
            }
            Placement::Balanced => {
                let want = SPACE / (self.shards.len() as u128 + 1);
                let loads = self.ownership();
                let gives = water_fill(&loads, want);
                self.cut(shard, &gives);
            }
        }
        self.commit_new(shard);
        Ok(shard)
    }

    /// Adds a shard that takes half of `shard`'s hash space, and only from `shard`: its
    /// points cut `shard`'s largest arcs in half (up to the ring's virtual nodes per shard of
    /// them). This is the split of a hot shard; no other shard's keys move.
    ///
    /// A hashed ring that was split is no longer a pure function of its shard ids: ship it.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownShard`] if the ring does not hold `shard`;
    /// [`Error::InvalidShardConfig`] for a modulo ring (which cannot move one shard's keys
    /// alone), or as [`add_shard`](Self::add_shard). The ring is unchanged.
    pub fn split_shard(&mut self, shard: ShardId) -> Result<ShardId> {
        if !self.contains(shard) {
            return Err(self.unknown(shard));
        }
        if self.placement == Placement::Modulo {
            return Err(Error::invalid_shard_config(
                "a modulo ring cannot split one shard: adding a shard moves keys of every shard",
            ));
        }
        let new = self.next_id()?;
        let load = self.ownership().into_iter().find(|(s, _)| *s == shard).map_or(0, |(_, l)| l);
        self.cut(new, &[(shard, load / 2)]);
        self.commit_new(new);
        Ok(new)
    }

    /// Removes `shard`; only its keys move. In a balanced ring each of its arcs goes to the
    /// shard then holding least (largest arcs first); in a hashed ring to the next point's
    /// shard; in a modulo ring the shards after it shift down a position.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownShard`] if the ring does not hold `shard`,
    /// [`Error::InvalidShardConfig`] if it is the last one; the ring is unchanged.
    pub fn remove_shard(&mut self, shard: ShardId) -> Result<()> {
        let Ok(at) = self.shards.binary_search(&shard) else { return Err(self.unknown(shard)) };
        if self.shards.len() == 1 {
            return Err(Error::invalid_shard_config(format!("shard {shard} is the ring's last shard")));
        }
        if self.placement == Placement::Balanced {
            self.hand_out(shard);
        }
        self.shards.remove(at);
        self.nodes.retain(|n| n.shard != shard);
        self.slices = Slices::of(&self.nodes);
        self.epoch += 1;
        Ok(())
    }

    fn unknown(&self, shard: ShardId) -> Error {
        Error::UnknownShard { shard: shard.0, epoch: self.epoch }
    }

    fn next_id(&self) -> Result<ShardId> {
        if self.shards.len() as u32 >= MAX_SHARDS {
            return Err(Error::invalid_shard_config(format!("the ring holds {MAX_SHARDS} shards, its limit")));
        }
        let points = self.nodes.len() as u64 + u64::from(self.virtual_nodes);
        if self.placement != Placement::Modulo && points > MAX_RING_POINTS {
            return Err(Error::invalid_shard_config(format!(
                "another shard would make {points} points, above the limit of {MAX_RING_POINTS}"
            )));
        }
        if self.next_shard == u32::MAX {
            return Err(Error::invalid_shard_config("the ring has used every shard id"));
        }
        Ok(ShardId(self.next_shard))
    }

    fn commit_new(&mut self, shard: ShardId) {
        self.shards.push(shard);
        self.next_shard = shard.0 + 1;
        self.epoch += 1;
    }

    /// Gives `new` points cutting `amount` of hash space out of each listed shard's arcs,
    /// using at most `virtual_nodes` points, shared among the shards in proportion to the
    /// amounts. Each cut lies strictly inside one arc, so no point repeats and only the
    /// cut parts change owner.
    fn cut(&mut self, new: ShardId, gives: &[(ShardId, u128)]) {
        let total: u128 = gives.iter().map(|g| g.1).sum();
        if total == 0 {
            return;
        }
        let budget = u128::from(self.virtual_nodes);
        // Points per giver: floor of its share, the rest by largest remainder (ties: list order).
        let mut counts: Vec<u128> = gives.iter().map(|g| budget * g.1 / total).collect();
        let mut rest: Vec<(u128, usize)> = gives.iter().enumerate().map(|(i, g)| (budget * g.1 % total, i)).collect();
        rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let left = budget - counts.iter().sum::<u128>();
        for &(_, i) in rest.iter().take(left as usize) {
            counts[i] += 1;
        }
        let lens = arcs(&self.nodes);
        let mut added = Vec::new();
        for (&(giver, amount), &count) in gives.iter().zip(&counts) {
            if count == 0 || amount == 0 {
                continue;
            }
            // The giver's largest arcs (ties: lower point first).
            let mut own: Vec<(u128, u64)> = self
                .nodes
                .iter()
                .zip(&lens)
                .filter(|(n, len)| n.shard == giver && **len > 1)
                .map(|(n, &len)| (len, n.point))
                .collect();
            own.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            own.truncate(count as usize);
            let span: u128 = own.iter().map(|a| a.0).sum();
            if span == 0 {
                continue;
            }
            for &(len, point) in &own {
                // In proportion to the arc, leaving the old point at least one hash. (An
                // amount is at most 2^63 and an arc at most 2^64: the product fits.)
                let take = (amount.min(span) * len / span).min(len - 1);
                if take == 0 {
                    continue;
                }
                // The arc is (point - len, point]; the new point ends its first `take` hashes.
                added.push(VirtualNode { shard: new, point: point.wrapping_sub((len - take) as u64) });
            }
        }
        self.nodes.extend(added);
        self.sort_nodes();
    }

    /// Reassigns `gone`'s points to the shards holding least, largest arcs first.
    fn hand_out(&mut self, gone: ShardId) {
        let lens = arcs(&self.nodes);
        let mut loads: Vec<(u128, ShardId)> =
            self.ownership().into_iter().filter(|(s, _)| *s != gone).map(|(s, l)| (l, s)).collect();
        let mut arcs_out: Vec<(u128, usize)> =
            lens.iter().enumerate().filter(|(i, _)| self.nodes[*i].shard == gone).map(|(i, &l)| (l, i)).collect();
        arcs_out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u128, ShardId)>> =
            loads.drain(..).map(std::cmp::Reverse).collect();
        for (len, i) in arcs_out {
            let Some(std::cmp::Reverse((load, taker))) = heap.pop() else { break };
            self.nodes[i].shard = taker;
            heap.push(std::cmp::Reverse((load + len, taker)));
        }
        self.sort_nodes();
    }
}

/// The arc each point ends: `(previous point, point]`, wrapping for the first; 2^64 for a
/// single point, 0 for a repeated one.
fn arcs(nodes: &[VirtualNode]) -> Vec<u128> {
    let mut out = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        let len = match i.checked_sub(1).map(|p| nodes[p].point) {
            Some(prev) => u128::from(n.point - prev),
            None => match nodes.last() {
                Some(last) if nodes.len() > 1 => u128::from(n.point) + SPACE - u128::from(last.point),
                _ => SPACE,
            },
        };
        out.push(len);
    }
    out
}

/// How much each shard gives so that `want` is taken in all, lowering the largest loads to a
/// common level (water filling): the shards above the level give their excess.
fn water_fill(loads: &[(ShardId, u128)], want: u128) -> Vec<(ShardId, u128)> {
    let mut sorted: Vec<(ShardId, u128)> = loads.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    // Lower the top k to `level`, with sum(top k) - k * level = want, and level >= the next load.
    let mut sum = 0u128;
    let mut level = 0u128;
    let mut k = 0;
    for (i, &(_, load)) in sorted.iter().enumerate() {
        sum += load;
        k = i + 1;
        level = sum.saturating_sub(want) / k as u128;
        let next = sorted.get(i + 1).map_or(0, |s| s.1);
        if level >= next {
            break;
        }
    }
    sorted.truncate(k);
    sorted.into_iter().map(|(s, load)| (s, load.saturating_sub(level))).filter(|g| g.1 > 0).collect()
}

/// Shuffles `order` by a Fisher–Yates driven by xxh3 of the run number: the same everywhere.
fn shuffle(order: &mut [u32], run: u64) {
    for i in (1..order.len()).rev() {
        let mut seed = [0u8; 20];
        seed[..8].copy_from_slice(b"db4-run-");
        seed[8..16].copy_from_slice(&run.to_le_bytes());
        seed[16..].copy_from_slice(&(i as u32).to_le_bytes());
        let j = (xxh3_64(&seed) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// The serialized form of a ring, checked when read back.
#[derive(Serialize, Deserialize)]
struct RingData {
    placement: Placement,
    virtual_nodes: u32,
    shards: Vec<ShardId>,
    next_shard: u32,
    nodes: Vec<VirtualNode>,
    epoch: u64,
}

impl From<HashRing> for RingData {
    fn from(r: HashRing) -> Self {
        RingData {
            placement: r.placement,
            virtual_nodes: r.virtual_nodes,
            shards: r.shards,
            next_shard: r.next_shard,
            nodes: r.nodes,
            epoch: r.epoch,
        }
    }
}

impl TryFrom<RingData> for HashRing {
    type Error = Error;

    fn try_from(d: RingData) -> Result<HashRing> {
        let bad = |what: String| Err(Error::invalid_shard_config(format!("a stored ring is inconsistent: {what}")));
        if d.shards.is_empty() || d.shards.len() > MAX_SHARDS as usize {
            return bad(format!("{} shards", d.shards.len()));
        }
        if d.shards.windows(2).any(|w| w[0] >= w[1]) {
            return bad("shards not in increasing id order".into());
        }
        if d.shards.last().is_some_and(|s| s.0 >= d.next_shard) {
            return bad(format!("next shard id {} is not past every shard", d.next_shard));
        }
        let modulo = d.placement == Placement::Modulo;
        if modulo != d.nodes.is_empty() || modulo != (d.virtual_nodes == 0) {
            return bad("points or virtual nodes do not fit the placement".into());
        }
        if d.nodes.len() as u64 > MAX_RING_POINTS {
            return bad(format!("{} points", d.nodes.len()));
        }
        if d.nodes.windows(2).any(|w| (w[0].point, w[0].shard) >= (w[1].point, w[1].shard)) {
            return bad("points not in increasing order".into());
        }
        let mut owns = vec![false; d.shards.len()];
        for n in &d.nodes {
            match d.shards.binary_search(&n.shard) {
                Ok(at) => owns[at] = true,
                Err(_) => return bad(format!("a point of shard {}, which the ring does not hold", n.shard)),
            }
        }
        if !modulo && owns.contains(&false) {
            return bad("a shard without points".into());
        }
        Ok(HashRing {
            placement: d.placement,
            virtual_nodes: d.virtual_nodes,
            shards: d.shards,
            next_shard: d.next_shard,
            slices: Slices::of(&d.nodes),
            nodes: d.nodes,
            epoch: d.epoch,
        })
    }
}
