//! How a database is opened: what `Db::open` refuses, and read-only databases (also in a
//! directory the process cannot write).

use db4::BackendErrorKind;
use db4::prelude::*;
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "books")]
struct Book {
    #[id]
    id: i64,
    #[index]
    author: String,
    title: String,
    pages: i64,
    #[version]
    version: u64,
}

/// The same collection with one more index: opening it needs a migration.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "books")]
struct IndexedBook {
    #[id]
    id: i64,
    #[index]
    author: String,
    #[index]
    title: String,
    pages: i64,
    #[version]
    version: u64,
}

fn book(id: i64) -> Book {
    Book { id, author: format!("author {}", id % 3), title: format!("title {id}"), pages: id * 10, version: 0 }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn read_only() -> DbOptions {
    DbOptions::default().read_only(true)
}

#[test]
fn open_refuses_names_that_are_not_files() {
    for name in ["", ":memory:"] {
        let err = Db::open(name).unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Unsupported), "{name:?}: {err}");
        assert!(err.to_string().contains("Db::open_in_memory()"), "{name:?}: {err}");
        let err = Db::open_with(name, read_only()).unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::Unsupported), "{name:?}: {err}");
    }
    let err = Db::open_in_memory_with(read_only()).unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Unsupported), "{err}");
}

/// Writes three books to a new database file, and closes it.
fn seeded(dir: &TempDir) -> PathBuf {
    let path = dir.join("books.db");
    let db = Db::open(&path).unwrap();
    db.collection::<Book>().unwrap().insert_many(&[book(1), book(2), book(3)]).unwrap();
    path
}

/// Reads work, writes of every kind fail with `ReadOnly`, and nothing changed.
fn check_read_only(db: &Db) {
    let books = db.collection::<Book>().unwrap();
    assert_eq!(books.count().unwrap(), 3);
    assert_eq!(books.get(2).unwrap(), Some(book(2)));
    assert_eq!(books.query().filter(Book::fields().author.eq("author 1")).count().unwrap(), 1);
    let refused: Vec<db4::Result<()>> = vec![
        books.insert(&book(4)),
        books.update(&book(1)).map(drop),
        books.upsert(&book(5)),
        books.delete(1).map(drop),
        books.insert_many(&[book(6)]),
        books.increment(1, Book::fields().pages, 1).map(drop),
        books.query().delete().map(drop),
        db.transaction(|tx| tx.collection::<Book>()?.insert(&book(7))),
        db.collection::<IndexedBook>().map(drop),
    ];
    for (i, r) in refused.into_iter().enumerate() {
        let err = r.unwrap_err();
        assert_eq!(err.backend_kind(), Some(BackendErrorKind::ReadOnly), "write {i}: {err}");
    }
    // A transaction that only reads works.
    let n = db.transaction(|tx| tx.collection::<Book>()?.count()).unwrap();
    assert_eq!(n, 3);
    assert_eq!(books.query().all().unwrap().len(), 3, "nothing was written");
}

#[test]
fn a_read_only_database_reads_and_refuses_every_write() {
    let dir = TempDir::new("read-only");
    let path = seeded(&dir);
    let db = Db::open_with(&path, read_only()).unwrap();
    assert!(db.options().read_only);
    check_read_only(&db);
    // The refused migration left the schema as it was: the old type still opens read-write.
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.collection::<Book>().unwrap().count().unwrap(), 3);

    // A file that does not exist is not created.
    let missing = dir.join("missing.db");
    let err = Db::open_with(&missing, read_only()).unwrap_err();
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Io), "{err}");
    assert!(!missing.exists());
}

#[test]
fn a_read_only_handle_sees_what_a_writer_commits() {
    let dir = TempDir::new("read-only-live");
    let path = seeded(&dir);
    let writer = Db::open(&path).unwrap();
    let reader = Db::open_with(&path, read_only()).unwrap();
    let (w, r) = (writer.collection::<Book>().unwrap(), reader.collection::<Book>().unwrap());
    w.insert(&book(10)).unwrap();
    assert_eq!(r.get(10).unwrap(), Some(book(10)));
    assert!(w.delete(10).unwrap());
    assert_eq!(r.count().unwrap(), 3);
    // The writer is not blocked by the read-only handle's transactions.
    reader
        .transaction(|tx| {
            assert_eq!(tx.collection::<Book>()?.count()?, 3);
            Ok(())
        })
        .unwrap();
    w.insert(&book(11)).unwrap();
}

/// Makes `dir` unwritable. Root ignores permission bits, so when the directory stays writable
/// the `-wal` and `-shm` files are made impossible to create instead: dangling symbolic
/// links, which SQLite refuses to follow. Returns whether the directory is really unwritable.
fn unwritable(dir: &Path, db: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.join("probe");
    if std::fs::write(&probe, b"x").is_err() {
        return true;
    }
    std::fs::remove_file(&probe).unwrap();
    for suffix in ["-wal", "-shm"] {
        std::os::unix::fs::symlink(dir.join("no/such/dir"), sidecar(db, suffix)).unwrap();
    }
    false
}

#[test]
fn a_read_only_database_opens_in_a_directory_that_cannot_be_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("read-only-dir");
    let path = seeded(&dir);
    // A clean close left no -wal or -shm file behind, so SQLite would have to create them.
    assert!(!sidecar(&path, "-wal").exists() && !sidecar(&path, "-shm").exists());
    let really = unwritable(dir.path(), &path);
    let opened = Db::open_with(&path, read_only());
    let listing = || std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    let result = opened.map(|db| {
        check_read_only(&db);
        // Opening read-write is what fails here: the journal cannot be created.
        (listing(), Db::open(&path).map(drop).is_err())
    });
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (files, read_write_fails) = result.unwrap();
    let wanted: Vec<std::ffi::OsString> = if really {
        vec!["books.db".into()]
    } else {
        vec!["books.db".into(), "books.db-shm".into(), "books.db-wal".into()]
    };
    let mut files = files;
    files.sort();
    assert_eq!(files, wanted, "nothing was created beside the database");
    assert!(!sidecar(&path, "-wal").exists() && !sidecar(&path, "-shm").exists());
    assert!(read_write_fails, "the directory (or its -wal / -shm files) cannot be written");
}
