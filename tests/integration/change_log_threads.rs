//! The change log under concurrency: writers on several threads (and several handles of one
//! file, so several connections) while a consumer polls and acknowledges, restarting now and
//! then, or a live stream is read: every committed write is seen exactly once, in strictly
//! increasing LSN order, and nothing else is.

use crate::change_log::{all_events, assert_well_formed, events_after, lsns};
use db4::cdc::{ChangeEvent, ChangeOp};
use db4::{Db, Document, Error, Lsn, Value};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "ticks")]
struct Tick {
    #[id]
    id: String,
    thread: u32,
    step: u32,
    #[version]
    version: u64,
}

const THREADS: u32 = 4;
/// Steps per writer; each makes one to four writes.
const STEPS: u32 = 30;
/// How long a test may wait for the events before it fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(120);

/// What one writer commits, in its order: (id, operation, version after).
type Writes = Vec<(String, ChangeOp, u64)>;

/// The writes of writer `t` on `db`: inserts, updates, two-write transactions and
/// rolled-back ones (which must not show).
fn write(db: &Db, t: u32) -> Writes {
    let ticks = db.collection::<Tick>().unwrap();
    let mut done = Vec::new();
    for step in 0..STEPS {
        let id = format!("t{t}-{step}");
        ticks.insert(&Tick { id: id.clone(), thread: t, step, version: 0 }).unwrap();
        done.push((id.clone(), ChangeOp::Insert, 0));
        if step % 3 == 2 {
            ticks.update(&Tick { id: id.clone(), thread: t, step: step + 1000, version: 0 }).unwrap();
            done.push((id.clone(), ChangeOp::Update, 1));
        }
        if step % 5 == 4 {
            let pair = format!("t{t}-pair{step}");
            db.transaction(|tx| {
                let ticks = tx.collection::<Tick>()?;
                ticks.insert(&Tick { id: pair.clone(), thread: t, step, version: 0 })?;
                ticks.update(&Tick { id: pair.clone(), thread: t, step: step + 2000, version: 0 }).map(drop)
            })
            .unwrap();
            done.push((pair.clone(), ChangeOp::Insert, 0));
            done.push((pair, ChangeOp::Update, 1));
        }
        if step % 7 == 6 {
            let failed = db.transaction(|tx| -> db4::Result<()> {
                tx.collection::<Tick>()?.insert(&Tick {
                    id: format!("t{t}-lost{step}"),
                    thread: t,
                    step,
                    version: 0,
                })?;
                Err(Error::aborted("rolled back"))
            });
            assert!(failed.is_err());
        }
    }
    done
}

/// Checks that `seen` is exactly the writers' writes: each once, each writer's in its order.
fn assert_exactly_once(seen: &[ChangeEvent], writes: &[Writes]) {
    let total: usize = writes.iter().map(Vec::len).sum();
    assert_eq!(seen.len(), total, "one event per committed write");
    assert_eq!(lsns(seen), (1..=total as u64).collect::<Vec<_>>(), "strictly increasing, no gap, no duplicate");
    let mut per_thread: HashMap<u32, Writes> = HashMap::new();
    for e in seen {
        let Value::Text(id) = &e.id else { panic!("a text id: {e:?}") };
        let tick: Tick = e.after().unwrap().expect("inserts and updates only");
        per_thread.entry(tick.thread).or_default().push((id.clone(), e.op, e.version.unwrap()));
    }
    for (t, expected) in writes.iter().enumerate() {
        assert_eq!(per_thread.get(&(t as u32)), Some(expected), "writer {t}'s events, in its order");
    }
}

