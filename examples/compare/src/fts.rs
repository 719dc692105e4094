//! Full-text search (issue 10): db4's `Collection::search` against FTS5 written by hand on
//! rusqlite, same run, same corpus ([`corpus`](crate::corpus)).
//!
//! - **Search**: each query asks for the top 20 documents by BM25 (title 2.0, body 1.0, tags
//!   1.5), with every field highlighted in `<b>`…`</b>` and a 16-token snippet. db4 runs
//!   `search(q).highlight(..).snippet(16).limit(20)`; the raw side runs the statement a
//!   person would write ([`RAW_SEARCH`]: `highlight()`, `snippet()` and `bm25()` in the select
//!   list, `ORDER BY bm25(..) LIMIT 20`, joined to the documents) and deserializes the same
//!   20 documents. The two sides take turns in chunks of queries, the side going first
//!   rotating; every query is timed on its own for the percentiles.
//! - **Indexing**: `insert_many` of the corpus into a fresh file (FTS on; also with the change
//!   log off, and for a struct without `#[fts]`) against the raw side inserting the documents
//!   and their FTS5 rows in one transaction.
//!
//! Before timing, every query runs once on both sides: the top-20 id sets must agree, or
//! differ only among documents tied in score with the 20th; scores, snippets and highlights of
//! the documents both return are compared and the differences counted.

use crate::corpus::{self, Article, PlainArticle};
use crate::measure::{SideOp, format_duration, median};
use crate::raw::BoxResult;
use crate::{Config, remove_database};
use db4::fts::SearchResults;
use db4::{Collection, Db};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use std::collections::HashSet;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Hits per query.
const LIMIT: usize = 20;
/// Tokens per snippet.
const SNIPPET_TOKENS: usize = 16;
/// Queries one side runs before the other takes its turn.
const CHUNK: usize = 10;
/// db4's queries/s over raw's.
const SEARCH_TARGET: f64 = 1.5;
/// db4's documents/s over raw's.
const INSERT_TARGET: f64 = 0.8;
/// The field names, in column order, as db4 reports highlights.
const FIELDS: [&str; 3] = ["title", "body", "tags"];

const RAW_SCHEMA: &str = "
CREATE TABLE docs (id TEXT PRIMARY KEY NOT NULL, doc TEXT NOT NULL);
CREATE VIRTUAL TABLE t USING fts5(title, body, tags, tokenize = 'porter unicode61');";
const RAW_INSERT_DOC: &str = "INSERT INTO docs (id, doc) VALUES (?1, ?2)";
const RAW_INSERT_TEXT: &str = "INSERT INTO t (rowid, title, body, tags) VALUES (?1, ?2, ?3, ?4)";
/// The hand-written search.
pub const RAW_SEARCH: &str = "SELECT d.doc, highlight(t, 0, '<b>', '</b>'), highlight(t, 1, '<b>', '</b>'), \
    highlight(t, 2, '<b>', '</b>'), snippet(t, -1, '<b>', '</b>', '…', 16), bm25(t, 2.0, 1.0, 1.5) \
    FROM t JOIN docs AS d ON d.rowid = t.rowid WHERE t MATCH ?1 ORDER BY bm25(t, 2.0, 1.0, 1.5) LIMIT 20";
/// The shape of db4's statement (adopted from this diagnostic), on the raw file: the
/// top 20 ranked by SQLite's own sorter in a subquery, highlighted and snippeted afterwards, so
/// `highlight()` and `snippet()` run for 20 rows and FTS5 prepares no statement of its own.
const TOP_FIRST_SEARCH: &str = "WITH top AS (SELECT rowid AS r, bm25(t, 2.0, 1.0, 1.5) AS s FROM t WHERE t MATCH ?1 \
    ORDER BY s LIMIT 20) SELECT d.doc, highlight(t, 0, '<b>', '</b>'), highlight(t, 1, '<b>', '</b>'), \
    highlight(t, 2, '<b>', '</b>'), snippet(t, -1, '<b>', '</b>', '…', 16), top.s \
    FROM top JOIN t ON t.rowid = top.r JOIN docs AS d ON d.rowid = top.r WHERE t MATCH ?1 ORDER BY top.s";
