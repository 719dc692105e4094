//! Contention on a file database: atomic increments, a compare-and-swap state machine,
//! optimistic `update_with`, `transaction_with` retries and panics, from eight threads that
//! share one `Db` or open their own handle on the same file.
//!
//! Every loop is bounded and nothing sleeps to let a race settle: each assertion holds for
//! every interleaving.
//!
//! Several handles on one file contend for SQLite's file lock, and SQLite's busy handler polls
//! (up to 100 ms apart) rather than queueing, so a writer can be starved past the 5 s busy
//! timeout and get [`BackendErrorKind::Busy`]. Nothing is written then, and db4 classifies it
//! as retryable ([`is_retryable`](db4_runtime::is_retryable)), so the threads here retry it a
//! bounded number of times and the exact totals prove nothing was applied twice or lost. The
//! same workload without those retries is `increments_without_retrying_busy_are_exact`.

use db4_derive::Document;
use db4_runtime::{
    BackendErrorKind, Collection, Db, DbOptions, Document, Error, Result, RetryPolicy, TransactionOptions,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Once};
use std::time::Duration;

const THREADS: usize = 8;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "counters")]
struct Counter {
    #[id]
    id: String,
    n: i64,
    #[version]
    version: u64,
}

fn counter(id: &str) -> Counter {
    Counter { id: id.into(), n: 0, version: 0 }
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "jobs")]
struct Job {
    #[id]
    id: i64,
    #[index]
    status: String,
    #[version]
    version: u64,
}

/// A directory of its own under the temp dir, removed when dropped (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("db4-contention-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("contention.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How often a thread retries an operation that failed with a busy database.
const BUSY_RETRIES: usize = 100;

/// Runs `f`, again while it fails with a busy database, at most `BUSY_RETRIES` more times.
fn retry_busy<R>(mut f: impl FnMut() -> Result<R>) -> Result<R> {
    for _ in 0..BUSY_RETRIES {
        match f() {
            Err(e) if e.backend_kind() == Some(BackendErrorKind::Busy) => {}
            other => return other,
        }
    }
    f()
}

/// `T`'s collection; on a handle of its own, creating it takes the write lock.
fn collection<T: Document>(db: &Db) -> Result<Collection<T>> {
    retry_busy(|| db.collection::<T>())
}

/// Thread `t`'s database: even threads share `db`, odd ones open their own handle on the file.
fn handle(db: &Db, path: &Path, t: usize) -> Result<Db> {
    if t.is_multiple_of(2) { Ok(db.clone()) } else { retry_busy(|| Db::open(path)) }
}

