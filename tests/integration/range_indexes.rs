//! Composite indexes declared with `#[db4(index(name = "...", fields(...)))]`: the SQLite
//! index they create, that the planner uses it for the queries db4 renders, and the migration
//! when the declaration changes (created, dropped, recorded in the schema table).

use crate::common::{column_names, index_names, raw, schema_record};
use db4::{Db, Document, Ordered};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Draft,
    Published,
}

impl Ordered for Status {}

mod v1 {
    use super::*;

    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "posts", index(name = "by_tenant_created", fields(tenant_id, created_at desc)))]
    pub struct Post {
        #[id]
        pub id: String,
        pub tenant_id: String,
        pub status: Status,
        pub created_at: i64,
    }
}

mod v2 {
    use super::*;

    /// `by_tenant_created` gains a key; `by_status` is new.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "posts", index(name = "by_tenant_created", fields(tenant_id, status, created_at desc)))]
    #[db4(index(name = "by_status", fields(status)))]
    pub struct Post {
        #[id]
        pub id: String,
        pub tenant_id: String,
        pub status: Status,
        pub created_at: i64,
    }
}

mod v3 {
    use super::*;

    /// No composite index any more; `tenant_id` keeps a single-field index of its own.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "posts")]
    pub struct Post {
        #[id]
        pub id: String,
        #[index]
        pub tenant_id: String,
        pub status: Status,
        pub created_at: i64,
    }
}

fn index_sql(path: &std::path::Path, name: &str) -> Option<String> {
    raw(path).query_row("SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?1", [name], |r| r.get(0)).ok()
}

/// The planner's plan for `sql`, one line per step.
fn plan(path: &std::path::Path, sql: &str) -> String {
    let conn = raw(path);
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows: Vec<String> = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap().map(|r| r.unwrap()).collect();
    rows.join("\n")
}

#[test]
fn a_composite_index_is_a_real_sqlite_index_the_planner_uses() -> db4::Result<()> {
    let dir = TempDir::new("composite-ddl");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path)?;
    let posts = db.collection::<v1::Post>()?;
    for i in 0..50 {
        let tenant = format!("t{}", i % 3);
        posts.insert(&v1::Post { id: format!("p{i:02}"), tenant_id: tenant, status: Status::Draft, created_at: i })?;
    }
    drop(db);
    let sql = index_sql(&path, "posts:by_tenant_created").expect("the index exists");
    assert_eq!(
        sql,
        "CREATE INDEX \"posts:by_tenant_created\" ON \"posts\" (\"f_tenant_id\" ASC, \"f_created_at\" DESC, \"_id\" DESC)"
    );
    // Keys of a composite index get generated columns, and no single-field index of their own.
    let columns = column_names(&path, "posts");
    assert!(columns.contains(&"f_tenant_id".to_owned()) && columns.contains(&"f_created_at".to_owned()), "{columns:?}");
    assert_eq!(index_names(&path, "posts"), ["posts:by_tenant_created"]);

    // The shape db4's range builder renders for a prefix and a keyset position.
    let plan = plan(
        &path,
        "SELECT \"_id\", \"_doc\" FROM \"posts\" WHERE \"f_tenant_id\" = 't1' AND (\"f_created_at\", \"_id\") < (30, 'p30') \
         ORDER BY \"f_tenant_id\" DESC, \"f_created_at\" DESC, \"_id\" DESC LIMIT 11",
    );
    assert!(plan.contains("USING INDEX posts:by_tenant_created (f_tenant_id=? AND"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "no sort step: {plan}");
    Ok(())
}

