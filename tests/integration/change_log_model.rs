//! The change log against a model: random transactions with savepoints, rollbacks to them,
//! nested transactions that fail and whole transactions that roll back. The log must hold
//! exactly the model's committed changes (operations, images, versions, LSNs, transaction
//! ids); replaying it into an empty database must give the live documents, and replaying it up
//! to a random LSN the model's state right after the transaction that committed it.
//!
//! Each case is seeded; a failure names its seed (`DB4_CDC_MODEL_SEED` replays one case,
//! `DB4_CDC_MODEL_CASES` sets how many run).

use db4::{ChangeEvent, ChangeOp, Db, DbOptions, Document, Lsn, Result, Transaction};
use db4_tests::{Rng, TempDir};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "plain")]
struct Plain {
    #[id]
    id: i64,
    v: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "counted")]
struct Counted {
    #[id]
    id: i64,
    v: i64,
    #[version]
    version: u64,
}

/// The two collections' documents: `(collection, id) -> (v, version)`.
type State = BTreeMap<(&'static str, i64), (i64, u64)>;

/// A change the model expects in the log.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    collection: &'static str,
    id: i64,
    op: ChangeOp,
    /// `v` after the change; `None` for a delete.
    after: Option<i64>,
    /// `v` before it (before-images are on); `None` for an insert.
    before: Option<i64>,
    /// The version after (for a delete: the one it had), in `counted`.
    version: Option<u64>,
}

/// A unit of work as the model sees it: the state and the changes so far.
#[derive(Clone, Default)]
struct Work {
    state: State,
    changes: Vec<Expected>,
}

fn collection(rng: &mut Rng) -> &'static str {
    if rng.chance(1, 2) { "plain" } else { "counted" }
}

/// One random write valid for the model's state, made through `tx` and recorded in `work`.
fn write(tx: &Transaction<'_>, rng: &mut Rng, work: &mut Work) -> Result<()> {
    let c = collection(rng);
    let id = rng.range(1, 12);
    let v = rng.range(-1000, 1000);
    let versioned = c == "counted";
    let existing = work.state.get(&(c, id)).copied();
    let expected = match (existing, rng.below(4)) {
        (None, _) if versioned || rng.chance(1, 2) => {
            if versioned {
                tx.collection::<Counted>()?.insert(&Counted { id, v, version: 0 })?;
            } else {
                tx.collection::<Plain>()?.insert(&Plain { id, v })?;
            }
            work.state.insert((c, id), (v, 0));
            Expected {
                collection: c,
                id,
                op: ChangeOp::Insert,
                after: Some(v),
                before: None,
                version: versioned.then_some(0),
            }
        }
        (None, _) => {
            // An upsert of a new document: the log settles it into an insert.
            tx.collection::<Plain>()?.upsert(&Plain { id, v })?;
            work.state.insert((c, id), (v, 0));
            Expected { collection: c, id, op: ChangeOp::Insert, after: Some(v), before: None, version: None }
        }
        (Some((old, version)), 0) => {
            if versioned {
                tx.collection::<Counted>()?.delete(id)?;
            } else {
                tx.collection::<Plain>()?.delete(id)?;
            }
            work.state.remove(&(c, id));
            Expected {
                collection: c,
                id,
                op: ChangeOp::Delete,
                after: None,
                before: Some(old),
                version: versioned.then_some(version),
            }
        }
        (Some((old, version)), 1) if !versioned => {
            tx.collection::<Plain>()?.upsert(&Plain { id, v })?;
            work.state.insert((c, id), (v, version));
            Expected { collection: c, id, op: ChangeOp::Update, after: Some(v), before: Some(old), version: None }
        }
        (Some((old, version)), _) => {
            let next = if versioned {
                tx.collection::<Counted>()?.update(&Counted { id, v, version })?;
                version + 1
            } else {
                tx.collection::<Plain>()?.update(&Plain { id, v })?;
                version
            };
            work.state.insert((c, id), (v, next));
            Expected {
                collection: c,
                id,
                op: ChangeOp::Update,
                after: Some(v),
                before: Some(old),
                version: versioned.then_some(next),
            }
        }
    };
    work.changes.push(expected);
    Ok(())
}

