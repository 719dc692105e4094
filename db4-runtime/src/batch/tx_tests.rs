//! The store inside transactions: its writes commit and roll back with a collection's, reads
//! see the transaction's own writes, savepoints and failed nested transactions put its rows
//! back bit for bit, and commit observers get one change per document written.

use super::model::{Doc, DocRng, Rng, check, is_corrupt, options, random_ops, raw, table_rows};
use super::*;
use crate::db::DbOptions;
use crate::schema::quote_ident;
use crate::store::change::{Change, ChangeKind};
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

/// A collection's document, written in the same transactions as the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, db4_derive::Document)]
#[db4(crate = "crate", collection = "notes")]
struct Note {
    #[id]
    id: String,
    text: String,
}

fn note(id: &str, text: &str) -> Note {
    Note { id: id.to_owned(), text: text.to_owned() }
}

/// The notes stored, in id order.
fn notes(db: &Db) -> Result<Vec<Note>> {
    let mut all = db.collection::<Note>()?.query().all()?;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

/// A store of `docs` documents over several 128-byte blobs, with dead bytes, and its model.
fn seeded(db: &Db, name: &str, docs: usize) -> Result<(BatchStore, BTreeMap<String, Doc>)> {
    let store = BatchStore::open(db, name, options(128))?;
    let mut rng = Rng(docs as u64);
    let mut model: BTreeMap<String, Doc> = (0..docs).map(|i| (format!("s{i:02}"), rng.doc(30))).collect();
    store.put_many(model.iter())?;
    for i in (0..docs).step_by(3) {
        let doc = rng.doc(10);
        store.put(&format!("s{i:02}"), &doc)?;
        model.insert(format!("s{i:02}"), doc);
    }
    let stats = store.verify()?;
    assert!(stats.rows > 3 && stats.dead_bytes > 0, "{stats:?}");
    Ok((store, model))
}

/// Puts, replaces and deletes spanning several blobs, emptying some of them, then compacts:
/// every kind of row change the store makes.
fn churn<S: Scope>(store: &BatchStore<S>, model: &mut BTreeMap<String, Doc>, rng: &mut Rng) -> Result<()> {
    let fresh: Vec<(String, Doc)> = (0..12).map(|i| (format!("new{i:02}"), rng.doc(40))).collect();
    store.put_many(fresh.iter().map(|(id, d)| (id, d)))?;
    model.extend(fresh);
    for id in ["s01", "s04", "new03"] {
        let doc = rng.doc(50);
        store.put(id, &doc)?;
        model.insert(id.to_owned(), doc);
    }
    // The oldest documents: whole blobs lose their last live entry and are dropped.
    let gone: Vec<String> = model.keys().filter(|id| id.starts_with('s')).take(10).cloned().collect();
    assert_eq!(store.delete_many(&gone)?, 10);
    gone.iter().for_each(|id| drop(model.remove(id)));
    assert!(store.delete("new05")?);
    model.remove("new05");
    check(store, model)?;
    let report = store.compact()?;
    assert!(report.blobs_rewritten > 0, "{report:?}");
    check(store, model)
}

#[test]
fn batch_and_collection_writes_commit_together() -> Result<()> {
    let db = Db::open_in_memory()?;
    let store = BatchStore::open(&db, "events", options(128))?;
    let out = db.transaction(|tx| {
        let events = tx.batch(&store);
        events.put("e1", "one")?;
        events.put_many([("e2", "two"), ("e3", "three")])?;
        tx.collection::<Note>()?.insert(&note("n1", "beside the events"))?;
        assert!(events.delete("e2")?);
        events.len()
    })?;
    assert_eq!(out, 2);
    assert_eq!(store.ids()?, ["e1", "e3"]);
    assert_eq!(store.get::<String>("e3")?.as_deref(), Some("three"));
    assert_eq!(notes(&db)?, [note("n1", "beside the events")]);
    assert_eq!(store.verify()?, store.stats()?);
    Ok(())
}

#[test]
fn batch_and_collection_writes_roll_back_together() -> Result<()> {
    let db = Db::open_in_memory()?;
    let (store, model) = seeded(&db, "undone", 20)?;
    db.collection::<Note>()?.insert(&note("n0", "kept"))?;
    let rows = table_rows(&store)?;
    let stats = store.stats()?;
    let work = |tx: &Transaction<'_>| -> Result<()> {
        let events = tx.batch(&store);
        churn(&events, &mut model.clone(), &mut Rng(1))?;
        tx.collection::<Note>()?.insert(&note("n1", "lost"))?;
        Ok(())
    };
    let unchanged = |how: &str| -> Result<()> {
        assert_eq!(table_rows(&store)?, rows, "{how}");
        assert_eq!(store.verify()?, stats, "{how}");
        assert_eq!(notes(&db)?, [note("n0", "kept")], "{how}");
        check(&store, &model)
    };

    let failed = db.transaction(|tx| {
        work(tx)?;
        Err::<(), _>(Error::aborted("the closure fails"))
    });
    assert!(matches!(failed, Err(Error::Aborted(_))), "{failed:?}");
    unchanged("closure Err")?;

    let panicked = catch_unwind(AssertUnwindSafe(|| {
        db.transaction(|tx| -> Result<()> {
            work(tx)?;
            panic!("the closure panics");
        })
    }));
    assert!(panicked.is_err());
    unchanged("panic")?;

    let tx = db.begin()?;
    work(&tx)?;
    drop(tx);
    unchanged("Db::begin, dropped")?;

    let tx = db.begin()?;
    work(&tx)?;
    tx.rollback()?;
    unchanged("Db::begin, rolled back")?;

    let tx = db.begin()?;
    work(&tx)?;
    tx.commit()?;
    assert_ne!(table_rows(&store)?, rows);
    assert_eq!(notes(&db)?, [note("n0", "kept"), note("n1", "lost")]);
    store.verify()?;
    Ok(())
}

