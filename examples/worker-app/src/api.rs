//! The HTTP API as plain Rust over a db4 [`Db`]: route → db4 calls → typed result or error →
//! status and JSON body.
//!
//! Nothing here touches JavaScript, so the same functions serve the Durable Object (over
//! `Db::durable`) and the native conformance tests (over `Db::open_in_memory`). Nothing here
//! panics on any request: a panic inside a Durable Object leaves the request hanging.
//!
//! # Player queries
//!
//! `POST /players/count` and `POST /players/find` take `{"filters": [program, ...]}`: filters
//! that must all hold (one `Query::filter` call each), each written as a program in postfix
//! notation, a JSON array of steps run on a stack:
//!
//! - `[field, op, args...]` pushes a condition on `name`, `team` (text) or `score`, `rank`
//!   (integers), all optional: `["score", "lt", 7]`, `["name", "eq", null]`,
//!   `["score", "between", 1, 5]`, `["team", "in", ["red", null]]`, `["name", "starts_with",
//!   "b"]`, `["rank", "is_none"]`; ops `eq ne gt gte lt lte between in starts_with is_none
//!   is_some`;
//! - `["!"]` negates the top filter;
//! - `["&", n]` and `["|", n]` replace the top `n` filters with `Filter::all` / `Filter::any` of
//!   them (`n` may be 0).
//!
//! A program must leave exactly one filter. Postfix keeps the body flat, so a filter of any
//! depth can be sent (nested JSON is refused past 128 levels) and parsing never recurses.
//! Queries db4 refuses (past a statement limit, say) are answered 400 `invalid_query`, like a
//! malformed program.
//!
//! # Ranges
//!
//! `GET /articles/range` pages through articles in the order of an index with db4's keyset
//! cursors (`{"items", "next", "prev", "has_more"}`; the parameters are on `range_articles`): `after=<next>`
//! continues, `before=<prev>` goes back, and rows written between pages move no other row.
//!
//! `PUT /scores/{id}` `{"game": "chess", "score": 1500}`, `DELETE /scores/{id}` and
//! `GET /scores?prefix=<game>&gt=&gte=&lt=&lte=&desc=1&limit=&after=&before=` do the same over a
//! standalone [`RangeIndex`](db4::range::RangeIndex) (no document type): game, then best score
//! first, ties by id descending (the parameters are on `range_scores`).
//!
//! # The change log
//!
//! `GET /changes?since=&limit=&wait_ms=` pages through the tenant's change log (every
//! committed write, written by db4 in the write's own transaction) as Debezium-shaped
//! envelopes; `wait_ms` makes it a long poll ([`handle_waiting`]). Named consumers keep their
//! position in the database: `POST /changes/consumers/{name}/poll?max=` answers the events
//! after the acknowledged position, `POST /changes/consumers/{name}/ack` `{"lsn": n}` moves
//! it. `POST /changes/truncate` `{"before": n}` drops old events.

use crate::model::evolution::{JobRetyped, JobV1, JobV2};
use crate::model::{Account, Article, Notification, Player, Status, Transfer};
use db4::{
    BatchOptions, BatchStats, BatchStore, ChangeEvent, Db, Field, Filter, Lsn, Ordered, Query, RetryPolicy,
    Transaction, TxCollection,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;

/// Request bodies above this size are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// The largest `limit` a list request may ask for (and the default).
pub const MAX_PAGE: usize = 1000;
/// The most ids or transfers one request may carry.
pub const MAX_BATCH: usize = 100;
/// The most steps the filter programs of one player query may have together: enough for
/// filters far past db4's statement limits, and a bound on the memory a request can take.
pub const MAX_FILTER_STEPS: usize = 100_000;

/// The HTTP methods the API distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// Anything else (answered with 405 on known paths).
    Other,
}

impl Method {
    /// The method named `name` (case-sensitive, as HTTP has it).
    pub fn parse(name: &str) -> Self {
        match name {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    /// Whether requests with this method carry a body worth reading.
    pub fn has_body(self) -> bool {
        matches!(self, Method::Post | Method::Put)
    }
}

/// One request to a tenant's store: method, request target relative to the tenant
/// (`/articles?status=Draft`, still percent-encoded) and body.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// The method.
    pub method: Method,
    /// Path and query below `/t/{tenant}`, percent-encoded as received.
    pub target: &'a str,
    /// The raw body (empty if none).
    pub body: &'a [u8],
}

/// A response: status code and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

impl ApiResponse {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    fn created(body: Value) -> Self {
        Self { status: 201, body }
    }

