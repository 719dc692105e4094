//! The files of a [`FileWal`](super::FileWal) and what opening one finds in them
//! (docs/wal.md, "Files" and "Recovery").
//!
//! A directory holds segment files named after their first LSN, 20 decimal digits
//! (`00000000000000000001.wal`: names sort as numbers), each a 32-byte header and then records;
//! `wal.state`, the last checkpoint and the truncation point; `wal.lock`, held while the log
//! is open. Files are created and replaced as `<name>.tmp`, synced and renamed into place, so
//! a header or a state file is never seen half-written.

use super::Lsn;
use super::config::MAX_SEGMENT_BYTES;
use super::log::{Segment, State};
use super::record::{self, HEADER, u32_at, u64_at};
use crate::checksum::crc32;
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Bytes of a segment file before its records.
pub(crate) const SEGMENT_HEADER: usize = 32;
const SEGMENT_MAGIC: [u8; 8] = *b"db4-wal\n";
const STATE_MAGIC: [u8; 8] = *b"db4-wst\n";
const FORMAT_VERSION: u16 = 1;
/// Segment header flag: the records carry checksums.
const FLAG_CHECKSUMS: u16 = 1;
const STATE_LEN: usize = 36;
pub(crate) const STATE_FILE: &str = "wal.state";
pub(crate) const LOCK_FILE: &str = "wal.lock";
const TMP_SUFFIX: &str = ".tmp";

/// What opening a [`FileWal`](crate::FileWal) found, from
/// [`FileWal::recovery`](crate::FileWal::recovery).
///
/// # Example
///
/// ```
/// # fn main() -> db4_runtime::Result<()> {
/// # let dir = std::env::temp_dir().join(format!("db4-wal-doc-recovery-{}", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let wal = db4_runtime::FileWal::open(&dir, Default::default())?;
/// let report = wal.recovery();
/// assert_eq!((report.entries, report.torn_tail.is_none()), (0, true));
/// # drop(wal);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files kept.
    pub segments: u64,
    /// Records found intact and kept (not truncated).
    pub entries: u64,
    /// The LSN the log goes on after: its last intact record's, or the truncation point if
    /// that is later.
    pub last_lsn: Lsn,
    /// Segment files removed: those left holding only truncated records by a truncate
    /// interrupted before it removed them, and a last one left empty (the next append makes
    /// it again).
    pub removed_segments: u64,
    /// The torn tail cut off, if the log ended in one.
    pub torn_tail: Option<TornTail>,
}

/// The end of a log that was cut short (by a crash during a write, or damage to its last
/// records with nothing intact after them): found on opening, never applied, cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// The LSN of the first record not recovered: the log goes on from here.
    pub lsn: Lsn,
    /// The segment file it was in.
    pub segment: PathBuf,
    /// Where in the file it started.
    pub offset: u64,
    /// Bytes cut off.
    pub bytes_dropped: u64,
    /// What was wrong with the first record of it.
    pub reason: String,
}

/// An I/O error on `path`, as the backend error every storage failure is.
pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    let message = format!("cannot {what} {}: {e}", path.display());
    Error::Backend(BackendError::new(BackendErrorKind::Io, message).with_source(e))
}

pub(crate) fn segment_name(first: Lsn) -> String {
    format!("{:020}.wal", first.get())
}

fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // No record has LSN 0: such a file is not one of the log's.
    digits.parse().ok().filter(|&n| n > 0).map(Lsn::new)
}

