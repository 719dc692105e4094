//! The durable change log (change-data capture), scenario by scenario: every writer logs
//! exactly what committed, in order, with the right operation, version and images; nothing is
//! logged for work that did not commit; consumers, truncation, retention, corruption, the
//! Debezium envelope, the live stream and replay.
//!
//! The helpers at the top (`all_events`, `assert_well_formed`, ...) are shared with
//! `change_log_model.rs` and `change_log_threads.rs`.

use crate::common;
use db4::batch::{BatchOptions, BatchStore};
use db4::cdc::{ChangeEvent, ChangeOp, ChangeRetention};
use db4::wal::StopReason;
use db4::{Db, DbOptions, Document, Error, Lsn, RetryPolicy, Value};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::{Duration, Instant};

// ---- shared helpers ----

/// Every event of the log, from its start.
pub(crate) fn all_events(db: &Db) -> Vec<ChangeEvent> {
    events_after(db, Lsn::ZERO)
}

/// Every event after `lsn`.
pub(crate) fn events_after(db: &Db, lsn: Lsn) -> Vec<ChangeEvent> {
    db.changes_since(lsn).unwrap().collect::<db4::Result<Vec<_>>>().unwrap()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The LSNs of `events`, as numbers.
pub(crate) fn lsns(events: &[ChangeEvent]) -> Vec<u64> {
    events.iter().map(|e| e.lsn.get()).collect()
}

/// The LSNs of `events` grouped by transaction, in order.
pub(crate) fn transactions(events: &[ChangeEvent]) -> Vec<Vec<u64>> {
    let mut out: Vec<(u64, Vec<u64>)> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some((tx, lsns)) if *tx == e.tx_id => lsns.push(e.lsn.get()),
            _ => out.push((e.tx_id, vec![e.lsn.get()])),
        }
    }
    out.into_iter().map(|(_, lsns)| lsns).collect()
}

/// Checks what every stretch of the log must satisfy: LSNs consecutive from `first`, each
/// transaction's events contiguous, sharing its id (the LSN of its first event) and its commit
/// time, and commit times plausible (now, give or take a minute) and never going back.
pub(crate) fn assert_well_formed(events: &[ChangeEvent], first: u64) {
    let expected: Vec<u64> = (first..first + events.len() as u64).collect();
    assert_eq!(lsns(events), expected, "LSNs are consecutive from {first}");
    let now = now_ms();
    let mut seen_tx = std::collections::HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let starts = i == 0 || events[i - 1].tx_id != e.tx_id;
        if starts {
            assert!(seen_tx.insert(e.tx_id), "transaction {} is split: {events:#?}", e.tx_id);
            // The first stretch may start inside a transaction (after a truncation).
            if i > 0 || e.lsn.get() == 1 || e.tx_id == e.lsn.get() {
                assert_eq!(e.tx_id, e.lsn.get(), "a transaction's id is the LSN of its first event");
            }
        } else {
            assert_eq!(e.at, events[i - 1].at, "one commit time per transaction");
        }
        assert!(e.tx_id <= e.lsn.get());
        assert!(e.at + 60_000 >= now && e.at <= now + 60_000, "commit time {} is not about now ({now})", e.at);
        if i > 0 {
            assert!(e.at >= events[i - 1].at, "commit times go back at {}", e.lsn);
        }
    }
}

/// A JSON image, parsed, without the `version` key (the stored JSON keeps whatever version
/// the written copy carried; the event's `version` is the authoritative one).
pub(crate) fn image(json: Option<&str>) -> Option<serde_json::Value> {
    json.map(|text| {
        let mut value: serde_json::Value = serde_json::from_str(text).expect("an image is JSON");
        if let Some(map) = value.as_object_mut() {
            map.remove("version");
        }
        value
    })
}

/// What an event says, in a form easy to compare: operation, collection, id, version and the
/// after-image (see [`image`]).
type Summary = (ChangeOp, String, Value, Option<u64>, Option<serde_json::Value>);

fn summary(e: &ChangeEvent) -> Summary {
    (e.op, e.collection.clone(), e.id.clone(), e.version, image(e.after.as_deref()))
}

fn text(id: &str) -> Value {
    Value::Text(id.into())
}

fn int(id: i64) -> Value {
    Value::Integer(id)
}

// ---- document types ----

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "accounts")]
struct Account {
    #[id]
    id: String,
    #[index]
    owner: String,
    balance: i64,
    #[version]
    version: u64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "notes")]
struct Note {
    #[id]
    id: i64,
    text: String,
}

fn account(id: &str, owner: &str, balance: i64) -> Account {
    Account { id: id.into(), owner: owner.into(), balance, version: 0 }
}

fn note(id: i64, text: &str) -> Note {
    Note { id, text: text.into() }
}

fn acc(id: &str, owner: &str, balance: i64) -> serde_json::Value {
    json!({"id": id, "owner": owner, "balance": balance})
}

fn nt(id: i64, text: &str) -> serde_json::Value {
    json!({"id": id, "text": text})
}

// ---- every writer ----

