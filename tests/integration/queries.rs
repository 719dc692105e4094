//! Every query operator, combinator and paging option: hand-written cases first, then a
//! model-based test comparing db4 with a plain `Vec` filtered in Rust, with Rust's meaning of
//! the same expressions over `Option` fields (`None` below every value), on a randomized
//! dataset.

use db4::prelude::*;
use db4::{Field, Ordered};
use db4_tests::Rng;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Color {
    Red,
    Green,
    Blue,
}

impl Color {
    fn name(self) -> &'static str {
        match self {
            Color::Red => "Red",
            Color::Green => "Green",
            Color::Blue => "Blue",
        }
    }
}

/// One field of each interesting kind: indexed (equality / range), non-indexed (read through
/// the JSON document), optional, text, integer, float, bool, enum, id and version.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "items")]
struct Item {
    #[id]
    id: i64,
    #[index]
    category: String,
    #[range_index]
    score: i64,
    #[index]
    rating: Option<i64>,
    #[range_index]
    weight: f64,
    #[index]
    color: Color,
    #[index]
    tag: Option<String>,
    name: String,
    qty: i64,
    note: Option<String>,
    level: Option<i64>,
    price: f64,
    flag: bool,
    #[version]
    version: u64,
}

fn ids(items: &[Item]) -> Vec<i64> {
    items.iter().map(|i| i.id).collect()
}

fn sorted_ids(items: &[Item]) -> Vec<i64> {
    let mut v = ids(items);
    v.sort_unstable();
    v
}

/// Ten items with hand-picked values, ids 1..=10.
fn fixture() -> Vec<Item> {
    let names = ["Apple", "apple", "ap%x", "ap_x", "apXx", "100%", "a_b", "b", "", "Äpfel"];
    let cats = ["fruit", "fruit", "tool", "tool", "tool", "misc", "misc", "fruit", "misc", "fruit"];
    let colors = [Color::Red, Color::Green, Color::Blue];
    (1..=10)
        .map(|i: i64| {
            let n = i as usize - 1;
            Item {
                id: i,
                category: cats[n].into(),
                score: (i * 7) % 11 - 5,
                rating: if i % 3 == 0 { None } else { Some(i % 4) },
                weight: i as f64 * 0.5,
                color: colors[n % 3],
                tag: if i % 2 == 0 { Some(format!("t{}", i % 4)) } else { None },
                name: names[n].into(),
                qty: 10 - i,
                note: if i <= 4 { Some(names[n].to_lowercase()) } else { None },
                level: if i > 7 { None } else { Some(i % 3) },
                price: 100.0 - i as f64 * 2.25,
                flag: i % 2 == 1,
                version: (i % 3) as u64,
            }
        })
        .collect()
}

fn setup() -> (Db, Collection<Item>, Vec<Item>) {
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Item>().unwrap();
    let docs = fixture();
    c.insert_many(&docs).unwrap();
    (db, c, docs)
}

/// The ids the fixture yields for `pred`, sorted.
fn expect(docs: &[Item], pred: impl Fn(&Item) -> bool) -> Vec<i64> {
    docs.iter().filter(|d| pred(d)).map(|d| d.id).collect()
}

fn run(c: &Collection<Item>, filter: Filter<Item>) -> Vec<i64> {
    let all = c.query().filter(filter.clone()).all().unwrap();
    let n = c.query().filter(filter).count().unwrap();
    assert_eq!(n, all.len() as u64, "count() agrees with all()");
    sorted_ids(&all)
}

#[test]
fn comparison_operators_on_indexed_fields() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    assert_eq!(run(&c, f.score.eq(2)), expect(&d, |i| i.score == 2));
    assert_eq!(run(&c, f.score.ne(2)), expect(&d, |i| i.score != 2));
    assert_eq!(run(&c, f.score.gt(0)), expect(&d, |i| i.score > 0));
    assert_eq!(run(&c, f.score.gte(0)), expect(&d, |i| i.score >= 0));
    assert_eq!(run(&c, f.score.lt(0)), expect(&d, |i| i.score < 0));
    assert_eq!(run(&c, f.score.lte(0)), expect(&d, |i| i.score <= 0));
    assert_eq!(run(&c, f.score.between(-2, 3)), expect(&d, |i| (-2..=3).contains(&i.score)));
    assert_eq!(run(&c, f.score.between(3, -2)), Vec::<i64>::new(), "between with low > high is empty");
    assert_eq!(run(&c, f.weight.gt(2.5)), expect(&d, |i| i.weight > 2.5));
    assert_eq!(run(&c, f.weight.between(1.0, 2.0)), expect(&d, |i| (1.0..=2.0).contains(&i.weight)));
    assert_eq!(run(&c, f.category.eq("tool")), expect(&d, |i| i.category == "tool"));
    assert_eq!(run(&c, f.category.gt("fruit")), expect(&d, |i| i.category.as_str() > "fruit"));
    assert_eq!(run(&c, f.color.eq(Color::Blue)), expect(&d, |i| i.color == Color::Blue));
    assert_eq!(run(&c, f.color.ne(Color::Blue)), expect(&d, |i| i.color != Color::Blue));
    assert!(!run(&c, f.score.eq(2)).is_empty(), "the fixture exercises matches");
}

#[test]
fn comparison_operators_on_non_indexed_fields() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    assert_eq!(run(&c, f.qty.eq(3)), expect(&d, |i| i.qty == 3));
    assert_eq!(run(&c, f.qty.ne(3)), expect(&d, |i| i.qty != 3));
    assert_eq!(run(&c, f.qty.gt(5)), expect(&d, |i| i.qty > 5));
    assert_eq!(run(&c, f.qty.gte(5)), expect(&d, |i| i.qty >= 5));
    assert_eq!(run(&c, f.qty.lt(5)), expect(&d, |i| i.qty < 5));
    assert_eq!(run(&c, f.qty.lte(5)), expect(&d, |i| i.qty <= 5));
    assert_eq!(run(&c, f.qty.between(2, 4)), expect(&d, |i| (2..=4).contains(&i.qty)));
    assert_eq!(run(&c, f.price.lt(90.0)), expect(&d, |i| i.price < 90.0));
    assert_eq!(run(&c, f.price.eq(93.25)), expect(&d, |i| i.price == 93.25));
    assert_eq!(run(&c, f.name.eq("apple")), vec![2]);
    assert_eq!(run(&c, f.name.gte("b")), expect(&d, |i| i.name.as_str() >= "b"));
    assert_eq!(run(&c, f.flag.eq(true)), expect(&d, |i| i.flag));
    assert_eq!(run(&c, f.flag.gt(false)), expect(&d, |i| i.flag));
    assert_eq!(run(&c, f.flag.ne(true)), expect(&d, |i| !i.flag));
}

#[test]
fn id_and_version_fields_are_queryable() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    assert_eq!(run(&c, f.id.eq(4)), vec![4]);
    assert_eq!(run(&c, f.id.gt(7)), vec![8, 9, 10]);
    assert_eq!(run(&c, f.id.between(2, 4)), vec![2, 3, 4]);
    assert_eq!(run(&c, f.id.in_list([9, 1, 1, 42])), vec![1, 9]);
    assert_eq!(run(&c, f.id.ne(1)), (2..=10).collect::<Vec<_>>());
    assert_eq!(run(&c, f.version.eq(2)), expect(&d, |i| i.version == 2));
    assert_eq!(run(&c, f.version.lt(2)), expect(&d, |i| i.version < 2));
    // The version column moves with updates, and queries see the stored version.
    let mut one = c.get(1).unwrap().unwrap();
    assert_eq!(one.version, 1);
    c.update(&one).unwrap();
    one.version = 2;
    assert_eq!(c.get(1).unwrap(), Some(one));
    assert!(run(&c, f.version.eq(2)).contains(&1));
}

