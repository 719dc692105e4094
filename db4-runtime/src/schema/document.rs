//! The [`Document`] trait `#[derive(Document)]` implements, and the traits that type-check the
//! fields it is applied to.

use super::{IdKind, Schema};
use crate::error::Result;
use crate::value::{Value, ValueError, ValueRef, to_value};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A struct stored as a document in a collection.
///
/// Implement it with `#[derive(Document)]`; the derive checks the attributes at compile time
/// and generates a `'static` [`Schema`], the accessors below and typed field handles.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a db4 document",
    label = "not a document type",
    note = "add `#[derive(Document, Serialize, Deserialize)]` to `{Self}`, with an `#[id]` field"
)]
pub trait Document: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type of the `#[id]` field.
    type Id: DocumentId;
    /// The typed field handles returned by [`Document::fields`].
    type Fields: Copy;

    /// The document type's schema.
    fn schema() -> &'static Schema;

    /// Typed handles for every stored field, for building queries.
    fn fields() -> Self::Fields;

    /// The document's id.
    fn id(&self) -> &Self::Id;

    /// The `#[version]` counter, or `None` if the type declares none.
    fn version(&self) -> Option<u64>;

    /// Sets the `#[version]` counter; a no-op if the type declares none.
    fn set_version(&mut self, version: u64);

    /// Whether the `#[version]` field's type can hold `version` (an update that would push
    /// the counter past it is refused).
    fn version_fits(version: u64) -> bool {
        let _ = version;
        true
    }

    /// How the warm tier copies a cached document out: `Some(clone)` for a type that is
    /// `Clone` (the derive finds out at the concrete type), `None` to cache the stored JSON
    /// and decode it on each hit instead.
    #[doc(hidden)]
    fn __warm_clone() -> Option<fn(&Self) -> Self>
    where
        Self: Sized,
    {
        None
    }
}

/// A [`Document`] with a `#[partition_key]` field: what a
/// [`ShardRouter`](crate::shard::ShardRouter) routes by.
///
/// `#[derive(Document)]` implements it only for a struct that declares `#[partition_key]`, so
/// a router over a type without one does not compile.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no partition key",
    label = "a shard router needs a `#[partition_key]` field",
    note = "mark the field documents are routed by with `#[partition_key]`"
)]
pub trait Partitioned: Document {
    /// The type of the `#[partition_key]` field.
    type PartitionKey: Serialize;

    /// The document's partition key.
    fn partition_key(&self) -> &Self::PartitionKey;
}

/// A type that can be a document id: `String`, `i64` or `u64`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a document id",
    label = "an `#[id]` field must be `String`, `i64` or `u64`"
)]
pub trait DocumentId: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// How the id is stored.
    const KIND: IdKind;

    /// The id as a bound SQL value.
    ///
    /// # Errors
    ///
    /// Why the id cannot be stored (an empty string, a `u64` above `i64::MAX`).
    fn to_value(&self) -> Result<Value, ValueError>;

    /// Reads an id back from its stored value.
    fn from_value(value: ValueRef<'_>) -> Option<Self>;

    /// The id as text, for error messages.
    fn to_display(&self) -> String;
}

impl DocumentId for String {
    const KIND: IdKind = IdKind::Text;

    fn to_value(&self) -> Result<Value, ValueError> {
        text_id(self)
    }

    fn from_value(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Text(s) => Some(s.to_owned()),
            _ => None,
        }
    }

    fn to_display(&self) -> String {
        self.clone()
    }
}

impl DocumentId for i64 {
    const KIND: IdKind = IdKind::Integer;

    fn to_value(&self) -> Result<Value, ValueError> {
        Ok(Value::Integer(*self))
    }

    fn from_value(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Integer(i) => Some(i),
            _ => None,
        }
    }

    fn to_display(&self) -> String {
        self.to_string()
    }
}

impl DocumentId for u64 {
    const KIND: IdKind = IdKind::Integer;

    fn to_value(&self) -> Result<Value, ValueError> {
        i64::try_from(*self)
            .map(Value::Integer)
            .map_err(|_| ValueError(format!("id {self} is above the largest storable id ({})", i64::MAX)))
    }

    fn from_value(value: ValueRef<'_>) -> Option<Self> {
        match value {
            ValueRef::Integer(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }

    fn to_display(&self) -> String {
        self.to_string()
    }
}

fn text_id(id: &str) -> Result<Value, ValueError> {
    if id.is_empty() { Err(ValueError("the id is empty".into())) } else { Ok(Value::Text(id.to_owned())) }
}

/// What a collection's `get`, `delete` and `get_many` accept as an id: the id type itself, a
/// reference to it, or `&str` for `String` ids.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as an id of type `{I}`",
    label = "expected an id of type `{I}`"
)]
pub trait IdArg<I: DocumentId> {
    /// The id as a bound SQL value.
    ///
    /// # Errors
    ///
    /// Why the id cannot be stored.
    fn id_value(&self) -> Result<Value, ValueError>;
}

