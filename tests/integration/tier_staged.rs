//! The cold tier over an asynchronous store ([`StagedStore`]), natively: the path a Durable
//! Object takes to R2, over a [`MemoryStore`] whose futures are ready at once. Compaction
//! keeps segments hot until flushed, reads answer the same before and after the upload, a
//! read outside `StagedStore::read` fails clearly, crashes between the steps lose nothing,
//! prefixes keep databases sharing a store apart, and the fetched bytes stay in budget.

use super::tier_cold::{Event, event};
use db4::prelude::*;
use db4::tier::{ColdStore, MemoryStore, StagedStore};
use db4::{BackendErrorKind, Error};
use db4_tests::TempDir;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Runs a future whose awaits are all ready (the stores here do no real I/O).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

type Staged = StagedStore<Arc<MemoryStore>>;

fn open(path: &Path, staged: &Staged, keep_hot: u64) -> Db {
    let policy = CompactionPolicy { hot_max_documents: Some(keep_hot), ..Default::default() };
    let tiers = TierConfig { warm_bytes: 0, cold: Some(Box::new(staged.clone())), policy };
    Db::open_with(path, DbOptions::default().tiers(tiers)).unwrap()
}

fn seeded(dir: &TempDir, prefix: &str) -> (Arc<MemoryStore>, Staged, Db) {
    let remote = Arc::new(MemoryStore::new());
    let staged = StagedStore::new(Arc::clone(&remote), prefix).unwrap();
    let db = open(&dir.join("db.sqlite"), &staged, 10);
    db.collection::<Event>().unwrap().insert_many(&(0..50).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
    (remote, staged, db)
}

fn n_of(staged: &Staged, events: &Collection<Event>, i: i64) -> Option<i64> {
    block_on(staged.read(|| events.get(format!("e{i:05}")))).unwrap().map(|e| e.n)
}

#[test]
fn compaction_stages_segments_hot_until_flushed_and_reads_agree_before_and_after() {
    let dir = TempDir::new("staged-basic");
    let (remote, staged, db) = seeded(&dir, "tenant-a/");
    let events = db.collection::<Event>().unwrap();
    // Db::compact alone: the segment is pending in the hot database, nothing in the store.
    let report = block_on(staged.read(|| db.compact())).unwrap();
    assert_eq!((report.moved, report.segments), (40, 1));
    assert!(remote.list("").unwrap().is_empty(), "nothing uploaded before a flush");
    assert_eq!(events.count().unwrap(), 10);
    for i in 0..50 {
        assert_eq!(n_of(&staged, &events, i), Some(i), "e{i:05} before the flush");
    }
    let before = staged.stats().fetches;
    let flushed = block_on(staged.flush(&db)).unwrap();
    assert_eq!(flushed.uploaded, 2, "the segment and its manifest");
    let keys: Vec<String> = remote.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert!(keys.iter().all(|k| k.starts_with("tenant-a/events/")), "{keys:?}");
    // After the flush: the same answers, now fetched from the store, one block per cold get.
    for i in 0..50 {
        assert_eq!(n_of(&staged, &events, i), Some(i), "e{i:05} after the flush");
    }
    assert_eq!(n_of(&staged, &events, 999), None);
    assert!(staged.stats().fetches > before, "cold gets fetched blocks from the store");
    let all = block_on(staged.read(|| events.query().include_cold(true).all())).unwrap();
    assert_eq!(all.iter().map(|e| e.n).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
    // A second flush has nothing to do.
    assert_eq!(block_on(staged.flush(&db)).unwrap().uploaded, 0);
}

#[test]
fn a_cold_read_outside_read_is_a_clear_error_and_a_hot_one_needs_nothing() {
    let dir = TempDir::new("staged-outside");
    let (_remote, staged, db) = seeded(&dir, "");
    block_on(staged.compact(&db)).unwrap();
    let events = db.collection::<Event>().unwrap();
    // Hot: no store involved.
    assert_eq!(events.get("e00049").unwrap().unwrap().n, 49);
    // Cold, the block not fetched: NotFetched, naming the object, telling what to do.
    let err = events.get("e00001").unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::NotFetched), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("events/") && text.contains("StagedStore::read"), "{text}");
    // Through read it is there; a write bringing it back hot works the same way.
    assert_eq!(n_of(&staged, &events, 1), Some(1));
    let mut e = block_on(staged.read(|| events.get("e00002"))).unwrap().unwrap();
    e.n = 1002;
    block_on(staged.read(|| events.update(&e))).unwrap();
    assert_eq!(events.get("e00002").unwrap().unwrap().n, 1002, "hot again");
}

