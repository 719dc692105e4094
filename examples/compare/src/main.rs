//! db4-compare: db4 against hand-written rusqlite doing the same work on the same data.
//!
//! Run with `cargo run --release -p db4-compare [-- --docs N | --quick | --wal-only]`. Every side gets the
//! same generated documents, the same pragmas (WAL, `synchronous = FULL`; the write
//! transactions are measured a second time with `NORMAL` on every side) and a fresh database
//! file under `target/`. The raw baseline uses exactly db4's table and indexes; a second raw
//! store with plain (application-filled) index columns shows what db4's layout choice costs.
//! Each measurement is repeated and the median reported; results and the written state are
//! cross-checked between the sides and against the generated data (and a model of the writes),
//! and the run aborts if they differ. A last section measures db4's write-ahead log on its
//! own (`MemoryWal::append`), which has no raw counterpart; `range` pages through every
//! document with keyset cursors; the full-text search section compares `Collection::search`
//! with hand-written FTS5 on a corpus of its own. See `docs/benchmarks.md`.

mod cdc;
mod cold;
mod corpus;
mod data;
mod fts;
mod layout;
mod measure;
mod range;
mod raw;
mod shard;
mod wal;
mod warm;

use data::{Doc, SEED, SplitMix64, Status, TENANTS};
use db4::{Collection, Db, DbOptions, Synchronous};
use measure::{Measurement, SIDES, Target, interleaved, write_rounds};
use raw::{BoxResult, Layout, RawStore};
use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The database files of the sides, in [`SIDES`] order, inside the `--dir` directory.
const FILES: [&str; SIDES.len()] = ["db4.sqlite", "raw.sqlite", "raw-stored.sqlite"];

/// `LIMIT` of both queries.
const QUERY_LIMIT: usize = 100;

/// Width of the `created_at` window of the range query: about 200 documents.
const RANGE_WINDOW_MS: i64 = 60_000;

/// The queries exactly as db4's query builder renders them (`db4-runtime/src/query.rs`); used
/// only to compare query plans with the hand-written ones.
const DB4_TENANT_QUERY_SQL: &str = r#"SELECT "_id", "_doc" FROM "docs" WHERE (("f_status" IS ?1) AND ("f_tenant" IS ?2)) ORDER BY "f_created_at" DESC, "_id" DESC LIMIT 100 OFFSET 0"#;
const DB4_RANGE_QUERY_SQL: &str = r#"SELECT "_id", "_doc" FROM "docs" WHERE ("f_created_at" BETWEEN ?1 AND ?2) ORDER BY "f_created_at" DESC, "_id" DESC LIMIT 100 OFFSET 0"#;

/// Documents updated by each transaction of the update benchmark.
const UPDATES_PER_TXN: usize = 10;

const USAGE: &str =
    "usage: db4-compare [--docs N] [--reps N] [--queries N] [--fts-queries N] [--txns N] [--dir PATH] [--db4-readers N] [--quick]

  --docs N         documents to insert, and point gets to run; articles of the full-text
                   section (default 100000)
  --reps N         timed repetitions of each measurement, median reported (default 5)
  --queries N      status+tenant queries per repetition; the range query runs 10×N (default 40)
  --fts-queries N  full-text queries per repetition (default 1000)
  --txns N         update transactions and increments per repetition with synchronous = FULL;
                   4×N with NORMAL; empty transactions: 20×N (default 500)
  --dir PATH       where the database files go (default: target/<profile>/db4-compare-data)
  --db4-readers N  size of db4's read-connection pool (default: db4's own default)
  --wal-records N  records per repetition of the write-ahead log section (default 1000000)
  --wal-only       run only the write-ahead log section (MemoryWal::append, no SQLite)
  --cdc-only       run only the change log section (log on versus off, changes_since)
  --fts-only       run only the full-text search section (search and indexing against FTS5)
  --shard-only     run only the shard router section (ring lookup, routed insert, top-100
                   scatter-gather over 16 shards, each against one database)
  --warm-only      run only the warm-tier section (warm-hit get against a raw get, the miss
                   path, the write overhead)
  --layout-only    run only the table-layout measurement (text ids: rowid against WITHOUT ROWID, raw)
  --cold-only      run only the cold tier section (compaction throughput, bytes saved, cold get
                   against hot get)
  --range-only     run only the insert, the two queries and the range section (keyset paging
                   through every document, the composite index)
  --quick          a smoke run: 2000 docs, 3 reps, 10 queries, 100 full-text queries, 20 txns,
                   100000 WAL records
                   (explicit flags still win)";

