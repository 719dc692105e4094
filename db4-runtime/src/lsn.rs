//! Log sequence numbers: the positions of entries in a log, shared by the standalone
//! write-ahead log (`wal`) and a database's change log (`cdc`).

use std::fmt;

/// A log sequence number: the position of an entry in a log.
///
/// Two logs hand them out, each its own sequence: a database's change log
/// ([`Db::changes_since`](crate::Db::changes_since)), where every committed change gets the
/// next LSN, and the standalone write-ahead log ([`MemoryWal`](crate::MemoryWal),
/// `FileWal`), where every appended record does. In both the first entry gets LSN 1 and each
/// next one the next number, and LSNs are not reused after truncation or reopening (for a
/// `FileWal`, see its documentation for the one exception, a torn tail cut off on open).
/// [`Lsn::ZERO`] comes before every entry: reading or replaying from it sees everything.
/// It serializes as its number (kept in a persisted migration plan, for one).
///
/// # Example
///
/// ```
/// use db4_runtime::Lsn;
///
/// let lsn = Lsn::new(41);
/// assert_eq!(lsn.get(), 41);
/// assert!(Lsn::ZERO < lsn);
/// assert_eq!(lsn.to_string(), "41");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Lsn(u64);

impl Lsn {
    /// The LSN before the first entry.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN with this number, for example one kept by the application (the last entry it
    /// applied) to replay from.
    pub const fn new(n: u64) -> Self {
        Lsn(n)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The LSN after this one, if there is one.
    pub(crate) fn next(self) -> Option<Lsn> {
        self.0.checked_add(1).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}