const RAW_COUNT: &str = "SELECT count(*) FROM t WHERE t MATCH ?1";
/// db4's search exactly as it renders it (`db4-runtime/src/fts/engine.rs`), only to show its
/// query plan next to the hand-written one.
const DB4_SEARCH: &str = r#"WITH "top" AS MATERIALIZED (SELECT f.rowid AS "r", bm25(f."_db4_fts_articles", 2.0, 1.0, 1.5) AS "s" FROM "_db4_fts_articles" AS f WHERE f."_db4_fts_articles" MATCH ?1 ORDER BY "s", "r" LIMIT ?5 OFFSET ?6) SELECT t."_id", t."_doc", "top"."s", f."title", highlight(f."_db4_fts_articles", 0, ?2, ?3), f."body", highlight(f."_db4_fts_articles", 1, ?2, ?3), f."tags", highlight(f."_db4_fts_articles", 2, ?2, ?3), snippet(f."_db4_fts_articles", -1, ?2, ?3, ?4, 16) FROM "top" CROSS JOIN "articles" AS t ON t.rowid = "top"."r" CROSS JOIN "_db4_fts_articles" AS f ON f.rowid = "top"."r" AND f."_db4_fts_articles" MATCH ?1 ORDER BY "top"."s", "top"."r""#;

/// What db4's write pipeline runs beside each insert of an [`Article`] to index it
/// (`db4-runtime/src/schema/fts.rs`, `FtsSql::index`), written out for the by-hand side.
const DB4_INDEX: &str = r#"INSERT OR REPLACE INTO "_db4_fts_articles" (rowid, "title", "body", "tags") VALUES ((SELECT rowid FROM "articles" WHERE "_id" = ?1), CASE json_type(?2, '$."title"') WHEN 'array' THEN (SELECT group_concat("value", ' ') FROM json_each(?2, '$."title"')) ELSE json_extract(?2, '$."title"') END, CASE json_type(?2, '$."body"') WHEN 'array' THEN (SELECT group_concat("value", ' ') FROM json_each(?2, '$."body"')) ELSE json_extract(?2, '$."body"') END, CASE json_type(?2, '$."tags"') WHEN 'array' THEN (SELECT group_concat("value", ' ') FROM json_each(?2, '$."tags"')) ELSE json_extract(?2, '$."tags"') END)"#;

/// The sides of the search measurement, in the order of [`SearchFigures`]' arrays. The last
/// two are diagnostics: db4's statement run through rusqlite, to split db4's time between
/// SQLite and db4's own code, and [`TOP_FIRST_SEARCH`].
const SEARCH_SIDES: [&str; 4] = ["db4", "raw rusqlite", "db4's statement by hand", "top 20 first, by hand"];

/// One hit of the hand-written search.
#[derive(Debug)]
struct RawHit {
    doc: Article,
    /// Title, body and tags with the matches marked.
    highlights: [String; 3],
    snippet: String,
    /// `bm25()`: lower is better.
    bm25: f64,
}

/// The hand-written store: a documents table and an FTS5 table holding their text under the
/// same rowid.
struct RawIndex {
    conn: Connection,
}

impl RawIndex {
    /// Creates the tables in a fresh file, with db4's writer pragmas (WAL, `synchronous =
    /// FULL`, an 8 MiB WAL bound and a 64 MiB page cache), so an insert differs only in the
    /// work done.
    fn create(path: &Path) -> BoxResult<Self> {
        Self::create_with(path, RAW_SCHEMA)
    }

