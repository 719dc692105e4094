//! Model-based property tests of the change log: random transactions over two collections
//! (one with `#[version]`), each a random list of writes with savepoints, rollbacks to them,
//! releases and nested transactions that fail or succeed, committed or rolled back, some on
//! their own outside any transaction. A model computes what must have committed:
//!
//! - the log holds exactly the model's committed changes (operations, ids, images, versions),
//!   one contiguous transaction per committed unit of work;
//! - replaying the whole log into an empty database reproduces the live one;
//! - replaying it up to a random LSN reproduces the model's state right after the
//!   transaction that committed that LSN.
//!
//! Cases: `DB4_PROPTEST_CASES` (default 64 per property).

use crate::change_log::{all_events, assert_well_formed, image, transactions};
use db4::cdc::{ChangeEvent, ChangeOp};
use db4::{Collection, Db, DbOptions, Document, Error, Lsn, Scope, Transaction, Value};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "model_plain")]
struct Plain {
    #[id]
    id: i64,
    #[index]
    n: i64,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "model_versioned")]
struct Versioned {
    #[id]
    id: String,
    n: i64,
    #[version]
    version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Coll {
    Plain,
    Versioned,
}

impl Coll {
    fn name(self) -> &'static str {
        match self {
            Coll::Plain => "model_plain",
            Coll::Versioned => "model_versioned",
        }
    }

    fn id(self, id: i64) -> Value {
        match self {
            Coll::Plain => Value::Integer(id),
            Coll::Versioned => Value::Text(vid(id)),
        }
    }

    /// The stored JSON of a document, without its version key (see `image`).
    fn json(self, id: i64, n: i64) -> serde_json::Value {
        match self {
            Coll::Plain => json!({"id": id, "n": n}),
            Coll::Versioned => json!({"id": vid(id), "n": n}),
        }
    }
}

fn vid(id: i64) -> String {
    format!("v{id}")
}

/// A write.
#[derive(Debug, Clone)]
enum DataOp {
    Insert(Coll, i64, i64),
    /// An update of the current copy (its version is the stored one).
    Update(Coll, i64, i64),
    /// An update of a stale copy of a versioned document: a conflict.
    StaleUpdate(i64, i64),
    Upsert(Coll, i64, i64),
    Delete(Coll, i64),
    Increment(Coll, i64, i64),
    InsertMany(Coll, Vec<(i64, i64)>),
    /// Deletes the plain documents whose `n` is below this.
    QueryDelete(i64),
}

/// A step of a transaction.
#[derive(Debug, Clone)]
enum Step {
    Data(DataOp),
    Savepoint(u8),
    RollbackTo(u8),
    Release(u8),
    /// A nested transaction; `true`: it returns `Err`.
    Nested(Vec<Step>, bool),
}

/// A unit of work.
#[derive(Debug, Clone)]
enum Unit {
    /// Writes outside any transaction, each on its own.
    Auto(Vec<DataOp>),
    /// `db.transaction`, committed (`true`) or returning `Err`.
    Closure(Vec<Step>, bool),
    /// `db.begin()`, committed (`true`) or rolled back (dropped, if the second flag).
    Explicit(Vec<Step>, bool, bool),
}

fn coll() -> impl Strategy<Value = Coll> {
    prop_oneof![Just(Coll::Plain), Just(Coll::Versioned)]
}

