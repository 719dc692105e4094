//! Filters and sort orders evaluated in memory, with the answers SQLite gives for the SQL that
//! `query::render` and `Query` render from them: to filter and sort documents that are not in
//! one SQLite table (merging the results of several shards or storage tiers) and agree with
//! the documents a query over one table returns.
//!
//! # Values
//!
//! A field is what SQLite reads for it, `json_extract("_doc", '$."key"')` or an index column
//! generated from that same expression (declared without a type, so no affinity changes it):
//!
//! - a missing key, a JSON `null` or a document that is not an object: `None` (SQL `NULL`);
//! - `true` and `false`: the integers 1 and 0;
//! - a number: an integer if it is written without a fraction or exponent and fits `i64`,
//!   otherwise a float (an integer above `i64::MAX` becomes the nearest float, as SQLite reads
//!   it);
//! - a string: text;
//! - an array or an object: its compact JSON text, as text.
//!
//! Values are ordered as SQLite orders them: `None` below everything, then numbers (integers
//! and floats compared exactly by value, so `1 == 1.0` and `2^53 + 1 > 2^53 as f64`), then text
//! compared byte by byte (SQLite's `BINARY` collation: UTF-8 bytes, NUL characters included),
//! then blobs (which only a hand-built condition can hold).
//!
//! # Meaning
//!
//! A condition means what `sql::filter` documents: the Rust predicate over `Option`'s order
//! (`None` below every value), so that `!p` matches exactly the documents `p` does not.
//! `x.eq(v)` is `x == Some(v)`, `x.lt(v)` holds for `None`, `between` is inclusive,
//! `in_list` matches `None` only if the list holds a `None`, `starts_with` holds for text (and
//! only text) beginning with the prefix's bytes. A filter that SQL refuses to render for what
//! it holds (an [`Atom::Invalid`], an order comparison with `None`, a `None` bound of
//! `between`, a field not in the schema) is refused here with the same
//! [`Error::InvalidQuery`], whatever the documents, and the first such condition in the
//! filter's order is the one reported, as the renderer reports it.
//!
//! # Differences from running the SQL
//!
//! - No statement limits: a filter too deep or too long for one SQL statement (which `Query`
//!   refuses) is evaluated all the same.
//! - The version field is read from the document. The `_version` column is authoritative and
//!   the stored JSON's copy can be stale; a decoded document (as [`Filter::matches`] takes it)
//!   carries the column's value.
//! - The id and version columns have a type affinity (`INTEGER`, or `TEXT` for string ids),
//!   which SQLite applies to an operand of another storage class (the text `'5'` compared with
//!   an integer id is read as 5). The typed API only compares a field with values of its own
//!   type, where affinity changes nothing; here operands are never converted.
//! - A non-finite float operand (only a hand-built condition holds one) is refused with
//!   [`Error::InvalidQuery`], as the SQL path refuses it once it has to be bound as JSON.
//! - A [`serde_json::Value`] is taken as it is, and may not hold what the stored text does:
//!   its objects have their keys sorted (serde_json keeps no insertion order here), so an
//!   object field reads with another text than the stored one; `serde_json::to_value` widens
//!   an `f32` (`0.1` becomes `0.10000000149011612`) where the text holds its shortest decimal;
//!   and serde_json parses some floats from text a unit in the last place off (it is built
//!   without `float_roundtrip`). The document's JSON text, read with [`DocFields::parse`] (as
//!   [`Filter::matches`] and [`Order::compare`] do), has none of these problems.
//!
//! Nothing here recurses over a filter: compiling and evaluating use stacks on the heap, so
//! a filter nested as deeply as memory allows evaluates.

use crate::error::{Error, Result};
use crate::query::filter::{Atom, CmpOp, Expr, Filter, Order, Stripped, strip};
use crate::schema::Schema;
use crate::schema::{Document, DocumentId};
use crate::value::Value;
use std::borrow::Cow;
use std::cmp::Ordering;

