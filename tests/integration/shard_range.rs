//! Ranges through the shard router (`ShardRouter::range`, `range_index`): pages equal to the
//! same range over one database holding every document (forwards, then backwards from the
//! end, with random bounds, directions, filters, prefixes and page sizes), paging across
//! writes and splits, cursor misuse, and `iter`.
//!
//! Cases: `DB4_PROPTEST_CASES` (default 64 per property).

use db4::prelude::*;
use db4::shard::{ShardRouter, ShardRouterConfig};
use db4::{Collection, Cursor, Db, Error, Page};
use db4_tests::TempDir;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use std::ops::Bound;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "events", index(name = "by_tenant_at", fields(tenant, at desc)))]
struct Event {
    #[id]
    id: i64,
    #[partition_key]
    tenant: String,
    #[range_index]
    at: Option<i64>,
    kind: String,
}

fn config(shards: u32) -> ShardRouterConfig {
    ShardRouterConfig { shard_count: shards, virtual_nodes: 64, ..Default::default() }
}

fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn event(id: i64, tenant: usize, at: Option<i64>, kind: bool) -> Event {
    Event { id, tenant: format!("t{tenant}"), at, kind: if kind { "a".into() } else { "b".into() } }
}

/// Which filter a range gets.
#[derive(Debug, Clone)]
enum Cond {
    None,
    Kind,
    Tenant(usize),
    Tenants(usize, usize),
    AtNotNull,
}

fn filter(cond: &Cond) -> Option<Filter<Event>> {
    let f = Event::fields();
    match cond {
        Cond::None => None,
        Cond::Kind => Some(f.kind.eq("a".to_owned())),
        Cond::Tenant(t) => Some(f.tenant.eq(format!("t{t}"))),
        Cond::Tenants(a, b) => Some(f.tenant.in_list([format!("t{a}"), format!("t{b}")])),
        Cond::AtNotNull => Some(f.at.ne(None)),
    }
}

/// A range's shape, applied the same way to a collection's range and a router's.
#[derive(Debug, Clone)]
struct Shape {
    /// The composite index `by_tenant_at` instead of the field `at`.
    composite: bool,
    /// The tenant prefix (composite only).
    prefix: Option<usize>,
    lower: Bound<Option<i64>>,
    upper: Bound<Option<i64>>,
    descending: bool,
    cond: Cond,
}

