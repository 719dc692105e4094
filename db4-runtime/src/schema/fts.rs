//! The SQLite objects behind a collection's full-text fields: an FTS5 table with external
//! content, the view it reads its content from, and the triggers that keep it in step.
//!
//! # Layout
//!
//! For a collection `articles` with `#[fts]` fields `title` and `tags`:
//!
//! - `_db4_fts_articles_src`, a view: `rowid AS _rowid` and one text column per full-text field,
//!   computed from the stored JSON (a `Vec<String>` is joined with spaces, a `None` is NULL);
//! - `_db4_fts_articles`, an FTS5 table holding the text of each row under the row's rowid;
//! - `_db4_fts_articles_vocab`, an `fts5vocab` table over it (typo tolerance reads it);
//! - three triggers on `articles`: `_ins` indexes a row after it is inserted, `_del` removes it
//!   after it is deleted, and `_upd` does both after an update that changes the JSON value of
//!   a full-text field (other updates leave the index alone).
//!
//! The triggers run inside the statement that writes the row, so the index changes in the
//! same transaction as the document, on every write path (the write pipeline, a query's
//! delete, a migration's rewrite, a savepoint's undo on a Durable Object), and SQLite's own
//! rollback and savepoints undo both together.
//!
//! The FTS5 table keeps its own copy of the text rather than reading it through the view as
//! external content: FTS5 prepares its content reads without virtual tables, so a view that
//! joins a list with `json_each` cannot serve them (`highlight()`, `snippet()`, `rebuild`),
//! and a contentless table cannot highlight at all. The copy costs the text's size once more
//! and makes removal a delete by rowid.
//!
//! The names all start with `_db4`, which collection names cannot, and contain the collection
//! name, which is validated: nothing here comes from input.

use crate::schema::{Schema, Tokenizer, json_path, quote_ident};

/// The version of this layout. Stored in the schema record: a record from before full-text
/// tables existed (layout 0) has them built when the collection is next opened.
pub(crate) const FTS_LAYOUT: u32 = 1;

/// Column names a full-text field cannot have: FTS5's own (`rank`, `rowid` and its aliases)
/// and the collection table's (a search joins the two tables).
pub(crate) const RESERVED_COLUMNS: [&str; 7] = ["rank", "rowid", "oid", "_rowid_", "_id", "_doc", "_version"];

/// The FTS5 table of `collection`.
pub(crate) fn table_name(collection: &str) -> String {
    format!("_db4_fts_{collection}")
}

/// The view the FTS5 table reads its content from.
pub(crate) fn view_name(collection: &str) -> String {
    format!("_db4_fts_{collection}_src")
}

/// The fts5vocab table listing the FTS5 table's terms (typo tolerance reads it).
pub(crate) fn vocab_name(collection: &str) -> String {
    format!("_db4_fts_{collection}_vocab")
}

fn trigger_name(collection: &str, what: &str) -> String {
    format!("_db4_fts_{collection}_{what}")
}

/// The `tokenize` option of an FTS5 table for `tokenizer`.
pub(crate) fn tokenize_option(tokenizer: Tokenizer) -> &'static str {
    match tokenizer {
        Tokenizer::Porter => "porter unicode61",
        Tokenizer::Unicode61 => "unicode61",
        Tokenizer::Trigram => "trigram",
    }
}

/// The SQL text of a full-text field's value in the row `row` (`NEW`, `OLD` or a table
/// alias): a string as it is, an array's elements joined with spaces, NULL for a missing key
/// or a JSON null.
pub(crate) fn text_expr(row: &str, key: &str) -> String {
    // The key is validated (no quote, backslash or control character); the literal is still
    // escaped as SQL requires.
    let path = json_path(key).replace('\'', "''");
    let doc = format!("{row}.\"_doc\"");
    format!(
        "CASE json_type({doc}, '{path}') WHEN 'array' THEN (SELECT group_concat(\"value\", ' ') FROM json_each({doc}, '{path}')) \
         ELSE json_extract({doc}, '{path}') END"
    )
}

