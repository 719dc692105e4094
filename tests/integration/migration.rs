//! Automatic migrations on a database file: index columns added and backfilled, dropped, the
//! version column added and removed, the schema table kept up to date, and failed migrations
//! leaving everything as it was.

use crate::common;
use db4::prelude::*;
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version 1: no index at all.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "people")]
struct PersonV1 {
    #[id]
    id: String,
    tenant: String,
    age: i64,
    city: Option<String>,
    rev: u64,
}

/// Version 2: an equality index, a range index on an optional field, a partition key.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "people")]
struct PersonV2 {
    #[id]
    id: String,
    #[partition_key]
    tenant: String,
    #[index]
    age: i64,
    #[range_index]
    city: Option<String>,
    rev: u64,
}

/// Version 3: the `age` index removed, the others kept.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "people")]
struct PersonV3 {
    #[id]
    id: String,
    #[partition_key]
    tenant: String,
    age: i64,
    #[range_index]
    city: Option<String>,
    rev: u64,
}

/// Version 4: the existing `rev` field becomes the `#[version]` counter.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "people")]
struct PersonV4 {
    #[id]
    id: String,
    tenant: String,
    age: i64,
    city: Option<String>,
    #[version]
    rev: u64,
}

/// A new `#[version]` field that stored documents do not have yet.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "people")]
struct PersonNewVersion {
    #[id]
    id: String,
    tenant: String,
    age: i64,
    city: Option<String>,
    rev: u64,
    #[version]
    #[serde(default)]
    version: u64,
}

fn people(n: usize) -> Vec<PersonV1> {
    (0..n)
        .map(|i| PersonV1 {
            id: format!("p{i:03}"),
            tenant: ["acme", "globex"][i % 2].into(),
            age: 20 + (i as i64 % 7),
            city: if i % 4 == 0 { None } else { Some(["Oslo", "Lima", "Pune"][i % 3].into()) },
            rev: (i % 5) as u64,
        })
        .collect()
}

fn v2(p: &PersonV1) -> PersonV2 {
    PersonV2 { id: p.id.clone(), tenant: p.tenant.clone(), age: p.age, city: p.city.clone(), rev: p.rev }
}

fn seed(path: &Path, n: usize) -> Vec<PersonV1> {
    let docs = people(n);
    let db = Db::open(path).unwrap();
    db.collection::<PersonV1>().unwrap().insert_many(&docs).unwrap();
    docs
}

