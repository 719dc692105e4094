//! The Worker-side router natively: `DurableRouter` over `LocalShards` (the shard objects' and
//! coordinator's servers in process, speaking the same protocol bytes as in a Worker), checked
//! against one database holding the same documents, plus stale-epoch redirects and bad input.

use crate::shard_router::{Ticket, ticket};
use db4::Order;
use db4::prelude::*;
use db4::remote::{DurableRouter, LocalShards, ShardClient, ShardServer};
use db4::shard::ShardRouterConfig;
use proptest::prelude::*;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Runs a future to completion on this thread. `LocalShards` answers at once, so nothing ever
/// waits; a future that stays pending is a bug, reported instead of spinning forever.
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("the future stayed pending: LocalShards never waits");
}

fn config(shards: u32) -> ShardRouterConfig {
    ShardRouterConfig { shard_count: shards, virtual_nodes: 64, ..Default::default() }
}

fn local() -> db4::Result<Rc<LocalShards>> {
    Ok(Rc::new(LocalShards::in_memory()?.serve::<Ticket>()))
}

fn tenant(i: i64) -> String {
    format!("tenant-{:02}", i % 50)
}

/// A router over 8 shard objects and one database, both holding `n` tickets of 50 tenants.
fn loaded(n: i64) -> db4::Result<(Rc<LocalShards>, DurableRouter<Ticket>, Collection<Ticket>)> {
    let shards = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(8)))?;
    let one = Db::open_in_memory()?.collection::<Ticket>()?;
    for i in 0..n {
        let t = ticket(i, &tenant(i));
        block_on(router.insert(&t))?;
        one.insert(&t)?;
    }
    Ok((shards, router, one))
}

#[test]
fn crud_goes_to_the_shard_of_the_partition_key() -> db4::Result<()> {
    let shards = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(4)))?;
    assert_eq!(router.shards().len(), 4);
    for i in 0..40 {
        block_on(router.insert(&ticket(i, &tenant(i))))?;
    }
    assert!(matches!(block_on(router.insert(&ticket(3, &tenant(3)))), Err(Error::AlreadyExists { .. })));
    for i in 0..40 {
        let key = tenant(i);
        let home = router.shard_for(&key)?;
        for shard in router.shards() {
            let held = shards.server("tickets", shard)?.db().collection::<Ticket>()?.get(i)?;
            assert_eq!(held.is_some(), shard == home, "ticket {i} on shard {shard}");
        }
        assert_eq!(block_on(router.get(&key, i))?, Some(ticket(i, &key)));
    }
    let key = tenant(7);
    let mut t = block_on(router.get(&key, 7))?.expect("stored");
    t.title = "changed".into();
    t.version = block_on(router.update(&t))?.expect("versioned");
    assert_eq!(t.version, 1);
    assert_eq!(block_on(router.get(&key, 7))?.map(|t| t.title), Some("changed".into()));
    // Optimistic locking travels: the stale copy (version 0) is refused with the same error.
    let stale = Ticket { version: 0, ..t.clone() };
    assert!(matches!(block_on(router.update(&stale)), Err(Error::Conflict { expected: 0, actual: 1, .. })));
    let f = Ticket::fields();
    assert_eq!(block_on(router.increment(&key, 7, f.score, 5))?, ticket(7, &key).score + 5);
    let cas = block_on(router.compare_and_swap(&key, 7, f.status, "nope", "x"))?;
    assert!(!cas.swapped);
    assert_eq!(cas.current, ticket(7, &key).status);
    let cas = block_on(router.compare_and_swap(&key, 7, f.status, cas.current.clone(), "done".to_string()))?;
    assert!(cas.swapped);
    assert_eq!(block_on(router.get(&key, 7))?.map(|t| t.status), Some("done".into()));
    block_on(router.upsert(&ticket(100, &key)))?;
    assert!(block_on(router.delete(&key, 100))?);
    assert!(!block_on(router.delete(&key, 100))?);
    assert!(matches!(block_on(router.update(&ticket(100, &key))), Err(Error::NotFound { .. })));
    // Stats: every shard, the documents adding up.
    let stats = block_on(router.stats())?;
    assert_eq!(stats.len(), 4);
    assert_eq!(stats.iter().map(|(_, s)| s.documents).sum::<u64>(), 40);
    // The change log of the shard of `key` holds its writes, in order.
    let changes = block_on(router.changes(router.shard_for(&key)?, 0, 1000))?;
    let ops: Vec<&str> =
        changes.iter().filter(|c| c.id == db4::remote::protocol::WireValue::Int(100)).map(|c| c.op.as_str()).collect();
    assert_eq!(ops, ["insert", "delete"], "an upsert of a new document is logged as its insert");
    Ok(())
}

