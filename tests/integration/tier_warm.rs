//! The warm tier: hits that read nothing from SQLite, coherence with every kind of write
//! (transactions, rollbacks, savepoints, query deletes, atomic operations, migrations), with
//! other handles and other processes on the same file, threads racing a writer, and eviction
//! within the byte budget.
//!
//! Cases of the model test: `DB4_PROPTEST_CASES` (default 64).

use db4::prelude::*;
use db4::tier::WarmTierStats;
use db4::{Access, Backend, Connection, SqliteBackend, SqliteOptions};
use db4_tests::TempDir;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "warm_notes")]
struct Note {
    #[id]
    id: i64,
    #[index]
    tag: String,
    count: i64,
    #[version]
    version: u64,
}

/// Not `Clone`: the warm tier keeps its stored JSON and decodes it on a hit.
#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
#[db4(collection = "warm_plain")]
struct Plain {
    #[id]
    id: String,
    text: String,
}

fn note(id: i64, tag: &str, count: i64) -> Note {
    Note { id, tag: tag.into(), count, version: 0 }
}

fn warm(bytes: usize) -> DbOptions {
    DbOptions::default().tiers(TierConfig { warm_bytes: bytes, ..Default::default() })
}

fn warm_stats(db: &Db) -> WarmTierStats {
    db.tier_stats().unwrap().warm
}

/// A SQLite backend that counts every time db4 asks it for a connection: every statement db4
/// runs goes through [`Backend::run`] or [`Backend::begin`].
struct Counting {
    inner: SqliteBackend,
    runs: Arc<AtomicU64>,
}

impl Backend for Counting {
    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> db4::Result<()>) -> db4::Result<()> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.inner.run(access, f)
    }

    fn begin(&self) -> db4::Result<Box<dyn db4::HeldTransaction + '_>> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.inner.begin()
    }

    fn foreign_commits(&self) -> Option<u64> {
        self.inner.foreign_commits()
    }
}

fn counting(path: &std::path::Path, options: DbOptions) -> (Db, Arc<AtomicU64>) {
    let runs = Arc::new(AtomicU64::new(0));
    let backend = Counting { inner: SqliteBackend::open(path, &SqliteOptions::default()).unwrap(), runs: runs.clone() };
    (Db::with_backend(backend, options).unwrap(), runs)
}

#[test]
fn a_hit_reads_nothing_from_sqlite() {
    let dir = TempDir::new("warm-hit");
    let (db, runs) = counting(&dir.join("db.sqlite"), warm(1 << 20));
    let notes = db.collection::<Note>().unwrap();
    let plain = db.collection::<Plain>().unwrap();
    notes.insert(&note(1, "a", 1)).unwrap();
    notes.insert(&note(2, "b", 2)).unwrap();
    plain.insert(&Plain { id: "p".into(), text: "json".into() }).unwrap();

    // The first reads miss and read SQLite.
    let before = runs.load(Ordering::SeqCst);
    assert_eq!(notes.get(1).unwrap(), Some(note(1, "a", 1)));
    assert_eq!(plain.get("p").unwrap().map(|p| p.text), Some("json".to_owned()));
    assert_eq!(runs.load(Ordering::SeqCst), before + 2);

    // Then nothing reaches the backend: gets, get_many (also with a duplicated id) of both
    // kinds of document type.
    let before = runs.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert_eq!(notes.get(1).unwrap(), Some(note(1, "a", 1)));
        assert_eq!(plain.get("p").unwrap().map(|p| p.text), Some("json".to_owned()));
    }
    notes.get(2).unwrap();
    let after_fill = runs.load(Ordering::SeqCst);
    assert_eq!(after_fill, before + 1, "only the first get of id 2 reads SQLite");
    let many = notes.get_many([2, 1, 2]).unwrap();
    assert_eq!(many, [Some(note(2, "b", 2)), Some(note(1, "a", 1)), Some(note(2, "b", 2))]);
    assert_eq!(runs.load(Ordering::SeqCst), after_fill);

    let stats = warm_stats(&db);
    assert_eq!((stats.entries, stats.hits, stats.misses), (3, 203, 3));
    assert!(stats.hit_rate() > 0.98);

    // With the warm tier off, every get reads SQLite.
    let off = TempDir::new("warm-off");
    let (db, runs) = counting(&off.join("db.sqlite"), DbOptions::default());
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(1, "a", 1)).unwrap();
    let before = runs.load(Ordering::SeqCst);
    for _ in 0..10 {
        notes.get(1).unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), before + 10);
    assert_eq!(warm_stats(&db), WarmTierStats::default());
}

