//! The Cloudflare side of [`remote`](super): [`WorkerShards`], a [`ShardClient`] over Durable
//! Object namespaces (one object per `(collection, shard)`, found with `idFromName`, and one
//! coordinator object), and [`serve_shard`] / [`serve_coordinator`], which answer a Durable
//! Object's `fetch` with the protocol's servers.

use super::router::{BoxFuture, ShardClient};
use super::server::{CoordinatorServer, ShardServer};
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::shard::ShardId;
use std::rc::Rc;
use worker::{Env, Method, ObjectNamespace, Request, RequestInit, Response};

/// The name of the coordinator object in its namespace.
pub const COORDINATOR_NAME: &str = "db4-coordinator";

/// The object name of a shard: `<collection>/<shard, five digits>`.
pub fn shard_object_name(collection: &str, shard: ShardId) -> String {
    format!("{collection}/{:05}", shard.get())
}

/// Reaches shard objects and the coordinator through Durable Object namespace bindings.
pub struct WorkerShards {
    shards: ObjectNamespace,
    coordinator: ObjectNamespace,
    /// The coordinator answering in this isolate (the coordinator object's own alarm).
    local: Option<Rc<CoordinatorServer>>,
    cluster: String,
}

impl std::fmt::Debug for WorkerShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerShards").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

fn worker_error(what: &str, e: worker::Error) -> Error {
    Error::Backend(BackendError::new(BackendErrorKind::Other, format!("{what}: {e}")))
}

impl WorkerShards {
    /// The client over the namespace bound as `shards` (the shard objects' class) and the one
    /// bound as `coordinator` (may be the same binding: the coordinator is the object named
    /// [`COORDINATOR_NAME`]).
    ///
    /// # Errors
    ///
    /// A backend error if a binding is missing or not a Durable Object namespace.
    pub fn new(env: &Env, shards: &str, coordinator: &str) -> Result<Self> {
        Ok(Self {
            shards: env.durable_object(shards).map_err(|e| worker_error(&format!("binding {shards}"), e))?,
            coordinator: env
                .durable_object(coordinator)
                .map_err(|e| worker_error(&format!("binding {coordinator}"), e))?,
            local: None,
            cluster: format!("{shards}+{coordinator}"),
        })
    }

    /// The same client, with coordinator requests answered by `server` in this isolate
    /// instead of sent to the coordinator object: for a router the coordinator object runs
    /// itself (its alarm driving a split with
    /// [`DurableRouter::split_step`](super::DurableRouter::split_step)), which would otherwise
    /// send requests to itself.
    #[must_use]
    pub fn with_coordinator(self, server: Rc<CoordinatorServer>) -> Self {
        Self { local: Some(server), ..self }
    }
}

async fn post(ns: &ObjectNamespace, name: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>> {
    let stub =
        ns.id_from_name(name).and_then(|id| id.get_stub()).map_err(|e| worker_error(&format!("object {name}"), e))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(js_sys::Uint8Array::from(&body[..]).into()));
    let req = Request::new_with_init(&format!("https://db4.internal{path}"), &init)
        .map_err(|e| worker_error("building a request", e))?;
    let mut resp = stub.fetch_with_request(req).await.map_err(|e| worker_error(&format!("object {name}"), e))?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        return Err(worker_error(
            &format!("object {name}"),
            worker::Error::RustError(format!(
                "status {}: {}",
                resp.status_code(),
                text.chars().take(300).collect::<String>()
            )),
        ));
    }
    resp.bytes().await.map_err(|e| worker_error(&format!("object {name}'s reply"), e))
}

impl ShardClient for WorkerShards {
    fn shard<'a>(&'a self, collection: &'a str, shard: ShardId, body: Vec<u8>) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move { post(&self.shards, &shard_object_name(collection, shard), "/db4/shard", body).await })
    }

    fn coordinator(&self, body: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            match &self.local {
                Some(server) => Ok(server.handle(&body)),
                None => post(&self.coordinator, COORDINATOR_NAME, "/db4/coordinator", body).await,
            }
        })
    }

    fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A timer: unlike a storage call it leaves the isolate free to serve other requests.
    fn sleep(&self, ms: u64) -> BoxFuture<'_, ()> {
        Box::pin(worker::Delay::from(std::time::Duration::from_millis(ms)))
    }
}

/// Answers a shard object's `fetch`: the request's body is a protocol request, the response's
/// body its reply (always status 200; errors are replies).
///
/// # Errors
///
/// The runtime's error if the body cannot be read or the response built.
pub async fn serve_shard(server: &ShardServer, mut req: Request) -> worker::Result<Response> {
    let body = req.bytes().await?;
    Response::from_bytes(server.handle(&body))
}

/// Answers the coordinator object's `fetch`, as [`serve_shard`] does a shard's.
///
/// # Errors
///
/// The runtime's error if the body cannot be read or the response built.
pub async fn serve_coordinator(server: &CoordinatorServer, mut req: Request) -> worker::Result<Response> {
    let body = req.bytes().await?;
    Response::from_bytes(server.handle(&body))
}