#[test]
fn option_fields_none_and_some() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    // Indexed Option<i64>.
    assert_eq!(run(&c, f.rating.is_none()), expect(&d, |i| i.rating.is_none()));
    assert_eq!(run(&c, f.rating.is_some()), expect(&d, |i| i.rating.is_some()));
    assert_eq!(run(&c, f.rating.eq(None)), expect(&d, |i| i.rating.is_none()));
    assert_eq!(run(&c, f.rating.ne(None)), expect(&d, |i| i.rating.is_some()));
    assert_eq!(run(&c, f.rating.eq(Some(1))), expect(&d, |i| i.rating == Some(1)));
    // `ne` of a value also matches documents where the field is None.
    assert_eq!(run(&c, f.rating.ne(Some(1))), expect(&d, |i| i.rating != Some(1)));
    assert_eq!(run(&c, f.rating.gt(Some(1))), expect(&d, |i| i.rating.is_some_and(|r| r > 1)));
    // Non-indexed Option<i64> and Option<String>.
    assert_eq!(run(&c, f.level.is_none()), expect(&d, |i| i.level.is_none()));
    assert_eq!(run(&c, f.level.is_some()), expect(&d, |i| i.level.is_some()));
    // `None` orders below every value, as `Option`'s `Ord` has it.
    assert_eq!(run(&c, f.level.lte(Some(1))), expect(&d, |i| i.level <= Some(1)));
    assert!(d.iter().any(|i| i.level.is_none()), "the fixture exercises None");
    assert_eq!(run(&c, f.note.is_some()), vec![1, 2, 3, 4]);
    assert_eq!(run(&c, f.note.eq("apple")), vec![1, 2]);
    assert_eq!(run(&c, f.note.eq(None)), (5..=10).collect::<Vec<_>>());
    assert_eq!(run(&c, f.tag.eq("t2")), expect(&d, |i| i.tag.as_deref() == Some("t2")));
    assert_eq!(run(&c, f.tag.is_none()), expect(&d, |i| i.tag.is_none()));
}

#[test]
fn in_list_short_long_and_with_none() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    assert_eq!(run(&c, f.category.in_list(["misc", "tool"])), expect(&d, |i| i.category != "fruit"));
    assert_eq!(run(&c, f.category.in_list(Vec::<String>::new())), Vec::<i64>::new());
    assert_eq!(run(&c, f.color.in_list([Color::Red, Color::Blue])), expect(&d, |i| i.color != Color::Green));
    assert_eq!(run(&c, f.qty.in_list([0, 3, 5])), expect(&d, |i| [0, 3, 5].contains(&i.qty)));
    assert_eq!(run(&c, f.name.in_list(["apple", "b", "nope"])), vec![2, 8]);
    assert_eq!(run(&c, f.weight.in_list([0.5, 2.5, 7.0])), vec![1, 5]);
    assert_eq!(run(&c, f.flag.in_list([true])), expect(&d, |i| i.flag));

    // With None: matches the documents where the field is None, too.
    assert_eq!(run(&c, f.rating.in_list([Some(1), None])), expect(&d, |i| matches!(i.rating, Some(1) | None)));
    assert_eq!(run(&c, f.rating.in_list([None])), expect(&d, |i| i.rating.is_none()));
    assert_eq!(run(&c, f.rating.in_list(Vec::<Option<i64>>::new())), Vec::<i64>::new());
    assert_eq!(run(&c, f.level.in_list([None, Some(2)])), expect(&d, |i| matches!(i.level, Some(2) | None)));
    assert_eq!(
        run(&c, f.note.in_list([Some("apple".to_string()), None])),
        expect(&d, |i| i.note.is_none() || i.note.as_deref() == Some("apple"))
    );

    // Long lists (bound as one JSON array) on indexed, non-indexed and id fields.
    let long_scores: Vec<i64> = (1000..1400).chain([2, -5]).collect();
    assert_eq!(run(&c, f.score.in_list(long_scores.clone())), expect(&d, |i| long_scores.contains(&i.score)));
    let long_qty: Vec<i64> = (100..500).chain([1, 9]).collect();
    assert_eq!(run(&c, f.qty.in_list(long_qty)), vec![1, 9]);
    let long_ids: Vec<i64> = (-400..0).chain([3, 7]).collect();
    assert_eq!(run(&c, f.id.in_list(long_ids)), vec![3, 7]);
    let long_names: Vec<String> = (0..300).map(|i| format!("name{i}")).chain(["ap%x".to_string()]).collect();
    assert_eq!(run(&c, f.name.in_list(long_names.clone())), vec![3]);
    assert_eq!(run(&c, f.category.in_list(long_names)), Vec::<i64>::new());
    let long_weights: Vec<f64> = (0..300).map(|i| 1000.0 + f64::from(i) * 0.25).chain([1.5]).collect();
    assert_eq!(run(&c, f.weight.in_list(long_weights)), vec![3]);
    let long_colors: Vec<Color> = (0..300).map(|i| [Color::Green, Color::Green, Color::Blue][i % 3]).collect();
    assert_eq!(run(&c, f.color.in_list(long_colors)), expect(&d, |i| i.color != Color::Red));
    let long_optional: Vec<Option<i64>> = (100..400).map(Some).chain([None, Some(2)]).collect();
    assert_eq!(run(&c, f.rating.in_list(long_optional)), expect(&d, |i| matches!(i.rating, Some(2) | None)));
    let long_levels: Vec<Option<i64>> = (100..400).map(Some).chain([None]).collect();
    assert_eq!(run(&c, f.level.in_list(long_levels)), expect(&d, |i| i.level.is_none()));
    // A very long list: far above SQLite's parameter limit.
    let huge: Vec<i64> = (0..100_000).map(|i| i * 2).collect();
    assert_eq!(run(&c, f.id.in_list(huge)), vec![2, 4, 6, 8, 10]);
}

#[test]
fn starts_with_is_case_sensitive_and_literal() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    assert_eq!(run(&c, f.name.starts_with("ap")), vec![2, 3, 4, 5]);
    assert_eq!(run(&c, f.name.starts_with("Ap")), vec![1]);
    assert_eq!(run(&c, f.name.starts_with("AP")), Vec::<i64>::new());
    assert_eq!(run(&c, f.name.starts_with("ap%")), vec![3], "% is not a wildcard");
    assert_eq!(run(&c, f.name.starts_with("ap_")), vec![4], "_ is not a wildcard");
    assert_eq!(run(&c, f.name.starts_with("a_")), vec![7]);
    assert_eq!(run(&c, f.name.starts_with("100%")), vec![6]);
    assert_eq!(run(&c, f.name.starts_with("%")), Vec::<i64>::new());
    assert_eq!(run(&c, f.name.starts_with("Äp")), vec![10], "multi-byte prefixes");
    assert_eq!(run(&c, f.name.starts_with("Äpfel!")), Vec::<i64>::new(), "longer than the value");
    assert_eq!(run(&c, f.name.starts_with("")), (1..=10).collect::<Vec<_>>(), "empty prefix: every string");
    assert_eq!(run(&c, f.category.starts_with("f")), expect(&d, |i| i.category.starts_with('f')));
    assert_eq!(run(&c, f.category.starts_with("F")), Vec::<i64>::new());
    // Option<String>: None never starts with anything, not even "".
    assert_eq!(run(&c, f.note.starts_with("ap")), vec![1, 2, 3, 4]);
    assert_eq!(run(&c, f.note.starts_with("ap_")), vec![4]);
    assert_eq!(run(&c, f.note.starts_with("")), vec![1, 2, 3, 4]);
    assert_eq!(run(&c, f.tag.starts_with("t")), expect(&d, |i| i.tag.is_some()));
    assert_eq!(run(&c, f.tag.starts_with("t2")), expect(&d, |i| i.tag.as_deref() == Some("t2")));
    // The negation matches the None tags too: `!p` is everything `p` is not.
    assert_eq!(run(&c, !f.tag.starts_with("t2")), expect(&d, |i| i.tag.as_deref().is_none_or(|t| t != "t2")));
}

