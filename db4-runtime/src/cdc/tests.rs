//! The change log's rows within a Durable Object's limits: images too large to share a row
//! are kept apart, read back whole and checked, and truncated with their events.

use super::*;
use crate::backend::{Backend, Row, SqliteBackend, SqliteOptions};
use crate::db::DbOptions;
use crate::error::BackendErrorKind;
use crate::store::outbox::SPLIT_IMAGES;

#[derive(serde::Serialize, serde::Deserialize, db4_derive::Document, Debug, PartialEq, Clone)]
#[db4(crate = "crate", collection = "blobs")]
struct Blob {
    #[id]
    id: i64,
    body: String,
}

/// A versioned blob: its after-images carry the new version, which the row's text does not,
/// so they are copied into the log's rows (next to a before-image, when asked for).
#[derive(serde::Serialize, serde::Deserialize, db4_derive::Document, Debug, PartialEq, Clone)]
#[db4(crate = "crate", collection = "vblobs")]
struct VBlob {
    #[id]
    id: i64,
    #[version]
    version: u64,
    body: String,
}

/// A Durable Object's limit on the bytes of one row.
const ROW_LIMIT: usize = 2_000_000;

/// SQLite refusing, as a Durable Object does, a change-log row whose values pass 2 MB.
struct RowLimited(SqliteBackend);

struct RowLimitedConnection<'c>(&'c dyn Connection);

impl Connection for RowLimitedConnection<'_> {
    fn execute(&self, sql: &str, params: &[Value]) -> Result<usize> {
        if sql.starts_with(&format!("INSERT INTO {CHANGES} ")) {
            for row in params.chunks(11) {
                let bytes: usize = row
                    .iter()
                    .map(|v| match v {
                        Value::Text(t) => t.len(),
                        _ => 8,
                    })
                    .sum();
                if bytes > ROW_LIMIT {
                    return Err(crate::BackendError::new(BackendErrorKind::TooBig, "row too big").into());
                }
            }
        }
        self.0.execute(sql, params)
    }

    fn query(&self, sql: &str, params: &[Value], row: &mut dyn FnMut(&dyn Row) -> Result<()>) -> Result<()> {
        self.0.query(sql, params, row)
    }
}

impl Backend for RowLimited {
    fn run(&self, access: Access, f: &mut dyn FnMut(&dyn Connection) -> Result<()>) -> Result<()> {
        self.0.run(access, &mut |conn| f(&RowLimitedConnection(conn)))
    }
}

fn split_rows(db: &Db) -> i64 {
    run(db.backend(), Access::Read, |conn| {
        crate::store::codec::count(conn, "log", &format!("SELECT count(*) FROM {SPLIT_IMAGES}"), &[])
    })
    .unwrap() as i64
}

#[test]
fn large_before_and_after_images_are_kept_apart_and_read_back_whole() -> Result<()> {
    let backend = RowLimited(SqliteBackend::open_in_memory(&SqliteOptions::default())?);
    let db = Db::with_backend(backend, DbOptions::default().before_images(true))?;
    let blobs = db.collection::<VBlob>()?;
    let big = |c: char, version| VBlob { id: 1, version, body: std::iter::repeat_n(c, 1_200_000).collect() };
    blobs.insert(&big('a', 0))?;
    // 1.2 MB before and 1.2 MB after: too much for one row.
    blobs.update(&big('b', 0))?;
    blobs.delete(1)?;
    assert_eq!(split_rows(&db), 1, "only the update needs its before-image kept apart");

    let events = db.changes_since(Lsn::ZERO)?.collect::<Result<Vec<_>>>()?;
    let ops: Vec<_> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete]);
    assert_eq!(events[1].before::<VBlob>()?, Some(big('a', 0)));
    assert_eq!(events[1].after::<VBlob>()?, Some(big('b', 1)));
    assert_eq!(events[2].before::<VBlob>()?, Some(big('b', 1)));

    // Truncation takes the kept-apart image with its event.
    assert_eq!(db.truncate_changes(Lsn::new(3))?, 2);
    assert_eq!(split_rows(&db), 0);
    Ok(())
}