#[test]
fn queries_equal_one_database() -> db4::Result<()> {
    let (shards, router, one) = loaded(2_000)?;
    let f = Ticket::fields();
    /// A name, the filters, the order, the limit and the offset.
    type Case = (&'static str, Vec<Filter<Ticket>>, Vec<Order<Ticket>>, Option<usize>, usize);
    let cases: Vec<Case> = vec![
        ("everything by id", vec![], vec![], None, 0),
        ("open ones by score", vec![f.status.eq("open")], vec![f.score.desc()], Some(25), 0),
        ("top 100 by score, then rank", vec![], vec![f.score.desc(), f.rank.asc()], Some(100), 0),
        ("deep page", vec![], vec![f.score.asc()], Some(20), 333),
        ("one tenant", vec![f.tenant.eq(tenant(7))], vec![f.id.desc()], Some(10), 2),
        ("three tenants", vec![f.tenant.in_list([tenant(1), tenant(2), tenant(3)])], vec![f.title.asc()], None, 0),
        ("negation", vec![!(f.status.eq("open") | f.score.gt(50))], vec![], Some(50), 10),
        ("rank is none", vec![f.rank.is_none()], vec![f.score.asc()], Some(30), 0),
        ("prefix", vec![f.title.starts_with("t19")], vec![], None, 0),
        ("between", vec![f.score.between(10, 20)], vec![f.rank.desc()], Some(40), 5),
    ];
    for (name, filters, order, limit, offset) in cases {
        let mut q = one.query().offset(offset);
        let mut r = router.query().offset(offset);
        for flt in &filters {
            q = q.filter(flt.clone());
            r = r.filter(flt.clone());
        }
        for o in &order {
            q = q.order_by(*o);
            r = r.order_by(*o);
        }
        if let Some(n) = limit {
            q = q.limit(n);
            r = r.limit(n);
        }
        let (mut qc, mut rc) = (one.query().offset(offset), router.query().offset(offset));
        for flt in &filters {
            qc = qc.filter(flt.clone());
            rc = rc.filter(flt.clone());
        }
        if let Some(n) = limit {
            qc = qc.limit(n);
            rc = rc.limit(n);
        }
        let want = q.all()?;
        assert_eq!(block_on(r.all())?, want, "{name}");
        assert_eq!(block_on(rc.count())?, qc.count()?, "{name}: count");
    }
    // A query pinning the partition key asks one shard object.
    let before = shards.requests();
    let got = block_on(router.query().filter(f.tenant.eq(tenant(9))).all())?;
    assert_eq!(shards.requests() - before, 1);
    assert_eq!(got, one.query().filter(f.tenant.eq(tenant(9))).all()?);
    assert_eq!(block_on(router.query().filter(f.tenant.eq(tenant(9))).first())?, got.first().cloned());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_queries_equal_one_database(
        status in prop::option::of(prop_oneof![Just("open"), Just("closed")]),
        min_score in prop::option::of(0i64..100),
        tenants in prop::collection::vec(0i64..50, 0..4),
        desc in any::<bool>(),
        by_rank in any::<bool>(),
        limit in prop::option::of(1usize..60),
        offset in 0usize..40,
    ) {
        thread_local! {
            static DATA: (Rc<LocalShards>, DurableRouter<Ticket>, Collection<Ticket>) =
                loaded(600).expect("loads");
        }
        DATA.with(|(_, router, one)| -> Result<(), TestCaseError> {
            let f = Ticket::fields();
            let mut filters = Vec::new();
            if let Some(s) = status { filters.push(f.status.eq(s)); }
            if let Some(m) = min_score { filters.push(f.score.gte(m)); }
            if !tenants.is_empty() { filters.push(f.tenant.in_list(tenants.iter().map(|&t| tenant(t)))); }
            let order = if by_rank { if desc { f.rank.desc() } else { f.rank.asc() } } else if desc { f.score.desc() } else { f.score.asc() };
            let mut q = one.query().order_by(order).offset(offset);
            let mut r = router.query().order_by(order).offset(offset);
            for flt in filters { q = q.filter(flt.clone()); r = r.filter(flt); }
            if let Some(n) = limit { q = q.limit(n); r = r.limit(n); }
            let want = q.all().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = block_on(r.all()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, want);
            Ok(())
        })?;
    }
}

#[test]
fn a_router_with_an_old_map_is_redirected() -> db4::Result<()> {
    let shards = local()?;
    let old = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(3)))?;
    block_on(old.insert(&ticket(1, &tenant(1))))?;
    assert_eq!(old.epoch(), 0);
    // Another router moves the collection to a ring with a fourth shard (an empty collection
    // part: no document has to move for this test), through the coordinator.
    let mut ring = old.ring();
    let added = ring.add_shard()?;
    let map = db4::remote::ShardMap { format: 1, collection: "tickets".into(), ring: ring.clone(), plan: None };
    let op = db4::remote::protocol::CoordinatorOp::Store { expected: 0, map: Box::new(map) };
    let reply = shards.coordinator_server().handle(&serde_json::to_vec(&op).expect("serializes"));
    assert!(String::from_utf8_lossy(&reply).starts_with("{\"ok\""), "{}", String::from_utf8_lossy(&reply));
    // The new router's first request to each shard assigns the new ring.
    let fresh_client: Rc<LocalShards> = Rc::clone(&shards);
    let fresh = {
        // A fresh isolate would not have the old map cached: refresh explicitly.
        let r = block_on(DurableRouter::<Ticket>::open(fresh_client, config(3)))?;
        block_on(r.refresh())?;
        r
    };
    assert_eq!(fresh.epoch(), ring.epoch());
    // Find a tenant whose shard the new ring changed.
    let moved = (0..1000).map(tenant_n).find(|t| ring.shard_for(t.as_bytes()) == added).expect("some key moves");
    for shard in fresh.shards() {
        block_on(fresh.query().filter(Ticket::fields().tenant.eq(format!("warm-{}", shard.get()))).count())?;
    }
    block_on(fresh.stats())?; // every shard now holds the new ring
    // The old router (epoch 0 in its own copy) is redirected: its insert lands on the shard of
    // the new ring, and it learns the new epoch.
    let old_ring = old.ring();
    assert_eq!(old_ring.epoch(), 0);
    block_on(old.insert(&ticket(2, &moved)))?;
    assert_eq!(old.epoch(), ring.epoch(), "the redirect reloaded the map");
    let held = shards.server("tickets", added)?.db().collection::<Ticket>()?.get(2)?;
    assert!(held.is_some(), "stored on the shard the new ring names");
    let wrong = old_ring.shard_for(moved.as_bytes());
    assert_ne!(wrong, added);
    assert!(shards.server("tickets", wrong)?.db().collection::<Ticket>()?.get(2)?.is_none());
    assert_eq!(old.ring().shard_for(moved.as_bytes()), added);
    Ok(())
}

