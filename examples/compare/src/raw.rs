//! The baseline: the same store written by hand on rusqlite, as a careful user would.
//!
//! Same table and indexes as db4 creates for [`Doc`] (or, for reference, plain index columns
//! the application fills), same pragmas (WAL, `synchronous = FULL` unless switched to `NORMAL`
//! for the second round of write measurements, as db4 is), cached prepared statements
//! (including `BEGIN IMMEDIATE` and `COMMIT`), serde_json for the documents.

use crate::data::{Doc, Status};
use rusqlite::{Connection, TransactionBehavior, params};
use std::path::Path;

/// Boxed errors: the benchmark only reports them.
pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// How a raw store keeps the indexed fields `tenant`, `status` and `created_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As db4 does: virtual columns SQLite generates from the JSON with `json_extract`; an
    /// insert binds only the id and the document. `main` checks that the table and index
    /// columns come out identical to db4's.
    Generated,
    /// Plain columns the application fills: each insert also binds the three values.
    Stored,
}

const GENERATED_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "docs" ("_id" TEXT PRIMARY KEY NOT NULL, "_doc" TEXT NOT NULL, "f_tenant" GENERATED ALWAYS AS (json_extract("_doc", '$."tenant"')) VIRTUAL, "f_status" GENERATED ALWAYS AS (json_extract("_doc", '$."status"')) VIRTUAL, "f_created_at" GENERATED ALWAYS AS (json_extract("_doc", '$."created_at"')) VIRTUAL)"#;
const STORED_TABLE: &str = r#"CREATE TABLE IF NOT EXISTS "docs" ("_id" TEXT PRIMARY KEY NOT NULL, "_doc" TEXT NOT NULL, "f_tenant", "f_status", "f_created_at")"#;
const INDEXES: &str = r#"
CREATE INDEX IF NOT EXISTS "docs_tenant" ON "docs" ("f_tenant", "_id");
CREATE INDEX IF NOT EXISTS "docs_status" ON "docs" ("f_status", "_id");
CREATE INDEX IF NOT EXISTS "docs_created_at" ON "docs" ("f_created_at", "_id");
CREATE INDEX IF NOT EXISTS "docs_tenant_status_created" ON "docs" ("f_tenant", "f_status", "f_created_at" DESC, "_id" DESC);
"#;

const GENERATED_INSERT: &str = r#"INSERT INTO "docs" ("_id", "_doc") VALUES (?1, ?2)"#;
const STORED_INSERT: &str =
    r#"INSERT INTO "docs" ("_id", "_doc", "f_tenant", "f_status", "f_created_at") VALUES (?1, ?2, ?3, ?4, ?5)"#;
/// Exactly db4's update for a collection without a `#[version]` field.
const GENERATED_UPDATE: &str = r#"UPDATE "docs" SET "_doc" = ?2 WHERE "_id" = ?1"#;
const STORED_UPDATE: &str =
    r#"UPDATE "docs" SET "_doc" = ?2, "f_tenant" = ?3, "f_status" = ?4, "f_created_at" = ?5 WHERE "_id" = ?1"#;
const GET: &str = r#"SELECT "_doc" FROM "docs" WHERE "_id" = ?1"#;
/// The newest documents of one tenant in one status, as a person would write it.
pub const TENANT_QUERY: &str =
    r#"SELECT "_doc" FROM "docs" WHERE "f_status" = ?1 AND "f_tenant" = ?2 ORDER BY "f_created_at" DESC LIMIT ?3"#;
/// The newest documents in a `created_at` window.
pub const RANGE_QUERY: &str =
    r#"SELECT "_doc" FROM "docs" WHERE "f_created_at" BETWEEN ?1 AND ?2 ORDER BY "f_created_at" DESC LIMIT ?3"#;

/// Where a keyset page ended: the last row's `(created_at, id)`.
pub type KeysetPosition = (i64, String);