#[test]
fn a_changed_image_kept_apart_is_reported_at_its_lsn() -> Result<()> {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true))?;
    let blobs = db.collection::<VBlob>()?;
    blobs.insert(&VBlob { id: 1, version: 0, body: "x".repeat(1_100_000) })?;
    blobs.update(&VBlob { id: 1, version: 0, body: "y".repeat(1_100_000) })?;
    run(db.backend(), Access::Atomic, |conn| {
        conn.execute(&format!("UPDATE {SPLIT_IMAGES} SET \"before\" = replace(\"before\", 'xx', 'xz')"), &[])
    })?;
    // The text kept apart is event 2's before-image and event 1's after-image: the damage is
    // reported at the first event it spoils.
    match db.changes_since(Lsn::ZERO) {
        Err(Error::WalCorrupted { lsn, .. }) => assert_eq!(lsn, 1),
        other => panic!("expected the damage at LSN 1, got {other:?}"),
    }
    match db.changes_since(Lsn::new(1)) {
        Err(Error::WalCorrupted { lsn, .. }) => assert_eq!(lsn, 2),
        other => panic!("expected the damage at LSN 2, got {other:?}"),
    }
    Ok(())
}

#[test]
fn without_the_split_a_row_limit_would_refuse_the_commit() -> Result<()> {
    // The wrapper does refuse an oversized row: the split is what keeps the update in.
    let backend = RowLimited(SqliteBackend::open_in_memory(&SqliteOptions::default())?);
    let refused = backend.run(Access::Atomic, &mut |conn| {
        crate::store::outbox::init(conn)?;
        let mut row = vec![Value::Integer(1); 11];
        row[7] = Value::Text("a".repeat(1_200_000));
        row[8] = Value::Text("b".repeat(1_200_000));
        conn.execute(&format!("INSERT INTO {CHANGES} ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"), &row).map(drop)
    });
    assert_eq!(refused.unwrap_err().backend_kind(), Some(BackendErrorKind::TooBig));
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize, db4_derive::Document, Debug, PartialEq, Clone)]
#[db4(crate = "crate", collection = "tags")]
struct Tag {
    #[id]
    id: i64,
}

#[test]
fn a_replay_that_meets_a_collection_the_target_lacks_applies_every_transaction_before_it() -> Result<()> {
    let source = Db::open_in_memory()?;
    let blobs = source.collection::<Blob>()?;
    let tags = source.collection::<Tag>()?;
    blobs.insert(&Blob { id: 1, body: "one".into() })?;
    source.transaction(|tx| {
        let blobs = tx.collection::<Blob>()?;
        blobs.insert(&Blob { id: 2, body: "two".into() })?;
        blobs.update(&Blob { id: 1, body: "uno".into() })
    })?;
    tags.insert(&Tag { id: 9 })?;
    blobs.insert(&Blob { id: 3, body: "after".into() })?;

    let target = Db::open_in_memory()?;
    let copied = target.collection::<Blob>()?;
    let report = crate::cdc::replay(&source, &target, None)?;
    // The three events of the first two transactions are in; the tags event stops it.
    assert_eq!((report.applied, report.last), (3, Lsn::new(3)));
    match &report.stopped {
        Some(crate::wal::StopReason::Callback { lsn, error: Error::ChangeLog { reason } }) => {
            assert_eq!(*lsn, Lsn::new(4));
            assert!(reason.contains("\"tags\""), "{reason}");
        }
        other => panic!("expected a stop at the tags event, got {other:?}"),
    }
    let mut docs = copied.query().all()?;
    docs.sort_by_key(|b| b.id);
    assert_eq!(docs, [Blob { id: 1, body: "uno".into() }, Blob { id: 2, body: "two".into() }]);
    Ok(())
}

/// Each event's LSN, whether its row holds an after-image, and its `split` flag.
fn stored_rows(db: &Db) -> Vec<(i64, bool, i64)> {
    let mut out = Vec::new();
    run(db.backend(), Access::Read, |conn| {
        conn.query(
            &format!("SELECT \"lsn\", \"after\" IS NOT NULL, \"split\" FROM {CHANGES} ORDER BY \"lsn\""),
            &[],
            &mut |row| {
                let int = |i| match row.get(i) {
                    Ok(ValueRef::Integer(v)) => v,
                    _ => -1,
                };
                out.push((int(0), int(1) == 1, int(2)));
                Ok(())
            },
        )
    })
    .unwrap();
    out
}

fn after_images(db: &Db) -> Result<Vec<Option<Blob>>> {
    db.changes_since(Lsn::ZERO)?.map(|e| e?.after::<Blob>()).collect()
}

/// An insert's row: no images, the after-image elsewhere.
const ELSEWHERE: i64 = crate::store::outbox::AFTER_ELSEWHERE;
/// An update's row: the replaced text (hidden) and the after-image elsewhere.
const REPLACING: i64 = crate::store::outbox::AFTER_ELSEWHERE | crate::store::outbox::BEFORE_HIDDEN;
/// A delete's row: the replaced text (hidden).
const REMOVING: i64 = crate::store::outbox::BEFORE_HIDDEN;