#[test]
fn reads_inside_a_transaction_see_its_writes_and_others_do_not() -> Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("db4-batch-tx-{}-{nanos}.db", std::process::id()));
    let result = (|| -> Result<()> {
        // A file, so reads outside the transaction have reader connections of their own.
        let db = Db::open(&path)?;
        let store = BatchStore::open(&db, "seen", options(128))?;
        store.put_many([("a", &1), ("b", &2)])?;
        let committed = store.stats()?;
        let tx = db.begin()?;
        let inside = tx.batch(&store);
        inside.put("c", &3)?;
        inside.put("a", &10)?;
        assert!(inside.delete("b")?);
        assert_eq!(inside.get::<i32>("a")?, Some(10));
        assert_eq!(inside.get::<i32>("b")?, None);
        assert_eq!(inside.get_many::<i32, _>(["a", "b", "c"])?, [Some(10), None, Some(3)]);
        assert!(inside.contains("c")? && !inside.contains("b")?);
        assert_eq!(inside.ids()?, ["a", "c"]);
        assert_eq!((inside.len()?, inside.is_empty()?), (2, false));
        let stats = inside.verify()?;
        assert_eq!(stats, inside.stats()?);
        assert_eq!(stats.documents, 2);
        // Outside, the last committed state.
        assert_eq!(store.ids()?, ["a", "b"]);
        assert_eq!(store.get::<i32>("a")?, Some(1));
        assert_eq!(store.stats()?, committed);
        tx.commit()?;
        assert_eq!(store.ids()?, ["a", "c"]);
        assert_eq!(store.stats()?, stats);
        Ok(())
    })();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        std::fs::remove_file(p).ok();
    }
    result
}

