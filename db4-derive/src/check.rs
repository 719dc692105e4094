//! Cross-field rules, run on the IR after parsing. Every violation is reported, spanned on the
//! attribute or token that explains it.

use crate::ast::{Container, Field, IndexKind};
use crate::ctxt::Ctxt;
use syn::Attribute;

pub fn check(cx: &Ctxt, cont: &Container<'_>) {
    check_generics(cx, cont);
    check_collection_name(cx, cont);
    let Some(fields) = &cont.fields else { return };

    let ids: Vec<&Field<'_>> = fields.iter().filter(|f| f.id.is_some()).collect();
    match ids.as_slice() {
        [] => cx.error_spanned_by(
            cont.ident,
            format!(
                "`{}` has no `#[id]` field; mark the field that identifies a document with `#[id]` (String, i64 or u64)",
                cont.ident
            ),
        ),
        [_] => {}
        [first, rest @ ..] => {
            for f in rest {
                span_error(cx, f.id, format!("duplicate `#[id]`: `{}` is already the id of `{}`", first.name, cont.ident));
            }
        }
    }
    one_of(cx, fields, |f| f.partition_key, "#[partition_key]", "partition key");
    one_of(cx, fields, |f| f.version, "#[version]", "version field");

    let mut fts_count = 0;
    for f in fields {
        if let Some(span) = f.not_stored
            && f.has_db4_attr()
        {
            let message = format!(
                "field `{}` is not written as a key of the document by serde, so db4 cannot use it; remove the db4 attribute or the serde one",
                f.name
            );
            cx.syn_error(syn::Error::new(span, message));
        }
        if f.id.is_some() {
            conflict(cx, f.partition_key, "#[id]", "#[partition_key]");
            conflict(cx, f.version, "#[id]", "#[version]");
            conflict(cx, f.index.map(|i| i.1), "#[id]", "an index (the id is always indexed)");
            conflict(cx, f.fts.map(|i| i.1), "#[id]", "#[fts]");
        }
        if f.version.is_some() {
            conflict(cx, f.partition_key, "#[version]", "#[partition_key]");
            conflict(cx, f.index.map(|i| i.1), "#[version]", "an index");
            conflict(cx, f.fts.map(|i| i.1), "#[version]", "#[fts]");
        }
        if let (Some(_), Some((IndexKind::Equality, attr))) = (f.partition_key, f.index) {
            span_error(cx, Some(attr), "the partition key is already indexed; remove `#[index]`");
        }
        if let Some((_, attr)) = f.fts {
            fts_count += 1;
            if fts_count == MAX_FTS_FIELDS + 1 {
                cx.error_spanned_by(
                    attr,
                    format!(
                        "more than {MAX_FTS_FIELDS} `#[fts]` fields: bm25() weighs at most {MAX_FTS_FIELDS} columns (a Durable Object allows 32 arguments per SQL function)"
                    ),
                );
            }
            if !is_valid_field_name(&f.name) {
                cx.error_spanned_by(
                    f.ident,
                    "full-text field names must be ASCII letters, digits and `_`, at most 64 characters",
                );
            } else if RESERVED_FTS_NAMES.contains(&f.name.to_ascii_lowercase().as_str()) {
                cx.error_spanned_by(
                    f.ident,
                    format!(
                        "`{}` cannot be a full-text field: SQLite's FTS5 or db4 uses that column name; rename the field (`#[serde(rename = \"{}\")]` keeps its serialized name)",
                        f.name, f.name
                    ),
                );
            }
        }
        let has_column = f.partition_key.is_some() || f.index.is_some();
        if has_column && !is_valid_field_name(&f.name) {
            cx.error_spanned_by(
                f.ident,
                "indexed field names must be ASCII letters, digits and `_`, at most 64 characters",
            );
        }
        if f.key.is_empty() || f.key.contains(['"', '\\']) || f.key.chars().any(char::is_control) {
            let message = format!(
                "the serialized name {:?} cannot be addressed by db4 (no `\"`, `\\` or control characters)",
                f.key
            );
            cx.syn_error(syn::Error::new(f.key_span, message));
        }
    }
    if fts_count == 0
        && let Some((_, lit)) = &cont.tokenizer
    {
        cx.error_spanned_by(lit, "a tokenizer is set but no field is marked `#[fts]`");
    }
    check_indexes(cx, cont, fields);
}

/// The most fields a composite index may have (db4-runtime's `MAX_INDEX_FIELDS`).
const MAX_INDEX_FIELDS: usize = 16;

