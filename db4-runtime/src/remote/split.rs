//! Splitting a shard object: the steps of the sharding core's [`MigrationPlan`] driven over
//! the protocol, the plan persisted in the coordinator's map after each batch, so a driver that
//! dies (an evicted Durable Object, a killed process) is replaced by one that resumes where it
//! stopped: every step is idempotent (puts and deletes by id, a ring assigned twice).
//!
//! The steps, for a source at epoch `E` splitting into a new target:
//!
//! 1. `Planned`: the target gets the new ring (`E + 1`), the source's last LSN is recorded.
//! 2. `Copying`: the source's moving documents, page by page, put on the target.
//! 3. `CatchingUp`: the source's change-log events since the copy began applied to the target
//!    while writes go on; then the source gets the new ring (**the freeze**: from now on it
//!    redirects routers of epoch `E`, and refuses the moved keys), the last events are
//!    applied, and the coordinator's map switches to `E + 1`. Between the freeze and the
//!    switch a router retries (with a back-off) instead of being answered.
//! 4. `Switched`: the moved documents deleted from the source, which until then leaves them
//!    out of its query answers.
//! 5. `Cleaned`: the plan removed from the map.

use super::protocol::{CoordinatorOp, ScanPage, ShardMap, ShardOp, WireChange, WireStats, WireValue};
use super::router::{DurableRouter, coordinator};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::schema::Partitioned;
use crate::shard::{HashRing, MigrationPlan, MigrationStep, MovedRange, ShardId, SplitReport};

/// Documents scanned per copy or cleanup request.
const SCAN_BATCH: usize = 500;

/// Change-log events read per catch-up request.
const EVENTS_BATCH: usize = 500;

impl<T: Partitioned> DurableRouter<T> {
    /// Splits `shard` across shard objects: a new shard object takes half of its hash space,
    /// the moving documents copied in batches and caught up from the source's change log while
    /// writes go on, then the coordinator's map switches to the new ring (epoch + 1) and the
    /// moved documents are deleted from the source. A split already under way is finished
    /// first.
    ///
    /// One driver at a time: run it from one place (the app's coordinator object, from its
    /// alarm, is the intended one: [`begin_split`](Self::begin_split) then
    /// [`resume_split`](Self::resume_split)).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownShard`] for a shard the ring does not hold,
    /// [`Error::InvalidShardConfig`] for a ring that cannot split (modulo, or at its limits),
    /// the client's error (the plan is persisted: [`resume_split`](Self::resume_split)
    /// finishes it).
    pub async fn split(&self, shard: ShardId) -> Result<SplitReport> {
        self.resume_split().await?;
        self.begin_split(shard).await?;
        let ring = self.ring();
        Ok(self.resume_split().await?.unwrap_or(SplitReport {
            source: shard,
            new_shard: shard,
            copied: 0,
            caught_up: 0,
            deleted: 0,
            epoch: ring.epoch(),
        }))
    }

    /// Records the plan of splitting `shard` in the coordinator, without doing any of it;
    /// returns the new shard. [`resume_split`](Self::resume_split) does the work.
    ///
    /// # Errors
    ///
    /// [`Error::MigrationState`] if a split is already under way; as [`split`](Self::split).
    pub async fn begin_split(&self, shard: ShardId) -> Result<ShardId> {
        self.refresh().await?;
        let map = self.map();
        if map.plan.is_some() {
            return Err(Error::migration_state("a split is already under way: resume it first"));
        }
        if !map.ring.contains(shard) {
            return Err(Error::UnknownShard { shard: shard.get(), epoch: map.ring.epoch() });
        }
        let (plan, new_shard) = MigrationPlan::split(&map.ring, shard)?;
        self.save(ShardMap { plan: Some(plan), ..map }).await?;
        Ok(new_shard)
    }

