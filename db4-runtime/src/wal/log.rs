//! What the memory and the file log share: handing out LSNs, filling segments within their
//! bounds, checkpoints, truncation, replay and stats. Where the segments' bytes live is a
//! [`Storage`]'s business.

use super::config::{ReplayReport, StopReason, WalConfig, WalStats};
use super::record::{self, FrameError};
use super::{Lsn, WalEntry, WalRecord};
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::VecDeque;

/// The most bytes a new segment allocates ahead.
const MAX_PREALLOCATION: u64 = 16 << 20;

/// Where a log keeps its segments' bytes and its [`State`].
///
/// # Contract
///
/// The log calls these in an order that keeps its index and the storage in step: `create`
/// before the first `append` to a segment, `append` to the newest segment only,
/// `remove_oldest` for the oldest segment only. A call that fails must leave the segments as
/// they were before it (or, if it cannot, refuse every later call), so that the log's index
/// still describes them.
pub(crate) trait Storage {
    /// What can go wrong: `Infallible` in memory.
    type Error: Into<Error>;

    /// Starts a new, empty segment after the others; its first record will be `first`.
    /// `expected_bytes` is how much it will likely hold (a hint, to allocate once).
    fn create(&mut self, first: Lsn, checksums: bool, expected_bytes: usize) -> Result<(), Self::Error>;

    /// Appends one encoded record to the newest segment.
    fn append(&mut self, record: &[u8]) -> Result<(), Self::Error>;

    /// Removes the oldest segment, `segment`.
    fn remove_oldest(&mut self, segment: &Segment) -> Result<(), Self::Error>;

    /// The record bytes of `segment` (the `index`th held) from offset `from` to its end as the
    /// index knows it.
    fn read(&self, index: usize, segment: &Segment, from: usize) -> Result<Cow<'_, [u8]>, Self::Error>;

    /// Stores the log's state: it must survive whatever the segments survive.
    fn save(&mut self, state: State) -> Result<(), Self::Error>;
}

/// The index of one segment: which records it holds and where each starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The LSN of its first record (of its next record, while empty).
    pub(crate) first: Lsn,
    /// Whether its records carry checksums.
    pub(crate) checksums: bool,
    /// Where each record starts among the segment's record bytes.
    pub(crate) offsets: Vec<u32>,
    /// Bytes of records.
    pub(crate) bytes: u64,
}

impl Segment {
    pub(crate) fn new(first: Lsn, checksums: bool) -> Self {
        Self { first, checksums, offsets: Vec::new(), bytes: 0 }
    }

    /// Records held.
    pub(crate) fn len(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// The LSN of the last record (the one before `first` while empty).
    pub(crate) fn last(&self) -> Lsn {
        Lsn::new((self.first.get() + self.len()).saturating_sub(1))
    }

    /// Bytes of the records at or below `lsn`.
    fn bytes_through(&self, lsn: Lsn) -> u64 {
        let below = (lsn.get() + 1).saturating_sub(self.first.get()).min(self.len()) as usize;
        self.offsets.get(below).map_or(self.bytes, |&at| u64::from(at))
    }
}

/// What a log stores besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct State {
    /// The last checkpoint.
    pub(crate) checkpoint: Lsn,
    /// Records at or below this LSN are dropped.
    pub(crate) truncated: Lsn,
}

/// A log over a [`Storage`].
pub(crate) struct Log<S> {
    storage: S,
    config: WalConfig,
    /// [`WalConfig`]'s bounds after clamping.
    segment_bytes: u64,
    segment_entries: u64,
    segments: VecDeque<Segment>,
    /// Bytes of all segments held, truncated records included.
    held_bytes: u64,
    /// The last LSN handed out.
    last: Lsn,
    state: State,
    since_checkpoint: u64,
    /// An automatic checkpoint could not be stored: retried before the next append.
    checkpoint_due: bool,
    /// The encoding of the record being appended.
    scratch: Vec<u8>,
}

