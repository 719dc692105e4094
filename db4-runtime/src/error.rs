//! The one public error type.

use std::fmt;

/// `Result` with db4's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in db4.
///
/// Each variant carries the context a caller needs to act on it: the collection, the document
/// id, the field or the limit involved. Backend errors are wrapped in [`BackendError`]; no
/// `rusqlite` or `worker` type appears here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The document the operation needs does not exist.
    #[error("{collection}: no document with id {id}")]
    NotFound {
        /// The collection that was searched.
        collection: String,
        /// The id that was asked for.
        id: String,
    },

    /// A document with this id is already stored.
    #[error("{collection}: a document with id {id} already exists")]
    AlreadyExists {
        /// The collection written to.
        collection: String,
        /// The duplicated id.
        id: String,
    },

    /// An optimistic-lock check failed: the stored version is not the one the caller read.
    #[error("{collection}: version conflict on {id}: expected version {expected}, stored version is {actual}")]
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
    #[error("{collection}: document {id} is {size} bytes, above the limit of {limit} bytes")]
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
    #[error("{collection}: cannot (de)serialize document{}: {source}", id.as_deref().map(|id| format!(" {id}")).unwrap_or_default())]
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
    #[error("no active savepoint named {name:?} in this transaction")]
    UnknownSavepoint {
        /// The name asked for.
        name: String,
    },

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
    /// The call would wait for a lock the calling thread already holds (for example a write
    /// through the `Db` from inside one of its own transactions); refused instead of hanging.
    WouldDeadlock,
    /// The backend cannot do what was asked (for example an explicit transaction on a
    /// backend that only has closure transactions).
    Unsupported,
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

    /// The backend error kind, when this is a backend error.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Error::Backend(e) => Some(e.kind()),
            _ => None,
        }
    }
}