/// Whether each event's row holds a `before` text.
fn stored_befores(db: &Db) -> Vec<bool> {
    let mut out = Vec::new();
    run(db.backend(), Access::Read, |conn| {
        conn.query(&format!("SELECT \"before\" IS NOT NULL FROM {CHANGES} ORDER BY \"lsn\""), &[], &mut |row| {
            out.push(matches!(row.get(0)?, ValueRef::Integer(1)));
            Ok(())
        })
    })
    .unwrap();
    out
}

#[test]
fn each_after_image_is_stored_once_in_the_row_or_the_next_event() -> Result<()> {
    let db = Db::open_in_memory()?;
    let blobs = db.collection::<Blob>()?;
    let blob = |id, body: &str| Blob { id, body: body.into() };
    blobs.insert(&blob(1, "one"))?;
    blobs.insert(&blob(2, "two"))?;
    assert_eq!(stored_rows(&db), [(1, false, ELSEWHERE), (2, false, ELSEWHERE)]);
    assert_eq!(after_images(&db)?, [Some(blob(1, "one")), Some(blob(2, "two"))]);

    // The update keeps the text it replaced, event 1's after-image; its own is the row.
    blobs.update(&blob(1, "uno"))?;
    blobs.delete(2)?;
    assert_eq!(
        stored_rows(&db),
        [(1, false, ELSEWHERE), (2, false, ELSEWHERE), (3, false, REPLACING), (4, false, REMOVING)]
    );
    assert_eq!(stored_befores(&db), [false, false, true, true]);
    assert_eq!(after_images(&db)?, [Some(blob(1, "one")), Some(blob(2, "two")), Some(blob(1, "uno")), None]);
    // Nobody asked for before-images: the kept text is not handed out as one.
    let events = db.changes_since(Lsn::ZERO)?.collect::<Result<Vec<_>>>()?;
    assert!(events.iter().all(|e| e.before.is_none()));

    // Several writes of one document in one transaction chain the same way.
    db.transaction(|tx| {
        let blobs = tx.collection::<Blob>()?;
        blobs.insert(&blob(5, "a"))?;
        blobs.update(&blob(5, "b"))?;
        blobs.update(&blob(1, "eins"))
    })?;
    let images = after_images(&db)?;
    assert_eq!(images[4..], [Some(blob(5, "a")), Some(blob(5, "b")), Some(blob(1, "eins"))]);
    // Read from every position, each event finds its image whether its next event is in the
    // same page or not.
    for from in 0..7 {
        let tail: Vec<_> =
            db.changes_since(Lsn::new(from))?.map(|e| e.and_then(|e| e.after::<Blob>())).collect::<Result<_>>()?;
        assert_eq!(tail, images[from as usize..], "from {from}");
    }
    let one_by_one: Vec<_> =
        (0..7).map(|from| read_page(&db, Lsn::new(from), 1)?.0.remove(0).after::<Blob>()).collect::<Result<_>>()?;
    assert_eq!(one_by_one, images);
    Ok(())
}

#[test]
fn asked_for_before_images_are_stored_once_too() -> Result<()> {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true))?;
    let blobs = db.collection::<Blob>()?;
    blobs.insert(&Blob { id: 1, body: "one".into() })?;
    blobs.update(&Blob { id: 1, body: "uno".into() })?;
    let rows = stored_rows(&db);
    assert_eq!(rows.iter().map(|r| r.2).collect::<Vec<_>>(), [ELSEWHERE, ELSEWHERE]);
    let events = db.changes_since(Lsn::ZERO)?.collect::<Result<Vec<_>>>()?;
    assert_eq!(events[1].before::<Blob>()?, Some(Blob { id: 1, body: "one".into() }));
    assert_eq!(events[0].after::<Blob>()?, events[1].before::<Blob>()?);
    assert_eq!(events[1].after::<Blob>()?, Some(Blob { id: 1, body: "uno".into() }));
    Ok(())
}

#[test]
fn bulk_deletes_keep_the_images_their_rows_held() -> Result<()> {
    let db = Db::open_in_memory()?;
    let blobs = db.collection::<Blob>()?;
    for id in 1..=6 {
        blobs.insert(&Blob { id, body: format!("b{id}") })?;
    }
    // By condition: a DELETE returning the rows' text.
    blobs.query().filter(Blob::fields().id.lt(4)).delete()?;
    // Under a savepoint: the ids are selected first and deleted by a JSON list.
    db.transaction(|tx| {
        tx.savepoint("s")?;
        tx.collection::<Blob>()?.query().filter(Blob::fields().id.gt(4)).delete()
    })?;
    let images = after_images(&db)?;
    let expected: Vec<_> = (1..=6).map(|id| Some(Blob { id, body: format!("b{id}") })).collect();
    assert_eq!(images[..6], expected[..]);
    assert!(images[6..].iter().all(Option::is_none));
    // Every delete kept the text it removed.
    assert_eq!(stored_befores(&db)[6..], [true; 5]);
    Ok(())
}