/// Runs `work(t)` on `THREADS` threads at once and returns their results in thread order.
fn on_threads<R: Send>(work: impl Fn(usize) -> Result<R> + Sync) -> Vec<R> {
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (work, start) = (&work, &start);
                s.spawn(move || {
                    start.wait();
                    work(t)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(t, h)| match h.join() {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => panic!("thread {t} failed: {e}"),
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// A retry policy that outlasts eight writers hammering one document.
fn patient() -> RetryPolicy {
    RetryPolicy::default()
        .max_retries(10_000)
        .initial_backoff(Duration::from_micros(50))
        .max_backoff(Duration::from_millis(5))
}

/// 8 threads x 1,000 increments, half through one shared `Db`, half through their own
/// handles; `shared_only` puts all of them on the shared one. `retry`: retry busy errors.
fn increments_are_exact(test: &str, shared_only: bool, retry: bool) -> Result<()> {
    const EACH: usize = 1000;
    let dir = TempDir::new(test);
    // Without retries, the wait for the lock is the built-in busy timeout alone: long enough
    // for eight writers on a loaded machine (the default 5 s is about latency, not this test).
    let patient = DbOptions::default().busy_timeout(Duration::from_secs(120));
    let db = if retry { Db::open(dir.db())? } else { Db::open_with(dir.db(), patient.clone())? };
    db.collection::<Counter>()?.insert(&counter("c"))?;
    let seen = on_threads(|t| {
        let db = match (shared_only, retry) {
            (true, _) => db.clone(),
            (false, true) => handle(&db, &dir.db(), t)?,
            (false, false) if t.is_multiple_of(2) => db.clone(),
            (false, false) => Db::open_with(dir.db(), patient.clone())?,
        };
        let counters = if retry { collection::<Counter>(&db)? } else { db.collection::<Counter>()? };
        let increment = || counters.increment("c", Counter::fields().n, 1);
        (0..EACH).map(|_| if retry { retry_busy(increment) } else { increment() }).collect::<Result<Vec<i64>>>()
    });
    let total = (THREADS * EACH) as i64;
    let c = db.collection::<Counter>()?.get("c")?.expect("the counter");
    assert_eq!((c.n, c.version), (total, total as u64));
    // Linearizable: every increment saw a value nobody else saw, and each thread's grew.
    let returned: BTreeSet<i64> = seen.iter().flatten().copied().collect();
    assert_eq!(returned, (1..=total).collect::<BTreeSet<_>>());
    for values in &seen {
        assert!(values.windows(2).all(|w| w[0] < w[1]), "a thread's increments went backwards");
    }
    Ok(())
}

#[test]
fn increments_from_eight_threads_are_exact() -> Result<()> {
    increments_are_exact("increment", false, true)
}

#[test]
fn increments_through_one_shared_db_are_exact_without_retries() -> Result<()> {
    increments_are_exact("increment-shared", true, false)
}

#[test]
fn increments_without_retrying_busy_are_exact() -> Result<()> {
    increments_are_exact("increment-no-retry", false, false)
}

#[test]
fn compare_and_swap_claims_each_job_exactly_once() -> Result<()> {
    const JOBS: i64 = 200;
    let dir = TempDir::new("cas");
    let db = Db::open(dir.db())?;
    let jobs: Vec<Job> = (0..JOBS).map(|id| Job { id, status: "pending".into(), version: 0 }).collect();
    db.collection::<Job>()?.insert_many(&jobs)?;
    let status = Job::fields().status;
    let claimed = on_threads(|t| {
        let jobs = collection::<Job>(&handle(&db, &dir.db(), t)?)?;
        let mut mine = Vec::new();
        // Each thread starts at a different job, so the threads collide all along the way.
        for i in 0..JOBS {
            let id = (i + t as i64 * JOBS / THREADS as i64) % JOBS;
            let claim = retry_busy(|| jobs.compare_and_swap(id, status, "pending", "claimed"))?;
            if !claim.swapped {
                assert_ne!(claim.current, "pending", "job {id}: a failed claim saw it pending");
                continue;
            }
            assert_eq!(claim.current, "claimed");
            mine.push(id);
            // Only the claimer moves the job on, so this swap cannot lose.
            let done = retry_busy(|| jobs.compare_and_swap(id, status, "claimed", "done"))?;
            assert!(done.swapped, "job {id}: claimed by thread {t} but {done:?}");
            // A second claim of a finished job must fail.
            assert!(!retry_busy(|| jobs.compare_and_swap(id, status, "pending", "claimed"))?.swapped);
        }
        Ok(mine)
    });
    let mut claims: BTreeMap<i64, usize> = BTreeMap::new();
    for id in claimed.iter().flatten() {
        *claims.entry(*id).or_default() += 1;
    }
    assert_eq!(claims.len() as i64, JOBS, "some jobs were never claimed");
    assert!(claims.values().all(|&n| n == 1), "jobs claimed more than once: {claims:?}");
    let jobs = db.collection::<Job>()?;
    for job in jobs.query().all()? {
        // Exactly two swaps wrote each job: pending -> claimed -> done.
        assert_eq!((job.status.as_str(), job.version), ("done", 2), "job {}", job.id);
    }
    assert_eq!(jobs.query().filter(status.eq("done")).count()?, JOBS as u64);
    assert_eq!(jobs.query().filter(status.ne("done")).count()?, 0);
    Ok(())
}

#[test]
fn update_with_converges_under_contention() -> Result<()> {
    const EACH: usize = 100;
    let dir = TempDir::new("update-with");
    let db = Db::open(dir.db())?;
    db.collection::<Counter>()?.insert(&counter("c"))?;
    // Separate handles: each thread reads through its own connections, so the optimistic
    // read-modify-write really races.
    let written = on_threads(|_| {
        let counters = collection::<Counter>(&retry_busy(|| Db::open(dir.db()))?)?;
        (0..EACH).map(|_| counters.update_with("c", patient(), |c| c.n += 1).map(|c| c.n)).collect::<Result<Vec<_>>>()
    });
    let total = (THREADS * EACH) as i64;
    let c = db.collection::<Counter>()?.get("c")?.expect("the counter");
    assert_eq!((c.n, c.version), (total, total as u64));
    let written: BTreeSet<i64> = written.iter().flatten().copied().collect();
    assert_eq!(written, (1..=total).collect::<BTreeSet<_>>(), "each update returns the value it stored");
    Ok(())
}

#[test]
fn update_with_without_retries_reports_conflicts_and_loses_nothing() -> Result<()> {
    const EACH: usize = 100;
    const ROUNDS: usize = 10;
    let dir = TempDir::new("update-with-none");
    let db = Db::open(dir.db())?;
    let counters = db.collection::<Counter>()?;
    counters.insert(&counter("c"))?;
    let (mut stored, mut conflicts) = (0, 0);
    // A conflict needs two writers between one read and its write; eight threads doing this
    // a hundred times each practically always collide in the first round.
    for _ in 0..ROUNDS {
        let outcomes = on_threads(|_| {
            let counters = collection::<Counter>(&retry_busy(|| Db::open(dir.db()))?)?;
            let (mut ok, mut conflict) = (0, 0);
            for _ in 0..EACH {
                match counters.update_with("c", RetryPolicy::none(), |c| c.n += 1) {
                    Ok(_) => ok += 1,
                    Err(Error::Conflict { collection, id, expected, actual }) => {
                        assert_eq!((collection.as_str(), id.as_str()), ("counters", "c"));
                        assert!(actual > expected, "conflict with an older version: {expected} -> {actual}");
                        conflict += 1;
                    }
                    // Not written either: the update never got the write lock.
                    Err(e) if e.backend_kind() == Some(BackendErrorKind::Busy) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok((ok, conflict))
        });
        stored += outcomes.iter().map(|o| o.0).sum::<i64>();
        conflicts += outcomes.iter().map(|o| o.1).sum::<usize>();
        let c = counters.get("c")?.expect("the counter");
        assert_eq!((c.n, c.version), (stored, stored as u64), "every successful update counts once");
        if conflicts > 0 {
            break;
        }
    }
    assert!(conflicts > 0, "no conflict in {ROUNDS} rounds of {THREADS} racing writers");
    Ok(())
}

#[test]
fn transaction_with_retries_a_conflict() -> Result<()> {
    let dir = TempDir::new("transaction-with");
    let db = Db::open(dir.db())?;
    let counters = db.collection::<Counter>()?;
    counters.insert(&counter("c"))?;
    let stale = counters.get("c")?.expect("the counter");
    // Another connection writes after our read.
    Db::open(dir.db())?.collection::<Counter>()?.increment("c", Counter::fields().n, 10)?;

    // The first attempt writes an audit document, then updates from the stale copy; the retry
    // reads again inside the transaction.
    let mut attempts = 0;
    let bump = |tx: &db4_runtime::Transaction<'_>, attempts: &mut u64| -> Result<u64> {
        *attempts += 1;
        let t = tx.collection::<Counter>()?;
        t.insert(&counter(&format!("audit-{attempts}")))?;
        let c = if *attempts == 1 { stale.clone() } else { t.get("c")?.expect("the counter") };
        t.update(&Counter { n: c.n + 1, ..c })?;
        Ok(*attempts)
    };
    let no_retry = TransactionOptions::default().retry(RetryPolicy::none());
    match db.transaction_with(&no_retry, |tx| bump(tx, &mut attempts)) {
        Err(Error::Conflict { expected: 0, actual: 1, .. }) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(counters.get("audit-1")?, None, "the failed attempt was rolled back");

    attempts = 0;
    let retry = TransactionOptions::default().retry(patient());
    assert_eq!(db.transaction_with(&retry, |tx| bump(tx, &mut attempts))?, 2);
    assert_eq!(counters.get("audit-1")?, None, "the failed attempt was rolled back");
    assert!(counters.get("audit-2")?.is_some());
    let c = counters.get("c")?.expect("the counter");
    assert_eq!((c.n, c.version), (11, 2));
    Ok(())
}

#[test]
fn transaction_with_retries_conflicts_under_contention() -> Result<()> {
    const EACH: usize = 50;
    const ROUNDS: usize = 5;
    let dir = TempDir::new("transaction-with-contention");
    let db = Db::open(dir.db())?;
    let counters = db.collection::<Counter>()?;
    counters.insert(&counter("c"))?;
    let options = TransactionOptions::default().retry(patient());
    let (mut committed, mut conflicts) = (0, 0);
    for _ in 0..ROUNDS {
        let outcomes = on_threads(|t| {
            let db = handle(&db, &dir.db(), t)?;
            let counters = collection::<Counter>(&db)?;
            let mut retried = 0;
            for _ in 0..EACH {
                // Read outside the transaction (say, to prepare the change), write inside it:
                // a writer in between makes the first attempt conflict.
                let seen = counters.get("c")?.expect("the counter");
                let mut attempt = 0;
                db.transaction_with(&options, |tx| {
                    attempt += 1;
                    let t = tx.collection::<Counter>()?;
                    let c = if attempt == 1 { seen.clone() } else { t.get("c")?.expect("the counter") };
                    t.update(&Counter { n: c.n + 1, ..c })
                })?;
                retried += attempt - 1;
            }
            Ok(retried)
        });
        committed += (THREADS * EACH) as i64;
        conflicts += outcomes.iter().sum::<usize>();
        let c = counters.get("c")?.expect("the counter");
        assert_eq!((c.n, c.version), (committed, committed as u64));
        if conflicts > 0 {
            break;
        }
    }
    assert!(conflicts > 0, "no transaction was retried in {ROUNDS} rounds");
    Ok(())
}

/// The payload of the panics this test raises on purpose.
struct IntendedPanic;

/// Keeps the intended panics out of the test output; any other panic is reported as usual.
fn quiet_intended_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<IntendedPanic>() {
                default(info);
            }
        }));
    });
}

