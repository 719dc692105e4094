//! The baseline for the latency comparison: the same get, insert and 10-update transaction as
//! the db4 routes, written by hand on `SqlStorage::exec`, as a careful user would.
//!
//! Same table layout and indexes as db4 creates for [`Article`] (the document as JSON text,
//! index columns generated from it), in a table of its own; same serde_json documents, same
//! response building. Served under `/t/{tenant}/raw/...`.

use crate::api::{ApiError, ApiRequest, ApiResponse, Method, split_target};
use crate::model::Article;
use serde_json::json;
use std::cell::Cell;
use wasm_bindgen::prelude::*;
use worker::{SqlStorage, SqlStorageValue};

const DDL: [&str; 4] = [
    r#"CREATE TABLE IF NOT EXISTS "raw_articles" ("_id" TEXT PRIMARY KEY NOT NULL, "_doc" TEXT NOT NULL, "_version" INTEGER NOT NULL, "f_tenant_id" GENERATED ALWAYS AS (json_extract("_doc", '$."tenant_id"')) VIRTUAL, "f_status" GENERATED ALWAYS AS (json_extract("_doc", '$."status"')) VIRTUAL, "f_created_at" GENERATED ALWAYS AS (json_extract("_doc", '$."created_at"')) VIRTUAL)"#,
    r#"CREATE INDEX IF NOT EXISTS "raw_articles.tenant_id" ON "raw_articles" ("f_tenant_id")"#,
    r#"CREATE INDEX IF NOT EXISTS "raw_articles.status" ON "raw_articles" ("f_status")"#,
    r#"CREATE INDEX IF NOT EXISTS "raw_articles.created_at" ON "raw_articles" ("f_created_at")"#,
];
const INSERT: &str = r#"INSERT INTO "raw_articles" ("_id", "_doc", "_version") VALUES (?, ?, ?)"#;
const GET: &str = r#"SELECT "_doc", "_version" FROM "raw_articles" WHERE "_id" = ?"#;
const UPDATE: &str =
    r#"UPDATE "raw_articles" SET "_doc" = ?, "_version" = "_version" + 1 WHERE "_id" = ? AND "_version" = ?"#;

#[wasm_bindgen]
extern "C" {
    /// The `DurableObjectStorage` object, for `transactionSync`.
    type RawStorage;

    /// `storage.transactionSync(fn)`: commits when `fn` returns, rolls back when it throws.
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &RawStorage,
        closure: &mut dyn FnMut() -> Result<JsValue, JsValue>,
    ) -> Result<JsValue, JsValue>;
}

/// Answers a `/raw/...` request. `schema_ready` remembers that this object created its table.
pub fn handle(storage: &worker::Storage, req: &ApiRequest<'_>, tenant: &str, schema_ready: &Cell<bool>) -> ApiResponse {
    let sql = storage.sql();
    if !schema_ready.get() {
        for ddl in DDL {
            if let Err(e) = sql.exec(ddl, None) {
                return ApiResponse::internal(&e.to_string());
            }
        }
        schema_ready.set(true);
    }
    let result = match split_target(req.target) {
        Err(e) => Err(e),
        Ok(target) => {
            let segs: Vec<&str> = target.segments.iter().map(String::as_str).collect();
            match (req.method, segs.as_slice()) {
                (Method::Get, ["raw", "articles", id]) => get(&sql, id),
                (Method::Post, ["raw", "articles"]) => insert(&sql, tenant, req.body),
                (Method::Post, ["raw", "articles", "touch"]) => touch(storage, &sql, req.body),
                _ => Err(ApiError::NoRoute),
            }
        }
    };
    result.unwrap_or_else(|e| e.to_response())
}

fn fail(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidParam(format!("raw: {e}"))
}

fn read(sql: &SqlStorage, id: &str) -> Result<Option<Article>, ApiError> {
    let cursor = sql.exec(GET, vec![SqlStorageValue::from(id)]).map_err(fail)?;
    let Some(row) = cursor.raw().next() else { return Ok(None) };
    let row = row.map_err(fail)?;
    let (Some(SqlStorageValue::String(doc)), Some(SqlStorageValue::Integer(version))) = (row.first(), row.get(1))
    else {
        return Err(fail("unexpected row"));
    };
    let mut doc: Article = serde_json::from_str(doc).map_err(fail)?;
    doc.version = u64::try_from(*version).unwrap_or(0);
    Ok(Some(doc))
}

fn get(sql: &SqlStorage, id: &str) -> Result<ApiResponse, ApiError> {
    let doc = read(sql, id)?.ok_or(ApiError::NoRoute)?;
    Ok(ApiResponse { status: 200, body: json!(doc) })
}

fn insert(sql: &SqlStorage, tenant: &str, body: &[u8]) -> Result<ApiResponse, ApiError> {
    let mut doc: Article = serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    doc.tenant_id = tenant.to_owned();
    let json = serde_json::to_string(&doc).map_err(fail)?;
    let params = vec![
        SqlStorageValue::from(doc.id.as_str()),
        SqlStorageValue::from(json),
        SqlStorageValue::try_from_i64(i64::try_from(doc.version).unwrap_or(0)).map_err(fail)?,
    ];
    let cursor = sql.exec(INSERT, params).map_err(fail)?;
    for row in cursor.raw() {
        row.map_err(fail)?;
    }
    // The rows Cloudflare bills for this insert, for the benchmark's comparison.
    let mut body = json!(doc);
    body["_rows_written"] = json!(cursor.rows_written());
    Ok(ApiResponse { status: 201, body })
}

fn touch(storage: &worker::Storage, sql: &SqlStorage, body: &[u8]) -> Result<ApiResponse, ApiError> {
    #[derive(serde::Deserialize)]
    struct Touch {
        ids: Vec<String>,
    }
    let req: Touch = serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let mut failure = None;
    let raw: &JsValue = storage.as_raw().as_ref();
    let outcome = raw.unchecked_ref::<RawStorage>().transaction_sync(&mut || {
        for id in &req.ids {
            if let Err(e) = touch_one(sql, id) {
                failure = Some(e);
                return Err(JsValue::from_str("raw: rolled back"));
            }
        }
        Ok(JsValue::UNDEFINED)
    });
    if let Some(e) = failure {
        return Err(e);
    }
    outcome.map_err(|e| fail(format!("{e:?}")))?;
    Ok(ApiResponse { status: 200, body: json!({ "updated": req.ids.len() }) })
}

fn touch_one(sql: &SqlStorage, id: &str) -> Result<(), ApiError> {
    let mut doc = read(sql, id)?.ok_or(ApiError::NoRoute)?;
    doc.views = doc.views.saturating_add(1);
    let json = serde_json::to_string(&doc).map_err(fail)?;
    let params = vec![
        SqlStorageValue::from(json),
        SqlStorageValue::from(id),
        SqlStorageValue::try_from_i64(i64::try_from(doc.version).unwrap_or(0)).map_err(fail)?,
    ];
    let cursor = sql.exec(UPDATE, params).map_err(fail)?;
    for row in cursor.raw() {
        row.map_err(fail)?;
    }
    // rows_written counts index entries too: only zero says the guard failed.
    if cursor.rows_written() == 0 {
        return Err(fail("version conflict"));
    }
    Ok(())
}
