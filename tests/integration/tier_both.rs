//! The warm and cold tiers together on one database: a cold read fills the warm tier, and
//! every later change (a write that brings the document back hot, a delete that tombstones
//! it, another handle's compaction and write) is what the next read returns.

use crate::tier_cold::{Event, event};
use db4::prelude::*;
use db4::tier::DirStore;
use db4_tests::TempDir;
use std::sync::Arc;

fn open(path: &std::path::Path, store: Arc<DirStore>) -> Db {
    let policy = CompactionPolicy { hot_max_documents: Some(10), ..Default::default() };
    let tiers = TierConfig { warm_bytes: 1 << 20, cold: Some(Box::new(store)), policy };
    Db::open_with(path, DbOptions::default().tiers(tiers)).unwrap()
}

#[test]
fn warm_hits_follow_cold_moves_and_writes() -> db4::Result<()> {
    let dir = TempDir::new("tiers-both");
    let store = Arc::new(DirStore::open(dir.join("cold"))?);
    let db = open(&dir.join("db.sqlite"), Arc::clone(&store));
    let events = db.collection::<Event>()?;
    let docs: Vec<Event> = (0..40).map(|i| event(i, 1_000 + i)).collect();
    events.insert_many(&docs)?;
    // Warm copies of hot documents, then the oldest 30 move to cold under them.
    for d in &docs {
        assert_eq!(events.get(d.id.as_str())?.as_ref(), Some(d));
    }
    let report = db.compact()?;
    assert_eq!(report.moved, 30);
    for d in &docs {
        assert_eq!(events.get(d.id.as_str())?.as_ref(), Some(d), "{} after the move", d.id);
    }
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).chain(["e00001", "nope"]).collect();
    let many = events.get_many(ids)?;
    assert_eq!(many.len(), 42);
    assert!(many[..40].iter().zip(&docs).all(|(got, d)| got.as_ref() == Some(d)), "get_many across tiers");
    assert_eq!((many[40].as_ref(), many[41].as_ref()), (Some(&docs[1]), None));
    let stats = db.tier_stats()?;
    assert_eq!((stats.hot.documents, stats.cold.documents), (10, 30));
    // The 10 hot ones were warm hits; the 30 moved ones were read from their segments (the
    // move dropped their warm copies; the first cold read of each keeps it warm again).
    assert!(stats.warm.hits >= 10, "{:?}", stats.warm);
    assert!(stats.cold.reads >= 30 && stats.cold.hits >= 30, "{:?}", stats.cold);

    // A cold document updated: back hot, and the warm copy is the new one.
    let mut e3 = events.get("e00003")?.expect("cold e3");
    e3.n = 333;
    events.update(&e3)?;
    assert_eq!(events.get("e00003")?.map(|e| e.n), Some(333));
    // A cold document deleted: gone from every tier.
    assert!(events.delete("e00004")?);
    assert_eq!(events.get("e00004")?, None);
    // A rolled-back rehydration leaves the old version readable (warm or cold).
    let e5 = events.get("e00005")?.expect("cold e5");
    let refused: db4::Result<()> = db.transaction(|tx| {
        let events = tx.collection::<Event>()?;
        events.update(&Event { n: -1, ..e5.clone() })?;
        events.insert(&docs[39]) // a duplicate: the transaction fails and rolls back
    });
    assert!(refused.is_err());
    assert_eq!(events.get("e00005")?.as_ref(), Some(&e5));

    // Another handle on the file writes a cold document: this handle's warm copy goes.
    let other = open(&dir.join("db.sqlite"), Arc::clone(&store));
    let theirs = other.collection::<Event>()?;
    let mut e6 = theirs.get("e00006")?.expect("cold e6 seen by the other handle");
    e6.n = 666;
    theirs.update(&e6)?;
    assert_eq!(events.get("e00006")?.map(|e| e.n), Some(666));
    Ok(())
}

/// The cold store's block reads and the warm tier's hits, so far.
fn reads_and_hits(db: &Db) -> db4::Result<(u64, u64)> {
    let stats = db.tier_stats()?;
    Ok((stats.cold.reads, stats.warm.hits))
}

