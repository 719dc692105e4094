//! [`RangeIndex`]: an ordered index without the derive (the seed's `createRangeQueryManager`):
//! named, typed keys, each ascending or descending, entries indexed and removed by id, and
//! the same range builder, keyset pages and signed cursors as a collection's ranges.
//!
//! An index `by_score` is a table `_db4_rgi_by_score` (`_id TEXT PRIMARY KEY`, one `STRICT`-ly
//! typed column `k_<field>` per key), a SQLite index over the keys in their directions with the
//! id last (in the direction of the last key), and its description in `_db4_rgi`. A page reads
//! only that index (it covers every column), with the statements a collection's range writes.

use super::cursor::{Cursor, encode_value};
use super::sql::Key;
use super::{AnyValue, KeyPrefix, Page, PageSource, Pager, Position, Spec, and_height, finish_page};
use crate::backend::{Access, Connection};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::schema::{FieldDef, QueryValue, Schema, quote_ident};
use crate::sql::FieldSql;
use crate::trace;
use crate::txn::Runner;
use crate::value::{Value, ValueRef};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

const REGISTRY: &str = "\"_db4_rgi\"";

/// The most keys a [`RangeIndex`] has (as a composite index of a collection).
pub const MAX_RANGE_FIELDS: usize = 16;

/// The direction of one key of a [`RangeIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Smallest first, `None` first.
    Ascending,
    /// Largest first, `None` last.
    Descending,
}

/// The type of one key of a [`RangeIndex`]; every key may also be `None` (SQL NULL), which
/// sorts below every value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyType {
    /// A 64-bit signed integer (`i64`, `u32`, `bool` as 0/1, ...).
    Integer,
    /// A finite 64-bit float; integers are accepted and stored as floats.
    Real,
    /// UTF-8 text, ordered by bytes.
    Text,
}

impl KeyType {
    fn as_str(self) -> &'static str {
        match self {
            KeyType::Integer => "INTEGER",
            KeyType::Real => "REAL",
            KeyType::Text => "TEXT",
        }
    }

    /// Whether `value` is one of this type's values (or `None`).
    fn admits(self, value: &Value) -> bool {
        if let (KeyType::Real, Value::Real(r)) = (self, value) {
            return r.is_finite();
        }
        matches!(
            (self, value),
            (_, Value::Null)
                | (KeyType::Integer, Value::Integer(_))
                | (KeyType::Real, Value::Integer(_))
                | (KeyType::Text, Value::Text(_))
        )
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "None",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a float",
        Value::Text(_) => "text",
        Value::Blob(_) => "binary",
    }
}

/// One key of a [`RangeIndex`]: a name, a [`KeyType`] and a [`Direction`].
///
/// ```
/// use db4_runtime::{Direction, KeyType, RangeField};
///
/// let score = RangeField::integer("score").descending();
/// assert_eq!(score, RangeField::new("score", KeyType::Integer, Direction::Descending));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeField {
    name: String,
    key_type: KeyType,
    direction: Direction,
}

impl RangeField {
    /// A key called `name` of type `key_type`, in `direction`.
    pub fn new(name: &str, key_type: KeyType, direction: Direction) -> Self {
        Self { name: name.to_owned(), key_type, direction }
    }

    /// An ascending integer key.
    pub fn integer(name: &str) -> Self {
        Self::new(name, KeyType::Integer, Direction::Ascending)
    }

    /// An ascending float key.
    pub fn real(name: &str) -> Self {
        Self::new(name, KeyType::Real, Direction::Ascending)
    }

    /// An ascending text key.
    pub fn text(name: &str) -> Self {
        Self::new(name, KeyType::Text, Direction::Ascending)
    }

    /// The same key, ascending.
    #[must_use]
    pub fn ascending(mut self) -> Self {
        self.direction = Direction::Ascending;
        self
    }

