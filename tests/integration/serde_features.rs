//! serde attributes on documents: `rename`, `rename_all`, `skip`, `skip_serializing_if`, raw
//! identifiers, optional fields, enums and nested structs, stored and queried.

use crate::common;
use db4::prelude::*;
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Active,
    Suspended,
    Closed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Tier {
    Free,
    Pro,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
enum Shape {
    Point,
    Circle(f64),
    Rect { w: i64, h: i64 },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Address {
    city: String,
    zip: String,
    lines: Vec<String>,
    geo: Option<(f64, f64)>,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[db4(collection = "customers")]
struct Customer {
    #[id]
    customer_id: String,
    #[index]
    display_name: String,
    #[serde(rename = "mail")]
    #[index]
    email_address: Option<String>,
    #[index]
    account_status: Status,
    #[index]
    previous_status: Option<Status>,
    #[index]
    tier: Tier,
    #[range_index]
    signup_day: i64,
    view_count: i64,
    #[serde(rename = "odd key.with $pecial [chars]")]
    odd_key: i64,
    address: Address,
    #[index]
    home: Address,
    nick_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[index]
    referrer: Option<String>,
    #[serde(skip)]
    cache: u32,
    r#type: String,
    shape: Shape,
    #[index]
    indexed_shape: Shape,
    #[version]
    revision_number: u64,
}

fn address(city: &str, n: i64) -> Address {
    Address {
        city: city.to_owned(),
        zip: format!("{n:05}"),
        lines: vec![format!("{n} Main St"), "c/o \"Bob\"\nfloor 2".into()],
        geo: if n % 2 == 0 { Some((n as f64 / 4.0, -1.5)) } else { None },
    }
}

fn customer(n: i64) -> Customer {
    let statuses = [Status::Active, Status::Suspended, Status::Closed];
    Customer {
        customer_id: format!("cust-{n}"),
        display_name: format!("Name {}", n % 4),
        email_address: if n % 3 == 0 { None } else { Some(format!("u{n}@example.com")) },
        account_status: statuses[n as usize % 3],
        previous_status: if n % 2 == 0 { None } else { Some(statuses[(n as usize + 1) % 3]) },
        tier: if n < 5 { Tier::Free } else { Tier::Pro },
        signup_day: 19_000 + n,
        view_count: n * 10,
        odd_key: n % 2,
        address: address(["Zürich", "Oslo"][n as usize % 2], n),
        home: address("Home", n % 3),
        nick_name: if n % 2 == 0 { Some(format!("nick{n}")) } else { None },
        referrer: if n % 5 == 0 { Some("ads".into()) } else { None },
        cache: 0,
        r#type: if n % 2 == 0 { "person".into() } else { "company".into() },
        shape: match n % 3 {
            0 => Shape::Point,
            1 => Shape::Circle(n as f64 + 0.5),
            _ => Shape::Rect { w: n, h: 2 },
        },
        indexed_shape: if n % 2 == 0 { Shape::Circle(1.5) } else { Shape::Rect { w: 1, h: n % 3 } },
        revision_number: 0,
    }
}

fn setup(path: &std::path::Path) -> (Db, Collection<Customer>, Vec<Customer>) {
    let db = Db::open(path).unwrap();
    let c = db.collection::<Customer>().unwrap();
    let docs: Vec<Customer> = (0..10).map(customer).collect();
    c.insert_many(&docs).unwrap();
    (db, c, docs)
}

fn ids(v: &[Customer]) -> Vec<String> {
    let mut ids: Vec<String> = v.iter().map(|c| c.customer_id.clone()).collect();
    ids.sort();
    ids
}

fn expect(docs: &[Customer], pred: impl Fn(&Customer) -> bool) -> Vec<String> {
    ids(&docs.iter().filter(|d| pred(d)).cloned().collect::<Vec<_>>())
}

#[test]
fn documents_are_stored_under_their_serde_names() {
    let dir = TempDir::new("serde-names");
    let path = dir.join("db.sqlite");
    let (_db, _c, _docs) = setup(&path);
    let stored = common::stored_docs(&path, "customers");
    assert_eq!(stored.len(), 10);
    let (id, doc) = &stored[0];
    assert_eq!(id, "cust-0");
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "customerId",
        "displayName",
        "mail",
        "accountStatus",
        "previousStatus",
        "tier",
        "signupDay",
        "viewCount",
        "odd key.with $pecial [chars]",
        "address",
        "home",
        "nickName",
        "referrer",
        "type",
        "shape",
        "indexedShape",
        "revisionNumber",
    ] {
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert!(!keys.contains(&"cache"), "skipped fields are not stored");
    assert_eq!(doc["tier"], "free");
    assert_eq!(doc["accountStatus"], "Active");
    // Index columns are named after the Rust field (plus a hash of the serialized key when
    // serde renames it) and hold the serialized value.
    let columns = common::column_names(&path, "customers");
    for col in ["f_display_name", "f_email_address", "f_account_status", "f_home", "f_indexed_shape", "f_referrer"] {
        assert!(columns.iter().any(|c| c == col || c.starts_with(&format!("{col}_"))), "{col} in {columns:?}");
    }
    let status = columns.iter().find(|c| c.starts_with("f_account_status")).expect("status column");
    assert_eq!(
        common::scalar(
            &path,
            &format!("SELECT count(*) FROM customers WHERE \"{status}\" = json_extract(_doc, '$.accountStatus')")
        ),
        10
    );
    assert_eq!(common::scalar(&path, "SELECT count(*) FROM customers WHERE f_referrer IS NOT NULL"), 2);
}

#[test]
fn round_trips_keep_every_field() {
    let dir = TempDir::new("serde-roundtrip");
    let (_db, c, docs) = setup(&dir.join("db.sqlite"));
    for d in &docs {
        assert_eq!(c.get(&d.customer_id).unwrap().as_ref(), Some(d));
    }
    // `#[serde(skip)]` fields come back as their default.
    let mut cached = customer(20);
    cached.cache = 42;
    c.insert(&cached).unwrap();
    assert_eq!(c.get("cust-20").unwrap().unwrap().cache, 0);
}

#[test]
fn queries_address_fields_by_their_serde_names() {
    let dir = TempDir::new("serde-queries");
    let (_db, c, docs) = setup(&dir.join("db.sqlite"));
    let f = Customer::fields();
    let run = |filter: Filter<Customer>| ids(&c.query().filter(filter).all().unwrap());

    // rename_all + #[index]
    assert_eq!(run(f.display_name.eq("Name 1")), expect(&docs, |d| d.display_name == "Name 1"));
    assert_eq!(run(f.display_name.starts_with("Name")), expect(&docs, |_| true));
    // rename + #[index] on an Option
    assert_eq!(run(f.email_address.eq("u4@example.com")), vec!["cust-4".to_string()]);
    assert_eq!(run(f.email_address.is_none()), expect(&docs, |d| d.email_address.is_none()));
    // Enums, plain and renamed, indexed and optional.
    assert_eq!(run(f.account_status.eq(Status::Suspended)), expect(&docs, |d| d.account_status == Status::Suspended));
    assert_eq!(
        run(f.account_status.in_list([Status::Active, Status::Closed])),
        expect(&docs, |d| d.account_status != Status::Suspended)
    );
    assert_eq!(run(f.account_status.ne(Status::Active)), expect(&docs, |d| d.account_status != Status::Active));
    assert_eq!(
        run(f.previous_status.eq(Some(Status::Closed))),
        expect(&docs, |d| d.previous_status == Some(Status::Closed))
    );
    assert_eq!(run(f.previous_status.is_none()), expect(&docs, |d| d.previous_status.is_none()));
    assert_eq!(run(f.tier.eq(Tier::Pro)), expect(&docs, |d| d.tier == Tier::Pro));
    // Range index under rename_all.
    assert_eq!(run(f.signup_day.between(19_002, 19_004)), expect(&docs, |d| (19_002..=19_004).contains(&d.signup_day)));
    // Non-indexed fields are read through the document with their serde key.
    assert_eq!(run(f.view_count.gt(50)), expect(&docs, |d| d.view_count > 50));
    assert_eq!(run(f.odd_key.eq(1)), expect(&docs, |d| d.odd_key == 1));
    assert_eq!(run(f.nick_name.is_some()), expect(&docs, |d| d.nick_name.is_some()));
    assert_eq!(run(f.nick_name.eq("nick4")), vec!["cust-4".to_string()]);
    assert_eq!(run(f.r#type.eq("company")), expect(&docs, |d| d.r#type == "company"));
    // A key left out by skip_serializing_if reads as None.
    assert_eq!(run(f.referrer.is_none()), expect(&docs, |d| d.referrer.is_none()));
    assert_eq!(run(f.referrer.eq("ads")), expect(&docs, |d| d.referrer.is_some()));
    // Sorting by renamed fields.
    let sorted: Vec<i64> =
        c.query().order_by(f.view_count.desc()).limit(3).all().unwrap().iter().map(|d| d.view_count).collect();
    assert_eq!(sorted, vec![90, 80, 70]);
    let sorted: Vec<Status> = c
        .query()
        .order_by(f.account_status.asc())
        .order_by(f.signup_day.asc())
        .all()
        .unwrap()
        .iter()
        .map(|d| d.account_status)
        .collect();
    let mut expected: Vec<Status> = docs.iter().map(|d| d.account_status).collect();
    expected.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(sorted, expected, "enums sort by their serialized name");
}

#[test]
fn nested_structs_and_data_enums_compare_whole() {
    let dir = TempDir::new("serde-nested");
    let (_db, c, docs) = setup(&dir.join("db.sqlite"));
    let f = Customer::fields();
    let run = |filter: Filter<Customer>| ids(&c.query().filter(filter).all().unwrap());
    // Indexed nested struct.
    assert_eq!(run(f.home.eq(address("Home", 1))), expect(&docs, |d| d.home == address("Home", 1)));
    assert_eq!(run(f.home.ne(address("Home", 1))), expect(&docs, |d| d.home != address("Home", 1)));
    assert_eq!(
        run(f.home.in_list([address("Home", 0), address("Home", 2)])),
        expect(&docs, |d| d.home != address("Home", 1))
    );
    // Indexed enum with data.
    assert_eq!(run(f.indexed_shape.eq(Shape::Circle(1.5))), expect(&docs, |d| d.indexed_shape == Shape::Circle(1.5)));
    assert_eq!(
        run(f.indexed_shape.eq(Shape::Rect { w: 1, h: 2 })),
        expect(&docs, |d| d.indexed_shape == Shape::Rect { w: 1, h: 2 })
    );
    assert!(!run(f.indexed_shape.eq(Shape::Circle(1.5))).is_empty());
}

#[test]
fn non_indexed_nested_values_compare_whole() {
    let dir = TempDir::new("serde-nested-json");
    let (_db, c, docs) = setup(&dir.join("db.sqlite"));
    let f = Customer::fields();
    let run = |filter: Filter<Customer>| ids(&c.query().filter(filter).all().unwrap());
    // Compared through json_extract of the stored document.
    let a3 = docs[3].address.clone();
    assert_eq!(run(f.address.eq(a3)), vec!["cust-3".to_string()]);
    let a4 = docs[4].address.clone();
    assert_eq!(run(f.address.eq(a4)), vec!["cust-4".to_string()], "with floats and escapes inside");
    assert_eq!(run(f.shape.eq(Shape::Point)), expect(&docs, |d| d.shape == Shape::Point));
    assert_eq!(run(f.shape.eq(Shape::Rect { w: 5, h: 2 })), vec!["cust-5".to_string()]);
    assert_eq!(run(f.shape.eq(Shape::Circle(7.5))), vec!["cust-7".to_string()]);
}

#[test]
fn version_and_indexes_work_under_renames() {
    let dir = TempDir::new("serde-version");
    let (_db, c, _docs) = setup(&dir.join("db.sqlite"));
    let f = Customer::fields();
    let mut d = c.get("cust-2").unwrap().unwrap();
    d.display_name = "Renamed".into();
    d.email_address = None;
    d.account_status = Status::Closed;
    c.update(&d).unwrap();
    assert_eq!(c.get("cust-2").unwrap().unwrap().revision_number, 1);
    assert!(matches!(c.update(&d), Err(Error::Conflict { expected: 0, actual: 1, .. })));
    assert_eq!(ids(&c.query().filter(f.display_name.eq("Renamed")).all().unwrap()), vec!["cust-2".to_string()]);
    assert_eq!(c.query().filter(f.revision_number.eq(1)).count().unwrap(), 1);
    assert_eq!(c.query().filter(f.email_address.eq("u2@example.com")).count().unwrap(), 0);
}

/// Other `rename_all` rules put non-indexed fields under other keys.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
#[db4(collection = "kebab")]
struct Kebab {
    #[id]
    item_id: i64,
    #[index]
    long_name: String,
    view_count: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[db4(collection = "screaming")]
struct Screaming {
    #[id]
    item_id: i64,
    view_count: i64,
    #[serde(rename = "Custom")]
    other_field: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all(serialize = "PascalCase", deserialize = "PascalCase"))]
#[db4(collection = "pascal")]
struct Pascal {
    #[id]
    item_id: i64,
    view_count: i64,
}

#[test]
fn other_rename_all_rules() -> Result<()> {
    let db = Db::open_in_memory()?;
    let k = db.collection::<Kebab>()?;
    k.insert_many(
        &(0..5).map(|i| Kebab { item_id: i, long_name: format!("n{i}"), view_count: i * 2 }).collect::<Vec<_>>(),
    )?;
    assert_eq!(k.query().filter(Kebab::fields().view_count.gte(4)).count()?, 3);
    assert_eq!(k.query().filter(Kebab::fields().long_name.eq("n1")).count()?, 1);
    assert_eq!(k.query().order_by(Kebab::fields().view_count.desc()).first()?.map(|d| d.item_id), Some(4));

    let s = db.collection::<Screaming>()?;
    s.insert_many(&(0..5).map(|i| Screaming { item_id: i, view_count: i, other_field: -i }).collect::<Vec<_>>())?;
    assert_eq!(s.query().filter(Screaming::fields().view_count.lt(2)).count()?, 2);
    assert_eq!(s.query().filter(Screaming::fields().other_field.eq(-3)).count()?, 1);

    let p = db.collection::<Pascal>()?;
    p.insert_many(&(0..5).map(|i| Pascal { item_id: i, view_count: i }).collect::<Vec<_>>())?;
    assert_eq!(p.query().filter(Pascal::fields().view_count.ne(2)).count()?, 4);
    assert_eq!(p.query().filter(Pascal::fields().item_id.gt(2)).count()?, 2);
    Ok(())
}

/// A field name that is not snake case (so the generated `LowerRuleFields` is allowed it too).
#[allow(non_snake_case)]
mod camel_field {
    use db4::Document;
    use serde::{Deserialize, Serialize};

    /// serde names that db4 must compute exactly as serde does.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[serde(rename_all = "lowercase")]
    #[db4(collection = "lower_rule")]
    pub struct LowerRule {
        #[id]
        pub id: i64,
        pub viewCount: i64,
    }
}
use camel_field::LowerRule;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "UPPERCASE")]
#[db4(collection = "upper_rule")]
struct UpperRule {
    #[id]
    id: i64,
    café: i64,
}

#[test]
fn rename_all_rules_match_serde_exactly() -> Result<()> {
    let db = Db::open_in_memory()?;
    let l = db.collection::<LowerRule>()?;
    l.insert(&LowerRule { id: 1, viewCount: 3 })?;
    // serde leaves field names as they are under "lowercase": the key is `viewCount`.
    assert_eq!(serde_json::to_value(LowerRule { id: 1, viewCount: 3 }).unwrap()["viewCount"], 3);
    assert_eq!(l.query().filter(LowerRule::fields().viewCount.eq(3)).count()?, 1);
    let u = db.collection::<UpperRule>()?;
    u.insert(&UpperRule { id: 1, café: 3 })?;
    // serde upper-cases ASCII letters only: the key is `CAFé`.
    assert_eq!(serde_json::to_value(UpperRule { id: 1, café: 3 }).unwrap()["CAFé"], 3);
    assert_eq!(u.query().filter(UpperRule::fields().café.eq(3)).count()?, 1);
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "odd_keys")]
struct OddKeys {
    #[id]
    id: i64,
    #[serde(rename = "it's")]
    quote: i64,
    #[serde(rename = "ключ")]
    cyrillic: i64,
}

#[test]
fn unusual_serde_keys_are_addressable() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<OddKeys>()?;
    c.insert(&OddKeys { id: 1, quote: 5, cyrillic: 6 })?;
    let f = OddKeys::fields();
    assert_eq!(c.query().filter(f.quote.eq(5)).count()?, 1);
    assert_eq!(c.query().filter(f.cyrillic.eq(6)).count()?, 1);
    assert_eq!(c.query().order_by(f.cyrillic.desc()).first()?.map(|d| d.id), Some(1));
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "floats32")]
struct Floats32 {
    #[id]
    id: i64,
    #[index]
    indexed: f32,
    plain: f32,
}