/// Where a page starts.
enum Pos<'a> {
    Start,
    After(&'a Cursor),
    Before(&'a Cursor),
}

macro_rules! shaped {
    ($range:expr, $shape:expr, $pos:expr, $limit:expr) => {{
        let shape: &Shape = $shape;
        let mut r = $range.between((shape.lower, shape.upper)).limit($limit);
        if let Some(t) = shape.prefix {
            r = r.prefix(format!("t{t}").as_str());
        }
        if shape.descending {
            r = r.descending();
        }
        if let Some(f) = filter(&shape.cond) {
            r = r.filter(f);
        }
        match $pos {
            Pos::Start => r,
            Pos::After(c) => r.after(c),
            Pos::Before(c) => r.before(c),
        }
    }};
}

fn db_page(c: &Collection<Event>, shape: &Shape, pos: Pos<'_>, limit: usize) -> db4::Result<Page<Event>> {
    if shape.composite {
        shaped!(c.range_index("by_tenant_at"), shape, pos, limit).fetch()
    } else {
        shaped!(c.range(Event::fields().at), shape, pos, limit).fetch()
    }
}

fn router_page(r: &ShardRouter<Event>, shape: &Shape, pos: Pos<'_>, limit: usize) -> db4::Result<Page<Event>> {
    if shape.composite {
        shaped!(r.range_index("by_tenant_at"), shape, pos, limit).fetch()
    } else {
        shaped!(r.range(Event::fields().at), shape, pos, limit).fetch()
    }
}

/// What a page shows of itself: its ids, `has_more`, and which cursors it has.
type Summary = (Vec<i64>, bool, bool, bool);

fn summary(p: &Page<Event>) -> Summary {
    (p.items.iter().map(|e| e.id).collect(), p.has_more, p.next.is_some(), p.prev.is_some())
}

/// Pages forwards from the start, then backwards from the last page; each page's summary.
fn walk(fetch: &dyn Fn(Pos<'_>, usize) -> db4::Result<Page<Event>>, sizes: &[usize]) -> db4::Result<Vec<Summary>> {
    let mut out = Vec::new();
    let mut step = 0;
    let mut size = || {
        step += 1;
        sizes[step % sizes.len()]
    };
    let mut page = fetch(Pos::Start, size())?;
    out.push(summary(&page));
    while let Some(next) = page.next.clone() {
        page = fetch(Pos::After(&next), size())?;
        out.push(summary(&page));
        assert!(out.len() < 1000, "paging does not end");
    }
    while let Some(prev) = page.prev.clone() {
        page = fetch(Pos::Before(&prev), size())?;
        out.push(summary(&page));
        assert!(out.len() < 2000, "paging back does not end");
    }
    Ok(out)
}

fn router_equals_one_database(docs: &[Event], shards: u32, shape: &Shape, sizes: &[usize]) -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let one = db.collection::<Event>()?;
    one.insert_many(docs)?;
    let router = ShardRouter::<Event>::in_memory(config(shards))?;
    for d in docs {
        router.insert(d)?;
    }
    let want = walk(&|pos, n| db_page(&one, shape, pos, n), sizes)?;
    let got = walk(&|pos, n| router_page(&router, shape, pos, n), sizes)?;
    assert_eq!(got, want, "{shape:?} over {shards} shards, pages of {sizes:?}");
    Ok(())
}

fn docs_strategy() -> impl Strategy<Value = Vec<Event>> {
    let at = prop_oneof![1 => Just(None), 6 => (-5i64..6).prop_map(Some)];
    // Tenant 0 is most frequent, so one shard holds more than its share of a page.
    let tenant = prop_oneof![2 => Just(0usize), 3 => 0usize..6];
    proptest::collection::vec((tenant, at, any::<bool>()), 0..120)
        .prop_map(|rows| rows.into_iter().enumerate().map(|(i, (t, at, kind))| event(i as i64, t, at, kind)).collect())
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    let key = prop_oneof![1 => Just(None), 4 => (-6i64..7).prop_map(Some)];
    let bound = prop_oneof![
        2 => Just(Bound::Unbounded),
        1 => key.clone().prop_map(Bound::Included),
        1 => key.prop_map(Bound::Excluded),
    ];
    let cond = prop_oneof![
        3 => Just(Cond::None),
        1 => Just(Cond::Kind),
        1 => (0usize..6).prop_map(Cond::Tenant),
        1 => (0usize..6, 0usize..6).prop_map(|(a, b)| Cond::Tenants(a, b)),
        1 => Just(Cond::AtNotNull),
    ];
    (any::<bool>(), proptest::option::of(0usize..6), bound.clone(), bound, any::<bool>(), cond).prop_map(
        |(composite, prefix, lower, upper, descending, cond)| Shape {
            composite,
            prefix: prefix.filter(|_| composite),
            lower,
            upper,
            descending,
            cond,
        },
    )
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn shard_range_pages_equal_one_database(
        docs in docs_strategy(),
        shards in 2u32..6,
        shape in shape_strategy(),
        // Pages above ~10 rows over 3 or more shards are read in rounds.
        sizes in proptest::collection::vec(prop_oneof![3 => 1usize..8, 1 => 8usize..60], 1..5),
    ) {
        router_equals_one_database(&docs, shards, &shape, &sizes).unwrap();
    }
}

#[test]
fn shard_range_a_composite_prefix_of_every_tenant_equals_one_database() -> db4::Result<()> {
    let docs: Vec<Event> =
        (0..120).map(|i| event(i, (i % 5) as usize, (i % 7 != 0).then_some(i % 9), i % 2 == 0)).collect();
    for t in 0..6 {
        for descending in [false, true] {
            let shape = Shape {
                composite: true,
                prefix: Some(t),
                lower: Bound::Unbounded,
                upper: Bound::Unbounded,
                descending,
                cond: Cond::None,
            };
            router_equals_one_database(&docs, 4, &shape, &[3, 5])?;
        }
    }
    Ok(())
}

#[test]
fn shard_range_big_pages_over_a_skewed_spread_equal_one_database() -> db4::Result<()> {
    // Most documents on one tenant (one shard), big pages over many shards: the first round's
    // share of a page is too small for that shard, which is read again.
    let docs: Vec<Event> = (0..400)
        .map(|i| event(i, if i % 5 == 0 { (i % 23) as usize } else { 3 }, (i % 11 != 0).then_some(i % 29), i % 2 == 0))
        .collect();
    for shards in [3, 5, 8] {
        for descending in [false, true] {
            for cond in [Cond::None, Cond::Kind] {
                let shape = Shape {
                    composite: false,
                    prefix: None,
                    lower: Bound::Included(Some(2)),
                    upper: Bound::Unbounded,
                    descending,
                    cond,
                };
                router_equals_one_database(&docs, shards, &shape, &[40, 97, 13])?;
            }
        }
    }
    Ok(())
}

/// Pages `at` forwards through the router with `size` per page, calling `between` after each
/// page; returns every item read.
fn page_through(
    router: &ShardRouter<Event>,
    size: usize,
    mut between: impl FnMut(usize) -> db4::Result<()>,
) -> db4::Result<Vec<Event>> {
    let mut items = Vec::new();
    let mut page = router.range(Event::fields().at).limit(size).fetch()?;
    let mut n = 0;
    loop {
        items.extend(page.items.clone());
        let Some(next) = page.next.clone() else { break };
        between(n)?;
        n += 1;
        page = router.range(Event::fields().at).after(&next).limit(size).fetch()?;
    }
    Ok(items)
}

/// The (at, id) order of `at` ascending: `None` first.
fn in_order(items: &[Event]) -> bool {
    items.windows(2).all(|w| (w[0].at, w[0].id) < (w[1].at, w[1].id))
}

#[test]
fn shard_range_paging_across_inserts_and_deletes_skips_and_repeats_nothing() -> db4::Result<()> {
    const VOLATILE: i64 = 10_000;
    let router = ShardRouter::<Event>::in_memory(config(4))?;
    let stable: Vec<Event> =
        (0..200).map(|i| event(i, (i % 11) as usize, (i % 13 != 0).then_some(i % 37), true)).collect();
    for d in &stable {
        router.insert(d)?;
    }
    let mut live: Vec<Event> = Vec::new();
    let items = page_through(&router, 7, |n| {
        let n = n as i64;
        // Insert before, at and after the position, on several tenants; delete an older one.
        for j in 0..3 {
            let e = event(VOLATILE + n * 3 + j, ((n + j) % 11) as usize, Some((n * 5 + j * 13) % 40 - 2), false);
            router.insert(&e)?;
            live.push(e);
        }
        if n % 2 == 0 && !live.is_empty() {
            let gone = live.remove((n as usize * 7) % live.len());
            assert!(router.delete(&gone.tenant, gone.id)?);
        }
        Ok(())
    })?;
    assert!(in_order(&items), "pages out of order");
    let got: Vec<i64> = items.iter().map(|e| e.id).filter(|&id| id < VOLATILE).collect();
    let mut want = stable.clone();
    want.sort_by_key(|e| (e.at, e.id));
    assert_eq!(got, want.iter().map(|e| e.id).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn shard_range_paging_across_splits_skips_and_repeats_nothing() -> db4::Result<()> {
    let dir = TempDir::new("shard-range-split");
    let router = ShardRouter::<Event>::open(dir.path(), config(2))?;
    let docs: Vec<Event> = (0..600).map(|i| event(i, (i % 41) as usize, Some(i % 97), i % 3 == 0)).collect();
    for d in &docs {
        router.insert(d)?;
    }
    let mut want = docs.clone();
    want.sort_by_key(|e| (e.at, e.id));
    let want: Vec<i64> = want.iter().map(|e| e.id).collect();
    // A split between two pages moves documents from a shard to a new one: a global cursor
    // holds for whichever shard holds a document.
    let items = page_through(&router, 25, |n| {
        if n == 3 || n == 11 {
            let shard = router.shards()[n % router.shards().len()];
            router.split(shard)?;
        }
        Ok(())
    })?;
    assert_eq!(router.shards().len(), 4);
    assert_eq!(items.iter().map(|e| e.id).collect::<Vec<_>>(), want);
    // And a reader paging all the while another thread splits.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (router, done, want) = (router.clone(), done.clone(), want.clone());
        std::thread::spawn(move || -> db4::Result<u64> {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                let ids: Vec<i64> =
                    router.range(Event::fields().at).iter(40).map(|e| e.map(|e| e.id)).collect::<db4::Result<_>>()?;
                assert_eq!(ids, want);
                reads += 1;
            }
            Ok(reads)
        })
    };
    for shard in router.shards() {
        router.split(shard)?;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader panicked")?;
    assert!(reads > 0);
    Ok(())
}

fn is_invalid_cursor<T: std::fmt::Debug>(r: db4::Result<T>) -> bool {
    matches!(r, Err(Error::InvalidCursor { .. }))
}

#[test]
fn shard_range_cursor_misuse_is_invalid_cursor() -> db4::Result<()> {
    let router = ShardRouter::<Event>::in_memory(config(3))?;
    for i in 0..40 {
        router.insert(&event(i, (i % 4) as usize, Some(i % 10), i % 2 == 0))?;
    }
    let f = Event::fields();
    let cursor = router.range(f.at).limit(5).fetch()?.next.expect("a second page");
    // The cursor works where it belongs, both ways.
    assert_eq!(router.range(f.at).after(&cursor).limit(5).fetch()?.items.len(), 5);
    assert_eq!(router.range(f.at).before(&cursor).limit(5).fetch()?.items.len(), 4);
    // Another index, direction, bound, filter, prefix.
    assert!(is_invalid_cursor(router.range_index("by_tenant_at").after(&cursor).fetch()));
    assert!(is_invalid_cursor(router.range_index("by_tenant_at").prefix("t1").after(&cursor).fetch()));
    assert!(is_invalid_cursor(router.range(f.at).descending().after(&cursor).fetch()));
    assert!(is_invalid_cursor(router.range(f.at).gt(Some(2)).after(&cursor).fetch()));
    assert!(is_invalid_cursor(router.range(f.at).filter(f.kind.eq("a".to_owned())).after(&cursor).fetch()));
    assert!(is_invalid_cursor(router.range(f.at).filter(f.kind.eq("a".to_owned())).before(&cursor).fetch()));
    // A router cursor on a shard's own collection (the one whose secret signs it too), and on
    // every other shard.
    for shard in router.shards() {
        let c = router.shard(shard)?;
        assert!(is_invalid_cursor(c.range(f.at).after(&cursor).fetch()), "shard {shard:?}");
        // A shard's own cursor on the router.
        let own = c.range(f.at).limit(2).fetch()?.next.expect("a shard's second page");
        assert!(is_invalid_cursor(router.range(f.at).after(&own).fetch()), "shard {shard:?}");
        assert!(is_invalid_cursor(router.range(f.at).before(&own).fetch()), "shard {shard:?}");
    }
    // A single database's cursor.
    let db = Db::open_in_memory()?;
    let one = db.collection::<Event>()?;
    one.insert(&event(1, 0, Some(1), true))?;
    one.insert(&event(2, 0, Some(2), true))?;
    let single = one.range(f.at).limit(1).fetch()?.next.expect("a second page");
    assert!(is_invalid_cursor(router.range(f.at).after(&single).fetch()));
    assert!(is_invalid_cursor(one.range(f.at).after(&cursor).fetch()));
    // Tampered: every one-character edit is refused when parsed or when used.
    let text = cursor.to_string();
    for i in 0..text.len() {
        for c in ['A', 'z', '-'] {
            let mut edited: Vec<char> = text.chars().collect();
            if edited[i] == c {
                continue;
            }
            edited[i] = c;
            let edited: String = edited.into_iter().collect();
            match Cursor::parse(&edited) {
                Err(Error::InvalidCursor { .. }) => {}
                Err(e) => panic!("{edited}: {e}"),
                Ok(bad) => {
                    assert!(is_invalid_cursor(router.range(f.at).after(&bad).fetch()), "{edited}");
                    assert!(is_invalid_cursor(router.range(f.at).before(&bad).fetch()), "{edited}");
                }
            }
        }
    }
    // A router reopened over the same directory keeps its cursors; another router refuses them.
    let dir = TempDir::new("shard-range-cursor");
    let stored = {
        let r = ShardRouter::<Event>::open(dir.path(), config(3))?;
        for i in 0..20 {
            r.insert(&event(i, (i % 4) as usize, Some(i), true))?;
        }
        r.range(f.at).limit(5).fetch()?.next.expect("a second page")
    };
    let reopened = ShardRouter::<Event>::open(dir.path(), config(3))?;
    let page = reopened.range(f.at).after(&stored).limit(5).fetch()?;
    assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), [5, 6, 7, 8, 9]);
    assert!(is_invalid_cursor(router.range(f.at).after(&stored).fetch()));
    // Bad input other than cursors.
    assert!(matches!(router.range(f.at).limit(0).fetch(), Err(Error::InvalidQuery { .. })));
    assert!(matches!(router.range_index("nope").fetch(), Err(Error::InvalidQuery { .. })));
    assert!(matches!(router.range_index("by_tenant_at").prefix(("t1", 3, 4)).fetch(), Err(Error::InvalidQuery { .. })));
    Ok(())
}

