//! The range builder: bounds, directions, prefixes of composite indexes, filters, keyset
//! pages forwards and backwards, lazy iteration, and the cursors that tie pages together.

use db4::{Cursor, Db, Document, Error, Ordered};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Draft,
    Published,
    Archived,
}

impl Ordered for Status {}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles", index(name = "by_tenant_created", fields(tenant_id, created_at desc)))]
#[db4(index(name = "by_tenant_status_created", fields(tenant_id, status, created_at desc)))]
pub struct Article {
    #[id]
    pub id: String,
    pub tenant_id: String,
    pub status: Status,
    #[range_index]
    pub created_at: i64,
    pub views: i64,
}

fn article(i: i64) -> Article {
    let status = [Status::Draft, Status::Published, Status::Archived][(i % 3) as usize];
    Article { id: format!("a{i:03}"), tenant_id: format!("t{}", i % 2), status, created_at: i / 2, views: i }
}

fn seeded(n: i64) -> db4::Result<(Db, db4::Collection<Article>)> {
    let db = Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    // Inserted out of id order, so that row order says nothing about id order.
    let mut docs: Vec<Article> = (0..n).map(article).collect();
    docs.sort_by_key(|a| (a.views * 7919) % 101);
    articles.insert_many(&docs)?;
    Ok((db, articles))
}

fn ids(items: &[Article]) -> Vec<&str> {
    items.iter().map(|a| a.id.as_str()).collect()
}

/// What the index order says: by created_at, ties by id (both ascending).
fn expected(n: i64, keep: impl Fn(&Article) -> bool) -> Vec<String> {
    let mut all: Vec<Article> = (0..n).map(article).filter(|a| keep(a)).collect();
    all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    all.into_iter().map(|a| a.id).collect()
}

#[test]
fn pages_forward_cover_the_range_once_in_order() -> db4::Result<()> {
    let (_db, articles) = seeded(57)?;
    let f = Article::fields();
    let mut seen = Vec::new();
    let mut page = articles.range(f.created_at).limit(10).fetch()?;
    assert!(page.prev.is_none(), "the first page has nothing before it");
    let mut pages = 1;
    loop {
        seen.extend(page.items.iter().map(|a| a.id.clone()));
        let Some(next) = page.next.clone() else { break };
        assert!(page.has_more);
        page = articles.range(f.created_at).after(&next).limit(10).fetch()?;
        assert!(page.prev.is_some());
        pages += 1;
    }
    assert!(!page.has_more);
    assert_eq!(pages, 6);
    assert_eq!(seen, expected(57, |_| true));
    Ok(())
}

#[test]
fn pages_backward_come_in_the_same_order_as_forward() -> db4::Result<()> {
    let (_db, articles) = seeded(40)?;
    let f = Article::fields();
    let forward: Vec<Vec<String>> = {
        let mut out = Vec::new();
        let mut page = articles.range(f.created_at).limit(7).fetch()?;
        loop {
            out.push(page.items.iter().map(|a| a.id.clone()).collect());
            match page.next {
                Some(c) => page = articles.range(f.created_at).after(&c).limit(7).fetch()?,
                None => break,
            }
        }
        out
    };
    // From the last page back to the first, each page equal to the forward one.
    let mut last = articles.range(f.created_at).limit(7).fetch()?;
    while let Some(c) = last.next.clone() {
        last = articles.range(f.created_at).after(&c).limit(7).fetch()?;
    }
    let mut back = vec![last.items.iter().map(|a| a.id.clone()).collect::<Vec<_>>()];
    let mut prev = last.prev.clone();
    while let Some(c) = prev {
        let page = articles.range(f.created_at).before(&c).limit(7).fetch()?;
        back.push(page.items.iter().map(|a| a.id.clone()).collect());
        assert!(page.next.is_some());
        prev = page.prev.clone();
        assert_eq!(page.has_more, prev.is_some());
    }
    back.reverse();
    assert_eq!(back, forward);
    Ok(())
}

#[test]
fn bounds_inclusive_and_exclusive() -> db4::Result<()> {
    let (_db, articles) = seeded(30)?;
    let f = Article::fields();
    let range = |r: db4::Range<'_, Article, i64>| -> db4::Result<Vec<String>> {
        Ok(r.limit(100).fetch()?.items.into_iter().map(|a| a.id).collect())
    };
    assert_eq!(range(articles.range(f.created_at).between(3..6))?, expected(30, |a| (3..6).contains(&a.created_at)));
    assert_eq!(range(articles.range(f.created_at).between(3..=6))?, expected(30, |a| (3..=6).contains(&a.created_at)));
    assert_eq!(range(articles.range(f.created_at).between(..4))?, expected(30, |a| a.created_at < 4));
    assert_eq!(range(articles.range(f.created_at).between(12..))?, expected(30, |a| a.created_at >= 12));
    use std::ops::Bound::{Excluded, Included};
    assert_eq!(
        range(articles.range(f.created_at).between((Excluded(3), Included(5))))?,
        expected(30, |a| a.created_at > 3 && a.created_at <= 5)
    );
    assert_eq!(
        range(articles.range(f.created_at).gt(10).lte(12))?,
        expected(30, |a| a.created_at > 10 && a.created_at <= 12)
    );
    assert_eq!(range(articles.range(f.created_at).gte(10).lt(12))?, expected(30, |a| (10..12).contains(&a.created_at)));
    let (high, low) = (6, 3);
    assert!(range(articles.range(f.created_at).between(high..low))?.is_empty());
    Ok(())
}

