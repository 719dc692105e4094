//! The Cloudflare Durable Object backend: a Durable Object's own SQLite storage, through
//! workers-rs.
//!
//! The Durable Object SQL API rejects `BEGIN`, `SAVEPOINT` and `PRAGMA journal_mode`; this
//! backend sends none of them. [`Access::Atomic`] runs the closure inside the storage's
//! `transactionSync`, which commits when the closure returns and rolls back when it throws.
//! db4's savepoints and nested transactions are an undo log above this seam, so they behave
//! here exactly as on SQLite natively.
//!
//! Values cross JavaScript on the way in and out, where every number is a double. An integer
//! parameter beyond ±(2^53 − 1) therefore travels as its decimal text, and its placeholder is
//! sent as `(+CAST(?N AS INTEGER))`: SQLite turns the text back into the exact integer, and the
//! unary `+` takes away the `CAST`'s INTEGER affinity, so the value compares, sorts, stores and
//! computes exactly as a bound integer does natively (see `docs/cloudflare.md` for the
//! reasoning and what stays different, such as integers beyond 2^53 read back).

use super::{Access, Backend, Connection, Row};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::value::{Value, ValueRef};
use std::borrow::Cow;
use wasm_bindgen::prelude::*;
use worker::SqlStorageValue;

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

#[wasm_bindgen]
extern "C" {
    /// The `DurableObjectStorage` object, for the one method workers-rs does not bind.
    type StorageWithTransactionSync;

    /// `storage.transactionSync(fn)`: runs `fn` in a transaction; a throw rolls it back.
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &StorageWithTransactionSync,
        closure: &mut dyn FnMut() -> std::result::Result<JsValue, JsValue>,
    ) -> std::result::Result<JsValue, JsValue>;
}

/// A Durable Object's SQL storage as a db4 [`Backend`].
pub struct DurableBackend {
    sql: worker::SqlStorage,
    storage: worker::send::SendWrapper<JsValue>,
    /// The `rowsWritten` of every statement so far.
    written: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DurableBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableBackend").finish_non_exhaustive()
    }
}