#[test]
fn shard_range_iter_yields_every_document_once_in_order() -> db4::Result<()> {
    let router = ShardRouter::<Event>::in_memory(config(5))?;
    let db = Db::open_in_memory()?;
    let one = db.collection::<Event>()?;
    let docs: Vec<Event> =
        (0..333).map(|i| event(i, (i % 17) as usize, (i % 19 != 0).then_some((i * 31) % 50), i % 2 == 0)).collect();
    for d in &docs {
        router.insert(d)?;
    }
    one.insert_many(&docs)?;
    let f = Event::fields();
    for size in [1, 7, 100, 1000] {
        let got: Vec<Event> = router.range(f.at).iter(size).collect::<db4::Result<_>>()?;
        assert_eq!(got.len(), docs.len());
        assert!(in_order(&got));
        let want: Vec<Event> = one.range(f.at).iter(size).collect::<db4::Result<_>>()?;
        assert_eq!(got, want);
        let got: Vec<Event> = router.range(f.at).descending().iter(size).collect::<db4::Result<_>>()?;
        let want: Vec<Event> = one.range(f.at).descending().iter(size).collect::<db4::Result<_>>()?;
        assert_eq!(got, want);
        let got: Vec<Event> = router.range_index("by_tenant_at").prefix("t3").iter(size).collect::<db4::Result<_>>()?;
        let want: Vec<Event> = one.range_index("by_tenant_at").prefix("t3").iter(size).collect::<db4::Result<_>>()?;
        assert_eq!(got, want);
    }
    // Backwards from a cursor, nearest first, as on one database.
    let mid = router.range(f.at).limit(150).fetch()?.next.expect("more than 150");
    let one_mid = one.range(f.at).limit(150).fetch()?.next.expect("more than 150");
    let got: Vec<i64> =
        router.range(f.at).before(&mid).iter(13).map(|e| e.map(|e| e.id)).collect::<db4::Result<_>>()?;
    let want: Vec<i64> =
        one.range(f.at).before(&one_mid).iter(13).map(|e| e.map(|e| e.id)).collect::<db4::Result<_>>()?;
    assert_eq!(got.len(), 149);
    assert_eq!(got, want);
    assert!(router.range(f.at).iter(0).next().is_some_and(|r| r.is_err()));
    Ok(())
}

