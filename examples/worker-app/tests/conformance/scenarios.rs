//! The scenarios, written once: each runs against any [`Target`].

use crate::target::{Reply, Target};
use serde_json::{Value, json};

pub use crate::sharded::{change_stream, sharded_crud, sharded_queries, sharded_search};

/// A tenant's view of a target: paths are relative to `/t/{tenant}`.
pub struct Tenant<'t> {
    t: &'t dyn Target,
    pub name: String,
}

impl<'t> Tenant<'t> {
    pub fn new(t: &'t dyn Target, scenario: &str) -> Self {
        Self { t, name: t.tenant(scenario) }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        self.t.call(method, &format!("/t/{}{path}", self.name), body)
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None)
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(body.to_string().as_bytes()))
    }

    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.call("PUT", path, Some(body.to_string().as_bytes()))
    }
}

/// Asserts the status and returns the body.
#[track_caller]
pub fn expect(reply: Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "unexpected status; body: {}", reply.body);
    reply.body
}

/// Asserts an error status with its error code and returns the body.
#[track_caller]
pub fn expect_error(reply: Reply, status: u16, code: &str) -> Value {
    let body = expect(reply, status);
    assert_eq!(body["error"], code, "unexpected error code: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "no message: {body}");
    body
}

pub fn article(id: &str, title: &str) -> Value {
    json!({ "id": id, "title": title, "body": "Durable Objects give each tenant its own SQLite database.",
            "tags": ["edge", "sqlite"], "status": "Draft", "created_at": 1_700_000_000, "views": 0 })
}

fn account(id: &str, balance: i64) -> Value {
    json!({ "id": id, "owner": format!("owner of {id}"), "balance": balance })
}

fn balance(c: &Tenant<'_>, id: &str) -> i64 {
    expect(c.get(&format!("/accounts/{id}")), 200)["balance"].as_i64().expect("balance")
}

fn ids(items: &Value) -> Vec<String> {
    items.as_array().expect("array").iter().map(|d| d["id"].as_str().expect("id").to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------

pub fn routing(t: &dyn Target) {
    assert_eq!(expect(t.call("GET", "/health", None), 200), json!({ "ok": true }));
    expect_error(t.call("GET", "/nowhere", None), 404, "no_route");
    expect_error(t.call("GET", "/t/bad%20tenant/articles", None), 404, "no_route");
    let c = Tenant::new(t, "routing");
    expect_error(c.get("/unknown"), 404, "no_route");
    expect_error(c.get("/articles/a/b/c"), 404, "no_route");
    expect_error(c.call("PATCH", "/articles", Some(b"{}")), 405, "method_not_allowed");
    expect_error(c.put("/articles", &json!({})), 405, "method_not_allowed");
    expect_error(c.delete("/articles"), 400, "invalid_query");
    expect_error(c.get("/articles/x/cas"), 405, "method_not_allowed");
    expect_error(c.get("/articles/%zz"), 400, "invalid_query");
}

pub fn article_crud(t: &dyn Target) {
    let c = Tenant::new(t, "article_crud");
    let created = expect(c.post("/articles", &article("a-1", "Edge databases")), 201);
    assert_eq!(created["version"], 0);
    assert_eq!(created["tenant_id"], c.name.as_str(), "the tenant comes from the path");

    let got = expect(c.get("/articles/a-1"), 200);
    assert_eq!(got, created);

    let mut edit = got.clone();
    edit["title"] = json!("Edge databases, revised");
    edit["status"] = json!("Published");
    let updated = expect(c.put("/articles/a-1", &edit), 200);
    assert_eq!(updated["version"], 1);
    let got = expect(c.get("/articles/a-1"), 200);
    assert_eq!(got, updated);
    assert_eq!(got["status"], "Published");

    // The id may be left out of an update's body: the path names it.
    let mut no_id = got.clone();
    no_id.as_object_mut().expect("object").remove("id");
    no_id["views"] = json!(7);
    assert_eq!(expect(c.put("/articles/a-1", &no_id), 200)["version"], 2);

    assert_eq!(expect(c.delete("/articles/a-1"), 200), json!({ "deleted": "a-1" }));
    let gone = expect_error(c.get("/articles/a-1"), 404, "not_found");
    assert_eq!((gone["collection"].as_str(), gone["id"].as_str()), (Some("articles"), Some("a-1")));
    expect_error(c.delete("/articles/a-1"), 404, "not_found");

    // Ids are percent-decoded from the path.
    let odd = "a b/ü";
    expect(c.post("/articles", &article(odd, "Odd id")), 201);
    assert_eq!(expect(c.get("/articles/a%20b%2F%C3%BC"), 200)["id"], odd);
}

pub fn error_statuses(t: &dyn Target) {
    let c = Tenant::new(t, "error_statuses");
    expect(c.post("/articles", &article("e-1", "First")), 201);

    let dup = expect_error(c.post("/articles", &article("e-1", "Again")), 409, "already_exists");
    assert_eq!(dup["id"], "e-1");
    assert_eq!(expect(c.get("/articles/e-1"), 200)["title"], "First", "a refused insert changes nothing");

    expect_error(c.call("POST", "/articles", Some(b"{\"id\": ")), 400, "bad_json");
    expect_error(c.call("POST", "/articles", Some(b"")), 400, "bad_json");
    expect_error(c.call("POST", "/articles", Some(b"\xff\xfe")), 400, "bad_json");
    expect_error(c.post("/articles", &json!({ "id": "e-2", "title": 5 })), 400, "bad_json");
    expect_error(c.post("/articles", &json!({ "id": "e-2", "title": "t", "status": "Bogus" })), 400, "bad_json");
    expect_error(c.post("/articles", &json!([1, 2])), 400, "bad_json");
    expect_error(c.post("/articles", &article("", "No id")), 400, "invalid_value");
    let mut other = article("e-3", "Other tenant");
    other["tenant_id"] = json!("someone-else");
    assert_eq!(expect_error(c.post("/articles", &other), 400, "invalid_value")["field"], "tenant_id");

    expect_error(c.put("/articles/missing", &article("missing", "Nope")), 404, "not_found");
    expect_error(c.put("/articles/e-1", &article("e-9", "Mismatch")), 400, "invalid_value");

    // Above db4's 2 MiB document limit: 413, nothing stored.
    let big = article("e-big", &"x".repeat(2 * 1024 * 1024 + 1));
    let too_large = expect_error(c.post("/articles", &big), 413, "too_large");
    assert_eq!(too_large["limit"], 2 * 1024 * 1024);
    expect_error(c.get("/articles/e-big"), 404, "not_found");
    let huge_body = vec![b' '; worker_app::api::MAX_BODY_BYTES + 1];
    expect_error(c.call("POST", "/articles", Some(&huge_body)), 413, "too_large");

    for query in ["bogus=1", "limit=0", "limit=1001", "limit=x", "status=Bogus", "views_gte=1.5", "order=id"] {
        expect_error(c.get(&format!("/articles?{query}")), 400, "invalid_query");
    }
    expect_error(c.post("/articles/e-1/increment", &json!({ "field": "created_at", "by": 1 })), 400, "invalid_query");
    expect_error(c.post("/articles/e-1/increment", &json!({ "field": "views" })), 400, "bad_json");
    expect_error(c.post("/articles/e-1/cas", &json!({ "expected": "Draft", "new": "Gone" })), 400, "bad_json");
    expect_error(c.post("/articles/missing/increment", &json!({ "field": "views", "by": 1 })), 404, "not_found");

    let mut huge = article("e-max", "Max views");
    huge["views"] = json!(i64::MAX);
    expect(c.post("/articles", &huge), 201);
    expect_error(c.post("/articles/e-max/increment", &json!({ "field": "views", "by": 1 })), 400, "invalid_value");
    assert_eq!(expect(c.get("/articles/e-max"), 200)["views"], i64::MAX);

    expect_error(c.post("/accounts", &account("neg", -1)), 400, "invalid_value");
    expect_error(c.post("/accounts/missing/deposit", &json!({ "amount": 5 })), 404, "not_found");
    expect_error(
        c.post("/transfers", &json!({ "id": "x", "from": "nobody", "to": "nowhere", "amount": 1 })),
        404,
        "not_found",
    );
    expect_error(c.get("/notifications"), 400, "invalid_query");
}

pub fn occ_conflict(t: &dyn Target) {
    let c = Tenant::new(t, "occ_conflict");
    let v0 = expect(c.post("/articles", &article("o-1", "Original")), 201);

    let mut mine = v0.clone();
    mine["title"] = json!("Mine");
    assert_eq!(expect(c.put("/articles/o-1", &mine), 200)["version"], 1);

    let mut theirs = v0.clone();
    theirs["title"] = json!("Theirs, from a stale copy");
    let conflict = expect_error(c.put("/articles/o-1", &theirs), 409, "conflict");
    assert_eq!((conflict["expected"].as_u64(), conflict["actual"].as_u64()), (Some(0), Some(1)));
    let stored = expect(c.get("/articles/o-1"), 200);
    assert_eq!((stored["title"].as_str(), stored["version"].as_u64()), (Some("Mine"), Some(1)));

    // Re-read, re-apply: goes through.
    let mut retry = stored.clone();
    retry["title"] = json!("Theirs, rebased");
    assert_eq!(expect(c.put("/articles/o-1", &retry), 200)["version"], 2);

    // update_with: read-modify-write with retries on conflict.
    let published = expect(c.post("/articles/o-1/publish", &json!({})), 200);
    assert_eq!((published["status"].as_str(), published["version"].as_u64()), (Some("Published"), Some(3)));
    expect_error(c.post("/articles/nope/publish", &json!({})), 404, "not_found");
}

pub fn cas_and_increment(t: &dyn Target) {
    let c = Tenant::new(t, "cas_and_increment");
    expect(c.post("/articles", &article("c-1", "Counted")), 201);

    let swap = json!({ "expected": "Draft", "new": "Published" });
    assert_eq!(expect(c.post("/articles/c-1/cas", &swap), 200), json!({ "swapped": true, "current": "Published" }));
    let stale = json!({ "expected": "Draft", "new": "Archived" });
    assert_eq!(expect(c.post("/articles/c-1/cas", &stale), 200), json!({ "swapped": false, "current": "Published" }));
    expect_error(c.post("/articles/nope/cas", &swap), 404, "not_found");

    let inc = |by: i64| {
        expect(c.post("/articles/c-1/increment", &json!({ "field": "views", "by": by })), 200)["value"].clone()
    };
    assert_eq!(inc(5), 5);
    assert_eq!(inc(-2), 3);
    for _ in 0..10 {
        inc(1);
    }
    let doc = expect(c.get("/articles/c-1"), 200);
    assert_eq!((doc["views"].as_i64(), doc["status"].as_str()), (Some(13), Some("Published")));
    assert_eq!(doc["version"], 13, "one swap and twelve increments, each bumping the version");

    expect(c.post("/accounts", &account("acc", 10)), 201);
    expect_error(c.post("/accounts/acc/deposit", &json!({ "amount": 0 })), 400, "invalid_value");
    assert_eq!(expect(c.post("/accounts/acc/deposit", &json!({ "amount": 25 })), 200)["balance"], 35);
    assert_eq!(balance(&c, "acc"), 35);
}

pub fn queries(t: &dyn Target) {
    let c = Tenant::new(t, "queries");
    let statuses = ["Draft", "Published", "Published", "Archived"];
    let docs: Vec<Value> = (0..12)
        .map(|i: i64| {
            let mut a =
                article(&format!("q-{i:02}"), &format!("{} article {i}", if i % 3 == 0 { "Edge" } else { "Plain" }));
            a["status"] = json!(statuses[(i % 4) as usize]);
            a["created_at"] = json!(1_700_000_000 + i * 3600);
            a["views"] = json!(i * 10);
            a
        })
        .collect();
    assert_eq!(expect(c.post("/articles/bulk", &json!(docs)), 201), json!({ "inserted": 12 }));

    // A bulk insert with one duplicate stores nothing.
    let bulk = json!([article("q-new", "New"), article("q-03", "Duplicate")]);
    expect_error(c.post("/articles/bulk", &bulk), 409, "already_exists");
    expect_error(c.get("/articles/q-new"), 404, "not_found");

    let list = |q: &str| expect(c.get(&format!("/articles?{q}")), 200);
    let all = list("");
    assert_eq!((all["total"].as_u64(), all["items"].as_array().map(Vec::len)), (Some(12), Some(12)));

    let published = list("status=Published&order=created_at");
    assert_eq!(ids(&published["items"]), ["q-01", "q-02", "q-05", "q-06", "q-09", "q-10"]);
    assert_eq!(published["total"], 6);

    let popular = list("views_gte=50&views_lte=80&order=-views");
    assert_eq!(ids(&popular["items"]), ["q-08", "q-07", "q-06", "q-05"]);

    let window = list(&format!(
        "created_from={}&created_to={}&order=created_at",
        1_700_000_000 + 2 * 3600,
        1_700_000_000 + 4 * 3600
    ));
    assert_eq!(ids(&window["items"]), ["q-02", "q-03", "q-04"]);
    assert_eq!(ids(&list("created_from=1700036000&order=created_at")["items"]), ["q-10", "q-11"]);
    assert_eq!(ids(&list("created_to=1700003600&order=created_at")["items"]), ["q-00", "q-01"]);

    let edge = list("title_prefix=Edge+article&order=-created_at");
    assert_eq!(ids(&edge["items"]), ["q-09", "q-06", "q-03", "q-00"]);

    // Pages of 5, newest first: totals stay the same, pages do not overlap.
    let mut seen = Vec::new();
    for page in 0..3 {
        let p = list(&format!("order=-created_at&limit=5&offset={}", page * 5));
        assert_eq!(p["total"], 12);
        seen.extend(ids(&p["items"]));
    }
    let expected: Vec<String> = (0..12).rev().map(|i| format!("q-{i:02}")).collect();
    assert_eq!(seen, expected);

    let combined = list("status=Published&views_gte=50&order=title");
    assert_eq!(ids(&combined["items"]), ["q-06", "q-09", "q-10", "q-05"]);
    let none = list("status=Archived&views_gte=1000");
    assert_eq!((none["total"].as_u64(), none["items"].as_array().map(Vec::len)), (Some(0), Some(0)));

    // Delete by query: the count is of documents, whatever the storage counts internally.
    assert_eq!(expect(c.delete("/articles?status=Archived"), 200), json!({ "deleted": 3 }));
    assert_eq!(expect(c.delete("/articles?status=Draft&order=created_at&limit=2"), 200), json!({ "deleted": 2 }));
    assert_eq!(ids(&list("status=Draft")["items"]), ["q-08"]);
    assert_eq!(expect(c.delete("/articles?status=Archived"), 200), json!({ "deleted": 0 }));
    assert_eq!(list("")["total"], 7);
}

pub fn transfer_with_savepoint(t: &dyn Target) {
    let c = Tenant::new(t, "transfer_with_savepoint");
    expect(c.post("/accounts", &account("alice", 100)), 201);
    expect(c.post("/accounts", &account("bob", 0)), 201);

    let t1 = json!({ "id": "t1", "from": "alice", "to": "bob", "amount": 50, "notify": "n1" });
    let done = expect(c.post("/transfers", &t1), 201);
    assert_eq!(done["transfer"]["notified"], true);
    assert_eq!(done["balances"], json!({ "alice": 50, "bob": 50 }));
    assert_eq!(expect(c.get("/accounts/bob"), 200)["notifications"], 1);

    // The notification id is taken: the part after the savepoint (the counter bump and the
    // notification) is rolled back, the transfer itself commits.
    let t2 = json!({ "id": "t2", "from": "alice", "to": "bob", "amount": 10, "notify": "n1" });
    let done = expect(c.post("/transfers", &t2), 201);
    assert_eq!(done["transfer"]["notified"], false);
    assert_eq!(done["balances"], json!({ "alice": 40, "bob": 60 }));
    let bob = expect(c.get("/accounts/bob"), 200);
    assert_eq!((bob["balance"].as_i64(), bob["notifications"].as_i64()), (Some(60), Some(1)));
    let notes = expect(c.get("/notifications?account=bob"), 200);
    assert_eq!(ids(&notes["items"]), ["n1"]);
    assert_eq!(notes["items"][0]["text"], "alice sent you 50");
    assert_eq!(expect(c.get("/transfers/t2"), 200)["amount"], 10);

    // Failures roll the whole transfer back.
    let again = json!({ "id": "t1", "from": "alice", "to": "bob", "amount": 5 });
    expect_error(c.post("/transfers", &again), 409, "already_exists");
    let broke = expect_error(
        c.post("/transfers", &json!({ "id": "t3", "from": "alice", "to": "bob", "amount": 41 })),
        422,
        "insufficient_funds",
    );
    assert_eq!((broke["balance"].as_i64(), broke["amount"].as_i64()), (Some(40), Some(41)));
    expect_error(
        c.post("/transfers", &json!({ "id": "t4", "from": "alice", "to": "carol", "amount": 1 })),
        404,
        "not_found",
    );
    expect_error(
        c.post("/transfers", &json!({ "id": "t5", "from": "alice", "to": "alice", "amount": 1 })),
        400,
        "invalid_value",
    );
    expect_error(
        c.post("/transfers", &json!({ "id": "t6", "from": "alice", "to": "bob", "amount": 0 })),
        400,
        "invalid_value",
    );
    expect_error(c.post("/transfers", &json!({ "id": "t7", "from": "alice", "to": "bob" })), 400, "bad_json");
    assert_eq!((balance(&c, "alice"), balance(&c, "bob")), (40, 60));
    for id in ["t3", "t4", "t5", "t6", "t7"] {
        expect_error(c.get(&format!("/transfers/{id}")), 404, "not_found");
    }
}

pub fn nested_rollback(t: &dyn Target) {
    let c = Tenant::new(t, "nested_rollback");
    expect(c.post("/accounts", &account("a", 100)), 201);
    expect(c.post("/accounts", &account("b", 100)), 201);

    // Each transfer is a nested transaction: a failing one is undone alone.
    let batch = json!({ "transfers": [
        { "id": "b1", "from": "a", "to": "b", "amount": 30 },
        { "id": "b2", "from": "a", "to": "b", "amount": 1000 },
        { "id": "b3", "from": "b", "to": "a", "amount": 5, "notify": "nb3" },
        { "id": "b4", "from": "a", "to": "ghost", "amount": 1 },
        { "id": "b1", "from": "b", "to": "a", "amount": 1 },
    ]});
    let results = expect(c.post("/transfers/batch", &batch), 200)["results"].clone();
    let outcome: Vec<(bool, Option<u64>)> =
        results.as_array().expect("results").iter().map(|r| (r["ok"] == true, r["status"].as_u64())).collect();
    assert_eq!(outcome, [(true, None), (false, Some(422)), (true, None), (false, Some(404)), (false, Some(409))]);
    assert_eq!((balance(&c, "a"), balance(&c, "b")), (75, 125));
    assert_eq!(expect(c.get("/accounts/a"), 200)["notifications"], 1);
    expect(c.get("/transfers/b3"), 200);
    expect_error(c.get("/transfers/b2"), 404, "not_found");

    // Atomic: one failure undoes the inner transactions that had succeeded.
    let atomic = json!({ "atomic": true, "transfers": [
        { "id": "c1", "from": "a", "to": "b", "amount": 10, "notify": "nc1" },
        { "id": "c2", "from": "b", "to": "a", "amount": 20 },
        { "id": "c3", "from": "a", "to": "b", "amount": 500 },
    ]});
    expect_error(c.post("/transfers/batch", &atomic), 422, "insufficient_funds");
    assert_eq!((balance(&c, "a"), balance(&c, "b")), (75, 125));
    for id in ["c1", "c2", "c3"] {
        expect_error(c.get(&format!("/transfers/{id}")), 404, "not_found");
    }
    assert_eq!(ids(&expect(c.get("/notifications?account=b"), 200)["items"]), Vec::<String>::new());

    let ok = json!({ "atomic": true, "transfers": [
        { "id": "d1", "from": "a", "to": "b", "amount": 75 },
        { "id": "d2", "from": "b", "to": "a", "amount": 200 },
    ]});
    expect(c.post("/transfers/batch", &ok), 200);
    assert_eq!((balance(&c, "a"), balance(&c, "b")), (200, 0));
    let too_many: Vec<Value> =
        (0..101).map(|i| json!({ "id": format!("x{i}"), "from": "a", "to": "b", "amount": 1 })).collect();
    expect_error(c.post("/transfers/batch", &json!({ "transfers": too_many })), 400, "invalid_query");
}

pub fn touch_transaction(t: &dyn Target) {
    let c = Tenant::new(t, "touch_transaction");
    let docs: Vec<Value> = (0..10).map(|i| article(&format!("h-{i}"), "Hot")).collect();
    expect(c.post("/articles/bulk", &json!(docs)), 201);
    let all: Vec<String> = (0..10).map(|i| format!("h-{i}")).collect();

    assert_eq!(expect(c.post("/articles/touch", &json!({ "ids": all })), 200), json!({ "updated": 10 }));
    assert_eq!(expect(c.post("/articles/touch", &json!({ "ids": all })), 200), json!({ "updated": 10 }));
    for id in &all {
        let doc = expect(c.get(&format!("/articles/{id}")), 200);
        assert_eq!((doc["views"].as_i64(), doc["version"].as_u64()), (Some(2), Some(2)), "{id}");
    }
    // One missing id: the whole transaction rolls back.
    let mut some = all[..5].to_vec();
    some.push("h-missing".to_owned());
    expect_error(c.post("/articles/touch", &json!({ "ids": some })), 404, "not_found");
    assert_eq!(expect(c.get("/articles/h-0"), 200)["views"], 2);
}

pub fn tenants_are_isolated(t: &dyn Target) {
    let one = Tenant::new(t, "tenant_one");
    let two = Tenant::new(t, "tenant_two");
    expect(one.post("/articles", &article("same", "One")), 201);
    expect(two.post("/articles", &article("same", "Two")), 201);
    assert_eq!(expect(one.get("/articles/same"), 200)["title"], "One");
    let doc = expect(two.get("/articles/same"), 200);
    assert_eq!((doc["title"].as_str(), doc["tenant_id"].as_str()), (Some("Two"), Some(two.name.as_str())));
    expect(one.delete("/articles/same"), 200);
    expect(two.get("/articles/same"), 200);
}

pub fn large_integers(t: &dyn Target) {
    let c = Tenant::new(t, "large_integers");
    // A plain field lives in the JSON text: exact on both backends.
    let mut a = article("big-views", "Big");
    a["views"] = json!(1_i64 << 60);
    expect(c.post("/articles", &a), 201);
    assert_eq!(expect(c.get("/articles/big-views"), 200)["views"], 1_i64 << 60);
    let max_safe = (1_i64 << 53) - 1;
    let mut a = article("safe-index", "Largest exact JS integer");
    a["created_at"] = json!(max_safe);
    expect(c.post("/articles", &a), 201);
    assert_eq!(ids(&expect(c.get(&format!("/articles?created_from={max_safe}")), 200)["items"]), ["safe-index"]);

    // Beyond 2^53 a value that crossed JavaScript as a number would be rounded; db4 binds it
    // exactly on a Durable Object too (as decimal text turned back into the integer), so both
    // backends store, read and query it exactly.
    let beyond = (1_i64 << 53) + 1;
    let mut a = article("big-index", "Beyond 2^53");
    a["created_at"] = json!(beyond);
    expect(c.post("/articles", &a), 201);
    assert_eq!(expect(c.get("/articles/big-index"), 200)["created_at"], beyond);
    assert_eq!(ids(&expect(c.get(&format!("/articles?created_from={beyond}")), 200)["items"]), ["big-index"]);
    let above = beyond + 1;
    assert!(ids(&expect(c.get(&format!("/articles?created_from={above}")), 200)["items"]).is_empty());
}

pub fn hostile_input(t: &dyn Target) {
    let c = Tenant::new(t, "hostile_input");
    expect(c.post("/articles", &article("h-1", "Target")), 201);
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<Vec<u8>> = vec![
        nested.into_bytes(),
        b"{\"id\": \"x\", \"title\": \"t\", \"views\": 1e400}".to_vec(),
        b"{\"id\": \"x\", \"title\": \"t\", \"views\": 99999999999999999999999}".to_vec(),
        b"{\"id\": \"x\", \"title\": \"t\", \"version\": -1}".to_vec(),
        b"{\"id\": \"x\", \"title\": \"t\", \"version\": 18446744073709551615}".to_vec(),
        b"{\"id\": \"\\u0000\", \"title\": \"\\ud800\"}".to_vec(),
        b"{\"ids\": [\"h-1\", \"h-1\", \"h-1\"]}".to_vec(),
        b"{\"field\": \"views\", \"by\": -9223372036854775808}".to_vec(),
        b"{\"expected\": \"Draft\", \"new\": \"Published\", \"extra\": 1}".to_vec(),
        b"null".to_vec(),
        vec![0xc3, 0x28],
    ];
    let paths = [
        "/articles",
        "/articles/h-1",
        "/articles/bulk",
        "/articles/touch",
        "/articles/h-1/increment",
        "/articles/h-1/cas",
        "/accounts",
        "/transfers",
        "/transfers/batch",
    ];
    let mut seen = Vec::new();
    for path in paths {
        for body in &bodies {
            for method in ["POST", "PUT"] {
                let reply = c.call(method, path, Some(body));
                assert!(reply.status < 500, "{method} {path} {:?}: {}", String::from_utf8_lossy(body), reply.body);
                seen.push(reply.status);
            }
        }
    }
    let queries = [
        "limit=99999999999999999999999",
        "offset=18446744073709551615",
        "offset=-1",
        "views_gte=-9223372036854775808&views_lte=9223372036854775807",
        "created_from=9223372036854775807&created_to=-9223372036854775808",
        "title_prefix=%25%5F%00",
        "title_prefix=%F0%9F%A6%80",
        "order=-",
        "status=&status=Draft",
        "=&&&=x",
        "%",
    ];
    for q in queries {
        let reply = c.get(&format!("/articles?{q}"));
        assert!(reply.status < 500, "GET /articles?{q}: {}", reply.body);
    }
    for path in ["/articles/%00", "/articles/%C3%28", "/articles/..%2F..%2Fetc", "/articles/%2e%2e"] {
        let reply = c.get(path);
        assert!(reply.status < 500, "GET {path}: {}", reply.body);
    }
    assert!(seen.contains(&400), "hostile bodies are refused");
    // The store still answers, and the target document is intact.
    let doc = expect(c.get("/articles/h-1"), 200);
    assert_eq!(doc["title"], "Target");
}

// ---------------------------------------------------------------------------------------------
// Player queries: filter programs in postfix (see `worker_app::api`)

/// The program of one condition.
fn cond(field: &str, op: &str, args: &[Value]) -> Value {
    let mut step = vec![json!(field), json!(op)];
    step.extend_from_slice(args);
    json!([step])
}

/// `program` negated.
fn not(program: &Value) -> Value {
    let mut steps = program.as_array().expect("a program").clone();
    steps.push(json!(["!"]));
    json!(steps)
}

/// The programs joined by `&` or `|`.
fn join(op: &str, programs: &[Value]) -> Value {
    let mut steps: Vec<Value> = programs.iter().flat_map(|p| p.as_array().expect("a program").clone()).collect();
    steps.push(json!([op, programs.len()]));
    json!(steps)
}

/// How many players all of `filters` select.
fn count(c: &Tenant<'_>, filters: &[Value]) -> u64 {
    let body = expect(c.post("/players/count", &json!({ "filters": filters })), 200);
    body["count"].as_u64().unwrap_or_else(|| panic!("no count: {body}"))
}

/// The ids of the players all of `filters` select.
fn find(c: &Tenant<'_>, filters: &[Value]) -> Vec<String> {
    let body = expect(c.post("/players/find", &json!({ "filters": filters })), 200);
    body["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id").to_owned()).collect()
}

pub fn none_semantics(t: &dyn Target) {
    let c = Tenant::new(t, "none_semantics");
    // p1 has no name or team (keys left out of the JSON) and a null score and rank.
    let players = json!([
        { "id": "p1" },
        { "id": "p2", "name": "bob", "score": 3, "team": "red", "rank": 1 },
        { "id": "p3", "name": "ann", "score": 9, "team": "blue", "rank": 5 },
    ]);
    expect(c.post("/players/bulk", &players), 201);
    // The indexed fields (name, score) and the ones read from the JSON (team, rank) alike.
    for (text, number, bob) in [("name", "score", "bob"), ("team", "rank", "red")] {
        let eq = cond(text, "eq", &[json!(bob)]);
        assert_eq!(count(&c, std::slice::from_ref(&eq)), 1, "{text} eq");
        assert_eq!(count(&c, &[cond(text, "ne", &[json!(bob)])]), 2, "{text} ne matches None");
        assert_eq!(count(&c, &[not(&eq)]), 2, "{text}: !eq is ne");
        assert_eq!(find(&c, &[not(&eq)]), ["p1", "p3"]);
        let listed = cond(text, "in", &[json!([bob])]);
        assert_eq!((count(&c, std::slice::from_ref(&listed)), count(&c, &[not(&listed)])), (1, 2), "{text} in");
        let with_none = cond(text, "in", &[json!([bob, null])]);
        assert_eq!(find(&c, std::slice::from_ref(&with_none)), ["p1", "p2"], "{text} in with None");
        assert_eq!(find(&c, &[not(&with_none)]), ["p3"]);
        assert_eq!(find(&c, &[cond(text, "eq", &[json!(null)])]), ["p1"]);
        assert_eq!(find(&c, &[cond(text, "starts_with", &[json!("")])]), ["p2", "p3"]);
        assert_eq!(find(&c, &[not(&cond(text, "starts_with", &[json!("")]))]), ["p1"]);

        // None is below every value.
        let (lt, gte) = (cond(number, "lt", &[json!(4)]), cond(number, "gte", &[json!(4)]));
        assert_eq!(find(&c, std::slice::from_ref(&lt)), ["p1", "p2"], "{number} lt matches None");
        assert_eq!(find(&c, std::slice::from_ref(&gte)), ["p3"], "{number} gte does not");
        assert_eq!(count(&c, &[join("|", &[lt.clone(), gte.clone()])]), 3, "lt | gte is everything");
        assert_eq!(find(&c, &[not(&lt)]), ["p3"]);
        assert_eq!(find(&c, &[not(&gte)]), ["p1", "p2"]);
        let between = cond(number, "between", &[json!(0), json!(100)]);
        assert_eq!(
            (find(&c, std::slice::from_ref(&between)), find(&c, &[not(&between)])),
            (vec!["p2".into(), "p3".into()], vec!["p1".into()])
        );
        assert_eq!(find(&c, &[cond(number, "is_none", &[])]), ["p1"]);

        // count(p) + count(!p) == count() for every p.
        let programs = [
            eq,
            listed,
            with_none,
            lt,
            gte,
            between,
            cond(number, "gt", &[json!(3)]),
            cond(number, "lte", &[json!(3)]),
            cond(number, "ne", &[json!(null)]),
            cond(text, "starts_with", &[json!("b")]),
            join("&", &[cond(number, "lt", &[json!(7)]), cond(text, "ne", &[json!(bob)])]),
            not(&join("|", &[cond(number, "gt", &[json!(5)]), cond(text, "eq", &[json!(bob)])])),
            join("&", &[]),
            join("|", &[]),
        ];
        for p in programs {
            assert_eq!(count(&c, std::slice::from_ref(&p)) + count(&c, &[not(&p)]), 3, "count(p) + count(!p) for {p}");
        }
    }
    // Order comparisons with a None operand are refused, not guessed.
    let refused = expect_error(
        c.post("/players/count", &json!({ "filters": [cond("score", "gt", &[json!(null)])] })),
        400,
        "invalid_query",
    );
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("None")), "{refused}");
    // Prefixes are compared byte by byte, NUL characters included.
    let nul = Tenant::new(t, "none_semantics_nul");
    let names = ["a\0b", "a\0c", "a", "ab", "\0"];
    let docs: Vec<Value> =
        names.iter().enumerate().map(|(i, n)| json!({ "id": format!("n{i}"), "name": n, "team": n })).collect();
    expect(nul.post("/players/bulk", &json!(docs)), 201);
    for field in ["name", "team"] {
        assert_eq!(find(&nul, &[cond(field, "starts_with", &[json!("a\0")])]), ["n0", "n1"], "{field}");
        assert_eq!(find(&nul, &[cond(field, "starts_with", &[json!("a\0b")])]), ["n0"], "{field}");
        assert_eq!(find(&nul, &[cond(field, "starts_with", &[json!("\0")])]), ["n4"], "{field}");
        assert_eq!(find(&nul, &[not(&cond(field, "starts_with", &[json!("a")]))]), ["n4"], "{field}");
    }
    // Malformed programs are refused too.
    for bad in [
        json!([["!"]]),
        json!([["score", "lt", 1], ["score", "lt", 2]]),
        json!([["&", 3]]),
        json!([["size", "eq", 1]]),
        json!([["score", "lt", "x"]]),
    ] {
        expect_error(c.post("/players/count", &json!({ "filters": [bad] })), 400, "invalid_query");
    }
}

