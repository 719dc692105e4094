//! Compactions killed at random instants: a child process inserts numbered events (printing
//! each once its insert returned), increments earlier ones (bringing cold ones back hot) and
//! compacts every few dozen writes; the test SIGKILLs it, often in the middle of a
//! compaction, reopens the database and checks from outside db4 (the SQLite tables and the
//! segment files, read with a plain gzip reader) that every acknowledged event is in exactly
//! one tier (a hot row or a live segment copy, never both, never neither), that db4 reads each
//! with its latest acknowledged value, and that the next compaction deletes the orphans.
//!
//! The child is this test binary run again on this one test, as in `shard_crash.rs`.
//! `DB4_TIER_CRASH_CYCLES` sets the number of kills (default 20); `DB4_TIER_CRASH_SEED`
//! replays a schedule.

use crate::tier_cold::{Event, event, open};
use db4::prelude::*;
use db4::tier::DirStore;
use db4_tests::{ChildGuard, Rng, TempDir};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "DB4_TESTS_TIER_CRASH_CHILD";
const FROM_ENV: &str = "DB4_TESTS_TIER_CRASH_FROM";
const TEST: &str = "interrupted_compactions_lose_and_duplicate_nothing";

fn policy() -> CompactionPolicy {
    CompactionPolicy { hot_max_documents: Some(30), ..Default::default() }
}

fn db(dir: &Path) -> Db {
    open(&dir.join("db.sqlite"), Box::new(DirStore::open(dir.join("cold")).expect("cold dir")), policy())
}

fn child(dir: &Path, from: i64) -> ! {
    let db = db(dir);
    let events = db.collection::<Event>().expect("child: collection");
    let mut rng = Rng::new(from as u64 ^ 0x9e37);
    println!("start {from}");
    let mut out = std::io::stdout().lock();
    for id in from..from + 1_000_000 {
        events.insert(&event(id, id)).expect("child: insert");
        writeln!(out, "acked {id}").unwrap();
        if id > 0 && rng.chance(1, 3) {
            let target = rng.range(0, id);
            events.increment(format!("e{target:05}"), Event::fields().n, 1_000_000).expect("child: increment");
            writeln!(out, "inc {target}").unwrap();
        }
        if id % 40 == 39 {
            writeln!(out, "compacting").unwrap();
            out.flush().unwrap();
            let report = db.compact().expect("child: compact");
            writeln!(out, "compacted {}", report.moved).unwrap();
        }
        out.flush().unwrap();
    }
    // Only a parent that stopped killing gets here; it asserts on this exit and shows why.
    eprintln!("child: wrote every event without being killed");
    std::process::exit(3)
}

