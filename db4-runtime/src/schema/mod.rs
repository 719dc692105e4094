//! Static document schemas and the SQLite DDL generated from them.
//!
//! A [`Schema`] is built at compile time by `#[derive(Document)]` (or by hand with the `const`
//! builders here) and lives in a `static`. The runtime derives everything else from it: column
//! names, DDL, the statements a collection runs and the record kept in the schema table.

mod document;
pub(crate) mod fts;
pub(crate) mod index;
pub(crate) mod kind;

pub use document::{
    Document, DocumentId, FtsText, IdArg, OptionField, Ordered, Partitioned, QueryValue, TextField, VersionValue,
};
pub use index::{IndexDef, IndexField};

use crate::error::{Error, Result};

/// How a document id is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    /// A non-empty UTF-8 string (`String` ids).
    Text,
    /// A 64-bit integer (`i64` ids, and `u64` ids up to `i64::MAX`).
    Integer,
}

/// The kind of secondary index declared on a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// `#[index]`: equality lookups and sorting.
    Equality,
    /// `#[range_index]`: ordered range scans and cursor pagination.
    Range,
}

/// The FTS5 tokenizer used for a collection's full-text fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    /// Unicode-aware word splitting with English Porter stemming (the default).
    #[default]
    Porter,
    /// Unicode-aware word splitting, no stemming.
    Unicode61,
    /// Character trigrams: substring matching.
    Trigram,
}

impl Tokenizer {
    /// The tokenizer's name as FTS5 spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tokenizer::Porter => "porter",
            Tokenizer::Unicode61 => "unicode61",
            Tokenizer::Trigram => "trigram",
        }
    }
}

/// One field of a document type, with the roles its attributes gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldDef {
    name: &'static str,
    key: &'static str,
    ty: &'static str,
    id: bool,
    partition_key: bool,
    version: bool,
    index: Option<IndexKind>,
    fts_weight: Option<f64>,
}

impl FieldDef {
    /// A plain stored field: `name` is the Rust field name, `key` its key in the serialized
    /// document (they differ under `#[serde(rename)]`), `ty` its Rust type as written.
    pub const fn new(name: &'static str, key: &'static str, ty: &'static str) -> Self {
        Self { name, key, ty, id: false, partition_key: false, version: false, index: None, fts_weight: None }
    }

    /// Marks the field as the document id.
    pub const fn id(mut self) -> Self {
        self.id = true;
        self
    }

    /// Marks the field as the partition key.
    pub const fn partition_key(mut self) -> Self {
        self.partition_key = true;
        self
    }

    /// Marks the field as the optimistic-locking version counter.
    pub const fn version(mut self) -> Self {
        self.version = true;
        self
    }

    /// Declares a secondary index on the field.
    pub const fn index(mut self, kind: IndexKind) -> Self {
        self.index = Some(kind);
        self
    }

    /// Declares the field full-text indexed with a BM25 column weight.
    pub const fn fts(mut self, weight: f64) -> Self {
        self.fts_weight = Some(weight);
        self
    }

    /// The Rust field name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The field's key in the serialized JSON document.
    pub const fn key(&self) -> &'static str {
        self.key
    }

    /// The field's Rust type, as written in the struct.
    pub const fn rust_type(&self) -> &'static str {
        self.ty
    }

    /// Whether this is the id field.
    pub const fn is_id(&self) -> bool {
        self.id
    }

    /// Whether this is the partition key.
    pub const fn is_partition_key(&self) -> bool {
        self.partition_key
    }

    /// Whether this is the version field.
    pub const fn is_version(&self) -> bool {
        self.version
    }

    /// The declared secondary index, if any.
    pub const fn index_kind(&self) -> Option<IndexKind> {
        self.index
    }

    /// The full-text weight, if the field is full-text indexed.
    pub const fn fts_weight(&self) -> Option<f64> {
        self.fts_weight
    }

    /// Whether the field's value is kept in its own column (partition key and indexed fields).
    pub const fn has_column(&self) -> bool {
        self.partition_key || self.index.is_some()
    }
}

/// The static description of a document type: its collection, fields, id, partition key,
/// version field, indexes and full-text fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schema {
    collection: &'static str,
    type_name: &'static str,
    fields: &'static [FieldDef],
    tokenizer: Tokenizer,
    full_changes: bool,
    indexes: &'static [IndexDef],
}

impl Schema {
    /// A schema for `collection`, stored by the Rust type `type_name`, with the given fields.
    /// Exactly one field must be marked [`FieldDef::id`]; [`Db::collection`](crate::Db::collection)
    /// validates the rest and reports problems as [`Error::SchemaMismatch`].
    pub const fn new(collection: &'static str, type_name: &'static str, fields: &'static [FieldDef]) -> Self {
        Self { collection, type_name, fields, tokenizer: Tokenizer::Porter, full_changes: false, indexes: &[] }
    }