/// Composite indexes: a valid, unique name; fields that exist, are stored, appear once and
/// are neither the id nor the version. (That each field's type is ordered is asserted in
/// the generated code, spanned on the field named in the index.)
fn check_indexes(cx: &Ctxt, cont: &Container<'_>, fields: &[Field<'_>]) {
    let mut names: Vec<String> = Vec::new();
    for index in &cont.indexes {
        if let Some(lit) = &index.name {
            let name = lit.value();
            if !is_valid_field_name(&name) {
                cx.error_spanned_by(lit, format!("invalid index name {name:?}: use 1-64 ASCII letters, digits or `_`"));
            } else if names.contains(&name) {
                cx.error_spanned_by(
                    lit,
                    format!("duplicate index name {name:?}: each index of `{}` needs its own", cont.ident),
                );
            }
            names.push(name);
        }
        if index.keys.len() > MAX_INDEX_FIELDS {
            cx.error_spanned_by(
                &index.keys[MAX_INDEX_FIELDS].ident,
                format!("an index has at most {MAX_INDEX_FIELDS} fields (the id is always added as the last key)"),
            );
        }
        for (i, key) in index.keys.iter().enumerate() {
            let name = key.name();
            let Some(field) = fields.iter().find(|f| f.name == name) else {
                let known: Vec<&str> = fields.iter().filter(|f| f.id.is_none()).map(|f| f.name.as_str()).collect();
                cx.error_spanned_by(
                    &key.ident,
                    format!(
                        "no field `{name}` in `{}`; an index names fields of the struct: {}",
                        cont.ident,
                        known.join(", ")
                    ),
                );
                continue;
            };
            if index.keys[..i].iter().any(|k| k.name() == name) {
                cx.error_spanned_by(&key.ident, format!("field `{name}` appears twice in this index"));
            } else if field.id.is_some() {
                cx.error_spanned_by(
                    &key.ident,
                    format!("`{name}` is the id, which every index already ends with; remove it from `fields(...)`"),
                );
            } else if field.version.is_some() {
                cx.error_spanned_by(
                    &key.ident,
                    format!("`{name}` is the `#[version]` counter, which cannot be indexed"),
                );
            } else if field.not_stored.is_some() {
                cx.error_spanned_by(
                    &key.ident,
                    format!("field `{name}` is not written as a key of the document by serde, so it cannot be indexed"),
                );
            } else if !is_valid_field_name(&field.name) {
                cx.error_spanned_by(
                    &key.ident,
                    "indexed field names must be ASCII letters, digits and `_`, at most 64 characters",
                );
            }
        }
    }
}

/// `bm25()` takes the table and one weight per column, within 32 arguments.
const MAX_FTS_FIELDS: usize = 31;

/// Column names FTS5 (`rank`, `rowid` and its aliases) or a collection's table already use.
const RESERVED_FTS_NAMES: [&str; 7] = ["rank", "rowid", "oid", "_rowid_", "_id", "_doc", "_version"];

fn check_generics(cx: &Ctxt, cont: &Container<'_>) {
    let generics = &cont.input.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(
            generics,
            "`#[derive(Document)]` does not support generic structs: a collection stores one concrete type",
        );
    }
}

fn check_collection_name(cx: &Ctxt, cont: &Container<'_>) {
    let (name, lit) = &cont.collection;
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.to_ascii_lowercase().starts_with("_db4")
        && !name.to_ascii_lowercase().starts_with("sqlite_");
    if valid {
        return;
    }
    let lower = name.to_ascii_lowercase();
    let reserved = lower.starts_with("_db4") || lower.starts_with("sqlite_");
    let message = if reserved {
        format!(
            "collection name {name:?} is reserved: names starting with `_db4` or `sqlite_` belong to db4 and SQLite"
        )
    } else {
        format!(
            "invalid collection name {name:?}: use 1-64 ASCII letters, digits or `_`, starting with a letter or `_`"
        )
    };
    match lit {
        Some(lit) => cx.error_spanned_by(lit, message),
        None => cx.error_spanned_by(cont.ident, format!("{message}; set one with `#[db4(collection = \"...\")]`")),
    }
}

fn is_valid_field_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn one_of<'a>(cx: &Ctxt, fields: &[Field<'a>], get: fn(&Field<'a>) -> Option<&'a Attribute>, attr: &str, what: &str) {
    let marked: Vec<&Field<'_>> = fields.iter().filter(|f| get(f).is_some()).collect();
    if let [first, rest @ ..] = marked.as_slice() {
        for f in rest {
            span_error(cx, get(f), format!("duplicate `{attr}`: `{}` is already the {what}", first.name));
        }
    }
}

fn conflict(cx: &Ctxt, other: Option<&Attribute>, this: &str, that: &str) {
    span_error(cx, other, format!("an `{this}` field cannot also be {}", article(that)));
}

fn article(that: &str) -> String {
    if that.starts_with('#') { format!("`{that}`") } else { that.to_owned() }
}

fn span_error(cx: &Ctxt, attr: Option<&Attribute>, message: impl std::fmt::Display) {
    if let Some(attr) = attr {
        cx.error_spanned_by(attr, message);
    }
}
