//! [`MemoryWal`]: the log in memory.

use super::config::{ReplayReport, WalConfig, WalStats};
use super::log::{Log, Segment, State, Storage};
use super::{Lsn, WalEntry, WalRecord};
use crate::error::Result;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;

/// A write-ahead log in memory: records are encoded (with a CRC-32 each when
/// [`WalConfig::checksums`] is on) into segments bounded by [`WalConfig::max_size_bytes`] and
/// [`WalConfig::max_entries`], and checked again when replayed.
///
/// It lives as long as the process: for a log that survives a crash, use
/// [`FileWal`](crate::FileWal), which has the same methods. Methods that change the log take
/// `&mut self`; put it in a `Mutex` to share it between threads.
///
/// # Example
///
/// ```
/// use db4_runtime::{Lsn, MemoryWal, WalConfig, WalRecord};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let mut wal = MemoryWal::new(
///     WalConfig::default()
///         .max_size_bytes(10 * 1024 * 1024)
///         .max_entries(10_000)
///         .checkpoint_interval(1_000)
///         .on_checkpoint(|lsn| println!("checkpoint at LSN {lsn}")),
/// );
/// let lsn = wal.append(WalRecord::insert("users", "doc-1", r#"{"name":"Alice"}"#))?;
/// assert_eq!(lsn, Lsn::new(1));
///
/// let mut applied = Vec::new();
/// let report = wal.replay(Lsn::ZERO, |entry| {
///     applied.push(entry.record.id.clone());
///     Ok(())
/// })?;
/// assert!(report.is_complete());
/// assert_eq!(applied, ["doc-1"]);
///
/// let checkpoint = wal.checkpoint();
/// assert_eq!(wal.truncate(checkpoint), 1);
/// assert_eq!(wal.stats().entries, 0);
/// # Ok(()) }
/// ```
pub struct MemoryWal {
    log: Log<Buffers>,
}

impl MemoryWal {
    /// An empty log; its first record will get LSN 1.
    ///
    /// # Example
    ///
    /// ```
    /// let wal = db4_runtime::MemoryWal::new(db4_runtime::WalConfig::default().max_entries(100));
    /// assert_eq!(wal.stats().last_lsn, db4_runtime::Lsn::ZERO);
    /// ```
    pub fn new(config: WalConfig) -> Self {
        Self { log: Log::new(Buffers::default(), config, VecDeque::new(), Lsn::ZERO, State::default()) }
    }

    /// Appends `record` and returns its LSN, the one after the last.
    ///
    /// Every [`WalConfig::checkpoint_interval`] appends, it also checkpoints.
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`](crate::Error::TooLarge) for a record larger than
    /// [`WalConfig::max_size_bytes`], [`Error::InvalidValue`](crate::Error::InvalidValue) for
    /// an image that is not JSON (or nests too deeply for serde_json to read back: more than
    /// 128 levels). Nothing is appended then.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let mut wal = db4_runtime::MemoryWal::new(Default::default());
    /// let a = wal.append(db4_runtime::WalRecord::delete("users", "a"))?;
    /// let b = wal.append(db4_runtime::WalRecord::delete("users", "b"))?;
    /// assert!(a < b);
    /// # Ok(()) }
    /// ```
    pub fn append(&mut self, record: WalRecord) -> Result<Lsn> {
        self.log.append(&record)
    }

    /// Marks everything appended so far as checkpointed, calls
    /// [`WalConfig::on_checkpoint`], and returns the LSN of the last record appended (the
    /// checkpoint's LSN; [`Lsn::ZERO`] before the first).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let mut wal = db4_runtime::MemoryWal::new(Default::default());
    /// let lsn = wal.append(db4_runtime::WalRecord::delete("users", "a"))?;
    /// assert_eq!(wal.checkpoint(), lsn);
    /// assert_eq!(wal.stats().last_checkpoint, lsn);
    /// # Ok(()) }
    /// ```
    pub fn checkpoint(&mut self) -> Lsn {
        let Ok(lsn) = self.log.checkpoint();
        lsn
    }

