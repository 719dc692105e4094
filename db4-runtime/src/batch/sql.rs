//! The SQL of a batch store: its two tables (blobs, and the directory of documents), their
//! indexes, every statement the store runs, and the conversions of its parameters.

use crate::schema::quote_ident;
use crate::value::Value;
use std::sync::Arc;

/// The SQL of one store, built once from its validated name. The statements an undo entry
/// may hold are shared (`Arc<str>`), so recording one copies no SQL text.
pub(super) struct StoreSql {
    pub(super) create: [String; 4],
    pub(super) get_one: String,
    pub(super) get_many: String,
    pub(super) contains: String,
    pub(super) locate: String,
    pub(super) best_fit: String,
    pub(super) fitting: String,
    pub(super) next_blob_id: String,
    pub(super) insert_blob: String,
    pub(super) append: String,
    pub(super) release: Arc<str>,
    pub(super) drop_empty: String,
    /// `drop_empty`, handing back the dropped row for the undo log.
    pub(super) drop_empty_returning: String,
    pub(super) upsert_doc: Arc<str>,
    pub(super) delete_docs: String,
    /// Undo: deletes one directory row.
    pub(super) delete_doc: Arc<str>,
    /// Undo: takes an append off a blob (its bytes, and what it added to the counters).
    pub(super) truncate: Arc<str>,
    /// Undo: puts back a whole blob row.
    pub(super) restore_blob: Arc<str>,
    pub(super) ids: String,
    pub(super) count: String,
    pub(super) blob_count: String,
    pub(super) stats: String,
    pub(super) candidates: String,
    pub(super) payloads: String,
    pub(super) docs_in_blobs: String,
    pub(super) delete_blob: Arc<str>,
    pub(super) move_doc: Arc<str>,
    pub(super) all_docs: String,
    pub(super) all_blobs: String,
}