/// Reads `id` twice (the second from the warm tier when the first filled it).
fn read_twice(notes: &Collection<Note>, id: i64) -> Option<Note> {
    let first = notes.get(id).unwrap();
    assert_eq!(notes.get(id).unwrap(), first);
    first
}

#[test]
fn every_kind_of_write_invalidates() {
    let dir = TempDir::new("warm-writes");
    let db = Db::open_with(dir.join("db.sqlite"), warm(1 << 20)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert_many(&[note(1, "a", 1), note(2, "a", 2), note(3, "b", 3)]).unwrap();
    for id in 1..=3 {
        read_twice(&notes, id);
    }

    let mut n1 = read_twice(&notes, 1).unwrap();
    n1.count = 10;
    n1.version = notes.update(&n1).unwrap().unwrap();
    assert_eq!(read_twice(&notes, 1), Some(n1.clone()));

    let mut up = read_twice(&notes, 1).unwrap();
    up.count = 11;
    notes.upsert(&up).unwrap();
    assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(11));

    assert_eq!(notes.increment(1, Note::fields().count, 5).unwrap(), 16);
    assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(16));

    notes.compare_and_swap(1, Note::fields().tag, "a", "c").unwrap();
    assert_eq!(read_twice(&notes, 1).map(|n| n.tag), Some("c".to_owned()));

    notes.update_with(1, RetryPolicy::default(), |n| n.count += 1).unwrap();
    assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(17));

    let mut n2 = read_twice(&notes, 2).unwrap();
    n2.count = 20;
    notes.upsert_many([&n2]).unwrap();
    assert_eq!(read_twice(&notes, 2).map(|n| n.count), Some(20));

    assert_eq!(notes.query().filter(Note::fields().tag.eq("b")).delete().unwrap(), 1);
    assert_eq!(read_twice(&notes, 3), None);

    assert!(notes.delete(2).unwrap());
    assert_eq!(read_twice(&notes, 2), None);
    assert_eq!(notes.get_many([1, 2, 3]).unwrap().iter().flatten().count(), 1);

    // A migration that rewrites documents: a key the type does not declare is removed.
    let plain = db.collection::<Plain>().unwrap();
    plain.insert(&Plain { id: "p".into(), text: "one".into() }).unwrap();
    assert_eq!(plain.get("p").unwrap().map(|p| p.text), Some("one".to_owned()));
    plain.update(&Plain { id: "p".into(), text: "two".into() }).unwrap();
    assert_eq!(plain.get("p").unwrap().map(|p| p.text), Some("two".to_owned()));
    db.migrate::<Note>().unwrap();
    assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(17));
}

#[test]
fn transactions_see_their_writes_and_rollbacks_leave_nothing_cached() {
    let dir = TempDir::new("warm-tx");
    let db = Db::open_with(dir.join("db.sqlite"), warm(1 << 20)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(1, "a", 1)).unwrap();
    notes.insert(&note(2, "a", 2)).unwrap();
    read_twice(&notes, 1);
    read_twice(&notes, 2);

    // A rolled-back transaction: its reads saw its writes, and afterwards nothing of it.
    let out: db4::Result<()> = db.transaction(|tx| {
        let t = tx.collection::<Note>()?;
        t.increment(1, Note::fields().count, 100)?;
        assert_eq!(t.get(1)?.map(|n| n.count), Some(101));
        assert_eq!(notes.get(1).unwrap().map(|n| n.count), Some(1), "outside: the committed value");
        t.delete(2)?;
        assert_eq!(t.get(2)?, None);
        Err(Error::aborted("roll back"))
    });
    assert!(out.is_err());
    assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(1));
    assert_eq!(read_twice(&notes, 2).map(|n| n.count), Some(2));

    // A savepoint rolled back to, a nested failure, then a commit.
    db.transaction(|tx| {
        let t = tx.collection::<Note>()?;
        t.increment(1, Note::fields().count, 1)?; // kept: 2
        tx.savepoint("s")?;
        t.increment(1, Note::fields().count, 50)?;
        t.delete(2)?;
        tx.rollback_to("s")?;
        assert_eq!(t.get(1)?.map(|n| n.count), Some(2));
        assert_eq!(t.get(2)?.map(|n| n.count), Some(2));
        let nested: db4::Result<()> = tx.transaction(|inner| {
            inner.collection::<Note>()?.increment(2, Note::fields().count, 7)?;
            Err(Error::aborted("inner"))
        });
        assert!(nested.is_err());
        t.insert(&note(3, "c", 3))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(2));
    assert_eq!(read_twice(&notes, 2).map(|n| n.count), Some(2));
    assert_eq!(read_twice(&notes, 3).map(|n| n.count), Some(3));

    // An explicit transaction: committed, and one dropped (rolled back).
    let tx = db.begin().unwrap();
    tx.collection::<Note>().unwrap().increment(3, Note::fields().count, 1).unwrap();
    assert_eq!(notes.get(3).unwrap().map(|n| n.count), Some(3));
    tx.commit().unwrap();
    assert_eq!(read_twice(&notes, 3).map(|n| n.count), Some(4));
    let tx = db.begin().unwrap();
    tx.collection::<Note>().unwrap().delete(3).unwrap();
    drop(tx);
    assert_eq!(read_twice(&notes, 3).map(|n| n.count), Some(4));

    // A panic inside a transaction.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = db.transaction(|tx| -> db4::Result<()> {
            tx.collection::<Note>()?.increment(3, Note::fields().count, 1)?;
            panic!("inside the transaction");
        });
    }));
    assert!(caught.is_err());
    assert_eq!(read_twice(&notes, 3).map(|n| n.count), Some(4));
}