fn data_op() -> impl Strategy<Value = DataOp> {
    let id = 0i64..6;
    let n = -20i64..20;
    prop_oneof![
        4 => (coll(), id.clone(), n.clone()).prop_map(|(c, id, n)| DataOp::Insert(c, id, n)),
        3 => (coll(), id.clone(), n.clone()).prop_map(|(c, id, n)| DataOp::Update(c, id, n)),
        1 => (id.clone(), n.clone()).prop_map(|(id, n)| DataOp::StaleUpdate(id, n)),
        3 => (coll(), id.clone(), n.clone()).prop_map(|(c, id, n)| DataOp::Upsert(c, id, n)),
        2 => (coll(), id.clone()).prop_map(|(c, id)| DataOp::Delete(c, id)),
        2 => (coll(), id.clone(), -3i64..4).prop_map(|(c, id, d)| DataOp::Increment(c, id, d)),
        1 => (coll(), proptest::collection::vec((id, n), 1..4)).prop_map(|(c, docs)| DataOp::InsertMany(c, docs)),
        1 => (-15i64..15).prop_map(DataOp::QueryDelete),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let leaf = prop_oneof![
        6 => data_op().prop_map(Step::Data),
        1 => (0u8..3).prop_map(Step::Savepoint),
        1 => (0u8..3).prop_map(Step::RollbackTo),
        1 => (0u8..3).prop_map(Step::Release),
    ];
    leaf.prop_recursive(2, 24, 6, |inner| {
        prop_oneof![
            6 => inner.clone(),
            1 => (proptest::collection::vec(inner, 0..6), any::<bool>()).prop_map(|(s, fail)| Step::Nested(s, fail)),
        ]
    })
}

fn unit() -> impl Strategy<Value = Unit> {
    let steps = || proptest::collection::vec(step(), 0..14);
    prop_oneof![
        1 => proptest::collection::vec(data_op(), 1..4).prop_map(Unit::Auto),
        3 => (steps(), prop::bool::weighted(0.75)).prop_map(|(s, commit)| Unit::Closure(s, commit)),
        2 => (steps(), prop::bool::weighted(0.75), any::<bool>()).prop_map(|(s, c, drop)| Unit::Explicit(s, c, drop)),
    ]
}

/// The documents: (collection, id) → (n, version; 0 for plain ones).
type State = BTreeMap<(Coll, i64), (i64, u64)>;

/// A change the log must hold: operation, collection, id, version, after- and before-image.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    op: ChangeOp,
    collection: &'static str,
    id: Value,
    version: Option<u64>,
    after: Option<serde_json::Value>,
    before: Option<serde_json::Value>,
}

/// What a call returned, as far as the model tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    AlreadyExists,
    NotFound,
    Conflict,
    UnknownSavepoint,
    TransactionState,
}

fn outcome<T>(result: db4::Result<T>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(Error::AlreadyExists { .. }) => Outcome::AlreadyExists,
        Err(Error::NotFound { .. }) => Outcome::NotFound,
        Err(Error::Conflict { .. }) => Outcome::Conflict,
        Err(Error::UnknownSavepoint { .. }) => Outcome::UnknownSavepoint,
        Err(Error::TransactionState { .. }) => Outcome::TransactionState,
        Err(e) => panic!("unexpected error: {e:?}"),
    }
}

/// A unit of work in progress, in the model.
struct Work {
    state: State,
    changes: Vec<Expected>,
    /// Savepoints (`Some(name)`) and nested transactions' starts (`None`), with what to go
    /// back to.
    stack: Vec<(Option<u8>, State, usize)>,
    before_images: bool,
}

impl Work {
    fn new(state: &State, before_images: bool) -> Self {
        Self { state: state.clone(), changes: Vec::new(), stack: Vec::new(), before_images }
    }

    fn change(&mut self, op: ChangeOp, c: Coll, id: i64, after: Option<(i64, u64)>, before: Option<(i64, u64)>) {
        let version = match (c, op) {
            (Coll::Plain, _) => None,
            (Coll::Versioned, ChangeOp::Delete) => before.map(|(_, v)| v),
            (Coll::Versioned, _) => after.map(|(_, v)| v),
        };
        let before = before.filter(|_| self.before_images).map(|(n, _)| c.json(id, n));
        self.changes.push(Expected {
            op,
            collection: c.name(),
            id: c.id(id),
            version,
            after: after.map(|(n, _)| c.json(id, n)),
            before,
        });
    }

    fn put(&mut self, c: Coll, id: i64, n: i64, version: u64) {
        let old = self.state.insert((c, id), (n, version));
        let op = if old.is_some() { ChangeOp::Update } else { ChangeOp::Insert };
        self.change(op, c, id, Some((n, version)), old);
    }

