//! Queries against the statement limits of a Durable Object (100 bound values, expression depth
//! 100, 100 KB of SQL text, 2 MB per value), which native connections enforce as well: a query
//! of any shape either runs and answers right, or fails with `Error::InvalidQuery` naming the
//! limit, never with a backend error. Filters of any depth can be built, cloned, printed and
//! dropped without exhausting the stack.

use db4::prelude::*;
use serde::{Deserialize, Serialize};
use std::process::{Command, Stdio};

/// Every field but the id optional: indexed (`tag`, `n`) and read from the JSON (`text`, `m`).
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "rows")]
struct Row {
    #[id]
    id: i64,
    #[index]
    tag: Option<String>,
    #[range_index]
    n: Option<i64>,
    text: Option<String>,
    m: Option<i64>,
}

const ROWS: i64 = 200;

fn row(i: i64) -> Row {
    Row {
        id: i,
        tag: (i % 6 != 0).then(|| format!("t{}", i % 5)),
        n: (i % 10 != 0).then_some(i),
        text: (i % 4 != 0).then(|| format!("x{i}")),
        m: (i % 7 != 0).then_some(i % 17),
    }
}

fn setup() -> (Db, Collection<Row>, Vec<Row>) {
    let db = Db::open_in_memory().unwrap();
    let c = db.collection::<Row>().unwrap();
    let docs: Vec<Row> = (0..ROWS).map(row).collect();
    c.insert_many(&docs).unwrap();
    (db, c, docs)
}

fn expect(docs: &[Row], pred: impl Fn(&Row) -> bool) -> Vec<i64> {
    docs.iter().filter(|d| pred(d)).map(|d| d.id).collect()
}

/// The ids `filters` select (sorted), checked against `count()`.
fn run(c: &Collection<Row>, filters: Vec<Filter<Row>>) -> Result<Vec<i64>> {
    let query = |filters: Vec<Filter<Row>>| filters.into_iter().fold(c.query(), |q, f| q.filter(f));
    let mut ids: Vec<i64> = query(filters.clone()).all()?.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    let n = query(filters).count()?;
    assert_eq!(n, ids.len() as u64, "count() agrees with all()");
    Ok(ids)
}

fn run1(c: &Collection<Row>, filter: Filter<Row>) -> Result<Vec<i64>> {
    run(c, vec![filter])
}

/// Asserts that `result` is an `InvalidQuery` on `rows` whose reason contains `limit`.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T>, limit: &str) {
    match result {
        Err(Error::InvalidQuery { collection, reason }) => {
            assert_eq!(collection, "rows");
            assert!(reason.contains(limit), "the reason names the limit ({limit:?}): {reason}");
        }
        other => panic!("expected InvalidQuery naming {limit:?}, got {other:?}"),
    }
}

#[test]
fn in_lists_of_any_length_run() {
    let (_db, c, d) = setup();
    let f = Row::fields();
    for len in [1, 15, 16, 17, 99, 100, 101, 256, 257, 5_000] {
        let values: Vec<i64> = (0..len).map(|i| i * 3).collect();
        let want = |x: Option<i64>| x.is_some_and(|x| values.contains(&x));
        assert_eq!(run1(&c, f.n.in_list(values.iter().copied().map(Some))).unwrap(), expect(&d, |r| want(r.n)));
        assert_eq!(run1(&c, f.m.in_list(values.iter().copied().map(Some))).unwrap(), expect(&d, |r| want(r.m)));
        assert_eq!(run1(&c, f.id.in_list(values.clone())).unwrap(), expect(&d, |r| want(Some(r.id))));
        let negated = !f.n.in_list(values.iter().copied().map(Some));
        assert_eq!(run1(&c, negated).unwrap(), expect(&d, |r| !want(r.n)), "{len} values, negated");
        let texts: Vec<String> = (0..len).map(|i| format!("x{}", i * 3)).collect();
        assert_eq!(
            run1(&c, f.text.in_list(texts.iter().cloned().map(Some))).unwrap(),
            expect(&d, |r| r.text.as_ref().is_some_and(|t| texts.contains(t))),
            "{len} text values"
        );
    }
}

#[test]
fn an_in_list_of_99_with_two_more_filters_runs() {
    let (_db, c, d) = setup();
    let f = Row::fields();
    let values: Vec<i64> = (0..99).map(|i| i * 2).collect();
    let got = run(&c, vec![f.m.in_list(values.iter().copied().map(Some)), f.n.gte(Some(50)), f.text.is_some()]);
    let want = expect(&d, |r| r.m.is_some_and(|m| values.contains(&m)) && r.n >= Some(50) && r.text.is_some());
    assert_eq!(got.unwrap(), want);
    // The same values as separate alternatives, each its own bound value.
    let any = Filter::any(values.iter().map(|v| f.id.eq(*v)));
    let got = run(&c, vec![any, f.n.gte(Some(50)), f.text.is_some()]);
    assert_eq!(got.unwrap(), expect(&d, |r| values.contains(&r.id) && r.n >= Some(50) && r.text.is_some()));
}