fn record_columns(path: &Path) -> Vec<(String, Option<String>, bool)> {
    let record = common::schema_record(path, "people").expect("a schema record");
    record["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_owned(),
                c["index"].as_str().map(str::to_owned),
                c["partition_key"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn sorted<T: Clone, K: Ord>(v: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort_by_key(key);
    v
}

#[test]
fn adding_indexes_backfills_and_removing_them_drops_them() {
    let dir = TempDir::new("migrate-index");
    let path = dir.join("db.sqlite");
    let docs = seed(&path, 60);
    assert_eq!(common::column_names(&path, "people"), vec!["_id", "_doc"]);
    assert!(common::index_names(&path, "people").is_empty());
    assert_eq!(record_columns(&path), vec![]);
    assert_eq!(common::schema_record(&path, "people").unwrap()["type_name"], "PersonV1");

    // v2: three new columns, created and filled from the stored documents.
    {
        let db = Db::open(&path).unwrap();
        let c = db.collection::<PersonV2>().unwrap();
        let f = PersonV2::fields();
        let got = c.query().filter(f.age.eq(23)).order_by(f.id.asc()).all().unwrap();
        let expected: Vec<PersonV2> = docs.iter().filter(|p| p.age == 23).map(v2).collect();
        assert!(!expected.is_empty());
        assert_eq!(got, expected);
        let got = c.query().filter(f.city.gte(Some("Oslo".to_string()))).count().unwrap();
        assert_eq!(got, docs.iter().filter(|p| p.city.as_deref().is_some_and(|c| c >= "Oslo")).count() as u64);
        assert_eq!(c.query().filter(f.city.is_none()).count().unwrap(), 15);
        assert_eq!(c.query().filter(f.tenant.eq("acme")).count().unwrap(), 30);
        let oldest = c.query().order_by(f.age.desc()).order_by(f.id.asc()).first().unwrap().unwrap();
        assert_eq!(oldest.id, "p006");
        // New writes maintain the new columns too.
        c.insert(&PersonV2 { id: "new".into(), tenant: "initech".into(), age: 99, city: None, rev: 0 }).unwrap();
        assert_eq!(c.query().filter(f.age.eq(99)).count().unwrap(), 1);
    }
    assert_eq!(common::column_names(&path, "people"), vec!["_id", "_doc", "f_tenant", "f_age", "f_city"]);
    assert_eq!(common::index_names(&path, "people"), vec!["people.age", "people.city", "people.tenant"]);
    assert_eq!(
        common::scalar(&path, "SELECT count(*) FROM people WHERE f_age IS json_extract(_doc, '$.age')"),
        61,
        "every row's column holds the document's value"
    );
    assert_eq!(common::scalar(&path, "SELECT count(*) FROM people WHERE f_city IS json_extract(_doc, '$.city')"), 61);
    assert_eq!(common::scalar(&path, "SELECT count(*) FROM people WHERE f_tenant IS NULL"), 0);
    let plan: String = common::raw(&path)
        .query_row("EXPLAIN QUERY PLAN SELECT _doc FROM people WHERE f_age = 30", [], |r| r.get(3))
        .unwrap();
    assert!(plan.contains("people.age"), "the query uses the new index: {plan}");
    assert_eq!(
        record_columns(&path),
        vec![
            ("tenant".into(), None, true),
            ("age".into(), Some("equality".into()), false),
            ("city".into(), Some("range".into()), false),
        ]
    );
    assert_eq!(common::schema_record(&path, "people").unwrap()["type_name"], "PersonV2");

    // v3: the age index and its column are dropped; the others stay.
    {
        let db = Db::open(&path).unwrap();
        let c = db.collection::<PersonV3>().unwrap();
        let f = PersonV3::fields();
        // age is still queryable, through the document.
        assert_eq!(c.query().filter(f.age.eq(23)).count().unwrap(), docs.iter().filter(|p| p.age == 23).count() as u64);
        let lima = docs.iter().filter(|p| p.city.as_deref() == Some("Lima")).count() as u64;
        assert!(lima > 0);
        assert_eq!(c.query().filter(f.city.eq("Lima")).count().unwrap(), lima);
        assert_eq!(c.count().unwrap(), 61);
    }
    assert_eq!(common::index_names(&path, "people"), vec!["people.city", "people.tenant"]);
    assert_eq!(common::column_names(&path, "people"), vec!["_id", "_doc", "f_tenant", "f_city"]);
    assert_eq!(
        record_columns(&path),
        vec![("tenant".into(), None, true), ("city".into(), Some("range".into()), false)]
    );

    // Back to v1: every index gone, every document still there and unchanged.
    {
        let db = Db::open(&path).unwrap();
        let c = db.collection::<PersonV1>().unwrap();
        let all =
            c.query().filter(PersonV1::fields().id.ne("new")).order_by(PersonV1::fields().id.asc()).all().unwrap();
        assert_eq!(all.len(), 60);
        assert_eq!(all, sorted(&docs, |p| p.id.clone()));
    }
    assert!(common::index_names(&path, "people").is_empty());
    assert_eq!(common::column_names(&path, "people"), vec!["_id", "_doc"]);
    assert_eq!(record_columns(&path), vec![]);
}

#[test]
fn reopening_with_the_same_schema_changes_nothing() {
    let dir = TempDir::new("migrate-same");
    let path = dir.join("db.sqlite");
    seed(&path, 5);
    {
        let db = Db::open(&path).unwrap();
        db.collection::<PersonV2>().unwrap();
    }
    let schema_sql = |p: &Path| -> Vec<String> {
        let conn = common::raw(p);
        let mut stmt = conn.prepare("SELECT coalesce(sql, name) FROM sqlite_schema ORDER BY name").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    let before = (schema_sql(&path), common::schema_record(&path, "people"));
    for _ in 0..3 {
        let db = Db::open(&path).unwrap();
        let c = db.collection::<PersonV2>().unwrap();
        assert_eq!(c.count().unwrap(), 5);
    }
    assert_eq!((schema_sql(&path), common::schema_record(&path, "people")), before);
}

#[test]
fn making_an_existing_field_the_version_keeps_its_values() {
    let dir = TempDir::new("migrate-version");
    let path = dir.join("db.sqlite");
    let docs = seed(&path, 10);
    assert_eq!(common::schema_record(&path, "people").unwrap()["version_field"], serde_json::Value::Null);
    let db = Db::open(&path).unwrap();
    let c = db.collection::<PersonV4>().unwrap();
    assert_eq!(common::column_names(&path, "people"), vec!["_id", "_doc", "_version"]);
    assert_eq!(common::schema_record(&path, "people").unwrap()["version_field"], "rev");
    assert_eq!(
        common::scalar(&path, "SELECT count(*) FROM people WHERE _version = json_extract(_doc, '$.rev')"),
        10,
        "the version column is filled from the documents"
    );
    for p in &docs {
        assert_eq!(c.get(&p.id).unwrap().unwrap().rev, p.rev);
    }
    // Version checks use the migrated values.
    let p3 = c.get("p003").unwrap().unwrap();
    assert_eq!(p3.rev, 3);
    let stale = PersonV4 { rev: 2, ..p3.clone() };
    assert!(matches!(c.update(&stale), Err(Error::Conflict { expected: 2, actual: 3, .. })));
    c.update(&p3).unwrap();
    assert_eq!(c.get("p003").unwrap().unwrap().rev, 4);
    assert_eq!(c.query().filter(PersonV4::fields().rev.eq(4)).count().unwrap(), 3, "p003 and the two seeded with 4");
    drop(c);
    drop(db);

    // Removing the version field drops the column again; the data stays readable.
    let db = Db::open(&path).unwrap();
    let c = db.collection::<PersonV1>().unwrap();
    assert_eq!(common::column_names(&path, "people"), vec!["_id", "_doc"]);
    assert_eq!(common::schema_record(&path, "people").unwrap()["version_field"], serde_json::Value::Null);
    assert_eq!(c.count().unwrap(), 10);
    assert_eq!(c.get("p000").unwrap(), Some(docs[0].clone()));
}

#[test]
fn removing_the_version_field_keeps_the_latest_version_value() {
    let dir = TempDir::new("migrate-unversion");
    let path = dir.join("db.sqlite");
    seed(&path, 1);
    {
        let db = Db::open(&path).unwrap();
        let c = db.collection::<PersonV4>().unwrap();
        let mut p = c.get("p000").unwrap().unwrap();
        for _ in 0..3 {
            c.update(&p).unwrap();
            p = c.get("p000").unwrap().unwrap();
        }
        assert_eq!(p.rev, 3);
    }
    let db = Db::open(&path).unwrap();
    let c = db.collection::<PersonV1>().unwrap();
    assert_eq!(c.get("p000").unwrap().unwrap().rev, 3, "the field keeps the last stored version");
}

#[test]
fn adding_a_new_version_field_starts_at_zero() {
    let dir = TempDir::new("migrate-new-version");
    let path = dir.join("db.sqlite");
    let docs = seed(&path, 4);
    let db = Db::open(&path).unwrap();
    let c = db.collection::<PersonNewVersion>().unwrap();
    assert_eq!(common::schema_record(&path, "people").unwrap()["version_field"], "version");
    for p in &docs {
        let got = c.get(&p.id).unwrap().unwrap();
        assert_eq!((got.version, got.rev, got.age), (0, p.rev, p.age));
    }
    let mut p = c.get("p001").unwrap().unwrap();
    p.age = 50;
    c.update(&p).unwrap();
    assert_eq!(c.get("p001").unwrap().unwrap().version, 1);
    assert!(matches!(c.update(&p), Err(Error::Conflict { expected: 0, actual: 1, .. })));
}

/// v2 narrows a field (u64 -> u32), indexes it and adds a field: the migration rewrites every
/// document through v2, and one of them does not fit.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "counters")]
struct CounterV1 {
    #[id]
    id: i64,
    #[index]
    name: String,
    hits: u64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "counters")]
struct CounterV2 {
    #[id]
    id: i64,
    name: String,
    #[range_index]
    hits: u32,
    #[serde(default)]
    label: String,
}

#[test]
fn a_failed_backfill_leaves_the_database_as_it_was() {
    let dir = TempDir::new("migrate-fail");
    let path = dir.join("db.sqlite");
    let docs = vec![
        CounterV1 { id: 1, name: "a".into(), hits: 5 },
        CounterV1 { id: 2, name: "b".into(), hits: u64::MAX },
        CounterV1 { id: 3, name: "c".into(), hits: 7 },
    ];
    {
        let db = Db::open(&path).unwrap();
        db.collection::<CounterV1>().unwrap().insert_many(&docs).unwrap();
    }
    let record = common::schema_record(&path, "counters");
    let columns = common::column_names(&path, "counters");
    let indexes = common::index_names(&path, "counters");
    assert_eq!(indexes, vec!["counters.name"]);

    let db = Db::open(&path).unwrap();
    match db.collection::<CounterV2>() {
        Err(Error::Serialization { collection, id, .. }) => {
            assert_eq!((collection.as_str(), id.as_deref()), ("counters", Some("2")));
        }
        other => panic!("expected a Serialization error naming document 2, got {other:?}"),
    }
    assert_eq!(common::schema_record(&path, "counters"), record, "the schema record is unchanged");
    assert_eq!(common::column_names(&path, "counters"), columns, "no column added, none dropped");
    assert_eq!(common::index_names(&path, "counters"), indexes, "no index added, none dropped");

    let c = db.collection::<CounterV1>().unwrap();
    assert_eq!(c.query().order_by(CounterV1::fields().id.asc()).all().unwrap(), docs);
    assert_eq!(c.query().filter(CounterV1::fields().name.eq("b")).count().unwrap(), 1);

    // Once the offending document is fixed, the migration goes through.
    c.update(&CounterV1 { hits: 6, ..docs[1].clone() }).unwrap();
    let c2 = db.collection::<CounterV2>().unwrap();
    assert_eq!(c2.query().filter(CounterV2::fields().hits.between(6, 7)).count().unwrap(), 2);
    assert_eq!(common::index_names(&path, "counters"), vec!["counters.hits"]);
}

#[test]
fn migrating_through_one_handle_then_reading_through_it() {
    // Both schema versions used from the same Db: the second call migrates, and the reader
    // connections opened before the migration see the new layout.
    let dir = TempDir::new("migrate-one-handle");
    let db = Db::open(dir.join("db.sqlite")).unwrap();
    let v1 = db.collection::<PersonV1>().unwrap();
    let docs = people(12);
    v1.insert_many(&docs).unwrap();
    let c = db.collection::<PersonV2>().unwrap();
    assert_eq!(c.query().filter(PersonV2::fields().age.eq(21)).count().unwrap(), 2);
    // And back.
    let back = db.collection::<PersonV1>().unwrap();
    assert_eq!(back.query().filter(PersonV1::fields().age.eq(21)).count().unwrap(), 2);
}

#[test]
fn a_handle_opened_before_a_migration_keeps_new_indexes_complete() {
    let dir = TempDir::new("migrate-stale-handle");
    let path = dir.join("db.sqlite");
    seed(&path, 2);
    // An "old binary" keeps its v1 handle open while a "new binary" migrates to v2.
    let old_db = Db::open(&path).unwrap();
    let old = old_db.collection::<PersonV1>().unwrap();
    let new_db = Db::open(&path).unwrap();
    let new = new_db.collection::<PersonV2>().unwrap();
    let late = PersonV1 { id: "late".into(), tenant: "acme".into(), age: 77, city: None, rev: 0 };
    // Either the write is refused, or it is visible through the new index.
    if old.insert(&late).is_ok() {
        assert_eq!(new.query().filter(PersonV2::fields().age.eq(77)).count().unwrap(), 1);
    }
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "evolving")]
struct EvolvingV1 {
    #[id]
    id: i64,
    name: String,
}

/// A new field with a serde default, indexed.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "evolving")]
struct EvolvingIndexed {
    #[id]
    id: i64,
    name: String,
    #[index]
    #[serde(default)]
    score: i64,
}

/// The same new field, not indexed.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "evolving")]
struct EvolvingPlain {
    #[id]
    id: i64,
    name: String,
    #[serde(default)]
    score: i64,
}

#[test]
fn a_new_indexed_field_with_a_default_is_backfilled_with_the_default() {
    let db = Db::open_in_memory().unwrap();
    db.collection::<EvolvingV1>()
        .unwrap()
        .insert_many(&[EvolvingV1 { id: 1, name: "a".into() }, EvolvingV1 { id: 2, name: "b".into() }])
        .unwrap();
    let c = db.collection::<EvolvingIndexed>().unwrap();
    assert_eq!(c.get(1).unwrap().map(|d| d.score), Some(0));
    assert_eq!(c.query().filter(EvolvingIndexed::fields().score.eq(0)).count().unwrap(), 2);
    c.insert(&EvolvingIndexed { id: 3, name: "c".into(), score: 5 }).unwrap();
    assert_eq!(c.query().filter(EvolvingIndexed::fields().score.gt(0)).count().unwrap(), 1);
}

#[test]
fn a_new_plain_field_with_a_default_is_queried_as_read() {
    let db = Db::open_in_memory().unwrap();
    db.collection::<EvolvingV1>().unwrap().insert(&EvolvingV1 { id: 1, name: "a".into() }).unwrap();
    let c = db.collection::<EvolvingPlain>().unwrap();
    assert_eq!(c.get(1).unwrap().map(|d| d.score), Some(0));
    assert_eq!(c.query().filter(EvolvingPlain::fields().score.eq(0)).count().unwrap(), 1);
}
