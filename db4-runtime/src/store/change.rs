//! The changes a commit made, handed to observers once it is durable.
//!
//! This is the seam change-data-capture builds on: an observer sees a write only after the
//! transaction (or single operation) that made it has committed, never one that was rolled
//! back, undone to a savepoint, or failed. Every change is recorded by the one write pipeline
//! (`store::pipeline`), whatever wrote it: a collection, a query's `delete`, a migration's
//! rewrite, or a [`BatchStore`](crate::BatchStore).

use crate::lsn::Lsn;
use crate::value::Value;
use std::borrow::Cow;

/// What a write did to a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A new document was stored.
    Insert,
    /// A stored document was replaced.
    Update,
    /// A document was inserted or replaced by an upsert that did not need to know which: no
    /// version field, and no before-image asked for (with
    /// [`DbOptions::before_images`](crate::DbOptions::before_images) the pipeline reads the
    /// row first and reports [`Insert`](Self::Insert) or [`Update`](Self::Update)).
    Upsert,
    /// A document was deleted.
    Delete,
    /// A document moved from the hot tables to the cold tier ([`Db::compact`](crate::Db::compact)):
    /// it still exists, unchanged. Not a delete.
    Archive,
    /// A document moved back from the cold tier to the hot tables, unchanged (a write to it
    /// brought it back; the write's own change follows). Not an insert.
    Restore,
}

/// One committed write.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Change {
    /// The collection (or [`BatchStore`](crate::BatchStore)) written.
    pub collection: Cow<'static, str>,
    /// The document's id.
    pub id: Value,
    /// What happened to it.
    pub kind: ChangeKind,
    /// The document's version after the write, in a collection with a version column (for a
    /// delete: the version it had, when its before-image was read). `None` otherwise.
    pub version: Option<u64>,
    /// The document as stored after the write (its JSON text); `None` for a delete.
    pub after: Option<String>,
    /// The document as it was before the write (its JSON text), when before-images are
    /// recorded ([`DbOptions::before_images`](crate::DbOptions::before_images)); `None` for
    /// an insert, or when they are not recorded.
    pub before: Option<String>,
    /// The change's position in the database's change log
    /// ([`Db::changes_since`](crate::Db::changes_since)); `None` when the log is off
    /// ([`DbOptions::change_log`](crate::DbOptions::change_log)).
    pub lsn: Option<Lsn>,
    /// The transaction that made the change: the LSN of its first change (so the changes of
    /// one commit share it); `None` when the log is off.
    pub tx_id: Option<u64>,
    /// When the change committed, in milliseconds since the Unix epoch; 0 when the log is
    /// off.
    pub at: u64,
}

impl Change {
    /// A change not yet in the log (the log gives it its LSN, transaction and time when the
    /// unit of work commits).
    pub(crate) fn new(
        collection: Cow<'static, str>,
        id: Value,
        kind: ChangeKind,
        version: Option<u64>,
        after: Option<String>,
        before: Option<String>,
    ) -> Self {
        Self { collection, id, kind, version, after, before, lsn: None, tx_id: None, at: 0 }
    }

    /// The document after the write, deserialized as `T`; `None` for a delete.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`](crate::Error::Serialization) if the stored JSON does not
    /// deserialize as `T`.
    pub fn after<T: serde::de::DeserializeOwned>(&self) -> crate::Result<Option<T>> {
        self.image(self.after.as_deref())
    }

    /// The document before the write, deserialized as `T`; `None` when there was none or it
    /// was not recorded.
    ///
    /// # Errors
    ///
    /// As [`after`](Self::after).
    pub fn before<T: serde::de::DeserializeOwned>(&self) -> crate::Result<Option<T>> {
        self.image(self.before.as_deref())
    }

    fn image<T: serde::de::DeserializeOwned>(&self, json: Option<&str>) -> crate::Result<Option<T>> {
        json.map(|json| {
            serde_json::from_str(json).map_err(|e| {
                crate::Error::serialization(&self.collection, Some(crate::store::codec::id_text(&self.id)), e)
            })
        })
        .transpose()
    }
}
