//! What a collection search and a [`FullTextIndex`](super::FullTextIndex) search share: the
//! options, the MATCH expression, the ranked statement and the hits read back from it.
//!
//! A search is one statement:
//!
//! ```text
//! SELECT <what the caller reads>, f.rank, [f.col, highlight(f.fts, i, ?, ?)]..., [snippet(...)]
//! FROM <fts table> AS f JOIN <content> AS t ON t.rowid = f.rowid
//! WHERE f.<fts> MATCH ?m AND f.rank MATCH 'bm25(w1, w2, ...)' [AND <filters>] [AND f.rank <= ?]
//! ORDER BY f.rank LIMIT ? OFFSET ?
//! ```
//!
//! FTS5 sorts by `rank` itself (the weights come with each query, so a change of weights
//! needs no rebuild), SQLite then reads the rows in that order and stops at the limit, so
//! `highlight()` and `snippet()` run only for the rows returned.

use crate::backend::{Connection, Row};
use crate::error::{BackendErrorKind, Error, Result};
use crate::fts::query::{parse_in, to_fts5};
use crate::schema::Tokenizer;
use crate::value::{Value, ValueRef};

/// One search result: the document (or, for a [`FullTextIndex`](super::FullTextIndex), the
/// id), its BM25 score (higher is better), the highlighted text of each field that matched
/// (if [`highlight`](super::Search::highlight) was asked for) and a snippet (if
/// [`snippet`](super::Search::snippet) was).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<T> {
    /// The matching document.
    pub doc: T,
    /// BM25 with the declared field weights; higher is more relevant. Scores compare within
    /// one search, not across searches.
    pub score: f64,
    /// `(field, text)` for each full-text field whose text holds a match, in field order, the
    /// matches wrapped in the highlight markers. Empty unless highlights were asked for.
    pub highlights: Vec<(&'static str, String)>,
    /// The best fragment of the best-matching field, matches wrapped in the highlight markers
    /// (none if no highlight was asked for), with the ellipsis where the text was cut. `None`
    /// unless a snippet was asked for.
    pub snippet: Option<String>,
}

/// The result of a search: the hits of the requested page, best first, and the number of
/// matching documents if [`with_total`](super::Search::with_total) asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults<T> {
    /// The hits, by descending score.
    pub hits: Vec<Hit<T>>,
    /// How many documents match in all (ignoring `limit` and `offset`), if asked for.
    pub total: Option<u64>,
}

/// The options of a search, shared by both builders.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub highlight: Option<(String, String)>,
    pub snippet: Option<usize>,
    pub ellipsis: String,
    pub limit: Option<usize>,
    pub offset: usize,
    pub min_score: Option<f64>,
    pub with_total: bool,
    pub typos: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            highlight: None,
            snippet: None,
            ellipsis: "…".to_owned(),
            limit: None,
            offset: 0,
            min_score: None,
            with_total: false,
            typos: false,
        }
    }
}

/// The option methods both search builders have (each has an `options: Options` field).
macro_rules! option_methods {
    () => {
        /// Returns, in each hit's [`highlights`](crate::fts::Hit::highlights), the text of every
        /// field that matched with each match wrapped in `start` and `end`.
        pub fn highlight(mut self, start: impl Into<String>, end: impl Into<String>) -> Self {
            self.options.highlight = Some((start.into(), end.into()));
            self
        }

        /// Returns, in each hit's [`snippet`](crate::fts::Hit::snippet), the fragment of at most
        /// `max_tokens` tokens (1 to [`MAX_SNIPPET_TOKENS`](crate::fts::MAX_SNIPPET_TOKENS))
        /// that best shows the matches, with matches marked as
        /// [`highlight`](Self::highlight) says.
        pub fn snippet(mut self, max_tokens: usize) -> Self {
            self.options.snippet = Some(max_tokens);
            self
        }

        /// The text put where a snippet cuts its field (default `…`).
        pub fn ellipsis(mut self, ellipsis: impl Into<String>) -> Self {
            self.options.ellipsis = ellipsis.into();
            self
        }

        /// Returns at most `n` hits.
        pub fn limit(mut self, n: usize) -> Self {
            self.options.limit = Some(n);
            self
        }

        /// Skips the first `n` hits.
        pub fn offset(mut self, n: usize) -> Self {
            self.options.offset = n;
            self
        }

        /// Keeps only hits scoring at least `score`.
        pub fn min_score(mut self, score: f64) -> Self {
            self.options.min_score = Some(score);
            self
        }

        /// Also counts every matching document (one more statement), in
        /// [`SearchResults::total`](crate::fts::SearchResults::total).
        pub fn with_total(mut self) -> Self {
            self.options.with_total = true;
            self
        }

        /// Tolerates typos: each plain term of at least 5 characters that matches nothing also
        /// matches indexed terms one edit away (two edits from 9 characters), found in the
        /// index's vocabulary (`docs/search.md`, "Typo tolerance").
        pub fn typos(mut self, on: bool) -> Self {
            self.options.typos = on;
            self
        }
    };
}
pub(crate) use option_methods;