impl DurableBackend {
    /// The backend over a Durable Object's storage (from `state.storage()`).
    pub fn new(storage: &worker::Storage) -> Self {
        let raw: &JsValue = storage.as_raw().as_ref();
        Self {
            sql: storage.sql(),
            storage: worker::send::SendWrapper::new(raw.clone()),
            written: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Backend for DurableBackend {
    /// A Durable Object's storage is written only through its own code, one request at a
    /// time: with one `Db` per object, every write goes through this backend.
    fn foreign_commits(&self) -> Option<u64> {
        Some(0)
    }

    /// The object's `databaseSize`: what its storage holds, as Cloudflare counts it.
    fn database_bytes(&self) -> Result<u64> {
        Ok(self.sql.database_size() as u64)
    }

    fn rows_written(&self) -> Option<u64> {
        Some(self.written.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> Result<()>) -> Result<()> {
        let conn = DurableConnection { sql: &self.sql, written: &self.written };
        if access != Access::Atomic {
            return f(&conn);
        }
        // The closure's own error is kept here; JavaScript only sees that it threw.
        let mut failure: Option<Error> = None;
        let storage: &StorageWithTransactionSync = self.storage.0.unchecked_ref();
        let outcome = storage.transaction_sync(&mut || match f(&conn) {
            Ok(()) => Ok(JsValue::UNDEFINED),
            Err(e) => {
                failure = Some(e);
                Err(JsValue::from_str("db4: transaction rolled back"))
            }
        });
        match (outcome, failure) {
            (_, Some(e)) => Err(e),
            (Ok(_), None) => Ok(()),
            (Err(js), None) => Err(js_error(&js).into()),
        }
    }
}

struct DurableConnection<'a> {
    sql: &'a worker::SqlStorage,
    written: &'a std::sync::atomic::AtomicU64,
}

impl DurableConnection<'_> {
    fn exec(&self, sql: &str, params: &[Value]) -> Result<worker::SqlCursor> {
        let sql = exact_integers(sql, params)?;
        let bindings: Vec<JsValue> = params.iter().map(to_js).collect();
        self.sql.exec_raw(&sql, bindings).map_err(|e| worker_error(&e).into())
    }
}

impl DurableConnection<'_> {
    /// Runs a statement to completion (it runs as its cursor is consumed).
    fn run_statement(&self, sql: &str, params: &[Value]) -> Result<worker::SqlCursor> {
        let cursor = self.exec(sql, params)?;
        for row in cursor.raw() {
            row.map_err(|e| worker_error(&e))?;
        }
        self.count(&cursor);
        Ok(cursor)
    }

    /// Adds the statement's billed rows (complete once its cursor is consumed).
    fn count(&self, cursor: &worker::SqlCursor) {
        self.written.fetch_add(cursor.rows_written() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// SQLite's `changes()`: rows changed by the last INSERT, UPDATE or DELETE.
    fn changes(&self) -> Result<usize> {
        let cursor = self.exec("SELECT changes()", &[])?;
        for row in cursor.raw() {
            let row = row.map_err(|e| worker_error(&e))?;
            if let Some(SqlStorageValue::Integer(n)) = row.first() {
                return Ok(usize::try_from(*n).unwrap_or(0));
            }
        }
        Err(BackendError::new(BackendErrorKind::Other, "SELECT changes() returned no number").into())
    }
}

impl Connection for DurableConnection<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        let cursor = self.run_statement(sql, params)?;
        // `rowsWritten` is the billing count, not the changed rows: it adds the index entries
        // an INSERT or UPDATE writes (one row inserted into a table with three indexes counts
        // 5). A changed row always counts, so 0 and 1 are exact; beyond, ask SQLite.
        match cursor.rows_written() {
            n @ (0 | 1) => Ok(n),
            _ => self.changes(),
        }
    }

    fn execute_ddl(&self, sql: &str) -> Result<()> {
        self.run_statement(sql, &[]).map(drop)
    }

    fn query(&self, sql: &str, params: &[Value], row: &mut dyn FnMut(&dyn Row) -> Result<()>) -> Result<()> {
        let cursor = self.exec(sql, params)?;
        for values in cursor.raw() {
            let values = values.map_err(|e| worker_error(&e))?;
            row(&DurableRow(values.into_iter().map(from_sql).collect()))?;
        }
        self.count(&cursor);
        Ok(())
    }
}

struct DurableRow(Vec<Value>);

impl Row for DurableRow {
    fn get(&self, index: usize) -> Result<ValueRef<'_>> {
        self.0.get(index).map(Value::as_ref).ok_or_else(|| {
            BackendError::new(BackendErrorKind::Other, format!("result row has no column {index}")).into()
        })
    }
}

/// Whether a JavaScript number holds `i` exactly.
fn is_safe(i: i64) -> bool {
    (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i)
}

fn needs_text(value: &Value) -> bool {
    matches!(value, Value::Integer(i) if !is_safe(*i))
}

fn to_js(value: &Value) -> JsValue {
    match value {
        Value::Null => JsValue::NULL,
        Value::Integer(i) if is_safe(*i) => JsValue::from_f64(*i as f64),
        // Turned back into the integer by the CAST `exact_integers` put around its placeholder.
        Value::Integer(i) => JsValue::from_str(&i.to_string()),
        Value::Real(r) => JsValue::from_f64(*r),
        Value::Text(s) => JsValue::from_str(s),
        Value::Blob(b) => js_sys::Uint8Array::from(b.as_slice()).into(),
    }
}

