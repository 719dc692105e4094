//! What a collection derives from its static schema and from what its table holds: quoted
//! names, statement texts, and the slot that keeps that view current when another handle or
//! process changes the collection's schema.

use crate::error::{Error, Result};
use crate::schema::kind::FieldKind;
use crate::schema::{IdKind, Schema};
use crate::schema::{json_path, quote_ident};
pub(crate) use crate::sql::FieldSql;
use crate::sql::Statement;
use std::sync::Arc;

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
    /// The stored document alone (to keep keys the running type does not know).
    pub select_doc: String,
    pub delete_ids: String,
    pub delete: String,
    /// Replaces the stored document alone, keeping the version (a migration's rewrite).
    pub rewrite: String,
    /// What a `DELETE` returns to record a deleted row whole: the insert-parameter layout.
    pub returning_row: String,
    pub count: String,
}

/// What the table holds, as its schema record says: the layout a handle must use, whatever
/// its own type declares.
#[derive(Debug, Clone)]
pub(crate) struct Storage {
    /// Bumped each time the schema record changes.
    pub generation: i64,
    /// Index columns: (field name, JSON key, column name).
    pub columns: Vec<(String, String, String)>,
    /// Whether the table has a `_version` column.
    pub versioned: bool,
    /// Every document key any type that opened the collection declared.
    pub known_keys: Vec<String>,
    /// The full-text objects the table has (`schema::fts::signature`).
    pub fts: String,
    /// The full-text fields the table's FTS5 table indexes: (field name, JSON key).
    pub fts_fields: Vec<(String, String)>,
}

/// How writes treat the `_version` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionMode {
    /// No version column.
    None,
    /// The type has a `#[version]` field: checked and bumped.
    Checked,
    /// The table has a version column the type does not declare (another handle added
    /// `#[version]`): bumped on every write so optimistic locking still holds for the others.
    Bumped,
}

/// A collection's schema together with everything derived from it and from its table.
#[derive(Debug)]
pub(crate) struct CollectionMeta {
    pub schema: &'static Schema,
    pub collection: &'static str,
    pub table: String,
    pub id_kind: IdKind,
    /// The type declares `#[version]` and the table has the column: reads set it, updates
    /// check it.
    pub versioned: bool,
    pub version_mode: VersionMode,
    pub fields: Vec<FieldSql>,
    /// `"_doc"` or `"_doc", "_version"`: what every read selects.
    pub doc_columns: &'static str,
    pub sql: Statements,
    pub max_document_bytes: usize,
    /// Keys stored documents may hold that the type does not declare: writes that replace a
    /// document carry them over from the stored one.
    pub foreign_keys: Vec<String>,
    /// The value kinds of the type's fields, by field index (`None`: unknown).
    pub kinds: Arc<[Option<FieldKind>]>,
    pub generation: i64,
    /// The collection's full-text objects are the ones the type declares: searches may run.
    /// False when another type changed the full-text fields or tokenizer since.
    pub fts_current: bool,
    /// What keeps the FTS5 table in step with the writes (for the full-text fields the
    /// table has, whatever the type declares).
    pub fts_sql: Option<crate::schema::fts::FtsSql>,
}

