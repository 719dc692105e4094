//! The Cloudflare glue: the Worker routes `/t/{tenant}/...` to that tenant's Durable Object,
//! which answers with [`api::handle`] over its own SQLite storage (or [`raw`] for `/raw/...`).
//!
//! This code only runs inside workerd (natively it compiles, and would panic on the first
//! call into JavaScript); the logic it calls is tested natively.

use crate::api::{self, ApiError, ApiRequest, ApiResponse, Method};
use crate::raw;
use crate::sharded::{self, KbArticle, Ticket};
use crate::tiered;
use db4::Db;
use db4::cloudflare::{COORDINATOR_NAME, CoordinatorServer, ShardServer, WorkerShards, serve_coordinator, serve_shard};
use serde_json::json;
use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use worker::{Context, Delay, DurableObject, Env, Request, Response, Result, State, durable_object, event};

/// The Durable Object namespace binding (see `wrangler.toml`).
pub const BINDING: &str = "TENANTS";

/// The shard objects' namespace binding.
pub const SHARDS_BINDING: &str = "SHARDS";

/// The coordinator's namespace binding.
pub const COORDINATOR_BINDING: &str = "COORDINATOR";

/// The tier objects' namespace binding.
pub const TIERS_BINDING: &str = "TIERS";

/// The R2 bucket of the cold tier.
pub const COLD_BUCKET: &str = "COLD";

fn respond(r: &ApiResponse) -> Result<Response> {
    Ok(Response::from_json(&r.body)?.with_status(r.status))
}

/// The Worker: health check, then one Durable Object per tenant (`idFromName(tenant)`).
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    match forward(req, &env).await {
        Ok(resp) => Ok(resp),
        Err(e) => respond(&ApiResponse::internal(&e.to_string())),
    }
}

async fn forward(req: Request, env: &Env) -> Result<Response> {
    let url = req.url()?;
    if url.path() == "/health" {
        return respond(&ApiResponse { status: 200, body: json!({ "ok": true }) });
    }
    if sharded::is_sharded(url.path()) {
        let path = url.path();
        let to_coordinator = path == "/s/split" || path.starts_with("/s/split/") || path == "/s/rebalance";
        if let Some(tenant) = path.strip_prefix("/s/changes/").and_then(|p| p.strip_suffix("/live")) {
            return live_changes(&req, env, tenant).await;
        }
        if let Some(rest) = path.strip_prefix("/s/direct/") {
            return direct(req, env, rest).await;
        }
        if to_coordinator {
            // The coordinator owns the alarm that drives splits.
            let stub = env.durable_object(COORDINATOR_BINDING)?.id_from_name(COORDINATOR_NAME)?.get_stub()?;
            return stub.fetch_with_request(req).await;
        }
        return route_sharded(req, env).await;
    }
    if let Some((name, _)) = tiered::name_of(url.path()) {
        let stub = env.durable_object(TIERS_BINDING)?.id_from_name(name)?.get_stub()?;
        return stub.fetch_with_request(req).await;
    }
    let Some((tenant, _)) = api::tenant_of(url.path()) else {
        return respond(&ApiError::NoRoute.to_response());
    };
    let stub = env.durable_object(BINDING)?.id_from_name(tenant)?.get_stub()?;
    stub.fetch_with_request(req).await
}

/// How long one live stream response lasts by default, and at most (the client reconnects
/// with `Last-Event-ID` after it ends).
const LIVE_DEFAULT_MS: f64 = 25_000.0;
const LIVE_MAX_MS: f64 = 60_000.0;
/// The wait between polls of the shard when the stream is caught up.
const LIVE_POLL_MS: u64 = 50;
/// A comment line after this long without an event, so proxies keep the connection.
const LIVE_KEEPALIVE_MS: f64 = 10_000.0;

struct Live {
    router: db4::cloudflare::DurableRouter<Ticket>,
    tenant: String,
    position: Option<db4::cloudflare::StreamPosition>,
    deadline: f64,
    last_sent: f64,
    started: bool,
    done: bool,
}

