//! The sharded routes (`/s/...`): tickets over 8 shard objects, routed by `DurableRouter`.
//! Natively the shard objects are `LocalShards` in process; on workerd each is a Durable
//! Object, the router runs in the Worker and its map lives in the coordinator object.

use crate::scenarios::{expect, expect_error};
use crate::target::Target;
use serde_json::{Value, json};

fn post(t: &dyn Target, path: &str, body: &Value) -> crate::target::Reply {
    t.call("POST", path, Some(body.to_string().as_bytes()))
}

fn ticket(tenant: &str, i: usize) -> Value {
    json!({
        "id": format!("k{i:05}"),
        "tenant": tenant,
        "status": if i.is_multiple_of(3) { "open" } else { "closed" },
        "score": (i * 7919) % 101,
        "title": format!("ticket {}", (i * 31) % 997),
    })
}

/// Reads, writes and errors through the router.
pub fn sharded_crud(t: &dyn Target) {
    // Ids are the shards' primary keys: unique in the collection, not per tenant (another
    // scenario's tenant may share a shard), so this one uses ids no other scenario does.
    const ID: usize = 99_001;
    let tenant = t.tenant("sharded_crud");
    let created = expect(post(t, "/s/tickets", &ticket(&tenant, ID)), 201);
    assert_eq!(created["id"], "k99001");
    expect_error(post(t, "/s/tickets", &ticket(&tenant, ID)), 409, "already_exists");
    let got = expect(t.call("GET", &format!("/s/tickets/{tenant}/k99001"), None), 200);
    assert_eq!(got["title"], ticket(&tenant, ID)["title"]);
    assert_eq!(got["version"], 0);
    // Optimistic locking through the router: the current copy updates, the stale one is refused.
    let mut doc = got.clone();
    doc["title"] = json!("renamed");
    let updated = expect(t.call("PUT", &format!("/s/tickets/{tenant}/k99001"), Some(doc.to_string().as_bytes())), 200);
    assert_eq!(updated["version"], 1);
    expect_error(
        t.call("PUT", &format!("/s/tickets/{tenant}/k99001"), Some(doc.to_string().as_bytes())),
        409,
        "conflict",
    );
    let inc = expect(post(t, &format!("/s/tickets/{tenant}/k99001/increment"), &json!({ "by": 10 })), 200);
    assert_eq!(inc["score"], ticket(&tenant, ID)["score"].as_i64().unwrap() + 10);
    expect_error(t.call("GET", &format!("/s/tickets/{tenant}/nope"), None), 404, "not_found");
    expect_error(t.call("GET", &format!("/s/tickets/{tenant}-other/k99001"), None), 404, "not_found");
    let deleted = expect(t.call("DELETE", &format!("/s/tickets/{tenant}/k99001"), None), 200);
    assert_eq!(deleted["deleted"], true);
    let again = expect(t.call("DELETE", &format!("/s/tickets/{tenant}/k99001"), None), 200);
    assert_eq!(again["deleted"], false);
    // Bad input: clear errors, nothing stored.
    expect_error(t.call("POST", "/s/tickets", Some(b"{not json")), 400, "bad_json");
    expect_error(post(t, "/s/query", &json!({ "order": "nope" })), 400, "invalid_query");
    expect_error(t.call("PATCH", "/s/stats", None), 405, "method_not_allowed");
    expect_error(t.call("GET", "/s/elsewhere", None), 404, "no_route");
    let stats = expect(t.call("GET", "/s/stats", None), 200);
    assert_eq!(stats["shards"].as_array().map(Vec::len), Some(8), "{stats}");
}

/// One tenant set's tickets as one database would sort them: `key` ascending (or descending),
/// ties by id in the same direction.
fn sorted(docs: &[Value], key: &str, descending: bool) -> Vec<String> {
    let mut v: Vec<&Value> = docs.iter().collect();
    v.sort_by(|a, b| {
        let c = match key {
            "score" => a["score"].as_i64().cmp(&b["score"].as_i64()),
            "title" => a["title"].as_str().cmp(&b["title"].as_str()),
            _ => std::cmp::Ordering::Equal,
        };
        let c = c.then_with(|| a["id"].as_str().cmp(&b["id"].as_str()));
        if descending { c.reverse() } else { c }
    });
    v.iter().map(|d| d["id"].as_str().unwrap_or_default().to_owned()).collect()
}