fn tenant_n(i: i64) -> String {
    format!("moving-{i}")
}

#[test]
fn a_shard_refuses_what_is_not_its_own() -> db4::Result<()> {
    let shards = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(2)))?;
    block_on(router.insert(&ticket(1, "a")))?;
    block_on(router.stats())?; // every shard object now holds the ring
    let home = router.shard_for(&"a".to_string())?;
    let other = router.shards().into_iter().find(|&s| s != home).expect("two shards");
    let server: Rc<ShardServer> = shards.server("tickets", other)?;
    let send = |body: serde_json::Value| -> serde_json::Value {
        serde_json::from_slice(&server.handle(&serde_json::to_vec(&body).expect("json"))).expect("a reply")
    };
    let doc = serde_json::to_value(ticket(5, "a")).expect("json");
    // A document of another shard's key: refused, not stored.
    let r = send(
        serde_json::json!({"version": 1, "epoch": 0, "shard": other.get(), "collection": "tickets", "op": {"insert": {"doc": doc}}}),
    );
    assert_eq!(r["err"]["error"]["kind"], "cross_shard", "{r}");
    assert_eq!(server.db().collection::<Ticket>()?.count()?, 0);
    // An older epoch than the shard's is redirected; a newer one asks for the ring.
    let stale = send(
        serde_json::json!({"version": 1, "epoch": 0, "shard": other.get(), "collection": "tickets", "op": "stats"}),
    );
    assert!(stale.get("ok").is_some(), "{stale}");
    let newer = send(
        serde_json::json!({"version": 1, "epoch": 9, "shard": other.get(), "collection": "tickets", "op": "stats"}),
    );
    assert_eq!(newer["needs_ring"]["epoch"], 0, "{newer}");
    // Another protocol version, another collection, garbage, a wrong shard id, a bad field.
    let v2 = send(
        serde_json::json!({"version": 2, "epoch": 0, "shard": other.get(), "collection": "tickets", "op": "stats"}),
    );
    assert_eq!(v2["err"]["error"]["kind"], "protocol", "{v2}");
    let coll =
        send(serde_json::json!({"version": 1, "epoch": 0, "shard": other.get(), "collection": "nope", "op": "stats"}));
    assert_eq!(coll["err"]["error"]["kind"], "protocol", "{coll}");
    let junk: serde_json::Value = serde_json::from_slice(&server.handle(b"\xff{not json")).expect("a reply");
    assert_eq!(junk["err"]["error"]["kind"], "protocol", "{junk}");
    let wrong_id = send(
        serde_json::json!({"version": 1, "epoch": 0, "shard": home.get(), "collection": "tickets", "op": "stats"}),
    );
    assert_eq!(wrong_id["err"]["error"]["kind"], "protocol", "{wrong_id}");
    let field = send(serde_json::json!({"version": 1, "epoch": 0, "shard": other.get(), "collection": "tickets",
        "op": {"query": {"filters": [[{"cmp": {"field": "nope", "op": "eq", "value": {"int": 1}}}]], "order": [], "offset": 0, "limit": null}}}));
    assert_eq!(field["err"]["error"]["kind"], "invalid_query", "{field}");
    let malformed = send(serde_json::json!({"version": 1, "epoch": 0, "shard": other.get(), "collection": "tickets",
        "op": {"query": {"filters": [["not", {"and": 3}]], "order": [], "offset": 0, "limit": null}}}));
    assert_eq!(malformed["err"]["error"]["kind"], "invalid_query", "{malformed}");
    // Through the router, bad input is the same error as on one database.
    let f = Ticket::fields();
    assert!(matches!(block_on(router.query().filter(f.rank.gt(None)).all()), Err(Error::InvalidQuery { .. })));
    Ok(())
}