#[test]
fn f32_indexed_fields_compare_exactly() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Floats32>()?;
    c.insert_many(&[Floats32 { id: 1, indexed: 0.1, plain: 0.1 }, Floats32 { id: 2, indexed: 0.5, plain: 0.5 }])?;
    let f = Floats32::fields();
    assert_eq!(c.query().filter(f.indexed.eq(0.1f32)).count()?, 1);
    assert_eq!(c.query().filter(f.indexed.lt(0.1f32)).count()?, 0);
    assert_eq!(c.query().filter(f.indexed.gte(0.1f32)).count()?, 2);
    // Exactly representable values work through the document too.
    assert_eq!(c.query().filter(f.plain.eq(0.5f32)).count()?, 1);
    assert_eq!(c.get(1)?.map(|d| d.plain), Some(0.1));
    Ok(())
}

#[test]
fn f32_non_indexed_fields_compare_exactly() -> Result<()> {
    let db = Db::open_in_memory()?;
    let c = db.collection::<Floats32>()?;
    c.insert(&Floats32 { id: 1, indexed: 0.1, plain: 0.1 })?;
    let f = Floats32::fields();
    assert_eq!(c.query().filter(f.plain.eq(0.1f32)).count()?, 1, "eq(0.1) finds the document holding 0.1");
    assert_eq!(c.query().filter(f.plain.lt(0.1f32)).count()?, 0, "0.1 is not less than 0.1");
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "floats64")]
struct Floats64 {
    #[id]
    id: i64,
    value: f64,
}

#[test]
fn every_f64_reads_back_bit_for_bit() -> Result<()> {
    // Without serde_json's exact float parsing, about a third of all bit patterns came back one
    // unit in the last place off (this one among them).
    let db = Db::open_in_memory()?;
    let c = db.collection::<Floats64>()?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut values = vec![-1.920_957_127_267_448_6e111, f64::MIN_POSITIVE, f64::MAX, -0.0, 5e-324];
    while values.len() < 2000 {
        // xorshift over the bit patterns; non-finite ones cannot be stored at all.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = f64::from_bits(x);
        if v.is_finite() {
            values.push(v);
        }
    }
    let docs: Vec<Floats64> = values.iter().enumerate().map(|(i, &value)| Floats64 { id: i as i64, value }).collect();
    c.insert_many(&docs)?;
    for doc in c.query().all()? {
        assert_eq!(doc.value.to_bits(), values[doc.id as usize].to_bits(), "document {}", doc.id);
    }
    Ok(())
}