impl StoreSql {
    pub(super) fn new(name: &str) -> Self {
        // Distinct suffixes keep every store's names apart, and the `_db4` prefix keeps them
        // apart from collections.
        let b = quote_ident(&format!("_db4_batch_{name}_blobs"));
        let d = quote_ident(&format!("_db4_batch_{name}_docs"));
        let b_used = quote_ident(&format!("_db4_batch_{name}_blobs_used"));
        let d_blob = quote_ident(&format!("_db4_batch_{name}_docs_blob"));
        let entry = r#"d."blob", d."pos", d."len", substr(b."payload", d."pos" + 1, d."len")"#;
        Self {
            create: [
                format!(
                    r#"CREATE TABLE IF NOT EXISTS {b} ("id" INTEGER PRIMARY KEY, "payload" BLOB NOT NULL, "used" INTEGER NOT NULL, "live_bytes" INTEGER NOT NULL, "live_count" INTEGER NOT NULL)"#
                ),
                format!(r#"CREATE INDEX IF NOT EXISTS {b_used} ON {b} ("used")"#),
                format!(
                    r#"CREATE TABLE IF NOT EXISTS {d} ("id" TEXT PRIMARY KEY NOT NULL, "blob" INTEGER NOT NULL, "pos" INTEGER NOT NULL, "len" INTEGER NOT NULL) WITHOUT ROWID"#
                ),
                format!(r#"CREATE INDEX IF NOT EXISTS {d_blob} ON {d} ("blob")"#),
            ],
            get_one: format!(
                r#"SELECT {entry} FROM {d} AS d LEFT JOIN {b} AS b ON b."id" = d."blob" WHERE d."id" = ?1"#
            ),
            get_many: format!(
                r#"SELECT d."id", {entry} FROM {d} AS d LEFT JOIN {b} AS b ON b."id" = d."blob" WHERE d."id" IN (SELECT "value" FROM json_each(?1))"#
            ),
            contains: format!(r#"SELECT 1 FROM {d} WHERE "id" = ?1"#),
            locate: format!(r#"SELECT "id", "blob", "pos", "len" FROM {d} WHERE "id" IN (SELECT "value" FROM json_each(?1))"#),
            best_fit: format!(r#"SELECT "id", "used" FROM {b} WHERE "used" <= ?1 ORDER BY "used" DESC, "id" LIMIT 1"#),
            fitting: format!(r#"SELECT "id", "used" FROM {b} WHERE "used" <= ?1 ORDER BY "id""#),
            next_blob_id: format!(r#"SELECT coalesce(max("id"), 0) + 1 FROM {b}"#),
            insert_blob: format!(
                r#"INSERT INTO {b} ("id", "used", "live_bytes", "payload", "live_count") VALUES (?1, ?2, ?2, ?3, ?4)"#
            ),
            // `||` yields TEXT; the CAST keeps the bytes and makes them a BLOB again.
            append: format!(
                r#"UPDATE {b} SET "payload" = CAST("payload" || ?2 AS BLOB), "used" = "used" + ?3, "live_bytes" = "live_bytes" + ?4, "live_count" = "live_count" + ?5 WHERE "id" = ?1 AND "used" = ?6 AND typeof("payload") = 'blob' AND length("payload") = ?6 AND "live_bytes" + ?4 >= 0 AND "live_count" + ?5 >= 0"#
            ),
            release: format!(
                r#"UPDATE {b} SET "live_bytes" = "live_bytes" + ?2, "live_count" = "live_count" + ?3 WHERE "id" = ?1 AND "live_bytes" + ?2 >= 0 AND "live_count" + ?3 >= 0"#
            )
            .into(),
            drop_empty: format!(r#"DELETE FROM {b} WHERE "id" = ?1 AND "live_count" = 0"#),
            drop_empty_returning: format!(
                r#"DELETE FROM {b} WHERE "id" = ?1 AND "live_count" = 0 RETURNING "payload", "used", "live_bytes", "live_count""#
            ),
            upsert_doc: format!(
                r#"INSERT INTO {d} ("id", "blob", "pos", "len") VALUES (?1, ?2, ?3, ?4) ON CONFLICT ("id") DO UPDATE SET "blob" = excluded."blob", "pos" = excluded."pos", "len" = excluded."len""#
            )
            .into(),
            delete_docs: format!(r#"DELETE FROM {d} WHERE "id" IN (SELECT "value" FROM json_each(?1))"#),
            delete_doc: format!(r#"DELETE FROM {d} WHERE "id" = ?1"#).into(),
            // A BLOB's substr counts bytes and is a BLOB: the payload as it was before the append.
            truncate: format!(
                r#"UPDATE {b} SET "payload" = substr("payload", 1, ?2), "used" = ?2, "live_bytes" = "live_bytes" + ?3, "live_count" = "live_count" + ?4 WHERE "id" = ?1"#
            )
            .into(),
            restore_blob: format!(
                r#"INSERT INTO {b} ("id", "payload", "used", "live_bytes", "live_count") VALUES (?1, ?2, ?3, ?4, ?5)"#
            )
            .into(),
            ids: format!(r#"SELECT "id" FROM {d} ORDER BY "id""#),
            count: format!(r#"SELECT count(*) FROM {d}"#),
            blob_count: format!(r#"SELECT count(*) FROM {b}"#),
            // One statement, so one snapshot even on a WAL reader.
            stats: format!(
                r#"SELECT (SELECT count(*) FROM {d}), (SELECT coalesce(sum("len"), 0) FROM {d}), count(*), coalesce(sum("used"), 0), coalesce(sum("live_bytes"), 0), coalesce(sum("live_count"), 0), coalesce(sum(max(?1 - "used", 0)), 0) FROM {b}"#
            ),
            candidates: format!(
                r#"SELECT "id", "used", "live_bytes", "live_count" FROM {b} WHERE "live_bytes" < ?1 ORDER BY "id""#
            ),
            payloads: format!(r#"SELECT "id", "payload" FROM {b} WHERE "id" IN (SELECT "value" FROM json_each(?1))"#),
            docs_in_blobs: format!(
                r#"SELECT "id", "blob", "pos", "len" FROM {d} WHERE "blob" IN (SELECT "value" FROM json_each(?1))"#
            ),
            delete_blob: format!(r#"DELETE FROM {b} WHERE "id" = ?1"#).into(),
            move_doc: format!(r#"UPDATE {d} SET "blob" = ?2, "pos" = ?3 WHERE "id" = ?1"#).into(),
            all_docs: format!(r#"SELECT "id", "blob", "pos", "len" FROM {d}"#),
            all_blobs: format!(r#"SELECT "id", "payload", "used", "live_bytes", "live_count" FROM {b} ORDER BY "id""#),
        }
    }
}

pub(super) fn int(v: u64) -> Value {
    Value::Integer(signed(v))
}

/// Sizes and counts here are bounded by the blob limit times the row count, far below i64::MAX.
pub(super) fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Document ids bound as one JSON array parameter (see [`crate::sql::json_list`]).
pub(super) fn id_list<S: AsRef<str>>(ids: impl Iterator<Item = S>) -> Value {
    let ids: Vec<S> = ids.collect();
    crate::sql::json_list(ids.iter().map(|s| crate::value::ValueRef::Text(s.as_ref())))
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::{id_list, int, signed};
    use crate::batch::{BatchOptions, BatchStore};
    use crate::db::Db;
    use crate::error::Result;
    use crate::value::Value;

    #[test]
    fn stores_are_independent_and_names_case_insensitive() -> Result<()> {
        let db = Db::open_in_memory()?;
        let a = BatchStore::open(&db, "a", BatchOptions::default())?;
        let a_blobs = BatchStore::open(&db, "a_blobs", BatchOptions::default())?;
        a.put("x", &1)?;
        a_blobs.put("x", &2)?;
        assert_eq!((a.get::<i32>("x")?, a_blobs.get::<i32>("x")?), (Some(1), Some(2)));
        assert!(a.delete("x")?);
        assert_eq!(a_blobs.get::<i32>("x")?, Some(2));
        let upper = BatchStore::open(&db, "A_BLOBS", BatchOptions::default())?;
        assert_eq!(upper.get::<i32>("x")?, Some(2));
        Ok(())
    }

    #[test]
    fn parameters_keep_their_values() {
        assert_eq!(id_list(["a", "b\"c", "é"].iter()), Value::Text(r#"["a","b\"c","é"]"#.to_owned()));
        assert_eq!(id_list(std::iter::empty::<&str>()), Value::Text("[]".to_owned()));
        assert_eq!(int(42), Value::Integer(42));
        assert_eq!(signed(u64::MAX), i64::MAX);
    }
}