#[test]
fn deep_filters_travel_without_recursion() -> db4::Result<()> {
    let (_, router, one) = loaded(200)?;
    let f = Ticket::fields();
    let mut flt = f.score.gt(10);
    for i in 0..2_000 {
        flt = if i % 2 == 0 { !flt } else { flt & f.id.gte(0) };
    }
    // Too deep for one SQL statement on either side: the same error, not a stack overflow.
    let want = one.query().filter(flt.clone()).count();
    let got = block_on(router.query().filter(flt).count());
    assert_eq!(got.is_err(), want.is_err(), "{got:?} vs {want:?}");
    assert!(matches!(got, Err(Error::InvalidQuery { .. })), "{got:?}");
    Ok(())
}

#[test]
fn many_routers_in_one_isolate_share_the_map() -> db4::Result<()> {
    let shards = local()?;
    let a = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(5)))?;
    // The second open takes the cached map: same ring, whatever its config says.
    let b = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(2)))?;
    assert_eq!(a.ring(), b.ring());
    assert_eq!(b.shards().len(), 5);
    // A different deployment does not see it.
    let other = local()?;
    let c = block_on(DurableRouter::<Ticket>::open(Rc::clone(&other), config(2)))?;
    assert_eq!(c.shards().len(), 2);
    assert_ne!(other.cluster(), shards.cluster());
    Ok(())
}