#[test]
fn a_second_handle_on_the_file_sees_the_other_ones_writes() {
    let dir = TempDir::new("warm-handles");
    let path = dir.join("db.sqlite");
    let a = Db::open_with(&path, warm(1 << 20)).unwrap();
    let b = Db::open_with(&path, warm(1 << 20)).unwrap();
    let (na, nb) = (a.collection::<Note>().unwrap(), b.collection::<Note>().unwrap());
    na.insert(&note(1, "a", 1)).unwrap();
    for round in 0..20 {
        assert_eq!(read_twice(&na, 1).map(|n| n.count), Some(round + 1));
        assert_eq!(read_twice(&nb, 1).map(|n| n.count), Some(round + 1));
        let writer = if round % 2 == 0 { &nb } else { &na };
        writer.increment(1, Note::fields().count, 1).unwrap();
    }
    // A handle without a warm tier writes too.
    let c = Db::open(&path).unwrap();
    c.collection::<Note>().unwrap().delete(1).unwrap();
    assert_eq!(na.get(1).unwrap(), None);
    assert_eq!(nb.get(1).unwrap(), None);
    assert!(warm_stats(&a).hits > 0 && warm_stats(&b).hits > 0);
}

const CHILD_ENV: &str = "DB4_TIER_WARM_CHILD";

/// The child process: applies the write its environment names and exits.
fn child(path: &str) -> ! {
    let op = std::env::var("DB4_TIER_WARM_OP").unwrap();
    let db = Db::open(path).unwrap();
    let notes = db.collection::<Note>().unwrap();
    match op.split_once(':') {
        Some(("set", count)) => {
            let mut n = notes.get(1).unwrap().unwrap();
            n.count = count.parse().unwrap();
            notes.update(&n).unwrap();
        }
        Some(("delete", _)) => {
            notes.delete(1).unwrap();
        }
        _ => panic!("unknown op {op}"),
    }
    drop((notes, db));
    std::process::exit(0);
}

#[test]
fn another_process_writing_the_file_is_seen() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(&path);
    }
    let dir = TempDir::new("warm-process");
    let path = dir.join("db.sqlite");
    let db = Db::open_with(&path, warm(1 << 20)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(1, "a", 0)).unwrap();
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let name = format!("{module}::another_process_writing_the_file_is_seen");
    let run_child = |op: &str| {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &path)
            .env("DB4_TIER_WARM_OP", op)
            .status()
            .unwrap();
        assert!(status.success(), "the child failed: {status}");
    };
    for count in 1..=5 {
        // Cached, then written by the other process.
        assert_eq!(read_twice(&notes, 1).map(|n| n.count), Some(count - 1));
        let hits = warm_stats(&db).hits;
        run_child(&format!("set:{count}"));
        assert_eq!(notes.get(1).unwrap().map(|n| n.count), Some(count));
        assert_eq!(warm_stats(&db).hits, hits, "the stale copy was not served");
        // A local write between the other process's: both kinds keep being noticed.
        if count == 3 {
            notes.increment(1, Note::fields().count, 0).unwrap();
        }
    }
    read_twice(&notes, 1);
    run_child("delete:");
    assert_eq!(notes.get(1).unwrap(), None);
}