#[test]
fn four_writers_and_a_polling_consumer_see_every_event_exactly_once() {
    let dir = TempDir::new("cdc-threads-consumer");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    db.collection::<Tick>().unwrap();
    let writing_done = Arc::new(AtomicBool::new(false));

    // The consumer: its own handle, polling in small batches, acknowledging each, and
    // restarting (a new handle of the file, the consumer opened again) every few batches.
    let consumer = {
        let (path, writing_done) = (path.clone(), Arc::clone(&writing_done));
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut seen: Vec<ChangeEvent> = Vec::new();
            let mut restarts = 0;
            'run: loop {
                let db = Db::open(&path).unwrap();
                let etl = db.consumer("etl").unwrap();
                assert_eq!(etl.position().unwrap(), seen.last().map_or(Lsn::ZERO, |e| e.lsn));
                let mut batches = 0;
                while batches < 4 {
                    // Read before polling: once the writers are done, an empty poll means
                    // everything was seen.
                    let finished = writing_done.load(Ordering::Acquire);
                    let batch = etl.poll(17).unwrap();
                    if batch.is_empty() {
                        if finished {
                            break 'run;
                        }
                        assert!(started.elapsed() < DEADLINE, "the consumer waited too long");
                        // Back off while the writers catch up.
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let first = seen.last().map_or(1, |e| e.lsn.get() + 1);
                    for (expected, e) in (first..).zip(&batch) {
                        assert_eq!(e.lsn.get(), expected, "in order, nothing skipped or repeated");
                    }
                    etl.ack(batch.last().unwrap().lsn).unwrap();
                    seen.extend(batch);
                    batches += 1;
                }
                restarts += 1;
            }
            (seen, restarts)
        })
    };

    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || write(&Db::open(&path).unwrap(), t))
        })
        .collect();
    let writes: Vec<Writes> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    writing_done.store(true, Ordering::Release);
    let (seen, restarts) = consumer.join().unwrap();

    assert_exactly_once(&seen, &writes);
    assert!(restarts > 0, "the consumer restarted at least once");
    let logged = all_events(&db);
    assert_well_formed(&logged, 1);
    assert_eq!(seen, logged, "the consumer saw the log as it is");
    assert_eq!(db.consumer("etl").unwrap().position().unwrap(), db.last_lsn().unwrap());
    assert!(db.consumer("etl").unwrap().poll(100).unwrap().is_empty());
}

#[test]
fn a_stream_read_while_four_threads_write_sees_every_commit_once_in_order() {
    let dir = TempDir::new("cdc-threads-stream");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path).unwrap();
    db.collection::<Tick>().unwrap();
    // Subscribed before any write, big enough never to lag.
    let mut live = db.changes_with_capacity(100_000);
    let expected_total: usize = (0..THREADS).map(|_| write_count()).sum();

    let reader = std::thread::spawn(move || {
        let mut seen: Vec<ChangeEvent> = Vec::new();
        while seen.len() < expected_total {
            match live.next_timeout(DEADLINE) {
                Some(event) => {
                    let event = event.unwrap();
                    assert_eq!(event.lsn.get(), seen.len() as u64 + 1, "in commit order, nothing skipped");
                    seen.push(event);
                }
                None => panic!("the stream stopped after {} events", seen.len()),
            }
        }
        assert!(live.try_next().is_none(), "nothing more than what committed");
        seen
    });
    // Meanwhile the durable log, read from the start again and again, is always a
    // well-formed prefix.
    let writing_done = Arc::new(AtomicBool::new(false));
    let scanner = {
        let (db, writing_done) = (db.clone(), Arc::clone(&writing_done));
        std::thread::spawn(move || {
            let mut scans = 0;
            let mut longest = 0;
            while !writing_done.load(Ordering::Acquire) {
                let events = all_events(&db);
                assert!(events.len() >= longest, "the log never shrinks");
                longest = events.len();
                assert_well_formed(&events, 1);
                scans += 1;
            }
            scans
        })
    };

    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || write(&db, t))
        })
        .collect();
    let writes: Vec<Writes> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    writing_done.store(true, Ordering::Release);
    let seen = reader.join().unwrap();
    assert!(scanner.join().unwrap() > 0);

    assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), expected_total);
    assert_exactly_once(&seen, &writes);
    assert_eq!(seen, events_after(&db, Lsn::ZERO), "the stream delivered the log as it is");
}

/// How many writes [`write`] makes.
fn write_count() -> usize {
    (0..STEPS).map(|step| 1 + usize::from(step % 3 == 2) + if step % 5 == 4 { 2 } else { 0 }).sum()
}