/// Every ticket each shard object holds, with the shard, sorted: a ticket on two shards
/// appears twice.
fn placement(shards: &LocalShards, router: &DurableRouter<Ticket>) -> db4::Result<Vec<(i64, db4::shard::ShardId)>> {
    let mut out = Vec::new();
    for shard in router.shards() {
        for t in shards.server("tickets", shard)?.db().collection::<Ticket>()?.query().all()? {
            out.push((t.id, shard));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn a_split_moves_half_a_shard_and_answers_stay_equal() -> db4::Result<()> {
    let (shards, router, one) = loaded(3_000)?;
    let source = router.shard_for(&tenant(11))?;
    let before: Vec<_> = placement(&shards, &router)?;
    let on_source = before.iter().filter(|(_, s)| *s == source).count();
    let report = block_on(router.split(source))?;
    assert_eq!(report.source, source);
    assert_eq!(router.epoch(), 1);
    assert_eq!(report.epoch, 1);
    assert!(router.map().plan.is_none(), "the plan is cleaned up");
    assert!(report.copied > 0 && report.copied < on_source as u64, "{report:?} of {on_source}");
    assert_eq!(report.deleted, report.copied, "{report:?}");
    // Every ticket on exactly one shard: the one the new ring names.
    let after = placement(&shards, &router)?;
    assert_eq!(after.len(), 3_000);
    let ring = router.ring();
    for (id, shard) in &after {
        let t = one.get(*id)?.expect("in the model");
        assert_eq!(ring.shard_for(t.tenant.as_bytes()), *shard, "ticket {id}");
    }
    assert!(after.iter().any(|(_, s)| *s == report.new_shard));
    let f = Ticket::fields();
    assert_eq!(
        block_on(router.query().order_by(f.score.desc()).limit(200).all())?,
        one.query().order_by(f.score.desc()).limit(200).all()?
    );
    assert_eq!(block_on(router.query().count())?, 3_000);
    for i in (0..3_000).step_by(37) {
        assert_eq!(block_on(router.get(&tenant(i), i))?, one.get(i)?, "ticket {i}");
    }
    // Another router whose isolate still has the old map: redirected, right answers.
    let stale_client = Rc::clone(&shards);
    let stale = block_on(DurableRouter::<Ticket>::open(stale_client, config(8)))?;
    assert_eq!(block_on(stale.get(&tenant(11), 11))?, one.get(11)?);
    Ok(())
}

#[test]
fn a_split_interrupted_anywhere_resumes_without_loss_or_duplicates() -> db4::Result<()> {
    let f = Ticket::fields();
    let mut completed_at = None;
    for cut in 1..400u64 {
        let shards = local()?;
        let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(3)))?;
        let mut model = std::collections::BTreeMap::new();
        for i in 0..700 {
            let t = ticket(i, &tenant(i));
            model.insert(i, t.clone());
            router_insert(&router, &t)?;
        }
        let source = router.shard_for(&tenant(4))?;
        shards.fail_after(cut);
        let outcome = block_on(router.split(source));
        shards.heal();
        if outcome.is_ok() {
            completed_at = Some(cut);
        }
        // Writes while the split is stopped wherever it died, through a router that reloads
        // the map; only acknowledged ones go into the model.
        let writer = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(3)))?;
        block_on(writer.refresh())?;
        for i in 0..60 {
            let id = 10_000 + i;
            let t = ticket(id, &tenant(i));
            if block_on(writer.insert(&t)).is_ok() {
                model.insert(id, t);
            }
            let victim = (i * 11) % 700;
            if i % 3 == 0 {
                if let Ok(true) = block_on(writer.delete(&tenant(victim), victim)) {
                    model.remove(&victim);
                }
            } else if let Some(mut t) = model.get(&victim).cloned() {
                t.title = format!("edited {cut}");
                if let Ok(v) = block_on(writer.update(&t)) {
                    t.version = v.unwrap_or(0);
                    model.insert(victim, t);
                }
            }
        }
        // Reads while the split is stopped: the same answers as one database, or (between the
        // freeze and the switch only) a refusal to answer, never a wrong answer.
        let want: Vec<Ticket> = model.values().cloned().collect();
        match block_on(writer.query().all()) {
            Ok(got) => {
                let ids = |v: &[Ticket]| v.iter().map(|t| t.id).collect::<Vec<_>>();
                assert_eq!(ids(&got), ids(&want), "cut {cut}: a query while the split is stopped");
                assert!(got == want, "cut {cut}: a query while the split is stopped: same ids, other contents");
            }
            Err(Error::MigrationState { .. }) => {}
            Err(e) => panic!("cut {cut}: {e}"),
        }
        match block_on(writer.query().count()) {
            Ok(n) => assert_eq!(n as usize, want.len(), "cut {cut}: a count while the split is stopped"),
            Err(Error::MigrationState { .. }) => {}
            Err(e) => panic!("cut {cut}: {e}"),
        }
        // Anyone can finish the split.
        let finisher = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(3)))?;
        block_on(finisher.resume_split())?;
        assert!(finisher.map().plan.is_none(), "cut {cut}: the split finished");
        // The first requests of a split read the map and store the plan: cut before the plan
        // is stored, there is no split to finish.
        let split = finisher.shards().len() == 4;
        assert!(split || cut < 3, "cut {cut}: {} shards", finisher.shards().len());
        let got = block_on(finisher.query().all())?;
        assert_eq!(got.len(), want.len(), "cut {cut}: nothing lost, nothing twice");
        assert_eq!(got, want, "cut {cut}");
        let placed = placement(&shards, &finisher)?;
        assert_eq!(placed.len(), model.len(), "cut {cut}: each ticket on one shard");
        for (id, shard) in placed {
            let key = &model[&id].tenant;
            assert_eq!(finisher.ring().shard_for(key.as_bytes()), shard, "cut {cut}: ticket {id}");
        }
        assert_eq!(
            block_on(finisher.query().filter(f.title.starts_with("edited")).count())? as usize,
            model.values().filter(|t| t.title.starts_with("edited")).count(),
            "cut {cut}"
        );
        if completed_at.is_some() {
            break;
        }
    }
    let cuts = completed_at.expect("a split completes within 400 requests");
    assert!(cuts > 10, "the split was cut at {cuts} points");
    Ok(())
}

fn router_insert(router: &DurableRouter<Ticket>, t: &Ticket) -> db4::Result<()> {
    block_on(router.insert(t))
}

mod search {
    //! `DurableRouter::search`: the two rounds over the protocol rank as one database does.
    use super::{block_on, config};
    use crate::shard_search::Note;
    use db4::prelude::*;
    use db4::remote::{DurableRouter, LocalShards};
    use proptest::prelude::*;
    use std::rc::Rc;

    const WORDS: &[&str] = &["edge", "database", "sqlite", "cache", "cloud", "worker", "shard", "index"];

    fn note(id: i64, tenant: &str, title: &str, body: &str) -> Note {
        Note {
            id,
            tenant: tenant.to_owned(),
            kind: if id % 2 == 0 { "even".into() } else { "odd".into() },
            title: title.to_owned(),
            body: body.to_owned(),
        }
    }

    /// A router over `shards` shard objects and one database, both holding `docs` (inserted
    /// in id order: the database's rowids, which break its ties, are the ids).
    fn both(shards: u32, docs: &[Note]) -> db4::Result<(DurableRouter<Note>, Db)> {
        let local = Rc::new(LocalShards::in_memory()?.serve::<Note>());
        let router = block_on(DurableRouter::<Note>::open(local, config(shards)))?;
        let db = Db::open_in_memory()?;
        let one = db.collection::<Note>()?;
        let mut sorted = docs.to_vec();
        sorted.sort_by_key(|d| d.id);
        block_on(router.insert_many(&sorted))?;
        one.insert_many(&sorted)?;
        Ok((router, db))
    }

