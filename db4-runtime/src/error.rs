//! The one public error type.

use crate::lsn::Lsn;
use std::fmt;

/// `Result` with db4's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in db4.
///
/// Each variant carries the context a caller needs to act on it: the collection, the document
/// id, the field or the limit involved. Backend errors are wrapped in [`BackendError`]; no
/// `rusqlite` or `worker` type appears here.
///
/// The fields hold the full values; the `Display` text shortens ids (and savepoint names)
/// longer than 64 characters to their first 64 and their size, so that a huge id does not
/// make a huge message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document the operation needs does not exist.
    #[error("{collection}: no document with id {}", Short(id))]
    NotFound {
        /// The collection that was searched.
        collection: String,
        /// The id that was asked for.
        id: String,
    },

    /// A document with this id is already stored.
    #[error("{collection}: a document with id {} already exists", Short(id))]
    AlreadyExists {
        /// The collection written to.
        collection: String,
        /// The duplicated id.
        id: String,
    },

    /// An optimistic-lock check failed: the stored version is not the one the caller read.
    #[error("{collection}: version conflict on {}: expected version {expected}, stored version is {actual}", Short(id))]
    Conflict {
        /// The collection written to.
        collection: String,
        /// The document's id.
        id: String,
        /// The version the caller's copy carries.
        expected: u64,
        /// The version currently stored.
        actual: u64,
    },

    /// A query cannot be run as built (for example: too many bound values, a NaN operand).
    #[error("{collection}: invalid query: {reason}")]
    InvalidQuery {
        /// The collection queried.
        collection: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A value in a document cannot be stored (an empty id, a NaN in an indexed float, an id
    /// out of the storable range, ...). Nothing was written.
    #[error("{collection}: invalid value in field `{field}`: {reason}")]
    InvalidValue {
        /// The collection written to.
        collection: String,
        /// The field holding the value.
        field: String,
        /// Why the value is refused.
        reason: String,
    },

    /// A document is larger than the configured limit. Nothing was written.
    #[error("{collection}: document {} is {size} bytes, above the limit of {limit} bytes", Short(id))]
    TooLarge {
        /// The collection written to.
        collection: String,
        /// The document's id.
        id: String,
        /// The document's serialized size in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },

    /// The stored schema of a collection is incompatible with the Rust type opening it.
    #[error("{collection}: schema mismatch{}: {reason}", if field.is_empty() { String::new() } else { format!(" on field `{field}`") })]
    SchemaMismatch {
        /// The collection.
        collection: String,
        /// The field whose definition changed incompatibly.
        field: String,
        /// What changed.
        reason: String,
    },

    /// A document could not be serialized to, or deserialized from, its stored JSON.
    #[error("{collection}: cannot (de)serialize document{}: {source}", id.as_deref().map(|id| format!(" {}", Short(id))).unwrap_or_default())]
    Serialization {
        /// The collection.
        collection: String,
        /// The document's id, when known.
        id: Option<String>,
        /// The underlying serde error.
        #[source]
        source: serde_json::Error,
    },

    /// A savepoint name that is not active in this transaction.
    #[error("no active savepoint named {:?} in this transaction", Short(name))]
    UnknownSavepoint {
        /// The name asked for.
        name: String,
    },

    /// A transaction was used in a way its state does not allow, and the call was refused
    /// without changing anything: rolling back to (or releasing) a savepoint of an enclosing
    /// transaction from inside a nested one, committing or rolling back a closure transaction
    /// by hand, writing from inside an [`on_commit`](crate::Db::on_commit) observer, or going
    /// on with a transaction after one of its savepoint rollbacks failed (it can then only be
    /// rolled back, which returning `Err` from its closure or dropping it does).
    #[error("transaction misuse: {reason}")]
    TransactionState {
        /// What was refused, and why.
        reason: String,
    },

    /// Stored data is damaged: something db4 wrote itself reads back with the wrong type or an
    /// impossible value (a document that is not JSON text, a negative version, a checksum that
    /// does not match). Nothing was changed. [`Error::backend_kind`] reports it as
    /// [`BackendErrorKind::Corrupt`], as it does a damaged database file.
    #[error("{collection}: stored data is damaged{}: {what}", id.as_deref().map(|id| format!(" (document {})", Short(id))).unwrap_or_default())]
    Corrupted {
        /// What was found damaged.
        what: String,
        /// The collection (or batch store) it belongs to.
        collection: String,
        /// The document it belongs to, when known.
        id: Option<String>,
    },

    /// A write-ahead log record (or the log's state) is damaged: a checksum that does not
    /// match, a record cut short with intact records after it, a missing segment, an impossible
    /// field. Nothing after the damage was applied. A torn tail, the last records of a log cut
    /// short by a crash with nothing intact after them, is not this error: opening the log cuts
    /// it off and reports it. [`Error::backend_kind`] reports this as
    /// [`BackendErrorKind::Corrupt`].
    #[error("write-ahead log damaged at LSN {lsn}: {reason}")]
    WalCorrupted {
        /// The LSN of the first damaged or missing record; 0 when the damage is outside any
        /// record (the log's state file).
        lsn: u64,
        /// What was found, and where.
        reason: String,
    },

    /// The change log no longer holds the events asked for: they were truncated
    /// ([`Db::truncate_changes`](crate::Db::truncate_changes) or retention). Read from
    /// `oldest` on (the oldest event kept) after rebuilding what the missing events would
    /// have told, for example from a copy of the data.
    #[error("the change log no longer holds the events asked for: the oldest event kept is LSN {oldest}")]
    LogTruncated {
        /// The oldest event the log still holds.
        oldest: Lsn,
    },

    /// A live [`ChangeStream`](crate::ChangeStream) fell behind: its buffer filled and the
    /// events after `resume_after` were not delivered to it. None is lost: they are in the
    /// change log, and [`Db::changes_since`](crate::Db::changes_since)`(resume_after)` reads
    /// them.
    #[error("the change stream fell behind: read the change log from LSN {resume_after} on (Db::changes_since)")]
    Lagged {
        /// The last event the stream delivered (or the position it started from).
        resume_after: Lsn,
    },

    /// A change log call was refused, changing nothing: a consumer name that is empty or too
    /// long, an acknowledgement beyond the newest event, a consumer that was removed, a live
    /// stream on a database whose change log is off.
    #[error("change log: {reason}")]
    ChangeLog {
        /// What was refused, and why.
        reason: String,
    },

    /// A range cursor ([`Cursor`](crate::Cursor)) is not one this database handed out for
    /// this range: truncated, edited, garbage, from another database, or from a range with
    /// another index, direction, bounds, prefix or filter. Nothing was read.
    #[error("invalid cursor: {reason}")]
    InvalidCursor {
        /// What is wrong with it (never the secret or the values it holds).
        reason: String,
    },

    /// A shard ring was asked for something it cannot be, changing nothing: no shards, no
    /// virtual nodes, more shards or points than it holds, removing its last shard, splitting
    /// a shard of a ring that places keys by modulo.
    #[error("invalid shard configuration: {reason}")]
    InvalidShardConfig {
        /// What is wrong, with the numbers involved.
        reason: String,
    },

    /// A shard id that the ring does not hold (never added, or removed).
    #[error("no shard {shard} in the ring (epoch {epoch})")]
    UnknownShard {
        /// The shard asked for.
        shard: u32,
        /// The epoch of the ring asked.
        epoch: u64,
    },

    /// A step of a shard migration was asked for out of order (copying before the plan was
    /// started, switching before the catch-up, a change-log position going backwards), or two
    /// rings that make no migration: the plan is unchanged.
    #[error("migration plan: {reason}")]
    MigrationState {
        /// The step the plan is at and what was refused.
        reason: String,
    },

    /// A shard transaction ([`ShardRouter::transaction`](crate::shard::ShardRouter::transaction))
    /// touched a partition key of another shard: a transaction holds one shard's keys only.
    /// Nothing of the transaction is written.
    #[error("{collection}: a transaction on shard {shard} cannot touch partition key {key:?} of shard {other}")]
    CrossShard {
        /// The collection.
        collection: String,
        /// The shard the transaction runs on.
        shard: u32,
        /// The shard the key belongs to.
        other: u32,
        /// The partition key, as text.
        key: String,
    },

    /// The application aborted the work with an error of its own, for example a business
    /// rule or an I/O error inside a transaction closure. Built with [`Error::aborted`]; taken
    /// back out with [`Error::downcast`], [`Error::downcast_ref`] or [`Error::into_aborted`].
    /// Its `Display` and `source` are those of the application's error.
    ///
    /// [`Db::try_transaction`](crate::Db::try_transaction) carries an application's own error
    /// type without this wrapper.
    #[error(transparent)]
    Aborted(Box<dyn std::error::Error + Send + Sync + 'static>),

    /// The storage backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What kind of failure a storage backend reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The database is locked by another connection and stayed locked past the busy timeout.
    Busy,
    /// A constraint (primary key, unique, not null, check) was violated.
    Constraint,
    /// A value or row exceeds a limit of the storage engine.
    TooBig,
    /// The database file is damaged or is not a database.
    Corrupt,
    /// An operating-system level I/O failure, or the file cannot be opened.
    Io,
    /// The database was opened read-only ([`DbOptions::read_only`](crate::DbOptions)) or its
    /// file cannot be written: the write was refused and nothing changed.
    ReadOnly,
    /// The call would wait for a lock the calling thread already holds (for example a write
    /// through the `Db` from inside one of its own transactions); refused instead of hanging.
    WouldDeadlock,
    /// The backend cannot do what was asked (for example an explicit transaction on a
    /// backend that only has closure transactions).
    Unsupported,
    /// A cold-tier object a read needs is not in memory yet: the store is asynchronous (R2
    /// from a Durable Object) and the read ran outside
    /// [`StagedStore::read`](crate::tier::StagedStore::read), which fetches it and runs the
    /// read again. Nothing changed.
    NotFetched,
    /// Anything else.
    Other,
}

/// An error reported by a storage backend, with the backend's own error as its source.
#[derive(Debug)]
pub struct BackendError {
    kind: BackendErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// Builds a backend error from its kind and a message.
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// Attaches the backend's own error as the source.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// The backend's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "storage backend error ({:?}): {}", self.kind, self.message)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    pub(crate) fn invalid_value(collection: &str, field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidValue { collection: collection.to_owned(), field: field.to_owned(), reason: reason.into() }
    }

    pub(crate) fn invalid_query(collection: &str, reason: impl Into<String>) -> Self {
        Error::InvalidQuery { collection: collection.to_owned(), reason: reason.into() }
    }

    pub(crate) fn serialization(collection: &str, id: Option<String>, source: serde_json::Error) -> Self {
        Error::Serialization { collection: collection.to_owned(), id, source }
    }

    pub(crate) fn invalid_cursor(reason: impl Into<String>) -> Self {
        Error::InvalidCursor { reason: reason.into() }
    }

    pub(crate) fn change_log(reason: impl Into<String>) -> Self {
        Error::ChangeLog { reason: reason.into() }
    }

    pub(crate) fn transaction_state(reason: impl Into<String>) -> Self {
        Error::TransactionState { reason: reason.into() }
    }

    pub(crate) fn invalid_shard_config(reason: impl Into<String>) -> Self {
        Error::InvalidShardConfig { reason: reason.into() }
    }

    pub(crate) fn migration_state(reason: impl Into<String>) -> Self {
        Error::MigrationState { reason: reason.into() }
    }

    /// The one constructor of [`Error::Corrupted`].
    pub(crate) fn corrupted(collection: &str, id: Option<String>, what: impl Into<String>) -> Self {
        Error::Corrupted { what: what.into(), collection: collection.to_owned(), id }
    }

    /// The one constructor of [`Error::WalCorrupted`].
    pub(crate) fn wal_corrupted(lsn: u64, reason: impl Into<String>) -> Self {
        Error::WalCorrupted { lsn, reason: reason.into() }
    }

    /// The backend error kind, when this is a backend error ([`BackendErrorKind::Corrupt`] for
    /// [`Error::Corrupted`] and [`Error::WalCorrupted`] too).
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Error::Backend(e) => Some(e.kind()),
            Error::Corrupted { .. } | Error::WalCorrupted { .. } => Some(BackendErrorKind::Corrupt),
            _ => None,
        }
    }

    /// Wraps an application's own error (or message) as [`Error::Aborted`], so that it can
    /// leave a closure that must return [`db4::Result`](Result), such as the one passed to
    /// [`Db::transaction`](crate::Db::transaction): the transaction rolls back and the error
    /// comes out of `transaction` as it went in.
    ///
    /// # Example
    ///
    /// ```
    /// use db4_runtime::{Db, Error};
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct InsufficientFunds { missing: i64 }
    /// impl std::fmt::Display for InsufficientFunds {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "{} missing", self.missing)
    ///     }
    /// }
    /// impl std::error::Error for InsufficientFunds {}
    ///
    /// # fn main() -> db4_runtime::Result<()> {
    /// let db = Db::open_in_memory()?;
    /// let err = db.transaction(|_tx| -> db4_runtime::Result<()> {
    ///     Err(Error::aborted(InsufficientFunds { missing: 40 }))
    /// }).unwrap_err();
    /// assert_eq!(err.to_string(), "40 missing");
    /// assert_eq!(err.downcast::<InsufficientFunds>().ok(), Some(InsufficientFunds { missing: 40 }));
    /// # Ok(()) }
    /// ```
    pub fn aborted(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Error::Aborted(error.into())
    }

    /// The application's error inside an [`Error::Aborted`], if it has type `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Aborted(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Takes the application's error of type `E` out of an [`Error::Aborted`].
    ///
    /// # Errors
    ///
    /// `self`, unchanged, if it is another variant or holds an error of another type.
    pub fn downcast<E: std::error::Error + 'static>(self) -> std::result::Result<E, Self> {
        match self {
            Error::Aborted(e) => e.downcast::<E>().map(|e| *e).map_err(Error::Aborted),
            other => Err(other),
        }
    }

    /// Takes the application's error out of an [`Error::Aborted`], whatever its type.
    ///
    /// # Errors
    ///
    /// `self`, unchanged, if it is another variant.
    pub fn into_aborted(self) -> std::result::Result<Box<dyn std::error::Error + Send + Sync + 'static>, Self> {
        match self {
            Error::Aborted(e) => Ok(e),
            other => Err(other),
        }
    }
}

