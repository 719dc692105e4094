//! Property tests of ranges and their cursors:
//!
//! - a random dataset paged forwards, then backwards, with random page sizes, bounds and
//!   directions, while random inserts and deletes of other rows happen between pages, returns
//!   every row present throughout exactly once and in the documented order;
//! - a composite index with mixed directions, a random prefix and random page sizes, against
//!   a model sort;
//! - any edit of a cursor's text is refused with `InvalidCursor`, never a panic or a page.
//!
//! Cases: `DB4_PROPTEST_CASES` (default 64 per property).

use db4::{Collection, Cursor, Db, Document, Error, Page};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ops::Bound;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "keyed")]
struct Keyed {
    #[id]
    id: i64,
    #[range_index]
    k: Option<i64>,
}

/// Ids of rows that stay put; the interleaved writes use ids from here on.
const VOLATILE: i64 = 10_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// The documented order of a key: `None` first, then by value; ties by id.
fn model_cmp(a: &(Option<i64>, i64), b: &(Option<i64>, i64)) -> Ordering {
    a.cmp(b)
}

fn in_bounds(k: Option<i64>, lower: &Bound<Option<i64>>, upper: &Bound<Option<i64>>) -> bool {
    let lo = match lower {
        Bound::Unbounded => true,
        Bound::Included(v) => k >= *v,
        Bound::Excluded(v) => k > *v,
    };
    let hi = match upper {
        Bound::Unbounded => true,
        Bound::Included(v) => k <= *v,
        Bound::Excluded(v) => k < *v,
    };
    lo && hi
}

#[derive(Debug, Clone)]
enum Write {
    Insert(i64, Option<i64>),
    Delete(usize),
}

fn key() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        1 => Just(None),
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0)].prop_map(Some),
        6 => (-6i64..6).prop_map(Some),
    ]
}

fn bound() -> impl Strategy<Value = Bound<Option<i64>>> {
    prop_oneof![
        2 => Just(Bound::Unbounded),
        1 => key().prop_map(Bound::Included),
        1 => key().prop_map(Bound::Excluded),
    ]
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![(0i64..1000, key()).prop_map(|(i, k)| Write::Insert(i, k)), any::<usize>().prop_map(Write::Delete)]
}

struct Walk<'a> {
    keyed: &'a Collection<Keyed>,
    lower: Bound<Option<i64>>,
    upper: Bound<Option<i64>>,
    descending: bool,
}

impl Walk<'_> {
    fn range(&self) -> db4::Range<'_, Keyed, Option<i64>> {
        let to_value = |b: &Bound<Option<i64>>| match b {
            Bound::Unbounded => Bound::Unbounded,
            Bound::Included(v) => Bound::Included(*v),
            Bound::Excluded(v) => Bound::Excluded(*v),
        };
        let r = self.keyed.range(Keyed::fields().k).between((to_value(&self.lower), to_value(&self.upper)));
        if self.descending { r.descending() } else { r }
    }
}

fn apply(keyed: &Collection<Keyed>, live: &mut Vec<i64>, w: &Write) -> db4::Result<()> {
    match w {
        Write::Insert(i, k) => {
            let id = VOLATILE + i;
            if !live.contains(&id) {
                keyed.insert(&Keyed { id, k: *k })?;
                live.push(id);
            }
        }
        Write::Delete(n) if !live.is_empty() => {
            let id = live.swap_remove(n % live.len());
            keyed.delete(id)?;
        }
        Write::Delete(_) => {}
    }
    Ok(())
}

/// Keeps the stable rows of a walk, checking that they come in order.
fn stable_ids(items: &[Keyed]) -> Vec<i64> {
    items.iter().filter(|d| d.id < VOLATILE).map(|d| d.id).collect()
}