#[test]
fn any_and_all_of_many_conditions_run() {
    let (_db, c, d) = setup();
    let f = Row::fields();
    for len in [100, 101, 256, 500] {
        let any = Filter::any((0..len).map(|i| f.m.eq(Some(i % 20)) & f.n.gt(Some(i))));
        let want = expect(&d, |r| (0..len).any(|i| r.m == Some(i % 20) && r.n > Some(i)));
        assert_eq!(run1(&c, any).unwrap(), want, "any of {len}");
        let all = Filter::all((0..len).map(|i| f.text.ne(Some(format!("x{i}")))));
        let want = expect(&d, |r| (0..len).all(|i| r.text != Some(format!("x{i}"))));
        assert_eq!(run1(&c, all).unwrap(), want, "all of {len}");
        // Alternatives on several fields, indexed and not, with every operator.
        let mixed = Filter::any((0..len).map(|i| match i % 6 {
            0 => f.tag.eq(Some(format!("t{}", i % 5))) & f.m.lt(Some(i % 17)),
            1 => f.text.starts_with(format!("x{i}")),
            2 => f.n.between(Some(i), Some(i + 2)),
            3 => !f.m.gte(Some(i % 17)),
            4 => f.id.in_list([i, i + 1]),
            _ => f.tag.is_none() & f.n.ne(Some(i)),
        }));
        let want = expect(&d, |r| {
            (0..len).any(|i| match i % 6 {
                0 => r.tag == Some(format!("t{}", i % 5)) && r.m < Some(i % 17),
                1 => r.text.as_ref().is_some_and(|t| t.starts_with(&format!("x{i}"))),
                2 => r.n.is_some_and(|n| (i..=i + 2).contains(&n)),
                3 => r.m < Some(i % 17),
                4 => r.id == i || r.id == i + 1,
                _ => r.tag.is_none() && r.n != Some(i),
            })
        });
        assert_eq!(run1(&c, mixed).unwrap(), want, "mixed any of {len}");
    }
    // Right-nested chains, as a fold builds them, are one flat list each.
    let (mut and_chain, mut or_chain) = (f.n.is_some(), f.id.eq(-1));
    for i in 0..2_000 {
        and_chain = f.id.ne(ROWS + i).and(and_chain);
        or_chain = f.m.eq(Some(i + 17)).or(or_chain);
    }
    assert_eq!(run1(&c, and_chain).unwrap(), expect(&d, |r| r.n.is_some()));
    assert_eq!(run1(&c, or_chain).unwrap(), Vec::<i64>::new());
}

#[test]
fn many_filter_calls_run() {
    let (_db, c, d) = setup();
    let f = Row::fields();
    for len in [101, 1_000, 1_500] {
        let filters: Vec<Filter<Row>> = (0..len).map(|i| f.id.ne(i * 2)).collect();
        let want = expect(&d, |r| r.id % 2 == 1 || r.id >= len * 2);
        assert_eq!(run(&c, filters).unwrap(), want, "{len} filter() calls");
        let filters: Vec<Filter<Row>> = (0..len).map(|i| f.m.ne(Some(i + 20))).collect();
        assert_eq!(run(&c, filters).unwrap(), expect(&d, |_| true), "{len} filter() calls on a JSON field");
    }
    // Deleting through many filters too.
    let mut q = c.query();
    for i in 0..1_500 {
        q = q.filter(f.id.ne(i + 10));
    }
    assert_eq!(q.delete().unwrap(), 10);
    assert_eq!(c.count().unwrap(), ROWS as u64 - 10);
}

#[test]
fn filters_beyond_the_sql_length_limit_are_refused() {
    let (_db, c, _d) = setup();
    let f = Row::fields();
    let huge_any = Filter::any((0..20_000).map(|i| f.m.eq(Some(i))));
    assert_refused(c.query().filter(huge_any.clone()).count(), "bytes of SQL");
    assert_refused(c.query().filter(huge_any.clone()).all(), "bytes of SQL");
    assert_refused(c.query().filter(huge_any).limit(3).delete(), "bytes of SQL");
    let mut q = c.query();
    for i in 0..20_000 {
        q = q.filter(f.id.ne(i));
    }
    assert_refused(q.count(), "bytes of SQL");
    assert_eq!(c.count().unwrap(), ROWS as u64, "a refused delete deletes nothing");
}