    /// Declares composite indexes (`#[db4(index(name = "...", fields(...)))]`); see
    /// [`IndexDef`].
    pub const fn indexes(mut self, indexes: &'static [IndexDef]) -> Self {
        self.indexes = indexes;
        self
    }

    /// The declared composite indexes.
    pub const fn composite_indexes(&self) -> &'static [IndexDef] {
        self.indexes
    }

    /// Records before-images of this collection's changes in the change log (and for commit
    /// observers), whatever [`DbOptions::before_images`](crate::DbOptions::before_images)
    /// says: `#[db4(changes = "full")]`. It costs one read of the row before each update or
    /// delete of the collection.
    pub const fn full_changes(mut self, on: bool) -> Self {
        self.full_changes = on;
        self
    }

    /// Whether this collection's changes carry before-images
    /// ([`full_changes`](Self::full_changes)).
    pub const fn records_full_changes(&self) -> bool {
        self.full_changes
    }

    /// Sets the FTS5 tokenizer.
    pub const fn tokenizer(mut self, tokenizer: Tokenizer) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// The collection (and table) name.
    pub const fn collection(&self) -> &'static str {
        self.collection
    }

    /// The Rust type that declared this schema.
    pub const fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// All fields, in declaration order.
    pub const fn fields(&self) -> &'static [FieldDef] {
        self.fields
    }

    /// The FTS5 tokenizer for the full-text fields.
    pub const fn fts_tokenizer(&self) -> Tokenizer {
        self.tokenizer
    }

    /// The id field.
    pub fn id_field(&self) -> Option<&'static FieldDef> {
        self.fields.iter().find(|f| f.id)
    }

    /// The partition-key field, if declared.
    pub fn partition_key_field(&self) -> Option<&'static FieldDef> {
        self.fields.iter().find(|f| f.partition_key)
    }

    /// The version field, if declared.
    pub fn version_field(&self) -> Option<&'static FieldDef> {
        self.fields.iter().find(|f| f.version)
    }

    /// The fields kept in their own columns, in declaration order: the partition key, the
    /// indexed fields and the keys of composite indexes.
    pub fn column_fields(&self) -> impl Iterator<Item = &'static FieldDef> + '_ {
        self.fields.iter().filter(|f| f.has_column() || self.in_composite_index(f.name))
    }

    /// The full-text fields with their weights.
    pub fn fts_fields(&self) -> impl Iterator<Item = (&'static FieldDef, f64)> {
        self.fields.iter().filter_map(|f| f.fts_weight.map(|w| (f, w)))
    }

    /// Checks the rules the derive enforces at compile time, for schemas built by hand.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let mismatch = |field: &str, reason: String| Error::SchemaMismatch {
            collection: self.collection.to_owned(),
            field: field.to_owned(),
            reason,
        };
        if !is_valid_name(self.collection) {
            return Err(mismatch(
                "",
                format!(
                    "collection name `{}` must be 1-64 ASCII letters, digits or `_`, start with a letter or `_`, and not start with `_db4` or `sqlite_`",
                    self.collection
                ),
            ));
        }
        if let Some((index, reason)) = self.index_problem() {
            return Err(mismatch(&index, reason));
        }
        let mut seen = std::collections::HashSet::new();
        for f in self.fields {
            if f.has_column() && !is_valid_field_name(f.name) {
                return Err(mismatch(
                    f.name,
                    "indexed field names must be ASCII identifiers of at most 64 characters".into(),
                ));
            }
            if !seen.insert(f.name) {
                return Err(mismatch(f.name, "field declared twice".into()));
            }
            if f.key.is_empty() || f.key.contains(['"', '\\']) || f.key.chars().any(char::is_control) {
                return Err(mismatch(f.name, format!("serialized key {:?} cannot be addressed in a JSON path", f.key)));
            }
            if let Some(w) = f.fts_weight {
                if !(w.is_finite() && w > 0.0) {
                    return Err(mismatch(f.name, format!("full-text weight {w} must be a positive finite number")));
                }
                if !is_valid_field_name(f.name) {
                    return Err(mismatch(
                        f.name,
                        "full-text field names must be ASCII identifiers of at most 64 characters".into(),
                    ));
                }
                let taken = fts::RESERVED_COLUMNS.contains(&f.name.to_ascii_lowercase().as_str())
                    || self.column_fields().any(|c| column_name(c.name, c.key).eq_ignore_ascii_case(f.name));
                if taken {
                    return Err(mismatch(
                        f.name,
                        format!("`{}` cannot name a full-text field: it is a column name SQLite or db4 uses", f.name),
                    ));
                }
            }
        }
        let count = |pred: fn(&FieldDef) -> bool| self.fields.iter().filter(|f| pred(f)).count();
        match count(|f| f.id) {
            1 => {}
            0 => return Err(mismatch("", "no field is marked as the id".into())),
            _ => return Err(mismatch("", "more than one field is marked as the id".into())),
        }
        if count(|f| f.partition_key) > 1 {
            return Err(mismatch("", "more than one partition key".into()));
        }
        if count(|f| f.version) > 1 {
            return Err(mismatch("", "more than one version field".into()));
        }
        // `_id`, `_doc` and `_version` take three of a table's columns.
        let max_indexed = crate::limits::MAX_COLUMNS - 3;
        if self.column_fields().count() > max_indexed {
            return Err(mismatch(
                "",
                format!(
                    "{} indexed fields (including the partition key); a table has at most {} columns, so at most {max_indexed} can be indexed",
                    self.column_fields().count(),
                    crate::limits::MAX_COLUMNS
                ),
            ));
        }
        // bm25() takes the table plus one weight per column, within 32 function arguments.
        let max_fts = crate::limits::MAX_FUNCTION_ARGS - 1;
        if count(|f| f.fts_weight.is_some()) > max_fts {
            return Err(mismatch(
                "",
                format!(
                    "{} full-text fields; at most {max_fts} fit (bm25() takes one weight per field within {} arguments)",
                    count(|f| f.fts_weight.is_some()),
                    crate::limits::MAX_FUNCTION_ARGS
                ),
            ));
        }
        Ok(())
    }

    /// The DDL that creates this collection's table and indexes, one statement per entry.
    /// Every statement is idempotent (`IF NOT EXISTS`).
    pub fn ddl(&self, id_kind: IdKind) -> Vec<String> {
        let table = quote_ident(self.collection);
        let mut columns = vec![match id_kind {
            IdKind::Text => "\"_id\" TEXT PRIMARY KEY NOT NULL".to_owned(),
            IdKind::Integer => "\"_id\" INTEGER PRIMARY KEY NOT NULL".to_owned(),
        }];
        columns.push("\"_doc\" TEXT NOT NULL".to_owned());
        if self.version_field().is_some() {
            columns.push("\"_version\" INTEGER NOT NULL".to_owned());
        }
        columns.extend(self.column_fields().map(|f| column_ddl(f, &column_name(f.name, f.key))));
        let mut ddl = vec![format!("CREATE TABLE IF NOT EXISTS {table} ({})", columns.join(", "))];
        ddl.extend(
            self.fields
                .iter()
                .filter(|f| f.has_column())
                .map(|f| self.index_ddl(f.name, &column_name(f.name, f.key), id_kind)),
        );
        for index in self.indexes {
            let columns: Vec<(String, bool)> = index
                .fields()
                .iter()
                .filter_map(|k| {
                    let f = self.fields.iter().find(|f| f.name == k.field())?;
                    Some((column_name(f.name, f.key), k.is_descending()))
                })
                .collect();
            ddl.push(index::composite_index_ddl(self.collection, index.name(), &columns));
        }
        ddl
    }

    /// The `CREATE INDEX` of a field's own index. With text ids the id is its last key:
    /// SQLite's index entries end with the rowid, which is the id only for integer ids, and
    /// without it `ORDER BY x, "_id"` (every range page, every `order_by`) would sort each
    /// group of equal keys in a temporary B-tree.
    pub(crate) fn index_ddl(&self, field: &str, column: &str, id_kind: IdKind) -> String {
        let id = match id_kind {
            IdKind::Text => ", \"_id\"",
            IdKind::Integer => "",
        };
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({}{id})",
            quote_ident(&index_name(self.collection, field)),
            quote_ident(self.collection),
            quote_ident(column)
        )
    }
}

