//! `ShardRouter::search`: full-text search over the shards ranked as one database holding
//! every document ranks it (the same hits in the same order with the same scores), highlights,
//! snippets and totals through the router, one shard searched for a pinned partition key, and
//! the errors of bad queries.
//!
//! Cases of the property: `DB4_PROPTEST_CASES` (default 64).

use db4::Error;
use db4::prelude::*;
use db4::shard::{ShardRouter, ShardRouterConfig};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "shard_notes")]
pub struct Note {
    #[id]
    pub id: i64,
    #[partition_key]
    pub tenant: String,
    #[index]
    pub kind: String,
    #[fts(weight = 2.0)]
    pub title: String,
    #[fts]
    pub body: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "shard_plain")]
pub struct Plain {
    #[id]
    pub id: i64,
    #[partition_key]
    pub tenant: String,
    pub body: String,
}

fn config(shards: u32) -> ShardRouterConfig {
    ShardRouterConfig { shard_count: shards, virtual_nodes: 64, ..Default::default() }
}

fn note(id: i64, tenant: &str, title: &str, body: &str) -> Note {
    Note {
        id,
        tenant: tenant.to_owned(),
        kind: if id % 2 == 0 { "even".into() } else { "odd".into() },
        title: title.to_owned(),
        body: body.to_owned(),
    }
}

/// A router over `shards` shards and one database, holding `docs` each (inserted in id
/// order, so the database's rowids, which break its ties, are the ids).
fn both(shards: u32, docs: &[Note]) -> db4::Result<(ShardRouter<Note>, Db)> {
    let router = ShardRouter::<Note>::in_memory(config(shards))?;
    let db = Db::open_in_memory()?;
    let one = db.collection::<Note>()?;
    let mut sorted = docs.to_vec();
    sorted.sort_by_key(|d| d.id);
    for d in &sorted {
        router.insert(d)?;
        one.insert(d)?;
    }
    Ok((router, db))
}

/// The hits' ids and scores.
fn ranked(res: &db4::fts::SearchResults<Note>) -> Vec<(i64, f64)> {
    res.hits.iter().map(|h| (h.doc.id, h.score)).collect()
}

/// Same ids in the same order, scores within 1e-9 relative.
fn same_ranking(router: &[(i64, f64)], one: &[(i64, f64)]) -> Result<(), String> {
    let ids = |r: &[(i64, f64)]| r.iter().map(|h| h.0).collect::<Vec<_>>();
    if ids(router) != ids(one) {
        return Err(format!("router {router:?}\n   one {one:?}"));
    }
    for ((_, a), (_, b)) in router.iter().zip(one) {
        if (a - b).abs() > 1e-9 * a.abs().max(b.abs()).max(1e-300) {
            return Err(format!("scores differ: router {router:?}\n   one {one:?}"));
        }
    }
    Ok(())
}

/// One shard with many documents holding "edge", another with few: per-shard BM25 gives the
/// few a much higher IDF there and ranks them first; with the shards' statistics together
/// the router ranks as one database does.
#[test]
fn a_skewed_term_ranks_as_in_one_database() -> db4::Result<()> {
    let router = ShardRouter::<Note>::in_memory(config(2))?;
    let shards = router.shards();
    // Two tenants on different shards.
    let mut tenants = Vec::new();
    for i in 0.. {
        let t = format!("tenant{i}");
        let s = router.shard_for(&t)?;
        if tenants.iter().all(|(_, other)| *other != s) {
            tenants.push((t, s));
        }
        if tenants.len() == shards.len() {
            break;
        }
    }
    let (crowded, sparse) = (&tenants[0].0, &tenants[1].0);
    let mut docs = Vec::new();
    // The crowded shard: 40 documents with "edge", each mentioning it twice in a long body.
    for id in 0..40 {
        docs.push(note(id, crowded, "notes", "edge edge alpha beta gamma delta"));
    }
    // The sparse shard: 2 documents with "edge" once, among many without it.
    docs.push(note(100, sparse, "notes", "edge alpha beta gamma delta epsilon zeta"));
    docs.push(note(101, sparse, "notes", "edge alpha beta gamma delta epsilon zeta eta"));
    for id in 200..260 {
        docs.push(note(id, sparse, "other", "alpha beta"));
    }
    let (router, db) = both(2, &docs)?;
    assert_ne!(router.shard_for(crowded)?, router.shard_for(sparse)?);
    let one = db.collection::<Note>()?;
    let r = router.search("edge").limit(10).run()?;
    let o = one.search("edge").limit(10).run()?;
    if let Err(e) = same_ranking(&ranked(&r), &ranked(&o)) {
        panic!("{e}");
    }
    // One database puts the documents that say "edge" twice first.
    assert!(r.hits.iter().all(|h| h.doc.id < 40), "{:?}", ranked(&r));
    // What per-shard BM25 gives: the sparse shard's documents score above the crowded one's.
    let crowded_best = router.query_in_shard(router.shard_for(crowded)?).count()?;
    assert_eq!(crowded_best, 40);
    let sparse_db = Db::open_in_memory()?;
    let sparse_only = sparse_db.collection::<Note>()?;
    let crowded_db = Db::open_in_memory()?;
    let crowded_only = crowded_db.collection::<Note>()?;
    for d in &docs {
        if d.tenant == *sparse { sparse_only.insert(d)? } else { crowded_only.insert(d)? }
    }
    let s = sparse_only.search("edge").limit(1).run()?.hits[0].score;
    let c = crowded_only.search("edge").limit(1).run()?.hits[0].score;
    assert!(s > c, "per-shard scores would rank the sparse shard first: {s} vs {c}");
    Ok(())
}