    /// A 500 response for a failure outside the API's own handling (for example the Durable
    /// Object's database could not be opened).
    pub fn internal(message: &str) -> Self {
        Self { status: 500, body: json!({ "error": "internal", "message": message }) }
    }
}

/// Everything a request can fail with, each mapped to one status code.
#[derive(Debug)]
pub enum ApiError {
    /// A db4 error; its status depends on the variant (see [`db_status`]).
    Db(db4::Error),
    /// The body is not the JSON the route expects.
    BadJson(String),
    /// A path segment or query parameter is malformed or unknown.
    InvalidParam(String),
    /// A value is acceptable JSON but not acceptable to the app.
    InvalidValue {
        /// The field holding it.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    BodyTooLarge(usize),
    /// The account does not hold enough for the transfer.
    InsufficientFunds {
        /// The account to debit.
        account: String,
        /// Its balance.
        balance: i64,
        /// The amount asked for.
        amount: i64,
    },
    /// No route has this path.
    NoRoute,
    /// The path exists, not with this method.
    MethodNotAllowed,
}

impl From<db4::Error> for ApiError {
    fn from(e: db4::Error) -> Self {
        ApiError::Db(e)
    }
}

/// The status code and error code for a db4 error.
pub fn db_status(e: &db4::Error) -> (u16, &'static str) {
    use db4::{BackendErrorKind as K, Error as E};
    match e {
        E::NotFound { .. } => (404, "not_found"),
        E::AlreadyExists { .. } => (409, "already_exists"),
        E::Conflict { .. } => (409, "conflict"),
        E::InvalidQuery { .. } => (400, "invalid_query"),
        E::InvalidValue { .. } => (400, "invalid_value"),
        E::TooLarge { .. } => (413, "too_large"),
        E::SchemaMismatch { .. } => (409, "schema_mismatch"),
        // The change log no longer holds the events after the requested position.
        E::LogTruncated { .. } => (410, "log_truncated"),
        // A consumer request the change log refuses (an acknowledgement beyond the newest
        // event, a name too long).
        E::ChangeLog { .. } => (400, "change_log"),
        // A range cursor this tenant did not hand out for this range, or one edited.
        E::InvalidCursor { .. } => (400, "invalid_cursor"),
        // A damaged or missing cold segment (the message names it), or other damage.
        E::Corrupted { .. } => (500, "corrupted"),
        E::Backend(b) => match b.kind() {
            K::TooBig => (413, "too_large"),
            // A cold read run outside StagedStore::read (a bug of the route, not the caller).
            K::NotFetched => (503, "not_fetched"),
            // A backend that cannot do what was asked with a value (a read-only database, a
            // named parameter beyond 2^53 on a Durable Object).
            K::Unsupported => (400, "unsupported_value"),
            K::Busy => (503, "busy"),
            _ => (500, "internal"),
        },
        _ => (500, "internal"),
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// The machine-readable error code of the JSON body.
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    fn parts(&self) -> (u16, &'static str) {
        match self {
            ApiError::Db(e) => db_status(e),
            ApiError::BadJson(_) => (400, "bad_json"),
            ApiError::InvalidParam(_) => (400, "invalid_query"),
            ApiError::InvalidValue { .. } => (400, "invalid_value"),
            ApiError::BodyTooLarge(_) => (413, "too_large"),
            ApiError::InsufficientFunds { .. } => (422, "insufficient_funds"),
            ApiError::NoRoute => (404, "no_route"),
            ApiError::MethodNotAllowed => (405, "method_not_allowed"),
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Db(e) => e.to_string(),
            ApiError::BadJson(m) => format!("malformed request body: {m}"),
            ApiError::InvalidParam(m) => m.clone(),
            ApiError::InvalidValue { field, reason } => format!("invalid value in field `{field}`: {reason}"),
            ApiError::BodyTooLarge(n) => format!("request body of {n} bytes is above the limit of {MAX_BODY_BYTES}"),
            ApiError::InsufficientFunds { account, balance, amount } => {
                format!("account {account} holds {balance}, cannot send {amount}")
            }
            ApiError::NoRoute => "no such route".to_owned(),
            ApiError::MethodNotAllowed => "method not allowed on this path".to_owned(),
        }
    }

    /// The error as a response: `{"error": code, "message": ..., context...}`.
    pub fn to_response(&self) -> ApiResponse {
        let (status, code) = self.parts();
        let mut body = json!({ "error": code, "message": self.message() });
        if let Value::Object(map) = &mut body {
            for (k, v) in self.context() {
                map.insert(k.to_owned(), v);
            }
        }
        ApiResponse { status, body }
    }

    fn context(&self) -> Vec<(&'static str, Value)> {
        use db4::Error as E;
        match self {
            ApiError::Db(E::NotFound { collection, id } | E::AlreadyExists { collection, id }) => {
                vec![("collection", json!(collection)), ("id", json!(id))]
            }
            ApiError::Db(E::Conflict { collection, id, expected, actual }) => vec![
                ("collection", json!(collection)),
                ("id", json!(id)),
                ("expected", json!(expected)),
                ("actual", json!(actual)),
            ],
            ApiError::Db(E::TooLarge { collection, id, size, limit }) => vec![
                ("collection", json!(collection)),
                ("id", json!(id)),
                ("size", json!(size)),
                ("limit", json!(limit)),
            ],
            ApiError::Db(E::InvalidValue { collection, field, .. }) => {
                vec![("collection", json!(collection)), ("field", json!(field))]
            }
            ApiError::Db(E::LogTruncated { oldest }) => vec![("oldest", json!(oldest.get()))],
            ApiError::InvalidValue { field, .. } => vec![("field", json!(field))],
            ApiError::InsufficientFunds { account, balance, amount } => {
                vec![("account", json!(account)), ("balance", json!(balance)), ("amount", json!(amount))]
            }
            _ => Vec::new(),
        }
    }
}

type ApiResult<T = ApiResponse> = Result<T, ApiError>;

/// Answers one request against a tenant's database. Never panics.
pub fn handle(db: &Db, tenant: &str, req: &ApiRequest<'_>) -> ApiResponse {
    dispatch(db, tenant, req).unwrap_or_else(|e| e.to_response())
}

fn dispatch(db: &Db, tenant: &str, req: &ApiRequest<'_>) -> ApiResult {
    if req.body.len() > MAX_BODY_BYTES {
        return Err(ApiError::BodyTooLarge(req.body.len()));
    }
    let Target { segments, query } = split_target(req.target)?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let body = req.body;
    use Method::{Delete, Get, Post, Put};
    match (req.method, segs.as_slice()) {
        (Get, ["articles"]) => list_articles(db, &query),
        (Delete, ["articles"]) => delete_articles(db, &query),
        (Post, ["articles"]) => create_article(db, tenant, body),
        (Post, ["articles", "bulk"]) => bulk_articles(db, tenant, body),
        (Post, ["articles", "touch"]) => touch_articles(db, body),
        (Post, ["articles", "retitle"]) => retitle_articles(db, body),
        (Get, ["articles", "range"]) => range_articles(db, &query),
        (Get, ["scores"]) => range_scores(db, &query),
        (Put, ["scores", id]) => put_score(db, id, body),
        (Delete, ["scores", id]) => delete_score(db, id),
        (_, ["scores"]) => Err(ApiError::MethodNotAllowed),
        (Get, ["search"]) => search_articles(db, &query),
        (_, ["search"]) => Err(ApiError::MethodNotAllowed),
        (Get, ["articles", id]) => get_article(db, id),
        (Put, ["articles", id]) => update_article(db, tenant, id, body),
        (Delete, ["articles", id]) => delete_article(db, id),
        (Post, ["articles", id, "increment"]) => increment_article(db, id, body),
        (Post, ["articles", id, "cas"]) => cas_article(db, id, body),
        (Post, ["articles", id, "publish"]) => publish_article(db, id),
        (Post, ["accounts"]) => create_account(db, body),
        (Get, ["accounts", id]) => get_account(db, id),
        (Post, ["accounts", id, "deposit"]) => deposit(db, id, body),
        (Post, ["transfers"]) => create_transfer(db, body),
        (Post, ["transfers", "batch"]) => batch_transfers(db, body),
        (Get, ["transfers", id]) => get_transfer(db, id),
        (Get, ["notifications"]) => list_notifications(db, &query),
        (Post, ["players", "bulk"]) => bulk_players(db, body),
        (Post, ["players", "count"]) => count_players(db, body),
        (Post, ["players", "find"]) => find_players(db, body),
        (_, ["players", "bulk" | "count" | "find"]) => Err(ApiError::MethodNotAllowed),
        (Post, ["jobs", "v1"]) => create_job_v1(db, body),
        (Get, ["jobs", "v1", id]) => get_job::<JobV1>(db, id),
        (Get, ["jobs", "v2", id]) => get_job::<JobV2>(db, id),
        (Put, ["jobs", "v2", id]) => update_job_v2(db, id, body),
        (Get, ["jobs", "retyped", id]) => get_job::<JobRetyped>(db, id),
        (Get, ["stats"]) => db_stats(db),
        (_, ["stats"]) => Err(ApiError::MethodNotAllowed),
        (Get, ["tiers"]) => tier_stats(db),
        (_, ["tiers"]) => Err(ApiError::MethodNotAllowed),
        (Get, ["events"]) => list_events(db),
        (Post, ["events", "tx"]) => event_transaction(db, body),
        (_, ["events"] | ["events", "tx"]) => Err(ApiError::MethodNotAllowed),
        (Get, ["changes"]) => list_changes(db, &query),
        (Post, ["changes", "truncate"]) => truncate_changes(db, body),
        (Get, ["changes", "consumers"]) => list_consumers(db),
        (Delete, ["changes", "consumers", name]) => remove_consumer(db, name),
        (Post, ["changes", "consumers", name, "poll"]) => poll_consumer(db, name, &query),
        (Post, ["changes", "consumers", name, "ack"]) => ack_consumer(db, name, body),
        (_, ["changes"] | ["changes", "truncate" | "consumers"] | ["changes", "consumers", _])
        | (_, ["changes", "consumers", _, "poll" | "ack"]) => Err(ApiError::MethodNotAllowed),
        (_, ["articles" | "accounts" | "transfers" | "notifications"])
        | (_, ["articles" | "accounts" | "transfers", _])
        | (_, ["jobs", "v1"])
        | (_, ["jobs", "v1" | "v2" | "retyped", _])
        | (_, ["articles", _, "increment" | "cas" | "publish"])
        | (_, ["accounts", _, "deposit"]) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NoRoute),
    }
}

// ---------------------------------------------------------------------------------------------
// Articles

fn list_articles(db: &Db, query: &[(String, String)]) -> ApiResult {
    let filter = ArticleFilter::parse(query)?;
    let articles = db.collection::<Article>()?;
    let total = filter.apply(articles.query()).count()?;
    let items = filter.page(filter.apply(articles.query())).all()?;
    Ok(ApiResponse::ok(json!({ "items": items, "total": total })))
}

/// The keys of the indexes `GET /articles/range` reads, in order (the id comes last).
fn range_keys(index: &str) -> Option<&'static [&'static str]> {
    match index {
        "created_at" => Some(&["created_at"]),
        "by_status_created" => Some(&["status", "created_at"]),
        _ => None,
    }
}

/// A value of the key `key` of a range (`created_at`, `status` or the id) from a query
/// parameter.
fn range_key_value(key: &str, param: &str, value: &str) -> ApiResult<Value> {
    match key {
        "created_at" => Ok(json!(int_param(param, value)?)),
        "status" => {
            Ok(json!(Status::parse(value).ok_or_else(|| bad_param(param, value, "Draft, Published or Archived"))?))
        }
        _ => Ok(json!(value)),
    }
}

/// `GET /articles/range?index=&prefix=&gt=&gte=&lt=&lte=&desc=1&status=&limit=&after=&before=`:
/// one page of the tenant's articles in the order of an index, with keyset cursors:
/// `{"items": [...], "next": cursor|null, "prev": cursor|null, "has_more": bool}`.
///
/// - `index`: `created_at` (the default; ties by id) or `by_status_created` (status by name,
///   then newest first).
/// - `prefix`: the value of the index's first key (a status for `by_status_created`); the
///   bounds `gt`, `gte`, `lt`, `lte` then apply to the next key (the id once every key is
///   fixed), typed by it: an integer for `created_at`, a status name for `status`.
/// - `desc=1` reverses the order; `status` keeps one status (a filter); `limit` is the page
///   size (1 to 1000, default 100).
/// - `after=<next>` reads the next page, `before=<prev>` the previous one (in the same order).
///   A cursor is bound to the tenant, the index and every other parameter but `limit`: used
///   elsewhere, edited or made up it is refused with 400 `invalid_cursor`.
///
/// An article whose id is `range` is not reachable by `GET /articles/range`: this route wins.
fn range_articles(db: &Db, query: &[(String, String)]) -> ApiResult {
    let mut index = "created_at";
    for (key, value) in query {
        if key == "index" {
            index = value.as_str();
        }
    }
    let keys = range_keys(index).ok_or_else(|| bad_param("index", index, "created_at or by_status_created"))?;
    let prefix = query.iter().find(|(k, _)| k == "prefix").map(|(_, v)| v.as_str());
    let bounded = keys.get(usize::from(prefix.is_some())).copied().unwrap_or("id");
    let articles = db.collection::<Article>()?;
    let mut range = articles.range_index(index);
    let mut cursor_params = 0;
    for (key, value) in query {
        range = match key.as_str() {
            "index" => range,
            "prefix" => range.prefix((range_key_value(keys[0], key, value)?,)),
            "gt" => range.gt(range_key_value(bounded, key, value)?),
            "gte" => range.gte(range_key_value(bounded, key, value)?),
            "lt" => range.lt(range_key_value(bounded, key, value)?),
            "lte" => range.lte(range_key_value(bounded, key, value)?),
            "desc" if value == "1" => range.descending(),
            "desc" if value == "0" => range.ascending(),
            "desc" => return Err(bad_param(key, value, "0 or 1")),
            "status" => range.filter(
                Article::fields()
                    .status
                    .eq(Status::parse(value).ok_or_else(|| bad_param(key, value, "Draft, Published or Archived"))?),
            ),
            "limit" => range.limit(limit_param(key, value)?),
            "after" | "before" => {
                cursor_params += 1;
                let cursor = db4::Cursor::parse(value)?;
                if key == "after" { range.after(&cursor) } else { range.before(&cursor) }
            }
            _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
        };
    }
    if cursor_params > 1 {
        return Err(ApiError::InvalidParam("a range takes one cursor: `after` or `before`".to_owned()));
    }
    let page = range.fetch()?;
    Ok(ApiResponse::ok(json!({
        "items": page.items,
        "next": page.next.map(|c| c.to_string()),
        "prev": page.prev.map(|c| c.to_string()),
        "has_more": page.has_more,
    })))
}

/// The tenant's standalone range index of scores: `(game, score desc)`, opened by name, or
/// created by the first request that needs it.
fn scores_index(db: &Db) -> ApiResult<db4::range::RangeIndex> {
    use db4::range::{RangeField, RangeIndex};
    match RangeIndex::open(db, "scores") {
        Err(db4::Error::NotFound { .. }) => Ok(RangeIndex::create(
            db,
            "scores",
            &[RangeField::text("game"), RangeField::integer("score").descending()],
        )?),
        other => Ok(other?),
    }
}

/// The body of `PUT /scores/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreBody {
    game: String,
    score: i64,
}

