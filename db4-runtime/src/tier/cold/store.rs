//! The two [`ColdStore`]s that ship with db4: [`MemoryStore`] (tests, wasm32) and
//! [`DirStore`] (files in a directory; feature `fs`).

use crate::error::{BackendError, BackendErrorKind, Error, Result};
use crate::tier::{ColdStore, ObjectInfo};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Checks a key against the [`ColdStore`] key rules: non-empty, ASCII letters, digits, `-`,
/// `_`, `.` and `/`, not starting with `/`, no empty, `.` or `..` segment.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let ok_chars = key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    let ok_parts = key.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if key.is_empty() || key.len() > 1024 || !ok_chars || !ok_parts {
        return Err(BackendError::new(BackendErrorKind::Unsupported, format!("invalid cold store key {key:?}")).into());
    }
    Ok(())
}

pub(crate) fn exists(key: &str) -> Error {
    Error::Conflict { collection: "cold store".to_owned(), id: key.to_owned(), expected: 0, actual: 0 }
}

/// A [`ColdStore`] in memory: objects in a map, gone with the store. For tests, and for
/// wasm32 where there is no filesystem.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn clamp(len: usize, range: &Range<u64>) -> Range<usize> {
    let end = usize::try_from(range.end).unwrap_or(usize::MAX).min(len);
    let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(end);
    start..end
}

impl ColdStore for MemoryStore {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_key(key)?;
        let mut objects = self.objects();
        if objects.contains_key(key) {
            return Err(exists(key));
        }
        objects.insert(key.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        Ok(self.objects().get(key).cloned())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        Ok(self.objects().get(key).map(|bytes| bytes[clamp(bytes.len(), &range)].to_vec()))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .objects()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo::new(k.clone(), v.len() as u64))
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.objects().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory store".to_owned()
    }
}

/// A shared store: several databases (or handles) on one store, for example two handles on
/// one file sharing a [`MemoryStore`].
impl<S: ColdStore + ?Sized> ColdStore for std::sync::Arc<S> {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        (**self).put(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
        (**self).get_range(key, range)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[cfg(feature = "fs")]
pub use dir::DirStore;

#[cfg(feature = "fs")]
mod dir {
    use super::{check_key, clamp, exists};
    use crate::error::{BackendError, BackendErrorKind, Result};
    use crate::tier::{ColdStore, ObjectInfo};
    use std::fs::{self, File, OpenOptions};
    use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
    use std::ops::Range;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A [`ColdStore`] keeping each object in a file under a directory (a key's `/` are
    /// subdirectories).
    ///
    /// [`put`](ColdStore::put) writes a temporary file (`.tmp-*`, never listed), syncs it,
    /// links it under its key (refusing an existing one, atomically) and syncs the directory,
    /// so an object is either absent or whole, also across a crash.
    #[derive(Debug)]
    pub struct DirStore {
        root: PathBuf,
        counter: AtomicU64,
    }

    fn io(what: &str, path: &Path, e: std::io::Error) -> crate::Error {
        BackendError::new(BackendErrorKind::Io, format!("cold store: {what} {}: {e}", path.display())).into()
    }

    impl DirStore {
        /// The store in directory `path`, created if missing.
        ///
        /// # Errors
        ///
        /// A backend error ([`BackendErrorKind::Io`]) if the directory cannot be created.
        pub fn open(path: impl AsRef<Path>) -> Result<DirStore> {
            let root = path.as_ref().to_path_buf();
            fs::create_dir_all(&root).map_err(|e| io("create", &root, e))?;
            Ok(DirStore { root, counter: AtomicU64::new(0) })
        }

        /// The directory the objects are in.
        pub fn path(&self) -> &Path {
            &self.root
        }

        fn path_of(&self, key: &str) -> Result<PathBuf> {
            check_key(key)?;
            Ok(key.split('/').fold(self.root.clone(), |p, part| p.join(part)))
        }

        fn list_into(&self, dir: &Path, rel: &str, prefix: &str, out: &mut Vec<ObjectInfo>) -> Result<()> {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io("list", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io("list", dir, e))?;
                let Ok(name) = entry.file_name().into_string() else { continue };
                if name.starts_with(".tmp-") {
                    continue;
                }
                let key = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
                let meta = entry.metadata().map_err(|e| io("stat", &entry.path(), e))?;
                if meta.is_dir() {
                    // Descend only where keys under it can match the prefix.
                    let dir_key = format!("{key}/");
                    if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                        self.list_into(&entry.path(), &key, prefix, out)?;
                    }
                } else if key.starts_with(prefix) && check_key(&key).is_ok() {
                    out.push(ObjectInfo::new(key, meta.len()));
                }
            }
            Ok(())
        }
    }

    fn sync_dir(dir: &Path) -> Result<()> {
        // Directories cannot be opened for syncing on every platform; where they can, a sync
        // makes the new name durable.
        #[cfg(unix)]
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", dir, e))?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }

    impl ColdStore for DirStore {
        fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
            let path = self.path_of(key)?;
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
            let written = (|| {
                let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(io("write", &tmp, e));
            }
            // A hard link fails if the key exists: no object is ever replaced.
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(exists(key)),
                Err(e) => return Err(io("link", &path, e)),
            }
            sync_dir(&dir)
        }

        fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            let path = self.path_of(key)?;
            match fs::read(&path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io("read", &path, e)),
            }
        }

        fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Vec<u8>>> {
            let path = self.path_of(key)?;
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("open", &path, e)),
            };
            let len = f.metadata().map_err(|e| io("stat", &path, e))?.len();
            let r = clamp(usize::try_from(len).unwrap_or(usize::MAX), &range);
            let mut out = vec![0; r.end - r.start];
            f.seek(SeekFrom::Start(r.start as u64)).map_err(|e| io("seek", &path, e))?;
            f.read_exact(&mut out).map_err(|e| io("read", &path, e))?;
            Ok(Some(out))
        }

        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
            let mut out = Vec::new();
            self.list_into(&self.root, "", prefix, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        }

        fn delete(&self, key: &str) -> Result<()> {
            let path = self.path_of(key)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io("delete", &path, e)),
            }
        }

        fn describe(&self) -> String {
            format!("directory {}", self.root.display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn ColdStore) -> Result<()> {
        store.put("a/b-1.jsonl.gz", b"hello world")?;
        assert!(matches!(store.put("a/b-1.jsonl.gz", b"x"), Err(Error::Conflict { .. })));
        assert_eq!(store.get("a/b-1.jsonl.gz")?.as_deref(), Some(&b"hello world"[..]));
        assert_eq!(store.get_range("a/b-1.jsonl.gz", 6..100)?.as_deref(), Some(&b"world"[..]));
        assert_eq!(store.get_range("a/b-1.jsonl.gz", 50..100)?.as_deref(), Some(&b""[..]));
        assert_eq!(store.get("a/none")?, None);
        store.put("a/c", b"12")?;
        store.put("z", b"1")?;
        let keys: Vec<_> = store.list("a/")?.into_iter().map(|o| (o.key, o.size)).collect();
        assert_eq!(keys, [("a/b-1.jsonl.gz".to_owned(), 11), ("a/c".to_owned(), 2)]);
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a b", "a/./b"] {
            assert!(store.put(bad, b"x").is_err(), "{bad:?} accepted");
        }
        store.delete("a/c")?;
        store.delete("a/c")?;
        assert_eq!(store.list("")?.len(), 2);
        Ok(())
    }

    #[test]
    fn memory_store_contract() -> Result<()> {
        exercise(&MemoryStore::new())
    }

    #[cfg(feature = "fs")]
    #[test]
    fn dir_store_contract() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("db4-dirstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = exercise(&DirStore::open(&dir)?);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }
}
