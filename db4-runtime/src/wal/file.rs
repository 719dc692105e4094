//! [`FileWal`]: the log in a directory of segment files.

use super::config::{ReplayReport, WalConfig, WalStats};
use super::disk::{
    self, LOCK_FILE, RecoveryReport, SEGMENT_HEADER, STATE_FILE, io_error, segment_header, segment_name,
};
use super::log::{Log, Segment, State, Storage};
use super::{Lsn, WalEntry, WalRecord};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use std::borrow::Cow;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A write-ahead log in a directory: the same methods as [`MemoryWal`](crate::MemoryWal), each
/// segment a file, every append durable (written and `fsync`ed) before it returns unless
/// [`FileWalOptions`] say otherwise, and a recovery on opening that keeps every intact record
/// and never hands out a damaged one.
///
/// **Durability.** With [`FileWalOptions::sync_on_append`] on (the default, and what
/// [`open`](FileWal::open) uses) an append that returned `Ok` survives a crash of the process
/// or of the machine. With it off (see [`open_with`](FileWal::open_with)), it survives the
/// process being killed, and the machine's crash once [`sync`](FileWal::sync), a checkpoint, a
/// truncate or the start of the next segment made it durable. A checkpoint and a truncate are
/// durable when they return.
///
/// **Recovery.** [`open`](FileWal::open) reads every segment and checks every record (length,
/// structure, LSN, and checksum when the segment has them). If the log ends in records that
/// are not intact with nothing intact after them (a torn tail, what a crash in the middle of a
/// write leaves), they are cut off, never applied, and reported in
/// [`recovery`](FileWal::recovery): the log goes on after the last intact record. Damage with
/// intact records after it, a missing segment, or a damaged state file is an
/// [`Error::WalCorrupted`] naming the first LSN affected, and the files are left as they are.
///
/// The directory is locked while the log is open: a second `open` of it, in this process or
/// another, is refused. The file format is written down in `docs/wal.md`.
///
/// # Example
///
/// ```
/// use db4_runtime::{FileWal, Lsn, WalConfig, WalRecord};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let dir = std::env::temp_dir().join(format!("db4-wal-doc-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// {
///     let mut wal = FileWal::open(&dir, WalConfig::default())?;
///     wal.append(WalRecord::insert("users", "doc-1", r#"{"name":"Alice"}"#))?;
///     wal.append(WalRecord::delete("users", "doc-1"))?;
///     wal.checkpoint()?;
/// }
/// // After a restart (or a crash):
/// let wal = FileWal::open(&dir, WalConfig::default())?;
/// assert!(wal.recovery().torn_tail.is_none());
/// assert_eq!(wal.stats().last_checkpoint, Lsn::new(2));
/// let mut ids = Vec::new();
/// wal.replay(Lsn::ZERO, |entry| {
///     ids.push(entry.lsn.get());
///     Ok(())
/// })?
/// .into_result()?;
/// assert_eq!(ids, [1, 2]);
/// # drop(wal);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(()) }
/// ```
pub struct FileWal {
    log: Log<Files>,
    recovery: RecoveryReport,
}

impl FileWal {
    /// Opens the log in `dir`, creating the directory if it does not exist, and recovers what
    /// it holds (see [`FileWal`]); each append is `fsync`ed before it returns (the default
    /// [`FileWalOptions`]; [`open_with`](FileWal::open_with) takes others).
    ///
    /// The configuration can differ from the one the log was written with: the bounds apply
    /// to the segments written from now on, and a change of [`WalConfig::checksums`] starts a
    /// new segment.
    ///
    /// # Errors
    ///
    /// [`Error::WalCorrupted`] for damage that is not a torn tail (nothing is changed then),
    /// a [`Busy`](BackendErrorKind::Busy) backend error if the log is open already, an
    /// [`Io`](BackendErrorKind::Io) one if the directory cannot be read or written.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-open-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let wal = db4_runtime::FileWal::open(&dir, Default::default())?;
    /// let again = db4_runtime::FileWal::open(&dir, Default::default());
    /// assert_eq!(again.unwrap_err().backend_kind(), Some(db4_runtime::BackendErrorKind::Busy));
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Self> {
        Self::open_with(dir, config, FileWalOptions::default())
    }

