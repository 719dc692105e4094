//! Where a router's shards and its manifest live: the [`ShardTransport`] seam, with a
//! directory of SQLite files ([`DirTransport`]) and memory ([`MemoryTransport`]).

use super::super::ring::ShardId;
use crate::db::{Db, DbOptions};
use crate::error::Result;
use std::sync::Mutex;

/// Where a [`ShardRouter`](super::ShardRouter) finds its shards and keeps its manifest (the
/// ring, its epoch and a migration in progress).
///
/// # Contract
///
/// - [`open_shard`](Self::open_shard) returns the database of `shard`, creating an empty one
///   the first time; the router calls it once per shard and keeps the handle. Every call for
///   the same shard on the same storage must reach the same data, also after a restart.
/// - [`load_manifest`](Self::load_manifest) returns the text last passed to
///   [`store_manifest`](Self::store_manifest), whole, or `None` if none was ever stored.
/// - [`store_manifest`](Self::store_manifest) is atomic and durable: once it returns `Ok`, a
///   crash leaves the new text; if it fails or the process dies during it, the old one.
///
/// A Durable Object transport implements the same three calls over a coordinator object.
pub trait ShardTransport: Send + Sync + 'static {
    /// The database of `shard`.
    ///
    /// # Errors
    ///
    /// A backend error if it cannot be opened.
    fn open_shard(&self, shard: ShardId) -> Result<Db>;

    /// The stored manifest, if any.
    ///
    /// # Errors
    ///
    /// A backend error if it cannot be read.
    fn load_manifest(&self) -> Result<Option<String>>;

    /// Replaces the stored manifest, atomically and durably.
    ///
    /// # Errors
    ///
    /// A backend error; the old manifest is then still the stored one.
    fn store_manifest(&self, text: &str) -> Result<()>;
}

/// Shards as SQLite files in a directory (`shard-00000.db`, ...) and the manifest as
/// `shards.json` beside them, replaced atomically (written to a temporary file, synced,
/// renamed).
#[derive(Debug)]
pub struct DirTransport {
    dir: std::path::PathBuf,
    options: DbOptions,
}

/// The manifest's file name in a [`DirTransport`]'s directory.
const MANIFEST: &str = "shards.json";

impl DirTransport {
    /// The transport over `dir`, created if missing.
    ///
    /// # Errors
    ///
    /// A backend error of kind `Io` if the directory cannot be created.
    pub fn new(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| crate::wal::io_error("create", &dir, e))?;
        Ok(Self { dir, options: DbOptions::default() })
    }

    /// The options each shard's database is opened with (the default: [`DbOptions::default`]).
    pub fn with_options(mut self, options: DbOptions) -> Self {
        self.options = options;
        self
    }

    /// The file of `shard`.
    pub fn shard_path(&self, shard: ShardId) -> std::path::PathBuf {
        self.dir.join(format!("shard-{:05}.db", shard.get()))
    }
}

impl ShardTransport for DirTransport {
    fn open_shard(&self, shard: ShardId) -> Result<Db> {
        Db::open_with(self.shard_path(shard), self.options.clone())
    }

    fn load_manifest(&self) -> Result<Option<String>> {
        let path = self.dir.join(MANIFEST);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::wal::io_error("read", &path, e)),
        }
    }

    fn store_manifest(&self, text: &str) -> Result<()> {
        crate::wal::write_atomically(&self.dir, MANIFEST, text.as_bytes())
    }
}

/// Shards as in-memory databases, the manifest in memory: for tests, gone with the router.
#[derive(Debug, Default)]
pub struct MemoryTransport {
    manifest: Mutex<Option<String>>,
}

impl ShardTransport for MemoryTransport {
    fn open_shard(&self, _shard: ShardId) -> Result<Db> {
        Db::open_in_memory()
    }

    fn load_manifest(&self) -> Result<Option<String>> {
        Ok(self.manifest.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn store_manifest(&self, text: &str) -> Result<()> {
        *self.manifest.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.to_owned());
        Ok(())
    }
}
