//! What a log is configured with, and what it reports.

use super::Lsn;
use crate::error::Error;
use std::fmt;
use std::sync::Arc;

/// The default [`WalConfig::max_size_bytes`]: 10 MiB of records per segment.
const DEFAULT_MAX_SIZE_BYTES: usize = 10 * 1024 * 1024;
/// The default [`WalConfig::max_entries`] per segment.
const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// The smallest segment: room for a few small records.
pub(crate) const MIN_SEGMENT_BYTES: usize = 256;
/// The largest segment; record lengths and offsets inside a segment are `u32`.
pub(crate) const MAX_SEGMENT_BYTES: usize = 1 << 30;

/// How a write-ahead log is bounded, checked and checkpointed: for [`MemoryWal::new`] and
/// [`FileWal::open`].
///
/// The bounds are per segment: a record that would take a segment past `max_size_bytes` or
/// `max_entries` starts the next one. How much the log holds in all is up to
/// [`truncate`](crate::MemoryWal::truncate), which drops whole segments; [`WalStats`] tells.
///
/// Out-of-range values are clamped, not refused: `max_size_bytes` to 256 bytes .. 1 GiB and
/// `max_entries` to at least 1 (and at most `u32::MAX`).
///
/// The five fields are the whole configuration both logs share, so a struct literal naming
/// them all builds one; what only the file log needs (whether each append is `fsync`ed) is in
/// [`FileWalOptions`].
///
/// [`MemoryWal::new`]: crate::MemoryWal::new
/// [`FileWal::open`]: crate::FileWal::open
/// [`FileWalOptions`]: crate::FileWalOptions
///
/// # Example
///
/// ```
/// use db4_runtime::{Lsn, MemoryWal, WalConfig};
/// use std::sync::Arc;
///
/// let config = WalConfig {
///     max_size_bytes: 10 * 1024 * 1024,
///     max_entries: 10_000,
///     checkpoint_interval: 1_000,
///     checksums: true,
///     on_checkpoint: Some(Arc::new(|lsn: Lsn| println!("checkpoint at LSN {lsn}"))),
/// };
/// let wal = MemoryWal::new(config);
/// assert_eq!(wal.stats().entries, 0);
///
/// // The same, with the setters:
/// let config = WalConfig::default()
///     .max_size_bytes(10 * 1024 * 1024)
///     .max_entries(10_000)
///     .checkpoint_interval(1_000)
///     .checksums(true)
///     .on_checkpoint(|lsn| println!("checkpoint at LSN {lsn}"));
/// assert_eq!(config.checkpoint_interval, 1_000);
/// ```
#[derive(Clone)]
pub struct WalConfig {
    /// The most bytes of encoded records a segment holds (default 10 MiB). A record larger
    /// than this is refused with [`Error::TooLarge`](crate::Error::TooLarge). Each record
    /// takes 52 bytes plus its collection, id and JSON images (docs/wal.md).
    pub max_size_bytes: usize,
    /// The most records a segment holds (default 10 000).
    pub max_entries: usize,
    /// Checkpoint automatically after every this many appends; 0 (the default) never does.
    pub checkpoint_interval: u64,
    /// Store a CRC-32 with each record and check it on replay and recovery (default on).
    /// Without it, damage inside a record goes unnoticed unless it breaks the record's
    /// structure.
    pub checksums: bool,
    /// Called with the LSN of each checkpoint, after it is made (and, for a
    /// [`FileWal`](crate::FileWal), stored).
    pub on_checkpoint: Option<Arc<dyn Fn(Lsn) + Send + Sync>>,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            checkpoint_interval: 0,
            checksums: true,
            on_checkpoint: None,
        }
    }
}

impl fmt::Debug for WalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalConfig")
            .field("max_size_bytes", &self.max_size_bytes)
            .field("max_entries", &self.max_entries)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("checksums", &self.checksums)
            .field("on_checkpoint", &self.on_checkpoint.as_ref().map(|_| "Fn(Lsn)"))
            .finish()
    }
}

impl WalConfig {
    /// Sets the most bytes of records per segment.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(db4_runtime::WalConfig::default().max_size_bytes(4096).max_size_bytes, 4096);
    /// ```
    pub fn max_size_bytes(mut self, bytes: usize) -> Self {
        self.max_size_bytes = bytes;
        self
    }

