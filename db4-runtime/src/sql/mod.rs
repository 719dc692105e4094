//! Building the SQL db4 runs, within the statement limits of every platform it runs on.
//!
//! Identifiers come from validated schemas and are always quoted; values are always bound
//! parameters. [`Statement`] is the one place query statements are built, and the one place
//! their limits are checked: it counts bound values and spills those past the parameter limit
//! into a single JSON array parameter, keeps filters within the expression depth limit (see
//! `query::render`), and refuses a statement whose SQL text or bound values are too long. Whatever
//! it refuses fails with [`Error::InvalidQuery`] naming the limit, before anything runs.

use crate::error::{Error, Result};
use crate::schema::Schema;
use crate::value::{Value, ValueRef};

pub(crate) use crate::limits::{MAX_EXPR_DEPTH, MAX_PARAMS, MAX_SQL_BYTES, MAX_VALUE_BYTES};

/// Rows a reader reserves room for before its statement runs, at most: a page's rows arrive
/// into one vector sized once (growing it row by row reallocates a large buffer several times
/// per page, a tenth of a 100-row page's time), while a caller's huge `limit` reserves nothing
/// it may not use.
const PREALLOC_ROWS: usize = 1024;

/// The capacity to give the vector a statement's rows are collected into, for a statement
/// returning at most `limit` rows (no limit: nothing reserved).
pub(crate) fn rows_capacity(limit: Option<usize>) -> usize {
    limit.map_or(0, |n| n.min(PREALLOC_ROWS))
}

/// Parameters values never take, kept for the spilled-values array, `LIMIT` and `OFFSET`.
const RESERVED_PARAMS: usize = 3;

/// Values bound as one parameter: a JSON array, read back in SQL with `json_each(?n)`. For
/// ids and keys (integers and text); anything else is written as JSON null, which equals
/// nothing in SQL.
pub(crate) fn json_list<'v>(values: impl IntoIterator<Item = ValueRef<'v>>) -> Value {
    let mut lists = json_lists(values, usize::MAX);
    lists.pop().unwrap_or_else(|| Value::Text("[]".to_owned()))
}

/// [`json_list`] split into lists of at most `max_bytes` of JSON each (a list holds at least
/// one value, however long): what one statement can bind within [`MAX_VALUE_BYTES`]. No list
/// for no values.
pub(crate) fn json_lists<'v>(values: impl IntoIterator<Item = ValueRef<'v>>, max_bytes: usize) -> Vec<Value> {
    let mut lists = Vec::new();
    let mut current = String::from("[");
    for v in values {
        let item = match v {
            ValueRef::Integer(i) => serde_json::Value::from(i),
            ValueRef::Text(s) => serde_json::Value::from(s),
            _ => serde_json::Value::Null,
        }
        .to_string();
        if current.len() > 1 && current.len() + item.len() + 2 > max_bytes {
            current.push(']');
            lists.push(Value::Text(std::mem::replace(&mut current, String::from("["))));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&item);
    }
    if current.len() > 1 || lists.is_empty() && max_bytes == usize::MAX {
        current.push(']');
        lists.push(Value::Text(current));
    }
    lists
}

/// How a field is reached from SQL.
#[derive(Debug, Clone)]
pub(crate) enum FieldSql {
    /// A column (quoted): `"_id"`, `"_version"` or an index column.
    Column(String),
    /// A key inside the JSON document: this path is bound as a parameter of `json_extract`.
    Json(String),
}

/// Where a bound value appears in the statement text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Parameter `?n`.
    Param(usize),
    /// `?array->>index`: an element of the spilled-values array bound as parameter `?array`.
    Spilled { array: usize, index: usize },
}

impl Slot {
    /// The slot's height as SQLite counts expression depth: a parameter is a leaf, `->>` a
    /// function call over two leaves.
    pub fn height(self) -> usize {
        match self {
            Slot::Param(_) => 1,
            Slot::Spilled { .. } => 2,
        }
    }
}

/// One query statement over a collection: SQL text and bound values, built together so that
/// placeholders and values stay in step, and kept within the platform limits.
///
/// Values are bound as numbered parameters until [`MAX_PARAMS`] (less a few reserved) are
/// taken; later ones become elements of one JSON array bound once, read back with `->>` (a
/// scalar) or `json_each` (a list). Reading a value back through JSON gives the same SQL value
/// (integer, real or text) and compares the same way, so where a value lands changes nothing
/// but the statement's text.
pub(crate) struct Statement<'m> {
    schema: &'static Schema,
    fields: &'m [FieldSql],
    text: String,
    pub(crate) params: Vec<Value>,
    /// Values past the inline budget, bound as one JSON array at `spill_param`.
    spill: Vec<serde_json::Value>,
    spill_param: Option<usize>,
    /// How many parameters values may take before they spill.
    inline_budget: usize,
    /// The slot of each JSON path bound so far, by field: a path is bound once per statement.
    paths: Vec<Option<Slot>>,
    /// Whether the filter reads a list through a subquery, which SQLite counts as a level.
    pub(crate) has_subquery: bool,
}

