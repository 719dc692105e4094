//! The SQLite objects behind a collection's full-text fields: an FTS5 table, the view its
//! initial content is read from, and the statements that keep it in step with each write.
//!
//! # Layout
//!
//! For a collection `articles` with `#[fts]` fields `title` and `tags`:
//!
//! - `_db4_fts_articles_src`, a view: `rowid AS _rowid` and one text column per full-text field,
//!   computed from the stored JSON (a `Vec<String>` is joined with spaces, a `None` is NULL);
//! - `_db4_fts_articles`, an FTS5 table holding the text of each row under the row's rowid;
//! - `_db4_fts_articles_vocab`, an `fts5vocab` table over it (typo tolerance reads it).
//!
//! The write pipeline keeps the FTS5 table in step ([`FtsSql`]): beside each statement that
//! writes a document, in the same transaction, it removes the row's terms while the row still
//! has its rowid, and indexes the new text once it is stored (an update whose full-text
//! fields kept their text leaves the index alone). Every write path goes through the
//! pipeline (CRUD, the atomic operations, a query's delete, a migration's rewrite, a
//! savepoint's undo), and SQLite's rollback and savepoints undo both together.
//!
//! Why not triggers, which would also index writes from outside db4: a trigger's statements
//! run inside a savepoint of the writing statement, and FTS5 flushes its pending terms to disk
//! at every savepoint, so a bulk insert through triggers wrote one tiny segment per row (about
//! twice the time of inserting the text directly, measured). A db4 from before full-text
//! tables cannot write such a collection unindexed: the schema record's format (3) makes it
//! refuse to open it.
//!
//! The FTS5 table keeps its own copy of the text rather than reading it through the view as
//! external content: FTS5 prepares its content reads without virtual tables, so a view that
//! joins a list with `json_each` cannot serve them (`highlight()`, `snippet()`, `rebuild`),
//! and a contentless table cannot highlight at all. The copy costs the text's size once more
//! and makes removal a delete by rowid. The view is read once, to index what a collection
//! holds when its full-text objects are created.
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
    doc_text_expr(&format!("{row}.\"_doc\""), key)
}

/// The text of the field at `key` in the JSON document `doc` (an SQL expression: a column or
/// a parameter), as [`text_expr`] reads it from a row.
fn doc_text_expr(doc: &str, key: &str) -> String {
    // The key is validated (no quote, backslash or control character); the literal is still
    // escaped as SQL requires.
    let path = json_path(key).replace('\'', "''");
    format!(
        "CASE json_type({doc}, '{path}') WHEN 'array' THEN (SELECT group_concat(\"value\", ' ') FROM json_each({doc}, '{path}')) \
         ELSE json_extract({doc}, '{path}') END"
    )
}

/// The statements that create the FTS5 table, its source view and vocabulary table of
/// `schema`'s collection, and index what the collection already holds. Empty if it has no
/// full-text field. Run them after [`drop_ddl`] when the layout changes.
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
    vec![
        format!("CREATE VIEW {view} AS SELECT t.rowid AS \"_rowid\", {} FROM {table} AS t", view_columns.join(", ")),
        format!(
            "CREATE VIRTUAL TABLE {fts} USING fts5({column_list}, tokenize = '{}')",
            tokenize_option(schema.fts_tokenizer())
        ),
        format!("CREATE VIRTUAL TABLE {} USING fts5vocab({fts}, 'row')", quote_ident(&vocab_name(collection))),
        fill(&fts, &view, &column_list),
    ]
}

/// The statements the write pipeline runs to keep a collection's FTS5 table in step, beside
/// each write of a document, in the same transaction (see the module documentation). Their
/// parameters: `?1` the document id (or a JSON list of ids or rowids), `?2` the stored JSON.
#[derive(Debug, Clone)]
pub(crate) struct FtsSql {
    /// Indexes the document `?1` with the text of `?2`, replacing what its row had.
    pub index: String,
    /// Removes the terms of the document `?1` (run before the row goes).
    pub unindex: String,
    /// Removes the terms of the documents whose ids are the JSON list `?1`.
    pub unindex_ids: String,
    /// Removes the terms of the rows whose rowids are the JSON list `?1` (after a delete that
    /// returned them).
    pub unindex_rowids: String,
    /// Removes the terms of the document `?1` if the text of `?2` differs from what was
    /// indexed: an update then indexes again only when this removed a row.
    pub unindex_changed: String,
}