/// What a search runs over.
pub(crate) struct Target<'a> {
    /// The collection or index searched (for errors).
    pub name: &'a str,
    /// The FTS5 table, unquoted.
    pub fts_table: String,
    /// Its fts5vocab table (for typo tolerance), unquoted.
    pub vocab_table: String,
    /// The full-text columns with their weights, in column order.
    pub fields: Vec<(&'static str, f64)>,
    pub tokenizer: Tokenizer,
}

/// Where a statement's text and parameters go: a collection's [`Statement`](crate::sql::Statement)
/// (which also renders its filters) or a plain one.
pub(crate) trait Sink {
    /// Appends SQL text generated by db4.
    fn push(&mut self, sql: &str);
    /// Binds a value and returns its placeholder.
    fn bind(&mut self, value: Value) -> Result<String>;
}

/// A statement with numbered parameters and nothing else.
#[derive(Default)]
pub(crate) struct Plain {
    pub text: String,
    pub params: Vec<Value>,
}

impl Sink for Plain {
    fn push(&mut self, sql: &str) {
        self.text.push_str(sql);
    }

    fn bind(&mut self, value: Value) -> Result<String> {
        self.params.push(value);
        Ok(format!("?{}", self.params.len()))
    }
}

impl Sink for crate::sql::Statement<'_> {
    fn push(&mut self, sql: &str) {
        crate::sql::Statement::push(self, sql);
    }

    fn bind(&mut self, value: Value) -> Result<String> {
        Ok(match crate::sql::Statement::bind(self, value)? {
            crate::sql::Slot::Param(n) => format!("?{n}"),
            crate::sql::Slot::Spilled { array, index } => format!("?{array}->>{index}"),
        })
    }
}

impl Options {
    /// Refuses options no statement can honour.
    pub fn check(&self, name: &str) -> Result<()> {
        if let Some(n) = self.snippet
            && !(1..=super::MAX_SNIPPET_TOKENS).contains(&n)
        {
            return Err(Error::invalid_query(
                name,
                format!("a snippet holds 1 to {} tokens; {n} was asked for", super::MAX_SNIPPET_TOKENS),
            ));
        }
        if let Some(s) = self.min_score
            && !s.is_finite()
        {
            return Err(Error::invalid_query(name, format!("min_score must be a finite number, not {s}")));
        }
        Ok(())
    }
}

/// The FTS5 expression for the caller's query: parsed, its fields checked against the
/// target's, expanded for typos if asked, rendered safely.
pub(crate) fn match_expression(
    conn: &dyn Connection,
    target: &Target<'_>,
    options: &Options,
    input: &str,
) -> Result<String> {
    let query = parse_in(target.name, input)?;
    let allowed: Vec<&str> = target.fields.iter().map(|(name, _)| *name).collect();
    query.check_fields(target.name, &allowed)?;
    let query = if options.typos { super::typos::expand(conn, target, &query)? } else { query };
    Ok(to_fts5(&query))
}

/// Where the extra columns of a search start, and which there are.
pub(crate) struct Columns {
    at: usize,
    highlight: bool,
    snippet: bool,
    plain_markers: bool,
}