impl<'m> Statement<'m> {
    /// An empty statement over the collection of `schema`, whose fields are read as `fields`
    /// says (by field index).
    pub fn new(schema: &'static Schema, fields: &'m [FieldSql]) -> Self {
        Self::with_inline_budget(schema, fields, MAX_PARAMS - RESERVED_PARAMS)
    }

    pub(crate) fn with_inline_budget(schema: &'static Schema, fields: &'m [FieldSql], inline_budget: usize) -> Self {
        Self {
            schema,
            fields,
            text: String::with_capacity(128),
            params: Vec::new(),
            spill: Vec::new(),
            spill_param: None,
            inline_budget,
            paths: Vec::new(),
            has_subquery: false,
        }
    }

    /// Appends SQL text (generated by db4, never a caller's string).
    pub fn push(&mut self, sql: &str) {
        self.text.push_str(sql);
    }

    /// Binds `value` as a parameter or, past the inline budget, as a spilled element.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if the value has to spill and JSON cannot hold it (a blob).
    pub fn bind(&mut self, value: Value) -> Result<Slot> {
        if self.params.len() < self.inline_budget {
            return Ok(self.bind_param(value));
        }
        let json = self.json_of(&value)?;
        Ok(self.spilled(json))
    }

    /// Binds `value` as a parameter of its own, whatever the budget: for `LIMIT` and `OFFSET`,
    /// which the reserved parameters cover.
    pub fn bind_param(&mut self, value: Value) -> Slot {
        self.params.push(value);
        Slot::Param(self.params.len())
    }

    /// Binds `values` as one JSON array, for [`push_list`](Self::push_list).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if JSON cannot hold one of the values (a blob).
    pub fn bind_list(&mut self, values: &[&Value]) -> Result<Slot> {
        let array = values.iter().map(|v| self.json_of(v)).collect::<Result<Vec<_>>>()?;
        if self.params.len() < self.inline_budget {
            return Ok(self.bind_param(Value::Text(serde_json::Value::Array(array).to_string())));
        }
        Ok(self.spilled(serde_json::Value::Array(array)))
    }

    /// How many more values fit as parameters of their own.
    pub fn inline_room(&self) -> usize {
        self.inline_budget.saturating_sub(self.params.len())
    }

    fn spilled(&mut self, json: serde_json::Value) -> Slot {
        let array = match self.spill_param {
            Some(n) => n,
            None => {
                // A placeholder until `finish` knows the whole array.
                self.params.push(Value::Null);
                self.spill_param = Some(self.params.len());
                self.params.len()
            }
        };
        self.spill.push(json);
        Slot::Spilled { array, index: self.spill.len() - 1 }
    }

    fn json_of(&self, value: &Value) -> Result<serde_json::Value> {
        match value {
            Value::Null => Ok(serde_json::Value::Null),
            Value::Integer(i) => Ok(serde_json::Value::from(*i)),
            Value::Real(r) => serde_json::Number::from_f64(*r)
                .map(serde_json::Value::Number)
                .ok_or_else(|| self.invalid(format!("{r} is not a finite number"))),
            Value::Text(s) => Ok(serde_json::Value::from(s.as_str())),
            Value::Blob(_) => Err(self.invalid(format!(
                "a binary value cannot be bound in a long list or past the first {} values of a statement",
                self.inline_budget
            ))),
        }
    }

    /// Writes an integer as a literal, for `LIMIT` and `OFFSET`: the bundled SQLite reads a
    /// bound `LIMIT` while planning and marks the statement to be prepared again whenever that
    /// parameter is bound anew, so a cached statement with a bound `LIMIT` was
    /// re-parsed and re-planned on every run (seen with `perf` in db4-compare's shard top-100:
    /// `sqlite3Reprepare` under `sqlite3_step`). An integer the library formats is not input
    /// text, and one statement per distinct limit is what the planner wants anyway.
    pub fn push_integer(&mut self, n: i64) {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(self.text, "{n}");
    }

    /// Writes a scalar slot: `?n`, or `?a->>i` (which binds tighter than every operator db4
    /// writes around it).
    pub fn push_slot(&mut self, slot: Slot) {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = match slot {
            Slot::Param(n) => write!(self.text, "?{n}"),
            Slot::Spilled { array, index } => write!(self.text, "?{array}->>{index}"),
        };
    }

    /// Writes a list slot as a table of its values: `json_each(?n)` or `json_each(?a, '$[i]')`.
    pub fn push_list(&mut self, slot: Slot) {
        use std::fmt::Write;
        let _ = match slot {
            Slot::Param(n) => write!(self.text, "json_each(?{n})"),
            Slot::Spilled { array, index } => write!(self.text, "json_each(?{array}, '$[{index}]')"),
        };
    }

