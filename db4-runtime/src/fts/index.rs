//! [`FullTextIndex`]: the search engine without the derive (the seed's
//! `createFullTextSearch`): named fields with weights, documents indexed and removed by id.
//!
//! An index `notes` is a table `_db4_fti_notes` (`_rowid INTEGER PRIMARY KEY`, `_id TEXT
//! UNIQUE`, one text column per field) with an FTS5 table `_db4_fti_notes_fts` over it as
//! external content, kept in step by the same kind of triggers as a collection's, and its
//! description in `_db4_fti`. The explicit integer key keeps FTS5's row ids stable.

use crate::backend::{Access, Connection};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::fts::engine::{self, Options, Plain, SearchResults, Target};
use crate::schema::fts::{RESERVED_COLUMNS, tokenize_option};
use crate::schema::{Tokenizer, quote_ident};
use crate::trace;
use crate::txn::Runner;
use crate::value::{Value, ValueRef};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

const REGISTRY: &str = "\"_db4_fti\"";

/// A full-text index of documents given as `(field, text)` pairs, stored in a [`Db`].
///
/// # Example
///
/// ```
/// use db4_runtime::fts::FullTextIndex;
/// use db4_runtime::{Db, Tokenizer};
///
/// # fn main() -> db4_runtime::Result<()> {
/// let db = Db::open_in_memory()?;
/// let index = FullTextIndex::create(&db, "articles_fts", &[("title", 2.0), ("body", 1.0)], Tokenizer::Porter)?;
/// index.index("art-1", &[("title", "Building edge databases"), ("body", "With Cloudflare and SQLite")])?;
/// index.index("art-2", &[("title", "Gardening"), ("body", "A database of plants")])?;
///
/// let res = index.search("database").highlight("<em>", "</em>").limit(10).run()?;
/// assert_eq!(res.hits[0].doc, "art-1"); // the title weighs twice
/// assert_eq!(res.hits[0].highlights, vec![("title", "Building edge <em>databases</em>".to_owned())]);
///
/// index.remove("art-1")?;
/// assert_eq!(index.search("database").run()?.hits.len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FullTextIndex {
    db: Db,
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    fields: Vec<(&'static str, f64)>,
    tokenizer: Tokenizer,
    content: String,
    fts: String,
    upsert: String,
    delete: String,
}

impl std::fmt::Debug for FullTextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FullTextIndex")
            .field("name", &self.inner.name)
            .field("fields", &self.inner.fields)
            .field("tokenizer", &self.inner.tokenizer)
            .finish()
    }
}

/// What `_db4_fti` records of an index.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Description {
    fields: Vec<(String, f64)>,
    tokenizer: Tokenizer,
}

/// Field names live as long as the program, as a collection's do: each distinct name is
/// kept once.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<std::collections::HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

impl FullTextIndex {
    /// Opens the index `name` in `db`, creating it with `fields` (name and BM25 weight, at
    /// most 31) and `tokenizer` if it does not exist. An existing index with other fields or
    /// another tokenizer is rebuilt for the new ones, in one transaction (its documents keep
    /// the fields both have); one with other weights only is just ranked with the new ones.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaMismatch`] for an invalid name (1-64 ASCII letters, digits or `_`), no
    /// field, more than 31, a field name that is not an ASCII identifier or is reserved
    /// (`rank`, `rowid`, `_id`, ...), the same field twice, or a weight that is not a positive
    /// finite number.
    pub fn create(db: &Db, name: &str, fields: &[(&str, f64)], tokenizer: Tokenizer) -> Result<Self> {
        let _span = trace::op("fts_index_create", Some(name));
        validate(name, fields)?;
        let fields: Vec<(&'static str, f64)> = fields.iter().map(|(f, w)| (intern(f), *w)).collect();
        let content = format!("_db4_fti_{name}");
        let fts = format!("_db4_fti_{name}_fts");
        let columns: Vec<String> = fields.iter().map(|(f, _)| quote_ident(f)).collect();
        let placeholders: Vec<String> = (2..fields.len() + 2).map(|i| format!("?{i}")).collect();
        let updates: Vec<String> = columns.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        let inner = Inner {
            upsert: format!(
                "INSERT INTO {} (\"_id\", {}) VALUES (?1, {}) ON CONFLICT(\"_id\") DO UPDATE SET {}",
                quote_ident(&content),
                columns.join(", "),
                placeholders.join(", "),
                updates.join(", ")
            ),
            delete: format!("DELETE FROM {} WHERE \"_id\" = ?1", quote_ident(&content)),
            name: name.to_owned(),
            fields,
            tokenizer,
            content,
            fts,
        };
        let wanted =
            Description { fields: inner.fields.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect(), tokenizer };
        Runner::Db(db).write(Access::Atomic, |w| inner.ensure(w.conn, &wanted))?;
        Ok(Self { db: db.clone(), inner: Arc::new(inner) })
    }

    /// The index's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Indexes the document `id` with the text of its fields, replacing what was indexed
    /// under `id`. Fields not given are indexed as empty; the whole call is one transaction.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`] for an empty id, a field the index does not have or a field
    /// given twice; nothing is written then.
    pub fn index(&self, id: &str, fields: &[(&str, &str)]) -> Result<()> {
        let _span = trace::op("fts_index", Some(&self.inner.name));
        let params = self.params(id, fields)?;
        self.run_write(|conn| conn.execute(&self.inner.upsert, &params).map(drop))
    }

    /// Indexes many documents in one transaction (see [`index`](Self::index)).
    ///
    /// # Errors
    ///
    /// As [`index`](Self::index); nothing is written if one document is refused.
    pub fn index_many<'a>(&self, docs: impl IntoIterator<Item = (&'a str, &'a [(&'a str, &'a str)])>) -> Result<()> {
        let _span = trace::op("fts_index_many", Some(&self.inner.name));
        let all = docs.into_iter().map(|(id, fields)| self.params(id, fields)).collect::<Result<Vec<_>>>()?;
        self.run_write(|conn| {
            for params in &all {
                conn.execute(&self.inner.upsert, params)?;
            }
            Ok(())
        })
    }

