//! Data survives closing and reopening, and a process killed right after (or at any moment
//! during) acknowledged writes; a `Db` can be shared between threads and files between handles.

use crate::common;
use db4::prelude::*;
use db4_tests::{ChildGuard, TempDir};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "entries")]
struct Entry {
    #[id]
    id: i64,
    #[index]
    batch: i64,
    #[range_index]
    seq: i64,
    payload: String,
    #[version]
    version: u64,
}

const BATCH: i64 = 25;

fn entry(batch: i64, k: i64) -> Entry {
    let id = batch * BATCH + k;
    Entry { id, batch, seq: id, payload: format!("{id}:{}", "x".repeat(200)), version: 0 }
}

fn batch(b: i64) -> Vec<Entry> {
    (0..BATCH).map(|k| entry(b, k)).collect()
}

const fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
const _: () = assert_shareable::<Db>();
const _: () = assert_shareable::<Collection<Entry>>();

#[test]
fn data_survives_closing_and_reopening() {
    let dir = TempDir::new("reopen");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path).unwrap();
        let c = db.collection::<Entry>().unwrap();
        c.insert_many(&batch(0)).unwrap();
        c.insert(&entry(1, 0)).unwrap();
        let mut e = c.get(3).unwrap().unwrap();
        e.payload = "updated".into();
        c.update(&e).unwrap();
        c.upsert(&entry(1, 1)).unwrap();
        assert!(c.delete(4).unwrap());
    }
    for synchronous in [db4::Synchronous::Full, db4::Synchronous::Normal] {
        let db = Db::open_with(&path, DbOptions::default().synchronous(synchronous)).unwrap();
        let c = db.collection::<Entry>().unwrap();
        assert_eq!(c.count().unwrap(), BATCH as u64 + 1);
        let e = c.get(3).unwrap().unwrap();
        assert_eq!((e.payload.as_str(), e.version), ("updated", 1));
        assert_eq!(c.get(4).unwrap(), None);
        assert_eq!(c.get(BATCH + 1).unwrap(), Some(entry(1, 1)));
        assert_eq!(c.query().filter(Entry::fields().batch.eq(1)).count().unwrap(), 2);
        assert_eq!(c.query().filter(Entry::fields().seq.between(0, 9)).count().unwrap(), 9);
    }
    let db = Db::open_with(&path, DbOptions::default().synchronous(db4::Synchronous::Normal)).unwrap();
    let c = db.collection::<Entry>().unwrap();
    c.insert_many(&batch(2)).unwrap();
    drop(c);
    drop(db);
    let db = Db::open(&path).unwrap();
    assert_eq!(db.collection::<Entry>().unwrap().count().unwrap(), 2 * BATCH as u64 + 1);
}

#[test]
fn reads_see_every_acknowledged_write_at_once() {
    let dir = TempDir::new("read-your-writes");
    let db = Db::open(dir.join("db.sqlite")).unwrap();
    let c = db.collection::<Entry>().unwrap();
    // Reads rotate over several connections; each must see the writer's last commit.
    for i in 0..60 {
        c.insert(&entry(0, i)).unwrap();
        assert_eq!(c.get(i).unwrap().map(|e| e.id), Some(i), "insert {i}");
        assert_eq!(c.count().unwrap(), i as u64 + 1);
        let mut e = c.get(i).unwrap().unwrap();
        e.payload = format!("v{i}");
        c.update(&e).unwrap();
        assert_eq!(c.get(i).unwrap().map(|e| (e.payload, e.version)), Some((format!("v{i}"), 1)));
        assert_eq!(c.query().filter(Entry::fields().seq.eq(i)).first().unwrap().map(|e| e.version), Some(1));
    }
    for i in 0..60 {
        assert!(c.delete(i).unwrap());
        assert_eq!(c.get(i).unwrap(), None);
        assert_eq!(c.query().count().unwrap(), 59 - i as u64);
    }
}

#[test]
fn a_file_that_is_not_a_database_is_a_backend_error() {
    let dir = TempDir::new("garbage");
    let path = dir.join("db.sqlite");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = Db::open(&path).and_then(|db| db.collection::<Entry>().map(drop)).unwrap_err();
    assert_eq!(err.backend_kind(), Some(db4::BackendErrorKind::Corrupt), "{err:?}");
    let missing_dir = dir.join("no/such/dir/db.sqlite");
    let err = Db::open(missing_dir).unwrap_err();
    assert_eq!(err.backend_kind(), Some(db4::BackendErrorKind::Io), "{err:?}");
}

const CHILD_ENV: &str = "DB4_TESTS_DURABILITY_CHILD";

/// The name libtest knows a test of this module by.
fn test_name(function: &str) -> String {
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    format!("{module}::{function}")
}