/// One player of `statement_limits`: some fields `None`.
struct Model {
    id: String,
    score: Option<i64>,
    rank: Option<i64>,
    team: Option<String>,
}

fn limits_player(i: i64) -> (Value, Model) {
    let m = Model {
        id: format!("s{i:03}"),
        score: (i % 10 != 0).then_some(i),
        rank: (i % 7 != 0).then_some(i % 17),
        team: (i % 4 != 0).then(|| format!("x{i}")),
    };
    let name = (i % 6 != 0).then(|| format!("n{}", i % 5));
    (json!({ "id": m.id, "name": name, "score": m.score, "rank": m.rank, "team": m.team }), m)
}

/// Asserts a refusal of a query past a statement limit: 400 `invalid_query` naming the limit.
#[track_caller]
fn refused(reply: Reply, limit: &str) {
    let body = expect_error(reply, 400, "invalid_query");
    assert!(body["message"].as_str().is_some_and(|m| m.contains(limit)), "the message names the limit: {body}");
}

pub fn statement_limits(t: &dyn Target) {
    let c = Tenant::new(t, "statement_limits");
    let (docs, players): (Vec<Value>, Vec<Model>) = (0..200).map(limits_player).unzip();
    for chunk in docs.chunks(100) {
        expect(c.post("/players/bulk", &json!(chunk)), 201);
    }
    let n = |pred: &dyn Fn(&Model) -> bool| players.iter().filter(|p| pred(p)).count() as u64;
    let post = |filters: &[Value]| c.post("/players/count", &json!({ "filters": filters }));

    // Long lists: past the 100 bound values of a statement (db4 binds them as one JSON array).
    for len in [101, 256, 5_000] {
        let values: Vec<i64> = (0..len).map(|i| i * 3).collect();
        let listed = |x: Option<i64>| x.is_some_and(|x| values.contains(&x));
        assert_eq!(count(&c, &[cond("score", "in", &[json!(values)])]), n(&|p| listed(p.score)), "score in {len}");
        assert_eq!(count(&c, &[not(&cond("rank", "in", &[json!(values)]))]), n(&|p| !listed(p.rank)), "rank !in {len}");
    }
    let values: Vec<i64> = (0..99).collect();
    let three =
        [cond("rank", "in", &[json!(values)]), cond("score", "gte", &[json!(50)]), cond("team", "is_some", &[])];
    assert_eq!(
        count(&c, &three),
        n(&|p| p.rank.is_some() && p.score >= Some(50) && p.team.is_some()),
        "in_list(99) + 2"
    );

    // Many alternatives, each its own bound value.
    for len in [101, 500] {
        let any = join("|", &(0..len).map(|i| cond("rank", "eq", &[json!(i % 20)])).collect::<Vec<_>>());
        assert_eq!(count(&c, &[any]), n(&|p| p.rank.is_some_and(|r| r < 20)), "any of {len}");
        let all = join("&", &(0..len).map(|i| cond("team", "ne", &[json!(format!("x{i}"))])).collect::<Vec<_>>());
        assert_eq!(
            count(&c, std::slice::from_ref(&all)),
            n(&|p| p.team.as_ref().is_none_or(|t| t[1..].parse::<i64>().unwrap_or(0) >= len))
        );
        assert_eq!(count(&c, std::slice::from_ref(&all)) + count(&c, &[not(&all)]), 200);
    }

    // A list after the first hundred values: its JSON array is itself an element of the array
    // the values past the parameter limit go to.
    let mut alternatives: Vec<Value> = (0..101).map(|i| cond("score", "eq", &[json!(1000 + i)])).collect();
    alternatives.push(cond("team", "in", &[json!((0..50).map(|i| format!("x{}", i * 2)).collect::<Vec<_>>())]));
    let want = n(&|p| p.team.as_ref().is_some_and(|t| t[1..].parse::<i64>().is_ok_and(|i| i < 100 && i % 2 == 0)));
    assert_eq!(count(&c, &[join("|", &alternatives)]), want, "a list past the parameter limit");

    // Nested negations of any depth are only as deep as the condition.
    let lt = cond("score", "lt", &[json!(50)]);
    for depth in [99, 150, 199, 50_000] {
        let mut program = lt.as_array().expect("a program").clone();
        program.extend(std::iter::repeat_n(json!(["!"]), depth));
        let want = if depth % 2 == 0 { n(&|p| p.score < Some(50)) } else { n(&|p| p.score >= Some(50)) };
        assert_eq!(count(&c, &[json!(program)]), want, "{depth} nested !");
    }
    // Alternating and/or nest: up to the depth limit they run, past it they are refused.
    let alternating = |depth: usize| {
        let mut steps = vec![json!(["score", "eq", depth + 1])];
        for level in (0..depth).rev() {
            steps.push(json!(["score", "eq", level + 1]));
            steps.push(json!([if level % 2 == 0 { "|" } else { "&" }, 2]));
        }
        json!(steps)
    };
    assert_eq!(count(&c, &[alternating(60)]), 1, "alternating nesting 60 deep");
    for depth in [99, 150, 199, 20_000] {
        refused(post(&[alternating(depth)]), "nests too deeply");
    }

    // Many filter() calls: one balanced list.
    let chained: Vec<Value> = (0..1_500).map(|i| cond("score", "ne", &[json!(i)])).collect();
    assert_eq!(count(&c, &chained), n(&|p| p.score.is_none()), "1,500 filter() calls");
    // Past 100 KB of SQL.
    let chained: Vec<Value> = (0..20_000).map(|i| cond("score", "ne", &[json!(i)])).collect();
    refused(post(&chained), "bytes of SQL");
    let any = join("|", &(0..20_000).map(|i| cond("team", "eq", &[json!(format!("x{i}"))])).collect::<Vec<_>>());
    refused(post(&[any]), "bytes of SQL");
    // Past 2 MB in one bound value: a long text, or a list's JSON array.
    refused(post(&[cond("team", "eq", &[json!("y".repeat(3_000_000))])]), "a value of");
    let ids: Vec<i64> = (0..400_000).map(|i| i * 1_000_003).collect();
    refused(post(&[cond("score", "in", &[json!(ids)])]), "a value of");
    // The store still answers.
    assert_eq!(count(&c, &[]), 200);
}