    /// Applies a write to the model; returns what the call must return.
    fn data(&mut self, op: &DataOp) -> Outcome {
        match *op {
            DataOp::Insert(c, id, n) => {
                if self.state.contains_key(&(c, id)) {
                    return Outcome::AlreadyExists;
                }
                self.put(c, id, n, 0);
            }
            DataOp::Update(c, id, n) | DataOp::Upsert(c, id, n) => match self.state.get(&(c, id)) {
                Some(&(_, v)) => self.put(c, id, n, if c == Coll::Versioned { v + 1 } else { 0 }),
                None if matches!(op, DataOp::Update(..)) => return Outcome::NotFound,
                None => self.put(c, id, n, 0),
            },
            DataOp::StaleUpdate(id, _) => {
                return if self.state.contains_key(&(Coll::Versioned, id)) {
                    Outcome::Conflict
                } else {
                    Outcome::NotFound
                };
            }
            DataOp::Delete(c, id) => {
                if let Some(old) = self.state.remove(&(c, id)) {
                    self.change(ChangeOp::Delete, c, id, None, Some(old));
                }
            }
            DataOp::Increment(c, id, delta) => match self.state.get(&(c, id)) {
                Some(&(n, v)) => self.put(c, id, n + delta, if c == Coll::Versioned { v + 1 } else { 0 }),
                None => return Outcome::NotFound,
            },
            DataOp::InsertMany(c, ref docs) => {
                let mut ids: Vec<i64> = docs.iter().map(|d| d.0).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() < docs.len() || docs.iter().any(|d| self.state.contains_key(&(c, d.0))) {
                    return Outcome::AlreadyExists;
                }
                for &(id, n) in docs {
                    self.put(c, id, n, 0);
                }
            }
            DataOp::QueryDelete(below) => {
                let doomed: Vec<i64> = self
                    .state
                    .iter()
                    .filter(|((c, _), (n, _))| *c == Coll::Plain && *n < below)
                    .map(|((_, id), _)| *id)
                    .collect();
                for id in doomed {
                    let old = self.state.remove(&(Coll::Plain, id));
                    self.change(ChangeOp::Delete, Coll::Plain, id, None, old);
                }
            }
        }
        Outcome::Ok
    }

    /// The savepoint `name` the current nested transaction may use, or why not.
    fn find(&self, name: u8) -> Result<usize, Outcome> {
        let index = self.stack.iter().rposition(|s| s.0 == Some(name)).ok_or(Outcome::UnknownSavepoint)?;
        if self.stack[index + 1..].iter().any(|s| s.0.is_none()) {
            return Err(Outcome::TransactionState);
        }
        Ok(index)
    }

    fn back_to(&mut self, index: usize) {
        let (_, state, changes) = self.stack[index].clone();
        self.state = state;
        self.changes.truncate(changes);
    }
}

/// Runs a write against the database.
fn run_data<S: Scope>(plain: &Collection<Plain, S>, versioned: &Collection<Versioned, S>, op: &DataOp) -> Outcome {
    let current = |id: i64| versioned.get(vid(id).as_str()).unwrap().map_or(0, |d| d.version);
    match *op {
        DataOp::Insert(Coll::Plain, id, n) => outcome(plain.insert(&Plain { id, n })),
        DataOp::Insert(Coll::Versioned, id, n) => outcome(versioned.insert(&Versioned { id: vid(id), n, version: 0 })),
        DataOp::Update(Coll::Plain, id, n) => outcome(plain.update(&Plain { id, n })),
        DataOp::Update(Coll::Versioned, id, n) => {
            outcome(versioned.update(&Versioned { id: vid(id), n, version: current(id) }))
        }
        DataOp::StaleUpdate(id, n) => {
            outcome(versioned.update(&Versioned { id: vid(id), n, version: current(id) + 1 }))
        }
        DataOp::Upsert(Coll::Plain, id, n) => outcome(plain.upsert(&Plain { id, n })),
        DataOp::Upsert(Coll::Versioned, id, n) => {
            outcome(versioned.upsert(&Versioned { id: vid(id), n, version: current(id) }))
        }
        DataOp::Delete(Coll::Plain, id) => outcome(plain.delete(id)),
        DataOp::Delete(Coll::Versioned, id) => outcome(versioned.delete(vid(id).as_str())),
        DataOp::Increment(Coll::Plain, id, d) => outcome(plain.increment(id, Plain::fields().n, d)),
        DataOp::Increment(Coll::Versioned, id, d) => {
            outcome(versioned.increment(vid(id).as_str(), Versioned::fields().n, d))
        }
        DataOp::InsertMany(Coll::Plain, ref docs) => {
            outcome(plain.insert_many(&docs.iter().map(|&(id, n)| Plain { id, n }).collect::<Vec<_>>()))
        }
        DataOp::InsertMany(Coll::Versioned, ref docs) => outcome(
            versioned
                .insert_many(&docs.iter().map(|&(id, n)| Versioned { id: vid(id), n, version: 0 }).collect::<Vec<_>>()),
        ),
        DataOp::QueryDelete(below) => outcome(plain.query().filter(Plain::fields().n.lt(below)).delete()),
    }
}