/// The same ranges through `DurableRouter` (the Worker's router) over shard objects served in
/// process (`LocalShards`): every request goes through the wire protocol.
mod durable {
    use super::*;
    use crate::remote_router::block_on;
    use db4::remote::{DurableRange, DurableRouter, LocalShards, MAX_RANGE_PAGE};
    use db4::shard::MigrationStep;
    use std::rc::Rc;

    fn open(shards: u32) -> db4::Result<(Rc<LocalShards>, DurableRouter<Event>)> {
        let local = Rc::new(LocalShards::in_memory()?.serve::<Event>());
        let router = block_on(DurableRouter::<Event>::open(Rc::clone(&local), config(shards)))?;
        Ok((local, router))
    }

    fn page(r: &DurableRouter<Event>, shape: &Shape, pos: Pos<'_>, limit: usize) -> db4::Result<Page<Event>> {
        if shape.composite {
            block_on(shaped!(r.range_index("by_tenant_at"), shape, pos, limit).fetch())
        } else {
            block_on(shaped!(r.range(Event::fields().at), shape, pos, limit).fetch())
        }
    }

    fn equals_one_database(docs: &[Event], shards: u32, shape: &Shape, sizes: &[usize]) -> db4::Result<()> {
        let db = Db::open_in_memory()?;
        let one = db.collection::<Event>()?;
        one.insert_many(docs)?;
        let (_local, router) = open(shards)?;
        for d in docs {
            block_on(router.insert(d))?;
        }
        let want = walk(&|pos, n| db_page(&one, shape, pos, n), sizes)?;
        let got = walk(&|pos, n| page(&router, shape, pos, n), sizes)?;
        assert_eq!(got, want, "{shape:?} over {shards} shard objects, pages of {sizes:?}");
        Ok(())
    }