#[test]
fn descending_reverses_keys_and_ties() -> db4::Result<()> {
    let (_db, articles) = seeded(20)?;
    let f = Article::fields();
    let mut want = expected(20, |a| a.created_at <= 6);
    want.reverse();
    let got: Vec<String> = articles
        .range(f.created_at)
        .lte(6)
        .descending()
        .iter(3)
        .map(|a| a.map(|a| a.id))
        .collect::<db4::Result<_>>()?;
    assert_eq!(got, want);
    Ok(())
}

#[test]
fn filters_skip_documents_and_iter_pages_lazily() -> db4::Result<()> {
    let (_db, articles) = seeded(50)?;
    let f = Article::fields();
    let published = || f.status.eq(Status::Published);
    let got: Vec<String> = articles
        .range(f.created_at)
        .filter(published())
        .iter(4)
        .map(|a| a.map(|a| a.id))
        .collect::<db4::Result<_>>()?;
    assert_eq!(got, expected(50, |a| a.status == Status::Published));
    // Lazy: taking three reads one page.
    let three: Vec<Article> = articles.range(f.created_at).iter(3).take(3).collect::<db4::Result<_>>()?;
    assert_eq!(three.len(), 3);
    Ok(())
}

#[test]
fn composite_prefix_and_mixed_directions() -> db4::Result<()> {
    let (_db, articles) = seeded(60)?;
    // tenant t1, newest first, ties by id descending (the direction of the last key).
    let mut want: Vec<Article> = (0..60).map(article).filter(|a| a.tenant_id == "t1").collect();
    want.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let got: Vec<Article> =
        articles.range_index("by_tenant_created").prefix("t1").iter(7).collect::<db4::Result<_>>()?;
    assert_eq!(ids(&got), ids(&want));

    // Bounds on the key after the prefix, in value order whatever the direction.
    let page = articles.range_index("by_tenant_created").prefix("t1").between(5..=9).limit(100).fetch()?;
    assert!(page.items.iter().all(|a| (5..=9).contains(&a.created_at) && a.tenant_id == "t1"));
    assert_eq!(page.items.first().map(|a| a.created_at), Some(9));

    // Two keys fixed, the third (descending) paged, and backwards from the end.
    let prefix = ("t0", Status::Draft);
    let mut want: Vec<Article> =
        (0..60).map(article).filter(|a| a.tenant_id == "t0" && a.status == Status::Draft).collect();
    want.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let first = articles.range_index("by_tenant_status_created").prefix(prefix).limit(4).fetch()?;
    assert_eq!(ids(&first.items), ids(&want[..4]));
    let second = articles
        .range_index("by_tenant_status_created")
        .prefix(prefix)
        .after(first.next.as_ref().unwrap())
        .limit(4)
        .fetch()?;
    assert_eq!(ids(&second.items), ids(&want[4..8]));
    let back = articles
        .range_index("by_tenant_status_created")
        .prefix(prefix)
        .before(second.prev.as_ref().unwrap())
        .limit(4)
        .fetch()?;
    assert_eq!(ids(&back.items), ids(&want[..4]));
    assert!(!back.has_more && back.prev.is_none());

    // The whole index, no prefix: tenants ascending, then newest first.
    let all: Vec<Article> = articles.range_index("by_tenant_created").iter(9).collect::<db4::Result<_>>()?;
    let mut want: Vec<Article> = (0..60).map(article).collect();
    want.sort_by(|a, b| (&a.tenant_id, b.created_at, &b.id).cmp(&(&b.tenant_id, a.created_at, &a.id)));
    assert_eq!(ids(&all), ids(&want));
    let reversed: Vec<Article> =
        articles.range_index("by_tenant_created").descending().iter(9).collect::<db4::Result<_>>()?;
    want.reverse();
    assert_eq!(ids(&reversed), ids(&want));
    Ok(())
}

fn invalid_cursor<T: std::fmt::Debug>(r: db4::Result<T>) -> bool {
    matches!(r, Err(Error::InvalidCursor { .. }))
}