#[test]
fn every_collection_writer_logs_exactly_what_committed_in_order() {
    let db = Db::open_in_memory().unwrap();
    let accounts = db.collection::<Account>().unwrap();
    let notes = db.collection::<Note>().unwrap();
    let balance = Account::fields().balance;
    let before = now_ms();

    accounts.insert(&account("a1", "ann", 10)).unwrap();
    let mut a = accounts.get("a1").unwrap().unwrap();
    a.balance = 20;
    a.version = accounts.update(&a).unwrap().unwrap();
    accounts.upsert(&account("a2", "bob", 5)).unwrap();
    a.balance = 25;
    accounts.upsert(&a).unwrap();
    notes.upsert(&note(1, "one")).unwrap();
    notes.upsert(&note(1, "uno")).unwrap();
    assert!(accounts.delete("a2").unwrap());
    assert!(!accounts.delete("a2").unwrap(), "nothing to delete: nothing logged");
    notes.insert_many(&[note(2, "two"), note(3, "three")]).unwrap();
    notes.upsert_many(&[note(3, "drei"), note(4, "vier")]).unwrap();
    assert_eq!(accounts.increment("a1", balance, 5).unwrap(), 30);
    assert!(accounts.compare_and_swap("a1", balance, 30, 31).unwrap().swapped);
    assert!(!accounts.compare_and_swap("a1", balance, 30, 32).unwrap().swapped, "no swap: nothing logged");
    assert_eq!(accounts.update_with("a1", RetryPolicy::default(), |d| d.balance *= 2).unwrap().balance, 62);
    assert_eq!(accounts.conditional_update("a1", |d| d.balance > 1000, |d| d.balance = 0).unwrap(), None);
    accounts.insert_many(&[account("c1", "cy", 1), account("c2", "cy", 2), account("d1", "dee", 3)]).unwrap();
    assert_eq!(accounts.query().filter(Account::fields().owner.eq("cy")).delete().unwrap(), 2);

    // Writes that fail log nothing.
    assert!(matches!(notes.insert(&note(1, "dup")), Err(Error::AlreadyExists { .. })));
    assert!(matches!(accounts.update(&account("a1", "ann", 0)), Err(Error::Conflict { .. })));
    assert!(matches!(notes.update(&note(99, "missing")), Err(Error::NotFound { .. })));
    assert!(notes.insert_many(&[note(5, "five"), note(1, "dup")]).is_err());
    assert!(matches!(accounts.increment("nobody", balance, 1), Err(Error::NotFound { .. })));
    assert_eq!(notes.get(5).unwrap(), None, "the failed insert_many wrote nothing");

    let events = all_events(&db);
    assert_well_formed(&events, 1);
    assert!(events.iter().all(|e| e.at >= before && e.at <= now_ms()));
    assert!(events.iter().all(|e| e.before.is_none()), "before-images are off by default");
    let got: Vec<Summary> = events.iter().map(summary).collect();
    let (acc_s, notes_s) = ("accounts".to_owned(), "notes".to_owned());
    let mut expected: Vec<Summary> = vec![
        (ChangeOp::Insert, acc_s.clone(), text("a1"), Some(0), Some(acc("a1", "ann", 10))),
        (ChangeOp::Update, acc_s.clone(), text("a1"), Some(1), Some(acc("a1", "ann", 20))),
        (ChangeOp::Insert, acc_s.clone(), text("a2"), Some(0), Some(acc("a2", "bob", 5))),
        (ChangeOp::Update, acc_s.clone(), text("a1"), Some(2), Some(acc("a1", "ann", 25))),
        (ChangeOp::Insert, notes_s.clone(), int(1), None, Some(nt(1, "one"))),
        (ChangeOp::Update, notes_s.clone(), int(1), None, Some(nt(1, "uno"))),
        // Without a before-image the delete does not read the version it removed.
        (ChangeOp::Delete, acc_s.clone(), text("a2"), None, None),
        (ChangeOp::Insert, notes_s.clone(), int(2), None, Some(nt(2, "two"))),
        (ChangeOp::Insert, notes_s.clone(), int(3), None, Some(nt(3, "three"))),
        (ChangeOp::Update, notes_s.clone(), int(3), None, Some(nt(3, "drei"))),
        (ChangeOp::Insert, notes_s.clone(), int(4), None, Some(nt(4, "vier"))),
        (ChangeOp::Update, acc_s.clone(), text("a1"), Some(3), Some(acc("a1", "ann", 30))),
        (ChangeOp::Update, acc_s.clone(), text("a1"), Some(4), Some(acc("a1", "ann", 31))),
        (ChangeOp::Update, acc_s.clone(), text("a1"), Some(5), Some(acc("a1", "ann", 62))),
        (ChangeOp::Insert, acc_s.clone(), text("c1"), Some(0), Some(acc("c1", "cy", 1))),
        (ChangeOp::Insert, acc_s.clone(), text("c2"), Some(0), Some(acc("c2", "cy", 2))),
        (ChangeOp::Insert, acc_s.clone(), text("d1"), Some(0), Some(acc("d1", "dee", 3))),
    ];
    // The query's delete hands its rows back in no particular order.
    let mut query_deletes = got[expected.len()..].to_vec();
    query_deletes.sort_by_key(|s| s.2.to_string());
    expected.push((ChangeOp::Delete, acc_s.clone(), text("c1"), None, None));
    expected.push((ChangeOp::Delete, acc_s, text("c2"), None, None));
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    assert_eq!([&got[..got.len() - 2], &query_deletes[..]].concat(), expected);
    // One transaction per call; the `_many` forms and the query delete are one each.
    let sizes: Vec<usize> = transactions(&events).iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 3, 2]);
    // The log agrees with the data.
    assert_eq!(accounts.get("a1").unwrap().map(|a| (a.balance, a.version)), Some((62, 5)));
    assert_eq!(db.last_lsn().unwrap(), Lsn::new(events.len() as u64));
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(1));
}

#[test]
fn before_images_are_logged_with_the_option() {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true)).unwrap();
    let accounts = db.collection::<Account>().unwrap();
    let notes = db.collection::<Note>().unwrap();
    accounts.insert(&account("a1", "ann", 1)).unwrap();
    accounts.update(&account("a1", "ann", 2)).unwrap();
    accounts.increment("a1", Account::fields().balance, 3).unwrap();
    accounts.query().filter(Account::fields().owner.eq("ann")).delete().unwrap();
    notes.upsert(&note(1, "one")).unwrap();
    notes.upsert(&note(1, "uno")).unwrap();
    notes.delete(1).unwrap();

    let events = all_events(&db);
    assert_well_formed(&events, 1);
    let got: Vec<_> =
        events.iter().map(|e| (e.op, e.version, image(e.before.as_deref()), image(e.after.as_deref()))).collect();
    assert_eq!(
        got,
        [
            (ChangeOp::Insert, Some(0), None, Some(acc("a1", "ann", 1))),
            (ChangeOp::Update, Some(1), Some(acc("a1", "ann", 1)), Some(acc("a1", "ann", 2))),
            (ChangeOp::Update, Some(2), Some(acc("a1", "ann", 2)), Some(acc("a1", "ann", 5))),
            // With the before-image read, a delete knows the version it removed.
            (ChangeOp::Delete, Some(2), Some(acc("a1", "ann", 5)), None),
            (ChangeOp::Insert, None, None, Some(nt(1, "one"))),
            (ChangeOp::Update, None, Some(nt(1, "one")), Some(nt(1, "uno"))),
            (ChangeOp::Delete, None, Some(nt(1, "uno")), None),
        ]
    );
    // The typed accessors read the same images.
    assert_eq!(events[1].before::<Account>().unwrap().map(|a| a.balance), Some(1));
    assert_eq!(events[1].after::<Account>().unwrap().map(|a| a.balance), Some(2));
    assert_eq!(events[6].after::<Note>().unwrap(), None);
}

mod evolving {
    pub mod v1 {
        use db4::Document;
        use serde::{Deserialize, Serialize};
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "evolving")]
        pub struct Item {
            #[id]
            pub id: String,
            pub legacy: String,
            #[version]
            pub version: u64,
        }
    }
    pub mod v2 {
        use db4::Document;
        use serde::{Deserialize, Serialize};
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "evolving")]
        pub struct Item {
            #[id]
            pub id: String,
            #[serde(default)]
            pub tags: Vec<String>,
            #[version]
            pub version: u64,
        }
    }
}

