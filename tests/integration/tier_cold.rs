//! The cold tier: compaction by policy, reads falling through to segments, writes bringing
//! documents back hot, tombstones, the change log's move events, damaged segments, a standard
//! tool reading a segment, crashes during compaction, and a model of it all.

use db4::cdc::ChangeOp;
use db4::prelude::*;
use db4::tier::{ColdStore, DirStore, MemoryStore};
use db4::{Lsn, Value};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "events")]
pub(crate) struct Event {
    #[id]
    pub id: String,
    #[range_index]
    pub at: i64,
    #[fts]
    pub body: String,
    #[index]
    pub kind: String,
    #[version]
    pub version: u64,
    pub n: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "counters")]
pub(crate) struct Counter {
    #[id]
    pub id: i64,
    pub n: i64,
}

pub(crate) fn event(i: i64, at: i64) -> Event {
    Event {
        id: format!("e{i:05}"),
        at,
        body: format!("body of event {i} with some words"),
        kind: if i % 2 == 0 { "even".into() } else { "odd".into() },
        version: 0,
        n: i,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn open(path: &Path, store: Box<dyn ColdStore>, policy: CompactionPolicy) -> Db {
    Db::open_with(path, DbOptions::default().tiers(TierConfig { warm_bytes: 0, cold: Some(store), policy })).unwrap()
}

fn events_since(db: &Db) -> Vec<(ChangeOp, Value)> {
    db.changes_since(Lsn::ZERO).unwrap().map(|e| e.unwrap()).map(|e| (e.op, e.id)).collect()
}

/// 100 events: 0..40 an hour old, the rest fresh; `older_than` 10 minutes moves the 40.
fn seeded(dir: &TempDir) -> (Db, Collection<Event>) {
    let policy = CompactionPolicy { older_than: Some(("at", 600_000)), ..Default::default() };
    let db = open(&dir.join("db.sqlite"), Box::new(DirStore::open(dir.join("cold")).unwrap()), policy);
    let events = db.collection::<Event>().unwrap();
    let now = now_ms();
    let docs: Vec<Event> = (0..100).map(|i| event(i, if i < 40 { now - 3_600_000 } else { now })).collect();
    events.insert_many(&docs).unwrap();
    (db, events)
}

#[test]
fn compaction_moves_the_policys_documents_and_reads_fall_through() {
    let dir = TempDir::new("cold-basic");
    let (db, events) = seeded(&dir);
    let report = db.compact().unwrap();
    assert_eq!((report.moved, report.segments), (40, 1));
    assert!(report.bytes > 0);
    // Exactly the old ones left the hot table.
    assert_eq!(events.count().unwrap(), 60);
    let hot: Vec<String> = events.query().all().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(hot, (40..100).map(|i| format!("e{i:05}")).collect::<Vec<_>>());
    // Every document reads back, hot or cold, as it was.
    for i in 0..100 {
        let e = events.get(format!("e{i:05}")).unwrap().unwrap();
        assert_eq!((e.n, e.version), (i, 0));
    }
    assert_eq!(events.get("e99999").unwrap(), None);
    let many = events.get_many(["e00001", "e00050", "nope", "e00039"]).unwrap();
    let ns: Vec<Option<i64>> = many.iter().map(|e| e.as_ref().map(|e| e.n)).collect();
    assert_eq!(ns, [Some(1), Some(50), None, Some(39)]);
    // A second compaction has nothing to move.
    assert_eq!(db.compact().unwrap().moved, 0);
    // The change log: one archive per moved document, no delete.
    let log = events_since(&db);
    assert_eq!(log.iter().filter(|(op, _)| *op == ChangeOp::Archive).count(), 40);
    assert!(!log.iter().any(|(op, _)| *op == ChangeOp::Delete));
    let archive = db.changes_since(Lsn::ZERO).unwrap().map(|e| e.unwrap()).find(|e| e.op == ChangeOp::Archive);
    let envelope = archive.unwrap().to_json().unwrap();
    assert_eq!((envelope["op"].as_str(), envelope["db4_op"].as_str()), (Some("a"), Some("archive")));
}

#[test]
fn writes_to_cold_documents_rehydrate_tombstone_or_conflict() {
    let dir = TempDir::new("cold-writes");
    let (db, events) = seeded(&dir);
    db.compact().unwrap();
    let start = db.changes_since(Lsn::ZERO).unwrap().count() as u64;

    // Insert of a cold id: the hot duplicate's error.
    let err = events.insert(&event(3, 0)).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");

    // Update brings it back hot, version checked and bumped.
    let mut e = events.get("e00001").unwrap().unwrap();
    e.n = 1001;
    assert_eq!(events.update(&e).unwrap(), Some(1));
    assert_eq!(events.count().unwrap(), 61);
    assert_eq!(events.get("e00001").unwrap().unwrap().n, 1001);

    // Upsert, increment, compare_and_swap and update_with of cold documents.
    let mut e2 = events.get("e00002").unwrap().unwrap();
    e2.n = 2002;
    events.upsert(&e2).unwrap();
    assert_eq!(events.increment("e00004", Event::fields().n, 10).unwrap(), 14);
    let cas = events.compare_and_swap("e00005", Event::fields().kind, "odd", "swapped").unwrap();
    assert!(cas.swapped);
    let updated = events.update_with("e00006", RetryPolicy::default(), |e| e.n = 6006).unwrap();
    assert_eq!(updated.n, 6006);
    assert_eq!(events.count().unwrap(), 65);

    // Delete of a cold document tombstones it.
    assert!(events.delete("e00007").unwrap());
    assert_eq!(events.get("e00007").unwrap(), None);
    assert!(!events.delete("e00007").unwrap());
    assert_eq!(events.count().unwrap(), 65);
    assert!(events.delete("e00050").unwrap());
    assert!(events.delete("e00008").unwrap());

    // A deleted cold id can be inserted again; a rehydrated one is hot and reads once.
    events.insert(&event(7, 1)).unwrap();
    assert_eq!(events.get("e00007").unwrap().unwrap().at, 1);
    let all_ids: Vec<String> = events.query().all().unwrap().into_iter().map(|e| e.id).collect();
    let mut sorted = all_ids.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), all_ids.len());

    // The change log: restores before the writes, the deletes included (a cold document is
    // brought back hot, then deleted as a hot one is).
    let log: Vec<(ChangeOp, Value)> = events_since(&db).into_iter().skip(start as usize).collect();
    let ops: Vec<ChangeOp> = log.iter().map(|(op, _)| *op).collect();
    assert_eq!(&ops[..2], [ChangeOp::Restore, ChangeOp::Update]);
    assert_eq!(log.iter().filter(|(op, _)| *op == ChangeOp::Restore).count(), 7);
    for cold in ["e00007", "e00008"] {
        let id = Value::Text(cold.into());
        let at = log.iter().position(|e| *e == (ChangeOp::Delete, id.clone())).expect("a delete");
        assert_eq!(log[at - 1], (ChangeOp::Restore, id), "the restore right before the delete of {cold}");
    }
    assert!(!log.iter().any(|e| *e == (ChangeOp::Restore, Value::Text("e00050".into()))), "e00050 was hot");

    // The next compaction (policy: older than 10 minutes) moves the re-inserted old one
    // back, and readers still find everything once.
    let report = db.compact().unwrap();
    assert!(report.moved >= 1, "{report:?}");
    assert_eq!(events.get("e00007").unwrap().unwrap().at, 1);
    assert_eq!(events.get("e00001").unwrap().unwrap().n, 1001);
    assert_eq!(events.get("e00008").unwrap(), None);
}