    proptest! {
        #![proptest_config(proptest_config())]

        #[test]
        fn durable_range_pages_equal_one_database(
            docs in docs_strategy(),
            shards in 2u32..6,
            shape in shape_strategy(),
            sizes in proptest::collection::vec(prop_oneof![3 => 1usize..8, 1 => 8usize..60], 1..5),
        ) {
            equals_one_database(&docs, shards, &shape, &sizes).unwrap();
        }
    }

    #[test]
    fn durable_range_prefixes_and_skewed_big_pages_equal_one_database() -> db4::Result<()> {
        let docs: Vec<Event> =
            (0..120).map(|i| event(i, (i % 5) as usize, (i % 7 != 0).then_some(i % 9), i % 2 == 0)).collect();
        for t in 0..6 {
            for descending in [false, true] {
                let shape = Shape {
                    composite: true,
                    prefix: Some(t),
                    lower: Bound::Unbounded,
                    upper: Bound::Unbounded,
                    descending,
                    cond: Cond::None,
                };
                equals_one_database(&docs, 4, &shape, &[3, 5])?;
            }
        }
        let skewed: Vec<Event> = (0..400)
            .map(|i| {
                event(i, if i % 5 == 0 { (i % 23) as usize } else { 3 }, (i % 11 != 0).then_some(i % 29), i % 2 == 0)
            })
            .collect();
        for descending in [false, true] {
            let shape = Shape {
                composite: false,
                prefix: None,
                lower: Bound::Included(Some(2)),
                upper: Bound::Unbounded,
                descending,
                cond: Cond::Kind,
            };
            equals_one_database(&skewed, 8, &shape, &[40, 97, 13])?;
        }
        Ok(())
    }