impl IdArg<String> for &str {
    fn id_value(&self) -> Result<Value, ValueError> {
        text_id(self)
    }
}

impl IdArg<String> for &String {
    fn id_value(&self) -> Result<Value, ValueError> {
        text_id(self)
    }
}

impl<I: DocumentId> IdArg<I> for I {
    fn id_value(&self) -> Result<Value, ValueError> {
        self.to_value()
    }
}

impl IdArg<i64> for &i64 {
    fn id_value(&self) -> Result<Value, ValueError> {
        (*self).to_value()
    }
}

impl IdArg<u64> for &u64 {
    fn id_value(&self) -> Result<Value, ValueError> {
        (*self).to_value()
    }
}

/// An integer type that can be a `#[version]` counter.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a version counter",
    label = "a `#[version]` field must be an integer type (`u64`, `i64`, `u32`, `i32`, ...)"
)]
pub trait VersionValue {}

macro_rules! version_value {
    ($($t:ty),*) => {$( impl VersionValue for $t {} )*};
}
version_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// A type whose stored values sort the way the Rust values do, so range comparisons
/// (`gt`, `between`, ...) and `#[range_index]` make sense on it.
///
/// Implement it for your own type only if its serialized form orders correctly under SQLite's
/// comparison rules (numbers numerically, text by UTF-8 bytes). An enum of unit variants is
/// stored as its variant name, so implementing it there orders the enum by variant name, byte
/// by byte (not by declaration order); see `docs/range.md`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no order db4 can index",
    label = "range comparisons, `#[range_index]` and composite indexes need an ordered type: an integer, a float, `String`, `bool` or `char`",
    note = "implement `db4::Ordered` for your type if its serialized value sorts correctly in SQLite (an enum of unit variants then sorts by variant name)"
)]
pub trait Ordered {}

macro_rules! ordered {
    ($($t:ty),*) => {$( impl Ordered for $t {} )*};
}
ordered!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64, bool, char, String);
impl<T: Ordered> Ordered for Option<T> {}
impl<T: Ordered + ?Sized> Ordered for Box<T> {}

/// A field type that can be full-text indexed with `#[fts]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be full-text indexed",
    label = "`#[fts]` needs a text field: `String`, `Option<String>` or `Vec<String>`"
)]
pub trait FtsText {
    /// Appends the field's text to `out` (a `Vec<String>` is joined with spaces).
    fn append_text(&self, out: &mut String);
}

impl FtsText for String {
    fn append_text(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl<T: FtsText> FtsText for Option<T> {
    fn append_text(&self, out: &mut String) {
        if let Some(t) = self {
            t.append_text(out);
        }
    }
}

impl FtsText for Vec<String> {
    fn append_text(&self, out: &mut String) {
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(s);
        }
    }
}

/// A value that can stand for a field of type `T` in a query: `T` itself, plus `&str` and
/// `&String` for `String` fields and `&str` for `Option<String>` fields.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be compared with a field of type `{T}`",
    label = "expected a value of type `{T}`"
)]
pub trait QueryValue<T> {
    /// The value as a bound SQL value.
    ///
    /// # Errors
    ///
    /// Why the value cannot be bound (a NaN, an integer out of range).
    fn into_value(self) -> Result<Value, ValueError>;
}

impl<T: Serialize> QueryValue<T> for T {
    fn into_value(self) -> Result<Value, ValueError> {
        to_value(&self)
    }
}

impl QueryValue<String> for &str {
    fn into_value(self) -> Result<Value, ValueError> {
        Ok(Value::Text(self.to_owned()))
    }
}

impl QueryValue<String> for &String {
    fn into_value(self) -> Result<Value, ValueError> {
        Ok(Value::Text(self.clone()))
    }
}

impl<T: Serialize> QueryValue<Option<T>> for T {
    fn into_value(self) -> Result<Value, ValueError> {
        to_value(&self)
    }
}

impl QueryValue<Option<String>> for &String {
    fn into_value(self) -> Result<Value, ValueError> {
        Ok(Value::Text(self.clone()))
    }
}

impl QueryValue<Option<String>> for &str {
    fn into_value(self) -> Result<Value, ValueError> {
        Ok(Value::Text(self.to_owned()))
    }
}

/// A field type that `starts_with` applies to.
#[diagnostic::on_unimplemented(
    message = "`starts_with` needs a text field, and `{Self}` is not text",
    label = "not a `String` or `Option<String>` field"
)]
pub trait TextField {}
impl TextField for String {}
impl TextField for Option<String> {}

/// An `Option<_>` field: what `is_none` and `is_some` apply to.
#[diagnostic::on_unimplemented(
    message = "`is_none` / `is_some` need an `Option` field, and `{Self}` is not an `Option`",
    label = "not an `Option<_>` field"
)]
pub trait OptionField {}
impl<T> OptionField for Option<T> {}