impl CollectionMeta {
    pub fn new(
        schema: &'static Schema,
        id_kind: IdKind,
        max_document_bytes: usize,
        kinds: Arc<[Option<FieldKind>]>,
        storage: &Storage,
    ) -> Result<Self> {
        schema.validate()?;
        let collection = schema.collection();
        let table = quote_ident(collection);
        let version_mode = match (schema.version_field().is_some(), storage.versioned) {
            (false, false) => VersionMode::None,
            (true, true) => VersionMode::Checked,
            (false, true) => VersionMode::Bumped,
            (true, false) => {
                return Err(Error::SchemaMismatch {
                    collection: collection.to_owned(),
                    field: schema.version_field().map(|f| f.name().to_owned()).unwrap_or_default(),
                    reason: "the collection has no version column any more (a newer schema removed `#[version]`); \
                             open it with that schema"
                        .into(),
                });
            }
        };
        let versioned = version_mode == VersionMode::Checked;
        let fields = schema
            .fields()
            .iter()
            .map(|f| {
                if f.is_id() {
                    FieldSql::Column("\"_id\"".into())
                } else if f.is_version() {
                    FieldSql::Column("\"_version\"".into())
                } else if let Some((_, _, column)) =
                    storage.columns.iter().find(|(name, key, _)| name == f.name() && key == f.key())
                {
                    FieldSql::Column(quote_ident(column))
                } else {
                    // Not indexed, or indexed by the type but not (any more) in the table: the
                    // document itself answers.
                    FieldSql::Json(json_path(f.key()))
                }
            })
            .collect();

        // Parameter layout shared by insert, update and upsert:
        // ?1 id, ?2 document, [?3 version]. Index columns are generated from the document.
        let doc_columns = if versioned { "\"_doc\", \"_version\"" } else { "\"_doc\"" };
        let stored = if storage.versioned { "\"_id\", \"_doc\", \"_version\"" } else { "\"_id\", \"_doc\"" };
        let (insert, update, upsert) = match version_mode {
            VersionMode::None => (
                format!("INSERT INTO {table} ({stored}) VALUES (?1, ?2)"),
                format!("UPDATE {table} SET \"_doc\" = ?2 WHERE \"_id\" = ?1"),
                format!(
                    "INSERT INTO {table} ({stored}) VALUES (?1, ?2) ON CONFLICT(\"_id\") DO UPDATE SET \"_doc\" = excluded.\"_doc\""
                ),
            ),
            VersionMode::Checked => (
                format!("INSERT INTO {table} ({stored}) VALUES (?1, ?2, ?3)"),
                format!(
                    "UPDATE {table} SET \"_doc\" = ?2, \"_version\" = ?3 + 1 WHERE \"_id\" = ?1 AND \"_version\" = ?3"
                ),
                format!(
                    "INSERT INTO {table} ({stored}) VALUES (?1, ?2, ?3) ON CONFLICT(\"_id\") DO UPDATE SET \"_doc\" = excluded.\"_doc\""
                ),
            ),
            // ?3 is NULL for a new write (version 0, or the stored one plus one) and the old
            // version when a savepoint restores a row.
            VersionMode::Bumped => (
                format!("INSERT INTO {table} ({stored}) VALUES (?1, ?2, coalesce(?3, 0))"),
                format!(
                    "UPDATE {table} SET \"_doc\" = ?2, \"_version\" = \"_version\" + 1 WHERE \"_id\" = ?1 AND ?3 IS NULL"
                ),
                format!(
                    "INSERT INTO {table} ({stored}) VALUES (?1, ?2, coalesce(?3, 0)) ON CONFLICT(\"_id\") DO UPDATE SET \"_doc\" = excluded.\"_doc\", \"_version\" = \"_version\" + 1"
                ),
            ),
        };
        let sql = Statements {
            select_one: format!("SELECT {doc_columns} FROM {table} WHERE \"_id\" = ?1"),
            select_many: format!(
                "SELECT \"_id\", {doc_columns} FROM {table} WHERE \"_id\" IN (SELECT value FROM json_each(?1))"
            ),
            select_version: format!("SELECT \"_version\" FROM {table} WHERE \"_id\" = ?1"),
            select_row: format!("SELECT {stored} FROM {table} WHERE \"_id\" = ?1"),
            select_doc: format!("SELECT \"_doc\" FROM {table} WHERE \"_id\" = ?1"),
            delete_ids: format!("DELETE FROM {table} WHERE \"_id\" IN (SELECT value FROM json_each(?1))"),
            delete: format!("DELETE FROM {table} WHERE \"_id\" = ?1"),
            rewrite: format!("UPDATE {table} SET \"_doc\" = ?2 WHERE \"_id\" = ?1"),
            returning_row: format!(" RETURNING {stored}"),
            count: format!("SELECT count(*) FROM {table}"),
            insert,
            update,
            upsert,
        };
        let own_keys: Vec<&str> = schema.fields().iter().map(|f| f.key()).collect();
        let foreign_keys =
            storage.known_keys.iter().filter(|k| !own_keys.contains(&k.as_str())).cloned().collect::<Vec<_>>();
        Ok(Self {
            schema,
            collection,
            table,
            id_kind,
            versioned,
            version_mode,
            fields,
            doc_columns,
            sql,
            max_document_bytes,
            foreign_keys,
            kinds,
            generation: storage.generation,
            fts_current: storage.fts == crate::schema::fts::signature_of(schema),
            fts_sql: crate::schema::fts::FtsSql::new(collection, &storage.fts_fields),
        })
    }

    /// The meta of a freshly created collection of `schema` (for unit tests of what is built
    /// on top of it).
    #[cfg(test)]
    pub fn fresh(schema: &'static Schema, id_kind: IdKind) -> Result<Self> {
        let storage = Storage {
            generation: 1,
            columns: schema
                .column_fields()
                .map(|f| (f.name().to_owned(), f.key().to_owned(), crate::schema::column_name(f.name(), f.key())))
                .collect(),
            versioned: schema.version_field().is_some(),
            known_keys: schema.fields().iter().map(|f| f.key().to_owned()).collect(),
            fts: crate::schema::fts::signature_of(schema),
            fts_fields: schema.fts_fields().map(|(f, _)| (f.name().to_owned(), f.key().to_owned())).collect(),
        };
        let kinds: Arc<[Option<FieldKind>]> = schema.fields().iter().map(|_| None).collect();
        Self::new(schema, id_kind, 1 << 20, kinds, &storage)
    }

    /// How many values a row has in the insert-parameter layout.
    pub fn row_width(&self) -> usize {
        2 + usize::from(self.version_mode != VersionMode::None)
    }

    pub fn field_name(&self, index: usize) -> &'static str {
        self.schema.fields().get(index).map_or("?", |f| f.name())
    }

    /// An empty statement over this collection (see [`Statement`]).
    pub fn statement(&self) -> Statement<'_> {
        Statement::new(self.schema, &self.fields)
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

    fn storage(versioned: bool) -> Storage {
        Storage {
            generation: 1,
            columns: vec![("status".into(), "status".into(), "f_status".into())],
            versioned,
            known_keys: vec!["id".into(), "status".into(), "body".into(), "version".into(), "title".into()],
            fts: String::new(),
            fts_fields: Vec::new(),
        }
    }

    #[test]
    fn statements_for_a_versioned_collection() -> Result<()> {
        let meta = CollectionMeta::new(&SCHEMA, IdKind::Text, 1024, Arc::from(vec![None; 4]), &storage(true))?;
        insta::assert_debug_snapshot!(meta.sql);
        assert_eq!(meta.foreign_keys, ["title"]);
        Ok(())
    }

    #[test]
    fn a_type_with_a_version_the_table_lacks_is_refused() {
        let meta = CollectionMeta::new(&SCHEMA, IdKind::Text, 1024, Arc::from(vec![None; 4]), &storage(false));
        assert!(matches!(meta, Err(Error::SchemaMismatch { field, .. }) if field == "version"));
    }
}