#[allow(clippy::too_many_arguments)]
fn walk_forward_and_back(
    stable: &[Option<i64>],
    lower: Bound<Option<i64>>,
    upper: Bound<Option<i64>>,
    descending: bool,
    sizes: &[usize],
    writes: &[Write],
) -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let keyed = db.collection::<Keyed>()?;
    let docs: Vec<Keyed> = stable.iter().enumerate().map(|(i, k)| Keyed { id: i as i64, k: *k }).collect();
    keyed.insert_many(&docs)?;
    let mut want: Vec<(Option<i64>, i64)> =
        docs.iter().filter(|d| in_bounds(d.k, &lower, &upper)).map(|d| (d.k, d.id)).collect();
    want.sort_by(model_cmp);
    if descending {
        want.reverse();
    }
    let want: Vec<i64> = want.into_iter().map(|(_, id)| id).collect();
    let walk = Walk { keyed: &keyed, lower, upper, descending };
    let mut live = Vec::new();
    let mut step = 0;
    let mut next_size = || {
        step += 1;
        sizes[step % sizes.len()]
    };
    let mut writes = writes.iter().cycle();

    // Forwards.
    let mut pages: Vec<Page<Keyed>> = Vec::new();
    let mut page = walk.range().limit(next_size()).fetch()?;
    loop {
        let next = page.next.clone();
        pages.push(page);
        let Some(next) = next else { break };
        apply(&keyed, &mut live, writes.next().unwrap_or(&Write::Delete(0)))?;
        page = walk.range().after(&next).limit(next_size()).fetch()?;
    }
    let forward: Vec<i64> = pages.iter().flat_map(|p| stable_ids(&p.items)).collect();
    assert_eq!(forward, want, "forwards");

    // Backwards from the last page, each page in forward order.
    let mut back = vec![stable_ids(&pages.last().map(|p| p.items.clone()).unwrap_or_default())];
    let mut prev = pages.last().and_then(|p| p.prev.clone());
    while let Some(c) = prev {
        apply(&keyed, &mut live, writes.next().unwrap_or(&Write::Delete(0)))?;
        let page = walk.range().before(&c).limit(next_size()).fetch()?;
        back.push(stable_ids(&page.items));
        prev = page.prev;
    }
    back.reverse();
    let backward: Vec<i64> = back.into_iter().flatten().collect();
    assert_eq!(backward, want, "backwards");
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "mixed", index(name = "mixed", fields(a, b desc, c)))]
struct Mixed {
    #[id]
    id: String,
    a: i64,
    b: Option<String>,
    c: bool,
}

/// The documented order of `mixed`: `a` ascending, `b` descending (`None` last), `c`
/// ascending (false first), ties by id ascending (the direction of `c`).
fn mixed_cmp(x: &Mixed, y: &Mixed) -> Ordering {
    x.a.cmp(&y.a)
        .then_with(|| y.b.cmp(&x.b))
        .then_with(|| x.c.cmp(&y.c))
        .then_with(|| x.id.as_bytes().cmp(y.id.as_bytes()))
}

fn mixed_rows() -> impl Strategy<Value = Vec<Mixed>> {
    let b = prop_oneof![1 => Just(None), 3 => prop_oneof![Just(""), Just("a"), Just("ab"), Just("b"), Just("é"), Just("Z")].prop_map(|s| Some(s.to_owned()))];
    proptest::collection::btree_map("[a-c]{1,3}", (-2i64..3, b, any::<bool>()), 0..40)
        .prop_map(|m: BTreeMap<String, _>| m.into_iter().map(|(id, (a, b, c))| Mixed { id, a, b, c }).collect())
}

