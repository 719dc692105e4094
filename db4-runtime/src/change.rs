//! The set of changes a commit made, handed to observers once it is durable.
//!
//! This is the seam change-data-capture builds on: an observer sees a write only after the
//! transaction (or single operation) that made it has committed, never one that was rolled
//! back, undone to a savepoint, or failed.

use crate::value::Value;

/// What a write did to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A new document was stored.
    Insert,
    /// A stored document was replaced.
    Update,
    /// A document was inserted or replaced (an upsert without a version field; which of the
    /// two is not known without an extra read).
    Upsert,
    /// A document was deleted.
    Delete,
}

/// One committed write.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The collection written.
    pub collection: &'static str,
    /// The document's id.
    pub id: Value,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// Called with the changes of each commit, in commit order.
pub(crate) type CommitObserver = Box<dyn Fn(&[Change]) + Send + Sync>;