#[test]
fn migrations_log_their_rewrites_as_updates_keeping_the_version() {
    use evolving::{v1, v2};
    let dir = TempDir::new("cdc-migrate");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let old = db.collection::<v1::Item>().unwrap();
    old.insert(&v1::Item { id: "a".into(), legacy: "old".into(), version: 0 }).unwrap();
    old.update(&v1::Item { id: "a".into(), legacy: "older".into(), version: 0 }).unwrap();
    old.insert(&v1::Item { id: "b".into(), legacy: "new".into(), version: 0 }).unwrap();
    let opened_at = db.last_lsn().unwrap();

    // Opening with the new type writes its serde defaults into the stored documents: one
    // transaction of updates, each keeping the document's version.
    let new = db.collection::<v2::Item>().unwrap();
    let rewrites = events_after(&db, opened_at);
    assert_well_formed(&all_events(&db), 1);
    let got: Vec<_> = rewrites.iter().map(|e| (e.op, e.id.clone(), e.version, image(e.after.as_deref()))).collect();
    assert_eq!(
        got,
        [
            (ChangeOp::Update, text("a"), Some(1), Some(json!({"id": "a", "legacy": "older", "tags": []})),),
            (ChangeOp::Update, text("b"), Some(0), Some(json!({"id": "b", "legacy": "new", "tags": []})),),
        ]
    );
    assert_eq!(transactions(&rewrites).len(), 1);

    // migrate() drops the key the new type does not declare, logged the same way.
    let migrated_at = db.last_lsn().unwrap();
    assert_eq!(db.migrate::<v2::Item>().unwrap().rewritten, 2);
    let got: Vec<_> = events_after(&db, migrated_at)
        .iter()
        .map(|e| (e.op, e.id.clone(), e.version, image(e.after.as_deref())))
        .collect();
    assert_eq!(
        got,
        [
            (ChangeOp::Update, text("a"), Some(1), Some(json!({"id": "a", "tags": []}))),
            (ChangeOp::Update, text("b"), Some(0), Some(json!({"id": "b", "tags": []}))),
        ]
    );

    // Replaying that log reproduces the documents, versions included.
    let copy = Db::open_in_memory().unwrap();
    let copied = copy.collection::<v2::Item>().unwrap();
    let report = db4::wal::replay(&db, &copy, None).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(copied.query().all().unwrap(), new.query().all().unwrap());
    assert_eq!(common::stored_docs(&path, "evolving").len(), 2);
}

#[test]
fn batch_store_writes_are_logged_under_the_store_name() {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true)).unwrap();
    let store = BatchStore::open(&db, "blobs", BatchOptions::default()).unwrap();
    store.put("k1", &json!({"n": 1})).unwrap();
    store.put("k1", &json!({"n": 2})).unwrap();
    store.put_many([("k2", &json!({"n": 3})), ("k3", &json!({"n": 4}))]).unwrap();
    assert!(store.delete("k2").unwrap());
    assert!(!store.delete("k2").unwrap(), "nothing deleted: nothing logged");
    assert_eq!(store.delete_many(["k3", "k1", "zz"]).unwrap(), 2);
    db.transaction(|tx| {
        let store = tx.batch(&store);
        store.put("k4", &json!({"n": 5}))?;
        tx.savepoint("s")?;
        store.put("k5", &json!({"n": 6}))?;
        store.delete("k4")?;
        tx.rollback_to("s")?;
        store.put("k6", &json!({"n": 7}))?;
        Ok(())
    })
    .unwrap();

    let events = all_events(&db);
    assert_well_formed(&events, 1);
    assert!(events.iter().all(|e| e.collection == "blobs" && e.version.is_none()));
    let got: Vec<_> =
        events.iter().map(|e| (e.op, e.id.clone(), image(e.before.as_deref()), image(e.after.as_deref()))).collect();
    let n = |n: i64| Some(json!({ "n": n }));
    assert_eq!(
        got,
        [
            (ChangeOp::Insert, text("k1"), None, n(1)),
            (ChangeOp::Update, text("k1"), n(1), n(2)),
            (ChangeOp::Insert, text("k2"), None, n(3)),
            (ChangeOp::Insert, text("k3"), None, n(4)),
            (ChangeOp::Delete, text("k2"), n(3), None),
            (ChangeOp::Delete, text("k1"), n(2), None),
            (ChangeOp::Delete, text("k3"), n(4), None),
            (ChangeOp::Insert, text("k4"), None, n(5)),
            (ChangeOp::Insert, text("k6"), None, n(7)),
        ]
    );
    assert_eq!(transactions(&events).iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 2, 1, 2, 2]);
    assert_eq!(store.ids().unwrap(), ["k4", "k6"]);
}

// ---- transactions ----