    fn ranked(res: &db4::fts::SearchResults<Note>) -> Vec<(i64, f64)> {
        res.hits.iter().map(|h| (h.doc.id, h.score)).collect()
    }

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

    #[test]
    fn highlights_snippets_totals_and_pages_equal_one_database() -> db4::Result<()> {
        let docs: Vec<Note> = (0..60)
            .map(|i| {
                let body =
                    if i % 3 == 0 { "an edge database at the edge of the network" } else { "a cache in the cloud" };
                note(i, &format!("t{}", i % 7), if i % 5 == 0 { "edge notes" } else { "notes" }, body)
            })
            .collect();
        let (router, db) = both(8, &docs)?;
        let one = db.collection::<Note>()?;
        let r = block_on(router.search("edge").highlight("[", "]").snippet(6).with_total().limit(4).offset(1).run())?;
        let o = one.search("edge").highlight("[", "]").snippet(6).with_total().limit(4).offset(1).run()?;
        assert_eq!(r.total, o.total);
        assert_eq!(r.total, Some(28));
        same_ranking(&ranked(&r), &ranked(&o)).unwrap();
        for (a, b) in r.hits.iter().zip(&o.hits) {
            assert_eq!(a.doc, b.doc);
            assert_eq!(a.highlights, b.highlights);
            assert_eq!(a.snippet, b.snippet);
            assert!(a.snippet.as_deref().is_some_and(|s| s.contains("[edge]")), "{:?}", a.snippet);
        }
        // A filter pinning the partition key searches one shard, scored with every shard's
        // statistics; a filter on another field searches them all.
        let f = Note::fields();
        for filter in [f.tenant.eq("t2".to_string()), f.kind.eq("odd".to_string())] {
            let r = block_on(router.search("edge OR cloud").filter(filter.clone()).with_total().run())?;
            let o = one.search("edge OR cloud").filter(filter).with_total().run()?;
            assert_eq!(r.total, o.total);
            same_ranking(&ranked(&r), &ranked(&o)).unwrap();
        }
        // min_score as one database cuts it.
        let bar = o.hits.get(1).map_or(0.0, |h| h.score);
        let r = block_on(router.search("edge OR cloud").min_score(bar).with_total().run())?;
        let o = one.search("edge OR cloud").min_score(bar).with_total().run()?;
        assert_eq!(r.total, o.total);
        same_ranking(&ranked(&r), &ranked(&o)).unwrap();
        Ok(())
    }

    #[test]
    fn bad_searches_fail_before_any_request() -> db4::Result<()> {
        let local = Rc::new(LocalShards::in_memory()?.serve::<Note>());
        let router = block_on(DurableRouter::<Note>::open(Rc::clone(&local), config(4)))?;
        let before = local.requests();
        for bad in ["\"unclosed", "nope:edge", "(edge", ""] {
            let r = block_on(router.search(bad).run());
            assert!(matches!(r, Err(Error::InvalidQuery { .. })), "{bad:?}: {r:?}");
        }
        assert!(matches!(block_on(router.search("edge").snippet(0).run()), Err(Error::InvalidQuery { .. })));
        assert!(matches!(block_on(router.search("edge").min_score(f64::NAN).run()), Err(Error::InvalidQuery { .. })));
        assert_eq!(local.requests(), before, "refused searches send nothing");
        Ok(())
    }

    fn text_strategy(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(WORDS), 0..max).prop_map(|w| w.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random corpora over random shard counts: every query's hits, order and scores equal
        /// one database's.
        #[test]
        fn random_searches_rank_as_one_database(
            shards in 1u32..6,
            docs in prop::collection::vec((0usize..9, text_strategy(4), text_strategy(12)), 1..60),
            query in prop::sample::select(vec!["edge", "edge database", "cache OR cloud", "\"edge database\"", "sqlite NOT cache", "title:shard"]),
            limit in 1usize..12,
            offset in 0usize..4,
        ) {
            let notes: Vec<Note> = docs
                .iter()
                .enumerate()
                .map(|(i, (t, title, body))| note(i as i64, &format!("t{t}"), title, body))
                .collect();
            let (router, db) = both(shards, &notes).unwrap();
            let one = db.collection::<Note>().unwrap();
            let r = block_on(router.search(query).limit(limit).offset(offset).with_total().run()).unwrap();
            let o = one.search(query).limit(limit).offset(offset).with_total().run().unwrap();
            prop_assert_eq!(r.total, o.total);
            if let Err(e) = same_ranking(&ranked(&r), &ranked(&o)) {
                return Err(TestCaseError::fail(e));
            }
        }
    }
}