fn ids(v: &Value) -> Vec<String> {
    v["items"].as_array().expect("items").iter().map(|d| d["id"].as_str().unwrap_or_default().to_owned()).collect()
}

/// 10 000 tickets of 50 tenants over 8 shards: scatter-gather queries equal what one database
/// holding every ticket answers.
pub fn sharded_queries(t: &dyn Target) {
    let base = t.tenant("sharded_queries");
    let tenants: Vec<String> = (0..50).map(|i| format!("{base}-{i:02}")).collect();
    let mut all = Vec::new();
    for chunk in 0..10 {
        let batch: Vec<Value> = (chunk * 1000..(chunk + 1) * 1000).map(|i| ticket(&tenants[i % 50], i)).collect();
        let r = expect(post(t, "/s/tickets/bulk", &Value::Array(batch.clone())), 201);
        assert_eq!(r["inserted"], 1000);
        all.extend(batch);
    }
    let scope = json!(tenants);
    // Every query is scoped to this scenario's tenants (other runs share the shard objects).
    let run = |extra: Value| -> Value {
        let mut body = json!({ "tenants": scope });
        for (k, v) in extra.as_object().expect("an object") {
            body[k] = v.clone();
        }
        expect(post(t, "/s/query", &body), 200)
    };
    let open: Vec<Value> = all.iter().filter(|d| d["status"] == "open").cloned().collect();
    let high: Vec<Value> = all.iter().filter(|d| d["score"].as_i64() >= Some(90)).cloned().collect();
    let cases: Vec<(Value, Vec<String>)> = vec![
        (json!({ "order": "-score", "limit": 100 }), sorted(&all, "score", true)[..100].to_vec()),
        (json!({ "order": "score", "limit": 50, "offset": 125 }), sorted(&all, "score", false)[125..175].to_vec()),
        (json!({ "order": "title", "limit": 30 }), sorted(&all, "title", false)[..30].to_vec()),
        (
            json!({ "status": "open", "order": "-title", "limit": 40, "offset": 3 }),
            sorted(&open, "title", true)[3..43].to_vec(),
        ),
        (json!({ "min_score": 90 }), sorted(&high, "id", false)),
        (json!({ "limit": 25 }), sorted(&all, "id", false)[..25].to_vec()),
    ];
    for (q, want) in cases {
        assert_eq!(ids(&run(q.clone())), want, "{q}");
    }
    assert_eq!(run(json!({ "count": true }))["count"], 10_000);
    assert_eq!(run(json!({ "count": true, "status": "open" }))["count"], open.len());
    // One tenant: its shard only.
    let one: Vec<Value> = all.iter().filter(|d| d["tenant"] == tenants[7].as_str()).cloned().collect();
    let r = expect(post(t, "/s/query", &json!({ "tenants": [tenants[7]], "order": "-score" })), 200);
    assert_eq!(ids(&r), sorted(&one, "score", true));
    // Every shard holds some of them.
    let stats = expect(t.call("GET", "/s/stats", None), 200);
    let shards = stats["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 8);
    let total: u64 = shards.iter().map(|s| s["documents"].as_u64().unwrap_or(0)).sum();
    assert!(total >= 10_000, "{stats}");
    assert!(shards.iter().all(|s| s["documents"].as_u64() > Some(0)), "{stats}");
    // A bulk batch with a duplicate: its shard stores none of its batch, the error is clear.
    let dup = vec![ticket(&tenants[3], 3), ticket(&tenants[3], 20_003)];
    expect_error(post(t, "/s/tickets/bulk", &Value::Array(dup)), 409, "already_exists");
    expect_error(t.call("GET", &format!("/s/tickets/{}/k20003", tenants[3]), None), 404, "not_found");
}

const WORDS: &[&str] = &[
    "edge", "billing", "crash", "sync", "error", "cache", "login", "invoice", "latency", "export", "mobile", "search",
];

/// `n` words of [`WORDS`], picked by `seed`.
fn words(seed: usize, n: usize) -> String {
    (0..n).map(|k| WORDS[(seed * 7 + k * 13 + seed / 5) % WORDS.len()]).collect::<Vec<_>>().join(" ")
}

/// Full-text search through the router ranks as one database holding every article: the same
/// hits in the same order with the same scores, totals, highlights and snippets; a tenant
/// filter searches their shards only, with every shard's statistics.
pub fn sharded_search(t: &dyn Target) {
    use worker_app::sharded::KbArticle;
    let base = t.tenant("sharded_search");
    let tenants: Vec<String> = (0..20).map(|i| format!("{base}-{i:02}")).collect();
    let docs: Vec<Value> = (0..1500)
        .map(|i| {
            json!({
                "id": format!("{base}-{i:05}"),
                "tenant": tenants[i % tenants.len()],
                "title": words(i, 2 + i % 3),
                "body": words(i * 31 + 3, 5 + i % 7),
                "updated": (i * 7919) % 10_007,
            })
        })
        .collect();
    for chunk in docs.chunks(500) {
        expect(post(t, "/s/kb/bulk", &Value::Array(chunk.to_vec())), 201);
    }
    // The model: one database holding every article of the collection (other runs may share
    // the shard objects), inserted in id order (its ties go by rowid, the router's by id).
    let stored = expect(post(t, "/s/kb/query", &json!({})), 200);
    let mut all: Vec<KbArticle> = serde_json::from_value(stored["items"].clone()).expect("articles");
    assert!(all.len() >= docs.len(), "{} articles stored", all.len());
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let db = db4::Db::open_in_memory().expect("a database");
    let one = db.collection::<KbArticle>().expect("the collection");
    one.insert_many(&all).expect("the model");
    let f = KbArticle::fields();
    let cases: Vec<(Value, Option<Vec<String>>)> = vec![
        (json!({ "q": "edge", "limit": 10 }), None),
        (json!({ "q": "billing crash", "limit": 10, "offset": 7 }), None),
        (json!({ "q": "\"sync error\"", "limit": 25 }), None),
        (json!({ "q": "cache OR login", "limit": 100, "total": true }), None),
        (json!({ "q": "title:edge", "limit": 5 }), None),
        (json!({ "q": "edge NOT cache", "limit": 10, "total": true }), None),
        (
            json!({ "q": "invoice", "limit": 8, "highlight": ["[", "]"], "snippet": 4, "total": true }),
            Some(vec![tenants[3].clone(), tenants[11].clone()]),
        ),
    ];
    for (mut body, scope) in cases {
        let mut s = one.search(body["q"].as_str().expect("q"));
        if let Some(tenants) = &scope {
            body["tenants"] = json!(tenants);
            s = s.filter(f.tenant.in_list(tenants.clone()));
        }
        if let Some(n) = body["limit"].as_u64() {
            s = s.limit(n as usize);
        }
        if let Some(n) = body["offset"].as_u64() {
            s = s.offset(n as usize);
        }
        if body["highlight"].is_array() {
            s = s.highlight("[", "]").snippet(4);
        }
        if body["total"] == true {
            s = s.with_total();
        }
        let want = s.run().expect("the model's search");
        let got = expect(post(t, "/s/kb/search", &body), 200);
        let hits = got["hits"].as_array().expect("hits");
        assert!(!want.hits.is_empty(), "{body}: the case finds something");
        assert_eq!(hits.len(), want.hits.len(), "{body}: {got}");
        assert_eq!(got["total"].as_u64(), want.total, "{body}");
        for (h, w) in hits.iter().zip(&want.hits) {
            assert_eq!(h["doc"]["id"], w.doc.id.as_str(), "{body}: {got}");
            let score = h["score"].as_f64().expect("score");
            assert!((score - w.score).abs() <= 1e-9 * w.score.abs().max(1e-300), "{body}: {score} vs {}", w.score);
            let highlights: Vec<(String, String)> =
                serde_json::from_value(h["highlights"].clone()).expect("highlights");
            let expected: Vec<(String, String)> =
                w.highlights.iter().map(|(f, t)| ((*f).to_owned(), t.clone())).collect();
            assert_eq!(highlights, expected, "{body}");
            assert_eq!(h["snippet"].as_str(), w.snippet.as_deref(), "{body}");
        }
    }
    expect_error(post(t, "/s/kb/search", &json!({ "q": "\"unclosed" })), 400, "invalid_query");
    expect_error(post(t, "/s/kb/search", &json!({ "q": "edge", "snippet": 0 })), 400, "invalid_query");
    // The same articles in keyset ranges (here, not in a scenario of their own: the model
    // must hold every article of the collection, and other scenarios would insert more).
    kb_ranges(t, &one, &tenants);
}

/// A range's shape, applied to the model's collection and sent to `POST /s/kb/range`.
#[derive(Clone)]
struct KbRange {
    composite: bool,
    prefix: Option<String>,
    gte: Option<i64>,
    lt: Option<i64>,
    desc: bool,
    tenants: Option<Vec<String>>,
}

/// One page of `shape` from the model, and the same page's request body.
fn model_page(
    one: &db4::Collection<worker_app::sharded::KbArticle>,
    shape: &KbRange,
    limit: usize,
    after: Option<&db4::Cursor>,
    before: Option<&db4::Cursor>,
) -> db4::Page<worker_app::sharded::KbArticle> {
    use worker_app::sharded::KbArticle;
    let mut r = if shape.composite { one.range_index("by_tenant_updated") } else { one.range_index("updated") };
    if let Some(p) = &shape.prefix {
        r = r.prefix(p.as_str());
    }
    if let Some(v) = shape.gte {
        r = r.gte(v);
    }
    if let Some(v) = shape.lt {
        r = r.lt(v);
    }
    if shape.desc {
        r = r.descending();
    }
    if let Some(t) = &shape.tenants {
        r = r.filter(KbArticle::fields().tenant.in_list(t.clone()));
    }
    r = r.limit(limit);
    if let Some(c) = after {
        r = r.after(c);
    }
    if let Some(c) = before {
        r = r.before(c);
    }
    r.fetch().expect("the model's range")
}

fn range_body(shape: &KbRange, limit: usize) -> Value {
    let mut body = json!({ "limit": limit, "desc": shape.desc });
    if shape.composite {
        body["index"] = json!("by_tenant_updated");
    }
    if let Some(p) = &shape.prefix {
        body["prefix"] = json!(p);
    }
    if let Some(v) = shape.gte {
        body["gte"] = json!(v);
    }
    if let Some(v) = shape.lt {
        body["lt"] = json!(v);
    }
    if let Some(t) = &shape.tenants {
        body["tenants"] = json!(t);
    }
    body
}

/// Pages through `shape` forwards to its end then back to its start, in pages of `sizes`
/// (in turn), on the model and through the router, comparing every page: ids in order,
/// `has_more`, and which cursors it has. Returns a cursor of the router's for misuse tests.
fn walk_both(
    t: &dyn Target,
    one: &db4::Collection<worker_app::sharded::KbArticle>,
    shape: &KbRange,
    sizes: &[usize],
) -> Option<String> {
    let mut step = 0;
    let (mut m_cursor, mut r_cursor): (Option<db4::Cursor>, Option<String>) = (None, None);
    let mut kept = None;
    for backward in [false, true] {
        loop {
            let limit = sizes[step % sizes.len()];
            step += 1;
            assert!(step < 500, "paging does not end");
            let (mc, rc) = (m_cursor.take(), r_cursor.take());
            let want = if backward {
                model_page(one, shape, limit, None, mc.as_ref())
            } else {
                model_page(one, shape, limit, mc.as_ref(), None)
            };
            let mut body = range_body(shape, limit);
            if let Some(c) = &rc {
                body[if backward { "before" } else { "after" }] = json!(c);
            }
            let got = expect(post(t, "/s/kb/range", &body), 200);
            let want_ids: Vec<&str> = want.items.iter().map(|a| a.id.as_str()).collect();
            assert_eq!(ids(&got), want_ids, "{body}");
            assert_eq!(got["has_more"], want.has_more, "{body}");
            assert_eq!(got["next"].is_string(), want.next.is_some(), "{body}: next");
            assert_eq!(got["prev"].is_string(), want.prev.is_some(), "{body}: prev");
            let (m_next, r_next) =
                if backward { (want.prev.clone(), &got["prev"]) } else { (want.next.clone(), &got["next"]) };
            let (m_next, r_next) = match (m_next, r_next.as_str()) {
                (Some(m), Some(r)) => (m, r.to_owned()),
                _ => {
                    // At the end: turn round from this page's other cursor.
                    m_cursor = if backward { None } else { want.prev };
                    r_cursor = if backward { None } else { got["prev"].as_str().map(str::to_owned) };
                    break;
                }
            };
            kept.get_or_insert_with(|| r_next.clone());
            m_cursor = Some(m_next);
            r_cursor = Some(r_next);
        }
        if m_cursor.is_none() {
            break;
        }
    }
    kept
}

fn kb_ranges(t: &dyn Target, one: &db4::Collection<worker_app::sharded::KbArticle>, tenants: &[String]) {
    let every = KbRange { composite: false, prefix: None, gte: None, lt: None, desc: false, tenants: None };
    let cursor = walk_both(t, one, &every, &[97, 250]).expect("more than one page");
    let some = vec![tenants[2].clone(), tenants[7].clone(), tenants[13].clone()];
    let shapes = [
        KbRange { desc: true, gte: Some(1000), lt: Some(9000), tenants: Some(some), ..every.clone() },
        KbRange { composite: true, prefix: Some(tenants[5].clone()), ..every.clone() },
        KbRange { composite: true, prefix: Some(tenants[9].clone()), desc: true, gte: Some(3000), ..every.clone() },
        KbRange { composite: true, ..every.clone() },
    ];
    for shape in &shapes {
        walk_both(t, one, shape, &[13, 1, 40]);
    }
    // A cursor used with another direction, bound or index, edited, or made up: 400.
    let middle = cursor.len() / 2;
    let swap = if &cursor[middle..=middle] == "A" { "B" } else { "A" };
    let edited = format!("{}{swap}{}", &cursor[..middle], &cursor[middle + 1..]);
    for body in [
        json!({ "after": cursor, "desc": true }),
        json!({ "after": cursor, "gte": 5 }),
        json!({ "after": cursor, "index": "by_tenant_updated" }),
        json!({ "after": edited }),
        json!({ "before": "not a cursor" }),
    ] {
        expect_error(post(t, "/s/kb/range", &body), 400, "invalid_cursor");
    }
    expect_error(post(t, "/s/kb/range", &json!({ "limit": 0 })), 400, "invalid_query");
    expect_error(post(t, "/s/kb/range", &json!({ "limit": 1001 })), 400, "invalid_query");
    expect_error(post(t, "/s/kb/range", &json!({ "index": "nope" })), 400, "invalid_query");
}

/// `other` names (from `t.tenant(base-k)`) until one routes to the same shard as `tenant`.
pub fn neighbour(t: &dyn Target, tenant: &str, base: &str) -> String {
    let shard_of = |name: &str| expect(t.call("GET", &format!("/s/shard-of/{name}"), None), 200)["shard"].clone();
    let home = shard_of(tenant);
    (0..200)
        .map(|k| t.tenant(&format!("{base}_{k}")))
        .find(|name| shard_of(name) == home)
        .expect("among 200 names one shares a shard of 8")
}

/// The `(id, op)` of a stream page's events, checking each is `tenant`'s.
fn stream_ops(page: &Value, tenant: &str) -> Vec<(String, String)> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let doc = if e["after"].is_null() { &e["before"] } else { &e["after"] };
            assert_eq!(doc["tenant"], tenant, "another tenant's event in the stream: {e}");
            (e["id"]["text"].as_str().expect("a text id").to_owned(), e["op"].as_str().expect("op").to_owned())
        })
        .collect()
}