/// The statements that create the FTS5 table, its source view and triggers of `schema`'s
/// collection, and index what the collection already holds. Empty if it has no full-text
/// field. Run them after [`drop_ddl`] when the layout changes.
pub(crate) fn create_ddl(schema: &Schema) -> Vec<String> {
    let fields: Vec<(&str, &str)> = schema.fts_fields().map(|(f, _)| (f.name(), f.key())).collect();
    if fields.is_empty() {
        return Vec::new();
    }
    let collection = schema.collection();
    let table = quote_ident(collection);
    let fts = quote_ident(&table_name(collection));
    let view = quote_ident(&view_name(collection));
    let columns: Vec<String> = fields.iter().map(|(name, _)| quote_ident(name)).collect();
    let column_list = columns.join(", ");
    let view_columns: Vec<String> =
        fields.iter().zip(&columns).map(|((_, key), column)| format!("{} AS {column}", text_expr("t", key))).collect();
    // A field's text changed if its JSON value did (an array compares as its JSON text).
    let changed: Vec<String> = fields
        .iter()
        .map(|(_, key)| {
            let path = json_path(key).replace('\'', "''");
            format!("json_extract(OLD.\"_doc\", '{path}') IS NOT json_extract(NEW.\"_doc\", '{path}')")
        })
        .collect();
    let changed = changed.join(" OR ");
    // Through the view: a table-valued function (`json_each`, for lists) cannot appear in a
    // trigger's own statements, but may in a view they read.
    let index = |rowid: &str| {
        format!(
            "INSERT INTO {fts} (rowid, {column_list}) SELECT \"_rowid\", {column_list} FROM {view} WHERE \"_rowid\" = {rowid};"
        )
    };
    let unindex = |rowid: &str| format!("DELETE FROM {fts} WHERE rowid = {rowid};");
    vec![
        format!("CREATE VIEW {view} AS SELECT t.rowid AS \"_rowid\", {} FROM {table} AS t", view_columns.join(", ")),
        format!(
            "CREATE VIRTUAL TABLE {fts} USING fts5({column_list}, tokenize = '{}')",
            tokenize_option(schema.fts_tokenizer())
        ),
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {table} BEGIN {} END",
            quote_ident(&trigger_name(collection, "ins")),
            index("NEW.rowid")
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {table} BEGIN {} END",
            quote_ident(&trigger_name(collection, "del")),
            unindex("OLD.rowid")
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE OF \"_doc\" ON {table} WHEN {changed} BEGIN {} {} END",
            quote_ident(&trigger_name(collection, "upd")),
            unindex("OLD.rowid"),
            index("NEW.rowid")
        ),
        format!("CREATE VIRTUAL TABLE {} USING fts5vocab({fts}, 'row')", quote_ident(&vocab_name(collection))),
        fill(&fts, &view, &column_list),
    ]
}

/// Indexes every row the view shows.
fn fill(fts: &str, view: &str, column_list: &str) -> String {
    format!("INSERT INTO {fts} (rowid, {column_list}) SELECT \"_rowid\", {column_list} FROM {view}")
}

/// The statements that empty the FTS5 table of `schema`'s collection and index every stored
/// document again (after a `VACUUM` renumbered the rowids of a table with string ids).
pub(crate) fn reindex_sql(schema: &Schema) -> Vec<String> {
    let collection = schema.collection();
    let fts = quote_ident(&table_name(collection));
    let view = quote_ident(&view_name(collection));
    let column_list: Vec<String> = schema.fts_fields().map(|(f, _)| quote_ident(f.name())).collect();
    vec![format!("DELETE FROM {fts}"), fill(&fts, &view, &column_list.join(", "))]
}

/// The statements that remove whatever full-text objects `collection` has.
pub(crate) fn drop_ddl(collection: &str) -> Vec<String> {
    let mut out: Vec<String> = ["ins", "del", "upd"]
        .iter()
        .map(|what| format!("DROP TRIGGER IF EXISTS {}", quote_ident(&trigger_name(collection, what))))
        .collect();
    out.push(format!("DROP TABLE IF EXISTS {}", quote_ident(&vocab_name(collection))));
    out.push(format!("DROP TABLE IF EXISTS {}", quote_ident(&table_name(collection))));
    out.push(format!("DROP VIEW IF EXISTS {}", quote_ident(&view_name(collection))));
    out
}

