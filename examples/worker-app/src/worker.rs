//! The Cloudflare glue: the Worker routes `/t/{tenant}/...` to that tenant's Durable Object,
//! which answers with [`api::handle`] over its own SQLite storage (or [`raw`] for `/raw/...`).
//!
//! This code only runs inside workerd (natively it compiles, and would panic on the first
//! call into JavaScript); the logic it calls is tested natively.

use crate::api::{self, ApiError, ApiRequest, ApiResponse, Method};
use crate::raw;
use crate::sharded::{self, Ticket};
use db4::Db;
use db4::cloudflare::{CoordinatorServer, ShardServer, WorkerShards, serve_coordinator, serve_shard};
use serde_json::json;
use std::cell::{Cell, OnceCell};
use worker::{Context, Delay, DurableObject, Env, Request, Response, Result, State, durable_object, event};

/// The Durable Object namespace binding (see `wrangler.toml`).
pub const BINDING: &str = "TENANTS";

/// The shard objects' namespace binding.
pub const SHARDS_BINDING: &str = "SHARDS";

/// The coordinator's namespace binding.
pub const COORDINATOR_BINDING: &str = "COORDINATOR";

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
        return route_sharded(req, env).await;
    }
    let Some((tenant, _)) = api::tenant_of(url.path()) else {
        return respond(&ApiError::NoRoute.to_response());
    };
    let stub = env.durable_object(BINDING)?.id_from_name(tenant)?.get_stub()?;
    stub.fetch_with_request(req).await
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
    let router = match sharded::router(client).await {
        Ok(r) => r,
        Err(e) => return respond(&ApiError::Db(e).to_response()),
    };
    respond(&sharded::handle(&router, &ApiRequest { method, target: &target, body: &body }).await)
}

/// One shard of the sharded tickets: a Durable Object serving the shard protocol over its own
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

    async fn fetch(&self, req: Request) -> Result<Response> {
        let server = self.server.get_or_init(|| {
            Db::durable(&self.state.storage())
                .and_then(ShardServer::new)
                .map(|s| s.serve::<Ticket>())
                .map_err(|e| e.to_string())
        });
        match server {
            Ok(server) => serve_shard(server, req).await,
            Err(message) => respond(&ApiResponse::internal(message)),
        }
    }
}

/// The coordinator: keeps the shard map (ring, epoch) of each sharded collection.
#[durable_object(fetch)]
pub struct Coordinator {
    state: State,
    server: OnceCell<std::result::Result<CoordinatorServer, String>>,
}

impl DurableObject for Coordinator {
    fn new(state: State, _env: Env) -> Self {
        Self { state, server: OnceCell::new() }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let server = self.server.get_or_init(|| {
            Db::durable(&self.state.storage()).and_then(CoordinatorServer::new).map_err(|e| e.to_string())
        });
        match server {
            Ok(server) => serve_coordinator(server, req).await,
            Err(message) => respond(&ApiResponse::internal(message)),
        }
    }
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
        let resp = if target.starts_with("/raw/") {
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