    /// Writes how field `field` is read, and returns the height of what it wrote: an index
    /// column, or `json_extract` over the document with the field's path bound once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] for a field not in the collection.
    pub fn field(&mut self, field: usize) -> Result<usize> {
        let path = match self.fields.get(field) {
            None => return Err(self.invalid(format!("field #{field} does not belong to this collection"))),
            Some(sql) => sql,
        };
        let path = match path {
            FieldSql::Column(c) => {
                self.text.push_str(c);
                return Ok(1);
            }
            FieldSql::Json(path) => path,
        };
        if self.paths.len() <= field {
            self.paths.resize(field + 1, None);
        }
        let slot = match self.paths[field] {
            Some(slot) => slot,
            None => {
                let slot = self.bind(Value::Text(path.clone()))?;
                self.paths[field] = Some(slot);
                slot
            }
        };
        self.push("json_extract(\"_doc\", ");
        self.push_slot(slot);
        self.push(")");
        Ok(1 + slot.height())
    }

    /// The error for a query that cannot run as built.
    pub fn invalid(&self, reason: impl Into<String>) -> Error {
        Error::invalid_query(self.schema.collection(), reason)
    }

    /// The error for a bad condition on field `field`.
    pub fn invalid_field(&self, field: usize, reason: impl std::fmt::Display) -> Error {
        self.invalid(format!("field `{}`: {reason}", self.schema.fields().get(field).map_or("?", |f| f.name())))
    }

    /// Checks that an expression of `height` levels fits where `room` levels are left.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] naming the depth limit.
    pub fn fit(&self, height: usize, room: usize) -> Result<()> {
        if height > room { Err(self.too_deep()) } else { Ok(()) }
    }

    /// The error for a filter nested too deeply.
    pub fn too_deep(&self) -> Error {
        self.invalid(format!(
            "the filter nests too deeply: its SQL expression would be more than {MAX_EXPR_DEPTH} levels deep, and \
             a statement allows at most {MAX_EXPR_DEPTH} (long flat lists of conditions are fine: alternate `and` \
             and `or` less deeply)"
        ))
    }

    /// Checks the text written so far, so that building a huge statement stops early.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] naming the length limit.
    pub fn check_length(&self) -> Result<()> {
        if self.text.len() > MAX_SQL_BYTES {
            return Err(self.invalid(format!(
                "the query needs more than {MAX_SQL_BYTES} bytes of SQL, and a statement takes at most \
                 {MAX_SQL_BYTES} (`in_list` takes any number of alternatives in a few bytes)"
            )));
        }
        Ok(())
    }

    /// The finished statement: its text and its parameters, in order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQuery`] if the text, the number of parameters or a bound value is above
    /// its limit.
    pub fn finish(mut self) -> Result<(String, Vec<Value>)> {
        if let Some(n) = self.spill_param {
            let array = serde_json::Value::Array(std::mem::take(&mut self.spill)).to_string();
            self.params[n - 1] = Value::Text(array);
        }
        self.check_length()?;
        if self.params.len() > MAX_PARAMS {
            return Err(self.invalid(format!(
                "the query binds {} values, and a statement takes at most {MAX_PARAMS}",
                self.params.len()
            )));
        }
        for value in &self.params {
            let size = match value {
                Value::Text(s) => s.len(),
                Value::Blob(b) => b.len(),
                _ => 0,
            };
            if size > MAX_VALUE_BYTES {
                return Err(self.invalid(format!(
                    "the query binds a value of {size} bytes (a long `in_list` is bound as one JSON array), and a \
                     bound value takes at most {MAX_VALUE_BYTES}"
                )));
            }
        }
        Ok((self.text, self.params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::quote_ident;

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("a"), "\"a\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn lists_are_json_arrays_of_ids() {
        let list = json_list([ValueRef::Integer(-3), ValueRef::Text("b\"c"), ValueRef::Text("é"), ValueRef::Null]);
        assert_eq!(list, Value::Text(r#"[-3,"b\"c","é",null]"#.to_owned()));
        assert_eq!(json_list([]), Value::Text("[]".to_owned()));
    }

    #[test]
    fn long_lists_split_within_the_value_limit() {
        let ids: Vec<String> = (0..1000).map(|i| format!("id-{i:04}")).collect();
        let lists = json_lists(ids.iter().map(|s| ValueRef::Text(s)), 100);
        assert!(lists.len() > 50, "{}", lists.len());
        let mut back = Vec::new();
        for list in &lists {
            let Value::Text(json) = list else { panic!("{list:?}") };
            assert!(json.len() <= 100, "{json}");
            let items: Vec<String> = serde_json::from_str(json).unwrap();
            back.extend(items);
        }
        assert_eq!(back, ids);
        assert!(json_lists([], MAX_VALUE_BYTES).is_empty());
        // A value longer than the limit still goes, alone.
        let long = "x".repeat(300);
        assert_eq!(json_lists([ValueRef::Text(&long), ValueRef::Integer(1)], 100).len(), 2);
    }
}