fn check_mixed(rows: &[Mixed], prefix_len: usize, pick: usize, descending: bool, size: usize) -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let mixed = db.collection::<Mixed>()?;
    mixed.insert_many(rows)?;
    let mut want: Vec<Mixed> = rows.to_vec();
    let chosen = rows.get(pick % rows.len().max(1)).cloned();
    fn with_prefix<'c>(base: db4::Range<'c, Mixed>, chosen: &Option<Mixed>, n: usize) -> db4::Range<'c, Mixed> {
        match (chosen, n) {
            (Some(r), 1) => base.prefix(r.a),
            (Some(r), 2) => base.prefix((r.a, r.b.clone())),
            _ => base,
        }
    }
    fn ordered(r: db4::Range<'_, Mixed>, descending: bool) -> db4::Range<'_, Mixed> {
        if descending { r.descending() } else { r }
    }
    let range = |base| with_prefix(base, &chosen, prefix_len);
    let base = mixed.range_index("mixed");
    if let Some(r) = &chosen {
        want.retain(|x| (prefix_len < 1 || x.a == r.a) && (prefix_len < 2 || x.b == r.b));
    }
    want.sort_by(mixed_cmp);
    if descending {
        want.reverse();
    }
    let order = |r| ordered(r, descending);
    let got: Vec<Mixed> = order(range(base)).iter(size).collect::<db4::Result<_>>()?;
    assert_eq!(got, want, "iter");
    // And by explicit pages, forwards.
    let mut paged = Vec::new();
    let mut page = order(range(mixed.range_index("mixed"))).limit(size).fetch()?;
    loop {
        paged.extend(page.items.clone());
        match page.next {
            Some(c) => page = order(range(mixed.range_index("mixed"))).after(&c).limit(size).fetch()?,
            None => break,
        }
    }
    assert_eq!(paged, want, "pages");
    Ok(())
}

fn edited_cursor_is_refused(edit: &Edit) -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let keyed = db.collection::<Keyed>()?;
    keyed.insert_many(&(0..20).map(|i| Keyed { id: i, k: Some(i / 3) }).collect::<Vec<_>>())?;
    let cursor = keyed.range(Keyed::fields().k).limit(5).fetch()?.next.expect("more than one page");
    let text = cursor.to_string();
    let edited = edit.apply(&text);
    if edited == text {
        return Ok(());
    }
    let parsed = match Cursor::parse(&edited) {
        Err(Error::InvalidCursor { .. }) => return Ok(()),
        Err(e) => panic!("{edited:?}: {e}"),
        Ok(c) => c,
    };
    for r in
        [keyed.range(Keyed::fields().k).after(&parsed).fetch(), keyed.range(Keyed::fields().k).before(&parsed).fetch()]
    {
        match r {
            Err(Error::InvalidCursor { .. }) => {}
            other => panic!("{text} edited to {edited}: {other:?}"),
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, char),
    Remove(usize),
    Insert(usize, char),
    Truncate(usize),
    Append(String),
}

impl Edit {
    fn apply(&self, text: &str) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match self {
            Edit::Replace(i, c) => {
                let i = at(*i, chars.len());
                chars[i] = *c;
            }
            Edit::Remove(i) => {
                let i = at(*i, chars.len());
                chars.remove(i);
            }
            Edit::Insert(i, c) => {
                let i = at(*i, chars.len() + 1);
                chars.insert(i, *c);
            }
            Edit::Truncate(n) => chars.truncate(n % chars.len().max(1)),
            Edit::Append(s) => chars.extend(s.chars()),
        }
        chars.into_iter().collect()
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        8 => proptest::sample::select("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), ch.clone()).prop_map(|(i, c)| Edit::Replace(i, c)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), ch).prop_map(|(i, c)| Edit::Insert(i, c)),
        any::<usize>().prop_map(Edit::Truncate),
        "[A-Za-z0-9_=+/-]{1,8}".prop_map(Edit::Append),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn paging_sees_every_stable_row_once_in_order(
        stable in proptest::collection::vec(key(), 0..60),
        lower in bound(),
        upper in bound(),
        descending in any::<bool>(),
        sizes in proptest::collection::vec(1usize..9, 1..6),
        writes in proptest::collection::vec(write(), 1..20),
    ) {
        walk_forward_and_back(&stable, lower, upper, descending, &sizes, &writes).unwrap();
    }

    #[test]
    fn composite_mixed_directions_match_the_model(
        rows in mixed_rows(),
        prefix_len in 0usize..3,
        pick in any::<usize>(),
        descending in any::<bool>(),
        size in 1usize..8,
    ) {
        check_mixed(&rows, prefix_len, pick, descending, size).unwrap();
    }

    #[test]
    fn edited_cursors_are_invalid(edit in edit()) {
        edited_cursor_is_refused(&edit).unwrap();
    }
}