/// For code generic over a fallible and an infallible source of errors (the write-ahead log's
/// storage in memory cannot fail): an `Infallible` converts into any error, having no value.
impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// How many characters of an id (or a savepoint name) an error message shows.
const SHOWN_CHARS: usize = 64;

/// Displays a string in an error message, shortened to its first [`SHOWN_CHARS`] characters
/// and its size when longer: an error about a 3 MB id must not carry a 3 MB message. The
/// error's fields keep the whole value.
pub(crate) struct Short<'a>(pub &'a str);

impl Short<'_> {
    /// The part shown, cut on a character boundary, and whether anything was cut.
    fn parts(&self) -> (&str, bool) {
        match self.0.char_indices().nth(SHOWN_CHARS) {
            Some((end, _)) => (&self.0[..end], true),
            None => (self.0, false),
        }
    }
}

impl fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (all, false) => f.write_str(all),
            (head, true) => write!(f, "{head}… ({} bytes)", self.0.len()),
        }
    }
}

impl fmt::Debug for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            (all, false) => write!(f, "{all:?}"),
            (head, true) => write!(f, "{head:?}… ({} bytes)", self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_shortened_on_a_char_boundary() {
        assert_eq!(Short("abc").to_string(), "abc");
        let exact = "x".repeat(SHOWN_CHARS);
        assert_eq!(Short(&exact).to_string(), exact);
        let accents = "é".repeat(SHOWN_CHARS + 1);
        assert_eq!(Short(&accents).to_string(), format!("{}… ({} bytes)", "é".repeat(SHOWN_CHARS), accents.len()));
        assert_eq!(format!("{:?}", Short("a\"b")), "\"a\\\"b\"");
        let e = Error::NotFound { collection: "c".into(), id: "i".repeat(3 << 20) };
        let shown = e.to_string();
        assert_eq!(shown, format!("c: no document with id {}… (3145728 bytes)", "i".repeat(SHOWN_CHARS)));
        assert!(matches!(e, Error::NotFound { ref id, .. } if id.len() == 3 << 20), "the field keeps the whole id");

        let id = || "i".repeat(3 << 20);
        let c = || "c".to_owned();
        let json_error = serde_json::from_str::<u8>("x").unwrap_err();
        for e in [
            Error::AlreadyExists { collection: c(), id: id() },
            Error::Conflict { collection: c(), id: id(), expected: 1, actual: 2 },
            Error::TooLarge { collection: c(), id: id(), size: 3 << 20, limit: 1 },
            Error::Serialization { collection: c(), id: Some(id()), source: json_error },
            Error::UnknownSavepoint { name: id() },
        ] {
            let shown = e.to_string();
            assert!(shown.len() < 200, "{} bytes: {e:?}", shown.len());
            assert!(shown.contains("… (3145728 bytes)"), "{shown}");
        }
    }

    #[test]
    fn aborted_errors_come_back_out() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::aborted(io);
        assert_eq!(e.to_string(), "disk on fire");
        assert!(e.downcast_ref::<std::io::Error>().is_some());
        assert!(e.downcast_ref::<std::fmt::Error>().is_none());
        let e = e.downcast::<std::fmt::Error>().unwrap_err();
        assert_eq!(e.downcast::<std::io::Error>().map(|io| io.kind()).ok(), Some(std::io::ErrorKind::Other));
        let e = Error::aborted("balance below zero");
        assert_eq!(e.to_string(), "balance below zero");
        assert_eq!(e.into_aborted().map(|inner| inner.to_string()).ok().as_deref(), Some("balance below zero"));
        let not = Error::transaction_state("x");
        assert!(not.downcast_ref::<std::io::Error>().is_none());
        assert!(matches!(not.into_aborted(), Err(Error::TransactionState { .. })));
    }
}