/// `sql` with the placeholder of every integer parameter that [`to_js`] sends as text (beyond
/// ±(2^53 − 1)) wrapped as `(+CAST(?N AS INTEGER))`; unchanged (and not copied) when there is
/// none. Placeholders are found outside quoted strings, quoted identifiers and comments, and
/// numbered as SQLite numbers them (`?N` is N; a bare `?` is one more than the largest so far).
///
/// Each wrapped placeholder deepens its expression by two levels and lengthens the statement
/// by 20 bytes, within the platform's limits except for a statement already at them.
///
/// # Errors
///
/// [`BackendErrorKind::Unsupported`] when such an integer is bound to a statement with named
/// parameters (`:a`, `@a`, `$a`), whose numbering this does not follow; db4 generates none.
fn exact_integers<'s>(sql: &'s str, params: &[Value]) -> Result<Cow<'s, str>> {
    if !params.iter().any(needs_text) {
        return Ok(Cow::Borrowed(sql));
    }
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 64);
    let (mut at, mut copied, mut highest) = (0, 0, 0);
    while let Some(&b) = bytes.get(at) {
        let next = bytes.get(at + 1).copied();
        at = match (b, next) {
            (b'\'' | b'"' | b'`', _) => close(bytes, at + 1, &[b]),
            (b'[', _) => close(bytes, at + 1, b"]"),
            (b'-', Some(b'-')) => close(bytes, at + 2, b"\n"),
            (b'/', Some(b'*')) => close(bytes, at + 2, b"*/"),
            (b'?', _) => {
                let digits = bytes[at + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                let end = at + 1 + digits;
                let number = if digits == 0 { highest + 1 } else { sql[at + 1..end].parse().unwrap_or(usize::MAX) };
                highest = highest.max(number);
                if number.checked_sub(1).and_then(|i| params.get(i)).is_some_and(needs_text) {
                    out.push_str(&sql[copied..at]);
                    out.push_str("(+CAST(");
                    out.push_str(&sql[at..end]);
                    out.push_str(" AS INTEGER))");
                    copied = end;
                }
                end
            }
            (b':' | b'@' | b'$', Some(n)) if n.is_ascii_alphanumeric() || n == b'_' => {
                return Err(BackendError::new(
                    BackendErrorKind::Unsupported,
                    "an integer beyond ±(2^53 - 1) cannot be bound exactly to a statement with named parameters on a \
                     Durable Object",
                )
                .into());
            }
            _ => at + 1,
        };
    }
    out.push_str(&sql[copied..]);
    Ok(Cow::Owned(out))
}

/// The index just past the first `end` at or after `from` (a doubled quote inside a quoted
/// string is found as two closings in a row, which scans the same), or the text's end.
fn close(bytes: &[u8], from: usize, end: &[u8]) -> usize {
    bytes
        .get(from..)
        .and_then(|rest| rest.windows(end.len()).position(|w| w == end))
        .map_or(bytes.len(), |i| from + i + end.len())
}

fn from_sql(value: SqlStorageValue) -> Value {
    match value {
        SqlStorageValue::Null => Value::Null,
        SqlStorageValue::Boolean(b) => Value::Integer(i64::from(b)),
        SqlStorageValue::Integer(i) => Value::Integer(i),
        SqlStorageValue::Float(f) => Value::Real(f),
        SqlStorageValue::String(s) => Value::Text(s),
        SqlStorageValue::Blob(b) => Value::Blob(b),
    }
}

fn classify(message: &str) -> BackendErrorKind {
    if message.contains("SQLITE_CONSTRAINT") || message.contains("constraint failed") {
        BackendErrorKind::Constraint
    } else if message.contains("SQLITE_BUSY") || message.contains("SQLITE_LOCKED") {
        BackendErrorKind::Busy
    } else if message.contains("SQLITE_TOOBIG") || message.contains("too big") {
        BackendErrorKind::TooBig
    } else if message.contains("SQLITE_CORRUPT") || message.contains("SQLITE_NOTADB") {
        BackendErrorKind::Corrupt
    } else {
        BackendErrorKind::Other
    }
}

fn worker_error(e: &worker::Error) -> BackendError {
    let message = e.to_string();
    BackendError::new(classify(&message), message)
}