#[test]
fn rollback_to_puts_back_every_row_exactly() -> Result<()> {
    let db = Db::open_in_memory()?;
    let (store, model) = seeded(&db, "exact", 30)?;
    let rows = table_rows(&store)?;
    let stats = store.verify()?;
    db.transaction(|tx| {
        let s = tx.batch(&store);
        // Work before the savepoint stays.
        let mut at_savepoint = model.clone();
        let kept = Doc { n: 1, text: "kept".into() };
        s.put("before", &kept)?;
        at_savepoint.insert("before".into(), kept);
        let rows_at_savepoint = table_rows(&s)?;
        let stats_at_savepoint = s.stats()?;
        assert_ne!(rows_at_savepoint, rows);
        tx.savepoint("start")?;
        churn(&s, &mut at_savepoint.clone(), &mut Rng(2))?;
        assert_ne!(table_rows(&s)?, rows_at_savepoint);
        tx.rollback_to("start")?;
        assert_eq!(table_rows(&s)?, rows_at_savepoint);
        assert_eq!(s.verify()?, stats_at_savepoint);
        assert_eq!(s.stats()?, stats_at_savepoint);
        check(&s, &at_savepoint)?;
        // The savepoint stays: more work, rolled back again.
        churn(&s, &mut at_savepoint.clone(), &mut Rng(3))?;
        s.put("x", &"y".repeat(100))?;
        tx.rollback_to("start")?;
        assert_eq!(table_rows(&s)?, rows_at_savepoint);
        assert_eq!(s.verify()?, stats_at_savepoint);
        check(&s, &at_savepoint)?;
        Ok(rows_at_savepoint)
    })
    .and_then(|rows_at_savepoint| {
        assert_eq!(table_rows(&store)?, rows_at_savepoint);
        let mut committed = model.clone();
        committed.insert("before".into(), Doc { n: 1, text: "kept".into() });
        check(&store, &committed)?;
        assert_eq!(store.stats()?.documents, stats.documents + 1);
        Ok(())
    })
}

#[test]
fn a_failed_nested_transaction_puts_back_every_row_exactly() -> Result<()> {
    let db = Db::open_in_memory()?;
    let (store, model) = seeded(&db, "nested", 24)?;
    let rows = table_rows(&store)?;
    let stats = store.stats()?;
    db.transaction(|tx| {
        let failed = tx.transaction(|inner| {
            churn(&inner.batch(&store), &mut model.clone(), &mut Rng(4))?;
            Err::<(), _>(Error::aborted("undo the nested part"))
        });
        assert!(matches!(failed, Err(Error::Aborted(_))));
        assert_eq!(table_rows(&tx.batch(&store))?, rows);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            tx.transaction(|inner| -> Result<()> {
                churn(&inner.batch(&store), &mut model.clone(), &mut Rng(5))?;
                panic!("the nested closure panics");
            })
        }));
        assert!(panicked.is_err());
        let s = tx.batch(&store);
        assert_eq!(table_rows(&s)?, rows);
        assert_eq!(s.verify()?, stats);
        Ok(())
    })?;
    assert_eq!(table_rows(&store)?, rows);
    check(&store, &model)
}

