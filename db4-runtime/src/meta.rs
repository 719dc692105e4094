//! What a collection derives once from its static schema: quoted names and statement texts.

use crate::error::{Error, Result};
use crate::schema::{IdKind, Schema, column_name};
use crate::sql::{json_path, quote_ident};

/// How a field is reached from SQL.
#[derive(Debug, Clone)]
pub(crate) enum FieldSql {
    /// A column (quoted): `"_id"`, `"_version"` or an index column.
    Column(String),
    /// A key inside the JSON document: this path is bound as a parameter of `json_extract`.
    Json(String),
}

/// The statement texts a collection runs; built once, reused through the statement cache.
#[derive(Debug)]
pub(crate) struct Statements {
    pub insert: String,
    pub select_one: String,
    pub select_many: String,
    pub update: String,
    pub upsert: String,
    pub select_version: String,
    /// The whole row in the insert-parameter layout (for savepoint before-images).
    pub select_row: String,
    pub delete_ids: String,
    pub delete: String,
    pub count: String,
}

/// A collection's schema together with everything derived from it.
#[derive(Debug)]
pub(crate) struct CollectionMeta {
    pub schema: &'static Schema,
    pub collection: &'static str,
    pub table: String,
    pub id_kind: IdKind,
    pub versioned: bool,
    pub fields: Vec<FieldSql>,
    /// `"_doc"` or `"_doc", "_version"`: what every read selects.
    pub doc_columns: &'static str,
    pub sql: Statements,
    pub max_document_bytes: usize,
}

impl CollectionMeta {
    pub fn new(schema: &'static Schema, id_kind: IdKind, max_document_bytes: usize) -> Result<Self> {
        schema.validate()?;
        let table = quote_ident(schema.collection());
        let versioned = schema.version_field().is_some();
        let fields = schema
            .fields()
            .iter()
            .map(|f| {
                if f.is_id() {
                    FieldSql::Column("\"_id\"".into())
                } else if f.is_version() {
                    FieldSql::Column("\"_version\"".into())
                } else if f.has_column() {
                    FieldSql::Column(quote_ident(&column_name(f.name())))
                } else {
                    FieldSql::Json(json_path(f.key()))
                }
            })
            .collect();

        // Parameter layout shared by insert, update and upsert:
        // ?1 id, ?2 document, [?3 version]. Index columns are generated from the document.
        let mut names = vec!["\"_id\"".to_owned(), "\"_doc\"".to_owned()];
        if versioned {
            names.push("\"_version\"".to_owned());
        }
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let insert = format!("INSERT INTO {table} ({}) VALUES ({})", names.join(", "), placeholders.join(", "));

        let mut sets = vec!["\"_doc\" = ?2".to_owned()];
        if versioned {
            sets.push("\"_version\" = ?3 + 1".to_owned());
        }
        let update = if versioned {
            format!("UPDATE {table} SET {} WHERE \"_id\" = ?1 AND \"_version\" = ?3", sets.join(", "))
        } else {
            format!("UPDATE {table} SET {} WHERE \"_id\" = ?1", sets.join(", "))
        };
        let excluded: Vec<String> =
            names.iter().skip(1).filter(|n| *n != "\"_version\"").map(|n| format!("{n} = excluded.{n}")).collect();
        let upsert = format!("{insert} ON CONFLICT(\"_id\") DO UPDATE SET {}", excluded.join(", "));

        let doc_columns = if versioned { "\"_doc\", \"_version\"" } else { "\"_doc\"" };
        let sql = Statements {
            select_one: format!("SELECT {doc_columns} FROM {table} WHERE \"_id\" = ?1"),
            select_many: format!(
                "SELECT \"_id\", {doc_columns} FROM {table} WHERE \"_id\" IN (SELECT value FROM json_each(?1))"
            ),
            select_version: format!("SELECT \"_version\" FROM {table} WHERE \"_id\" = ?1"),
            select_row: format!("SELECT {} FROM {table} WHERE \"_id\" = ?1", names.join(", ")),
            delete_ids: format!("DELETE FROM {table} WHERE \"_id\" IN (SELECT value FROM json_each(?1))"),
            delete: format!("DELETE FROM {table} WHERE \"_id\" = ?1"),
            count: format!("SELECT count(*) FROM {table}"),
            insert,
            update,
            upsert,
        };
        Ok(Self {
            schema,
            collection: schema.collection(),
            table,
            id_kind,
            versioned,
            fields,
            doc_columns,
            sql,
            max_document_bytes,
        })
    }

    /// How many values a row has in the insert-parameter layout.
    pub fn row_width(&self) -> usize {
        2 + usize::from(self.versioned)
    }

    pub fn field_name(&self, index: usize) -> &'static str {
        self.schema.fields().get(index).map_or("?", |f| f.name())
    }

    pub fn field_sql(&self, index: usize) -> Result<&FieldSql> {
        self.fields.get(index).ok_or_else(|| {
            Error::invalid_query(self.collection, format!("field #{index} does not belong to this collection"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldDef, IndexKind};

    static FIELDS: [FieldDef; 4] = [
        FieldDef::new("id", "id", "String").id(),
        FieldDef::new("status", "status", "Status").index(IndexKind::Equality),
        FieldDef::new("body", "body", "String"),
        FieldDef::new("version", "version", "u64").version(),
    ];
    static SCHEMA: Schema = Schema::new("notes", "Note", &FIELDS);

    #[test]
    fn statements_for_a_versioned_collection() -> Result<()> {
        let meta = CollectionMeta::new(&SCHEMA, IdKind::Text, 1024)?;
        insta::assert_debug_snapshot!(meta.sql);
        Ok(())
    }
}