fn js_error(js: &JsValue) -> BackendError {
    let message = js
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| js.as_string())
        .unwrap_or_else(|| format!("{js:?}"));
    BackendError::new(classify(&message), message)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use rusqlite::types::Value as SqlValue;

    const BIG: i64 = (1 << 53) + 1;

    /// The layout of a db4 table: an INTEGER id, a version, a generated index column (no
    /// declared type, so no affinity) and a document field read with json_extract.
    const DDL: &str = r#"CREATE TABLE "t" ("_id" INTEGER PRIMARY KEY NOT NULL, "_doc" TEXT NOT NULL,
        "_version" INTEGER NOT NULL, "f_p" GENERATED ALWAYS AS (json_extract("_doc", '$."p"')) VIRTUAL)"#;

    /// Runs `sql` natively twice: with the integers bound as integers (what rusqlite does), and
    /// as the Durable Object backend sends them (big ones as text, behind the CAST); the rows
    /// and the changes must be the same.
    fn same_both_ways(sql: &str, params: &[Value], native: &rusqlite::Connection, durable: &rusqlite::Connection) {
        let sent = exact_integers(sql, params).unwrap();
        let as_text: Vec<Value> =
            params.iter().map(|p| if needs_text(p) { Value::Text(p.to_string()) } else { p.clone() }).collect();
        let run = |conn: &rusqlite::Connection, sql: &str, params: &[Value]| {
            let mut stmt = conn.prepare(sql).unwrap();
            let width = stmt.column_count();
            let rows: Vec<Vec<SqlValue>> = stmt
                .query_map(rusqlite::params_from_iter(params.iter()), |r| (0..width).map(|i| r.get(i)).collect())
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            (rows, conn.changes())
        };
        assert_eq!(run(native, sql, params), run(durable, &sent, &as_text), "{sql} / sent as {sent}");
    }

    #[test]
    fn placeholders_of_big_integers_are_cast_and_nothing_else_changes() {
        let params = [Value::Integer(BIG), Value::Integer(1), Value::Integer(i64::MIN)];
        assert!(matches!(exact_integers("SELECT ?1, ?2", &params[1..2]).unwrap(), Cow::Borrowed(_)));
        assert_eq!(
            exact_integers(r#"SELECT ?1 + "a?" + '?''?' /* ? */ + ?, ?3 -- ?"#, &params).unwrap(),
            r#"SELECT (+CAST(?1 AS INTEGER)) + "a?" + '?''?' /* ? */ + ?, (+CAST(?3 AS INTEGER)) -- ?"#
        );
        // A bare `?` after `?3` is parameter 4; before any, parameter 1.
        let params = [Value::Integer(1), Value::Integer(2), Value::Integer(3), Value::Integer(-BIG)];
        assert_eq!(exact_integers("SELECT ?3, ?", &params).unwrap(), "SELECT ?3, (+CAST(? AS INTEGER))");
        assert_eq!(
            exact_integers("SELECT ?, ?", &[Value::Integer(BIG), Value::Null]).unwrap(),
            "SELECT (+CAST(? AS INTEGER)), ?"
        );
        assert!(exact_integers("SELECT :a, ?", &[Value::Null, Value::Integer(BIG)]).is_err());
        assert!(exact_integers("SELECT ':a', ?", &[Value::Integer(BIG)]).is_ok());
    }

    #[test]
    fn big_integers_sent_as_text_behave_as_bound_integers() {
        let conns = [rusqlite::Connection::open_in_memory().unwrap(), rusqlite::Connection::open_in_memory().unwrap()];
        for c in &conns {
            c.execute_batch(DDL).unwrap();
        }
        let [native, durable] = &conns;
        let doc = |p: &str| Value::Text(format!(r#"{{"p":{p}}}"#));
        let cases: Vec<(&str, Vec<Value>)> = vec![
            // Writes of ids and versions (the columns have INTEGER affinity).
            (
                r#"INSERT INTO "t" ("_id", "_doc", "_version") VALUES (?1, ?2, ?3)"#,
                vec![Value::Integer(BIG), doc(&BIG.to_string()), Value::Integer(BIG)],
            ),
            (
                r#"INSERT INTO "t" ("_id", "_doc", "_version") VALUES (?1, ?2, ?3)"#,
                vec![Value::Integer(i64::MAX), doc("\"12\""), Value::Integer(0)],
            ),
            (
                r#"INSERT INTO "t" ("_id", "_doc", "_version") VALUES (?1, ?2, ?3)"#,
                vec![Value::Integer(-BIG), doc(&i64::MIN.to_string()), Value::Integer(7)],
            ),
            (
                r#"INSERT INTO "t" ("_id", "_doc", "_version") VALUES (?1, ?2, ?3)"#,
                vec![Value::Integer(3), doc("3.5"), Value::Integer(1)],
            ),
            (
                r#"INSERT INTO "t" ("_id", "_doc", "_version") VALUES (?1, ?2, ?3)"#,
                vec![Value::Integer(4), doc(&format!("\"{BIG}\"")), Value::Integer(1)],
            ),
            (
                r#"UPDATE "t" SET "_version" = ?3 + 1 WHERE "_id" = ?1 AND "_version" = ?3"#,
                vec![Value::Integer(BIG), Value::Null, Value::Integer(BIG)],
            ),
            (r#"SELECT "_id", "_version", typeof("_version") FROM "t" WHERE "_id" = ?1"#, vec![Value::Integer(BIG)]),
            // Filters against columns without affinity: text must not compare as text.
            (r#"SELECT "_id" FROM "t" WHERE "f_p" >= ? ORDER BY "_id""#, vec![Value::Integer(i64::MIN)]),
            (r#"SELECT "_id" FROM "t" WHERE "f_p" = ? ORDER BY "_id""#, vec![Value::Integer(BIG)]),
            (r#"SELECT "_id" FROM "t" WHERE "f_p" < ? ORDER BY "_id""#, vec![Value::Integer(BIG)]),
            (r#"SELECT "_id" FROM "t" WHERE "f_p" = ? ORDER BY "_id""#, vec![Value::Integer(12)]),
            (
                r#"SELECT "_id" FROM "t" WHERE json_extract("_doc", ?) > ? ORDER BY "_id""#,
                vec![Value::Text("$.\"p\"".into()), Value::Integer(-BIG)],
            ),
            (
                r#"SELECT "_id" FROM "t" WHERE "f_p" IN (?, ?) ORDER BY "_id""#,
                vec![Value::Integer(BIG), Value::Integer(i64::MIN)],
            ),
            (
                r#"SELECT "_id" FROM "t" WHERE "f_p" BETWEEN ? AND ? ORDER BY "_id""#,
                vec![Value::Integer(i64::MIN), Value::Integer(BIG)],
            ),
            (
                r#"SELECT "_id" FROM "t" ORDER BY "_id" LIMIT ? OFFSET ?"#,
                vec![Value::Integer(i64::MAX), Value::Integer(1)],
            ),
            (r#"SELECT "_id", "f_p" FROM "t" ORDER BY "f_p" DESC, "_id""#, vec![]),
            (r#"DELETE FROM "t" WHERE "_id" = ?1"#, vec![Value::Integer(i64::MAX)]),
            (r#"SELECT count(*) FROM "t""#, vec![]),
        ];
        for (sql, params) in &cases {
            same_both_ways(sql, params, native, durable);
        }
        // Why both parts of the wrapper: row 4 holds the *text* "9007199254740993" in "f_p".
        let ids = |sql: &str| durable.query_row(sql, [BIG.to_string()], |r| r.get::<_, String>(0)).unwrap();
        let matching = |rhs: &str| ids(&format!(r#"SELECT group_concat("_id") FROM "t" WHERE "f_p" = {rhs}"#));
        assert_eq!(matching("(+CAST(? AS INTEGER))"), BIG.to_string(), "as natively");
        assert_eq!(matching("CAST(? AS INTEGER)"), format!("4,{BIG}"), "the CAST's affinity converts the text");
        assert_eq!(matching("?"), "4", "text compares as text");
    }
}