    /// Opens the log in `dir` as [`open`](FileWal::open) does, writing its files as `options`
    /// say.
    ///
    /// The options are not stored: each open chooses its own, whatever the log was written
    /// with.
    ///
    /// # Errors
    ///
    /// As [`open`](FileWal::open).
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{FileWal, FileWalOptions, Lsn, WalConfig, WalRecord};
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-open-with-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// // A bulk load: no `fsync` per append, one at the end.
    /// let mut wal = FileWal::open_with(&dir, WalConfig::default(), FileWalOptions { sync_on_append: false })?;
    /// for id in ["a", "b", "c"] {
    ///     wal.append(WalRecord::delete("users", id))?;
    /// }
    /// wal.sync()?;
    /// drop(wal);
    /// let wal = FileWal::open(&dir, WalConfig::default())?;
    /// assert_eq!(wal.stats().last_lsn, Lsn::new(3));
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn open_with(dir: impl AsRef<Path>, config: WalConfig, options: FileWalOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
        let lock = lock(&dir)?;
        let recovered = disk::recover(&dir)?;
        let active = match recovered.segments.back() {
            Some(segment) => Some(Active::open(&dir, segment)?),
            None => None,
        };
        let files = Files { dir, sync_on_append: options.sync_on_append, active, broken: None, _lock: lock };
        let log = Log::new(files, config, recovered.segments, recovered.last, recovered.state);
        Ok(Self { log, recovery: recovered.report })
    }

    /// Appends `record`, makes it durable (see [`FileWal`]) and returns its LSN.
    ///
    /// Every [`WalConfig::checkpoint_interval`] appends, it also checkpoints; if that
    /// checkpoint cannot be stored, the append still succeeds and the next append tries the
    /// checkpoint again first, failing (without appending) if it fails again.
    ///
    /// # Errors
    ///
    /// As [`MemoryWal::append`](crate::MemoryWal::append), and a backend error if the files
    /// cannot be written: nothing was appended then. After a failed `fsync` the log refuses
    /// every later write, since what reached the disk is unknown; reopening it finds out.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-append-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let mut wal = db4_runtime::FileWal::open(&dir, Default::default())?;
    /// let lsn = wal.append(db4_runtime::WalRecord::delete("users", "u1"))?;
    /// assert_eq!(lsn.get(), 1);
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn append(&mut self, record: WalRecord) -> Result<Lsn> {
        self.log.append(&record)
    }

    /// Marks everything appended so far as checkpointed and stores it (durably, with every
    /// record it covers), calls [`WalConfig::on_checkpoint`], and returns the checkpoint's LSN.
    ///
    /// # Errors
    ///
    /// A backend error if the state file cannot be written; the checkpoint is not made then.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-ckpt-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let mut wal = db4_runtime::FileWal::open(&dir, Default::default())?;
    /// wal.append(db4_runtime::WalRecord::delete("users", "u1"))?;
    /// assert_eq!(wal.checkpoint()?.get(), 1);
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn checkpoint(&mut self) -> Result<Lsn> {
        self.log.checkpoint()
    }

    /// Drops the records at or below `lsn`, as [`MemoryWal::truncate`](crate::MemoryWal::truncate)
    /// does, removing the segment files left without records; returns how many records it
    /// dropped. The truncation point is stored (durably) first, so a crash before the files
    /// are removed leaves them to the next [`open`](FileWal::open) to remove.
    ///
    /// # Errors
    ///
    /// A backend error if the state file cannot be written (nothing is dropped then) or a
    /// segment file cannot be removed (the records are dropped all the same; a later
    /// truncate or open removes the file).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-trunc-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let mut wal = db4_runtime::FileWal::open(&dir, Default::default())?;
    /// wal.append(db4_runtime::WalRecord::delete("users", "u1"))?;
    /// let checkpoint = wal.checkpoint()?;
    /// assert_eq!(wal.truncate(checkpoint)?, 1);
    /// assert_eq!(wal.stats().segments, 0);
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn truncate(&mut self, lsn: Lsn) -> Result<u64> {
        self.log.truncate(lsn)
    }

