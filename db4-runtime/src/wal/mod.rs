//! A write-ahead log of document changes, usable on its own: [`MemoryWal`] keeps it in
//! memory, [`FileWal`] (feature `fs`) in a directory of segment files.
//!
//! Each [`WalRecord`] appended gets the next [`Lsn`] (1, 2, 3, ...: strictly increasing, kept
//! across truncation and reopening) and is stored encoded, with a CRC-32 over the
//! whole record when [`WalConfig::checksums`] is on. Records go into segments bounded by
//! [`WalConfig::max_size_bytes`] and [`WalConfig::max_entries`]; [`MemoryWal::checkpoint`]
//! marks everything appended so far as applied elsewhere, [`MemoryWal::truncate`] drops what
//! is no longer needed (whole segments at a time), and [`MemoryWal::replay`] hands the entries
//! after any LSN to a callback, in order, checking each one and stopping, with a
//! [`ReplayReport`] saying where and why, at the first that is damaged.
//!
//! The log is a log of records: it gives them LSNs, keeps them intact and hands them back. What
//! a record means (applying an insert, grouping records by [`WalRecord::tx_id`] and applying
//! only transactions that reached a [`WalOp::Commit`]) is the caller's.
//!
//! The record format and the file layout are written down in `docs/wal.md`.
//!
//! This file holds the record types; the rest is one file per job:
//!
//! - `config.rs`: [`WalConfig`], [`WalStats`], [`ReplayReport`] and [`StopReason`];
//! - `record.rs`: the encoding of one record, and its strict reader;
//! - `log.rs`: what both logs share: LSNs, segments, checkpoint, truncate, replay, stats;
//! - `memory.rs`: [`MemoryWal`];
//! - `file.rs`: [`FileWal`], and `disk.rs`: the segment and state files, and recovery;
//! - `model.rs` and `crash.rs` (tests only): the logs against a `Vec` model, corruption and
//!   killed processes.

mod config;
#[cfg(all(test, feature = "fs"))]
mod crash;
#[cfg(feature = "fs")]
mod disk;
#[cfg(feature = "fs")]
mod file;
mod log;
mod memory;
#[cfg(test)]
mod model;
mod record;

pub use crate::lsn::Lsn;
pub use config::{ReplayReport, StopReason, WalConfig, WalStats};
#[cfg(feature = "fs")]
pub use disk::{RecoveryReport, TornTail};
#[cfg(feature = "fs")]
pub(crate) use disk::{io_error, write_atomically};
#[cfg(feature = "fs")]
pub use file::{FileWal, FileWalOptions};
pub use memory::MemoryWal;

use crate::error::{Error, Result};
use crate::json::{self, JsonError};

/// What a [`WalRecord`] records.
///
/// # Example
///
/// ```
/// use db4_runtime::{WalOp, WalRecord};
///
/// let record = WalRecord::delete("users", "u1");
/// assert_eq!(record.op, WalOp::Delete);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WalOp {
    /// A document was created: [`WalRecord::after`] holds it.
    Insert,
    /// A document was replaced: [`WalRecord::after`] holds the new content,
    /// [`WalRecord::before`] the old one when the writer kept it.
    Update,
    /// A document was removed: [`WalRecord::before`] holds it when the writer kept it.
    Delete,
    /// Transaction [`WalRecord::tx_id`] committed: its records before this one count.
    Commit,
    /// Transaction [`WalRecord::tx_id`] was rolled back: its records before this one do not
    /// count.
    Abort,
}

impl WalOp {
    /// Every operation, in the order of their codes.
    #[cfg(test)]
    pub(crate) const ALL: [WalOp; 5] = [WalOp::Insert, WalOp::Update, WalOp::Delete, WalOp::Commit, WalOp::Abort];

    /// The operation's code in the record format (docs/wal.md); never 0.
    pub(crate) fn code(self) -> u8 {
        match self {
            WalOp::Insert => 1,
            WalOp::Update => 2,
            WalOp::Delete => 3,
            WalOp::Commit => 4,
            WalOp::Abort => 5,
        }
    }

    /// The operation with this code.
    pub(crate) fn from_code(code: u8) -> Option<WalOp> {
        Some(match code {
            1 => WalOp::Insert,
            2 => WalOp::Update,
            3 => WalOp::Delete,
            4 => WalOp::Commit,
            5 => WalOp::Abort,
            _ => return None,
        })
    }
}