fn all_counters(db: &Db) -> Result<Vec<Counter>> {
    let mut all = db.collection::<Counter>()?.query().all()?;
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(all)
}

/// Spawns a thread that runs `f` and asserts that it panicked on purpose.
fn panics_on_a_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|s| match s.spawn(f).join() {
        Err(payload) if payload.is::<IntendedPanic>() => {}
        Err(payload) => std::panic::resume_unwind(payload),
        Ok(()) => panic!("the thread did not panic"),
    });
}

#[test]
fn a_panic_in_a_transaction_leaves_the_database_unchanged_and_usable() -> Result<()> {
    quiet_intended_panics();
    let dir = TempDir::new("panic");
    let db = Db::open(dir.db())?;
    let counters = db.collection::<Counter>()?;
    counters.insert_many(&[counter("a"), counter("b")])?;
    counters.increment("a", Counter::fields().n, 5)?;
    let before = all_counters(&db)?;

    // A closure transaction that writes, then panics.
    panics_on_a_thread(|| {
        let _ = db.transaction(|tx| -> Result<()> {
            let t = tx.collection::<Counter>()?;
            t.insert(&counter("x")).expect("insert");
            t.increment("a", Counter::fields().n, 1).expect("increment");
            t.delete("b").expect("delete");
            tx.savepoint("s").expect("savepoint");
            t.insert(&counter("y")).expect("insert");
            std::panic::panic_any(IntendedPanic)
        });
    });
    assert_eq!(all_counters(&db)?, before);
    assert_eq!(all_counters(&Db::open(dir.db())?)?, before, "another connection sees the same");

    // An explicit transaction that writes, then panics while held: dropping it rolls back.
    panics_on_a_thread(|| {
        let tx = db.begin().expect("begin");
        let t = tx.collection::<Counter>().expect("counters");
        t.insert(&counter("z")).expect("insert");
        t.delete("a").expect("delete");
        std::panic::panic_any(IntendedPanic)
    });
    assert_eq!(all_counters(&db)?, before);

    // A closure passed to update_with that panics writes nothing.
    panics_on_a_thread(|| {
        let _ = counters.update_with("a", RetryPolicy::none(), |_| std::panic::panic_any(IntendedPanic));
    });
    assert_eq!(all_counters(&db)?, before);

    // Other threads, through the shared handle and through their own, keep working.
    on_threads(|t| {
        let db = handle(&db, &dir.db(), t)?;
        let id = format!("after-{t}");
        retry_busy(|| {
            db.transaction(|tx| {
                let t = tx.collection::<Counter>()?;
                t.insert(&counter(&id))?;
                t.increment("a", Counter::fields().n, 1)
            })
        })?;
        let tx = retry_busy(|| db.begin())?;
        tx.collection::<Counter>()?.increment(id.as_str(), Counter::fields().n, 1)?;
        tx.commit()?;
        let counters = collection::<Counter>(&db)?;
        retry_busy(|| counters.increment("b", Counter::fields().n, 1))
    });
    let after = all_counters(&Db::open(dir.db())?)?;
    assert_eq!(after.len(), before.len() + THREADS);
    let get = |id: &str| after.iter().find(|c| c.id == id).map(|c| c.n);
    assert_eq!(get("a"), Some(5 + THREADS as i64));
    assert_eq!(get("b"), Some(THREADS as i64));
    assert!((0..THREADS).all(|t| get(&format!("after-{t}")) == Some(1)));
    Ok(())
}