    /// Removes the document `id`; returns whether it was indexed.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let _span = trace::op("fts_remove", Some(&self.inner.name));
        let mut n = 0;
        self.run_write(|conn| {
            n = conn.execute(&self.inner.delete, &[Value::Text(id.to_owned())])?;
            Ok(())
        })?;
        Ok(n > 0)
    }

    /// How many documents are indexed.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn len(&self) -> Result<u64> {
        let sql = format!("SELECT count(*) FROM {}", quote_ident(&self.inner.content));
        Runner::Db(&self.db).read(|conn| crate::store::codec::count(conn, &self.inner.name, &sql, &[]))
    }

    /// Whether no document is indexed.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Starts a search of `query`, with the same options and query language as
    /// [`Collection::search`](crate::Collection::search); the hits' documents are ids.
    pub fn search(&self, query: &str) -> IndexSearch<'_> {
        IndexSearch { index: self, query: query.to_owned(), options: Options::default() }
    }

    /// Writes through the database's writer, atomically. The index's tables are db4's own,
    /// not a collection's: no change is recorded for them.
    fn run_write(&self, f: impl FnOnce(&dyn Connection) -> Result<()>) -> Result<()> {
        Runner::Db(&self.db).write(Access::Atomic, |w| f(w.conn))
    }

    fn params(&self, id: &str, fields: &[(&str, &str)]) -> Result<Vec<Value>> {
        let invalid = |field: &str, reason: String| Error::invalid_value(&self.inner.name, field, reason);
        if id.is_empty() {
            return Err(invalid("_id", "the id is empty".into()));
        }
        let mut params = vec![Value::Text(id.to_owned())];
        params.extend(std::iter::repeat_n(Value::Null, self.inner.fields.len()));
        for (field, text) in fields {
            let Some(i) = self.inner.fields.iter().position(|(f, _)| f == field) else {
                let known: Vec<&str> = self.inner.fields.iter().map(|(f, _)| *f).collect();
                return Err(invalid(field, format!("not a field of the index; its fields are {}", known.join(", "))));
            };
            if !matches!(params[i + 1], Value::Null) {
                return Err(invalid(field, "given twice".into()));
            }
            params[i + 1] = Value::Text((*text).to_owned());
        }
        Ok(params)
    }

    fn target(&self) -> Target<'_> {
        Target {
            name: &self.inner.name,
            fts_table: self.inner.fts.clone(),
            vocab_table: format!("{}_vocab", self.inner.fts),
            fields: self.inner.fields.clone(),
            tokenizer: self.inner.tokenizer,
        }
    }
}