#[test]
fn changing_the_declaration_migrates_on_open() -> db4::Result<()> {
    let dir = TempDir::new("composite-migrate");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path)?;
        let posts = db.collection::<v1::Post>()?;
        posts.insert(&v1::Post { id: "a".into(), tenant_id: "t".into(), status: Status::Published, created_at: 7 })?;
    }
    {
        let db = Db::open(&path)?;
        let posts = db.collection::<v2::Post>()?;
        let sql = index_sql(&path, "posts:by_tenant_created").expect("recreated");
        assert!(sql.contains("\"f_tenant_id\" ASC, \"f_status\" ASC, \"f_created_at\" DESC, \"_id\" DESC"), "{sql}");
        assert!(index_sql(&path, "posts:by_status").is_some());
        let record = schema_record(&path, "posts").unwrap();
        let names: Vec<&str> =
            record["indexes"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["by_tenant_created", "by_status"]);
        // The data is untouched and the new column answers queries.
        let found = posts.query().filter(v2::Post::fields().status.eq(Status::Published)).all()?;
        assert_eq!(found.len(), 1);
        let plan = plan(
            &path,
            "SELECT \"_id\" FROM \"posts\" WHERE \"f_tenant_id\" = 't' AND \"f_status\" = 'Published' \
             ORDER BY \"f_created_at\" DESC, \"_id\" DESC",
        );
        assert!(plan.contains("USING INDEX posts:by_tenant_created (f_tenant_id=? AND f_status=?)"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
    {
        // Reopening with the same declaration changes nothing.
        let before = raw(&path)
            .query_row("SELECT generation FROM _db4_schema WHERE collection = 'posts'", [], |r| r.get::<_, i64>(0));
        let db = Db::open(&path)?;
        db.collection::<v2::Post>()?;
        let after = raw(&path)
            .query_row("SELECT generation FROM _db4_schema WHERE collection = 'posts'", [], |r| r.get::<_, i64>(0));
        assert_eq!(before.unwrap(), after.unwrap());
    }
    {
        let db = Db::open(&path)?;
        let posts = db.collection::<v3::Post>()?;
        assert_eq!(index_names(&path, "posts"), ["posts.tenant_id"]);
        let columns = column_names(&path, "posts");
        assert!(!columns.iter().any(|c| c == "f_status" || c == "f_created_at"), "{columns:?}");
        assert!(schema_record(&path, "posts").unwrap().get("indexes").is_none());
        assert_eq!(posts.get("a")?.map(|p| p.created_at), Some(7));
    }
    {
        // And back: the single-field index goes, the composite one returns.
        let db = Db::open(&path)?;
        db.collection::<v1::Post>()?;
        assert_eq!(index_names(&path, "posts"), ["posts:by_tenant_created"]);
    }
    Ok(())
}

#[test]
fn hand_built_schemas_with_bad_indexes_are_refused() {
    use db4::{FieldDef, IndexDef, IndexField, Schema};
    static FIELDS: [FieldDef; 2] = [FieldDef::new("id", "id", "String").id(), FieldDef::new("n", "n", "i64")];
    static UNKNOWN: [IndexDef; 1] = [IndexDef::new("by_x", &[IndexField::asc("x")])];
    static TWICE: [IndexDef; 1] = [IndexDef::new("by_n", &[IndexField::asc("n"), IndexField::desc("n")])];
    static ID: [IndexDef; 1] = [IndexDef::new("by_id", &[IndexField::asc("id")])];
    static EMPTY: [IndexDef; 1] = [IndexDef::new("none", &[])];
    static BAD_NAME: [IndexDef; 1] = [IndexDef::new("a:b", &[IndexField::asc("n")])];
    static DUP: [IndexDef; 2] =
        [IndexDef::new("i", &[IndexField::asc("n")]), IndexDef::new("i", &[IndexField::asc("n")])];
    for indexes in [&UNKNOWN[..], &TWICE, &ID, &EMPTY, &BAD_NAME, &DUP] {
        let schema = Schema::new("x", "X", &FIELDS).indexes(indexes);
        assert!(matches!(schema.validate(), Err(db4::Error::SchemaMismatch { .. })), "{indexes:?}");
    }
}

mod single {
    use super::*;

    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "events")]
    pub struct Event {
        #[id]
        pub id: String,
        #[range_index]
        pub at: i64,
        #[index]
        pub kind: String,
    }

    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "counters")]
    pub struct Counter {
        #[id]
        pub id: i64,
        #[range_index]
        pub n: i64,
    }
}

