//! The cold tier on R2: an [`AsyncColdStore`] over a `worker::Bucket`, used from a Durable
//! Object through a [`StagedStore`](crate::tier::StagedStore) (R2 is asynchronous, the
//! object's SQL is not). Segments are the same bytes as natively (gzip JSON-Lines blocks and
//! a JSON manifest), so a segment a Durable Object wrote reads with the native tools.

use crate::error::{BackendError, BackendErrorKind, Result};
use crate::tier::{AsyncColdStore, ObjectInfo};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use worker::send::SendWrapper;
use worker::{Bucket, Conditional};

/// How long the edge cache may keep a block: a year (keys are never reused, so forever would
/// do; the Cache API evicts by its own rules anyway).
const EDGE_MAX_AGE_S: u32 = 31_536_000;

/// An R2 bucket as a cold store (`env.bucket("COLD")`).
///
/// Writes are conditional (`onlyIf: { etagDoesNotMatch: "*" }`): an object is never written
/// over. Point reads are ranged gets of one block. Lists page through R2's cursor.
///
/// With [`with_edge_cache`](Self::with_edge_cache), ranged reads go through the Workers Cache
/// API first: a block is kept there under its key and byte range, which never name other
/// bytes (segment keys carry a random part and objects are never rewritten), so nothing ever
/// needs purging — which matters, as a Cache API delete only reaches one data centre.
pub struct R2Store {
    bucket: SendWrapper<Bucket>,
    binding: String,
    edge: Option<String>,
    edge_hits: AtomicU64,
    edge_misses: AtomicU64,
}

impl std::fmt::Debug for R2Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("R2Store").field("binding", &self.binding).finish_non_exhaustive()
    }
}

fn r2_error(op: &str, key: &str, e: &worker::Error) -> crate::Error {
    BackendError::new(BackendErrorKind::Io, format!("R2 {op} {key:?}: {e}")).into()
}

impl R2Store {
    /// The store over `bucket`, named `binding` in errors (its binding's name).
    pub fn new(bucket: Bucket, binding: &str) -> Self {
        Self {
            bucket: SendWrapper(bucket),
            binding: binding.to_owned(),
            edge: None,
            edge_hits: AtomicU64::new(0),
            edge_misses: AtomicU64::new(0),
        }
    }

    /// The same store with ranged reads (cold point reads) cached in the Workers Cache API
    /// (`caches.default`) under `https://db4-cold.invalid/<binding>/<key>?bytes=<start>-<end>`.
    ///
    /// The Cache API keeps entries per data centre and does nothing on `workers.dev`
    /// subdomains (a custom domain is needed there); a miss simply reads R2.
    #[must_use]
    pub fn with_edge_cache(mut self) -> Self {
        self.edge = Some(format!("https://db4-cold.invalid/{}/", self.binding));
        self
    }

    /// `(hits, misses)` of the edge cache so far (both 0 without it).
    pub fn edge_stats(&self) -> (u64, u64) {
        (self.edge_hits.load(Ordering::Relaxed), self.edge_misses.load(Ordering::Relaxed))
    }

    /// The block from the edge cache, if it has it (any failure is a miss: it is a cache).
    async fn edge_get(url: &str) -> Option<Vec<u8>> {
        let cache = worker::Cache::default();
        let mut resp = cache.get(url, true).await.ok()??;
        resp.bytes().await.ok()
    }

    /// Keeps the block in the edge cache (a failure only costs a later miss).
    async fn edge_put(url: &str, bytes: &[u8]) {
        let headers = worker::Headers::new();
        let control = format!("public, max-age={EDGE_MAX_AGE_S}, immutable");
        if headers.set("cache-control", &control).is_err() {
            return;
        }
        if let Ok(resp) = worker::Response::from_bytes(bytes.to_vec()) {
            let _ = worker::Cache::default().put(url, resp.with_headers(headers)).await;
        }
    }

