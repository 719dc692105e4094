//! [`LocalShards`]: a [`ShardClient`] whose shard objects and coordinator are servers in this
//! process, over in-memory databases or files. The same protocol bytes as in a Worker, without
//! the network: for tests and benchmarks of the router natively.

use super::router::{BoxFuture, ShardClient};
use super::server::{CoordinatorServer, ShardServer};
use crate::db::{Db, DbOptions};
use crate::error::Result;
use crate::schema::Partitioned;
use crate::shard::ShardId;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type Register = fn(ShardServer) -> ShardServer;

/// Shard objects and a coordinator in this process: each `(collection, shard)` a
/// [`ShardServer`] over its own database, created on first use.
pub struct LocalShards {
    cluster: String,
    dir: Option<std::path::PathBuf>,
    options: DbOptions,
    register: Vec<Register>,
    servers: RefCell<HashMap<(String, u32), Rc<ShardServer>>>,
    coordinator: CoordinatorServer,
    requests: std::cell::Cell<u64>,
    /// Requests left before every request fails (a simulated crash of the caller's side).
    fail_after: std::cell::Cell<Option<u64>>,
}

impl std::fmt::Debug for LocalShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalShards").field("cluster", &self.cluster).field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn unique_cluster() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("local-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl LocalShards {
    /// Shards and coordinator on in-memory databases, gone when dropped.
    ///
    /// # Errors
    ///
    /// A backend error.
    pub fn in_memory() -> Result<Self> {
        Ok(Self {
            cluster: unique_cluster(),
            dir: None,
            options: DbOptions::default(),
            register: Vec::new(),
            servers: RefCell::new(HashMap::new()),
            coordinator: CoordinatorServer::new(Db::open_in_memory()?)?,
            requests: std::cell::Cell::new(0),
            fail_after: std::cell::Cell::new(None),
        })
    }

    /// Shards as files `<collection>-<shard>.db` in `dir` and the coordinator as
    /// `coordinator.db`, so a new `LocalShards` on the same directory finds them again.
    ///
    /// # Errors
    ///
    /// A backend error; an `Io` error if `dir` cannot be created.
    #[cfg(all(feature = "sqlite", feature = "fs"))]
    pub fn open(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| crate::wal::io_error("create", &dir, e))?;
        let coordinator = CoordinatorServer::new(Db::open(dir.join("coordinator.db"))?)?;
        Ok(Self {
            cluster: format!("dir:{}", dir.display()),
            dir: Some(dir),
            options: DbOptions::default(),
            register: Vec::new(),
            servers: RefCell::new(HashMap::new()),
            coordinator,
            requests: std::cell::Cell::new(0),
            fail_after: std::cell::Cell::new(None),
        })
    }

    /// The options each shard's database is opened with.
    #[must_use]
    pub fn with_options(mut self, options: DbOptions) -> Self {
        self.options = options;
        self
    }

    /// Every shard object serves `T`'s collection too.
    #[must_use]
    pub fn serve<T: Partitioned>(mut self) -> Self {
        self.register.push(|s| s.serve::<T>());
        self
    }

    /// The server of `(collection, shard)`, created on first use.
    ///
    /// # Errors
    ///
    /// A backend error if its database cannot be opened.
    pub fn server(&self, collection: &str, shard: ShardId) -> Result<Rc<ShardServer>> {
        let key = (collection.to_owned(), shard.get());
        if let Some(s) = self.servers.borrow().get(&key) {
            return Ok(Rc::clone(s));
        }
        let db = match &self.dir {
            #[cfg(all(feature = "sqlite", feature = "fs"))]
            Some(dir) => Db::open_with(dir.join(format!("{collection}-{:05}.db", shard.get())), self.options.clone())?,
            _ => Db::open_in_memory_with(self.options.clone())?,
        };
        let server = Rc::new(self.register.iter().try_fold(ShardServer::new(db)?, |s, f| Ok::<_, crate::Error>(f(s)))?);
        self.servers.borrow_mut().insert(key, Rc::clone(&server));
        Ok(server)
    }

    /// The coordinator's server.
    pub fn coordinator_server(&self) -> &CoordinatorServer {
        &self.coordinator
    }

    /// Requests sent to shard objects so far (the subrequests a Worker would make).
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// The `n`-th request from now (to a shard or the coordinator) is delivered but its reply
    /// lost, and every later one fails undelivered, with a backend error, as if the caller
    /// had died there, until [`heal`](Self::heal): for testing
    /// that a split or a write interrupted anywhere leaves a state that can be resumed.
    pub fn fail_after(&self, n: u64) {
        self.fail_after.set(Some(n));
    }

    /// Requests succeed again.
    pub fn heal(&self) {
        self.fail_after.set(None);
    }

    /// Whether this request is delivered, and whether its reply is lost: the request that
    /// uses up `fail_after` is delivered and its reply lost (the caller died after sending);
    /// every later one is not delivered.
    fn deliver(&self) -> (bool, bool) {
        match self.fail_after.get() {
            None => (true, false),
            Some(0) => (false, true),
            Some(1) => {
                self.fail_after.set(Some(0));
                (true, true)
            }
            Some(n) => {
                self.fail_after.set(Some(n - 1));
                (true, false)
            }
        }
    }
}

fn injected() -> crate::Error {
    crate::Error::Backend(crate::BackendError::new(
        crate::BackendErrorKind::Io,
        "LocalShards: injected failure (fail_after)",
    ))
}

impl ShardClient for Rc<LocalShards> {
    fn shard<'a>(&'a self, collection: &'a str, shard: ShardId, body: Vec<u8>) -> BoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(async move {
            let (delivered, lost) = self.deliver();
            let reply = if delivered {
                self.requests.set(self.requests.get() + 1);
                Some(self.server(collection, shard)?.handle(&body))
            } else {
                None
            };
            match reply {
                Some(reply) if !lost => Ok(reply),
                _ => Err(injected()),
            }
        })
    }

    fn coordinator(&self, body: Vec<u8>) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let (delivered, lost) = self.deliver();
            let reply = delivered.then(|| self.coordinator.handle(&body));
            match reply {
                Some(reply) if !lost => Ok(reply),
                _ => Err(injected()),
            }
        })
    }

    fn cluster(&self) -> &str {
        &self.cluster
    }
}