#[test]
fn and_or_not_and_their_operators() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    let fruit = |i: &Item| i.category == "fruit";
    let high = |i: &Item| i.score > 0;
    assert_eq!(run(&c, f.category.eq("fruit").and(f.score.gt(0))), expect(&d, |i| fruit(i) && high(i)));
    assert_eq!(run(&c, f.category.eq("fruit") & f.score.gt(0)), expect(&d, |i| fruit(i) && high(i)));
    assert_eq!(run(&c, f.category.eq("fruit").or(f.score.gt(0))), expect(&d, |i| fruit(i) || high(i)));
    assert_eq!(run(&c, f.category.eq("fruit") | f.score.gt(0)), expect(&d, |i| fruit(i) || high(i)));
    assert_eq!(run(&c, f.category.eq("fruit").not()), expect(&d, |i| !fruit(i)));
    assert_eq!(run(&c, !f.category.eq("fruit")), expect(&d, |i| !fruit(i)));
    assert_eq!(
        run(&c, !(f.category.eq("fruit") | f.color.eq(Color::Red)) & f.qty.lt(8)),
        expect(&d, |i| !(fruit(i) || i.color == Color::Red) && i.qty < 8)
    );
    // Chained and/or keep every operand.
    assert_eq!(
        run(&c, f.id.eq(1) | f.id.eq(2) | f.id.eq(3) | f.id.eq(9)),
        vec![1, 2, 3, 9],
        "a chain of four ors keeps all four"
    );
    assert_eq!(run(&c, f.id.gt(1) & f.id.lt(9) & f.id.ne(5) & f.flag.eq(true)), vec![3, 7]);
    // Several filter() calls must all hold.
    let got = c.query().filter(f.category.eq("fruit")).filter(f.flag.eq(true)).filter(f.id.gt(1)).all().unwrap();
    assert_eq!(sorted_ids(&got), Vec::<i64>::new());
    let got = c.query().filter(f.category.eq("fruit")).filter(f.flag.eq(false)).all().unwrap();
    assert_eq!(sorted_ids(&got), expect(&d, |i| fruit(i) && !i.flag));
    // Empty all/any.
    assert_eq!(run(&c, Filter::all([])), (1..=10).collect::<Vec<_>>());
    assert_eq!(run(&c, Filter::any([])), Vec::<i64>::new());
    assert_eq!(run(&c, Filter::any([f.id.eq(2), f.id.eq(4)])), vec![2, 4]);
    assert_eq!(run(&c, Filter::all([f.id.gte(2), f.id.lte(4)])), vec![2, 3, 4]);
    // NOT of a comparison matches a None field, as `!(x > Some(1))` is true in Rust.
    assert_eq!(run(&c, !f.rating.gt(Some(1))), expect(&d, |i| i.rating <= Some(1)));
    assert_eq!(run(&c, !f.rating.gt(Some(1))), run(&c, f.rating.lte(Some(1))));
    // Double negation.
    assert_eq!(run(&c, !!f.flag.eq(true)), expect(&d, |i| i.flag));
}

#[test]
fn order_by_indexed_non_indexed_and_several_keys() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    let order = |q: Vec<Item>| ids(&q);
    let mut by_score: Vec<&Item> = d.iter().collect();
    by_score.sort_by_key(|i| (i.score, i.id));
    let got = order(c.query().order_by(f.score.asc()).order_by(f.id.asc()).all().unwrap());
    assert_eq!(got, by_score.iter().map(|i| i.id).collect::<Vec<_>>());
    by_score.sort_by_key(|i| (std::cmp::Reverse(i.score), i.id));
    let got = order(c.query().order_by(f.score.desc()).order_by(f.id.asc()).all().unwrap());
    assert_eq!(got, by_score.iter().map(|i| i.id).collect::<Vec<_>>());

    // Non-indexed integer, text and float fields.
    let got = order(c.query().order_by(f.qty.asc()).all().unwrap());
    assert_eq!(got, (1..=10).rev().collect::<Vec<_>>());
    let got = order(c.query().order_by(f.price.desc()).all().unwrap());
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    let mut by_name: Vec<&Item> = d.iter().collect();
    by_name.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let got = order(c.query().order_by(f.name.asc()).all().unwrap());
    assert_eq!(got, by_name.iter().map(|i| i.id).collect::<Vec<_>>(), "text sorts by UTF-8 bytes");

    // Two keys: category asc, then weight desc (indexed + indexed), and color + qty.
    let mut expected: Vec<&Item> = d.iter().collect();
    expected.sort_by(|a, b| a.category.cmp(&b.category).then(b.weight.total_cmp(&a.weight)));
    let got = order(c.query().order_by(f.category.asc()).order_by(f.weight.desc()).all().unwrap());
    assert_eq!(got, expected.iter().map(|i| i.id).collect::<Vec<_>>());
    expected.sort_by(|a, b| b.color.name().cmp(a.color.name()).then(a.qty.cmp(&b.qty)));
    let got = order(c.query().order_by(f.color.desc()).order_by(f.qty.asc()).all().unwrap());
    assert_eq!(got, expected.iter().map(|i| i.id).collect::<Vec<_>>(), "enums sort by variant name");

    // None sorts first ascending and last descending.
    let got = order(c.query().order_by(f.rating.asc()).order_by(f.id.desc()).all().unwrap());
    let mut expected: Vec<&Item> = d.iter().collect();
    expected.sort_by(|a, b| a.rating.cmp(&b.rating).then(b.id.cmp(&a.id)));
    assert_eq!(got, expected.iter().map(|i| i.id).collect::<Vec<_>>());
    let got = order(c.query().order_by(f.level.desc()).order_by(f.id.asc()).all().unwrap());
    expected.sort_by(|a, b| b.level.cmp(&a.level).then(a.id.cmp(&b.id)));
    assert_eq!(got, expected.iter().map(|i| i.id).collect::<Vec<_>>());

    // Sorting combined with a filter.
    let got = order(c.query().filter(f.flag.eq(true)).order_by(f.version.desc()).order_by(f.id.desc()).all().unwrap());
    let mut expected: Vec<&Item> = d.iter().filter(|i| i.flag).collect();
    expected.sort_by(|a, b| b.version.cmp(&a.version).then(b.id.cmp(&a.id)));
    assert_eq!(got, expected.iter().map(|i| i.id).collect::<Vec<_>>());
}

#[test]
fn limit_offset_first_and_count() {
    let (_db, c, _d) = setup();
    let f = Item::fields();
    let q = || c.query().order_by(f.id.asc());
    assert_eq!(ids(&q().limit(3).all().unwrap()), vec![1, 2, 3]);
    assert_eq!(ids(&q().offset(8).all().unwrap()), vec![9, 10], "offset without limit");
    assert_eq!(ids(&q().offset(2).limit(3).all().unwrap()), vec![3, 4, 5]);
    assert_eq!(ids(&q().limit(3).offset(2).all().unwrap()), vec![3, 4, 5], "order of the calls does not matter");
    assert_eq!(ids(&q().limit(0).all().unwrap()), Vec::<i64>::new());
    assert_eq!(ids(&q().offset(10).all().unwrap()), Vec::<i64>::new());
    assert_eq!(ids(&q().offset(usize::MAX).all().unwrap()), Vec::<i64>::new());
    assert_eq!(ids(&q().limit(usize::MAX).all().unwrap()).len(), 10);
    assert_eq!(ids(&q().limit(100).all().unwrap()).len(), 10);
    assert_eq!(ids(&c.query().order_by(f.id.desc()).offset(1).limit(2).all().unwrap()), vec![9, 8]);

    assert_eq!(q().first().unwrap().map(|i| i.id), Some(1));
    assert_eq!(q().offset(4).first().unwrap().map(|i| i.id), Some(5));
    assert_eq!(c.query().order_by(f.score.desc()).order_by(f.id.asc()).first().unwrap().map(|i| i.score), Some(5));
    assert_eq!(c.query().filter(f.id.gt(100)).first().unwrap(), None);

    assert_eq!(c.query().count().unwrap(), 10);
    assert_eq!(q().limit(3).count().unwrap(), 3);
    assert_eq!(q().offset(8).count().unwrap(), 2);
    assert_eq!(q().offset(8).limit(5).count().unwrap(), 2);
    assert_eq!(q().offset(20).count().unwrap(), 0);
    assert_eq!(q().limit(0).count().unwrap(), 0);
    assert_eq!(c.query().filter(f.flag.eq(true)).limit(2).count().unwrap(), 2);
    assert_eq!(c.query().filter(f.flag.eq(true)).offset(4).count().unwrap(), 1);
}

#[test]
fn first_respects_limit_zero() {
    let (_db, c, _d) = setup();
    let q = || c.query().order_by(Item::fields().id.asc()).limit(0);
    assert!(q().all().unwrap().is_empty());
    assert_eq!(q().first().unwrap(), None, "all() is empty, so first() must be None");
}