/// Whether `doc` matches all of `filters` (true when there are none), as a query over
/// `schema`'s collection with these filters would say.
///
/// # Errors
///
/// [`Error::InvalidQuery`] for a filter the SQL path refuses (see the module documentation),
/// whatever the document.
#[allow(dead_code, reason = "the entry point for merging shard and tier results")]
pub(crate) fn matches(schema: &Schema, doc: &serde_json::Value, filters: &[Expr]) -> Result<bool> {
    Ok(Matcher::new(schema, filters)?.matches(&DocFields::of_value(doc)))
}

/// The order in which `ORDER BY` over `order` (field index, descending) puts `a` and `b`:
/// `Equal` for documents it leaves in an unspecified order (equal on every key). `None` comes
/// first in ascending order and last in descending order, as SQLite puts `NULL`. A field not in
/// the schema (which the SQL path refuses) orders nothing.
#[allow(dead_code, reason = "the entry point for merging shard and tier results")]
pub(crate) fn compare(
    schema: &Schema,
    order: &[(usize, bool)],
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Ordering {
    compare_fields(schema, order, &DocFields::of_value(a), &DocFields::of_value(b))
}

/// [`compare`] for documents already read as fields.
pub(crate) fn compare_fields(
    schema: &Schema,
    order: &[(usize, bool)],
    a: &DocFields<'_>,
    b: &DocFields<'_>,
) -> Ordering {
    for &(field, descending) in order {
        let Some(def) = schema.fields().get(field) else { continue };
        let ord = sql_cmp(&a.get(def.key()), &b.get(def.key()));
        let ord = if descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

impl<D: Document> Filter<D> {
    /// Whether `doc` matches this filter, exactly as a query with this filter decides for the
    /// stored document: the same `Option` semantics, the same order of values (numbers
    /// numerically, integers and floats together, text byte by byte), without running SQL.
    ///
    /// `doc` is taken as a query returns it (with its current `#[version]`), and answered for
    /// its values as they are: a float read back from storage is what serde_json parsed, which
    /// for some values is a unit in the last place off what was stored. Limits on the SQL
    /// statement do not apply: a filter nested too deeply for a query still evaluates.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Article { #[id] id: i64, views: i64, tag: Option<String> }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let f = Article::fields();
    /// let popular = f.views.gt(100) & !f.tag.eq("draft");
    /// assert!(popular.matches(&Article { id: 1, views: 500, tag: None })?);
    /// assert!(!popular.matches(&Article { id: 2, views: 500, tag: Some("draft".into()) })?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if a query with this filter could not run (a value that could not
    /// be bound, an order comparison with `None`), whatever the document;
    /// [`Error::Serialization`] if `doc` does not serialize.
    pub fn matches(&self, doc: &D) -> Result<bool> {
        let schema = D::schema();
        let matcher = Matcher::new(schema, std::slice::from_ref(&self.expr))?;
        let json = to_json(schema, doc)?;
        Ok(matcher.matches(&parsed(schema, doc, &json)?))
    }
}

impl<D: Document> Order<D> {
    /// How `order_by` with this order sorts `a` and `b` on this key: `Equal` when their values
    /// are equal (a query then orders them by id, in this key's direction if it is the last).
    /// `None` sorts first in ascending order, last in descending order.
    ///
    /// # Example
    ///
    /// ```
    /// # use db4_derive::Document;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Document, Serialize, Deserialize)]
    /// # #[db4(crate = "db4_runtime")]
    /// # struct Article { #[id] id: i64, views: Option<i64> }
    /// # fn main() -> db4_runtime::Result<()> {
    /// let order = Article::fields().views.desc();
    /// let mut merged = vec![
    ///     Article { id: 1, views: None },
    ///     Article { id: 2, views: Some(7) },
    ///     Article { id: 3, views: Some(30) },
    /// ];
    /// merged.sort_by(|a, b| order.compare(a, b).unwrap_or(std::cmp::Ordering::Equal));
    /// assert_eq!(merged.iter().map(|a| a.id).collect::<Vec<_>>(), [3, 2, 1]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if the order is on a field `D` does not have (as `order_by`
    /// fails), [`Error::Serialization`] if a document does not serialize.
    pub fn compare(&self, a: &D, b: &D) -> Result<Ordering> {
        let schema = D::schema();
        if schema.fields().get(self.field).is_none() {
            return Err(not_in_schema(schema, self.field));
        }
        let (ja, jb) = (to_json(schema, a)?, to_json(schema, b)?);
        let (fa, fb) = (parsed(schema, a, &ja)?, parsed(schema, b, &jb)?);
        Ok(compare_fields(schema, &[(self.field, self.descending)], &fa, &fb))
    }
}

fn to_json<D: Document>(schema: &Schema, doc: &D) -> Result<String> {
    serde_json::to_string(doc).map_err(|e| Error::serialization(schema.collection(), Some(doc.id().to_display()), e))
}

fn parsed<'j, D: Document>(schema: &Schema, doc: &D, json: &'j str) -> Result<DocFields<'j>> {
    DocFields::parse(json).map_err(|e| Error::serialization(schema.collection(), Some(doc.id().to_display()), e))
}

/// The error the SQL path gives for a field index the collection does not have.
fn not_in_schema(schema: &Schema, field: usize) -> Error {
    Error::invalid_query(schema.collection(), format!("field #{field} does not belong to this collection"))
}

/// The error the SQL path gives for a bad condition on `field`.
fn invalid_field(schema: &Schema, field: usize, reason: impl std::fmt::Display) -> Error {
    let name = schema.fields().get(field).map_or("?", |f| f.name());
    Error::invalid_query(schema.collection(), format!("field `{name}`: {reason}"))
}

/// An SQL value, as a field reads or as a condition compares with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
    Blob(&'a [u8]),
}

impl Scalar<'_> {
    fn reborrow(&self) -> Scalar<'_> {
        match self {
            Scalar::Null => Scalar::Null,
            Scalar::Integer(i) => Scalar::Integer(*i),
            Scalar::Real(r) => Scalar::Real(*r),
            Scalar::Text(t) => Scalar::Text(Cow::Borrowed(t)),
            Scalar::Blob(b) => Scalar::Blob(b),
        }
    }

    /// SQLite's order of storage classes: NULL, numbers, text, blobs.
    fn class(&self) -> u8 {
        match self {
            Scalar::Null => 0,
            Scalar::Integer(_) | Scalar::Real(_) => 1,
            Scalar::Text(_) => 2,
            Scalar::Blob(_) => 3,
        }
    }
}

