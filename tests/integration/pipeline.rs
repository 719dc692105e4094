//! The write pipeline as commit observers see it: every kind of write reports its change with
//! the right kind, version and images, and nothing is reported for work that did not commit.

use crate::common;
use db4::{Change, ChangeKind, Db, DbOptions, Document, Error, RetryPolicy, Value};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "ledger")]
struct Entry {
    #[id]
    id: String,
    #[index]
    owner: String,
    amount: i64,
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

fn entry(id: &str, owner: &str, amount: i64) -> Entry {
    Entry { id: id.into(), owner: owner.into(), amount, version: 0 }
}

/// Every change the observer saw, commit by commit.
fn observed(db: &Db) -> Arc<Mutex<Vec<Vec<Change>>>> {
    let seen: Arc<Mutex<Vec<Vec<Change>>>> = Arc::default();
    let sink = Arc::clone(&seen);
    db.on_commit(move |changes| sink.lock().unwrap().push(changes.to_vec()));
    seen
}

fn take(seen: &Mutex<Vec<Vec<Change>>>) -> Vec<Vec<Change>> {
    std::mem::take(&mut *seen.lock().unwrap())
}

fn text(id: &str) -> Value {
    Value::Text(id.into())
}

#[test]
fn each_write_reports_its_kind_version_and_after_image() {
    let db = Db::open_in_memory().unwrap();
    let ledger = db.collection::<Entry>().unwrap();
    let seen = observed(&db);

    let mut e = entry("e1", "ann", 10);
    ledger.insert(&e).unwrap();
    e.amount = 11;
    e.version = ledger.update(&e).unwrap().unwrap();
    assert_eq!(ledger.increment("e1", Entry::fields().amount, 5).unwrap(), 16);
    let doc = ledger.update_with("e1", RetryPolicy::default(), |d| d.amount *= 2).unwrap();
    assert_eq!(doc.amount, 32);
    assert!(ledger.delete("e1").unwrap());
    assert!(!ledger.delete("e1").unwrap(), "nothing to delete: nothing reported");

    let commits = take(&seen);
    assert_eq!(commits.len(), 5, "{commits:#?}");
    let only = |i: usize| -> &Change {
        assert_eq!(commits[i].len(), 1, "{:#?}", commits[i]);
        &commits[i][0]
    };
    let kinds: Vec<_> = (0..5).map(|i| (only(i).kind, only(i).version)).collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Insert, Some(0)),
            (ChangeKind::Update, Some(1)),
            (ChangeKind::Update, Some(2)),
            (ChangeKind::Update, Some(3)),
            (ChangeKind::Delete, None),
        ]
    );
    for i in 0..5 {
        assert_eq!((only(i).collection.as_ref(), &only(i).id), ("ledger", &text("e1")));
        assert_eq!(only(i).before, None, "before-images are off by default");
    }
    let amounts: Vec<i64> = (0..4).map(|i| only(i).after::<Entry>().unwrap().unwrap().amount).collect();
    assert_eq!(amounts, [10, 11, 16, 32]);
    assert_eq!(only(4).after::<Entry>().unwrap(), None);
}

#[test]
fn before_images_come_with_the_option_and_settle_upserts() {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true)).unwrap();
    let notes = db.collection::<Note>().unwrap();
    let seen = observed(&db);
    notes.upsert(&Note { id: 1, text: "one".into() }).unwrap();
    notes.upsert(&Note { id: 1, text: "uno".into() }).unwrap();
    notes.delete(1).unwrap();
    let changes: Vec<Change> = take(&seen).into_iter().flatten().collect();
    let summary: Vec<_> = changes
        .iter()
        .map(|c| {
            let before = c.before::<Note>().unwrap().map(|n| n.text);
            let after = c.after::<Note>().unwrap().map(|n| n.text);
            (c.kind, before, after)
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ChangeKind::Insert, None, Some("one".to_owned())),
            (ChangeKind::Update, Some("one".to_owned()), Some("uno".to_owned())),
            (ChangeKind::Delete, Some("uno".to_owned()), None),
        ]
    );

    // Without before-images and without the change log an upsert is not read first, so it
    // reports as an upsert.
    let plain = Db::open_in_memory_with(DbOptions::default().change_log(false)).unwrap();
    let notes = plain.collection::<Note>().unwrap();
    let seen = observed(&plain);
    notes.upsert(&Note { id: 1, text: "one".into() }).unwrap();
    let changes = take(&seen);
    assert_eq!((changes[0][0].kind, changes[0][0].before.as_deref()), (ChangeKind::Upsert, None));

    // The change log records no upserts: with it on (the default), the pipeline reads whether
    // the row existed, and reports an insert, then an update, without before-images.
    let logged = Db::open_in_memory().unwrap();
    let notes = logged.collection::<Note>().unwrap();
    let seen = observed(&logged);
    notes.upsert(&Note { id: 1, text: "one".into() }).unwrap();
    notes.upsert(&Note { id: 1, text: "uno".into() }).unwrap();
    let kinds: Vec<_> = take(&seen).into_iter().flatten().map(|c| (c.kind, c.before.is_some())).collect();
    assert_eq!(kinds, [(ChangeKind::Insert, false), (ChangeKind::Update, false)]);
}