#[test]
fn wide_filters_run() {
    let (_db, c, _d) = setup();
    let f = Item::fields();
    // Hundreds of alternatives, flat.
    let any = Filter::any((0..500).map(|i| f.qty.eq(i + 5)));
    assert_eq!(run(&c, any), (1..=5).collect::<Vec<_>>());
    let all = Filter::all((0..500).map(|i| f.qty.ne(i + 5)));
    assert_eq!(run(&c, all), (6..=10).collect::<Vec<_>>());
    // Many filter() calls.
    let mut q = c.query();
    for i in 0..300 {
        q = q.filter(f.id.ne(i + 5));
    }
    assert_eq!(sorted_ids(&q.all().unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn very_wide_filters_run_or_are_refused_as_invalid_queries() {
    let (_db, c, _d) = setup();
    let f = Item::fields();
    let any = Filter::any((0..2000).map(|i| f.qty.eq(i + 5)));
    match c.query().filter(any).count() {
        Ok(n) => assert_eq!(n, 5),
        Err(e) => assert!(matches!(e, Error::InvalidQuery { .. }), "expected InvalidQuery, got {e:?}"),
    }
}

const DEEP_CHILD_ENV: &str = "DB4_TESTS_DEEP_FILTER_CHILD";

/// Runs a query with `depth` nested NOTs on a thread with a 2 MiB stack (the default for
/// spawned threads); Ok or InvalidQuery are both acceptable answers, a crash is not.
fn deep_filter_query(depth: usize) {
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let (_db, c, _d) = setup();
            let mut filter = Item::fields().id.eq(1);
            for _ in 0..depth {
                filter = !filter;
            }
            let expected = if depth.is_multiple_of(2) { 1 } else { 9 };
            match c.query().filter(filter).count() {
                Ok(n) => assert_eq!(n, expected),
                Err(e) => assert!(matches!(e, Error::InvalidQuery { .. }), "expected InvalidQuery, got {e:?}"),
            }
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn moderately_nested_filters_run() {
    deep_filter_query(100);
    deep_filter_query(101);
}

#[test]
fn deeply_nested_filters_do_not_crash() {
    if std::env::var(DEEP_CHILD_ENV).is_ok() {
        deep_filter_query(800);
        deep_filter_query(5_000);
        return;
    }
    // A stack overflow aborts the process, so the query runs in a child process.
    let name = format!("{}::deeply_nested_filters_do_not_crash", module_path!().split_once("::").unwrap().1);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--include-ignored", "--test-threads", "1"])
        .env(DEEP_CHILD_ENV, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the child running deeply nested filters failed: {status}");
}

#[test]
fn delete_by_query_removes_exactly_the_matches() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    let n = c.query().filter(f.category.eq("tool")).delete().unwrap();
    assert_eq!(n, 3);
    let left = sorted_ids(&c.query().all().unwrap());
    assert_eq!(left, expect(&d, |i| i.category != "tool"));
    assert_eq!(c.query().filter(f.category.eq("tool")).delete().unwrap(), 0);
    // Non-indexed filter.
    assert_eq!(c.query().filter(f.name.starts_with("a")).delete().unwrap(), 2);
    assert_eq!(sorted_ids(&c.query().all().unwrap()), vec![1, 6, 8, 9, 10]);
    // Everything.
    assert_eq!(c.query().delete().unwrap(), 5);
    assert_eq!(c.count().unwrap(), 0);
}

#[test]
fn delete_with_order_limit_and_offset_deletes_the_right_ones() {
    let (_db, c, d) = setup();
    let f = Item::fields();
    // The three highest scores (ties broken by id, descending).
    let mut by_score: Vec<&Item> = d.iter().collect();
    by_score.sort_by(|a, b| b.score.cmp(&a.score).then(b.id.cmp(&a.id)));
    let doomed: Vec<i64> = by_score[..3].iter().map(|i| i.id).collect();
    let n = c.query().order_by(f.score.desc()).order_by(f.id.desc()).limit(3).delete().unwrap();
    assert_eq!(n, 3);
    let mut expected: Vec<i64> = d.iter().map(|i| i.id).filter(|id| !doomed.contains(id)).collect();
    assert_eq!(sorted_ids(&c.query().all().unwrap()), expected);

    // With a filter, a non-indexed sort key and an offset: skip the first, delete the next two.
    let flagged: Vec<&Item> = {
        let mut v: Vec<&Item> = d.iter().filter(|i| expected.contains(&i.id) && !i.flag).collect();
        v.sort_by_key(|i| i.qty);
        v
    };
    let doomed: Vec<i64> = flagged[1..3].iter().map(|i| i.id).collect();
    let n = c.query().filter(f.flag.eq(false)).order_by(f.qty.asc()).offset(1).limit(2).delete().unwrap();
    assert_eq!(n, 2);
    expected.retain(|id| !doomed.contains(id));
    assert_eq!(sorted_ids(&c.query().all().unwrap()), expected);

    // Offset without limit deletes everything after the offset.
    let remaining = expected.len() as u64;
    let n = c.query().order_by(f.id.asc()).offset(2).delete().unwrap();
    assert_eq!(n, remaining - 2);
    assert_eq!(sorted_ids(&c.query().all().unwrap()), expected[..2].to_vec());
    // limit(0) deletes nothing.
    assert_eq!(c.query().limit(0).delete().unwrap(), 0);
    assert_eq!(c.count().unwrap(), 2);
}

/// The example of issue 7: three people, one without a name and a score.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "people")]
struct Person {
    #[id]
    id: i64,
    #[index]
    name: Option<String>,
    #[range_index]
    score: Option<i64>,
    /// Left out of the JSON when `None`: a missing key counts as `None` too.
    #[serde(skip_serializing_if = "Option::is_none")]
    nick: Option<String>,
    level: Option<i64>,
}

fn people() -> (Db, Collection<Person>) {
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Person>().unwrap();
    let p = |id, name: Option<&str>, score| Person {
        id,
        name: name.map(str::to_owned),
        score,
        nick: name.map(|n| n[..1].to_owned()),
        level: score.map(|s| s / 2),
    };
    c.insert_many(&[p(1, None, None), p(2, Some("bob"), Some(3)), p(3, Some("ann"), Some(9))]).unwrap();
    (db, c)
}

fn count_of(c: &Collection<Person>, filter: Filter<Person>) -> u64 {
    c.query().filter(filter).count().unwrap()
}

#[test]
fn negation_and_ne_agree_on_none() {
    let (_db, c) = people();
    let f = Person::fields();
    for (name, eq, ne, not_eq, not_in) in [
        ("indexed", f.name.eq("bob"), f.name.ne("bob"), !f.name.eq("bob"), !f.name.in_list([Some("bob".to_string())])),
        ("json", f.nick.eq("b"), f.nick.ne("b"), !f.nick.eq("b"), !f.nick.in_list([Some("b".to_string())])),
    ] {
        assert_eq!(count_of(&c, eq), 1, "{name}: eq");
        assert_eq!(count_of(&c, ne), 2, "{name}: ne matches the None row");
        assert_eq!(count_of(&c, not_eq), 2, "{name}: !eq is ne");
        assert_eq!(count_of(&c, not_in), 2, "{name}: !in_list");
    }
    assert_eq!(count_of(&c, f.score.lt(Some(7)) | f.score.gte(Some(7))), 3, "lt | gte covers None");
    assert_eq!(count_of(&c, f.level.lt(Some(3)) | f.level.gte(Some(3))), 3, "lt | gte covers a JSON None");
}

#[test]
fn none_orders_below_every_value() {
    let (_db, c) = people();
    let f = Person::fields();
    let ids = |filter: Filter<Person>| sorted_ids_of(&c, filter);
    // Indexed (score: None, 3, 9) and JSON (level: None, 1, 4) fields alike.
    assert_eq!(ids(f.score.lt(Some(7))), vec![1, 2]);
    assert_eq!(ids(f.score.lte(Some(3))), vec![1, 2]);
    assert_eq!(ids(f.score.gt(Some(3))), vec![3]);
    assert_eq!(ids(f.score.gte(Some(3))), vec![2, 3]);
    assert_eq!(ids(f.score.between(Some(0), Some(100))), vec![2, 3], "between never matches None");
    assert_eq!(ids(!f.score.between(Some(0), Some(100))), vec![1]);
    assert_eq!(ids(f.level.lt(Some(2))), vec![1, 2]);
    assert_eq!(ids(!f.level.lt(Some(2))), vec![3]);
    assert_eq!(ids(f.level.gte(Some(1))), vec![2, 3]);
    assert_eq!(ids(!f.level.gte(Some(1))), vec![1]);
    assert_eq!(ids(f.name.starts_with("")), vec![2, 3], "starts_with never matches None");
    assert_eq!(ids(!f.name.starts_with("b")), vec![1, 3]);
    assert_eq!(ids(!f.nick.starts_with("b")), vec![1, 3]);
    assert_eq!(ids(f.name.in_list([None, Some("ann".to_string())])), vec![1, 3]);
    assert_eq!(ids(!f.name.in_list([None, Some("ann".to_string())])), vec![2]);
    assert_eq!(ids(!f.nick.in_list([None, Some("a".to_string())])), vec![2]);
    assert_eq!(ids(f.name.in_list([None::<String>])), vec![1]);
    assert_eq!(ids(!f.name.in_list([None::<String>])), vec![2, 3]);
    assert_eq!(ids(!f.name.in_list(Vec::<Option<String>>::new())), vec![1, 2, 3]);
    assert_eq!(ids(!f.name.eq(None)), vec![2, 3]);
    assert_eq!(ids(!f.name.ne(None)), vec![1]);
    assert_eq!(ids(!f.nick.is_none()), vec![2, 3]);
    assert_eq!(ids(!f.nick.is_some()), vec![1]);
    // De Morgan over combinations.
    assert_eq!(ids(!(f.score.gt(Some(5)) | f.name.eq("bob"))), vec![1]);
    assert_eq!(ids(!(f.score.gt(Some(5)) & f.name.ne("bob"))), vec![1, 2]);
    assert_eq!(ids(!Filter::all([])), Vec::<i64>::new());
    assert_eq!(ids(!Filter::any([])), vec![1, 2, 3]);
    // order_by puts None first ascending, as the comparisons do.
    let order: Vec<i64> = c.query().order_by(f.score.asc()).all().unwrap().iter().map(|p| p.id).collect();
    assert_eq!(order, vec![1, 2, 3]);
    let order: Vec<i64> = c.query().order_by(f.level.desc()).all().unwrap().iter().map(|p| p.id).collect();
    assert_eq!(order, vec![3, 2, 1]);
}

fn sorted_ids_of(c: &Collection<Person>, filter: Filter<Person>) -> Vec<i64> {
    let mut ids: Vec<i64> = c.query().filter(filter.clone()).all().unwrap().iter().map(|p| p.id).collect();
    ids.sort_unstable();
    assert_eq!(c.query().filter(filter).count().unwrap(), ids.len() as u64);
    ids
}

#[test]
fn every_filter_and_its_negation_partition_the_collection() {
    let (_db, c) = people();
    let f = Person::fields();
    let filters = [
        f.name.eq("bob"),
        f.name.ne("bob"),
        f.name.eq(None),
        f.name.in_list([Some("bob".to_string())]),
        f.name.in_list([None, Some("ann".to_string())]),
        f.name.starts_with("a"),
        f.name.gt(Some("ann".to_string())),
        f.nick.lte(Some("a".to_string())),
        f.score.lt(Some(7)),
        f.score.gte(Some(7)),
        f.score.between(Some(3), Some(8)),
        f.score.is_some(),
        f.level.gt(Some(0)),
        f.level.in_list((0..300).map(Some)),
        f.level.in_list((0..300).map(Some).chain([None])),
        f.score.lt(Some(7)) & f.name.ne("ann"),
        f.score.gte(Some(7)) | f.nick.eq("b"),
        !(f.level.lt(Some(2)) | f.name.starts_with("b")),
    ];
    for p in filters {
        let (yes, no) = (count_of(&c, p.clone()), count_of(&c, !p.clone()));
        assert_eq!(yes + no, 3, "count(p) + count(!p) == count() for {p:?}");
        assert_eq!(count_of(&c, !!p.clone()), yes, "!!p is p: {p:?}");
    }
}

#[test]
fn starts_with_finds_values_with_embedded_nuls() {
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Person>().unwrap();
    let names = ["a\0b", "a\0bc", "a\0c", "a", "ab", "\0", "\0\0x", "é\0é"];
    let docs: Vec<Person> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Person {
            id: i as i64,
            name: Some(n.to_string()),
            score: None,
            nick: Some(n.to_string()),
            level: None,
        })
        .collect();
    c.insert_many(&docs).unwrap();
    assert_eq!(c.get(0).unwrap().unwrap().name.as_deref(), Some("a\0b"), "stored with the NUL");
    let f = Person::fields();
    for prefix in ["a\0", "a\0b", "a\0bc", "\0", "\0\0", "é\0", "a", ""] {
        let want: Vec<i64> = (0..names.len() as i64).filter(|&i| names[i as usize].starts_with(prefix)).collect();
        assert_eq!(sorted_ids_of(&c, f.name.starts_with(prefix)), want, "indexed, prefix {prefix:?}");
        assert_eq!(sorted_ids_of(&c, f.nick.starts_with(prefix)), want, "JSON, prefix {prefix:?}");
        let rest: Vec<i64> = (0..names.len() as i64).filter(|i| !want.contains(i)).collect();
        assert_eq!(sorted_ids_of(&c, !f.name.starts_with(prefix)), rest, "negated, prefix {prefix:?}");
    }
    assert_eq!(sorted_ids_of(&c, f.name.eq("a\0b")), vec![0]);
}

#[test]
fn a_document_that_fails_to_decode_is_named_by_all() {
    let dir = db4_tests::TempDir::new("query-decode");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path).unwrap();
        db.collection::<Person>()
            .unwrap()
            .insert_many(&[
                Person { id: 1, name: None, score: Some(1), nick: None, level: None },
                Person { id: 2, name: None, score: Some(2), nick: None, level: None },
            ])
            .unwrap();
    }
    // A document another program wrote: `score` is text, which `Option<i64>` does not take.
    crate::common::raw(&path)
        .execute(
            "INSERT INTO people (_id, _doc) VALUES (7, '{\"id\":7,\"name\":null,\"score\":\"high\",\"level\":null}')",
            [],
        )
        .unwrap();
    let db = Db::open(&path).unwrap();
    let c = db.collection::<Person>().unwrap();
    for result in [
        c.query().all(),
        c.query().order_by(Person::fields().id.desc()).limit(1).all(),
        c.query().filter(Person::fields().id.gt(5)).first().map(|d| d.into_iter().collect()),
    ] {
        match result {
            Err(Error::Serialization { collection, id, .. }) => {
                assert_eq!(collection, "people");
                assert_eq!(id.as_deref(), Some("7"), "the error names the document");
            }
            other => panic!("expected a serialization error, got {other:?}"),
        }
    }
    assert_eq!(c.query().filter(Person::fields().id.lt(5)).count().unwrap(), 2);
}

// ---------------------------------------------------------------------------------------------
// Model-based: random filters, sorts and pages against a Vec filtered in Rust.
// ---------------------------------------------------------------------------------------------

/// A field value as SQL compares it.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum V {
    I(i64),
    F(f64),
    S(String),
}