/// [`sql_cmp`] of two values read from SQLite (a shard's sort keys).
#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
pub(crate) fn value_cmp(a: &Value, b: &Value) -> Ordering {
    sql_cmp(&scalar_of(a), &scalar_of(b))
}

/// A value as the evaluator compares it.
#[cfg_attr(not(all(feature = "sqlite", feature = "fs")), allow(dead_code, reason = "for the shard router"))]
pub(crate) fn scalar_of(v: &Value) -> Scalar<'_> {
    match v {
        Value::Null => Scalar::Null,
        Value::Integer(i) => Scalar::Integer(*i),
        Value::Real(r) => Scalar::Real(*r),
        Value::Text(t) => Scalar::Text(Cow::Borrowed(t)),
        Value::Blob(b) => Scalar::Blob(b),
    }
}

/// SQLite's comparison of two values (`ORDER BY`, `<`, `IS`, `IN`, `BETWEEN` under the
/// `BINARY` collation), with `NULL` taken as the lowest value.
fn sql_cmp(a: &Scalar<'_>, b: &Scalar<'_>) -> Ordering {
    match (a, b) {
        (Scalar::Integer(x), Scalar::Integer(y)) => x.cmp(y),
        (Scalar::Integer(x), Scalar::Real(y)) => int_real_cmp(*x, *y),
        (Scalar::Real(x), Scalar::Integer(y)) => int_real_cmp(*y, *x).reverse(),
        (Scalar::Real(x), Scalar::Real(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Scalar::Text(x), Scalar::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Scalar::Blob(x), Scalar::Blob(y)) => x.cmp(y),
        _ => a.class().cmp(&b.class()),
    }
}

/// The exact order of an integer and a float (SQLite's `sqlite3IntFloatCompare`): no rounding
/// of the integer to a float, so `2^53 + 1 > 2^53 as f64`.
fn int_real_cmp(i: i64, r: f64) -> Ordering {
    // -2^63 and 2^63, both exact as floats.
    const LOW: f64 = -9_223_372_036_854_775_808.0;
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r < LOW {
        return Ordering::Greater;
    }
    if r >= -LOW {
        return Ordering::Less;
    }
    // |r| < 2^63, so its integer part is exact as an i64.
    let whole = r.trunc();
    let y = whole as i64;
    match i.cmp(&y) {
        Ordering::Equal => {
            let fraction = r - whole;
            if fraction > 0.0 {
                Ordering::Less
            } else if fraction < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        ord => ord,
    }
}

/// The SQL value of a JSON number, as `json_extract` reads it.
fn number(n: &serde_json::Number) -> Scalar<'static> {
    if let Some(i) = n.as_i64() {
        Scalar::Integer(i)
    } else if let Some(u) = n.as_u64() {
        // Above i64::MAX: SQLite reads the nearest float, as the cast rounds.
        Scalar::Real(u as f64)
    } else {
        Scalar::Real(n.as_f64().unwrap_or(0.0))
    }
}

/// The SQL value of a JSON number written as `raw`, as `json_extract` reads it: an integer
/// without a fraction or exponent that fits `i64`, else the nearest float. (Rust's parser
/// rounds correctly, as SQLite's does; serde_json's default one can be a unit in the last
/// place off.)
fn number_text(raw: &str) -> Scalar<'_> {
    if !raw.contains(['.', 'e', 'E'])
        && let Ok(i) = raw.parse::<i64>()
    {
        return Scalar::Integer(i);
    }
    raw.parse::<f64>().map_or(Scalar::Null, Scalar::Real)
}

