//! SQL values and the conversion of Rust values into them.

use serde::Serialize;
use serde::ser::{self, Impossible};
use std::fmt;

/// A value as SQLite stores it: the parameter type of every statement db4 runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A 64-bit signed integer (booleans are stored as 0 and 1, as SQLite's JSON functions do).
    Integer(i64),
    /// A finite 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(String),
    /// Raw bytes.
    Blob(Vec<u8>),
}

/// A borrowed [`Value`], as read from a result row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// SQL `NULL`.
    Null,
    /// A 64-bit signed integer.
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text.
    Text(&'a str),
    /// Raw bytes.
    Blob(&'a [u8]),
}

impl Value {
    /// Borrows this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

impl ValueRef<'_> {
    /// Copies this value into an owned [`Value`].
    pub fn to_owned(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(s) => Value::Text(s.to_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// Writes this value into `dst`, reusing `dst`'s buffer when both are text or both bytes
    /// (a reader that keeps only its latest row's values copies without allocating).
    pub(crate) fn write_to(self, dst: &mut Value) {
        match (self, &mut *dst) {
            (ValueRef::Text(s), Value::Text(d)) => {
                d.clear();
                d.push_str(s);
            }
            (ValueRef::Blob(b), Value::Blob(d)) => {
                d.clear();
                d.extend_from_slice(b);
            }
            (v, d) => *d = v.to_owned(),
        }
    }

    /// The name of this value's SQL storage class, for error messages.
    pub fn type_name(self) -> &'static str {
        match self {
            ValueRef::Null => "NULL",
            ValueRef::Integer(_) => "INTEGER",
            ValueRef::Real(_) => "REAL",
            ValueRef::Text(_) => "TEXT",
            ValueRef::Blob(_) => "BLOB",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Real(r) => write!(f, "{r}"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Blob(b) => write!(f, "<{} bytes>", b.len()),
        }
    }
}

/// Why a Rust value cannot become an SQL [`Value`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValueError(pub(crate) String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl ser::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

/// Converts any serializable value into the SQL value db4 stores in an index column and binds
/// in queries.
///
/// Scalars map to themselves (`bool` to 0/1, a unit enum variant to its name, `None` to NULL,
/// newtypes to their inner value), so a column compares the same way as SQLite's
/// `json_extract` over the stored JSON document. Sequences, maps and structs become their
/// compact JSON text. Non-finite floats and integers outside the `i64` range are refused.
///
/// # Errors
///
/// A [`ValueError`] saying why the value cannot be stored.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    match value.serialize(ScalarSerializer) {
        Err(Compound) => serde_json::to_string(value).map(Value::Text).map_err(|e| ValueError(e.to_string())),
        Ok(v) => v,
    }
}

/// Returned by [`ScalarSerializer`] for values that are not scalars; they go through JSON.
#[derive(Debug)]
struct Compound;

impl fmt::Display for Compound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("compound value")
    }
}

impl std::error::Error for Compound {}

impl ser::Error for Compound {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Compound
    }
}

/// Serializes a scalar straight into a [`Value`]; the inner `Result` carries refusals (NaN, a
/// too-large integer), the outer error means "not a scalar".
struct ScalarSerializer;

type Scalar = Result<Value, ValueError>;

fn real(v: f64) -> Scalar {
    if v.is_finite() { Ok(Value::Real(v)) } else { Err(ValueError(format!("{v} is not a finite number"))) }
}

fn unsigned(v: u64) -> Scalar {
    i64::try_from(v)
        .map(Value::Integer)
        .map_err(|_| ValueError(format!("{v} is above the largest storable integer ({})", i64::MAX)))
}

impl ser::Serializer for ScalarSerializer {
    type Ok = Scalar;
    type Error = Compound;
    type SerializeSeq = Impossible<Scalar, Compound>;
    type SerializeTuple = Impossible<Scalar, Compound>;
    type SerializeTupleStruct = Impossible<Scalar, Compound>;
    type SerializeTupleVariant = Impossible<Scalar, Compound>;
    type SerializeMap = Impossible<Scalar, Compound>;
    type SerializeStruct = Impossible<Scalar, Compound>;
    type SerializeStructVariant = Impossible<Scalar, Compound>;