#[test]
fn values_beyond_the_value_size_limit_are_refused() {
    let (_db, c, _d) = setup();
    let f = Row::fields();
    let big = "y".repeat(3_000_000);
    assert_refused(c.query().filter(f.text.eq(big.clone())).count(), "a value of");
    assert_refused(c.query().filter(f.tag.starts_with(big)).count(), "a value of");
    // A list whose JSON text is above the limit.
    let ids: Vec<i64> = (0..400_000).map(|i| i * 1_000_003).collect();
    assert_refused(c.query().filter(f.id.in_list(ids)).count(), "a value of");
}

/// `depth` nested `!` around `f.n.lt(Some(50))`.
fn nested_nots(depth: usize) -> Filter<Row> {
    let mut filter = Row::fields().n.lt(Some(50));
    for _ in 0..depth {
        filter = !filter;
    }
    filter
}

/// `depth` alternating binary `and` / `or` nodes, each adding a level of SQL expression:
/// `id == 0 | (id == 1 & (id == 2 | ...))`, innermost `id == depth`.
fn alternating(depth: usize) -> Filter<Row> {
    let f = Row::fields();
    let mut filter = f.id.eq(depth as i64);
    for level in (0..depth).rev() {
        let atom = f.id.eq(level as i64);
        filter = if level % 2 == 0 { atom.or(filter) } else { atom.and(filter) };
    }
    filter
}

/// What `alternating(depth)` selects: id 0 through the outer `or`; and id 1 when the filter is
/// just `id == 0 | id == 1` (deeper, id 1 is ANDed with conditions on other ids).
fn alternating_ids(depth: usize) -> Vec<i64> {
    if depth == 1 { vec![0, 1] } else { vec![0] }
}

#[test]
fn nested_negations_of_any_depth_run() {
    let (_db, c, d) = setup();
    for depth in [99_usize, 100, 150, 199, 200, 1_000, 20_001] {
        let want = expect(&d, |r| (r.n < Some(50)) == depth.is_multiple_of(2));
        assert_eq!(run1(&c, nested_nots(depth)).unwrap(), want, "{depth} nested !");
    }
}

#[test]
fn alternating_and_or_run_until_the_depth_limit_then_are_refused() {
    let (_db, c, _d) = setup();
    let mut deepest = 0;
    for depth in 1..=120 {
        match run1(&c, alternating(depth)) {
            Ok(ids) => {
                assert_eq!(ids, alternating_ids(depth), "depth {depth}");
                assert_eq!(deepest, depth - 1, "refused at {} but not at {depth}", deepest + 1);
                deepest = depth;
            }
            Err(e) => assert_refused(Err::<(), _>(e), "deep"),
        }
    }
    // The whole budget is used: only the atom's own levels are left above the nesting.
    assert!((94..100).contains(&deepest), "alternating nesting up to {deepest} levels runs");
    for depth in [150, 199, 1_000] {
        assert_refused(run1(&c, alternating(depth)), "deep");
        assert_refused(c.query().filter(alternating(depth)).limit(1).delete(), "deep");
    }
    assert_eq!(c.count().unwrap(), ROWS as u64);
    // A delete by a subquery nests the filter one level deeper.
    let n = c.query().filter(alternating(deepest)).order_by(Row::fields().id.asc()).limit(5).delete();
    match n {
        Ok(n) => assert_eq!(n, 1),
        Err(e) => assert_refused(Err::<(), _>(e), "deep"),
    }
}

/// Ok with the expected count, or refused as too deep: never a backend error.
#[track_caller]
fn ok_or_too_deep(result: Result<u64>, want: u64) -> bool {
    match result {
        Ok(n) => {
            assert_eq!(n, want);
            true
        }
        Err(e) => {
            assert_refused(Err::<(), _>(e), "deep");
            false
        }
    }
}

