//! The native shard router: routing and CRUD by partition key, scatter-gather queries against
//! one database holding the same documents, single-shard transactions, load stats, and splits
//! under concurrent writers.

use db4::Order;
use db4::prelude::*;
use db4::shard::{PlanReason, ShardId, ShardRouter, ShardRouterConfig};
use db4_tests::TempDir;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "tickets")]
pub struct Ticket {
    #[id]
    pub id: i64,
    #[partition_key]
    pub tenant: String,
    #[index]
    pub status: String,
    pub score: i64,
    pub rank: Option<i64>,
    pub title: String,
    #[version]
    pub version: u64,
}

pub fn ticket(id: i64, tenant: &str) -> Ticket {
    Ticket {
        id,
        tenant: tenant.to_owned(),
        status: if id % 3 == 0 { "open".into() } else { "closed".into() },
        score: (id * 7919) % 101,
        rank: (id % 4 != 0).then_some(id % 13),
        title: format!("t{id}"),
        version: 0,
    }
}

fn config(shards: u32) -> ShardRouterConfig {
    ShardRouterConfig { shard_count: shards, virtual_nodes: 64, ..Default::default() }
}

/// Every document, read shard by shard, by id: a document in two shards appears twice.
pub fn everything(router: &ShardRouter<Ticket>) -> db4::Result<Vec<(i64, ShardId)>> {
    let mut out = Vec::new();
    for shard in router.shards() {
        for doc in router.shard(shard)?.query().all()? {
            out.push((doc.id, shard));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn documents_go_to_the_shard_of_their_partition_key() -> db4::Result<()> {
    let dir = TempDir::new("shard-crud");
    let router = ShardRouter::<Ticket>::open(dir.path(), config(4))?;
    let tenants = ["acme", "globex", "initech", "umbrella", "hooli", "stark"];
    for i in 0..120 {
        router.insert(&ticket(i, tenants[i as usize % tenants.len()]))?;
    }
    assert!(matches!(router.insert(&ticket(0, "acme")), Err(Error::AlreadyExists { .. })));
    for (i, tenant) in tenants.iter().enumerate() {
        let shard = router.shard_for(&tenant.to_string())?;
        assert_eq!(shard, router.ring().shard_for(tenant.as_bytes()));
        // Stored on that shard only.
        for other in router.shards() {
            let here = router.shard(other)?.get(i as i64)?.is_some();
            assert_eq!(here, other == shard, "ticket {i} of {tenant} on shard {other}");
        }
    }
    let acme = "acme".to_string();
    let mut t = router.get(&acme, 0)?.expect("inserted");
    assert_eq!(t, ticket(0, "acme"));
    assert_eq!(router.get(&"globex".to_string(), 0)?, None, "another tenant's shard or no such document");
    assert_eq!(router.get_many(&acme, [0, 6, 7])?.iter().map(Option::is_some).collect::<Vec<_>>(), [true, true, false]);
    t.title = "changed".into();
    t.version = router.update(&t)?.expect("versioned");
    assert!(matches!(router.update(&Ticket { version: 0, ..t.clone() }), Err(Error::Conflict { .. })));
    assert_eq!(router.increment(&acme, 0, Ticket::fields().score, 5)?, t.score + 5);
    let cas = router.compare_and_swap(&acme, 0, Ticket::fields().status, "open", "done")?;
    assert!(cas.swapped);
    let after = router.update_with(&acme, 0, RetryPolicy::default(), |d| d.title.push('!'))?;
    assert_eq!(after.title, "changed!");
    assert!(matches!(
        router.update_with(&acme, 0, RetryPolicy::default(), |d| {
            d.tenant = "elsewhere".into();
            d.title = "moved".into();
        }),
        Err(Error::InvalidValue { .. })
    ));
    // Refused, and nothing written: the document is as it was, on its shard.
    assert_eq!(router.get(&acme, 0)?, Some(after.clone()));
    router.upsert(&ticket(1000, "acme"))?;
    assert!(router.delete(&acme, 1000)?);
    assert!(!router.delete(&acme, 1000)?);
    assert_eq!(router.query().count()?, 120);

    // Reopening routes the same way and finds everything.
    let ring = router.ring();
    drop(router);
    let router = ShardRouter::<Ticket>::open(dir.path(), config(9))?;
    assert_eq!(router.ring(), ring, "the stored ring wins over the config");
    assert_eq!(router.query().count()?, 120);
    assert_eq!(router.get(&acme, 6)?.map(|t| t.id), Some(6));
    Ok(())
}

#[test]
fn bad_input_is_an_error() -> db4::Result<()> {
    assert!(matches!(ShardRouter::<Ticket>::in_memory(config(0)), Err(Error::InvalidShardConfig { .. })));
    let router = ShardRouter::<Ticket>::in_memory(config(2))?;
    assert!(matches!(router.split(ShardId::new(77)), Err(Error::UnknownShard { .. })));
    assert!(matches!(router.query_in_shard(ShardId::new(77)).count(), Err(Error::UnknownShard { .. })));
    assert!(matches!(router.shard(ShardId::new(77)), Err(Error::UnknownShard { .. })));
    let modulo = ShardRouter::<Ticket>::in_memory(ShardRouterConfig { consistent_hashing: false, ..config(3) })?;
    assert!(matches!(modulo.split(ShardId::new(0)), Err(Error::InvalidShardConfig { .. })));
    Ok(())
}

#[test]
fn a_pinned_partition_key_asks_one_shard() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(config(8))?;
    for i in 0..200 {
        router.insert(&ticket(i, &format!("tenant-{}", i % 10)))?;
    }
    let f = Ticket::fields();
    let plan = router.plan(&[f.tenant.eq("tenant-3"), f.score.gt(10)])?;
    assert_eq!(plan.shards, vec![router.shard_for(&"tenant-3".to_string())?]);
    assert_eq!(plan.reason, PlanReason::Pinned { keys: 1 });
    assert_eq!(router.plan(&[f.score.gt(10)])?.shards.len(), 8);
    let pinned = router.query().filter(f.tenant.eq("tenant-3")).order_by(f.score.desc()).all()?;
    assert_eq!(pinned.len(), 20);
    assert!(pinned.windows(2).all(|w| (w[0].score, w[0].id) >= (w[1].score, w[1].id)));
    let shard = router.shard_for(&"tenant-3".to_string())?;
    let in_shard = router.query_in_shard(shard).count()?;
    assert_eq!(in_shard, router.shard(shard)?.count()?);
    Ok(())
}

#[test]
fn transactions_stay_on_one_shard() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(config(8))?;
    let acme = "acme".to_string();
    // A tenant on another shard than acme's.
    let other = (0..100)
        .map(|i| format!("t{i}"))
        .find(|t| router.shard_for(t).ok() != router.shard_for(&acme).ok())
        .expect("8 shards");
    router.transaction(&acme, |tx| {
        tx.insert(&ticket(1, "acme"))?;
        tx.insert(&ticket(2, "acme"))?;
        tx.increment(&"acme".to_string(), 1, Ticket::fields().score, 1)?;
        Ok(())
    })?;
    assert_eq!(router.query().count()?, 2);
    let refused = router.transaction(&acme, |tx| {
        tx.insert(&ticket(3, "acme"))?;
        tx.insert(&ticket(4, &other))
    });
    assert!(matches!(refused, Err(Error::CrossShard { .. })), "{refused:?}");
    assert_eq!(router.query().count()?, 2, "the transaction rolled back");
    assert!(router.get(&acme, 3)?.is_none());
    Ok(())
}

#[test]
fn stats_count_documents_and_report_a_hot_key() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(ShardRouterConfig { hot_shard_threshold: 1.0, ..config(4) })?;
    for i in 0..400 {
        router.insert(&ticket(i, if i % 10 == 0 { "spread" } else { "whale" }))?;
    }
    let stats = router.stats()?;
    assert_eq!(stats.iter().map(|s| s.documents).sum::<u64>(), 400);
    let whale = router.shard_for(&"whale".to_string())?;
    let hot = stats.iter().find(|s| s.id == whale).expect("a shard");
    assert!(hot.hot && hot.bytes > 0 && hot.ops_per_sec > 0.0);
    assert_eq!(hot.hot_key.as_ref().map(|k| k.key.clone()), Some(b"whale".to_vec()));
    assert!(!hot.splittable, "one key carries the shard: a split would not help");
    assert_eq!(hot.top_keys.first().map(|k| k.key.clone()), Some(b"whale".to_vec()));
    Ok(())
}

