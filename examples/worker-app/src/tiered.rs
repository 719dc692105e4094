//! The tiered half of the app: readings in a Durable Object whose old documents compact to a
//! cold tier in R2 (natively: a [`MemoryStore`](db4::tier::MemoryStore) through the same
//! [`StagedStore`]), with a warm tier in the isolate. The routes are plain async functions
//! over a [`Db`] and its [`StagedStore`], so the conformance suite runs them natively and,
//! on Cloudflare, the `TierObject` (`worker.rs`) runs them over `R2Store`.
//!
//! Every route's path starts with `/tier/{name}` (one object per name; its R2 objects under
//! `tier/{name}/`):
//!
//! | route | what |
//! |---|---|
//! | `POST /readings/bulk` | `{"items": [Reading]}` (201, `{"inserted": n}`) |
//! | `GET /readings/{id}` | read, hot → warm → cold (404 if none) |
//! | `PUT /readings/{id}` | replace (a cold one comes back hot) |
//! | `DELETE /readings/{id}` | delete (`{"deleted": bool}`) |
//! | `GET /readings` | every reading, hot and cold, by id: `{"count", "ids", "sum_n"}` |
//! | `POST /compact` | compact by the policy (readings whose `at` is over [`COLD_AGE_MS`] old) and upload; on Cloudflare from the object's alarm (202, then watch `/status`) |
//! | `POST /compact/stage` | compact without uploading: the new segments stay pending in the hot database |
//! | `POST /flush` | upload what is pending |
//! | `GET /status` | the tiers' figures: hot, warm, cold, pending objects, fetched bytes |
//! | `GET /r2/list`, `GET /r2/object?key=`, `POST /r2/damage?key=`, `DELETE /r2/object?key=` | test routes over the object's own cold objects (hex bytes; flip a byte; remove), only where test routes are enabled |
//! | `POST /forget` | test route: drop the fetched cold bytes kept in memory |

use crate::api::{ApiError, ApiRequest, ApiResponse, Method};
use db4::Document;
use db4::prelude::*;
use db4::tier::{AsyncColdStore, StagedStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The warm tier's budget in each tier object.
pub const WARM_BYTES: usize = 256 << 10;
/// The budget of fetched cold bytes kept between reads.
pub const CACHE_BYTES: usize = 1 << 20;
/// Readings older than this (by `at`, milliseconds since the epoch) compact to the cold tier.
pub const COLD_AGE_MS: i64 = 60_000;

/// A reading: the tiered collection.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "readings")]
pub struct Reading {
    /// The reading's id.
    #[id]
    pub id: String,
    /// When it was taken (Unix milliseconds): the compaction policy's age field.
    #[range_index]
    pub at: i64,
    /// Its text.
    pub body: String,
    /// A number the tests check.
    pub n: i64,
}

/// The tier configuration of a tier object over `staged`.
pub fn tier_config<S: AsyncColdStore + Send + Sync + 'static>(staged: &StagedStore<S>) -> TierConfig {
    TierConfig {
        warm_bytes: WARM_BYTES,
        cold: Some(Box::new(staged.clone())),
        // The warm tier, once over its budget, is brought down to 80 % of it at once.
        policy: CompactionPolicy {
            older_than: Some(("at", COLD_AGE_MS)),
            memory_pressure: Some(0.8),
            ..Default::default()
        },
    }
}

/// `(name, rest)` of a `/tier/{name}/...` path, the name checked (ASCII letters, digits and
/// `-`, at most 64: it is part of the object's R2 prefix).
pub fn name_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/tier/")?;
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then_some((name, rest))
}

/// The R2 prefix of the tier object `name`.
pub fn prefix_for(name: &str) -> String {
    format!("tier/{name}/")
}

type Result<T = ApiResponse> = std::result::Result<T, ApiError>;