    /// As [`create`](Self::create), with another schema.
    fn create_with(path: &Path, schema: &str) -> BoxResult<Self> {
        remove_database(path)?;
        let conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("raw: journal_mode is {mode}, not WAL").into());
        }
        conn.execute_batch(
            "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 8388608; PRAGMA cache_size = -65536",
        )?;
        conn.execute_batch(schema)?;
        Ok(Self { conn })
    }

    /// Inserts every article and its text in one transaction: serialize, bind, execute twice.
    fn insert_all(&mut self, articles: &[Article]) -> BoxResult<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut doc = tx.prepare_cached(RAW_INSERT_DOC)?;
            let mut text = tx.prepare_cached(RAW_INSERT_TEXT)?;
            for a in articles {
                doc.execute(params![a.id, serde_json::to_string(a)?])?;
                text.execute(params![tx.last_insert_rowid(), a.title, a.body, a.tags.join(" ")])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// A read connection on the raw file with SQLite's default pragmas, as db4's readers have.
struct RawReader {
    conn: Connection,
}

impl RawReader {
    fn open(path: &Path) -> BoxResult<Self> {
        Ok(Self { conn: Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)? })
    }

    /// The MATCH string the simple way: each word quoted.
    fn expression(query: &str) -> String {
        query.split_whitespace().map(|w| format!("\"{}\"", w.replace('"', "\"\""))).collect::<Vec<_>>().join(" ")
    }

    fn search(&self, query: &str) -> BoxResult<Vec<RawHit>> {
        self.search_with(RAW_SEARCH, query)
    }

    /// Runs `sql`, a search whose columns are those of [`RAW_SEARCH`].
    fn search_with(&self, sql: &str, query: &str) -> BoxResult<Vec<RawHit>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query([Self::expression(query)])?;
        let mut hits = Vec::with_capacity(LIMIT);
        while let Some(row) = rows.next()? {
            hits.push(RawHit {
                doc: serde_json::from_str(row.get_ref(0)?.as_str()?)?,
                highlights: [row.get(1)?, row.get(2)?, row.get(3)?],
                snippet: row.get(4)?,
                bm25: row.get(5)?,
            });
        }
        Ok(hits)
    }

    /// db4's own statement ([`DB4_SEARCH`]), run by hand on db4's file: what the search costs
    /// in SQLite, without db4's Rust around it.
    fn db4_statement(&self, query: &str) -> BoxResult<Vec<RawHit>> {
        let mut stmt = self.conn.prepare_cached(DB4_SEARCH)?;
        let (limit, offset) = (LIMIT as i64, 0i64);
        let mut rows = stmt.query(params![Self::expression(query), "<b>", "</b>", "…", limit, offset])?;
        let mut hits = Vec::with_capacity(LIMIT);
        while let Some(row) = rows.next()? {
            hits.push(RawHit {
                doc: serde_json::from_str(row.get_ref(1)?.as_str()?)?,
                highlights: [row.get(4)?, row.get(6)?, row.get(8)?],
                snippet: row.get(9)?,
                bm25: row.get(2)?,
            });
        }
        Ok(hits)
    }

    fn count(&self, query: &str) -> BoxResult<u64> {
        let n: i64 = self.conn.prepare_cached(RAW_COUNT)?.query_row([Self::expression(query)], |r| r.get(0))?;
        Ok(u64::try_from(n)?)
    }
}

fn db4_search(articles: &Collection<Article>, query: &str) -> db4::Result<SearchResults<Article>> {
    articles.search(query).highlight("<b>", "</b>").snippet(SNIPPET_TOKENS).limit(LIMIT).run()
}

/// A checksum of one query's hits that ignores their order (tied scores may come in any).
fn fold_hits<'a>(sum: u64, hits: impl Iterator<Item = (&'a str, usize)>) -> u64 {
    hits.fold(sum, |sum, (id, snippet_len)| {
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        sum.wrapping_add(h ^ snippet_len as u64)
    })
}

fn db4_fold(sum: u64, res: &SearchResults<Article>) -> u64 {
    fold_hits(sum, res.hits.iter().map(|h| (h.doc.id.as_str(), h.snippet.as_ref().map_or(0, String::len))))
}

fn raw_fold(sum: u64, hits: &[RawHit]) -> u64 {
    fold_hits(sum, hits.iter().map(|h| (h.doc.id.as_str(), h.snippet.len())))
}

/// The files of the section, inside the `--dir` directory.
struct Files {
    db4: PathBuf,
    db4_no_log: PathBuf,
    db4_plain: PathBuf,
    raw: PathBuf,
    by_hand: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Self {
        Self {
            db4: dir.join("fts-db4.sqlite"),
            db4_no_log: dir.join("fts-db4-nolog.sqlite"),
            db4_plain: dir.join("fts-db4-plain.sqlite"),
            raw: dir.join("fts-raw.sqlite"),
            by_hand: dir.join("fts-by-hand.sqlite"),
        }
    }
}

