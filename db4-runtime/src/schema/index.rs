//! Composite indexes declared on a document type:
//! `#[db4(index(name = "by_tenant_created", fields(tenant_id, created_at desc)))]`.
//!
//! Each is one SQLite index over the fields' generated columns, in the declared directions,
//! with the document id as the last key (in the direction of the last field), so that the
//! order an index gives is total and a keyset cursor over it is exact. See `docs/range.md`.

use super::{Schema, is_valid_field_name, quote_ident};

/// The most fields a composite index may have (the id comes on top).
pub const MAX_INDEX_FIELDS: usize = 16;

/// One key of a composite index: a field (by its Rust name) and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexField {
    field: &'static str,
    descending: bool,
}

impl IndexField {
    /// The field `field`, smallest value first.
    pub const fn asc(field: &'static str) -> Self {
        Self { field, descending: false }
    }

    /// The field `field`, largest value first.
    pub const fn desc(field: &'static str) -> Self {
        Self { field, descending: true }
    }

    /// The field's Rust name.
    pub const fn field(&self) -> &'static str {
        self.field
    }

    /// Whether the index keeps this field largest first.
    pub const fn is_descending(&self) -> bool {
        self.descending
    }
}

/// A composite index over fields of a document type, each ascending or descending, from
/// `#[db4(index(name = "...", fields(a, b desc)))]` (or built by hand with [`IndexDef::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexDef {
    name: &'static str,
    fields: &'static [IndexField],
}

impl IndexDef {
    /// An index called `name` (unique within its document type) over `fields`, in order.
    pub const fn new(name: &'static str, fields: &'static [IndexField]) -> Self {
        Self { name, fields }
    }

    /// The index's name, as `range_index` takes it.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The index's keys, in order (the id follows them).
    pub const fn fields(&self) -> &'static [IndexField] {
        self.fields
    }
}

/// The SQLite name of a composite index: `<collection>:<name>`. The `:` occurs in no
/// collection, field or index name, so it never collides with a single-field index
/// (`<collection>.<field>`) or a table.
pub(crate) fn composite_index_name(collection: &str, name: &str) -> String {
    format!("{collection}:{name}")
}

/// The `CREATE INDEX` statement of a composite index over `columns` (column name, descending),
/// with the id last in the direction of the last column.
pub(crate) fn composite_index_ddl(collection: &str, name: &str, columns: &[(String, bool)]) -> String {
    let last_desc = columns.last().is_some_and(|c| c.1);
    let mut keys: Vec<String> =
        columns.iter().map(|(c, desc)| format!("{} {}", quote_ident(c), if *desc { "DESC" } else { "ASC" })).collect();
    keys.push(format!("\"_id\" {}", if last_desc { "DESC" } else { "ASC" }));
    format!(
        "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
        quote_ident(&composite_index_name(collection, name)),
        quote_ident(collection),
        keys.join(", ")
    )
}

impl Schema {
    /// Why the declared composite indexes are not valid for this schema, if they are not.
    pub(crate) fn index_problem(&self) -> Option<(String, String)> {
        let mut names = std::collections::HashSet::new();
        for index in self.composite_indexes() {
            let bad = |reason: String| Some((index.name.to_owned(), reason));
            if !is_valid_field_name(index.name) {
                return bad(format!("index name {:?} must be 1-64 ASCII letters, digits or `_`", index.name));
            }
            if !names.insert(index.name) {
                return bad(format!("index `{}` is declared twice", index.name));
            }
            if index.fields.is_empty() {
                return bad(format!("index `{}` has no fields", index.name));
            }
            if index.fields.len() > MAX_INDEX_FIELDS {
                return bad(format!(
                    "index `{}` has {} fields; at most {MAX_INDEX_FIELDS} fit",
                    index.name,
                    index.fields.len()
                ));
            }
            for (i, key) in index.fields.iter().enumerate() {
                let Some(def) = self.fields().iter().find(|f| f.name() == key.field) else {
                    return bad(format!("index `{}` names `{}`, which is not a field", index.name, key.field));
                };
                if def.is_id() || def.is_version() {
                    return bad(format!(
                        "index `{}` names `{}`: the id is always an index's last key, and the version cannot be indexed",
                        index.name, key.field
                    ));
                }
                if !is_valid_field_name(def.name()) {
                    return bad(format!("indexed field names must be ASCII identifiers, not `{}`", def.name()));
                }
                if index.fields[..i].iter().any(|k| k.field == key.field) {
                    return bad(format!("index `{}` names `{}` twice", index.name, key.field));
                }
            }
        }
        None
    }

    /// Whether field `name` is a key of a composite index (so it needs a column).
    pub(crate) fn in_composite_index(&self, name: &str) -> bool {
        self.composite_indexes().iter().any(|i| i.fields.iter().any(|k| k.field == name))
    }
}