    /// The same key, descending.
    #[must_use]
    pub fn descending(mut self) -> Self {
        self.direction = Direction::Descending;
        self
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The key's direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    fn descending_key(&self) -> bool {
        self.direction == Direction::Descending
    }
}

impl std::fmt::Display for RangeField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = if self.descending_key() { " desc" } else { "" };
        write!(f, "{} {}{dir}", self.name, self.key_type.as_str().to_ascii_lowercase())
    }
}

/// One entry of a [`RangeIndex`] page: an id and its keys, one value per field.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct IndexEntry {
    /// The id the keys were indexed under.
    pub id: String,
    /// The keys, in the index's field order (`Value::Null` for `None`).
    pub keys: Vec<Value>,
}

/// An ordered index of ids by typed keys, stored in a [`Db`], read in keyset pages with
/// signed [`Cursor`]s: a collection's [`range_index`](crate::Collection::range_index)
/// without a document type.
///
/// Entries are ordered as a collection's ranges order documents (see `docs/range.md`): each
/// key in its direction, `None` below every value, numbers before text, text by bytes, ties
/// broken by id in the direction of the last key.
///
/// # Example
///
/// ```
/// use db4_runtime::{Db, RangeField, RangeIndex, Value};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let db = Db::open_in_memory()?;
/// let scores = RangeIndex::create(&db, "scores", &[RangeField::text("game"), RangeField::integer("score").descending()])?;
/// scores.index("ann", ("chess", 1500))?;
/// scores.index("bob", ("chess", 1720))?;
/// scores.index("cid", ("chess", 1610))?;
/// scores.index("dan", ("go", 2000))?;
///
/// // The best chess players, two at a time.
/// let page = scores.range().prefix("chess").limit(2).fetch()?;
/// assert_eq!(page.items.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["bob", "cid"]);
/// assert_eq!(page.items[0].keys, [Value::Text("chess".into()), Value::Integer(1720)]);
/// let next = db4_runtime::Cursor::parse(&page.next.unwrap().to_string())?;
/// let rest = scores.range().prefix("chess").after(&next).limit(2).fetch()?;
/// assert_eq!(rest.items.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["ann"]);
/// assert!(!rest.has_more);
///
/// // Reopened by name, with the fields it was created with.
/// let again = RangeIndex::open(&db, "scores")?;
/// assert_eq!(again.range().prefix("chess").between(1600..1800).iter(10).count(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RangeIndex {
    db: Db,
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    fields: Vec<RangeField>,
    /// The index as a schema, for the statement builder: keys by position, then the id.
    schema: &'static Schema,
    /// How the statement builder reads each key, then the id.
    columns: Vec<FieldSql>,
    table: String,
    upsert: String,
    delete: String,
    get: String,
}

impl std::fmt::Debug for RangeIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeIndex").field("name", &self.inner.name).field("fields", &self.inner.fields).finish()
    }
}

/// What `_db4_rgi` records of an index.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Description {
    fields: Vec<RangeField>,
}

/// The schema the statement builder names in its errors, one per distinct index: kept for
/// the program's life, as a collection's is.
fn schema_of(name: &str, fields: &[RangeField]) -> &'static Schema {
    type Schemas = HashMap<(String, Vec<RangeField>), &'static Schema>;
    static SCHEMAS: OnceLock<Mutex<Schemas>> = OnceLock::new();
    let mut schemas = SCHEMAS.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    let key = (name.to_owned(), fields.to_vec());
    if let Some(known) = schemas.get(&key) {
        return known;
    }
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let defs: Vec<FieldDef> = fields
        .iter()
        .map(|f| {
            let name = leak(&f.name);
            FieldDef::new(name, name, f.key_type.as_str())
        })
        .chain([FieldDef::new("_id", "_id", "String").id()])
        .collect();
    let defs: &'static [FieldDef] = Box::leak(defs.into_boxed_slice());
    let schema: &'static Schema = Box::leak(Box::new(Schema::new(leak(name), "RangeIndex", defs)));
    schemas.insert(key, schema);
    schema
}