// ---------------------------------------------------------------------------------------------
// A batch store inside transactions (`POST /events/tx`: steps run in one transaction)

fn event(i: usize) -> Value {
    json!({ "kind": if i.is_multiple_of(2) { "click" } else { "scroll" }, "n": i, "note": "x".repeat(i % 7) })
}

fn put_event(id: &str, doc: &Value) -> Value {
    json!({ "put": { "id": id, "doc": doc } })
}

/// Twelve events over several blobs (some with dead bytes); returns the stored items.
fn seed_events(c: &Tenant<'_>) -> Value {
    let mut steps: Vec<Value> = (0..12).map(|i| put_event(&format!("e{i:02}"), &event(i))).collect();
    steps.extend((0..12).step_by(4).map(|i| put_event(&format!("e{i:02}"), &event(i + 100))));
    expect(c.post("/events/tx", &json!({ "steps": steps })), 200);
    let stored = expect(c.get("/events"), 200);
    assert_eq!(stored["stats"]["documents"], 12);
    assert!(stored["stats"]["rows"].as_u64() > Some(2) && stored["stats"]["dead_bytes"].as_u64() > Some(0), "{stored}");
    stored
}

/// Writes rolled back to a savepoint leave the store exactly as it was there: contents and
/// statistics, checked entry by entry, inside the transaction and after it commits.
pub fn batch_savepoint_rollback(t: &dyn Target) {
    let c = Tenant::new(t, "batch_savepoint_rollback");
    let seeded = seed_events(&c);
    let kept = json!({ "kind": "kept", "n": -1 });
    let mut churn = vec![json!({ "savepoint": { "name": "sp" } })];
    churn.extend((0..8).map(|i| put_event(&format!("new{i}"), &event(i + 50))));
    churn.extend(["e00", "e04", "new1"].iter().map(|id| put_event(id, &json!({ "replaced": id }))));
    // Every event of the first blobs, so whole blobs lose their last document and are dropped.
    churn.extend((0..6).map(|i| json!({ "delete": { "id": format!("e{i:02}") } })));
    churn.push(json!("check"));
    churn.push(json!({ "rollback_to": { "name": "sp" } }));
    let mut steps = vec![put_event("kept", &kept), json!("check")];
    steps.extend(churn.iter().cloned());
    // The savepoint stays after a rollback: the same work, rolled back once more.
    steps.extend(churn.iter().skip(1).cloned());
    steps.push(json!({ "release": { "name": "sp" } }));
    let done = expect(c.post("/events/tx", &json!({ "steps": steps })), 200);
    let checks = done["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 3);
    let at_savepoint = &checks[0];
    assert_ne!(&checks[1], at_savepoint, "the work changed the store");
    assert_eq!(&done["stats"], at_savepoint, "rolled back to the savepoint: the same statistics");
    let mut ids: Vec<String> = seeded["items"].as_object().expect("items").keys().cloned().collect();
    ids.push("kept".to_owned());
    ids.sort();
    assert_eq!(done["ids"], json!(ids));

    let stored = expect(c.get("/events"), 200);
    let mut items = seeded["items"].clone();
    items["kept"] = kept;
    assert_eq!(stored["items"], items);
    assert_eq!(&stored["stats"], at_savepoint);

    // An unknown savepoint is refused, and the whole transaction with it.
    let bad = json!({ "steps": [put_event("lost", &json!(1)), { "rollback_to": { "name": "nope" } }] });
    expect_error(c.post("/events/tx", &bad), 400, "invalid_value");
    assert_eq!(expect(c.get("/events"), 200), stored);
}

/// Event writes commit together with a collection write, and a failing transaction keeps
/// neither.
pub fn batch_transaction_commits(t: &dyn Target) {
    let c = Tenant::new(t, "batch_transaction_commits");
    let seeded = seed_events(&c);
    expect(c.post("/accounts", &account("acc", 10)), 201);
    let steps = json!({ "steps": [
        put_event("e00", &json!({ "kind": "replaced" })),
        put_event("e12", &event(12)),
        { "delete": { "id": "e01" } },
        { "delete": { "id": "missing" } },
        { "deposit": { "account": "acc", "amount": 5 } },
        "check",
    ]});
    let done = expect(c.post("/events/tx", &steps), 200);
    assert_eq!(done["checks"][0], done["stats"]);
    let stored = expect(c.get("/events"), 200);
    let mut items = seeded["items"].clone();
    items["e00"] = json!({ "kind": "replaced" });
    items["e12"] = event(12);
    items.as_object_mut().expect("items").remove("e01");
    assert_eq!(stored["items"], items);
    assert_eq!(stored["stats"], done["stats"]);
    assert_eq!(balance(&c, "acc"), 15);

    // A failing transaction rolls back the events and the deposit alike.
    let failing = json!({ "steps": [
        put_event("e13", &event(13)),
        { "delete": { "id": "e02" } },
        { "deposit": { "account": "acc", "amount": 100 } },
        "fail",
    ]});
    expect_error(c.post("/events/tx", &failing), 400, "invalid_value");
    // A write to a missing account: a db4 error, same outcome.
    let missing =
        json!({ "steps": [put_event("e14", &event(14)), { "deposit": { "account": "ghost", "amount": 1 } }] });
    expect_error(c.post("/events/tx", &missing), 404, "not_found");
    assert_eq!(expect(c.get("/events"), 200), stored);
    assert_eq!(balance(&c, "acc"), 15);
    expect_error(c.call("PUT", "/events", Some(b"{}")), 405, "method_not_allowed");
    expect_error(c.post("/events/tx", &json!({ "steps": ["explode"] })), 400, "bad_json");
}

// ---------------------------------------------------------------------------------------------

/// Two deploys of one collection on one database: the newer type reads what the older stored
/// (a `#[version]` it added reads as 0, a field it dropped stays in the documents), their
/// writes keep each other's fields, and a deploy that changed an indexed field's type is
/// refused before it writes anything.
pub fn schema_evolution(t: &dyn Target) {
    let c = Tenant::new(t, "schema_evolution");
    expect(c.post("/jobs/v1", &json!({ "id": "j1", "prio": 3, "title": "keep me" })), 201);

    let refused = expect_error(c.get("/jobs/retyped/j1"), 409, "schema_mismatch");
    assert!(refused["message"].as_str().is_some_and(|m| m.contains("prio")), "{refused}");
    assert_eq!(expect(c.get("/jobs/v1/j1"), 200), json!({ "id": "j1", "prio": 3, "title": "keep me" }));

    assert_eq!(expect(c.get("/jobs/v2/j1"), 200), json!({ "id": "j1", "prio": 3, "owner": "", "version": 0 }));
    let updated = expect(c.put("/jobs/v2/j1", &json!({ "id": "j1", "prio": 4, "owner": "ann", "version": 0 })), 200);
    assert_eq!(updated, json!({ "version": 1 }));
    expect_error(
        c.put("/jobs/v2/j1", &json!({ "id": "j1", "prio": 5, "owner": "bob", "version": 0 })),
        409,
        "conflict",
    );
    // The first deploy still reads its field, and sees the second one's priority.
    assert_eq!(expect(c.get("/jobs/v1/j1"), 200), json!({ "id": "j1", "prio": 4, "title": "keep me" }));
    // A job the first deploy writes now reads through the second with version 0.
    expect(c.post("/jobs/v1", &json!({ "id": "j2", "prio": 1, "title": "new" })), 201);
    assert_eq!(expect(c.get("/jobs/v2/j2"), 200)["version"], 0);
    assert_eq!(expect(c.get("/jobs/v2/j1"), 200), json!({ "id": "j1", "prio": 4, "owner": "ann", "version": 1 }));
}

/// `Db::stats` on each backend: the documents of every stored collection, and the writes
/// committed through this handle (none for a transaction that rolled back).
pub fn db_stats(t: &dyn Target) {
    let c = Tenant::new(t, "db_stats");
    for id in ["s-1", "s-2", "s-3"] {
        expect(c.post("/articles", &article(id, "Counted")), 201);
    }
    let mut edit = expect(c.get("/articles/s-1"), 200);
    edit["title"] = json!("Counted, revised");
    expect(c.put("/articles/s-1", &edit), 200);
    expect(c.delete("/articles/s-3"), 200);
    expect(c.post("/accounts", &account("rich", 100)), 201);
    expect(c.post("/accounts", &account("poor", 0)), 201);
    // All or nothing: the first transfer's writes roll back with the second's refusal, and
    // count for nothing.
    let refused = json!({ "atomic": true, "transfers": [
        { "id": "t-1", "from": "rich", "to": "poor", "amount": 10 },
        { "id": "t-2", "from": "poor", "to": "rich", "amount": 1000 },
    ]});
    expect_error(c.post("/transfers/batch", &refused), 422, "insufficient_funds");
    assert_eq!(balance(&c, "rich"), 100);

    let stats = expect(c.get("/stats"), 200);
    let articles = &stats["collections"]["articles"];
    assert_eq!(articles["documents"], 2, "{stats}");
    assert_eq!((articles["inserts"].as_u64(), articles["deletes"].as_u64()), (Some(3), Some(1)), "{stats}");
    assert_eq!(articles["updates"].as_u64(), Some(1), "{stats}");
    let accounts = &stats["collections"]["accounts"];
    assert_eq!((accounts["documents"].as_u64(), accounts["inserts"].as_u64()), (Some(2), Some(2)), "{stats}");
    assert_eq!(accounts["updates"].as_u64(), Some(0), "the rolled-back batch committed nothing: {stats}");
    assert_eq!(stats["collections"]["transfers"]["inserts"].as_u64().unwrap_or(0), 0, "{stats}");
}

// ---------------------------------------------------------------------------------------------
// The change log (`/changes`): every committed write, in LSN order

/// `GET /changes?{query}`, expected to succeed.
pub fn changes(c: &Tenant<'_>, query: &str) -> Value {
    expect(c.get(&format!("/changes?{query}")), 200)
}

/// Every event after `since`, fetched in pages of `limit` (checking each page's `last`).
pub fn all_changes(c: &Tenant<'_>, since: u64, limit: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut since = since;
    loop {
        let page = changes(c, &format!("since={since}&limit={limit}"));
        let events = page["events"].as_array().expect("events").clone();
        assert!(events.len() <= limit, "{page}");
        let last = page["last"].as_u64().expect("last");
        match events.last() {
            None => {
                assert_eq!(last, since, "an empty page resumes where it was asked: {page}");
                return out;
            }
            Some(e) => assert_eq!(e["source"]["lsn"].as_u64(), Some(last), "{page}"),
        }
        out.extend(events);
        since = last;
    }
}

/// The newest LSN of a tenant's log.
pub fn head(c: &Tenant<'_>) -> u64 {
    changes(c, "limit=1")["head"].as_u64().expect("head")
}

/// An event in short: `[collection, id, op, version]`.
pub fn short(e: &Value) -> Value {
    json!([e["source"]["collection"], e["source"]["id"], e["op"], e["source"]["version"]])
}

pub fn shorts(events: &[Value]) -> Vec<Value> {
    events.iter().map(short).collect()
}

pub fn lsns(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["source"]["lsn"].as_u64().expect("lsn")).collect()
}