#[test]
fn a_crash_before_the_flush_or_between_upload_and_drop_loses_nothing() {
    let dir = TempDir::new("staged-crash");
    let path = dir.join("db.sqlite");
    let (remote, staged, db) = seeded(&dir, "p/");
    block_on(staged.read(|| db.compact())).unwrap();
    drop(db);
    // "Crash" 1: the process ends with the segment pending. A new process finds it hot.
    let staged2 = StagedStore::new(Arc::clone(&remote), "p/").unwrap();
    let db = open(&path, &staged2, 10);
    let events = db.collection::<Event>().unwrap();
    assert_eq!(n_of(&staged2, &events, 3), Some(3));
    // "Crash" 2: the upload happened, the hot copy was not dropped yet. Simulated by
    // putting the very bytes there first: the flush recognises them and finishes.
    let pending = pending_objects(&path);
    assert_eq!(pending.len(), 2);
    let (k0, b0) = &pending[0];
    remote.put(&format!("p/{k0}"), b0).unwrap();
    let report = block_on(staged2.flush(&db)).unwrap();
    assert_eq!(report.uploaded, 2);
    assert!(pending_objects(&path).is_empty());
    for i in 0..50 {
        assert_eq!(n_of(&staged2, &events, i), Some(i));
    }
}

#[test]
fn other_bytes_under_a_pending_key_are_refused_not_overwritten() {
    let dir = TempDir::new("staged-clash");
    let path = dir.join("db.sqlite");
    let (remote, staged, db) = seeded(&dir, "");
    block_on(staged.read(|| db.compact())).unwrap();
    let (key, _) = pending_objects(&path).remove(0);
    remote.put(&key, b"somebody else's object").unwrap();
    let err = block_on(staged.flush(&db)).unwrap_err();
    assert!(matches!(&err, Error::Corrupted { what, .. } if what.contains(&key)), "{err:?}");
    assert_eq!(remote.get(&key).unwrap().unwrap(), b"somebody else's object");
    // The documents still read, from the hot copy.
    let events = db.collection::<Event>().unwrap();
    assert_eq!(n_of(&staged, &events, 4), Some(4));
}

#[test]
fn a_damaged_or_missing_object_in_the_store_is_named_and_the_rest_reads() {
    let dir = TempDir::new("staged-damage");
    let (remote, staged, db) = seeded(&dir, "t/");
    block_on(staged.compact(&db)).unwrap();
    let events = db.collection::<Event>().unwrap();
    let key = remote.list("t/").unwrap().into_iter().find(|o| o.key.ends_with(".jsonl.gz")).unwrap().key;
    let mut bytes = remote.get(&key).unwrap().unwrap();
    remote.delete(&key).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    remote.put(&key, &bytes).unwrap();
    let fresh = StagedStore::new(Arc::clone(&remote), "t/").unwrap();
    let db2 = open(&dir.join("db.sqlite"), &fresh, 10);
    let events2 = db2.collection::<Event>().unwrap();
    let err = block_on(fresh.read(|| events2.get("e00003"))).unwrap_err();
    assert!(matches!(&err, Error::Corrupted { what, .. } if what.contains(key.trim_start_matches("t/"))), "{err:?}");
    assert_eq!(events2.get("e00045").unwrap().unwrap().n, 45, "hot documents read");
    remote.delete(&key).unwrap();
    let err = block_on(fresh.read(|| events2.get("e00003"))).unwrap_err();
    assert!(matches!(&err, Error::Corrupted { .. }), "{err:?}");
    drop(events);
}