    /// Hands each record held with an LSN above `from` to `f`, in LSN order, reading the
    /// segment files and checking each record again, as
    /// [`MemoryWal::replay`](crate::MemoryWal::replay) does.
    ///
    /// # Errors
    ///
    /// A backend error if a segment file cannot be read. Damage and the callback's errors
    /// stop the replay and are reported in [`ReplayReport::stopped`].
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-replay-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let mut wal = db4_runtime::FileWal::open(&dir, Default::default())?;
    /// wal.append(db4_runtime::WalRecord::delete("users", "u1"))?;
    /// let report = wal.replay(db4_runtime::Lsn::ZERO, |entry| {
    ///     assert_eq!(entry.record.id, "u1");
    ///     Ok(())
    /// })?;
    /// assert_eq!(report.applied, 1);
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn replay(&self, from: Lsn, f: impl FnMut(&WalEntry) -> Result<()>) -> Result<ReplayReport> {
        self.log.replay(from, f)
    }

    /// What the log holds.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-stats-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let wal = db4_runtime::FileWal::open(&dir, Default::default())?;
    /// assert_eq!(wal.stats().entries, 0);
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> WalStats {
        self.log.stats()
    }

    /// Makes every record appended so far durable; needed only without
    /// [`FileWalOptions::sync_on_append`].
    ///
    /// # Errors
    ///
    /// A backend error if the `fsync` fails; the log then refuses every later write.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-sync-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let options = db4_runtime::FileWalOptions { sync_on_append: false };
    /// let mut wal = db4_runtime::FileWal::open_with(&dir, Default::default(), options)?;
    /// for id in ["a", "b", "c"] {
    ///     wal.append(db4_runtime::WalRecord::delete("users", id))?;
    /// }
    /// wal.sync()?; // all three are on disk
    /// # drop(wal);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok(()) }
    /// ```
    pub fn sync(&mut self) -> Result<()> {
        self.log.storage_mut().sync()
    }

    /// What opening the log found: the records kept, and the torn tail cut off, if any.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.log.storage().dir
    }
}

impl fmt::Debug for FileWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWal").field("dir", &self.dir()).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// How a [`FileWal`] writes its files, for [`FileWal::open_with`]: what only the file log
/// needs, beside the [`WalConfig`] both logs share. [`FileWal::open`] takes the default.
///
/// # Example
///
/// ```
/// use db4_runtime::FileWalOptions;
///
/// assert!(FileWalOptions::default().sync_on_append);
/// let bulk = FileWalOptions { sync_on_append: false };
/// assert_eq!(bulk, FileWalOptions::default().sync_on_append(false));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileWalOptions {
    /// Make each append durable (`fsync`) before it returns (default on). Off, appends reach
    /// the operating system at once (they survive the process being killed) but the disk only
    /// at [`FileWal::sync`], a checkpoint, a truncate, the start of a new segment or drop, so a
    /// power loss can take the last ones.
    pub sync_on_append: bool,
}

impl Default for FileWalOptions {
    fn default() -> Self {
        Self { sync_on_append: true }
    }
}

impl FileWalOptions {
    /// Turns the `fsync` after each append on or off.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(!db4_runtime::FileWalOptions::default().sync_on_append(false).sync_on_append);
    /// ```
    pub fn sync_on_append(mut self, on: bool) -> Self {
        self.sync_on_append = on;
        self
    }
}

