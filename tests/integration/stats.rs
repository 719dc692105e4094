//! `Db::stats`: the collections a database holds, and the writes this handle committed to
//! each, counted exactly (rolled-back work does not count).

use db4::prelude::*;
use db4::{CollectionStats, DbStats};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "stat_items")]
struct Item {
    #[id]
    id: i64,
    #[index]
    tag: String,
    n: i64,
}

fn item(id: i64, tag: &str) -> Item {
    Item { id, tag: tag.into(), n: 0 }
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "stat_others")]
struct Other {
    #[id]
    id: String,
}

/// `(documents, inserts, updates, upserts, deletes)` of `collection`.
fn figures(stats: &DbStats, collection: &str) -> (u64, u64, u64, u64, u64) {
    let c: &CollectionStats = stats.collection(collection).unwrap_or_else(|| panic!("{collection} is listed"));
    (c.documents, c.inserts, c.updates, c.upserts, c.deletes)
}

fn items(db: &Db) -> Result<(u64, u64, u64, u64, u64)> {
    Ok(figures(&db.stats()?, "stat_items"))
}

#[test]
fn a_new_database_lists_no_collection_and_an_opened_one_counts_nothing_yet() -> Result<()> {
    let db = Db::open_in_memory()?;
    assert!(db.stats()?.collections.is_empty());
    db.collection::<Item>()?;
    let stats = db.stats()?;
    assert_eq!(stats.collections.len(), 1);
    assert_eq!(stats.collections[0].name, "stat_items");
    assert_eq!(items(&db)?, (0, 0, 0, 0, 0));
    Ok(())
}

#[test]
fn every_committed_write_counts_once() -> Result<()> {
    // Without the change log (which settles upserts into inserts and updates).
    let db = Db::open_in_memory_with(db4::DbOptions::default().change_log(false))?;
    let c = db.collection::<Item>()?;
    c.insert(&item(1, "a"))?;
    c.insert_many(&[item(2, "a"), item(3, "b"), item(4, "b"), item(5, "b")])?;
    c.update(&Item { n: 7, ..item(1, "a") })?;
    // No version field and no before-images: the pipeline does not know which it was.
    c.upsert(&item(6, "c"))?;
    c.upsert(&item(6, "d"))?;
    c.upsert_many(&[item(7, "c")])?;
    assert!(c.delete(2)?);
    assert!(!c.delete(99)?, "a delete of a missing id changes nothing");
    assert_eq!(c.query().filter(Item::fields().tag.eq("b")).delete()?, 3);
    c.increment(1, Item::fields().n, 1)?;
    c.update_with(1, RetryPolicy::default(), |i| i.n += 1)?;
    assert!(c.conditional_update(1, |_| false, |i| i.n += 1)?.is_none(), "declined: nothing written");
    assert_eq!(items(&db)?, (3, 5, 3, 3, 4));

    // Clones share the counts; reads count nothing.
    let clone = db.clone();
    clone.collection::<Item>()?.insert(&item(8, "e"))?;
    c.get(1)?;
    c.query().all()?;
    assert_eq!(items(&db)?, (4, 6, 3, 3, 4));
    Ok(())
}

#[test]
fn upserts_count_as_inserts_or_updates_where_the_pipeline_reads_the_row() -> Result<()> {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true))?;
    db.on_commit(|_| {});
    let c = db.collection::<Item>()?;
    c.upsert(&item(1, "a"))?;
    c.upsert(&item(1, "b"))?;
    assert_eq!(items(&db)?, (1, 1, 1, 0, 0));
    Ok(())
}

#[test]
fn rolled_back_and_failed_writes_do_not_count() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Item>()?;
    c.insert(&item(1, "a"))?;

    let failed: Result<()> = db.transaction(|tx| {
        let c = tx.collection::<Item>()?;
        c.insert(&item(2, "a"))?;
        c.update(&item(1, "z"))?;
        c.delete(1)?;
        Err(Error::aborted("changed my mind"))
    });
    assert!(failed.is_err());
    assert!(c.insert(&item(1, "dup")).is_err(), "the id is taken");
    assert!(c.insert_many(&[item(3, "a"), item(1, "dup")]).is_err(), "all or nothing");
    assert!(c.update(&item(42, "missing")).is_err());

    let tx = db.begin()?;
    tx.collection::<Item>()?.insert(&item(4, "a"))?;
    tx.rollback()?;
    {
        let tx = db.begin()?;
        tx.collection::<Item>()?.insert(&item(5, "a"))?;
        // Dropped: rolled back.
    }
    assert_eq!(items(&db)?, (1, 1, 0, 0, 0));

    let tx = db.begin()?;
    tx.collection::<Item>()?.insert(&item(6, "a"))?;
    tx.commit()?;
    db.transaction(|tx| tx.collection::<Item>()?.update(&item(6, "b")).map(drop))?;
    assert_eq!(items(&db)?, (2, 2, 1, 0, 0));
    Ok(())
}

#[test]
fn a_savepoint_rolled_back_takes_its_writes_back() -> Result<()> {
    let db = Db::open_in_memory()?;
    db.collection::<Item>()?.insert_many(&[item(1, "a"), item(2, "a"), item(3, "b")])?;
    db.transaction(|tx| {
        let c = tx.collection::<Item>()?;
        c.insert(&item(10, "a"))?;
        tx.savepoint("s")?;
        c.insert(&item(11, "a"))?;
        c.update(&item(1, "z"))?;
        c.upsert(&item(12, "a"))?; // read first while a savepoint is active: an insert
        c.delete(2)?;
        assert_eq!(c.query().filter(Item::fields().tag.eq("b")).delete()?, 1);
        tx.rollback_to("s")?;
        c.update(&item(10, "kept"))?;
        // A nested transaction that fails takes back only its own writes.
        let nested: Result<()> = tx.transaction(|tx| {
            tx.collection::<Item>()?.insert(&item(13, "a"))?;
            Err(Error::aborted("inner"))
        });
        assert!(nested.is_err());
        tx.transaction(|tx| tx.collection::<Item>()?.delete(3).map(drop))?;
        // Released: its writes stay and commit.
        tx.savepoint("r")?;
        c.insert(&item(14, "a"))?;
        tx.release("r")?;
        Ok(())
    })?;
    // Committed: 3 + 10 + 14 inserted, 10 updated, 3 deleted.
    assert_eq!(items(&db)?, (4, 5, 1, 0, 1));
    Ok(())
}

#[test]
fn collections_another_handle_created_appear_with_their_documents() -> Result<()> {
    let dir = TempDir::new("stats-two-handles");
    let path = dir.join("db.sqlite");
    let mine = Db::open(&path)?;
    mine.collection::<Item>()?.insert(&item(1, "a"))?;

    let theirs = Db::open(&path)?;
    let others = theirs.collection::<Other>()?;
    others.insert_many(&[Other { id: "x".into() }, Other { id: "y".into() }])?;
    theirs.collection::<Item>()?.insert(&item(2, "a"))?;

    let stats = mine.stats()?;
    let names: Vec<&str> = stats.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["stat_items", "stat_others"]);
    // Documents are what the file holds; the write counts are this handle's own.
    assert_eq!(figures(&stats, "stat_items"), (2, 1, 0, 0, 0));
    assert_eq!(figures(&stats, "stat_others"), (2, 0, 0, 0, 0));
    assert_eq!(figures(&theirs.stats()?, "stat_others"), (2, 2, 0, 0, 0));
    Ok(())
}