    #[test]
    fn a_prefix_on_the_partition_key_asks_one_shard_object() -> db4::Result<()> {
        let (local, router) = open(6)?;
        for i in 0..60 {
            block_on(router.insert(&event(i, (i % 6) as usize, Some(i), true)))?;
        }
        block_on(router.range_index("by_tenant_at").limit(5).fetch())?; // the secret, once
        let before = local.requests();
        let page = block_on(router.range_index("by_tenant_at").prefix("t2").limit(50).fetch())?;
        assert_eq!(local.requests() - before, 1, "one shard object asked");
        let want: Vec<i64> = (0..60).filter(|i| i % 6 == 2).rev().collect();
        assert_eq!(page.items.iter().map(|e| e.id).collect::<Vec<_>>(), want);
        let before = local.requests();
        block_on(router.range(Event::fields().at).limit(50).fetch())?;
        assert!(local.requests() - before >= 6, "every shard object asked");
        Ok(())
    }

    /// Pages forwards through `at` with `size` per page, calling `between` after each page.
    fn page_through(
        router: &DurableRouter<Event>,
        size: usize,
        mut between: impl FnMut(usize) -> db4::Result<()>,
    ) -> db4::Result<Vec<Event>> {
        let mut items = Vec::new();
        let mut page = block_on(router.range(Event::fields().at).limit(size).fetch())?;
        let mut n = 0;
        loop {
            items.extend(page.items.clone());
            let Some(next) = page.next.clone() else { break };
            between(n)?;
            n += 1;
            page = block_on(router.range(Event::fields().at).after(&next).limit(size).fetch())?;
        }
        Ok(items)
    }