fn generation(path: &std::path::Path, collection: &str) -> i64 {
    raw(path).query_row("SELECT generation FROM _db4_schema WHERE collection = ?1", [collection], |r| r.get(0)).unwrap()
}

#[test]
fn single_field_indexes_end_with_a_text_id_and_older_ones_are_rebuilt_on_open() -> db4::Result<()> {
    use single::{Counter, Event};
    let dir = TempDir::new("single-index-layout");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path)?;
        let events = db.collection::<Event>()?;
        for i in 0..40 {
            events.insert(&Event { id: format!("e{:02}", 39 - i), at: i / 4, kind: format!("k{}", i % 2) })?;
        }
        db.collection::<Counter>()?.insert(&Counter { id: 1, n: 5 })?;
    }
    let at_index = "CREATE INDEX \"events.at\" ON \"events\" (\"f_at\", \"_id\")";
    assert_eq!(index_sql(&path, "events.at").as_deref(), Some(at_index));
    assert_eq!(
        index_sql(&path, "events.kind").as_deref(),
        Some("CREATE INDEX \"events.kind\" ON \"events\" (\"f_kind\", \"_id\")")
    );
    // An integer id is the rowid, which every index entry ends with already.
    assert_eq!(
        index_sql(&path, "counters.n").as_deref(),
        Some("CREATE INDEX \"counters.n\" ON \"counters\" (\"f_n\")")
    );
    // What every range page renders over a one-field index: no sort step.
    let page = "SELECT \"_id\", \"_doc\" FROM \"events\" WHERE (\"f_at\", \"_id\") > (3, 'e20') \
                ORDER BY \"f_at\" ASC, \"_id\" ASC LIMIT 11";
    let descending =
        "SELECT \"_id\" FROM \"events\" WHERE \"f_at\" BETWEEN 2 AND 6 ORDER BY \"f_at\" DESC, \"_id\" DESC";
    for sql in [page, descending] {
        let plan = plan(&path, sql);
        assert!(plan.contains("USING INDEX events.at") && !plan.contains("TEMP B-TREE"), "{plan}");
    }

    // A database from before: the indexes over the column alone, no layout in the record.
    {
        let conn = raw(&path);
        conn.execute_batch(
            "DROP INDEX \"events.at\"; CREATE INDEX \"events.at\" ON \"events\" (\"f_at\");
             DROP INDEX \"events.kind\"; CREATE INDEX \"events.kind\" ON \"events\" (\"f_kind\");
             UPDATE _db4_schema SET schema = json_remove(schema, '$.single_index_layout') WHERE collection = 'events';",
        )
        .unwrap();
    }
    assert!(plan(&path, page).contains("TEMP B-TREE"), "the old layout sorts");
    let (events_before, counters_before) = (generation(&path, "events"), generation(&path, "counters"));
    {
        let db = Db::open(&path)?;
        let events = db.collection::<Event>()?;
        assert_eq!(index_sql(&path, "events.at").as_deref(), Some(at_index));
        assert!(index_sql(&path, "events.kind").is_some_and(|s| s.ends_with("(\"f_kind\", \"_id\")")));
        assert_eq!(generation(&path, "events"), events_before + 1);
        assert!(!plan(&path, page).contains("TEMP B-TREE"));
        let all: Vec<Event> = events.range(Event::fields().at).iter(7).collect::<db4::Result<_>>()?;
        let keys: Vec<(i64, String)> = all.iter().map(|e| (e.at, e.id.clone())).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!((keys.len(), &keys), (40, &sorted));
        assert_eq!(schema_record(&path, "events").unwrap()["single_index_layout"], 1);
        db.collection::<Counter>()?;
        assert_eq!(generation(&path, "counters"), counters_before, "a current record is left alone");
    }
    {
        // Once migrated, reopening changes nothing.
        let db = Db::open(&path)?;
        db.collection::<Event>()?;
        assert_eq!(generation(&path, "events"), events_before + 1);
    }
    Ok(())
}
