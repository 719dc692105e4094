//! The sharded half of the app: tickets of many tenants spread over shard objects (one
//! Durable Object per shard), routed from the Worker by a [`DurableRouter`]. The routes are
//! plain async functions over the router, so the conformance tests run them natively over
//! `LocalShards` and, on workerd, the Worker runs them over `WorkerShards`.
//!
//! | route | what |
//! |---|---|
//! | `POST /s/tickets` | insert one ticket (201) |
//! | `POST /s/tickets/bulk` | insert a batch, one request per shard (201, `{"inserted": n}`) |
//! | `GET /s/tickets/{tenant}/{id}` | read (404 if none) |
//! | `PUT /s/tickets/{tenant}/{id}` | replace, optimistic on `version` |
//! | `DELETE /s/tickets/{tenant}/{id}` | delete (`{"deleted": bool}`) |
//! | `POST /s/tickets/{tenant}/{id}/increment` | `{"by": n}` added to `score` |
//! | `POST /s/query` | `{"tenants"?, "status"?, "min_score"?, "order"?, "limit"?, "offset"?, "count"?}` |
//! | `GET /s/shard-of/{tenant}` | `{"shard": n}`: the shard the tenant's tickets are on |
//! | `POST /s/direct/{shard}/tickets`, `GET /s/direct/{shard}/tickets/{id}` | the benchmark's baseline: the same insert and get sent straight to one shard object, which runs them on its `Db` without the router or the protocol ([`direct`]) |
//! | `POST /s/direct/{shard}/one/bulk`, `POST /s/direct/{shard}/one/query` | the scatter-gather baseline: tickets in one shard object's own collection ([`OneTicket`]), queried there |
//! | `GET /s/stats` | each shard's documents, bytes, requests per second, database size |
//! | `GET /s/split` | the shard map: epoch, shards, and the split under way (`null` if none) |
//! | `POST /s/split/{shard}` | start splitting a shard (`{"pace_ms"?}`); the coordinator's alarm drives it |
//! | `POST /s/rebalance` | split the hottest shard over `{"ops_per_sec"?, "database_bytes"?}` if any |
//! | `POST /s/kb/bulk` | insert knowledge-base articles (a second sharded collection) |
//! | `POST /s/kb/query` | `{"tenants"?}`: its articles, by id |
//! | `POST /s/kb/search` | `{"q", "tenants"?, "limit"?, "offset"?, "highlight"?, "snippet"?, "total"?}` |
//! | `POST /s/kb/range` | `{"index"?, "prefix"?, "gte"?, "lt"?, "desc"?, "tenants"?, "limit"?, "after"?, "before"?}` → `{"items", "next", "prev", "has_more"}`: keyset pages over `updated` (default) or `by_tenant_updated` (`tenant`, `updated desc`; `prefix` a tenant) |
//!
//! | `GET /s/changes/{tenant}?after=<shard>:<lsn>&limit=` | one page of the tenant's change stream: `{"events", "position", "caught_up", "unattributed"}`; pass `position` back as `after` |
//! | `GET /s/changes/{tenant}/live?after=&for_ms=` | the same, live, as server-sent events (Worker only): each event's `id` is its position; a client reconnecting with `Last-Event-ID` resumes after it |
//!
//! The split routes are answered by the coordinator object (`worker.rs`), which owns the alarm.

use crate::api::{ApiError, ApiRequest, ApiResponse, Method};
use db4::Document;
use db4::remote::{DurableRouter, ShardClient, SplitTrigger};
use db4::shard::{MigrationStep, ShardRouterConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A support ticket of one tenant, stored on the shard of its tenant.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "tickets")]
pub struct Ticket {
    /// Unique in the collection: each shard object's primary key. The router cannot check
    /// uniqueness across shard objects, so the clients make ids unique (a document answers
    /// only to its own tenant: another tenant's key never reads or changes it).
    #[id]
    pub id: String,
    /// The partition key: all of a tenant's tickets are on one shard.
    #[partition_key]
    pub tenant: String,
    /// `open` or `closed`.
    #[index]
    pub status: String,
    /// A number to sort and increment.
    pub score: i64,
    /// Free text.
    pub title: String,
    /// The optimistic-locking version.
    #[version]
    #[serde(default)]
    pub version: u64,
}