    /// The store over the R2 bucket bound as `binding` in `env`.
    ///
    /// # Errors
    ///
    /// [`BackendErrorKind::Unsupported`] if there is no such binding.
    pub fn from_env(env: &worker::Env, binding: &str) -> Result<Self> {
        let bucket = env.bucket(binding).map_err(|e| {
            crate::Error::from(BackendError::new(
                BackendErrorKind::Unsupported,
                format!("no R2 bucket bound as {binding:?} (wrangler.toml [[r2_buckets]]): {e}"),
            ))
        })?;
        Ok(Self::new(bucket, binding))
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let head = self.bucket.0.head(key).await.map_err(|e| r2_error("head", key, &e))?;
        Ok(head.map(|o| o.size()))
    }

    /// The bytes `range` (non-empty) of `key` from R2, clamped to the object's end.
    async fn get_from_r2(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        match self.ranged(key, range.start, range.end - range.start).await {
            Ok(found) => Ok(found),
            // A range past the end is an error on R2: clamp it to the object and ask again.
            Err(first) => match self.size(key).await? {
                None => Ok(None),
                Some(size) if size <= range.start => Ok(Some(Vec::new())),
                Some(size) => self
                    .ranged(key, range.start, range.end.min(size) - range.start)
                    .await
                    .map_err(|_| r2_error("ranged get", key, &first)),
            },
        }
    }

    async fn ranged(&self, key: &str, start: u64, length: u64) -> std::result::Result<Option<Vec<u8>>, worker::Error> {
        let range = worker::Range::OffsetWithLength { offset: start, length };
        // `Object::range()` panics in worker 0.8.7: only the body is read.
        match self.bucket.0.get(key).range(range).execute().await? {
            None => Ok(None),
            Some(object) => match object.body() {
                Some(body) => Ok(Some(body.bytes().await?)),
                None => Ok(Some(Vec::new())),
            },
        }
    }
}

impl AsyncColdStore for R2Store {
    async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool> {
        if self.size(key).await?.is_some() {
            return Ok(false);
        }
        let only_if = Conditional { etag_does_not_match: Some("*".to_owned()), ..Conditional::default() };
        let put = self.bucket.0.put(key, bytes).only_if(only_if).execute().await;
        // `null` when the condition failed: someone wrote the key since the head.
        Ok(put.map_err(|e| r2_error("put", key, &e))?.is_some())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        if range == (0..u64::MAX) {
            let object = self.bucket.0.get(key).execute().await.map_err(|e| r2_error("get", key, &e))?;
            let Some(object) = object else { return Ok(None) };
            return match object.body() {
                None => Ok(Some(Vec::new())),
                Some(body) => body.bytes().await.map(Some).map_err(|e| r2_error("get", key, &e)),
            };
        }
        if range.end <= range.start {
            return Ok(self.size(key).await?.map(|_| Vec::new()));
        }
        let Some(base) = &self.edge else { return self.get_from_r2(key, range).await };
        let url = format!("{base}{key}?bytes={}-{}", range.start, range.end);
        if let Some(bytes) = Self::edge_get(&url).await {
            self.edge_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(bytes));
        }
        self.edge_misses.fetch_add(1, Ordering::Relaxed);
        let found = self.get_from_r2(key, range).await?;
        if let Some(bytes) = &found {
            Self::edge_put(&url, bytes).await;
        }
        Ok(found)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut list = self.bucket.0.list().prefix(prefix);
            if let Some(c) = cursor.take() {
                list = list.cursor(c);
            }
            let page = list.execute().await.map_err(|e| r2_error("list", prefix, &e))?;
            out.extend(page.objects().into_iter().map(|o| ObjectInfo::new(o.key(), o.size())));
            match page.cursor() {
                Some(c) if page.truncated() => cursor = Some(c),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.bucket.0.delete(key).await.map_err(|e| r2_error("delete", key, &e))
    }

    fn describe(&self) -> String {
        format!("R2 bucket {}", self.binding)
    }
}