pub(crate) fn segment_header(first: Lsn, checksums: bool) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(if checksums { FLAG_CHECKSUMS } else { 0 }).to_le_bytes());
    h[16..24].copy_from_slice(&first.get().to_le_bytes());
    let crc = crc32(&[&h[..28]]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header was refused.
enum HeaderError {
    /// Damaged or cut short: the segment's records may still be there.
    Damaged(String),
    /// Intact but not one this build writes (another version, another program, a renamed
    /// file): never cut or removed.
    Foreign(String),
}

/// Whether the segment's records carry checksums, from its header.
fn read_segment_header(data: &[u8], named: Lsn) -> Result<bool, HeaderError> {
    let Some(h) = data.get(..SEGMENT_HEADER) else {
        return Err(HeaderError::Damaged(format!(
            "the segment header is cut short: {} of its {SEGMENT_HEADER} bytes",
            data.len()
        )));
    };
    let (stored, computed) = (u32_at(h, 28), crc32(&[&h[..28]]));
    if stored != computed {
        return Err(HeaderError::Damaged(format!(
            "segment header checksum {stored:#010x} does not match {computed:#010x}"
        )));
    }
    if h[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Foreign("not a db4 write-ahead log segment".into()));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    let flags = u16::from_le_bytes([h[10], h[11]]);
    if version != FORMAT_VERSION || flags & !FLAG_CHECKSUMS != 0 || u32_at(h, 12) != 0 || u32_at(h, 24) != 0 {
        return Err(HeaderError::Foreign(format!(
            "segment format version {version} with flags {flags:#06x}: this build reads version {FORMAT_VERSION}"
        )));
    }
    let first = u64_at(h, 16);
    if first != named.get() {
        return Err(HeaderError::Foreign(format!("the header says the segment starts at LSN {first}")));
    }
    Ok(flags & FLAG_CHECKSUMS != 0)
}

pub(crate) fn encode_state(state: State) -> [u8; STATE_LEN] {
    let mut b = [0u8; STATE_LEN];
    b[0..8].copy_from_slice(&STATE_MAGIC);
    b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&state.checkpoint.get().to_le_bytes());
    b[24..32].copy_from_slice(&state.truncated.get().to_le_bytes());
    let crc = crc32(&[&b[..32]]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_state(b: &[u8]) -> Result<State, String> {
    if b.len() != STATE_LEN {
        return Err(format!("{} bytes, not {STATE_LEN}", b.len()));
    }
    let (stored, computed) = (u32_at(b, 32), crc32(&[&b[..32]]));
    if stored != computed {
        return Err(format!("checksum {stored:#010x} does not match {computed:#010x}"));
    }
    if b[..8] != STATE_MAGIC || b[8..10] != FORMAT_VERSION.to_le_bytes() || b[10..16].iter().any(|&x| x != 0) {
        return Err("not a db4 write-ahead log state file of this version".into());
    }
    Ok(State { checkpoint: Lsn::new(u64_at(b, 16)), truncated: Lsn::new(u64_at(b, 24)) })
}

/// Makes the directory's entries (files created, renamed) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // Only Unix can open a directory to sync it; elsewhere a rename is as durable as it gets.
    #[cfg(unix)]
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error("sync the directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` as `dir/name`, whole or not at all: to a temporary file, synced, renamed
/// over `name`, and the directory synced.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| io_error("write", &tmp, e))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| io_error("rename into place", &path, e))?;
    sync_dir(dir)
}

/// What opening found.
pub(crate) struct Recovered {
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) last: Lsn,
    pub(crate) state: State,
    pub(crate) report: RecoveryReport,
}

/// A record (or header) that is not intact, where it is.
struct Bad {
    lsn: Lsn,
    offset: usize,
    reason: String,
}

/// One segment file as read.
struct Scanned {
    path: PathBuf,
    segment: Segment,
    len: usize,
    bad: Option<Bad>,
}

/// Reads the log in `dir`: the state file, then every segment in LSN order, checking each
/// record, and decides what the log holds before changing anything. Then removes segments
/// left wholly truncated and cuts off a torn tail (see docs/wal.md, "Recovery").
///
/// # Errors
///
/// [`Error::WalCorrupted`] naming the first LSN that is damaged or missing with intact records
/// after it (or a damaged state file, LSN 0; or a segment this build cannot read); I/O
/// errors.
pub(crate) fn recover(dir: &Path) -> Result<Recovered> {
    let state = read_state(dir)?;
    let truncated = state.truncated;
    let files = segment_files(dir)?;
    let mut removed = Vec::new();
    let mut scanned: Vec<Scanned> = Vec::new();
    for (i, (first, path)) in files.iter().enumerate() {
        // The next segment starts at or below the truncation point: this one holds only
        // truncated records. Not read: damage there does not matter.
        if files.get(i + 1).is_some_and(|(next, _)| next.get() <= truncated.get().saturating_add(1)) {
            removed.push(path.clone());
            continue;
        }
        let data = read_segment(path, *first)?;
        let scan = scan_segment(path, &data, *first)?;
        let is_last = i + 1 == files.len();
        if let Some(bad) = &scan.bad {
            let at = format!("{} at byte {}: {}", path.display(), bad.offset, bad.reason);
            if !is_last {
                return Err(Error::wal_corrupted(bad.lsn.get(), format!("{at}; later segments follow")));
            }
            if let Some((lsn, offset)) = intact_after(&data, &scan, bad) {
                return Err(Error::wal_corrupted(
                    bad.lsn.get(),
                    format!("{at}; an intact record (LSN {lsn}, at byte {offset}) follows"),
                ));
            }
        }
        if let Some(prev) = scanned.last() {
            let expected = prev.segment.last().get().saturating_add(1);
            if first.get() != expected {
                return Err(Error::wal_corrupted(
                    expected.min(first.get()),
                    format!(
                        "{} ends at LSN {} but the next segment is {}: records are missing",
                        prev.path.display(),
                        prev.segment.last(),
                        path.display()
                    ),
                ));
            }
        }
        scanned.push(scan);
    }
    let next_kept = truncated.get().saturating_add(1);
    if let Some(front) = scanned.first().filter(|s| s.segment.first.get() > next_kept) {
        return Err(Error::wal_corrupted(
            next_kept,
            format!(
                "the log is truncated through LSN {truncated} but its first segment is {}: records are missing",
                front.path.display()
            ),
        ));
    }
    let last_intact = scanned.last().map_or(Lsn::ZERO, |s| s.segment.last());
    let last = last_intact.max(truncated);
    if state.checkpoint > last {
        return Err(Error::wal_corrupted(
            last.get() + 1,
            format!(
                "the last checkpoint is LSN {} but the intact records end at LSN {last_intact}: \
                 checkpointed records are missing",
                state.checkpoint
            ),
        ));
    }

    // Decided: now change the files.
    let mut report = RecoveryReport { last_lsn: last, ..RecoveryReport::default() };
    if let Some(tail) = scanned.last_mut()
        && let Some(bad) = tail.bad.take()
    {
        report.torn_tail = Some(cut_tail(tail, bad)?);
    }
    let mut segments = VecDeque::new();
    for scan in scanned {
        if scan.segment.last() <= truncated || scan.segment.len() == 0 {
            removed.push(scan.path);
        } else {
            segments.push_back(scan.segment);
        }
    }
    for path in &removed {
        remove_file(path)?;
    }
    report.removed_segments = removed.len() as u64;
    report.segments = segments.len() as u64;
    report.entries =
        segments.front().map_or(0, |front| (last.get() + 1).saturating_sub(front.first.max(Lsn::new(next_kept)).get()));
    Ok(Recovered { segments, last, state, report })
}

fn read_state(dir: &Path) -> Result<State> {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => decode_state(&bytes).map_err(|reason| {
            Error::wal_corrupted(0, format!("the state file {} is damaged: {reason}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(io_error("read", &path, e)),
    }
}

/// The segment files of `dir` in LSN order, after removing temporary files left by a crash.
fn segment_files(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| io_error("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(base) = name.strip_suffix(TMP_SUFFIX) {
            if base == STATE_FILE || parse_segment_name(base).is_some() {
                remove_file(&entry.path())?;
            }
        } else if let Some(first) = parse_segment_name(name) {
            files.push((first, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn read_segment(path: &Path, first: Lsn) -> Result<Vec<u8>> {
    let len = fs::metadata(path).map_err(|e| io_error("read", path, e))?.len();
    if len > (MAX_SEGMENT_BYTES + SEGMENT_HEADER) as u64 {
        return Err(Error::wal_corrupted(
            first.get(),
            format!("{} is {len} bytes, more than a segment can hold", path.display()),
        ));
    }
    fs::read(path).map_err(|e| io_error("read", path, e))
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", path, e)),
        _ => Ok(()),
    }
}

/// Indexes the records of one segment file up to the first that is not intact.
fn scan_segment(path: &Path, data: &[u8], first: Lsn) -> Result<Scanned> {
    let mut scanned = Scanned { path: path.to_owned(), segment: Segment::new(first, true), len: data.len(), bad: None };
    let checksums = match read_segment_header(data, first) {
        Ok(checksums) => checksums,
        Err(HeaderError::Damaged(reason)) => {
            scanned.bad = Some(Bad { lsn: first, offset: 0, reason });
            return Ok(scanned);
        }
        Err(HeaderError::Foreign(reason)) => {
            return Err(Error::wal_corrupted(first.get(), format!("{}: {reason}", path.display())));
        }
    };
    let segment = &mut scanned.segment;
    segment.checksums = checksums;
    let mut at = SEGMENT_HEADER;
    let mut expected = Some(first);
    while at < data.len() {
        let Some(lsn) = expected else {
            scanned.bad = Some(Bad { lsn: Lsn::new(u64::MAX), offset: at, reason: "no LSN is left".into() });
            break;
        };
        let reason = match record::frame(&data[at..], checksums) {
            Ok(frame) if frame.lsn() == lsn => {
                // `data` is at most 1 GiB: offsets fit a u32.
                segment.offsets.push((at - SEGMENT_HEADER) as u32);
                segment.bytes += frame.len() as u64;
                at += frame.len();
                expected = lsn.next();
                continue;
            }
            Ok(frame) => format!("the record holds LSN {} where {lsn} belongs", frame.lsn()),
            Err(e) => e.to_string(),
        };
        scanned.bad = Some(Bad { lsn, offset: at, reason });
        break;
    }
    Ok(scanned)
}

/// An intact record after the damage `bad` in `data`, with a later LSN, and where it starts:
/// if there is one, the damage is in the middle of the log, not a torn tail.
fn intact_after(data: &[u8], scan: &Scanned, bad: &Bad) -> Option<(Lsn, usize)> {
    let (from, min_lsn) = if bad.offset == 0 {
        // The header is damaged: any record of this segment, whether it has checksums or not.
        (SEGMENT_HEADER, scan.segment.first.get())
    } else {
        (bad.offset + 1, bad.lsn.get().saturating_add(1))
    };
    let header_damaged = bad.offset == 0;
    // A record after the damage holds at most one LSN per HEADER bytes.
    let max_lsn = min_lsn.saturating_add((data.len().saturating_sub(from) / HEADER) as u64);
    for at in from..data.len().saturating_sub(HEADER - 1) {
        let lsn = u64_at(data, at + 8);
        if lsn < min_lsn || lsn > max_lsn {
            continue;
        }
        let intact = |checksums| record::frame(&data[at..], checksums).is_ok_and(|f| f.lsn().get() == lsn);
        let found = if header_damaged { intact(true) || intact(false) } else { intact(scan.segment.checksums) };
        if found {
            return Some((Lsn::new(lsn), at));
        }
    }
    None
}

/// Cuts the segment file at the first record not intact (removes it if its header is the
/// damage) and says what was cut.
fn cut_tail(tail: &mut Scanned, bad: Bad) -> Result<TornTail> {
    let path = &tail.path;
    if bad.offset == 0 {
        // Nothing of the segment is kept: it goes.
        tail.segment = Segment::new(tail.segment.first, true);
        remove_file(path)?;
    } else {
        let file = fs::OpenOptions::new().write(true).open(path).map_err(|e| io_error("open", path, e))?;
        file.set_len(bad.offset as u64).and_then(|()| file.sync_all()).map_err(|e| io_error("cut", path, e))?;
    }
    Ok(TornTail {
        lsn: bad.lsn,
        segment: path.clone(),
        offset: bad.offset as u64,
        bytes_dropped: (tail.len - bad.offset) as u64,
        reason: bad.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_as_numbers() {
        assert_eq!(segment_name(Lsn::new(1)), "00000000000000000001.wal");
        assert_eq!(segment_name(Lsn::new(u64::MAX)), "18446744073709551615.wal");
        for n in [1, 99, u64::MAX] {
            assert_eq!(parse_segment_name(&segment_name(Lsn::new(n))), Some(Lsn::new(n)));
        }
        for name in [
            "1.wal",
            "00000000000000000000.wal",
            "0000000000000000000a.wal",
            "00000000000000000001.wal.tmp",
            "99999999999999999999.wal",
        ] {
            assert_eq!(parse_segment_name(name), None, "{name}");
        }
        let mut names: Vec<String> = [10, 9, 100, 1].map(|n| segment_name(Lsn::new(n))).to_vec();
        names.sort();
        assert_eq!(names.iter().map(|n| parse_segment_name(n).unwrap().get()).collect::<Vec<_>>(), [1, 9, 10, 100]);
    }

    #[test]
    fn headers_and_state_read_back_and_refuse_damage() {
        for checksums in [true, false] {
            let h = segment_header(Lsn::new(77), checksums);
            assert!(matches!(read_segment_header(&h, Lsn::new(77)), Ok(c) if c == checksums));
            assert!(matches!(read_segment_header(&h, Lsn::new(78)), Err(HeaderError::Foreign(_))));
            for bit in 0..SEGMENT_HEADER * 8 {
                let mut bad = h;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(matches!(read_segment_header(&bad, Lsn::new(77)), Err(HeaderError::Damaged(_))), "bit {bit}");
            }
            assert!(matches!(read_segment_header(&h[..31], Lsn::new(77)), Err(HeaderError::Damaged(_))));
        }
        let state = State { checkpoint: Lsn::new(5), truncated: Lsn::new(3) };
        let b = encode_state(state);
        assert_eq!(decode_state(&b), Ok(state));
        for bit in 0..STATE_LEN * 8 {
            let mut bad = b;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_state(&bad).is_err(), "bit {bit}");
        }
        assert!(decode_state(&b[..35]).is_err());
    }
}
