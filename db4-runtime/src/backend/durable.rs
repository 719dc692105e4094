//! The Cloudflare Durable Object backend: a Durable Object's own SQLite storage, through
//! workers-rs.
//!
//! The Durable Object SQL API rejects `BEGIN`, `SAVEPOINT` and `PRAGMA journal_mode`; this
//! backend sends none of them. [`Access::Atomic`] runs the closure inside the storage's
//! `transactionSync`, which commits when the closure returns and rolls back when it throws.
//! db4's savepoints and nested transactions are an undo log above this seam, so they behave
//! here exactly as on SQLite natively.
//!
//! Values cross JavaScript on the way in and out, where every number is a double: integers
//! beyond ±(2^53 − 1) cannot be stored exactly and are refused with a clear error instead of
//! being rounded.

use super::{Access, Backend, Connection, Row};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::value::{Value, ValueRef};
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
        Self { sql: storage.sql(), storage: worker::send::SendWrapper::new(raw.clone()) }
    }
}

impl Backend for DurableBackend {
    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> Result<()>) -> Result<()> {
        let conn = DurableConnection { sql: &self.sql };
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
}

impl DurableConnection<'_> {
    fn exec(&self, sql: &str, params: &[Value]) -> Result<worker::SqlCursor> {
        let bindings = params.iter().map(to_js).collect::<Result<Vec<_>>>()?;
        self.sql.exec_raw(sql, bindings).map_err(|e| worker_error(&e).into())
    }
}

impl DurableConnection<'_> {
    /// Runs a statement to completion (it runs as its cursor is consumed).
    fn run_statement(&self, sql: &str, params: &[Value]) -> Result<worker::SqlCursor> {
        let cursor = self.exec(sql, params)?;
        for row in cursor.raw() {
            row.map_err(|e| worker_error(&e))?;
        }
        Ok(cursor)
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

fn to_js(value: &Value) -> Result<JsValue> {
    Ok(match value {
        Value::Null => JsValue::NULL,
        Value::Integer(i) if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(i) => JsValue::from_f64(*i as f64),
        Value::Integer(i) => {
            return Err(BackendError::new(
                BackendErrorKind::Unsupported,
                format!(
                    "integer {i} is beyond ±(2^53 - 1), which a Durable Object cannot store exactly; store it as a string"
                ),
            )
            .into());
        }
        Value::Real(r) => JsValue::from_f64(*r),
        Value::Text(s) => JsValue::from_str(s),
        Value::Blob(b) => js_sys::Uint8Array::from(b.as_slice()).into(),
    })
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