    /// Drives the split recorded in the coordinator to its end; `None` if there is none.
    ///
    /// # Errors
    ///
    /// The client's or a shard's error; the plan keeps its last recorded position, so calling
    /// again resumes from there.
    pub async fn resume_split(&self) -> Result<Option<SplitReport>> {
        self.refresh().await?;
        let Some(first) = self.map().plan else { return Ok(None) };
        let mut report = empty_report(&first);
        while self.map().plan.is_some() {
            self.step(&mut report).await?;
        }
        report.epoch = self.epoch();
        Ok(Some(report))
    }

    /// Does one recorded step of the split under way, and returns the step the plan is at
    /// after it (`None`: no split is under way, or this step finished it). A step is one
    /// batch of the copy, the whole catch-up and switch, or the cleanup of the source; each
    /// ends with the plan saved in the coordinator, so a driver that does a step per Durable
    /// Object alarm (re-arming the alarm while this returns `Some`) resumes after an eviction
    /// or a crash without repeating finished work.
    ///
    /// # Errors
    ///
    /// As [`resume_split`](Self::resume_split): nothing recorded is lost, the next call
    /// retries the step.
    pub async fn split_step(&self) -> Result<Option<MigrationStep>> {
        self.refresh().await?;
        let Some(plan) = self.map().plan else { return Ok(None) };
        self.step(&mut empty_report(&plan)).await?;
        Ok(self.map().plan.map(|p| p.step()))
    }

    /// One step of the plan in the router's map, saved in the coordinator when done.
    async fn step(&self, report: &mut SplitReport) -> Result<()> {
        let map = self.map();
        let Some(mut plan) = map.plan.clone() else { return Ok(()) };
        let (before, after) = (plan.before().clone(), plan.after().clone());
        match plan.step() {
            MigrationStep::Planned => {
                for t in targets(&plan) {
                    self.send_exact::<WireStats>(t, &after, &ShardOp::Stats).await?;
                }
                let mut starts = Vec::new();
                for s in plan.sources() {
                    let stats: WireStats = self.send_exact(s.shard, &before, &ShardOp::Stats).await?;
                    starts.push((s.shard, Lsn::new(stats.last_lsn)));
                }
                plan.begin_copy(&starts)?;
                self.save(ShardMap { plan: Some(plan), ..map }).await
            }
            MigrationStep::Copying => self.copy_batch(map, plan, report).await,
            MigrationStep::CatchingUp => {
                // While writes go on; a source already frozen (a resumed split) skips this.
                let frozen = !self.catch_up(&mut plan, &before, report).await?;
                if !frozen {
                    self.save(ShardMap { plan: Some(plan.clone()), ..map.clone() }).await?;
                }
                // The freeze: the sources take the new ring and redirect the old one.
                for s in plan.sources() {
                    self.send_exact::<WireStats>(s.shard, &after, &ShardOp::Stats).await?;
                }
                self.catch_up(&mut plan, &after, report).await?;
                plan.switch()?;
                self.save(ShardMap { ring: after.clone(), plan: Some(plan), ..map }).await
            }
            MigrationStep::Switched => {
                let ranges: Vec<MovedRange> = plan.ranges().to_vec();
                for s in plan.sources().to_vec() {
                    let mut at: Option<WireValue> = None;
                    loop {
                        let op = ShardOp::CleanMoving { ranges: ranges.clone(), after: at, limit: SCAN_BATCH };
                        let page: ScanPage = self.send_exact(s.shard, &after, &op).await?;
                        report.deleted += page.deleted;
                        at = page.next;
                        if page.done {
                            break;
                        }
                    }
                    self.send_exact::<()>(s.shard, &after, &ShardOp::FinishClean).await?;
                }
                plan.finish_cleanup()?;
                self.save(ShardMap { plan: Some(plan), ..map }).await
            }
            MigrationStep::Cleaned => self.save(ShardMap { plan: None, ..map }).await,
        }
    }

