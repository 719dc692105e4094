//! Every `Collection` operation, on `String`, `i64` and `u64` ids.

use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Book,
    Tool,
    Food,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "notes")]
struct Note {
    #[id]
    id: String,
    #[index]
    kind: Kind,
    #[range_index]
    rank: i64,
    body: String,
    tags: Vec<String>,
}

fn note(id: &str, kind: Kind, rank: i64) -> Note {
    Note { id: id.to_owned(), kind, rank, body: format!("body of {id}"), tags: vec![format!("t{rank}")] }
}

/// No `collection` option: the collection is the struct name in snake_case.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct SignedCounter {
    #[id]
    id: i64,
    #[index]
    label: String,
    n: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "tickets")]
struct Ticket {
    #[id]
    id: u64,
    #[index]
    owner: String,
    open: bool,
}

/// SQL keywords as collection and field names must be quoted everywhere.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "order")]
struct Keyword {
    #[id]
    id: String,
    #[index]
    group: String,
    #[range_index]
    select: i64,
    from: String,
}

fn notes(db: &Db) -> Collection<Note> {
    db.collection::<Note>().unwrap()
}

/// All notes, sorted by id.
fn all_notes(c: &Collection<Note>) -> Vec<Note> {
    c.query().order_by(Note::fields().id.asc()).all().unwrap()
}

#[test]
fn insert_then_get_with_every_string_id_argument() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    let a = note("a", Kind::Book, 1);
    c.insert(&a)?;
    let owned = "a".to_string();
    assert_eq!(c.get("a")?, Some(a.clone()));
    assert_eq!(c.get(&owned)?, Some(a.clone()));
    assert_eq!(c.get(owned)?, Some(a.clone()));
    assert_eq!(c.get("b")?, None);
    // Ids are compared exactly: no case folding, no trimming.
    assert_eq!(c.get("A")?, None);
    assert_eq!(c.get(" a")?, None);
    assert_eq!(c.count()?, 1);
    Ok(())
}

#[test]
fn unusual_string_ids_round_trip() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    let long = "x".repeat(10_000);
    let ids =
        ["a'b\"c; DROP TABLE notes; --", "é漢字🙂", " ", "%_", "\\", "null", "0", "1", "with\nnewline", long.as_str()];
    for (i, id) in ids.iter().enumerate() {
        c.insert(&note(id, Kind::Tool, i as i64))?;
    }
    assert_eq!(c.count()?, ids.len() as u64);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(c.get(*id)?, Some(note(id, Kind::Tool, i as i64)), "id {id:?}");
    }
    // "1" and "0" are text ids, distinct from anything numeric.
    assert_eq!(c.query().filter(Note::fields().id.eq("1")).count()?, 1);
    assert!(c.delete("a'b\"c; DROP TABLE notes; --")?);
    assert_eq!(c.count()?, ids.len() as u64 - 1);
    Ok(())
}

#[test]
#[allow(clippy::needless_borrows_for_generic_args, reason = "passing ids by reference is what is tested")]
fn i64_ids_cover_the_whole_range() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<SignedCounter>()?;
    assert_eq!(c.name(), "signed_counter");
    let ids = [0, i64::MAX, -1, i64::MIN, 1, 42];
    for id in ids {
        c.insert(&SignedCounter { id, label: format!("l{id}"), n: id / 2 })?;
    }
    for id in ids {
        let expected = SignedCounter { id, label: format!("l{id}"), n: id / 2 };
        assert_eq!(c.get(id)?, Some(expected.clone()));
        assert_eq!(c.get(&id)?, Some(expected));
    }
    assert_eq!(c.get(7)?, None);
    let sorted: Vec<i64> = c.query().order_by(SignedCounter::fields().id.asc()).all()?.iter().map(|d| d.id).collect();
    assert_eq!(sorted, vec![i64::MIN, -1, 0, 1, 42, i64::MAX]);
    let negative = c.query().filter(SignedCounter::fields().id.lt(0)).count()?;
    assert_eq!(negative, 2);
    assert!(c.delete(i64::MIN)?);
    assert!(!c.delete(i64::MIN)?);
    assert!(c.delete(&i64::MAX)?);
    assert_eq!(c.count()?, 4);
    Ok(())
}