#[test]
fn every_statement_near_the_depth_limit_runs_or_is_refused() {
    let (db, c, d) = setup();
    let f = Row::fields();
    let mut outcomes = [0, 0];
    for depth in 85..=100 {
        // With a list read through a subquery beside the nesting, and without.
        let long_list = || f.m.in_list((0..40).map(Some));
        // `alternating` selects id 0 at these depths.
        let in_long = d.iter().filter(|r| r.id == 0 || r.m.is_some_and(|m| m < 40)).count() as u64;
        for (filter, want) in [(alternating(depth), 1), (alternating(depth) | long_list(), in_long)] {
            let q = || c.query().filter(filter.clone());
            let ran = ok_or_too_deep(q().count(), want);
            outcomes[usize::from(ran)] += 1;
            assert_eq!(ok_or_too_deep(q().all().map(|v| v.len() as u64), want), ran, "all() as count()");
            assert_eq!(ok_or_too_deep(q().first().map(|v| u64::from(v.is_some())), 1), ran);
            ok_or_too_deep(q().order_by(f.n.desc()).limit(1000).offset(0).count(), want);
            // Deletes, rolled back: by a subquery (limit), plainly, and inside a transaction.
            for limited in [false, true] {
                let result = db.transaction(|tx| {
                    let rows = tx.collection::<Row>()?;
                    let mut q = rows.query().filter(filter.clone());
                    if limited {
                        q = q.order_by(f.id.asc()).limit(1000);
                    }
                    let n = q.delete()?;
                    Err::<(), _>(Error::NotFound { collection: format!("{n}"), id: "rollback".into() })
                });
                match result {
                    Err(Error::NotFound { collection, .. }) => assert_eq!(collection, want.to_string()),
                    other => assert_refused(other, "deep"),
                }
            }
            let result = c.query().filter(filter.clone()).order_by(f.id.asc()).limit(1000).offset(1_000_000).delete();
            ok_or_too_deep(result, 0);
            assert_eq!(c.count().unwrap(), ROWS as u64);
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "both sides of the limit are exercised: {outcomes:?}");
}

#[test]
fn balanced_lists_add_only_logarithmic_depth() {
    let (_db, c, d) = setup();
    let f = Row::fields();
    // Ten alternating lists of 50 conditions: each adds six levels (log2 of 50, rounded up), not
    // fifty. The other conditions name missing ids, so `n > 190` decides.
    let mut filter = f.n.gt(Some(190));
    for level in 0..10 {
        let others: Vec<Filter<Row>> = (0..49).map(|i| f.id.eq(1000 + level * 100 + i)).collect();
        filter = if level % 2 == 0 {
            Filter::any(others.into_iter().chain([filter]))
        } else {
            Filter::all(others.into_iter().map(|o| !o).chain([filter]))
        };
    }
    assert_eq!(run1(&c, filter).unwrap(), expect(&d, |r| r.n > Some(190)));
}

const CHILD_ENV: &str = "DB4_TESTS_QUERY_LIMITS_CHILD";

/// Runs `body` on a 2 MiB stack in a child process running only `test` from this binary: a
/// stack overflow aborts the whole process, which a test could not report otherwise.
fn in_child_process(test: &str, body: impl FnOnce() + Send + 'static) {
    if std::env::var(CHILD_ENV).as_deref() == Ok(test) {
        let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(body).unwrap();
        worker.join().unwrap();
        return;
    }
    let name = format!("{}::{test}", module_path!().split_once("::").unwrap().1);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name.as_str(), "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD_ENV, test)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(out.status.success(), "the child process failed ({}):\n{tail}", out.status);
}

/// Clones `filter`, prints it (bounded), runs it and drops both copies.
fn exercise(c: &Collection<Row>, filter: Filter<Row>) -> Result<Vec<i64>> {
    let copy = filter.clone();
    let text = format!("{copy:?}");
    assert!(text.len() < 100_000, "Debug output is bounded ({} bytes)", text.len());
    let text = format!("{copy:#?}");
    assert!(text.len() < 200_000, "pretty Debug output is bounded ({} bytes)", text.len());
    drop(copy);
    let result = run1(c, filter.clone());
    drop(filter);
    result
}

#[test]
fn deep_filters_can_be_built_cloned_printed_dropped_and_run() {
    in_child_process("deep_filters_can_be_built_cloned_printed_dropped_and_run", || {
        let (_db, c, d) = setup();
        let f = Row::fields();
        for depth in [100_000_usize, 100_001, 250_000] {
            let want = expect(&d, |r| (r.n < Some(50)) == depth.is_multiple_of(2));
            assert_eq!(exercise(&c, nested_nots(depth)).unwrap(), want, "{depth} nested !");
        }
        for depth in [100_000, 250_000] {
            assert_refused(exercise(&c, alternating(depth)), "deep");
        }
        // Right-nested chains of one operator flatten into one balanced list, which is too long
        // as SQL text at this length (2,000 run: `any_and_all_of_many_conditions_run`).
        let mut and_chain = f.n.is_some();
        let mut or_chain = f.id.eq(-1);
        for i in 0..100_000 {
            and_chain = f.id.ne(ROWS + i).and(and_chain);
            or_chain = f.id.eq(ROWS + i).or(or_chain);
        }
        assert_refused(exercise(&c, and_chain), "bytes of SQL");
        assert_refused(exercise(&c, or_chain), "bytes of SQL");
        // Negations between the levels of a deep chain.
        let mut mixed = f.n.gt(Some(100));
        for i in 0..100_000 {
            mixed = !(f.id.eq(ROWS + i) | !mixed);
        }
        assert_refused(exercise(&c, mixed), "bytes of SQL");
        // Singleton lists nest without adding depth.
        let mut singletons = f.n.gt(Some(150));
        for i in 0..100_000 {
            singletons =
                if i % 2 == 0 { Filter::all([singletons]) } else { Filter::any([singletons, Filter::any([])]) };
        }
        assert_eq!(exercise(&c, singletons).unwrap(), expect(&d, |r| r.n > Some(150)));
        // A query holding a deep filter prints and drops too.
        let q = c.query().filter(nested_nots(100_000)).filter(alternating(100_000));
        assert!(format!("{q:?}").len() < 300_000);
        drop(q);
    });
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "long_ids")]
struct LongId {
    #[id]
    id: String,
    n: i64,
}