    /// Drops the records at or below `lsn` (usually a checkpoint's), and returns how many it
    /// dropped. A segment goes as a whole once all its records are dropped; until then the
    /// dropped records of a segment that still holds others keep their memory but are no
    /// longer replayed or counted. An `lsn` past the last record drops every record; the next
    /// append still gets the next LSN.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let mut wal = db4_runtime::MemoryWal::new(Default::default());
    /// for id in ["a", "b", "c"] {
    ///     wal.append(db4_runtime::WalRecord::delete("users", id))?;
    /// }
    /// assert_eq!(wal.truncate(db4_runtime::Lsn::new(2)), 2);
    /// assert_eq!(wal.stats().first_lsn, db4_runtime::Lsn::new(3));
    /// # Ok(()) }
    /// ```
    pub fn truncate(&mut self, lsn: Lsn) -> u64 {
        let Ok(dropped) = self.log.truncate(lsn);
        dropped
    }

    /// Hands each record held with an LSN above `from` to `f`, in LSN order, after checking
    /// it against its checksum, and reports how far it got: to the end, or to the first
    /// record that is damaged or that `f` returns an error for (neither of which counts as
    /// applied, and nothing after which is handed out).
    ///
    /// # Errors
    ///
    /// None in memory: an early stop is reported in [`ReplayReport::stopped`], which
    /// [`ReplayReport::into_result`] turns into an error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let mut wal = db4_runtime::MemoryWal::new(Default::default());
    /// for id in ["a", "b", "c"] {
    ///     wal.append(db4_runtime::WalRecord::delete("users", id))?;
    /// }
    /// let mut ids = Vec::new();
    /// let report = wal.replay(db4_runtime::Lsn::new(1), |entry| {
    ///     ids.push(entry.record.id.clone());
    ///     Ok(())
    /// })?;
    /// assert_eq!(ids, ["b", "c"]);
    /// assert_eq!((report.applied, report.last.get()), (2, 3));
    /// # Ok(()) }
    /// ```
    pub fn replay(&self, from: Lsn, f: impl FnMut(&WalEntry) -> Result<()>) -> Result<ReplayReport> {
        let Ok(report) = self.log.replay(from, f);
        Ok(report)
    }

    /// What the log holds.
    ///
    /// # Example
    ///
    /// ```
    /// let wal = db4_runtime::MemoryWal::new(Default::default());
    /// assert_eq!(wal.stats(), db4_runtime::WalStats::default());
    /// ```
    pub fn stats(&self) -> WalStats {
        self.log.stats()
    }

    #[cfg(test)]
    pub(crate) fn log(&self) -> &Log<Buffers> {
        &self.log
    }

    /// Flips bit `bit` of the record bytes of the `segment`th segment held.
    #[cfg(test)]
    pub(crate) fn flip_bit(&mut self, segment: usize, bit: usize) {
        let buffer = &mut self.log.storage_mut().buffers[segment];
        buffer[bit / 8] ^= 1 << (bit % 8);
    }
}

impl Default for MemoryWal {
    fn default() -> Self {
        Self::new(WalConfig::default())
    }
}

impl fmt::Debug for MemoryWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWal").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// The segments' record bytes, one buffer each, in the order the log holds them.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    buffers: VecDeque<Vec<u8>>,
}

impl Storage for Buffers {
    type Error = Infallible;

    fn create(&mut self, _first: Lsn, _checksums: bool, expected_bytes: usize) -> Result<(), Infallible> {
        self.buffers.push_back(Vec::with_capacity(expected_bytes));
        Ok(())
    }

    fn append(&mut self, record: &[u8]) -> Result<(), Infallible> {
        // `create` came first: there is a newest buffer.
        if let Some(buffer) = self.buffers.back_mut() {
            buffer.extend_from_slice(record);
        }
        Ok(())
    }

    fn remove_oldest(&mut self, _segment: &Segment) -> Result<(), Infallible> {
        self.buffers.pop_front();
        Ok(())
    }