/// In the child: insert batch after batch, print `ACK n` once `insert_many` returned, and
/// abort after `abort_after` batches (or run until killed).
fn child(path: &Path, abort_after: Option<i64>) -> ! {
    let db = Db::open(path).unwrap();
    let c = db.collection::<Entry>().unwrap();
    let mut out = std::io::stdout().lock();
    // Bounded, so that a child whose parent went away does not run forever.
    for b in 0..5_000 {
        c.insert_many(&batch(b)).unwrap();
        writeln!(out, "ACK {b}").unwrap();
        out.flush().unwrap();
        if abort_after == Some(b) {
            break;
        }
    }
    std::process::abort()
}

fn spawn_child(function: &str, spec: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([test_name(function).as_str(), "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The batch number acknowledged on `line`; libtest may have printed the test's name in front.
fn acks(line: &str) -> Option<i64> {
    line.rsplit_once("ACK ").and_then(|(_, n)| n.trim().parse().ok())
}

/// Reopens the database a killed child wrote and checks that every acknowledged batch is
/// there, whole, and that no batch is there in part.
fn check_recovered(path: &Path, last_acked: i64) -> u64 {
    assert_eq!(common::raw(path).query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
    let db = Db::open(path).unwrap();
    let c = db.collection::<Entry>().unwrap();
    let count = c.count().unwrap();
    assert_eq!(count % BATCH as u64, 0, "only whole batches are stored ({count} documents)");
    let batches = (count / BATCH as u64) as i64;
    assert!(batches > last_acked, "every acknowledged batch is stored: {batches} batches, last ack {last_acked}");
    for b in 0..batches {
        let ids: Vec<i64> = batch(b).iter().map(|e| e.id).collect();
        let got: Vec<Entry> = c.get_many(&ids).unwrap().into_iter().map(|e| e.expect("whole batch")).collect();
        assert_eq!(got, batch(b), "batch {b}");
        assert_eq!(c.query().filter(Entry::fields().batch.eq(b)).count().unwrap(), BATCH as u64);
    }
    // The recovered database takes writes.
    c.insert_many(&batch(batches)).unwrap();
    assert_eq!(c.count().unwrap(), count + BATCH as u64);
    count
}

#[test]
fn acknowledged_writes_survive_an_abort() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(Path::new(&path), Some(9));
    }
    let dir = TempDir::new("abort");
    let path = dir.join("db.sqlite");
    let child = spawn_child("acknowledged_writes_survive_an_abort", path.to_str().unwrap());
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success(), "the child aborted");
    let acked: Vec<i64> = String::from_utf8_lossy(&output.stdout).lines().filter_map(acks).collect();
    assert_eq!(acked, (0..=9).collect::<Vec<_>>(), "the child acknowledged ten batches before aborting");
    let count = check_recovered(&path, 9);
    assert_eq!(count, 10 * BATCH as u64, "nothing after the abort");
}

#[test]
fn acknowledged_writes_survive_a_kill_at_any_moment() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(Path::new(&path), None);
    }
    let dir = TempDir::new("kill");
    for (round, wanted_acks) in [3i64, 17, 40].into_iter().enumerate() {
        let path = dir.join(&format!("db{round}.sqlite"));
        let mut child =
            ChildGuard(spawn_child("acknowledged_writes_survive_a_kill_at_any_moment", path.to_str().unwrap()));
        let stdout = child.0.stdout.take().unwrap();
        let mut last = -1;
        for line in BufReader::new(stdout).lines() {
            let Some(n) = acks(&line.unwrap()) else { continue };
            assert_eq!(n, last + 1, "acknowledgements come in order");
            last = n;
            if n + 1 >= wanted_acks {
                // SIGKILL, while the child is in the middle of its next batch.
                child.0.kill().unwrap();
                break;
            }
        }
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "the child was killed");
        assert_eq!(last + 1, wanted_acks, "the child acknowledged what was waited for");
        check_recovered(&path, last);
    }
}

#[test]
fn threads_share_one_db() {
    let dir = TempDir::new("threads");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let per_thread = 150i64;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..4i64)
            .map(|t| {
                let db = db.clone();
                s.spawn(move || {
                    let c = db.collection::<Entry>().unwrap();
                    for k in 0..per_thread {
                        let mut e = entry(t, k);
                        e.id = t * 1_000_000 + k;
                        c.insert(&e).unwrap();
                    }
                })
            })
            .collect();
        // A batch writer and a reader run at the same time.
        let batches = {
            let db = db.clone();
            s.spawn(move || {
                let c = db.collection::<Entry>().unwrap();
                for b in 100..110 {
                    c.insert_many(&batch(b)).unwrap();
                }
            })
        };
        let reader = {
            let db = db.clone();
            let stop = &stop;
            s.spawn(move || {
                let c = db.collection::<Entry>().unwrap();
                let mut last = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = c.count().unwrap();
                    assert!(n >= last, "the count never goes back");
                    assert!(n <= 4 * per_thread as u64 + 10 * BATCH as u64);
                    last = n;
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        batches.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    });
    let c = db.collection::<Entry>().unwrap();
    assert_eq!(c.count().unwrap(), 4 * per_thread as u64 + 10 * BATCH as u64);
    for t in 0..4 {
        let ids: Vec<i64> = (0..per_thread).map(|k| t * 1_000_000 + k).collect();
        assert!(c.get_many(&ids).unwrap().iter().all(Option::is_some), "thread {t}'s documents");
        assert_eq!(c.query().filter(Entry::fields().batch.eq(t)).count().unwrap(), per_thread as u64);
    }
    drop(c);
    drop(db);
    assert_eq!(common::scalar(&path, "SELECT count(*) FROM entries"), 4 * per_thread + 10 * BATCH);
}