/// Takes the directory's lock file, held until the log is dropped.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open", &path, e))?;
    // A lock held only for an instant is waited for: a process that forks a child (any
    // `std::process::Command` on another thread) lends the child its open files until the
    // child's `exec` closes them, and with them a lock that was already given back.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Backend(BackendError::new(
                    BackendErrorKind::Busy,
                    format!("write-ahead log: {} is open already", dir.display()),
                )));
            }
            Err(TryLockError::Error(e)) => return Err(io_error("lock", &path, e)),
        }
    }
}

/// How long [`lock`] waits for a lock that is taken before saying the log is open already.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The segment being appended to.
struct Active {
    first: Lsn,
    file: File,
    path: PathBuf,
    /// The file's length: what the index knows of it.
    len: u64,
    /// Appended to since the last `fsync`.
    dirty: bool,
}

impl Active {
    fn open(dir: &Path, segment: &Segment) -> Result<Self> {
        let path = dir.join(segment_name(segment.first));
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| io_error("open", &path, e))?;
        Ok(Self { first: segment.first, file, path, len: SEGMENT_HEADER as u64 + segment.bytes, dirty: false })
    }
}

/// The segment files of a directory.
pub(crate) struct Files {
    dir: PathBuf,
    sync_on_append: bool,
    active: Option<Active>,
    /// Why the files may no longer be what the index says: every write is refused.
    broken: Option<String>,
    _lock: File,
}

impl Files {
    fn check(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(Error::Backend(BackendError::new(
                BackendErrorKind::Io,
                format!("write-ahead log {}: refused after an earlier failure ({why}); reopen it", self.dir.display()),
            ))),
        }
    }

    /// `fsync`s the active segment if it has unsynced appends.
    fn sync(&mut self) -> Result<()> {
        self.check()?;
        let Some(active) = self.active.as_mut().filter(|a| a.dirty) else { return Ok(()) };
        if let Err(e) = active.file.sync_data() {
            self.broken = Some(format!("fsync of {} failed: {e}", active.path.display()));
            return Err(io_error("sync", &active.path, e));
        }
        active.dirty = false;
        Ok(())
    }
}

impl Storage for Files {
    type Error = Error;

    fn create(&mut self, first: Lsn, checksums: bool, _expected_bytes: usize) -> Result<()> {
        // The segment before must be on disk before one after it exists: a crash must not
        // leave a hole in the middle of the log.
        self.sync()?;
        let name = segment_name(first);
        disk::write_atomically(&self.dir, &name, &segment_header(first, checksums))?;
        let segment = Segment::new(first, checksums);
        self.active = Some(Active::open(&self.dir, &segment)?);
        Ok(())
    }

    fn append(&mut self, record: &[u8]) -> Result<()> {
        self.check()?;
        let Some(active) = self.active.as_mut() else {
            return Err(Error::Backend(BackendError::new(BackendErrorKind::Other, "no segment is open for appending")));
        };
        if let Err(e) = active.file.write_all(record) {
            // Cut off whatever part of the record reached the file, so that the next record
            // does not follow a torn one; if that fails too, the file is not what the index says.
            if let Err(cut) = active.file.set_len(active.len) {
                self.broken = Some(format!("a failed write to {} could not be undone: {cut}", active.path.display()));
            }
            return Err(io_error("write", &active.path, e));
        }
        if self.sync_on_append {
            if let Err(e) = active.file.sync_data() {
                let _ = active.file.set_len(active.len);
                self.broken = Some(format!("fsync of {} failed: {e}", active.path.display()));
                return Err(io_error("sync", &active.path, e));
            }
        } else {
            active.dirty = true;
        }
        active.len += record.len() as u64;
        Ok(())
    }