/// The SQL value of a JSON value, as `json_extract` reads it.
fn of_json(v: &serde_json::Value) -> Scalar<'_> {
    match v {
        serde_json::Value::Null => Scalar::Null,
        serde_json::Value::Bool(b) => Scalar::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => number(n),
        serde_json::Value::String(s) => Scalar::Text(Cow::Borrowed(s)),
        compound => Scalar::Text(Cow::Owned(compound.to_string())),
    }
}

/// A document's top-level fields, as SQL reads them.
pub(crate) struct DocFields<'d> {
    repr: Repr<'d>,
}

enum Repr<'d> {
    /// Looked up in the object when asked (`None` for a document that is not an object).
    Value(Option<&'d serde_json::Map<String, serde_json::Value>>),
    /// Read from the text once, in the order written.
    Text(Vec<(Cow<'d, str>, Scalar<'d>)>),
}

impl<'d> DocFields<'d> {
    /// The fields of a parsed document. Arrays and objects in it read as serde_json writes
    /// them (keys in the map's order; see the module documentation).
    pub(crate) fn of_value(doc: &'d serde_json::Value) -> Self {
        Self { repr: Repr::Value(doc.as_object()) }
    }

    /// The fields of a document's JSON text. Arrays and objects read as SQLite returns them:
    /// their text as written, without whitespace.
    ///
    /// # Errors
    ///
    /// The parse error if `json` is not JSON.
    pub(crate) fn parse(json: &'d str) -> std::result::Result<Self, serde_json::Error> {
        // Everything below may then take the text as well formed.
        serde_json::from_str::<serde::de::IgnoredAny>(json)?;
        Ok(Self { repr: Repr::Text(top_level(json)) })
    }