/// A tenant's change stream through the router, page by page: its inserts, updates and
/// deletes once each in commit order, none of a tenant on the same shard, the same rest
/// from any position a reader stopped at; a malformed position is refused.
pub fn change_stream(t: &dyn Target) {
    let a = t.tenant("stream_a");
    let b = neighbour(t, &a, "stream_b");
    let mut want = Vec::new();
    for i in 0..30 {
        for tenant in [&a, &b] {
            let mut doc = ticket(tenant, i);
            doc["id"] = json!(format!("{tenant}-{i}"));
            expect(post(t, "/s/tickets", &doc), 201);
        }
        want.push((format!("{a}-{i}"), "insert".to_owned()));
    }
    for i in [3, 9, 27] {
        let id = format!("{a}-{i}");
        let mut doc = expect(t.call("GET", &format!("/s/tickets/{a}/{id}"), None), 200);
        doc["title"] = json!("edited");
        expect(t.call("PUT", &format!("/s/tickets/{a}/{id}"), Some(doc.to_string().as_bytes())), 200);
        want.push((id.clone(), "update".to_owned()));
        expect(t.call("DELETE", &format!("/s/tickets/{b}/{b}-{i}"), None), 200);
    }
    for i in [4, 5] {
        expect(t.call("DELETE", &format!("/s/tickets/{a}/{a}-{i}"), None), 200);
        want.push((format!("{a}-{i}"), "delete".to_owned()));
    }
    let read = |from: Option<&str>, limit: usize| -> (Vec<(String, String)>, Vec<String>) {
        let (mut ops, mut positions) = (Vec::new(), Vec::new());
        let mut after = from.map(str::to_owned);
        for _ in 0..1000 {
            let q = after.as_ref().map_or(String::new(), |p| format!("&after={p}"));
            let page = expect(t.call("GET", &format!("/s/changes/{a}?limit={limit}{q}"), None), 200);
            ops.extend(stream_ops(&page, &a));
            positions
                .extend(page["events"].as_array().unwrap().iter().map(|e| e["position"].as_str().unwrap().to_owned()));
            assert_eq!(page["unattributed"], 0, "before images: every delete is attributed");
            after = Some(page["position"].as_str().expect("position").to_owned());
            if page["caught_up"] == true {
                return (ops, positions);
            }
        }
        panic!("the stream did not catch up");
    };
    let (all, positions) = read(None, 7);
    assert_eq!(all, want);
    for k in [0, 1, 15, want.len() - 1] {
        let (rest, _) = read(Some(&positions[k]), 5);
        assert_eq!(rest, want[k + 1..].to_vec(), "resumed after event {k}");
    }
    // The other tenant's stream holds only its own.
    let (theirs, _) = read_other(t, &b);
    assert_eq!(theirs.iter().filter(|(_, op)| op == "insert").count(), 30);
    assert_eq!(theirs.iter().filter(|(_, op)| op == "delete").count(), 3);
    expect_error(t.call("GET", &format!("/s/changes/{a}?after=nope"), None), 400, "invalid_query");
    expect_error(t.call("GET", &format!("/s/changes/{a}?limit=0"), None), 400, "invalid_query");
}

fn read_other(t: &dyn Target, tenant: &str) -> (Vec<(String, String)>, String) {
    let mut ops = Vec::new();
    let mut after = String::new();
    loop {
        let page = expect(t.call("GET", &format!("/s/changes/{tenant}?limit=1000{after}"), None), 200);
        ops.extend(stream_ops(&page, tenant));
        let position = page["position"].as_str().expect("position").to_owned();
        if page["caught_up"] == true {
            return (ops, position);
        }
        after = format!("&after={position}");
    }
}
