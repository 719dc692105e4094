//! Cold stores whose I/O is asynchronous (R2 from a Durable Object) behind the synchronous
//! [`ColdStore`] seam.
//!
//! A Durable Object's SQL is synchronous and R2 is not, and the tier logic (the read path
//! hot → warm → cold, compaction) runs inside synchronous transactions. [`StagedStore`]
//! bridges them without changing that logic:
//!
//! - **Reads.** The store answers from what it has fetched; when a read needs bytes it does
//!   not hold, it records them and fails with [`BackendErrorKind::NotFetched`].
//!   [`StagedStore::read`] runs a read, fetches what it missed and runs it again. A hot or
//!   warm read never reaches the store, so it costs no asynchronous step; a cold point read
//!   costs one (the block holding the document), and the answer is the one the synchronous
//!   store would give.
//! - **Writes.** The store [defers its writes](ColdStore::defers_writes): compaction keeps
//!   each new segment in the hot database, committed with the compaction, and reads find it
//!   there. [`StagedStore::flush`] uploads pending objects (a conditional put: never over an
//!   existing object) and drops their hot copies. A crash anywhere in between loses nothing:
//!   a segment is in the hot database until it is in the store, and an upload that happened
//!   before a crash is recognised by its bytes the next time.
//! - **Deletes** of orphaned objects are remembered and done by the next flush; one lost in
//!   a crash is found again by the next compaction.
//!
//! Objects live under the store's prefix, so that many databases (one per shard object) can
//! share one bucket: each database sees, lists and deletes only its own.

use crate::db::Db;
use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::tier::cold::CompactionReport;
use crate::tier::{ColdStore, ObjectInfo};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

/// How many times [`StagedStore::read`] fetches and runs again before giving up (a read that
/// touches more segments than this, one miss per run, fails with a clear error).
const MAX_ROUNDS: usize = 32;

/// The default budget of fetched bytes a [`StagedStore`] keeps between reads.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// An object store with asynchronous I/O, for the cold tier through a [`StagedStore`]: R2
/// on Cloudflare (`db4::cloudflare::R2Store`). Every synchronous [`ColdStore`] is one too
/// (its futures are ready at once), so the staged path can be exercised natively.
///
/// Keys are full keys (the [`StagedStore`]'s prefix included).
pub trait AsyncColdStore {
    /// Stores `bytes` under `key` unless an object is there: `true` if it wrote, `false` if
    /// the key exists (nothing changed).
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn put_new(&self, key: &str, bytes: Vec<u8>) -> impl Future<Output = Result<bool>>;

    /// The bytes `range` of the object under `key`, clamped to its end (`0..u64::MAX` is the
    /// whole object), or `None` if there is no such object.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn get_range(&self, key: &str, range: Range<u64>) -> impl Future<Output = Result<Option<Vec<u8>>>>;

    /// The objects whose keys start with `prefix`, in key order.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectInfo>>>;

    /// Removes the object under `key`; a missing object is not an error.
    ///
    /// # Errors
    ///
    /// An I/O failure as a backend error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>>;

    /// A short description for `Debug` output and errors.
    fn describe(&self) -> String {
        "asynchronous cold store".to_owned()
    }
}