/// A knowledge-base article of one tenant: full-text searched across the shard objects.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "kb", index(name = "by_tenant_updated", fields(tenant, updated desc)))]
pub struct KbArticle {
    /// Unique in the collection, as a [`Ticket`]'s id.
    #[id]
    pub id: String,
    /// The partition key.
    #[partition_key]
    pub tenant: String,
    /// Searched, weighing twice the body.
    #[fts(weight = 2.0)]
    pub title: String,
    /// Searched.
    #[fts]
    pub body: String,
    /// When it last changed (milliseconds), for ranges.
    #[range_index]
    pub updated: i64,
}

/// Shards of the app's ring.
pub const SHARDS: u32 = 8;

/// The router configuration: [`SHARDS`] shards of 64 virtual nodes.
pub fn config() -> ShardRouterConfig {
    ShardRouterConfig { shard_count: SHARDS, virtual_nodes: 64, ..ShardRouterConfig::default() }
}

/// The most tickets one bulk request may carry: each shard's batch is one subrequest, and a
/// batch must stay well inside a Durable Object request's size.
pub const MAX_BULK: usize = 1000;

type Result<T, E = ApiError> = std::result::Result<T, E>;

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn to_json(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Whether `target` (a path and query from the root) belongs to the sharded routes.
pub fn is_sharded(target: &str) -> bool {
    target == "/s" || target.starts_with("/s/")
}

/// The body of `POST /s/query`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    tenants: Option<Vec<String>>,
    status: Option<String>,
    min_score: Option<i64>,
    /// `id`, `score`, `-score` (descending), `title`, `-title`.
    order: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
    #[serde(default)]
    count: bool,
}

/// Answers one sharded request over `client`: the knowledge-base routes with a router of
/// [`KbArticle`]s, the others with one of [`Ticket`]s (each router's map cached in the
/// isolate after its first request).
pub async fn route(client: impl ShardClient, req: &ApiRequest<'_>) -> ApiResponse {
    let path = req.target.split_once('?').map_or(req.target, |(p, _)| p);
    if path == "/s/kb" || path.starts_with("/s/kb/") {
        return match DurableRouter::<KbArticle>::open(client, config()).await {
            Ok(router) => match kb(&router, req, path).await {
                Ok(r) => r,
                Err(e) => e.to_response(),
            },
            Err(e) => ApiError::Db(e).to_response(),
        };
    }
    match router(client).await {
        Ok(router) => handle(&router, req).await,
        Err(e) => ApiError::Db(e).to_response(),
    }
}

/// The value of query parameter `name`, percent-decoded.
pub fn query_value(target: &str, name: &str) -> Option<String> {
    let (_, q) = target.split_once('?')?;
    let raw = q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    crate::api::percent_decode(raw, true).ok()
}

/// A stream position from a query parameter or a `Last-Event-ID` header (`None` if absent
/// or empty: from the beginning).
///
/// # Errors
///
/// [`ApiError::Db`] with the parse error for anything but `<shard>:<lsn>`.
pub fn stream_position(text: Option<&str>) -> Result<Option<db4::remote::StreamPosition>> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => Ok(Some(t.parse()?)),
    }
}

/// One change of a stream as the routes send it: its position, the change, the document.
pub fn event_json(shard: db4::shard::ShardId, e: &db4::remote::protocol::WireChange) -> Value {
    let parse = |doc: &Option<String>| doc.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok());
    json!({
        "position": format!("{}:{}", shard.get(), e.lsn),
        "lsn": e.lsn,
        "tx_id": e.tx_id,
        "id": e.id,
        "op": e.op,
        "version": e.version,
        "at": e.at,
        "after": parse(&e.after),
        "before": parse(&e.before),
    })
}