#[test]
fn a_document_answers_only_to_its_own_partition_key() -> db4::Result<()> {
    let shards = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(4)))?;
    let owner = "owner".to_owned();
    let shard = router.shard_for(&owner)?;
    // Another key routed to the same shard object: the shard alone cannot tell them apart by
    // routing, only by the stored key.
    let neighbour = (0..1000).map(|i| format!("n{i}")).find(|k| router.shard_for(k).ok() == Some(shard));
    let neighbour = neighbour.expect("a key on the same shard");
    block_on(router.insert(&ticket(1, &owner)))?;
    let f = Ticket::fields();
    assert_eq!(block_on(router.get(&neighbour, 1))?, None);
    assert!(!block_on(router.delete(&neighbour, 1))?);
    assert!(matches!(block_on(router.increment(&neighbour, 1, f.score, 5)), Err(Error::NotFound { .. })));
    let status = ticket(1, &owner).status;
    let cas = block_on(router.compare_and_swap(&neighbour, 1, f.status, status.clone(), "x".to_owned()));
    assert!(matches!(cas, Err(Error::NotFound { .. })), "{cas:?}");
    // The owner's document is as it was, and answers to its own key.
    assert_eq!(block_on(router.get(&owner, 1))?, Some(ticket(1, &owner)));
    assert_eq!(block_on(router.increment(&owner, 1, f.score, 5))?, ticket(1, &owner).score + 5);
    assert!(block_on(router.delete(&owner, 1))?);
    Ok(())
}

#[test]
fn hot_shards_are_those_over_the_trigger_hottest_first() -> db4::Result<()> {
    use db4::remote::SplitTrigger;
    let shards = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(4)))?;
    // One tenant takes most of the requests: its shard object answers them all.
    let busy = "busy".to_owned();
    let busy_shard = router.shard_for(&busy)?;
    for i in 0..300 {
        block_on(router.insert(&ticket(i, &busy)))?;
    }
    let quiet = (0..1000).map(|i| format!("q{i}")).find(|k| router.shard_for(k).ok() != Some(busy_shard));
    let quiet = quiet.expect("a key on another shard");
    let quiet_shard = router.shard_for(&quiet)?;
    for i in 0..20 {
        block_on(router.insert(&ticket(1000 + i, &quiet)))?;
    }
    let stats = block_on(router.stats())?;
    let of = |s| stats.iter().find(|(id, _)| *id == s).map(|(_, st)| st.clone()).expect("stats of the shard");
    let (b, q) = (of(busy_shard), of(quiet_shard));
    assert!(b.ops_per_sec > q.ops_per_sec * 5.0, "{b:?} vs {q:?}");
    assert!(b.database_bytes > 0 && q.database_bytes > 0, "{b:?} {q:?}");
    // By request rate: only the busy shard is over a trigger between the two rates.
    let between = SplitTrigger { ops_per_sec: (b.ops_per_sec + q.ops_per_sec) / 2.0, database_bytes: u64::MAX };
    let hot = block_on(router.hot_shards(&between))?;
    assert_eq!(hot.iter().map(|h| h.0).collect::<Vec<_>>(), [busy_shard]);
    // By size: every shard with a database over the limit, the largest share first.
    let tiny = SplitTrigger { ops_per_sec: f64::INFINITY, database_bytes: 1 };
    let hot = block_on(router.hot_shards(&tiny))?;
    assert_eq!(hot.len(), 4, "{hot:?}");
    assert!(hot.windows(2).all(|w| w[0].1.database_bytes >= w[1].1.database_bytes), "{hot:?}");
    Ok(())
}

#[test]
fn a_split_copies_large_documents_in_replies_of_bounded_size() -> db4::Result<()> {
    use db4::shard::MigrationStep;
    let shards = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(2)))?;
    // 160 documents of 512 KiB, about 80 MiB on the two shards: some 20 MiB move.
    let big = |i: i64| {
        let mut t = ticket(i, &tenant(i));
        t.title = format!("{i:06}").repeat(512 * 1024 / 6);
        t
    };
    for i in 0..160 {
        block_on(router.insert(&big(i)))?;
    }
    let source = router.shards()[0];
    let moving_before = block_on(router.query().count())?;
    block_on(router.begin_split(source))?;
    let mut copy_steps = 0;
    loop {
        let before = router.map().plan.map(|p| p.step());
        let after = block_on(router.split_step())?;
        if before == Some(MigrationStep::Copying) && after == Some(MigrationStep::Copying) {
            copy_steps += 1;
        }
        if after.is_none() {
            break;
        }
    }
    // A copy step stays at Copying after each batch, the last one included: one batch (what
    // the 500-document scan page would be without the byte bound) is one such step.
    assert!(copy_steps >= 2, "the copy took {copy_steps} batches");
    assert_eq!(block_on(router.query().count())?, moving_before);
    for i in 0..160 {
        assert_eq!(block_on(router.get(&tenant(i), i))?, Some(big(i)), "ticket {i}");
    }
    Ok(())
}