    /// Sets the most records per segment.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(db4_runtime::WalConfig::default().max_entries(100).max_entries, 100);
    /// ```
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.max_entries = entries;
        self
    }

    /// Sets how many appends make an automatic checkpoint (0: none).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(db4_runtime::WalConfig::default().checkpoint_interval(50).checkpoint_interval, 50);
    /// ```
    pub fn checkpoint_interval(mut self, appends: u64) -> Self {
        self.checkpoint_interval = appends;
        self
    }

    /// Turns the per-record CRC-32 on or off.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(!db4_runtime::WalConfig::default().checksums(false).checksums);
    /// ```
    pub fn checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// Sets the function called with the LSN of each checkpoint.
    ///
    /// # Example
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// let seen = Arc::new(AtomicU64::new(0));
    /// let hook = Arc::clone(&seen);
    /// let config = db4_runtime::WalConfig::default().on_checkpoint(move |lsn| hook.store(lsn.get(), Ordering::SeqCst));
    /// let mut wal = db4_runtime::MemoryWal::new(config);
    /// wal.append(db4_runtime::WalRecord::delete("users", "u1"))?;
    /// wal.checkpoint();
    /// assert_eq!(seen.load(Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub fn on_checkpoint(mut self, hook: impl Fn(Lsn) + Send + Sync + 'static) -> Self {
        self.on_checkpoint = Some(Arc::new(hook));
        self
    }

    /// The segment size bound in force, after clamping.
    pub(crate) fn segment_bytes(&self) -> usize {
        self.max_size_bytes.clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)
    }

    /// The entry bound in force, after clamping.
    pub(crate) fn segment_entries(&self) -> usize {
        self.max_entries.clamp(1, u32::MAX as usize)
    }
}

/// What a write-ahead log holds, from [`MemoryWal::stats`](crate::MemoryWal::stats) or
/// [`FileWal::stats`](crate::FileWal::stats).
///
/// # Example
///
/// ```
/// use db4_runtime::{Lsn, MemoryWal, WalRecord};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let mut wal = MemoryWal::new(Default::default());
/// for id in ["a", "b", "c"] {
///     wal.append(WalRecord::delete("users", id))?;
/// }
/// wal.truncate(Lsn::new(1));
/// let stats = wal.stats();
/// assert_eq!((stats.entries, stats.segments), (2, 1));
/// assert_eq!((stats.first_lsn, stats.last_lsn), (Lsn::new(2), Lsn::new(3)));
/// assert_eq!(stats.bytes, 2 * (52 + 5 + 1));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WalStats {
    /// Entries held: appended and not truncated.
    pub entries: u64,
    /// Bytes of the entries held, as encoded (docs/wal.md).
    pub bytes: u64,
    /// Segments held. A segment partly truncated is held until its last entry is truncated.
    pub segments: u64,
    /// The LSN of the first entry held ([`Lsn::ZERO`] when none is).
    pub first_lsn: Lsn,
    /// The LSN of the last entry appended, held or not ([`Lsn::ZERO`] before the first).
    pub last_lsn: Lsn,
    /// The LSN of the last checkpoint ([`Lsn::ZERO`] before the first).
    pub last_checkpoint: Lsn,
    /// Entries at or below this LSN were truncated.
    pub truncated: Lsn,
}

/// What a replay did: how many entries it handed to the callback, the last one, and why it
/// stopped early, if it did.
///
/// A replay stops at the first entry it cannot hand out intact, or at the first error of the
/// callback; every entry before it was handed out, in order, and nothing after it.
/// [`ReplayReport::into_result`] turns an early stop into an error.
///
/// # Example
///
/// ```
/// use db4_runtime::{Error, Lsn, MemoryWal, StopReason, WalRecord};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let mut wal = MemoryWal::new(Default::default());
/// for id in ["a", "b", "c"] {
///     wal.append(WalRecord::delete("users", id))?;
/// }
/// let report = wal.replay(Lsn::ZERO, |entry| {
///     if entry.record.id == "c" { Err(Error::aborted("cannot apply c")) } else { Ok(()) }
/// })?;
/// assert_eq!((report.applied, report.last), (2, Lsn::new(2)));
/// assert!(matches!(report.stopped, Some(StopReason::Callback { lsn, .. }) if lsn == Lsn::new(3)));
/// assert_eq!(report.into_result().unwrap_err().to_string(), "cannot apply c");
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Entries handed to the callback that returned `Ok`.
    pub applied: u64,
    /// The LSN of the last of them, or the `from` LSN of the replay if there was none: a
    /// replay from `last` goes on after what was applied.
    pub last: Lsn,
    /// Why the replay ended before the end of the log; `None` if it reached the end.
    pub stopped: Option<StopReason>,
}