#[test]
fn transactions_log_what_committed_and_nothing_else() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<Note>().unwrap();
    db.collection::<Account>().unwrap();

    // A closure transaction: its events share its id and are contiguous.
    db.transaction(|tx| {
        let notes = tx.collection::<Note>()?;
        notes.insert(&note(1, "a"))?;
        tx.collection::<Account>()?.insert(&account("x", "ann", 1))?;
        notes.update(&note(1, "b"))?;
        Ok(())
    })
    .unwrap();
    // Rolled back: by an Err, by an application error, by hand, by a drop, by a panic.
    let failed: db4::Result<()> = db.transaction(|tx| {
        tx.collection::<Note>()?.insert(&note(2, "lost"))?;
        Err(Error::aborted("no"))
    });
    assert!(failed.is_err());
    #[derive(Debug, PartialEq)]
    enum Mine {
        Refused,
        Db(String),
    }
    impl From<Error> for Mine {
        fn from(e: Error) -> Self {
            Mine::Db(e.to_string())
        }
    }
    let failed: Result<(), Mine> = db.try_transaction(|tx| {
        tx.collection::<Note>()?.insert(&note(2, "lost"))?;
        Err(Mine::Refused)
    });
    assert_eq!(failed, Err(Mine::Refused));
    let tx = db.begin().unwrap();
    tx.collection::<Note>().unwrap().insert(&note(2, "lost")).unwrap();
    tx.rollback().unwrap();
    let tx = db.begin().unwrap();
    tx.collection::<Note>().unwrap().insert(&note(2, "lost")).unwrap();
    drop(tx);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = db.transaction(|tx| -> db4::Result<()> {
            tx.collection::<Note>()?.insert(&note(2, "lost"))?;
            panic!("boom inside the transaction");
        });
    }));
    assert!(panicked.is_err());
    assert_eq!(notes.get(2).unwrap(), None);
    assert_eq!(db.last_lsn().unwrap(), Lsn::new(3), "rolled-back work takes no LSN");

    // An explicit transaction, with a savepoint rolled back to.
    let tx = db.begin().unwrap();
    let inside = tx.collection::<Note>().unwrap();
    inside.insert(&note(10, "kept")).unwrap();
    tx.savepoint("s").unwrap();
    inside.insert(&note(11, "undone")).unwrap();
    inside.update(&note(10, "undone too")).unwrap();
    tx.rollback_to("s").unwrap();
    inside.insert(&note(12, "after")).unwrap();
    inside.insert(&note(13, "undone again")).unwrap();
    tx.rollback_to("s").unwrap();
    inside.insert(&note(14, "last")).unwrap();
    drop(inside);
    tx.commit().unwrap();

    // Savepoints, released ones, nested transactions failing and succeeding, and a panic in
    // a nested transaction the outer one catches.
    db.transaction(|tx| {
        let notes = tx.collection::<Note>()?;
        notes.insert(&note(20, "outer"))?;
        tx.savepoint("t")?;
        notes.delete(20)?;
        tx.release("t")?;
        let inner: db4::Result<()> = tx.transaction(|inner| {
            let notes = inner.collection::<Note>()?;
            notes.insert(&note(21, "inner, failed"))?;
            notes.update(&note(1, "inner, failed"))?;
            Err(Error::aborted("inner fails"))
        });
        assert!(inner.is_err());
        tx.transaction(|inner| {
            inner.collection::<Note>()?.insert(&note(22, "inner, kept"))?;
            let deeper: db4::Result<()> = inner.transaction(|deeper| {
                deeper.collection::<Note>()?.insert(&note(23, "deeper, failed"))?;
                Err(Error::aborted("deeper fails"))
            });
            assert!(deeper.is_err());
            Ok(())
        })?;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = tx.transaction(|inner| -> db4::Result<()> {
                inner.collection::<Note>()?.insert(&note(24, "panicked"))?;
                panic!("boom inside the nested transaction");
            });
        }));
        assert!(caught.is_err());
        notes.insert(&note(25, "outer again"))?;
        Ok(())
    })
    .unwrap();

    let events = all_events(&db);
    assert_well_formed(&events, 1);
    let got: Vec<_> = events.iter().map(|e| (e.op, e.id.clone(), image(e.after.as_deref()))).collect();
    assert_eq!(
        got,
        [
            (ChangeOp::Insert, int(1), Some(nt(1, "a"))),
            (ChangeOp::Insert, text("x"), Some(acc("x", "ann", 1))),
            (ChangeOp::Update, int(1), Some(nt(1, "b"))),
            (ChangeOp::Insert, int(10), Some(nt(10, "kept"))),
            (ChangeOp::Insert, int(14), Some(nt(14, "last"))),
            (ChangeOp::Insert, int(20), Some(nt(20, "outer"))),
            (ChangeOp::Delete, int(20), None),
            (ChangeOp::Insert, int(22), Some(nt(22, "inner, kept"))),
            (ChangeOp::Insert, int(25), Some(nt(25, "outer again"))),
        ]
    );
    assert_eq!(transactions(&events), [vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9]]);
    let ids: Vec<i64> = notes.query().all().unwrap().into_iter().map(|n| n.id).collect();
    assert_eq!(ids, [1, 10, 14, 22, 25]);
}

#[test]
fn with_the_log_off_nothing_is_written_and_the_stream_says_so() {
    let dir = TempDir::new("cdc-off");
    let path = dir.join("db.sqlite");
    let db = Db::open_with(&path, DbOptions::default().change_log(false)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    let mut live = db.changes();
    notes.insert(&note(1, "one")).unwrap();
    notes.upsert(&note(1, "uno")).unwrap();
    db.transaction(|tx| tx.collection::<Note>()?.insert(&note(2, "two"))).unwrap();
    notes.delete(1).unwrap();
    assert_eq!(db.last_lsn().unwrap(), Lsn::ZERO);
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::ZERO);
    assert!(all_events(&db).is_empty());
    assert_eq!(common::scalar(&path, "SELECT count(*) FROM _db4_changes"), 0);
    assert!(db.consumer("etl").unwrap().poll(100).unwrap().is_empty());
    assert!(matches!(live.try_next(), Some(Err(Error::ChangeLog { .. }))));
    assert!(live.try_next().is_none(), "the error ends the stream");
    assert!(matches!(db.changes().next_timeout(Duration::from_secs(5)), Some(Err(Error::ChangeLog { .. }))));
    drop((live, notes, db));

    // Turned on again, the log starts where it is: the writes made meanwhile are not in it.
    let db = Db::open(&path).unwrap();
    db.collection::<Note>().unwrap().insert(&note(3, "three")).unwrap();
    let events = all_events(&db);
    assert_well_formed(&events, 1);
    assert_eq!(events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), [int(3)]);
}

#[test]
fn commit_observers_see_the_positions_the_log_gave() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<Note>().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    db.on_commit(move |changes| {
        sink.lock().unwrap().extend(changes.iter().map(|c| (c.lsn, c.tx_id, c.at, c.id.clone())));
    });
    notes.insert(&note(1, "a")).unwrap();
    notes.insert_many(&[note(2, "b"), note(3, "c")]).unwrap();
    let tx = db.begin().unwrap();
    tx.collection::<Note>().unwrap().delete(1).unwrap();
    tx.commit().unwrap();
    let logged: Vec<_> = all_events(&db).into_iter().map(|e| (Some(e.lsn), Some(e.tx_id), e.at, e.id)).collect();
    assert_eq!(logged.len(), 4);
    assert_eq!(*seen.lock().unwrap(), logged);
}

#[test]
fn a_read_only_handle_reads_the_log() {
    let dir = TempDir::new("cdc-read-only");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    db.collection::<Note>().unwrap().insert(&note(1, "a")).unwrap();
    db.collection::<Note>().unwrap().insert(&note(2, "b")).unwrap();
    let reader = Db::open_with(&path, DbOptions::default().read_only(true)).unwrap();
    assert_eq!(reader.last_lsn().unwrap(), Lsn::new(2));
    assert_eq!(all_events(&reader), all_events(&db));
    // Registering a consumer writes: refused, like any write.
    assert_eq!(reader.consumer("etl").unwrap_err().backend_kind(), Some(db4::BackendErrorKind::ReadOnly));
}

// ---- consumers and persistence ----

