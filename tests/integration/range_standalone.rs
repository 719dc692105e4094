//! The standalone range index (`db4::range::RangeIndex`, no derive): paging forwards and
//! backwards against a model sort with mixed directions, prefixes, bounds and `None` keys;
//! cursors refused when tampered with or used elsewhere; persistence across a reopen; and the
//! errors for bad input.

use db4::range::{Direction, IndexEntry, KeyType, RangeField, RangeIndex};
use db4::{Cursor, Db, Error, Page, Value};
use db4_tests::{Rng, TempDir};
use std::cmp::Ordering;
use std::ops::Bound;

/// One entry of the model: an id and two keys.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    a: Option<i64>,
    b: Option<String>,
}

/// `None` first, then by value: the documented order of one key.
fn cmp_key<T: Ord>(x: &Option<T>, y: &Option<T>) -> Ordering {
    x.cmp(y)
}

fn directed(o: Ordering, desc: bool) -> Ordering {
    if desc { o.reverse() } else { o }
}

/// The order of an index `(a, b)` with the given directions, ties by id in the direction of
/// `b` (the last key).
fn model_cmp(x: &Row, y: &Row, a_desc: bool, b_desc: bool) -> Ordering {
    directed(cmp_key(&x.a, &y.a), a_desc)
        .then_with(|| directed(cmp_key(&x.b, &y.b), b_desc))
        .then_with(|| directed(x.id.as_bytes().cmp(y.id.as_bytes()), b_desc))
}

fn rows(rng: &mut Rng, n: usize) -> Vec<Row> {
    let texts = ["", "B", "a", "a\0b", "b", "é", "zz"];
    (0..n)
        .map(|i| Row {
            id: format!("r{:03}", (i * 37) % 1000),
            a: if rng.below(6) == 0 { None } else { Some(rng.below(8) as i64 - 4) },
            b: if rng.below(5) == 0 { None } else { Some(texts[rng.index(texts.len())].to_owned()) },
        })
        .collect()
}

fn index_over(db: &Db, name: &str, a_desc: bool, b_desc: bool, data: &[Row]) -> db4::Result<RangeIndex> {
    let dir = |d: bool| if d { Direction::Descending } else { Direction::Ascending };
    let index = RangeIndex::create(
        db,
        name,
        &[RangeField::new("a", KeyType::Integer, dir(a_desc)), RangeField::new("b", KeyType::Text, dir(b_desc))],
    )?;
    index.index_many(data.iter().map(|r| (r.id.as_str(), (r.a, r.b.clone()))))?;
    Ok(index)
}