/// `GET /s/changes/{tenant}/live`: the tenant's change stream as server-sent events, from
/// `Last-Event-ID` (or `?after=`), for `?for_ms=` (default 25 s, at most 60 s). Each event is
/// `id: <shard>:<lsn>`, `event: change`, `data: <the change as JSON>`; a failure ends the
/// response with `event: error`. Polls the tenant's shard object every 50 ms when caught up.
async fn live_changes(req: &Request, env: &Env, tenant: &str) -> Result<Response> {
    let url = req.url()?;
    let target = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let tenant = match api::percent_decode(tenant, false) {
        Ok(t) if !t.is_empty() => t,
        _ => return respond(&ApiError::InvalidParam(format!("tenant {tenant:?}")).to_response()),
    };
    let header = req.headers().get("last-event-id")?;
    let from = header.or_else(|| sharded::query_value(&target, "after"));
    let position = match sharded::stream_position(from.as_deref()) {
        Ok(p) => p,
        Err(e) => return respond(&e.to_response()),
    };
    let for_ms = match sharded::query_value(&target, "for_ms") {
        None => LIVE_DEFAULT_MS,
        Some(v) => match v.parse::<f64>() {
            Ok(ms) if ms.is_finite() && ms > 0.0 => ms.min(LIVE_MAX_MS),
            _ => return respond(&ApiError::InvalidParam(format!("for_ms {v:?}")).to_response()),
        },
    };
    let client = match WorkerShards::new(env, SHARDS_BINDING, COORDINATOR_BINDING) {
        Ok(c) => c,
        Err(e) => return respond(&ApiResponse::internal(&e.to_string())),
    };
    let router = match sharded::router(client).await {
        Ok(r) => r,
        Err(e) => return respond(&ApiError::Db(e).to_response()),
    };
    let now = worker::Date::now().as_millis() as f64;
    let live = Live { router, tenant, position, deadline: now + for_ms, last_sent: now, started: false, done: false };
    let events = futures_util::stream::unfold(live, |mut live| async move {
        if live.done {
            return None;
        }
        if !live.started {
            // At once, so the client knows the stream is open (and from where).
            live.started = true;
            let from = live.position.map_or_else(|| "the beginning".to_owned(), |p| p.to_string());
            return Some((Ok::<Vec<u8>, worker::Error>(format!(": streaming from {from}\n\n").into_bytes()), live));
        }
        loop {
            let now = worker::Date::now().as_millis() as f64;
            if now >= live.deadline {
                return None;
            }
            match live.router.stream(&live.tenant, live.position, 100).await {
                Ok(batch) => {
                    live.position = Some(batch.position);
                    if !batch.events.is_empty() {
                        let mut text = String::new();
                        for e in &batch.events {
                            let data = sharded::event_json(batch.position.shard, e);
                            text.push_str(&format!(
                                "id: {}:{}\nevent: change\ndata: {data}\n\n",
                                batch.position.shard.get(),
                                e.lsn
                            ));
                        }
                        live.last_sent = now;
                        return Some((Ok(text.into_bytes()), live));
                    }
                    if now - live.last_sent >= LIVE_KEEPALIVE_MS {
                        live.last_sent = now;
                        return Some((Ok(b": keep-alive\n\n".to_vec()), live));
                    }
                    if batch.caught_up {
                        Delay::from(std::time::Duration::from_millis(LIVE_POLL_MS)).await;
                    }
                }
                Err(e) => {
                    live.done = true;
                    let data = json!({ "error": e.to_string() });
                    return Some((Ok(format!("event: error\ndata: {data}\n\n").into_bytes()), live));
                }
            }
        }
    });
    let headers = worker::Headers::new();
    headers.set("content-type", "text/event-stream")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::from_stream(events)?.with_headers(headers))
}