#[test]
fn cursors_are_bound_to_their_range() -> db4::Result<()> {
    let (_db, articles) = seeded(30)?;
    let f = Article::fields();
    let next = articles.range(f.created_at).gte(2).limit(5).fetch()?.next.unwrap();
    assert!(articles.range(f.created_at).gte(2).after(&next).fetch().is_ok());
    assert!(invalid_cursor(articles.range(f.created_at).gte(3).after(&next).fetch()), "other bounds");
    assert!(invalid_cursor(articles.range(f.created_at).after(&next).fetch()), "no bounds");
    assert!(invalid_cursor(articles.range(f.created_at).gte(2).descending().after(&next).fetch()), "other direction");
    assert!(
        invalid_cursor(articles.range(f.created_at).gte(2).filter(f.views.gt(1)).after(&next).fetch()),
        "with a filter"
    );
    assert!(invalid_cursor(articles.range_index("by_tenant_created").after(&next).fetch()), "other index");
    // The same position, read back from text.
    let text = next.to_string();
    assert!(text.len() <= 96, "{text}");
    assert_eq!(Cursor::parse(&text)?, next);
    // Another database has another secret.
    let (_other_db, other) = seeded(30)?;
    assert!(invalid_cursor(other.range(f.created_at).gte(2).after(&next).fetch()), "other database");
    // Garbage and truncation.
    assert!(invalid_cursor(Cursor::parse("not a cursor!")));
    assert!(invalid_cursor(Cursor::parse(&text[..text.len() - 3])));
    assert!(invalid_cursor(Cursor::parse("")));
    Ok(())
}

#[test]
fn cursors_survive_a_reopen() -> db4::Result<()> {
    let dir = TempDir::new("range-reopen");
    let path = dir.join("db.sqlite");
    let text = {
        let db = Db::open(&path)?;
        let articles = db.collection::<Article>()?;
        articles.insert_many(&(0..10).map(article).collect::<Vec<_>>())?;
        articles.range(Article::fields().created_at).limit(4).fetch()?.next.unwrap().to_string()
    };
    let db = Db::open(&path)?;
    let articles = db.collection::<Article>()?;
    let page = articles.range(Article::fields().created_at).after(&Cursor::parse(&text)?).limit(4).fetch()?;
    assert_eq!(ids(&page.items), ["a004", "a005", "a006", "a007"]);
    Ok(())
}

#[test]
fn bad_ranges_are_clear_errors() -> db4::Result<()> {
    let (_db, articles) = seeded(5)?;
    let f = Article::fields();
    let invalid_query = |r: db4::Result<db4::Page<Article>>| matches!(r, Err(Error::InvalidQuery { .. }));
    assert!(invalid_query(articles.range(f.views).fetch()), "not indexed");
    assert!(invalid_query(articles.range_index("nope").fetch()));
    assert!(invalid_query(articles.range_index("by_tenant_created").prefix(("t0", 1, 2)).fetch()));
    assert!(invalid_query(articles.range(f.created_at).limit(0).fetch()));
    let first = articles.range(f.created_at).iter(0).next();
    assert!(matches!(first, Some(Err(Error::InvalidQuery { .. }))));
    // A range over the id alone, and over a single field by name.
    let by_id = articles.range(f.id).gt("a001").limit(2).fetch()?;
    assert_eq!(ids(&by_id.items), ["a002", "a003"]);
    let by_name = articles.range_index("created_at").limit(2).fetch()?;
    assert_eq!(ids(&by_name.items), ["a000", "a001"]);
    Ok(())
}

#[test]
fn order_by_breaks_ties_by_id() -> db4::Result<()> {
    let (_db, articles) = seeded(30)?;
    let f = Article::fields();
    let got: Vec<String> = articles.query().order_by(f.created_at.asc()).all()?.into_iter().map(|a| a.id).collect();
    assert_eq!(got, expected(30, |_| true));
    let desc: Vec<String> = articles.query().order_by(f.created_at.desc()).all()?.into_iter().map(|a| a.id).collect();
    let mut want = expected(30, |_| true);
    want.reverse();
    assert_eq!(desc, want);
    // The range over the same field agrees.
    let range: Vec<String> =
        articles.range(f.created_at).descending().iter(8).map(|a| a.map(|a| a.id)).collect::<db4::Result<_>>()?;
    assert_eq!(range, want);
    Ok(())
}

