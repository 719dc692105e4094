//! What the scenarios run against: the app's handlers natively over in-memory db4 databases
//! (one per tenant, as one Durable Object per tenant), or the app served by real workerd.

use crate::client::Conn;
use db4::Db;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use worker_app::api::{self, ApiRequest, Method};

/// A response as the scenarios see it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// Something that answers the app's HTTP API (from several threads at once: a long poll
/// waits while another thread writes).
pub trait Target: Sync {
    /// Sends `method path` (path from the root: `/t/{tenant}/...`) with an optional body.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply;

    /// A tenant name unique to this scenario and run (workerd keeps its storage between runs).
    fn tenant(&self, scenario: &str) -> String;
}

/// The handlers of `worker_app::api`, called directly.
pub struct Native {
    dbs: Mutex<HashMap<String, Db>>,
    /// The tier objects: a database and its staged cold store over memory, per name.
    tiers: Mutex<HashMap<String, (Db, Staged)>>,
    /// This target's shard objects (`LocalShards` is single-threaded, so they live in a
    /// thread-local map under this id).
    id: u64,
}

thread_local! {
    /// The sharded routes' shard objects of each `Native` target, on this thread.
    static SHARDS: std::cell::RefCell<HashMap<u64, std::rc::Rc<db4::remote::LocalShards>>> =
        std::cell::RefCell::new(HashMap::new());
}

impl Native {
    pub fn new() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self { dbs: Mutex::new(HashMap::new()), tiers: Mutex::default(), id: NEXT.fetch_add(1, Ordering::Relaxed) }
    }

    /// The tiered routes, as the tier object runs them, over a memory store.
    fn tiered(&self, name: &str, rest: &str, method: &str, body: Option<&[u8]>) -> Reply {
        let (db, staged) = {
            let mut tiers = self.tiers.lock().unwrap();
            tiers
                .entry(name.to_owned())
                .or_insert_with(|| {
                    let remote = std::sync::Arc::new(db4::tier::MemoryStore::new());
                    let staged = db4::tier::StagedStore::new(remote, &worker_app::tiered::prefix_for(name))
                        .expect("a valid prefix")
                        .with_cache_bytes(worker_app::tiered::CACHE_BYTES);
                    let options = db4::DbOptions::default().tiers(worker_app::tiered::tier_config(&staged));
                    (Db::open_in_memory_with(options).expect("in-memory database"), staged)
                })
                .clone()
        };
        let target = format!("/{rest}");
        let req = ApiRequest { method: Method::parse(method), target: &target, body: body.unwrap_or_default() };
        let r = block_on(worker_app::tiered::route(&db, &staged, &req, true));
        let text = serde_json::to_string(&r.body).expect("serializable body");
        Reply { status: r.status, body: serde_json::from_str(&text).expect("JSON body") }
    }

    /// The sharded routes, as the Worker runs them, over shard objects in this process.
    fn sharded(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        let shards = SHARDS.with(|m| {
            m.borrow_mut()
                .entry(self.id)
                .or_insert_with(|| {
                    // Before images, as the app's shard objects keep them (streams carry deletes).
                    let local = db4::remote::LocalShards::in_memory()
                        .expect("in-memory shards")
                        .with_options(db4::DbOptions::default().before_images(true));
                    std::rc::Rc::new(
                        local.serve::<worker_app::sharded::Ticket>().serve::<worker_app::sharded::KbArticle>(),
                    )
                })
                .clone()
        });
        let req = ApiRequest { method: Method::parse(method), target: path, body: body.unwrap_or_default() };
        let r = block_on(worker_app::sharded::route(shards, &req));
        let text = serde_json::to_string(&r.body).expect("serializable body");
        Reply { status: r.status, body: serde_json::from_str(&text).expect("JSON body") }
    }
}

impl Target for Native {
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        // The Worker's own routing, as in src/worker.rs.
        let (path_only, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        if path_only == "/health" {
            return Reply { status: 200, body: serde_json::json!({ "ok": true }) };
        }
        if let Some((name, _)) = worker_app::tiered::name_of(path_only) {
            let rest = path.strip_prefix(&format!("/tier/{name}/")).unwrap_or("");
            return self.tiered(name, rest, method, body);
        }
        if worker_app::sharded::is_sharded(path_only) {
            return self.sharded(method, path, body);
        }
        let Some((tenant, rest)) = api::tenant_of(path_only) else {
            let r = api::ApiError::NoRoute.to_response();
            return Reply { status: r.status, body: r.body };
        };
        let db = {
            let mut dbs = self.dbs.lock().unwrap();
            dbs.entry(tenant.to_owned())
                .or_insert_with(|| Db::open_in_memory_with(api::db_options()).expect("in-memory database"))
                .clone()
        };
        let target = match query {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let req = ApiRequest { method: Method::parse(method), target: &target, body: body.unwrap_or_default() };
        // As the Durable Object does, but a long poll sleeps on this thread instead of a timer.
        let r = block_on(api::handle_waiting(&db, tenant, &req, |d| {
            std::thread::sleep(d);
            std::future::ready(())
        }));
        // Through text, as over HTTP.
        let text = serde_json::to_string(&r.body).expect("serializable body");
        Reply { status: r.status, body: serde_json::from_str(&text).expect("JSON body") }
    }

    fn tenant(&self, scenario: &str) -> String {
        scenario.to_owned()
    }
}

type Staged = db4::tier::StagedStore<std::sync::Arc<db4::tier::MemoryStore>>;

/// Runs a future that never waits on anything (natively, `handle_waiting` sleeps
/// synchronously and its futures are always ready).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("handle_waiting waited on something natively"),
    }
}

/// The app on workerd, at `DB4_WORKERD_URL` (for example `http://127.0.0.1:8787`).
pub struct Http {
    pub host: String,
    run: String,
}

impl Http {
    /// The target named by `DB4_WORKERD_URL`; panics (failing the test) without it.
    pub fn required() -> Self {
        Self::from_env().expect("DB4_WORKERD_URL must name the app on workerd; examples/worker-app/e2e.sh sets it")
    }

    /// The app on miniflare, at `DB4_MINIFLARE_URL`; panics (failing the test) without it.
    pub fn miniflare() -> Self {
        Self::from_var("DB4_MINIFLARE_URL")
            .expect("DB4_MINIFLARE_URL must name the app on miniflare; examples/worker-app/e2e.sh sets it")
    }

    /// The target named by `DB4_WORKERD_URL`, or `None`.
    fn from_env() -> Option<Self> {
        Self::from_var("DB4_WORKERD_URL")
    }

    fn from_var(var: &str) -> Option<Self> {
        let url = std::env::var(var).ok()?;
        let host = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let run = std::env::var("DB4_E2E_RUN_ID").unwrap_or_else(|_| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            format!("{}-{}", t.as_secs(), std::process::id())
        });
        Some(Self { host, run })
    }
}

impl Target for Http {
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        let reply = Conn::open(&self.host)
            .and_then(|mut c| c.send(method, path, body, false))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let body = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: status {}, body is not JSON ({e}): {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            )
        });
        Reply { status: reply.status, body }
    }

    fn tenant(&self, scenario: &str) -> String {
        format!("{scenario}-{}", self.run).replace('_', "-")
    }
}
