//! The change log against a writer killed at random instants: a child process commits
//! numbered transactions (each four writes in three collections, one a `#[version]`ed
//! counter) and, every other one, polls and acknowledges a named consumer, printing each
//! transaction and each acknowledgement once it returned; the test SIGKILLs it, reopens the
//! database and checks data, log and consumer against what was acknowledged, then starts the
//! next child on the same file.
//!
//! The child is this test binary run again, on this one test, with [`CHILD_ENV`] naming the
//! database file (as `durability.rs` does), so plain `cargo test` builds everything it needs.
//!
//! `DB4_CRASH_CYCLES` sets the number of kills (default 50); `DB4_CRASH_SEED` replays a
//! schedule (the seed is printed when the test fails).

use crate::common;
use db4::prelude::*;
use db4::{ChangeEvent, ChangeOp, Lsn, Synchronous, Value};
use db4_tests::{ChildGuard, Rng, TempDir};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "crash_items")]
struct Item {
    #[id]
    id: i64,
    #[index]
    k: i64,
    j: i64,
    payload: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "crash_marks")]
struct Mark {
    #[id]
    k: i64,
    items: Vec<i64>,
}

/// One document, rewritten by every transaction: the last `k` committed.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "crash_counter")]
struct Counter {
    #[id]
    id: i64,
    last: i64,
    #[version]
    version: u64,
}

/// Writes (and so change-log events) per transaction: two items, a mark, the counter.
const EVENTS_PER_TX: u64 = 4;
const CONSUMER: &str = "crash-etl";
const CHILD_ENV: &str = "DB4_TESTS_CRASH_LOG_CHILD";
const TEST: &str = "acknowledged_transactions_and_acks_survive_kills_at_random_instants";

fn item(k: i64, j: i64) -> Item {
    // Sizes vary, so that some transactions spill over more pages than others.
    let len = ((k * 37 + j * 101) % 900) as usize;
    Item { id: 2 * k + j, k, j, payload: format!("{k}/{j}:{}", "p".repeat(len)) }
}

fn mark(k: i64) -> Mark {
    Mark { k, items: vec![2 * k, 2 * k + 1] }
}

/// The first LSN of transaction `k`: its transaction id. Nothing else writes events.
fn tx_id(k: i64) -> u64 {
    k as u64 * EVENTS_PER_TX + 1
}

/// The value after `prefix` in `line`; libtest may have printed the test's name in front.
fn field(line: &str, prefix: &str) -> Option<u64> {
    let (_, rest) = line.rsplit_once(prefix)?;
    rest.split_whitespace().next()?.parse().ok()
}

// --- The child ---------------------------------------------------------------------------------

/// In the child: transaction after transaction on the database at `path`, printing
/// `committed k` once transaction `k` returned and `acked n` once the consumer's
/// acknowledgement of LSN `n` returned; until killed.
fn child(path: &Path) -> ! {
    let db = Db::open_with(path, DbOptions::default().synchronous(Synchronous::Full)).expect("child: open");
    let counter = db.collection::<Counter>().expect("child: counter");
    let first = counter.get(0).expect("child: read the counter").map_or(0, |c| c.last + 1);
    let consumer = db.consumer(CONSUMER).expect("child: consumer");
    let mut polled = consumer.position().expect("child: position").get();
    let mut out = std::io::stdout().lock();
    writeln!(out, "start {first} at {polled}").unwrap();
    out.flush().unwrap();
    // Bounded, so that a child whose parent went away does not run forever.
    for k in first..first + 20_000 {
        db.transaction(|tx| {
            let items = tx.collection::<Item>()?;
            items.insert(&item(k, 0))?;
            items.insert(&item(k, 1))?;
            tx.collection::<Mark>()?.insert(&mark(k))?;
            let counter = tx.collection::<Counter>()?;
            match counter.get(0)? {
                None => counter.insert(&Counter { id: 0, last: k, version: 0 }),
                Some(mut c) => {
                    assert_eq!(c.last, k - 1, "child: the counter is at the previous transaction");
                    c.last = k;
                    counter.update(&c).map(drop)
                }
            }
        })
        .expect("child: commit");
        writeln!(out, "committed {k}").unwrap();
        out.flush().unwrap();

        if k % 2 == 1 {
            // 1 to 16 events: acknowledgements land inside transactions as well as between.
            let events = consumer.poll(1 + (k as usize * 7) % 16).expect("child: poll");
            for e in &events {
                // The first poll of each process starts right after the stored position.
                assert_eq!(e.lsn.get(), polled + 1, "child: the consumer resumes after its position");
                polled = e.lsn.get();
            }
            if let Some(last) = events.last() {
                consumer.ack(last.lsn).expect("child: ack");
                writeln!(out, "acked {}", last.lsn).unwrap();
                out.flush().unwrap();
            }
        }
        if k % 64 == 63 {
            // Drop what is older than 64 transactions before the consumer's position, on a
            // transaction boundary.
            let keep = (consumer.position().expect("child: position").get() / EVENTS_PER_TX).saturating_sub(64);
            if keep > 0 {
                db.truncate_changes(Lsn::new(tx_id(keep as i64))).expect("child: truncate");
            }
        }
    }
    std::process::abort()
}