    fn remove_oldest(&mut self, segment: &Segment) -> Result<()> {
        let path = self.dir.join(segment_name(segment.first));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error("remove", &path, e)),
            _ => {}
        }
        // Still open for appending if the file could not be removed: it is still indexed.
        if self.active.as_ref().is_some_and(|a| a.first == segment.first) {
            self.active = None;
        }
        Ok(())
    }

    fn read(&self, _index: usize, segment: &Segment, from: usize) -> Result<Cow<'_, [u8]>> {
        let path = self.dir.join(segment_name(segment.first));
        let read = || -> std::io::Result<Vec<u8>> {
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(SEGMENT_HEADER as u64 + from as u64))?;
            let want = segment.bytes.saturating_sub(from as u64);
            let mut bytes = Vec::with_capacity(want as usize);
            // A file cut short since it was opened reads short; replay reports the record.
            file.take(want).read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        read().map(Cow::Owned).map_err(|e| io_error("read", &path, e))
    }

    fn save(&mut self, state: State) -> Result<()> {
        // The records a checkpoint covers must be on disk before it is.
        self.sync()?;
        disk::write_atomically(&self.dir, STATE_FILE, &disk::encode_state(state))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        // Best effort: without sync_on_append, an error here is what `sync` is for.
        if let Some(active) = self.active.as_mut().filter(|a| a.dirty) {
            let _ = active.file.sync_data();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::model::{Rng, TempDir, record_from};
    use crate::wal::{StopReason, TornTail};

    fn entries(wal: &FileWal) -> Result<Vec<WalEntry>> {
        let mut out = Vec::new();
        wal.replay(Lsn::ZERO, |e| {
            out.push(e.clone());
            Ok(())
        })?
        .into_result()?;
        Ok(out)
    }

    fn records(seeds: std::ops::Range<u64>) -> Vec<WalRecord> {
        seeds.map(|s| record_from(s, 100)).collect()
    }

    fn small() -> WalConfig {
        WalConfig::default().max_entries(4).max_size_bytes(4096)
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        files.sort();
        files
    }

    fn dir_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut all: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.clone(), std::fs::read(p).unwrap()))
            .collect();
        all.sort();
        all
    }

    /// Opens a log in `dir` holding `records`, closed again.
    fn write_log(dir: &Path, config: WalConfig, records: &[WalRecord]) -> Result<()> {
        let mut wal = FileWal::open(dir, config)?;
        for r in records {
            wal.append(r.clone())?;
        }
        Ok(())
    }

    fn corrupted_at<T: fmt::Debug>(result: Result<T>) -> u64 {
        match result {
            Err(Error::WalCorrupted { lsn, .. }) => lsn,
            other => panic!("expected WalCorrupted, got {other:?}"),
        }
    }

    #[test]
    fn reopening_gives_the_same_entries() -> Result<()> {
        let dir = TempDir::new("reopen");
        let first = records(0..30);
        write_log(dir.path(), small(), &first)?;
        assert_eq!(segment_files(dir.path()).len(), 8);
        // Other bounds on reopening apply to new segments only.
        let mut wal = FileWal::open(dir.path(), WalConfig::default().max_entries(100))?;
        let report = wal.recovery().clone();
        assert_eq!((report.entries, report.segments, report.last_lsn), (30, 8, Lsn::new(30)));
        assert_eq!(report.torn_tail, None);
        let got = entries(&wal)?;
        assert_eq!(got.iter().map(|e| &e.record).collect::<Vec<_>>(), first.iter().collect::<Vec<_>>());
        assert!(got.iter().enumerate().all(|(i, e)| e.lsn == Lsn::new(i as u64 + 1) && e.checksum.is_some()));
        let stats = wal.stats();
        assert_eq!((stats.entries, stats.last_lsn, stats.first_lsn), (30, Lsn::new(30), Lsn::new(1)));
        assert_eq!(wal.append(record_from(99, 10))?, Lsn::new(31));
        assert_eq!(wal.stats().segments, 8, "the last segment had room");
        drop(wal);
        let wal = FileWal::open(dir.path(), small())?;
        let got = entries(&wal)?;
        assert_eq!(got.len(), 31);
        let mut encoded = Vec::new();
        for e in &got {
            crate::wal::record::encode(&mut encoded, e.lsn, &e.record, true)?;
        }
        assert_eq!(wal.stats().bytes, encoded.len() as u64);
        let on_disk: u64 = segment_files(dir.path()).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
        assert_eq!(on_disk, encoded.len() as u64 + 8 * SEGMENT_HEADER as u64);
        Ok(())
    }

    #[test]
    fn a_second_open_is_refused_until_the_first_is_dropped() -> Result<()> {
        let dir = TempDir::new("lock");
        let wal = FileWal::open(dir.path(), small())?;
        let err = FileWal::open(dir.path(), small()).unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Busy), "{err}");
        drop(wal);
        FileWal::open(dir.path(), small())?;
        Ok(())
    }

    #[test]
    fn a_torn_tail_is_cut_reported_and_never_applied() -> Result<()> {
        let dir = TempDir::new("torn");
        write_log(dir.path(), small(), &records(0..10))?;
        let last = segment_files(dir.path()).pop().unwrap();
        let intact_len = std::fs::metadata(&last).unwrap().len();
        // The first 30 bytes of the record a crash interrupted.
        let mut next = Vec::new();
        crate::wal::record::encode(&mut next, Lsn::new(11), &record_from(10, 100), true)?;
        let mut torn = std::fs::read(&last).unwrap();
        torn.extend_from_slice(&next[..30]);
        std::fs::write(&last, &torn).unwrap();

        let mut wal = FileWal::open(dir.path(), small())?;
        let tail: &TornTail = wal.recovery().torn_tail.as_ref().expect("reported");
        assert_eq!((tail.lsn, tail.offset, tail.bytes_dropped), (Lsn::new(11), intact_len, 30));
        assert_eq!(&tail.segment, &last);
        assert!(tail.reason.contains("cut short"), "{}", tail.reason);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), intact_len, "cut off");
        assert_eq!(entries(&wal)?.len(), 10);
        assert_eq!(wal.append(record_from(11, 100))?, Lsn::new(11));
        drop(wal);
        let wal = FileWal::open(dir.path(), small())?;
        assert_eq!(wal.recovery().torn_tail, None);
        assert_eq!(
            entries(&wal)?.last().map(|e| (e.lsn, e.record.clone())),
            Some((Lsn::new(11), record_from(11, 100)))
        );
        Ok(())
    }

    #[test]
    fn damage_in_the_middle_is_an_error_naming_the_lsn_and_changes_nothing() -> Result<()> {
        let dir = TempDir::new("middle");
        write_log(dir.path(), small(), &records(0..10))?;
        let files = segment_files(dir.path());
        // A bit in the third record of the first segment.
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let r1 = crate::wal::record::u32_at(&bytes, SEGMENT_HEADER) as usize;
        let r2 = crate::wal::record::u32_at(&bytes, SEGMENT_HEADER + r1) as usize;
        bytes[SEGMENT_HEADER + r1 + r2 + 60] ^= 0x10;
        std::fs::write(&files[0], &bytes).unwrap();
        let before = dir_bytes(dir.path());
        let err = FileWal::open(dir.path(), small()).unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Corrupt));
        assert!(err.to_string().contains("LSN 3"), "{err}");
        assert_eq!(corrupted_at(FileWal::open(dir.path(), small())), 3);
        assert_eq!(dir_bytes(dir.path()), before, "nothing was changed");

        // The same in the last segment, with an intact record after it.
        let dir = TempDir::new("middle-last");
        write_log(dir.path(), small(), &records(0..10))?;
        let last = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        bytes[SEGMENT_HEADER + 8] ^= 1; // the LSN of record 9
        std::fs::write(&last, &bytes).unwrap();
        assert_eq!(corrupted_at(FileWal::open(dir.path(), small())), 9);
        Ok(())
    }

    #[test]
    fn a_missing_segment_is_an_error() -> Result<()> {
        let dir = TempDir::new("missing");
        write_log(dir.path(), small(), &records(0..10))?;
        let files = segment_files(dir.path());
        std::fs::remove_file(&files[1]).unwrap();
        assert_eq!(corrupted_at(FileWal::open(dir.path(), small())), 5);
        std::fs::remove_file(&files[0]).unwrap();
        assert_eq!(corrupted_at(FileWal::open(dir.path(), small())), 1, "the head is missing");
        Ok(())
    }

    #[test]
    fn truncation_survives_reopening_and_lsns_keep_counting() -> Result<()> {
        let dir = TempDir::new("truncate");
        write_log(dir.path(), small(), &records(0..10))?;
        let files = segment_files(dir.path());
        let saved = std::fs::read(&files[0]).unwrap();
        let mut wal = FileWal::open(dir.path(), small())?;
        assert_eq!(wal.truncate(Lsn::new(6))?, 6);
        assert_eq!(segment_files(dir.path()).len(), 2, "the first segment went");
        drop(wal);
        // A truncate interrupted before removing its files: the next open removes them.
        std::fs::write(&files[0], &saved).unwrap();
        let mut wal = FileWal::open(dir.path(), small())?;
        assert_eq!(wal.recovery().removed_segments, 1);
        assert_eq!(wal.recovery().entries, 4);
        assert_eq!(entries(&wal)?.first().map(|e| e.lsn), Some(Lsn::new(7)));
        assert_eq!(wal.stats().first_lsn, Lsn::new(7));
        assert_eq!(wal.truncate(Lsn::new(1000))?, 4);
        assert!(segment_files(dir.path()).is_empty());
        drop(wal);
        let mut wal = FileWal::open(dir.path(), small())?;
        assert_eq!(wal.stats().last_lsn, Lsn::new(10));
        assert_eq!(wal.append(record_from(1, 10))?, Lsn::new(11), "LSNs are never reused");
        drop(wal);
        let wal = FileWal::open(dir.path(), small())?;
        assert_eq!(entries(&wal)?.iter().map(|e| e.lsn.get()).collect::<Vec<_>>(), [11]);
        Ok(())
    }

    #[test]
    fn checkpoints_are_stored_and_must_be_covered_by_records() -> Result<()> {
        let dir = TempDir::new("checkpoint");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let hook = std::sync::Arc::clone(&seen);
        let config = small().checkpoint_interval(4).on_checkpoint(move |lsn| hook.lock().unwrap().push(lsn.get()));
        write_log(dir.path(), config.clone(), &records(0..10))?;
        assert_eq!(*seen.lock().unwrap(), [4, 8]);
        let wal = FileWal::open(dir.path(), config)?;
        assert_eq!(wal.stats().last_checkpoint, Lsn::new(8));
        drop(wal);
        // Records a checkpoint covers cannot have been torn: their loss is damage.
        // (A whole last segment gone, 9 and 10, looks like a log that ended at 8.)
        let last = segment_files(dir.path()).pop().unwrap();
        std::fs::remove_file(last).unwrap();
        assert_eq!(FileWal::open(dir.path(), small())?.stats().last_lsn, Lsn::new(8));
        let last = segment_files(dir.path()).pop().unwrap();
        std::fs::remove_file(last).unwrap();
        assert_eq!(corrupted_at(FileWal::open(dir.path(), small())), 5, "the log ends at 4, checkpointed at 8");
        Ok(())
    }

    #[test]
    fn a_damaged_state_file_is_an_error() -> Result<()> {
        let dir = TempDir::new("state");
        let mut wal = FileWal::open(dir.path(), small())?;
        wal.append(record_from(1, 10))?;
        wal.checkpoint()?;
        drop(wal);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 4;
        std::fs::write(&path, &bytes).unwrap();
        let err = FileWal::open(dir.path(), small()).unwrap_err();
        assert!(matches!(&err, Error::WalCorrupted { lsn: 0, reason } if reason.contains("state file")), "{err:?}");
        Ok(())
    }

    #[test]
    fn leftover_temporary_files_are_removed_and_others_left_alone() -> Result<()> {
        let dir = TempDir::new("tmp");
        write_log(dir.path(), small(), &records(0..3))?;
        for name in ["00000000000000000004.wal.tmp", "wal.state.tmp"] {
            std::fs::write(dir.path().join(name), b"half").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let wal = FileWal::open(dir.path(), small())?;
        assert_eq!(entries(&wal)?.len(), 3);
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["00000000000000000001.wal", "notes.txt", "wal.lock"]);
        Ok(())
    }

    #[test]
    fn checksums_can_be_turned_off_and_on_between_opens() -> Result<()> {
        let dir = TempDir::new("checksums");
        write_log(dir.path(), small(), &records(0..2))?;
        write_log(dir.path(), small().checksums(false), &records(2..4))?;
        let wal = FileWal::open(dir.path(), small())?;
        let got = entries(&wal)?;
        assert_eq!(got.iter().map(|e| e.checksum.is_some()).collect::<Vec<_>>(), [true, true, false, false]);
        assert_eq!(wal.stats().segments, 2, "the change started a segment");
        Ok(())
    }

    #[test]
    fn without_sync_on_append_the_log_works_the_same() -> Result<()> {
        let dir = TempDir::new("nosync");
        let options = FileWalOptions { sync_on_append: false };
        let mut wal = FileWal::open_with(dir.path(), small(), options)?;
        for r in records(0..9) {
            wal.append(r)?;
        }
        wal.sync()?;
        wal.sync()?;
        drop(wal);
        let wal = FileWal::open_with(dir.path(), small(), options)?;
        assert_eq!(entries(&wal)?.iter().map(|e| e.record.clone()).collect::<Vec<_>>(), records(0..9));
        Ok(())
    }

    #[test]
    fn a_segment_of_another_format_is_refused_untouched() -> Result<()> {
        let dir = TempDir::new("foreign");
        write_log(dir.path(), small(), &records(0..3))?;
        let last = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        bytes[8] = 2; // version 2, with a matching header checksum
        let crc = crate::checksum::crc32(&[&bytes[..28]]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes.truncate(SEGMENT_HEADER + 5); // and what looks like a torn record
        std::fs::write(&last, &bytes).unwrap();
        let err = FileWal::open(dir.path(), small()).unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        assert_eq!(std::fs::read(&last).unwrap(), bytes, "not cut");
        Ok(())
    }

    #[test]
    fn replay_reports_damage_done_after_opening() -> Result<()> {
        let dir = TempDir::new("late-damage");
        let mut wal = FileWal::open(dir.path(), small())?;
        for r in records(0..3) {
            wal.append(r)?;
        }
        let path = segment_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let r1 = crate::wal::record::u32_at(&bytes, SEGMENT_HEADER) as usize;
        bytes[SEGMENT_HEADER + r1 + 55] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let report = wal.replay(Lsn::ZERO, |e| {
            seen.push(e.lsn.get());
            Ok(())
        })?;
        assert_eq!(seen, [1]);
        assert!(matches!(report.stopped, Some(StopReason::Checksum { lsn, .. }) if lsn == Lsn::new(2)), "{report:?}");
        // Cut short: the replay stops at the first record missing.
        std::fs::write(&path, &bytes[..SEGMENT_HEADER + r1]).unwrap();
        let report = wal.replay(Lsn::new(1), |_| Ok(()))?;
        assert!(matches!(report.stopped, Some(StopReason::Malformed { lsn, .. }) if lsn == Lsn::new(2)), "{report:?}");
        Ok(())
    }

    #[test]
    fn random_records_of_every_size_read_back() -> Result<()> {
        let dir = TempDir::new("sizes");
        let mut rng = Rng(3);
        let all: Vec<WalRecord> = (0..40).map(|_| record_from(rng.next(), rng.below(3000))).collect();
        let config = WalConfig::default().max_size_bytes(16 * 1024).max_entries(1000);
        write_log(dir.path(), config.clone(), &all)?;
        let wal = FileWal::open(dir.path(), config)?;
        assert_eq!(entries(&wal)?.into_iter().map(|e| e.record).collect::<Vec<_>>(), all);
        assert!(wal.stats().segments > 1);
        Ok(())
    }
}