#[test]
fn cold_documents_are_kept_warm_and_never_served_stale() -> db4::Result<()> {
    let dir = TempDir::new("tiers-cold-warm");
    let store = Arc::new(DirStore::open(dir.join("cold"))?);
    let db = open(&dir.join("db.sqlite"), Arc::clone(&store));
    let events = db.collection::<Event>()?;
    let docs: Vec<Event> = (0..40).map(|i| event(i, 1_000 + i)).collect();
    events.insert_many(&docs)?;
    // e00000..e00029 move to cold (the oldest by id: the policy keeps 10 hot).
    assert_eq!(db.compact()?.moved, 30);

    // A first get reads the segment; a second one is a warm hit and reads no segment.
    let (r0, _) = reads_and_hits(&db)?;
    assert_eq!(events.get("e00001")?.as_ref(), Some(&docs[1]));
    let (r1, h1) = reads_and_hits(&db)?;
    assert!(r1 > r0, "the first get reads the cold store");
    assert_eq!(events.get("e00001")?.as_ref(), Some(&docs[1]));
    assert_eq!(reads_and_hits(&db)?, (r1, h1 + 1), "the second get is a warm hit");
    // get_many fills the warm tier from the cold one too.
    let many = events.get_many(["e00002", "e00003", "e00002", "nope"])?;
    assert_eq!(many, [Some(docs[2].clone()), Some(docs[3].clone()), Some(docs[2].clone()), None]);
    let (r2, h2) = reads_and_hits(&db)?;
    let many = events.get_many(["e00002", "e00003"])?;
    assert_eq!(many, [Some(docs[2].clone()), Some(docs[3].clone())]);
    assert_eq!(reads_and_hits(&db)?, (r2, h2 + 2), "get_many of warm cold documents");
    assert_eq!(events.get("e00003")?.as_ref(), Some(&docs[3]));

    // A delete of a warm cold document: gone at once.
    assert!(events.delete("e00001")?);
    assert_eq!(events.get("e00001")?, None);
    assert_eq!(events.get_many(["e00001"])?, [None]);

    // A delete inside a transaction: a reader outside it, before the commit, still reads
    // the committed (cold) copy but may not keep it warm; after the commit it is gone.
    assert_eq!(events.get("e00002")?.as_ref(), Some(&docs[2]));
    db.transaction(|tx| {
        assert!(tx.collection::<Event>()?.delete("e00002")?);
        assert_eq!(events.get("e00002")?.as_ref(), Some(&docs[2]), "not committed yet");
        Ok(())
    })?;
    assert_eq!(events.get("e00002")?, None, "a stale warm copy of a deleted cold document");

    // A rolled-back delete: the cold copy is still there, warm or cold.
    assert_eq!(events.get("e00004")?.as_ref(), Some(&docs[4]));
    let refused: db4::Result<()> = db.transaction(|tx| {
        let events = tx.collection::<Event>()?;
        assert!(events.delete("e00004")?);
        events.insert(&docs[39]) // a duplicate: the transaction fails and rolls back
    });
    assert!(refused.is_err());
    assert_eq!(events.get("e00004")?.as_ref(), Some(&docs[4]));
    assert_eq!(events.get("e00004")?.as_ref(), Some(&docs[4]));

    // An update (a rehydration) of a warm cold document: the new version at once.
    let mut e3 = events.get("e00003")?.expect("warm cold e3");
    e3.n = 333;
    events.update(&e3)?;
    assert_eq!(events.get("e00003")?.map(|e| (e.n, e.version)), Some((333, 1)));

    // Another handle deletes and updates cold documents this handle keeps warm.
    for i in [5, 6] {
        assert_eq!(events.get(docs[i].id.as_str())?.as_ref(), Some(&docs[i]));
    }
    let other = open(&dir.join("db.sqlite"), Arc::clone(&store));
    let theirs = other.collection::<Event>()?;
    assert!(theirs.delete("e00005")?);
    assert_eq!(events.get("e00005")?, None);
    theirs.update(&Event { n: 666, ..docs[6].clone() })?;
    assert_eq!(events.get("e00006")?.map(|e| e.n), Some(666));
    Ok(())
}

/// Not `Clone`: the warm tier keeps a cold document's stored JSON and version, as a hot one's.
#[derive(db4::Document, serde::Serialize, serde::Deserialize, Debug, PartialEq)]
#[db4(collection = "both_memos")]
struct Memo {
    #[id]
    id: i64,
    text: String,
    #[version]
    version: u64,
}

#[test]
fn a_type_that_is_not_clone_is_kept_warm_from_cold_as_json() -> db4::Result<()> {
    let dir = TempDir::new("tiers-cold-warm-json");
    let store = Arc::new(DirStore::open(dir.join("cold"))?);
    let db = open(&dir.join("db.sqlite"), store);
    let memos = db.collection::<Memo>()?;
    for id in 0..15 {
        memos.insert(&Memo { id, text: format!("memo {id}"), version: 0 })?;
    }
    // Version 1 before the move: the cold copy's version column is what a warm hit returns.
    memos.update(&Memo { id: 2, text: "memo two".into(), version: 0 })?;
    assert_eq!(db.compact()?.moved, 5);
    let want = || Some(Memo { id: 2, text: "memo two".into(), version: 1 });
    assert_eq!(memos.get(2)?, want());
    let (reads, hits) = reads_and_hits(&db)?;
    assert_eq!(memos.get(2)?, want());
    assert_eq!(memos.get_many([2, 2])?, [want(), want()]);
    assert_eq!(reads_and_hits(&db)?, (reads, hits + 3), "warm hits, no segment read");
    memos.update(&Memo { id: 2, text: "memo 2 again".into(), version: 1 })?;
    assert_eq!(memos.get(2)?.map(|m| (m.text, m.version)), Some(("memo 2 again".into(), 2)));
    assert!(memos.get(3)?.is_some());
    assert!(memos.delete(3)?);
    assert_eq!(memos.get(3)?, None);
    Ok(())
}