#[test]
fn a_call_that_fails_halfway_inside_a_transaction_is_undone_and_the_transaction_goes_on() -> Result<()> {
    let db = Db::open_in_memory()?;
    let store = BatchStore::open(&db, "halfway", options(64))?;
    store.put("a", "xxxx")?; // 19 bytes in blob 1
    // Blob 1's recorded size now disagrees with its payload, so appending to it fails.
    raw(&db, &format!(r#"UPDATE {} SET "used" = 20"#, quote_ident("_db4_batch_halfway_blobs")), &[])?;
    let rows = table_rows(&store)?;
    let big = "b".repeat(43);
    db.transaction(|tx| {
        let s = tx.batch(&store);
        // "big" (60 bytes) goes to a fresh blob, written first; "s" (19) then fails on blob 1.
        assert!(is_corrupt(s.put_many([("big", &big), ("s", &"xxxx".to_owned())])));
        assert_eq!(table_rows(&s)?, rows);
        // A delete whose blob release fails half-way: the directory row comes back.
        raw_in(tx, &format!(r#"UPDATE {} SET "live_count" = 0"#, quote_ident("_db4_batch_halfway_blobs")))?;
        assert!(is_corrupt(s.delete("a")));
        raw_in(tx, &format!(r#"UPDATE {} SET "live_count" = 1"#, quote_ident("_db4_batch_halfway_blobs")))?;
        assert_eq!(table_rows(&s)?, rows);
        s.put("big", &big)?;
        Ok(())
    })?;
    assert_eq!(store.ids()?, ["a", "big"]);
    assert_eq!(store.get::<String>("big")?, Some(big));
    Ok(())
}

/// Runs one raw statement inside the transaction.
fn raw_in(tx: &Transaction<'_>, sql: &str) -> Result<usize> {
    tx.conn()?.execute(sql, &[])
}

/// What the observers of `db` receive, one list per commit.
fn observe(db: &Db) -> Arc<Mutex<Vec<Vec<Change>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    db.on_commit(move |changes| sink.lock().unwrap().push(changes.to_vec()));
    seen
}

/// A change as the tests compare it: collection, id, kind, after, before.
type Seen = (String, String, ChangeKind, Option<String>, Option<String>);

fn summary(seen: &Mutex<Vec<Vec<Change>>>) -> Vec<Vec<Seen>> {
    let commits = seen.lock().unwrap();
    commits
        .iter()
        .map(|changes| {
            changes
                .iter()
                .map(|c| {
                    let Value::Text(id) = &c.id else { panic!("a batch id is text: {c:?}") };
                    assert_eq!(c.version, None, "{c:?}");
                    (c.collection.to_string(), id.clone(), c.kind, c.after.clone(), c.before.clone())
                })
                .collect()
        })
        .collect()
}

fn seen(id: &str, kind: ChangeKind, after: Option<&str>, before: Option<&str>) -> Seen {
    ("feed".to_owned(), id.to_owned(), kind, after.map(str::to_owned), before.map(str::to_owned))
}

#[test]
fn observers_get_one_change_per_document_in_order_and_none_for_undone_work() -> Result<()> {
    use ChangeKind::{Delete, Insert, Update};
    let db = Db::open_in_memory()?;
    let store = BatchStore::open(&db, "feed", options(128))?;
    let log = observe(&db);
    store.put("a", &1)?;
    store.put("a", &2)?;
    store.put_many([("b", &3), ("a", &4), ("c", &5), ("b", &6)])?;
    assert_eq!(store.delete_many(["c", "zz"])?, 1);
    // Nothing changed: no change, no delivery.
    assert!(!store.delete("zz")?);
    assert_eq!(store.delete_many(Vec::<String>::new())?, 0);
    db.transaction(|tx| {
        let s = tx.batch(&store);
        s.put("d", &7)?;
        tx.savepoint("sp")?;
        s.put("e", &8)?;
        s.delete("a")?;
        tx.rollback_to("sp")?;
        let nested = tx.transaction(|inner| {
            inner.batch(&store).put("f", &9)?;
            Err::<(), _>(Error::aborted("undone"))
        });
        assert!(nested.is_err());
        tx.collection::<Note>()?.insert(&note("n", "x"))?;
        s.delete("b")?;
        s.put("d", &70)?;
        Ok(())
    })?;
    let failed = db.transaction(|tx| {
        tx.batch(&store).put("g", &10)?;
        Err::<(), _>(Error::aborted("rolled back"))
    });
    assert!(failed.is_err());
    // Compaction moves documents but changes none.
    let numbers: Vec<u64> = (0..20).collect();
    store.put_many(numbers.iter().map(|i| (format!("h{i:02}"), i)))?;
    store.delete_many((0..20).filter(|i| i % 3 != 0).map(|i| format!("h{i:02}")))?;
    log.lock().unwrap().truncate(5);
    assert!(store.compact()?.blobs_rewritten > 0);
    let mut got = summary(&log);
    // The collection's change is the pipeline's own: only its place in the order is checked.
    let tx_changes = &mut got[4];
    assert_eq!(tx_changes[1].0, "notes");
    tx_changes[1] = seen("n", Insert, None, None);
    assert_eq!(
        got,
        [
            vec![seen("a", Insert, Some("1"), None)],
            vec![seen("a", Update, Some("2"), None)],
            vec![
                seen("b", Insert, Some("6"), None),
                seen("a", Update, Some("4"), None),
                seen("c", Insert, Some("5"), None)
            ],
            vec![seen("c", Delete, None, None)],
            vec![
                seen("d", Insert, Some("7"), None),
                seen("n", Insert, None, None),
                seen("b", Delete, None, None),
                seen("d", Update, Some("70"), None),
            ],
        ]
    );
    Ok(())
}

#[test]
fn before_images_fill_before() -> Result<()> {
    use ChangeKind::{Delete, Insert, Update};
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true))?;
    let store = BatchStore::open(&db, "feed", options(128))?;
    let log = observe(&db);
    store.put("a", &1)?;
    store.put("a", &2)?;
    store.put_many([("a", &3), ("b", &4)])?;
    assert_eq!(store.delete_many(["b", "a", "zz"])?, 2);
    db.transaction(|tx| {
        let s = tx.batch(&store);
        s.put("c", "first")?;
        tx.savepoint("sp")?;
        s.put("c", "second")?;
        s.put("c", "third")?;
        tx.rollback_to("sp")?;
        s.put("c", "fourth")?;
        s.delete("c")
    })?;
    assert_eq!(
        summary(&log),
        [
            vec![seen("a", Insert, Some("1"), None)],
            vec![seen("a", Update, Some("2"), Some("1"))],
            vec![seen("a", Update, Some("3"), Some("2")), seen("b", Insert, Some("4"), None)],
            vec![seen("a", Delete, None, Some("3")), seen("b", Delete, None, Some("4"))],
            vec![
                seen("c", Insert, Some(r#""first""#), None),
                seen("c", Update, Some(r#""fourth""#), Some(r#""first""#)),
                seen("c", Delete, None, Some(r#""fourth""#)),
            ],
        ]
    );
    Ok(())
}

/// An active savepoint of the model test: its name, the model and the store's rows.
type Snapshot = (String, BTreeMap<String, Doc>, Vec<Vec<Value>>);

/// Random work inside random transactions: savepoints rolled back to and released, nested
/// transactions failing or not, transactions committed or not, checked against a model with a
/// snapshot per savepoint, and the rows of the store bit for bit at each rollback.
#[test]
fn random_transactions_with_savepoints_match_a_model() -> Result<()> {
    for seed in 1..=3 {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "txmodel", options(256))?;
        let mut model = BTreeMap::new();
        let mut rng = Rng(seed * 1000);
        for _ in 0..25 {
            let commit = rng.below(4) != 0;
            let mut work = model.clone();
            let outcome = db.transaction(|tx| {
                let s = tx.batch(&store);
                let mut snapshots: Vec<Snapshot> = Vec::new();
                for _ in 0..rng.below(8) + 1 {
                    match rng.below(10) {
                        0 | 1 => {
                            let name = format!("sp{}", snapshots.len());
                            tx.savepoint(&name)?;
                            snapshots.push((name, work.clone(), table_rows(&s)?));
                        }
                        2 | 3 if !snapshots.is_empty() => {
                            let i = rng.below(snapshots.len() as u64) as usize;
                            snapshots.truncate(i + 1);
                            let (name, at, rows) = &snapshots[i];
                            tx.rollback_to(name)?;
                            work = at.clone();
                            assert_eq!(&table_rows(&s)?, rows);
                            check(&s, &work)?;
                        }
                        4 if !snapshots.is_empty() => {
                            let i = rng.below(snapshots.len() as u64) as usize;
                            tx.release(&snapshots[i].0)?;
                            snapshots.truncate(i);
                        }
                        5 => {
                            let fail = rng.below(2) == 0;
                            let rows = table_rows(&s)?;
                            let mut inner_work = work.clone();
                            let steps = rng.below(20) as usize + 1;
                            let nested = tx.transaction(|inner| {
                                random_ops(&inner.batch(&store), &mut inner_work, &mut rng, steps)?;
                                if fail { Err(Error::aborted("nested")) } else { Ok(()) }
                            });
                            if fail {
                                assert!(matches!(nested, Err(Error::Aborted(_))), "{nested:?}");
                                assert_eq!(table_rows(&s)?, rows);
                            } else {
                                nested?;
                                work = inner_work;
                            }
                            check(&s, &work)?;
                        }
                        _ => {
                            let steps = rng.below(30) as usize + 1;
                            random_ops(&s, &mut work, &mut rng, steps)?;
                        }
                    }
                }
                check(&s, &work)?;
                if commit { Ok(()) } else { Err(Error::aborted("not this time")) }
            });
            match outcome {
                Ok(()) => model = work,
                Err(Error::Aborted(_)) if !commit => {}
                Err(e) => return Err(e),
            }
            check(&store, &model)?;
        }
    }
    Ok(())
}