/// Checks what holds for any run of events: LSNs consecutive from `first`, each transaction's
/// events consecutive with the transaction id the LSN of its first, commit times not going
/// back, and each envelope well formed.
#[track_caller]
pub fn check_log_shape(events: &[Value], first: u64) {
    let mut tx_start = 0;
    let mut prev_ts = 0;
    for (i, e) in events.iter().enumerate() {
        let lsn = e["source"]["lsn"].as_u64().expect("lsn");
        assert_eq!(lsn, first + i as u64, "LSNs are consecutive: {e}");
        let tx = e["source"]["tx_id"].as_u64().expect("tx_id");
        if tx == lsn {
            tx_start = lsn;
        }
        assert_eq!(tx, tx_start, "a transaction's events are consecutive, tx_id its first LSN: {e}");
        let ts = e["ts_ms"].as_u64().expect("ts_ms");
        assert!(ts >= prev_ts && ts > 1_700_000_000_000, "commit times: {e}");
        prev_ts = ts;
        assert!(e["source"]["db"].is_string(), "{e}");
        match e["op"].as_str() {
            Some("c") => assert!(e["before"].is_null() && e["after"].is_object(), "{e}"),
            Some("u") => assert!(e["after"].is_object(), "{e}"),
            Some("d") => assert!(e["after"].is_null(), "{e}"),
            _ => panic!("unknown op: {e}"),
        }
        // A collection's document names its id (a batch store's need not).
        if let Some(id) = e["after"].get("id") {
            assert_eq!(id, &e["source"]["id"], "{e}");
        }
    }
}

