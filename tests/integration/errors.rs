//! Every error variant: its context fields, and that the database is unchanged afterwards.

use crate::common;
use db4::prelude::*;
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "measures")]
struct Measure {
    #[id]
    id: String,
    #[index]
    level: f64,
    #[range_index]
    at: f64,
    #[index]
    maybe: Option<f64>,
    #[index]
    big: u64,
    plain: f64,
    #[version]
    version: u64,
    payload: String,
}

fn measure(id: &str, n: i32) -> Measure {
    Measure {
        id: id.to_owned(),
        level: f64::from(n),
        at: f64::from(n) / 2.0,
        maybe: Some(f64::from(n)),
        big: n as u64,
        plain: 1.5,
        version: 0,
        payload: format!("p{n}"),
    }
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "plain_notes")]
struct PlainNote {
    #[id]
    id: String,
    #[index]
    tag: String,
    text: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "unsigned")]
struct Unsigned {
    #[id]
    id: u64,
    n: i64,
}

fn setup() -> (Db, Collection<Measure>) {
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Measure>().unwrap();
    c.insert_many(&[measure("a", 1), measure("b", 2), measure("c", 3)]).unwrap();
    (db, c)
}

/// Everything the collection holds, with stored versions, sorted by id.
fn snapshot<T: Document>(c: &Collection<T>) -> Vec<T>
where
    T::Fields: IdField<T>,
{
    c.query().order_by(T::fields().id_asc()).all().unwrap()
}

/// Lets `snapshot` sort any of this module's types by id.
trait IdField<T> {
    fn id_asc(self) -> db4::Order<T>;
}

impl IdField<Measure> for MeasureFields {
    fn id_asc(self) -> db4::Order<Measure> {
        self.id.asc()
    }
}

impl IdField<PlainNote> for PlainNoteFields {
    fn id_asc(self) -> db4::Order<PlainNote> {
        self.id.asc()
    }
}

impl IdField<Unsigned> for UnsignedFields {
    fn id_asc(self) -> db4::Order<Unsigned> {
        self.id.asc()
    }
}