// --- The checks --------------------------------------------------------------------------------

/// What the parent knows from the children's output and the previous checks.
#[derive(Debug, Default)]
struct Known {
    /// The last transaction found in the database (-1: none yet).
    last_k: i64,
    /// The last transaction a child printed (-1: none yet).
    acked_k: i64,
    /// The last LSN a child printed an acknowledgement of.
    acked_lsn: u64,
    /// The consumer's stored position at the last check.
    position: u64,
}

#[derive(Debug, Default)]
struct Tally {
    kills: u64,
    kills_while_starting: u64,
    acknowledged: u64,
    committed_unacknowledged: u64,
    acks: u64,
    acks_unprinted: u64,
    events_checked: u64,
    docs_checked: u64,
    truncated_logs: u64,
}

/// Reopens the database and checks it against `known`, which it moves on to what it found.
fn check(path: &Path, known: &mut Known, tally: &mut Tally, full: bool) {
    if full {
        let ok: String = common::raw(path).query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok");
    }
    let db = Db::open(path).unwrap();
    let (items, marks, counter) =
        (db.collection::<Item>().unwrap(), db.collection::<Mark>().unwrap(), db.collection::<Counter>().unwrap());

    // The data: every acknowledged transaction, and at most the one after it whose commit
    // returned without its line reaching us.
    let c = counter.get(0).unwrap();
    let last_k = c.as_ref().map_or(-1, |c| c.last);
    if let Some(c) = &c {
        assert_eq!(c.version, c.last as u64, "one counter update per transaction after the first");
    }
    assert!(
        last_k == known.acked_k || last_k == known.acked_k + 1,
        "transactions up to {last_k} stored, up to {} acknowledged",
        known.acked_k
    );
    assert!(last_k >= known.last_k, "transactions up to {last_k} stored, up to {} before", known.last_k);
    if last_k > known.acked_k {
        tally.committed_unacknowledged += 1;
    }
    // Exactly the documents of whole transactions: no more, no fewer, nothing twice.
    assert_eq!(items.count().unwrap(), 2 * (last_k + 1) as u64, "items");
    assert_eq!(marks.count().unwrap(), (last_k + 1) as u64, "marks");
    let from = if full { 0 } else { known.last_k + 1 };
    for k in from..=last_k {
        let got = items.get_many([2 * k, 2 * k + 1]).unwrap();
        assert_eq!(got, [Some(item(k, 0)), Some(item(k, 1))], "the items of transaction {k}");
        assert_eq!(marks.get(k).unwrap(), Some(mark(k)), "the mark of transaction {k}");
        tally.docs_checked += 3;
    }
    if last_k >= from {
        // The index agrees with the documents.
        let k = Item::fields().k;
        assert_eq!(items.query().filter(k.between(from, last_k)).count().unwrap(), 2 * (last_k - from + 1) as u64);
    }

    // The log: contiguous LSNs from the oldest kept to the newest, in whole transactions,
    // each exactly what its transaction wrote.
    let (oldest, newest) = (db.oldest_lsn().unwrap().get(), db.last_lsn().unwrap().get());
    assert_eq!(newest, (last_k + 1) as u64 * EVENTS_PER_TX, "the newest event is the last transaction's last");
    let events: Vec<ChangeEvent> =
        db.changes_since(Lsn::new(oldest.saturating_sub(1))).unwrap().map(Result::unwrap).collect();
    if last_k < 0 {
        assert!(events.is_empty() && oldest == 0, "no transaction, no event");
    } else {
        assert_eq!(oldest % EVENTS_PER_TX, 1, "the log starts at a transaction's first event (oldest {oldest})");
        if oldest > 1 {
            tally.truncated_logs += 1;
        }
        assert_eq!(events.len() as u64, newest - oldest + 1, "every event from {oldest} to {newest}");
        for group in events.chunks(EVENTS_PER_TX as usize) {
            check_transaction(group);
        }
        tally.events_checked += events.len() as u64;
    }

    // The consumer: its stored position covers every printed acknowledgement, and a fresh
    // handle's poll starts right after it.
    let registered = db.consumers().unwrap().into_iter().find(|c| c.name == CONSUMER);
    let position = registered.as_ref().map_or(0, |c| c.acked.get());
    assert!(position >= known.acked_lsn, "position {position}, last printed acknowledgement {}", known.acked_lsn);
    assert!(position >= known.position, "position {position}, {} before", known.position);
    assert!(position <= newest, "position {position} beyond the newest event {newest}");
    if registered.is_some() {
        assert!(oldest <= position + 1, "events after the position {position} were dropped (oldest {oldest})");
        if position > known.acked_lsn {
            tally.acks_unprinted += 1;
        }
        let consumer = db.consumer(CONSUMER).unwrap();
        assert_eq!(consumer.position().unwrap().get(), position);
        let polled = consumer.poll(6).unwrap();
        let expected: Vec<&ChangeEvent> = events.iter().filter(|e| e.lsn.get() > position).take(6).collect();
        assert_eq!(polled.iter().collect::<Vec<_>>(), expected, "a fresh consumer resumes at {}", position + 1);
        if position < newest {
            assert_eq!(polled[0].lsn.get(), position + 1);
        }
    }
    *known = Known { last_k, acked_k: last_k, acked_lsn: position, position };
}