/// The column holding an indexed field's value: `f_<field>`, with a hash of the JSON key when
/// it differs from the field name, so that a column's name always says which key it reads (a
/// handle that knows an older layout then never finds a same-named column reading another
/// key).
pub(crate) fn column_name(field: &str, key: &str) -> String {
    if field == key { format!("f_{field}") } else { hashed_column_name(field, key) }
}

/// `f_<field>_<hash of the key>`: also used when the plain name once meant another key.
pub(crate) fn hashed_column_name(field: &str, key: &str) -> String {
    format!("f_{field}_{:08x}", key_hash(key))
}

/// FNV-1a: a stable 32-bit hash for column names.
pub(crate) fn key_hash(key: &str) -> u32 {
    key.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The definition of an indexed field's column: generated by SQLite from the stored JSON, so
/// it is always in step with the document, whoever wrote it (also code from before a
/// migration added the index), and an added index needs no backfill. Declared without a type:
/// the value keeps the storage class `json_extract` gives it, which is how query values bind.
pub(crate) fn column_ddl(field: &FieldDef, column: &str) -> String {
    // The key is validated (no quote, backslash or control character); the literal is still
    // escaped as SQL requires.
    let path = json_path(field.key()).replace('\'', "''");
    format!("{} GENERATED ALWAYS AS (json_extract(\"_doc\", '{path}')) VIRTUAL", quote_ident(column))
}

/// The SQLite index over an indexed field's column. The `.` cannot occur in a collection or
/// field name, so index names never collide with each other or with a collection's table.
pub(crate) fn index_name(collection: &str, field: &str) -> String {
    format!("{collection}.{field}")
}

/// Names of fields whose values get a column (`f_<name>`).
pub(crate) fn is_valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Names that reach SQL as identifiers: ASCII, short, and clear of SQLite's and db4's own.
pub(crate) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.to_ascii_lowercase().starts_with("_db4")
        && !name.to_ascii_lowercase().starts_with("sqlite_")
}