/// A page of a stream as `GET /s/changes/{tenant}` answers it.
pub fn batch_json(batch: &db4::remote::StreamBatch) -> Value {
    let shard = batch.position.shard;
    json!({
        "events": batch.events.iter().map(|e| event_json(shard, e)).collect::<Vec<_>>(),
        "position": batch.position.to_string(),
        "caught_up": batch.caught_up,
        "unattributed": batch.unattributed,
    })
}

/// The body of `POST /s/kb/search`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    q: String,
    tenants: Option<Vec<String>>,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
    /// The markers around each match: `["<b>", "</b>"]`.
    highlight: Option<(String, String)>,
    /// The snippet's length in tokens.
    snippet: Option<usize>,
    #[serde(default)]
    total: bool,
}

/// The body of `POST /s/kb/range`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RangeBody {
    /// `updated` (the default) or `by_tenant_updated`.
    index: Option<String>,
    /// The tenant (`by_tenant_updated` only).
    prefix: Option<String>,
    gte: Option<i64>,
    lt: Option<i64>,
    #[serde(default)]
    desc: bool,
    tenants: Option<Vec<String>>,
    limit: Option<usize>,
    after: Option<String>,
    before: Option<String>,
}

/// The body of `POST /s/kb/query`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KbQueryBody {
    tenants: Option<Vec<String>>,
}

async fn kb(router: &DurableRouter<KbArticle>, req: &ApiRequest<'_>, path: &str) -> Result<ApiResponse> {
    let f = KbArticle::fields();
    match (req.method, path) {
        (Method::Post, "/s/kb/bulk") => {
            let docs: Vec<KbArticle> = json_body(req.body)?;
            if docs.len() > MAX_BULK {
                return Err(ApiError::InvalidValue {
                    field: "articles",
                    reason: format!("{} articles; at most {MAX_BULK} per request", docs.len()),
                });
            }
            router.insert_many(&docs).await?;
            Ok(ApiResponse { status: 201, body: json!({ "inserted": docs.len() }) })
        }
        (Method::Post, "/s/kb/query") => {
            let body: KbQueryBody = body_or_default(req.body)?;
            let mut q = router.query();
            if let Some(tenants) = body.tenants {
                q = q.filter(f.tenant.in_list(tenants));
            }
            Ok(ApiResponse { status: 200, body: json!({ "items": to_json(&q.all().await?) }) })
        }
        (Method::Post, "/s/kb/search") => {
            let body: SearchBody = json_body(req.body)?;
            let mut s = router.search(&body.q).offset(body.offset);
            if let Some(tenants) = body.tenants {
                s = s.filter(f.tenant.in_list(tenants));
            }
            if let Some(n) = body.limit {
                s = s.limit(n);
            }
            if let Some((start, end)) = body.highlight {
                s = s.highlight(start, end);
            }
            if let Some(n) = body.snippet {
                s = s.snippet(n);
            }
            if body.total {
                s = s.with_total();
            }
            let res = s.run().await?;
            let hits: Vec<Value> = res
                .hits
                .iter()
                .map(|h| json!({ "doc": to_json(&h.doc), "score": h.score, "highlights": h.highlights, "snippet": h.snippet }))
                .collect();
            Ok(ApiResponse { status: 200, body: json!({ "total": res.total, "hits": hits }) })
        }
        (Method::Post, "/s/kb/range") => {
            let body: RangeBody = body_or_default(req.body)?;
            let mut r = match body.index.as_deref().unwrap_or("updated") {
                "updated" if body.prefix.is_none() => router.range_index("updated"),
                "updated" => {
                    return Err(ApiError::InvalidParam("prefix: only with index by_tenant_updated".into()));
                }
                "by_tenant_updated" => match &body.prefix {
                    Some(tenant) => router.range_index("by_tenant_updated").prefix(tenant.as_str()),
                    None => router.range_index("by_tenant_updated"),
                },
                other => return Err(ApiError::InvalidParam(format!("index {other:?}"))),
            };
            if let Some(v) = body.gte {
                r = r.gte(v);
            }
            if let Some(v) = body.lt {
                r = r.lt(v);
            }
            if body.desc {
                r = r.descending();
            }
            if let Some(tenants) = body.tenants {
                r = r.filter(f.tenant.in_list(tenants));
            }
            r = r.limit(body.limit.unwrap_or(db4::range::DEFAULT_PAGE_SIZE));
            if let Some(c) = &body.after {
                r = r.after(&db4::Cursor::parse(c)?);
            }
            if let Some(c) = &body.before {
                r = r.before(&db4::Cursor::parse(c)?);
            }
            let page = r.fetch().await?;
            Ok(ApiResponse {
                status: 200,
                body: json!({
                    "items": to_json(&page.items),
                    "next": page.next.map(|c| c.to_string()),
                    "prev": page.prev.map(|c| c.to_string()),
                    "has_more": page.has_more,
                }),
            })
        }
        (_, "/s/kb/bulk" | "/s/kb/query" | "/s/kb/search" | "/s/kb/range") => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NoRoute),
    }
}