type Getter = fn(&Item) -> Option<V>;

#[derive(Clone, Copy, Debug)]
enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

/// The model of a filter: the Rust expression over the field's `Option` value, compared with
/// `Option`'s order (`None` below every value). A field is the same variant of `V` in every
/// document, so `V`'s derived order is the field's.
#[derive(Clone, Debug)]
enum Pred {
    Cmp(Getter, Op, Option<V>),
    Between(Getter, V, V),
    In(Getter, Vec<Option<V>>),
    StartsWith(Getter, String),
    IsNull(Getter, bool),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
}

impl Pred {
    fn matches(&self, it: &Item) -> bool {
        match self {
            Pred::Cmp(get, op, v) => {
                let x = get(it);
                match op {
                    Op::Eq => x == *v,
                    Op::Ne => x != *v,
                    Op::Gt => x > *v,
                    Op::Gte => x >= *v,
                    Op::Lt => x < *v,
                    Op::Lte => x <= *v,
                }
            }
            Pred::Between(get, lo, hi) => {
                let x = get(it);
                Some(lo.clone()) <= x && x <= Some(hi.clone())
            }
            Pred::In(get, values) => values.contains(&get(it)),
            Pred::StartsWith(get, prefix) => match get(it) {
                None => false,
                Some(V::S(s)) => s.starts_with(prefix.as_str()),
                Some(other) => panic!("starts_with on {other:?}"),
            },
            Pred::IsNull(get, negated) => get(it).is_none() != *negated,
            Pred::And(all) => all.iter().all(|p| p.matches(it)),
            Pred::Or(any) => any.iter().any(|p| p.matches(it)),
            Pred::Not(p) => !p.matches(it),
        }
    }
}