    /// The value of the field at `key`, owned (to route a document by its partition key).
    pub(crate) fn value(&self, key: &str) -> Value {
        match self.get(key) {
            Scalar::Null => Value::Null,
            Scalar::Integer(i) => Value::Integer(i),
            Scalar::Real(r) => Value::Real(r),
            Scalar::Text(t) => Value::Text(t.into_owned()),
            Scalar::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    /// The value of the field at `key`.
    fn get(&self, key: &str) -> Scalar<'_> {
        match &self.repr {
            Repr::Value(map) => map.and_then(|m| m.get(key)).map_or(Scalar::Null, of_json),
            // SQLite finds the first of duplicated keys.
            Repr::Text(entries) => entries.iter().find(|(k, _)| k == key).map_or(Scalar::Null, |(_, v)| v.reborrow()),
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).copied().is_some_and(is_ws) {
        i += 1;
    }
    i
}

/// The end (past the closing quote) of the string literal opening at `i`.
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    i += 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The end of the JSON value starting at `i`; iterative over nesting.
fn value_end(bytes: &[u8], mut i: usize) -> usize {
    match bytes.get(i) {
        Some(b'"') => string_end(bytes, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(&b) = bytes.get(i) {
                match b {
                    b'"' => {
                        i = string_end(bytes, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            bytes.len()
        }
        _ => {
            while bytes.get(i).is_some_and(|&b| !matches!(b, b',' | b'}' | b']') && !is_ws(b)) {
                i += 1;
            }
            i
        }
    }
}

/// A string literal's value.
fn unquote(raw: &str) -> Cow<'_, str> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        _ => Cow::Owned(serde_json::from_str::<String>(raw).unwrap_or_default()),
    }
}

/// A compound value's text without the whitespace outside its strings, as SQLite returns it.
fn minified(raw: &str) -> Cow<'_, str> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    let mut has_ws = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i),
            b if is_ws(b) => {
                has_ws = true;
                break;
            }
            _ => i += 1,
        }
    }
    if !has_ws {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                out.push_str(raw.get(i..end).unwrap_or_default());
                i = end;
            }
            b if is_ws(b) => i += 1,
            _ => {
                // Copy up to the next quote or whitespace: ASCII boundaries, so valid UTF-8.
                let start = i;
                while i < bytes.len() && bytes[i] != b'"' && !is_ws(bytes[i]) {
                    i += 1;
                }
                out.push_str(raw.get(start..i).unwrap_or_default());
            }
        }
    }
    Cow::Owned(out)
}

/// The SQL value of the JSON value written as `raw`.
fn of_raw(raw: &str) -> Scalar<'_> {
    match raw.as_bytes().first() {
        Some(b'{' | b'[') => Scalar::Text(minified(raw)),
        Some(b'"') => Scalar::Text(unquote(raw)),
        Some(b't') => Scalar::Integer(1),
        Some(b'f') => Scalar::Integer(0),
        Some(b'n') | None => Scalar::Null,
        Some(_) => number_text(raw),
    }
}

/// The keys and values of the object `json` (well-formed JSON) holds, in order; nothing if it
/// holds something else.
fn top_level(json: &str) -> Vec<(Cow<'_, str>, Scalar<'_>)> {
    let bytes = json.as_bytes();
    let mut out = Vec::new();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return out;
    }
    i = skip_ws(bytes, i + 1);
    while bytes.get(i) == Some(&b'"') {
        let key_end = string_end(bytes, i);
        let key = unquote(json.get(i..key_end).unwrap_or_default());
        // The colon, then the value.
        i = skip_ws(bytes, skip_ws(bytes, key_end) + 1);
        let end = value_end(bytes, i);
        out.push((key, of_raw(json.get(i..end).unwrap_or_default())));
        i = skip_ws(bytes, end);
        if bytes.get(i) != Some(&b',') {
            break;
        }
        i = skip_ws(bytes, i + 1);
    }
    out
}