/// The insert's sides, in the order of [`InsertFigures::times`].
/// The last is a diagnostic: rusqlite running db4's own statements on db4's own schema (the
/// document insert and the pipeline's index statement), to split db4's time between SQLite
/// and db4's own code.
const INSERT_SIDES: [&str; 5] = [
    "db4, #[fts]",
    "raw rusqlite, docs + FTS5",
    "db4, #[fts], change log off",
    "db4, no #[fts]",
    "db4's statements, by hand",
];

struct InsertFigures {
    times: [Vec<Duration>; INSERT_SIDES.len()],
    /// The CPU time the process used during each insert (user and system).
    cpu: [Vec<Duration>; INSERT_SIDES.len()],
}

/// Inserts the corpus into fresh files, every side each round, the side going first rotating;
/// round 0 is a warm-up. Returns the times and the last round's db4 (FTS, log on) database.
fn bench_insert(config: &Config, files: &Files, articles: &[Article]) -> BoxResult<(InsertFigures, Db)> {
    let plain: Vec<PlainArticle> = articles.iter().map(PlainArticle::from).collect();
    let schema = db4_schema(config, &files.by_hand)?;
    let mut times: [Vec<Duration>; INSERT_SIDES.len()] = Default::default();
    let mut cpu_times: [Vec<Duration>; INSERT_SIDES.len()] = Default::default();
    let mut kept = None;
    let n = articles.len() as u64;
    for round in 0..=config.reps {
        drop(kept.take());
        let mut elapsed = [Duration::ZERO; INSERT_SIDES.len()];
        let mut cpu = [Duration::ZERO; INSERT_SIDES.len()];
        for turn in 0..INSERT_SIDES.len() {
            let side = (round + turn) % INSERT_SIDES.len();
            match side {
                1 => {
                    let mut raw = RawIndex::create(&files.raw)?;
                    let (start, cpu_start) = (Instant::now(), cpu_time());
                    raw.insert_all(articles)?;
                    (elapsed[side], cpu[side]) = (start.elapsed(), cpu_time().saturating_sub(cpu_start));
                    let counts: (i64, i64) = raw.conn.query_row(
                        "SELECT (SELECT count(*) FROM docs), (SELECT count(*) FROM t)",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    if counts != (n as i64, n as i64) {
                        return Err(format!("raw insert: {counts:?} rows, expected {n} in each table").into());
                    }
                }
                4 => {
                    remove_database(&files.by_hand)?;
                    let mut conn = RawIndex::create_with(&files.by_hand, &schema.join(";\n"))?.conn;
                    let (start, cpu_start) = (Instant::now(), cpu_time());
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    {
                        let mut insert =
                            tx.prepare_cached(r#"INSERT INTO "articles" ("_id", "_doc") VALUES (?1, ?2)"#)?;
                        let mut index = tx.prepare_cached(DB4_INDEX)?;
                        for a in articles {
                            let json = serde_json::to_string(a)?;
                            insert.execute(params![a.id, json])?;
                            index.execute(params![a.id, json])?;
                        }
                    }
                    tx.commit()?;
                    (elapsed[side], cpu[side]) = (start.elapsed(), cpu_time().saturating_sub(cpu_start));
                    check_db4_index(&files.by_hand, n)?;
                }
                3 => {
                    remove_database(&files.db4_plain)?;
                    let db = Db::open_with(&files.db4_plain, config.db4_options())?;
                    let collection = db.collection::<PlainArticle>()?;
                    let (start, cpu_start) = (Instant::now(), cpu_time());
                    collection.insert_many(&plain)?;
                    (elapsed[side], cpu[side]) = (start.elapsed(), cpu_time().saturating_sub(cpu_start));
                    if collection.count()? != n {
                        return Err("db4 insert (no #[fts]): wrong document count".into());
                    }
                }
                _ => {
                    let (path, log) = if side == 0 { (&files.db4, true) } else { (&files.db4_no_log, false) };
                    remove_database(path)?;
                    let db = Db::open_with(path, config.db4_options().change_log(log))?;
                    let collection = db.collection::<Article>()?;
                    let (start, cpu_start) = (Instant::now(), cpu_time());
                    collection.insert_many(articles)?;
                    (elapsed[side], cpu[side]) = (start.elapsed(), cpu_time().saturating_sub(cpu_start));
                    check_db4_index(path, n)?;
                    if side == 0 {
                        kept = Some(db);
                    }
                }
            }
        }
        if round > 0 {
            for (times, t) in times.iter_mut().zip(elapsed) {
                times.push(t);
            }
            for (times, t) in cpu_times.iter_mut().zip(cpu) {
                times.push(t);
            }
        }
    }
    Ok((InsertFigures { times, cpu: cpu_times }, kept.ok_or("db4 did not run")?))
}

/// The CPU time this process has used, user and system (Linux; zero elsewhere), in clock
/// ticks of 10 ms: to tell an insert's computing from its waiting for the disk.
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Duration::ZERO };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 (from 0) after the name;
    // the kernel counts them in ticks of 1/100 s.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// The statements creating db4's table, FTS5 table, view and vocabulary table for [`Article`], read
/// back from a db4 file made for the purpose at `path` (FTS5's own shadow tables left out:
/// creating the FTS5 table creates them).
fn db4_schema(config: &Config, path: &Path) -> BoxResult<Vec<String>> {
    remove_database(path)?;
    drop(Db::open_with(path, config.db4_options())?.collection::<Article>()?);
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, name, sql) = row?;
        if name == "articles" || kind == "view" || sql.starts_with("CREATE VIRTUAL TABLE") {
            out.push(sql);
        }
    }
    if out.len() != 4 {
        return Err(format!("db4's full-text schema: expected 4 statements, found {out:?}").into());
    }
    Ok(out)
}