const TEXT_ALPHABET: [&str; 6] = ["a", "b", "A", "%", "_", "é"];
const CATEGORIES: [&str; 5] = ["alpha", "beta", "gamma", "Alpha", "delta"];
const TAGS: [&str; 7] = ["x", "xy", "xyz", "y", "%", "_a", "Z"];

fn random_text(rng: &mut Rng, max_len: u64) -> String {
    let len = rng.below(max_len + 1);
    (0..len).map(|_| *rng.pick(&TEXT_ALPHABET)).collect()
}

fn random_item(rng: &mut Rng, id: i64) -> Item {
    Item {
        id,
        category: rng.pick(&CATEGORIES).to_string(),
        score: rng.range(-50, 50),
        rating: if rng.chance(1, 4) { None } else { Some(rng.range(0, 5)) },
        weight: rng.range(-20, 20) as f64 * 0.5,
        color: *rng.pick(&[Color::Red, Color::Green, Color::Blue]),
        tag: if rng.chance(3, 10) { None } else { Some(rng.pick(&TAGS).to_string()) },
        name: random_text(rng, 3),
        qty: rng.range(0, 20),
        note: if rng.chance(3, 10) { None } else { Some(random_text(rng, 2)) },
        level: if rng.chance(3, 10) { None } else { Some(rng.range(-3, 3)) },
        price: rng.range(0, 40) as f64 * 0.25,
        flag: rng.chance(1, 2),
        version: rng.below(5),
    }
}

/// A field with what the model needs: how to read it, how to convert a query value, and how to
/// draw one (`draw` never returns a `None` for the ordered operators).
struct Spec<T> {
    field: Field<Item, T>,
    get: Getter,
    conv: fn(&T) -> Option<V>,
    draw: fn(&mut Rng) -> T,
}

fn list_of<T>(rng: &mut Rng, draw: fn(&mut Rng) -> T) -> Vec<T> {
    let len = if rng.chance(1, 10) { 257 + rng.below(300) } else { rng.below(6) };
    (0..len).map(|_| draw(rng)).collect()
}

/// `eq`, `ne` and `in_list`: for every field.
fn equality_atom<T: Serialize + Clone + 'static>(rng: &mut Rng, s: &Spec<T>) -> (Filter<Item>, Pred) {
    match rng.below(3) {
        0 => {
            let v = (s.draw)(rng);
            (s.field.eq(v.clone()), Pred::Cmp(s.get, Op::Eq, (s.conv)(&v)))
        }
        1 => {
            let v = (s.draw)(rng);
            (s.field.ne(v.clone()), Pred::Cmp(s.get, Op::Ne, (s.conv)(&v)))
        }
        _ => {
            let values = list_of(rng, s.draw);
            let model = values.iter().map(s.conv).collect();
            (s.field.in_list(values), Pred::In(s.get, model))
        }
    }
}

/// Every operator of an ordered field.
fn ordered_atom<T: Serialize + Clone + Ordered + 'static>(rng: &mut Rng, s: &Spec<T>) -> (Filter<Item>, Pred) {
    let op = match rng.below(7) {
        0 => Op::Gt,
        1 => Op::Gte,
        2 => Op::Lt,
        3 => Op::Lte,
        4 => {
            let (lo, hi) = ((s.draw)(rng), (s.draw)(rng));
            let (mlo, mhi) = ((s.conv)(&lo).unwrap(), (s.conv)(&hi).unwrap());
            return (s.field.between(lo, hi), Pred::Between(s.get, mlo, mhi));
        }
        _ => return equality_atom(rng, s),
    };
    let v = (s.draw)(rng);
    let m = (s.conv)(&v);
    assert!(m.is_some(), "ordered operators get non-null values");
    let filter = match op {
        Op::Gt => s.field.gt(v),
        Op::Gte => s.field.gte(v),
        Op::Lt => s.field.lt(v),
        _ => s.field.lte(v),
    };
    (filter, Pred::Cmp(s.get, op, m))
}

fn opt_text(v: &Option<String>) -> Option<V> {
    v.clone().map(V::S)
}

fn opt_int(v: &Option<i64>) -> Option<V> {
    v.map(V::I)
}

fn random_atom(rng: &mut Rng) -> (Filter<Item>, Pred) {
    let f = Item::fields();
    match rng.below(16) {
        0 => ordered_atom(
            rng,
            &Spec { field: f.id, get: |i| Some(V::I(i.id)), conv: |v| Some(V::I(*v)), draw: |r| r.range(-1000, 1000) },
        ),
        1 => {
            let s = Spec {
                field: f.category,
                get: |i| Some(V::S(i.category.clone())),
                conv: |v: &String| Some(V::S(v.clone())),
                draw: |r| r.pick(&CATEGORIES).to_string(),
            };
            if rng.chance(1, 4) {
                let p = random_text(rng, 2);
                (f.category.starts_with(p.clone()), Pred::StartsWith(s.get, p))
            } else {
                ordered_atom(rng, &s)
            }
        }
        2 => ordered_atom(
            rng,
            &Spec {
                field: f.score,
                get: |i| Some(V::I(i.score)),
                conv: |v| Some(V::I(*v)),
                draw: |r| r.range(-55, 55),
            },
        ),
        3 => {
            let get: Getter = |i| i.rating.map(V::I);
            match rng.below(4) {
                0 => (f.rating.is_none(), Pred::IsNull(get, false)),
                1 => (f.rating.is_some(), Pred::IsNull(get, true)),
                2 => equality_atom(
                    rng,
                    &Spec {
                        field: f.rating,
                        get,
                        conv: opt_int,
                        draw: |r| if r.chance(1, 4) { None } else { Some(r.range(0, 6)) },
                    },
                ),
                _ => ordered_atom(rng, &Spec { field: f.rating, get, conv: opt_int, draw: |r| Some(r.range(-1, 6)) }),
            }
        }
        4 => ordered_atom(
            rng,
            &Spec {
                field: f.weight,
                get: |i| Some(V::F(i.weight)),
                conv: |v| Some(V::F(*v)),
                draw: |r| r.range(-22, 22) as f64 * 0.5,
            },
        ),
        5 => equality_atom(
            rng,
            &Spec {
                field: f.color,
                get: |i| Some(V::S(i.color.name().into())),
                conv: |v: &Color| Some(V::S(v.name().into())),
                draw: |r| *r.pick(&[Color::Red, Color::Green, Color::Blue]),
            },
        ),
        6 => {
            let get: Getter = |i| opt_text(&i.tag);
            match rng.below(5) {
                0 => (f.tag.is_none(), Pred::IsNull(get, false)),
                1 => (f.tag.is_some(), Pred::IsNull(get, true)),
                2 => {
                    let p = random_text(rng, 1);
                    (f.tag.starts_with(p.clone()), Pred::StartsWith(get, p))
                }
                3 => equality_atom(
                    rng,
                    &Spec {
                        field: f.tag,
                        get,
                        conv: opt_text,
                        draw: |r| if r.chance(1, 4) { None } else { Some(r.pick(&TAGS).to_string()) },
                    },
                ),
                _ => ordered_atom(
                    rng,
                    &Spec { field: f.tag, get, conv: opt_text, draw: |r| Some(r.pick(&TAGS).to_string()) },
                ),
            }
        }
        7 => {
            let s = Spec {
                field: f.name,
                get: |i| Some(V::S(i.name.clone())),
                conv: |v: &String| Some(V::S(v.clone())),
                draw: |r| random_text(r, 3),
            };
            if rng.chance(1, 3) {
                let p = random_text(rng, 2);
                (f.name.starts_with(p.clone()), Pred::StartsWith(s.get, p))
            } else {
                ordered_atom(rng, &s)
            }
        }
        8 => ordered_atom(
            rng,
            &Spec { field: f.qty, get: |i| Some(V::I(i.qty)), conv: |v| Some(V::I(*v)), draw: |r| r.range(-1, 21) },
        ),
        9 => {
            let get: Getter = |i| opt_text(&i.note);
            match rng.below(5) {
                0 => (f.note.is_none(), Pred::IsNull(get, false)),
                1 => (f.note.is_some(), Pred::IsNull(get, true)),
                2 => {
                    let p = random_text(rng, 1);
                    (f.note.starts_with(p.clone()), Pred::StartsWith(get, p))
                }
                3 => equality_atom(
                    rng,
                    &Spec {
                        field: f.note,
                        get,
                        conv: opt_text,
                        draw: |r| if r.chance(1, 4) { None } else { Some(random_text(r, 2)) },
                    },
                ),
                _ => ordered_atom(rng, &Spec { field: f.note, get, conv: opt_text, draw: |r| Some(random_text(r, 2)) }),
            }
        }
        10 => {
            let get: Getter = |i| i.level.map(V::I);
            match rng.below(4) {
                0 => (f.level.is_none(), Pred::IsNull(get, false)),
                1 => (f.level.is_some(), Pred::IsNull(get, true)),
                2 => equality_atom(
                    rng,
                    &Spec {
                        field: f.level,
                        get,
                        conv: opt_int,
                        draw: |r| if r.chance(1, 4) { None } else { Some(r.range(-4, 4)) },
                    },
                ),
                _ => ordered_atom(rng, &Spec { field: f.level, get, conv: opt_int, draw: |r| Some(r.range(-4, 4)) }),
            }
        }
        11 => ordered_atom(
            rng,
            &Spec {
                field: f.price,
                get: |i| Some(V::F(i.price)),
                conv: |v| Some(V::F(*v)),
                draw: |r| r.range(-1, 41) as f64 * 0.25,
            },
        ),
        12 => ordered_atom(
            rng,
            &Spec {
                field: f.flag,
                get: |i| Some(V::I(i64::from(i.flag))),
                conv: |v| Some(V::I(i64::from(*v))),
                draw: |r| r.chance(1, 2),
            },
        ),
        13 => ordered_atom(
            rng,
            &Spec {
                field: f.version,
                get: |i| Some(V::I(i.version as i64)),
                conv: |v| Some(V::I(*v as i64)),
                draw: |r| r.below(6),
            },
        ),
        // Operators on the id through a long list of existing and missing ids.
        14 => {
            let values: Vec<i64> = (0..300).map(|_| rng.range(-1000, 1000)).collect();
            let model = values.iter().map(|v| Some(V::I(*v))).collect();
            (f.id.in_list(values), Pred::In(|i| Some(V::I(i.id)), model))
        }
        _ => {
            let values: Vec<Option<i64>> =
                (0..300).map(|_| if rng.chance(1, 50) { None } else { Some(rng.range(3, 400)) }).collect();
            let model = values.iter().map(opt_int).collect();
            (f.level.in_list(values), Pred::In(|i| i.level.map(V::I), model))
        }
    }
}