/// One change to write ahead: the operation, the document it is about and, as the writer
/// chooses, its JSON before and after, its version and its transaction.
///
/// The images are JSON text, as db4 stores documents and as a [`Change`](crate::Change)
/// carries them; [`after_value`](WalRecord::after_value) and
/// [`before_value`](WalRecord::before_value) serialize any value into them, and
/// [`after_as`](WalRecord::after_as) and [`before_as`](WalRecord::before_as) read them back.
/// Appending checks that each image is JSON.
///
/// Built with [`WalRecord::insert`], [`update`](WalRecord::update),
/// [`delete`](WalRecord::delete), [`commit`](WalRecord::commit) or [`new`](WalRecord::new),
/// then the setters.
///
/// # Example
///
/// ```
/// use db4_runtime::{WalOp, WalRecord};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let record = WalRecord::update("users", "u1", r#"{"name":"Alice B."}"#)
///     .before(r#"{"name":"Alice"}"#)
///     .version(2)
///     .tx_id(7);
/// assert_eq!(record.op, WalOp::Update);
/// assert_eq!(record.before.as_deref(), Some(r#"{"name":"Alice"}"#));
/// assert_eq!((record.version, record.tx_id), (Some(2), Some(7)));
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct User { name: String }
/// let record = WalRecord::new(WalOp::Insert, "users", "u2").after_value(&User { name: "Bob".into() })?;
/// assert_eq!(record.after.as_deref(), Some(r#"{"name":"Bob"}"#));
/// assert_eq!(record.after_as::<User>()?, Some(User { name: "Bob".into() }));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalRecord {
    /// What happened.
    pub op: WalOp,
    /// The collection of the document (empty for [`WalOp::Commit`] and [`WalOp::Abort`]).
    pub collection: String,
    /// The document's id (empty for [`WalOp::Commit`] and [`WalOp::Abort`]).
    pub id: String,
    /// The document before the change (JSON text), if the writer kept it.
    pub before: Option<String>,
    /// The document after the change (JSON text).
    pub after: Option<String>,
    /// The document's version after the change, for a versioned collection.
    pub version: Option<u64>,
    /// The transaction the change belongs to.
    pub tx_id: Option<u64>,
}

impl WalRecord {
    /// A record of `op` on document `id` of `collection`, with no images, version or
    /// transaction.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::new(db4_runtime::WalOp::Insert, "users", "u1");
    /// assert_eq!(record.after, None);
    /// ```
    pub fn new(op: WalOp, collection: impl Into<String>, id: impl Into<String>) -> Self {
        Self { op, collection: collection.into(), id: id.into(), before: None, after: None, version: None, tx_id: None }
    }

    /// An [`Insert`](WalOp::Insert) of the document whose JSON text is `after`.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::insert("users", "u1", r#"{"name":"Alice"}"#);
    /// assert!(record.after.is_some());
    /// ```
    pub fn insert(collection: impl Into<String>, id: impl Into<String>, after: impl Into<String>) -> Self {
        Self::new(WalOp::Insert, collection, id).after(after)
    }

    /// An [`Update`](WalOp::Update) to the JSON text `after`; add the old content with
    /// [`before`](WalRecord::before).
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::update("users", "u1", r#"{"n":2}"#);
    /// assert_eq!(record.before, None);
    /// ```
    pub fn update(collection: impl Into<String>, id: impl Into<String>, after: impl Into<String>) -> Self {
        Self::new(WalOp::Update, collection, id).after(after)
    }

    /// A [`Delete`](WalOp::Delete); add the removed content with [`before`](WalRecord::before).
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::delete("users", "u1");
    /// assert_eq!((record.before, record.after), (None, None));
    /// ```
    pub fn delete(collection: impl Into<String>, id: impl Into<String>) -> Self {
        Self::new(WalOp::Delete, collection, id)
    }

    /// The [`Commit`](WalOp::Commit) of transaction `tx_id`.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::commit(7);
    /// assert_eq!(record.tx_id, Some(7));
    /// ```
    pub fn commit(tx_id: u64) -> Self {
        Self::new(WalOp::Commit, "", "").tx_id(tx_id)
    }

    /// Sets the document before the change, as JSON text.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::delete("users", "u1").before(r#"{"n":1}"#);
    /// assert!(record.before.is_some());
    /// ```
    pub fn before(mut self, json: impl Into<String>) -> Self {
        self.before = Some(json.into());
        self
    }

    /// Sets the document after the change, as JSON text.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::delete("users", "u1").after("null");
    /// assert_eq!(record.after.as_deref(), Some("null"));
    /// ```
    pub fn after(mut self, json: impl Into<String>) -> Self {
        self.after = Some(json.into());
        self
    }

    /// Sets the document before the change to `value`, serialized as JSON.
    ///
    /// # Errors
    ///
    /// As for storing a document: [`Error::Serialization`](crate::Error::Serialization) if
    /// serde fails, [`Error::InvalidValue`](crate::Error::InvalidValue) for a NaN or infinite
    /// float (JSON has none) or nesting too deep to read back.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let record = db4_runtime::WalRecord::delete("users", "u1").before_value(&serde_json::json!({ "n": 1 }))?;
    /// assert_eq!(record.before.as_deref(), Some(r#"{"n":1}"#));
    /// # Ok(()) }
    /// ```
    pub fn before_value<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.before = Some(self.image_json(value, "before")?);
        Ok(self)
    }