/// What to run, from the command line.
#[derive(Debug)]
struct Config {
    docs: usize,
    reps: usize,
    queries: usize,
    txns: usize,
    dir: PathBuf,
    /// db4's read-connection pool size, when not db4's default.
    db4_readers: Option<usize>,
    /// Records per repetition of the WAL section.
    wal_records: usize,
    /// Only the WAL section.
    wal_only: bool,
    /// Only the change log section.
    cdc_only: bool,
    /// Full-text queries per repetition.
    fts_queries: usize,
    /// Only the full-text search section.
    fts_only: bool,
    /// Only the insert, the queries and the range section.
    range_only: bool,
    /// Only the shard router section.
    shard_only: bool,
    /// Only the warm-tier section.
    warm_only: bool,
    /// Only the table-layout section (rowid against WITHOUT ROWID).
    layout_only: bool,
    /// Only the cold tier section.
    cold_only: bool,
}

impl Config {
    fn from_args() -> BoxResult<Self> {
        let mut args = std::env::args().skip(1);
        let (mut docs, mut reps, mut queries, mut txns, mut dir, mut db4_readers) =
            (None, None, None, None, None, None);
        let (mut quick, mut wal_only, mut cdc_only, mut range_only, mut wal_records) =
            (false, false, false, false, None);
        let (mut fts_only, mut fts_queries, mut shard_only, mut warm_only, mut layout_only, mut cold_only) =
            (false, None, false, false, false, false);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
            match arg.as_str() {
                "--docs" => docs = Some(value("--docs")?.parse::<usize>()?),
                "--reps" => reps = Some(value("--reps")?.parse::<usize>()?),
                "--queries" => queries = Some(value("--queries")?.parse::<usize>()?),
                "--txns" => txns = Some(value("--txns")?.parse::<usize>()?),
                "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
                "--db4-readers" => db4_readers = Some(value("--db4-readers")?.parse::<usize>()?),
                "--wal-records" => wal_records = Some(value("--wal-records")?.parse::<usize>()?),
                "--wal-only" => wal_only = true,
                "--cdc-only" => cdc_only = true,
                "--fts-queries" => fts_queries = Some(value("--fts-queries")?.parse::<usize>()?),
                "--fts-only" => fts_only = true,
                "--range-only" => range_only = true,
                "--shard-only" => shard_only = true,
                "--warm-only" => warm_only = true,
                "--layout-only" => layout_only = true,
                "--cold-only" => cold_only = true,
                "--quick" => quick = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`\n{USAGE}").into()),
            }
        }
        let dir = match dir {
            Some(dir) => dir,
            // The executable lives in target/<profile>/.
            None => std::env::current_exe()?.parent().ok_or("executable has no directory")?.join("db4-compare-data"),
        };
        let config = Self {
            docs: docs.unwrap_or(if quick { 2_000 } else { 100_000 }),
            reps: reps.unwrap_or(if quick { 3 } else { 5 }),
            queries: queries.unwrap_or(if quick { 10 } else { 40 }),
            txns: txns.unwrap_or(if quick { 20 } else { 500 }),
            dir,
            db4_readers,
            wal_records: wal_records.unwrap_or(if quick { 100_000 } else { 1_000_000 }),
            wal_only,
            cdc_only,
            fts_queries: fts_queries.unwrap_or(if quick { 100 } else { 1_000 }),
            fts_only,
            range_only,
            shard_only,
            warm_only,
            layout_only,
            cold_only,
        };
        if config.docs < UPDATES_PER_TXN
            || config.reps == 0
            || config.queries == 0
            || config.txns == 0
            || config.fts_queries == 0
            || config.wal_records < 4
        {
            return Err(format!(
                "--docs must be at least {UPDATES_PER_TXN}, --wal-records at least 4, --reps, --queries, --fts-queries \
                 and --txns at least 1"
            )
            .into());
        }
        Ok(config)
    }

    fn db4_options(&self) -> DbOptions {
        let mut options = DbOptions::default().synchronous(Synchronous::Full);
        if let Some(readers) = self.db4_readers {
            options.sqlite.readers = readers;
        }
        options
    }

    fn file(&self, side: usize) -> PathBuf {
        self.dir.join(FILES[side])
    }
}

/// The three stores the benchmarks after the insert run against, in [`SIDES`] order (plus
/// db4's `Db`, for transactions).
struct Stores {
    db: Db,
    db4: Collection<Doc>,
    raw: RawStore,
    stored: RawStore,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("db4-compare: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> BoxResult<()> {
    let config = Config::from_args()?;
    if config.wal_only {
        return run_wal(&config, &data::generate(config.docs.min(10_000)));
    }
    std::fs::create_dir_all(&config.dir)?;
    if config.fts_only {
        return fts::run(&config);
    }
    if config.shard_only {
        return shard::run(&config);
    }
    let docs = data::generate(config.docs);
    if config.warm_only {
        return warm::run(&config, &docs);
    }
    if config.layout_only {
        return layout::run(&config, &docs);
    }
    if config.cdc_only {
        return cdc::run(&config, &docs);
    }
    if config.cold_only {
        return cold::run(&config, &docs);
    }
    let json_bytes: usize = docs.iter().map(|d| serde_json::to_string(d).map(|s| s.len())).sum::<Result<_, _>>()?;
    println!("db4-compare: db4 vs hand-written rusqlite");
    println!(
        "  {} docs (avg {} bytes of JSON); {} timed reps per measurement, median reported",
        config.docs,
        json_bytes / config.docs,
        config.reps,
    );
    println!(
        "  SQLite {} (bundled), WAL, synchronous = FULL everywhere (then NORMAL everywhere for a second round of \
         write transactions); db4 read pool: {} connection(s)",
        rusqlite::version(),
        config.db4_options().sqlite.readers
    );
    println!("  files in {}", config.dir.display());
    println!("  build: {}", if cfg!(debug_assertions) { "DEBUG (numbers are meaningless)" } else { "release" });
    println!("  load average at start: {}", load_average());
    println!();

    let (insert, stores) = bench_insert(&config, &docs)?;
    if config.range_only {
        let mut measurements = vec![insert];
        measurements.push(bench_tenant_query(&config, &docs, &stores)?);
        measurements.push(bench_range_query(&config, &docs, &stores)?);
        measurements.extend(range::bench(&config, &docs, &stores)?);
        println!("load average at end: {}\n", load_average());
        measure::report(&measurements);
        return Ok(());
    }
    let gets = bench_gets(&config, &docs, &stores)?;
    let tenant_query = bench_tenant_query(&config, &docs, &stores)?;
    let range_query = bench_range_query(&config, &docs, &stores)?;
    let mut measurements = vec![insert, gets, tenant_query, range_query];
    measurements.extend(range::bench(&config, &docs, &stores)?);
    let mut model = Model { docs: &docs, changed: HashMap::new() };
    println!("load average before the write transactions: {}", load_average());
    measurements.extend(bench_writes(&config, &stores, &mut model, Synchronous::Full)?);
    let stores = switch_to_normal(&config, stores)?;
    measurements.extend(bench_writes(&config, &stores, &mut model, Synchronous::Normal)?);
    println!("load average at end: {}\n", load_average());
    measure::report(&measurements);
    println!();
    cdc::run(&config, &docs)?;
    println!();
    fts::run(&config)?;
    println!();
    shard::run(&config)?;
    println!();
    run_wal(&config, &docs[..docs.len().min(10_000)])
}

/// The write-ahead log section: `MemoryWal::append` throughput.
fn run_wal(config: &Config, docs: &[Doc]) -> BoxResult<()> {
    println!(
        "db4-compare: write-ahead log, {} records per rep ({} for document-sized ones), {} timed reps",
        config.wal_records,
        config.wal_records / 4,
        config.reps
    );
    println!("  build: {}", if cfg!(debug_assertions) { "DEBUG (numbers are meaningless)" } else { "release" });
    println!("  load average at start: {}\n", load_average());
    let figures = wal::bench(config.wal_records, config.reps, docs)?;
    wal::report(&figures);
    println!("\n  load average at end: {}", load_average());
    Ok(())
}

/// The 1, 5 and 15 minute load averages (Linux), to judge how quiet the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Deletes a SQLite database's files (main file, WAL and shared memory).
fn remove_database(path: &Path) -> BoxResult<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Opens a fresh db4 database and its `docs` collection (untimed), then times `insert_many`.
fn db4_insert(config: &Config, docs: &[Doc]) -> BoxResult<(Duration, (Db, Collection<Doc>))> {
    let path = config.file(0);
    remove_database(&path)?;
    let db = Db::open_with(&path, config.db4_options())?;
    let collection = db.collection::<Doc>()?;
    let start = Instant::now();
    collection.insert_many(docs)?;
    Ok((start.elapsed(), (db, collection)))
}

/// Opens a fresh raw database and creates its table (untimed), then times the bulk insert.
fn raw_insert(path: &Path, layout: Layout, docs: &[Doc]) -> BoxResult<(Duration, RawStore)> {
    remove_database(path)?;
    let mut store = RawStore::open(path, layout)?;
    let start = Instant::now();
    store.insert_all(docs)?;
    Ok((start.elapsed(), store))
}

/// Bulk insert into fresh files: one untimed warm-up round, then `reps` timed rounds, the side
/// going first rotating. The databases of the last round are returned for the read benchmarks.
fn bench_insert(config: &Config, docs: &[Doc]) -> BoxResult<(Measurement, Stores)> {
    let target = Some(Target::MinThroughputRatio(0.8));
    let mut m = Measurement::new("bulk insert (one transaction)", docs.len(), "docs", target);
    let mut kept: Option<Stores> = None;
    for round in 0..=config.reps {
        // Close the previous round's databases before their files are deleted.
        drop(kept.take());
        let (mut db4, mut raw, mut stored) = (None, None, None);
        let mut time = [Duration::ZERO; SIDES.len()];
        for turn in 0..SIDES.len() {
            let side = (round + turn) % SIDES.len();
            match side {
                0 => (time[0], db4) = db4_insert(config, docs).map(|(t, s)| (t, Some(s)))?,
                1 => {
                    (time[1], raw) = raw_insert(&config.file(1), Layout::Generated, docs).map(|(t, s)| (t, Some(s)))?
                }
                _ => {
                    (time[2], stored) = raw_insert(&config.file(2), Layout::Stored, docs).map(|(t, s)| (t, Some(s)))?
                }
            }
        }
        let (db, db4) = db4.ok_or("db4 did not run")?;
        let stores =
            Stores { db, db4, raw: raw.ok_or("raw did not run")?, stored: stored.ok_or("raw (stored) did not run")? };
        let counts = [stores.db4.count()?, stores.raw.count()?, stores.stored.count()?];
        if counts.iter().any(|&n| n != docs.len() as u64) {
            return Err(format!("insert: expected {} documents, found {counts:?} ({SIDES:?})", docs.len()).into());
        }
        if round == 0 {
            check_schemas(config, &stores)?;
        } else {
            m.push(time);
        }
        kept = Some(stores);
    }
    Ok((m, kept.ok_or("no insert round ran")?))
}

/// A read-only connection on db4's file, for the checks: db4 keeps its own connections private.
fn open_db4_file(config: &Config) -> BoxResult<rusqlite::Connection> {
    Ok(rusqlite::Connection::open_with_flags(config.file(0), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?)
}

/// The shape of the `docs` table: its `CREATE TABLE` text, and for each index its columns,
/// whether it is unique and how it came to be (`c`reated, `pk`). Index names are left out:
/// they do not change what SQLite does.
type TableShape = (String, Vec<(Vec<String>, bool, String)>);

fn docs_shape(conn: &rusqlite::Connection) -> BoxResult<TableShape> {
    let table: String =
        conn.query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'docs'", [], |r| r.get(0))?;
    let mut list = conn.prepare(r#"SELECT name, "unique", origin FROM pragma_index_list('docs')"#)?;
    let mut info = conn.prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
    let mut indexes = Vec::new();
    for index in list.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))? {
        let (name, unique, origin) = index?;
        let columns = info.query_map([&name], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        indexes.push((columns, unique, origin));
    }
    indexes.sort();
    Ok((table, indexes))
}

/// Aborts unless db4's file and the same-schema raw one hold the same table and indexes (and
/// the stored-columns one the same indexes), all in WAL mode.
fn check_schemas(config: &Config, stores: &Stores) -> BoxResult<()> {
    let db4_conn = open_db4_file(config)?;
    let shapes =
        [docs_shape(&db4_conn)?, docs_shape(stores.raw.connection())?, docs_shape(stores.stored.connection())?];
    if shapes[0] != shapes[1] || shapes[0].1 != shapes[2].1 {
        return Err(format!(
            "schemas differ:\n  db4: {:?}\n  raw: {:?}\n  raw, stored: {:?}",
            shapes[0], shapes[1], shapes[2]
        )
        .into());
    }
    for conn in [&db4_conn, stores.raw.connection(), stores.stored.connection()] {
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("a database is not in WAL mode ({mode})").into());
        }
    }
    println!("schema of db4 and of the same-schema raw store (identical, index names aside):");
    println!("  {}", shapes[0].0);
    for (columns, unique, origin) in &shapes[0].1 {
        let kind = if *unique { "unique index" } else { "index" };
        println!("  {kind} on ({}){}", columns.join(", "), if origin == "pk" { ", the primary key" } else { "" });
    }
    println!("the stored-columns raw store has the same indexes on plain columns:\n  {}\n", shapes[2].0);
    Ok(())
}

/// The `EXPLAIN QUERY PLAN` details of `sql`, all parameters NULL, with index names removed
/// (the sides may name their indexes differently; the plan shows the columns used).
fn query_plan(conn: &rusqlite::Connection, sql: &str) -> BoxResult<Vec<String>> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    let rows = stmt.query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))?;
    let without_index_name = |line: String| {
        let mut words: Vec<&str> = line.split(' ').collect();
        if let Some(i) = words.iter().position(|w| *w == "INDEX").filter(|i| i + 1 < words.len()) {
            words.remove(i + 1);
        }
        words.join(" ")
    };
    Ok(rows.map(|r| r.map(without_index_name)).collect::<Result<_, _>>()?)
}

/// Aborts unless SQLite plans db4's query and the same-schema hand-written one the same way;
/// returns the plan, and the stored-columns store's plan.
fn check_plans(config: &Config, stores: &Stores, db4_sql: &str, raw_sql: &str) -> BoxResult<(String, String)> {
    let db4_plan = query_plan(&open_db4_file(config)?, db4_sql)?;
    let raw_plan = query_plan(stores.raw.connection(), raw_sql)?;
    if db4_plan != raw_plan {
        return Err(format!("query plans differ:\n  db4: {db4_plan:?}\n  raw: {raw_plan:?}").into());
    }
    Ok((db4_plan.join("; "), query_plan(stores.stored.connection(), raw_sql)?.join("; ")))
}

/// Folds a document into a running checksum; every side must arrive at the same one.
fn fold(sum: u64, doc: &Doc) -> u64 {
    sum.rotate_left(5) ^ (doc.created_at as u64).wrapping_add(doc.body.len() as u64 + doc.tags.len() as u64)
}

/// Random point gets by id, each deserialized into a [`Doc`].
fn bench_gets(config: &Config, docs: &[Doc], stores: &Stores) -> BoxResult<Measurement> {
    let mut rng = SplitMix64::new(SEED ^ 0x6765_7473);
    let picks: Vec<&Doc> = (0..docs.len()).map(|_| &docs[rng.below(docs.len() as u64) as usize]).collect();
    let Stores { db4, raw, stored, .. } = stores;

    // Correctness, which doubles as the warm-up: each get returns the inserted document on
    // every side, and an unknown id returns nothing.
    for &doc in &picks {
        let found = [db4.get(doc.id.as_str())?, raw.get(&doc.id)?, stored.get(&doc.id)?];
        if found.iter().any(|d| d.as_ref() != Some(doc)) {
            return Err(format!("get {}: found {found:?} ({SIDES:?}), expected {doc:?}", doc.id).into());
        }
    }
    if db4.get("no-such-id")?.is_some() || raw.get("no-such-id")?.is_some() || stored.get("no-such-id")?.is_some() {
        return Err("get of an unknown id returned a document".into());
    }

    let ids: Vec<&str> = picks.iter().map(|d| d.id.as_str()).collect();
    let expected = picks.iter().fold(0, |sum, d| fold(sum, d));
    let missing = || "document missing";
    let db4_op = |&id: &&str, sum| Ok(fold(sum, &db4.get(black_box(id))?.ok_or_else(missing)?));
    let raw_op = |&id: &&str, sum| Ok(fold(sum, &raw.get(black_box(id))?.ok_or_else(missing)?));
    let stored_op = |&id: &&str, sum| Ok(fold(sum, &stored.get(black_box(id))?.ok_or_else(missing)?));
    let mut m = Measurement::new("point get by id", ids.len(), "gets", Some(Target::MaxTimeRatio(1.15)));
    interleaved(config.reps, &mut m, &ids, 1_000, expected, [&db4_op, &raw_op, &stored_op])?;
    Ok(m)
}

/// A query on one side, returning the documents it found.
type QueryOp<'a, I> = &'a dyn Fn(&I) -> BoxResult<Vec<Doc>>;

/// Runs the correctness pass of a query benchmark (which doubles as its warm-up): for each
/// item every side must return exactly `expected(item)`. Returns the checksum of all results
/// and the number of documents returned per side.
fn check_query_results<'d, I: std::fmt::Debug>(
    items: &[I],
    expected: impl Fn(&I) -> Vec<&'d Doc>,
    sides: [QueryOp<'_, I>; SIDES.len()],
) -> BoxResult<(u64, usize)> {
    let (mut sum, mut rows) = (0, 0);
    for item in items {
        let want = expected(item);
        for (side, run) in sides.iter().enumerate() {
            let got = run(item)?;
            if !got.iter().eq(want.iter().copied()) {
                return Err(format!(
                    "query {item:?}: {} returned {} docs, expected {} (or different ones)",
                    SIDES[side],
                    got.len(),
                    want.len()
                )
                .into());
            }
        }
        sum = want.iter().fold(sum, |sum, d| fold(sum, d));
        rows += want.len();
    }
    Ok((sum, rows))
}

/// The expected answers of the status+tenant query: the newest [`QUERY_LIMIT`] documents of
/// each (status, tenant), newest first.
fn newest_by_status_and_tenant(docs: &[Doc]) -> HashMap<(Status, &str), Vec<&Doc>> {
    let mut groups: HashMap<(Status, &str), Vec<&Doc>> = HashMap::new();
    for doc in docs {
        groups.entry((doc.status, doc.tenant.as_str())).or_default().push(doc);
    }
    for group in groups.values_mut() {
        group.sort_by_key(|d| std::cmp::Reverse(d.created_at));
        group.truncate(QUERY_LIMIT);
    }
    groups
}

/// `status = ? AND tenant = ? ORDER BY created_at DESC LIMIT 100` through db4's query builder.
fn db4_tenant_query(db4: &Collection<Doc>, status: Status, tenant: &str) -> db4::Result<Vec<Doc>> {
    let f = Doc::fields();
    db4.query()
        .filter(f.status.eq(status))
        .filter(f.tenant.eq(tenant))
        .order_by(f.created_at.desc())
        .limit(QUERY_LIMIT)
        .all()
}

/// The newest 100 documents of one tenant in one status, with varying parameters.
fn bench_tenant_query(config: &Config, docs: &[Doc], stores: &Stores) -> BoxResult<Measurement> {
    let mut rng = SplitMix64::new(SEED ^ 0x7175_6572);
    let params: Vec<(Status, String)> =
        (0..config.queries).map(|_| (Status::ALL[rng.below(4) as usize], data::tenant(rng.below(TENANTS)))).collect();
    let (plan, stored_plan) = check_plans(config, stores, DB4_TENANT_QUERY_SQL, raw::TENANT_QUERY)?;
    let Stores { db4, raw, stored, .. } = stores;
    let limit = QUERY_LIMIT as i64;

    let groups = newest_by_status_and_tenant(docs);
    let (expected, rows) = check_query_results(
        &params,
        |(s, t)| groups.get(&(*s, t.as_str())).cloned().unwrap_or_default(),
        [&|(s, t)| Ok(db4_tenant_query(db4, *s, t)?), &|(s, t)| raw.tenant_query(*s, t, limit), &|(s, t)| {
            stored.tenant_query(*s, t, limit)
        }],
    )?;
    println!("status+tenant query: {rows} documents from {} queries", params.len());
    println!("  plan: {plan}\n  plan on stored columns: {stored_plan}");

    let db4_op = |(s, t): &(Status, String), sum| Ok(db4_tenant_query(db4, *s, black_box(t))?.iter().fold(sum, fold));
    let raw_op = |(s, t): &(Status, String), sum| Ok(raw.tenant_query(*s, black_box(t), limit)?.iter().fold(sum, fold));
    let stored_op =
        |(s, t): &(Status, String), sum| Ok(stored.tenant_query(*s, black_box(t), limit)?.iter().fold(sum, fold));
    let name = "query status = ? AND tenant = ?, newest 100";
    // Served by the composite index on every side: db4's generated columns must cost nothing.
    let mut m =
        Measurement::new(name, params.len(), "queries", Some(Target::MaxTimeRatio(1.0))).against(SIDES.len() - 1);
    interleaved(config.reps, &mut m, &params, 2, expected, [&db4_op, &raw_op, &stored_op])?;
    Ok(m)
}

/// `created_at BETWEEN ? AND ? ORDER BY created_at DESC LIMIT 100` through db4.
fn db4_range_query(db4: &Collection<Doc>, low: i64, high: i64) -> db4::Result<Vec<Doc>> {
    let f = Doc::fields();
    db4.query().filter(f.created_at.between(low, high)).order_by(f.created_at.desc()).limit(QUERY_LIMIT).all()
}

/// The newest 100 documents in a one-minute `created_at` window (about 200 match): a cheap,
/// well-indexed query, where db4's own per-query work is most visible.
fn bench_range_query(config: &Config, docs: &[Doc], stores: &Stores) -> BoxResult<Measurement> {
    let mut by_time: Vec<&Doc> = docs.iter().collect();
    by_time.sort_by_key(|d| d.created_at);
    let (first, last) = (by_time[0].created_at, by_time[by_time.len() - 1].created_at);
    let span = (last - first - RANGE_WINDOW_MS).max(1) as u64;
    let mut rng = SplitMix64::new(SEED ^ 0x7261_6e67);
    let windows: Vec<(i64, i64)> = (0..config.queries * 10)
        .map(|_| {
            let low = first + rng.below(span) as i64;
            (low, low + RANGE_WINDOW_MS)
        })
        .collect();
    let (plan, stored_plan) = check_plans(config, stores, DB4_RANGE_QUERY_SQL, raw::RANGE_QUERY)?;
    let Stores { db4, raw, stored, .. } = stores;
    let limit = QUERY_LIMIT as i64;

    let (expected, rows) = check_query_results(
        &windows,
        |&(low, high)| {
            let from = by_time.partition_point(|d| d.created_at < low);
            let to = by_time.partition_point(|d| d.created_at <= high);
            by_time[from..to].iter().rev().take(QUERY_LIMIT).copied().collect()
        },
        [
            &|&(low, high)| Ok(db4_range_query(db4, low, high)?),
            &|&(low, high)| raw.range_query(low, high, limit),
            &|&(low, high)| stored.range_query(low, high, limit),
        ],
    )?;
    println!("created_at range query: {rows} documents from {} queries", windows.len());
    println!("  plan: {plan}\n  plan on stored columns: {stored_plan}\n");

    let db4_op =
        |&(low, high): &(i64, i64), sum| Ok(db4_range_query(db4, black_box(low), high)?.iter().fold(sum, fold));
    let raw_op =
        |&(low, high): &(i64, i64), sum| Ok(raw.range_query(black_box(low), high, limit)?.iter().fold(sum, fold));
    let stored_op =
        |&(low, high): &(i64, i64), sum| Ok(stored.range_query(black_box(low), high, limit)?.iter().fold(sum, fold));
    let name = "query created_at BETWEEN ? AND ?, newest 100";
    let mut m = Measurement::new(name, windows.len(), "queries", None);
    interleaved(config.reps, &mut m, &windows, 50, expected, [&db4_op, &raw_op, &stored_op])?;
    Ok(m)
}

/// What every document should hold while the write benchmarks change them: the generated
/// documents, overlaid with the ones written since.
struct Model<'d> {
    docs: &'d [Doc],
    changed: HashMap<usize, Doc>,
}

impl Model<'_> {
    fn current(&self, i: usize) -> &Doc {
        self.changed.get(&i).unwrap_or(&self.docs[i])
    }

    /// Adds 1 to document `i`'s `views` (what both an update and an increment do here) and
    /// returns its new content.
    fn bump(&mut self, i: usize) -> &Doc {
        let docs = self.docs;
        let doc = self.changed.entry(i).or_insert_with(|| docs[i].clone());
        doc.views += 1;
        doc
    }
}

/// Aborts unless every side stores exactly the model's JSON (byte for byte: all sides
/// serialize the same struct with serde_json) for each document in `touched`, db4's `get`
/// returns the model's document, and no side gained or lost a document.
fn check_written(config: &Config, stores: &Stores, model: &Model<'_>, touched: &BTreeSet<usize>) -> BoxResult<()> {
    let db4_conn = open_db4_file(config)?;
    let conns = [&db4_conn, stores.raw.connection(), stores.stored.connection()];
    let mut selects = conns
        .iter()
        .map(|c| c.prepare(r#"SELECT "_doc" FROM "docs" WHERE "_id" = ?1"#))
        .collect::<Result<Vec<_>, _>>()?;
    for &i in touched {
        let want = model.current(i);
        let want_json = serde_json::to_string(want)?;
        for (side, select) in selects.iter_mut().enumerate() {
            let json: String = select.query_row([&want.id], |r| r.get(0))?;
            if json != want_json {
                return Err(
                    format!("document {}: {} stores\n  {json}\nexpected\n  {want_json}", want.id, SIDES[side]).into()
                );
            }
        }
        if stores.db4.get(want.id.as_str())?.as_ref() != Some(want) {
            return Err(format!("document {}: db4's get does not return the written document", want.id).into());
        }
    }
    let counts = [stores.db4.count()?, stores.raw.count()?, stores.stored.count()?];
    if counts.iter().any(|&n| n != model.docs.len() as u64) {
        return Err(
            format!("after writes: expected {} documents, found {counts:?} ({SIDES:?})", model.docs.len()).into()
        );
    }
    Ok(())
}

/// Reopens db4 with `synchronous = NORMAL` and switches the raw connections to it too. db4's
/// last connection closing checkpoints its WAL, so the raw files are checkpointed as well.
fn switch_to_normal(config: &Config, stores: Stores) -> BoxResult<Stores> {
    let Stores { db, db4, raw, stored } = stores;
    drop(db4);
    drop(db);
    for store in [&raw, &stored] {
        store.connection().query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        store.set_synchronous(true)?;
    }
    let db = Db::open_with(config.file(0), config.db4_options().synchronous(Synchronous::Normal))?;
    let db4 = db.collection::<Doc>()?;
    Ok(Stores { db, db4, raw, stored })
}

/// The write transactions, each `BEGIN IMMEDIATE` … `COMMIT` on every side, at the
/// `synchronous` setting the stores are open with: empty transactions, transactions of
/// [`UPDATES_PER_TXN`] updates, and increments of a counter field.
fn bench_writes(
    config: &Config,
    stores: &Stores,
    model: &mut Model<'_>,
    sync: Synchronous,
) -> BoxResult<Vec<Measurement>> {
    let (label, txns, chunk) = match sync {
        Synchronous::Normal => ("synchronous = NORMAL", config.txns * 4, 100),
        _ => ("synchronous = FULL", config.txns, 10),
    };
    let Stores { db, db4, raw, stored } = stores;
    let (docs, n) = (model.docs, model.docs.len() as u64);
    let mut rng = SplitMix64::new(SEED ^ if sync == Synchronous::Normal { 0x6e6f_726d } else { 0x6675_6c6c });
    let mut out = Vec::new();

    // An empty transaction: what a transaction costs before it does anything.
    let empties = config.txns * 20;
    let db4_op = |_: &(), sum: u64| {
        db.transaction(|_tx| Ok(()))?;
        Ok(sum + 1)
    };
    let raw_op = |_: &(), sum: u64| raw.empty_transaction().map(|()| sum + 1);
    let stored_op = |_: &(), sum: u64| stored.empty_transaction().map(|()| sum + 1);
    let mut m = Measurement::new(format!("empty transaction, {label}"), empties, "txns", None);
    write_rounds(config.reps, &mut m, 500, || (vec![(); empties], empties as u64), [&db4_op, &raw_op, &stored_op])?;
    check_written(config, stores, model, &BTreeSet::new())?;
    out.push(m);

    // Transactions of 10 updates of known documents (no reads): each adds 1 to `views` of 10
    // distinct random documents, every side writing the same new contents.
    let mut touched = BTreeSet::new();
    let next_round = || {
        let batches: Vec<Vec<Doc>> = (0..txns)
            .map(|_| {
                let mut picked = Vec::with_capacity(UPDATES_PER_TXN);
                while picked.len() < UPDATES_PER_TXN {
                    let i = rng.below(n) as usize;
                    if !picked.contains(&i) {
                        picked.push(i);
                    }
                }
                touched.extend(&picked);
                picked.into_iter().map(|i| model.bump(i).clone()).collect()
            })
            .collect();
        let expected = batches.iter().flatten().fold(0, fold);
        (batches, expected)
    };
    let db4_op = |batch: &Vec<Doc>, sum: u64| {
        db.transaction(|tx| {
            let docs = tx.collection::<Doc>()?;
            batch.iter().try_for_each(|doc| docs.update(doc).map(drop))
        })?;
        Ok(batch.iter().fold(sum, fold))
    };
    let raw_op = |batch: &Vec<Doc>, sum: u64| raw.update_all(batch).map(|()| batch.iter().fold(sum, fold));
    let stored_op = |batch: &Vec<Doc>, sum: u64| stored.update_all(batch).map(|()| batch.iter().fold(sum, fold));
    let name = format!("transaction of {UPDATES_PER_TXN} updates, {label}");
    let mut m = Measurement::new(name, txns, "txns", Some(Target::MaxTimeRatio(1.3)));
    write_rounds(config.reps, &mut m, chunk, next_round, [&db4_op, &raw_op, &stored_op])?;
    check_written(config, stores, model, &touched)?;
    println!("{}: {} documents checked on every side", m.name(), touched.len());
    out.push(m);

    // Atomic increments of `views` on random documents; every side must return the same new
    // values (folded into the checksum) and end with the same documents.
    let mut touched = BTreeSet::new();
    let next_round = || {
        let picks: Vec<usize> = (0..txns).map(|_| rng.below(n) as usize).collect();
        touched.extend(&picks);
        let expected = picks.iter().fold(0, |sum, &i| counter_fold(sum, model.bump(i).views));
        (picks, expected)
    };
    let db4_op = |&i: &usize, sum| Ok(counter_fold(sum, db4.increment(docs[i].id.as_str(), Doc::fields().views, 1)?));
    let raw_op = |&i: &usize, sum| Ok(counter_fold(sum, raw.increment_views(&docs[i].id)?));
    let stored_op = |&i: &usize, sum| Ok(counter_fold(sum, stored.increment_views(&docs[i].id)?));
    let mut m = Measurement::new(format!("increment views, {label}"), txns, "increments", None);
    write_rounds(config.reps, &mut m, chunk * 2, next_round, [&db4_op, &raw_op, &stored_op])?;
    check_written(config, stores, model, &touched)?;
    println!("{}: {} documents checked on every side", m.name(), touched.len());
    out.push(m);
    Ok(out)
}

/// Folds a counter value returned by an increment into a running checksum.
fn counter_fold(sum: u64, value: u64) -> u64 {
    sum.rotate_left(7) ^ value
}
