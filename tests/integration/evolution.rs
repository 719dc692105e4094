//! Schema evolution that never loses data: handles that outlive another handle's migration,
//! rolling deploys (old and new types on one file), fields added and removed, `#[version]`
//! added later, indexed field types changed, documents too deep to read back, and the
//! explicit `Db::migrate`.

use crate::common;
use db4::BackendErrorKind;
use db4::prelude::*;
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

mod tickets_v1 {
    use super::*;
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "tickets")]
    pub struct Ticket {
        #[id]
        pub id: String,
        #[index]
        pub status: String,
        pub title: String,
    }
}

mod tickets_v2 {
    use super::*;
    /// The index on `status` removed, `#[version]` added (without any serde attribute), a new
    /// field with a default.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "tickets")]
    pub struct Ticket {
        #[id]
        pub id: String,
        pub status: String,
        pub title: String,
        #[serde(default)]
        pub assignee: String,
        #[version]
        pub version: u64,
    }
}

mod tickets_v3 {
    use super::*;
    /// A third deploy: one more field.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "tickets")]
    pub struct Ticket {
        #[id]
        pub id: String,
        pub status: String,
        pub title: String,
        #[serde(default)]
        pub assignee: String,
        #[serde(default)]
        pub due: String,
        #[version]
        pub version: u64,
    }
}

use tickets_v1::Ticket as V1;
use tickets_v2::Ticket as V2;

fn v1(id: &str, status: &str) -> V1 {
    V1 { id: id.into(), status: status.into(), title: format!("title of {id}") }
}

#[test]
fn a_handle_opened_before_another_dropped_an_index_still_answers_right() {
    let dir = TempDir::new("stale-index");
    let path = dir.join("db.sqlite");
    let old = Db::open(&path).unwrap();
    let tickets = old.collection::<V1>().unwrap();
    tickets.insert_many(&[v1("a", "open"), v1("b", "closed")]).unwrap();
    let status = V1::fields().status;
    assert_eq!(tickets.query().filter(status.eq("open")).count().unwrap(), 1);

    // A newer deploy opens the same file: the `status` column and index are dropped.
    let new = Db::open(&path).unwrap();
    new.collection::<V2>().unwrap();
    assert!(!common::column_names(&path, "tickets").contains(&"f_status".to_owned()));

    // The old handle answers from the documents now, never from a vanished column.
    assert_eq!(tickets.query().filter(status.eq("open")).count().unwrap(), 1);
    assert_eq!(tickets.query().filter(status.ne("open")).all().unwrap(), vec![v1("b", "closed")]);
    assert_eq!(tickets.query().filter(status.eq("open")).first().unwrap(), Some(v1("a", "open")));
    // And a fresh handle of the old type, in this process, too.
    assert_eq!(old.collection::<V1>().unwrap().query().filter(status.eq("open")).count().unwrap(), 1);
}

#[test]
fn writes_through_a_stale_handle_respect_the_newer_schema() {
    let dir = TempDir::new("stale-write");
    let path = dir.join("db.sqlite");
    let old_db = Db::open(&path).unwrap();
    let old = old_db.collection::<V1>().unwrap();
    old.insert(&v1("a", "open")).unwrap();

    let new_db = Db::open(&path).unwrap();
    let new = new_db.collection::<V2>().unwrap();
    let mut copy = new.get("a").unwrap().unwrap();
    assert_eq!(copy.version, 0);
    assert_eq!(copy.assignee, "", "the new field reads with its default");
    copy.assignee = "ann".into();
    assert_eq!(new.update(&copy).unwrap(), Some(1));

    // The old binary updates its own fields: the new one's field and version survive, and the
    // version counter moves, so the new handle's stale copy conflicts instead of overwriting.
    let mut mine = old.get("a").unwrap().unwrap();
    mine.status = "closed".into();
    assert_eq!(old.update(&mine).unwrap(), None);
    let now = new.get("a").unwrap().unwrap();
    assert_eq!((now.status.as_str(), now.assignee.as_str(), now.version), ("closed", "ann", 2));
    copy.version = 1;
    assert!(matches!(new.update(&copy), Err(Error::Conflict { expected: 1, actual: 2, .. })));

    // Documents the old handle inserts read back through the new type (version 0, default
    // assignee), and upserts through it keep what it does not know.
    old.insert(&v1("b", "open")).unwrap();
    let b = new.get("b").unwrap().unwrap();
    assert_eq!((b.version, b.assignee.as_str()), (0, ""));
    let mut b = b;
    b.assignee = "bob".into();
    new.update(&b).unwrap();
    old.upsert(&v1("b", "reopened")).unwrap();
    let b = new.get("b").unwrap().unwrap();
    assert_eq!((b.status.as_str(), b.assignee.as_str(), b.version), ("reopened", "bob", 2));

    // Inside a transaction of the old handle too: a third deploy adds a field after the old
    // handle's last write, and the transaction's first write learns it.
    let third = Db::open(&path).unwrap().collection::<tickets_v3::Ticket>().unwrap();
    let mut b3 = third.get("b").unwrap().unwrap();
    b3.due = "friday".into();
    third.update(&b3).unwrap();
    old_db
        .transaction(|tx| {
            let c = tx.collection::<V1>()?;
            c.update(&v1("b", "done"))?;
            c.update(&v1("b", "done twice"))?;
            Ok(())
        })
        .unwrap();
    let b = new.get("b").unwrap().unwrap();
    assert_eq!((b.status.as_str(), b.assignee.as_str(), b.version), ("done twice", "bob", 5));
    assert_eq!(third.get("b").unwrap().unwrap().due, "friday");
}