    /// Sets the document after the change to `value`, serialized as JSON.
    ///
    /// # Errors
    ///
    /// As [`before_value`](WalRecord::before_value).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let record = db4_runtime::WalRecord::new(db4_runtime::WalOp::Insert, "users", "u1").after_value(&[1, 2])?;
    /// assert_eq!(record.after.as_deref(), Some("[1,2]"));
    /// let err = db4_runtime::WalRecord::delete("users", "u1").after_value(&f64::NAN).unwrap_err();
    /// assert!(matches!(err, db4_runtime::Error::InvalidValue { .. }));
    /// # Ok(()) }
    /// ```
    pub fn after_value<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.after = Some(self.image_json(value, "after")?);
        Ok(self)
    }

    /// The document before the change, deserialized as `T`; `None` if the record has none.
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`](crate::Error::Serialization) if it does not deserialize as `T`.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let record = db4_runtime::WalRecord::delete("users", "u1").before(r#"{"n":1}"#);
    /// assert_eq!(record.before_as::<serde_json::Value>()?, Some(serde_json::json!({ "n": 1 })));
    /// # Ok(()) }
    /// ```
    pub fn before_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.image_as(self.before.as_deref())
    }

    /// The document after the change, deserialized as `T`; `None` if the record has none.
    ///
    /// # Errors
    ///
    /// As [`before_as`](WalRecord::before_as).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// let record = db4_runtime::WalRecord::insert("users", "u1", "[1,2]");
    /// assert_eq!(record.after_as::<Vec<u8>>()?, Some(vec![1, 2]));
    /// assert!(record.after_as::<String>().is_err());
    /// # Ok(()) }
    /// ```
    pub fn after_as<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        self.image_as(self.after.as_deref())
    }

    /// Sets the document's version after the change.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::delete("users", "u1").version(3);
    /// assert_eq!(record.version, Some(3));
    /// ```
    pub fn version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// Sets the transaction the change belongs to.
    ///
    /// # Example
    ///
    /// ```
    /// let record = db4_runtime::WalRecord::delete("users", "u1").tx_id(9);
    /// assert_eq!(record.tx_id, Some(9));
    /// ```
    pub fn tx_id(mut self, tx_id: u64) -> Self {
        self.tx_id = Some(tx_id);
        self
    }

    fn image_json<T: serde::Serialize + ?Sized>(&self, value: &T, field: &str) -> Result<String> {
        json::to_json(value).map_err(|e| match e {
            JsonError::Serde(e) => Error::serialization(&self.collection, Some(self.id.clone()), e),
            JsonError::NonFinite(path) => Error::invalid_value(
                &self.collection,
                field,
                format!("a NaN or infinite float at {path}: JSON has no such numbers"),
            ),
            JsonError::TooDeep(path) => Error::invalid_value(
                &self.collection,
                field,
                format!("nested more than {} levels deep at {path}, which could not be read back", json::MAX_DEPTH),
            ),
        })
    }

    fn image_as<T: serde::de::DeserializeOwned>(&self, json: Option<&str>) -> Result<Option<T>> {
        json.map(serde_json::from_str)
            .transpose()
            .map_err(|e| Error::serialization(&self.collection, Some(self.id.clone()), e))
    }
}

/// A record as the log holds it: with its LSN and, when the log keeps checksums, the CRC-32
/// stored with it (checked before the entry is handed out).
///
/// # Example
///
/// ```
/// use db4_runtime::{Lsn, MemoryWal, WalRecord};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let mut wal = MemoryWal::new(Default::default());
/// wal.append(WalRecord::delete("users", "u1"))?;
/// wal.replay(Lsn::ZERO, |entry| {
///     assert_eq!(entry.lsn, Lsn::new(1));
///     assert!(entry.checksum.is_some());
///     assert_eq!(entry.record.id, "u1");
///     Ok(())
/// })?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalEntry {
    /// The entry's position in the log.
    pub lsn: Lsn,
    /// The CRC-32 stored with the entry (and found to match), if the log keeps checksums.
    pub checksum: Option<u32>,
    /// The record appended.
    pub record: WalRecord,
}