/// What a condition tests of its field's value.
#[derive(Debug)]
enum Test<'e> {
    /// The value is `None`.
    IsNone,
    /// `value op operand` for an operand that is not `None`.
    Compare(CmpOp, Scalar<'e>),
    /// `low <= value <= high`.
    Between(Scalar<'e>, Scalar<'e>),
    /// The value is one of `values`, or `None` and `with_none`.
    In { values: Vec<Scalar<'e>>, with_none: bool },
    /// The value is text (or bytes) starting with these bytes.
    StartsWith(&'e [u8]),
    /// Always this answer (an empty list).
    Always(bool),
}

impl Test<'_> {
    fn holds(&self, x: &Scalar<'_>) -> bool {
        match self {
            Test::IsNone => matches!(x, Scalar::Null),
            // `None` is below every operand, which is not `None`.
            Test::Compare(op, v) => {
                let ord = sql_cmp(x, v);
                match op {
                    CmpOp::Eq => ord == Ordering::Equal,
                    CmpOp::Ne => ord != Ordering::Equal,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Gte => ord != Ordering::Less,
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Lte => ord != Ordering::Greater,
                }
            }
            Test::Between(low, high) => sql_cmp(x, low) != Ordering::Less && sql_cmp(x, high) != Ordering::Greater,
            Test::In { values, with_none } => match x {
                Scalar::Null => *with_none,
                x => values.iter().any(|v| sql_cmp(x, v) == Ordering::Equal),
            },
            Test::StartsWith(prefix) => match x {
                Scalar::Text(t) => t.as_bytes().starts_with(prefix),
                Scalar::Blob(b) => b.starts_with(prefix),
                _ => false,
            },
            Test::Always(answer) => *answer,
        }
    }
}

/// A compiled filter node, in preorder.
#[derive(Debug)]
enum Node<'e> {
    /// A condition on the field at `key`, negated if `neg`.
    Cond { key: &'static str, test: Test<'e>, neg: bool },
    /// A list of the nodes up to index `end`, joined by AND (`conj`) or OR.
    List { conj: bool, end: usize },
}

/// Filters compiled for evaluation over many documents: checked once, negations pushed down
/// to the conditions.
#[derive(Debug)]
pub(crate) struct Matcher<'e> {
    nodes: Vec<Node<'e>>,
}

/// A condition's operand, refused where the SQL path refuses it.
fn operand<'e>(schema: &Schema, field: usize, v: &'e Value) -> Result<Scalar<'e>> {
    Ok(match v {
        Value::Null => Scalar::Null,
        Value::Integer(i) => Scalar::Integer(*i),
        Value::Real(r) if r.is_finite() => Scalar::Real(*r),
        Value::Real(r) => return Err(invalid_field(schema, field, format!("{r} is not a finite number"))),
        Value::Text(t) => Scalar::Text(Cow::Borrowed(t)),
        Value::Blob(b) => Scalar::Blob(b),
    })
}

impl<'e> Matcher<'e> {
    /// Compiles `filters` (all must hold) over `schema`'s documents.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] for the first condition the SQL path refuses.
    pub(crate) fn new(schema: &Schema, filters: &'e [Expr]) -> Result<Self> {
        enum Step<'e> {
            Visit(&'e Expr, bool),
            Close(usize),
        }
        let mut nodes = vec![Node::List { conj: true, end: 0 }];
        let mut steps = vec![Step::Close(0)];
        steps.extend(filters.iter().rev().map(|f| Step::Visit(f, false)));
        while let Some(step) = steps.pop() {
            match step {
                Step::Close(i) => {
                    let len = nodes.len();
                    if let Some(Node::List { end, .. }) = nodes.get_mut(i) {
                        *end = len;
                    }
                }
                Step::Visit(e, neg) => match strip(e, neg) {
                    Stripped::Atom(atom, neg) => nodes.push(Self::condition(schema, atom, neg)?),
                    Stripped::List { conj, items, neg } => {
                        steps.push(Step::Close(nodes.len()));
                        nodes.push(Node::List { conj, end: 0 });
                        steps.extend(items.iter().rev().map(|item| Step::Visit(item, neg)));
                    }
                },
            }
        }
        Ok(Self { nodes })
    }