/// A flat list of 30 to 120 conditions: past the parameter limit, so that values spill into the
/// JSON array parameter.
fn wide_filter(rng: &mut Rng) -> (Filter<Item>, Pred) {
    let n = 30 + rng.below(91);
    let (fs, ps): (Vec<_>, Vec<_>) = (0..n).map(|_| random_atom(rng)).unzip();
    if rng.chance(1, 2) { (Filter::any(fs), Pred::Or(ps)) } else { (Filter::all(fs), Pred::And(ps)) }
}

fn random_filter(rng: &mut Rng, depth: u32) -> (Filter<Item>, Pred) {
    if depth == 3 && rng.chance(1, 25) {
        return wide_filter(rng);
    }
    if depth == 0 || rng.chance(2, 5) {
        return random_atom(rng);
    }
    match rng.below(8) {
        0 => {
            let (a, pa) = random_filter(rng, depth - 1);
            let (b, pb) = random_filter(rng, depth - 1);
            (a & b, Pred::And(vec![pa, pb]))
        }
        1 => {
            let (a, pa) = random_filter(rng, depth - 1);
            let (b, pb) = random_filter(rng, depth - 1);
            (a | b, Pred::Or(vec![pa, pb]))
        }
        2 => {
            let (a, pa) = random_filter(rng, depth - 1);
            (!a, Pred::Not(Box::new(pa)))
        }
        3 => {
            let (a, pa) = random_filter(rng, depth - 1);
            (a.not(), Pred::Not(Box::new(pa)))
        }
        4 => {
            let (a, pa) = random_filter(rng, depth - 1);
            let (b, pb) = random_filter(rng, depth - 1);
            let (c, pc) = random_filter(rng, depth - 1);
            (a.and(b).and(c), Pred::And(vec![pa, pb, pc]))
        }
        5 => {
            let (a, pa) = random_filter(rng, depth - 1);
            let (b, pb) = random_filter(rng, depth - 1);
            let (c, pc) = random_filter(rng, depth - 1);
            (a.or(b).or(c), Pred::Or(vec![pa, pb, pc]))
        }
        6 => {
            let n = rng.below(4);
            let (fs, ps): (Vec<_>, Vec<_>) = (0..n).map(|_| random_filter(rng, depth - 1)).unzip();
            (Filter::all(fs), Pred::And(ps))
        }
        _ => {
            let n = rng.below(4);
            let (fs, ps): (Vec<_>, Vec<_>) = (0..n).map(|_| random_filter(rng, depth - 1)).unzip();
            (Filter::any(fs), Pred::Or(ps))
        }
    }
}

/// A sort key: db4's and the model's.
fn random_order(rng: &mut Rng) -> (db4::Order<Item>, Getter, bool) {
    let f = Item::fields();
    let desc = rng.chance(1, 2);
    macro_rules! key {
        ($field:expr, $get:expr) => {{
            let get: Getter = $get;
            (if desc { $field.desc() } else { $field.asc() }, get, desc)
        }};
    }
    match rng.below(13) {
        0 => key!(f.category, |i| Some(V::S(i.category.clone()))),
        1 => key!(f.score, |i| Some(V::I(i.score))),
        2 => key!(f.rating, |i| i.rating.map(V::I)),
        3 => key!(f.weight, |i| Some(V::F(i.weight))),
        4 => key!(f.color, |i| Some(V::S(i.color.name().into()))),
        5 => key!(f.tag, |i| opt_text(&i.tag)),
        6 => key!(f.name, |i| Some(V::S(i.name.clone()))),
        7 => key!(f.qty, |i| Some(V::I(i.qty))),
        8 => key!(f.note, |i| opt_text(&i.note)),
        9 => key!(f.level, |i| i.level.map(V::I)),
        10 => key!(f.price, |i| Some(V::F(i.price))),
        11 => key!(f.flag, |i| Some(V::I(i64::from(i.flag)))),
        _ => key!(f.version, |i| Some(V::I(i.version as i64))),
    }
}

/// SQLite's order: NULL first, then values; a descending key reverses the whole comparison.
fn compare(a: &Item, b: &Item, keys: &[(Getter, bool)]) -> Ordering {
    for (get, desc) in keys {
        let (x, y) = (get(a), get(b));
        let o = match (&x, &y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(x), Some(y)) => x.partial_cmp(y).expect("no NaN in the dataset"),
        };
        let o = if *desc { o.reverse() } else { o };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.id.cmp(&b.id)
}

fn random_dataset(rng: &mut Rng, n: usize) -> Vec<Item> {
    let mut seen = std::collections::HashSet::new();
    let mut docs = Vec::with_capacity(n);
    while docs.len() < n {
        let id = rng.range(-1000, 1000);
        if seen.insert(id) {
            docs.push(random_item(rng, id));
        }
    }
    docs
}

/// A random query: db4's, and the ids the model expects from `all()`.
struct RandomQuery {
    filters: Vec<(Filter<Item>, Pred)>,
    order: Vec<(db4::Order<Item>, Getter, bool)>,
    limit: Option<usize>,
    offset: usize,
}

impl RandomQuery {
    fn new(rng: &mut Rng) -> Self {
        let filters = (0..rng.below(3)).map(|_| random_filter(rng, 3)).collect();
        let order = (0..rng.below(4)).map(|_| random_order(rng)).collect();
        let limit = if rng.chance(1, 3) { Some(rng.below(40) as usize) } else { None };
        let offset = if rng.chance(1, 3) { rng.below(60) as usize } else { 0 };
        Self { filters, order, limit, offset }
    }