#[test]
fn two_handles_on_one_file_write_concurrently() {
    let dir = TempDir::new("two-handles");
    let path = dir.join("db.sqlite");
    let handles = [Db::open(&path).unwrap(), Db::open(&path).unwrap()];
    let per_thread = 100i64;
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let db = handles[t as usize % 2].clone();
            s.spawn(move || {
                // Both handles create the collection concurrently on first use.
                let c = db.collection::<Entry>().unwrap();
                for k in 0..per_thread {
                    if k % 10 == 0 {
                        let docs: Vec<Entry> = (0..5)
                            .map(|j| {
                                let mut e = entry(t, k + j);
                                e.id = 10_000_000 + t * 1_000_000 + k * 10 + j;
                                e
                            })
                            .collect();
                        c.insert_many(&docs).unwrap();
                    }
                    let mut e = entry(t, k);
                    e.id = t * 1_000_000 + k;
                    c.insert(&e).unwrap();
                    if k % 3 == 0 {
                        let mut back = c.get(e.id).unwrap().unwrap();
                        back.payload = "touched".into();
                        c.update(&back).unwrap();
                    }
                }
            });
        }
    });
    let expected = 4 * per_thread as u64 + 4 * 10 * 5;
    for db in &handles {
        let c = db.collection::<Entry>().unwrap();
        assert_eq!(c.count().unwrap(), expected);
        assert_eq!(c.query().filter(Entry::fields().payload.eq("touched")).count().unwrap(), 4 * 34);
        assert_eq!(c.query().filter(Entry::fields().version.eq(1)).count().unwrap(), 4 * 34);
    }
}

// --- The WAL file ------------------------------------------------------------------------------

/// `path`'s `-wal` file's size, or `None` if there is none.
fn wal_size(path: &Path) -> Option<u64> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).ok().map(|m| m.len())
}

/// `n` documents of about 800 bytes each, with ids from `first`.
fn big_batch(first: i64, n: i64) -> Vec<Entry> {
    (first..first + n)
        .map(|id| Entry { id, batch: id / 1000, seq: id, payload: format!("{id:>12}{}", "p".repeat(700)), version: 0 })
        .collect()
}

#[test]
fn dropping_the_db_after_a_large_write_removes_its_wal() {
    let dir = TempDir::new("wal-on-drop");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    let c = db.collection::<Entry>().unwrap();
    c.insert_many(&big_batch(0, 12_000)).unwrap();
    // Reads open the reader connections on the WAL: they, too, must not keep it.
    assert_eq!(c.count().unwrap(), 12_000);
    assert_eq!(c.get_many([1, 5_000, 11_999]).unwrap().iter().flatten().count(), 3);
    assert!(wal_size(&path).unwrap_or(0) > 8_000_000, "the write went through a large WAL");
    let other = db.clone();
    drop((c, db));
    assert!(wal_size(&path).is_some(), "a clone still holds the database open");
    drop(other);
    assert_eq!(wal_size(&path).unwrap_or(0), 0, "the WAL is left behind (or not empty) after the drop");
    // Everything is in the database file itself.
    let db = Db::open(&path).unwrap();
    assert_eq!(db.collection::<Entry>().unwrap().count().unwrap(), 12_000);
}

#[test]
fn the_wal_shrinks_back_to_its_limit_during_a_run() {
    const LIMIT: u64 = 1 << 20;
    // What a one-document commit adds to a WAL cut back to the limit: a few pages.
    const SLACK: u64 = 256 << 10;
    let dir = TempDir::new("wal-limit");
    let path = dir.join("db.sqlite");
    let mut options = DbOptions::default();
    options.sqlite.journal_size_limit = LIMIT;
    let db = Db::open_with(&path, options).unwrap();
    let c = db.collection::<Entry>().unwrap();
    let mut next = 0;
    for round in 0..3 {
        c.insert_many(&big_batch(next, 6_000)).unwrap();
        next += 6_000;
        let after_big = wal_size(&path).unwrap_or(0);
        assert!(after_big > 4 * LIMIT, "round {round}: a large transaction makes a large WAL ({after_big} bytes)");
        assert_eq!(c.count().unwrap(), (next + round) as u64);
        // The next commit starts the checkpointed WAL over and cuts the file back.
        c.insert(&entry(1_000_000, round)).unwrap();
        let after_small = wal_size(&path).unwrap_or(0);
        assert!(after_small <= LIMIT + SLACK, "round {round}: the WAL stays at {after_small} bytes");
    }
    assert_eq!(c.count().unwrap(), next as u64 + 3);
}
