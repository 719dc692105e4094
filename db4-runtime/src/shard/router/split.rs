//! Splitting a shard: the steps of a [`MigrationPlan`] driven against the shards' databases,
//! the plan persisted in the manifest after each batch, so a restarted router resumes where
//! it stopped (copying and applying events are idempotent: puts and deletes by id).

use super::{Manifest, ShardRouter, lock, read};
use crate::cdc::{ChangeEvent, ChangeOp};
use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::schema::Partitioned;
use crate::shard::config::SplitReport;
use crate::shard::merge::partition_key_of;
use crate::shard::plan::{MigrationPlan, MigrationStep};
use crate::shard::ring::{ShardId, partition_key_bytes};
use crate::value::Value;

/// Documents read per batch when copying and cleaning.
const BATCH: usize = 512;

/// Change-log events applied per target transaction in the catch-up.
const EVENTS_PER_BATCH: usize = 1024;

impl<T: Partitioned> ShardRouter<T> {
    /// Splits `shard`: a new shard takes half of its hash space. The documents of the keys
    /// that move are copied in batches while writes go on (to the source), the source's
    /// change log since the copy began is applied to the new shard, then, with writes held
    /// for the last events only, the routing switches to the new ring (its epoch bumped and
    /// persisted), and the moved documents are deleted from the source. Each step is
    /// persisted first, so after a crash [`open`](Self::open) finishes the split.
    ///
    /// A split that an earlier call or crash left unfinished is finished first.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownShard`] for a shard the ring does not hold,
    /// [`Error::InvalidShardConfig`] for a modulo ring (which cannot split) or a ring at its
    /// limits, a backend error (the split can then be resumed by calling `split` again or
    /// reopening).
    pub fn split(&self, shard: ShardId) -> Result<SplitReport> {
        let _one = lock(&self.inner.migration);
        self.split_locked(shard)
    }

    fn split_locked(&self, shard: ShardId) -> Result<SplitReport> {
        self.drive()?;
        let ring = read(&self.inner.state).ring.clone();
        let (plan, _) = MigrationPlan::split(&ring, shard)?;
        self.save_plan(plan)?;
        Ok(self.drive()?.unwrap_or(SplitReport {
            source: shard,
            new_shard: shard,
            copied: 0,
            caught_up: 0,
            deleted: 0,
            epoch: ring.epoch(),
        }))
    }

    /// Finishes a migration a crash interrupted.
    pub(super) fn resume(&self) -> Result<()> {
        let _one = lock(&self.inner.migration);
        self.drive().map(drop)
    }