#[test]
fn highlights_snippets_and_totals_come_through_the_router() -> db4::Result<()> {
    let docs: Vec<Note> = (0..30)
        .map(|i| {
            let body = if i % 3 == 0 { "an edge database at the edge of the network" } else { "a cache in the cloud" };
            note(i, &format!("t{}", i % 7), if i % 5 == 0 { "edge notes" } else { "notes" }, body)
        })
        .collect();
    let (router, db) = both(3, &docs)?;
    let one = db.collection::<Note>()?;
    let r = router.search("edge").highlight("[", "]").snippet(6).with_total().limit(4).offset(1).run()?;
    let o = one.search("edge").highlight("[", "]").snippet(6).with_total().limit(4).offset(1).run()?;
    assert_eq!(r.total, o.total);
    assert_eq!(r.total, Some(14));
    assert_eq!(r.hits.len(), 4);
    for (a, b) in r.hits.iter().zip(&o.hits) {
        assert_eq!(a.doc, b.doc);
        assert_eq!(a.highlights, b.highlights);
        assert_eq!(a.snippet, b.snippet);
        assert!(a.snippet.as_deref().is_some_and(|s| s.contains("[edge]")), "{:?}", a.snippet);
    }
    // min_score cuts the same hits, and the total counts what passes.
    let bar = o.hits[1].score;
    let r = router.search("edge").min_score(bar).with_total().run()?;
    let o = one.search("edge").min_score(bar).with_total().run()?;
    assert_eq!(r.total, o.total);
    assert_eq!(ranked(&r).len(), ranked(&o).len());
    // A snippet with no highlight has no markers.
    let r = router.search("cache").snippet(3).limit(1).run()?;
    assert!(r.hits[0].snippet.as_deref().is_some_and(|s| !s.contains('[')));
    Ok(())
}

#[test]
fn a_pinned_partition_key_searches_its_shard_with_global_statistics() -> db4::Result<()> {
    let docs: Vec<Note> = (0..40)
        .map(|i| note(i, &format!("t{}", i % 5), "notes", if i % 4 == 0 { "edge" } else { "edge cloud" }))
        .collect();
    let (router, db) = both(4, &docs)?;
    let one = db.collection::<Note>()?;
    let f = Note::fields();
    let r = router.search("edge").filter(f.tenant.eq("t2".to_string())).with_total().run()?;
    let o = one.search("edge").filter(f.tenant.eq("t2".to_string())).with_total().run()?;
    assert_eq!(r.total, Some(8));
    if let Err(e) = same_ranking(&ranked(&r), &ranked(&o)) {
        panic!("{e}");
    }
    assert!(r.hits.iter().all(|h| h.doc.tenant == "t2"));
    Ok(())
}

#[test]
fn bad_queries_give_the_errors_of_one_database() -> db4::Result<()> {
    let (router, db) = both(3, &[note(1, "a", "edge", "database")])?;
    let one = db.collection::<Note>()?;
    for bad in ["\"unclosed", "nope:edge", "(edge", "AND", ""] {
        let r = router.search(bad).run();
        let o = one.search(bad).run();
        match (&r, &o) {
            (Err(Error::InvalidQuery { reason: a, .. }), Err(Error::InvalidQuery { reason: b, .. })) => {
                assert_eq!(a, b, "{bad:?}");
            }
            (Ok(a), Ok(b)) => assert_eq!(a.hits.len(), b.hits.len(), "{bad:?}"),
            _ => panic!("{bad:?}: router {r:?}, one {o:?}"),
        }
    }
    assert!(matches!(router.search("edge").snippet(0).run(), Err(Error::InvalidQuery { .. })));
    assert!(matches!(router.search("edge").min_score(f64::NAN).run(), Err(Error::InvalidQuery { .. })));
    let plain = ShardRouter::<Plain>::in_memory(config(2))?;
    plain.insert(&Plain { id: 1, tenant: "a".into(), body: "edge".into() })?;
    let Err(Error::InvalidQuery { reason, .. }) = plain.search("edge").run() else { panic!("no fts field") };
    assert!(reason.contains("no `#[fts]` field"), "{reason}");
    Ok(())
}