impl<S: Storage> Log<S> {
    /// A log over `storage`, which holds `segments` (in LSN order, contiguous), the last record
    /// at `last`, and `state`.
    pub(crate) fn new(storage: S, config: WalConfig, segments: VecDeque<Segment>, last: Lsn, state: State) -> Self {
        Self {
            storage,
            segment_bytes: config.segment_bytes() as u64,
            segment_entries: config.segment_entries() as u64,
            config,
            held_bytes: segments.iter().map(|s| s.bytes).sum(),
            segments,
            last,
            state,
            since_checkpoint: 0,
            checkpoint_due: false,
            scratch: Vec::new(),
        }
    }

    #[cfg(feature = "fs")]
    pub(crate) fn storage(&self) -> &S {
        &self.storage
    }

    #[cfg(any(test, feature = "fs"))]
    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    #[cfg(test)]
    pub(crate) fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// Appends `record` at the next LSN.
    pub(crate) fn append(&mut self, record: &WalRecord) -> Result<Lsn> {
        if self.checkpoint_due {
            self.checkpoint().map_err(Into::into)?;
        }
        let lsn = self.last.next().ok_or_else(|| Error::wal_corrupted(self.last.get(), "no LSN is left after this"))?;
        let checksums = self.config.checksums;
        self.scratch.clear();
        record::encode(&mut self.scratch, lsn, record, checksums)?;
        let size = self.scratch.len() as u64;
        if size > self.segment_bytes {
            return Err(Error::TooLarge {
                collection: record.collection.clone(),
                id: record.id.clone(),
                size: self.scratch.len(),
                limit: self.segment_bytes as usize,
            });
        }
        let fits = self.segments.back().is_some_and(|s| {
            s.checksums == checksums && s.bytes + size <= self.segment_bytes && s.len() < self.segment_entries
        });
        if !fits {
            // Records like this one until a bound is reached: allocating that at once spares
            // the copies (and, with many small records freed meanwhile, the allocator's
            // consolidation passes) of growing a buffer of megabytes step by step.
            let records = self.segment_entries.min(self.segment_bytes / size.max(1));
            // A quarter more, for records a little larger than this one.
            let expected = (records * size + records * size / 4).min(self.segment_bytes).min(MAX_PREALLOCATION);
            self.storage.create(lsn, checksums, expected as usize).map_err(Into::into)?;
            let mut segment = Segment::new(lsn, checksums);
            segment.offsets.reserve(records.min(MAX_PREALLOCATION / 4) as usize);
            self.segments.push_back(segment);
        }
        self.storage.append(&self.scratch).map_err(Into::into)?;
        if let Some(segment) = self.segments.back_mut() {
            // Below `segment_bytes`, at most 1 GiB: fits a u32.
            segment.offsets.push(segment.bytes as u32);
            segment.bytes += size;
        }
        self.held_bytes += size;
        self.last = lsn;
        self.since_checkpoint += 1;
        if self.config.checkpoint_interval != 0 && self.since_checkpoint >= self.config.checkpoint_interval {
            // The record is in: a checkpoint that cannot be stored now is tried again before
            // the next append, which reports the error (having written nothing) if it fails.
            self.checkpoint_due = self.checkpoint().is_err();
        }
        Ok(lsn)
    }

    /// Marks everything appended so far as checkpointed, stores it and tells the hook.
    pub(crate) fn checkpoint(&mut self) -> Result<Lsn, S::Error> {
        let state = State { checkpoint: self.last, ..self.state };
        self.storage.save(state)?;
        self.state = state;
        self.since_checkpoint = 0;
        self.checkpoint_due = false;
        if let Some(hook) = &self.config.on_checkpoint {
            hook(self.last);
        }
        Ok(self.last)
    }