mod notes {
    use super::*;
    pub mod v1 {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "notes")]
        pub struct Note {
            #[id]
            pub id: String,
            pub title: String,
        }
    }
    pub mod v2 {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "notes")]
        pub struct Note {
            #[id]
            pub id: String,
            #[serde(default)]
            pub headline: String,
        }
    }
}

#[test]
fn opening_with_another_type_never_destroys_data() {
    use notes::{v1::Note as N1, v2::Note as N2};
    let dir = TempDir::new("lossless-open");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path).unwrap();
        db.collection::<N1>().unwrap().insert(&N1 { id: "a".into(), title: "important".into() }).unwrap();
    }
    {
        // v2 only opens and reads.
        let db = Db::open(&path).unwrap();
        let c = db.collection::<N2>().unwrap();
        assert_eq!(c.get("a").unwrap(), Some(N2 { id: "a".into(), headline: String::new() }));
    }
    let docs = common::stored_docs(&path, "notes");
    assert_eq!(docs[0].1, serde_json::json!({ "id": "a", "title": "important", "headline": "" }));
    {
        // v1 still opens the file and reads its field; an update through v2 keeps it, and one
        // through v1 keeps v2's.
        let db = Db::open(&path).unwrap();
        let old = db.collection::<N1>().unwrap();
        assert_eq!(old.get("a").unwrap(), Some(N1 { id: "a".into(), title: "important".into() }));
        let new = db.collection::<N2>().unwrap();
        new.update(&N2 { id: "a".into(), headline: "Big news".into() }).unwrap();
        new.upsert(&N2 { id: "a".into(), headline: "Bigger news".into() }).unwrap();
        new.update_with("a", RetryPolicy::default(), |n| n.headline.push('!')).unwrap();
        assert_eq!(old.get("a").unwrap().unwrap().title, "important");
        old.update(&N1 { id: "a".into(), title: "still important".into() }).unwrap();
        assert_eq!(new.get("a").unwrap().unwrap().headline, "Bigger news!");
    }
    {
        // Dropping v1's field is explicit, and reported.
        let db = Db::open(&path).unwrap();
        let report = db.migrate::<N2>().unwrap();
        assert_eq!((report.documents, report.rewritten), (1, 1));
        assert_eq!(report.dropped_keys, ["title"]);
        let docs = common::stored_docs(&path, "notes");
        assert_eq!(docs[0].1, serde_json::json!({ "id": "a", "headline": "Bigger news!" }));
        // Updates no longer carry the old key (there is none), and a second migrate is a no-op.
        assert_eq!(db.migrate::<N2>().unwrap().rewritten, 0);
    }
}

mod counters {
    use super::*;
    pub mod v1 {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "counters")]
        pub struct Counter {
            #[id]
            pub id: i64,
            pub n: i64,
        }
    }
    pub mod v2 {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "counters")]
        pub struct Counter {
            #[id]
            pub id: i64,
            pub n: i64,
            #[version]
            pub version: u32,
        }
    }
}

#[test]
fn adding_version_to_an_existing_collection_needs_no_serde_default() {
    use counters::{v1::Counter as C1, v2::Counter as C2};
    let db = Db::open_in_memory().unwrap();
    db.collection::<C1>().unwrap().insert_many(&[C1 { id: 1, n: 10 }, C1 { id: 2, n: 20 }]).unwrap();
    let c = db.collection::<C2>().unwrap();
    assert_eq!(c.get(1).unwrap(), Some(C2 { id: 1, n: 10, version: 0 }));
    assert_eq!(c.query().all().unwrap().len(), 2);
    assert_eq!(c.update(&C2 { id: 1, n: 11, version: 0 }).unwrap(), Some(1));
    assert_eq!(c.increment(2, C2::fields().n, 5).unwrap(), 25);
    assert_eq!(c.get(2).unwrap(), Some(C2 { id: 2, n: 25, version: 1 }));
}