fn score_json(id: &str, keys: &[db4::Value]) -> Value {
    let game = match keys.first() {
        Some(db4::Value::Text(t)) => json!(t),
        _ => Value::Null,
    };
    let score = match keys.get(1) {
        Some(db4::Value::Integer(n)) => json!(n),
        _ => Value::Null,
    };
    json!({ "id": id, "game": game, "score": score })
}

/// `PUT /scores/{id}` `{"game", "score"}`: indexes (or re-indexes) `id`.
fn put_score(db: &Db, id: &str, body: &[u8]) -> ApiResult {
    let score: ScoreBody = parse_json(body)?;
    scores_index(db)?.index(id, (score.game.as_str(), score.score))?;
    Ok(ApiResponse::ok(json!({ "id": id, "game": score.game, "score": score.score })))
}

/// `DELETE /scores/{id}`: `{"removed": bool}`.
fn delete_score(db: &Db, id: &str) -> ApiResult {
    Ok(ApiResponse::ok(json!({ "removed": scores_index(db)?.remove(id)? })))
}

/// `GET /scores?prefix=&gt=&gte=&lt=&lte=&desc=1&limit=&after=&before=`: one page of the
/// scores index, `{"items": [{"id", "game", "score"}], "next", "prev", "has_more"}`.
///
/// - `prefix`: a game; the bounds then apply to the score (an integer), else to the game.
/// - `desc=1` reverses the order; `limit` is the page size (1 to 1000, default 100).
/// - `after=<next>` / `before=<prev>` as for `GET /articles/range`: a cursor used with other
///   parameters (but `limit`), by another tenant, or edited is 400 `invalid_cursor`.
fn range_scores(db: &Db, query: &[(String, String)]) -> ApiResult {
    let index = scores_index(db)?;
    let prefixed = query.iter().any(|(k, _)| k == "prefix");
    let bound = |key: &str, value: &str| -> ApiResult<Value> {
        if prefixed { Ok(json!(int_param(key, value)?)) } else { Ok(json!(value)) }
    };
    let mut range = index.range();
    let mut cursor_params = 0;
    for (key, value) in query {
        range = match key.as_str() {
            "prefix" => range.prefix(value.as_str()),
            "gt" => range.gt(bound(key, value)?),
            "gte" => range.gte(bound(key, value)?),
            "lt" => range.lt(bound(key, value)?),
            "lte" => range.lte(bound(key, value)?),
            "desc" if value == "1" => range.descending(),
            "desc" if value == "0" => range.ascending(),
            "desc" => return Err(bad_param(key, value, "0 or 1")),
            "limit" => range.limit(limit_param(key, value)?),
            "after" | "before" => {
                cursor_params += 1;
                let cursor = db4::Cursor::parse(value)?;
                if key == "after" { range.after(&cursor) } else { range.before(&cursor) }
            }
            _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
        };
    }
    if cursor_params > 1 {
        return Err(ApiError::InvalidParam("a range takes one cursor: `after` or `before`".to_owned()));
    }
    let page = range.fetch()?;
    Ok(ApiResponse::ok(json!({
        "items": page.items.iter().map(|e| score_json(&e.id, &e.keys)).collect::<Vec<_>>(),
        "next": page.next.map(|c| c.to_string()),
        "prev": page.prev.map(|c| c.to_string()),
        "has_more": page.has_more,
    })))
}

/// Deletes the articles matching the filters (at least one); `order`, `limit` and `offset`
/// narrow which ones.
fn delete_articles(db: &Db, query: &[(String, String)]) -> ApiResult {
    if !query.iter().any(|(k, _)| !matches!(k.as_str(), "order" | "limit" | "offset")) {
        return Err(ApiError::InvalidParam("deleting articles needs at least one filter".into()));
    }
    let filter = ArticleFilter::parse(query)?;
    let articles = db.collection::<Article>()?;
    let deleted = filter.page(filter.apply(articles.query())).delete()?;
    Ok(ApiResponse::ok(json!({ "deleted": deleted })))
}

fn create_article(db: &Db, tenant: &str, body: &[u8]) -> ApiResult {
    let mut doc: Article = parse_json(body)?;
    own_tenant(&mut doc, tenant)?;
    db.collection::<Article>()?.insert(&doc)?;
    Ok(ApiResponse::created(json!(doc)))
}

fn bulk_articles(db: &Db, tenant: &str, body: &[u8]) -> ApiResult {
    let mut docs: Vec<Article> = parse_json(body)?;
    check_batch(docs.len())?;
    for doc in &mut docs {
        own_tenant(doc, tenant)?;
    }
    db.collection::<Article>()?.insert_many(&docs)?;
    Ok(ApiResponse::created(json!({ "inserted": docs.len() })))
}

fn get_article(db: &Db, id: &str) -> ApiResult {
    let doc = db.collection::<Article>()?.get(id)?.ok_or_else(|| not_found("articles", id))?;
    Ok(ApiResponse::ok(json!(doc)))
}