#[test]
fn a_split_moves_half_a_shard_and_keeps_every_document() -> db4::Result<()> {
    let dir = TempDir::new("shard-split");
    let router = ShardRouter::<Ticket>::open(dir.path(), config(2))?;
    for i in 0..1000 {
        router.insert(&ticket(i, &format!("k{}", i % 97)))?;
    }
    let source = router.shard_for(&"k1".to_string())?;
    let before = router.shard(source)?.count()?;
    let report = router.split(source)?;
    assert_eq!(report.source, source);
    assert_eq!(report.epoch, 1);
    assert!(report.copied > 0 && report.copied < before, "{report:?}");
    assert_eq!(report.deleted, report.copied);
    assert_eq!(router.shards().len(), 3);
    assert!(router.migration().is_none());
    let all = everything(&router)?;
    assert_eq!(all.len(), 1000);
    for (id, shard) in &all {
        let t = router.shard(*shard)?.get(*id)?.expect("listed");
        assert_eq!(router.shard_for(&t.tenant)?, *shard, "{id} is on the shard its key routes to");
    }
    drop(router);
    let router = ShardRouter::<Ticket>::open(dir.path(), config(2))?;
    assert_eq!(router.shards().len(), 3);
    assert_eq!(router.ring().epoch(), 1);
    assert_eq!(router.query().count()?, 1000);
    Ok(())
}

