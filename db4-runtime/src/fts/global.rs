//! Full-text search over several databases (the shards of a router) ranked as one database
//! holding all their documents would rank it.
//!
//! FTS5's `bm25()` scores a row `D` for a query of phrases `p` as
//!
//! ```text
//! score(D) = Σ_p IDF(p) · f(p, D) · (k1 + 1) / (f(p, D) + k1 · (1 − b + b · |D| / avgdl))
//! IDF(p)   = ln((N − n(p) + 0.5) / (n(p) + 0.5)), or 1e-6 where that is not positive
//! ```
//!
//! with `k1 = 1.2`, `b = 0.75`, `N` the rows of the table, `avgdl` its tokens per row, `n(p)`
//! the rows matching the phrase alone, `|D|` the row's tokens and `f(p, D)` the sum, over the
//! instances of `p` FTS5 reports for the row, of the weight of the instance's column. `N`,
//! `avgdl` and `n(p)` are the corpus's: per-shard `bm25()` uses each shard's own, and merging
//! those scores ranks differently from one database. So each shard reports, with only
//! FTS5's own functions and shadow tables:
//!
//! - `N` and the tokens of each column: the averages record (rowid 1) of `<fts>_data`;
//! - `n(p)` for each phrase: `count(*)` of the phrase alone, with its field filters;
//! - for each match: its id, `|D|` (its `<fts>_docsize` record) and, for each phrase and each
//!   column, the phrase's instances in the column. Those come from `bm25()` itself: the phrase
//!   matched alone, with the weight 1 on that column and 0 on the others, scores
//!   `IDF · h · (k1 + 1) / (h + K)`, which gives back `h` (an integer, so rounding makes it
//!   exact) from the shard's own `IDF` and `K`.
//!
//! The router adds up the statistics, and scores every match with the totals in the same
//! floating-point operations, in the same order, as `bm25()` (the weights added instance by
//! instance, column by column), so a score equals, bit for bit, the one a single database
//! holding every document gives.
//!
//! FTS5 reports no instance of a phrase for a row when an `AND` (or `NOT`) above it fails
//! there although the row matches through another branch of an `OR`: `(a AND c) OR b` on a
//! row with `a` and `b` but no `c` counts `b` only. So each phrase carries the branches of the
//! `OR`s above it that must match too (its *context*), and a phrase under a `NOT`'s excluded
//! side counts nothing. See `docs/sharding.md`, "Search across shards".

use crate::backend::Connection;
use crate::error::{Error, Result};
use crate::fts::engine::{self, Hit};
pub(crate) use crate::fts::engine::{Options, Target};
use crate::fts::query::{QueryNode, SearchQuery, node_to_fts5, parse_in, to_fts5};
use crate::query::filter::Expr;
use crate::schema::quote_ident;
use crate::store::codec::{decode, with_id};
use crate::store::meta::CollectionMeta;
use crate::value::{Value, ValueRef};

/// BM25's constants, as FTS5 has them.
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// One phrase of a query, in FTS5's order of phrases (the order they appear in the
/// expression).
#[derive(Debug, Clone)]
pub(crate) struct Phrase {
    /// The phrase alone, with the field filters above it: what its `n(p)` counts.
    pub alone: String,
    /// What a row must also match for FTS5 to report the phrase's instances in it (the
    /// branches of the `OR`s above it), if anything.
    pub context: Option<String>,
    /// Under the excluded side of a `NOT`: FTS5 reports no instance in a matching row.
    pub never: bool,
}

/// A query ready to run on every shard: the whole expression and its phrases.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The FTS5 expression of the whole query.
    pub expression: String,
    pub phrases: Vec<Phrase>,
}

/// Parses `input` and checks its fields against `target`'s, as a one-database search does.
pub(crate) fn prepare(target: &Target<'_>, input: &str) -> Result<Prepared> {
    let query: SearchQuery = parse_in(target.name, input)?;
    let allowed: Vec<&str> = target.fields.iter().map(|(name, _)| *name).collect();
    query.check_fields(target.name, &allowed)?;
    let mut phrases = Vec::new();
    collect(query.root(), &mut Vec::new(), &mut Vec::new(), false, &mut phrases);
    Ok(Prepared { expression: to_fts5(&query), phrases })
}

/// `node` under the field filters `fields` (outermost first).
fn under_fields(node: &QueryNode, fields: &[String]) -> QueryNode {
    fields
        .iter()
        .rev()
        .fold(node.clone(), |inner, field| QueryNode::Field { field: field.clone(), node: Box::new(inner) })
}