impl Inner {
    /// Creates the index's tables, or rebuilds them when the description changed.
    fn ensure(&self, conn: &dyn Connection, wanted: &Description) -> Result<()> {
        conn.execute_ddl(&format!(
            "CREATE TABLE IF NOT EXISTS {REGISTRY} (\"name\" TEXT PRIMARY KEY NOT NULL, \"description\" TEXT NOT NULL)"
        ))?;
        let mut stored: Option<String> = None;
        conn.query(
            &format!("SELECT \"description\" FROM {REGISTRY} WHERE \"name\" = ?1"),
            &[Value::Text(self.name.clone())],
            &mut |row| {
                if let ValueRef::Text(t) = row.get(0)? {
                    stored = Some(t.to_owned());
                }
                Ok(())
            },
        )?;
        let stored: Option<Description> = stored.and_then(|s| serde_json::from_str(&s).ok());
        let same_shape = |d: &Description| {
            d.tokenizer == wanted.tokenizer && d.fields.iter().map(|(f, _)| f).eq(wanted.fields.iter().map(|(f, _)| f))
        };
        match &stored {
            Some(d) if same_shape(d) => {}
            Some(old) => {
                tracing::info!(index = %self.name, "db4: the full-text index's fields or tokenizer changed; rebuilding it");
                self.rebuild(conn, old)?;
            }
            None => {
                for stmt in self.ddl() {
                    conn.execute_ddl(&stmt)?;
                }
            }
        }
        if stored.as_ref() != Some(wanted) {
            let json = serde_json::to_string(wanted).map_err(|e| Error::serialization(&self.name, None, e))?;
            conn.execute(
                &format!(
                    "INSERT INTO {REGISTRY} (\"name\", \"description\") VALUES (?1, ?2) \
                     ON CONFLICT(\"name\") DO UPDATE SET \"description\" = excluded.\"description\""
                ),
                &[Value::Text(self.name.clone()), Value::Text(json)],
            )?;
        }
        Ok(())
    }

    /// Moves the documents to tables of the new shape: the fields both shapes have keep
    /// their text.
    fn rebuild(&self, conn: &dyn Connection, old: &Description) -> Result<()> {
        let content = quote_ident(&self.content);
        let previous = quote_ident(&format!("{}_previous", self.content));
        for stmt in self.drop_fts() {
            conn.execute_ddl(&stmt)?;
        }
        conn.execute_ddl(&format!("ALTER TABLE {content} RENAME TO {previous}"))?;
        for stmt in self.ddl() {
            conn.execute_ddl(&stmt)?;
        }
        let kept: Vec<String> = self
            .fields
            .iter()
            .filter(|(f, _)| old.fields.iter().any(|(o, _)| o == f))
            .map(|(f, _)| quote_ident(f))
            .collect();
        let columns = std::iter::once("\"_id\"".to_owned()).chain(kept).collect::<Vec<_>>().join(", ");
        conn.execute(&format!("INSERT INTO {content} ({columns}) SELECT {columns} FROM {previous}"), &[])?;
        conn.execute_ddl(&format!("DROP TABLE {previous}"))?;
        Ok(())
    }

    fn drop_fts(&self) -> Vec<String> {
        let mut out: Vec<String> = ["ins", "del", "upd"]
            .iter()
            .map(|what| format!("DROP TRIGGER IF EXISTS {}", quote_ident(&format!("{}_{what}", self.fts))))
            .collect();
        out.push(format!("DROP TABLE IF EXISTS {}", quote_ident(&format!("{}_vocab", self.fts))));
        out.push(format!("DROP TABLE IF EXISTS {}", quote_ident(&self.fts)));
        out
    }

    fn ddl(&self) -> Vec<String> {
        let content = quote_ident(&self.content);
        let fts = quote_ident(&self.fts);
        let columns: Vec<String> = self.fields.iter().map(|(f, _)| quote_ident(f)).collect();
        let list = columns.join(", ");
        let typed: Vec<String> = columns.iter().map(|c| format!("{c} TEXT")).collect();
        let of = |row: &str| columns.iter().map(|c| format!("{row}.{c}")).collect::<Vec<_>>().join(", ");
        let changed: Vec<String> = columns.iter().map(|c| format!("OLD.{c} IS NOT NEW.{c}")).collect();
        let insert_new = format!("INSERT INTO {fts} (rowid, {list}) VALUES (NEW.\"_rowid\", {});", of("NEW"));
        let delete_old =
            format!("INSERT INTO {fts} ({fts}, rowid, {list}) VALUES ('delete', OLD.\"_rowid\", {});", of("OLD"));
        let trigger = |what: &str| quote_ident(&format!("{}_{what}", self.fts));
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {content} (\"_rowid\" INTEGER PRIMARY KEY, \"_id\" TEXT UNIQUE NOT NULL, {})",
                typed.join(", ")
            ),
            format!(
                "CREATE VIRTUAL TABLE {fts} USING fts5({list}, content = '{}', content_rowid = '_rowid', tokenize = '{}')",
                self.content,
                tokenize_option(self.tokenizer)
            ),
            format!("CREATE TRIGGER {} AFTER INSERT ON {content} BEGIN {insert_new} END", trigger("ins")),
            format!("CREATE TRIGGER {} AFTER DELETE ON {content} BEGIN {delete_old} END", trigger("del")),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {content} WHEN {} BEGIN {delete_old} {insert_new} END",
                trigger("upd"),
                changed.join(" OR ")
            ),
            format!(
                "CREATE VIRTUAL TABLE {} USING fts5vocab({fts}, 'row')",
                quote_ident(&format!("{}_vocab", self.fts))
            ),
            format!("INSERT INTO {fts} ({fts}) VALUES ('rebuild')"),
        ]
    }
}