#[test]
fn prefixes_keep_databases_sharing_a_store_apart_through_orphan_cleanup() {
    let a = TempDir::new("staged-prefix-a");
    let b = TempDir::new("staged-prefix-b");
    let remote = Arc::new(MemoryStore::new());
    let sa = StagedStore::new(Arc::clone(&remote), "shard-a/").unwrap();
    let sb = StagedStore::new(Arc::clone(&remote), "shard-b/").unwrap();
    let (da, db) = (open(&a.join("db.sqlite"), &sa, 5), open(&b.join("db.sqlite"), &sb, 5));
    for d in [&da, &db] {
        d.collection::<Event>().unwrap().insert_many(&(0..20).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
    }
    block_on(sa.compact(&da)).unwrap();
    block_on(sb.compact(&db)).unwrap();
    // More compactions in a (each deleting a's orphans) never touch b's objects.
    let ea = da.collection::<Event>().unwrap();
    for round in 0..3 {
        ea.insert_many(&(100 + round * 10..110 + round * 10).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
        block_on(sa.compact(&da)).unwrap();
    }
    assert_eq!(remote.list("shard-b/").unwrap().len(), 2);
    let eb = db.collection::<Event>().unwrap();
    for i in 0..20 {
        assert_eq!(n_of(&sb, &eb, i), Some(i));
        assert_eq!(n_of(&sa, &ea, i), Some(i));
    }
    assert!(StagedStore::new(Arc::clone(&remote), "no-slash").is_err());
    assert!(StagedStore::new(Arc::clone(&remote), "../x/").is_err());
}

#[test]
fn fetched_bytes_stay_within_the_budget_between_reads() {
    let dir = TempDir::new("staged-budget");
    let remote = Arc::new(MemoryStore::new());
    let staged = StagedStore::new(Arc::clone(&remote), "").unwrap().with_cache_bytes(64 << 10);
    let db = open(&dir.join("db.sqlite"), &staged, 0);
    let events = db.collection::<Event>().unwrap();
    let big = |i: i64| Event { body: format!("{i} {}", "word ".repeat(400)), ..event(i, i) };
    events.insert_many(&(0..2000).map(big).collect::<Vec<_>>()).unwrap();
    block_on(staged.compact(&db)).unwrap();
    for i in (0..2000).step_by(7) {
        assert_eq!(n_of(&staged, &events, i), Some(i));
        let stats = staged.stats();
        // One block at most over the budget: the one the last read needed.
        assert!(stats.cached_bytes <= stats.budget_bytes + (64 << 10), "{stats:?}");
    }
    // A read needing more than the budget (every segment whole) still answers.
    let n = block_on(staged.read(|| events.query().include_cold(true).count())).unwrap();
    assert_eq!(n, 2000);
    // And the next read brings it back under.
    n_of(&staged, &events, 1);
    let stats = staged.stats();
    assert!(stats.cached_bytes <= stats.budget_bytes + (64 << 10), "{stats:?}");
}

/// The pending objects in the hot database file, read with rusqlite (keys and bytes).
fn pending_objects(path: &Path) -> Vec<(String, Vec<u8>)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut st = conn.prepare("SELECT key, bytes FROM _db4_cold_pending ORDER BY key, part").unwrap();
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for row in rows {
        let (k, b) = row.unwrap();
        match out.last_mut() {
            Some((last, bytes)) if *last == k => bytes.extend(b),
            _ => out.push((k, b)),
        }
    }
    out
}

/// A database made again under the same prefix never reuses a segment key (its counter
/// starts over, the random part does not), so a cache keeping blocks by key can never serve
/// the old bytes for the new segment.
#[test]
fn a_database_made_again_under_the_same_prefix_never_reuses_a_segment_key() {
    let remote = Arc::new(MemoryStore::new());
    let keys = |remote: &MemoryStore| -> Vec<String> {
        remote.list("p/").unwrap().into_iter().map(|o| o.key).filter(|k| k.ends_with(".jsonl.gz")).collect()
    };
    let mut seen = Vec::new();
    for round in 0..3 {
        let dir = TempDir::new(&format!("staged-again-{round}"));
        let staged = StagedStore::new(Arc::clone(&remote), "p/").unwrap();
        let db = open(&dir.join("db.sqlite"), &staged, 0);
        db.collection::<Event>().unwrap().insert_many(&(0..10).map(|i| event(i, i)).collect::<Vec<_>>()).unwrap();
        block_on(staged.compact(&db)).unwrap();
        // Its compaction deleted the previous database's objects as orphans.
        let now = keys(&remote);
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(!seen.contains(&now[0]), "segment key {} used twice", now[0]);
        seen.push(now[0].clone());
    }
}