/// The `bm25()` call ranking with `weights` (one per full-text column, in column order), as
/// the text FTS5's `rank MATCH ?` takes. Weights are validated finite numbers.
pub(crate) fn rank_function(weights: impl IntoIterator<Item = f64>) -> String {
    let weights: Vec<String> = weights.into_iter().map(|w| format!("{w:?}")).collect();
    format!("bm25({})", weights.join(", "))
}

/// A comparable summary of a full-text layout (its version, tokenizer, and each field with its
/// JSON key): two schema records with the same one have the same full-text objects. Weights
/// are not part of it: each search ranks with its own type's.
pub(crate) fn signature((layout, tokenizer, fields): (u32, Tokenizer, Vec<(&str, &str)>)) -> String {
    let fields: Vec<String> = fields.iter().map(|(name, key)| format!("{name}={key}")).collect();
    format!("{layout}/{}/{}", tokenizer.as_str(), fields.join(","))
}

/// The [`signature`] of the full-text objects `schema` asks for.
pub(crate) fn signature_of(schema: &Schema) -> String {
    let fields: Vec<(&str, &str)> = schema.fts_fields().map(|(f, _)| (f.name(), f.key())).collect();
    let layout = if fields.is_empty() { 0 } else { FTS_LAYOUT };
    signature((layout, schema.fts_tokenizer(), fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FieldDef, Tokenizer};

    static FIELDS: [FieldDef; 4] = [
        FieldDef::new("id", "id", "String").id(),
        FieldDef::new("title", "title", "String").fts(2.0),
        FieldDef::new("body", "text", "Option<String>").fts(1.0),
        FieldDef::new("tags", "tags", "Vec<String>").fts(1.5),
    ];
    static ARTICLE: Schema = Schema::new("articles", "Article", &FIELDS).tokenizer(Tokenizer::Unicode61);

    #[test]
    fn ddl_of_a_collection_with_full_text_fields() {
        insta::assert_snapshot!(create_ddl(&ARTICLE).join(";\n"));
        assert_eq!(drop_ddl("articles").len(), 6);
        assert_eq!(rank_function([2.0, 1.0, 1.5]), "bm25(2.0, 1.0, 1.5)");
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn the_triggers_keep_the_index_in_step() -> rusqlite::Result<()> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.execute_batch(&crate::schema::Schema::ddl(&ARTICLE, crate::schema::IdKind::Text).join(";"))?;
        conn.execute(
            "INSERT INTO articles (_id, _doc) VALUES ('a', json('{\"title\":\"Edge databases\",\"tags\":[\"rust\",\"sqlite\"]}'))",
            [],
        )?;
        for stmt in create_ddl(&ARTICLE) {
            conn.execute_batch(&stmt)?;
        }
        let count = |q: &str| -> rusqlite::Result<i64> {
            conn.query_row("SELECT count(*) FROM _db4_fts_articles WHERE _db4_fts_articles MATCH ?1", [q], |r| r.get(0))
        };
        // Indexed by the rebuild; a list is joined with spaces.
        assert_eq!(count("sqlite")?, 1);
        let tags: String =
            conn.query_row("SELECT tags FROM _db4_fts_articles_src WHERE _rowid = 1", [], |r| r.get(0))?;
        assert_eq!(tags, "rust sqlite");
        let marked: String = conn.query_row(
            "SELECT highlight(_db4_fts_articles, 2, '[', ']') FROM _db4_fts_articles WHERE _db4_fts_articles MATCH 'sqlite'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(marked, "rust [sqlite]");
        conn.execute(
            "INSERT INTO articles (_id, _doc) VALUES ('b', json('{\"title\":\"Other\",\"text\":\"edge\"}'))",
            [],
        )?;
        assert_eq!(count("edge")?, 2);
        conn.execute("UPDATE articles SET _doc = json('{\"title\":\"Renamed\"}') WHERE _id = 'a'", [])?;
        assert_eq!(count("edge")?, 1);
        assert_eq!(count("renamed")?, 1);
        conn.execute("DELETE FROM articles WHERE _id = 'b'", [])?;
        assert_eq!(count("edge")?, 0);
        conn.execute("INSERT INTO _db4_fts_articles (_db4_fts_articles, rank) VALUES ('integrity-check', 1)", [])?;

        for stmt in drop_ddl("articles") {
            conn.execute_batch(&stmt)?;
        }
        Ok(())
    }
}