#[test]
#[allow(clippy::needless_borrows_for_generic_args, reason = "passing ids by reference is what is tested")]
fn u64_ids_up_to_i64_max() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Ticket>()?;
    let top = i64::MAX as u64;
    for id in [0, 1, top] {
        c.insert(&Ticket { id, owner: format!("o{id}"), open: id % 2 == 0 })?;
    }
    assert_eq!(c.get(top)?.map(|t| t.id), Some(top));
    assert_eq!(c.get(&0u64)?.map(|t| t.owner), Some("o0".to_owned()));
    assert_eq!(c.get(2u64)?, None);
    let got = c.get_many([top, 5, 0])?;
    assert_eq!(got.iter().map(|t| t.as_ref().map(|t| t.id)).collect::<Vec<_>>(), vec![Some(top), None, Some(0)]);
    let desc: Vec<u64> = c.query().order_by(Ticket::fields().id.desc()).all()?.iter().map(|t| t.id).collect();
    assert_eq!(desc, vec![top, 1, 0]);
    assert_eq!(c.query().filter(Ticket::fields().id.gt(1u64)).count()?, 1);
    assert!(c.delete(top)?);
    assert_eq!(c.count()?, 2);
    Ok(())
}

#[test]
fn get_many_is_aligned_with_its_input() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    let docs: Vec<Note> = (0..5).map(|i| note(&format!("n{i}"), Kind::Food, i)).collect();
    c.insert_many(&docs)?;

    let got = c.get_many(["n3", "missing", "n0", "n3", "n4", "n3"])?;
    let ids: Vec<Option<&str>> = got.iter().map(|d| d.as_ref().map(|d| d.id.as_str())).collect();
    assert_eq!(ids, vec![Some("n3"), None, Some("n0"), Some("n3"), Some("n4"), Some("n3")]);
    assert_eq!(got[0].as_ref(), Some(&docs[3]));
    assert_eq!(got[3].as_ref(), Some(&docs[3]));
    assert_eq!(got[2].as_ref(), Some(&docs[0]));

    let none = c.get_many(Vec::<String>::new())?;
    assert!(none.is_empty());

    let owned: Vec<String> = vec!["n1".into(), "n9".into()];
    let got = c.get_many(&owned)?;
    assert_eq!(got, vec![Some(docs[1].clone()), None]);

    // Many ids at once (more than SQLite's default parameter limit would allow inline).
    let many: Vec<String> = (0..40_000).map(|i| format!("n{}", i % 7)).collect();
    let got = c.get_many(&many)?;
    assert_eq!(got.len(), many.len());
    for (id, doc) in many.iter().zip(&got) {
        let n: usize = id[1..].parse().unwrap();
        assert_eq!(doc.as_ref(), docs.get(n), "id {id}");
    }
    Ok(())
}

#[test]
fn get_many_with_integer_ids() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<SignedCounter>()?;
    for id in [-5i64, 0, 5] {
        c.insert(&SignedCounter { id, label: "x".into(), n: id })?;
    }
    let got: Vec<Option<i64>> = c.get_many([5i64, 6, -5, 5, i64::MIN])?.into_iter().map(|d| d.map(|d| d.n)).collect();
    assert_eq!(got, vec![Some(5), None, Some(-5), Some(5), None]);
    let refs = [0i64, 5];
    let got: Vec<Option<i64>> = c.get_many(refs.iter())?.into_iter().map(|d| d.map(|d| d.id)).collect();
    assert_eq!(got, vec![Some(0), Some(5)]);
    Ok(())
}