/// Aborts unless db4's file holds `n` documents and `n` rows in their FTS5 table.
fn check_db4_index(path: &Path, n: u64) -> BoxResult<()> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let counts: (i64, i64) = conn.query_row(
        r#"SELECT (SELECT count(*) FROM "articles"), (SELECT count(*) FROM "_db4_fts_articles")"#,
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if counts != (n as i64, n as i64) {
        return Err(format!("db4 insert: {counts:?} rows in (articles, FTS), expected {n} in each").into());
    }
    Ok(())
}

/// How the two sides' answers compared, over every query.
#[derive(Default, Debug)]
struct Agreement {
    /// Same ids in the same order.
    same_order: usize,
    /// Same ids, another order (ties).
    same_set: usize,
    /// Different ids, all among documents tied with the 20th.
    tied_at_cut: usize,
    /// Hits both returned whose scores differ by more than rounding.
    score_differs: usize,
    snippet_differs: usize,
    highlights_differ: usize,
    /// Hits compared (documents both sides returned for a query).
    compared: usize,
}

/// What db4's highlights should be given the raw side's: the fields whose text holds a match.
fn expected_highlights(hit: &RawHit) -> Vec<(&'static str, String)> {
    let text = [hit.doc.title.clone(), hit.doc.body.clone(), hit.doc.tags.join(" ")];
    FIELDS
        .iter()
        .zip(&hit.highlights)
        .zip(&text)
        .filter(|((_, h), t)| h != t)
        .map(|((f, h), _)| (*f, h.clone()))
        .collect()
}