/// The table a search reads documents from, and what it selects of them.
#[derive(Clone, Copy)]
pub(crate) struct Source<'a> {
    /// The content table (quoted), aliased `t`: a collection's table or an index's.
    pub content: &'a str,
    /// The columns of `t` each hit starts with.
    pub head: &'a str,
    /// How many they are.
    pub width: usize,
}

/// Conditions a caller adds to the match (a collection's filters), rendered into `S`.
pub(crate) type Conditions<'f, S> = Option<&'f dyn Fn(&mut S) -> Result<()>>;

/// The `bm25()` call ranking with the target's weights. The weights are validated finite
/// positive numbers, written as literals.
fn bm25(target: &Target<'_>) -> String {
    let fts = crate::schema::quote_ident(&target.fts_table);
    let weights: Vec<String> = target.fields.iter().map(|(_, w)| format!("{w:?}")).collect();
    format!("bm25(f.{fts}, {})", weights.join(", "))
}

/// Writes `<score> AS "s" FROM <fts> AS f [JOIN <content> AS t] WHERE <match> [AND
/// <conditions>]`: the matches with their BM25, as a select list continues.
fn push_matches<S: Sink>(
    sql: &mut S,
    target: &Target<'_>,
    content: &str,
    matching: &str,
    conditions: Conditions<'_, S>,
) -> Result<()> {
    let fts = crate::schema::quote_ident(&target.fts_table);
    sql.push(&format!("{} AS \"s\" FROM {fts} AS f", bm25(target)));
    if conditions.is_some() {
        sql.push(&format!(" JOIN {content} AS t ON t.rowid = f.rowid"));
    }
    sql.push(&format!(" WHERE f.{fts} MATCH {matching}"));
    if let Some(conditions) = conditions {
        sql.push(" AND ");
        conditions(sql)?;
    }
    Ok(())
}

/// Writes the ranked page of matches as the CTE `top` (`r`: rowid, `s`: BM25, lower is
/// better): the match and the caller's conditions, ordered by score then rowid, with the page.
/// SQLite's sorter keeps only `offset + limit` rows.
fn push_top<S: Sink>(
    sql: &mut S,
    target: &Target<'_>,
    content: &str,
    matching: &str,
    conditions: Conditions<'_, S>,
    options: &Options,
) -> Result<()> {
    sql.push("WITH \"top\" AS MATERIALIZED (SELECT f.rowid AS \"r\", ");
    push_matches(sql, target, content, matching, conditions)?;
    sql.push(" ORDER BY \"s\", \"r\"");
    if options.limit.is_some() || options.offset > 0 {
        let limit = options.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let offset = i64::try_from(options.offset).unwrap_or(i64::MAX);
        let limit = sql.bind(Value::Integer(limit))?;
        let offset = sql.bind(Value::Integer(offset))?;
        sql.push(&format!(" LIMIT {limit} OFFSET {offset}"));
    }
    sql.push(") ");
    Ok(())
}