#[test]
fn consumers_and_lsns_survive_a_reopen_without_gap_or_duplicate() {
    let dir = TempDir::new("cdc-reopen");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path).unwrap();
        let notes = db.collection::<Note>().unwrap();
        for id in 1..=3 {
            notes.insert(&note(id, "first run")).unwrap();
        }
        let etl = db.consumer("etl").unwrap();
        assert_eq!(etl.name(), "etl");
        assert_eq!(etl.position().unwrap(), Lsn::ZERO);
        let batch = etl.poll(2).unwrap();
        assert_eq!(lsns(&batch), [1, 2]);
        etl.ack(Lsn::new(2)).unwrap();
        // Acknowledging twice, or less, changes nothing.
        etl.ack(Lsn::new(2)).unwrap();
        etl.ack(Lsn::new(1)).unwrap();
        assert_eq!(etl.position().unwrap(), Lsn::new(2));
        // Beyond the newest event: refused, nothing changes.
        assert!(matches!(etl.ack(Lsn::new(4)), Err(Error::ChangeLog { .. })));
        assert_eq!(etl.position().unwrap(), Lsn::new(2));
        // A poll without an acknowledgement: a restart hands the event back.
        assert_eq!(lsns(&etl.poll(1).unwrap()), [3]);
        assert_eq!(etl.polled_lsn(), Lsn::new(3));
        let audit = db.consumer("audit").unwrap();
        assert_eq!(lsns(&audit.poll(1).unwrap()), [1]);
        let names: Vec<_> = db.consumers().unwrap().into_iter().map(|c| (c.name, c.acked)).collect();
        assert_eq!(names, [("audit".to_owned(), Lsn::ZERO), ("etl".to_owned(), Lsn::new(2))]);
    }

    let db = Db::open(&path).unwrap();
    let notes = db.collection::<Note>().unwrap();
    assert_eq!(db.last_lsn().unwrap(), Lsn::new(3));
    notes.insert(&note(4, "second run")).unwrap();
    notes.insert(&note(5, "second run")).unwrap();
    let events = all_events(&db);
    assert_well_formed(&events, 1);
    assert_eq!(transactions(&events), [vec![1], vec![2], vec![3], vec![4], vec![5]]);

    let etl = db.consumer("etl").unwrap();
    assert_eq!(etl.position().unwrap(), Lsn::new(2));
    let batch = etl.poll(100).unwrap();
    assert_eq!(lsns(&batch), [3, 4, 5], "resumes right after its acknowledgement");
    assert!(etl.poll(100).unwrap().is_empty(), "and hands nothing back twice");
    etl.ack(batch[2].lsn).unwrap();
    assert!(etl.poll(0).unwrap().is_empty());
    notes.insert(&note(6, "more")).unwrap();
    assert_eq!(lsns(&db.consumer("etl").unwrap().poll(100).unwrap()), [6]);
    let audit = db.consumer("audit").unwrap();
    assert_eq!(lsns(&audit.poll(100).unwrap()), [1, 2, 3, 4, 5, 6]);

    // A removed consumer cannot acknowledge or say where it is; it is gone from the list.
    assert!(db.remove_consumer("audit").unwrap());
    assert!(!db.remove_consumer("audit").unwrap());
    assert!(matches!(audit.ack(Lsn::new(1)), Err(Error::ChangeLog { .. })));
    assert!(matches!(audit.position(), Err(Error::ChangeLog { .. })));
    let names: Vec<_> = db.consumers().unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["etl"]);
    // Opened again, it is new: it starts at the oldest event kept.
    assert_eq!(db.consumer("audit").unwrap().poll(2).unwrap().first().map(|e| e.lsn), Some(Lsn::new(1)));

    assert!(matches!(db.consumer(""), Err(Error::ChangeLog { .. })));
    assert!(matches!(db.consumer(&"x".repeat(257)), Err(Error::ChangeLog { .. })));
    assert!(db.consumer(&"x".repeat(256)).is_ok());
}

#[test]
fn changes_since_pages_lazily_and_sees_later_commits() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<Note>().unwrap();
    let docs: Vec<Note> = (1..=600).map(|id| note(id, "bulk")).collect();
    notes.insert_many(&docs).unwrap();
    let mut since = db.changes_since(Lsn::new(100)).unwrap();
    let first: Vec<_> = since.by_ref().take(10).map(Result::unwrap).collect();
    assert_eq!(lsns(&first), (101..=110).collect::<Vec<_>>());
    // Committed while the iterator is half-way: its later pages include them.
    notes.insert(&note(601, "late")).unwrap();
    let rest: Vec<_> = since.map(Result::unwrap).collect();
    assert_eq!(lsns(&rest), (111..=601).collect::<Vec<_>>());
    assert_eq!(rest.last().unwrap().after::<Note>().unwrap(), Some(note(601, "late")));
    // Past the end: nothing, no error.
    assert!(events_after(&db, Lsn::new(601)).is_empty());
    assert!(events_after(&db, Lsn::new(10_000)).is_empty());
    // A consumer's poll spans pages too.
    let c = db.consumer("big").unwrap();
    assert_eq!(lsns(&c.poll(1000).unwrap()), (1..=601).collect::<Vec<_>>());
}

// ---- truncation and retention ----

#[test]
fn truncation_keeps_the_newest_event_and_what_consumers_still_need() {
    let dir = TempDir::new("cdc-truncate");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let notes = db.collection::<Note>().unwrap();
    for id in 1..=10 {
        notes.insert(&note(id, "n")).unwrap();
    }
    assert_eq!(db.truncate_changes(Lsn::new(4)).unwrap(), 3);
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(4));
    assert!(matches!(db.changes_since(Lsn::ZERO), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(4)));
    assert!(matches!(db.changes_since(Lsn::new(2)), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(4)));
    assert_eq!(lsns(&events_after(&db, Lsn::new(3))), (4..=10).collect::<Vec<_>>());
    assert_eq!(db.truncate_changes(Lsn::new(4)).unwrap(), 0, "nothing more before 4");

    // Everything before a far LSN: the newest event stays.
    assert_eq!(db.truncate_changes(Lsn::new(1_000)).unwrap(), 6);
    assert_eq!((db.oldest_lsn().unwrap(), db.last_lsn().unwrap()), (Lsn::new(10), Lsn::new(10)));
    assert!(matches!(db.changes_since(Lsn::new(8)), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(10)));
    // LSNs go on after the newest, never reused, also after a reopen.
    drop((notes, db));
    let db = Db::open(&path).unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(11, "n")).unwrap();
    assert_eq!(lsns(&events_after(&db, Lsn::new(9))), [10, 11]);

    // A new consumer starts at the oldest event kept, and holds back what it has not acked.
    let c = db.consumer("c").unwrap();
    assert_eq!(c.position().unwrap(), Lsn::new(9));
    assert_eq!(lsns(&c.poll(100).unwrap()), [10, 11]);
    c.ack(Lsn::new(10)).unwrap();
    notes.insert(&note(12, "n")).unwrap();
    notes.insert(&note(13, "n")).unwrap();
    assert_eq!(db.truncate_changes(Lsn::new(1_000)).unwrap(), 1, "only what c acknowledged goes");
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(11));
    // Restarted, c reads everything it had not acknowledged.
    assert_eq!(lsns(&db.consumer("c").unwrap().poll(100).unwrap()), [11, 12, 13]);
    let late = db.consumer("late").unwrap();
    assert_eq!(late.position().unwrap(), Lsn::new(10));
    assert_eq!(db.truncate_changes(Lsn::new(1_000)).unwrap(), 0);
    late.ack(Lsn::new(13)).unwrap();
    c.ack(Lsn::new(12)).unwrap();
    assert_eq!(db.truncate_changes(Lsn::new(1_000)).unwrap(), 2);
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(13));
    assert_eq!(lsns(&db.consumer("c").unwrap().poll(100).unwrap()), [13], "c resumes after its acknowledgement");

    // Removed, a consumer no longer holds anything back; its handle reads a truncated log.
    let stale = db.consumer("stale").unwrap();
    notes.insert(&note(14, "n")).unwrap();
    notes.insert(&note(15, "n")).unwrap();
    c.ack(Lsn::new(15)).unwrap();
    late.ack(Lsn::new(15)).unwrap();
    assert_eq!(db.truncate_changes(Lsn::new(1_000)).unwrap(), 0, "stale has acknowledged nothing");
    assert!(db.remove_consumer("stale").unwrap());
    assert_eq!(db.truncate_changes(Lsn::new(1_000)).unwrap(), 2);
    assert!(matches!(stale.poll(10), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(15)));
    notes.insert(&note(16, "n")).unwrap();
    assert_eq!(db.last_lsn().unwrap(), Lsn::new(16));
    assert_well_formed(&events_after(&db, Lsn::new(14)), 15);
}