#[test]
fn update_replaces_the_document_and_its_index_values() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    c.insert_many(&[note("a", Kind::Book, 1), note("b", Kind::Book, 2)])?;
    let f = Note::fields();

    let mut a = c.get("a")?.unwrap();
    a.kind = Kind::Tool;
    a.rank = 100;
    a.body = "rewritten".into();
    a.tags.clear();
    c.update(&a)?;

    assert_eq!(c.get("a")?, Some(a.clone()));
    assert_eq!(c.get("b")?, Some(note("b", Kind::Book, 2)), "the other document is untouched");
    assert_eq!(c.count()?, 2);
    // The index columns follow the update: the old values no longer match.
    assert_eq!(c.query().filter(f.kind.eq(Kind::Book)).all()?, vec![note("b", Kind::Book, 2)]);
    assert_eq!(c.query().filter(f.kind.eq(Kind::Tool)).all()?, vec![a.clone()]);
    assert_eq!(c.query().filter(f.rank.gt(50)).all()?, vec![a.clone()]);
    assert_eq!(c.query().filter(f.rank.eq(1)).count()?, 0);
    assert_eq!(c.query().filter(f.body.eq("rewritten")).count()?, 1);
    Ok(())
}

#[test]
fn upsert_inserts_then_replaces() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    let f = Note::fields();
    c.insert(&note("keep", Kind::Food, 0))?;

    let fresh = note("u", Kind::Book, 7);
    c.upsert(&fresh)?;
    assert_eq!(c.get("u")?, Some(fresh));
    assert_eq!(c.count()?, 2);

    let replaced = Note { body: "second".into(), ..note("u", Kind::Tool, 8) };
    c.upsert(&replaced)?;
    assert_eq!(c.get("u")?, Some(replaced.clone()));
    assert_eq!(c.count()?, 2);
    assert_eq!(c.query().filter(f.kind.eq(Kind::Book)).count()?, 0, "old index value gone");
    assert_eq!(c.query().filter(f.rank.eq(8)).all()?, vec![replaced]);
    assert_eq!(c.get("keep")?, Some(note("keep", Kind::Food, 0)));
    Ok(())
}

#[test]
#[allow(clippy::needless_borrows_for_generic_args, reason = "passing ids by reference is what is tested")]
fn delete_reports_whether_there_was_a_document() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    c.insert_many(&[note("a", Kind::Book, 1), note("b", Kind::Tool, 2)])?;
    assert!(c.delete("a")?);
    assert!(!c.delete("a")?);
    assert!(!c.delete("never")?);
    assert_eq!(c.get("a")?, None);
    assert_eq!(c.count()?, 1);
    assert_eq!(c.query().filter(Note::fields().kind.eq(Kind::Book)).count()?, 0);
    assert!(c.delete(&"b".to_string())?);
    assert_eq!(c.count()?, 0);
    // The id can be reused after a delete.
    c.insert(&note("a", Kind::Food, 3))?;
    assert_eq!(c.get("a")?.map(|n| n.kind), Some(Kind::Food));
    Ok(())
}

#[test]
fn insert_many_stores_all_and_empty_is_a_no_op() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    c.insert_many(std::iter::empty())?;
    assert_eq!(c.count()?, 0);
    let docs: Vec<Note> = (0..1000).map(|i| note(&format!("d{i:04}"), Kind::Book, i)).collect();
    c.insert_many(&docs)?;
    assert_eq!(c.count()?, 1000);
    assert_eq!(all_notes(&c), docs);
    // Also accepts any iterator of references.
    c.insert_many([note("z1", Kind::Tool, 0), note("z2", Kind::Tool, 0)].iter())?;
    assert_eq!(c.count()?, 1002);
    Ok(())
}