/// Writes the whole search: the page of matches first (`top`), then, for those rows only, the
/// caller's columns (`head`, over `t`, the content table), the score, and the highlights and
/// snippet (over `f`, the FTS5 table matched again). Ranking all matches before reading any
/// text keeps `highlight()` and `snippet()` to the rows returned; FTS5 evaluates the second
/// match for those rowids only.
pub(crate) fn push_search<S: Sink>(
    sql: &mut S,
    target: &Target<'_>,
    options: &Options,
    source: Source<'_>,
    expression: String,
    conditions: Conditions<'_, S>,
) -> Result<Columns> {
    let Source { content, head, width: head_width } = source;
    let fts = crate::schema::quote_ident(&target.fts_table);
    let matching = sql.bind(Value::Text(expression))?;
    let markers = match (&options.highlight, options.snippet) {
        (Some((open, close)), _) => Some((sql.bind(Value::Text(open.clone()))?, sql.bind(Value::Text(close.clone()))?)),
        (None, Some(_)) => Some((sql.bind(Value::Text(String::new()))?, sql.bind(Value::Text(String::new()))?)),
        (None, None) => None,
    };
    let ellipsis = match options.snippet {
        Some(_) => Some(sql.bind(Value::Text(options.ellipsis.clone()))?),
        None => None,
    };
    let min = match options.min_score {
        // score = -bm25
        Some(min) => Some(sql.bind(Value::Real(-min))?),
        None => None,
    };
    push_top(sql, target, content, &matching, conditions, options)?;
    sql.push(&format!("SELECT {head}, \"top\".\"s\""));
    if let (Some((open, close)), Some(_)) = (&markers, &options.highlight) {
        for (i, (name, _)) in target.fields.iter().enumerate() {
            let column = crate::schema::quote_ident(name);
            sql.push(&format!(", f.{column}, highlight(f.{fts}, {i}, {open}, {close})"));
        }
    }
    if let (Some((open, close)), Some(n), Some(ellipsis)) = (&markers, options.snippet, &ellipsis) {
        // `n` is checked to be 1..=64: a literal, like the column numbers.
        sql.push(&format!(", snippet(f.{fts}, -1, {open}, {close}, {ellipsis}, {n})"));
    }
    // CROSS JOIN fixes the order: the page drives, each of its rows looked up by rowid (left
    // to the planner, SQLite may scan every match of the FTS5 table again instead).
    sql.push(&format!(" FROM \"top\" CROSS JOIN {content} AS t ON t.rowid = \"top\".\"r\""));
    if markers.is_some() {
        sql.push(&format!(" CROSS JOIN {fts} AS f ON f.rowid = \"top\".\"r\" AND f.{fts} MATCH {matching}"));
    }
    // The hits scoring at least `min` are a prefix of the order, so cutting the page is the
    // same as paging what passes.
    if let Some(min) = &min {
        sql.push(&format!(" WHERE \"top\".\"s\" <= {min}"));
    }
    sql.push(" ORDER BY \"top\".\"s\", \"top\".\"r\"");
    let plain_markers = options.highlight.as_ref().is_some_and(|(open, close)| open.is_empty() && close.is_empty());
    Ok(Columns {
        at: head_width,
        highlight: options.highlight.is_some(),
        snippet: options.snippet.is_some(),
        plain_markers,
    })
}

/// Writes the count of all matches passing the conditions and the score bound.
pub(crate) fn push_total<S: Sink>(
    sql: &mut S,
    target: &Target<'_>,
    options: &Options,
    content: &str,
    expression: String,
    conditions: Conditions<'_, S>,
) -> Result<()> {
    let matching = sql.bind(Value::Text(expression))?;
    let min = match options.min_score {
        Some(min) => Some(sql.bind(Value::Real(-min))?),
        None => None,
    };
    sql.push("SELECT count(*) FROM (SELECT ");
    push_matches(sql, target, content, &matching, conditions)?;
    sql.push(")");
    if let Some(min) = min {
        sql.push(&format!(" WHERE \"s\" <= {min}"));
    }
    Ok(())
}

/// What a hit has besides its document.
pub(crate) struct Extras {
    pub score: f64,
    pub highlights: Vec<(&'static str, String)>,
    pub snippet: Option<String>,
}

impl Extras {
    /// The hit of `doc` with these.
    pub fn hit<T>(self, doc: T) -> Hit<T> {
        Hit { doc, score: self.score, highlights: self.highlights, snippet: self.snippet }
    }
}

/// Reads a hit's score, highlights and snippet from `row`.
pub(crate) fn read_extras(row: &dyn Row, target: &Target<'_>, columns: &Columns) -> Result<Extras> {
    let mut at = columns.at;
    let score = match row.get(at)? {
        ValueRef::Real(r) => -r,
        ValueRef::Integer(i) => -(i as f64),
        _ => 0.0,
    } + 0.0; // no -0.0
    at += 1;
    let mut highlights = Vec::new();
    if columns.highlight {
        for (name, _) in &target.fields {
            let raw = text(row.get(at)?);
            let marked = text(row.get(at + 1)?);
            at += 2;
            if let (Some(raw), Some(marked)) = (raw, marked)
                && (columns.plain_markers || raw != marked)
            {
                highlights.push((*name, marked.to_owned()));
            }
        }
    }
    let snippet = if columns.snippet { text(row.get(at)?).map(str::to_owned) } else { None };
    Ok(Extras { score, highlights, snippet })
}

fn text<'r>(value: ValueRef<'r>) -> Option<&'r str> {
    match value {
        ValueRef::Text(s) => Some(s),
        _ => None,
    }
}