impl RangeIndex {
    /// Opens the index `name` in `db`, creating it over `fields` (at most
    /// [`MAX_RANGE_FIELDS`], in the order they are compared) if it does not exist.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] for an invalid name (1-48 ASCII letters, digits or `_`, not
    /// starting with a digit), no field or more than [`MAX_RANGE_FIELDS`], a field name that is
    /// not 1-64 ASCII letters, digits or `_`, the same field twice, or an index `name` that
    /// exists with other fields (open it with [`open`](Self::open), or [`drop`](Self::drop)
    /// it first); a backend error.
    pub fn create(db: &Db, name: &str, fields: &[RangeField]) -> Result<Self> {
        let _span = trace::op("range_index_create", Some(name));
        validate(name, fields)?;
        let index = Self::new(db, name, fields);
        let wanted = Description { fields: fields.to_vec() };
        Runner::Db(db).write(Access::Atomic, |w| index.inner.ensure(w.conn, &wanted))?;
        Ok(index)
    }

    /// Opens the existing index `name` in `db`, with the fields it was created with.
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`] if there is no such index, [`Error::SchemaMismatch`] for an invalid
    /// name, [`Error::Corrupted`] if its description is damaged; a backend error.
    pub fn open(db: &Db, name: &str) -> Result<Self> {
        let _span = trace::op("range_index_open", Some(name));
        validate_name(name)?;
        let stored = Runner::Db(db).read(|conn| stored_description(conn, name))?;
        let Some(description) = stored else {
            return Err(Error::NotFound { collection: "range indexes".to_owned(), id: name.to_owned() });
        };
        validate(name, &description.fields)
            .map_err(|e| Error::corrupted(name, None, format!("the stored description is not valid: {e}")))?;
        Ok(Self::new(db, name, &description.fields))
    }

    /// Deletes the index `name` and its entries; returns whether it existed. Handles still
    /// open on it fail with a backend error.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] for an invalid name; a backend error.
    pub fn drop(db: &Db, name: &str) -> Result<bool> {
        let _span = trace::op("range_index_drop", Some(name));
        validate_name(name)?;
        Runner::Db(db).write(Access::Atomic, |w| {
            if stored_description(w.conn, name)?.is_none() {
                return Ok(false);
            }
            w.conn.execute_ddl(&format!("DROP TABLE IF EXISTS {}", quote_ident(&table_name(name))))?;
            w.conn.execute(&format!("DELETE FROM {REGISTRY} WHERE \"name\" = ?1"), &[Value::Text(name.to_owned())])?;
            Ok(true)
        })
    }

    fn new(db: &Db, name: &str, fields: &[RangeField]) -> Self {
        let table = quote_ident(&table_name(name));
        let columns: Vec<String> = fields.iter().map(|f| quote_ident(&column_name(&f.name))).collect();
        let placeholders: Vec<String> = (2..fields.len() + 2).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = columns.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        let inner = Inner {
            upsert: format!(
                "INSERT INTO {table} (\"_id\", {}) VALUES (?1, {}) ON CONFLICT(\"_id\") DO UPDATE SET {}",
                columns.join(", "),
                placeholders.join(", "),
                updates.join(", ")
            ),
            delete: format!("DELETE FROM {table} WHERE \"_id\" = ?1"),
            get: format!("SELECT {} FROM {table} WHERE \"_id\" = ?1", columns.join(", ")),
            columns: columns.into_iter().map(FieldSql::Column).chain([FieldSql::Column("\"_id\"".into())]).collect(),
            schema: schema_of(name, fields),
            name: name.to_owned(),
            fields: fields.to_vec(),
            table,
        };
        Self { db: db.clone(), inner: Arc::new(inner) }
    }

    /// The index's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The index's fields, in the order they are compared.
    pub fn fields(&self) -> &[RangeField] {
        &self.inner.fields
    }

    /// Indexes `id` under `keys` (one value per field, in order: a value, or a tuple of up to
    /// six), replacing what was indexed under `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an empty id, the wrong number of keys, a key of another
    /// type than its field's, a NaN, or a value longer than a statement binds; nothing is
    /// written then. A backend error.
    pub fn index(&self, id: &str, keys: impl KeyPrefix) -> Result<()> {
        let _span = trace::op("range_index", Some(&self.inner.name));
        let params = self.params(id, &keys)?;
        Runner::Db(&self.db).write(Access::Atomic, |w| w.conn.execute(&self.inner.upsert, &params).map(drop))
    }

