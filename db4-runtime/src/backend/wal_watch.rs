//! Telling other connections' commits to a WAL-mode database file from this backend's own,
//! without a statement per check: [`Backend::foreign_commits`](super::Backend::foreign_commits)
//! for the SQLite backend.
//!
//! Every commit to a WAL-mode database, by any connection of any process, rewrites the
//! wal-index header at the start of the `-shm` file (its change counter, frame count,
//! checksums and salts; <https://www.sqlite.org/walformat.html>). A check reads those 96
//! bytes (both copies of the header) with one positioned read and compares them with the
//! bytes last accounted for: equal, nothing was committed since. When they differ, the
//! writer connection's `PRAGMA data_version` says whether anyone *else* committed (it moves
//! for other connections' commits only); that needs the writer, so a check that finds it busy
//! cannot vouch (`None`), and the writer accounts for its own commits right after each one,
//! while it still holds the connection.

use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// The bytes of the `-shm` file compared: the two copies of the wal-index header.
const HEADER: usize = 96;

/// The watch over one database file's commits.
pub(super) struct WalWatch {
    shm: File,
    state: Mutex<State>,
}

struct State {
    /// The header bytes every commit up to is accounted for.
    seen: [u8; HEADER],
    /// The writer's `PRAGMA data_version` when `seen` was taken.
    data_version: i64,
    /// Commits of other connections seen (a count of changes, not of commits).
    foreign: u64,
}

impl WalWatch {
    /// Starts watching the database at `file` (its canonical path), with `writer`, which
    /// the caller holds; `None` if there is no `-shm` file to read (the database is not in
    /// WAL mode, or opened immutable).
    pub(super) fn start(file: &Path, writer: &rusqlite::Connection) -> Option<Self> {
        let mut name = file.as_os_str().to_owned();
        name.push("-shm");
        let shm = File::open(Path::new(&name)).ok()?;
        let seen = read_header(&shm)?;
        let data_version = data_version(writer)?;
        Some(Self { shm, state: Mutex::new(State { seen, data_version, foreign: 0 }) })
    }

    /// The count of other connections' commits, if the header shows nothing unaccounted for.
    pub(super) fn check(&self) -> Result<u64, ()> {
        let header = read_header(&self.shm).ok_or(())?;
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.seen == header { Ok(state.foreign) } else { Err(()) }
    }

    /// Accounts for every commit so far, with the writer connection the caller holds (no
    /// commit of this backend's can run meanwhile); returns the count of other connections'
    /// commits, or `None` if the header or the version cannot be read.
    pub(super) fn sync(&self, writer: &rusqlite::Connection) -> Option<u64> {
        // The header first: a commit landing between the two reads moves the data version,
        // and is counted (once more, harmlessly, at the next sync).
        let header = read_header(&self.shm)?;
        let version = data_version(writer)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if version != state.data_version {
            state.foreign += 1;
            state.data_version = version;
        }
        state.seen = header;
        Some(state.foreign)
    }
}

fn data_version(conn: &rusqlite::Connection) -> Option<i64> {
    conn.prepare_cached("PRAGMA data_version").and_then(|mut s| s.query_row([], |row| row.get(0))).ok()
}

#[cfg(unix)]
fn read_header(shm: &File) -> Option<[u8; HEADER]> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0; HEADER];
    shm.read_exact_at(&mut buf, 0).ok()?;
    Some(buf)
}

#[cfg(windows)]
fn read_header(shm: &File) -> Option<[u8; HEADER]> {
    use std::os::windows::fs::FileExt;
    let mut buf = [0; HEADER];
    (shm.seek_read(&mut buf, 0).ok()? == HEADER).then_some(buf)
}

#[cfg(not(any(unix, windows)))]
fn read_header(_: &File) -> Option<[u8; HEADER]> {
    None
}