/// Automatic retention runs when a commit's LSNs cross a multiple of 1024: the tests write
/// past 1024.
fn bulk(db: &Db, from: i64, n: i64) {
    let docs: Vec<Note> = (from..from + n).map(|id| note(id, "bulk")).collect();
    db.collection::<Note>().unwrap().insert_many(&docs).unwrap();
}

#[test]
fn retention_by_count_keeps_the_newest_events_and_what_consumers_need() {
    let retention = ChangeRetention { max_events: Some(100), max_age: None };
    let db = Db::open_in_memory_with(DbOptions::default().change_retention(retention)).unwrap();
    bulk(&db, 1, 1000);
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(1), "no retention point crossed yet");
    bulk(&db, 1001, 30);
    assert_eq!((db.oldest_lsn().unwrap(), db.last_lsn().unwrap()), (Lsn::new(931), Lsn::new(1030)));
    assert!(matches!(db.changes_since(Lsn::ZERO), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(931)));
    assert_eq!(events_after(&db, Lsn::new(930)).len(), 100);

    // A registered consumer's unacknowledged events are kept whatever the bound.
    let db = Db::open_in_memory_with(DbOptions::default().change_retention(retention)).unwrap();
    let slow = db.consumer("slow").unwrap();
    bulk(&db, 1, 1000);
    slow.ack(Lsn::new(500)).unwrap();
    bulk(&db, 1001, 30);
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(501));
    assert_eq!(slow.poll(10_000).unwrap().len(), 530);
    slow.ack(Lsn::new(1030)).unwrap();
    bulk(&db, 1031, 2048);
    assert_eq!((db.oldest_lsn().unwrap(), db.last_lsn().unwrap()), (Lsn::new(1031), Lsn::new(3078)));
    // Removed, it holds nothing back: the next retention point keeps the newest 100.
    assert!(db.remove_consumer("slow").unwrap());
    bulk(&db, 3079, 1024);
    assert_eq!((db.oldest_lsn().unwrap(), db.last_lsn().unwrap()), (Lsn::new(4003), Lsn::new(4102)));
    assert_well_formed(&events_after(&db, Lsn::new(4002)), 4003);

    // A bound of zero still keeps the newest event.
    let none = ChangeRetention { max_events: Some(0), max_age: None };
    let db = Db::open_in_memory_with(DbOptions::default().change_retention(none)).unwrap();
    bulk(&db, 1, 1030);
    assert_eq!((db.oldest_lsn().unwrap(), db.last_lsn().unwrap()), (Lsn::new(1030), Lsn::new(1030)));
    bulk(&db, 1031, 1);
    assert_eq!(lsns(&events_after(&db, Lsn::new(1029))), [1030, 1031]);
}

#[test]
fn retention_by_age_drops_old_events_but_not_what_consumers_need() {
    let age = ChangeRetention { max_events: None, max_age: Some(Duration::from_millis(50)) };
    let db = Db::open_in_memory_with(DbOptions::default().change_retention(age)).unwrap();
    let other = Db::open_in_memory_with(DbOptions::default().change_retention(age)).unwrap();
    let held = other.consumer("held").unwrap();
    let long = ChangeRetention { max_events: None, max_age: Some(Duration::from_secs(3600)) };
    let young = Db::open_in_memory_with(DbOptions::default().change_retention(long)).unwrap();
    for db in [&db, &other, &young] {
        bulk(db, 1, 1000);
    }
    held.ack(Lsn::new(10)).unwrap();
    // The one sleep of these tests: the first events must be older than the bound.
    std::thread::sleep(Duration::from_millis(120));
    for db in [&db, &other, &young] {
        bulk(db, 1001, 30);
    }
    assert_eq!(db.oldest_lsn().unwrap(), Lsn::new(1001));
    assert!(matches!(db.changes_since(Lsn::new(5)), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(1001)));
    assert_eq!(other.oldest_lsn().unwrap(), Lsn::new(11), "the consumer's events stay");
    assert_eq!(young.oldest_lsn().unwrap(), Lsn::new(1), "nothing is an hour old");
    assert_eq!(db.last_lsn().unwrap(), Lsn::new(1030));
}

// ---- corruption ----

/// Changes one byte of the `after` image of event `lsn`, straight in the file.
fn damage_after_image(path: &std::path::Path, lsn: i64) {
    let conn = common::raw(path);
    let after: String = conn.query_row("SELECT after FROM _db4_changes WHERE lsn = ?1", [lsn], |r| r.get(0)).unwrap();
    let mut bytes = after.into_bytes();
    let at = bytes.iter().position(|&b| b == b'x').expect("the image holds an x");
    bytes[at] = b'y';
    let damaged = String::from_utf8(bytes).unwrap();
    assert_eq!(conn.execute("UPDATE _db4_changes SET after = ?1 WHERE lsn = ?2", (&damaged, lsn)).unwrap(), 1);
}