/// Random writes with savepoints, rollbacks to them and nested transactions, `depth` levels
/// of nesting at most.
fn body(tx: &Transaction<'_>, rng: &mut Rng, work: &mut Work, depth: u32) -> Result<()> {
    let mut savepoint: Option<Work> = None;
    for _ in 0..rng.range(1, 8) {
        match rng.below(10) {
            0 => {
                tx.savepoint("sp")?;
                savepoint = Some(work.clone());
            }
            1 if savepoint.is_some() => {
                tx.rollback_to("sp")?;
                *work = savepoint.clone().expect("checked");
            }
            2 if depth < 2 => {
                let fail = rng.chance(1, 2);
                let mut inner = work.clone();
                let outcome = tx.transaction(|tx| {
                    body(tx, rng, &mut inner, depth + 1)?;
                    if fail { Err(db4::Error::aborted("the nested part fails")) } else { Ok(()) }
                });
                match (outcome, fail) {
                    (Ok(()), false) => *work = inner,
                    (Err(db4::Error::Aborted(_)), true) => {}
                    (other, _) => panic!("nested transaction: {other:?}"),
                }
            }
            _ => write(tx, rng, work)?,
        }
    }
    Ok(())
}

/// The documents of a database as the model holds them.
fn documents(db: &Db) -> Result<State> {
    let mut out = State::new();
    for doc in db.collection::<Plain>()?.query().all()? {
        out.insert(("plain", doc.id), (doc.v, 0));
    }
    for doc in db.collection::<Counted>()?.query().all()? {
        out.insert(("counted", doc.id), (doc.v, doc.version));
    }
    Ok(out)
}

fn v_of(event: &ChangeEvent, json: Option<&str>) -> Option<i64> {
    json.map(|j| {
        let value: serde_json::Value = serde_json::from_str(j).expect("an image is JSON");
        assert_eq!(value["id"], serde_json::json!(event.id_i64()), "event {}: the image's id", event.lsn);
        value["v"].as_i64().expect("v is an integer")
    })
}

trait IdI64 {
    fn id_i64(&self) -> i64;
}

impl IdI64 for ChangeEvent {
    fn id_i64(&self) -> i64 {
        match self.id {
            db4::Value::Integer(i) => i,
            ref other => panic!("event {}: id {other:?}", self.lsn),
        }
    }
}

fn run_case(seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let db = Db::open_in_memory_with(DbOptions::default().before_images(true))?;
    db.collection::<Plain>()?;
    db.collection::<Counted>()?;
    let mut state = State::new();
    let mut log: Vec<(u64, Expected)> = Vec::new(); // (transaction number, change)
    // The state after each committed transaction, with the LSN of its last change.
    let mut snapshots: Vec<(u64, State)> = Vec::new();
    for txn in 0..rng.range(1, 8) as u64 {
        let commit = rng.chance(3, 4);
        let mut work = Work { state: state.clone(), changes: Vec::new() };
        let outcome = db.transaction(|tx| {
            work = Work { state: state.clone(), changes: Vec::new() };
            body(tx, &mut rng, &mut work, 0)?;
            if commit { Ok(()) } else { Err(db4::Error::aborted("the transaction rolls back")) }
        });
        match (outcome, commit) {
            (Ok(()), true) => {
                state = work.state;
                log.extend(work.changes.into_iter().map(|c| (txn, c)));
                snapshots.push((log.len() as u64, state.clone()));
            }
            (Err(db4::Error::Aborted(_)), false) => {}
            (other, _) => panic!("seed {seed:#x}: transaction {txn}: {other:?}"),
        }
    }

    // 1. The log is exactly the model's committed changes.
    let events = db.changes_since(Lsn::ZERO)?.collect::<Result<Vec<_>>>()?;
    assert_eq!(events.len(), log.len(), "seed {seed:#x}: {events:#?}\nexpected {log:#?}");
    let mut tx_start = BTreeMap::new();
    for (n, (event, (txn, expected))) in events.iter().zip(&log).enumerate() {
        assert_eq!(event.lsn, Lsn::new(n as u64 + 1), "seed {seed:#x}: LSNs are consecutive from 1");
        let got = Expected {
            collection: if event.collection == "plain" { "plain" } else { "counted" },
            id: event.id_i64(),
            op: event.op,
            after: v_of(event, event.after.as_deref()),
            before: v_of(event, event.before.as_deref()),
            version: event.version,
        };
        assert_eq!(&got, expected, "seed {seed:#x}: event {}", event.lsn);
        if event.collection == "counted"
            && let Some(after) = event.after::<Counted>()?
        {
            // The image carries the version the document has, not the one its writer held.
            assert_eq!(
                Some(after.version),
                event.version,
                "seed {seed:#x}: event {}: the after-image's version",
                event.lsn
            );
        }
        let first = *tx_start.entry(*txn).or_insert(event.lsn.get());
        assert_eq!(event.tx_id, first, "seed {seed:#x}: event {}: tx_id is its transaction's first LSN", event.lsn);
    }
    assert_eq!(documents(&db)?, state, "seed {seed:#x}: the live documents are the model's");

    // 2. Replaying the whole log into an empty database gives the live documents.
    let dir = TempDir::new("cdc-model");
    let copy = Db::open(dir.join("copy.db"))?;
    copy.collection::<Plain>()?;
    copy.collection::<Counted>()?;
    let report = db4::wal::replay(&db, &copy, None)?;
    assert!(report.is_complete(), "seed {seed:#x}: {report:?}");
    assert_eq!(report.applied, log.len() as u64);
    assert_eq!(documents(&copy)?, state, "seed {seed:#x}: the replayed documents");

    // 3. Replaying up to a random LSN gives the state after the transaction that committed it.
    if !log.is_empty() {
        let k = rng.range(1, log.len() as i64) as u64;
        let expected = snapshots.iter().find(|(last, _)| *last >= k).map(|(_, s)| s.clone()).expect("k is logged");
        let partial = Db::open_in_memory()?;
        partial.collection::<Plain>()?;
        partial.collection::<Counted>()?;
        let report = db4::wal::replay(&db, &partial, Some(Lsn::new(k)))?;
        assert!(report.is_complete(), "seed {seed:#x}: {report:?}");
        assert!(report.last >= Lsn::new(k), "seed {seed:#x}: replay up to {k} stopped at {}", report.last);
        assert_eq!(documents(&partial)?, expected, "seed {seed:#x}: replay up to LSN {k}");
        // The copy's own log recorded what it applied.
        assert_eq!(partial.last_lsn()?.get(), report.applied);
    }
    Ok(())
}

