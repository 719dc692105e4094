//! Model-based tests: random operations on a store checked against a `BTreeMap`, in memory and
//! across reopening a file; and the helpers the other files' tests share (`tx_tests.rs` runs
//! the same operations inside transactions, with savepoints).

use super::*;
use crate::backend::{Access, run};
use crate::error::BackendErrorKind;
use crate::schema::quote_ident;
use crate::value::{Value, ValueRef};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Doc {
    pub(super) n: u64,
    pub(super) text: String,
}

pub(super) use crate::test_rng::Rng;

/// The documents and ids the store's tests write.
pub(super) trait DocRng {
    fn id(&mut self, pool: u64) -> String;
    fn doc(&mut self, max_text: u64) -> Doc;
}

impl DocRng for Rng {
    fn id(&mut self, pool: u64) -> String {
        format!("doc-{}", self.below(pool))
    }
    fn doc(&mut self, max_text: u64) -> Doc {
        let len = self.below(max_text + 1) as usize;
        let text: String = (0..len).map(|i| char::from(b'a' + ((i as u64 + self.0) % 26) as u8)).collect();
        Doc { n: self.next() >> 12, text }
    }
}

pub(super) fn entry_size(id: &str, doc: &impl Serialize) -> u64 {
    (BATCH_ENTRY_OVERHEAD + id.len() + serde_json::to_vec(doc).unwrap().len()) as u64
}

pub(super) fn options(limit: usize) -> BatchOptions {
    BatchOptions::default().max_blob_bytes(limit).compact_below(1.0)
}

pub(super) fn is_corrupt<T: fmt::Debug>(r: Result<T>) -> bool {
    match r {
        Err(e) => e.backend_kind() == Some(BackendErrorKind::Corrupt),
        Ok(v) => panic!("expected a Corrupt error, got Ok({v:?})"),
    }
}

/// Checks everything observable against the model.
pub(super) fn check<S: Scope>(store: &BatchStore<S>, model: &BTreeMap<String, Doc>) -> Result<()> {
    assert_eq!(store.ids()?, model.keys().cloned().collect::<Vec<_>>());
    assert_eq!(store.len()?, model.len() as u64);
    let got: Vec<Option<Doc>> = store.get_many(model.keys())?;
    assert_eq!(got, model.values().cloned().map(Some).collect::<Vec<_>>());
    let stats = store.verify()?;
    assert_eq!(stats, store.stats()?);
    assert_eq!(stats.documents, model.len() as u64);
    assert_eq!(stats.live_bytes, model.iter().map(|(id, d)| entry_size(id, d)).sum::<u64>());
    assert_eq!(stats.allocated_bytes, stats.live_bytes + stats.dead_bytes);
    Ok(())
}

/// Runs `steps` random operations against `store` and `model`, checking as it goes.
pub(super) fn random_ops<S: Scope>(
    store: &BatchStore<S>,
    model: &mut BTreeMap<String, Doc>,
    rng: &mut Rng,
    steps: usize,
) -> Result<()> {
    const POOL: u64 = 40;
    let limit = store.options().max_blob_bytes as u64;
    for step in 0..steps {
        match rng.below(100) {
            0..45 => {
                let id = rng.id(POOL);
                let max_text = if rng.below(20) == 0 { 400 } else { 120 };
                let doc = rng.doc(max_text);
                if entry_size(&id, &doc) > limit {
                    let before = store.stats()?;
                    assert!(matches!(store.put(&id, &doc), Err(Error::TooLarge { .. })));
                    assert_eq!(store.stats()?, before);
                } else {
                    store.put(&id, &doc)?;
                    model.insert(id, doc);
                }
            }
            45..60 => {
                let n = rng.below(7);
                let batch: Vec<(String, Doc)> = (0..n).map(|_| (rng.id(POOL), rng.doc(100))).collect();
                let oversized = rng.below(8) == 0;
                let mut batch = batch;
                if oversized {
                    let at = rng.below(n + 1) as usize;
                    batch.insert(at, (rng.id(POOL), Doc { n: 0, text: "x".repeat(limit as usize) }));
                }
                let result = store.put_many(batch.iter().map(|(id, d)| (id, d)));
                if oversized {
                    assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}");
                } else {
                    result?;
                    model.extend(batch);
                }
            }
            60..78 => {
                let id = rng.id(POOL);
                assert_eq!(store.delete(&id)?, model.remove(&id).is_some(), "delete {id}");
            }
            78..84 => {
                let ids: Vec<String> = (0..rng.below(5)).map(|_| rng.id(POOL)).collect();
                let expected = ids.iter().collect::<BTreeSet<_>>().iter().filter(|id| model.contains_key(**id)).count();
                assert_eq!(store.delete_many(&ids)?, expected as u64);
                for id in &ids {
                    model.remove(id);
                }
            }
            84..92 => {
                let id = rng.id(POOL);
                assert_eq!(store.get::<Doc>(&id)?.as_ref(), model.get(&id));
                assert_eq!(store.contains(&id)?, model.contains_key(&id));
            }
            92..96 => {
                let before = store.stats()?;
                let report = store.compact()?;
                let after = store.stats()?;
                assert!(report.rows_after <= report.rows_before, "{report:?}");
                assert_eq!((report.rows_before, report.rows_after), (before.rows, after.rows));
                assert_eq!(after.live_bytes, before.live_bytes);
                assert_eq!(after.dead_bytes + report.bytes_reclaimed, before.dead_bytes);
                check(store, model)?;
            }
            _ => check(store, model)?,
        }
        if step % 50 == 0 {
            check(store, model)?;
        }
    }
    check(store, model)
}