    #[test]
    fn durable_range_paging_across_writes_and_every_step_of_a_split() -> db4::Result<()> {
        let (local, router) = open(2)?;
        let docs: Vec<Event> = (0..600).map(|i| event(i, (i % 41) as usize, Some(i % 97), i % 3 == 0)).collect();
        for d in &docs {
            block_on(router.insert(d))?;
        }
        let mut want = docs.clone();
        want.sort_by_key(|e| (e.at, e.id));
        let want: Vec<i64> = want.iter().map(|e| e.id).collect();
        // Another router (another Worker isolate's view) drives a split one recorded step per
        // page, so pages are read with the split stopped at every step, through a router whose
        // map goes stale at each epoch change; inserts land between pages too.
        let driver = block_on(DurableRouter::<Event>::open(Rc::clone(&local), config(2)))?;
        let mut seen = Vec::new();
        let mut volatile = 0;
        let items = page_through(&router, 9, |n| {
            if n == 2 {
                block_on(driver.begin_split(driver.shards()[0]))?;
            }
            if n > 2
                && let Some(step) = block_on(driver.split_step())?
            {
                seen.push(step);
            }
            let e = event(10_000 + volatile, n % 41, Some((n as i64 * 7) % 97), false);
            block_on(router.insert(&e))?;
            volatile += 1;
            Ok(())
        })?;
        assert!(seen.contains(&MigrationStep::Copying) && seen.contains(&MigrationStep::Switched), "{seen:?}");
        assert!(driver.map().plan.is_none(), "the split finished while paging ({seen:?})");
        assert_eq!(driver.shards().len(), 3);
        let got: Vec<i64> = items.iter().map(|e| e.id).filter(|&id| id < 10_000).collect();
        assert_eq!(got, want, "no document skipped or repeated");
        assert!(in_order(&items), "pages out of order");
        // Stopped right after the switch: the source still holds the moved copies.
        let (local, router) = open(3)?;
        for d in &docs {
            block_on(router.insert(d))?;
        }
        block_on(router.begin_split(router.shards()[1]))?;
        while block_on(router.split_step())? != Some(MigrationStep::Switched) {}
        let ids: Vec<i64> = page_through(&router, 50, |_| Ok(()))?.iter().map(|e| e.id).collect();
        assert_eq!(ids, want, "between the switch and the cleanup");
        let back = block_on(router.range(Event::fields().at).descending().limit(MAX_RANGE_PAGE).fetch())?;
        assert_eq!(back.items.iter().rev().map(|e| e.id).collect::<Vec<_>>(), want);
        assert!(!back.has_more);
        block_on(router.resume_split())?;
        drop(local);
        Ok(())
    }