/// Quotes an SQL identifier, doubling any embedded quote.
pub(crate) fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The SQLite JSON path addressing a top-level key of a stored document.
pub(crate) fn json_path(key: &str) -> String {
    format!("$.\"{key}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    static FIELDS: [FieldDef; 6] = [
        FieldDef::new("id", "id", "String").id(),
        FieldDef::new("tenant_id", "tenantId", "String").partition_key(),
        FieldDef::new("title", "title", "String").fts(2.0),
        FieldDef::new("status", "status", "Status").index(IndexKind::Equality),
        FieldDef::new("created_at", "created_at", "i64").index(IndexKind::Range),
        FieldDef::new("version", "version", "u64").version(),
    ];
    static ARTICLE: Schema = Schema::new("articles", "Article", &FIELDS);

    #[test]
    fn ddl_for_a_full_schema() -> Result<()> {
        ARTICLE.validate()?;
        insta::assert_snapshot!(ARTICLE.ddl(IdKind::Text).join(";\n"));
        Ok(())
    }

    #[test]
    fn ddl_for_integer_ids_without_indexes() -> Result<()> {
        static PLAIN: [FieldDef; 2] = [FieldDef::new("id", "id", "u64").id(), FieldDef::new("n", "n", "i64")];
        let schema = Schema::new("counters", "Counter", &PLAIN);
        schema.validate()?;
        insta::assert_snapshot!(schema.ddl(IdKind::Integer).join(";\n"));
        Ok(())
    }

    /// A schema with `indexed` indexed fields and `fts` full-text fields, leaked for `'static`.
    fn wide_schema(indexed: usize, fts: usize) -> Schema {
        let name = |prefix: &str, i: usize| -> &'static str { Box::leak(format!("{prefix}{i}").into_boxed_str()) };
        let mut fields = vec![FieldDef::new("id", "id", "String").id()];
        fields.extend((0..indexed).map(|i| {
            let n = name("i", i);
            FieldDef::new(n, n, "i64").index(IndexKind::Equality)
        }));
        fields.extend((0..fts).map(|i| {
            let n = name("t", i);
            FieldDef::new(n, n, "String").fts(1.0)
        }));
        Schema::new("wide", "Wide", Box::leak(fields.into_boxed_slice()))
    }

    #[test]
    fn validate_keeps_schemas_within_the_platform_limits() {
        assert!(wide_schema(97, 31).validate().is_ok());
        for (schema, limit) in [(wide_schema(98, 0), "100 columns"), (wide_schema(0, 32), "32 arguments")] {
            match schema.validate() {
                Err(Error::SchemaMismatch { reason, .. }) => assert!(reason.contains(limit), "{reason}"),
                other => panic!("expected SchemaMismatch naming {limit}, got {other:?}"),
            }
        }
    }

    #[test]
    fn validate_rejects_bad_hand_built_schemas() {
        static NO_ID: [FieldDef; 1] = [FieldDef::new("n", "n", "i64")];
        static BAD_KEY: [FieldDef; 1] = [FieldDef::new("id", "a\"b", "String").id()];
        static BAD_WEIGHT: [FieldDef; 2] =
            [FieldDef::new("id", "id", "String").id(), FieldDef::new("t", "t", "String").fts(-1.0)];
        for schema in [
            Schema::new("x", "X", &NO_ID),
            Schema::new("x", "X", &BAD_KEY),
            Schema::new("x", "X", &BAD_WEIGHT),
            Schema::new("bad name; DROP TABLE x", "X", &FIELDS),
            Schema::new("sqlite_master", "X", &FIELDS),
            Schema::new("_db4_schema", "X", &FIELDS),
        ] {
            assert!(matches!(schema.validate(), Err(Error::SchemaMismatch { .. })), "{schema:?}");
        }
    }
}