    /// Compiles one condition, checking it as the SQL renderer does.
    fn condition(schema: &Schema, atom: &'e Atom, neg: bool) -> Result<Node<'e>> {
        let key =
            |field: usize| schema.fields().get(field).map(|f| f.key()).ok_or_else(|| not_in_schema(schema, field));
        let (field, test, neg) = match atom {
            Atom::Compare { field, op, value: Value::Null } => match op {
                CmpOp::Eq => (*field, Test::IsNone, neg),
                CmpOp::Ne => (*field, Test::IsNone, !neg),
                _ => return Err(invalid_field(schema, *field, "cannot compare order with None")),
            },
            Atom::Compare { field, op, value } => (*field, Test::Compare(*op, operand(schema, *field, value)?), neg),
            Atom::Between { field, low, high } => {
                if matches!(low, Value::Null) || matches!(high, Value::Null) {
                    return Err(invalid_field(schema, *field, "between bounds cannot be None"));
                }
                let (low, high) = (operand(schema, *field, low)?, operand(schema, *field, high)?);
                (*field, Test::Between(low, high), neg)
            }
            Atom::In { field, values } => {
                let with_none = values.iter().any(|v| matches!(v, Value::Null));
                let values = values
                    .iter()
                    .filter(|v| !matches!(v, Value::Null))
                    .map(|v| operand(schema, *field, v))
                    .collect::<Result<Vec<_>>>()?;
                if values.is_empty() && !with_none {
                    // SQL writes a constant here, without reading the field.
                    return Ok(Node::Cond { key: "", test: Test::Always(false), neg });
                }
                (*field, Test::In { values, with_none }, neg)
            }
            Atom::StartsWith { field, prefix } => (*field, Test::StartsWith(prefix.as_bytes()), neg),
            Atom::IsNull { field, negated } => (*field, Test::IsNone, *negated != neg),
            Atom::Invalid { field, reason } => return Err(invalid_field(schema, *field, reason)),
        };
        Ok(Node::Cond { key: key(field)?, test, neg })
    }

    /// Whether the document matches all the filters.
    pub(crate) fn matches(&self, doc: &DocFields<'_>) -> bool {
        // The lists entered and not yet decided: (conj, end).
        let mut open: Vec<(bool, usize)> = Vec::new();
        let mut pos = 0;
        loop {
            let result = match self.nodes.get(pos) {
                None => return true,
                Some(Node::Cond { key, test, neg }) => {
                    pos += 1;
                    let holds = match test {
                        Test::Always(answer) => *answer,
                        test => test.holds(&doc.get(key)),
                    };
                    holds != *neg
                }
                Some(&Node::List { conj, end }) => {
                    if end > pos + 1 {
                        open.push((conj, end));
                        pos += 1;
                        continue;
                    }
                    // Empty: AND holds, OR does not.
                    pos = end.max(pos + 1);
                    conj
                }
            };
            // Hand the result up through every list it decides.
            loop {
                let Some(&(conj, end)) = open.last() else { return result };
                if result != conj {
                    // false decides an AND, true an OR: skip the rest of the list.
                    open.pop();
                    pos = end;
                } else if pos >= end {
                    // The last operand, which was `conj`, as the whole list is.
                    open.pop();
                } else {
                    break;
                }
            }
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests;