#[test]
fn a_panic_while_another_thread_waits_to_write_leaves_it_working() -> Result<()> {
    quiet_intended_panics();
    let dir = TempDir::new("panic-waiting");
    let db = Db::open(dir.db())?;
    let counters = db.collection::<Counter>()?;
    counters.insert(&counter("c"))?;
    // Half the threads panic inside their transactions, the other half increment, all at once.
    let results = on_threads(|t| {
        let db = handle(&db, &dir.db(), t)?;
        let caught = catch_unwind(AssertUnwindSafe(|| {
            retry_busy(|| {
                db.transaction(|tx| -> Result<i64> {
                    let n = tx.collection::<Counter>()?.increment("c", Counter::fields().n, 1)?;
                    if t % 4 < 2 {
                        std::panic::panic_any(IntendedPanic);
                    }
                    Ok(n)
                })
            })
        }));
        match caught {
            Ok(r) => r.map(Some),
            Err(payload) if payload.is::<IntendedPanic>() => Ok(None),
            Err(payload) => std::panic::resume_unwind(payload),
        }
    });
    let committed = results.iter().flatten().count();
    assert_eq!(committed, THREADS / 2);
    let c = counters.get("c")?.expect("the counter");
    assert_eq!((c.n, c.version), (committed as i64, committed as u64));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Bounded waits for the write lock

/// A configured busy timeout, and the generous bound a refused write must return within.
const SHORT_TIMEOUT: Duration = Duration::from_millis(200);
const WAIT_BOUND: Duration = Duration::from_secs(2);

fn short_timeout() -> db4_runtime::DbOptions {
    db4_runtime::DbOptions::default().busy_timeout(SHORT_TIMEOUT)
}

#[test]
fn a_write_waiting_for_this_threads_own_transaction_on_another_handle_fails_at_once() -> Result<()> {
    let dir = TempDir::new("same-thread");
    // The default timeout: the refusal must not wait for it.
    let (a, b) = (Db::open(dir.db())?, Db::open(dir.db())?);
    let (ca, cb) = (a.collection::<Counter>()?, b.collection::<Counter>()?);
    ca.insert(&counter("c"))?;

    let held = b.begin()?;
    held.collection::<Counter>()?.increment("c", Counter::fields().n, 1)?;
    let started = std::time::Instant::now();
    let refused = [
        ca.increment("c", Counter::fields().n, 1).map(drop),
        a.transaction(|tx| tx.collection::<Counter>()?.insert(&counter("d"))),
        a.begin().map(drop),
        Db::open(dir.db()).map(drop),
    ];
    let waited = started.elapsed();
    for r in refused {
        assert_eq!(r.unwrap_err().backend_kind(), Some(BackendErrorKind::WouldDeadlock));
    }
    assert!(waited < WAIT_BOUND, "refusing took {waited:?}");
    // Reads through the other handle do not wait: they see the last commit.
    assert_eq!(ca.get("c")?.map(|c| c.n), Some(0));
    held.commit()?;

    // Once the transaction is over, both handles write again.
    ca.increment("c", Counter::fields().n, 1)?;
    let tx = a.begin()?;
    tx.collection::<Counter>()?.increment("c", Counter::fields().n, 1)?;
    tx.commit()?;
    // A transaction only read through (no write lock taken yet) does not block the other handle.
    a.transaction(|tx| {
        assert_eq!(tx.collection::<Counter>()?.get("c")?.map(|c| c.n), Some(3));
        Ok(())
    })?;
    assert_eq!(cb.increment("c", Counter::fields().n, 1)?, 4);
    Ok(())
}

#[test]
fn a_write_waiting_for_another_threads_transaction_gives_up_after_the_busy_timeout() -> Result<()> {
    let dir = TempDir::new("other-thread");
    let db = Db::open_with(dir.db(), short_timeout())?;
    let counters = db.collection::<Counter>()?;
    counters.insert(&counter("c"))?;
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| -> Result<()> {
        // Owned by this closure, so that a failing assertion drops it and frees the holder.
        let release_tx = release_tx;
        let dir = &dir;
        let holder = s.spawn(move || -> Result<()> {
            // Another handle, on another thread: a lock this thread cannot tell from another
            // process's, so the write must wait for it, but only as long as configured.
            let other = Db::open(dir.db())?;
            let tx = other.begin()?;
            tx.collection::<Counter>()?.increment("c", Counter::fields().n, 10)?;
            locked_tx.send(()).expect("the test waits");
            // An error: the test failed and went away; commit anyway.
            let _ = release.recv();
            tx.commit()
        });
        locked.recv().expect("the holder locks");
        for attempt in 0..2 {
            let started = std::time::Instant::now();
            let r = counters.increment("c", Counter::fields().n, 1);
            let waited = started.elapsed();
            assert_eq!(r.unwrap_err().backend_kind(), Some(BackendErrorKind::Busy), "attempt {attempt}");
            assert!(waited >= SHORT_TIMEOUT, "gave up early, after {waited:?}");
            assert!(waited < WAIT_BOUND, "waited {waited:?} with a busy timeout of {SHORT_TIMEOUT:?}");
        }
        release_tx.send(()).expect("the holder waits");
        holder.join().expect("the holder panicked")
    })?;
    assert_eq!(counters.increment("c", Counter::fields().n, 1)?, 11, "nothing was written by the refused writes");
    Ok(())
}