/// Compares one query's answers; an error if the id sets differ other than through ties.
fn compare(query: &str, db4: &SearchResults<Article>, raw: &[RawHit], agreement: &mut Agreement) -> BoxResult<()> {
    let db4_ids: Vec<&str> = db4.hits.iter().map(|h| h.doc.id.as_str()).collect();
    let raw_ids: Vec<&str> = raw.iter().map(|h| h.doc.id.as_str()).collect();
    if db4_ids.len() != raw_ids.len() {
        return Err(format!("query {query:?}: db4 returned {} hits, raw {}", db4_ids.len(), raw_ids.len()).into());
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    if db4_ids == raw_ids {
        agreement.same_order += 1;
    } else {
        let (db4_set, raw_set): (HashSet<&str>, HashSet<&str>) =
            (db4_ids.iter().copied().collect(), raw_ids.iter().copied().collect());
        if db4_set == raw_set {
            agreement.same_set += 1;
        } else {
            // Only documents scoring as the last hit may be swapped for one another.
            let cut = raw.last().map_or(0.0, |h| -h.bm25);
            let tied_db4 =
                db4.hits.iter().filter(|h| !raw_set.contains(h.doc.id.as_str())).all(|h| close(h.score, cut));
            let tied_raw = raw.iter().filter(|h| !db4_set.contains(h.doc.id.as_str())).all(|h| close(-h.bm25, cut));
            if !(tied_db4 && tied_raw) {
                return Err(
                    format!("query {query:?}: top-{LIMIT} ids differ\n  db4: {db4_ids:?}\n  raw: {raw_ids:?}").into()
                );
            }
            agreement.tied_at_cut += 1;
        }
    }
    for hit in &db4.hits {
        let Some(other) = raw.iter().find(|r| r.doc.id == hit.doc.id) else { continue };
        agreement.compared += 1;
        if hit.doc != other.doc {
            return Err(format!("query {query:?}: document {} differs between the sides", hit.doc.id).into());
        }
        agreement.score_differs += usize::from(!close(hit.score, -other.bm25));
        agreement.snippet_differs += usize::from(hit.snippet.as_deref() != Some(other.snippet.as_str()));
        agreement.highlights_differ += usize::from(hit.highlights != expected_highlights(other));
    }
    Ok(())
}

/// Which share of the corpus a query matches, for the latency breakdown.
const BUCKETS: [(&str, u64); 5] =
    [("no match", 0), ("1–20", 20), ("21–1 000", 1_000), ("1 001–10 000", 10_000), ("> 10 000", u64::MAX)];

fn bucket(matches: u64) -> usize {
    BUCKETS.iter().position(|&(_, top)| matches <= top).unwrap_or(BUCKETS.len() - 1)
}

/// The `p`-th percentile (0..=100) of `times`, nearest rank.
fn percentile(times: &[Duration], p: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const SIDES: usize = SEARCH_SIDES.len();

struct SearchFigures {
    /// Per side: each repetition's total time.
    totals: [Vec<Duration>; SIDES],
    /// Per side: every query's time in every repetition, `latencies[side][rep * n + query]`.
    latencies: [Vec<Duration>; SIDES],
    /// Matches of each query.
    matches: Vec<u64>,
    agreement: Agreement,
}

/// Runs every query on every side once (checking the answers, and warming up), then `reps`
/// timed times, the sides taking turns in chunks of [`CHUNK`] queries.
fn bench_search(
    config: &Config,
    articles: &Collection<Article>,
    raw: &RawReader,
    by_hand: &RawReader,
    queries: &[String],
) -> BoxResult<SearchFigures> {
    let mut agreement = Agreement::default();
    let mut expected = [0u64; SIDES];
    let mut matches = Vec::with_capacity(queries.len());
    for q in queries {
        let db4 = db4_search(articles, q)?;
        let hits = raw.search(q)?;
        compare(q, &db4, &hits, &mut agreement)?;
        let own = by_hand.db4_statement(q)?;
        if !own.iter().map(|h| &h.doc.id).eq(db4.hits.iter().map(|h| &h.doc.id)) {
            return Err(format!("query {q:?}: db4's statement run by hand returns other hits than db4").into());
        }
        let top_first = raw.search_with(TOP_FIRST_SEARCH, q)?;
        compare(q, &db4, &top_first, &mut Agreement::default())?;
        expected = [
            db4_fold(expected[0], &db4),
            raw_fold(expected[1], &hits),
            raw_fold(expected[2], &own),
            raw_fold(expected[3], &top_first),
        ];
        matches.push(raw.count(q)?);
    }

    let db4_op = |q: &String, sum| Ok(db4_fold(sum, &db4_search(articles, black_box(q))?));
    let raw_op = |q: &String, sum| Ok(raw_fold(sum, &raw.search(black_box(q))?));
    let by_hand_op = |q: &String, sum| Ok(raw_fold(sum, &by_hand.db4_statement(black_box(q))?));
    let top_first_op = |q: &String, sum| Ok(raw_fold(sum, &raw.search_with(TOP_FIRST_SEARCH, black_box(q))?));
    let sides: [SideOp<'_, String>; SIDES] = [&db4_op, &raw_op, &by_hand_op, &top_first_op];
    let mut totals: [Vec<Duration>; SIDES] = Default::default();
    let mut latencies: [Vec<Duration>; SIDES] =
        std::array::from_fn(|_| vec![Duration::ZERO; queries.len() * config.reps]);
    for rep in 0..config.reps {
        let mut total = [Duration::ZERO; SIDES];
        let mut sum = [0u64; SIDES];
        for (k, chunk) in queries.chunks(CHUNK).enumerate() {
            for turn in 0..SIDES {
                let side = (rep + k + turn) % SIDES;
                for (j, q) in chunk.iter().enumerate() {
                    let start = Instant::now();
                    sum[side] = sides[side](q, sum[side])?;
                    let t = start.elapsed();
                    total[side] += t;
                    latencies[side][rep * queries.len() + k * CHUNK + j] = t;
                }
            }
        }
        if sum != expected {
            return Err(
                format!("search: a side's results changed between runs ({sum:?}, expected {expected:?})").into()
            );
        }
        for (totals, t) in totals.iter_mut().zip(total) {
            totals.push(t);
        }
    }
    Ok(SearchFigures { totals, latencies, matches, agreement })
}

/// The `EXPLAIN QUERY PLAN` lines of `sql`, all parameters NULL but the MATCH (`?1` on the
/// raw side, `?4` on db4's) and db4's rank function.
fn plan(conn: &Connection, sql: &str, params: &[(usize, &str)]) -> BoxResult<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let mut values = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
    for &(i, v) in params {
        values[i - 1] = rusqlite::types::Value::Text(v.to_owned());
    }
    let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| r.get::<_, String>(3))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?.join("; "))
}