/// Every row of the store's two tables as stored, blobs then directory, each in id order: what
/// an undo must put back bit for bit.
pub(super) fn table_rows<S: Scope>(store: &BatchStore<S>) -> Result<Vec<Vec<Value>>> {
    let name = store.name();
    let tables = [(format!("_db4_batch_{name}_blobs"), 5), (format!("_db4_batch_{name}_docs"), 4)];
    let mut out = Vec::new();
    store.runner().read(|conn| {
        for (table, width) in &tables {
            let sql = format!(r#"SELECT * FROM {} ORDER BY "id""#, quote_ident(table));
            conn.query(&sql, &[], &mut |row| {
                let mut values = vec![Value::Text(table.clone())];
                for i in 0..*width {
                    values.push(row.get(i)?.to_owned());
                }
                out.push(values);
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Runs one raw statement through the connection, as a damaged file or a stray writer
/// would.
pub(super) fn raw(db: &Db, sql: &str, params: &[Value]) -> Result<usize> {
    run(db.backend(), Access::Write, |conn| conn.execute(sql, params))
}

pub(super) fn payload(db: &Db, blobs: &str, blob: i64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    run(db.backend(), Access::Read, |conn| {
        conn.query(&format!(r#"SELECT "payload" FROM {blobs} WHERE "id" = ?1"#), &[Value::Integer(blob)], &mut |row| {
            if let ValueRef::Blob(b) = row.get(0)? {
                out = b.to_vec();
            }
            Ok(())
        })
    })?;
    Ok(out)
}

#[test]
fn random_operations_match_a_btreemap_model() -> Result<()> {
    for seed in 1..=4 {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "model", options(256))?;
        let mut model = BTreeMap::new();
        random_ops(&store, &mut model, &mut Rng(seed), 400)?;
        store.compact()?;
        check(&store, &model)?;
    }
    Ok(())
}

#[test]
fn default_threshold_and_larger_blobs_match_the_model() -> Result<()> {
    let db = Db::open_in_memory()?;
    let store = BatchStore::open(&db, "model", BatchOptions::default().max_blob_bytes(1024))?;
    let mut model = BTreeMap::new();
    random_ops(&store, &mut model, &mut Rng(99), 500)
}

#[test]
fn survives_reopening_a_file_database() -> Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("db4-batch-{}-{nanos}.db", std::process::id()));
    let open = || -> Result<(Db, BatchStore)> {
        let db = Db::open_with(&path, crate::DbOptions::default().synchronous(crate::Synchronous::Normal))?;
        let store = BatchStore::open(&db, "persist", options(300))?;
        Ok((db, store))
    };
    let result = (|| -> Result<()> {
        let mut model = BTreeMap::new();
        let mut rng = Rng(7);
        {
            let (_db, store) = open()?;
            random_ops(&store, &mut model, &mut rng, 300)?;
        }
        {
            let (_db, store) = open()?;
            check(&store, &model)?;
            store.compact()?;
            random_ops(&store, &mut model, &mut rng, 100)?;
        }
        let (_db, store) = open()?;
        check(&store, &model)
    })();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        std::fs::remove_file(p).ok();
    }
    result
}