fn validate(name: &str, fields: &[(&str, f64)]) -> Result<()> {
    let mismatch = |field: &str, reason: String| Error::SchemaMismatch {
        collection: name.to_owned(),
        field: field.to_owned(),
        reason,
    };
    // The tables are `_db4_fti_<name>...`: any identifier fits behind the prefix.
    let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier || name.len() > 48 {
        return Err(mismatch(
            "",
            format!("index name `{name}` must be 1-48 ASCII letters, digits or `_`, not starting with a digit"),
        ));
    }
    let max = crate::limits::MAX_FUNCTION_ARGS - 1;
    if fields.is_empty() || fields.len() > max {
        return Err(mismatch("", format!("an index has 1 to {max} fields; {} were given", fields.len())));
    }
    for (i, (field, weight)) in fields.iter().enumerate() {
        if !crate::schema::is_valid_field_name(field)
            || field.starts_with(|c: char| c.is_ascii_digit())
            || RESERVED_COLUMNS.contains(&field.to_ascii_lowercase().as_str())
        {
            return Err(mismatch(
                field,
                "field names are ASCII identifiers of at most 64 characters, other than `rank`, `rowid` and `_id`"
                    .into(),
            ));
        }
        if fields[..i].iter().any(|(f, _)| f.eq_ignore_ascii_case(field)) {
            return Err(mismatch(field, "declared twice".into()));
        }
        if !(weight.is_finite() && *weight > 0.0) {
            return Err(mismatch(field, format!("weight {weight} must be a positive finite number")));
        }
    }
    Ok(())
}

/// A search of a [`FullTextIndex`], from [`FullTextIndex::search`]: the options of
/// [`Search`](crate::fts::Search) but `filter`; hits carry document ids.
#[must_use = "a search does nothing until `run` is called"]
#[derive(Debug)]
pub struct IndexSearch<'i> {
    index: &'i FullTextIndex,
    query: String,
    options: Options,
}

impl IndexSearch<'_> {
    engine::option_methods!();

    /// Runs the search.
    ///
    /// # Errors
    ///
    /// As [`Search::run`](crate::fts::Search::run).
    pub fn run(self) -> Result<SearchResults<String>> {
        let target = self.index.target();
        let span = trace::op("fts_search", Some(&self.index.inner.name));
        let out = (|| {
            self.options.check(target.name)?;
            Runner::Db(&self.index.db).read(|conn| {
                let expression = engine::match_expression(conn, &target, &self.options, &self.query)?;
                let content = quote_ident(&self.index.inner.content);
                let mut sql = Plain::default();
                let source = engine::Source { content: &content, head: "t.\"_id\"", width: 1 };
                let columns = engine::push_search(&mut sql, &target, &self.options, source, expression.clone(), None)?;
                let mut hits = Vec::new();
                conn.query(&sql.text, &sql.params, &mut |row| {
                    let ValueRef::Text(id) = row.get(0)? else {
                        return Err(Error::corrupted(target.name, None, "an indexed id is not text"));
                    };
                    let id = id.to_owned();
                    hits.push(engine::read_extras(row, &target, &columns)?.hit(id));
                    Ok(())
                })
                .map_err(|e| engine::fts_error(e, target.name))?;
                let total = match (self.options.with_total, self.options.min_score) {
                    (false, _) => None,
                    (true, None) => Some(engine::count_matches(conn, &target, &expression)?),
                    (true, Some(_)) => {
                        let mut sql = Plain::default();
                        engine::push_total(&mut sql, &target, &self.options, &content, expression, None)?;
                        Some(crate::store::codec::count(conn, target.name, &sql.text, &sql.params)?)
                    }
                };
                Ok(SearchResults { hits, total })
            })
        })();
        span.rows_of(out, |res| res.hits.len() as u64)
    }
}