/// FTS5 reports what it cannot run as a plain SQLite error; the parser renders only
/// expressions FTS5 accepts, so one would be a db4 bug, but the caller still gets an
/// `InvalidQuery` rather than a raw backend error.
pub(crate) fn fts_error(e: Error, name: &str) -> Error {
    match &e {
        Error::Backend(b) if b.kind() == BackendErrorKind::Other && b.message().contains("fts5") => {
            Error::invalid_query(name, format!("the full-text engine refused the query: {}", b.message()))
        }
        _ => e,
    }
}

/// Counts the matches of `expression` (with no filter or score bound: no join needed).
pub(crate) fn count_matches(conn: &dyn Connection, target: &Target<'_>, expression: &str) -> Result<u64> {
    let fts = crate::schema::quote_ident(&target.fts_table);
    let sql = format!("SELECT count(*) FROM {fts} WHERE {fts} MATCH ?1");
    crate::store::codec::count(conn, target.name, &sql, &[Value::Text(expression.to_owned())])
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::schema::{FieldDef, IdKind, Schema};

    static FIELDS: [FieldDef; 3] = [
        FieldDef::new("id", "id", "String").id(),
        FieldDef::new("title", "title", "String").fts(2.0),
        FieldDef::new("body", "body", "String").fts(1.0),
    ];
    static NOTES: Schema = Schema::new("notes", "Note", &FIELDS);

    /// The plan: the page is ranked first (`top`, materialized, sorted by SQLite's sorter),
    /// and the highlights and snippet are read in the outer query, which scans only `top`.
    #[test]
    fn highlights_are_read_for_the_ranked_page_only() -> Result<()> {
        let conn = rusqlite::Connection::open_in_memory().map_err(|e| Error::invalid_query("t", e.to_string()))?;
        let ddl = NOTES.ddl(IdKind::Text).into_iter().chain(crate::schema::fts::create_ddl(&NOTES));
        for stmt in ddl {
            conn.execute_batch(&stmt).map_err(|e| Error::invalid_query("t", e.to_string()))?;
        }
        let target = crate::fts::search::target(&NOTES);
        let options = Options {
            highlight: Some(("[".into(), "]".into())),
            snippet: Some(8),
            limit: Some(20),
            ..Options::default()
        };
        let mut sql = Plain::default();
        let source = Source { content: "\"notes\"", head: "t.\"_id\"", width: 1 };
        push_search(&mut sql, &target, &options, source, "\"edge\"".into(), None)?;
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
            .map_err(|e| Error::invalid_query("t", format!("{e}: {}", sql.text)))?;
        let params = rusqlite::params_from_iter(sql.params.iter().map(|v| match v {
            Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Value::Integer(i) => rusqlite::types::Value::Integer(*i),
            _ => rusqlite::types::Value::Null,
        }));
        let plan: Vec<String> = stmt
            .query_map(params, |r| r.get::<_, String>(3))
            .and_then(|rows| rows.collect())
            .map_err(|e| Error::invalid_query("t", e.to_string()))?;
        assert!(plan.iter().any(|p| p.starts_with("MATERIALIZE top")), "{plan:?}");
        assert!(plan.iter().any(|p| p.starts_with("SCAN top")), "{plan:?}");
        // The second match is a lookup of each of the page's rowids, not a scan of every match.
        let outer: Vec<&String> = plan.iter().skip_while(|p| !p.starts_with("SCAN top")).collect();
        assert!(outer.iter().any(|p| p.contains("VIRTUAL TABLE INDEX 0:=")), "{plan:?}");
        assert!(!outer.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
        Ok(())
    }
}