#[test]
fn a_rolled_back_rehydration_leaves_the_document_cold() {
    let dir = TempDir::new("cold-rollback");
    let (db, events) = seeded(&dir);
    db.compact().unwrap();
    let hot = events.count().unwrap();
    let failed: Result<()> = db.transaction(|tx| {
        let c = tx.collection::<Event>()?;
        let mut e = c.get("e00010")?.expect("cold, readable in the transaction");
        e.n = -1;
        c.update(&e)?;
        assert_eq!(c.get("e00010")?.map(|e| e.n), Some(-1));
        assert!(c.delete("e00011")?);
        Err(Error::aborted("roll back"))
    });
    assert!(failed.is_err());
    assert_eq!(events.count().unwrap(), hot, "nothing came back hot");
    assert_eq!(events.get("e00010").unwrap().unwrap().n, 10);
    assert_eq!(events.get("e00011").unwrap().unwrap().n, 11);

    // A savepoint rolled back inside a committing transaction: the same.
    db.transaction(|tx| {
        let c = tx.collection::<Event>()?;
        tx.savepoint("s")?;
        let mut e = c.get("e00012")?.expect("cold");
        e.n = -2;
        c.update(&e)?;
        assert!(c.delete("e00013")?);
        tx.rollback_to("s")?;
        let mut e = c.get("e00014")?.expect("cold");
        e.n = 1414;
        c.update(&e)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(events.get("e00012").unwrap().unwrap().n, 12);
    assert_eq!(events.get("e00013").unwrap().unwrap().n, 13);
    assert_eq!(events.get("e00014").unwrap().unwrap().n, 1414);
    assert_eq!(events.count().unwrap(), hot + 1);
}

#[test]
fn size_limits_move_the_excess_oldest_first() {
    let dir = TempDir::new("cold-sizes");
    let store = Arc::new(MemoryStore::new());
    // The age rule selects nothing (older than ~292 million years) but sets "oldest" to `at`.
    let policy =
        CompactionPolicy { hot_max_documents: Some(30), older_than: Some(("at", i64::MAX)), ..Default::default() };
    let db = open(&dir.join("a.db"), Box::new(Arc::clone(&store)), policy);
    let events = db.collection::<Event>().unwrap();
    // `at` descending with the id: the oldest are the highest ids.
    let docs: Vec<Event> = (0..100).map(|i| event(i, 1_000_000 - i)).collect();
    events.insert_many(&docs).unwrap();
    let counters = db.collection::<Counter>().unwrap();
    counters.insert_many(&(0..50).map(|i| Counter { id: i, n: i }).collect::<Vec<_>>()).unwrap();
    let report = db.compact().unwrap();
    assert_eq!((report.moved, report.segments), (70 + 20, 2));
    let hot: Vec<i64> = events.query().all().unwrap().into_iter().map(|e| e.n).collect();
    assert_eq!(hot, (0..30).collect::<Vec<_>>(), "the 30 newest stay");
    // No `at` field: oldest is the lowest id.
    let hot_counters: Vec<i64> = counters.query().all().unwrap().into_iter().map(|c| c.id).collect();
    assert_eq!(hot_counters, (20..50).collect::<Vec<_>>());
    assert_eq!(counters.get(3).unwrap(), Some(Counter { id: 3, n: 3 }));
    assert_eq!(counters.get_many([1, 2, 49, 77]).unwrap().iter().filter(|c| c.is_some()).count(), 3);

    // By bytes: keep about 10 documents' worth.
    let one = serde_json::to_string(&event(1, 1)).unwrap().len() as u64;
    let db2 = open(
        &dir.join("b.db"),
        Box::new(MemoryStore::new()),
        CompactionPolicy { hot_max_bytes: Some(10 * one), ..Default::default() },
    );
    let e2 = db2.collection::<Event>().unwrap();
    e2.insert_many(&docs).unwrap();
    let report = db2.compact().unwrap();
    assert!((88..=92).contains(&report.moved), "{report:?}");
    assert_eq!(e2.count().unwrap() + report.moved, 100);
    for i in 0..100 {
        assert!(e2.get(format!("e{i:05}")).unwrap().is_some());
    }
}

#[test]
fn memory_pressure_is_the_low_water_mark_of_the_size_limits() {
    let dir = TempDir::new("cold-pressure");
    let docs: Vec<Event> = (0..100).map(|i| event(i, 1_000_000 - i)).collect();
    let run = |name: &str, policy: CompactionPolicy| {
        let db = open(&dir.join(name), Box::new(MemoryStore::new()), policy);
        let events = db.collection::<Event>().unwrap();
        events.insert_many(&docs[..50]).unwrap();
        let first = db.compact().unwrap().moved;
        // Within the limits again after one more insert: nothing more moves.
        events.insert(&docs[50]).unwrap();
        let second = db.compact().unwrap().moved;
        let hot = events.count().unwrap();
        for d in &docs[..51] {
            assert_eq!(events.get(d.id.as_str()).unwrap().as_ref(), Some(d), "{name}: {}", d.id);
        }
        (first, second, hot)
    };
    // Documents: over 40, keep 0.5 × 40 = 20 (oldest by id first: the lowest ids move).
    let documents = CompactionPolicy { hot_max_documents: Some(40), ..Default::default() };
    assert_eq!(run("docs.db", documents.clone()), (10, 1, 40), "without pressure: just down to the limit");
    let pressed = CompactionPolicy { memory_pressure: Some(0.5), ..documents.clone() };
    assert_eq!(run("docs-pressed.db", pressed), (30, 0, 21), "with pressure: down to half the limit");
    // Out-of-range fractions are clamped, a NaN is ignored.
    let all = CompactionPolicy { memory_pressure: Some(-3.0), ..documents.clone() };
    assert_eq!(run("docs-zero.db", all).0, 50);
    let nan = CompactionPolicy { memory_pressure: Some(f64::NAN), ..documents };
    assert_eq!(run("docs-nan.db", nan).0, 10);

    // Bytes: over 40 documents' worth, keep at most 0.25 × that.
    let one = serde_json::to_string(&docs[10]).unwrap().len() as u64;
    let bytes = CompactionPolicy { hot_max_bytes: Some(40 * one), ..Default::default() };
    let (moved, _, hot) = run("bytes.db", bytes.clone());
    assert!((9..=11).contains(&moved) && hot >= 39, "without pressure: {moved} moved, {hot} hot");
    let pressed = CompactionPolicy { memory_pressure: Some(0.25), ..bytes };
    let (moved, _, hot) = run("bytes-pressed.db", pressed);
    assert!((39..=41).contains(&moved) && hot <= 12, "with pressure: {moved} moved, {hot} hot");

    // Within its limits a collection moves nothing, whatever the pressure.
    let calm = CompactionPolicy { hot_max_documents: Some(60), memory_pressure: Some(0.1), ..Default::default() };
    assert_eq!(run("calm.db", calm), (0, 0, 51));
}

/// Python, with only its standard `gzip` and `json`, reads a segment db4 wrote.
#[test]
fn python_reads_a_segment_with_gzip_and_json() {
    let dir = TempDir::new("cold-python");
    let (db, _events) = seeded(&dir);
    db.compact().unwrap();
    let store = DirStore::open(dir.join("cold")).unwrap();
    let segment = store.list("events/").unwrap().into_iter().find(|o| o.key.ends_with(".jsonl.gz")).unwrap();
    let path = dir.join("cold").join(&segment.key);
    let manifest = dir.join("cold").join(format!("{}.manifest.json", segment.key));
    let script = r#"
import gzip, json, sys, zlib
lines = [json.loads(l) for l in gzip.open(sys.argv[1], "rt", encoding="utf-8")]
m = json.load(open(sys.argv[2]))
data = open(sys.argv[1], "rb").read()
assert zlib.crc32(data) == m["crc32"], "segment crc"
for b in m["blocks"]:
    member = data[b["offset"]:b["offset"] + b["length"]]
    assert zlib.crc32(member) == b["crc32"], "block crc"
    block = [json.loads(l) for l in gzip.decompress(member).decode().splitlines()]
    assert block[0]["id"] == b["first"] and block[-1]["id"] == b["last"] and len(block) == b["count"]
assert len(lines) == m["count"]
for l in lines:
    assert l["collection"] == "events" and l["doc"]["id"] == l["id"]
print(" ".join(l["id"] + ":" + str(l["doc"]["n"]) for l in lines))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(&manifest)
        .output()
        .expect("python3 must be on PATH for this test (it checks that a standard tool reads segments)");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<String> = String::from_utf8(out.stdout).unwrap().split_whitespace().map(str::to_owned).collect();
    let expected: Vec<String> = (0..40).map(|i| format!("e{i:05}:{i}")).collect();
    assert_eq!(found, expected);
}

#[test]
fn a_damaged_or_missing_segment_is_reported_by_name_and_the_rest_reads() {
    let dir = TempDir::new("cold-damage");
    let policy = CompactionPolicy { hot_max_documents: Some(0), ..Default::default() };
    let db = open(&dir.join("db.sqlite"), Box::new(DirStore::open(dir.join("cold")).unwrap()), policy.clone());
    let events = db.collection::<Event>().unwrap();
    let counters = db.collection::<Counter>().unwrap();
    events.insert_many(&(0..20).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
    counters.insert_many(&(0..20).map(|i| Counter { id: i, n: i }).collect::<Vec<_>>()).unwrap();
    db.compact().unwrap();
    events.insert(&event(100, 100)).unwrap();
    let store = DirStore::open(dir.join("cold")).unwrap();
    let key = |prefix: &str| {
        store.list(prefix).unwrap().into_iter().find(|o| o.key.ends_with(".jsonl.gz")).map(|o| o.key).unwrap()
    };
    let (events_key, counters_key) = (key("events/"), key("counters/"));

    // Flip one byte of the events segment.
    let path = dir.join("cold").join(&events_key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let err = events.get("e00003").unwrap_err();
    match &err {
        Error::Corrupted { what, .. } => assert!(what.contains(&events_key), "{what}"),
        other => panic!("expected Corrupted, got {other:?}"),
    }
    assert!(err.to_string().contains(&events_key), "{err}");
    // Hot documents and the other segment still read.
    assert_eq!(events.get("e00100").unwrap().unwrap().n, 100);
    assert_eq!(counters.get(5).unwrap().unwrap().n, 5);
    // A write to the damaged document fails the same way, and changes nothing.
    let err = events.delete("e00003").unwrap_err();
    assert!(matches!(err, Error::Corrupted { .. }), "{err:?}");

    // A missing segment.
    std::fs::remove_file(dir.join("cold").join(&counters_key)).unwrap();
    let err = counters.get(5).unwrap_err();
    assert!(matches!(&err, Error::Corrupted { what, .. } if what.contains(&counters_key)), "{err:?}");
    assert_eq!(events.get("e00100").unwrap().unwrap().n, 100);
    // Compaction goes on past the damage.
    events.insert(&event(101, 101)).unwrap();
    assert!(db.compact().unwrap().moved >= 2);
}

#[test]
fn orphaned_segments_are_ignored_and_deleted_by_the_next_compaction() {
    let dir = TempDir::new("cold-orphans");
    let store = Arc::new(MemoryStore::new());
    let policy = CompactionPolicy { hot_max_documents: Some(5), ..Default::default() };
    let db = open(&dir.join("db.sqlite"), Box::new(Arc::clone(&store)), policy);
    let events = db.collection::<Event>().unwrap();
    events.insert_many(&(0..10).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
    // What a compaction killed before its commit leaves: objects no row names.
    store.put("events/999999999999.jsonl.gz", b"not even gzip").unwrap();
    store.put("events/999999999999.jsonl.gz.manifest.json", b"{}").unwrap();
    assert_eq!(events.get("e00001").unwrap().unwrap().n, 1);
    let report = db.compact().unwrap();
    assert_eq!((report.orphans, report.moved), (2, 5));
    assert!(store.get("events/999999999999.jsonl.gz").unwrap().is_none());
    assert_eq!(store.list("").unwrap().len(), 2, "the new segment and its manifest");
}

/// `include_cold(true)` answers as if nothing had moved: the same queries and ranges over a
/// database that never compacted are the oracle.
#[test]
fn include_cold_merges_hot_and_cold_in_order() {
    let dir = TempDir::new("cold-include");
    let policy = CompactionPolicy { hot_max_documents: Some(25), ..Default::default() };
    let db = open(&dir.join("db.sqlite"), Box::new(MemoryStore::new()), policy);
    let events = db.collection::<Event>().unwrap();
    let plain = Db::open_in_memory().unwrap();
    let oracle = plain.collection::<Event>().unwrap();
    // `at` repeats (ties broken by id), interleaving hot and cold in every order.
    let docs: Vec<Event> = (0..80).map(|i| event(i, (i * 37) % 23)).collect();
    events.insert_many(&docs).unwrap();
    oracle.insert_many(&docs).unwrap();
    assert_eq!(db.compact().unwrap().moved, 55);
    // Some writes after compaction: a rehydrated update and a cold delete.
    for c in [&events, &oracle] {
        c.increment("e00003", Event::fields().n, 100).unwrap();
        assert!(c.delete("e00004").unwrap());
    }
    let f = Event::fields();
    let ids = |v: Vec<Event>| v.into_iter().map(|e| (e.id, e.n, e.version)).collect::<Vec<_>>();
    type MakeQuery<'f> = Box<dyn Fn(&Collection<Event>) -> db4::Query<'_, Event> + 'f>;
    let queries: Vec<(MakeQuery<'_>, &str)> = vec![
        (Box::new(|c| c.query()), "all"),
        (Box::new(|c| c.query().filter(f.kind.eq("even")).order_by(f.at.desc()).limit(17)), "even by at desc"),
        (Box::new(|c| c.query().order_by(f.at.asc()).order_by(f.n.desc()).offset(5).limit(30)), "two keys"),
        (Box::new(|c| c.query().filter(f.n.gt(30) | f.at.lt(3)).order_by(f.at.asc())), "or"),
    ];
    for (q, what) in &queries {
        let want = ids(q(&oracle).order_by(f.id.asc()).all().unwrap());
        let got = ids(q(&events).order_by(f.id.asc()).include_cold(true).all().unwrap());
        assert_eq!(got, want, "{what}");
        let count = q(&events).include_cold(true).count().unwrap();
        assert_eq!(count, q(&oracle).count().unwrap(), "{what}: count");
    }
    assert!(events.query().count().unwrap() < 80, "without include_cold: hot only");
    assert!(events.query().include_cold(true).delete().is_err());

    // Ranges: bounds, both directions, cursors forwards and backwards, iter.
    let range_ids = |p: &db4::Page<Event>| p.items.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    for descending in [false, true] {
        fn base(c: &Collection<Event>, descending: bool) -> db4::Range<'_, Event, i64> {
            let f = Event::fields();
            let r = c.range(f.at).between(4..=19).filter(f.n.ne(10)).limit(7);
            if descending { r.descending() } else { r }
        }
        let want = range_ids(&base(&oracle, descending).limit(1000).fetch().unwrap());
        let first = base(&events, descending).include_cold(true).fetch().unwrap();
        assert_eq!(range_ids(&first), want[..7], "first page, descending {descending}");
        let mut got = range_ids(&first);
        let mut next = first.next.clone();
        while let Some(cursor) = next {
            let page = base(&events, descending).include_cold(true).after(&cursor).fetch().unwrap();
            got.extend(range_ids(&page));
            next = page.next;
        }
        assert_eq!(got, want, "paged forwards, descending {descending}");
        let second = base(&events, descending).include_cold(true).after(first.next.as_ref().unwrap()).fetch().unwrap();
        let back = base(&events, descending).include_cold(true).before(second.prev.as_ref().unwrap()).fetch().unwrap();
        assert_eq!(range_ids(&back), range_ids(&first), "paged back, descending {descending}");
        let iterated: Vec<String> =
            base(&events, descending).include_cold(true).iter(3).map(|e| e.unwrap().id).collect();
        assert_eq!(iterated, want, "iter, descending {descending}");
    }
}

#[test]
fn include_cold_reads_only_the_segments_that_may_match() {
    let dir = TempDir::new("cold-prune");
    let policy = CompactionPolicy { hot_max_documents: Some(5), ..Default::default() };
    let db = open(&dir.join("db.sqlite"), Box::new(MemoryStore::new()), policy);
    let events = db.collection::<Event>().unwrap();
    // Three segments, one block each: e00000..e00009 (`at` 0..=90), e00010..e00019
    // (100..=190), e00020..e00029 (200..=290); e00030..e00034 stay hot.
    let docs: Vec<Event> = (0..35).map(|i| event(i, i * 10)).collect();
    for batch in [&docs[..15], &docs[15..25], &docs[25..]] {
        events.insert_many(batch).unwrap();
        assert_eq!(db.compact().unwrap().moved, 10);
    }
    assert_eq!(db.tier_stats().unwrap().cold.segments, 3);
    let reads = || db.tier_stats().unwrap().cold.reads;
    let ids = |v: Vec<Event>| v.into_iter().map(|e| e.n).collect::<Vec<_>>();
    let f = Event::fields();
    let query = |filter: db4::Filter<Event>| events.query().filter(filter).order_by(f.id.asc()).include_cold(true);

    // By id: the segments whose id range cannot hold a match are not read.
    let cases: Vec<(db4::Filter<Event>, Vec<i64>, u64, &str)> = vec![
        (f.id.eq("e00015"), vec![15], 1, "id eq"),
        (f.id.gte("e00020"), (20..35).collect(), 1, "id gte"),
        (f.id.lt("e00010") & f.kind.eq("even"), vec![0, 2, 4, 6, 8], 1, "id lt and"),
        (f.id.in_list(["e00001", "e00007"]), vec![1, 7], 1, "id in"),
        (f.id.starts_with("e0003"), (30..35).collect(), 0, "id prefix: hot only"),
        (f.id.between("e00005", "e00012"), (5..13).collect(), 2, "id between"),
        // By the value ranges of `at` (a range index) the manifests record.
        (f.at.between(100, 150), (10..16).collect(), 1, "at between"),
        (f.at.gt(290), (30..35).collect(), 0, "at gt"),
        // Nothing to prune by: every segment is read.
        (f.kind.eq("even"), (0..35).filter(|i| i % 2 == 0).collect(), 3, "kind"),
        (f.id.eq("e00001") | f.id.eq("e00025"), vec![1, 25], 3, "or"),
        (!f.id.lt("e00020"), (20..35).collect(), 3, "not"),
    ];
    for (filter, want, segments, what) in cases {
        let before = reads();
        assert_eq!(ids(query(filter).all().unwrap()), want, "{what}");
        assert_eq!(reads() - before, segments, "{what}: segments read");
    }
    let before = reads();
    assert_eq!(query(f.at.lte(95)).count().unwrap(), 10);
    assert_eq!(reads() - before, 1, "count");

    // Ranges: bounds on the range's field, and the cursor when reading on.
    let before = reads();
    let page = events.range(f.at).between(205..=260).include_cold(true).fetch().unwrap();
    assert_eq!(ids(page.items), (21..27).collect::<Vec<_>>());
    assert_eq!(reads() - before, 1, "range between");
    let before = reads();
    let page = events.range(f.at).descending().between(..=150).filter(f.n.ne(3)).include_cold(true).fetch().unwrap();
    assert_eq!(ids(page.items), (0..16).rev().filter(|&i| i != 3).collect::<Vec<_>>());
    assert_eq!(reads() - before, 2, "range descending, upper bound");
    let first = events.range(f.at).limit(25).include_cold(true).fetch().unwrap();
    assert_eq!(ids(first.items), (0..25).collect::<Vec<_>>());
    let before = reads();
    let next = events.range(f.at).limit(25).include_cold(true).after(first.next.as_ref().unwrap()).fetch().unwrap();
    assert_eq!(ids(next.items), (25..35).collect::<Vec<_>>());
    assert_eq!(reads() - before, 1, "range after a cursor: the last segment only");
    let before = reads();
    let back = events.range(f.at).limit(25).include_cold(true).before(next.prev.as_ref().unwrap()).fetch().unwrap();
    assert_eq!(ids(back.items), (0..25).collect::<Vec<_>>());
    assert_eq!(reads() - before, 3, "range back before a cursor: every segment below it");

    // Pruning never drops a match: bounds on `at` and on the id, against the documents.
    for lo in (-5..300).step_by(35) {
        for hi in (lo..320).step_by(45) {
            let want: Vec<i64> = (0..35).filter(|i| (lo..=hi).contains(&(i * 10))).collect();
            assert_eq!(ids(query(f.at.between(lo, hi)).all().unwrap()), want, "at {lo}..={hi}");
            assert_eq!(
                ids(query(f.at.gt(lo) & f.at.lt(hi)).all().unwrap()),
                want.iter().copied().filter(|&i| i * 10 != lo && i * 10 != hi).collect::<Vec<_>>(),
                "at ({lo}, {hi})"
            );
            let page = events.range(f.at).between(lo..=hi).limit(100).include_cold(true).fetch().unwrap();
            assert_eq!(ids(page.items), want, "range {lo}..={hi}");
            let (a, b) = (format!("e{:05}", lo / 10), format!("e{:05}", hi / 10));
            let want: Vec<i64> = (0..35).filter(|i| (lo / 10..=hi / 10).contains(i)).collect();
            assert_eq!(ids(query(f.id.gte(a.as_str()) & f.id.lte(b.as_str())).all().unwrap()), want, "id {a}..={b}");
        }
    }

    // Deleted and rehydrated cold documents stay out, pruned or not.
    assert!(events.delete("e00012").unwrap());
    events.increment("e00013", f.n, 100).unwrap();
    assert_eq!(ids(query(f.at.between(100, 150)).all().unwrap()), [10, 11, 113, 14, 15]);
}

#[test]
fn a_cold_delete_records_the_before_image_a_hot_delete_does() {
    let dir = TempDir::new("cold-before");
    let policy = CompactionPolicy { hot_max_documents: Some(5), ..Default::default() };
    let tiers = TierConfig { warm_bytes: 0, cold: Some(Box::new(MemoryStore::new())), policy };
    let db = Db::open_with(dir.join("db.sqlite"), DbOptions::default().before_images(true).tiers(tiers)).unwrap();
    let observed: Arc<std::sync::Mutex<Vec<db4::Change>>> = Arc::default();
    let sink = Arc::clone(&observed);
    db.on_commit(move |changes| sink.lock().unwrap().extend(changes.iter().cloned()));
    let events = db.collection::<Event>().unwrap();
    events.insert_many(&(0..10).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
    // e00001 (cold after the compaction) and e00007 (hot) at version 1.
    let mut docs = Vec::new();
    for id in ["e00001", "e00007"] {
        let mut e = events.get(id).unwrap().unwrap();
        e.n *= 100;
        events.update(&e).unwrap();
        docs.push(events.get(id).unwrap().unwrap());
    }
    assert_eq!(db.compact().unwrap().moved, 5);
    assert_eq!(events.count().unwrap(), 5, "e00001 is cold");
    let start = db.last_lsn().unwrap();
    observed.lock().unwrap().clear();
    assert!(events.delete("e00001").unwrap());
    assert!(events.delete("e00007").unwrap());
    db.transaction(|tx| tx.collection::<Event>()?.delete("e00002").map(drop)).unwrap();

    // The change log: each delete with the document it removed, cold or hot.
    let deletes: Vec<_> =
        db.changes_since(start).unwrap().map(|e| e.unwrap()).filter(|e| e.op == ChangeOp::Delete).collect();
    let before = |e: &db4::cdc::ChangeEvent| (e.id.clone(), e.version, e.before::<Event>().unwrap());
    let want = [
        (Value::Text("e00001".into()), Some(1), Some(docs[0].clone())),
        (Value::Text("e00007".into()), Some(1), Some(docs[1].clone())),
        (Value::Text("e00002".into()), Some(0), Some(event(2, 2))),
    ];
    assert_eq!(deletes.iter().map(before).collect::<Vec<_>>(), want);
    // Commit observers see the same.
    let seen: Vec<_> = observed
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.kind == db4::ChangeKind::Delete)
        .map(|c| (c.id.clone(), c.version, c.before.as_deref().map(|j| serde_json::from_str::<Event>(j).unwrap())))
        .collect();
    assert_eq!(seen, want);
}