/// The benchmark's baseline: `/s/direct/{shard}/tickets...` sent straight to that shard
/// object as `/direct/tickets...` (see [`sharded::direct`]).
async fn direct(mut req: Request, env: &Env, rest: &str) -> Result<Response> {
    let Some((shard, path)) = rest.split_once('/') else { return respond(&ApiError::NoRoute.to_response()) };
    let Ok(shard) = shard.parse::<u32>() else { return respond(&ApiError::NoRoute.to_response()) };
    let name = db4::cloudflare::shard_object_name("tickets", db4::shard::ShardId::new(shard));
    let stub = env.durable_object(SHARDS_BINDING)?.id_from_name(&name)?.get_stub()?;
    let mut init = worker::RequestInit::new();
    init.with_method(req.method());
    if matches!(req.method(), worker::Method::Post | worker::Method::Put) {
        let body = req.bytes().await?;
        init.with_body(Some(worker::js_sys::Uint8Array::from(&body[..]).into()));
    }
    let inner = Request::new_with_init(&format!("https://shard.internal/direct/{path}"), &init)?;
    stub.fetch_with_request(inner).await
}

/// The sharded routes: a [`db4::cloudflare::DurableRouter`] over the shard objects (its shard
/// map cached in the isolate after the first request).
async fn route_sharded(mut req: Request, env: &Env) -> Result<Response> {
    let url = req.url()?;
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let method = Method::parse(req.method().as_ref());
    let declared = req.headers().get("content-length")?.and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > api::MAX_BODY_BYTES) {
        return respond(&ApiError::BodyTooLarge(n).to_response());
    }
    let body = if method.has_body() { req.bytes().await? } else { Vec::new() };
    let client = match WorkerShards::new(env, SHARDS_BINDING, COORDINATOR_BINDING) {
        Ok(c) => c,
        Err(e) => return respond(&ApiResponse::internal(&e.to_string())),
    };
    respond(&sharded::route(client, &ApiRequest { method, target: &target, body: &body }).await)
}

/// One shard of the sharded collections (tickets, knowledge base): a Durable Object serving the shard protocol over its own
/// SQLite storage.
#[durable_object(fetch)]
pub struct ShardObject {
    state: State,
    server: OnceCell<std::result::Result<ShardServer, String>>,
}

impl DurableObject for ShardObject {
    fn new(state: State, _env: Env) -> Self {
        Self { state, server: OnceCell::new() }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let server = self.server.get_or_init(|| {
            // Before images: a delete's image tells its tenant, so tenants' change streams
            // carry their deletes.
            Db::durable_with(&self.state.storage(), db4::DbOptions::default().before_images(true))
                .and_then(ShardServer::new)
                .map(|s| s.serve::<Ticket>().serve::<KbArticle>())
                .map_err(|e| e.to_string())
        });
        let server = match server {
            Ok(server) => server,
            Err(message) => return respond(&ApiResponse::internal(message)),
        };
        let url = req.url()?;
        if url.path().starts_with("/direct/") {
            let method = Method::parse(req.method().as_ref());
            let body = if method.has_body() { req.bytes().await? } else { Vec::new() };
            return respond(&sharded::direct(server.db(), &ApiRequest { method, target: url.path(), body: &body }));
        }
        serve_shard(server, req).await
    }
}

/// The coordinator: keeps the shard map (ring, epoch, split in progress) of each sharded
/// collection, and drives splits from its alarm, one recorded step per alarm, so a split
/// resumes after an eviction or a crash (the alarm is stored with the object; its first
/// request after a restart re-arms it too, should a split be under way without one).
#[durable_object(alarm)]
pub struct Coordinator {
    state: State,
    env: Env,
    server: OnceCell<std::result::Result<Rc<CoordinatorServer>, String>>,
    /// Whether this instance has checked for a split left without an alarm.
    checked: Cell<bool>,
}

/// The coordinator's storage keys (its key-value API, beside the SQL the server uses).
const PACE_KEY: &str = "app/split-pace-ms";
const ERROR_KEY: &str = "app/split-last-error";

/// Milliseconds before an alarm retries a step that failed.
const RETRY_MS: i64 = 1000;