/// Runs the steps inside `tx` and in the model, checking each call's outcome.
fn run_steps(tx: &Transaction<'_>, steps: &[Step], work: &mut Work) {
    let plain = tx.collection::<Plain>().unwrap();
    let versioned = tx.collection::<Versioned>().unwrap();
    for step in steps {
        match step {
            Step::Data(op) => {
                let expected = work.data(op);
                assert_eq!(run_data(&plain, &versioned, op), expected, "{op:?}");
            }
            Step::Savepoint(name) => {
                tx.savepoint(&format!("s{name}")).unwrap();
                work.stack.push((Some(*name), work.state.clone(), work.changes.len()));
            }
            Step::RollbackTo(name) => {
                let expected = work.find(*name);
                let got = outcome(tx.rollback_to(&format!("s{name}")));
                assert_eq!(got, expected.err().unwrap_or(Outcome::Ok), "rollback_to s{name}");
                if let Ok(index) = expected {
                    work.back_to(index);
                    work.stack.truncate(index + 1);
                }
            }
            Step::Release(name) => {
                let expected = work.find(*name);
                let got = outcome(tx.release(&format!("s{name}")));
                assert_eq!(got, expected.err().unwrap_or(Outcome::Ok), "release s{name}");
                if let Ok(index) = expected {
                    work.stack.truncate(index);
                }
            }
            Step::Nested(inner, fail) => {
                let index = work.stack.len();
                work.stack.push((None, work.state.clone(), work.changes.len()));
                let result = tx.transaction(|inner_tx| {
                    run_steps(inner_tx, inner, work);
                    if *fail { Err(Error::aborted("the nested transaction fails")) } else { Ok(()) }
                });
                assert_eq!(result.is_err(), *fail);
                if *fail {
                    work.back_to(index);
                }
                work.stack.truncate(index);
            }
        }
    }
}

/// The model of a whole run: the committed units of work, each with its changes and the
/// state right after it.
struct Model {
    state: State,
    committed: Vec<(Vec<Expected>, State)>,
    before_images: bool,
}

impl Model {
    fn commit(&mut self, work: Work) {
        self.state = work.state;
        if !work.changes.is_empty() {
            self.committed.push((work.changes, self.state.clone()));
        }
    }
}

/// Runs `units` on a fresh in-memory database and in the model.
fn run(units: &[Unit], before_images: bool) -> (Db, Model) {
    let db = Db::open_in_memory_with(DbOptions::default().before_images(before_images)).unwrap();
    let plain = db.collection::<Plain>().unwrap();
    let versioned = db.collection::<Versioned>().unwrap();
    let mut model = Model { state: State::new(), committed: Vec::new(), before_images };
    for unit in units {
        match unit {
            Unit::Auto(ops) => {
                for op in ops {
                    let mut work = Work::new(&model.state, before_images);
                    let expected = work.data(op);
                    assert_eq!(run_data(&plain, &versioned, op), expected, "{op:?}");
                    model.commit(work);
                }
            }
            Unit::Closure(steps, commit) => {
                let mut work = Work::new(&model.state, before_images);
                let result = db.transaction(|tx| {
                    run_steps(tx, steps, &mut work);
                    if *commit { Ok(()) } else { Err(Error::aborted("the transaction rolls back")) }
                });
                assert_eq!(result.is_ok(), *commit);
                if *commit {
                    model.commit(work);
                }
            }
            Unit::Explicit(steps, commit, by_drop) => {
                let mut work = Work::new(&model.state, before_images);
                let tx = db.begin().unwrap();
                run_steps(&tx, steps, &mut work);
                match (commit, by_drop) {
                    (true, _) => {
                        tx.commit().unwrap();
                        model.commit(work);
                    }
                    (false, true) => drop(tx),
                    (false, false) => tx.rollback().unwrap(),
                }
            }
        }
    }
    (db, model)
}

/// An event as the model predicts it. Without before-images a delete reports the version it
/// removed only when it read the row anyway (a savepoint was active): either is right, and a
/// version it does report must be the removed one.
fn observed(event: &ChangeEvent, expected: Option<&Expected>, before_images: bool) -> Expected {
    let mut version = event.version;
    if !before_images
        && event.op == ChangeOp::Delete
        && let Some(expected) = expected
        && (version.is_none() || version == expected.version)
    {
        version = expected.version;
    }
    Expected {
        op: event.op,
        collection: match event.collection.as_str() {
            "model_plain" => "model_plain",
            "model_versioned" => "model_versioned",
            other => panic!("an event of collection {other:?}"),
        },
        id: event.id.clone(),
        version,
        after: image(event.after.as_deref()),
        before: image(event.before.as_deref()),
    }
}

/// A query's delete hands its rows back in no particular order: each run of consecutive
/// deletes in one collection is compared in id order.
fn normalize(changes: &mut [Expected]) {
    let mut start = 0;
    while start < changes.len() {
        let mut end = start + 1;
        while end < changes.len()
            && changes[end].op == ChangeOp::Delete
            && changes[start].op == ChangeOp::Delete
            && changes[end].collection == changes[start].collection
        {
            end += 1;
        }
        changes[start..end].sort_by_key(|c| c.id.to_string());
        start = end;
    }
}