    fn serialize_bool(self, v: bool) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(i64::from(v))))
    }
    fn serialize_i8(self, v: i8) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v.into())))
    }
    fn serialize_i16(self, v: i16) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v.into())))
    }
    fn serialize_i32(self, v: i32) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v.into())))
    }
    fn serialize_i64(self, v: i64) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v)))
    }
    fn serialize_i128(self, v: i128) -> Result<Scalar, Compound> {
        Ok(i64::try_from(v)
            .map(Value::Integer)
            .map_err(|_| ValueError(format!("{v} is outside the storable integer range"))))
    }
    fn serialize_u8(self, v: u8) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v.into())))
    }
    fn serialize_u16(self, v: u16) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v.into())))
    }
    fn serialize_u32(self, v: u32) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Integer(v.into())))
    }
    fn serialize_u64(self, v: u64) -> Result<Scalar, Compound> {
        Ok(unsigned(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Scalar, Compound> {
        Ok(u64::try_from(v)
            .map_err(|_| ValueError(format!("{v} is outside the storable integer range")))
            .and_then(unsigned))
    }
    fn serialize_f32(self, v: f32) -> Result<Scalar, Compound> {
        // JSON holds an f32 as its shortest decimal ("0.1"), which SQLite reads back as the
        // f64 nearest to that decimal; widening the f32 itself would give 0.10000000149.
        Ok(real(v.to_string().parse::<f64>().unwrap_or(f64::NAN)))
    }
    fn serialize_f64(self, v: f64) -> Result<Scalar, Compound> {
        Ok(real(v))
    }
    fn serialize_char(self, v: char) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Text(v.to_string())))
    }
    fn serialize_str(self, v: &str) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Text(v.to_owned())))
    }
    fn serialize_bytes(self, _v: &[u8]) -> Result<Scalar, Compound> {
        Err(Compound)
    }
    fn serialize_none(self) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Null))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Scalar, Compound> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Null))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Null))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Scalar, Compound> {
        Ok(Ok(Value::Text(variant.to_owned())))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Scalar, Compound> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<Scalar, Compound> {
        Err(Compound)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Compound> {
        Err(Compound)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Compound> {
        Err(Compound)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeTupleStruct, Compound> {
        Err(Compound)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Compound> {
        Err(Compound)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Compound> {
        Err(Compound)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, Compound> {
        Err(Compound)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Compound> {
        Err(Compound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    enum Status {
        Draft,
        #[allow(dead_code)]
        Tagged(u8),
    }

    #[derive(Serialize)]
    struct Meters(f64);

    #[test]
    fn scalars_map_to_themselves() {
        assert_eq!(to_value(&true), Ok(Value::Integer(1)));
        assert_eq!(to_value(&-7i32), Ok(Value::Integer(-7)));
        assert_eq!(to_value("x"), Ok(Value::Text("x".into())));
        assert_eq!(to_value(&Some(2.5f64)), Ok(Value::Real(2.5)));
        assert_eq!(to_value(&None::<i64>), Ok(Value::Null));
        assert_eq!(to_value(&Status::Draft), Ok(Value::Text("Draft".into())));
        assert_eq!(to_value(&Meters(1.5)), Ok(Value::Real(1.5)));
    }

    #[test]
    fn compounds_become_json_text() {
        assert_eq!(to_value(&vec!["a", "b"]), Ok(Value::Text(r#"["a","b"]"#.into())));
        assert_eq!(to_value(&Status::Tagged(3)), Ok(Value::Text(r#"{"Tagged":3}"#.into())));
    }

    #[test]
    fn refuses_what_sqlite_cannot_hold() {
        assert!(to_value(&f64::NAN).is_err());
        assert!(to_value(&f32::INFINITY).is_err());
        assert!(to_value(&u64::MAX).is_err());
        assert_eq!(to_value(&(i64::MAX as u64)), Ok(Value::Integer(i64::MAX)));
    }
}