/// Answers one sharded request of tickets (`target` from the root: `/s/...`).
pub async fn handle(router: &DurableRouter<Ticket>, req: &ApiRequest<'_>) -> ApiResponse {
    match dispatch(router, req).await {
        Ok(r) => r,
        Err(e) => e.to_response(),
    }
}

async fn dispatch(router: &DurableRouter<Ticket>, req: &ApiRequest<'_>) -> Result<ApiResponse> {
    let path = req.target.split_once('?').map_or(req.target, |(p, _)| p);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method, parts.as_slice()) {
        (Method::Post, ["s", "tickets"]) => {
            let t: Ticket = json_body(req.body)?;
            router.insert(&t).await?;
            Ok(ApiResponse { status: 201, body: to_json(&t) })
        }
        (Method::Post, ["s", "tickets", "bulk"]) => {
            let ts: Vec<Ticket> = json_body(req.body)?;
            if ts.len() > MAX_BULK {
                return Err(ApiError::InvalidValue {
                    field: "tickets",
                    reason: format!("{} tickets; at most {MAX_BULK} per request", ts.len()),
                });
            }
            router.insert_many(&ts).await?;
            Ok(ApiResponse { status: 201, body: json!({ "inserted": ts.len() }) })
        }
        (Method::Get, ["s", "changes", tenant]) => {
            let after = stream_position(query_value(req.target, "after").as_deref())?;
            let limit = match query_value(req.target, "limit") {
                None => 100,
                Some(l) => l
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| ApiError::InvalidParam(format!("limit {l:?}: an integer in 1..=1000")))?,
            };
            let batch = router.stream(&(*tenant).to_owned(), after, limit).await?;
            Ok(ApiResponse { status: 200, body: batch_json(&batch) })
        }
        (Method::Get, ["s", "shard-of", tenant]) => {
            Ok(ApiResponse { status: 200, body: json!({ "shard": router.shard_for(&(*tenant).to_owned())?.get() }) })
        }
        (Method::Get, ["s", "tickets", tenant, id]) => match router.get(&(*tenant).to_owned(), *id).await? {
            Some(t) => Ok(ApiResponse { status: 200, body: to_json(&t) }),
            None => Err(ApiError::Db(db4::Error::NotFound { collection: "tickets".into(), id: (*id).to_owned() })),
        },
        (Method::Put, ["s", "tickets", tenant, id]) => {
            let mut t: Ticket = json_body(req.body)?;
            t.tenant = (*tenant).to_owned();
            t.id = (*id).to_owned();
            let version = router.update(&t).await?;
            t.version = version.unwrap_or(t.version);
            Ok(ApiResponse { status: 200, body: to_json(&t) })
        }
        (Method::Delete, ["s", "tickets", tenant, id]) => {
            let deleted = router.delete(&(*tenant).to_owned(), *id).await?;
            Ok(ApiResponse { status: 200, body: json!({ "deleted": deleted }) })
        }
        (Method::Post, ["s", "tickets", tenant, id, "increment"]) => {
            #[derive(Deserialize)]
            struct By {
                by: i64,
            }
            let by: By = json_body(req.body)?;
            let score = router.increment(&(*tenant).to_owned(), *id, Ticket::fields().score, by.by).await?;
            Ok(ApiResponse { status: 200, body: json!({ "score": score }) })
        }
        (Method::Post, ["s", "query"]) => query(router, json_body(req.body)?).await,
        (Method::Get, ["s", "stats"]) => {
            let stats = router.stats().await?;
            let shards: Vec<Value> = stats
                .iter()
                .map(|(s, st)| {
                    json!({
                        "shard": s.get(),
                        "documents": st.documents,
                        "bytes": st.bytes,
                        "last_lsn": st.last_lsn,
                        "ops_per_sec": st.ops_per_sec,
                        "database_bytes": st.database_bytes,
                    })
                })
                .collect();
            Ok(ApiResponse { status: 200, body: json!({ "epoch": router.epoch(), "shards": shards }) })
        }
        (Method::Get, ["s", "split"]) => {
            router.refresh().await?;
            Ok(ApiResponse { status: 200, body: split_status(router) })
        }
        (_, ["s", "tickets", ..] | ["s", "query"] | ["s", "stats"] | ["s", "split"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NoRoute),
    }
}

