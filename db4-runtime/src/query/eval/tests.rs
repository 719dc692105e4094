//! Differential tests: random documents and filters, each answered by a real SQLite query
//! and by the evaluator (over a parsed document, over the document's text and through the
//! typed API), which must return the same documents; random sort orders, which must sort
//! as `order_by` does.

use super::*;
use crate::collection::Collection;
use crate::db::Db;
use crate::query::filter::Field;
use crate::schema::IdKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    y: String,
}

/// A field holding values of every JSON kind, to compare across storage classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Any {
    Int(i64),
    Real(f64),
    Text(String),
    Bool(bool),
    List(Vec<i64>),
    Obj(Point),
}

impl crate::schema::Ordered for Any {}
impl crate::schema::TextField for Option<Any> {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, db4_derive::Document)]
#[db4(crate = "crate", collection = "rows")]
struct Row {
    #[id]
    id: i64,
    #[index]
    tag: Option<String>,
    #[range_index]
    n: Option<i64>,
    m: Option<i64>,
    /// `None` is a missing key rather than a JSON null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gone: Option<i64>,
    /// Indexed under a key that is not its name: a hashed column name.
    #[range_index]
    #[serde(rename = "f-idx")]
    fi: Option<f64>,
    f: Option<f64>,
    #[range_index]
    s: String,
    t: Option<String>,
    #[index]
    b: bool,
    ob: Option<bool>,
    #[range_index]
    ai: Option<Any>,
    a: Option<Any>,
    #[index]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ag: Option<Any>,
    #[version]
    version: u64,
}

const FIELD_COUNT: usize = 15;
const ID: usize = 0;
const VERSION: usize = 14;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const INTS: [i64; 16] = [
    i64::MIN,
    i64::MIN + 1,
    -1_000_000,
    -3,
    -1,
    0,
    1,
    2,
    3,
    10,
    9_007_199_254_740_992,
    9_007_199_254_740_993,
    9_223_372_036_854_774_784,
    9_223_372_036_854_775_000,
    i64::MAX - 1,
    i64::MAX,
];

const FLOATS: [f64; 22] = [
    -1e300,
    -9.3e18,
    -2.5,
    -1.0,
    -0.0,
    0.0,
    5e-324,
    2.225_073_858_507_201_4e-308,
    0.1,
    0.300_000_000_000_000_04,
    1.0,
    1.5,
    2.0,
    2.5,
    3.0,
    9_007_199_254_740_992.0,
    9_007_199_254_740_994.0,
    9_223_372_036_854_774_784.0,
    9_223_372_036_854_775_808.0,
    1e19,
    1e300,
    f64::MAX,
];

const STRINGS: [&str; 38] = [
    "",
    "a",
    "A",
    "a%",
    "a_",
    "a%b",
    "a_b",
    "ab",
    "abc",
    "b",
    "%",
    "_",
    "%%",
    "é",
    "éa",
    "e\u{301}",
    "ê",
    "\u{7f}",
    "\u{80}",
    "\u{7ff}",
    "\u{800}",
    "\u{ffff}",
    "\u{10000}",
    "\u{10ffff}",
    "\u{10ffff}a",
    "a\0",
    "a\0b",
    "\0",
    "日本語",
    "日本",
    "Z",
    " ",
    "1",
    "10",
    "2",
    "[1]",
    "null",
    "line\nbreak \"quoted\" \\",
];

fn int(rng: &mut Rng) -> i64 {
    if rng.chance(10) { rng.next() as i64 } else { rng.pick(&INTS) }
}

fn float(rng: &mut Rng) -> f64 {
    if rng.chance(15) {
        loop {
            let f = f64::from_bits(rng.next());
            if f.is_finite() {
                return f;
            }
        }
    }
    if rng.chance(10) {
        return rng.pick(&INTS) as f64;
    }
    rng.pick(&FLOATS)
}

fn text(rng: &mut Rng) -> String {
    let s = rng.pick(&STRINGS).to_owned();
    if rng.chance(15) { s + rng.pick(&STRINGS) } else { s }
}

fn any(rng: &mut Rng) -> Any {
    match rng.below(7) {
        0 | 1 => Any::Int(int(rng)),
        2 => Any::Real(float(rng)),
        3 => Any::Text(text(rng)),
        4 => Any::Bool(rng.chance(50)),
        5 => Any::List(rng.pick(&[vec![], vec![1], vec![1, 2], vec![2], vec![-1, 0]])),
        _ => Any::Obj(Point { x: rng.pick(&[0, 1, 2]), y: rng.pick(&["", "a", "é"]).to_owned() }),
    }
}