impl Coordinator {
    fn server(&self) -> std::result::Result<&Rc<CoordinatorServer>, String> {
        self.server
            .get_or_init(|| {
                Db::durable(&self.state.storage())
                    .and_then(CoordinatorServer::new)
                    .map(Rc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A router of tickets whose coordinator requests this object answers itself.
    async fn driver(&self) -> db4::Result<db4::cloudflare::DurableRouter<Ticket>> {
        let server = self.server().map_err(|m| backend_error(&m))?;
        let client =
            WorkerShards::new(&self.env, SHARDS_BINDING, COORDINATOR_BINDING)?.with_coordinator(Rc::clone(server));
        sharded::router(client).await
    }

    /// Re-arms the alarm if a split is under way without one (first request after a restart).
    async fn check_split(&self) -> Result<()> {
        if self.checked.replace(true) {
            return Ok(());
        }
        let Ok(router) = self.driver().await else { return Ok(()) };
        if router.map().plan.is_some() && self.state.storage().get_alarm().await?.is_none() {
            self.state.storage().set_alarm(0).await?;
        }
        Ok(())
    }

    /// The app's split routes (`/s/split...`, `/s/rebalance`), forwarded here by the Worker.
    async fn split_route(&self, method: Method, path: &str, body: &[u8]) -> std::result::Result<ApiResponse, ApiError> {
        let storage = self.state.storage();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let router = self.driver().await?;
        let start = |pace_ms: u32| async move {
            storage.put(PACE_KEY, pace_ms).await?;
            storage.delete(ERROR_KEY).await?;
            storage.set_alarm(0).await
        };
        match (method, parts.as_slice()) {
            (Method::Get, ["s", "split"]) => {
                router.refresh().await?;
                let mut status = sharded::split_status(&router);
                let alarm = self.state.storage().get_alarm().await.map_err(internal)?;
                let error: Option<String> = self.state.storage().get(ERROR_KEY).await.map_err(internal)?;
                status["alarm"] = json!(alarm);
                status["last_error"] = json!(error);
                Ok(ApiResponse { status: 200, body: status })
            }
            (Method::Post, ["s", "split", shard]) => {
                let shard: u32 = shard.parse().map_err(|_| ApiError::InvalidParam(format!("shard {shard:?}")))?;
                let body: sharded::SplitBody = sharded::body_or_default(body)?;
                let new_shard = router.begin_split(db4::shard::ShardId::new(shard)).await?;
                start(body.pace_ms).await.map_err(internal)?;
                Ok(ApiResponse { status: 202, body: json!({ "source": shard, "new_shard": new_shard.get() }) })
            }
            (Method::Post, ["s", "rebalance"]) => {
                let body: sharded::RebalanceBody = sharded::body_or_default(body)?;
                router.refresh().await?;
                if router.map().plan.is_some() {
                    return Ok(ApiResponse {
                        status: 200,
                        body: json!({ "splitting": sharded::split_status(&router)["split"] }),
                    });
                }
                let hot = router.hot_shards(&body.trigger()).await?;
                let Some((shard, stats)) = hot.first() else {
                    return Ok(ApiResponse { status: 200, body: json!({ "hot": [] }) });
                };
                let new_shard = router.begin_split(*shard).await?;
                start(body.pace_ms).await.map_err(internal)?;
                Ok(ApiResponse {
                    status: 202,
                    body: json!({
                        "source": shard.get(),
                        "new_shard": new_shard.get(),
                        "ops_per_sec": stats.ops_per_sec,
                        "database_bytes": stats.database_bytes,
                        "hot": hot.iter().map(|(s, _)| s.get()).collect::<Vec<_>>(),
                    }),
                })
            }
            _ => Err(ApiError::NoRoute),
        }
    }
}

fn backend_error(message: &str) -> db4::Error {
    db4::BackendError::new(db4::BackendErrorKind::Other, message).into()
}

fn internal(e: worker::Error) -> ApiError {
    ApiError::Db(backend_error(&format!("the coordinator's storage: {e}")))
}

impl DurableObject for Coordinator {
    fn new(state: State, env: Env) -> Self {
        Self { state, env, server: OnceCell::new(), checked: Cell::new(false) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let server = match self.server() {
            Ok(s) => Rc::clone(s),
            Err(message) => return respond(&ApiResponse::internal(&message)),
        };
        let url = req.url()?;
        if url.path() == "/db4/coordinator" {
            let resp = serve_coordinator(&server, req).await;
            self.check_split().await?;
            return resp;
        }
        self.check_split().await?;
        let method = Method::parse(req.method().as_ref());
        let body = if method.has_body() { req.bytes().await? } else { Vec::new() };
        match self.split_route(method, url.path(), &body).await {
            Ok(r) => respond(&r),
            Err(e) => respond(&e.to_response()),
        }
    }

    /// One step of the split under way; re-armed until the split is done.
    async fn alarm(&self) -> Result<Response> {
        let storage = self.state.storage();
        let step = match self.driver().await {
            Ok(router) => router.split_step().await,
            Err(e) => Err(e),
        };
        match step {
            Ok(Some(_)) => {
                let pace: Option<u32> = storage.get(PACE_KEY).await?;
                storage.set_alarm(i64::from(pace.unwrap_or(0))).await?;
            }
            Ok(None) => storage.delete(ERROR_KEY).await.map(drop)?,
            Err(e) => {
                worker::console_error!("db4 split step failed (retrying in {RETRY_MS} ms): {e}");
                storage.put(ERROR_KEY, e.to_string()).await?;
                storage.set_alarm(RETRY_MS).await?;
            }
        }
        Response::ok("")
    }
}

/// `POST /t/{tenant}/twins`: inserts an [`ArticleTwin`](crate::model::ArticleTwin) and
/// answers the rows written it was billed (`{"rows_written": n}`).
fn twin_insert(db: &Db, tenant: &str, body: &[u8]) -> ApiResponse {
    let run = || -> std::result::Result<ApiResponse, ApiError> {
        let mut doc: crate::model::ArticleTwin =
            serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
        doc.tenant_id = tenant.to_owned();
        let twins = db.collection::<crate::model::ArticleTwin>()?;
        let before = db.rows_written().unwrap_or(0);
        twins.insert(&doc)?;
        let rows = db.rows_written().unwrap_or(0) - before;
        Ok(ApiResponse { status: 201, body: json!({ "rows_written": rows }) })
    };
    run().unwrap_or_else(|e| e.to_response())
}

/// One tenant's store: a Durable Object whose SQLite storage holds the tenant's documents.
#[durable_object(fetch)]
pub struct TenantStore {
    state: State,
    /// Opened on the first request; an error is kept and reported on each request.
    db: OnceCell<std::result::Result<Db, String>>,
    /// Whether the raw routes' table exists.
    raw_schema: Cell<bool>,
}

impl TenantStore {
    fn db(&self) -> std::result::Result<&Db, &str> {
        self.db
            .get_or_init(|| Db::durable_with(&self.state.storage(), api::db_options()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }
}

impl DurableObject for TenantStore {
    fn new(state: State, _env: Env) -> Self {
        Self { state, db: OnceCell::new(), raw_schema: Cell::new(false) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let url = req.url()?;
        let Some((tenant, rest)) = api::tenant_of(url.path()) else {
            return respond(&ApiError::NoRoute.to_response());
        };
        let tenant = tenant.to_owned();
        let mut target = rest.to_owned();
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let method = Method::parse(req.method().as_ref());
        // Refuse an announced oversized body before buffering it: the isolate's memory is small.
        let declared = req.headers().get("content-length")?.and_then(|v| v.parse::<usize>().ok());
        if let Some(n) = declared.filter(|&n| n > api::MAX_BODY_BYTES) {
            return respond(&ApiError::BodyTooLarge(n).to_response());
        }
        let body = if method.has_body() { req.bytes().await? } else { Vec::new() };
        let api_req = ApiRequest { method, target: &target, body: &body };
        let resp = if target == "/rows-written" {
            // What this object's db4 statements were billed so far (the benchmark's figure).
            match self.db() {
                Ok(db) => ApiResponse { status: 200, body: json!({ "rows_written": db.rows_written() }) },
                Err(message) => ApiResponse::internal(message),
            }
        } else if target == "/twins" && method == Method::Post {
            // The billing twin: one insert with the raw table's layout, and what it cost.
            match self.db() {
                Ok(db) => twin_insert(db, &tenant, &body),
                Err(message) => ApiResponse::internal(message),
            }
        } else if target.starts_with("/raw/") {
            raw::handle(&self.state.storage(), &api_req, &tenant, &self.raw_schema)
        } else {
            match self.db() {
                // A long poll of the change log waits on a timer, which (unlike storage calls)
                // leaves the Durable Object free to serve other requests, the writes among them.
                Ok(db) => api::handle_waiting(db, &tenant, &api_req, Delay::from).await,
                Err(message) => ApiResponse::internal(message),
            }
        };
        respond(&resp)
    }
}

/// A tier object: readings whose old documents compact from its SQLite storage to R2
/// (`tier/{name}/...` in the `COLD` bucket), read back through a [`StagedStore`] over an
/// [`R2Store`], with a warm tier in the isolate. Compaction runs from the object's alarm:
/// `POST /compact` arms it now, each compaction re-arms it for [`COMPACT_EVERY_MS`], and a
/// failure retries in [`RETRY_MS`]. A compaction is one transaction and its uploads are
/// recorded in it, so an alarm cut short by an eviction or a crash is finished by the next
/// (the first request after a restart re-arms it if uploads are pending without one).
///
/// [`StagedStore`]: db4::tier::StagedStore
/// [`R2Store`]: db4::cloudflare::R2Store
#[durable_object(alarm)]
pub struct TierObject {
    state: State,
    env: Env,
    tier: OnceCell<std::result::Result<(Db, db4::tier::StagedStore<db4::cloudflare::R2Store>), String>>,
    checked: Cell<bool>,
}

/// The tier object's storage keys (its key-value API).
const TIER_NAME_KEY: &str = "app/tier-name";
const TIER_REPORT_KEY: &str = "app/tier-last-compaction";
const TIER_ERROR_KEY: &str = "app/tier-last-error";
const TIER_COUNT_KEY: &str = "app/tier-compactions";

/// Milliseconds between compactions once the first has run.
pub const COMPACT_EVERY_MS: i64 = 3_600_000;

/// The bytes of this isolate's wasm memory (what the module holds, whatever it is used for).
fn wasm_memory_bytes() -> f64 {
    let memory = wasm_bindgen::memory();
    worker::js_sys::Reflect::get(&memory, &"buffer".into())
        .and_then(|b| worker::js_sys::Reflect::get(&b, &"byteLength".into()))
        .ok()
        .and_then(|n| n.as_f64())
        .unwrap_or(0.0)
}

impl TierObject {
    /// The object's database and staged store; `name` (from the request, else stored) is its
    /// R2 prefix.
    async fn tier(
        &self,
        name: Option<&str>,
    ) -> std::result::Result<&(Db, db4::tier::StagedStore<db4::cloudflare::R2Store>), String> {
        if let Some(t) = self.tier.get() {
            return t.as_ref().map_err(Clone::clone);
        }
        let storage = self.state.storage();
        let stored: Option<String> = storage.get(TIER_NAME_KEY).await.map_err(|e| e.to_string())?;
        let name = match (stored, name) {
            (Some(stored), _) => stored,
            (None, Some(name)) => {
                storage.put(TIER_NAME_KEY, name).await.map_err(|e| e.to_string())?;
                name.to_owned()
            }
            (None, None) => return Err("the tier object has no name yet".to_owned()),
        };
        let opened = db4::cloudflare::R2Store::from_env(&self.env, COLD_BUCKET)
            .map(db4::cloudflare::R2Store::with_edge_cache)
            .and_then(|r2| db4::tier::StagedStore::new(r2, &tiered::prefix_for(&name)))
            .map(|s| s.with_cache_bytes(tiered::CACHE_BYTES))
            .and_then(|staged| {
                let options = db4::DbOptions::default().tiers(tiered::tier_config(&staged));
                Db::durable_with(&self.state.storage(), options).map(|db| (db, staged))
            })
            .map_err(|e| e.to_string());
        self.tier.get_or_init(|| opened).as_ref().map_err(Clone::clone)
    }

    /// Re-arms the alarm if uploads are pending without one (first request after a restart).
    async fn check_pending(&self, db: &Db, staged: &db4::tier::StagedStore<db4::cloudflare::R2Store>) -> Result<()> {
        if self.checked.replace(true) {
            return Ok(());
        }
        let pending = staged.pending(db).map(|p| !p.is_empty()).unwrap_or(false);
        if pending && self.state.storage().get_alarm().await?.is_none() {
            self.state.storage().set_alarm(0).await?;
        }
        Ok(())
    }
}

impl DurableObject for TierObject {
    fn new(state: State, env: Env) -> Self {
        Self { state, env, tier: OnceCell::new(), checked: Cell::new(false) }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let url = req.url()?;
        let Some((name, rest)) = tiered::name_of(url.path()) else {
            return respond(&ApiError::NoRoute.to_response());
        };
        let (db, staged) = match self.tier(Some(name)).await {
            Ok(t) => t,
            Err(message) => return respond(&ApiResponse::internal(&message)),
        };
        self.check_pending(db, staged).await?;
        let method = Method::parse(req.method().as_ref());
        let storage = self.state.storage();
        match (method, rest.trim_end_matches('/')) {
            (Method::Post, "compact") => {
                storage.delete(TIER_ERROR_KEY).await?;
                storage.set_alarm(0).await?;
                return respond(&ApiResponse { status: 202, body: json!({ "scheduled": true }) });
            }
            (Method::Get, "status") => {
                let mut status = match tiered::status(db, staged) {
                    Ok(s) => s,
                    Err(e) => return respond(&ApiError::Db(e).to_response()),
                };
                let report: Option<serde_json::Value> = storage.get(TIER_REPORT_KEY).await?;
                let error: Option<String> = storage.get(TIER_ERROR_KEY).await?;
                status["alarm"] = json!(storage.get_alarm().await?);
                status["last_compaction"] = json!(report);
                status["last_error"] = json!(error);
                let (hits, misses) = staged.remote().edge_stats();
                status["edge_cache"] = json!({ "hits": hits, "misses": misses });
                status["compactions"] = json!(storage.get::<u64>(TIER_COUNT_KEY).await?.unwrap_or(0));
                status["wasm_memory_bytes"] = json!(wasm_memory_bytes());
                return respond(&ApiResponse { status: 200, body: status });
            }
            _ => {}
        }
        let mut target = format!("/{rest}");
        if let Some(q) = url.query() {
            target.push('?');
            target.push_str(q);
        }
        let body = if method.has_body() { req.bytes().await? } else { Vec::new() };
        let test_routes = self.env.var("DB4_TEST_ROUTES").is_ok();
        let api_req = ApiRequest { method, target: &target, body: &body };
        respond(&tiered::route(db, staged, &api_req, test_routes).await)
    }

    /// A compaction by the policy, with its uploads (and any left by an earlier one).
    async fn alarm(&self) -> Result<Response> {
        let storage = self.state.storage();
        let outcome = match self.tier(None).await {
            Ok((db, staged)) => staged.compact(db).await.map_err(|e| e.to_string()),
            Err(message) => Err(message),
        };
        match outcome {
            Ok(report) => {
                storage.put(TIER_REPORT_KEY, tiered::report_json(&report)).await?;
                let done = storage.get::<u64>(TIER_COUNT_KEY).await?.unwrap_or(0);
                storage.put(TIER_COUNT_KEY, done + 1).await?;
                storage.delete(TIER_ERROR_KEY).await?;
                storage.set_alarm(COMPACT_EVERY_MS).await?;
            }
            Err(e) => {
                worker::console_error!("db4 compaction failed (retrying in {RETRY_MS} ms): {e}");
                storage.put(TIER_ERROR_KEY, e).await?;
                storage.set_alarm(RETRY_MS).await?;
            }
        }
        Response::ok("")
    }
}