/// Checks one transaction's events: the transaction id, LSNs, operations and images its four
/// writes must have.
fn check_transaction(group: &[ChangeEvent]) {
    let first = group[0].tx_id;
    assert_eq!(first % EVENTS_PER_TX, 1, "transaction id {first}");
    let k = ((first - 1) / EVENTS_PER_TX) as i64;
    assert_eq!(group.len() as u64, EVENTS_PER_TX, "transaction {k} is whole in the log: {group:?}");
    for (j, e) in group.iter().enumerate() {
        let at = format!("transaction {k}, event {}", e.lsn);
        assert_eq!((e.lsn.get(), e.tx_id, e.at), (tx_id(k) + j as u64, tx_id(k), group[0].at), "{at}");
        assert_eq!(e.before, None, "{at}: no before-images recorded");
        match j {
            0 | 1 => {
                assert_eq!(
                    (e.collection.as_str(), &e.id, e.op, e.version),
                    ("crash_items", &Value::Integer(2 * k + j as i64), ChangeOp::Insert, None),
                    "{at}"
                );
                assert_eq!(e.after::<Item>().unwrap(), Some(item(k, j as i64)), "{at}");
            }
            2 => {
                assert_eq!(
                    (e.collection.as_str(), &e.id, e.op, e.version),
                    ("crash_marks", &Value::Integer(k), ChangeOp::Insert, None),
                    "{at}"
                );
                assert_eq!(e.after::<Mark>().unwrap(), Some(mark(k)), "{at}");
            }
            _ => {
                let op = if k == 0 { ChangeOp::Insert } else { ChangeOp::Update };
                assert_eq!(
                    (e.collection.as_str(), &e.id, e.op, e.version),
                    ("crash_counter", &Value::Integer(0), op, Some(k as u64)),
                    "{at}"
                );
                assert_eq!(e.after::<Counter>().unwrap().map(|c| c.last), Some(k), "{at}");
            }
        }
    }
}