mod prio {
    use super::*;
    pub mod int {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "jobs")]
        pub struct Job {
            #[id]
            pub id: String,
            #[range_index]
            pub prio: i64,
        }
    }
    pub mod text {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "jobs")]
        pub struct Job {
            #[id]
            pub id: String,
            #[range_index]
            pub prio: String,
        }
    }
    pub mod optional {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "jobs")]
        pub struct Job {
            #[id]
            pub id: String,
            #[range_index]
            pub prio: Option<i64>,
        }
    }
    pub mod real {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "jobs")]
        pub struct Job {
            #[id]
            pub id: String,
            #[index]
            pub prio: f64,
        }
    }
}

#[test]
fn an_incompatible_indexed_field_type_is_refused_at_open() {
    use prio::{int::Job as Int, optional::Job as Opt, real::Job as Real, text::Job as Text};
    let dir = TempDir::new("retype");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    db.collection::<Int>().unwrap().insert(&Int { id: "a".into(), prio: 3 }).unwrap();
    let record = common::schema_record(&path, "jobs");
    for attempt in 0..2 {
        // Also through a second handle: nothing was written by the first refusal.
        let db = if attempt == 0 { db.clone() } else { Db::open(&path).unwrap() };
        match db.collection::<Text>() {
            Err(Error::SchemaMismatch { collection, field, reason }) => {
                assert_eq!((collection.as_str(), field.as_str()), ("jobs", "prio"));
                assert!(reason.contains("integers") && reason.contains("text"), "{reason}");
            }
            other => panic!("expected SchemaMismatch, got {other:?}"),
        }
    }
    assert_eq!(common::schema_record(&path, "jobs"), record);
    // Widening changes open: i64 -> Option<i64>, i64 -> f64 (and the index moves with it).
    assert_eq!(db.collection::<Opt>().unwrap().get("a").unwrap(), Some(Opt { id: "a".into(), prio: Some(3) }));
    db.collection::<Opt>().unwrap().insert(&Opt { id: "b".into(), prio: None }).unwrap();
    // ... but back from Option<i64> to i64 is refused: "b" holds None.
    assert!(matches!(db.collection::<Int>(), Err(Error::SchemaMismatch { ref field, .. }) if field == "prio"));
    // So is Option<i64> -> f64, even once no document holds None (the kind is what counts).
    db.collection::<Opt>().unwrap().delete("b").unwrap();
    assert!(matches!(db.collection::<Real>(), Err(Error::SchemaMismatch { .. })));
    let db = Db::open_in_memory().unwrap();
    db.collection::<Int>().unwrap().insert(&Int { id: "a".into(), prio: 3 }).unwrap();
    let real = db.collection::<Real>().unwrap();
    assert_eq!(real.query().filter(Real::fields().prio.gt(2.5)).count().unwrap(), 1);
}

mod deep {
    use super::*;
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Node {
        pub next: Option<Box<Node>>,
    }
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "chains")]
    pub struct Chain {
        #[id]
        pub id: String,
        pub head: Option<Box<Node>>,
        pub extra: serde_json::Value,
    }
    pub fn chain(id: &str, links: usize) -> Chain {
        let mut head = None;
        for _ in 0..links {
            head = Some(Box::new(Node { next: head }));
        }
        Chain { id: id.into(), head, extra: serde_json::Value::Null }
    }
}

#[test]
fn documents_too_deep_to_read_back_are_refused_on_write() {
    use deep::{Chain, chain};
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Chain>().unwrap();
    // The document is one level, so 126 links nest 127 deep: the most that reads back.
    c.insert(&chain("ok", 126)).unwrap();
    assert_eq!(c.get("ok").unwrap(), Some(chain("ok", 126)));
    for links in [127, 130, 1_000] {
        match c.insert(&chain("deep", links)) {
            Err(Error::InvalidValue { field, reason, .. }) => {
                assert_eq!(field, "head");
                assert!(reason.contains("deep"), "{reason}");
            }
            other => panic!("expected InvalidValue for {links} links, got {other:?}"),
        }
    }
    let mut value = serde_json::Value::Null;
    for _ in 0..130 {
        value = serde_json::json!([value]);
    }
    let mut doc = chain("value", 0);
    doc.extra = value;
    assert!(matches!(c.upsert(&doc), Err(Error::InvalidValue { ref field, .. }) if field == "extra"));
    // Nothing was written, and every query still reads the whole collection.
    assert_eq!(c.count().unwrap(), 1);
    assert_eq!(c.query().all().unwrap().len(), 1);
}