async fn query(router: &DurableRouter<Ticket>, body: QueryBody) -> Result<ApiResponse> {
    let f = Ticket::fields();
    let mut q = router.query().offset(body.offset);
    if let Some(tenants) = body.tenants {
        q = q.filter(f.tenant.in_list(tenants));
    }
    if let Some(status) = body.status {
        q = q.filter(f.status.eq(status));
    }
    if let Some(min) = body.min_score {
        q = q.filter(f.score.gte(min));
    }
    q = match body.order.as_deref() {
        None | Some("id") => q,
        Some("score") => q.order_by(f.score.asc()),
        Some("-score") => q.order_by(f.score.desc()),
        Some("title") => q.order_by(f.title.asc()),
        Some("-title") => q.order_by(f.title.desc()),
        Some(other) => {
            return Err(ApiError::InvalidParam(format!("order {other:?}: id, score, -score, title or -title")));
        }
    };
    if let Some(n) = body.limit {
        q = q.limit(n);
    }
    if body.count {
        return Ok(ApiResponse { status: 200, body: json!({ "count": q.count().await? }) });
    }
    let items = q.all().await?;
    Ok(ApiResponse { status: 200, body: json!({ "items": to_json(&items) }) })
}

/// The router's shard map as the split routes report it: `{"epoch", "shards", "split"}`, the
/// split `null` or `{"step", "source", "new_shard"}` (the step in snake case).
pub fn split_status(router: &DurableRouter<Ticket>) -> Value {
    let map = router.map();
    let split = map.plan.as_ref().map(|plan| {
        let source = plan.sources().first().map(|s| s.shard.get());
        let new_shard = plan.after().shards().iter().find(|s| !plan.before().contains(**s)).map(|s| s.get());
        json!({ "step": step_name(plan.step()), "source": source, "new_shard": new_shard })
    });
    let shards: Vec<u32> = map.ring.shards().iter().map(|s| s.get()).collect();
    json!({ "epoch": map.ring.epoch(), "shards": shards, "split": split })
}

/// A split step's name in the routes' JSON.
pub fn step_name(step: MigrationStep) -> &'static str {
    match step {
        MigrationStep::Planned => "planned",
        MigrationStep::Copying => "copying",
        MigrationStep::CatchingUp => "catching_up",
        MigrationStep::Switched => "switched",
        MigrationStep::Cleaned => "cleaned",
    }
}

/// The body of `POST /s/split/{shard}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SplitBody {
    /// Milliseconds between the alarm's steps (0: at once); a slow pace lets tests and
    /// operators watch a split, or keeps it from competing with traffic.
    #[serde(default)]
    pub pace_ms: u32,
}

/// The body of `POST /s/rebalance`: the [`SplitTrigger`]'s limits, its defaults if absent.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RebalanceBody {
    /// Requests per second a shard object may answer.
    pub ops_per_sec: Option<f64>,
    /// Bytes a shard object's database may take.
    pub database_bytes: Option<u64>,
    /// As [`SplitBody::pace_ms`].
    #[serde(default)]
    pub pace_ms: u32,
}