/// A tenant's change stream through the router: every committed change of its tickets once,
/// in commit order, whatever the page size and wherever a reader resumes; nothing of the
/// tenants sharing its shard; the work per request bounded even when its events are sparse.
#[test]
fn a_tenants_change_stream_is_its_own_changes_once_in_order() -> db4::Result<()> {
    use db4::remote::StreamPosition;
    // Before images: a delete's image tells its partition (without, deletes are left out).
    let shards =
        Rc::new(LocalShards::in_memory()?.with_options(DbOptions::default().before_images(true)).serve::<Ticket>());
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&shards), config(2)))?;
    // Two shards, 50 tenants: "tenant-00" shares its shard with many others.
    let me = tenant(0);
    let mut mine = Vec::new();
    for i in 0..3000 {
        let t = ticket(i, &tenant(i));
        block_on(router.insert(&t))?;
        if t.tenant == me {
            mine.push((i, "insert"));
            if i % 3 == 0 {
                let mut u = block_on(router.get(&me, i))?.expect("stored");
                u.title = format!("edited {i}");
                block_on(router.update(&u))?;
                mine.push((i, "update"));
            }
        }
    }
    assert!(block_on(router.delete(&me, 50))?);
    mine.push((50, "delete"));
    let read = |limit: usize, from: Option<StreamPosition>| -> db4::Result<(Vec<(i64, String)>, StreamPosition)> {
        let mut out = Vec::new();
        let mut pos = from;
        let mut requests = 0;
        loop {
            let batch = block_on(router.stream(&me, pos, limit))?;
            requests += 1;
            assert!(requests < 10_000, "the stream does not end");
            for e in &batch.events {
                let db4::remote::protocol::WireValue::Int(id) = e.id else { panic!("an integer id: {e:?}") };
                let doc = e.after.as_deref().or(e.before.as_deref()).expect("an image");
                assert!(doc.contains(&format!("\"{me}\"")), "another tenant's event: {doc}");
                out.push((id, e.op.clone()));
            }
            pos = Some(batch.position);
            if batch.caught_up {
                return Ok((out, batch.position));
            }
        }
    };
    let want: Vec<(i64, String)> = mine.iter().map(|(i, op)| (*i, (*op).to_owned())).collect();
    for limit in [1, 7, 100, 5000] {
        assert_eq!(read(limit, None)?.0, want, "limit {limit}");
    }
    // Resuming after any event gives exactly the rest.
    let (all, end) = read(1000, None)?;
    let mut pos = None;
    let mut seen = Vec::new();
    while seen.len() < all.len() {
        let batch = block_on(router.stream(&me, pos, 3))?;
        seen.extend(batch.events.iter().map(|e| e.lsn));
        pos = Some(batch.position);
        // A reader that stops here and comes back with the position sees the rest.
        let (rest, _) = read(50, pos)?;
        assert_eq!(rest, all[seen.len()..].to_vec());
    }
    assert_eq!(read(10, Some(end))?.0, Vec::<(i64, String)>::new(), "caught up at the end");
    // Positions print and parse; garbage is a clear error.
    assert_eq!("3:17".parse::<StreamPosition>()?, StreamPosition { shard: db4::shard::ShardId::new(3), lsn: 17 });
    assert_eq!(end.to_string().parse::<StreamPosition>()?, end);
    assert!(matches!("x:1".parse::<StreamPosition>(), Err(Error::InvalidQuery { .. })));
    assert!(matches!("1".parse::<StreamPosition>(), Err(Error::InvalidQuery { .. })));
    // Sparse events: a tenant with one ticket among thousands still gets there, each request
    // examining at most MAX_STREAM_SCAN events.
    let lone = "lone-tenant".to_owned();
    block_on(router.insert(&ticket(9999, &lone)))?;
    let (lone_events, _) = {
        let mut pos = None;
        let mut out = Vec::new();
        let mut requests = 0;
        loop {
            let b = block_on(router.stream(&lone, pos, 10))?;
            requests += 1;
            out.extend(b.events);
            pos = Some(b.position);
            if b.caught_up {
                break (out, requests);
            }
        }
    };
    assert_eq!(lone_events.len(), 1);
    // Without before images a delete cannot be attributed: left out and counted, never sent
    // to a stream it might not belong to.
    let plain = local()?;
    let router = block_on(DurableRouter::<Ticket>::open(Rc::clone(&plain), config(2)))?;
    for i in 0..4 {
        block_on(router.insert(&ticket(i, &tenant(i))))?;
    }
    assert!(block_on(router.delete(&tenant(1), 1))?);
    let b = block_on(router.stream(&tenant(1), None, 100))?;
    assert_eq!(b.events.iter().map(|e| e.op.as_str()).collect::<Vec<_>>(), ["insert"]);
    assert_eq!(b.unattributed, 1);
    Ok(())
}
