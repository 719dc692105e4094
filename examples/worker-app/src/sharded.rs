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
//! | `GET /s/stats` | each shard's documents and bytes |

use crate::api::{ApiError, ApiRequest, ApiResponse, Method};
use db4::Document;
use db4::remote::DurableRouter;
use db4::shard::ShardRouterConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A support ticket of one tenant, stored on the shard of its tenant.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "tickets")]
pub struct Ticket {
    /// Unique within its tenant.
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

/// Answers one sharded request (`target` from the root: `/s/...`).
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
                .map(|(s, st)| json!({ "shard": s.get(), "documents": st.documents, "bytes": st.bytes, "last_lsn": st.last_lsn }))
                .collect();
            Ok(ApiResponse { status: 200, body: json!({ "epoch": router.epoch(), "shards": shards }) })
        }
        (_, ["s", "tickets", ..] | ["s", "query"] | ["s", "stats"]) => Err(ApiError::MethodNotAllowed),
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

/// Opens the router of [`Ticket`]s over `client` (the map cached in the isolate after the
/// first request).
///
/// # Errors
///
/// As [`DurableRouter::open`].
pub async fn router(client: impl db4::remote::ShardClient) -> db4::Result<DurableRouter<Ticket>> {
    DurableRouter::open(client, config()).await
}