impl<S: ColdStore> AsyncColdStore for S {
    fn put_new(&self, key: &str, bytes: Vec<u8>) -> impl Future<Output = Result<bool>> {
        std::future::ready(match self.put(key, &bytes) {
            Ok(()) => Ok(true),
            Err(Error::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> impl Future<Output = Result<Option<Vec<u8>>>> {
        std::future::ready(if range == (0..u64::MAX) { self.get(key) } else { ColdStore::get_range(self, key, range) })
    }

    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectInfo>>> {
        std::future::ready(ColdStore::list(self, prefix))
    }

    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> {
        std::future::ready(ColdStore::delete(self, key))
    }

    fn describe(&self) -> String {
        ColdStore::describe(self)
    }
}

/// What [`StagedStore::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Pending objects now in the store (uploaded, or found there already from an upload a
    /// crash interrupted before its hot copy was dropped).
    pub uploaded: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Orphaned objects deleted from the store.
    pub deleted: u64,
}

/// Figures of a [`StagedStore`], for monitoring its memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StagedStats {
    /// Bytes of fetched objects and ranges held now.
    pub cached_bytes: u64,
    /// The budget they are brought under after each read.
    pub budget_bytes: u64,
    /// Fetches from the store (ranges, whole objects, listings).
    pub fetches: u64,
    /// Reads of the store answered from fetched bytes.
    pub hits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Fetch {
    /// The bytes `start..end` of `key` (`0..u64::MAX`: the whole object); key without prefix.
    Range { key: String, start: u64, end: u64 },
    /// Every object under the prefix.
    List,
}

struct Entry {
    bytes: Option<Vec<u8>>,
    used: u64,
}

#[derive(Default)]
struct State {
    cache: HashMap<Fetch, Entry>,
    cached: usize,
    tick: u64,
    listing: Option<Vec<ObjectInfo>>,
    misses: Vec<(ThreadId, Fetch)>,
    deletes: BTreeSet<String>,
    fetches: u64,
    hits: u64,
}

struct Shared<S> {
    remote: S,
    prefix: String,
    /// The budget of fetched bytes (settable on any clone).
    budget: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
}

/// A [`ColdStore`] over an [`AsyncColdStore`]: give a clone to
/// [`TierConfig::cold`](crate::tier::TierConfig::cold) and drive it with [`read`](Self::read),
/// [`compact`](Self::compact) and [`flush`](Self::flush). How it works: "Tiers and change
/// streams on Cloudflare" in `docs/cloudflare.md`.
///
/// - Reads stop at the first bytes not fetched yet ([`BackendErrorKind::NotFetched`]);
///   [`read`](Self::read) fetches them and runs the read again.
/// - Compaction keeps new segments in the hot database (the store
///   [defers writes](ColdStore::defers_writes)); [`flush`](Self::flush) uploads them.
/// - Objects live under the store's prefix, so databases sharing a bucket stay apart.
///
/// Clones share one store and one cache of fetched bytes.
pub struct StagedStore<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for StagedStore<S> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<S: AsyncColdStore> std::fmt::Debug for StagedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedStore")
            .field("remote", &self.shared.remote.describe())
            .field("prefix", &self.shared.prefix)
            .field("budget", &self.budget())
            .finish_non_exhaustive()
    }
}

fn not_fetched(what: &str) -> Error {
    BackendError::new(
        BackendErrorKind::NotFetched,
        format!("{what} is not fetched yet: run the read through StagedStore::read (a cold read on an asynchronous store is one asynchronous step)"),
    )
    .into()
}

impl<S: AsyncColdStore> StagedStore<S> {
    /// A staged store keeping this database's objects under `prefix` in `remote`, with
    /// [`DEFAULT_CACHE_BYTES`] of fetched bytes kept between reads.
    ///
    /// `prefix` is empty or follows the [`ColdStore`] key rules and ends with `/` (for
    /// example `"tickets/00003/"`, one per shard object sharing a bucket).
    ///
    /// # Errors
    ///
    /// [`BackendErrorKind::Unsupported`] for a prefix outside those rules.
    pub fn new(remote: S, prefix: &str) -> Result<Self> {
        if !prefix.is_empty() {
            let ok = prefix.ends_with('/') && crate::tier::cold::check_key(prefix.trim_end_matches('/')).is_ok();
            if !ok {
                return Err(BackendError::new(
                    BackendErrorKind::Unsupported,
                    format!("invalid cold store prefix {prefix:?}: cold store key characters, ending with '/'"),
                )
                .into());
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                remote,
                prefix: prefix.to_owned(),
                budget: std::sync::atomic::AtomicUsize::new(DEFAULT_CACHE_BYTES),
                state: Mutex::default(),
            }),
        })
    }

    /// The same store with a budget of `bytes` for fetched bytes kept between reads (the
    /// bytes one read needs are kept until it ends, whatever the budget). Clones share it.
    #[must_use]
    pub fn with_cache_bytes(self, bytes: usize) -> Self {
        self.shared.budget.store(bytes, std::sync::atomic::Ordering::Relaxed);
        self
    }

    fn budget(&self) -> usize {
        self.shared.budget.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The asynchronous store underneath.
    pub fn remote(&self) -> &S {
        &self.shared.remote
    }

    /// The prefix of this database's objects in it.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The store's figures: fetched bytes held, fetches, hits.
    pub fn stats(&self) -> StagedStats {
        let state = self.state();
        StagedStats {
            cached_bytes: state.cached as u64,
            budget_bytes: self.budget() as u64,
            fetches: state.fetches,
            hits: state.hits,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.shared.prefix)
    }

    /// Runs `read` (any synchronous db4 call: a get, a query with `include_cold`, a write that
    /// brings a cold document back), fetching what it needs from the store and running it
    /// again, until it needs nothing more. Hot and warm reads finish on the first run,
    /// without waiting on anything.
    ///
    /// `read` may run several times, so it must not have effects outside the database (a
    /// failed run changed nothing there: it stopped at its first missing byte).
    ///
    /// # Errors
    ///
    /// What `read` returns; a store failure while fetching;
    /// [`BackendErrorKind::NotFetched`] if it still missed bytes after 32 runs.
    pub async fn read<R>(&self, mut read: impl FnMut() -> Result<R>) -> Result<R> {
        let started = self.state().tick + 1;
        let me = std::thread::current().id();
        let mut last = None;
        for _ in 0..MAX_ROUNDS {
            let result = read();
            let misses = self.take_misses(me);
            match result {
                Err(e) if !misses.is_empty() && e.backend_kind() == Some(BackendErrorKind::NotFetched) => {
                    for fetch in misses {
                        self.fetch(fetch).await?;
                    }
                    last = Some(e);
                }
                other => {
                    self.trim(started);
                    return other;
                }
            }
        }
        self.trim(started);
        Err(last.unwrap_or_else(|| not_fetched("a cold object")))
    }

    fn take_misses(&self, me: ThreadId) -> Vec<Fetch> {
        let mut state = self.state();
        let (mine, others) = std::mem::take(&mut state.misses).into_iter().partition(|(t, _)| *t == me);
        state.misses = others;
        let mut out: Vec<Fetch> = Vec::new();
        for (_, f) in mine {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    async fn fetch(&self, fetch: Fetch) -> Result<()> {
        match &fetch {
            Fetch::List => {
                let prefix = self.shared.prefix.clone();
                let objects = self.shared.remote.list(&prefix).await?;
                let mut state = self.state();
                state.fetches += 1;
                state.listing = Some(
                    objects
                        .into_iter()
                        .filter_map(|o| o.key.strip_prefix(&prefix).map(|k| ObjectInfo::new(k, o.size)))
                        .collect(),
                );
            }
            Fetch::Range { key, start, end } => {
                let bytes = self.shared.remote.get_range(&self.full(key), *start..*end).await?;
                let mut state = self.state();
                state.fetches += 1;
                state.tick += 1;
                let used = state.tick;
                state.cached += bytes.as_ref().map_or(0, Vec::len);
                if let Some(old) = state.cache.insert(fetch, Entry { bytes, used }) {
                    state.cached -= old.bytes.as_ref().map_or(0, Vec::len);
                }
            }
        }
        Ok(())
    }

    /// Evicts the least recently used fetched bytes down to the budget, keeping what the read
    /// that started at `started` used.
    fn trim(&self, started: u64) {
        let budget = self.budget();
        let mut state = self.state();
        if state.cached <= budget {
            return;
        }
        let mut order: Vec<(u64, Fetch)> =
            state.cache.iter().filter(|(_, e)| e.used < started).map(|(k, e)| (e.used, k.clone())).collect();
        order.sort_by_key(|(used, _)| *used);
        for (_, key) in order {
            if state.cached <= budget {
                break;
            }
            if let Some(e) = state.cache.remove(&key) {
                state.cached -= e.bytes.as_ref().map_or(0, Vec::len);
            }
        }
    }

    /// The objects compaction left pending in `db`'s hot database (not uploaded yet), with
    /// their sizes, keys without this store's prefix.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub fn pending(&self, db: &Db) -> Result<Vec<ObjectInfo>> {
        Ok(db.cold_pending()?.into_iter().map(|(k, n)| ObjectInfo::new(k, n)).collect())
    }

    /// Drops every fetched copy of `key` (without this store's prefix) and the listing, so
    /// the next read of it goes to the store. Objects never change under a key, so this is
    /// only needed when something outside db4 replaced or removed one.
    pub fn evict(&self, key: &str) {
        self.forget(key);
    }

    /// Drops every fetched byte and the listing (to give the memory back, or to measure reads
    /// that must go to the store).
    pub fn clear(&self) {
        let mut state = self.state();
        state.cache.clear();
        state.cached = 0;
        state.listing = None;
    }

    fn forget(&self, key: &str) {
        let mut state = self.state();
        let gone: Vec<Fetch> =
            state.cache.keys().filter(|f| matches!(f, Fetch::Range { key: k, .. } if k == key)).cloned().collect();
        for f in gone {
            if let Some(e) = state.cache.remove(&f) {
                state.cached -= e.bytes.as_ref().map_or(0, Vec::len);
            }
        }
        state.listing = None;
    }

    /// Uploads the objects compaction left pending in `db` (whose tier config holds a clone
    /// of this store) and drops their hot copies, one object at a time; then deletes the
    /// orphaned objects compaction found. Safe to run at any time and again after a crash.
    ///
    /// # Errors
    ///
    /// A store or database failure (what was uploaded before it stays uploaded);
    /// [`Error::Corrupted`] naming the key if the store holds different bytes under a pending
    /// object's key (nothing is overwritten).
    pub async fn flush(&self, db: &Db) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        for (key, _) in db.cold_pending()? {
            let Some(bytes) = db.cold_pending_object(&key)? else { continue };
            let full = self.full(&key);
            let len = bytes.len() as u64;
            if !self.shared.remote.put_new(&full, bytes.clone()).await? {
                // Uploaded before a crash (then it is these bytes), or something else is there.
                let there = self.shared.remote.get_range(&full, 0..u64::MAX).await?;
                if there.as_deref() != Some(&bytes[..]) {
                    return Err(Error::corrupted(
                        "cold",
                        None,
                        format!(
                            "cold object {full} in {} holds other bytes than the pending segment",
                            self.shared.remote.describe()
                        ),
                    ));
                }
            }
            db.cold_uploaded(&key)?;
            self.forget(&key);
            report.uploaded += 1;
            report.bytes += len;
        }
        let deletes = std::mem::take(&mut self.state().deletes);
        for key in deletes {
            self.shared.remote.delete(&self.full(&key)).await?;
            self.forget(&key);
            report.deleted += 1;
        }
        Ok(report)
    }

    /// [`Db::compact`] on `db` with this store: flushes what is pending, lists the store,
    /// compacts (fetching the segments it rewrites), and flushes the new segments. A crash at
    /// any point leaves the database readable and the next `compact` or `flush` finishes the
    /// uploads.
    ///
    /// # Errors
    ///
    /// As [`Db::compact`] and [`flush`](Self::flush).
    pub async fn compact(&self, db: &Db) -> Result<CompactionReport> {
        self.flush(db).await?;
        self.fetch(Fetch::List).await?;
        let report = self.read(|| db.compact()).await;
        self.state().listing = None;
        let report = report?;
        self.flush(db).await?;
        Ok(report)
    }

    fn lookup(&self, key: &str, start: u64, end: u64) -> Result<Option<Vec<u8>>> {
        let fetch = Fetch::Range { key: key.to_owned(), start, end };
        let mut state = self.state();
        state.tick += 1;
        let tick = state.tick;
        if let Some(entry) = state.cache.get_mut(&fetch) {
            entry.used = tick;
            let bytes = entry.bytes.clone();
            state.hits += 1;
            return Ok(bytes);
        }
        // A whole object fetched before answers any range of it.
        let whole = Fetch::Range { key: key.to_owned(), start: 0, end: u64::MAX };
        if let Some(entry) = state.cache.get_mut(&whole) {
            entry.used = tick;
            let bytes = entry.bytes.as_ref().map(|b| {
                let end = usize::try_from(end).unwrap_or(usize::MAX).min(b.len());
                let start = usize::try_from(start).unwrap_or(usize::MAX).min(end);
                b[start..end].to_vec()
            });
            state.hits += 1;
            return Ok(bytes);
        }
        state.misses.push((std::thread::current().id(), fetch));
        Err(not_fetched(&format!("cold object {}{key} (bytes {start}..{end})", self.shared.prefix)))
    }
}

impl<S: AsyncColdStore + Send + Sync> ColdStore for StagedStore<S> {
    fn put(&self, key: &str, _bytes: &[u8]) -> Result<()> {
        Err(BackendError::new(
            BackendErrorKind::Unsupported,
            format!("cold object {key}: a staged store takes its writes through StagedStore::flush"),
        )
        .into())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.lookup(key, 0, u64::MAX)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        self.lookup(key, range.start, range.end)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut state = self.state();
        match &state.listing {
            Some(all) => Ok(all.iter().filter(|o| o.key.starts_with(prefix)).cloned().collect()),
            None => {
                state.misses.push((std::thread::current().id(), Fetch::List));
                Err(not_fetched(&format!("the listing of {}", self.shared.prefix)))
            }
        }
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.state().deletes.insert(key.to_owned());
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} under {:?}", self.shared.remote.describe(), self.shared.prefix)
    }

    fn defers_writes(&self) -> bool {
        true
    }
}