/// Writes of every kind, then the log holds exactly their events, in order, with their
/// operations, versions and after-images; `since` resumes after an LSN and `limit` pages.
pub fn change_log(t: &dyn Target) {
    let c = Tenant::new(t, "change_log");
    assert_eq!(changes(&c, ""), json!({ "events": [], "last": 0, "head": 0 }));

    expect(c.post("/articles", &article("a-1", "First")), 201);
    let mut edit = expect(c.get("/articles/a-1"), 200);
    edit["title"] = json!("First, revised");
    expect(c.put("/articles/a-1", &edit), 200);
    expect(c.post("/articles/a-1/increment", &json!({ "field": "views", "by": 5 })), 200);
    expect(c.post("/articles", &article("a-2", "Second")), 201);
    expect(c.delete("/articles/a-2"), 200);
    expect(c.post("/accounts", &account("alice", 100)), 201);
    expect(c.post("/accounts", &account("bob", 0)), 201);
    let t1 = json!({ "id": "t1", "from": "alice", "to": "bob", "amount": 30, "notify": "n1" });
    expect(c.post("/transfers", &t1), 201);
    let bulk = json!([article("b-1", "Bulk one"), article("b-2", "Bulk two")]);
    expect(c.post("/articles/bulk", &bulk), 201);

    let events = all_changes(&c, 0, 3);
    check_log_shape(&events, 1);
    assert_eq!(
        shorts(&events),
        [
            json!(["articles", "a-1", "c", 0]),
            json!(["articles", "a-1", "u", 1]),
            json!(["articles", "a-1", "u", 2]),
            json!(["articles", "a-2", "c", 0]),
            // A delete carries a version only with before-images (off by default).
            json!(["articles", "a-2", "d", null]),
            json!(["accounts", "alice", "c", 0]),
            json!(["accounts", "bob", "c", 0]),
            // The transfer: one transaction, its writes in order.
            json!(["accounts", "alice", "u", 1]),
            json!(["accounts", "bob", "u", 1]),
            json!(["accounts", "bob", "u", 2]),
            json!(["notifications", "n1", "c", null]),
            json!(["transfers", "t1", "c", null]),
            json!(["articles", "b-1", "c", 0]),
            json!(["articles", "b-2", "c", 0]),
        ],
        "{events:#?}"
    );
    let tx = |i: usize| events[i]["source"]["tx_id"].as_u64();
    assert_eq!((tx(7), tx(11)), (Some(8), Some(8)), "the transfer is one transaction");
    assert_eq!((tx(12), tx(13)), (Some(13), Some(13)), "the bulk insert is one transaction");
    assert_eq!(events[0]["after"]["title"], "First");
    assert_eq!(events[0]["after"]["tenant_id"], c.name.as_str());
    assert_eq!(events[1]["after"]["title"], "First, revised");
    assert_eq!(events[2]["after"]["views"], 5);
    assert_eq!(events[5]["after"]["balance"], 100);
    assert_eq!((events[7]["after"]["balance"].as_i64(), events[8]["after"]["balance"].as_i64()), (Some(70), Some(30)));
    assert_eq!(events[9]["after"]["notifications"], 1);
    assert_eq!(events[10]["after"]["text"], "alice sent you 30");
    assert_eq!(events[11]["after"]["amount"], 30);
    // The last after-image of a document is the document as stored; its version is the
    // event's `source.version`. (The image's own `version` field is the stored JSON's, which a
    // field patch such as `increment` does not rewrite: it still says 1 here, on both
    // backends. Readers get the version column, so does `source.version`.)
    let stored = expect(c.get("/articles/a-1"), 200);
    assert_eq!(events[2]["source"]["version"], stored["version"]);
    for (k, v) in events[2]["after"].as_object().expect("after") {
        if k != "version" {
            assert_eq!(&stored[k], v, "{k}: {} / {stored}", events[2]);
        }
    }

    // Resuming after an LSN, and pages.
    let page = changes(&c, "since=4&limit=3");
    assert_eq!(lsns(page["events"].as_array().expect("events")), [5, 6, 7]);
    assert_eq!((page["last"].as_u64(), page["head"].as_u64()), (Some(7), Some(14)));
    assert_eq!(page["events"][0], events[4]);
    assert_eq!(all_changes(&c, 10, 100), events[10..]);
    assert_eq!(changes(&c, "since=14"), json!({ "events": [], "last": 14, "head": 14 }));
    let default_page = changes(&c, "");
    assert_eq!(default_page["events"].as_array().map(Vec::len), Some(14));

    for query in ["since=15", "since=-1", "since=x", "limit=0", "limit=1001", "wait_ms=10001", "wait_ms=-1", "bogus=1"]
    {
        expect_error(c.get(&format!("/changes?{query}")), 400, "invalid_query");
    }
    expect_error(c.post("/changes", &json!({})), 405, "method_not_allowed");
    expect_error(c.get("/changes/consumers/x/poll"), 405, "method_not_allowed");
    expect_error(c.get("/changes/truncate"), 405, "method_not_allowed");
    expect_error(c.get("/changes/elsewhere"), 404, "no_route");
    // Reads wrote nothing.
    assert_eq!(head(&c), 14);
}

/// Work that did not commit adds no event: refused writes, rolled-back transactions and
/// atomic batches, the failed inner transactions of a batch, what a savepoint undid.
pub fn change_log_rollbacks(t: &dyn Target) {
    let c = Tenant::new(t, "change_log_rollbacks");
    expect(c.post("/articles", &article("r-1", "Kept")), 201);
    expect(c.post("/accounts", &account("rich", 100)), 201);
    expect(c.post("/accounts", &account("poor", 0)), 201);
    let h0 = head(&c);
    assert_eq!(h0, 3);

    // Refused single writes.
    expect_error(c.post("/articles", &article("r-1", "Again")), 409, "already_exists");
    let mut stale = expect(c.get("/articles/r-1"), 200);
    stale["version"] = json!(7);
    expect_error(c.put("/articles/r-1", &stale), 409, "conflict");
    expect_error(c.post("/articles/missing/increment", &json!({ "field": "views", "by": 1 })), 404, "not_found");
    expect_error(c.delete("/articles/missing"), 404, "not_found");
    let no_swap = json!({ "expected": "Archived", "new": "Published" });
    assert_eq!(expect(c.post("/articles/r-1/cas", &no_swap), 200)["swapped"], false);
    // Rolled-back transactions: an atomic batch, a touch with a missing id, a failing event
    // transaction, a bulk insert with a duplicate, a transfer refused after its debit.
    let atomic = json!({ "atomic": true, "transfers": [
        { "id": "t-1", "from": "rich", "to": "poor", "amount": 10, "notify": "n-1" },
        { "id": "t-2", "from": "poor", "to": "rich", "amount": 1000 },
    ]});
    expect_error(c.post("/transfers/batch", &atomic), 422, "insufficient_funds");
    expect_error(c.post("/articles/touch", &json!({ "ids": ["r-1", "missing"] })), 404, "not_found");
    let failing =
        json!({ "steps": [put_event("e1", &event(1)), { "deposit": { "account": "rich", "amount": 5 } }, "fail"] });
    expect_error(c.post("/events/tx", &failing), 400, "invalid_value");
    expect_error(
        c.post("/articles/bulk", &json!([article("r-2", "New"), article("r-1", "Dup")])),
        409,
        "already_exists",
    );
    expect_error(
        c.post("/transfers", &json!({ "id": "t-3", "from": "rich", "to": "ghost", "amount": 1 })),
        404,
        "not_found",
    );
    assert_eq!(head(&c), h0, "nothing committed, nothing logged");
    assert_eq!(changes(&c, &format!("since={h0}"))["events"], json!([]));

    // A batch whose second transfer fails alone: only the first one's writes are logged.
    let partial = json!({ "transfers": [
        { "id": "t-4", "from": "rich", "to": "poor", "amount": 10 },
        { "id": "t-5", "from": "poor", "to": "rich", "amount": 1000 },
    ]});
    expect(c.post("/transfers/batch", &partial), 200);
    // A transfer whose notification is rolled back to the savepoint (a first transfer takes
    // its id): neither the notification nor the recipient's counter bump is logged.
    let first = json!({ "id": "t-6", "from": "rich", "to": "poor", "amount": 1, "notify": "n-6" });
    expect(c.post("/transfers", &first), 201);
    let taken = json!({ "id": "t-7", "from": "rich", "to": "poor", "amount": 2, "notify": "n-6" });
    assert_eq!(expect(c.post("/transfers", &taken), 201)["transfer"]["notified"], false);
    // An event transaction rolled back to a savepoint (an event and a deposit undone), then
    // committing one put.
    let steps = json!({ "steps": [
        { "savepoint": { "name": "sp" } },
        put_event("lost", &event(2)),
        { "deposit": { "account": "poor", "amount": 50 } },
        { "rollback_to": { "name": "sp" } },
        put_event("kept", &event(3)),
        { "release": { "name": "sp" } },
    ]});
    expect(c.post("/events/tx", &steps), 200);

    let events = all_changes(&c, h0, 100);
    check_log_shape(&events, h0 + 1);
    assert_eq!(
        shorts(&events),
        [
            json!(["accounts", "rich", "u", 1]),
            json!(["accounts", "poor", "u", 1]),
            json!(["transfers", "t-4", "c", null]),
            json!(["accounts", "rich", "u", 2]),
            json!(["accounts", "poor", "u", 2]),
            json!(["accounts", "poor", "u", 3]),
            json!(["notifications", "n-6", "c", null]),
            json!(["transfers", "t-6", "c", null]),
            json!(["accounts", "rich", "u", 3]),
            json!(["accounts", "poor", "u", 4]),
            json!(["transfers", "t-7", "c", null]),
            // A batch store's put of a new entry reads as an insert.
            json!(["events", "kept", "c", null]),
        ],
        "{events:#?}"
    );
    let txs: Vec<u64> = events.iter().map(|e| e["source"]["tx_id"].as_u64().expect("tx_id")).collect();
    assert_eq!(txs, [4, 4, 4, 7, 7, 7, 7, 7, 12, 12, 12, 15]);
    assert_eq!(events[10]["after"]["notified"], false);
    assert_eq!(events[11]["after"], event(3));
}