/// The documents of `db`, in id order.
fn documents(db: &Db) -> (Vec<Plain>, Vec<Versioned>) {
    let mut plain = db.collection::<Plain>().unwrap().query().all().unwrap();
    plain.sort_by_key(|d| d.id);
    let mut versioned = db.collection::<Versioned>().unwrap().query().all().unwrap();
    versioned.sort_by(|a, b| a.id.cmp(&b.id));
    (plain, versioned)
}

/// The documents of a model state, in id order.
fn model_documents(state: &State) -> (Vec<Plain>, Vec<Versioned>) {
    let plain = state.iter().filter(|(k, _)| k.0 == Coll::Plain).map(|(k, v)| Plain { id: k.1, n: v.0 }).collect();
    let mut versioned: Vec<Versioned> = state
        .iter()
        .filter(|(k, _)| k.0 == Coll::Versioned)
        .map(|(k, v)| Versioned { id: vid(k.1), n: v.0, version: v.1 })
        .collect();
    versioned.sort_by(|a, b| a.id.cmp(&b.id));
    (plain, versioned)
}

/// An empty database with both collections opened, for replays.
fn empty() -> Db {
    let db = Db::open_in_memory().unwrap();
    db.collection::<Plain>().unwrap();
    db.collection::<Versioned>().unwrap();
    db
}

fn check_log(db: &Db, model: &Model) {
    let events = all_events(db);
    assert_well_formed(&events, 1);
    assert_eq!(documents(db), model_documents(&model.state), "the live database agrees with the model");
    let groups = transactions(&events);
    assert_eq!(groups.len(), model.committed.len(), "one transaction per committed unit of work");
    let mut events = events.iter();
    for (lsns, (expected, _)) in groups.iter().zip(&model.committed) {
        let mut expected = expected.clone();
        let logged: Vec<&ChangeEvent> = events.by_ref().take(lsns.len()).collect();
        assert_eq!(logged.len(), expected.len(), "transaction {}: {logged:#?}\nexpected {expected:#?}", lsns[0]);
        let mut got: Vec<Expected> =
            logged.iter().zip(&expected).map(|(e, x)| observed(e, Some(x), model.before_images)).collect();
        normalize(&mut got);
        normalize(&mut expected);
        assert_eq!(got, expected, "transaction {}", lsns[0]);
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    // No regression files: a failure prints its minimal input, to be pinned as a named test.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn units() -> impl Strategy<Value = Vec<Unit>> {
    proptest::collection::vec(unit(), 1..20)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_log_is_exactly_the_committed_changes(units in units(), before_images in any::<bool>()) {
        let (db, model) = run(&units, before_images);
        check_log(&db, &model);
    }

    #[test]
    fn replaying_the_whole_log_into_an_empty_database_reproduces_it(units in units()) {
        let (db, model) = run(&units, false);
        let copy = empty();
        let report = db4::wal::replay(&db, &copy, None).unwrap();
        prop_assert!(report.is_complete(), "{:?}", report);
        prop_assert_eq!(report.last, db.last_lsn().unwrap());
        prop_assert_eq!(report.applied, db.last_lsn().unwrap().get());
        prop_assert_eq!(documents(&copy), documents(&db));
        prop_assert_eq!(documents(&copy), model_documents(&model.state));
    }

    #[test]
    fn replaying_up_to_any_lsn_reproduces_the_state_after_its_transaction(
        units in units(),
        pick in any::<prop::sample::Index>(),
    ) {
        let (db, model) = run(&units, false);
        let last = db.last_lsn().unwrap().get();
        // LSN 0 replays nothing.
        let k = if last == 0 { 0 } else { 1 + pick.index(last as usize) as u64 };
        let copy = empty();
        let report = db4::wal::replay(&db, &copy, Some(Lsn::new(k))).unwrap();
        prop_assert!(report.is_complete(), "{:?}", report);
        // The state after the transaction holding LSN k: the committed unit whose LSNs reach k.
        let mut end = 0;
        let mut expected = State::new();
        for (changes, state) in &model.committed {
            if end >= k {
                break;
            }
            end += changes.len() as u64;
            expected = state.clone();
        }
        prop_assert_eq!(report.last, Lsn::new(end));
        prop_assert_eq!(documents(&copy), model_documents(&expected));
    }
}