#[test]
fn insert_many_with_a_stored_duplicate_in_the_middle_stores_nothing() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    c.insert(&note("d05", Kind::Food, -1))?;
    let before = all_notes(&c);
    let docs: Vec<Note> = (0..10).map(|i| note(&format!("d{i:02}"), Kind::Book, i)).collect();
    match c.insert_many(&docs) {
        Err(Error::AlreadyExists { collection, id }) => {
            assert_eq!(collection, "notes");
            assert_eq!(id, "d05");
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(all_notes(&c), before, "nothing from the failed batch is stored");
    assert_eq!(c.count()?, 1);
    assert_eq!(c.get("d00")?, None);
    Ok(())
}

#[test]
fn insert_many_with_a_duplicate_inside_the_batch_stores_nothing() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    let docs = [note("x", Kind::Book, 1), note("y", Kind::Book, 2), note("x", Kind::Tool, 3), note("z", Kind::Book, 4)];
    match c.insert_many(&docs) {
        Err(Error::AlreadyExists { collection, id }) => assert_eq!((collection.as_str(), id.as_str()), ("notes", "x")),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(c.count()?, 0);
    assert_eq!(c.get_many(["x", "y", "z"])?, vec![None, None, None]);
    // The collection is still usable afterwards: the transaction was closed.
    c.insert_many(&docs[..2])?;
    assert_eq!(c.count()?, 2);
    Ok(())
}

#[test]
fn collections_are_independent_and_handles_share_data() -> Result<()> {
    let db = Db::open_in_memory()?;
    let n1 = notes(&db);
    let n2 = db.collection::<Note>()?;
    let n3 = n1.clone();
    let counters = db.collection::<SignedCounter>()?;
    n1.insert(&note("a", Kind::Book, 1))?;
    assert_eq!(n2.get("a")?.map(|n| n.rank), Some(1));
    assert_eq!(n3.count()?, 1);
    assert_eq!(counters.count()?, 0);
    counters.insert(&SignedCounter { id: 1, label: "a".into(), n: 0 })?;
    assert_eq!(n1.count()?, 1);
    let db2 = db.clone();
    assert_eq!(db2.collection::<Note>()?.count()?, 1);
    Ok(())
}

#[test]
fn sql_keywords_as_names_are_quoted() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Keyword>()?;
    assert_eq!(c.name(), "order");
    let docs: Vec<Keyword> = (0..6)
        .map(|i| Keyword { id: format!("k{i}"), group: format!("g{}", i % 2), select: i, from: format!("f{i}") })
        .collect();
    c.insert_many(&docs)?;
    let f = Keyword::fields();
    let got = c.query().filter(f.group.eq("g1")).order_by(f.select.desc()).all()?;
    assert_eq!(got.iter().map(|k| k.select).collect::<Vec<_>>(), vec![5, 3, 1]);
    assert_eq!(c.query().filter(f.from.eq("f2")).count()?, 1);
    let mut k = docs[0].clone();
    k.group = "g9".into();
    c.update(&k)?;
    c.upsert(&k)?;
    assert!(c.delete("k1")?);
    assert_eq!(c.query().filter(f.group.starts_with("g")).count()?, 5);
    Ok(())
}

#[test]
fn upsert_many_inserts_and_replaces_in_one_go() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = notes(&db);
    c.insert_many(&[note("a", Kind::Book, 1), note("b", Kind::Book, 2)])?;
    c.upsert_many(std::iter::empty())?;
    assert_eq!(c.count()?, 2);
    let batch = [note("b", Kind::Tool, 20), note("c", Kind::Food, 3), note("d", Kind::Food, 4)];
    c.upsert_many(&batch)?;
    assert_eq!(all_notes(&c), vec![note("a", Kind::Book, 1), batch[0].clone(), batch[1].clone(), batch[2].clone()]);
    assert_eq!(c.query().filter(Note::fields().kind.eq(Kind::Book)).count()?, 1, "b's index value was replaced");
    // The same id twice in one batch: the later one wins.
    c.upsert_many(&[note("e", Kind::Book, 5), note("e", Kind::Tool, 6)])?;
    assert_eq!(c.get("e")?, Some(note("e", Kind::Tool, 6)));
    Ok(())
}

#[test]
fn upsert_many_is_all_or_nothing() -> Result<()> {
    let db = Db::open_in_memory_with(DbOptions::default().max_document_bytes(200))?;
    let c = notes(&db);
    c.insert(&note("a", Kind::Book, 1))?;
    let before = all_notes(&c);
    let mut big = note("big", Kind::Book, 2);
    big.body = "x".repeat(300);
    let batch = [note("new", Kind::Tool, 1), note("a", Kind::Tool, 9), big];
    match c.upsert_many(&batch) {
        Err(Error::TooLarge { id, .. }) => assert_eq!(id, "big"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let bad = [note("new", Kind::Tool, 1), note("a", Kind::Tool, 9), note("", Kind::Tool, 0)];
    assert!(matches!(c.upsert_many(&bad), Err(Error::InvalidValue { .. })));
    assert_eq!(all_notes(&c), before);
    Ok(())
}