    /// Copies one batch of the first source not yet copied to the targets and records the
    /// position after it; with every source copied, starts the catch-up.
    async fn copy_batch(&self, map: ShardMap, mut plan: MigrationPlan, report: &mut SplitReport) -> Result<()> {
        let (before, after) = (plan.before().clone(), plan.after().clone());
        let Some((shard, cursor)) = plan.sources().iter().find(|s| !s.copied).map(|s| (s.shard, s.cursor.clone()))
        else {
            plan.begin_catch_up()?;
            return self.save(ShardMap { plan: Some(plan), ..map }).await;
        };
        let op = ShardOp::ScanMoving {
            ranges: plan.ranges().iter().filter(|r| r.from == shard).copied().collect(),
            after: cursor.as_deref().map(decode_cursor).transpose()?,
            limit: SCAN_BATCH,
        };
        let page: ScanPage = self.send_exact(shard, &before, &op).await?;
        if !page.docs.is_empty() {
            // One target per split; documents go where the new ring routes them.
            for to in targets(&plan) {
                let n: u64 = self.send_exact(to, &after, &ShardOp::PutMany { docs: page.docs.clone() }).await?;
                report.copied += n;
            }
        }
        match (page.done, &page.next) {
            (true, _) => plan.finish_copy(shard)?,
            (false, Some(id)) => plan.record_copied(shard, encode_cursor(id)?)?,
            (false, None) => {
                return Err(Error::migration_state(format!(
                    "shard {} answered a scan page with neither an end nor a position",
                    shard.get()
                )));
            }
        }
        self.save(ShardMap { plan: Some(plan), ..map }).await
    }

    /// Applies each source's events after its recorded position to the targets, asking the
    /// source under `ring`; `false` if a source holds a newer ring (already frozen).
    async fn catch_up(&self, plan: &mut MigrationPlan, ring: &HashRing, report: &mut SplitReport) -> Result<bool> {
        let after = plan.after().clone();
        let sources: Vec<(ShardId, Lsn)> =
            plan.sources().iter().map(|s| (s.shard, s.caught_up_to.or(s.start_lsn).unwrap_or(Lsn::ZERO))).collect();
        for (shard, from) in sources {
            let mut from = from;
            loop {
                let op = ShardOp::Changes { after: from.get(), limit: EVENTS_BATCH };
                let events: Vec<WireChange> = match self.send_with(shard, ring, &op).await? {
                    super::router::Reply::Ok(raw) => self.decode(&raw)?,
                    super::router::Reply::Stale => return Ok(false),
                };
                let Some(last) = events.last().map(|e| Lsn::new(e.lsn)) else { break };
                let full = events.len() == EVENTS_BATCH;
                report.caught_up += events.len() as u64;
                for to in targets(plan) {
                    self.send_exact::<usize>(to, &after, &ShardOp::ApplyChanges { events: events.clone() }).await?;
                }
                plan.record_caught_up(shard, last)?;
                from = last;
                if !full {
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Stores `map` in the coordinator (replacing the map of the router's epoch) and makes it
    /// the router's.
    async fn save(&self, map: ShardMap) -> Result<()> {
        let expected = self.epoch();
        let op = CoordinatorOp::Store { expected, map: Box::new(map.clone()) };
        coordinator::<()>(self.client(), self.collection(), &op).await?;
        self.set_map(map);
        Ok(())
    }
}

/// A report with nothing done yet, for the split `plan` records.
fn empty_report(plan: &MigrationPlan) -> SplitReport {
    let source = plan.sources().first().map_or(ShardId::new(0), |s| s.shard);
    let new_shard = targets(plan).first().copied().unwrap_or(source);
    SplitReport { source, new_shard, copied: 0, caught_up: 0, deleted: 0, epoch: plan.before().epoch() }
}

/// The shards documents move to, in id order.
fn targets(plan: &MigrationPlan) -> Vec<ShardId> {
    let mut out: Vec<ShardId> = plan.after().shards().iter().copied().filter(|s| !plan.before().contains(*s)).collect();
    out.sort_unstable();
    out
}

fn encode_cursor(id: &WireValue) -> Result<String> {
    serde_json::to_string(id).map_err(|e| Error::migration_state(format!("a copy position does not encode: {e}")))
}

fn decode_cursor(text: &str) -> Result<WireValue> {
    serde_json::from_str(text)
        .map_err(|e| Error::migration_state(format!("a stored copy position {text:?} does not read back: {e}")))
}