impl RebalanceBody {
    /// The trigger these limits make.
    pub fn trigger(&self) -> SplitTrigger {
        let d = SplitTrigger::default();
        SplitTrigger {
            ops_per_sec: self.ops_per_sec.unwrap_or(d.ops_per_sec),
            database_bytes: self.database_bytes.unwrap_or(d.database_bytes),
        }
    }
}

/// Parses a JSON body, an empty one as the default.
pub fn body_or_default<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) { Ok(T::default()) } else { json_body(body) }
}

/// Opens the router of [`Ticket`]s over `client` (the map cached in the isolate after the
/// first request).
///
/// # Errors
///
/// As [`DurableRouter::open`].
pub async fn router(client: impl db4::remote::ShardClient) -> db4::Result<DurableRouter<Ticket>> {
    DurableRouter::open(client, config()).await
}

/// The benchmark's single-object baseline for scatter-gather: the same tickets as a sharded
/// collection holds, all in one shard object's own collection (`POST /direct/one/bulk`,
/// `POST /direct/one/query` with the body of `POST /s/query`), queried there.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "bench_one")]
pub struct OneTicket {
    /// The id.
    #[id]
    pub id: String,
    /// Indexed as the sharded tickets' partition key is.
    #[index]
    pub tenant: String,
    /// `open` or `closed`.
    #[index]
    pub status: String,
    /// A number to sort by.
    pub score: i64,
    /// Free text.
    pub title: String,
}

/// The benchmark's baseline (`/direct/tickets...`, forwarded by the Worker from
/// `/s/direct/{shard}/...`): an insert or a get of a ticket run by the shard object itself on
/// its `Db`, as an app with one hand-placed Durable Object would, without the router, the
/// shard map or the protocol. Only for tickets whose tenant routes to that shard.
pub fn direct(db: &db4::Db, req: &ApiRequest<'_>) -> ApiResponse {
    let answer = || -> Result<ApiResponse> {
        let tickets = db.collection::<Ticket>()?;
        let parts: Vec<&str> = req.target.trim_start_matches('/').split('/').collect();
        match (req.method, parts.as_slice()) {
            (Method::Post, ["direct", "tickets"]) => {
                let t: Ticket = json_body(req.body)?;
                tickets.insert(&t)?;
                Ok(ApiResponse { status: 201, body: to_json(&t) })
            }
            (Method::Get, ["direct", "tickets", id]) => match tickets.get(*id)? {
                Some(t) => Ok(ApiResponse { status: 200, body: to_json(&t) }),
                None => Err(ApiError::Db(db4::Error::NotFound { collection: "tickets".into(), id: (*id).to_owned() })),
            },
            (Method::Post, ["direct", "one", "bulk"]) => {
                let docs: Vec<OneTicket> = json_body(req.body)?;
                db.collection::<OneTicket>()?.insert_many(&docs)?;
                Ok(ApiResponse { status: 201, body: json!({ "inserted": docs.len() }) })
            }
            (Method::Post, ["direct", "one", "query"]) => {
                let body: QueryBody = body_or_default(req.body)?;
                let one = db.collection::<OneTicket>()?;
                let f = OneTicket::fields();
                let mut q = one.query();
                if let Some(tenants) = body.tenants {
                    q = q.filter(f.tenant.in_list(tenants));
                }
                // Ties by id in the direction of the sort, as the router's merge breaks them.
                q = match body.order.as_deref() {
                    Some("-score") => q.order_by(f.score.desc()).order_by(f.id.desc()),
                    Some("score") => q.order_by(f.score.asc()).order_by(f.id.asc()),
                    None => q.order_by(f.id.asc()),
                    Some(other) => return Err(ApiError::InvalidParam(format!("order {other:?}"))),
                };
                let items = q.limit(body.limit.unwrap_or(100)).all()?;
                Ok(ApiResponse { status: 200, body: json!({ "items": to_json(&items) }) })
            }
            _ => Err(ApiError::NoRoute),
        }
    };
    answer().unwrap_or_else(|e| e.to_response())
}