#[test]
fn a_split_under_four_writers_loses_and_duplicates_nothing() -> db4::Result<()> {
    const PER_WRITER: i64 = 2500;
    let dir = TempDir::new("shard-split-writers");
    let router = ShardRouter::<Ticket>::open(dir.path(), config(2))?;
    for i in 0..2000 {
        router.insert(&ticket(i, &format!("k{}", i % 211)))?;
    }
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let router = router.clone();
            std::thread::spawn(move || -> db4::Result<Vec<Ticket>> {
                let mut acked = Vec::new();
                for n in 0..PER_WRITER {
                    let id = 10_000 + w * PER_WRITER + n;
                    let mut t = ticket(id, &format!("k{}", id % 211));
                    router.insert(&t)?;
                    // Every fifth document is updated, every seventh deleted again.
                    if n % 5 == 0 {
                        t.score += 1000;
                        t.version = router.update(&t)?.unwrap_or(0);
                    }
                    if n % 7 == 0 {
                        router.delete(&t.tenant, t.id)?;
                        continue;
                    }
                    acked.push(t);
                }
                Ok(acked)
            })
        })
        .collect();
    let mut splits = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(30));
        let busiest = router.stats()?.into_iter().max_by_key(|s| s.documents).map(|s| s.id).expect("shards");
        splits.push(router.split(busiest)?);
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.join().expect("a writer panicked")?);
    }
    assert_eq!(router.shards().len(), 4, "{splits:?}");
    assert!(splits.iter().all(|s| s.copied > 0), "{splits:?}");
    assert!(splits.iter().any(|s| s.caught_up > 0), "writes went on during the copies: {splits:?}");
    let all = everything(&router)?;
    let mut seen = BTreeMap::new();
    for (id, shard) in &all {
        assert!(seen.insert(*id, *shard).is_none(), "document {id} is on two shards");
    }
    // Seed documents and the writers' acknowledged ones; none of the deleted.
    assert_eq!(all.len(), 2000 + acked.len());
    for t in &acked {
        let stored = router.get(&t.tenant, t.id)?;
        assert_eq!(stored.as_ref().map(|s| (s.score, s.version)), Some((t.score, t.version)), "ticket {}", t.id);
        assert_eq!(seen.get(&t.id), Some(&router.shard_for(&t.tenant)?));
    }
    Ok(())
}