mod accounts {
    use super::*;
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Account {
        #[id]
        pub id: String,
        pub balance: i64,
        #[version]
        pub version: u64,
    }
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    pub struct Plain {
        #[id]
        pub id: String,
        pub n: i64,
    }
}

#[test]
fn update_returns_the_new_version() {
    use accounts::{Account, Plain};
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Account>().unwrap();
    let mut a = Account { id: "a".into(), balance: 1, version: 0 };
    c.insert(&a).unwrap();
    for expected in 1..=3 {
        a.balance += 1;
        a.version = c.update(&a).unwrap().expect("versioned");
        assert_eq!(a.version, expected);
    }
    assert_eq!(c.get("a").unwrap(), Some(a));
    let p = db.collection::<Plain>().unwrap();
    p.insert(&Plain { id: "p".into(), n: 1 }).unwrap();
    assert_eq!(p.update(&Plain { id: "p".into(), n: 2 }).unwrap(), None);
    // Inside a transaction too.
    db.transaction(|tx| {
        let c = tx.collection::<Account>()?;
        let mut a = c.get("a")?.expect("stored");
        a.balance = 0;
        assert_eq!(c.update(&a)?, Some(4));
        Ok(())
    })
    .unwrap();
}

#[test]
fn update_with_refuses_a_closure_that_changes_the_version() {
    use accounts::Account;
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Account>().unwrap();
    c.insert(&Account { id: "a".into(), balance: 1, version: 0 }).unwrap();
    let started = std::time::Instant::now();
    match c.update_with("a", RetryPolicy::default(), |a| a.version += 5) {
        Err(Error::InvalidValue { field, .. }) => assert_eq!(field, "version"),
        other => panic!("expected InvalidValue on version, got {other:?}"),
    }
    // Refused at once, not after ten conflicting retries.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(c.get("a").unwrap(), Some(Account { id: "a".into(), balance: 1, version: 0 }));
}

mod renamed {
    use super::*;
    pub mod before {
        use super::*;
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "items")]
        pub struct Item {
            #[id]
            pub id: String,
            #[index]
            pub owner: String,
        }
    }
    pub mod after {
        use super::*;
        /// The same field, stored under another key.
        #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[db4(collection = "items")]
        pub struct Item {
            #[id]
            pub id: String,
            #[index]
            #[serde(rename = "ownerId", default)]
            pub owner: String,
        }
    }
}

#[test]
fn a_stale_handle_never_reads_a_same_named_column_over_another_key() {
    use renamed::{after::Item as After, before::Item as Before};
    let dir = TempDir::new("rekeyed");
    let path = dir.join("db.sqlite");
    let old_db = Db::open(&path).unwrap();
    let old = old_db.collection::<Before>().unwrap();
    old.insert(&Before { id: "a".into(), owner: "ann".into() }).unwrap();
    let new_db = Db::open(&path).unwrap();
    let new = new_db.collection::<After>().unwrap();
    new.insert(&After { id: "b".into(), owner: "bob".into() }).unwrap();
    let owner = Before::fields().owner;
    // "a" is stored with `owner`, "b" with `ownerId`: the old type sees only its own key.
    assert_eq!(old.query().filter(owner.eq("ann")).count().unwrap(), 1);
    assert_eq!(old.query().filter(owner.eq("bob")).count().unwrap(), 0);
    assert_eq!(new.query().filter(After::fields().owner.eq("bob")).count().unwrap(), 1);
}

#[test]
fn damaged_stored_values_are_corrupted_errors_naming_the_document() {
    use accounts::Account;
    let dir = TempDir::new("corrupted");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let c = db.collection::<Account>().unwrap();
    c.insert_many(&[
        Account { id: "a".into(), balance: 1, version: 0 },
        Account { id: "b".into(), balance: 2, version: 0 },
    ])
    .unwrap();
    let raw = common::raw(&path);
    raw.execute("UPDATE account SET _version = -1 WHERE _id = 'a'", []).unwrap();
    raw.execute("UPDATE account SET _doc = x'00ff' WHERE _id = 'b'", []).unwrap();
    drop(raw);
    for (id, what) in [("a", "version"), ("b", "document")] {
        let err = c.get(id).unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Corrupt), "{err:?}");
        match err {
            Error::Corrupted { collection, id: Some(doc), what: w } => {
                assert_eq!((collection.as_str(), doc.as_str()), ("account", id));
                assert!(w.contains(what), "{w}");
            }
            other => panic!("expected Corrupted for {id}, got {other:?}"),
        }
    }
    // A stored version is never read leniently (a negative one is not 0).
    assert!(matches!(c.increment("a", Account::fields().balance, 1), Err(Error::Corrupted { .. })));
}