    /// Indexes many entries in one transaction (see [`index`](Self::index)).
    ///
    /// # Errors
    ///
    /// As [`index`](Self::index); nothing is written if one entry is refused.
    pub fn index_many<I: AsRef<str>, K: KeyPrefix>(&self, entries: impl IntoIterator<Item = (I, K)>) -> Result<()> {
        let _span = trace::op("range_index_many", Some(&self.inner.name));
        let all = entries.into_iter().map(|(id, keys)| self.params(id.as_ref(), &keys)).collect::<Result<Vec<_>>>()?;
        Runner::Db(&self.db).write(Access::Atomic, |w| {
            for params in &all {
                w.conn.execute(&self.inner.upsert, params)?;
            }
            Ok(())
        })
    }

    /// Removes `id`; returns whether it was indexed.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let _span = trace::op("range_remove", Some(&self.inner.name));
        let params = [Value::Text(id.to_owned())];
        let n = Runner::Db(&self.db).write(Access::Atomic, |w| w.conn.execute(&self.inner.delete, &params))?;
        Ok(n > 0)
    }

    /// The keys indexed under `id`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupted`] if a stored key is not of its field's type; a backend error.
    pub fn get(&self, id: &str) -> Result<Option<Vec<Value>>> {
        let mut out = None;
        Runner::Db(&self.db).read(|conn| {
            conn.query(&self.inner.get, &[Value::Text(id.to_owned())], &mut |row| {
                out = Some(self.inner.read_keys(row, 0, 0)?);
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// How many ids are indexed.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn len(&self) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {}", self.inner.table);
        Runner::Db(&self.db).read(|conn| crate::store::codec::count(conn, &self.inner.name, &sql, &[]))
    }

    /// Whether no id is indexed.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Starts a range over the whole index, in its order; narrow it with
    /// [`prefix`](IndexRange::prefix) and the bounds.
    pub fn range(&self) -> IndexRange<'_> {
        IndexRange { index: self, spec: Spec::default() }
    }

    fn params(&self, id: &str, keys: &impl KeyPrefix) -> Result<Vec<Value>> {
        let name = &self.inner.name;
        if id.is_empty() {
            return Err(Error::invalid_value(name, "_id", "the id is empty"));
        }
        let limit = crate::limits::MAX_VALUE_BYTES;
        if id.len() > limit {
            return Err(Error::invalid_value(name, "_id", format!("the id is {} bytes, above {limit}", id.len())));
        }
        let values = keys.key_values().map_err(|e| Error::invalid_value(name, "", e.0))?;
        let fields = &self.inner.fields;
        if values.len() != fields.len() {
            let list: Vec<String> = fields.iter().map(ToString::to_string).collect();
            return Err(Error::invalid_value(
                name,
                "",
                format!("{} keys were given and the index has {} ({})", values.len(), fields.len(), list.join(", ")),
            ));
        }
        let mut params = Vec::with_capacity(values.len() + 1);
        params.push(Value::Text(id.to_owned()));
        for (field, value) in fields.iter().zip(values) {
            if !field.key_type.admits(&value) {
                return Err(Error::invalid_value(
                    name,
                    &field.name,
                    format!("{} where the key is {}", kind_of(&value), field.key_type.as_str().to_ascii_lowercase()),
                ));
            }
            if matches!(&value, Value::Text(t) if t.len() > limit) {
                return Err(Error::invalid_value(name, &field.name, format!("the text is above {limit} bytes")));
            }
            params.push(value);
        }
        Ok(params)
    }
}

fn table_name(name: &str) -> String {
    format!("_db4_rgi_{name}")
}

fn column_name(field: &str) -> String {
    format!("k_{field}")
}

fn stored_description(conn: &dyn Connection, name: &str) -> Result<Option<Description>> {
    let mut registry = false;
    conn.query("SELECT 1 FROM sqlite_schema WHERE name = '_db4_rgi'", &[], &mut |_| {
        registry = true;
        Ok(())
    })?;
    if !registry {
        return Ok(None);
    }
    let mut stored: Option<String> = None;
    conn.query(
        &format!("SELECT \"description\" FROM {REGISTRY} WHERE \"name\" = ?1"),
        &[Value::Text(name.to_owned())],
        &mut |row| match row.get(0)? {
            ValueRef::Text(t) => {
                stored = Some(t.to_owned());
                Ok(())
            }
            _ => Err(Error::corrupted(name, None, "the range index's description is not text")),
        },
    )?;
    stored
        .map(|s| {
            serde_json::from_str(&s)
                .map_err(|e| Error::corrupted(name, None, format!("the range index's description is damaged: {e}")))
        })
        .transpose()
}

impl Inner {
    /// Creates the index's tables, or checks that the stored index has the wanted fields.
    fn ensure(&self, conn: &dyn Connection, wanted: &Description) -> Result<()> {
        conn.execute_ddl(&format!(
            "CREATE TABLE IF NOT EXISTS {REGISTRY} (\"name\" TEXT PRIMARY KEY NOT NULL, \"description\" TEXT NOT NULL)"
        ))?;
        match stored_description(conn, &self.name)? {
            Some(stored) if &stored == wanted => return Ok(()),
            Some(stored) => {
                let list =
                    |fields: &[RangeField]| fields.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                return Err(Error::SchemaMismatch {
                    collection: self.name.clone(),
                    field: String::new(),
                    reason: format!(
                        "range index `{}` exists with the fields ({}), not ({}): open it with `RangeIndex::open`, or \
                         drop it first with `RangeIndex::drop`",
                        self.name,
                        list(&stored.fields),
                        list(&wanted.fields)
                    ),
                });
            }
            None => {}
        }
        let typed: Vec<String> = self
            .fields
            .iter()
            .map(|f| format!("{} {}", quote_ident(&column_name(&f.name)), f.key_type.as_str()))
            .collect();
        conn.execute_ddl(&format!(
            "CREATE TABLE IF NOT EXISTS {} (\"_id\" TEXT PRIMARY KEY NOT NULL, {}) STRICT, WITHOUT ROWID",
            self.table,
            typed.join(", ")
        ))?;
        let last_desc = self.fields.last().is_some_and(RangeField::descending_key);
        let keys: Vec<String> = self
            .fields
            .iter()
            .map(|f| {
                format!("{} {}", quote_ident(&column_name(&f.name)), if f.descending_key() { "DESC" } else { "ASC" })
            })
            .chain([format!("\"_id\" {}", if last_desc { "DESC" } else { "ASC" })])
            .collect();
        conn.execute_ddl(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
            quote_ident(&format!("{}_keys", table_name(&self.name))),
            self.table,
            keys.join(", ")
        ))?;
        let json = serde_json::to_string(wanted).map_err(|e| Error::serialization(&self.name, None, e))?;
        conn.execute(
            &format!("INSERT INTO {REGISTRY} (\"name\", \"description\") VALUES (?1, ?2)"),
            &[Value::Text(self.name.clone()), Value::Text(json)],
        )?;
        Ok(())
    }

    /// Reads the keys of `row` from column `at` on, skipping the first `skip` fields (the
    /// prefix), strictly: a value of another type than its field's is corruption.
    fn read_keys(&self, row: &dyn crate::backend::Row, at: usize, skip: usize) -> Result<Vec<Value>> {
        let mut keys = Vec::with_capacity(self.fields.len() - skip);
        for (i, field) in self.fields.iter().enumerate().skip(skip) {
            let value = row.get(at + i - skip)?.to_owned();
            if !field.key_type.admits(&value) {
                return Err(Error::corrupted(
                    &self.name,
                    None,
                    format!("a stored key of `{}` is {}", field.name, kind_of(&value)),
                ));
            }
            keys.push(value);
        }
        Ok(keys)
    }
}

fn mismatch(name: &str, field: &str, reason: String) -> Error {
    Error::SchemaMismatch { collection: name.to_owned(), field: field.to_owned(), reason }
}

fn validate_name(name: &str) -> Result<()> {
    // The tables are `_db4_rgi_<name>...`: any identifier fits behind the prefix.
    let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier || name.len() > 48 {
        return Err(mismatch(
            name,
            "",
            format!("range index name `{name}` must be 1-48 ASCII letters, digits or `_`, not starting with a digit"),
        ));
    }
    Ok(())
}

fn validate(name: &str, fields: &[RangeField]) -> Result<()> {
    validate_name(name)?;
    if fields.is_empty() || fields.len() > MAX_RANGE_FIELDS {
        return Err(mismatch(
            name,
            "",
            format!("a range index has 1 to {MAX_RANGE_FIELDS} fields; {} were given", fields.len()),
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        if !crate::schema::is_valid_field_name(&field.name) {
            return Err(mismatch(name, &field.name, "field names are 1-64 ASCII letters, digits or `_`".into()));
        }
        if fields[..i].iter().any(|f| f.name.eq_ignore_ascii_case(&field.name)) {
            return Err(mismatch(name, &field.name, "declared twice".into()));
        }
    }
    Ok(())
}

/// A range over a [`RangeIndex`], from [`RangeIndex::range`]: the builder of a collection's
/// [`Range`](crate::Range) without `filter`; pages hold [`IndexEntry`]s.
///
/// Bounds apply to the first key after the [`prefix`](Self::prefix) (to the id once every
/// key is fixed), in value order whatever the direction.
#[must_use = "a range does nothing until run with fetch() or iter()"]
#[derive(Debug, Clone)]
pub struct IndexRange<'i> {
    index: &'i RangeIndex,
    spec: Spec,
}

impl<'i> IndexRange<'i> {
    /// Keeps the keys within `bounds` (`a..b`, `a..=b`, `a..`, `..b`, `..`, or a pair of
    /// [`Bound`]s), inclusive or exclusive as written. Replaces earlier bounds.
    pub fn between<Q: QueryValue<AnyValue> + Clone>(mut self, bounds: impl RangeBounds<Q>) -> Self {
        self.spec.between(bounds);
        self
    }

    /// Keeps keys greater than `value` (replacing the lower bound).
    pub fn gt(mut self, value: impl QueryValue<AnyValue>) -> Self {
        self.spec.bound(false, false, value.into_value());
        self
    }

    /// Keeps keys greater than or equal to `value` (replacing the lower bound).
    pub fn gte(mut self, value: impl QueryValue<AnyValue>) -> Self {
        self.spec.bound(false, true, value.into_value());
        self
    }

    /// Keeps keys less than `value` (replacing the upper bound); `None` is less than every
    /// value.
    pub fn lt(mut self, value: impl QueryValue<AnyValue>) -> Self {
        self.spec.bound(true, false, value.into_value());
        self
    }

    /// Keeps keys less than or equal to `value` (replacing the upper bound).
    pub fn lte(mut self, value: impl QueryValue<AnyValue>) -> Self {
        self.spec.bound(true, true, value.into_value());
        self
    }

    /// Fixes the leading keys to `values` (one value, or a tuple with one per key). Replaces
    /// an earlier prefix.
    pub fn prefix(mut self, values: impl KeyPrefix) -> Self {
        self.spec.prefix(&values);
        self
    }

    /// The index's own order (the default).
    pub fn ascending(mut self) -> Self {
        self.spec.descending = false;
        self
    }

    /// The reverse of the index's order, every key and the id reversed.
    pub fn descending(mut self) -> Self {
        self.spec.descending = true;
        self
    }

    /// At most `n` entries per page (default [`DEFAULT_PAGE_SIZE`](crate::DEFAULT_PAGE_SIZE));
    /// at least 1.
    pub fn limit(mut self, n: usize) -> Self {
        self.spec.limit = n;
        self
    }

    /// Starts after `cursor` (a [`Page::next`] or [`Page::prev`] of this same range).
    /// Replaces [`before`](Self::before).
    pub fn after(mut self, cursor: &Cursor) -> Self {
        self.spec.cursor(cursor, true);
        self
    }

    /// Ends before `cursor`: the page is the `limit` entries just before it, in the range's
    /// order. Replaces [`after`](Self::after).
    pub fn before(mut self, cursor: &Cursor) -> Self {
        self.spec.cursor(cursor, false);
        self
    }

    /// Reads one page.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`] for a cursor not issued for this range by this database,
    /// [`Error::InvalidQuery`] for a prefix longer than the index, a prefix value or bound of
    /// another type than its key's, a value that cannot be bound (a NaN) or a `limit` of 0,
    /// [`Error::Corrupted`] for a stored key of the wrong type, or a backend error.
    pub fn fetch(self) -> Result<Page<IndexEntry>> {
        let span = trace::op("range_index_fetch", Some(&self.index.inner.name));
        let page = self.prepare().and_then(|(context, position)| self.page(&context, &position, self.spec.limit));
        span.rows_of(page, |p| p.items.len() as u64)
    }

    /// Iterates over every entry of the range, reading `page_size` at a time as the iterator
    /// advances (each page a read of its own). Starts after the [`after`](Self::after) cursor
    /// if set; with [`before`](Self::before), walks backwards from it, nearest first. Stops
    /// after the first error.
    pub fn iter(self, page_size: usize) -> impl Iterator<Item = Result<IndexEntry>> + 'i {
        let start = self.prepare().map(|(context, position)| (Prepared { range: self, context }, position));
        Pager::new(start, page_size)
    }

    fn invalid_query(&self, reason: impl Into<String>) -> Error {
        Error::invalid_query(&self.index.inner.name, reason)
    }

    /// Checks the range and the cursor: the context cursors are signed over, and where to
    /// start.
    fn prepare(&self) -> Result<(Vec<u8>, Position)> {
        let inner = &self.index.inner;
        self.spec.check(&inner.name)?;
        let n = inner.fields.len();
        if self.spec.prefix.len() > n {
            return Err(self.invalid_query(format!(
                "the prefix has {} values and range index `{}` has {n} fields",
                self.spec.prefix.len(),
                inner.name
            )));
        }
        let wrong = |field: &str, what: &str, v: &Value, ty: &str| {
            self.invalid_query(format!("{what} of `{field}` is {} where the key is {ty}", kind_of(v)))
        };
        for (field, v) in inner.fields.iter().zip(&self.spec.prefix) {
            if !field.key_type.admits(v) {
                return Err(wrong(&field.name, "the prefix value", v, &field.key_type.as_str().to_ascii_lowercase()));
            }
        }
        let (bounded, ty) = match inner.fields.get(self.spec.prefix.len()) {
            Some(f) => (f.name.as_str(), f.key_type),
            None => ("_id", KeyType::Text),
        };
        for bound in [&self.spec.lower, &self.spec.upper] {
            if let Bound::Included(v) | Bound::Excluded(v) = bound
                && !ty.admits(v)
            {
                return Err(wrong(bounded, "a bound", v, &ty.as_str().to_ascii_lowercase()));
            }
        }
        let context = self.context();
        // The cursor holds the keys after the prefix, and the id.
        let expected = n - self.spec.prefix.len() + 1;
        let position = self.spec.position(self.index.db.cursor_key(), &context, expected)?;
        if let Some(values) = position.key() {
            let (id, keys) = values.split_last().unwrap_or((&Value::Null, &[]));
            let fits = inner.fields[self.spec.prefix.len()..].iter().zip(keys).all(|(f, v)| f.key_type.admits(v));
            if !fits || !matches!(id, Value::Text(_)) {
                return Err(Error::invalid_cursor("its keys are not of this index's types"));
            }
        }
        Ok((context, position))
    }

    /// What a cursor of this range is signed over: the index, its fields, the direction, the
    /// prefix and the bounds.
    fn context(&self) -> Vec<u8> {
        let inner = &self.index.inner;
        let mut out = b"db4 range index v1\0".to_vec();
        let text = |out: &mut Vec<u8>, s: &str| encode_value(out, ValueRef::Text(s));
        text(&mut out, &inner.name);
        for field in &inner.fields {
            text(&mut out, &field.name);
            text(&mut out, field.key_type.as_str());
            out.push(u8::from(field.descending_key()));
        }
        self.spec.encode(&mut out);
        out
    }

    /// Reads the page at `position`: `limit` + 1 entries, to learn whether more follow.
    fn page(&self, context: &[u8], position: &Position, limit: usize) -> Result<Page<IndexEntry>> {
        let inner = &self.index.inner;
        let n = inner.fields.len();
        let p = self.spec.prefix.len();
        let flip = self.spec.descending ^ position.backward();
        let last_desc = inner.fields.last().is_some_and(RangeField::descending_key);
        let keys: Vec<Key> = inner
            .fields
            .iter()
            .enumerate()
            .map(|(field, f)| Key { field, descending: f.descending_key() ^ flip, nullable: true })
            .chain([Key { field: n, descending: last_desc ^ flip, nullable: false }])
            .collect();
        let scan = self.spec.scan(&keys, position);
        let mut sql = crate::sql::Statement::new(inner.schema, &inner.columns);
        sql.push("SELECT \"_id\"");
        for key in &keys[..n] {
            sql.push(", ");
            sql.field(key.field)?;
        }
        sql.push(" FROM ");
        sql.push(&inner.table);
        let conditions = scan.push_conditions(&mut sql, " WHERE ")?;
        sql.fit(and_height(&conditions), crate::sql::MAX_EXPR_DEPTH)?;
        scan.push_order_and_limit(&mut sql, limit)?;
        let (text, params) = sql.finish()?;
        let mut rows: Vec<(IndexEntry, Vec<Value>)> = Vec::with_capacity(crate::sql::rows_capacity(Some(limit)));
        let mut has_more = false;
        Runner::Db(&self.index.db).read(|conn| {
            conn.query(&text, &params, &mut |row| {
                if rows.len() == limit {
                    // The probe row: more follow.
                    has_more = true;
                    return Ok(());
                }
                let ValueRef::Text(id) = row.get(0)? else {
                    return Err(Error::corrupted(&inner.name, None, "an indexed id is not text"));
                };
                let id = id.to_owned();
                let keys = inner.read_keys(row, 1, 0)?;
                let mut cursor = keys[p..].to_vec();
                cursor.push(Value::Text(id.clone()));
                rows.push((IndexEntry { id, keys }, cursor));
                Ok(())
            })
        })?;
        Ok(finish_page(self.index.db.cursor_key(), context, position, rows, has_more))
    }
}

/// A range checked and ready to read pages, for [`Pager`].
struct Prepared<'i> {
    range: IndexRange<'i>,
    context: Vec<u8>,
}

impl PageSource for Prepared<'_> {
    type Item = IndexEntry;

    fn read(&self, position: &Position, limit: usize) -> Result<Page<IndexEntry>> {
        self.range.page(&self.context, position, limit)
    }

    fn invalid(&self, reason: &str) -> Error {
        self.range.invalid_query(reason)
    }
}