const WORDS: &[&str] = &["edge", "database", "sqlite", "cache", "cloud", "worker", "shard", "index"];

fn text_strategy(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 0..max).prop_map(|w| w.join(" "))
}

fn docs_strategy() -> impl Strategy<Value = Vec<Note>> {
    prop::collection::vec((0usize..9, text_strategy(4), text_strategy(12)), 1..60).prop_map(|rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (t, title, body))| note(i as i64, &format!("t{t}"), &title, &body))
            .collect()
    })
}

fn query_strategy() -> impl Strategy<Value = String> {
    let w = || prop::sample::select(WORDS);
    prop_oneof![
        w().prop_map(|a| a.to_owned()),
        (w(), w()).prop_map(|(a, b)| format!("{a} {b}")),
        (w(), w()).prop_map(|(a, b)| format!("{a} OR {b}")),
        (w(), w()).prop_map(|(a, b)| format!("\"{a} {b}\"")),
        (w(), w()).prop_map(|(a, b)| format!("title:{a} OR body:{b}")),
        (w(), w(), w()).prop_map(|(a, b, c)| format!("({a} AND {b}) OR {c}")),
        (w(), w()).prop_map(|(a, b)| format!("{a} NOT {b}")),
        w().prop_map(|a| format!("{}*", &a[..2])),
        (w(), w(), w()).prop_map(|(a, b, c)| format!("title:({a} OR {b}) {c}")),
        (w(), w(), w()).prop_map(|(a, b, c)| format!("{a} NOT ({b} AND {c})")),
        (w(), w(), w()).prop_map(|(a, b, c)| format!("{a} OR ({b} NOT body:{c})")),
        (w(), w(), w()).prop_map(|(a, b, c)| format!("\"{a} {b} {c}\" OR title:{}*", &c[..3])),
    ]
}

#[derive(Debug, Clone)]
enum Cond {
    None,
    Kind(&'static str),
    Tenant(usize),
}

fn filter(c: &Cond) -> Option<db4::Filter<Note>> {
    let f = Note::fields();
    match c {
        Cond::None => None,
        Cond::Kind(k) => Some(f.kind.eq(k.to_string())),
        Cond::Tenant(t) => Some(f.tenant.eq(format!("t{t}"))),
    }
}

fn cases() -> u32 {
    std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Over 2 to 5 shards, the router's hits (ids in order, scores within 1e-9 relative) and
    /// totals equal those of one database holding the same documents, with or without a filter
    /// (pinned to a partition key or not), a score bar, an offset and a limit.
    #[test]
    fn search_across_shards_equals_one_database(
        docs in docs_strategy(),
        shards in 2u32..6,
        query in query_strategy(),
        cond in prop_oneof![Just(Cond::None), prop::sample::select(vec!["even", "odd"]).prop_map(Cond::Kind), (0usize..9).prop_map(Cond::Tenant)],
        offset in 0usize..6,
        limit in prop::option::of(0usize..12),
        bar in prop::option::of(0usize..8),
    ) {
        let (router, db) = both(shards, &docs).unwrap();
        let one = db.collection::<Note>().unwrap();
        let mut r = router.search(&query).with_total().offset(offset);
        let mut o = one.search(&query).with_total().offset(offset);
        // A score bar: one of the one database's scores (ties and all).
        if let Some(k) = bar {
            let all = one.search(&query).run().unwrap();
            if let Some(h) = all.hits.get(k) {
                r = r.min_score(h.score);
                o = o.min_score(h.score);
            }
        }
        if let Some(n) = limit {
            r = r.limit(n);
            o = o.limit(n);
        }
        if let Some(f) = filter(&cond) {
            r = r.filter(f.clone());
            o = o.filter(f);
        }
        let r = r.run().unwrap();
        let o = o.run().unwrap();
        prop_assert_eq!(r.total, o.total);
        if let Err(e) = same_ranking(&ranked(&r), &ranked(&o)) {
            return Err(TestCaseError::fail(format!("{query:?} {cond:?}: {e}")));
        }
    }
}