/// Takes in one line of the child's output; `true` for an acknowledged transaction.
fn read(line: std::io::Result<String>, known: &mut Known, tally: &mut Tally) -> bool {
    let line = line.unwrap();
    if let Some(k) = field(&line, "committed ") {
        assert_eq!(k as i64, known.acked_k + 1, "transactions are acknowledged in order, without a gap");
        known.acked_k = k as i64;
        tally.acknowledged += 1;
        return true;
    }
    if let Some(lsn) = field(&line, "acked ") {
        assert!(lsn > known.acked_lsn, "acknowledgements move forward");
        known.acked_lsn = lsn;
        tally.acks += 1;
    } else if let Some(k) = field(&line, "start ") {
        assert_eq!(k as i64, known.last_k + 1, "the child goes on after the last stored transaction");
    }
    false
}

/// Prints how to replay the schedule if the test fails.
struct OnFailure {
    seed: u64,
    cycle: u64,
}

impl Drop for OnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("crash_log failed in cycle {}: replay with DB4_CRASH_SEED={:#x}", self.cycle, self.seed);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let s = std::env::var(name).ok()?;
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[test]
fn acknowledged_transactions_and_acks_survive_kills_at_random_instants() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        child(Path::new(&path));
    }
    let cycles = env_u64("DB4_CRASH_CYCLES").unwrap_or(50);
    let seed = env_u64("DB4_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let mut failure = OnFailure { seed, cycle: 0 };
    let mut rng = Rng::new(seed);
    let dir = TempDir::new("crash-log");
    let path = dir.join("db.sqlite");
    let errors = dir.join("child.stderr");
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, m)| m);
    let name = format!("{module}::{TEST}");
    let started = Instant::now();
    let mut known = Known { last_k: -1, acked_k: -1, ..Known::default() };
    let mut tally = Tally::default();
    for cycle in 0..cycles {
        failure.cycle = cycle;
        let mut child = ChildGuard(
            Command::new(std::env::current_exe().unwrap())
                .args([name.as_str(), "--exact", "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, &path)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&errors).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        if rng.below(8) == 0 {
            // While it starts: opening the database, registering the consumer, first commits.
            tally.kills_while_starting += 1;
            std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        } else {
            let wanted = 1 + rng.below(30);
            let mut commits = 0;
            for line in lines.by_ref() {
                if read(line, &mut known, &mut tally) {
                    commits += 1;
                    if commits == wanted {
                        break;
                    }
                }
            }
            // SIGKILL, somewhere in the commits, polls and acknowledgements after.
            std::thread::sleep(Duration::from_micros(rng.below(3_000)));
        }
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        // What it acknowledged before it died.
        for line in lines {
            read(line, &mut known, &mut tally);
        }
        #[cfg(unix)]
        let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
        #[cfg(not(unix))]
        let killed = !status.success();
        assert!(
            killed,
            "the child died on its own ({status}): {}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        tally.kills += 1;
        check(&path, &mut known, &mut tally, cycle % 10 == 9 || cycle + 1 == cycles);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "crash_log: seed {seed:#x}, {cycles} cycles in {elapsed:.1?}, {} transactions stored: {tally:?}",
        known.last_k + 1
    );
    assert!(known.last_k + 1 > cycles as i64, "the children committed ({} transactions)", known.last_k + 1);
    assert!(tally.acks > 0, "the consumer acknowledged");
    drop(failure);
}