fn field(line: &str, prefix: &str) -> Option<i64> {
    let rest = line.strip_prefix(prefix)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// What the files hold, read without db4: hot ids, and live cold ids with their segment.
fn tiers(dir: &Path) -> (BTreeSet<String>, Vec<(String, String)>) {
    let conn = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
    let hot: BTreeSet<String> = conn
        .prepare("SELECT _id FROM events")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let segments: Vec<String> = conn
        .prepare("SELECT key FROM _db4_cold_segments")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut cold = Vec::new();
    for key in segments {
        let dead: BTreeSet<String> = conn
            .prepare("SELECT id FROM _db4_cold_tombstones WHERE segment = ?1")
            .unwrap()
            .query_map([&key], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let bytes = std::fs::read(dir.join("cold").join(&key))
            .unwrap_or_else(|e| panic!("segment {key} named by the table is missing: {e}"));
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["id"].as_str().unwrap().to_owned();
            if !dead.contains(&id) {
                cold.push((id, key.clone()));
            }
        }
    }
    (hot, cold)
}

/// Reopens and checks; returns the next id to write.
fn check(dir: &Path, acked: i64, incs: &BTreeMap<i64, i64>, in_flight_inc: Option<i64>) -> i64 {
    let (hot, cold) = tiers(dir);
    let cold_ids: BTreeSet<String> = cold.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(cold_ids.len(), cold.len(), "a document live in two segments: {cold:?}");
    let both: Vec<&String> = hot.intersection(&cold_ids).collect();
    assert!(both.is_empty(), "documents both hot and cold: {both:?}");
    let all: BTreeSet<String> = hot.union(&cold_ids).cloned().collect();
    let stored = all.len() as i64;
    // 0..=acked, and at most the one insert in flight when the child died.
    assert!(stored == acked + 1 || stored == acked + 2, "{stored} events stored, 0..={acked} acknowledged");
    let expected: BTreeSet<String> = (0..stored).map(|i| format!("e{i:05}")).collect();
    assert_eq!(all, expected, "each event once, none missing");

    let db = db(dir);
    let events = db.collection::<Event>().unwrap();
    for i in 0..stored {
        let e = events.get(format!("e{i:05}")).unwrap().unwrap_or_else(|| panic!("e{i:05} unreadable"));
        let done = incs.get(&i).copied().unwrap_or(0);
        let extra = i64::from(in_flight_inc == Some(i));
        let n = (e.n - i) / 1_000_000;
        assert!(n == done || n == done + extra, "e{i:05}: {n} increments stored, {done} acknowledged");
    }
    // The next compaction deletes what a killed one left behind: then every object is named,
    // but for the segments this compaction dropped (deleted by the next one, so that a reader
    // still holding their rows finds them).
    let report = db.compact().unwrap();
    let conn = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
    let named: i64 = conn.query_row("SELECT count(*) FROM _db4_cold_segments", [], |r| r.get(0)).unwrap();
    let objects = DirStore::open(dir.join("cold")).unwrap();
    let listed = db4::tier::ColdStore::list(&objects, "").unwrap().len() as i64;
    assert_eq!(listed, 2 * (named + report.dropped as i64), "a segment and a manifest per row, no orphan");
    stored
}

#[test]
fn interrupted_compactions_lose_and_duplicate_nothing() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let from = std::env::var(FROM_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        child(Path::new(&dir), from);
    }
    let cycles = env_u64("DB4_TIER_CRASH_CYCLES").unwrap_or(20);
    let seed = env_u64("DB4_TIER_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    eprintln!("tier_cold_crash: seed {seed} (DB4_TIER_CRASH_SEED replays it)");
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("tier-crash");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let errors = dir.join("child.stderr");
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let name = format!("{module}::{TEST}");
    let (mut next, mut mid_compaction) = (0i64, 0u64);
    let mut incs: BTreeMap<i64, i64> = BTreeMap::new();
    for cycle in 0..cycles {
        let mut child = ChildGuard(
            Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, &data)
                .env(FROM_ENV, next.to_string())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&errors).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let mut acked = next - 1;
        let mut compacting = false;
        let mut take = |line: std::io::Result<String>, acked: &mut i64, compacting: &mut bool| -> bool {
            let line = line.unwrap();
            if let Some(id) = field(&line, "acked ") {
                assert_eq!(id, *acked + 1, "acknowledged in order");
                *acked = id;
            } else if let Some(id) = field(&line, "inc ") {
                *incs.entry(id).or_default() += 1;
            } else if line == "compacting" {
                *compacting = true;
                return true;
            } else if line.starts_with("compacted") {
                *compacting = false;
            }
            false
        };
        let wanted = 1 + rng.below(3);
        let mut seen = 0;
        for line in lines.by_ref() {
            if take(line, &mut acked, &mut compacting) {
                seen += 1;
                if seen == wanted {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(15_000)));
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        for line in lines {
            take(line, &mut acked, &mut compacting);
        }
        #[cfg(unix)]
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "cycle {cycle}: the child died on its own: {}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        if compacting {
            mid_compaction += 1;
        }
        // An increment may have committed without its line: the checker accepts one
        // unacknowledged increment, on any event, and counts it from then on.
        let (stored, surplus) = check_any_inflight(&data, acked, &incs);
        if let Some(id) = surplus {
            *incs.entry(id).or_default() += 1;
        }
        next = stored;
    }
    eprintln!("tier_cold_crash: {cycles} kills, {mid_compaction} during a compaction, {next} events");
    assert!(mid_compaction > 0, "no kill came during a compaction");
    assert!(next > cycles as i64, "the children wrote");
}

/// [`check`], allowing one increment the child did not get to acknowledge, on any event.
fn check_any_inflight(dir: &Path, acked: i64, incs: &BTreeMap<i64, i64>) -> (i64, Option<i64>) {
    let db = db(dir);
    let events = db.collection::<Event>().unwrap();
    let mut surplus = None;
    let mut i = 0;
    while let Some(e) = events.get(format!("e{i:05}")).unwrap() {
        let n = (e.n - i) / 1_000_000;
        let done = incs.get(&i).copied().unwrap_or(0);
        if n == done + 1 {
            assert!(surplus.is_none(), "two unacknowledged increments");
            surplus = Some(i);
        }
        i += 1;
    }
    drop((events, db));
    (check(dir, acked, incs, surplus), surplus)
}