/// Named consumers over HTTP: a poll answers the events after the acknowledged position (again
/// until acknowledged), an ack moves it, and it is kept in the database.
pub fn change_consumers(t: &dyn Target) {
    let c = Tenant::new(t, "change_consumers");
    for i in 1..=5 {
        expect(c.post("/articles", &article(&format!("k-{i}"), "Consumed")), 201);
    }
    let poll =
        |name: &str, query: &str| expect(c.post(&format!("/changes/consumers/{name}/poll{query}"), &json!({})), 200);
    let ack = |name: &str, lsn: u64| c.post(&format!("/changes/consumers/{name}/ack"), &json!({ "lsn": lsn }));

    // A new consumer sees the whole log; polling again without an ack sees it again.
    let first = poll("etl", "");
    assert_eq!(
        (first["name"].as_str(), first["acked"].as_u64(), first["last"].as_u64()),
        (Some("etl"), Some(0), Some(5))
    );
    let events = first["events"].as_array().expect("events").clone();
    assert_eq!(lsns(&events), [1, 2, 3, 4, 5]);
    assert_eq!(events, all_changes(&c, 0, 100), "a consumer's events are the log's");
    assert_eq!(poll("etl", ""), first);
    let two = poll("etl", "?max=2");
    assert_eq!((lsns(two["events"].as_array().expect("events")), two["last"].as_u64()), (vec![1, 2], Some(2)));

    assert_eq!(expect(ack("etl", 2), 200), json!({ "name": "etl", "acked": 2 }));
    let rest = poll("etl", "");
    assert_eq!((rest["acked"].as_u64(), lsns(rest["events"].as_array().expect("events"))), (Some(2), vec![3, 4, 5]));
    // Acknowledging an earlier position changes nothing; one beyond the newest is refused.
    assert_eq!(expect(ack("etl", 1), 200)["acked"], 2);
    expect_error(ack("etl", 6), 400, "change_log");
    expect_error(c.post("/changes/consumers/etl/ack", &json!({ "lsn": -1 })), 400, "bad_json");
    expect_error(c.post("/changes/consumers/etl/ack", &json!({})), 400, "bad_json");
    for query in ["?max=0", "?max=1001", "?max=x", "?bogus=1"] {
        expect_error(c.post(&format!("/changes/consumers/etl/poll{query}"), &json!({})), 400, "invalid_query");
    }
    expect_error(c.post(&format!("/changes/consumers/{}/poll", "n".repeat(300)), &json!({})), 400, "change_log");

    // New events come after the acknowledged position.
    expect(c.post("/articles/k-1/increment", &json!({ "field": "views", "by": 1 })), 200);
    let next = poll("etl", "");
    assert_eq!(lsns(next["events"].as_array().expect("events")), [3, 4, 5, 6]);
    assert_eq!(short(&next["events"][3]), json!(["articles", "k-1", "u", 1]));
    expect(ack("etl", 6), 200);
    assert_eq!(poll("etl", "")["events"], json!([]));

    // Consumers are independent; names are percent-decoded.
    let other = poll("a%20b", "?max=1");
    assert_eq!((other["name"].as_str(), lsns(other["events"].as_array().expect("events"))), (Some("a b"), vec![1]));
    let listed = expect(c.get("/changes/consumers"), 200)["consumers"].clone();
    let positions: Vec<(String, u64)> = listed
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| {
            assert!(c["at"].as_u64() > Some(1_700_000_000_000), "{c}");
            (c["name"].as_str().expect("name").to_owned(), c["acked"].as_u64().expect("acked"))
        })
        .collect();
    assert_eq!(positions, [("a b".to_owned(), 0), ("etl".to_owned(), 6)]);
    assert_eq!(expect(c.delete("/changes/consumers/a%20b"), 200), json!({ "removed": "a b" }));
    expect_error(c.delete("/changes/consumers/a%20b"), 404, "not_found");
    // Consumers' bookkeeping is not in the log.
    assert_eq!(head(&c), 6);
}

/// Truncation: the events before a point go (not the newest, nor any a consumer still needs);
/// reading from before the oldest kept answers 410 `log_truncated` with `oldest`.
pub fn change_log_truncated(t: &dyn Target) {
    let c = Tenant::new(t, "change_log_truncated");
    for i in 1..=6 {
        expect(c.post("/articles", &article(&format!("x-{i}"), "Truncated")), 201);
    }
    let ack =
        |name: &str, lsn: u64| expect(c.post(&format!("/changes/consumers/{name}/ack"), &json!({ "lsn": lsn })), 200);
    ack("keeper", 2);
    // The keeper still needs 3 on: only 1 and 2 go.
    let truncate = |before: u64| expect(c.post("/changes/truncate", &json!({ "before": before })), 200);
    assert_eq!(truncate(5), json!({ "dropped": 2, "oldest": 3 }));
    for since in [0, 1] {
        let gone = expect_error(c.get(&format!("/changes?since={since}")), 410, "log_truncated");
        assert_eq!(gone["oldest"], 3, "{gone}");
    }
    assert_eq!(lsns(&all_changes(&c, 2, 100)), [3, 4, 5, 6]);
    // A consumer registered now starts before the oldest event kept.
    let fresh = expect(c.post("/changes/consumers/fresh/poll", &json!({})), 200);
    assert_eq!(
        (fresh["acked"].as_u64(), lsns(fresh["events"].as_array().expect("events"))),
        (Some(2), vec![3, 4, 5, 6])
    );

    // With the keeper gone and the other consumer at the head, all but the newest go.
    expect(c.delete("/changes/consumers/keeper"), 200);
    ack("fresh", 6);
    assert_eq!(truncate(1000), json!({ "dropped": 3, "oldest": 6 }));
    let gone = expect_error(c.get("/changes?since=4"), 410, "log_truncated");
    assert_eq!(gone["oldest"], 6);
    expect_error(c.get("/changes?since=4&wait_ms=100"), 410, "log_truncated");
    assert_eq!(lsns(&all_changes(&c, 5, 100)), [6]);
    assert_eq!(truncate(1000), json!({ "dropped": 0, "oldest": 6 }));
    expect_error(c.post("/changes/truncate", &json!({ "before": "x" })), 400, "bad_json");
    // LSNs go on from the newest: none is handed out twice.
    expect(c.post("/articles", &article("x-7", "After")), 201);
    let after = all_changes(&c, 6, 100);
    assert_eq!((lsns(&after), short(&after[0])), (vec![7], json!(["articles", "x-7", "c", 0])));
    assert_eq!(
        lsns(expect(c.post("/changes/consumers/fresh/poll", &json!({})), 200)["events"].as_array().expect("events")),
        [7]
    );
}

/// A long poll: answered at once when there are events, held while there are none, and ended
/// by a write committed during the wait (the Durable Object serves it meanwhile).
pub fn change_long_poll(t: &dyn Target) {
    use std::time::{Duration, Instant};
    let c = Tenant::new(t, "change_long_poll");
    expect(c.post("/articles", &article("w-1", "Waited for")), 201);

    let started = Instant::now();
    assert_eq!(lsns(changes(&c, "since=0&wait_ms=8000")["events"].as_array().expect("events")), [1]);
    assert!(started.elapsed() < Duration::from_secs(5), "events there: no wait ({:?})", started.elapsed());

    let started = Instant::now();
    assert_eq!(changes(&c, "since=1&wait_ms=300"), json!({ "events": [], "last": 1, "head": 1 }));
    assert!(started.elapsed() >= Duration::from_millis(280), "held about wait_ms ({:?})", started.elapsed());

    let c = &c;
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            expect(c.post("/articles", &article("w-2", "Written during the wait")), 201);
        });
        let started = Instant::now();
        let page = changes(c, "since=1&wait_ms=10000");
        let waited = started.elapsed();
        writer.join().expect("writer");
        assert_eq!(shorts(page["events"].as_array().expect("events")), [json!(["articles", "w-2", "c", 0])], "{page}");
        assert!(waited < Duration::from_secs(8), "the write ended the wait ({waited:?})");
    });
}

// ---------------------------------------------------------------------------------------------
// Full-text search

/// `s` percent-encoded for a query string.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn search(c: &Tenant<'_>, q: &str, options: &str) -> Value {
    expect(c.get(&format!("/search?q={}{options}", encode(q))), 200)
}

fn hit_ids(res: &Value) -> Vec<String> {
    res["hits"].as_array().expect("hits").iter().map(|h| h["doc"]["id"].as_str().expect("id").to_owned()).collect()
}

fn searched_article(id: &str, title: &str, body: &str, status: &str) -> Value {
    json!({ "id": id, "title": title, "body": body, "tags": ["notes"], "status": status, "created_at": 1, "views": 0 })
}