#[test]
fn a_damaged_event_is_reported_at_its_lsn_after_the_events_before_it() {
    let dir = TempDir::new("cdc-corrupt");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(1, "one")).unwrap();
    notes.insert(&note(2, "two")).unwrap();
    notes.insert_many(&[note(3, "three"), note(4, "xyz"), note(5, "five")]).unwrap();
    notes.insert(&note(6, "six")).unwrap();
    damage_after_image(&path, 4);

    let items: Vec<_> = db.changes_since(Lsn::ZERO).unwrap().collect();
    assert_eq!(items.len(), 4, "{items:#?}");
    assert_eq!(items[..3].iter().map(|e| e.as_ref().unwrap().lsn.get()).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(matches!(&items[3], Err(Error::WalCorrupted { lsn: 4, .. })), "{:?}", items[3]);
    assert!(matches!(db.changes_since(Lsn::new(3)), Err(Error::WalCorrupted { lsn: 4, .. })));
    assert_eq!(lsns(&events_after(&db, Lsn::new(4))), [5, 6], "the events after it still read");

    // A consumer gets the events before it, then the error.
    let c = db.consumer("c").unwrap();
    assert_eq!(lsns(&c.poll(100).unwrap()), [1, 2, 3]);
    assert!(matches!(c.poll(100), Err(Error::WalCorrupted { lsn: 4, .. })));

    // Replay stops there, before the transaction the damaged event belongs to.
    let copy = Db::open_in_memory().unwrap();
    let copied = copy.collection::<Note>().unwrap();
    let report = db4::wal::replay(&db, &copy, None).unwrap();
    assert!(matches!(&report.stopped, Some(StopReason::Malformed { lsn, .. }) if *lsn == Lsn::new(4)), "{report:?}");
    assert_eq!((report.applied, report.last), (2, Lsn::new(2)));
    assert_eq!(copied.query().all().unwrap(), [note(1, "one"), note(2, "two")]);
    // Up to an LSN before the damage, it is complete.
    let copy = Db::open_in_memory().unwrap();
    copy.collection::<Note>().unwrap();
    let report = db4::wal::replay(&db, &copy, Some(Lsn::new(2))).unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.applied, 2);
}

// ---- the Debezium envelope ----

#[test]
fn the_envelope_is_debezium_shaped() {
    let db = Db::open_in_memory_with(DbOptions::default().name("shop").before_images(true)).unwrap();
    let accounts = db.collection::<Account>().unwrap();
    let notes = db.collection::<Note>().unwrap();
    accounts.insert(&account("a1", "ann", 10)).unwrap();
    accounts.update(&account("a1", "ann", 20)).unwrap();
    accounts.delete("a1").unwrap();
    notes.insert(&note(7, "seven")).unwrap();
    let events = all_events(&db);
    let envelopes: Vec<_> = events.iter().map(|e| e.to_json().unwrap()).collect();
    let doc = |balance: i64, version: u64| json!({"id": "a1", "owner": "ann", "balance": balance, "version": version});
    let source = |lsn: u64, version: Option<u64>| json!({"db": "shop", "collection": "accounts", "id": "a1", "lsn": lsn, "tx_id": lsn, "version": version});
    assert_eq!(
        envelopes[0],
        json!({"before": null, "after": doc(10, 0), "op": "c", "ts_ms": events[0].at, "source": source(1, Some(0))})
    );
    assert_eq!(
        envelopes[1],
        // The images carry the version column's value, not the one inside the written JSON.
        json!({"before": doc(10, 0), "after": doc(20, 1), "op": "u", "ts_ms": events[1].at, "source": source(2, Some(1))})
    );
    assert_eq!(
        envelopes[2],
        json!({"before": doc(20, 1), "after": null, "op": "d", "ts_ms": events[2].at, "source": source(3, Some(1))})
    );
    // An integer id is a number; no version field, a null version.
    assert_eq!(
        envelopes[3]["source"],
        json!({"db": "shop", "collection": "notes", "id": 7, "lsn": 4, "tx_id": 4, "version": null})
    );
    assert_eq!(envelopes[3]["after"], json!({"id": 7, "text": "seven"}));
    assert!(envelopes.iter().all(|e| e["ts_ms"].as_u64().is_some_and(|t| t.abs_diff(now_ms()) < 60_000)));

    // The default name, and no before-image without the option.
    let plain = Db::open_in_memory().unwrap();
    plain.collection::<Note>().unwrap().upsert(&note(1, "a")).unwrap();
    plain.collection::<Note>().unwrap().upsert(&note(1, "b")).unwrap();
    let envelopes: Vec<_> = all_events(&plain).iter().map(|e| e.to_json().unwrap()).collect();
    assert_eq!(envelopes[0]["source"]["db"], "db4");
    assert_eq!((&envelopes[1]["op"], &envelopes[1]["before"]), (&json!("u"), &json!(null)));
}

// ---- the live stream ----

