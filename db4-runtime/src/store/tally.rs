//! Counts of committed writes, per collection: what a unit of work wrote ([`Tally`], kept in
//! its [`WriteLog`](crate::store::pipeline::WriteLog)) and what a handle has committed since it
//! was opened ([`Totals`], read by [`Db::stats`](crate::Db::stats)).
//!
//! The pipeline counts each write that changed rows; a savepoint's rollback takes back what it
//! undoes, and a unit of work that does not commit drops its tally. A tally keeps its first
//! collection inline, so a single write, or a transaction on one collection, allocates
//! nothing for it.

use crate::store::change::ChangeKind;
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// Writes by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OpCounts {
    pub inserts: u64,
    pub updates: u64,
    pub upserts: u64,
    pub deletes: u64,
    /// Documents moved between tiers (not writes: not in [`Db::stats`](crate::Db::stats)).
    pub moves: u64,
}

impl OpCounts {
    fn slot(&mut self, kind: ChangeKind) -> &mut u64 {
        match kind {
            ChangeKind::Insert => &mut self.inserts,
            ChangeKind::Update => &mut self.updates,
            ChangeKind::Upsert => &mut self.upserts,
            ChangeKind::Delete => &mut self.deletes,
            ChangeKind::Archive | ChangeKind::Restore => &mut self.moves,
        }
    }

    fn add(&mut self, other: &OpCounts) {
        self.inserts += other.inserts;
        self.updates += other.updates;
        self.upserts += other.upserts;
        self.deletes += other.deletes;
        self.moves += other.moves;
    }

    fn total(&self) -> u64 {
        self.inserts + self.updates + self.upserts + self.deletes
    }
}

/// The writes of one unit of work, by collection.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    first: Option<(&'static str, OpCounts)>,
    more: Vec<(&'static str, OpCounts)>,
}

impl Tally {
    /// Counts `rows` rows written to `collection` as `kind`.
    pub fn add(&mut self, collection: &'static str, kind: ChangeKind, rows: u64) {
        *self.counts(collection).slot(kind) += rows;
    }

    /// Takes back one row counted as `kind` (a savepoint undid it).
    pub fn undo(&mut self, collection: &'static str, kind: ChangeKind) {
        let slot = self.counts(collection).slot(kind);
        debug_assert!(*slot > 0, "an undone {kind:?} of {collection} was never counted");
        *slot = slot.saturating_sub(1);
    }

    /// All rows counted.
    pub fn total(&self) -> u64 {
        self.entries().map(|(_, c)| c.total()).sum()
    }

    fn entries(&self) -> impl Iterator<Item = &(&'static str, OpCounts)> {
        self.first.iter().chain(&self.more)
    }

    fn counts(&mut self, collection: &'static str) -> &mut OpCounts {
        let same = |name: &str| std::ptr::eq(name, collection) || name == collection;
        if self.first.as_ref().is_none_or(|(name, _)| same(name)) {
            return &mut self.first.get_or_insert((collection, OpCounts::default())).1;
        }
        let i = match self.more.iter().position(|(name, _)| same(name)) {
            Some(i) => i,
            None => {
                self.more.push((collection, OpCounts::default()));
                self.more.len() - 1
            }
        };
        &mut self.more[i].1
    }
}

/// What a handle has committed, by collection; shared by its clones.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    committed: Mutex<BTreeMap<&'static str, OpCounts>>,
}

impl Totals {
    /// Adds the tally of a unit of work that has committed.
    pub fn add(&self, tally: &Tally) {
        if tally.first.is_none() {
            return;
        }
        let mut committed = self.committed.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, counts) in tally.entries() {
            committed.entry(name).or_default().add(counts);
        }
    }

    /// The writes committed so far, by collection.
    pub fn snapshot(&self) -> BTreeMap<&'static str, OpCounts> {
        self.committed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