#[test]
fn a_rolled_back_savepoint_or_transaction_leaves_the_images_right() -> Result<()> {
    let db = Db::open_in_memory()?;
    let blobs = db.collection::<Blob>()?;
    blobs.insert(&Blob { id: 1, body: "kept".into() })?;
    db.transaction(|tx| {
        let blobs = tx.collection::<Blob>()?;
        tx.savepoint("s")?;
        blobs.update(&Blob { id: 1, body: "undone".into() })?;
        tx.rollback_to("s")?;
        let nested: Result<()> = tx.transaction(|tx| {
            tx.collection::<Blob>()?.update(&Blob { id: 1, body: "failed".into() })?;
            Err(Error::transaction_state("roll back"))
        });
        assert!(nested.is_err());
        blobs.insert(&Blob { id: 2, body: "two".into() })
    })?;
    let failed: Result<()> = db.transaction(|tx| {
        tx.collection::<Blob>()?.update(&Blob { id: 2, body: "never".into() })?;
        Err(Error::transaction_state("roll back"))
    });
    assert!(failed.is_err());
    assert_eq!(
        after_images(&db)?,
        [Some(Blob { id: 1, body: "kept".into() }), Some(Blob { id: 2, body: "two".into() })]
    );
    Ok(())
}

#[test]
fn the_next_event_is_found_through_the_partial_index() -> Result<()> {
    let db = Db::open_in_memory()?;
    db.collection::<Blob>()?;
    let sql = format!(
        "SELECT min(\"lsn\") FROM {CHANGES} WHERE \"doc_id\" IN (SELECT value FROM json_each(?1)) AND {} \
         AND \"collection\" = ?2 GROUP BY \"doc_id\"",
        crate::store::outbox::NEXT_CONDITION
    );
    let mut plan = String::new();
    run(db.backend(), Access::Read, |conn| {
        conn.query(
            &format!("EXPLAIN QUERY PLAN {sql}"),
            &[Value::Text("[1]".into()), Value::Text("blobs".into())],
            &mut |row| {
                if let ValueRef::Text(t) = row.get(3)? {
                    plan.push_str(t);
                    plan.push('\n');
                }
                Ok(())
            },
        )
    })?;
    assert!(plan.contains("USING INDEX _db4_changes_next (doc_id=?)"), "{plan}");
    Ok(())
}

#[test]
fn a_row_changed_behind_the_logs_back_is_reported_not_handed_back() -> Result<()> {
    let path = std::env::temp_dir().join(format!("db4-in-row-{}.sqlite", std::process::id()));
    let _ = std::fs::remove_file(&path);
    {
        let db = Db::open(&path)?;
        let blobs = db.collection::<Blob>()?;
        blobs.insert(&Blob { id: 1, body: "one".into() })?;
        blobs.insert(&Blob { id: 2, body: "two".into() })?;
        run(db.backend(), Access::Atomic, |conn| {
            conn.execute("UPDATE \"blobs\" SET \"_doc\" = '{\"id\":2,\"body\":\"forged\"}' WHERE \"_id\" = 2", &[])
        })?;
        let mut events = db.changes_since(Lsn::ZERO)?;
        assert_eq!(events.next().transpose()?.map(|e| e.lsn), Some(Lsn::new(1)));
        match events.next() {
            Some(Err(Error::WalCorrupted { lsn, reason })) => {
                assert_eq!(lsn, 2);
                assert!(reason.contains("fails its checksum"), "{reason}");
            }
            other => panic!("expected the damage at LSN 2, got {other:?}"),
        }
        // Put it back, and the image reads again.
        run(db.backend(), Access::Atomic, |conn| {
            conn.execute("UPDATE \"blobs\" SET \"_doc\" = '{\"id\":2,\"body\":\"two\"}' WHERE \"_id\" = 2", &[])
        })?;
    }
    {
        // Opened with the log off, the database copies every image into its event first, so
        // the writes that follow cannot take one away.
        let db = Db::open_with(&path, DbOptions::default().change_log(false))?;
        assert!(stored_rows(&db).iter().all(|r| r.1 && r.2 == 0), "{:?}", stored_rows(&db));
        db.collection::<Blob>()?.update(&Blob { id: 2, body: "later".into() })?;
        assert_eq!(
            after_images(&db)?,
            [Some(Blob { id: 1, body: "one".into() }), Some(Blob { id: 2, body: "two".into() })]
        );
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}