    /// Drops the records at or below `lsn` (at most every record), then every segment left
    /// without records; returns how many records were dropped.
    pub(crate) fn truncate(&mut self, lsn: Lsn) -> Result<u64, S::Error> {
        let through = lsn.min(self.last);
        let mut dropped = 0;
        if through > self.state.truncated {
            let before = self.entries();
            let state = State { truncated: through, ..self.state };
            self.storage.save(state)?;
            self.state = state;
            dropped = before - self.entries();
        }
        // Also when nothing new is truncated: removes what an earlier failure left.
        while let Some(front) = self.segments.front() {
            if front.last() > self.state.truncated {
                break;
            }
            self.storage.remove_oldest(front)?;
            self.held_bytes -= front.bytes;
            self.segments.pop_front();
        }
        Ok(dropped)
    }

    /// The first LSN held (not truncated), if any record is.
    fn first_held(&self) -> Option<Lsn> {
        let front = self.segments.front()?;
        let first = front.first.max(Lsn::new(self.state.truncated.get().saturating_add(1)));
        (first <= self.last && front.first <= self.last).then_some(first)
    }

    fn entries(&self) -> u64 {
        self.first_held().map_or(0, |first| self.last.get() - first.get() + 1)
    }

    pub(crate) fn stats(&self) -> WalStats {
        let dead = self.segments.front().map_or(0, |front| front.bytes_through(self.state.truncated));
        WalStats {
            entries: self.entries(),
            bytes: self.held_bytes - dead,
            segments: self.segments.len() as u64,
            first_lsn: self.first_held().unwrap_or(Lsn::ZERO),
            last_lsn: self.last,
            last_checkpoint: self.state.checkpoint,
            truncated: self.state.truncated,
        }
    }

    /// Hands each record after `from` to `f`, in order, checking each; stops at the first that
    /// is damaged or that `f` refuses.
    pub(crate) fn replay(
        &self,
        from: Lsn,
        mut f: impl FnMut(&WalEntry) -> Result<()>,
    ) -> Result<ReplayReport, S::Error> {
        let mut report = ReplayReport { applied: 0, last: from, stopped: None };
        let Some(mut expected) = from.max(self.state.truncated).next() else { return Ok(report) };
        for (index, segment) in self.segments.iter().enumerate() {
            if segment.last() < expected {
                continue;
            }
            if segment.first > expected {
                report.stopped = Some(StopReason::Gap { expected, found: segment.first });
                return Ok(report);
            }
            let skip = (expected.get() - segment.first.get()) as usize;
            let Some(&offset) = segment.offsets.get(skip) else { continue };
            let bytes = self.storage.read(index, segment, offset as usize)?;
            let mut at = 0;
            for _ in skip..segment.offsets.len() {
                match replay_one(bytes.get(at..).unwrap_or_default(), segment.checksums, expected, &mut f) {
                    Ok(len) => {
                        report.applied += 1;
                        report.last = expected;
                        at += len;
                    }
                    Err(stop) => {
                        report.stopped = Some(stop);
                        return Ok(report);
                    }
                }
                let Some(next) = expected.next() else { return Ok(report) };
                expected = next;
            }
        }
        Ok(report)
    }
}

/// Reads the record at `expected` from the start of `bytes` and hands it to `f`; returns its
/// length.
fn replay_one(
    bytes: &[u8],
    checksums: bool,
    expected: Lsn,
    f: &mut impl FnMut(&WalEntry) -> Result<()>,
) -> Result<usize, StopReason> {
    let frame = record::frame(bytes, checksums).map_err(|e| match e {
        FrameError::Checksum { stored, computed } => StopReason::Checksum { lsn: expected, stored, computed },
        other => StopReason::Malformed { lsn: expected, reason: other.to_string() },
    })?;
    if frame.lsn() != expected {
        return Err(StopReason::Gap { expected, found: frame.lsn() });
    }
    let entry = record::decode(frame, checksums).map_err(|reason| StopReason::Malformed { lsn: expected, reason })?;
    f(&entry).map_err(|error| StopReason::Callback { lsn: expected, error })?;
    Ok(frame.len())
}