    /// Splits the busiest hot shard that a split relieves, if any and no split is running.
    pub(super) fn split_hot(&self) -> Result<Option<SplitReport>> {
        let Ok(_one) = self.inner.migration.try_lock() else { return Ok(None) };
        let loads = lock(&self.inner.hot).snapshot(self.now_ms());
        let busiest = loads
            .iter()
            .filter(|l| l.splittable())
            .max_by(|a, b| a.ops_per_sec.partial_cmp(&b.ops_per_sec).unwrap_or(std::cmp::Ordering::Equal));
        match busiest {
            Some(load) => {
                let shard = load.shard;
                lock(&self.inner.hot).forget(shard);
                self.split_locked(shard).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Stores the manifest with `plan` (the ring unchanged), then makes it the router's.
    fn save_plan(&self, plan: MigrationPlan) -> Result<()> {
        let mut manifest = read(&self.inner.state).clone();
        manifest.plan = Some(plan);
        self.store(&manifest)?;
        *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = manifest;
        Ok(())
    }

    /// Runs the persisted plan's steps to the end; `None` if there was none.
    fn drive(&self) -> Result<Option<SplitReport>> {
        let Some(first) = read(&self.inner.state).plan.clone() else { return Ok(None) };
        let source = first.sources().first().map_or(ShardId::new(0), |s| s.shard);
        let new_shard = targets(&first).first().copied().unwrap_or(source);
        let mut report = SplitReport { source, new_shard, copied: 0, caught_up: 0, deleted: 0, epoch: 0 };
        loop {
            let Some(mut plan) = read(&self.inner.state).plan.clone() else { break };
            match plan.step() {
                MigrationStep::Planned => {
                    let mut starts = Vec::new();
                    for s in plan.sources() {
                        starts.push((s.shard, self.collection(s.shard)?.db().last_lsn()?));
                    }
                    plan.begin_copy(&starts)?;
                    self.save_plan(plan)?;
                }
                MigrationStep::Copying => self.copy(plan, &mut report)?,
                MigrationStep::CatchingUp => self.catch_up_and_switch(plan, &mut report)?,
                MigrationStep::Switched => self.clean(plan, &mut report)?,
                MigrationStep::Cleaned => {
                    let mut manifest = read(&self.inner.state).clone();
                    manifest.plan = None;
                    self.store(&manifest)?;
                    *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = manifest;
                }
            }
        }
        report.epoch = read(&self.inner.state).ring.epoch();
        Ok(Some(report))
    }

    /// Copies each source's moving documents in id order, recording the position after each
    /// batch; then starts the catch-up.
    fn copy(&self, mut plan: MigrationPlan, report: &mut SplitReport) -> Result<()> {
        let pending: Vec<(ShardId, Option<String>)> =
            plan.sources().iter().filter(|s| !s.copied).map(|s| (s.shard, s.cursor.clone())).collect();
        for (shard, cursor) in pending {
            let source = self.collection(shard)?;
            let mut after = cursor.as_deref().map(decode_cursor).transpose()?;
            loop {
                let page = source.page_by_id(after.as_ref(), BATCH)?;
                let full = page.len() == BATCH;
                let mut moving: Vec<(ShardId, T)> = Vec::new();
                for (id, doc) in page {
                    if let Some(to) = destination(&plan, &doc)? {
                        moving.push((to, doc));
                    }
                    after = Some(id);
                }
                for to in targets(&plan) {
                    let docs: Vec<&T> = moving.iter().filter(|(t, _)| *t == to).map(|(_, d)| d).collect();
                    if !docs.is_empty() {
                        report.copied += self.collection(to)?.put_many(docs)?;
                    }
                }
                if !full {
                    break;
                }
                if let Some(id) = &after {
                    plan.record_copied(shard, encode_cursor(id)?)?;
                    self.save_plan(plan.clone())?;
                }
            }
            plan.finish_copy(shard)?;
            self.save_plan(plan.clone())?;
        }
        plan.begin_catch_up()?;
        self.save_plan(plan)
    }

    /// Applies the sources' events since the copy began while writes go on, then the last
    /// ones with writes held, and switches the routing to the new ring.
    fn catch_up_and_switch(&self, mut plan: MigrationPlan, report: &mut SplitReport) -> Result<()> {
        self.apply_events(&mut plan, report)?;
        self.save_plan(plan.clone())?;
        let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        // No write is in flight now (each holds the state shared): what the log holds is all.
        self.apply_events(&mut plan, report)?;
        plan.switch()?;
        let manifest = Manifest { ring: plan.after().clone(), plan: Some(plan), ..state.clone() };
        self.store(&manifest)?;
        *state = manifest;
        Ok(())
    }

    /// Applies each source's change-log events after its recorded position to the targets.
    fn apply_events(&self, plan: &mut MigrationPlan, report: &mut SplitReport) -> Result<()> {
        let name = T::schema().collection();
        let targets: Vec<(ShardId, Collection<T>)> =
            targets(plan).into_iter().map(|t| self.collection(t).map(|c| (t, c))).collect::<Result<_>>()?;
        let sources: Vec<_> =
            plan.sources().iter().map(|s| (s.shard, s.caught_up_to.unwrap_or(crate::lsn::Lsn::ZERO))).collect();
        for (shard, from) in sources {
            let db = self.collection(shard)?.db().clone();
            let mut events = db.changes_since(from)?;
            loop {
                let mut batch: Vec<ChangeEvent> = Vec::new();
                for event in events.by_ref() {
                    batch.push(event?);
                    if batch.len() == EVENTS_PER_BATCH {
                        break;
                    }
                }
                let Some(last) = batch.last().map(|e| e.lsn) else { break };
                let relevant: Vec<&ChangeEvent> = batch.iter().filter(|e| e.collection == name).collect();
                for (to, target) in &targets {
                    apply_to(plan, *to, target, &relevant)?;
                }
                report.caught_up += relevant.len() as u64;
                plan.record_caught_up(shard, last)?;
                if batch.len() < EVENTS_PER_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Deletes the moved documents from the sources (again after a resume: deleting is
    /// idempotent), then marks the plan cleaned.
    fn clean(&self, mut plan: MigrationPlan, report: &mut SplitReport) -> Result<()> {
        let sources: Vec<ShardId> = plan.sources().iter().map(|s| s.shard).collect();
        for shard in sources {
            let source = self.collection(shard)?;
            let mut after: Option<Value> = None;
            loop {
                let page = source.page_by_id(after.as_ref(), BATCH)?;
                let full = page.len() == BATCH;
                let mut moved = Vec::new();
                for (id, doc) in page {
                    if destination(&plan, &doc)?.is_some() {
                        moved.push(id.clone());
                    }
                    after = Some(id);
                }
                report.deleted += source.delete_keys(&moved)?;
                if !full {
                    break;
                }
            }
        }
        plan.finish_cleanup()?;
        self.save_plan(plan)
    }
}

/// The shards documents move to, in id order.
fn targets(plan: &MigrationPlan) -> Vec<ShardId> {
    let mut out: Vec<ShardId> = plan.after().shards().iter().copied().filter(|s| !plan.before().contains(*s)).collect();
    out.sort_unstable();
    out
}

/// Where `doc` moves, if its partition key moves.
fn destination<T: Partitioned>(plan: &MigrationPlan, doc: &T) -> Result<Option<ShardId>> {
    let Some(key) = partition_key_of(doc)? else { return Ok(None) };
    Ok(plan.moves_key(&partition_key_bytes(&key)).map(|(_, to)| to))
}

/// Applies to `target` (the shard `to`), in order, what `events` mean for it: a document whose
/// key moves to it is written as the event left it; any other write or a delete removes the
/// id from it (a copy it may hold from before the key changed), which is a no-op otherwise.
fn apply_to<T: Partitioned>(
    plan: &MigrationPlan,
    to: ShardId,
    target: &Collection<T>,
    events: &[&ChangeEvent],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    target.db().transaction(|tx| {
        let c = tx.collection::<T>()?;
        for event in events {
            let doc = match event.op {
                // A move between tiers changes no document: nothing to catch up.
                ChangeOp::Archive | ChangeOp::Restore => continue,
                ChangeOp::Delete => None,
                ChangeOp::Insert | ChangeOp::Update | ChangeOp::Upsert => event.after::<T>()?,
            };
            match doc {
                Some(mut doc) if destination(plan, &doc)? == Some(to) => {
                    if let Some(v) = event.version {
                        doc.set_version(v);
                    }
                    c.put_many([&doc])?;
                }
                _ => {
                    c.delete_keys(std::slice::from_ref(&event.id))?;
                }
            }
        }
        Ok(())
    })
}

fn encode_cursor(id: &Value) -> Result<String> {
    match id {
        Value::Integer(i) => Ok(format!("i{i}")),
        Value::Text(s) => Ok(format!("t{s}")),
        other => Err(Error::migration_state(format!("a stored id of unexpected type: {other:?}"))),
    }
}

fn decode_cursor(text: &str) -> Result<Value> {
    let bad = || Error::migration_state(format!("a stored copy position {text:?} does not read back"));
    match text.split_at_checked(1) {
        Some(("i", n)) => n.parse().map(Value::Integer).map_err(|_| bad()),
        Some(("t", s)) => Ok(Value::Text(s.to_owned())),
        _ => Err(bad()),
    }
}