impl FtsSql {
    /// The statements for `collection`'s full-text fields `fields` (name, JSON key), as the
    /// collection's table stores them; `None` without full-text fields.
    pub(crate) fn new(collection: &str, fields: &[(String, String)]) -> Option<Self> {
        if fields.is_empty() {
            return None;
        }
        let table = quote_ident(collection);
        let fts = quote_ident(&table_name(collection));
        let columns: Vec<String> = fields.iter().map(|(name, _)| quote_ident(name)).collect();
        let texts: Vec<String> = fields.iter().map(|(_, key)| doc_text_expr("?2", key)).collect();
        let rowid = format!("(SELECT rowid FROM {table} WHERE \"_id\" = ?1)");
        let changed: Vec<String> = columns.iter().zip(&texts).map(|(c, t)| format!("{c} IS NOT ({t})")).collect();
        Some(Self {
            index: format!(
                "INSERT OR REPLACE INTO {fts} (rowid, {}) VALUES ({rowid}, {})",
                columns.join(", "),
                texts.join(", ")
            ),
            unindex: format!("DELETE FROM {fts} WHERE rowid = {rowid}"),
            unindex_ids: format!(
                "DELETE FROM {fts} WHERE rowid IN (SELECT rowid FROM {table} WHERE \"_id\" IN (SELECT value FROM json_each(?1)))"
            ),
            unindex_rowids: format!("DELETE FROM {fts} WHERE rowid IN (SELECT value FROM json_each(?1))"),
            unindex_changed: format!("DELETE FROM {fts} WHERE rowid = {rowid} AND ({})", changed.join(" OR ")),
        })
    }
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
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn the_pipeline_statements_keep_the_index_in_step() -> rusqlite::Result<()> {
        let conn = rusqlite::Connection::open_in_memory()?;
        conn.execute_batch(&crate::schema::Schema::ddl(&ARTICLE, crate::schema::IdKind::Text).join(";"))?;
        let a = r#"{"title":"Edge databases","tags":["rust","sqlite"]}"#;
        conn.execute("INSERT INTO articles (_id, _doc) VALUES ('a', ?1)", [a])?;
        for stmt in create_ddl(&ARTICLE) {
            conn.execute_batch(&stmt)?;
        }
        let fields: Vec<(String, String)> =
            ARTICLE.fts_fields().map(|(f, _)| (f.name().to_owned(), f.key().to_owned())).collect();
        let sql = FtsSql::new("articles", &fields).expect("full-text fields");
        let count = |q: &str| -> rusqlite::Result<i64> {
            conn.query_row("SELECT count(*) FROM _db4_fts_articles WHERE _db4_fts_articles MATCH ?1", [q], |r| r.get(0))
        };
        // Indexed when the objects were created; a list is joined with spaces.
        assert_eq!(count("sqlite")?, 1);
        let marked: String = conn.query_row(
            "SELECT highlight(_db4_fts_articles, 2, '[', ']') FROM _db4_fts_articles WHERE _db4_fts_articles MATCH 'sqlite'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(marked, "rust [sqlite]");
        let b = r#"{"title":"Other","text":"edge"}"#;
        conn.execute("INSERT INTO articles (_id, _doc) VALUES ('b', ?1)", [b])?;
        conn.execute(&sql.index, ["b", b])?;
        assert_eq!(count("edge")?, 2);
        // An update that keeps the text removes nothing; one that changes it is indexed anew.
        assert_eq!(conn.execute(&sql.unindex_changed, ["a", a])?, 0);
        let renamed = r#"{"title":"Renamed"}"#;
        conn.execute("UPDATE articles SET _doc = ?2 WHERE _id = ?1", ["a", renamed])?;
        assert_eq!(conn.execute(&sql.unindex_changed, ["a", renamed])?, 1);
        conn.execute(&sql.index, ["a", renamed])?;
        assert_eq!((count("edge")?, count("renamed")?), (1, 1));
        conn.execute(&sql.unindex, ["b"])?;
        conn.execute("DELETE FROM articles WHERE _id = 'b'", [])?;
        assert_eq!(count("edge")?, 0);
        conn.execute(&sql.unindex_ids, [r#"["a"]"#])?;
        assert_eq!(count("renamed")?, 0);
        conn.execute("INSERT INTO _db4_fts_articles (_db4_fts_articles, rank) VALUES ('integrity-check', 1)", [])?;
        for stmt in drop_ddl("articles") {
            conn.execute_batch(&stmt)?;
        }
        Ok(())
    }
}
