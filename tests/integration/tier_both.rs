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
    // move dropped their warm copies, and cold reads are not kept warm).
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