#[derive(Deserialize)]
struct Bulk {
    items: Vec<Reading>,
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn query_param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn ok(body: Value) -> ApiResponse {
    ApiResponse { status: 200, body }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tiers' figures of `db` and `staged`, as `GET /status` answers them.
///
/// # Errors
///
/// A database failure.
pub fn status<S: AsyncColdStore>(db: &Db, staged: &StagedStore<S>) -> db4::Result<Value> {
    let t = db.tier_stats()?;
    let s = staged.stats();
    let pending: Vec<Value> =
        staged.pending(db)?.into_iter().map(|o| json!({ "key": o.key, "size": o.size })).collect();
    Ok(json!({
        "hot": { "documents": t.hot.documents, "bytes": t.hot.bytes },
        "warm": {
            "entries": t.warm.entries, "bytes": t.warm.bytes, "capacity": t.warm.capacity,
            "hits": t.warm.hits, "misses": t.warm.misses, "evictions": t.warm.evictions,
        },
        "cold": {
            "segments": t.cold.segments, "documents": t.cold.documents, "bytes": t.cold.bytes,
            "reads": t.cold.reads, "hits": t.cold.hits,
        },
        "pending": pending,
        "fetched": {
            "cached_bytes": s.cached_bytes, "budget_bytes": s.budget_bytes, "fetches": s.fetches, "hits": s.hits,
        },
    }))
}

/// A compaction report as JSON.
pub fn report_json(r: &db4::tier::CompactionReport) -> Value {
    json!({ "moved": r.moved, "segments": r.segments, "bytes": r.bytes, "dropped": r.dropped, "orphans": r.orphans })
}

/// Answers one request under `/tier/{name}` (`rest` is the path after it, with the query).
/// `test_routes` enables the `/r2/...` routes. Never panics.
pub async fn route<S: AsyncColdStore + Send + Sync + 'static>(
    db: &Db,
    staged: &StagedStore<S>,
    req: &ApiRequest<'_>,
    test_routes: bool,
) -> ApiResponse {
    match dispatch(db, staged, req, test_routes).await {
        Ok(r) => r,
        Err(e) => e.to_response(),
    }
}

async fn dispatch<S: AsyncColdStore + Send + Sync + 'static>(
    db: &Db,
    staged: &StagedStore<S>,
    req: &ApiRequest<'_>,
    test_routes: bool,
) -> Result {
    let path = req.target.split_once('?').map_or(req.target, |(p, _)| p);
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let readings = db.collection::<Reading>()?;
    match (req.method, parts.as_slice()) {
        (Method::Post, ["readings", "bulk"]) => {
            let bulk: Bulk = json_body(req.body)?;
            // Ids already cold are refused as duplicates too: insert checks every tier.
            staged.read(|| readings.insert_many(&bulk.items)).await?;
            Ok(ApiResponse { status: 201, body: json!({ "inserted": bulk.items.len() }) })
        }
        (Method::Get, ["readings", id]) => match staged.read(|| readings.get(*id)).await? {
            Some(r) => Ok(ok(json!(r))),
            None => Err(ApiError::Db(db4::Error::NotFound { collection: "readings".into(), id: (*id).into() })),
        },
        (Method::Put, ["readings", id]) => {
            let r: Reading = json_body(req.body)?;
            if r.id != *id {
                return Err(ApiError::InvalidValue { field: "id", reason: "differs from the path".into() });
            }
            staged.read(|| readings.update(&r)).await?;
            Ok(ok(json!(r)))
        }
        (Method::Delete, ["readings", id]) => {
            let deleted = staged.read(|| readings.delete(*id)).await?;
            Ok(ok(json!({ "deleted": deleted })))
        }
        (Method::Get, ["readings"]) => {
            let f = Reading::fields();
            let all = staged.read(|| readings.query().include_cold(true).order_by(f.id.asc()).all()).await?;
            let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
            let sum: i64 = all.iter().map(|r| r.n).sum();
            Ok(ok(json!({ "count": all.len(), "ids": ids, "sum_n": sum })))
        }
        (Method::Post, ["compact"]) => Ok(ok(report_json(&staged.compact(db).await?))),
        (Method::Post, ["compact", "stage"]) => Ok(ok(report_json(&staged.read(|| db.compact()).await?))),
        (Method::Post, ["flush"]) => {
            let r = staged.flush(db).await?;
            Ok(ok(json!({ "uploaded": r.uploaded, "bytes": r.bytes, "deleted": r.deleted })))
        }
        (Method::Get, ["status"]) => Ok(ok(status(db, staged)?)),
        (_, ["r2", ..] | ["forget"]) if !test_routes => Err(ApiError::NoRoute),
        (Method::Post, ["forget"]) => {
            staged.clear();
            Ok(ok(json!({ "cleared": true })))
        }
        (Method::Get, ["r2", "list"]) => {
            let objects = staged.remote().list(staged.prefix()).await?;
            let listed: Vec<Value> = objects
                .iter()
                .map(|o| json!({ "key": o.key.strip_prefix(staged.prefix()).unwrap_or(&o.key), "size": o.size }))
                .collect();
            Ok(ok(json!({ "objects": listed })))
        }
        (method, ["r2", "object"] | ["r2", "damage"]) => {
            let key = query_param(req.target, "key").ok_or_else(|| ApiError::InvalidParam("key is required".into()))?;
            let key_ok = !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
                && key.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
            if !key_ok {
                return Err(ApiError::InvalidParam(format!("invalid key {key:?}")));
            }
            let full = format!("{}{key}", staged.prefix());
            let remote = staged.remote();
            match (method, parts[1]) {
                (Method::Get, "object") => match remote.get_range(&full, 0..u64::MAX).await? {
                    Some(bytes) => Ok(ok(json!({ "key": key, "hex": hex(&bytes) }))),
                    None => Err(ApiError::Db(db4::Error::NotFound { collection: "r2".into(), id: key.into() })),
                },
                (Method::Delete, "object") => {
                    remote.delete(&full).await?;
                    staged.evict(key);
                    Ok(ok(json!({ "deleted": key })))
                }
                (Method::Post, "damage") => {
                    let Some(mut bytes) = remote.get_range(&full, 0..u64::MAX).await? else {
                        return Err(ApiError::Db(db4::Error::NotFound { collection: "r2".into(), id: key.into() }));
                    };
                    let mid = bytes.len() / 2;
                    if let Some(b) = bytes.get_mut(mid) {
                        *b ^= 0x40;
                    }
                    remote.delete(&full).await?;
                    remote.put_new(&full, bytes).await?;
                    staged.evict(key);
                    Ok(ok(json!({ "damaged": key, "at": mid })))
                }
                _ => Err(ApiError::MethodNotAllowed),
            }
        }
        _ => Err(ApiError::NoRoute),
    }
}