pub fn search_ranking(t: &dyn Target) {
    let c = Tenant::new(t, "search_ranking");
    for doc in [
        searched_article("in-body", "Gardening notes", "a database of plants", "Published"),
        searched_article("in-title", "A database of plants", "gardening notes", "Published"),
        searched_article("draft", "Database drafts", "unfinished database text", "Draft"),
        searched_article("other", "Cooking", "recipes", "Published"),
    ] {
        expect(c.post("/articles", &doc), 201);
    }
    // The title weighs twice the body; the draft matches in both.
    let res = search(&c, "database", "&total=1");
    assert_eq!(res["total"], 3);
    let order = hit_ids(&res);
    assert_eq!(order.len(), 3);
    assert!(order.iter().position(|id| id == "in-title") < order.iter().position(|id| id == "in-body"), "{order:?}");
    let scores: Vec<f64> =
        res["hits"].as_array().expect("hits").iter().map(|h| h["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[2] > 0.0, "{scores:?}");
    // Filters, paging, highlights and snippets.
    let published = search(&c, "database", "&status=Published&highlight=1&snippet=6");
    assert_eq!(hit_ids(&published), ["in-title", "in-body"]);
    assert_eq!(published["hits"][0]["highlights"], json!({ "title": "A <b>database</b> of plants" }));
    assert_eq!(published["hits"][1]["highlights"], json!({ "body": "a <b>database</b> of plants" }));
    assert!(published["hits"][1]["snippet"].as_str().expect("snippet").contains("<b>database</b>"));
    let second = search(&c, "database", "&limit=1&offset=1");
    assert_eq!(hit_ids(&second), [order[1].clone()]);
    // Tags are indexed; a query matching nothing is an empty page.
    assert_eq!(search(&c, "notes", "&total=1")["total"], 4);
    assert_eq!(search(&c, "nothingmatches", "&total=1"), json!({ "hits": [], "total": 0 }));
    // Bad options are 400s and change nothing.
    expect_error(c.get("/search?q=database&snippet=0"), 400, "invalid_query");
    expect_error(c.get("/search?q=database&snippet=65"), 400, "invalid_query");
    expect_error(c.get("/search?q=%20"), 400, "invalid_query");
    expect_error(c.get("/search"), 400, "invalid_query");
    assert_eq!(search(&c, "database", "&total=1")["total"], 3);
}

pub fn search_follows_writes(t: &dyn Target) {
    let c = Tenant::new(t, "search_follows_writes");
    let total = |q: &str| search(&c, q, "&total=1")["total"].as_u64().expect("total");
    expect(c.post("/articles", &searched_article("a", "alpha", "first body", "Draft")), 201);
    expect(
        c.post(
            "/articles/bulk",
            &json!([searched_article("b", "beta", "x", "Draft"), searched_article("c", "gamma", "x", "Draft")]),
        ),
        201,
    );
    assert_eq!((total("alpha"), total("beta"), total("gamma")), (1, 1, 1));
    // update
    let mut a = expect(c.get("/articles/a"), 200);
    a["title"] = json!("delta");
    expect(c.put("/articles/a", &a), 200);
    assert_eq!((total("alpha"), total("delta")), (0, 1));
    // an update that leaves the text alone keeps the index
    expect(c.post("/articles/touch", &json!({ "ids": ["a"] })), 200);
    assert_eq!(total("delta"), 1);
    // delete, and delete by query
    expect(c.delete("/articles/b"), 200);
    assert_eq!(total("beta"), 0);
    expect(c.delete("/articles?status=Draft"), 200);
    assert_eq!((total("delta"), total("gamma")), (0, 0));
    // rollbacks: a savepoint rollback, a failed transaction, a committed one
    expect(c.post("/articles", &searched_article("d", "original", "x", "Draft")), 201);
    let inside =
        expect(c.post("/articles/retitle", &json!({ "titles": [["d", "kappa"]], "rollback_to_savepoint": true })), 200);
    assert_eq!(inside["seen_inside"], 1, "the transaction sees its own write");
    assert_eq!((total("kappa"), total("original")), (0, 1));
    expect_error(
        c.post("/articles/retitle", &json!({ "titles": [["d", "lambda"]], "fail": true })),
        400,
        "invalid_query",
    );
    assert_eq!((total("lambda"), total("original")), (0, 1));
    expect(c.post("/articles/retitle", &json!({ "titles": [["d", "omega"]] })), 200);
    assert_eq!((total("omega"), total("original")), (1, 0));
}

pub fn search_hostile_queries(t: &dyn Target) {
    let c = Tenant::new(t, "search_hostile_queries");
    expect(
        c.post("/articles", &searched_article("a", "Edge databases", "SQLite \"quoted\" (text) NEAR NOT", "Published")),
        201,
    );
    let long = "edge ".repeat(2_000);
    let nested = "(".repeat(500) + "edge" + &")".repeat(500);
    let queries = [
        "edge",
        "\"",
        "\"\"",
        "(",
        ")",
        "(()",
        "edge AND",
        "OR edge",
        "NOT edge",
        "edge NOT",
        "*",
        "edge **",
        "a*b",
        "title:",
        ":edge",
        "nope:edge",
        "views:1",
        "rank:edge",
        "NEAR(edge sqlite, 2)",
        "edge ^ sqlite",
        "{title}:edge",
        "\u{0}",
        "edge\u{0}sqlite",
        "\"edge\u{0}\"",
        "日本語",
        "🦀*",
        "'; DROP TABLE articles; --",
        "edge -sqlite",
        "+edge",
        "title:(edge OR",
        "\"unterminated",
        &long,
        &nested,
        "AND OR NOT",
        "and or not",
        "\\",
        "%00",
    ];
    for q in queries {
        let reply = c.get(&format!("/search?q={}&highlight=1&snippet=8&total=1&typos=1", encode(q)));
        match reply.status {
            200 => assert!(reply.body["hits"].is_array(), "{q:?}: {}", reply.body),
            400 => {
                assert_eq!(reply.body["error"], "invalid_query", "{q:?}: {}", reply.body);
                let message = reply.body["message"].as_str().expect("message");
                assert!(message.contains("at byte") || message.contains("query"), "{q:?}: {message}");
            }
            other => panic!("{q:?}: status {other}: {}", reply.body),
        }
    }
    // Specials inside a phrase are text: the document's own words match as a phrase.
    assert_eq!(hit_ids(&search(&c, "\"quoted (text) near not\"", "")), ["a"]);
    assert_eq!(search(&c, "edge", "&total=1")["total"], 1);
}

// ---------------------------------------------------------------------------------------------
// Ranges and keyset cursors

fn range_article(id: &str, status: &str, created_at: i64) -> Value {
    json!({ "id": id, "title": format!("Range {id}"), "body": "", "tags": [], "status": status,
            "created_at": created_at, "views": 0 })
}

fn range_page(c: &Tenant<'_>, query: &str) -> Value {
    let page = expect(c.get(&format!("/articles/range?{query}")), 200);
    assert!(page["has_more"].is_boolean(), "no has_more: {page}");
    page
}

fn cursor_of(page: &Value, which: &str) -> Option<String> {
    page[which].as_str().map(str::to_owned)
}

/// The ids of every page of `GET /articles/range?{query}` from the start, page by page,
/// following `next`, and the last page's `prev` (where a backward walk starts). Calls
/// `between` after each page, before the next is read.
fn walk_forward(c: &Tenant<'_>, query: &str, mut between: impl FnMut(usize)) -> (Vec<Vec<String>>, Option<String>) {
    let mut pages = Vec::new();
    let mut page = range_page(c, query);
    assert_eq!(page["prev"], Value::Null, "the first page has no prev: {page}");
    for n in 1.. {
        pages.push(ids(&page["items"]));
        assert_eq!(page["has_more"].as_bool(), Some(page["next"].is_string()), "has_more iff next: {page}");
        let Some(next) = cursor_of(&page, "next") else { break };
        assert!(n < 1000, "the walk does not end");
        between(n);
        page = range_page(c, &format!("{query}&after={}", encode(&next)));
        assert!(page["prev"].is_string(), "a page read after a cursor has a prev: {page}");
    }
    (pages, cursor_of(&page, "prev"))
}

/// The ids of every page before the cursor `before`, following `prev`, in the range's order.
fn walk_backward(c: &Tenant<'_>, query: &str, before: &str, mut between: impl FnMut(usize)) -> Vec<String> {
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut cursor = before.to_owned();
    for n in 1.. {
        let page = range_page(c, &format!("{query}&before={}", encode(&cursor)));
        pages.push(ids(&page["items"]));
        assert_eq!(page["has_more"].as_bool(), Some(page["prev"].is_string()), "has_more iff prev: {page}");
        let Some(prev) = cursor_of(&page, "prev") else { break };
        assert!(n < 1000, "the walk does not end");
        between(n);
        cursor = prev;
    }
    pages.into_iter().rev().flatten().collect()
}

/// Forward then backward through the whole range: each id once, in `expected`'s order.
#[track_caller]
fn walk_both_ways(c: &Tenant<'_>, query: &str, expected: &[String]) {
    let (pages, last_prev) = walk_forward(c, query, |_| {});
    assert_eq!(pages.concat(), expected, "forward through {query}");
    let mut back = match last_prev {
        Some(prev) => walk_backward(c, query, &prev, |_| {}),
        None => Vec::new(),
    };
    back.extend(pages.last().cloned().unwrap_or_default());
    assert_eq!(back, expected, "backward through {query}");
}

/// The ids of `docs` ordered by `key`.
fn ordered_ids<K: Ord>(docs: &[Value], keep: impl Fn(&Value) -> bool, key: impl Fn(&Value) -> K) -> Vec<String> {
    let mut kept: Vec<&Value> = docs.iter().filter(|d| keep(d)).collect();
    kept.sort_by_key(|d| key(d));
    kept.iter().map(|d| d["id"].as_str().expect("id").to_owned()).collect()
}

fn created(d: &Value) -> i64 {
    d["created_at"].as_i64().expect("created_at")
}

fn id_of(d: &Value) -> String {
    d["id"].as_str().expect("id").to_owned()
}

fn status_of(d: &Value) -> String {
    d["status"].as_str().expect("status").to_owned()
}

/// Forward and backward paging over both indexes, both directions, with bounds, prefixes and
/// filters, returns every matching article exactly once, in the index's order.
pub fn range_paging(t: &dyn Target) {
    let c = Tenant::new(t, "range_paging");
    let statuses = ["Draft", "Published", "Archived"];
    // Equal creation times, so ties are broken by id.
    let docs: Vec<Value> = (0..23)
        .map(|i: i64| range_article(&format!("r-{i:02}"), statuses[(i % 3) as usize], 1000 + i * 7 % 10))
        .collect();
    for chunk in docs.chunks(10) {
        expect(c.post("/articles/bulk", &json!(chunk)), 201);
    }
    let all = |_: &Value| true;
    let by_created = ordered_ids(&docs, all, |d| (created(d), id_of(d)));

    let first = range_page(&c, "limit=5");
    assert_eq!(ids(&first["items"]), by_created[..5]);
    assert_eq!((first["has_more"].as_bool(), first["prev"].is_null()), (Some(true), true));
    for limit in [1, 5, 7, 23, 100] {
        walk_both_ways(&c, &format!("limit={limit}"), &by_created);
        walk_both_ways(&c, &format!("index=created_at&limit={limit}"), &by_created);
    }
    let reversed: Vec<String> = by_created.iter().rev().cloned().collect();
    walk_both_ways(&c, "desc=1&limit=4", &reversed);

    // Bounds on created_at, inclusive and exclusive.
    let window = ordered_ids(&docs, |d| (1003..1007).contains(&created(d)), |d| (created(d), id_of(d)));
    walk_both_ways(&c, "gte=1003&lt=1007&limit=3", &window);
    let window = ordered_ids(&docs, |d| created(d) > 1003 && created(d) <= 1007, |d| (created(d), id_of(d)));
    walk_both_ways(&c, "gt=1003&lte=1007&limit=2", &window);
    assert_eq!(ids(&range_page(&c, "gt=2000")["items"]), Vec::<String>::new());

    // A filter: the index gives the order, the filter skips.
    let drafts = ordered_ids(&docs, |d| status_of(d) == "Draft", |d| (created(d), id_of(d)));
    walk_both_ways(&c, "status=Draft&limit=2", &drafts);

    // The composite index (status, created_at desc): statuses by name, newest first, ties by
    // id descending (the last field's direction).
    let newest = |d: &Value| (std::cmp::Reverse(created(d)), std::cmp::Reverse(id_of(d)));
    let composite = ordered_ids(&docs, all, |d| (status_of(d), newest(d)));
    walk_both_ways(&c, "index=by_status_created&limit=6", &composite);
    let published = ordered_ids(&docs, |d| status_of(d) == "Published", newest);
    walk_both_ways(&c, "index=by_status_created&prefix=Published&limit=2", &published);
    let published_late = ordered_ids(&docs, |d| status_of(d) == "Published" && created(d) >= 1004, newest);
    walk_both_ways(&c, "index=by_status_created&prefix=Published&gte=1004&limit=2", &published_late);
    let oldest_first: Vec<String> = published.iter().rev().cloned().collect();
    walk_both_ways(&c, "index=by_status_created&prefix=Published&desc=1&limit=3", &oldest_first);
    // Bounds on the status when there is no prefix.
    let not_archived = ordered_ids(&docs, |d| status_of(d).as_str() > "Archived", |d| (status_of(d), newest(d)));
    walk_both_ways(&c, "index=by_status_created&gt=Archived&limit=5", &not_archived);

    // Malformed requests.
    expect_error(c.get("/articles/range?index=views"), 400, "invalid_query");
    expect_error(c.get("/articles/range?gte=soon"), 400, "invalid_query");
    expect_error(c.get("/articles/range?index=by_status_created&prefix=Bogus"), 400, "invalid_query");
    expect_error(c.get("/articles/range?limit=0"), 400, "invalid_query");
    expect_error(c.get("/articles/range?desc=yes"), 400, "invalid_query");
    expect_error(c.get("/articles/range?colour=red"), 400, "invalid_query");
    expect_error(c.call("POST", "/articles/range", Some(b"{}")), 405, "method_not_allowed");
}

/// A cursor works only with the tenant, index and parameters it came from (the page size may
/// change); edited, cut, padded or made-up cursors are 400 `invalid_cursor`, never a 500.
pub fn range_cursors_refused(t: &dyn Target) {
    let a = Tenant::new(t, "range_cursors_a");
    let b = Tenant::new(t, "range_cursors_b");
    let docs: Vec<Value> = (0..9).map(|i| range_article(&format!("k-{i}"), "Draft", 500 + i)).collect();
    for c in [&a, &b] {
        expect(c.post("/articles/bulk", &json!(docs)), 201);
    }
    let page = range_page(&a, "limit=3");
    let next = cursor_of(&page, "next").expect("a next cursor");
    let after =
        |c: &Tenant<'_>, query: &str, cursor: &str| c.get(&format!("/articles/range?{query}&after={}", encode(cursor)));
    assert_eq!(ids(&expect(after(&a, "limit=3", &next), 200)["items"]), ["k-3", "k-4", "k-5"]);
    assert_eq!(ids(&expect(after(&a, "limit=2", &next), 200)["items"]), ["k-3", "k-4"], "the page size may change");
    // The same data in another tenant (another Durable Object, another secret).
    expect_error(after(&b, "limit=3", &next), 400, "invalid_cursor");
    // The same tenant, another range.
    for other in [
        "index=by_status_created&limit=3",
        "index=by_status_created&prefix=Draft&limit=3",
        "desc=1&limit=3",
        "gte=500&limit=3",
        "lt=2000&limit=3",
        "status=Draft&limit=3",
    ] {
        expect_error(after(&a, other, &next), 400, "invalid_cursor");
    }
    // A composite index's cursor is refused by the created_at index, and the other way round.
    let composite = range_page(&a, "index=by_status_created&prefix=Draft&limit=2");
    let composite_next = cursor_of(&composite, "next").expect("a next cursor");
    expect_error(after(&a, "limit=2", &composite_next), 400, "invalid_cursor");
    let prev = cursor_of(&expect(after(&a, "limit=3", &next), 200), "prev").expect("a prev cursor");
    expect_error(
        a.get(&format!("/articles/range?index=by_status_created&prefix=Draft&before={}", encode(&prev))),
        400,
        "invalid_cursor",
    );

    // Every one-character edit, cuts and padding.
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut edits: Vec<String> = Vec::new();
    for (i, ch) in next.char_indices() {
        let other = alphabet.chars().find(|&x| x != ch).expect("another character");
        let other = if i % 2 == 0 { other } else { alphabet.chars().rev().find(|&x| x != ch).expect("another") };
        edits.push(format!("{}{other}{}", &next[..i], &next[i + 1..]));
    }
    for cut in [1, 2, 5, next.len() / 2, next.len() - 1] {
        edits.push(next[..next.len() - cut].to_owned());
    }
    edits.extend([format!("{next}A"), format!("{next}AAAA"), format!("A{next}"), String::new()]);
    edits.extend(
        ["not a cursor", "====", "%", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "\u{1F600}", "null"].map(str::to_owned),
    );
    edits.push("A".repeat(20_000));
    for bad in &edits {
        expect_error(after(&a, "limit=3", bad), 400, "invalid_cursor");
        expect_error(a.get(&format!("/articles/range?limit=3&before={}", encode(bad))), 400, "invalid_cursor");
    }
    expect_error(a.get(&format!("/articles/range?limit=3&after={0}&before={0}", encode(&next))), 400, "invalid_query");
    // The genuine cursor still works after all that.
    assert_eq!(ids(&expect(after(&a, "limit=3", &next), 200)["items"]), ["k-3", "k-4", "k-5"]);
}

/// Inserts and deletes between pages move no other row: every article present throughout a
/// walk comes exactly once and in order, forwards and backwards, on both indexes.
pub fn range_under_writes(t: &dyn Target) {
    let c = Tenant::new(t, "range_under_writes");
    let statuses = ["Draft", "Published"];
    // Stable articles on even times (two per time), writes land on every time, odd or even.
    let stable: Vec<Value> = (0..30)
        .map(|i: i64| range_article(&format!("s-{i:02}"), statuses[(i % 2) as usize], 100 + 2 * (i / 2)))
        .collect();
    for chunk in stable.chunks(10) {
        expect(c.post("/articles/bulk", &json!(chunk)), 201);
    }
    let stable_ids: std::collections::BTreeSet<String> = stable.iter().map(id_of).collect();
    let mut written: Vec<String> = Vec::new();
    let mut churn = |round: usize| {
        // Times before, at and after wherever the walk is; ids that sort before and after the
        // stable ones at equal times.
        for (k, at) in [(0, 99 + round as i64), (1, 100 + 2 * round as i64), (2, 128 - round as i64), (3, 101)] {
            let id = format!("{}-{round}-{k}", if k % 2 == 0 { "a" } else { "z" });
            expect(c.post("/articles", &range_article(&id, statuses[k % 2], at)), 201);
            written.push(id);
        }
        // Delete one written a round earlier.
        if written.len() > 4 {
            let gone = written.remove(written.len() - 5);
            expect(c.delete(&format!("/articles/{gone}")), 200);
        }
    };
    let check = |seen: &[String], stable_order: &[String], what: &str| {
        let mut unique = std::collections::BTreeSet::new();
        for id in seen {
            assert!(unique.insert(id.clone()), "{what}: {id} came twice in {seen:?}");
        }
        let kept: Vec<String> = seen.iter().filter(|id| stable_ids.contains(*id)).cloned().collect();
        assert_eq!(kept, stable_order, "{what}: the stable articles, once each, in order");
    };

    let by_created = ordered_ids(&stable, |_| true, |d| (created(d), id_of(d)));
    let (pages, _) = walk_forward(&c, "limit=4", &mut churn);
    let forward = pages.concat();
    check(&forward, &by_created, "forward by created_at");
    // The whole walk is in order, writes included: fetch them all and compare.
    let now = range_page(&c, "limit=1000");
    let position: std::collections::HashMap<String, usize> =
        ids(&now["items"]).into_iter().enumerate().map(|(i, id)| (id, i)).collect();
    let at: Vec<usize> = forward.iter().filter_map(|id| position.get(id).copied()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "forward walk out of order: {forward:?}");

    // Backwards, newest first in the composite index, from a cursor at the very end.
    let newest = |d: &Value| (std::cmp::Reverse(created(d)), std::cmp::Reverse(id_of(d)));
    let published = ordered_ids(&stable, |d| status_of(d) == "Published", newest);
    let query = "index=by_status_created&prefix=Published&limit=3";
    // The last page of a walk in small pages gives the backward start.
    let (pages, last_prev) = walk_forward(&c, query, |_| {});
    let mut back = walk_backward(&c, query, &last_prev.expect("a prev cursor"), |n| churn(100 + n));
    back.extend(pages.last().cloned().unwrap_or_default());
    check(&back, &published, "backward by status, newest first");
}

/// Every page of `GET /scores?{query}` forwards, then backwards from the last page's `prev`:
/// both must list `expected`.
fn walk_scores(c: &Tenant<'_>, query: &str, expected: &[String]) {
    let page_of = |extra: String| expect(c.get(&format!("/scores?{query}{extra}")), 200);
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut page = page_of(String::new());
    loop {
        pages.push(ids(&page["items"]));
        assert_eq!(page["has_more"].as_bool(), Some(page["next"].is_string()), "has_more iff next: {page}");
        let Some(next) = cursor_of(&page, "next") else { break };
        assert!(pages.len() < 1000, "the walk does not end");
        page = page_of(format!("&after={}", encode(&next)));
    }
    assert_eq!(pages.concat(), expected, "forward through {query}");
    let mut back: Vec<String> = pages.last().cloned().unwrap_or_default();
    let mut prev = cursor_of(&page, "prev");
    while let Some(cursor) = prev {
        let page = page_of(format!("&before={}", encode(&cursor)));
        let mut ids = ids(&page["items"]);
        ids.append(&mut back);
        back = ids;
        prev = cursor_of(&page, "prev");
    }
    assert_eq!(back, expected, "backward through {query}");
}

/// The standalone range index (`db4::range::RangeIndex`, no document type) behind
/// `/scores`: games, then the best score first, ties by id descending; pages both ways with
/// bounds and a prefix; re-indexing and removal; cursors bound to the tenant and the range.
pub fn range_standalone_index(t: &dyn Target) {
    let a = Tenant::new(t, "range_scores_a");
    let b = Tenant::new(t, "range_scores_b");
    let games = ["chess", "go", "shogi"];
    let scores: Vec<(String, &str, i64)> =
        (0..17).map(|i: i64| (format!("p-{i:02}"), games[(i % 3) as usize], 1000 + (i * 37) % 11 * 10)).collect();
    for c in [&a, &b] {
        for (id, game, score) in &scores {
            let reply = expect(c.put(&format!("/scores/{id}"), &json!({ "game": game, "score": score })), 200);
            assert_eq!(reply["score"], *score);
        }
    }
    let order = |keep: &dyn Fn(&str, i64) -> bool| -> Vec<String> {
        let mut kept: Vec<&(String, &str, i64)> = scores.iter().filter(|(_, g, s)| keep(g, *s)).collect();
        kept.sort_by(|x, y| x.1.cmp(y.1).then(y.2.cmp(&x.2)).then(y.0.cmp(&x.0)));
        kept.iter().map(|s| s.0.clone()).collect()
    };
    let all = order(&|_, _| true);
    let first = expect(a.get("/scores?limit=2"), 200);
    assert_eq!(ids(&first["items"]), all[..2]);
    assert_eq!(first["items"][0]["game"], "chess");
    for limit in [1, 3, 17, 100] {
        walk_scores(&a, &format!("limit={limit}"), &all);
    }
    let reversed: Vec<String> = all.iter().rev().cloned().collect();
    walk_scores(&a, "desc=1&limit=4", &reversed);
    walk_scores(&a, "prefix=go&limit=2", &order(&|g, _| g == "go"));
    walk_scores(&a, "prefix=chess&gte=1030&lt=1080&limit=2", &order(&|g, s| g == "chess" && (1030..1080).contains(&s)));
    walk_scores(&a, "gt=chess&limit=5", &order(&|g, _| g > "chess"));

    // Re-indexing moves an entry; removing drops it.
    expect(a.put("/scores/p-00", &json!({ "game": "go", "score": 5000 })), 200);
    assert_eq!(ids(&expect(a.get("/scores?prefix=go&limit=1"), 200)["items"]), ["p-00"]);
    assert_eq!(expect(a.delete("/scores/p-00"), 200)["removed"], true);
    assert_eq!(expect(a.delete("/scores/p-00"), 200)["removed"], false);
    assert!(!ids(&expect(a.get("/scores?limit=100"), 200)["items"]).contains(&"p-00".to_owned()));

    // Cursors: another tenant, another range, an edit.
    let page = expect(a.get("/scores?prefix=chess&limit=2"), 200);
    let next = cursor_of(&page, "next").expect("a next cursor");
    let after = |c: &Tenant<'_>, query: &str| c.get(&format!("/scores?{query}&after={}", encode(&next)));
    expect(after(&a, "prefix=chess&limit=2"), 200);
    expect_error(after(&b, "prefix=chess&limit=2"), 400, "invalid_cursor");
    for other in ["prefix=go&limit=2", "limit=2", "prefix=chess&desc=1", "prefix=chess&gt=1000"] {
        expect_error(after(&a, other), 400, "invalid_cursor");
    }
    let mut edited = next.clone().into_bytes();
    let last = edited.len() - 1;
    edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).expect("ascii");
    expect_error(a.get(&format!("/scores?prefix=chess&after={}", encode(&edited))), 400, "invalid_cursor");
    expect_error(a.get("/scores?after=garbage!"), 400, "invalid_cursor");

    // Bad input.
    expect_error(a.get("/scores?prefix=chess&gt=high"), 400, "invalid_query");
    expect_error(a.get("/scores?limit=0"), 400, "invalid_query");
    expect_error(a.get("/scores?colour=red"), 400, "invalid_query");
    expect_error(a.put("/scores/p-99", &json!({ "game": "chess" })), 400, "bad_json");
    expect_error(a.call("POST", "/scores", Some(b"{}")), 405, "method_not_allowed");
}

/// The warm tier every tenant's database has (`api::db_options`): repeated reads are served
/// from it (`GET /tiers` counts hits), and an update, a delete, an increment, a rolled-back
/// transaction and a refused touch are all read back as committed, never from a stale copy.
pub fn warm_tier(t: &dyn Target) {
    let c = Tenant::new(t, "warm_tier");
    let warm = |field: &str| expect(c.get("/tiers"), 200)["warm"][field].as_u64().expect("a count");
    assert_eq!(warm("capacity"), worker_app::api::WARM_BYTES as u64);
    let created = expect(c.post("/articles", &article("w-1", "Cached")), 201);
    expect(c.post("/accounts", &account("rich", 100)), 201);
    expect(c.post("/accounts", &account("poor", 0)), 201);

    // The first read fills, the next ones hit.
    let hits = warm("hits");
    for _ in 0..5 {
        assert_eq!(expect(c.get("/articles/w-1"), 200), created);
    }
    assert!(warm("hits") >= hits + 4, "repeated reads hit the warm tier");
    assert!(warm("entries") >= 1);

    // An update is read back at once.
    let mut edit = created.clone();
    edit["title"] = json!("Cached, revised");
    let updated = expect(c.put("/articles/w-1", &edit), 200);
    assert_eq!(expect(c.get("/articles/w-1"), 200), updated);
    assert_eq!(expect(c.get("/articles/w-1"), 200)["title"], "Cached, revised");

    // An atomic increment.
    expect(c.post("/articles/w-1/increment", &json!({ "field": "views", "by": 3 })), 200);
    assert_eq!(expect(c.get("/articles/w-1"), 200)["views"], created["views"].as_i64().unwrap_or(0) + 3);

    // Rolled back: a batch of transfers refused after its first debit, and a touch naming a
    // missing id; the balances and the article read back as they were.
    assert_eq!((balance(&c, "rich"), balance(&c, "poor")), (100, 0));
    let atomic = json!({ "atomic": true, "transfers": [
        { "id": "t-1", "from": "rich", "to": "poor", "amount": 10 },
        { "id": "t-2", "from": "poor", "to": "rich", "amount": 1000 },
    ]});
    expect_error(c.post("/transfers/batch", &atomic), 422, "insufficient_funds");
    assert_eq!((balance(&c, "rich"), balance(&c, "poor")), (100, 0));
    let before = expect(c.get("/articles/w-1"), 200);
    expect_error(c.post("/articles/touch", &json!({ "ids": ["w-1", "missing"] })), 404, "not_found");
    assert_eq!(expect(c.get("/articles/w-1"), 200), before);

    // A committed transfer moves both balances; in a batch that is not atomic, a failed
    // transfer is undone alone (a nested transaction) and the others commit.
    expect(c.post("/transfers", &json!({ "id": "t-3", "from": "rich", "to": "poor", "amount": 30 })), 201);
    assert_eq!((balance(&c, "rich"), balance(&c, "poor")), (70, 30));
    assert_eq!((balance(&c, "rich"), balance(&c, "poor")), (70, 30));
    let partial = json!({ "atomic": false, "transfers": [
        { "id": "t-4", "from": "rich", "to": "poor", "amount": 5 },
        { "id": "t-5", "from": "poor", "to": "rich", "amount": 1000 },
    ]});
    expect(c.post("/transfers/batch", &partial), 200);
    assert_eq!((balance(&c, "rich"), balance(&c, "poor")), (65, 35));

    // A delete.
    expect(c.delete("/articles/w-1"), 200);
    expect_error(c.get("/articles/w-1"), 404, "not_found");
    expect_error(c.get("/articles/w-1"), 404, "not_found");
    assert!(warm("bytes") <= warm("capacity"));
}