fn ids(entries: &[IndexEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

fn in_bound<T: Ord>(v: &Option<T>, lower: &Bound<Option<T>>, upper: &Bound<Option<T>>) -> bool {
    let above = match lower {
        Bound::Unbounded => true,
        Bound::Included(l) => v >= l,
        Bound::Excluded(l) => v > l,
    };
    let below = match upper {
        Bound::Unbounded => true,
        Bound::Included(u) => v <= u,
        Bound::Excluded(u) => v < u,
    };
    above && below
}

fn random_bound<T: Clone>(rng: &mut Rng, values: &[Option<T>]) -> Bound<Option<T>> {
    let v = values[rng.index(values.len())].clone();
    match rng.below(3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(v),
        _ => Bound::Excluded(v),
    }
}

/// Walks every page forwards, then from the last page back to the first, checking each
/// page's flags; returns the forward order and the backward one (pages in range order).
fn walk(range: &impl Fn() -> db4::range::IndexRange<'static>, page: usize) -> db4::Result<(Vec<String>, Vec<String>)> {
    let mut forward = Vec::new();
    let mut pages: Vec<Page<IndexEntry>> = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let r = range().limit(page);
        let got = match &cursor {
            Some(c) => r.after(&Cursor::parse(&c.to_string())?).fetch()?,
            None => r.fetch()?,
        };
        assert!(got.items.len() <= page);
        assert_eq!(got.has_more, got.next.is_some());
        if got.has_more {
            assert_eq!(got.items.len(), page, "a page with more after it is full");
        }
        forward.extend(ids(&got.items));
        cursor = got.next.clone();
        pages.push(got);
        if cursor.is_none() {
            break;
        }
        assert!(pages.len() < 10_000, "the walk ends");
    }
    // Backwards: from the last page's `prev`.
    let mut backward: Vec<String> = pages.last().map(|p| ids(&p.items)).unwrap_or_default();
    let mut cursor = pages.last().and_then(|p| p.prev.clone());
    while let Some(c) = cursor {
        let got = range().limit(page).before(&c).fetch()?;
        assert!(!got.items.is_empty(), "a page before a cursor with rows before it");
        assert_eq!(got.has_more, got.prev.is_some());
        let mut ids = ids(&got.items);
        ids.append(&mut backward);
        backward = ids;
        cursor = got.prev;
    }
    Ok((forward, backward))
}

#[test]
fn paging_forwards_and_backwards_matches_a_model() -> db4::Result<()> {
    // A leaked database: the ranges borrow the index for the walk's closures.
    let db: &'static Db = Box::leak(Box::new(Db::open_in_memory()?));
    let mut rng = Rng::new(0x5eed_0011);
    for case in 0..48 {
        let n = 20 + rng.index(60);
        let data = rows(&mut rng, n);
        let (a_desc, b_desc) = (case % 2 == 1, case % 4 >= 2);
        let index: &'static RangeIndex =
            Box::leak(Box::new(index_over(db, &format!("model_{case}"), a_desc, b_desc, &data)?));
        let descending = rng.below(2) == 1;
        let page = 1 + rng.index(9);
        let a_values: Vec<Option<i64>> = data.iter().map(|r| r.a).collect();
        let b_values: Vec<Option<String>> = data.iter().map(|r| r.b.clone()).collect();
        let prefix = if rng.below(3) == 0 { Some(a_values[rng.index(a_values.len())]) } else { None };
        let mut model: Vec<Row> = data.clone();
        model.sort_by(|x, y| model_cmp(x, y, a_desc, b_desc));
        if descending {
            model.reverse();
        }
        let (a_bounds, b_bounds) = match prefix {
            Some(_) => (
                (Bound::Unbounded, Bound::Unbounded),
                (random_bound(&mut rng, &b_values), random_bound(&mut rng, &b_values)),
            ),
            None => (
                (random_bound(&mut rng, &a_values), random_bound(&mut rng, &a_values)),
                (Bound::Unbounded, Bound::Unbounded),
            ),
        };
        model.retain(|r| {
            prefix.is_none_or(|p| r.a == p)
                && in_bound(&r.a, &a_bounds.0, &a_bounds.1)
                && in_bound(&r.b, &b_bounds.0, &b_bounds.1)
        });
        let expected: Vec<String> = model.iter().map(|r| r.id.clone()).collect();
        let (a_b, b_b) = (a_bounds, b_bounds.clone());
        let range = move || {
            let r = index.range();
            let r = if descending { r.descending() } else { r.ascending() };
            match prefix {
                Some(p) => r.prefix((p,)).between((b_b.0.clone(), b_b.1.clone())),
                None => r.between(a_b),
            }
        };
        let context = format!(
            "case {case}: a desc {a_desc}, b desc {b_desc}, descending {descending}, page {page}, prefix {prefix:?}, bounds {a_bounds:?} {b_bounds:?}"
        );
        let (forward, backward) = walk(&range, page)?;
        assert_eq!(forward, expected, "{context}");
        assert_eq!(backward, expected, "backwards, {context}");
        let iterated: Vec<String> = range().iter(page).map(|e| e.map(|e| e.id)).collect::<db4::Result<_>>()?;
        assert_eq!(iterated, expected, "iter, {context}");
        // The keys of each entry are the ones indexed.
        for entry in range().iter(7) {
            let entry = entry?;
            let row = data.iter().find(|r| r.id == entry.id).unwrap();
            let b = row.b.clone().map_or(Value::Null, Value::Text);
            assert_eq!(entry.keys, [row.a.map_or(Value::Null, Value::Integer), b]);
        }
        // Backwards with iter, from a cursor in the middle: nearest first.
        if expected.len() > 3 {
            let first = range().limit(3).fetch()?;
            let tail: Vec<String> = range()
                .after(first.next.as_ref().unwrap())
                .iter(page)
                .map(|e| e.map(|e| e.id))
                .collect::<db4::Result<_>>()?;
            assert_eq!(tail, expected[3..], "{context}");
            let mid = range().after(first.next.as_ref().unwrap()).limit(1).fetch()?;
            let back: Vec<String> = range()
                .before(mid.prev.as_ref().unwrap())
                .iter(2)
                .map(|e| e.map(|e| e.id))
                .collect::<db4::Result<_>>()?;
            let mut want = expected[..3].to_vec();
            want.reverse();
            assert_eq!(back, want, "{context}");
        }
    }
    Ok(())
}

#[test]
fn mixed_directions_none_and_ties_sort_as_documented() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let index = RangeIndex::create(&db, "mixed", &[RangeField::text("t"), RangeField::real("x").descending()])?;
    index.index("i1", ("a", 1.5))?;
    index.index("i2", ("a", 2))?; // an integer for a float key
    index.index("i3", ("a", None::<f64>))?;
    index.index("i4", ("B", 0.0))?;
    index.index("i5", (None::<&str>, 9.0))?;
    index.index("i0", ("a", 1.5))?;
    let all = index.range().fetch()?;
    // `None` first on the ascending text; the float descending, `None` last; ties by id
    // descending (the last key descends).
    assert_eq!(ids(&all.items), ["i5", "i4", "i2", "i1", "i0", "i3"]);
    assert_eq!(all.items[2].keys, [Value::Text("a".into()), Value::Real(2.0)]);
    assert!(!all.has_more && all.next.is_none() && all.prev.is_none());
    let reversed = index.range().descending().fetch()?;
    assert_eq!(ids(&reversed.items), ["i3", "i0", "i1", "i2", "i4", "i5"]);
    // Bounds on the descending key are in value order.
    let some = index.range().prefix("a").between(1.0..2.0).fetch()?;
    assert_eq!(ids(&some.items), ["i1", "i0"]);
    let below = index.range().prefix("a").lt(1.6).fetch()?;
    assert_eq!(ids(&below.items), ["i1", "i0", "i3"], "`None` is below every value");
    // With every key fixed, the bounds apply to the id.
    let by_id = index.range().prefix(("a", 1.5)).gt("i0").fetch()?;
    assert_eq!(ids(&by_id.items), ["i1"]);
    Ok(())
}

