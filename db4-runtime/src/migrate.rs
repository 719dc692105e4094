//! The schema table and automatic migrations.
//!
//! Each collection's schema is recorded as JSON in `_db4_schema`. Opening a collection compares
//! the record with the Rust type's schema: index columns that appeared are added and filled
//! from the stored documents, ones that disappeared are dropped, and changes that would
//! reinterpret stored data (the id's type or field) are refused with
//! [`Error::SchemaMismatch`].

use crate::backend::Connection;
use crate::document::Document;
use crate::error::{Error, Result};
use crate::meta::CollectionMeta;
use crate::schema::{IdKind, IndexKind, Tokenizer, column_name, index_name};
use crate::sql::{json_path, quote_ident};
use crate::value::{Value, ValueRef};
use serde::{Deserialize, Serialize};

const SCHEMA_TABLE: &str = "_db4_schema";
const RECORD_FORMAT: u32 = 1;

/// Creates the schema table if this database has none.
pub(crate) fn init(conn: &dyn Connection) -> Result<()> {
    conn.execute_ddl(&format!(
        "CREATE TABLE IF NOT EXISTS {} (\"collection\" TEXT PRIMARY KEY NOT NULL, \"schema\" TEXT NOT NULL)",
        quote_ident(SCHEMA_TABLE)
    ))
}

/// What the schema table remembers about a collection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SchemaRecord {
    format: u32,
    type_name: String,
    id_field: String,
    id_kind: IdKind,
    version_field: Option<String>,
    columns: Vec<ColumnRecord>,
    fts: Vec<FtsRecord>,
    tokenizer: Tokenizer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ColumnRecord {
    field: String,
    index: Option<IndexKind>,
    partition_key: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FtsRecord {
    field: String,
    weight: f64,
}

impl SchemaRecord {
    fn of(meta: &CollectionMeta) -> Self {
        let s = meta.schema;
        Self {
            format: RECORD_FORMAT,
            type_name: s.type_name().to_owned(),
            id_field: s.id_field().map(|f| f.name().to_owned()).unwrap_or_default(),
            id_kind: meta.id_kind,
            version_field: s.version_field().map(|f| f.name().to_owned()),
            columns: s
                .column_fields()
                .map(|f| ColumnRecord {
                    field: f.name().to_owned(),
                    index: f.index_kind(),
                    partition_key: f.is_partition_key(),
                })
                .collect(),
            fts: s.fts_fields().map(|(f, weight)| FtsRecord { field: f.name().to_owned(), weight }).collect(),
            tokenizer: s.fts_tokenizer(),
        }
    }
}

/// Creates or migrates `T`'s collection. Runs inside one atomic backend call.
pub(crate) fn ensure<T: Document>(conn: &dyn Connection, meta: &CollectionMeta) -> Result<()> {
    let wanted = SchemaRecord::of(meta);
    let collection = meta.collection;
    let mismatch = |field: &str, reason: String| Error::SchemaMismatch {
        collection: collection.to_owned(),
        field: field.to_owned(),
        reason,
    };
    let select = format!("SELECT \"schema\" FROM {} WHERE \"collection\" = ?1", quote_ident(SCHEMA_TABLE));
    let mut stored_json = None;
    conn.query(&select, &[Value::Text(collection.to_owned())], &mut |row| {
        if let ValueRef::Text(s) = row.get(0)? {
            stored_json = Some(s.to_owned());
        }
        Ok(())
    })?;

    let Some(stored_json) = stored_json else {
        let mut clash = false;
        conn.query("SELECT 1 FROM sqlite_schema WHERE name = ?1", &[Value::Text(collection.to_owned())], &mut |_| {
            clash = true;
            Ok(())
        })?;
        if clash {
            return Err(mismatch(
                "",
                format!("a table or index named `{collection}` exists but was not created by db4"),
            ));
        }
        for stmt in meta.schema.ddl(meta.id_kind) {
            conn.execute_ddl(&stmt)?;
        }
        return save(conn, collection, &wanted);
    };

    let stored: SchemaRecord = serde_json::from_str(&stored_json)
        .map_err(|e| mismatch("", format!("the stored schema record cannot be read: {e}")))?;
    if stored == wanted {
        return Ok(());
    }
    if stored.format > RECORD_FORMAT {
        return Err(mismatch("", format!("the schema record has format {} from a newer db4", stored.format)));
    }
    if stored.id_field != wanted.id_field {
        return Err(mismatch(
            &wanted.id_field,
            format!(
                "the id field was `{}` and is now `{}`; stored documents would not deserialize",
                stored.id_field, wanted.id_field
            ),
        ));
    }
    if stored.id_kind != wanted.id_kind {
        return Err(mismatch(
            &wanted.id_field,
            format!(
                "the id type changed from {:?} to {:?}; stored ids cannot be reinterpreted",
                stored.id_kind, wanted.id_kind
            ),
        ));
    }

    let table = &meta.table;
    match (&stored.version_field, meta.schema.version_field()) {
        (None, Some(f)) => {
            conn.execute_ddl(&format!("ALTER TABLE {table} ADD COLUMN \"_version\" INTEGER NOT NULL DEFAULT 0"))?;
            conn.execute(
                &format!("UPDATE {table} SET \"_version\" = CAST(coalesce(json_extract(\"_doc\", ?1), 0) AS INTEGER)"),
                &[Value::Text(json_path(f.key()))],
            )?;
        }
        (Some(_), None) => conn.execute_ddl(&format!("ALTER TABLE {table} DROP COLUMN \"_version\""))?,
        _ => {}
    }

    for old in stored.columns.iter().filter(|c| !wanted.columns.iter().any(|w| w.field == c.field)) {
        conn.execute_ddl(&format!("DROP INDEX IF EXISTS {}", quote_ident(&index_name(collection, &old.field))))?;
        conn.execute_ddl(&format!("ALTER TABLE {table} DROP COLUMN {}", quote_ident(&column_name(&old.field))))?;
    }
    let added: Vec<usize> = wanted
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| !stored.columns.iter().any(|s| s.field == c.field))
        .map(|(i, _)| i)
        .collect();
    for &i in &added {
        let field = &wanted.columns[i].field;
        conn.execute_ddl(&format!("ALTER TABLE {table} ADD COLUMN {}", quote_ident(&column_name(field))))?;
        conn.execute_ddl(&meta.schema.index_ddl(field))?;
    }
    if !added.is_empty() {
        backfill::<T>(conn, meta, &added)?;
    }
    save(conn, collection, &wanted)
}