fn opt<T>(rng: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    if rng.chance(25) { None } else { Some(f(rng)) }
}

fn row(rng: &mut Rng, id: i64) -> Row {
    Row {
        id,
        tag: opt(rng, text),
        n: opt(rng, int),
        m: opt(rng, int),
        gone: opt(rng, int),
        fi: opt(rng, float),
        f: opt(rng, float),
        s: text(rng),
        t: opt(rng, text),
        b: rng.chance(50),
        ob: opt(rng, |r| r.chance(50)),
        ai: opt(rng, any),
        a: opt(rng, any),
        ag: opt(rng, any),
        version: 0,
    }
}

fn to_value(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Integer(i) => Value::Integer(*i),
        Scalar::Real(r) => Value::Real(*r),
        Scalar::Text(t) => Value::Text(t.to_string()),
        Scalar::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn scalar(v: &Value) -> Scalar<'_> {
    super::scalar_of(v)
}

/// A stored document in the three forms the evaluator takes.
struct Stored {
    row: Row,
    json: String,
    value: serde_json::Value,
}

/// The documents of one database, and the values they hold by field (to compare with).
struct World {
    coll: Collection<Row>,
    docs: Vec<Stored>,
    seen: Vec<Vec<Value>>,
    _db: Db,
}

fn world(rng: &mut Rng, count: usize) -> World {
    let db = Db::open_in_memory().unwrap();
    let coll = db.collection::<Row>().unwrap();
    let mut rows: Vec<Row> = (0..count).map(|i| row(rng, (i as i64 - 7) * 1_000_003)).collect();
    for r in &rows {
        coll.insert(r).unwrap();
    }
    // Updated documents keep a stale version in their JSON: the column is bumped.
    for r in &mut rows {
        for _ in 0..rng.below(4) {
            r.version = coll.update(r).unwrap().unwrap();
        }
    }
    // The documents as written, not as read back: serde_json reads some floats a unit in the
    // last place off (it lacks `float_roundtrip`), and SQL compares what was written.
    let read = coll.query().order_by(Row::fields().id.asc()).all().unwrap();
    let key = |r: &Row| (r.id, r.version);
    assert_eq!(read.iter().map(key).collect::<Vec<_>>(), rows.iter().map(key).collect::<Vec<_>>());
    let docs: Vec<Stored> = rows
        .into_iter()
        .map(|row| {
            let json = serde_json::to_string(&row).unwrap();
            let value = serde_json::to_value(&row).unwrap();
            Stored { row, json, value }
        })
        .collect();
    let schema = Row::schema();
    let mut seen = vec![Vec::new(); FIELD_COUNT];
    for d in &docs {
        let fields = DocFields::parse(&d.json).unwrap();
        for (i, def) in schema.fields().iter().enumerate() {
            let v = to_value(&fields.get(def.key()));
            if v != Value::Null {
                seen[i].push(v);
            }
        }
    }
    World { coll, docs, seen, _db: db }
}

const OPS: [CmpOp; 6] = [CmpOp::Eq, CmpOp::Ne, CmpOp::Gt, CmpOp::Gte, CmpOp::Lt, CmpOp::Lte];