#[test]
fn query_deletes_report_every_row_inside_and_outside_transactions() {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true)).unwrap();
    let ledger = db.collection::<Entry>().unwrap();
    ledger
        .insert_many(
            &(0..6).map(|i| entry(&format!("e{i}"), if i % 2 == 0 { "ann" } else { "bob" }, i)).collect::<Vec<_>>(),
        )
        .unwrap();
    let seen = observed(&db);
    let owner = Entry::fields().owner;

    // Outside a transaction: one DELETE ... RETURNING, whole rows for the before-images.
    assert_eq!(ledger.query().filter(owner.eq("ann")).delete().unwrap(), 3);
    // Inside, with a savepoint active (ids first, then the delete) and without.
    db.transaction(|tx| {
        let ledger = tx.collection::<Entry>()?;
        tx.savepoint("s")?;
        assert_eq!(ledger.query().filter(owner.eq("bob")).limit(2).delete()?, 2);
        tx.rollback_to("s")?;
        tx.release("s")?;
        assert_eq!(ledger.query().filter(owner.eq("bob")).order_by(Entry::fields().amount.asc()).limit(1).delete()?, 1);
        Ok(())
    })
    .unwrap();

    let commits = take(&seen);
    assert_eq!(commits.len(), 2);
    let mut ids: Vec<_> =
        commits[0].iter().map(|c| (c.kind, c.id.clone(), c.before::<Entry>().unwrap().map(|e| e.amount))).collect();
    ids.sort_by_key(|(_, id, _)| id.to_string());
    assert_eq!(
        ids,
        [
            (ChangeKind::Delete, text("e0"), Some(0)),
            (ChangeKind::Delete, text("e2"), Some(2)),
            (ChangeKind::Delete, text("e4"), Some(4)),
        ]
    );
    // The rolled-back delete is not reported; the one that stayed is, with its version.
    let last: Vec<_> = commits[1].iter().map(|c| (c.kind, c.id.clone(), c.version)).collect();
    assert_eq!(last, [(ChangeKind::Delete, text("e1"), Some(0))]);
    assert_eq!(ledger.count().unwrap(), 2);
}

#[test]
fn nothing_is_reported_for_work_that_did_not_commit() {
    let db = Db::open_in_memory().unwrap();
    let ledger = db.collection::<Entry>().unwrap();
    ledger.insert(&entry("e1", "ann", 1)).unwrap();
    let seen = observed(&db);
    // A failed insert, a stale update, a rolled-back transaction, a failed nested one.
    assert!(matches!(ledger.insert(&entry("e1", "ann", 2)), Err(Error::AlreadyExists { .. })));
    assert!(matches!(ledger.update(&entry("e1", "ann", 2)), Ok(Some(1))));
    assert!(matches!(ledger.update(&entry("e1", "ann", 3)), Err(Error::Conflict { .. })));
    let failed: db4::Result<()> = db.transaction(|tx| {
        tx.collection::<Entry>()?.insert(&entry("e2", "bob", 1))?;
        Err(Error::aborted("changed my mind"))
    });
    assert!(failed.is_err());
    db.transaction(|tx| {
        let ledger = tx.collection::<Entry>()?;
        let _ = tx.transaction(|inner| -> db4::Result<()> {
            inner.collection::<Entry>()?.insert(&entry("e3", "bob", 1))?;
            Err(Error::aborted("inner only"))
        });
        ledger.insert(&entry("e4", "bob", 1))
    })
    .unwrap();
    let commits = take(&seen);
    let ids: Vec<Vec<_>> = commits.iter().map(|c| c.iter().map(|c| (c.kind, c.id.clone())).collect()).collect();
    assert_eq!(ids, [vec![(ChangeKind::Update, text("e1"))], vec![(ChangeKind::Insert, text("e4"))]]);
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
        }
    }
}

#[test]
fn migration_rewrites_are_reported_as_updates_with_the_new_documents() {
    use evolving::{v1, v2};
    let dir = TempDir::new("pipeline-migrate");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    db.collection::<v1::Item>().unwrap().insert(&v1::Item { id: "a".into(), legacy: "old".into() }).unwrap();
    let seen = observed(&db);
    // Opening with the new type writes its serde defaults into the stored document.
    db.collection::<v2::Item>().unwrap();
    let opened = take(&seen);
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!((opened[0][0].kind, &opened[0][0].id), (ChangeKind::Update, &text("a")));
    let after: serde_json::Value = serde_json::from_str(opened[0][0].after.as_deref().unwrap()).unwrap();
    assert_eq!(after, serde_json::json!({"id": "a", "legacy": "old", "tags": []}));
    // migrate() drops the key the new type does not declare.
    let report = db.migrate::<v2::Item>().unwrap();
    assert_eq!(report.rewritten, 1);
    let migrated = take(&seen);
    let after: serde_json::Value = serde_json::from_str(migrated[0][0].after.as_deref().unwrap()).unwrap();
    assert_eq!(after, serde_json::json!({"id": "a", "tags": []}));
}

#[test]
fn a_negative_stored_version_fails_a_migration_as_corruption() {
    let dir = TempDir::new("pipeline-corrupt");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let ledger = db.collection::<Entry>().unwrap();
    ledger.insert(&entry("e1", "ann", 1)).unwrap();
    common::raw(&path).execute("UPDATE ledger SET _version = -3", []).unwrap();
    assert!(matches!(db.migrate::<Entry>(), Err(Error::Corrupted { .. })));
    // Nothing changed: the document still reads back as corrupt, not as version 0.
    assert!(matches!(ledger.get("e1"), Err(Error::Corrupted { .. })));
}