/// One writer bumps a counter; readers must never see a value older than one whose commit
/// had returned before their read began.
fn race(writer: Collection<Note>, readers: Vec<Collection<Note>>) {
    const ROUNDS: i64 = 2_000;
    writer.insert(&note(1, "r", 0)).unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = readers
        .into_iter()
        .map(|reader| {
            let (committed, done) = (committed.clone(), done.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let floor = committed.load(Ordering::SeqCst) as i64;
                    let seen = reader.get(1).unwrap().unwrap().count;
                    assert!(seen >= floor, "read {seen} after {floor} had committed");
                    assert!(seen >= last, "read {seen} after reading {last}");
                    last = seen;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for v in 1..=ROUNDS {
        let mut n = writer.get(1).unwrap().unwrap();
        assert_eq!(n.count, v - 1);
        n.count = v;
        writer.update(&n).unwrap();
        committed.store(v as u64, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let reads: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(reads > 0);
}

#[test]
fn readers_racing_a_writer_never_go_back_in_time() {
    let dir = TempDir::new("warm-race");
    let path = dir.join("db.sqlite");
    let db = Db::open_with(&path, warm(1 << 20)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    race(notes.clone(), vec![notes.clone(), notes.clone()]);
    assert!(warm_stats(&db).hits > 0, "the readers hit the warm tier at times");

    // The writer on another handle of the same file.
    let other = TempDir::new("warm-race-2");
    let path = other.join("db.sqlite");
    let a = Db::open_with(&path, warm(1 << 20)).unwrap();
    let b = Db::open_with(&path, warm(1 << 20)).unwrap();
    race(a.collection::<Note>().unwrap(), vec![b.collection::<Note>().unwrap(), a.collection::<Note>().unwrap()]);
}

#[test]
fn eviction_keeps_within_the_byte_budget() {
    const BUDGET: usize = 16 * 1024;
    let db = Db::open_in_memory_with(warm(BUDGET)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    let docs: Vec<Note> = (0..200).map(|i| note(i, &"x".repeat(200 + (i as usize % 7) * 50), i)).collect();
    notes.insert_many(&docs).unwrap();
    let mut gets = 0;
    for round in 0..3 {
        for (i, doc) in docs.iter().enumerate() {
            // A skewed pattern: the first 20 often, the rest once a round.
            let id = if i % 2 == 0 { doc.id } else { (i as i64 / 2) % 20 };
            assert_eq!(notes.get(id).unwrap().as_ref(), Some(&docs[id as usize]), "round {round}");
            gets += 1;
            let s = warm_stats(&db);
            assert!(s.bytes <= BUDGET as u64, "{s:?}");
        }
    }
    let s = warm_stats(&db);
    assert_eq!(s.capacity, BUDGET as u64);
    assert_eq!(s.hits + s.misses, gets);
    assert!(s.evictions > 0 && s.hits > 0, "{s:?}");
    // Every entry is charged at least its JSON: the entries fit the bytes.
    assert!(s.entries > 0 && s.entries * 200 <= s.bytes, "{s:?}");
    // A document larger than the whole budget is never cached, and served right.
    let big = note(1_000, &"y".repeat(BUDGET), 0);
    notes.insert(&big).unwrap();
    assert_eq!(notes.get(1_000).unwrap(), Some(big.clone()));
    assert_eq!(notes.get(1_000).unwrap(), Some(big));
    assert!(warm_stats(&db).bytes <= BUDGET as u64);
}

#[test]
fn memory_pressure_evicts_down_to_its_fraction() {
    const BUDGET: usize = 32 * 1024;
    let options = DbOptions::default().tiers(TierConfig {
        warm_bytes: BUDGET,
        policy: CompactionPolicy { memory_pressure: Some(0.5), ..Default::default() },
        ..Default::default()
    });
    let db = Db::open_in_memory_with(options).unwrap();
    let notes = db.collection::<Note>().unwrap();
    let docs: Vec<Note> = (0..100).map(|i| note(i, &"z".repeat(500), i)).collect();
    notes.insert_many(&docs).unwrap();
    let mut evicted_at = None;
    for doc in &docs {
        notes.get(doc.id).unwrap();
        let s = warm_stats(&db);
        assert!(s.bytes <= BUDGET as u64);
        if s.evictions > 0 && evicted_at.is_none() {
            evicted_at = Some(s);
        }
    }
    // Right after the first eviction the tier holds about half its budget (plus the entry
    // that caused it), not just under the whole of it.
    let s = evicted_at.expect("the budget was exceeded");
    let entry = s.bytes / s.entries;
    assert!(s.bytes <= BUDGET as u64 / 2 + entry, "{s:?}");
    assert!(s.evictions > 1, "{s:?}");
}

#[derive(Debug, Clone)]
enum Step {
    Insert(bool, i64, i64),
    Update(bool, i64, i64),
    Delete(bool, i64),
    Get(bool, i64),
    GetMany(bool, Vec<i64>),
    /// A transaction on one handle: its writes, then commit (0), roll back (1), or roll back
    /// to a savepoint taken after the first half (2).
    Tx(bool, Vec<(i64, Option<i64>)>, u8),
}

fn step() -> impl Strategy<Value = Step> {
    let id = 0..6i64;
    prop_oneof![
        1 => (any::<bool>(), id.clone(), 0..1000i64).prop_map(|(h, i, v)| Step::Insert(h, i, v)),
        1 => (any::<bool>(), id.clone(), 0..1000i64).prop_map(|(h, i, v)| Step::Update(h, i, v)),
        1 => (any::<bool>(), id.clone()).prop_map(|(h, i)| Step::Delete(h, i)),
        3 => (any::<bool>(), id.clone()).prop_map(|(h, i)| Step::Get(h, i)),
        1 => (any::<bool>(), proptest::collection::vec(id.clone(), 1..5)).prop_map(|(h, ids)| Step::GetMany(h, ids)),
        1 => (any::<bool>(), proptest::collection::vec((id, proptest::option::of(0..1000i64)), 1..5), 0..3u8)
            .prop_map(|(h, w, end)| Step::Tx(h, w, end)),
    ]
}

/// Writes `value` (or deletes, for `None`) through `c`, as the model would.
fn put(c: &Collection<Note, impl db4::Scope>, model: &mut BTreeMap<i64, i64>, id: i64, value: Option<i64>) {
    match value {
        None => {
            assert_eq!(c.delete(id).unwrap(), model.remove(&id).is_some());
        }
        Some(v) => {
            match c.get(id).unwrap() {
                Some(mut n) => {
                    n.count = v;
                    c.update(&n).unwrap();
                }
                None => c.insert(&note(id, "m", v)).unwrap(),
            }
            model.insert(id, v);
        }
    }
}

fn run_steps(steps: &[Step]) {
    let dir = TempDir::new("warm-model");
    let path = dir.join("db.sqlite");
    let dbs = [Db::open_with(&path, warm(4096)).unwrap(), Db::open_with(&path, warm(1 << 20)).unwrap()];
    let cols = [dbs[0].collection::<Note>().unwrap(), dbs[1].collection::<Note>().unwrap()];
    let mut model: BTreeMap<i64, i64> = BTreeMap::new();
    for s in steps {
        match s {
            Step::Insert(h, id, v) => {
                let r = cols[*h as usize].insert(&note(*id, "m", *v));
                assert_eq!(r.is_ok(), !model.contains_key(id));
                model.entry(*id).or_insert(*v);
            }
            Step::Update(h, id, v) => {
                if model.contains_key(id) {
                    put(&cols[*h as usize], &mut model, *id, Some(*v));
                }
            }
            Step::Delete(h, id) => put(&cols[*h as usize], &mut model, *id, None),
            Step::Get(h, id) => {
                assert_eq!(cols[*h as usize].get(*id).unwrap().map(|n| n.count), model.get(id).copied(), "{id}");
            }
            Step::GetMany(h, ids) => {
                let got: Vec<_> =
                    cols[*h as usize].get_many(ids).unwrap().into_iter().map(|n| n.map(|n| n.count)).collect();
                let want: Vec<_> = ids.iter().map(|id| model.get(id).copied()).collect();
                assert_eq!(got, want);
            }
            Step::Tx(h, writes, end) => {
                let mut inner = model.clone();
                let mut at_savepoint = None;
                let r: db4::Result<()> = dbs[*h as usize].transaction(|tx| {
                    let t = tx.collection::<Note>()?;
                    for (i, (id, v)) in writes.iter().enumerate() {
                        if *end == 2 && i == writes.len() / 2 {
                            tx.savepoint("half")?;
                            at_savepoint = Some(inner.clone());
                        }
                        put(&t, &mut inner, *id, *v);
                        assert_eq!(t.get(*id)?.map(|n| n.count), inner.get(id).copied());
                    }
                    match end {
                        1 => Err(Error::aborted("rolled back")),
                        2 => {
                            if let Some(saved) = at_savepoint.take() {
                                tx.rollback_to("half")?;
                                inner = saved;
                            }
                            Ok(())
                        }
                        _ => Ok(()),
                    }
                });
                if *end != 1 {
                    r.unwrap();
                    model = inner;
                }
            }
        }
    }
    // At the end both handles agree with the model on every id.
    for c in &cols {
        for id in 0..6 {
            assert_eq!(c.get(id).unwrap().map(|n| n.count), model.get(&id).copied());
        }
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn two_handles_read_the_latest_committed_version(steps in proptest::collection::vec(step(), 1..60)) {
        run_steps(&steps);
    }
}