#[test]
fn the_log_is_exactly_the_committed_changes_and_replays_into_the_same_documents() -> Result<()> {
    if let Some(seed) =
        std::env::var("DB4_CDC_MODEL_SEED").ok().and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    {
        return run_case(seed);
    }
    let cases: u64 = std::env::var("DB4_CDC_MODEL_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let mut seeds = Rng::new(0xcdc0_5eed);
    for _ in 0..cases {
        run_case(seeds.next_u64())?;
    }
    Ok(())
}

#[test]
fn four_writers_and_a_polling_consumer_see_every_event_once_in_lsn_order() -> Result<()> {
    const THREADS: i64 = 4;
    const TXNS: i64 = 150;
    let dir = TempDir::new("cdc-threads");
    let path = dir.join("app.db");
    let db = Db::open(&path)?;
    db.collection::<Plain>()?;
    let total = (THREADS * TXNS * 2) as usize;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // A consumer on its own handle, polling and acknowledging while the writers run.
    let reader = {
        let db = Db::open(&path)?;
        let done = Arc::clone(&done);
        std::thread::spawn(move || -> Result<Vec<ChangeEvent>> {
            let consumer = db.consumer("etl")?;
            let mut seen = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                let batch = consumer.poll(37)?;
                if let Some(last) = batch.last() {
                    consumer.ack(last.lsn)?;
                }
                let empty = batch.is_empty();
                seen.extend(batch);
                if finished && empty {
                    return Ok(seen);
                }
            }
        })
    };
    let mut live = db.changes_with_capacity(total * 2);
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || -> Result<()> {
                for n in 0..TXNS {
                    let id = t * 10_000 + n;
                    db.transaction(|tx| {
                        let plain = tx.collection::<Plain>()?;
                        plain.insert(&Plain { id, v: 0 })?;
                        plain.update(&Plain { id, v: 1 })
                    })?;
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().expect("a writer panicked")?;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let seen = reader.join().expect("the consumer panicked")?;

    let check = |events: &[ChangeEvent], who: &str| {
        assert_eq!(events.len(), total, "{who}: every event once");
        for (n, e) in events.iter().enumerate() {
            assert_eq!(e.lsn, Lsn::new(n as u64 + 1), "{who}: in LSN order, none missing or twice");
        }
        // Each transaction's two events are adjacent: an insert then an update of one document.
        for pair in events.chunks(2) {
            assert_eq!((pair[0].op, pair[1].op), (ChangeOp::Insert, ChangeOp::Update), "{who}");
            assert_eq!((pair[0].id.clone(), pair[1].tx_id), (pair[1].id.clone(), pair[0].lsn.get()), "{who}");
        }
        let ids: std::collections::BTreeSet<_> = events.iter().map(IdI64::id_i64).collect();
        assert_eq!(ids.len(), total / 2, "{who}: every document");
    };
    check(&seen, "the consumer");
    let streamed: Vec<ChangeEvent> = (0..total)
        .map(|_| live.next_timeout(std::time::Duration::from_secs(10)).expect("an event"))
        .collect::<Result<_>>()?;
    check(&streamed, "the live stream");
    assert_eq!(db.consumer("etl")?.position()?, Lsn::new(total as u64), "the consumer acknowledged everything");
    Ok(())
}