#[test]
fn index_replaces_remove_and_get() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let index = RangeIndex::create(&db, "scores", &[RangeField::integer("score").descending()])?;
    assert!(index.is_empty()?);
    index.index_many([("a", 10), ("b", 20), ("c", 30)])?;
    assert_eq!(index.len()?, 3);
    index.index("a", 40)?;
    assert_eq!(index.get("a")?, Some(vec![Value::Integer(40)]));
    assert_eq!(index.get("zz")?, None);
    assert_eq!(ids(&index.range().fetch()?.items), ["a", "c", "b"]);
    assert!(index.remove("c")?);
    assert!(!index.remove("c")?);
    assert_eq!(ids(&index.range().fetch()?.items), ["a", "b"]);
    assert_eq!(index.len()?, 2);
    assert_eq!(index.name(), "scores");
    assert_eq!(index.fields(), [RangeField::integer("score").descending()]);
    Ok(())
}

#[test]
fn cursors_are_refused_when_tampered_with_or_used_elsewhere() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let fields = [RangeField::text("t"), RangeField::integer("n")];
    let index = RangeIndex::create(&db, "cursors", &fields)?;
    let twin = RangeIndex::create(&db, "cursors_twin", &fields)?;
    for i in 0..20 {
        let entry = (if i % 2 == 0 { "even" } else { "odd" }, i);
        index.index(&format!("e{i:02}"), entry)?;
        twin.index(&format!("e{i:02}"), entry)?;
    }
    let page = index.range().prefix("even").gt(2).limit(3).fetch()?;
    let cursor = page.next.clone().unwrap();
    assert_eq!(ids(&index.range().prefix("even").gt(2).after(&cursor).limit(3).fetch()?.items), ["e10", "e12", "e14"]);
    let invalid = |r: db4::Result<Page<IndexEntry>>| matches!(r, Err(Error::InvalidCursor { .. }));
    // Another prefix, bound, direction, index, database.
    assert!(invalid(index.range().prefix("odd").gt(2).after(&cursor).fetch()));
    assert!(invalid(index.range().prefix("even").gt(3).after(&cursor).fetch()));
    assert!(invalid(index.range().prefix("even").gte(2).after(&cursor).fetch()));
    assert!(invalid(index.range().prefix("even").gt(2).descending().after(&cursor).fetch()));
    assert!(invalid(index.range().prefix("even").after(&cursor).fetch()));
    assert!(invalid(twin.range().prefix("even").gt(2).after(&cursor).fetch()));
    let other_db = Db::open_in_memory()?;
    let elsewhere = RangeIndex::create(&other_db, "cursors", &fields)?;
    assert!(invalid(elsewhere.range().prefix("even").gt(2).after(&cursor).fetch()));
    // The same range takes it forwards and backwards, and as text.
    let text = cursor.to_string();
    assert!(index.range().prefix("even").gt(2).before(&Cursor::parse(&text)?).fetch().is_ok());
    // Every one-character edit, cut and extension is refused (by `parse` or when used).
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut edits: Vec<String> = Vec::new();
    for i in 0..text.len() {
        for &c in [b'A', b'z', b'-', b'_', alphabet[(i * 7) % 64]].iter() {
            let mut bytes = text.clone().into_bytes();
            if bytes[i] != c {
                bytes[i] = c;
                edits.push(String::from_utf8(bytes).unwrap());
            }
        }
        edits.push(text[..i].to_owned());
    }
    edits.push(format!("{text}A"));
    edits.push(format!("{text}AAAA"));
    edits.push("!".repeat(20));
    for edit in &edits {
        let refused = match Cursor::parse(edit) {
            Err(e) => matches!(e, Error::InvalidCursor { .. }),
            Ok(c) => invalid(index.range().prefix("even").gt(2).after(&c).fetch()),
        };
        assert!(refused, "{edit:?} was accepted");
    }
    // A collection's cursor is not an index's, nor the other way round.
    #[derive(db4::Document, serde::Serialize, serde::Deserialize)]
    #[db4(collection = "cursors")]
    struct Doc {
        #[id]
        id: String,
        #[range_index]
        n: i64,
    }
    let docs = db.collection::<Doc>()?;
    for i in 0..5 {
        docs.insert(&Doc { id: format!("e{i:02}"), n: i })?;
    }
    let theirs = docs.range(Doc::fields().n).limit(2).fetch()?.next.unwrap();
    assert!(invalid(index.range().after(&theirs).fetch()));
    let ours = index.range().prefix("even").limit(2).fetch()?.next.unwrap();
    assert!(matches!(docs.range(Doc::fields().n).after(&ours).fetch(), Err(Error::InvalidCursor { .. })));
    Ok(())
}