fn is_leaf(node: &QueryNode) -> bool {
    match node {
        QueryNode::Term { .. } | QueryNode::Phrase { .. } => true,
        QueryNode::Field { node, .. } => is_leaf(node),
        _ => false,
    }
}

fn collect(node: &QueryNode, fields: &mut Vec<String>, context: &mut Vec<String>, never: bool, out: &mut Vec<Phrase>) {
    match node {
        QueryNode::Term { .. } | QueryNode::Phrase { .. } => {
            let context = if context.is_empty() {
                None
            } else {
                Some(context.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" AND "))
            };
            out.push(Phrase { alone: node_to_fts5(&under_fields(node, fields)), context, never });
        }
        QueryNode::Field { field, node } => {
            fields.push(field.clone());
            collect(node, fields, context, never, out);
            fields.pop();
        }
        QueryNode::And(nodes) => {
            for n in nodes {
                collect(n, fields, context, never, out);
            }
        }
        QueryNode::Or(nodes) => {
            for n in nodes {
                // A leaf branch matches wherever the phrase has instances: no context needed.
                let pushed = !is_leaf(n);
                if pushed {
                    context.push(node_to_fts5(&under_fields(n, fields)));
                }
                collect(n, fields, context, never, out);
                if pushed {
                    context.pop();
                }
            }
        }
        QueryNode::Not { include, exclude } => {
            collect(include, fields, context, never, out);
            collect(exclude, fields, context, true, out);
        }
    }
}

/// One database's full-text statistics for a query.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    /// Rows of the FTS5 table.
    pub rows: i64,
    /// Tokens of all its columns.
    pub tokens: i64,
    /// Rows matching each phrase alone (0 for a phrase that never counts).
    pub phrase_rows: Vec<i64>,
}

/// The statistics of all the databases together, and the per-phrase IDF they give.
#[derive(Debug, Clone)]
pub(crate) struct Global {
    idf: Vec<f64>,
    avgdl: f64,
}

fn idf(rows: i64, hits: i64) -> f64 {
    let (n, h) = (rows as f64, hits as f64);
    let idf = ((n - h + 0.5) / (h + 0.5)).ln();
    if idf <= 0.0 { 1e-6 } else { idf }
}

impl Global {
    /// The totals of `parts` (one per database, each with the same phrases).
    pub fn combine(parts: &[Stats], phrases: usize) -> Self {
        let rows: i64 = parts.iter().map(|s| s.rows).sum();
        let tokens: i64 = parts.iter().map(|s| s.tokens).sum();
        let idf = (0..phrases).map(|p| idf(rows, parts.iter().map(|s| s.phrase_rows[p]).sum())).collect();
        Global { idf, avgdl: tokens as f64 / rows as f64 }
    }

    /// The score (higher is better: minus `bm25()`) of `m` with these statistics and the
    /// column weights `weights`, computed as FTS5 computes it.
    pub fn score(&self, m: &Match, weights: &[f64]) -> f64 {
        let columns = weights.len();
        let d = m.length as f64;
        let mut score = 0.0;
        for (p, idf) in self.idf.iter().enumerate() {
            let mut freq = 0.0;
            for (c, w) in weights.iter().enumerate() {
                for _ in 0..m.hits[p * columns + c] {
                    freq += w;
                }
            }
            score += idf * ((freq * (K1 + 1.0)) / (freq + K1 * (1.0 - B + B * d / self.avgdl)));
        }
        // bm25() returns -score, and a hit's score is -bm25() + 0.0 (no -0.0).
        -(-score) + 0.0
    }
}

/// One matching row of a database, with what its global score needs.
#[derive(Debug, Clone)]
pub(crate) struct Match {
    pub rowid: i64,
    pub id: Value,
    /// Tokens in the row (all columns).
    pub length: u64,
    /// Per phrase then per column: the instances FTS5 reports.
    pub hits: Vec<u32>,
}