/// The first page of documents by `(created_at, id)`, as a person would write keyset paging.
pub const FIRST_PAGE: &str =
    r#"SELECT "_id", "_doc", "f_created_at" FROM "docs" ORDER BY "f_created_at", "_id" LIMIT ?1"#;
/// The page after the row `(created_at, id)`.
pub const NEXT_PAGE: &str = r#"SELECT "_id", "_doc", "f_created_at" FROM "docs" WHERE ("f_created_at", "_id") > (?1, ?2) ORDER BY "f_created_at", "_id" LIMIT ?3"#;

/// A hand-written document store on one rusqlite connection.
#[derive(Debug)]
pub struct RawStore {
    conn: Connection,
    layout: Layout,
}

impl RawStore {
    /// Opens (creating) the database file in WAL mode with `synchronous = FULL` and creates
    /// the table and its indexes.
    pub fn open(path: &Path, layout: Layout) -> BoxResult<Self> {
        let conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("raw: journal_mode is {mode}, not WAL").into());
        }
        conn.execute_batch("PRAGMA synchronous = FULL")?;
        // db4 bounds its WAL (SqliteOptions::journal_size_limit, 8 MiB by default): the same here,
        // so a large transaction regrows the WAL file on both sides alike.
        conn.execute_batch("PRAGMA journal_size_limit = 8388608")?;
        conn.execute_batch(match layout {
            Layout::Generated => GENERATED_TABLE,
            Layout::Stored => STORED_TABLE,
        })?;
        conn.execute_batch(INDEXES)?;
        Ok(Self { conn, layout })
    }

    /// Inserts every document in one transaction: serialize, bind, execute.
    pub fn insert_all(&mut self, docs: &[Doc]) -> BoxResult<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match self.layout {
            Layout::Generated => {
                let mut stmt = tx.prepare_cached(GENERATED_INSERT)?;
                for doc in docs {
                    stmt.execute(params![doc.id, serde_json::to_string(doc)?])?;
                }
            }
            Layout::Stored => {
                let mut stmt = tx.prepare_cached(STORED_INSERT)?;
                for doc in docs {
                    let json = serde_json::to_string(doc)?;
                    stmt.execute(params![doc.id, json, doc.tenant, doc.status.as_str(), doc.created_at])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Sets `PRAGMA synchronous` to `NORMAL` (or back to `FULL`) and checks that it took.
    pub fn set_synchronous(&self, normal: bool) -> BoxResult<()> {
        let (sql, want) = if normal { ("PRAGMA synchronous = NORMAL", 1) } else { ("PRAGMA synchronous = FULL", 2) };
        self.conn.execute_batch(sql)?;
        let got: i64 = self.conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
        if got != want {
            return Err(format!("raw: synchronous is {got}, expected {want}").into());
        }
        Ok(())
    }

    /// Runs `f` between `BEGIN IMMEDIATE` and `COMMIT`, both cached prepared statements (as db4
    /// runs them); rolls back if `f` or the commit fails.
    pub fn immediate<R>(&self, f: impl FnOnce(&Self) -> BoxResult<R>) -> BoxResult<R> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let out = f(self).and_then(|out| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(out)
        });
        if out.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        out
    }

    /// `BEGIN IMMEDIATE; COMMIT` with nothing in between.
    pub fn empty_transaction(&self) -> BoxResult<()> {
        self.immediate(|_| Ok(()))
    }

    /// Replaces one stored document (serialize, bind, execute); an error unless exactly one
    /// row changed. To be called inside [`immediate`](Self::immediate).
    fn update_one(&self, doc: &Doc) -> BoxResult<()> {
        let json = serde_json::to_string(doc)?;
        let changed = match self.layout {
            Layout::Generated => self.conn.prepare_cached(GENERATED_UPDATE)?.execute(params![doc.id, json])?,
            Layout::Stored => self.conn.prepare_cached(STORED_UPDATE)?.execute(params![
                doc.id,
                json,
                doc.tenant,
                doc.status.as_str(),
                doc.created_at
            ])?,
        };
        if changed != 1 {
            return Err(format!("raw update of {}: {changed} rows changed", doc.id).into());
        }
        Ok(())
    }

    /// Replaces every document of `docs` in one `BEGIN IMMEDIATE` … `COMMIT` transaction.
    pub fn update_all(&self, docs: &[Doc]) -> BoxResult<()> {
        self.immediate(|store| docs.iter().try_for_each(|doc| store.update_one(doc)))
    }

    /// Adds 1 to `views` of document `id` atomically and returns the new value: in one
    /// `BEGIN IMMEDIATE` … `COMMIT`, select `_doc`, deserialize it into a [`Doc`], add (checked),
    /// serialize the struct and update the row.
    pub fn increment_views(&self, id: &str) -> BoxResult<u64> {
        self.immediate(|store| {
            let mut doc = store.get(id)?.ok_or_else(|| format!("raw increment: no document {id}"))?;
            doc.views = doc.views.checked_add(1).ok_or("raw increment: views overflows")?;
            store.update_one(&doc)?;
            Ok(doc.views)
        })
    }

    /// Reads one document by id.
    pub fn get(&self, id: &str) -> BoxResult<Option<Doc>> {
        let mut stmt = self.conn.prepare_cached(GET)?;
        let mut rows = stmt.query([id])?;
        match rows.next()? {
            None => Ok(None),
            Some(row) => Ok(Some(serde_json::from_str(row.get_ref(0)?.as_str()?)?)),
        }
    }

    /// The newest `limit` documents of `tenant` with `status`, newest first.
    pub fn tenant_query(&self, status: Status, tenant: &str, limit: i64) -> BoxResult<Vec<Doc>> {
        self.documents(&with_limit(TENANT_QUERY, "?3", limit), params![status.as_str(), tenant])
    }

    /// The newest `limit` documents with `low <= created_at <= high`, newest first.
    pub fn range_query(&self, low: i64, high: i64, limit: i64) -> BoxResult<Vec<Doc>> {
        self.documents(&with_limit(RANGE_QUERY, "?3", limit), params![low, high])
    }

    /// One page of keyset paging by `(created_at, id)`: the `limit` documents after the row
    /// `after` (from the start without it), and the position of the last one.
    pub fn keyset_page(
        &self,
        after: Option<&KeysetPosition>,
        limit: i64,
    ) -> BoxResult<(Vec<Doc>, Option<KeysetPosition>)> {
        let sql = match after {
            Some(_) => with_limit(NEXT_PAGE, "?3", limit),
            None => with_limit(FIRST_PAGE, "?1", limit),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = match after {
            Some((at, id)) => stmt.query(params![at, id])?,
            None => stmt.query([])?,
        };
        let (mut docs, mut last) = (Vec::new(), None);
        while let Some(row) = rows.next()? {
            docs.push(serde_json::from_str(row.get_ref(1)?.as_str()?)?);
            last = Some((row.get(2)?, row.get(0)?));
        }
        Ok((docs, last))
    }

    /// Runs a query whose only column is `_doc` and deserializes each row.
    ///
    /// (The limit is written into the statement, as db4 does: with a bound `LIMIT` the bundled
    /// SQLite prepares a cached statement again on every run. The two sides stay alike.)
    fn documents(&self, sql: &str, params: impl rusqlite::Params) -> BoxResult<Vec<Doc>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(serde_json::from_str(row.get_ref(0)?.as_str()?)?);
        }
        Ok(out)
    }

    /// How many documents are stored.
    pub fn count(&self) -> BoxResult<u64> {
        let n: i64 = self.conn.query_row(r#"SELECT count(*) FROM "docs""#, [], |r| r.get(0))?;
        Ok(u64::try_from(n)?)
    }

    /// The connection, for the checks in `main`.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// `sql` with its `LIMIT` parameter `slot` replaced by the number (see [`RawStore::documents`]).
fn with_limit(sql: &str, slot: &str, limit: i64) -> String {
    sql.replacen(&format!("LIMIT {slot}"), &format!("LIMIT {limit}"), 1)
}
