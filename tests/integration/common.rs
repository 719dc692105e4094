//! Helpers that look at a database file directly, through rusqlite, to check what db4 wrote.

use std::path::Path;

/// A plain rusqlite connection on a db4 file, for inspection.
pub fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open the database file with rusqlite")
}

/// The names of the indexes SQLite has on `table` (without its automatic ones).
pub fn index_names(path: &Path, table: &str) -> Vec<String> {
    let conn = raw(path);
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap();
    stmt.query_map([table], |r| r.get::<_, String>(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// The column names of `table`, in order.
pub fn column_names(path: &Path, table: &str) -> Vec<String> {
    let conn = raw(path);
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_xinfo(?1) ORDER BY cid").unwrap();
    stmt.query_map([table], |r| r.get::<_, String>(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// The record db4 keeps for `collection` in its schema table, parsed.
pub fn schema_record(path: &Path, collection: &str) -> Option<serde_json::Value> {
    let conn = raw(path);
    let mut stmt = conn.prepare("SELECT schema FROM _db4_schema WHERE collection = ?1").unwrap();
    let mut rows = stmt.query([collection]).unwrap();
    let row = rows.next().unwrap()?;
    let text: String = row.get(0).unwrap();
    Some(serde_json::from_str(&text).expect("the schema record is JSON"))
}

/// The stored JSON documents of `table`, by id text, sorted by id.
pub fn stored_docs(path: &Path, table: &str) -> Vec<(String, serde_json::Value)> {
    let conn = raw(path);
    let mut stmt = conn.prepare(&format!("SELECT CAST(_id AS TEXT), _doc FROM \"{table}\" ORDER BY _id")).unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|r| {
            let (id, doc) = r.unwrap();
            (id, serde_json::from_str(&doc).expect("stored documents are JSON"))
        })
        .collect()
}

/// Runs `sql` returning one integer.
pub fn scalar(path: &Path, sql: &str) -> i64 {
    raw(path).query_row(sql, [], |r| r.get(0)).unwrap()
}