/// SQLite with a Durable Object's value limit: a statement binding a text or blob longer than
/// 2 MB fails, as it does there (natively SQLite would take it).
struct ValueLimited(db4::SqliteBackend);

struct LimitedConnection<'c>(&'c dyn db4::Connection);

const DO_MAX_VALUE_BYTES: usize = 2_000_000;

fn check_values(params: &[db4::Value]) -> db4::Result<()> {
    for p in params {
        let len = match p {
            db4::Value::Text(s) => s.len(),
            db4::Value::Blob(b) => b.len(),
            _ => 0,
        };
        if len > DO_MAX_VALUE_BYTES {
            let e = db4::BackendError::new(db4::BackendErrorKind::TooBig, format!("a bound value of {len} bytes"));
            return Err(e.into());
        }
    }
    Ok(())
}

impl db4::Connection for LimitedConnection<'_> {
    fn execute(&self, sql: &str, params: &[db4::Value]) -> db4::Result<usize> {
        check_values(params)?;
        self.0.execute(sql, params)
    }

    fn query(
        &self,
        sql: &str,
        params: &[db4::Value],
        row: &mut dyn FnMut(&dyn db4::Row) -> db4::Result<()>,
    ) -> db4::Result<()> {
        check_values(params)?;
        self.0.query(sql, params, row)
    }

    fn execute_ddl(&self, sql: &str) -> db4::Result<()> {
        self.0.execute_ddl(sql)
    }
}

impl db4::Backend for ValueLimited {
    fn run(&self, access: db4::Access, f: &mut dyn FnMut(&dyn db4::Connection) -> db4::Result<()>) -> db4::Result<()> {
        self.0.run(access, &mut |conn| f(&LimitedConnection(conn)))
    }
}

#[test]
fn id_lists_longer_than_one_bound_value_are_split() {
    // 2 500 ids of 1 000 bytes: 2.5 MB of JSON, more than one value may hold (2 MB) on a
    // Durable Object, whose limit the backend here enforces.
    let backend = db4::SqliteBackend::open_in_memory(&db4::SqliteOptions::default()).unwrap();
    let db = Db::with_backend(ValueLimited(backend), DbOptions::default()).unwrap();
    let c = db.collection::<LongId>().unwrap();
    let ids: Vec<String> = (0..2500).map(|i| format!("{i:04}{}", "x".repeat(996))).collect();
    let docs: Vec<LongId> = ids.iter().enumerate().map(|(n, id)| LongId { id: id.clone(), n: n as i64 }).collect();
    c.insert_many(&docs).unwrap();
    let mut wanted: Vec<&str> = ids.iter().map(String::as_str).collect();
    wanted.push("absent");
    let got = c.get_many(wanted.iter().copied()).unwrap();
    assert_eq!(got.len(), 2501);
    assert!(got[..2500].iter().enumerate().all(|(n, d)| d.as_ref().map(|d| d.n) == Some(n as i64)));
    assert_eq!(got[2500], None);
    // Inside a transaction with a savepoint, a query delete goes by id lists too.
    db.transaction(|tx| {
        let c = tx.collection::<LongId>()?;
        tx.savepoint("s")?;
        assert_eq!(c.query().delete()?, 2500);
        tx.rollback_to("s")?;
        assert_eq!(c.count()?, 2500);
        assert_eq!(c.query().delete()?, 2500);
        Ok(())
    })
    .unwrap();
    assert_eq!(c.count().unwrap(), 0);
}