    fn build<'c>(&self, c: &'c Collection<Item>) -> db4::Query<'c, Item> {
        let mut q = c.query();
        for (f, _) in &self.filters {
            q = q.filter(f.clone());
        }
        for (o, _, _) in &self.order {
            q = q.order_by(*o);
        }
        // Ties are broken by id so that the expected page is well defined.
        q = q.order_by(Item::fields().id.asc());
        if let Some(n) = self.limit {
            q = q.limit(n);
        }
        if self.offset > 0 {
            q = q.offset(self.offset);
        }
        q
    }

    fn expected<'d>(&self, docs: &'d [Item]) -> Vec<&'d Item> {
        let mut v: Vec<&Item> = docs.iter().filter(|d| self.filters.iter().all(|(_, p)| p.matches(d))).collect();
        let keys: Vec<(Getter, bool)> = self.order.iter().map(|(_, g, d)| (*g, *d)).collect();
        v.sort_by(|a, b| compare(a, b, &keys));
        v.into_iter().skip(self.offset).take(self.limit.unwrap_or(usize::MAX)).collect()
    }
}

impl std::fmt::Debug for RandomQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RandomQuery")
            .field("filters", &self.filters.iter().map(|(f, _)| f).collect::<Vec<_>>())
            .field("order", &self.order.iter().map(|(o, _, _)| o).collect::<Vec<_>>())
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .finish()
    }
}

/// `field.ne(v)` and `!field.eq(v)` for a random field and value (`None` included), with the
/// model of `ne`.
fn ne_and_not_eq(rng: &mut Rng) -> (Filter<Item>, Filter<Item>, Pred) {
    fn pair<T: Serialize + Clone>(
        field: Field<Item, T>,
        get: Getter,
        conv: fn(&T) -> Option<V>,
        v: T,
    ) -> (Filter<Item>, Filter<Item>, Pred) {
        (field.ne(v.clone()), !field.eq(v.clone()), Pred::Cmp(get, Op::Ne, conv(&v)))
    }
    let f = Item::fields();
    let some = |rng: &mut Rng| !rng.chance(1, 4);
    match rng.below(6) {
        0 => {
            let v = some(rng).then(|| rng.range(0, 5));
            pair(f.rating, |i| i.rating.map(V::I), opt_int, v)
        }
        1 => {
            let v = some(rng).then(|| rng.pick(&TAGS).to_string());
            pair(f.tag, |i| opt_text(&i.tag), opt_text, v)
        }
        2 => {
            let v = some(rng).then(|| random_text(rng, 2));
            pair(f.note, |i| opt_text(&i.note), opt_text, v)
        }
        3 => {
            let v = some(rng).then(|| rng.range(-3, 3));
            pair(f.level, |i| i.level.map(V::I), opt_int, v)
        }
        4 => pair(f.qty, |i| Some(V::I(i.qty)), |v| Some(V::I(*v)), rng.range(0, 20)),
        _ => pair(
            f.category,
            |i| Some(V::S(i.category.clone())),
            |v: &String| Some(V::S(v.clone())),
            rng.pick(&CATEGORIES).to_string(),
        ),
    }
}

fn ids_of(c: &Collection<Item>, filter: Filter<Item>) -> Vec<i64> {
    let mut got = ids(&c.query().filter(filter).all().unwrap());
    got.sort_unstable();
    got
}

/// Every filter and its negation split the collection, as the model says; and `ne` is `!eq`,
/// also on `None`. (Counting is cheap: only every few rounds are the documents compared.)
fn check_negation(
    c: &Collection<Item>,
    rng: &mut Rng,
    total: u64,
    model: &dyn Fn(&Pred) -> Vec<i64>,
    round: usize,
    wide: &mut usize,
) {
    let (p, pred) = random_filter(rng, 3);
    *wide += usize::from(matches!(&pred, Pred::And(v) | Pred::Or(v) if v.len() >= 30));
    let not_pred = Pred::Not(Box::new(pred));
    let (yes, no) = (c.query().filter(p.clone()).count().unwrap(), c.query().filter(!p.clone()).count().unwrap());
    assert_eq!(yes + no, total, "round {round}: count(p) + count(!p) for {p:?}");
    assert_eq!(no, model(&not_pred).len() as u64, "round {round}: count(!p) for {p:?}");
    let (ne, not_eq, pred) = ne_and_not_eq(rng);
    let want = model(&pred);
    assert_eq!(c.query().filter(ne.clone()).count().unwrap(), want.len() as u64, "round {round}: {ne:?}");
    assert_eq!(c.query().filter(not_eq.clone()).count().unwrap(), want.len() as u64, "round {round}: {not_eq:?}");
    if round.is_multiple_of(16) {
        assert_eq!(ids_of(c, !p.clone()), model(&not_pred), "round {round}: !{p:?}");
        assert_eq!(ids_of(c, ne), want, "round {round}");
        assert_eq!(ids_of(c, not_eq), want, "round {round}");
    }
}

#[test]
fn random_queries_match_a_model() {
    let mut rng = Rng::new(0xDB4_0001);
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Item>().unwrap();
    let docs = random_dataset(&mut rng, 300);
    c.insert_many(&docs).unwrap();
    let total = docs.len() as u64;
    let model = |pred: &Pred| -> Vec<i64> {
        let mut v: Vec<i64> = docs.iter().filter(|d| pred.matches(d)).map(|d| d.id).collect();
        v.sort_unstable();
        v
    };
    let mut nonempty = 0;
    let mut wide = 0;
    for round in 0..1500_usize {
        if round.is_multiple_of(2) {
            check_negation(&c, &mut rng, total, &model, round, &mut wide);
        }
        let q = RandomQuery::new(&mut rng);
        let expected: Vec<i64> = q.expected(&docs).iter().map(|d| d.id).collect();
        let got = q.build(&c).all().unwrap_or_else(|e| panic!("round {round}: {q:?}: {e}"));
        assert_eq!(ids(&got), expected, "round {round}: {q:?}");
        if !expected.is_empty() {
            nonempty += 1;
            // The returned documents are the stored ones, not just the right ids.
            let by_id: std::collections::HashMap<i64, &Item> = docs.iter().map(|d| (d.id, d)).collect();
            assert!(got.iter().all(|d| by_id[&d.id] == d), "round {round}: documents differ");
        }
        let n = q.build(&c).count().unwrap();
        assert_eq!(n, expected.len() as u64, "round {round}: count() of {q:?}");
        if q.limit != Some(0) {
            let first = q.build(&c).first().unwrap().map(|d| d.id);
            assert_eq!(first, expected.first().copied(), "round {round}: first() of {q:?}");
        }
    }
    assert!(nonempty > 300, "the generator mostly builds queries that match something ({nonempty})");
    assert!(wide > 10, "the generator builds filters past the parameter limit ({wide})");
}

#[test]
fn random_deletes_match_a_model() {
    let mut rng = Rng::new(0xDB4_0002);
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Item>().unwrap();
    let mut docs = random_dataset(&mut rng, 250);
    c.insert_many(&docs).unwrap();
    let mut deleted = 0;
    for round in 0..200 {
        let q = RandomQuery::new(&mut rng);
        let doomed: Vec<i64> = q.expected(&docs).iter().map(|d| d.id).collect();
        let n = q.build(&c).delete().unwrap_or_else(|e| panic!("round {round}: {q:?}: {e}"));
        assert_eq!(n, doomed.len() as u64, "round {round}: delete() of {q:?}");
        deleted += n;
        docs.retain(|d| !doomed.contains(&d.id));
        let mut stored = ids(&c.query().all().unwrap());
        stored.sort_unstable();
        let mut model: Vec<i64> = ids(&docs);
        model.sort_unstable();
        assert_eq!(stored, model, "round {round}: after delete() of {q:?}");
        // Refill so that later rounds have something to delete.
        if docs.len() < 100 {
            let fresh: Vec<Item> = random_dataset(&mut rng, 400)
                .into_iter()
                .filter(|d| !model.contains(&d.id))
                .take(150)
                .map(|mut d| {
                    d.version = rng.below(5);
                    d
                })
                .collect();
            c.insert_many(&fresh).unwrap();
            docs.extend(fresh);
        }
    }
    assert!(deleted > 200, "the rounds deleted documents ({deleted})");
}