#[test]
fn not_found_on_update_of_a_missing_id() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    match c.update(&measure("zz", 9)) {
        Err(Error::NotFound { collection, id }) => {
            assert_eq!(collection, "measures");
            assert_eq!(id, "zz");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(snapshot(&c), before);
    assert_eq!(c.get("zz").unwrap(), None);

    // Without a version field too.
    let db = Db::open_in_memory().unwrap();
    let p = db.collection::<PlainNote>().unwrap();
    let err = p.update(&PlainNote { id: "n".into(), tag: "t".into(), text: "x".into() }).unwrap_err();
    assert!(matches!(&err, Error::NotFound { collection, id } if collection == "plain_notes" && id == "n"), "{err:?}");
    assert!(err.to_string().contains("plain_notes") && err.to_string().contains('n'), "{err}");
    assert_eq!(p.count().unwrap(), 0);
}

#[test]
fn already_exists_on_duplicate_insert() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    let mut dup = measure("b", 99);
    dup.payload = "intruder".into();
    let err = c.insert(&dup).unwrap_err();
    match &err {
        Error::AlreadyExists { collection, id } => assert_eq!((collection.as_str(), id.as_str()), ("measures", "b")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(snapshot(&c), before, "the stored document is untouched");
    // The index still holds the original value only.
    assert_eq!(c.query().filter(Measure::fields().level.eq(99.0)).count().unwrap(), 0);

    // Inside insert_many, with the error naming the duplicated id.
    let batch = [measure("new1", 10), measure("new2", 11), measure("c", 12), measure("new3", 13)];
    match c.insert_many(&batch) {
        Err(Error::AlreadyExists { collection, id }) => {
            assert_eq!((collection.as_str(), id.as_str()), ("measures", "c"))
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(snapshot(&c), before);

    // Integer ids too.
    let db = Db::open_in_memory().unwrap();
    let u = db.collection::<Unsigned>().unwrap();
    u.insert(&Unsigned { id: 7, n: 1 }).unwrap();
    match u.insert(&Unsigned { id: 7, n: 2 }) {
        Err(Error::AlreadyExists { collection, id }) => {
            assert_eq!((collection.as_str(), id.as_str()), ("unsigned", "7"))
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(u.get(7u64).unwrap(), Some(Unsigned { id: 7, n: 1 }));
}

#[test]
fn conflict_on_stale_update_and_upsert() {
    let (_db, c) = setup();
    let stale = c.get("a").unwrap().unwrap();
    let mut fresh = stale.clone();
    fresh.payload = "first writer".into();
    c.update(&fresh).unwrap();
    let before = snapshot(&c);

    let mut late = stale.clone();
    late.payload = "second writer".into();
    match c.update(&late) {
        Err(Error::Conflict { collection, id, expected, actual }) => {
            assert_eq!((collection.as_str(), id.as_str()), ("measures", "a"));
            assert_eq!((expected, actual), (0, 1));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    match c.upsert(&late) {
        Err(Error::Conflict { collection, id, expected, actual }) => {
            assert_eq!((collection.as_str(), id.as_str()), ("measures", "a"));
            assert_eq!((expected, actual), (0, 1));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    // A copy from the future conflicts as well.
    late.version = 5;
    let err = c.update(&late).unwrap_err();
    assert!(matches!(err, Error::Conflict { expected: 5, actual: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("expected version 5"), "{err}");
    assert_eq!(snapshot(&c), before);
    assert_eq!(c.get("a").unwrap().unwrap().payload, "first writer");
}

#[test]
fn invalid_query_for_order_comparisons_with_none() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    let f = Measure::fields();
    let filters = [
        f.maybe.gt(None),
        f.maybe.gte(None),
        f.maybe.lt(None),
        f.maybe.lte(None),
        f.maybe.between(None, Some(1.0)),
        f.maybe.between(Some(1.0), None),
        f.maybe.is_some() & f.maybe.gt(None),
        f.level.eq(1.0) | !f.maybe.lt(None),
    ];
    for filter in filters {
        let check = |r: Result<u64>| match r {
            Err(Error::InvalidQuery { collection, reason }) => {
                assert_eq!(collection, "measures");
                assert!(reason.contains("maybe") && reason.contains("None"), "reason names the field: {reason}");
            }
            other => panic!("expected InvalidQuery for {filter:?}, got {other:?}"),
        };
        check(c.query().filter(filter.clone()).all().map(|v| v.len() as u64));
        check(c.query().filter(filter.clone()).first().map(|v| v.map_or(0, |_| 1)));
        check(c.query().filter(filter.clone()).count());
        check(c.query().filter(filter.clone()).order_by(f.at.asc()).limit(1).count());
        check(c.query().filter(filter.clone()).delete());
        check(c.query().filter(filter.clone()).limit(2).delete());
    }
    assert_eq!(snapshot(&c), before, "a failed delete deletes nothing");
}

#[test]
fn invalid_query_for_non_finite_filter_values() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    let f = Measure::fields();
    let filters = [
        ("level", f.level.eq(f64::NAN)),
        ("level", f.level.ne(f64::NAN)),
        ("at", f.at.gt(f64::INFINITY)),
        ("at", f.at.between(0.0, f64::NAN)),
        ("at", f.at.between(f64::NEG_INFINITY, 1.0)),
        ("plain", f.plain.lt(f64::NAN)),
        ("plain", f.plain.in_list([1.0, f64::NAN])),
        ("maybe", f.maybe.eq(Some(f64::NAN))),
        ("maybe", f.maybe.in_list([None, Some(f64::INFINITY)])),
        ("big", f.big.eq(u64::MAX)),
        ("big", f.big.in_list((0..300).map(|i| u64::MAX - i))),
        ("level", f.at.gt(0.0) & !(f.payload.eq("x") | f.level.gte(f64::NAN))),
    ];
    for (field, filter) in filters {
        for result in [
            c.query().filter(filter.clone()).all().map(|v| v.len() as u64),
            c.query().filter(filter.clone()).count(),
            c.query().filter(filter.clone()).delete(),
        ] {
            match result {
                Err(Error::InvalidQuery { collection, reason }) => {
                    assert_eq!(collection, "measures");
                    assert!(reason.contains(field), "reason names `{field}`: {reason}");
                }
                other => panic!("expected InvalidQuery for {filter:?}, got {other:?}"),
            }
        }
    }
    assert_eq!(snapshot(&c), before);
}

fn assert_invalid_value<T: std::fmt::Debug>(result: Result<T>, field: &str) {
    match result {
        Err(Error::InvalidValue { collection, field: f, reason }) => {
            assert_eq!(f, field, "field of {reason}");
            assert!(!collection.is_empty());
            assert!(!reason.is_empty());
        }
        other => panic!("expected InvalidValue on `{field}`, got {other:?}"),
    }
}

#[test]
#[allow(clippy::needless_borrows_for_generic_args, reason = "passing ids by reference is what is tested")]
fn invalid_value_for_empty_string_ids() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    assert_invalid_value(c.insert(&measure("", 1)), "id");
    assert_invalid_value(c.get(""), "id");
    assert_invalid_value(c.get(&String::new()), "id");
    assert_invalid_value(c.delete(""), "id");
    assert_invalid_value(c.update(&measure("", 1)), "id");
    assert_invalid_value(c.upsert(&measure("", 1)), "id");
    assert_invalid_value(c.get_many(["a", ""]), "id");
    assert_invalid_value(c.insert_many(&[measure("d", 4), measure("", 5)]), "id");
    match c.insert(&measure("", 1)) {
        Err(Error::InvalidValue { collection, reason, .. }) => {
            assert_eq!(collection, "measures");
            assert!(reason.contains("empty"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&c), before);
    assert_eq!(c.get("d").unwrap(), None, "nothing of the failed batch is stored");
}

#[test]
fn invalid_value_for_non_finite_indexed_floats() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let m = |f: fn(&mut Measure, f64)| {
            let mut doc = measure("new", 7);
            f(&mut doc, bad);
            doc
        };
        let bad_level = m(|d, v| d.level = v);
        let bad_at = m(|d, v| d.at = v);
        let bad_maybe = m(|d, v| d.maybe = Some(v));
        assert_invalid_value(c.insert(&bad_level), "level");
        assert_invalid_value(c.insert(&bad_at), "at");
        assert_invalid_value(c.insert(&bad_maybe), "maybe");
        assert_invalid_value(c.upsert(&bad_at), "at");
        assert_invalid_value(c.insert_many(&[measure("ok", 1), bad_maybe.clone()]), "maybe");
        // Updating an existing document with a bad value leaves it as it was.
        let mut a = c.get("a").unwrap().unwrap();
        a.level = bad;
        assert_invalid_value(c.update(&a), "level");
        assert_invalid_value(c.upsert(&a), "level");
    }
    assert_eq!(snapshot(&c), before);
}

#[test]
#[allow(clippy::needless_borrows_for_generic_args, reason = "passing ids by reference is what is tested")]
fn invalid_value_for_integers_above_i64_max() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    let mut doc = measure("huge", 1);
    // An indexed u64 above i64::MAX is stored exactly in the document; its index column holds
    // SQLite's nearest REAL, so it still sorts above every i64.
    doc.big = i64::MAX as u64 + 1;
    c.insert(&doc).unwrap();
    assert_eq!(c.get("huge").unwrap().unwrap().big, i64::MAX as u64 + 1);
    assert_eq!(c.query().filter(Measure::fields().big.gt(i64::MAX as u64)).count().unwrap(), 1);
    // ...but such a value cannot be bound as a query value.
    assert!(matches!(
        c.query().filter(Measure::fields().big.eq(i64::MAX as u64 + 1)).count(),
        Err(Error::InvalidQuery { .. })
    ));
    c.delete("huge").unwrap();
    doc.big = i64::MAX as u64;
    c.insert(&doc).unwrap();
    assert_eq!(c.query().filter(Measure::fields().big.eq(i64::MAX as u64)).count().unwrap(), 1);
    c.delete("huge").unwrap();
    // A version counter that could not be bumped.
    let mut doc = measure("v", 1);
    doc.version = i64::MAX as u64;
    assert_invalid_value(c.insert(&doc), "version");
    assert_invalid_value(c.upsert(&doc), "version");
    doc.version = i64::MAX as u64 - 1;
    c.insert(&doc).unwrap();
    assert_eq!(c.get("v").unwrap().unwrap().version, i64::MAX as u64 - 1);
    let stored = c.get("v").unwrap().unwrap();
    c.update(&stored).unwrap();
    let stored = c.get("v").unwrap().unwrap();
    assert_eq!(stored.version, i64::MAX as u64, "the largest storable version");
    assert_invalid_value(c.update(&stored), "version");
    assert_eq!(c.get("v").unwrap().unwrap().version, i64::MAX as u64);
    assert!(c.delete("v").unwrap());
    assert_eq!(snapshot(&c), before);

    let db = Db::open_in_memory().unwrap();
    let u = db.collection::<Unsigned>().unwrap();
    u.insert(&Unsigned { id: 1, n: 1 }).unwrap();
    let too_big = i64::MAX as u64 + 1;
    assert_invalid_value(u.insert(&Unsigned { id: too_big, n: 0 }), "id");
    assert_invalid_value(u.insert(&Unsigned { id: u64::MAX, n: 0 }), "id");
    assert_invalid_value(u.upsert(&Unsigned { id: u64::MAX, n: 0 }), "id");
    assert_invalid_value(u.update(&Unsigned { id: u64::MAX, n: 0 }), "id");
    assert_invalid_value(u.get(too_big), "id");
    assert_invalid_value(u.get(&u64::MAX), "id");
    assert_invalid_value(u.delete(too_big), "id");
    assert_invalid_value(u.get_many([1, too_big]), "id");
    assert_invalid_value(u.insert_many(&[Unsigned { id: 2, n: 0 }, Unsigned { id: too_big, n: 0 }]), "id");
    match u.get(u64::MAX) {
        Err(Error::InvalidValue { collection, reason, .. }) => {
            assert_eq!(collection, "unsigned");
            assert!(reason.contains(&u64::MAX.to_string()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&u), vec![Unsigned { id: 1, n: 1 }]);
}

#[test]
fn version_above_i64_max_is_refused() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    let mut doc = measure("v", 1);
    doc.version = u64::MAX;
    let result = c.insert(&doc);
    let stored = c.get("v").unwrap();
    assert!(
        matches!(result, Err(Error::InvalidValue { ref field, .. }) if field == "version"),
        "expected InvalidValue on `version`, got {result:?}; stored: {stored:?}"
    );
    assert_eq!(snapshot(&c), before);
}

#[test]
fn non_finite_float_in_a_non_indexed_field_is_refused_or_round_trips() {
    let (_db, c) = setup();
    let before = snapshot(&c);
    let mut doc = measure("nan", 1);
    doc.plain = f64::NAN;
    let inserted = c.insert(&doc);
    // Either refused with nothing written, or stored so that it reads back.
    if inserted.is_ok() {
        let back = c.get("nan");
        assert!(back.is_ok(), "an acknowledged insert must read back, got {back:?}");
        assert!(c.query().all().is_ok(), "one document must not break every query");
    } else {
        assert_eq!(snapshot(&c), before);
    }
}

#[test]
fn serialization_error_on_read_names_the_document() {
    let (db, c) = setup();
    drop(c);
    // Another type reading the same collection expects a field the stored documents lack.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "measures")]
    struct Stricter {
        #[id]
        id: String,
        #[index]
        level: f64,
        #[range_index]
        at: f64,
        #[index]
        maybe: Option<f64>,
        #[index]
        big: u64,
        plain: String,
        #[version]
        version: u64,
    }
    // Same keys, but a stored (not indexed) field's type changed: no migration rewrite runs,
    // reads fail, naming the document. (An indexed field's type change is refused at open.)
    let s = db.collection::<Stricter>().unwrap();
    match s.get("b") {
        Err(Error::Serialization { collection, id, .. }) => {
            assert_eq!(collection, "measures");
            assert_eq!(id.as_deref(), Some("b"), "which document is unreadable");
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
}

#[test]
fn serialization_errors_are_reported_and_write_nothing() {
    let (db, c) = setup();
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "odd_maps")]
    struct OddMap {
        #[id]
        id: String,
        // JSON object keys must be strings: a map keyed by byte vectors cannot be written.
        map: std::collections::BTreeMap<Vec<u8>, i64>,
    }
    let m = db.collection::<OddMap>().unwrap();
    let doc = OddMap { id: "m".into(), map: [(vec![1u8], 1)].into_iter().collect() };
    match m.insert(&doc) {
        Err(Error::Serialization { collection, id, .. }) => {
            assert_eq!(collection, "odd_maps");
            assert_eq!(id.as_deref(), Some("m"));
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
    assert_eq!(m.count().unwrap(), 0);
    m.insert(&OddMap { id: "empty".into(), map: Default::default() }).unwrap();
    assert_eq!(m.count().unwrap(), 1);

    // Reading documents that no longer deserialize into the type is an error, not a panic.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "measures")]
    struct Stricter {
        #[id]
        id: String,
        #[index]
        level: f64,
        #[range_index]
        at: f64,
        #[index]
        maybe: Option<f64>,
        #[index]
        big: u64,
        #[version]
        version: u64,
        required_new_field: i64,
    }
    // A new required field: the migration rewrites the documents through the new type, finds
    // one that lacks it, and refuses, naming it.
    match db.collection::<Stricter>() {
        Err(Error::Serialization { collection, id, source }) => {
            assert_eq!(collection, "measures");
            assert!(id.is_some(), "which document does not fit");
            assert!(source.to_string().contains("required_new_field"), "{source}");
        }
        other => panic!("expected Serialization from the migration, got {other:?}"),
    }
    // A changed type under the same key: the collection opens, reads fail cleanly.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "measures")]
    struct Retyped {
        #[id]
        id: String,
        #[index]
        level: f64,
        #[range_index]
        at: f64,
        #[index]
        maybe: Option<f64>,
        #[index]
        big: u64,
        plain: String,
        #[version]
        version: u64,
    }
    let s = db.collection::<Retyped>().unwrap();
    for result in [s.get("a").map(|_| ()), s.query().all().map(|_| ()), s.get_many(["a"]).map(|_| ())] {
        match result {
            Err(Error::Serialization { collection, source, .. }) => {
                assert_eq!(collection, "measures");
                assert!(source.to_string().contains("invalid type"), "{source}");
            }
            other => panic!("expected Serialization, got {other:?}"),
        }
    }
    // Nothing was lost: the original type still reads everything.
    drop(s);
    assert_eq!(snapshot(&db.collection::<Measure>().unwrap()).len(), 3);
    assert_eq!(c.count().unwrap(), 3);
}

/// A document whose serialized JSON is exactly `size` bytes.
fn note_of_size(id: &str, size: usize) -> PlainNote {
    let mut n = PlainNote { id: id.to_owned(), tag: "t".into(), text: String::new() };
    let base = serde_json::to_string(&n).unwrap().len();
    n.text = "x".repeat(size - base);
    assert_eq!(serde_json::to_string(&n).unwrap().len(), size);
    n
}

#[test]
fn too_large_with_a_configured_limit() {
    let limit = 200;
    let db = Db::open_in_memory_with(DbOptions::default().max_document_bytes(limit)).unwrap();
    assert_eq!(db.options().max_document_bytes, limit);
    let c = db.collection::<PlainNote>().unwrap();
    c.insert(&note_of_size("exact", limit)).unwrap();
    c.insert(&note_of_size("small", 50)).unwrap();
    let before = snapshot(&c);

    let check = |r: Result<()>, id: &str| match r {
        Err(Error::TooLarge { collection, id: got, size, limit: l }) => {
            assert_eq!(collection, "plain_notes");
            assert_eq!(got, id);
            assert_eq!(size, limit + 1);
            assert_eq!(l, limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    };
    check(c.insert(&note_of_size("big", limit + 1)), "big");
    check(c.upsert(&note_of_size("big", limit + 1)), "big");
    check(c.update(&note_of_size("small", limit + 1)).map(drop), "small");
    check(c.upsert(&note_of_size("small", limit + 1)), "small");
    check(c.insert_many(&[note_of_size("ok1", 60), note_of_size("big2", limit + 1), note_of_size("ok2", 60)]), "big2");
    assert_eq!(snapshot(&c), before);
    let err = c.insert(&note_of_size("big", limit + 1)).unwrap_err();
    assert!(err.to_string().contains("201") && err.to_string().contains("200"), "{err}");
}

#[test]
fn too_large_at_the_default_two_mib() {
    assert_eq!(db4::DEFAULT_MAX_DOCUMENT_BYTES, 2 * 1024 * 1024);
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<PlainNote>().unwrap();
    let three_mib = note_of_size("huge", 3 * 1024 * 1024);
    match c.insert(&three_mib) {
        Err(Error::TooLarge { collection, id, size, limit }) => {
            assert_eq!((collection.as_str(), id.as_str()), ("plain_notes", "huge"));
            assert_eq!(size, 3 * 1024 * 1024);
            assert_eq!(limit, db4::DEFAULT_MAX_DOCUMENT_BYTES);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(c.count().unwrap(), 0);
    let edge = note_of_size("edge", db4::DEFAULT_MAX_DOCUMENT_BYTES);
    c.insert(&edge).unwrap();
    assert_eq!(c.get("edge").unwrap(), Some(edge));
    assert!(matches!(
        c.insert(&note_of_size("over", db4::DEFAULT_MAX_DOCUMENT_BYTES + 1)),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(c.insert_many([&note_of_size("x", 40), &three_mib]), Err(Error::TooLarge { .. })));
    assert_eq!(c.count().unwrap(), 1);
}

// --- Schema mismatches -------------------------------------------------------------------------

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "things")]
struct ThingText {
    #[id]
    id: String,
    #[index]
    name: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "things")]
struct ThingInt {
    #[id]
    id: i64,
    #[index]
    name: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "things")]
struct ThingRenamedId {
    #[id]
    key: String,
    #[index]
    name: String,
}

fn things(n: usize) -> Vec<ThingText> {
    (0..n).map(|i| ThingText { id: format!("t{i}"), name: format!("name{}", i % 3) }).collect()
}

#[test]
fn schema_mismatch_when_the_id_type_or_id_field_changes() {
    let dir = TempDir::new("mismatch");
    let path = dir.join("db.sqlite");
    let docs = things(10);
    {
        let db = Db::open(&path).unwrap();
        db.collection::<ThingText>().unwrap().insert_many(&docs).unwrap();
    }
    let record = common::schema_record(&path, "things").expect("a schema record");
    let columns = common::column_names(&path, "things");
    let indexes = common::index_names(&path, "things");

    let db = Db::open(&path).unwrap();
    match db.collection::<ThingInt>() {
        Err(Error::SchemaMismatch { collection, field, reason }) => {
            assert_eq!(collection, "things");
            assert_eq!(field, "id");
            assert!(reason.contains("type"), "{reason}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    match db.collection::<ThingRenamedId>() {
        Err(Error::SchemaMismatch { collection, field, reason }) => {
            assert_eq!(collection, "things");
            assert_eq!(field, "key");
            assert!(reason.contains("`id`") && reason.contains("`key`"), "{reason}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    drop(db);

    // Also across a reopen, and nothing changed on disk.
    let db = Db::open(&path).unwrap();
    assert!(matches!(db.collection::<ThingInt>(), Err(Error::SchemaMismatch { .. })));
    assert_eq!(common::schema_record(&path, "things").as_ref(), Some(&record));
    assert_eq!(common::column_names(&path, "things"), columns);
    assert_eq!(common::index_names(&path, "things"), indexes);
    let c = db.collection::<ThingText>().unwrap();
    assert_eq!(c.query().order_by(ThingText::fields().id.asc()).all().unwrap(), {
        let mut d = docs.clone();
        d.sort_by(|a, b| a.id.cmp(&b.id));
        d
    });
    assert_eq!(c.query().filter(ThingText::fields().name.eq("name1")).count().unwrap(), 3);
}

#[test]
fn schema_mismatch_on_one_handle_after_the_other_type_opened() {
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<ThingText>().unwrap();
    c.insert_many(&things(4)).unwrap();
    assert!(matches!(db.collection::<ThingInt>(), Err(Error::SchemaMismatch { .. })));
    assert!(matches!(db.collection::<ThingRenamedId>(), Err(Error::SchemaMismatch { .. })));
    // The open handle keeps working.
    assert_eq!(c.count().unwrap(), 4);
    c.insert(&ThingText { id: "x".into(), name: "n".into() }).unwrap();
    assert_eq!(db.collection::<ThingText>().unwrap().count().unwrap(), 5);
}

#[test]
fn schema_mismatch_for_a_table_not_created_by_db4() {
    let dir = TempDir::new("foreign");
    let path = dir.join("db.sqlite");
    {
        let conn = common::raw(&path);
        conn.execute_batch(
            "CREATE TABLE things (a INTEGER, b TEXT); INSERT INTO things VALUES (1, 'one'), (2, 'two');",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    match db.collection::<ThingText>() {
        Err(Error::SchemaMismatch { collection, reason, .. }) => {
            assert_eq!(collection, "things");
            assert!(reason.contains("not created by db4"), "{reason}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    assert_eq!(common::column_names(&path, "things"), vec!["a", "b"]);
    assert_eq!(common::scalar(&path, "SELECT count(*) FROM things"), 2);
    assert_eq!(common::schema_record(&path, "things"), None);
    assert_eq!(common::index_names(&path, "things"), Vec::<String>::new());
    // Other collections in the same file are unaffected.
    let p = db.collection::<PlainNote>().unwrap();
    p.insert(&PlainNote { id: "a".into(), tag: "t".into(), text: "x".into() }).unwrap();
    assert_eq!(p.count().unwrap(), 1);
}

#[test]
fn errors_display_their_context() {
    let (_db, c) = setup();
    let e = c.update(&measure("missing", 1)).unwrap_err();
    assert_eq!(e.to_string(), "measures: no document with id missing");
    let e = c.insert(&measure("a", 1)).unwrap_err();
    assert_eq!(e.to_string(), "measures: a document with id a already exists");
    assert!(e.backend_kind().is_none(), "AlreadyExists is not a raw backend error");
    let e = c.insert(&measure("", 1)).unwrap_err();
    assert!(e.to_string().starts_with("measures: invalid value in field `id`"), "{e}");
    let e = c.query().filter(Measure::fields().level.eq(f64::NAN)).all().unwrap_err();
    assert!(e.to_string().starts_with("measures: invalid query: "), "{e}");
}

// --- Names db4 derives for its own SQL objects ------------------------------------------------

/// Field names with a double underscore (so the generated `LeftFields` is allowed them too).
#[allow(non_snake_case)]
mod double_underscore {
    use db4::Document;
    use serde::{Deserialize, Serialize};

    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "left")]
    pub struct Left {
        #[id]
        pub id: i64,
        #[index]
        pub mid__right: i64,
    }

    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "left__mid")]
    pub struct LeftMid {
        #[id]
        pub id: i64,
        #[index]
        pub right: i64,
    }
}
use double_underscore::{Left, LeftMid};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "outer")]
struct Outer {
    #[id]
    id: i64,
    #[index]
    inner: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "outer__inner")]
struct OuterInner {
    #[id]
    id: i64,
    n: i64,
}

#[test]
fn index_names_of_different_collections_do_not_collide() {
    let dir = TempDir::new("index-names");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    db.collection::<Left>().unwrap().insert(&Left { id: 1, mid__right: 1 }).unwrap();
    db.collection::<LeftMid>().unwrap().insert(&LeftMid { id: 1, right: 1 }).unwrap();
    assert_eq!(common::index_names(&path, "left").len(), 1);
    assert_eq!(common::index_names(&path, "left__mid").len(), 1, "left__mid.right has its index");
}

#[test]
fn an_index_name_does_not_block_a_collection_name() {
    let db = Db::open_in_memory().unwrap();
    db.collection::<Outer>().unwrap();
    let second = db.collection::<OuterInner>();
    assert!(second.is_ok(), "{second:?}");
    let db = Db::open_in_memory().unwrap();
    db.collection::<OuterInner>().unwrap();
    let second = db.collection::<Outer>();
    assert!(second.is_ok(), "{second:?}");
}

// --- Long ids in messages ----------------------------------------------------------------------

/// The longest message an error about a huge id may have: the collection, the fixed text, the
/// first 64 characters of the id and its size.
const SHORT_MESSAGE: usize = 200;

#[test]
fn messages_shorten_huge_ids_and_fields_keep_them() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<PlainNote>().unwrap();
    let three_mb = "i".repeat(3 << 20);
    let check = |e: Error, what: &str| {
        let text = e.to_string();
        assert!(text.len() < SHORT_MESSAGE, "{what}: a {} byte message", text.len());
        assert!(text.contains(&format!("{}… ({} bytes)", "i".repeat(64), 3 << 20)), "{what}: {text}");
        e
    };
    match check(
        notes.insert(&PlainNote { id: three_mb.clone(), tag: "t".into(), text: String::new() }).unwrap_err(),
        "TooLarge",
    ) {
        Error::TooLarge { id, .. } => assert_eq!(id, three_mb, "the field keeps the whole id"),
        other => panic!("expected TooLarge, got {other:?}"),
    }

    let db = Db::open_in_memory_with(DbOptions::default().max_document_bytes(8 << 20)).unwrap();
    let notes = db.collection::<PlainNote>().unwrap();
    let note = PlainNote { id: three_mb.clone(), tag: "t".into(), text: String::new() };
    match check(notes.update(&note).unwrap_err(), "NotFound") {
        Error::NotFound { id, .. } => assert_eq!(id, three_mb),
        other => panic!("expected NotFound, got {other:?}"),
    }
    notes.insert(&note).unwrap();
    match check(notes.insert(&note).unwrap_err(), "AlreadyExists") {
        Error::AlreadyExists { id, .. } => assert_eq!(id, three_mb),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let measures = db.collection::<Measure>().unwrap();
    let m = measure(&three_mb, 1);
    measures.insert(&m).unwrap();
    measures.update(&m).unwrap();
    match check(measures.update(&m).unwrap_err(), "Conflict") {
        Error::Conflict { id, expected: 0, actual: 1, .. } => assert_eq!(id, three_mb),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // Multi-byte characters are cut on a character boundary.
    let accents = "é".repeat(100);
    let e = notes.update(&PlainNote { id: accents.clone(), tag: "t".into(), text: String::new() }).unwrap_err();
    assert_eq!(e.to_string(), format!("plain_notes: no document with id {}… (200 bytes)", "é".repeat(64)));
    // Short ids are shown whole.
    let e = notes.update(&PlainNote { id: "x".repeat(64), tag: "t".into(), text: String::new() }).unwrap_err();
    assert_eq!(e.to_string(), format!("plain_notes: no document with id {}", "x".repeat(64)));
}

// --- Transaction misuse ------------------------------------------------------------------------

#[test]
fn a_write_from_an_observer_is_a_transaction_state_error() {
    let db = Db::open_in_memory().unwrap();
    let notes = db.collection::<PlainNote>().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (inner, sink) = (db.clone(), std::sync::Arc::clone(&seen));
    db.on_commit(move |_| {
        let r = inner.collection::<PlainNote>().and_then(|c| c.delete("a"));
        *sink.lock().unwrap() = Some(r);
    });
    notes.insert(&PlainNote { id: "a".into(), tag: "t".into(), text: String::new() }).unwrap();
    let r = seen.lock().unwrap().take().expect("the observer ran");
    let e = r.unwrap_err();
    assert!(matches!(e, Error::TransactionState { .. }), "{e:?}");
    assert!(e.to_string().starts_with("transaction misuse: an on_commit observer cannot write"), "{e}");
    assert_eq!(notes.count().unwrap(), 1, "the observer's delete did not happen");
}

#[test]
fn a_failed_savepoint_rollback_leaves_a_transaction_that_can_only_roll_back() {
    let dir = TempDir::new("broken-savepoint");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let notes = db.collection::<PlainNote>().unwrap();
    let markers = db.collection::<Unsigned>().unwrap();
    notes.insert(&PlainNote { id: "a".into(), tag: "t".into(), text: "kept".into() }).unwrap();
    // Re-inserting "a" (which undoing its delete does) fails while a marker exists.
    common::raw(&path)
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON plain_notes WHEN NEW._id = 'a' AND EXISTS (SELECT 1 FROM unsigned) \
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .unwrap();
    let state_error = |e: Error| {
        assert!(matches!(e, Error::TransactionState { .. }), "{e:?}");
        assert!(e.to_string().starts_with("transaction misuse: a savepoint rollback failed"), "{e}");
    };
    let r = db.transaction(|tx| {
        tx.collection::<Unsigned>()?.insert(&Unsigned { id: 1, n: 1 })?;
        tx.savepoint("s")?;
        tx.collection::<PlainNote>()?.delete("a")?;
        assert!(tx.rollback_to("s").is_err(), "the undo hits the trigger");
        state_error(tx.collection::<PlainNote>()?.get("a").unwrap_err());
        state_error(tx.savepoint("t").unwrap_err());
        Ok(())
    });
    state_error(r.unwrap_err());
    assert_eq!(notes.get("a").unwrap().map(|n| n.text), Some("kept".into()), "everything rolled back");
    assert_eq!(markers.count().unwrap(), 0);

    // An explicit transaction in that state refuses to commit, and rolls back.
    let tx = db.begin().unwrap();
    tx.collection::<Unsigned>().unwrap().insert(&Unsigned { id: 1, n: 1 }).unwrap();
    tx.savepoint("s").unwrap();
    tx.collection::<PlainNote>().unwrap().delete("a").unwrap();
    assert!(tx.rollback_to("s").is_err());
    state_error(tx.commit().unwrap_err());
    assert_eq!(notes.count().unwrap(), 1);
    assert_eq!(markers.count().unwrap(), 0);
}