/// The documents of a property case: ids are unique, the rest random.
fn docs_strategy() -> impl Strategy<Value = Vec<Ticket>> {
    prop::collection::vec(
        (0..12usize, prop::sample::select(vec!["open", "closed", "held"]), -5i64..5, prop::option::of(-3i64..3)),
        0..120,
    )
    .prop_map(|rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (tenant, status, score, rank))| Ticket {
                id: i as i64 * 3 - 50,
                tenant: format!("tenant-{tenant}"),
                status: status.to_owned(),
                score,
                rank,
                title: format!("title {}", i % 7),
                version: 0,
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Key {
    Score(bool),
    Rank(bool),
    Status(bool),
    Title(bool),
    Id(bool),
}

fn order(key: &Key) -> Order<Ticket> {
    let f = Ticket::fields();
    match *key {
        Key::Score(d) => {
            if d {
                f.score.desc()
            } else {
                f.score.asc()
            }
        }
        Key::Rank(d) => {
            if d {
                f.rank.desc()
            } else {
                f.rank.asc()
            }
        }
        Key::Status(d) => {
            if d {
                f.status.desc()
            } else {
                f.status.asc()
            }
        }
        Key::Title(d) => {
            if d {
                f.title.desc()
            } else {
                f.title.asc()
            }
        }
        Key::Id(d) => {
            if d {
                f.id.desc()
            } else {
                f.id.asc()
            }
        }
    }
}

fn key_strategy() -> impl Strategy<Value = Key> {
    prop_oneof![
        any::<bool>().prop_map(Key::Score),
        any::<bool>().prop_map(Key::Rank),
        any::<bool>().prop_map(Key::Status),
        any::<bool>().prop_map(Key::Title),
        any::<bool>().prop_map(Key::Id),
    ]
}

#[derive(Debug, Clone)]
enum Cond {
    None,
    ScoreGt(i64),
    Status(&'static str),
    RankIsNone,
    Tenant(usize),
    Tenants(usize, usize),
    OrScoreRank(i64, i64),
}

fn filter(cond: &Cond) -> Option<Filter<Ticket>> {
    let f = Ticket::fields();
    Some(match *cond {
        Cond::None => return None,
        Cond::ScoreGt(v) => f.score.gt(v),
        Cond::Status(s) => f.status.eq(s),
        Cond::RankIsNone => f.rank.is_none(),
        Cond::Tenant(t) => f.tenant.eq(format!("tenant-{t}")),
        Cond::Tenants(a, b) => f.tenant.in_list([format!("tenant-{a}"), format!("tenant-{b}")]),
        Cond::OrScoreRank(s, r) => f.score.lt(s) | f.rank.gte(r),
    })
}

fn cond_strategy() -> impl Strategy<Value = Cond> {
    prop_oneof![
        Just(Cond::None),
        (-5i64..5).prop_map(Cond::ScoreGt),
        prop::sample::select(vec!["open", "closed"]).prop_map(Cond::Status),
        Just(Cond::RankIsNone),
        (0..12usize).prop_map(Cond::Tenant),
        (0..12usize, 0..12usize).prop_map(|(a, b)| Cond::Tenants(a, b)),
        (-5i64..5, -3i64..3).prop_map(|(s, r)| Cond::OrScoreRank(s, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Scatter-gather over N shards answers what one database with the same documents
    /// answers: the same documents in the same order, the same counts.
    #[test]
    fn scatter_gather_equals_one_database(
        docs in docs_strategy(),
        shards in 1u32..6,
        conds in prop::collection::vec(cond_strategy(), 0..3),
        keys in prop::collection::vec(key_strategy(), 1..4),
        offset in prop::option::of(0usize..40),
        limit in prop::option::of(0usize..40),
    ) {
        let router = ShardRouter::<Ticket>::in_memory(config(shards)).unwrap();
        let db = Db::open_in_memory().unwrap();
        let one = db.collection::<Ticket>().unwrap();
        for d in &docs {
            router.insert(d).unwrap();
            one.insert(d).unwrap();
        }
        let mut q = router.query();
        let mut r = one.query();
        for c in &conds {
            if let Some(f) = filter(c) {
                q = q.filter(f.clone());
                r = r.filter(f);
            }
        }
        let (mut cq, mut cr) = (router.query(), one.query());
        for c in &conds {
            if let Some(f) = filter(c) {
                cq = cq.filter(f.clone());
                cr = cr.filter(f);
            }
        }
        prop_assert_eq!(cq.count().unwrap(), cr.count().unwrap());
        for k in &keys {
            q = q.order_by(order(k));
            r = r.order_by(order(k));
        }
        if let Some(o) = offset {
            q = q.offset(o);
            r = r.offset(o);
        }
        if let Some(l) = limit {
            q = q.limit(l);
            r = r.limit(l);
        }
        let got: Vec<i64> = q.all().unwrap().into_iter().map(|t| t.id).collect();
        let want: Vec<i64> = r.all().unwrap().into_iter().map(|t| t.id).collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn queries_during_a_split_see_each_document_once() -> db4::Result<()> {
    let dir = TempDir::new("shard-split-readers");
    let router = ShardRouter::<Ticket>::open(dir.path(), config(2))?;
    for i in 0..3000 {
        router.insert(&ticket(i, &format!("k{}", i % 131)))?;
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (router, done) = (router.clone(), done.clone());
        std::thread::spawn(move || -> db4::Result<u64> {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(router.query().count()?, 3000);
                let page = router.query().order_by(Ticket::fields().score.desc()).offset(10).limit(50).all()?;
                assert_eq!(page.len(), 50);
                let ids: Vec<i64> =
                    router.query().order_by(Ticket::fields().id.asc()).all()?.iter().map(|t| t.id).collect();
                assert_eq!(ids, (0..3000).collect::<Vec<_>>());
                reads += 1;
            }
            Ok(reads)
        })
    };
    let source = router.shard_for(&"k1".to_string())?;
    router.split(source)?;
    let second = router.shard_for(&"k2".to_string())?;
    router.split(second)?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("the reader panicked")?;
    assert!(reads > 0);
    assert_eq!(everything(&router)?.len(), 3000);
    Ok(())
}

#[test]
fn a_hot_shard_splits_itself_when_asked_to() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(ShardRouterConfig {
        auto_split: true,
        hot_shard_threshold: 1.0,
        ..config(2)
    })?;
    for i in 0..(db4::shard::AUTO_SPLIT_EVERY as i64 + 10) {
        router.insert(&ticket(i, &format!("k{i}")))?;
    }
    assert_eq!(router.shards().len(), 3, "one automatic split after {} operations", db4::shard::AUTO_SPLIT_EVERY);
    assert_eq!(router.query().count()?, db4::shard::AUTO_SPLIT_EVERY + 10);
    assert_eq!(everything(&router)?.len() as u64, db4::shard::AUTO_SPLIT_EVERY + 10);
    Ok(())
}

/// Pages bigger than the one-phase gather (more than 1 000 documents with the offset) merge
/// ids and keys first and fetch the kept documents after: the same answer as one database,
/// skewed shards included (most documents in one tenant), versions decoded alike.
#[test]
fn big_pages_and_one_phase_pages_equal_one_database() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(config(3))?;
    let db = Db::open_in_memory()?;
    let one = db.collection::<Ticket>()?;
    let docs: Vec<Ticket> = (0..2_500)
        .map(|i| ticket(i, if i % 5 == 0 { "small" } else { "big" }))
        .chain((2_500..2_600).map(|i| ticket(i, &format!("t{i}"))))
        .collect();
    for chunk in docs.chunks(500) {
        one.insert_many(chunk)?;
        for d in chunk {
            router.insert(d)?;
        }
    }
    // Each document updated once, so versions are 1 and must come back as stored.
    router.update(&Ticket { version: 0, ..docs[7].clone() })?;
    one.update(&Ticket { version: 0, ..docs[7].clone() })?;
    let f = Ticket::fields();
    for (offset, limit) in [(0, Some(10)), (300, Some(900)), (250, Some(1_200)), (0, Some(2_600)), (40, None)] {
        let mut q = router.query().order_by(f.score.desc()).order_by(f.rank.asc()).offset(offset);
        let mut r = one.query().order_by(f.score.desc()).order_by(f.rank.asc()).offset(offset);
        if let Some(l) = limit {
            q = q.limit(l);
            r = r.limit(l);
        }
        let (got, want) = (q.all()?, r.all()?);
        assert_eq!(got.len(), want.len(), "offset {offset} limit {limit:?}");
        assert!(got == want, "offset {offset} limit {limit:?}: the pages differ");
    }
    Ok(())
}

/// Filters that pin the partition key to two values match no shard: an empty page, whatever
/// the limit (this panicked once the gather went in rounds).
#[test]
fn a_filter_no_shard_can_match_gives_an_empty_page() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(config(3))?;
    for i in 0..20 {
        router.insert(&ticket(i, &format!("t{}", i % 4)))?;
    }
    let f = Ticket::fields();
    for limit in [None, Some(0), Some(5)] {
        let mut q = router.query().filter(f.tenant.eq("t1")).filter(f.tenant.eq("t2")).order_by(f.score.asc());
        if let Some(l) = limit {
            q = q.limit(l);
        }
        assert!(q.all()?.is_empty(), "limit {limit:?}");
    }
    assert_eq!(router.query().filter(f.tenant.eq("t1")).filter(f.tenant.eq("t2")).count()?, 0);
    Ok(())
}

#[test]
fn a_document_answers_only_to_its_own_partition_key() -> db4::Result<()> {
    let router = ShardRouter::<Ticket>::in_memory(config(4))?;
    let owner = "owner".to_owned();
    let shard = router.shard_for(&owner)?;
    // Another key on the same shard: routing alone cannot tell them apart.
    let neighbour = (0..1000).map(|i| format!("n{i}")).find(|k| router.shard_for(k).ok() == Some(shard));
    let neighbour = neighbour.expect("a key on the same shard");
    router.insert(&ticket(1, &owner))?;
    let f = Ticket::fields();
    assert_eq!(router.get(&neighbour, 1)?, None);
    assert_eq!(router.get_many(&neighbour, [1, 2])?, [None, None]);
    assert!(!router.delete(&neighbour, 1)?);
    assert!(matches!(router.increment(&neighbour, 1, f.score, 5), Err(Error::NotFound { .. })));
    let status = ticket(1, &owner).status;
    assert!(matches!(
        router.compare_and_swap(&neighbour, 1, f.status, status, "x".to_owned()),
        Err(Error::NotFound { .. })
    ));
    router.transaction(&neighbour, |tx| {
        assert_eq!(tx.get(&neighbour, 1)?, None);
        assert!(!tx.delete(&neighbour, 1)?);
        assert!(matches!(tx.increment(&neighbour, 1, f.score, 5), Err(Error::NotFound { .. })));
        Ok(())
    })?;
    // The owner's document is as it was, and answers to its own key.
    assert_eq!(router.get(&owner, 1)?, Some(ticket(1, &owner)));
    assert_eq!(router.get_many(&owner, [1, 2])?, [Some(ticket(1, &owner)), None]);
    assert_eq!(router.increment(&owner, 1, f.score, 5)?, ticket(1, &owner).score + 5);
    assert!(router.delete(&owner, 1)?);
    Ok(())
}