fn rate(n: usize, d: Duration, unit: &str) -> String {
    let r = n as f64 / d.as_secs_f64();
    if r >= 1e3 { format!("{:.1} k {unit}/s", r / 1e3) } else { format!("{r:.0} {unit}/s") }
}

/// Runs the section and prints its figures.
pub fn run(config: &Config) -> BoxResult<()> {
    let vocab = corpus::vocabulary();
    let articles = corpus::articles(config.docs, &vocab);
    let queries = corpus::queries(config.fts_queries, &vocab);
    let words: usize = articles.iter().map(|a| a.body.split(' ').count()).sum();
    let json: usize = articles.iter().map(|a| serde_json::to_string(a).map(|s| s.len())).sum::<Result<_, _>>()?;
    println!("db4-compare: full-text search, db4 vs hand-written FTS5 on rusqlite, same run");
    println!(
        "  {} articles (vocabulary of {} words, Zipf; avg {} body words, {} bytes of JSON); {} queries of 1-2 words; \
         top {LIMIT} with highlight and {SNIPPET_TOKENS}-token snippet; {} timed reps, median reported",
        articles.len(),
        vocab.len(),
        words / articles.len().max(1),
        json / articles.len().max(1),
        queries.len(),
        config.reps
    );
    println!("  SQLite {} (bundled), WAL, synchronous = FULL", rusqlite::version());
    println!("  build: {}", if cfg!(debug_assertions) { "DEBUG (numbers are meaningless)" } else { "release" });
    println!("  load average at start: {}\n", crate::load_average());

    let files = Files::new(&config.dir);
    let (insert, db) = bench_insert(config, &files, &articles)?;
    println!("load average after the inserts: {}", crate::load_average());
    let collection = db.collection::<Article>()?;
    let raw = RawReader::open(&files.raw)?;
    let by_hand = RawReader::open(&files.db4)?;

    let sample = queries.first().map_or("", String::as_str);
    println!("query plans (MATCH {sample:?}):");
    println!("  db4: {}", plan(&by_hand.conn, DB4_SEARCH, &[(1, &RawReader::expression(sample))])?);
    println!("  raw: {}", plan(&raw.conn, RAW_SEARCH, &[(1, &RawReader::expression(sample))])?);
    println!("  top 20 first: {}\n", plan(&raw.conn, TOP_FIRST_SEARCH, &[(1, &RawReader::expression(sample))])?);

    let search = bench_search(config, &collection, &raw, &by_hand, &queries)?;
    println!("load average at end: {}\n", crate::load_average());
    report(config, &articles, &queries, &insert, &search);
    Ok(())
}