    fn read(&self, index: usize, segment: &Segment, from: usize) -> Result<Cow<'_, [u8]>, Infallible> {
        // Out of step with the index (it cannot be): no bytes, which replay reports.
        let bytes = self.buffers.get(index).and_then(|b| b.get(from..segment.bytes as usize)).unwrap_or_default();
        Ok(Cow::Borrowed(bytes))
    }

    fn save(&mut self, _state: State) -> Result<(), Infallible> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::wal::StopReason;
    use crate::wal::record::HEADER;
    use std::sync::{Arc, Mutex};

    const fn assert_shareable<T: Send + Sync + 'static>() {}
    const _: () = assert_shareable::<MemoryWal>();
    const _: () = assert_shareable::<WalConfig>();
    #[cfg(feature = "fs")]
    const _: () = assert_shareable::<crate::wal::FileWal>();

    fn record(n: u64) -> WalRecord {
        WalRecord::insert("docs", format!("d{n}"), format!(r#"{{"n":{n}}}"#))
    }

    fn ids(wal: &MemoryWal, from: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let report = wal
            .replay(Lsn::new(from), |e| {
                out.push(e.lsn.get());
                Ok(())
            })
            .unwrap();
        assert!(report.is_complete(), "{report:?}");
        out
    }

    #[test]
    fn lsns_count_up_from_one_and_replay_in_order() -> Result<()> {
        let mut wal = MemoryWal::default();
        assert_eq!(wal.stats().last_lsn, Lsn::ZERO);
        for n in 1..=50 {
            assert_eq!(wal.append(record(n))?, Lsn::new(n));
        }
        assert_eq!(ids(&wal, 0), (1..=50).collect::<Vec<_>>());
        assert_eq!(ids(&wal, 47), [48, 49, 50]);
        assert_eq!(ids(&wal, 50), Vec::<u64>::new());
        assert_eq!(ids(&wal, u64::MAX), Vec::<u64>::new());
        let mut records = Vec::new();
        wal.replay(Lsn::new(9), |e| {
            records.push(e.record.clone());
            Ok(())
        })?
        .into_result()?;
        assert_eq!(records[0], record(10));
        Ok(())
    }

    #[test]
    fn segments_respect_both_bounds() -> Result<()> {
        let size = (HEADER + 4 + 3 + 8) as u64; // "docs", "dNN", {"n":NN}
        let mut wal = MemoryWal::new(WalConfig::default().max_entries(4).max_size_bytes(1000));
        for n in 10..30 {
            wal.append(record(n))?;
        }
        assert!(wal.log().segments().iter().all(|s| s.len() <= 4));
        assert_eq!(wal.stats().segments, 5);
        assert_eq!(wal.stats().bytes, 20 * size);
        let mut wal = MemoryWal::new(WalConfig::default().max_entries(1000).max_size_bytes(300));
        for n in 10..30 {
            wal.append(record(n))?;
        }
        assert!(wal.log().segments().iter().all(|s| s.bytes <= 300 && s.len() == 300 / size));
        assert_eq!(ids(&wal, 0).len(), 20);
        Ok(())
    }

    #[test]
    fn bad_bounds_are_clamped_and_large_records_refused() -> Result<()> {
        let mut wal = MemoryWal::new(WalConfig::default().max_entries(0).max_size_bytes(0));
        for n in 1..=3 {
            wal.append(record(n))?;
        }
        assert_eq!(wal.stats().segments, 3, "at least one entry per segment");
        let big = WalRecord::insert("docs", "big", format!("{:?}", "x".repeat(300)));
        let err = wal.append(big).unwrap_err();
        assert!(matches!(err, Error::TooLarge { ref id, limit: 256, .. } if id == "big"), "{err:?}");
        assert_eq!(wal.stats().last_lsn, Lsn::new(3), "nothing appended");
        assert_eq!(wal.append(record(4))?, Lsn::new(4), "no LSN was used up");
        let mut wal = MemoryWal::new(WalConfig::default().max_size_bytes(usize::MAX));
        wal.append(record(1))?;
        Ok(())
    }

    #[test]
    fn checkpoints_by_hand_and_every_interval() -> Result<()> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook = Arc::clone(&seen);
        let config = WalConfig::default().checkpoint_interval(3).on_checkpoint(move |lsn| {
            hook.lock().unwrap().push(lsn.get());
        });
        let mut wal = MemoryWal::new(config);
        assert_eq!(wal.checkpoint(), Lsn::ZERO);
        for n in 1..=7 {
            wal.append(record(n))?;
        }
        assert_eq!(wal.stats().last_checkpoint, Lsn::new(6));
        assert_eq!(wal.checkpoint(), Lsn::new(7));
        wal.append(record(8))?;
        wal.append(record(9))?;
        assert_eq!(wal.stats().last_checkpoint, Lsn::new(7), "the interval counts from the last checkpoint");
        wal.append(record(10))?;
        assert_eq!(*seen.lock().unwrap(), [0, 3, 6, 7, 10]);
        Ok(())
    }

    #[test]
    fn truncate_drops_whole_segments_and_keeps_lsns_going() -> Result<()> {
        let mut wal = MemoryWal::new(WalConfig::default().max_entries(4));
        for n in 1..=10 {
            wal.append(record(n))?;
        }
        assert_eq!(wal.truncate(Lsn::new(5)), 5);
        let stats = wal.stats();
        assert_eq!((stats.entries, stats.segments, stats.first_lsn), (5, 2, Lsn::new(6)));
        assert_eq!(ids(&wal, 0), [6, 7, 8, 9, 10]);
        assert_eq!(ids(&wal, 7), [8, 9, 10]);
        assert_eq!(wal.truncate(Lsn::new(3)), 0, "already dropped");
        assert_eq!(wal.truncate(Lsn::new(100)), 5);
        let stats = wal.stats();
        assert_eq!((stats.entries, stats.bytes, stats.segments), (0, 0, 0));
        assert_eq!((stats.first_lsn, stats.last_lsn, stats.truncated), (Lsn::ZERO, Lsn::new(10), Lsn::new(10)));
        assert_eq!(wal.append(record(11))?, Lsn::new(11));
        assert_eq!(ids(&wal, 0), [11]);
        Ok(())
    }

    #[test]
    fn replay_stops_at_the_callbacks_error() -> Result<()> {
        let mut wal = MemoryWal::default();
        for n in 1..=5 {
            wal.append(record(n))?;
        }
        let mut seen = 0;
        let report = wal.replay(Lsn::new(1), |e| {
            seen += 1;
            if e.lsn == Lsn::new(4) { Err(Error::aborted("no")) } else { Ok(()) }
        })?;
        assert_eq!((seen, report.applied, report.last), (3, 2, Lsn::new(3)));
        assert!(matches!(report.stopped, Some(StopReason::Callback { lsn, .. }) if lsn == Lsn::new(4)));
        Ok(())
    }

    #[test]
    fn damage_in_memory_stops_replay_at_the_damaged_entry() -> Result<()> {
        let mut wal = MemoryWal::new(WalConfig::default().max_entries(3));
        for n in 1..=6 {
            wal.append(record(n))?;
        }
        let size = wal.log().segments()[1].bytes as usize / 3;
        // A bit of the second record of the second segment: LSN 5.
        wal.flip_bit(1, (size + 20) * 8 + 3);
        let report = wal.replay(Lsn::ZERO, |_| Ok(()))?;
        assert_eq!((report.applied, report.last), (4, Lsn::new(4)));
        assert!(matches!(report.stopped, Some(StopReason::Checksum { lsn, .. }) if lsn == Lsn::new(5)));
        let err = report.into_result().unwrap_err();
        assert!(matches!(err, Error::WalCorrupted { lsn: 5, .. }), "{err:?}");
        assert_eq!(err.backend_kind(), Some(crate::error::BackendErrorKind::Corrupt));
        // Without checksums the damage goes unnoticed; its structure still is checked.
        let mut wal = MemoryWal::new(WalConfig::default().checksums(false));
        wal.append(record(1))?;
        wal.append(record(2))?;
        wal.flip_bit(0, (size + 16) * 8); // the op code of LSN 2
        let report = wal.replay(Lsn::ZERO, |e| {
            assert_eq!(e.checksum, None);
            Ok(())
        })?;
        assert!(matches!(report.stopped, Some(StopReason::Malformed { lsn, .. }) if lsn == Lsn::new(2)), "{report:?}");
        Ok(())
    }
}