impl ReplayReport {
    /// Whether the replay reached the end of the log.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let wal = db4_runtime::MemoryWal::new(Default::default());
    /// assert!(wal.replay(db4_runtime::Lsn::ZERO, |_| Ok(()))?.is_complete());
    /// # Ok(()) }
    /// ```
    pub fn is_complete(&self) -> bool {
        self.stopped.is_none()
    }

    /// The report if the replay reached the end of the log.
    ///
    /// # Errors
    ///
    /// The callback's error if it stopped the replay, [`Error::WalCorrupted`] naming the LSN
    /// if a damaged entry did.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let wal = db4_runtime::MemoryWal::new(Default::default());
    /// let report = wal.replay(db4_runtime::Lsn::ZERO, |_| Ok(()))?.into_result()?;
    /// assert_eq!(report.applied, 0);
    /// # Ok(()) }
    /// ```
    pub fn into_result(self) -> crate::error::Result<Self> {
        match self.stopped {
            None => Ok(self),
            Some(reason) => Err(reason.into_error()),
        }
    }
}

/// Why a replay ended before the end of the log.
#[derive(Debug)]
#[non_exhaustive]
pub enum StopReason {
    /// The callback returned this error for the entry at `lsn`.
    Callback {
        /// The entry the callback refused.
        lsn: Lsn,
        /// The callback's error.
        error: Error,
    },
    /// The entry at `lsn` does not match the checksum stored with it.
    Checksum {
        /// The damaged entry.
        lsn: Lsn,
        /// The CRC-32 stored with the entry.
        stored: u32,
        /// The CRC-32 of the entry as read.
        computed: u32,
    },
    /// The entry at `lsn` cannot be read: a length, an operation code, text that is not
    /// UTF-8, an image that is not JSON.
    Malformed {
        /// The damaged entry.
        lsn: Lsn,
        /// What is wrong with it.
        reason: String,
    },
    /// The entry at `expected` is missing: the log holds `found` in its place.
    Gap {
        /// The LSN that should have come next.
        expected: Lsn,
        /// The LSN found instead.
        found: Lsn,
    },
}

impl StopReason {
    /// The LSN of the entry the replay stopped at (not applied).
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Lsn, StopReason};
    ///
    /// let stop = StopReason::Gap { expected: Lsn::new(5), found: Lsn::new(7) };
    /// assert_eq!(stop.lsn(), Lsn::new(5));
    /// ```
    pub fn lsn(&self) -> Lsn {
        match self {
            StopReason::Callback { lsn, .. } | StopReason::Checksum { lsn, .. } | StopReason::Malformed { lsn, .. } => {
                *lsn
            }
            StopReason::Gap { expected, .. } => *expected,
        }
    }

    /// The error this stop stands for: the callback's own, or [`Error::WalCorrupted`].
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Error, Lsn, StopReason};
    ///
    /// let stop = StopReason::Checksum { lsn: Lsn::new(3), stored: 1, computed: 2 };
    /// assert!(matches!(stop.into_error(), Error::WalCorrupted { lsn: 3, .. }));
    /// ```
    pub fn into_error(self) -> Error {
        match self {
            StopReason::Callback { error, .. } => error,
            other => Error::wal_corrupted(other.lsn().get(), other.to_string()),
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Callback { lsn, error } => write!(f, "the callback failed on LSN {lsn}: {error}"),
            StopReason::Checksum { lsn, stored, computed } => {
                write!(f, "entry {lsn}: stored checksum {stored:#010x}, computed {computed:#010x}")
            }
            StopReason::Malformed { lsn, reason } => write!(f, "entry {lsn}: {reason}"),
            StopReason::Gap { expected, found } => write!(f, "entry {expected} is missing: found {found} in its place"),
        }
    }
}