#[test]
fn an_empty_page_still_leads_back() -> db4::Result<()> {
    let (_db, articles) = seeded(10)?;
    let f = Article::fields();
    let first = articles.range(f.created_at).limit(6).fetch()?;
    // Everything after the first page goes before the next one is read.
    for a in (0..10).map(article).filter(|a| !first.items.contains(a)) {
        articles.delete(&a.id)?;
    }
    let empty = articles.range(f.created_at).after(first.next.as_ref().unwrap()).limit(6).fetch()?;
    assert!(empty.items.is_empty() && !empty.has_more && empty.next.is_none());
    // Its `prev` includes the row the cursor stood on: back, the whole first page returns.
    let back = articles.range(f.created_at).before(empty.prev.as_ref().unwrap()).limit(6).fetch()?;
    assert_eq!(back.items, first.items);
    Ok(())
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Low,
    High,
    Medium,
}

impl Ordered for Level {}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "extremes")]
#[db4(index(name = "by_level", fields(level)))]
#[db4(index(name = "by_flag", fields(flag)))]
pub struct Extreme {
    #[id]
    pub id: i64,
    #[range_index]
    pub n: Option<i64>,
    #[range_index]
    pub x: Option<f64>,
    #[range_index]
    pub s: Option<String>,
    pub level: Level,
    pub flag: bool,
}

#[test]
fn extreme_values_sort_as_documented() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let extremes = db.collection::<Extreme>()?;
    let ns = [Some(i64::MAX), Some(0), None, Some(i64::MIN), Some(-1), Some(1), Some(i64::MIN + 1)];
    let xs = [Some(1e300), Some(-0.5), None, Some(-1e300), Some(0.0), Some(f64::MIN_POSITIVE), Some(2.5)];
    let ss = ["b", "", "é", "\u{10FFFF}", "B", "a\u{0}b", "a"].map(|s| Some(s.to_owned()));
    let levels = [Level::Low, Level::High, Level::Medium, Level::Low, Level::High, Level::Medium, Level::Low];
    let docs: Vec<Extreme> = (0..7)
        .map(|i| Extreme {
            id: 6 - i as i64,
            n: ns[i],
            x: xs[i],
            s: if i == 6 { None } else { ss[i].clone() },
            level: levels[i],
            flag: i % 2 == 0,
        })
        .collect();
    extremes.insert_many(&docs)?;
    let f = Extreme::fields();
    fn by<B>(r: db4::Range<'_, Extreme, B>) -> db4::Result<Vec<Extreme>> {
        r.iter(2).collect()
    }

    // Integers: None, then numerically, i64::MIN first.
    let got: Vec<Option<i64>> = by(extremes.range(f.n))?.into_iter().map(|d| d.n).collect();
    assert_eq!(got, [None, Some(i64::MIN), Some(i64::MIN + 1), Some(-1), Some(0), Some(1), Some(i64::MAX)]);
    // Floats likewise.
    let got: Vec<Option<f64>> = by(extremes.range(f.x))?.into_iter().map(|d| d.x).collect();
    assert_eq!(got, [None, Some(-1e300), Some(-0.5), Some(0.0), Some(f64::MIN_POSITIVE), Some(2.5), Some(1e300)]);
    // Text by UTF-8 bytes: "" first, uppercase before lowercase, NUL kept, é and U+10FFFF last.
    let got: Vec<Option<String>> = by(extremes.range(f.s))?.into_iter().map(|d| d.s).collect();
    let want = [None, Some(""), Some("B"), Some("a\u{0}b"), Some("b"), Some("é"), Some("\u{10FFFF}")];
    assert_eq!(got, want.map(|s| s.map(str::to_owned)));
    // Enums by variant name (High < Low < Medium), ties by id; booleans false first.
    let got: Vec<(Level, i64)> = by(extremes.range_index("by_level"))?.into_iter().map(|d| (d.level, d.id)).collect();
    assert_eq!(
        got,
        [
            (Level::High, 2),
            (Level::High, 5),
            (Level::Low, 0),
            (Level::Low, 3),
            (Level::Low, 6),
            (Level::Medium, 1),
            (Level::Medium, 4)
        ]
    );
    let got: Vec<bool> = by(extremes.range_index("by_flag"))?.into_iter().map(|d| d.flag).collect();
    assert_eq!(got, [false, false, false, true, true, true, true]);

    // order_by and the comparisons agree with the ranges.
    let ordered: Vec<Option<i64>> = extremes.query().order_by(f.n.asc()).all()?.into_iter().map(|d| d.n).collect();
    assert_eq!(ordered, [None, Some(i64::MIN), Some(i64::MIN + 1), Some(-1), Some(0), Some(1), Some(i64::MAX)]);
    assert_eq!(extremes.query().filter(f.n.lt(i64::MIN + 1)).count()?, 2, "None is below every value");
    assert_eq!(extremes.range(f.n).lt(i64::MIN + 1).fetch()?.items.len(), 2);
    assert_eq!(extremes.range(f.n).gt(None::<i64>).fetch()?.items.len(), 6, "a None bound is the lowest position");
    assert_eq!(extremes.range(f.n).lte(None::<i64>).fetch()?.items.len(), 1);
    Ok(())
}