/// A value to compare field `field` with: mostly one some document holds there.
fn operand_for(rng: &mut Rng, w: &World, field: usize) -> Value {
    let integers_only = field == ID || field == VERSION;
    if !w.seen[field].is_empty() && rng.chance(50) {
        return rng.pick(&w.seen[field]);
    }
    if integers_only {
        return Value::Integer(if rng.chance(50) { rng.pick(&[0, 1, 2, 3, -7_000_021]) } else { int(rng) });
    }
    match rng.below(6) {
        0 => {
            let other = &w.seen[rng.below(FIELD_COUNT)];
            if other.is_empty() { Value::Null } else { rng.pick(other) }
        }
        1 => Value::Integer(int(rng)),
        2 => Value::Real(float(rng)),
        3 => Value::Text(text(rng)),
        4 => Value::Integer(rng.pick(&[0, 1])),
        _ => Value::Text(rng.pick(&["[]", "[1,2]", "[1]", r#"{"x":1,"y":"a"}"#, r#"{"x":0,"y":""}"#]).to_owned()),
    }
}

fn prefix_for(rng: &mut Rng, w: &World, field: usize) -> String {
    if rng.chance(50)
        && let Value::Text(s) = operand_for(rng, w, field)
    {
        // Cut at a character boundary: `starts_with` takes a `String`.
        let cuts: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
        return s[..rng.pick(&cuts)].to_owned();
    }
    if rng.chance(30) {
        return rng.pick(&["", "%", "_", "a%", "a_", "[", "{\"x\"", "\u{10ffff}", "é", "\0", "a\0"]).to_owned();
    }
    text(rng)
}

fn atom(rng: &mut Rng, w: &World) -> Atom {
    let field = rng.below(FIELD_COUNT);
    let integers_only = field == ID || field == VERSION;
    match rng.below(8) {
        0..=2 => {
            let op = rng.pick(&OPS);
            let value = if matches!(op, CmpOp::Eq | CmpOp::Ne) && rng.chance(15) {
                Value::Null
            } else {
                operand_for(rng, w, field)
            };
            Atom::Compare { field, op, value }
        }
        3 => {
            let (mut low, mut high) = (operand_for(rng, w, field), operand_for(rng, w, field));
            if rng.chance(60) && sql_cmp(&scalar(&low), &scalar(&high)) == Ordering::Greater {
                std::mem::swap(&mut low, &mut high);
            }
            Atom::Between { field, low, high }
        }
        4 | 5 => {
            // Past 16 values the list is bound as one JSON array.
            let n = if rng.chance(15) { 17 + rng.below(15) } else { rng.below(5) };
            let mut values: Vec<Value> = (0..n).map(|_| operand_for(rng, w, field)).collect();
            if rng.chance(30) {
                values.insert(rng.below(values.len() + 1), Value::Null);
            }
            Atom::In { field, values }
        }
        6 if !integers_only => Atom::StartsWith { field, prefix: prefix_for(rng, w, field) },
        _ => Atom::IsNull { field, negated: rng.chance(50) },
    }
}

fn expr(rng: &mut Rng, w: &World, depth: usize) -> Expr {
    if depth == 0 || rng.chance(35) {
        return Expr::Atom(atom(rng, w));
    }
    let kind = rng.below(3);
    if kind == 0 {
        return Expr::Not(Box::new(expr(rng, w, depth - 1)));
    }
    let items = (0..rng.below(4)).map(|_| expr(rng, w, depth - 1)).collect();
    if kind == 1 { Expr::And(items) } else { Expr::Or(items) }
}

fn sql_ids(w: &World, filters: &[Expr]) -> Result<Vec<i64>> {
    let mut q = w.coll.query();
    for f in filters {
        q = q.filter(Filter::new(f.clone()));
    }
    let mut ids: Vec<i64> = q.all()?.into_iter().map(|r| r.id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// The ids the evaluator keeps, through each of its entry points (which must agree).
fn eval_ids(w: &World, filters: &[Expr]) -> Result<Vec<i64>> {
    let schema = Row::schema();
    let matcher = Matcher::new(schema, filters)?;
    let typed: Filter<Row> = Filter::all(filters.iter().cloned().map(Filter::new));
    let mut ids = Vec::new();
    for d in &w.docs {
        let by_value = matches(schema, &d.value, filters)?;
        let by_text = matcher.matches(&DocFields::parse(&d.json).unwrap());
        let by_type = typed.matches(&d.row)?;
        assert_eq!((by_value, by_text), (by_type, by_type), "entry points disagree on {} for {filters:?}", d.json);
        if by_value {
            ids.push(d.row.id);
        }
    }
    Ok(ids)
}

/// Checks that SQL and the evaluator keep the same documents; returns how many they keep.
fn check(w: &World, filters: &[Expr], context: &str) -> usize {
    let sql = sql_ids(w, filters).unwrap_or_else(|e| panic!("{context}: SQL failed: {e} for {filters:?}"));
    let ours = eval_ids(w, filters).unwrap_or_else(|e| panic!("{context}: evaluator failed: {e} for {filters:?}"));
    if sql != ours {
        let differ: Vec<&str> = w
            .docs
            .iter()
            .filter(|d| sql.contains(&d.row.id) != ours.contains(&d.row.id))
            .map(|d| d.json.as_str())
            .collect();
        panic!(
            "{context}: SQL and the evaluator disagree on {filters:?}\nSQL keeps {sql:?}\nwe keep {ours:?}\ndocuments: \
             {differ:#?}"
        );
    }
    sql.len()
}

#[test]
fn random_filters_keep_what_sql_keeps() {
    let (mut queries, mut kept, mut total) = (0, 0, 0);
    for seed in 0..40 {
        let mut rng = Rng(seed);
        let count = 20 + rng.below(30);
        let w = world(&mut rng, count);
        for q in 0..60 {
            let filters: Vec<Expr> = (0..1 + rng.below(3)).map(|_| expr(&mut rng, &w, 4)).collect();
            kept += check(&w, &filters, &format!("seed {seed}, query {q}"));
            total += w.docs.len();
            queries += 1;
        }
    }
    // The filters are neither all empty nor all full.
    assert!(kept > total / 10 && kept < total * 9 / 10, "{kept} of {total}");
    assert_eq!(queries, 40 * 60);
}

/// Every kind of condition on every field, alone and negated: `p` and `!p` split the
/// documents, in SQL as here.
#[test]
fn every_atom_and_its_negation_agree() {
    let mut checked = 0;
    for seed in 100..112 {
        let mut rng = Rng(seed);
        let w = world(&mut rng, 40);
        for _ in 0..150 {
            let a = Expr::Atom(atom(&mut rng, &w));
            let kept = check(&w, std::slice::from_ref(&a), &format!("seed {seed}"));
            let not = Expr::Not(Box::new(a));
            let rest = check(&w, std::slice::from_ref(&not), &format!("seed {seed}, negated"));
            assert_eq!(kept + rest, w.docs.len(), "{not:?}");
            checked += 2;
        }
    }
    assert_eq!(checked, 12 * 150 * 2);
}

/// Fixed edge cases: `starts_with` with wildcards and high code points, numbers around
/// the integer/float boundary, `None` as a missing key and as null.
#[test]
fn edge_cases_agree() {
    let mut rng = Rng(7);
    let w = world(&mut rng, 60);
    let text_fields = [1, 7, 8, 11, 12, 13];
    let mut prefixes: Vec<String> = STRINGS.iter().map(|s| (*s).to_owned()).collect();
    prefixes
        .extend(["%", "_", "a%", "a_", "%a", "\u{10ffff}", "\u{ffff}", "\u{7ff}", "[", "{\"x\":"].map(String::from));
    let mut n = 0;
    for &field in &text_fields {
        for prefix in &prefixes {
            for neg in [false, true] {
                let a = Expr::Atom(Atom::StartsWith { field, prefix: prefix.clone() });
                let e = if neg { Expr::Not(Box::new(a)) } else { a };
                check(&w, &[e], "starts_with");
                n += 1;
            }
        }
    }
    let numbers: Vec<Value> = INTS
        .iter()
        .map(|&i| Value::Integer(i))
        .chain(FLOATS.iter().map(|&f| Value::Real(f)))
        .chain([Value::Text("1".into()), Value::Text(String::new())])
        .collect();
    for field in [2, 3, 4, 5, 6, 9, 10, 11, 12, 13] {
        for v in &numbers {
            for op in OPS {
                check(&w, &[Expr::Atom(Atom::Compare { field, op, value: v.clone() })], "compare");
                n += 1;
            }
        }
        for negated in [false, true] {
            check(&w, &[Expr::Atom(Atom::IsNull { field, negated })], "is null");
            for op in [CmpOp::Eq, CmpOp::Ne] {
                check(&w, &[Expr::Atom(Atom::Compare { field, op, value: Value::Null })], "eq none");
            }
            for values in [vec![], vec![Value::Null], vec![Value::Null, Value::Integer(1)], numbers.clone()] {
                let a = Expr::Atom(Atom::In { field, values });
                let e = if negated { Expr::Not(Box::new(a)) } else { a };
                check(&w, &[e], "in");
            }
            n += 6;
        }
    }
    // `gone` is a missing key when `None`, `m` a JSON null: both are `None`.
    assert!(w.docs.iter().any(|d| d.row.gone.is_none()) && !w.docs.iter().any(|d| d.json.contains("\"gone\":null")));
    assert!(w.docs.iter().any(|d| d.json.contains("\"m\":null")));
    assert_eq!(n, 6 * 48 * 2 + 10 * 40 * 6 + 10 * 12);
}

/// Flat lists of many conditions: past the first 97 values, SQL reads them back from one
/// JSON array (`?a->>i`, `json_each(?a, '$[i]')`), which must compare as bound values do.
#[test]
fn wide_filters_with_spilled_values_agree() {
    let meta = crate::store::meta::CollectionMeta::fresh(Row::schema(), IdKind::Integer).unwrap();
    let mut spilled = 0;
    for seed in 300..306 {
        let mut rng = Rng(seed);
        let w = world(&mut rng, 40);
        for _ in 0..12 {
            let atoms: Vec<Expr> = (0..60 + rng.below(90))
                .map(|_| {
                    let a = Expr::Atom(atom(&mut rng, &w));
                    if rng.chance(30) { Expr::Not(Box::new(a)) } else { a }
                })
                .collect();
            let e = if rng.chance(50) { Expr::Or(atoms) } else { Expr::And(atoms) };
            let mut sql = meta.statement();
            sql.filters(std::slice::from_ref(&e), 0).unwrap();
            spilled += usize::from(sql.finish().unwrap().0.contains("->>"));
            check(&w, std::slice::from_ref(&e), &format!("seed {seed}"));
            check(&w, &[Expr::Not(Box::new(e))], &format!("seed {seed}, negated"));
        }
    }
    assert!(spilled > 30, "{spilled} statements spilled values");
}

#[test]
fn random_orders_sort_as_order_by() {
    let schema = Row::schema();
    let mut checked = 0;
    for seed in 200..230 {
        let mut rng = Rng(seed);
        let count = 10 + rng.below(40);
        let w = world(&mut rng, count);
        for _ in 0..20 {
            let keys: Vec<(usize, bool)> =
                (0..1 + rng.below(3)).map(|_| (rng.below(FIELD_COUNT), rng.chance(50))).collect();
            let orders: Vec<Order<Row>> = keys
                .iter()
                .map(|&(f, desc)| {
                    let field = Field::<Row, i64>::__new(f);
                    if desc { field.desc() } else { field.asc() }
                })
                .collect();
            let mut q = w.coll.query();
            for o in &orders {
                q = q.order_by(*o);
            }
            // The id breaks the remaining ties, in SQL as here.
            let sql: Vec<i64> = q.order_by(Row::fields().id.asc()).all().unwrap().iter().map(|r| r.id).collect();
            let mut all = keys.clone();
            all.push((ID, false));
            let mut by_value: Vec<&Stored> = w.docs.iter().collect();
            by_value.sort_by(|a, b| compare(schema, &all, &a.value, &b.value));
            let mut by_type: Vec<&Stored> = w.docs.iter().collect();
            by_type.sort_by(|a, b| {
                orders
                    .iter()
                    .chain([&Row::fields().id.asc()])
                    .map(|o| o.compare(&a.row, &b.row).unwrap())
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
            let ids = |docs: &[&Stored]| docs.iter().map(|d| d.row.id).collect::<Vec<_>>();
            assert_eq!(ids(&by_value), sql, "seed {seed}: order {keys:?}");
            assert_eq!(ids(&by_type), sql, "seed {seed}: order {keys:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 30 * 20);
}

#[test]
fn none_sorts_first_ascending_and_last_descending() {
    let schema = Row::schema();
    let (none, zero) = (serde_json::json!({"n": null}), serde_json::json!({"n": 0}));
    let missing = serde_json::json!({});
    assert_eq!(compare(schema, &[(2, false)], &none, &zero), Ordering::Less);
    assert_eq!(compare(schema, &[(2, true)], &none, &zero), Ordering::Greater);
    assert_eq!(compare(schema, &[(2, false)], &none, &missing), Ordering::Equal);
    assert_eq!(compare(schema, &[], &none, &zero), Ordering::Equal);
    // Integers and floats compare exactly; numbers sort below text.
    let n = |v: serde_json::Value| serde_json::json!({ "n": v });
    assert_eq!(compare(schema, &[(2, false)], &n(1.into()), &n(1.0.into())), Ordering::Equal);
    let (big, near) = (n(9_007_199_254_740_993_i64.into()), n(9_007_199_254_740_992.0.into()));
    assert_eq!(compare(schema, &[(2, false)], &big, &near), Ordering::Greater);
    assert_eq!(
        compare(schema, &[(2, false)], &n(i64::MAX.into()), &n(9_223_372_036_854_775_808.0.into())),
        Ordering::Less
    );
    assert_eq!(compare(schema, &[(2, false)], &n(u64::MAX.into()), &n(1e300.into())), Ordering::Less);
    assert_eq!(compare(schema, &[(2, false)], &n(1e300.into()), &n("".into())), Ordering::Less);
    assert_eq!(compare(schema, &[(2, false)], &n("a".into()), &n("[1]".into())), Ordering::Greater);
}

fn eq(field: usize, i: i64) -> Expr {
    Expr::Atom(Atom::Compare { field, op: CmpOp::Eq, value: Value::Integer(i) })
}

/// Chains of negations and one-operand lists, which SQL looks through, agree however long.
#[test]
fn long_negation_chains_agree_with_sql() {
    let mut rng = Rng(3);
    let w = world(&mut rng, 30);
    for len in [1, 2, 3, 10_000, 10_001] {
        let mut e = Expr::Atom(Atom::Compare { field: 2, op: CmpOp::Gt, value: Value::Integer(0) });
        for i in 0..len {
            e = match i % 3 {
                0 => Expr::Not(Box::new(e)),
                1 => Expr::And(vec![e]),
                _ => Expr::Or(vec![Expr::Not(Box::new(Expr::Not(Box::new(e))))]),
            };
        }
        check(&w, &[e], &format!("chain of {len}"));
    }
    // A long AND folded one call at a time is one flat list, also in SQL.
    let folded = (0..500).fold(Filter::<Row>::all([]), |f, i| f.and(!Filter::new(eq(2, i))));
    check(&w, &[folded.expr], "folded");
}

/// A filter nested far deeper than SQL takes evaluates, on a small stack: nothing recurses.
#[test]
fn deep_nesting_evaluates_without_recursion() {
    let mut rng = Rng(5);
    let w = world(&mut rng, 30);
    let atoms = [
        Atom::Compare { field: 2, op: CmpOp::Gt, value: Value::Integer(0) },
        Atom::IsNull { field: 8, negated: false },
        Atom::StartsWith { field: 7, prefix: "a".into() },
        Atom::Between { field: 6, low: Value::Real(-1.0), high: Value::Integer(2) },
    ];
    // What SQL says of each atom, by document.
    let truth: Vec<Vec<bool>> = atoms
        .iter()
        .map(|a| {
            let ids = sql_ids(&w, &[Expr::Atom(a.clone())]).unwrap();
            w.docs.iter().map(|d| ids.contains(&d.row.id)).collect()
        })
        .collect();
    let depth = 100_000;
    let steps: Vec<(usize, usize)> = (0..depth).map(|_| (rng.below(3), rng.below(atoms.len()))).collect();
    // The expected answers, folded from the inside out.
    let expected: Vec<bool> = (0..w.docs.len())
        .map(|d| {
            steps.iter().fold(truth[0][d], |v, &(kind, a)| match kind {
                0 => !v,
                1 => v && truth[a][d],
                _ => v || truth[a][d],
            })
        })
        .collect();
    let docs: Vec<String> = w.docs.iter().map(|d| d.json.clone()).collect();
    let values: Vec<serde_json::Value> = w.docs.iter().map(|d| d.value.clone()).collect();
    let atoms_for_thread = atoms.clone();
    let (got, err) = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut e = Expr::Atom(atoms_for_thread[0].clone());
            for &(kind, a) in &steps {
                let other = Expr::Atom(atoms_for_thread[a].clone());
                e = match kind {
                    0 => Expr::Not(Box::new(e)),
                    1 => Expr::And(vec![e, other]),
                    _ => Expr::Or(vec![e, other]),
                };
            }
            let filters = [e];
            let schema = Row::schema();
            let matcher = Matcher::new(schema, &filters).unwrap();
            let got: Vec<bool> = docs
                .iter()
                .zip(&values)
                .map(|(json, value)| {
                    let by_text = matcher.matches(&DocFields::parse(json).unwrap());
                    assert_eq!(matches(schema, value, &filters).unwrap(), by_text);
                    by_text
                })
                .collect();
            let [e] = filters;
            (got, Filter::<Row>::new(e))
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(got, expected);
    // SQL cannot run it.
    let sql = w.coll.query().filter(err).all();
    assert!(matches!(sql, Err(Error::InvalidQuery { ref reason, .. }) if reason.contains("too deeply")), "{sql:?}");
}

/// A query that cannot run fails the same way here, whatever the documents, and on the
/// first bad condition as the SQL does.
#[test]
fn refused_filters_fail_as_sql_does() {
    let mut rng = Rng(11);
    let w = world(&mut rng, 5);
    let f = Row::fields();
    let bad: Vec<Vec<Expr>> = vec![
        vec![f.n.gt(None::<i64>).expr],
        vec![f.n.between(None::<i64>, 3).expr],
        vec![f.fi.eq(f64::NAN).expr],
        vec![(f.n.eq(1) | f.fi.lt(f64::INFINITY)).expr],
        // A condition that would not be looked at for any document still fails.
        vec![Filter::<Row>::any([]).expr, (Filter::all([]) | f.fi.gt(f64::NAN)).expr],
        vec![(f.m.lte(None::<i64>) & f.fi.gte(f64::NAN)).expr],
        vec![(f.fi.gte(f64::NAN) & f.m.lte(None::<i64>)).expr],
        vec![(!(f.n.eq(1) | !f.m.lte(None::<i64>)) & f.fi.gte(f64::NAN)).expr],
        vec![eq(FIELD_COUNT, 1)],
        vec![eq(2, 1), Expr::Atom(Atom::IsNull { field: 99, negated: true })],
    ];
    for filters in &bad {
        let sql = sql_ids(&w, filters).unwrap_err().to_string();
        let ours = eval_ids(&w, filters).unwrap_err().to_string();
        assert_eq!(ours, sql, "{filters:?}");
        assert!(matches(Row::schema(), &serde_json::json!({}), filters).is_err());
    }
    // An empty `in_list` never reads its field, in SQL as here.
    let empty = vec![Expr::Atom(Atom::In { field: 99, values: vec![] })];
    assert_eq!(check(&w, &empty, "empty in_list"), 0);
}

#[test]
fn typed_filters_and_orders() -> Result<()> {
    let mut rng = Rng(13);
    let w = world(&mut rng, 40);
    let f = Row::fields();
    let filters = [
        f.n.gt(2) & !f.tag.eq("a"),
        f.tag.starts_with("a%") | f.s.starts_with("") | f.t.is_none(),
        f.fi.between(-1.0, 2.5) | f.f.lte(0.1),
        f.b.eq(true) & f.ob.ne(None::<bool>) & f.gone.is_some(),
        f.a.in_list([Any::Int(1), Any::Real(1.0), Any::Text("a".into())]) | f.ai.eq(None::<Any>),
        f.ag.starts_with("[") | f.ai.eq(Any::Obj(Point { x: 1, y: "a".into() })),
        f.version.gte(1_u64) & f.id.lt(0),
    ];
    for filter in filters {
        check(&w, std::slice::from_ref(&filter.expr), "typed");
        for d in &w.docs {
            assert_ne!(filter.matches(&d.row)?, filter.clone().not().matches(&d.row)?);
        }
    }
    let (a, b) = (&w.docs[0].row, &w.docs[1].row);
    assert_eq!(f.id.asc().compare(a, b)?, a.id.cmp(&b.id));
    assert_eq!(f.id.desc().compare(a, b)?, b.id.cmp(&a.id));
    assert!(Field::<Row, i64>::__new(FIELD_COUNT).asc().compare(a, b).is_err());
    Ok(())
}

/// Arrays and objects compare as their stored JSON text, keys in the order written: the
/// document's text gives it (a parsed value sorts the keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, db4_derive::Document)]
#[db4(crate = "crate", collection = "shapes")]
struct Shape {
    #[id]
    id: String,
    #[index]
    corner: Corner,
    edge: Corner,
    tags: Vec<String>,
    /// Written as its shortest decimal ("0.1"), read by SQLite as the nearest f64.
    #[range_index]
    ratio: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Corner {
    z: i64,
    a: String,
}

#[test]
fn compounds_and_text_ids_agree() -> Result<()> {
    let db = Db::open_in_memory()?;
    let shapes = db.collection::<Shape>()?;
    let ids = ["1", "10", "2", "a", "a%", "é", "\u{10ffff}", "a\0b"];
    let all: Vec<Shape> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Shape {
            id: (*id).to_owned(),
            corner: Corner { z: i as i64 % 3, a: ["x", "é\"\n"][i % 2].to_owned() },
            edge: Corner { z: i as i64 % 2, a: "y".to_owned() },
            tags: ids[..i % 4].iter().map(|s| (*s).to_owned()).collect(),
            ratio: [0.1, 0.2, 1.0 / 3.0, 16_777_217.0, f32::MAX, f32::MIN_POSITIVE][i % 6],
        })
        .collect();
    for s in &all {
        shapes.insert(s)?;
    }
    let f = Shape::fields();
    let corner = Corner { z: 1, a: "é\"\n".to_owned() };
    let filters = [
        f.corner.eq(corner.clone()),
        f.edge.eq(corner.clone()) | f.edge.eq(Corner { z: 1, a: "y".into() }),
        f.corner.in_list([corner.clone(), Corner { z: 0, a: "x".into() }]),
        f.tags.eq(vec!["1".to_owned()]) | f.tags.eq(Vec::<String>::new()),
        f.id.starts_with("1") | f.id.starts_with("a%") | f.id.gt("é"),
        f.id.between("10", "a") & !f.id.in_list(["2"]),
        f.id.starts_with(""),
        f.ratio.eq(0.1) | f.ratio.eq(1.0 / 3.0) | f.ratio.gt(16_777_216.0),
        f.ratio.in_list([0.2, f32::MAX]) | f.ratio.lte(f32::MIN_POSITIVE),
    ];
    for filter in filters {
        let mut sql: Vec<String> = shapes.query().filter(filter.clone()).all()?.into_iter().map(|s| s.id).collect();
        sql.sort();
        let mut ours: Vec<String> = Vec::new();
        for s in &all {
            if filter.matches(s)? {
                ours.push(s.id.clone());
            }
        }
        ours.sort();
        assert_eq!(ours, sql, "{filter:?}");
    }
    for first in [f.corner.desc(), f.corner.asc(), f.ratio.asc(), f.tags.desc()] {
        let sql: Vec<String> =
            shapes.query().order_by(first).order_by(f.id.asc()).all()?.into_iter().map(|s| s.id).collect();
        let mut ours = all.clone();
        ours.sort_by(|a, b| {
            let ord = first.compare(a, b).unwrap();
            ord.then_with(|| f.id.asc().compare(a, b).unwrap())
        });
        assert_eq!(ours.into_iter().map(|s| s.id).collect::<Vec<_>>(), sql, "{first:?}");
    }
    // A parsed value holds the object's keys sorted, and then reads them so.
    let doc = serde_json::to_value(&all[1]).unwrap();
    let by_value = matches(Shape::schema(), &doc, std::slice::from_ref(&f.corner.eq(corner.clone()).expr))?;
    assert!(!by_value && f.corner.eq(corner.clone()).matches(&all[1])?);
    Ok(())
}

#[test]
fn text_fields_read_as_sqlite_reads_them() {
    let json = r#" { "a" : [ 1 , { "b" : "x y" } ] , "n": 18446744073709551615, "t": "\u00e9\n", "a": 2,
        "f": false, "z": null, "e": 1e2 } "#;
    let fields = DocFields::parse(json).unwrap();
    assert_eq!(fields.get("a"), Scalar::Text(Cow::Borrowed(r#"[1,{"b":"x y"}]"#)));
    assert_eq!(fields.get("n"), Scalar::Real(18_446_744_073_709_551_615_u64 as f64));
    assert_eq!(fields.get("t"), Scalar::Text(Cow::Borrowed("é\n")));
    assert_eq!(fields.get("f"), Scalar::Integer(0));
    assert_eq!(fields.get("z"), Scalar::Null);
    assert_eq!(fields.get("e"), Scalar::Real(100.0));
    assert_eq!(fields.get("missing"), Scalar::Null);
    assert!(DocFields::parse("{\"a\":").is_err());
    assert_eq!(DocFields::parse("[1,2]").unwrap().get("a"), Scalar::Null);
    // As SQLite reads them.
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    for key in ["a", "n", "t", "f", "z", "e", "missing"] {
        let got: rusqlite::types::Value = conn
            .query_row("SELECT json_extract(?1, ?2)", [json, &crate::schema::json_path(key)], |r| r.get(0))
            .unwrap();
        let expected = match fields.get(key) {
            Scalar::Null => rusqlite::types::Value::Null,
            Scalar::Integer(i) => rusqlite::types::Value::Integer(i),
            Scalar::Real(r) => rusqlite::types::Value::Real(r),
            Scalar::Text(t) => rusqlite::types::Value::Text(t.into_owned()),
            Scalar::Blob(b) => rusqlite::types::Value::Blob(b.to_vec()),
        };
        assert_eq!(got, expected, "{key}");
    }
}