#[test]
fn an_index_persists_across_a_reopen_with_its_cursors() -> db4::Result<()> {
    let dir = TempDir::new("range-standalone-reopen");
    let path = dir.join("db.sqlite");
    let fields = [RangeField::text("tenant"), RangeField::integer("at").descending()];
    let text = {
        let db = Db::open(&path)?;
        let index = RangeIndex::create(&db, "events", &fields)?;
        index.index_many((0..30).map(|i| (format!("ev{i:02}"), (format!("t{}", i % 3), i))))?;
        index.range().prefix("t0").limit(4).fetch()?.next.unwrap().to_string()
    };
    let db = Db::open(&path)?;
    let index = RangeIndex::open(&db, "events")?;
    assert_eq!(index.fields(), fields);
    assert_eq!(index.len()?, 30);
    let page = index.range().prefix("t0").after(&Cursor::parse(&text)?).limit(4).fetch()?;
    assert_eq!(ids(&page.items), ["ev15", "ev12", "ev09", "ev06"]);
    // `create` with the same fields opens it; with others it is refused, changing nothing.
    assert_eq!(RangeIndex::create(&db, "events", &fields)?.len()?, 30);
    let other = [RangeField::text("tenant"), RangeField::integer("at")];
    match RangeIndex::create(&db, "events", &other) {
        Err(Error::SchemaMismatch { reason, .. }) => {
            assert!(reason.contains("exists with the fields (tenant text, at integer desc)"), "{reason}");
            assert!(reason.contains("RangeIndex::drop"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(index.len()?, 30);
    // Dropped, it is gone; created again, it is empty.
    assert!(RangeIndex::drop(&db, "events")?);
    assert!(!RangeIndex::drop(&db, "events")?);
    assert!(matches!(RangeIndex::open(&db, "events"), Err(Error::NotFound { .. })));
    assert!(RangeIndex::create(&db, "events", &other)?.is_empty()?);
    Ok(())
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let mismatch = |r: db4::Result<RangeIndex>| matches!(r, Err(Error::SchemaMismatch { .. }));
    let n = || RangeField::integer("n");
    assert!(mismatch(RangeIndex::create(&db, "", &[n()])));
    assert!(mismatch(RangeIndex::create(&db, "9lives", &[n()])));
    assert!(mismatch(RangeIndex::create(&db, "a\"b", &[n()])));
    assert!(mismatch(RangeIndex::create(&db, "a b", &[n()])));
    assert!(mismatch(RangeIndex::create(&db, &"x".repeat(49), &[n()])));
    assert!(mismatch(RangeIndex::create(&db, "none", &[])));
    assert!(mismatch(RangeIndex::create(&db, "twice", &[n(), RangeField::text("N")])));
    assert!(mismatch(RangeIndex::create(&db, "badfield", &[RangeField::integer("a-b")])));
    assert!(mismatch(RangeIndex::create(&db, "badfield", &[RangeField::integer("")])));
    let many: Vec<RangeField> = (0..17).map(|i| RangeField::integer(&format!("f{i}"))).collect();
    assert!(mismatch(RangeIndex::create(&db, "many", &many)));
    assert!(mismatch(RangeIndex::open(&db, "a;drop")));
    assert!(matches!(RangeIndex::open(&db, "missing"), Err(Error::NotFound { .. })));

    let index = RangeIndex::create(&db, "typed", &[RangeField::text("t"), RangeField::real("x")])?;
    let bad_value = |r: db4::Result<()>| matches!(r, Err(Error::InvalidValue { .. }));
    assert!(bad_value(index.index("", ("a", 1.0))));
    assert!(bad_value(index.index("i", ("a",))));
    assert!(bad_value(index.index("i", ("a", 1.0, 2.0))));
    assert!(bad_value(index.index("i", (1, 1.0))));
    assert!(bad_value(index.index("i", ("a", "b"))));
    assert!(bad_value(index.index("i", ("a", f64::NAN))));
    assert!(bad_value(index.index("i", ("a", f64::INFINITY))));
    // One bad entry: nothing of the batch is written.
    assert!(bad_value(index.index_many([
        ("ok", Keys(vec![Value::Text("a".into()), Value::Real(1.0)])),
        ("bad", Keys(vec![Value::Text("a".into()), Value::Text("x".into())])),
    ])));
    assert!(index.is_empty()?);
    index.index("ok", ("a", 1.0))?;

    let bad_query = |r: db4::Result<Page<IndexEntry>>| matches!(r, Err(Error::InvalidQuery { .. }));
    assert!(bad_query(index.range().limit(0).fetch()));
    assert!(bad_query(index.range().prefix(("a", 1.0, "id", 4)).fetch()));
    assert!(bad_query(index.range().prefix(1).fetch()));
    assert!(bad_query(index.range().gt("a").prefix("a").fetch()), "a text bound on a float key");
    assert!(bad_query(index.range().prefix(("a", 1.0)).gt(3).fetch()), "an integer bound on the id");
    assert!(bad_query(index.range().gt(f64::NAN).fetch()));
    let first = index.range().iter(0).next();
    assert!(matches!(first, Some(Err(Error::InvalidQuery { .. }))));
    // The iterator stops after its error.
    let mut it = index.range().limit(0).prefix(1).iter(1);
    assert!(matches!(it.next(), Some(Err(_))));
    assert!(it.next().is_none());
    // Hostile text is a value, never SQL.
    index.index("x'); DROP TABLE \"_db4_rgi_typed\"; --", ("'; DROP TABLE x; --", 2.0))?;
    assert_eq!(index.len()?, 2);
    Ok(())
}

#[test]
fn the_widest_index_stays_within_the_statement_limits() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let fields: Vec<RangeField> = (0..16)
        .map(|i| {
            if i % 2 == 0 {
                RangeField::integer(&format!("k{i}"))
            } else {
                RangeField::text(&format!("k{i}")).descending()
            }
        })
        .collect();
    let index = RangeIndex::create(&db, "wide", &fields)?;
    let entry = |i: i64| -> Vec<Value> {
        (0..16)
            .map(|k| if k % 2 == 0 { Value::Integer(i % (k + 2)) } else { Value::Text(format!("v{}", i % (k + 3))) })
            .collect()
    };
    for i in 0..50 {
        let keys = entry(i);
        index.index(&format!("w{i:02}"), Keys(keys))?;
    }
    // Mixed directions over 16 keys and the id: each cursor value bound once.
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let r = index.range().gte(0).lte(100).limit(7);
        let page = match &cursor {
            Some(c) => r.after(c).fetch()?,
            None => r.fetch()?,
        };
        seen.extend(ids(&page.items));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 50);
    let all: Vec<String> = index.range().iter(50).map(|e| e.map(|e| e.id)).collect::<db4::Result<_>>()?;
    assert_eq!(seen, all);
    Ok(())
}

/// Keys given as a list of values.
struct Keys(Vec<Value>);

impl db4::range::KeyPrefix for Keys {
    fn key_values(&self) -> Result<Vec<Value>, db4::ValueError> {
        Ok(self.0.clone())
    }
}