#[test]
fn a_stream_delivers_what_commits_after_it_subscribed_in_commit_order() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(0, "before the stream")).unwrap();
    let mut live = db.changes();
    assert!(live.try_next().is_none(), "nothing committed since it subscribed");
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let notes = db.collection::<Note>().unwrap();
                for i in 0..20 {
                    let id = 1 + t * 100 + i;
                    if i % 5 == 0 {
                        let _ = db.transaction(|tx| -> db4::Result<()> {
                            tx.collection::<Note>()?.insert(&note(id + 50, "rolled back"))?;
                            Err(Error::aborted("rolled back"))
                        });
                    }
                    notes.insert(&note(id, "live")).unwrap();
                }
                // And transactions of several events.
                let docs: Vec<Note> = (0..3).map(|i| note(1 + t * 100 + 20 + i, "live")).collect();
                notes.insert_many(&docs).unwrap();
                // A closure transaction on two threads, an explicit one on the other two.
                let last = 1 + t * 100 + 23;
                if t % 2 == 0 {
                    db.transaction(|tx| {
                        let notes = tx.collection::<Note>()?;
                        notes.insert(&note(last, "live"))?;
                        notes.update(&note(last, "live, updated"))
                    })
                    .unwrap();
                } else {
                    let tx = db.begin().unwrap();
                    let notes = tx.collection::<Note>().unwrap();
                    notes.insert(&note(last, "live")).unwrap();
                    notes.update(&note(last, "live, updated")).unwrap();
                    drop(notes);
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    while seen.len() < 100 {
        match live.next_timeout(Duration::from_secs(30)) {
            Some(event) => seen.push(event.unwrap()),
            None => panic!("the stream stopped after {} events", seen.len()),
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    assert!(live.try_next().is_none(), "nothing beyond what committed");
    assert_well_formed(&seen, 2);
    // Exactly the logged events: LSNs, transaction ids, commit times, images.
    assert_eq!(seen, events_after(&db, Lsn::new(1)));
    assert!(seen.iter().all(|e| e.after.as_deref().is_some_and(|a| a.contains("live"))));
    assert_eq!(transactions(&seen).iter().filter(|tx| tx.len() > 1).count(), 8);
}

#[test]
fn a_lagging_stream_says_where_to_resume() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<Note>().unwrap();
    notes.insert(&note(0, "before")).unwrap();
    let mut one_by_one = db.changes_with_capacity(4);
    for id in 1..=10 {
        notes.insert(&note(id, "n")).unwrap();
    }
    let mut at_once = db.changes_with_capacity(4);
    let docs: Vec<Note> = (11..=20).map(|id| note(id, "n")).collect();
    notes.insert_many(&docs).unwrap();

    for (stream, first) in [(&mut one_by_one, 2), (&mut at_once, 12)] {
        let delivered: Vec<_> = (0..4).map(|_| stream.try_next().unwrap().unwrap()).collect();
        assert_eq!(lsns(&delivered), (first..first + 4).collect::<Vec<_>>());
        assert_eq!(delivered[..], events_after(&db, Lsn::new(first - 1))[..4], "the logged events, in full");
        let resume_after = match stream.try_next() {
            Some(Err(Error::Lagged { resume_after })) => resume_after,
            other => panic!("expected a lag, got {other:?}"),
        };
        assert_eq!(resume_after, delivered[3].lsn);
        assert!(stream.try_next().is_none(), "the lag ends the stream");
        assert!(stream.next_timeout(Duration::from_millis(1)).is_none());
        // Nothing is lost: the log has the rest.
        let rest = events_after(&db, resume_after);
        assert_eq!(rest.first().map(|e| e.lsn.get()), Some(first + 4));
        assert_eq!(rest.last().map(|e| e.lsn.get()), Some(21));
    }
    // The first stream lagged at LSN 5; the second one never saw the first ten.
    assert_eq!(events_after(&db, Lsn::new(5)).len(), 16);
}

#[test]
fn a_stream_ends_when_the_database_is_dropped() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<Note>().unwrap();
    let mut buffered = db.changes();
    let mut waiting = db.changes();
    notes.insert(&note(1, "n")).unwrap();
    assert_eq!(waiting.next_timeout(Duration::from_secs(30)).unwrap().unwrap().lsn, Lsn::new(1));
    // A reader blocked waiting for the next event wakes up when the last handle goes.
    let reader = std::thread::spawn(move || {
        let started = Instant::now();
        let next = waiting.next_timeout(Duration::from_secs(60));
        (next.is_none(), started.elapsed())
    });
    drop(notes);
    drop(db);
    let (ended, waited) = reader.join().unwrap();
    assert!(ended);
    assert!(waited < Duration::from_secs(30), "the reader waited for its timeout ({waited:?}), not for the close");
    // What was buffered is still handed out, then the stream ends at once.
    assert_eq!(buffered.try_next().unwrap().unwrap().lsn, Lsn::new(1));
    let started = Instant::now();
    assert!(buffered.next_timeout(Duration::from_secs(60)).is_none());
    assert!(buffered.next().is_none(), "the blocking iterator ends too");
    assert!(started.elapsed() < Duration::from_secs(30));
}

// ---- replay ----

#[test]
fn replay_reproduces_the_live_database_and_any_earlier_state() {
    let db = Db::open_in_memory().unwrap();
    let accounts = db.collection::<Account>().unwrap();
    let notes = db.collection::<Note>().unwrap();
    accounts.insert_many(&[account("a", "ann", 1), account("b", "bob", 2)]).unwrap();
    let after_first = accounts.query().all().unwrap();
    db.transaction(|tx| {
        let accounts = tx.collection::<Account>()?;
        accounts.increment("a", Account::fields().balance, 10)?;
        accounts.delete("b")?;
        tx.collection::<Note>()?.insert(&note(1, "n"))?;
        Ok(())
    })
    .unwrap();
    accounts.update_with("a", RetryPolicy::default(), |a| a.balance += 1).unwrap();
    notes.upsert(&note(1, "m")).unwrap();

    let copy = Db::open_in_memory().unwrap();
    let (c_accounts, c_notes) = (copy.collection::<Account>().unwrap(), copy.collection::<Note>().unwrap());
    let report = db4::wal::replay(&db, &copy, None).unwrap();
    assert!(report.is_complete());
    assert_eq!((report.applied, report.last), (7, Lsn::new(7)));
    assert_eq!(c_accounts.query().all().unwrap(), accounts.query().all().unwrap());
    assert_eq!(c_accounts.get("a").unwrap().map(|a| (a.balance, a.version)), Some((12, 2)));
    assert_eq!(c_notes.query().all().unwrap(), notes.query().all().unwrap());

    // Up to LSN 1, in the middle of the first transaction: all of it, nothing after.
    let copy = Db::open_in_memory().unwrap();
    let c_accounts = copy.collection::<Account>().unwrap();
    copy.collection::<Note>().unwrap();
    let report = db4::wal::replay(&db, &copy, Some(Lsn::new(1))).unwrap();
    assert_eq!((report.applied, report.last), (2, Lsn::new(2)));
    assert_eq!(c_accounts.query().all().unwrap(), after_first);

    // A target that has not opened a collection stops at the event that needs it, holding
    // every source transaction before that event's transaction (LSNs 1 and 2), none of it.
    let partial = Db::open_in_memory().unwrap();
    partial.collection::<Account>().unwrap();
    let report = db4::wal::replay(&db, &partial, None).unwrap();
    assert!(matches!(report.stopped, Some(StopReason::Callback { lsn, .. }) if lsn == Lsn::new(5)), "{report:?}");
    assert_eq!((report.applied, report.last), (2, Lsn::new(2)));
    assert_eq!(partial.collection::<Account>().unwrap().query().all().unwrap(), after_first);

    // A batch store's events are not replayed: they stop the replay, after what came before.
    let blobs = BatchStore::open(&db, "blobs", BatchOptions::default()).unwrap();
    blobs.put("b1", &1).unwrap();
    notes.insert(&note(2, "after the blob")).unwrap();
    let copy = Db::open_in_memory().unwrap();
    let (c_accounts, c_notes) = (copy.collection::<Account>().unwrap(), copy.collection::<Note>().unwrap());
    BatchStore::open(&copy, "blobs", BatchOptions::default()).unwrap();
    let report = db4::wal::replay(&db, &copy, None).unwrap();
    assert!(matches!(report.stopped, Some(StopReason::Callback { lsn, .. }) if lsn == Lsn::new(8)), "{report:?}");
    assert_eq!((report.applied, report.last), (7, Lsn::new(7)));
    assert_eq!(c_accounts.query().all().unwrap(), accounts.query().all().unwrap());
    assert_eq!(c_notes.query().all().unwrap(), [note(1, "m")]);

    // A truncated source cannot be replayed from its start.
    db.truncate_changes(Lsn::new(3)).unwrap();
    assert!(matches!(db4::wal::replay(&db, &copy, None), Err(Error::LogTruncated { oldest }) if oldest == Lsn::new(3)));
}