fn report(config: &Config, articles: &[Article], queries: &[String], insert: &InsertFigures, search: &SearchFigures) {
    let n = queries.len();
    let totals = search.totals.each_ref().map(|t| median(t));
    let throughput = totals[1].as_secs_f64() / totals[0].as_secs_f64();
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    println!(
        "| workload | db4 | raw rusqlite | db4 / raw | target | met | {} | {} |",
        SEARCH_SIDES[2], SEARCH_SIDES[3]
    );
    println!("| --- | ---: | ---: | ---: | --- | --- | ---: | ---: |");
    println!(
        "| search, {n} queries | {} | {} | {throughput:.2}× queries/s | ≥ {SEARCH_TARGET:.1}× | {} | {} | {} |",
        rate(n, totals[0], "queries"),
        rate(n, totals[1], "queries"),
        met(throughput >= SEARCH_TARGET),
        rate(n, totals[2], "queries"),
        rate(n, totals[3], "queries"),
    );
    for p in [50.0, 99.0] {
        let [d, r, h, t] = search.latencies.each_ref().map(|l| percentile(l, p));
        println!(
            "| search latency p{p:.0} | {} | {} | {:.2}× time | | | {} | {} |",
            format_duration(d),
            format_duration(r),
            d.as_secs_f64() / r.as_secs_f64(),
            format_duration(h),
            format_duration(t)
        );
    }
    let docs = articles.len();
    let raw_insert = median(&insert.times[1]);
    for (side, name) in INSERT_SIDES.iter().enumerate().filter(|&(side, _)| side != 1) {
        let t = median(&insert.times[side]);
        let ratio = raw_insert.as_secs_f64() / t.as_secs_f64();
        let (target, ok) = if side == 0 {
            (format!("≥ {INSERT_TARGET:.1}×"), met(ratio >= INSERT_TARGET))
        } else {
            (String::new(), "")
        };
        println!(
            "| insert_many, {docs} docs: {name} | {} ({}) | {} ({}) | {ratio:.2}× docs/s | {target} | {ok} | | |",
            format_duration(t),
            rate(docs, t, "docs"),
            format_duration(raw_insert),
            rate(docs, raw_insert, "docs")
        );
    }

    let a = &search.agreement;
    println!(
        "\ntop-{LIMIT} agreement over all {n} queries: {} same ids in the same order, {} same ids in another order, \
         {} differing only among documents tied with the last hit",
        a.same_order, a.same_set, a.tied_at_cut
    );
    println!(
        "  of {} hits both returned: {} scores, {} snippets and {} highlight lists differ",
        a.compared, a.score_differs, a.snippet_differs, a.highlights_differ
    );

    println!("\nlatency by how many documents a query matches (all reps; p50, then p99):");
    println!("| matches | queries | db4 | raw | db4 / raw p50 | {} | {} |", SEARCH_SIDES[2], SEARCH_SIDES[3]);
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (b, (name, _)) in BUCKETS.iter().enumerate() {
        let picked: Vec<usize> = (0..n).filter(|&q| bucket(search.matches[q]) == b).collect();
        if picked.is_empty() {
            continue;
        }
        let of = |side: usize| -> Vec<Duration> {
            (0..config.reps).flat_map(|rep| picked.iter().map(move |&q| search.latencies[side][rep * n + q])).collect()
        };
        let times: [Vec<Duration>; SIDES] = std::array::from_fn(of);
        let cell = |side: usize| {
            format!(
                "{} / {}",
                format_duration(percentile(&times[side], 50.0)),
                format_duration(percentile(&times[side], 99.0))
            )
        };
        let ratio = percentile(&times[0], 50.0).as_secs_f64() / percentile(&times[1], 50.0).as_secs_f64();
        println!("| {name} | {} | {} | {} | {ratio:.2}× | {} | {} |", picked.len(), cell(0), cell(1), cell(2), cell(3));
    }

    println!("\nper repetition:");
    let list = |times: &[Duration]| times.iter().map(|&t| format_duration(t)).collect::<Vec<_>>().join(", ");
    for (side, name) in SEARCH_SIDES.iter().enumerate() {
        println!("  search, {name}: {}", list(&search.totals[side]));
    }
    for (side, name) in INSERT_SIDES.iter().enumerate() {
        println!("  insert, {name}: {} (CPU time: {})", list(&insert.times[side]), list(&insert.cpu[side]));
    }
}
