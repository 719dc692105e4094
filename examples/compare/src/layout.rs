//! Issue 13, item 4: does a text-id collection get faster point reads stored `WITHOUT ROWID`?
//!
//! Two hand-written stores hold the same documents and the same indexes as db4's `docs`
//! collection, and differ only in the table's layout:
//!
//! - **rowid** (what db4 creates today): `"_id" TEXT PRIMARY KEY` on an ordinary table, so SQLite
//!   keeps the rows in a rowid B-tree and the id in an automatic unique index: a point read is
//!   two B-tree descents (index, then table);
//! - **without rowid**: the same columns with `WITHOUT ROWID`, the rows kept in the primary
//!   key's B-tree itself: one descent, but every interior cell holds a whole key and each leaf
//!   holds whole rows.
//!
//! Measured, same run, sides alternating in chunks: a hit (`get` of a present id, decoded with
//! serde_json), a miss (an id that is not there), the insert of all documents in one
//! transaction, and the file size. Both use WAL, `synchronous = FULL`, 4 KiB pages, cached
//! prepared statements.

use crate::Config;
use crate::data::{Doc, SplitMix64};
use crate::measure::{format_duration, median};
use crate::raw::BoxResult;
use rusqlite::{Connection, OptionalExtension, params};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

const NAMES: [&str; 2] = ["rowid", "without rowid"];

fn table(without_rowid: bool) -> String {
    format!(
        r#"CREATE TABLE "docs" ("_id" TEXT PRIMARY KEY NOT NULL, "_doc" TEXT NOT NULL,
            "f_tenant" GENERATED ALWAYS AS (json_extract("_doc", '$."tenant"')) VIRTUAL,
            "f_status" GENERATED ALWAYS AS (json_extract("_doc", '$."status"')) VIRTUAL,
            "f_created_at" GENERATED ALWAYS AS (json_extract("_doc", '$."created_at"')) VIRTUAL){};
         CREATE INDEX "docs_tenant" ON "docs" ("f_tenant", "_id");
         CREATE INDEX "docs_status" ON "docs" ("f_status", "_id");
         CREATE INDEX "docs_created_at" ON "docs" ("f_created_at", "_id");"#,
        if without_rowid { " WITHOUT ROWID" } else { "" }
    )
}

fn open(path: &Path, without_rowid: bool) -> BoxResult<Connection> {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    let conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA page_size = 4096;")?;
    conn.execute_batch(&table(without_rowid))?;
    Ok(conn)
}

fn insert_all(conn: &mut Connection, docs: &[(String, String)]) -> BoxResult<Duration> {
    let start = Instant::now();
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(r#"INSERT INTO "docs" ("_id", "_doc") VALUES (?1, ?2)"#)?;
        for (id, json) in docs {
            stmt.execute(params![id, json])?;
        }
    }
    tx.commit()?;
    Ok(start.elapsed())
}

/// Reads every id of `ids` in order; returns the time and how many were found.
fn read_all(conn: &Connection, ids: &[String]) -> BoxResult<(Duration, u64)> {
    let mut stmt = conn.prepare_cached(r#"SELECT "_doc" FROM "docs" WHERE "_id" = ?1"#)?;
    let start = Instant::now();
    let mut found = 0;
    for id in ids {
        let doc: Option<String> = stmt.query_row([id], |r| r.get(0)).optional()?;
        if let Some(json) = doc {
            let doc: Doc = serde_json::from_str(&json)?;
            black_box(&doc);
            found += 1;
        }
    }
    Ok((start.elapsed(), found))
}

/// Runs the section and prints its figures.
pub fn run(config: &Config, docs: &[Doc]) -> BoxResult<()> {
    println!("db4-compare: text-id table layout, rowid against WITHOUT ROWID (raw rusqlite on both sides)");
    println!(
        "  {} docs; {} reps, median; build: {}",
        docs.len(),
        config.reps,
        if cfg!(debug_assertions) { "DEBUG (numbers are meaningless)" } else { "release" }
    );
    println!("  load average at start: {}", crate::load_average());
    let rows: Vec<(String, String)> =
        docs.iter().map(|d| Ok((d.id.clone(), serde_json::to_string(d)?))).collect::<BoxResult<_>>()?;
    let avg = rows.iter().map(|(_, j)| j.len()).sum::<usize>() / rows.len().max(1);
    let mut conns = Vec::new();
    let mut inserts = [Duration::ZERO; 2];
    for (side, insert) in inserts.iter_mut().enumerate() {
        let path = config.dir.join(format!("layout-{side}.db"));
        let mut conn = open(&path, side == 1)?;
        *insert = insert_all(&mut conn, &rows)?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        let size = std::fs::metadata(&path)?.len();
        println!(
            "  {:<14} insert of all docs in one transaction: {}, file {:.1} MB",
            NAMES[side],
            format_duration(*insert),
            size as f64 / 1e6
        );
        conns.push(conn);
    }
    let mut rng = SplitMix64::new(0x4c41_594f_5554);
    let n = config.queries.max(1) * 500;
    let hits: Vec<String> = (0..n).map(|_| rows[rng.below(rows.len() as u64) as usize].0.clone()).collect();
    let misses: Vec<String> = (0..n).map(|i| format!("zz-missing-{i:08}")).collect();
    for (what, ids, expect) in [("hit", &hits, n as u64), ("miss", &misses, 0)] {
        // One untimed pass warms the page cache on both sides.
        for conn in &conns {
            read_all(conn, ids)?;
        }
        let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        for round in 0..config.reps {
            let mut total = [Duration::ZERO; 2];
            for (k, chunk) in ids.chunks(1_000).enumerate() {
                for turn in 0..2 {
                    let side = (round + k + turn) % 2;
                    let (t, found) = read_all(&conns[side], chunk)?;
                    if what == "hit" && found != chunk.len() as u64 {
                        return Err(format!("{}: a present id was not found", NAMES[side]).into());
                    }
                    if what == "miss" && found != 0 {
                        return Err(format!("{}: a missing id was found", NAMES[side]).into());
                    }
                    total[side] += t;
                }
            }
            for side in 0..2 {
                times[side].push(total[side]);
            }
        }
        let per = |side: usize| median(&times[side]).as_secs_f64() * 1e9 / expect.max(n as u64) as f64;
        println!(
            "  get, {what:<4} ({avg} B docs): rowid {:>7.0} ns, without rowid {:>7.0} ns: without/rowid = {:.3}x",
            per(0),
            per(1),
            per(1) / per(0)
        );
    }
    println!("  insert: without/rowid = {:.3}x", inserts[1].as_secs_f64() / inserts[0].as_secs_f64());
    Ok(())
}