/// Reads a SQLite varint (the format of FTS5's shadow records) at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let b = *buf.get(*at)?;
        *at += 1;
        if i == 8 {
            return Some((v << 8) | u64::from(b));
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads `count` varints from the start of `buf`.
fn varints(buf: &[u8], count: usize) -> Option<Vec<u64>> {
    let mut at = 0;
    (0..count).map(|_| varint(buf, &mut at)).collect()
}

fn integer(value: ValueRef<'_>, name: &str, what: &str) -> Result<i64> {
    match value {
        ValueRef::Integer(i) => Ok(i),
        _ => Err(Error::corrupted(name, None, format!("{what} is not an integer"))),
    }
}

/// The table's rows and tokens, from FTS5's averages record (absent in a table never written).
fn totals(conn: &dyn Connection, target: &Target<'_>) -> Result<(i64, i64)> {
    let data = quote_ident(&format!("{}_data", target.fts_table));
    let columns = target.fields.len();
    let mut out = None;
    let mut bad = false;
    conn.query(&format!("SELECT \"block\" FROM {data} WHERE \"id\" = 1"), &[], &mut |row| {
        // As FTS5 reads it: an empty record is an empty table, and columns past the end of
        // the record hold no token.
        let ValueRef::Blob(b) = row.get(0)? else {
            bad = true;
            return Ok(());
        };
        let mut at = 0;
        let mut rows = 0;
        let mut tokens = 0i64;
        if !b.is_empty() {
            let Some(n) = varint(b, &mut at) else {
                bad = true;
                return Ok(());
            };
            rows = i64::try_from(n).unwrap_or(i64::MAX);
        }
        for _ in 0..columns {
            if at >= b.len() {
                break;
            }
            let Some(n) = varint(b, &mut at) else {
                bad = true;
                return Ok(());
            };
            tokens = tokens.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
        }
        out = Some((rows, tokens));
        Ok(())
    })?;
    if bad {
        return Err(Error::corrupted(target.name, None, "the full-text index's averages record does not read"));
    }
    Ok(out.unwrap_or((0, 0)))
}

/// The statistics of `prepared` in one database.
pub(crate) fn stats(conn: &dyn Connection, target: &Target<'_>, prepared: &Prepared) -> Result<Stats> {
    let (rows, tokens) = totals(conn, target)?;
    let fts = quote_ident(&target.fts_table);
    let sql = format!("SELECT count(*) FROM {fts} WHERE {fts} MATCH ?1");
    let mut phrase_rows = Vec::with_capacity(prepared.phrases.len());
    for phrase in &prepared.phrases {
        let n = if phrase.never || rows == 0 {
            0
        } else {
            let n = crate::store::codec::count(conn, target.name, &sql, &[Value::Text(phrase.alone.clone())])?;
            i64::try_from(n).unwrap_or(i64::MAX)
        };
        phrase_rows.push(n);
    }
    Ok(Stats { rows, tokens, phrase_rows })
}

/// Every row of one database matching `prepared` and `filters`, with the instances of each
/// phrase in each column; `local` is that database's [`stats`], read in the same read.
pub(crate) fn matches(
    conn: &dyn Connection,
    meta: &CollectionMeta,
    target: &Target<'_>,
    prepared: &Prepared,
    filters: &[Expr],
    local: &Stats,
) -> Result<Vec<Match>> {
    let fts = quote_ident(&target.fts_table);
    let docsize = quote_ident(&format!("{}_docsize", target.fts_table));
    let columns = target.fields.len();
    let phrases = prepared.phrases.len();
    let mut sql = meta.statement();
    let matching = engine::Sink::bind(&mut sql, Value::Text(prepared.expression.clone()))?;
    sql.push(&format!(
        "SELECT f.rowid, t.\"_id\", d.\"sz\" FROM {fts} AS f JOIN {} AS t ON t.rowid = f.rowid \
         JOIN {docsize} AS d ON d.\"id\" = f.rowid WHERE f.{fts} MATCH {matching}",
        meta.table
    ));
    if !filters.is_empty() {
        sql.push(" AND ");
        sql.filters(filters, 1)?;
    }
    sql.push(" ORDER BY f.rowid");
    let (text, params) = sql.finish()?;
    let mut out: Vec<Match> = Vec::new();
    conn.query(&text, &params, &mut |row| {
        let rowid = integer(row.get(0)?, target.name, "a full-text rowid")?;
        let id = row.get(1)?.to_owned();
        let length = match row.get(2)? {
            ValueRef::Blob(b) => varints(b, columns).map(|v| v.iter().sum()),
            _ => None,
        }
        .ok_or_else(|| Error::corrupted(target.name, None, "a full-text document size record does not read"))?;
        out.push(Match { rowid, id, length, hits: vec![0; phrases * columns] });
        Ok(())
    })?;
    if out.is_empty() {
        return Ok(out);
    }
    let avgdl = local.tokens as f64 / local.rows as f64;
    // One bm25() per column, each weighing that column only.
    let mut calls = Vec::with_capacity(columns);
    for c in 0..columns {
        let weights: Vec<&str> = (0..columns).map(|i| if i == c { "1.0" } else { "0.0" }).collect();
        calls.push(format!("bm25(f.{fts}, {})", weights.join(", ")));
    }
    // `+f.rowid`: the list of the query's rows is built once and each of the phrase's rows
    // looked up in it. Offered to FTS5 as a rowid constraint instead, SQLite runs the phrase's
    // MATCH once per row of the list (25 times slower on 1 667 matches).
    let phrase_sql = format!(
        "SELECT f.rowid, {} FROM {fts} AS f WHERE f.{fts} MATCH ?1 AND +f.rowid IN \
         (SELECT g.rowid FROM {fts} AS g WHERE g.{fts} MATCH ?2) ORDER BY f.rowid",
        calls.join(", ")
    );
    for (p, phrase) in prepared.phrases.iter().enumerate() {
        if phrase.never {
            continue;
        }
        let scope = match &phrase.context {
            Some(context) => format!("({}) AND {context}", prepared.expression),
            None => prepared.expression.clone(),
        };
        let local_idf = idf(local.rows, local.phrase_rows[p]);
        let params = [Value::Text(phrase.alone.clone()), Value::Text(scope)];
        let mut at = 0usize;
        conn.query(&phrase_sql, &params, &mut |row| {
            let rowid = integer(row.get(0)?, target.name, "a full-text rowid")?;
            // Both lists are in rowid order; a row of the phrase that the filters left out is
            // skipped.
            while at < out.len() && out[at].rowid < rowid {
                at += 1;
            }
            let Some(m) = out.get_mut(at).filter(|m| m.rowid == rowid) else { return Ok(()) };
            let k = K1 * (1.0 - B + B * m.length as f64 / avgdl);
            for c in 0..columns {
                let s = match row.get(1 + c)? {
                    ValueRef::Real(r) => -r,
                    ValueRef::Integer(i) => -(i as f64),
                    _ => return Err(Error::corrupted(target.name, None, "bm25() returned no number")),
                };
                let h = if s == 0.0 { 0.0 } else { (s * k / (local_idf * (K1 + 1.0) - s)).round() };
                if !(0.0..=f64::from(u32::MAX)).contains(&h) {
                    return Err(Error::corrupted(
                        target.name,
                        None,
                        "the full-text statistics changed during the search (or do not add up)",
                    ));
                }
                m.hits[p * columns + c] = h as u32;
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// The documents of the rows `wanted` (rowid and id, as [`matches`] gave them), with the
/// highlights and snippet `options` ask for; a row whose id changed since is left out. The
/// score of each hit is left 0 for the caller to set.
pub(crate) fn page<T: crate::schema::Document>(
    conn: &dyn Connection,
    meta: &CollectionMeta,
    target: &Target<'_>,
    prepared: &Prepared,
    options: &Options,
    wanted: &[(i64, Value)],
) -> Result<Vec<(i64, Hit<T>)>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let fts = quote_ident(&target.fts_table);
    let mut sql = engine::Plain::default();
    let head = if meta.versioned { "t.\"_id\", t.\"_doc\", t.\"_version\"" } else { "t.\"_id\", t.\"_doc\"" };
    let width = if meta.versioned { 3 } else { 2 };
    let rowids = serde_json::Value::Array(wanted.iter().map(|(r, _)| serde_json::Value::from(*r)).collect());
    let list = engine::Sink::bind(&mut sql, Value::Text(rowids.to_string()))?;
    let markers = match (&options.highlight, options.snippet) {
        (Some((open, close)), _) => Some((open.clone(), close.clone())),
        (None, Some(_)) => Some((String::new(), String::new())),
        (None, None) => None,
    };
    let mut select = format!("SELECT t.rowid, {head}");
    let mut from = format!(" FROM {} AS t", meta.table);
    if let Some((open, close)) = &markers {
        let matching = engine::Sink::bind(&mut sql, Value::Text(prepared.expression.clone()))?;
        let open = engine::Sink::bind(&mut sql, Value::Text(open.clone()))?;
        let close = engine::Sink::bind(&mut sql, Value::Text(close.clone()))?;
        if options.highlight.is_some() {
            for (i, (name, _)) in target.fields.iter().enumerate() {
                let column = quote_ident(name);
                select.push_str(&format!(", f.{column}, highlight(f.{fts}, {i}, {open}, {close})"));
            }
        }
        if let Some(n) = options.snippet {
            let ellipsis = engine::Sink::bind(&mut sql, Value::Text(options.ellipsis.clone()))?;
            // `n` is checked to be 1..=64: a literal, like the column numbers.
            select.push_str(&format!(", snippet(f.{fts}, -1, {open}, {close}, {ellipsis}, {n})"));
        }
        from.push_str(&format!(" CROSS JOIN {fts} AS f ON f.rowid = t.rowid AND f.{fts} MATCH {matching}"));
    }
    sql.text = format!("{select}{from} WHERE t.rowid IN (SELECT value FROM json_each({list}))");
    let plain = options.highlight.as_ref().is_some_and(|(open, close)| open.is_empty() && close.is_empty());
    let mut out = Vec::with_capacity(wanted.len());
    conn.query(&sql.text, &sql.params, &mut |row| {
        let rowid = integer(row.get(0)?, target.name, "a rowid")?;
        let id = row.get(1)?.to_owned();
        if !wanted.iter().any(|(r, i)| *r == rowid && *i == id) {
            return Ok(());
        }
        let doc = decode::<T>(meta, row, 2).map_err(|e| with_id(e, &id))?;
        let mut at = 1 + width;
        let mut highlights = Vec::new();
        if options.highlight.is_some() {
            for (name, _) in &target.fields {
                let raw = text(row.get(at)?);
                let marked = text(row.get(at + 1)?);
                at += 2;
                if let (Some(raw), Some(marked)) = (raw, marked)
                    && (plain || raw != marked)
                {
                    highlights.push((*name, marked.to_owned()));
                }
            }
        }
        let snippet = if options.snippet.is_some() { text(row.get(at)?).map(str::to_owned) } else { None };
        out.push((rowid, Hit { doc, score: 0.0, highlights, snippet }));
        Ok(())
    })?;
    Ok(out)
}

/// What a search of `T`'s collection runs over.
pub(crate) fn target_of<T: crate::schema::Document>() -> Target<'static> {
    super::search::target(T::schema())
}

/// One database's part of a search: its statistics and, with `filters` (`None`: the
/// statistics only, for a database holding none of the searched documents), its matches.
pub(crate) fn part<T: crate::schema::Document>(
    c: &crate::Collection<T>,
    target: &Target<'_>,
    prepared: &Prepared,
    filters: Option<&[Expr]>,
) -> Result<(Stats, Vec<Match>)> {
    c.runner().read_fresh_meta(c.slot(), |conn, meta| {
        super::search::check_current(meta)?;
        let local = stats(conn, target, prepared).map_err(|e| engine::fts_error(e, meta.collection))?;
        let found = match filters {
            Some(filters) => matches(conn, meta, target, prepared, filters, &local)
                .map_err(|e| engine::fts_error(e, meta.collection))?,
            None => Vec::new(),
        };
        Ok((local, found))
    })
}

/// [`page`] on one database.
pub(crate) fn page_of<T: crate::schema::Document>(
    c: &crate::Collection<T>,
    target: &Target<'_>,
    prepared: &Prepared,
    options: &Options,
    wanted: &[(i64, Value)],
) -> Result<Vec<(i64, Hit<T>)>> {
    c.runner().read_fresh_meta(c.slot(), |conn, meta| {
        super::search::check_current(meta)?;
        page(conn, meta, target, prepared, options, wanted).map_err(|e| engine::fts_error(e, meta.collection))
    })
}

fn text<'r>(value: ValueRef<'r>) -> Option<&'r str> {
    match value {
        ValueRef::Text(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_as_sqlite_writes_them() {
        let mut at = 0;
        assert_eq!(varint(&[0x05], &mut at), Some(5));
        let mut at = 0;
        assert_eq!(varint(&[0x81, 0x00], &mut at), Some(128));
        assert_eq!(at, 2);
        let mut at = 0;
        assert_eq!(varint(&[0x81], &mut at), None);
        assert_eq!(varints(&[0x02, 0x83, 0x01, 0x07], 3), Some(vec![2, 385, 7]));
    }

    #[test]
    fn phrases_under_an_or_of_ands_carry_their_branch() -> Result<()> {
        let target = Target {
            name: "t",
            fts_table: "_db4_fts_t".into(),
            vocab_table: "_db4_fts_t_vocab".into(),
            fields: vec![("title", 2.0), ("body", 1.0)],
            tokenizer: crate::schema::Tokenizer::default(),
        };
        let p = prepare(&target, "((a AND c) OR title:b) NOT d")?;
        let alone: Vec<&str> = p.phrases.iter().map(|p| p.alone.as_str()).collect();
        assert_eq!(alone, ["\"a\"", "\"c\"", "title : \"b\"", "\"d\""], "{p:?}");
        assert_eq!(p.phrases[0].context.as_deref(), Some("(\"a\" AND \"c\")"));
        assert!(p.phrases[2].context.is_none());
        assert!(p.phrases[3].never);
        Ok(())
    }
}