fn update_article(db: &Db, tenant: &str, id: &str, body: &[u8]) -> ApiResult {
    let mut doc: Article = parse_json(body)?;
    if doc.id.is_empty() {
        doc.id = id.to_owned();
    } else if doc.id != id {
        return Err(invalid_value("id", format!("the body's id {:?} is not the path's {id:?}", doc.id)));
    }
    own_tenant(&mut doc, tenant)?;
    db.collection::<Article>()?.update(&doc)?;
    doc.version = doc.version.saturating_add(1);
    Ok(ApiResponse::ok(json!(doc)))
}

fn delete_article(db: &Db, id: &str) -> ApiResult {
    if !db.collection::<Article>()?.delete(id)? {
        return Err(not_found("articles", id));
    }
    Ok(ApiResponse::ok(json!({ "deleted": id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrementBody {
    field: String,
    by: i64,
}

fn increment_article(db: &Db, id: &str, body: &[u8]) -> ApiResult {
    let req: IncrementBody = parse_json(body)?;
    if req.field != "views" {
        return Err(ApiError::InvalidParam(format!("field {:?} cannot be incremented (only `views`)", req.field)));
    }
    let value = db.collection::<Article>()?.increment(id, Article::fields().views, req.by)?;
    Ok(ApiResponse::ok(json!({ "field": "views", "value": value })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasBody {
    expected: Status,
    new: Status,
}

fn cas_article(db: &Db, id: &str, body: &[u8]) -> ApiResult {
    let req: CasBody = parse_json(body)?;
    let out = db.collection::<Article>()?.compare_and_swap(id, Article::fields().status, req.expected, req.new)?;
    Ok(ApiResponse::ok(json!({ "swapped": out.swapped, "current": out.current })))
}

fn publish_article(db: &Db, id: &str) -> ApiResult {
    // Optimistic read-modify-write with the default retry policy. Inside a Durable Object no
    // other request runs between the read and the write (the code is synchronous), so it
    // succeeds at once; on wasm32 db4 retries without sleeping.
    let doc = db.collection::<Article>()?.update_with(id, RetryPolicy::default(), |a| a.status = Status::Published)?;
    Ok(ApiResponse::ok(json!(doc)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TouchBody {
    ids: Vec<String>,
}

/// Adds one view to each listed article, all in one transaction: the 10-update transaction of
/// the benchmark.
fn touch_articles(db: &Db, body: &[u8]) -> ApiResult {
    let req: TouchBody = parse_json(body)?;
    check_batch(req.ids.len())?;
    let updated = in_transaction(db, |tx| {
        let articles = tx.collection::<Article>()?;
        for id in &req.ids {
            let mut doc = articles.get(id.as_str())?.ok_or_else(|| not_found("articles", id))?;
            doc.views = doc.views.saturating_add(1);
            articles.update(&doc)?;
        }
        Ok(req.ids.len())
    })?;
    Ok(ApiResponse::ok(json!({ "updated": updated })))
}

/// The body of `POST /articles/retitle`: new titles, written in one transaction after a
/// savepoint; `rollback_to_savepoint` undoes them (the transaction still commits), `fail`
/// fails the whole transaction afterwards.
#[derive(Debug, Deserialize)]
struct RetitleBody {
    titles: Vec<(String, String)>,
    #[serde(default)]
    rollback_to_savepoint: bool,
    #[serde(default)]
    fail: bool,
}

fn retitle_articles(db: &Db, body: &[u8]) -> ApiResult {
    let req: RetitleBody = parse_json(body)?;
    check_batch(req.titles.len())?;
    in_transaction(db, |tx| {
        let articles = tx.collection::<Article>()?;
        tx.savepoint("retitle")?;
        for (id, title) in &req.titles {
            let mut doc = articles.get(id.as_str())?.ok_or_else(|| not_found("articles", id))?;
            doc.title = title.clone();
            articles.update(&doc)?;
        }
        // What the transaction sees of its own writes.
        let seen = req.titles.first().map(|(_, t)| articles.search(&quoted(t)).run()).transpose()?;
        if req.rollback_to_savepoint {
            tx.rollback_to("retitle")?;
        }
        if req.fail {
            return Err(ApiError::InvalidParam("failed on request, after the writes".to_owned()));
        }
        Ok(ApiResponse::ok(json!({ "seen_inside": seen.map(|r| r.hits.len()) })))
    })
}

/// `text` as one phrase of the search language.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// `GET /search?q=..`: a ranked full-text search of the tenant's articles, with `status`,
/// `limit`, `offset`, `highlight` (`1`: `<b>`/`</b>` markers), `snippet` (tokens),
/// `min_score`, `total` (`1`) and `typos` (`1`).
fn search_articles(db: &Db, query: &[(String, String)]) -> ApiResult {
    let articles = db.collection::<Article>()?;
    let mut text = None;
    let mut options: Vec<(&str, &str)> = Vec::new();
    for (key, value) in query {
        match key.as_str() {
            "q" => text = Some(value.as_str()),
            "status" | "limit" | "offset" | "highlight" | "snippet" | "min_score" | "total" | "typos" => {
                options.push((key.as_str(), value.as_str()));
            }
            _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
        }
    }
    let text = text.ok_or_else(|| ApiError::InvalidParam("the search needs a query: ?q=...".to_owned()))?;
    let mut search = articles.search(text).limit(20);
    for (key, value) in options {
        search = match key {
            "status" => search.filter(
                Article::fields()
                    .status
                    .eq(Status::parse(value).ok_or_else(|| bad_param(key, value, "Draft, Published or Archived"))?),
            ),
            "limit" => search.limit(limit_param(key, value)?),
            "offset" => search.offset(value.parse().map_err(|_| bad_param(key, value, "a number"))?),
            "highlight" if value == "1" => search.highlight("<b>", "</b>"),
            "snippet" => search.snippet(value.parse().map_err(|_| bad_param(key, value, "a number of tokens"))?),
            "min_score" => search.min_score(value.parse().map_err(|_| bad_param(key, value, "a number"))?),
            "total" if value == "1" => search.with_total(),
            "typos" if value == "1" => search.typos(true),
            _ => return Err(bad_param(key, value, "1")),
        };
    }
    let res = search.run()?;
    let hits: Vec<Value> = res
        .hits
        .into_iter()
        .map(|h| {
            let highlights: serde_json::Map<String, Value> =
                h.highlights.into_iter().map(|(field, text)| (field.to_owned(), Value::String(text))).collect();
            json!({ "doc": h.doc, "score": h.score, "highlights": highlights, "snippet": h.snippet })
        })
        .collect();
    Ok(ApiResponse::ok(json!({ "hits": hits, "total": res.total })))
}

/// The filters, order and page of `GET /articles`, from its query string.
#[derive(Debug, Default)]
struct ArticleFilter {
    status: Option<Status>,
    views_gte: Option<i64>,
    views_lte: Option<i64>,
    created_from: Option<i64>,
    created_to: Option<i64>,
    title_prefix: Option<String>,
    order: Option<(SortKey, bool)>,
    limit: Option<usize>,
    offset: usize,
}

#[derive(Debug, Clone, Copy)]
enum SortKey {
    CreatedAt,
    Views,
    Title,
}

impl ArticleFilter {
    fn parse(query: &[(String, String)]) -> ApiResult<Self> {
        let mut f = Self::default();
        for (key, value) in query {
            match key.as_str() {
                "status" => {
                    f.status = Some(
                        Status::parse(value).ok_or_else(|| bad_param(key, value, "Draft, Published or Archived"))?,
                    );
                }
                "views_gte" => f.views_gte = Some(int_param(key, value)?),
                "views_lte" => f.views_lte = Some(int_param(key, value)?),
                "created_from" => f.created_from = Some(int_param(key, value)?),
                "created_to" => f.created_to = Some(int_param(key, value)?),
                "title_prefix" => f.title_prefix = Some(value.clone()),
                "order" => {
                    let (name, descending) = match value.strip_prefix('-') {
                        Some(name) => (name, true),
                        None => (value.as_str(), false),
                    };
                    let by = match name {
                        "created_at" => SortKey::CreatedAt,
                        "views" => SortKey::Views,
                        "title" => SortKey::Title,
                        _ => return Err(bad_param(key, value, "created_at, views or title, `-` for descending")),
                    };
                    f.order = Some((by, descending));
                }
                "limit" => {
                    let n: usize = value.parse().map_err(|_| bad_param(key, value, "a number"))?;
                    if n == 0 || n > MAX_PAGE {
                        return Err(bad_param(key, value, "between 1 and 1000"));
                    }
                    f.limit = Some(n);
                }
                "offset" => f.offset = value.parse().map_err(|_| bad_param(key, value, "a number"))?,
                _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
            }
        }
        Ok(f)
    }

    fn apply<'c>(&self, mut q: Query<'c, Article>) -> Query<'c, Article> {
        let f = Article::fields();
        if let Some(s) = self.status {
            q = q.filter(f.status.eq(s));
        }
        if let Some(n) = self.views_gte {
            q = q.filter(f.views.gte(n));
        }
        if let Some(n) = self.views_lte {
            q = q.filter(f.views.lte(n));
        }
        q = match (self.created_from, self.created_to) {
            (Some(a), Some(b)) => q.filter(f.created_at.between(a, b)),
            (Some(a), None) => q.filter(f.created_at.gte(a)),
            (None, Some(b)) => q.filter(f.created_at.lte(b)),
            (None, None) => q,
        };
        if let Some(p) = &self.title_prefix {
            q = q.filter(f.title.starts_with(p.as_str()));
        }
        q
    }

    fn page<'c>(&self, mut q: Query<'c, Article>) -> Query<'c, Article> {
        let f = Article::fields();
        if let Some((by, descending)) = self.order {
            q = match (by, descending) {
                (SortKey::CreatedAt, false) => q.order_by(f.created_at.asc()),
                (SortKey::CreatedAt, true) => q.order_by(f.created_at.desc()),
                (SortKey::Views, false) => q.order_by(f.views.asc()),
                (SortKey::Views, true) => q.order_by(f.views.desc()),
                (SortKey::Title, false) => q.order_by(f.title.asc()),
                (SortKey::Title, true) => q.order_by(f.title.desc()),
            };
        }
        // A stable order for equal keys, so pages do not overlap.
        q.order_by(f.id.asc()).limit(self.limit.unwrap_or(MAX_PAGE)).offset(self.offset)
    }
}

// ---------------------------------------------------------------------------------------------
// Accounts and transfers

fn create_account(db: &Db, body: &[u8]) -> ApiResult {
    let doc: Account = parse_json(body)?;
    if doc.balance < 0 {
        return Err(invalid_value("balance", "a new account's balance cannot be negative".to_owned()));
    }
    db.collection::<Account>()?.insert(&doc)?;
    Ok(ApiResponse::created(json!(doc)))
}

fn get_account(db: &Db, id: &str) -> ApiResult {
    let doc = db.collection::<Account>()?.get(id)?.ok_or_else(|| not_found("accounts", id))?;
    Ok(ApiResponse::ok(json!(doc)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepositBody {
    amount: i64,
}

fn deposit(db: &Db, id: &str, body: &[u8]) -> ApiResult {
    let req: DepositBody = parse_json(body)?;
    if req.amount <= 0 {
        return Err(invalid_value("amount", "a deposit must be positive".to_owned()));
    }
    let balance = db.collection::<Account>()?.increment(id, Account::fields().balance, req.amount)?;
    Ok(ApiResponse::ok(json!({ "id": id, "balance": balance })))
}

/// A transfer as requested by a client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    id: String,
    from: String,
    to: String,
    amount: i64,
    /// If set, a notification with this id is left for the recipient, unless one with this
    /// id already exists: then the transfer goes through without it.
    #[serde(default)]
    notify: Option<String>,
}

fn create_transfer(db: &Db, body: &[u8]) -> ApiResult {
    let req: TransferBody = parse_json(body)?;
    let done = in_transaction(db, |tx| transfer(tx, &req))?;
    Ok(ApiResponse::created(json!(done)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// All transfers or none; otherwise each failed transfer is undone alone.
    #[serde(default)]
    atomic: bool,
    transfers: Vec<TransferBody>,
}

fn batch_transfers(db: &Db, body: &[u8]) -> ApiResult {
    let req: BatchBody = parse_json(body)?;
    check_batch(req.transfers.len())?;
    let results = in_transaction(db, |tx| {
        let mut results = Vec::with_capacity(req.transfers.len());
        for t in &req.transfers {
            match nested(tx, |tx| transfer(tx, t)) {
                Ok(done) => results.push(json!({ "id": t.id, "ok": true, "transfer": done.transfer })),
                Err(e) if !req.atomic => results.push(json!({
                    "id": t.id, "ok": false, "status": e.status(), "error": e.code(),
                })),
                Err(e) => return Err(e),
            }
        }
        Ok(results)
    })?;
    Ok(ApiResponse::ok(json!({ "results": results })))
}

fn get_transfer(db: &Db, id: &str) -> ApiResult {
    let doc = db.collection::<Transfer>()?.get(id)?.ok_or_else(|| not_found("transfers", id))?;
    Ok(ApiResponse::ok(json!(doc)))
}

fn list_notifications(db: &Db, query: &[(String, String)]) -> ApiResult {
    let mut account = None;
    for (key, value) in query {
        match key.as_str() {
            "account" => account = Some(value.as_str()),
            _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
        }
    }
    let account = account.ok_or_else(|| ApiError::InvalidParam("the `account` parameter is required".into()))?;
    let f = Notification::fields();
    let items = db.collection::<Notification>()?.query().filter(f.account.eq(account)).order_by(f.id.asc()).all()?;
    Ok(ApiResponse::ok(json!({ "items": items })))
}

/// A committed transfer and the balances it left.
#[derive(Debug, serde::Serialize)]
struct TransferDone {
    transfer: Transfer,
    balances: serde_json::Map<String, Value>,
}

/// Moves `amount` between two accounts inside `tx`, then (after a savepoint) tries to leave
/// the recipient a notification: if that fails, only the notification part is rolled back.
fn transfer(tx: &Transaction<'_>, t: &TransferBody) -> ApiResult<TransferDone> {
    if t.amount <= 0 {
        return Err(invalid_value("amount", "a transfer must be positive".to_owned()));
    }
    if t.from == t.to {
        return Err(invalid_value("to", "cannot transfer to the same account".to_owned()));
    }
    let accounts = tx.collection::<Account>()?;
    let mut from = accounts.get(t.from.as_str())?.ok_or_else(|| not_found("accounts", &t.from))?;
    let mut to = accounts.get(t.to.as_str())?.ok_or_else(|| not_found("accounts", &t.to))?;
    if from.balance < t.amount {
        return Err(ApiError::InsufficientFunds { account: from.id, balance: from.balance, amount: t.amount });
    }
    from.balance -= t.amount;
    to.balance = to.balance.checked_add(t.amount).ok_or_else(|| invalid_value("amount", "overflow".to_owned()))?;
    accounts.update(&from)?;
    accounts.update(&to)?;

    tx.savepoint("notify")?;
    let notified = match t.notify.as_deref() {
        None => false,
        Some(key) => match notify(tx, &accounts, key, t) {
            Ok(()) => true,
            // Storage failures abort the transfer; anything else only drops the notice.
            Err(e @ db4::Error::Backend(_)) => return Err(e.into()),
            Err(_) => {
                tx.rollback_to("notify")?;
                false
            }
        },
    };
    tx.release("notify")?;

    let transfer = Transfer { id: t.id.clone(), from: t.from.clone(), to: t.to.clone(), amount: t.amount, notified };
    tx.collection::<Transfer>()?.insert(&transfer)?;
    let to_balance = accounts.get(t.to.as_str())?.map_or(to.balance, |a| a.balance);
    let mut balances = serde_json::Map::new();
    balances.insert(from.id, json!(from.balance));
    balances.insert(to.id, json!(to_balance));
    Ok(TransferDone { transfer, balances })
}

fn notify(tx: &Transaction<'_>, accounts: &TxCollection<'_, Account>, key: &str, t: &TransferBody) -> db4::Result<()> {
    accounts.increment(t.to.as_str(), Account::fields().notifications, 1)?;
    let text = format!("{} sent you {}", t.from, t.amount);
    tx.collection::<Notification>()?.insert(&Notification { id: key.to_owned(), account: t.to.clone(), text })
}

// ---------------------------------------------------------------------------------------------
// Players: queries written as filter programs (see the module documentation)

fn create_job_v1(db: &Db, body: &[u8]) -> ApiResult {
    let doc: JobV1 = parse_json(body)?;
    db.collection::<JobV1>()?.insert(&doc)?;
    Ok(ApiResponse::created(json!(doc)))
}

/// Reads a job through one deploy's type (opening, and so migrating, the collection with it).
fn get_job<T: db4::Document<Id = String> + serde::Serialize>(db: &Db, id: &str) -> ApiResult {
    let doc = db.collection::<T>()?.get(id)?.ok_or_else(|| not_found("jobs", id))?;
    Ok(ApiResponse::ok(json!(doc)))
}

fn update_job_v2(db: &Db, id: &str, body: &[u8]) -> ApiResult {
    let mut doc: JobV2 = parse_json(body)?;
    doc.id = id.to_owned();
    let version = db.collection::<JobV2>()?.update(&doc)?;
    Ok(ApiResponse::ok(json!({ "version": version })))
}

fn bulk_players(db: &Db, body: &[u8]) -> ApiResult {
    let docs: Vec<Player> = parse_json(body)?;
    check_batch(docs.len())?;
    db.collection::<Player>()?.insert_many(&docs)?;
    Ok(ApiResponse::created(json!({ "inserted": docs.len() })))
}

/// The body of the player queries.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlayerQuery {
    /// Filter programs, all of which must hold.
    #[serde(default)]
    filters: Vec<Vec<Value>>,
}

impl PlayerQuery {
    fn parse(body: &[u8]) -> ApiResult<Self> {
        let q: Self = parse_json(body)?;
        let steps: usize = q.filters.iter().map(Vec::len).sum();
        if steps > MAX_FILTER_STEPS {
            return Err(ApiError::InvalidParam(format!(
                "the filters have {steps} steps; a request takes at most {MAX_FILTER_STEPS}"
            )));
        }
        Ok(q)
    }

    fn apply<'c>(&self, mut q: Query<'c, Player>) -> ApiResult<Query<'c, Player>> {
        for (i, program) in self.filters.iter().enumerate() {
            q = q.filter(run_program(program).map_err(|e| ApiError::InvalidParam(format!("filter {i}: {e}")))?);
        }
        Ok(q)
    }
}

fn count_players(db: &Db, body: &[u8]) -> ApiResult {
    let query = PlayerQuery::parse(body)?;
    let players = db.collection::<Player>()?;
    let count = query.apply(players.query())?.count()?;
    Ok(ApiResponse::ok(json!({ "count": count })))
}

fn find_players(db: &Db, body: &[u8]) -> ApiResult {
    let query = PlayerQuery::parse(body)?;
    let players = db.collection::<Player>()?;
    let found = query.apply(players.query())?.order_by(Player::fields().id.asc()).limit(MAX_PAGE).all()?;
    let ids: Vec<&str> = found.iter().map(|p| p.id.as_str()).collect();
    Ok(ApiResponse::ok(json!({ "ids": ids })))
}

/// Runs a filter program (postfix: see the module documentation) into one filter.
fn run_program(steps: &[Value]) -> Result<Filter<Player>, String> {
    let mut stack: Vec<Filter<Player>> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let at = |e: String| format!("step {i}: {e}");
        let Value::Array(parts) = step else { return Err(at(format!("expected an array, got {step}"))) };
        match parts.as_slice() {
            [Value::String(op)] if op == "!" => {
                let top = stack.pop().ok_or_else(|| at("`!` with no filter to negate".into()))?;
                stack.push(!top);
            }
            [Value::String(op), n] if op == "&" || op == "|" => {
                let n = n.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n <= stack.len());
                let n = n.ok_or_else(|| at(format!("`{op}` needs a count of at most {} filters", stack.len())))?;
                let operands = stack.split_off(stack.len() - n);
                stack.push(if op == "&" { Filter::all(operands) } else { Filter::any(operands) });
            }
            [Value::String(field), Value::String(op), args @ ..] => stack.push(condition(field, op, args).map_err(at)?),
            _ => {
                return Err(at(format!(
                    "expected [field, op, args...], [\"!\"], [\"&\", n] or [\"|\", n], got {step}"
                )));
            }
        }
    }
    match (stack.pop(), stack.is_empty()) {
        (Some(filter), true) => Ok(filter),
        (None, _) => Err("the program leaves no filter".into()),
        (Some(_), false) => Err(format!("the program leaves {} filters, not one", stack.len() + 1)),
    }
}

/// A condition on one of the player's fields.
fn condition(field: &str, op: &str, args: &[Value]) -> Result<Filter<Player>, String> {
    let f = Player::fields();
    let text = |field: Field<Player, Option<String>>| match (op, args) {
        ("starts_with", [Value::String(prefix)]) => Ok(field.starts_with(prefix.as_str())),
        _ => compare(field, op, args),
    };
    match field {
        "name" => text(f.name),
        "team" => text(f.team),
        "score" => compare(f.score, op, args),
        "rank" => compare(f.rank, op, args),
        _ => Err(format!("unknown field {field:?} (name, team, score or rank)")),
    }
}

/// A comparison of an optional field with values of its type (`null` for `None`).
fn compare<T>(field: Field<Player, Option<T>>, op: &str, args: &[Value]) -> Result<Filter<Player>, String>
where
    T: serde::Serialize + DeserializeOwned,
    Option<T>: Ordered,
{
    let value = |v: &Value| {
        serde_json::from_value::<Option<T>>(v.clone())
            .map_err(|e| format!("`{op}`: {v} is not a value of the field: {e}"))
    };
    Ok(match (op, args) {
        ("eq", [v]) => field.eq(value(v)?),
        ("ne", [v]) => field.ne(value(v)?),
        ("gt", [v]) => field.gt(value(v)?),
        ("gte", [v]) => field.gte(value(v)?),
        ("lt", [v]) => field.lt(value(v)?),
        ("lte", [v]) => field.lte(value(v)?),
        ("between", [low, high]) => field.between(value(low)?, value(high)?),
        ("in", [Value::Array(values)]) => field.in_list(values.iter().map(value).collect::<Result<Vec<_>, _>>()?),
        ("is_none", []) => field.is_none(),
        ("is_some", []) => field.is_some(),
        _ => return Err(format!("`{op}` with {} arguments is not a condition", args.len())),
    })
}

// ---------------------------------------------------------------------------------------------
// Events: a batch store, written inside transactions next to collections

/// The events' blob size: small, so a dozen events span several rows.
pub const EVENT_BLOB_BYTES: usize = 256;

/// The tenant's batch store of events.
fn events(db: &Db) -> db4::Result<BatchStore> {
    BatchStore::open(db, "events", BatchOptions::default().max_blob_bytes(EVENT_BLOB_BYTES))
}

/// `GET /stats`: [`Db::stats`], each stored collection with its documents and the writes this
/// handle committed.
/// The options every tenant's database is opened with: a warm tier of [`WARM_BYTES`] in front
/// of the tables (on a Durable Object, one `Db` per object, kept for its lifetime).
pub fn db_options() -> db4::DbOptions {
    db4::DbOptions::default().tiers(db4::tier::TierConfig { warm_bytes: WARM_BYTES, ..Default::default() })
}

/// The warm tier's budget per tenant: small next to an isolate's 128 MB.
pub const WARM_BYTES: usize = 4 << 20;

/// `GET /tiers`: [`Db::tier_stats`], the hot tier's size and the warm tier's figures.
fn tier_stats(db: &Db) -> ApiResult {
    let s = db.tier_stats()?;
    Ok(ApiResponse::ok(json!({
        "hot": { "documents": s.hot.documents, "bytes": s.hot.bytes },
        "warm": {
            "entries": s.warm.entries,
            "bytes": s.warm.bytes,
            "capacity": s.warm.capacity,
            "hits": s.warm.hits,
            "misses": s.warm.misses,
            "evictions": s.warm.evictions,
        },
    })))
}

fn db_stats(db: &Db) -> ApiResult {
    let stats = db.stats()?;
    let collections: serde_json::Map<String, Value> = stats
        .collections
        .iter()
        .map(|c| {
            let counts = json!({
                "documents": c.documents,
                "inserts": c.inserts,
                "updates": c.updates,
                "upserts": c.upserts,
                "deletes": c.deletes,
            });
            (c.name.clone(), counts)
        })
        .collect();
    Ok(ApiResponse::ok(json!({ "collections": collections })))
}

fn stats_json(s: &BatchStats) -> Value {
    json!({
        "documents": s.documents,
        "rows": s.rows,
        "live_bytes": s.live_bytes,
        "allocated_bytes": s.allocated_bytes,
        "dead_bytes": s.dead_bytes,
        "free_bytes": s.free_bytes,
    })
}

/// Every event and the store's statistics, checked entry by entry (`verify`).
fn list_events(db: &Db) -> ApiResult {
    let store = events(db)?;
    let ids = store.ids()?;
    let docs: Vec<Option<Value>> = store.get_many(&ids)?;
    let items: serde_json::Map<String, Value> =
        ids.into_iter().zip(docs).filter_map(|(id, d)| Some((id, d?))).collect();
    Ok(ApiResponse::ok(json!({ "items": items, "stats": stats_json(&store.verify()?) })))
}

/// The body of `POST /events/tx`: steps run in order, in one transaction.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventTransaction {
    steps: Vec<EventStep>,
}

/// One step of an event transaction.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum EventStep {
    /// Stores (or replaces) an event.
    Put { id: String, doc: Value },
    /// Deletes an event (if there is one).
    Delete { id: String },
    /// Adds to an account's balance: a collection write in the same transaction.
    Deposit { account: String, amount: i64 },
    /// `tx.savepoint(name)`.
    Savepoint { name: String },
    /// `tx.rollback_to(name)`.
    RollbackTo { name: String },
    /// `tx.release(name)`.
    Release { name: String },
    /// Records the store's statistics as the transaction sees them (`verify`).
    Check,
    /// Fails the transaction: everything is rolled back.
    Fail,
}

/// Runs the steps in one transaction and answers the events' ids, the statistics each `check`
/// step recorded and the final ones, all as the transaction saw them.
fn event_transaction(db: &Db, body: &[u8]) -> ApiResult {
    let req: EventTransaction = parse_json(body)?;
    check_batch(req.steps.len())?;
    let store = events(db)?;
    let out = in_transaction(db, |tx| {
        let events = tx.batch(&store);
        let mut checks = Vec::new();
        for (i, step) in req.steps.iter().enumerate() {
            let unknown = |e: db4::Error| match e {
                db4::Error::UnknownSavepoint { name } => {
                    invalid_value("steps", format!("step {i}: no savepoint {name:?}"))
                }
                e => ApiError::Db(e),
            };
            match step {
                EventStep::Put { id, doc } => events.put(id, doc)?,
                EventStep::Delete { id } => drop(events.delete(id)?),
                EventStep::Deposit { account, amount } => {
                    tx.collection::<Account>()?.increment(account.as_str(), Account::fields().balance, *amount)?;
                }
                EventStep::Savepoint { name } => tx.savepoint(name)?,
                EventStep::RollbackTo { name } => tx.rollback_to(name).map_err(unknown)?,
                EventStep::Release { name } => tx.release(name).map_err(unknown)?,
                EventStep::Check => checks.push(stats_json(&events.verify()?)),
                EventStep::Fail => return Err(invalid_value("steps", format!("step {i} fails the transaction"))),
            }
        }
        Ok(json!({ "ids": events.ids()?, "checks": checks, "stats": stats_json(&events.verify()?) }))
    })?;
    Ok(ApiResponse::ok(out))
}

// ---------------------------------------------------------------------------------------------
// The change log: every committed write, as Debezium-shaped envelopes

/// The default number of events of one page of changes; at most [`MAX_PAGE`].
pub const DEFAULT_CHANGES: usize = 100;
/// Bytes of document images (before + after) one page of changes carries at most; a page
/// always carries at least one event, so a client never stalls on a large document.
pub const MAX_CHANGES_BYTES: usize = 4 << 20;
/// The longest a long poll (`GET /changes?wait_ms=`) may wait.
pub const MAX_WAIT_MS: u64 = 10_000;
/// How often a waiting long poll reads the log again.
pub const LONG_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The parameters of `GET /changes`.
struct ChangesQuery {
    since: Lsn,
    limit: usize,
    wait_ms: u64,
}

impl ChangesQuery {
    fn parse(query: &[(String, String)]) -> ApiResult<Self> {
        let mut q = Self { since: Lsn::ZERO, limit: DEFAULT_CHANGES, wait_ms: 0 };
        for (key, value) in query {
            match key.as_str() {
                "since" => q.since = Lsn::new(value.parse().map_err(|_| bad_param(key, value, "an LSN (0 or more)"))?),
                "limit" => q.limit = limit_param(key, value)?,
                "wait_ms" => {
                    q.wait_ms = value
                        .parse()
                        .ok()
                        .filter(|&ms| ms <= MAX_WAIT_MS)
                        .ok_or_else(|| bad_param(key, value, "milliseconds, at most 10000"))?;
                }
                _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
            }
        }
        Ok(q)
    }
}

/// A page size between 1 and [`MAX_PAGE`].
fn limit_param(key: &str, value: &str) -> ApiResult<usize> {
    value.parse().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| bad_param(key, value, "between 1 and 1000"))
}

/// Up to `limit` events of `events` (which start after `start`) as envelopes, cut short once
/// their images pass [`MAX_CHANGES_BYTES`]; and the LSN to resume after (the last event
/// sent, or `start`).
fn page_of(
    events: impl Iterator<Item = db4::Result<ChangeEvent>>,
    start: Lsn,
    limit: usize,
) -> ApiResult<(Vec<Value>, Lsn)> {
    let mut out = Vec::new();
    let (mut bytes, mut last) = (0, start);
    for event in events.take(limit) {
        let event = event?;
        bytes += event.before.as_ref().map_or(0, String::len) + event.after.as_ref().map_or(0, String::len);
        // An event left out here is the next page's first: the client resumes after `last`.
        if !out.is_empty() && bytes > MAX_CHANGES_BYTES {
            break;
        }
        out.push(event.to_json()?);
        last = event.lsn;
    }
    Ok((out, last))
}

/// `GET /changes?since=&limit=&wait_ms=`: the events after `since` (default 0: the whole
/// log), oldest first: `{"events": [envelope...], "last": lsn, "head": lsn}`. `last` is the
/// position to pass as `since` next (the last event sent, or `since`), `head` the newest event
/// in the log. `since` beyond `head` is refused (400), the events after `since` truncated
/// away answer 410 `log_truncated` with `oldest`. With `wait_ms`, an empty answer is held
/// until an event commits or the time is up (see [`handle_waiting`]).
fn list_changes(db: &Db, query: &[(String, String)]) -> ApiResult {
    let q = ChangesQuery::parse(query)?;
    let (events, last) = page_of(db.changes_since(q.since)?, q.since, q.limit)?;
    let head = db.last_lsn()?;
    if q.since > head {
        return Err(ApiError::InvalidParam(format!("since={} is beyond the newest event, {head}", q.since)));
    }
    Ok(ApiResponse::ok(json!({ "events": events, "last": last.get(), "head": head.get() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TruncateBody {
    before: u64,
}

/// `POST /changes/truncate` `{"before": lsn}`: [`Db::truncate_changes`] (the newest event and
/// those a consumer has not acknowledged stay): `{"dropped": n, "oldest": lsn}`.
fn truncate_changes(db: &Db, body: &[u8]) -> ApiResult {
    let req: TruncateBody = parse_json(body)?;
    let dropped = db.truncate_changes(Lsn::new(req.before))?;
    Ok(ApiResponse::ok(json!({ "dropped": dropped, "oldest": db.oldest_lsn()?.get() })))
}

/// `GET /changes/consumers`: `{"consumers": [{"name", "acked", "at"}...]}`, by name.
fn list_consumers(db: &Db) -> ApiResult {
    let consumers: Vec<Value> =
        db.consumers()?.into_iter().map(|c| json!({ "name": c.name, "acked": c.acked.get(), "at": c.at })).collect();
    Ok(ApiResponse::ok(json!({ "consumers": consumers })))
}

/// `DELETE /changes/consumers/{name}`: [`Db::remove_consumer`]; 404 if there is none.
fn remove_consumer(db: &Db, name: &str) -> ApiResult {
    if !db.remove_consumer(name)? {
        return Err(not_found("consumers", name));
    }
    Ok(ApiResponse::ok(json!({ "removed": name })))
}

/// `POST /changes/consumers/{name}/poll?max=`: registers the consumer if it is new (it then
/// starts before the oldest event kept) and answers the events after its acknowledged
/// position: `{"name", "acked": lsn, "events": [envelope...], "last": lsn}`.
///
/// HTTP is stateless, so a poll always starts after the *acknowledged* position: events
/// polled and not acknowledged come again (at-least-once). That is what a fresh
/// [`db4::Consumer`] does; the events are read with [`Db::changes_since`] from its position
/// rather than with `Consumer::poll`, so that a page is bounded in bytes as well as in count
/// (a Durable Object's isolate has 128 MB).
fn poll_consumer(db: &Db, name: &str, query: &[(String, String)]) -> ApiResult {
    let mut max = DEFAULT_CHANGES;
    for (key, value) in query {
        match key.as_str() {
            "max" => max = limit_param(key, value)?,
            _ => return Err(ApiError::InvalidParam(format!("unknown query parameter {key:?}"))),
        }
    }
    let consumer = db.consumer(name)?;
    let acked = consumer.position()?;
    let (events, last) = page_of(db.changes_since(acked)?, acked, max)?;
    Ok(ApiResponse::ok(json!({ "name": name, "acked": acked.get(), "events": events, "last": last.get() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    lsn: u64,
}

/// `POST /changes/consumers/{name}/ack` `{"lsn": n}`: [`db4::Consumer::ack`]; answers the
/// stored position `{"name", "acked": lsn}` (acknowledging at or before it changes nothing;
/// beyond the newest event is refused with 400 `change_log`).
fn ack_consumer(db: &Db, name: &str, body: &[u8]) -> ApiResult {
    let req: AckBody = parse_json(body)?;
    let consumer = db.consumer(name)?;
    consumer.ack(Lsn::new(req.lsn))?;
    Ok(ApiResponse::ok(json!({ "name": name, "acked": consumer.position()?.get() })))
}

/// How long `req` may wait for changes: `wait_ms` of a well-formed `GET /changes`, if any.
fn long_poll_wait(req: &ApiRequest<'_>) -> Option<Duration> {
    let Target { segments, query } = split_target(req.target).ok()?;
    if req.method != Method::Get || segments != ["changes"] {
        return None;
    }
    let wait_ms = ChangesQuery::parse(&query).ok()?.wait_ms;
    (wait_ms > 0).then(|| Duration::from_millis(wait_ms))
}

/// Whether a `GET /changes` answer has no events yet (a long poll waits on).
fn nothing_yet(resp: &ApiResponse) -> bool {
    resp.status == 200 && resp.body["events"].as_array().is_some_and(Vec::is_empty)
}

/// [`handle`], and for a long poll (`GET /changes?wait_ms=`) that finds no events, the same
/// request again every [`LONG_POLL_INTERVAL`] until it finds some or `wait_ms` has passed
/// (counted in rounds of the interval, so without a clock). `sleep` waits: a timer on the
/// Durable Object, which lets it serve other requests (the writes a poll waits for)
/// meanwhile; natively a thread sleep.
pub async fn handle_waiting<S: Future<Output = ()>>(
    db: &Db,
    tenant: &str,
    req: &ApiRequest<'_>,
    mut sleep: impl FnMut(Duration) -> S,
) -> ApiResponse {
    let mut resp = handle(db, tenant, req);
    if let Some(wait) = long_poll_wait(req) {
        let rounds = wait.as_millis().div_ceil(LONG_POLL_INTERVAL.as_millis());
        for _ in 0..rounds {
            if !nothing_yet(&resp) {
                break;
            }
            sleep(LONG_POLL_INTERVAL).await;
            resp = handle(db, tenant, req);
        }
    }
    resp
}

// ---------------------------------------------------------------------------------------------
// Transactions with application errors

/// The error db4 sees when the application aborts a transaction for its own reasons.
const ABORTED: &str = "aborted by the application";

fn stash(e: ApiError, failure: &mut Option<ApiError>) -> db4::Error {
    match e {
        ApiError::Db(e) => e,
        other => {
            *failure = Some(other);
            db4::Error::InvalidQuery { collection: String::new(), reason: ABORTED.to_owned() }
        }
    }
}

fn finish<R>(out: db4::Result<R>, failure: Option<ApiError>) -> ApiResult<R> {
    match (out, failure) {
        (Ok(r), _) => Ok(r),
        (Err(db4::Error::InvalidQuery { collection, reason }), Some(app))
            if collection.is_empty() && reason == ABORTED =>
        {
            Err(app)
        }
        (Err(e), _) => Err(ApiError::Db(e)),
    }
}

/// Runs `f` in a db4 transaction; an application error rolls it back like a db4 error does.
fn in_transaction<R>(db: &Db, f: impl FnOnce(&Transaction<'_>) -> ApiResult<R>) -> ApiResult<R> {
    let mut failure = None;
    let out = db.transaction(|tx| f(tx).map_err(|e| stash(e, &mut failure)));
    finish(out, failure)
}

/// Runs `f` as a nested transaction of `tx`: on any error only `f`'s writes are undone.
fn nested<R>(tx: &Transaction<'_>, f: impl FnOnce(&Transaction<'_>) -> ApiResult<R>) -> ApiResult<R> {
    let mut failure = None;
    let out = tx.transaction(|tx| f(tx).map_err(|e| stash(e, &mut failure)));
    finish(out, failure)
}

// ---------------------------------------------------------------------------------------------
// Parsing helpers

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::BadJson("the body is empty".to_owned()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

fn own_tenant(doc: &mut Article, tenant: &str) -> ApiResult<()> {
    if doc.tenant_id.is_empty() {
        doc.tenant_id = tenant.to_owned();
    } else if doc.tenant_id != tenant {
        return Err(invalid_value("tenant_id", format!("{:?} is not this tenant ({tenant:?})", doc.tenant_id)));
    }
    Ok(())
}

fn check_batch(n: usize) -> ApiResult<()> {
    if n > MAX_BATCH {
        return Err(ApiError::InvalidParam(format!("{n} items in one request; the limit is {MAX_BATCH}")));
    }
    Ok(())
}

fn not_found(collection: &str, id: &str) -> ApiError {
    ApiError::Db(db4::Error::NotFound { collection: collection.to_owned(), id: id.to_owned() })
}

fn invalid_value(field: &'static str, reason: String) -> ApiError {
    ApiError::InvalidValue { field, reason }
}

fn bad_param(key: &str, value: &str, expected: &str) -> ApiError {
    ApiError::InvalidParam(format!("query parameter {key}={value:?}: expected {expected}"))
}

fn int_param(key: &str, value: &str) -> ApiResult<i64> {
    value.parse().map_err(|_| bad_param(key, value, "an integer"))
}

/// Splits a Worker path `/t/{tenant}/rest...` into the tenant and the rest (`/rest...`, empty
/// if none); `None` if the path does not start with `/t/` or the tenant name is not valid.
///
/// Tenant names are 1 to 64 ASCII letters, digits, `-` or `_`: one Durable Object each.
pub fn tenant_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/t/")?;
    let (tenant, rest) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let valid =
        (1..=64).contains(&tenant.len()) && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    valid.then_some((tenant, rest))
}

/// A request target, decoded.
pub(crate) struct Target {
    /// The path's segments.
    pub segments: Vec<String>,
    /// The query's `key=value` pairs, in order.
    pub query: Vec<(String, String)>,
}

/// Splits a request target into decoded path segments and decoded query pairs.
pub(crate) fn split_target(target: &str) -> ApiResult<Target> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments =
        path.split('/').filter(|s| !s.is_empty()).map(|s| percent_decode(s, false)).collect::<ApiResult<Vec<_>>>()?;
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Ok(Target { segments, query: pairs })
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); refuses malformed escapes
/// and invalid UTF-8.
pub fn percent_decode(s: &str, plus_is_space: bool) -> ApiResult<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let byte = byte.ok_or_else(|| ApiError::InvalidParam(format!("malformed percent escape in {s:?}")))?;
                out.push(byte);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::InvalidParam(format!("{s:?} does not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_refuses_bad_input_without_panicking() {
        assert_eq!(percent_decode("a%20b", false).ok().as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", true).ok().as_deref(), Some("a b"));
        assert_eq!(percent_decode("a+b", false).ok().as_deref(), Some("a+b"));
        for bad in ["%", "%2", "%zz", "%ff", "%e2%82"] {
            assert!(percent_decode(bad, false).is_err(), "{bad}");
        }
        assert_eq!(percent_decode("%E2%82%AC", false).ok().as_deref(), Some("€"));
    }

    #[test]
    fn tenants_come_from_the_path() {
        assert_eq!(tenant_of("/t/acme/articles/a-1"), Some(("acme", "/articles/a-1")));
        assert_eq!(tenant_of("/t/acme"), Some(("acme", "")));
        for bad in ["/t//articles", "/t/a%20b/x", "/articles", "/t/", &format!("/t/{}/x", "a".repeat(65))] {
            assert_eq!(tenant_of(bad), None, "{bad}");
        }
    }
}