    fn invalid_cursor<T: std::fmt::Debug>(r: db4::Result<T>) -> bool {
        matches!(r, Err(Error::InvalidCursor { .. }))
    }

    #[test]
    fn durable_range_cursor_misuse_is_invalid_cursor() -> db4::Result<()> {
        let (local, router) = open(3)?;
        for i in 0..40 {
            block_on(router.insert(&event(i, (i % 4) as usize, Some(i % 10), i % 2 == 0)))?;
        }
        let f = Event::fields();
        let fetch = |r: DurableRange<'_, Event, _>| block_on(r.fetch());
        let cursor = fetch(router.range(f.at).limit(5))?.next.expect("a second page");
        assert_eq!(fetch(router.range(f.at).after(&cursor).limit(5))?.items.len(), 5);
        assert_eq!(fetch(router.range(f.at).before(&cursor).limit(5))?.items.len(), 4);
        // Another router of the same shard objects (another isolate) accepts it.
        let other = block_on(DurableRouter::<Event>::open(Rc::clone(&local), config(3)))?;
        assert_eq!(fetch(other.range(f.at).after(&cursor).limit(5))?.items.len(), 5);
        assert!(invalid_cursor(fetch(router.range(f.at).descending().after(&cursor))));
        assert!(invalid_cursor(fetch(router.range(f.at).gt(Some(2)).after(&cursor))));
        assert!(invalid_cursor(fetch(router.range(f.at).filter(f.kind.eq("a".to_owned())).after(&cursor))));
        assert!(invalid_cursor(block_on(router.range_index("by_tenant_at").after(&cursor).fetch())));
        // A shard object's own collection refuses the router's cursor, and the other way round.
        let shard = router.shards()[0];
        let server = local.server("events", shard)?;
        let c = server.db().collection::<Event>()?;
        assert!(invalid_cursor(c.range(f.at).after(&cursor).fetch()));
        let own = c.range(f.at).limit(2).fetch()?.next.expect("a shard's second page");
        assert!(invalid_cursor(fetch(router.range(f.at).after(&own))));
        // Shard objects of another deployment sign with another secret.
        let (_elsewhere, stranger) = open(3)?;
        block_on(stranger.insert(&event(1, 0, Some(1), true)))?;
        assert!(invalid_cursor(fetch(stranger.range(f.at).after(&cursor))));
        // Every one-character edit is refused when parsed or used.
        let text = cursor.to_string();
        for i in 0..text.len() {
            let mut edited: Vec<char> = text.chars().collect();
            edited[i] = if edited[i] == 'A' { 'B' } else { 'A' };
            let edited: String = edited.into_iter().collect();
            if let Ok(bad) = Cursor::parse(&edited) {
                assert!(invalid_cursor(fetch(router.range(f.at).after(&bad))), "{edited}");
            }
        }
        // Bad input other than cursors, refused before any shard is asked.
        let invalid_query = |r: db4::Result<Page<Event>>| matches!(r, Err(Error::InvalidQuery { .. }));
        assert!(invalid_query(fetch(router.range(f.at).limit(0))));
        assert!(invalid_query(fetch(router.range(f.at).limit(MAX_RANGE_PAGE + 1))));
        assert!(invalid_query(block_on(router.range_index("nope").fetch())));
        assert!(invalid_query(block_on(router.range_index("by_tenant_at").prefix(("t1", 3, 4)).fetch())));
        Ok(())
    }
}