/// Fills newly added index columns from the stored documents, decoding each as `T` so the
/// values are exactly those an insert would have written.
fn backfill<T: Document>(conn: &dyn Connection, meta: &CollectionMeta, added: &[usize]) -> Result<()> {
    let mut rows: Vec<(Value, Vec<Value>)> = Vec::new();
    let select = format!("SELECT \"_id\", \"_doc\" FROM {}", meta.table);
    conn.query(&select, &[], &mut |row| {
        let id = row.get(0)?.to_owned();
        let ValueRef::Text(json) = row.get(1)? else {
            return Err(Error::Backend(crate::BackendError::new(
                crate::BackendErrorKind::Corrupt,
                format!("{}: stored document {id} is not text", meta.collection),
            )));
        };
        let doc: T =
            serde_json::from_str(json).map_err(|e| Error::serialization(meta.collection, Some(id.to_string()), e))?;
        let mut values = Vec::with_capacity(meta.columns.len());
        doc.index_values(&mut values)?;
        rows.push((id, added.iter().map(|&i| values.get(i).cloned().unwrap_or(Value::Null)).collect()));
        Ok(())
    })?;
    let sets: Vec<String> =
        added.iter().enumerate().map(|(n, &i)| format!("{} = ?{}", meta.columns[i], n + 2)).collect();
    let update = format!("UPDATE {} SET {} WHERE \"_id\" = ?1", meta.table, sets.join(", "));
    for (id, values) in rows {
        let mut params = Vec::with_capacity(values.len() + 1);
        params.push(id);
        params.extend(values);
        conn.execute(&update, &params)?;
    }
    Ok(())
}

fn save(conn: &dyn Connection, collection: &str, record: &SchemaRecord) -> Result<()> {
    let json = serde_json::to_string(record).map_err(|e| Error::serialization(collection, None, e))?;
    conn.execute(
        &format!(
            "INSERT INTO {} (\"collection\", \"schema\") VALUES (?1, ?2) ON CONFLICT(\"collection\") DO UPDATE SET \"schema\" = excluded.\"schema\"",
            quote_ident(SCHEMA_TABLE)
        ),
        &[Value::Text(collection.to_owned()), Value::Text(json)],
    )?;
    Ok(())
}
