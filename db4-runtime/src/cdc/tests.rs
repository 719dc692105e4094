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
    let blobs = db.collection::<Blob>()?;
    let big = |c: char| Blob { id: 1, body: std::iter::repeat_n(c, 1_200_000).collect() };
    blobs.insert(&big('a'))?;
    // 1.2 MB before and 1.2 MB after: too much for one row.
    blobs.update(&big('b'))?;
    blobs.delete(1)?;
    assert_eq!(split_rows(&db), 1, "only the update needs its before-image kept apart");

    let events = db.changes_since(Lsn::ZERO)?.collect::<Result<Vec<_>>>()?;
    let ops: Vec<_> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [ChangeOp::Insert, ChangeOp::Update, ChangeOp::Delete]);
    assert_eq!(events[1].before::<Blob>()?, Some(big('a')));
    assert_eq!(events[1].after::<Blob>()?, Some(big('b')));
    assert_eq!(events[2].before::<Blob>()?, Some(big('b')));

    // Truncation takes the kept-apart image with its event.
    assert_eq!(db.truncate_changes(Lsn::new(3))?, 2);
    assert_eq!(split_rows(&db), 0);
    Ok(())
}

#[test]
fn a_changed_image_kept_apart_is_reported_at_its_lsn() -> Result<()> {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true))?;
    let blobs = db.collection::<Blob>()?;
    blobs.insert(&Blob { id: 1, body: "x".repeat(1_100_000) })?;
    blobs.update(&Blob { id: 1, body: "y".repeat(1_100_000) })?;
    run(db.backend(), Access::Atomic, |conn| {
        conn.execute(&format!("UPDATE {SPLIT_IMAGES} SET \"before\" = replace(\"before\", 'xx', 'xz')"), &[])
    })?;
    let mut events = db.changes_since(Lsn::ZERO)?;
    assert_eq!(events.next().transpose()?.map(|e| e.lsn), Some(Lsn::new(1)));
    match events.next() {
        Some(Err(Error::WalCorrupted { lsn, .. })) => assert_eq!(lsn, 2),
        other => panic!("expected the damage at LSN 2, got {other:?}"),
    }
    assert!(events.next().is_none());
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
