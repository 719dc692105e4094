//! Model-based tests of transactions: random sequences of writes, savepoints, nested
//! transactions, commits, aborts, panics and explicit transactions, checked after every step
//! against an in-memory `BTreeMap` model.
//!
//! The model keeps a stack of snapshots, one per active savepoint or nested transaction, and
//! mirrors SQL semantics: `rollback_to` restores its snapshot, keeps the savepoint and drops the
//! later ones; `release` drops the savepoint and the later ones; an unknown name is
//! [`Error::UnknownSavepoint`] and changes nothing. After every step the whole collection is
//! read inside the transaction (reads see its own writes), and after it finishes, outside.
//!
//! `DB4_PROPTEST_CASES=20000` runs more cases than the default 1,000.

use db4_derive::Document;
use db4_runtime::{
    CasResult, Collection, Db, DbOptions, Document, Error, Field, Filter, Result, RetryPolicy, Synchronous,
    Transaction, TxCollection,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A versioned document with an equality index.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "items")]
struct Item {
    #[id]
    id: String,
    #[index]
    tag: String,
    n: i64,
    #[version]
    version: u64,
}

/// An unversioned document with an integer id, so one transaction spans two collections.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "db4_runtime", collection = "notes")]
struct Note {
    #[id]
    id: i64,
    #[index]
    tag: String,
    text: String,
}

const IDS: [&str; 5] = ["a", "b", "c", "d", "e"];
const NOTE_IDS: [i64; 3] = [1, 2, 3];
const TAGS: [&str; 3] = ["blue", "green", "red"];
const NAMES: [&str; 3] = ["s0", "s1", "s2"];

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

/// One operation inside (or, for the data operations, also outside) a transaction. Indexes
/// point into `IDS`, `NOTE_IDS`, `TAGS` and `NAMES`.
#[derive(Clone, Debug)]
enum Op {
    Insert {
        id: usize,
        tag: usize,
        n: i64,
        version: u64,
    },
    /// `stale`: the document carries a version other than the stored one.
    Update {
        id: usize,
        tag: usize,
        n: i64,
        stale: bool,
    },
    Upsert {
        id: usize,
        tag: usize,
        n: i64,
        stale: bool,
        version: u64,
    },
    Delete {
        id: usize,
    },
    InsertMany {
        docs: Vec<(usize, usize, i64)>,
    },
    UpdateWith {
        id: usize,
        delta: i64,
    },
    Increment {
        id: usize,
        delta: i64,
    },
    Cas {
        id: usize,
        from: usize,
        to: usize,
    },
    DeleteWhere {
        tag: usize,
    },
    NoteInsert {
        id: usize,
        tag: usize,
    },
    NoteUpsert {
        id: usize,
        tag: usize,
    },
    NoteDelete {
        id: usize,
    },
    Savepoint {
        name: usize,
    },
    RollbackTo {
        name: usize,
    },
    Release {
        name: usize,
    },
    /// A nested transaction: its body, then how its closure ends.
    Nested {
        body: Vec<Op>,
        end: NestedEnd,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum NestedEnd {
    Ok,
    Err,
    /// Panics; the enclosing transaction's closure catches the panic and goes on.
    Panic,
}

#[derive(Clone, Copy, Debug)]
enum ClosureEnd {
    Commit,
    Abort,
    Panic,
}

#[derive(Clone, Copy, Debug)]
enum ExplicitEnd {
    Commit,
    Rollback,
    Drop,
}

#[derive(Clone, Debug)]
enum Step {
    /// A data operation straight on the database, outside any transaction.
    Direct(Op),
    /// `Db::transaction`, whose closure returns `Ok`, returns `Err` or panics.
    Closure { body: Vec<Op>, end: ClosureEnd },
    /// `Db::begin`, then commit, rollback or drop.
    Explicit { body: Vec<Op>, end: ExplicitEnd },
}

fn data_op() -> impl Strategy<Value = Op> {
    let id = 0..IDS.len();
    let tag = 0..TAGS.len();
    let note = 0..NOTE_IDS.len();
    let stale = prop::bool::weighted(0.2);
    prop_oneof![
        5 => (id.clone(), tag.clone(), -9i64..10, 0u64..3)
            .prop_map(|(id, tag, n, version)| Op::Insert { id, tag, n, version }),
        4 => (id.clone(), tag.clone(), -9i64..10, stale)
            .prop_map(|(id, tag, n, stale)| Op::Update { id, tag, n, stale }),
        3 => (id.clone(), tag.clone(), -9i64..10, stale, 0u64..3)
            .prop_map(|(id, tag, n, stale, version)| Op::Upsert { id, tag, n, stale, version }),
        3 => id.clone().prop_map(|id| Op::Delete { id }),
        2 => prop::collection::vec((id.clone(), tag.clone(), -9i64..10), 1..4).prop_map(|docs| Op::InsertMany { docs }),
        2 => (id.clone(), -3i64..4).prop_map(|(id, delta)| Op::UpdateWith { id, delta }),
        2 => (id.clone(), -3i64..4).prop_map(|(id, delta)| Op::Increment { id, delta }),
        2 => (id, tag.clone(), tag.clone()).prop_map(|(id, from, to)| Op::Cas { id, from, to }),
        1 => tag.clone().prop_map(|tag| Op::DeleteWhere { tag }),
        1 => (note.clone(), tag.clone()).prop_map(|(id, tag)| Op::NoteInsert { id, tag }),
        1 => (note.clone(), tag).prop_map(|(id, tag)| Op::NoteUpsert { id, tag }),
        1 => note.prop_map(|id| Op::NoteDelete { id }),
    ]
}

/// An operation inside a transaction, with nested transactions up to `depth` levels deep.
fn tx_op(depth: u32) -> BoxedStrategy<Op> {
    let name = 0..NAMES.len();
    let flat = prop_oneof![
        12 => data_op(),
        3 => name.clone().prop_map(|name| Op::Savepoint { name }),
        3 => name.clone().prop_map(|name| Op::RollbackTo { name }),
        2 => name.prop_map(|name| Op::Release { name }),
    ];
    if depth == 0 {
        return flat.boxed();
    }
    prop_oneof![
        8 => flat,
        1 => (prop::collection::vec(tx_op(depth - 1), 0..8), nested_end())
            .prop_map(|(body, end)| Op::Nested { body, end }),
    ]
    .boxed()
}

fn nested_end() -> impl Strategy<Value = NestedEnd> {
    prop_oneof![3 => Just(NestedEnd::Ok), 2 => Just(NestedEnd::Err), 1 => Just(NestedEnd::Panic)]
}

fn body() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(tx_op(2), 0..16)
}

fn step() -> impl Strategy<Value = Step> {
    let closure_end =
        prop_oneof![3 => Just(ClosureEnd::Commit), 1 => Just(ClosureEnd::Abort), 1 => Just(ClosureEnd::Panic)];
    let explicit_end =
        prop_oneof![3 => Just(ExplicitEnd::Commit), 1 => Just(ExplicitEnd::Rollback), 1 => Just(ExplicitEnd::Drop)];
    prop_oneof![
        2 => data_op().prop_map(Step::Direct),
        4 => (body(), closure_end).prop_map(|(body, end)| Step::Closure { body, end }),
        3 => (body(), explicit_end).prop_map(|(body, end)| Step::Explicit { body, end }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..10)
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq)]
struct State {
    items: BTreeMap<String, Item>,
    notes: BTreeMap<i64, Note>,
}

/// A savepoint (`name: Some`) or a nested transaction (`name: None`).
struct Frame {
    id: u64,
    name: Option<&'static str>,
    snapshot: State,
}

struct Model {
    state: State,
    frames: Vec<Frame>,
    next_frame: u64,
}

impl Model {
    fn new() -> Self {
        Self { state: State::default(), frames: Vec::new(), next_frame: 0 }
    }

    fn push(&mut self, name: Option<&'static str>) -> u64 {
        let id = self.next_frame;
        self.next_frame += 1;
        self.frames.push(Frame { id, name, snapshot: self.state.clone() });
        id
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.frames.iter().rposition(|f| f.name == Some(name))
    }

    /// Whether savepoint `i` belongs to a transaction enclosing a nested one still running:
    /// rolling back to it or releasing it from there is refused.
    fn enclosing(&self, i: usize) -> bool {
        self.frames[i + 1..].iter().any(|f| f.name.is_none())
    }
}

fn item(id: usize, tag: usize, n: i64, version: u64) -> Item {
    Item { id: IDS[id].into(), tag: TAGS[tag].into(), n, version }
}

fn note(id: usize, tag: usize) -> Note {
    let id = NOTE_IDS[id];
    Note { id, tag: TAGS[tag].into(), text: format!("note {id} {}", TAGS[tag]) }
}

/// The error a closure returns to abort its transaction.
fn abort() -> Error {
    Error::NotFound { collection: "model".into(), id: "abort".into() }
}

/// The error a nested transaction's closure returns to fail.
fn nested_abort() -> Error {
    Error::NotFound { collection: "model".into(), id: "nested-abort".into() }
}

fn is_error(r: &Error, expected: &Error) -> bool {
    match (r, expected) {
        (Error::NotFound { collection: a, id: b }, Error::NotFound { collection: c, id: d })
        | (Error::AlreadyExists { collection: a, id: b }, Error::AlreadyExists { collection: c, id: d }) => {
            a == c && b == d
        }
        (
            Error::Conflict { collection: a, id: b, expected: e1, actual: a1 },
            Error::Conflict { collection: c, id: d, expected: e2, actual: a2 },
        ) => a == c && b == d && e1 == e2 && a1 == a2,
        (Error::UnknownSavepoint { name: a }, Error::UnknownSavepoint { name: b }) => a == b,
        (Error::TransactionState { .. }, Error::TransactionState { .. }) => true,
        _ => false,
    }
}

/// Asserts that `got` is `Ok(expected)` or the expected error.
#[track_caller]
fn expect<T: PartialEq + std::fmt::Debug>(
    got: Result<T>,
    expected: std::result::Result<T, Error>,
    op: &dyn std::fmt::Debug,
) {
    match (&got, &expected) {
        (Ok(g), Ok(e)) if g == e => {}
        (Err(g), Err(e)) if is_error(g, e) => {}
        _ => panic!("{op:?}: got {got:?}, the model expects {expected:?}"),
    }
}

fn not_found(collection: &str, id: impl ToString) -> Error {
    Error::NotFound { collection: collection.into(), id: id.to_string() }
}

fn already_exists(collection: &str, id: impl ToString) -> Error {
    Error::AlreadyExists { collection: collection.into(), id: id.to_string() }
}

// ---------------------------------------------------------------------------------------------
// Driving a collection, inside or outside a transaction
// ---------------------------------------------------------------------------------------------

/// The collection operations the model drives, on a [`Collection`] and a [`TxCollection`] alike.
trait Store<D: Document> {
    fn insert(&self, doc: &D) -> Result<()>;
    fn insert_many(&self, docs: &[D]) -> Result<()>;
    fn update(&self, doc: &D) -> Result<()>;
    fn upsert(&self, doc: &D) -> Result<()>;
    fn delete(&self, id: D::Id) -> Result<bool>;
    fn get_many(&self, ids: Vec<D::Id>) -> Result<Vec<Option<D>>>;
    fn all(&self) -> Result<Vec<D>>;
    fn count(&self) -> Result<u64>;
    fn find(&self, filter: Filter<D>) -> Result<Vec<D>>;
    fn count_where(&self, filter: Filter<D>) -> Result<u64>;
    fn delete_where(&self, filter: Filter<D>) -> Result<u64>;
    fn update_with(&self, id: D::Id, f: &mut dyn FnMut(&mut D)) -> Result<D>;
    fn increment(&self, id: D::Id, field: Field<D, i64>, delta: i64) -> Result<i64>;
    fn cas(&self, id: D::Id, field: Field<D, String>, from: &str, to: &str) -> Result<CasResult<String>>;
}

macro_rules! impl_store {
    ($($ty:ty),*) => {$(
        impl<D: Document> Store<D> for $ty {
            fn insert(&self, doc: &D) -> Result<()> {
                <$ty>::insert(self, doc)
            }
            fn insert_many(&self, docs: &[D]) -> Result<()> {
                <$ty>::insert_many(self, docs)
            }
            fn update(&self, doc: &D) -> Result<()> {
                <$ty>::update(self, doc).map(drop)
            }
            fn upsert(&self, doc: &D) -> Result<()> {
                <$ty>::upsert(self, doc)
            }
            fn delete(&self, id: D::Id) -> Result<bool> {
                <$ty>::delete(self, id)
            }
            fn get_many(&self, ids: Vec<D::Id>) -> Result<Vec<Option<D>>> {
                <$ty>::get_many(self, ids)
            }
            fn all(&self) -> Result<Vec<D>> {
                self.query().all()
            }
            fn count(&self) -> Result<u64> {
                <$ty>::count(self)
            }
            fn find(&self, filter: Filter<D>) -> Result<Vec<D>> {
                self.query().filter(filter).all()
            }
            fn count_where(&self, filter: Filter<D>) -> Result<u64> {
                self.query().filter(filter).count()
            }
            fn delete_where(&self, filter: Filter<D>) -> Result<u64> {
                self.query().filter(filter).delete()
            }
            fn update_with(&self, id: D::Id, f: &mut dyn FnMut(&mut D)) -> Result<D> {
                <$ty>::update_with(self, id, RetryPolicy::none(), f)
            }
            fn increment(&self, id: D::Id, field: Field<D, i64>, delta: i64) -> Result<i64> {
                <$ty>::increment(self, id, field, delta)
            }
            fn cas(&self, id: D::Id, field: Field<D, String>, from: &str, to: &str) -> Result<CasResult<String>> {
                <$ty>::compare_and_swap(self, id, field, from.to_owned(), to.to_owned())
            }
        }
    )*};
}

impl_store!(Collection<D>, TxCollection<'_, D>);

/// Compares everything readable through `items` and `notes` with `state`.
#[track_caller]
fn check(items: &impl Store<Item>, notes: &impl Store<Note>, state: &State, at: &dyn std::fmt::Debug) {
    let f = Item::fields();
    let mut all = items.all().expect("read all items");
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let expected: Vec<&Item> = state.items.values().collect();
    assert_eq!(all.iter().collect::<Vec<_>>(), expected, "all items after {at:?}");
    assert_eq!(items.count().expect("count"), state.items.len() as u64, "count after {at:?}");
    let got = items.get_many(IDS.iter().map(|&id| id.to_owned()).collect()).expect("get_many");
    let expected: Vec<Option<&Item>> = IDS.iter().map(|&id| state.items.get(id)).collect();
    assert_eq!(got.iter().map(Option::as_ref).collect::<Vec<_>>(), expected, "get_many after {at:?}");
    // Index columns: equality on each tag, and a range over the tag column.
    for tag in TAGS {
        let mut ids: Vec<String> = items.find(f.tag.eq(tag)).expect("query by tag").into_iter().map(|i| i.id).collect();
        ids.sort();
        let expected: Vec<String> = state.items.values().filter(|i| i.tag == tag).map(|i| i.id.clone()).collect();
        assert_eq!(ids, expected, "items tagged {tag} after {at:?}");
    }
    let above = state.items.values().filter(|i| i.tag.as_str() > "blue").count() as u64;
    assert_eq!(items.count_where(f.tag.gt("blue")).expect("count by tag"), above, "tag > blue after {at:?}");
    let mut notes_now = notes.all().expect("read all notes");
    notes_now.sort_by_key(|n| n.id);
    assert_eq!(notes_now.iter().collect::<Vec<_>>(), state.notes.values().collect::<Vec<_>>(), "notes after {at:?}");
    let red = state.notes.values().filter(|n| n.tag == "red").count() as u64;
    assert_eq!(notes.count_where(Note::fields().tag.eq("red")).expect("count notes"), red, "red notes after {at:?}");
}

/// Runs one data operation and updates the model the way the operation must change the data.
fn apply(items: &impl Store<Item>, notes: &impl Store<Note>, op: &Op, state: &mut State) {
    let f = Item::fields();
    match *op {
        Op::Insert { id, tag, n, version } => {
            let doc = item(id, tag, n, version);
            if state.items.contains_key(IDS[id]) {
                expect(items.insert(&doc), Err(already_exists("items", IDS[id])), op);
            } else {
                expect(items.insert(&doc), Ok(()), op);
                state.items.insert(doc.id.clone(), doc);
            }
        }
        Op::Update { id, tag, n, stale } | Op::Upsert { id, tag, n, stale, .. }
            if state.items.contains_key(IDS[id]) =>
        {
            let stored = state.items[IDS[id]].version;
            let carried = if stale { stored + 1 } else { stored };
            let doc = item(id, tag, n, carried);
            let got = if matches!(op, Op::Update { .. }) { items.update(&doc) } else { items.upsert(&doc) };
            if stale {
                let conflict = Error::Conflict {
                    collection: "items".into(),
                    id: IDS[id].into(),
                    expected: carried,
                    actual: stored,
                };
                expect(got, Err(conflict), op);
            } else {
                expect(got, Ok(()), op);
                state.items.insert(doc.id.clone(), Item { version: stored + 1, ..doc });
            }
        }
        Op::Update { id, tag, n, .. } => {
            expect(items.update(&item(id, tag, n, 0)), Err(not_found("items", IDS[id])), op);
        }
        Op::Upsert { id, tag, n, version, .. } => {
            let doc = item(id, tag, n, version);
            expect(items.upsert(&doc), Ok(()), op);
            state.items.insert(doc.id.clone(), doc);
        }
        Op::Delete { id } => {
            let existed = state.items.remove(IDS[id]).is_some();
            expect(items.delete(IDS[id].to_owned()), Ok(existed), op);
        }
        Op::InsertMany { ref docs } => {
            let docs: Vec<Item> = docs.iter().map(|&(id, tag, n)| item(id, tag, n, 0)).collect();
            let mut seen: BTreeSet<&str> = state.items.keys().map(String::as_str).collect();
            let duplicate = docs.iter().find(|d| !seen.insert(&d.id));
            match duplicate {
                Some(d) => expect(items.insert_many(&docs), Err(already_exists("items", &d.id)), op),
                None => {
                    expect(items.insert_many(&docs), Ok(()), op);
                    state.items.extend(docs.into_iter().map(|d| (d.id.clone(), d)));
                }
            }
        }
        Op::UpdateWith { id, delta } => match state.items.get_mut(IDS[id]) {
            None => {
                expect(items.update_with(IDS[id].into(), &mut |d| d.n += delta), Err(not_found("items", IDS[id])), op)
            }
            Some(stored) => {
                stored.n += delta;
                stored.version += 1;
                expect(items.update_with(IDS[id].into(), &mut |d| d.n += delta), Ok(stored.clone()), op);
            }
        },
        Op::Increment { id, delta } => match state.items.get_mut(IDS[id]) {
            None => expect(items.increment(IDS[id].into(), f.n, delta), Err(not_found("items", IDS[id])), op),
            Some(stored) => {
                stored.n += delta;
                stored.version += 1;
                expect(items.increment(IDS[id].into(), f.n, delta), Ok(stored.n), op);
            }
        },
        Op::Cas { id, from, to } => match state.items.get_mut(IDS[id]) {
            None => {
                expect(items.cas(IDS[id].into(), f.tag, TAGS[from], TAGS[to]), Err(not_found("items", IDS[id])), op)
            }
            Some(stored) => {
                let swapped = stored.tag == TAGS[from];
                if swapped {
                    stored.tag = TAGS[to].into();
                    stored.version += 1;
                }
                let expected = CasResult { swapped, current: stored.tag.clone() };
                expect(items.cas(IDS[id].into(), f.tag, TAGS[from], TAGS[to]), Ok(expected), op);
            }
        },
        Op::DeleteWhere { tag } => {
            let before = state.items.len();
            state.items.retain(|_, i| i.tag != TAGS[tag]);
            expect(items.delete_where(f.tag.eq(TAGS[tag])), Ok((before - state.items.len()) as u64), op);
        }
        Op::NoteInsert { id, tag } => {
            let doc = note(id, tag);
            match state.notes.entry(doc.id) {
                Entry::Occupied(_) => expect(notes.insert(&doc), Err(already_exists("notes", doc.id)), op),
                Entry::Vacant(slot) => {
                    expect(notes.insert(&doc), Ok(()), op);
                    slot.insert(doc);
                }
            }
        }
        Op::NoteUpsert { id, tag } => {
            let doc = note(id, tag);
            expect(notes.upsert(&doc), Ok(()), op);
            state.notes.insert(doc.id, doc);
        }
        Op::NoteDelete { id } => {
            let existed = state.notes.remove(&NOTE_IDS[id]).is_some();
            expect(notes.delete(NOTE_IDS[id]), Ok(existed), op);
        }
        Op::Savepoint { .. } | Op::RollbackTo { .. } | Op::Release { .. } | Op::Nested { .. } => {
            unreachable!("not a data operation: {op:?}")
        }
    }
}

/// Runs `body` inside `tx`, checking the data read through `tx` after every operation.
fn run_body(tx: &Transaction<'_>, body: &[Op], model: &mut Model) {
    for op in body {
        match *op {
            Op::Savepoint { name } => {
                expect(tx.savepoint(NAMES[name]), Ok(()), op);
                model.push(Some(NAMES[name]));
            }
            Op::RollbackTo { name } => match model.find(NAMES[name]) {
                None => expect(tx.rollback_to(NAMES[name]), Err(unknown(NAMES[name])), op),
                Some(i) if model.enclosing(i) => expect(tx.rollback_to(NAMES[name]), Err(refused()), op),
                Some(i) => {
                    expect(tx.rollback_to(NAMES[name]), Ok(()), op);
                    model.state = model.frames[i].snapshot.clone();
                    model.frames.truncate(i + 1);
                }
            },
            Op::Release { name } => match model.find(NAMES[name]) {
                None => expect(tx.release(NAMES[name]), Err(unknown(NAMES[name])), op),
                Some(i) if model.enclosing(i) => expect(tx.release(NAMES[name]), Err(refused()), op),
                Some(i) => {
                    expect(tx.release(NAMES[name]), Ok(()), op);
                    model.frames.truncate(i);
                }
            },
            Op::Nested { ref body, end } => {
                let frame = model.push(None);
                let caught = catch_unwind(AssertUnwindSafe(|| {
                    tx.transaction(|inner| {
                        run_body(inner, body, model);
                        match end {
                            NestedEnd::Ok => Ok(()),
                            NestedEnd::Err => Err(nested_abort()),
                            NestedEnd::Panic => std::panic::panic_any(IntendedPanic),
                        }
                    })
                }));
                let got = match caught {
                    Ok(got) => Some(got),
                    Err(payload) if payload.is::<IntendedPanic>() && end == NestedEnd::Panic => None,
                    Err(payload) => resume_unwind(payload),
                };
                // A failure (error or panic) undoes the nested part; a success keeps it.
                let expected = match model.frames.iter().position(|f| f.id == frame) {
                    Some(i) => {
                        let frame = model.frames.drain(i..).next().expect("the nested frame");
                        if end == NestedEnd::Ok {
                            Ok(())
                        } else {
                            model.state = frame.snapshot;
                            Err(nested_abort())
                        }
                    }
                    // The body cannot reach a savepoint from before it (that is refused).
                    None => panic!("{op:?}: the nested transaction's frame is gone"),
                };
                match got {
                    Some(got) => expect(got, expected, op),
                    None => assert_eq!(end, NestedEnd::Panic, "{op:?}: panicked"),
                }
            }
            _ => {
                let items = tx.collection::<Item>().expect("items in the transaction");
                let notes = tx.collection::<Note>().expect("notes in the transaction");
                apply(&items, &notes, op, &mut model.state);
            }
        }
        let items = tx.collection::<Item>().expect("items in the transaction");
        let notes = tx.collection::<Note>().expect("notes in the transaction");
        check(&items, &notes, &model.state, op);
    }
}

fn unknown(name: &str) -> Error {
    Error::UnknownSavepoint { name: name.into() }
}

/// A savepoint of an enclosing transaction, reached from inside a nested one.
fn refused() -> Error {
    Error::TransactionState { reason: String::new() }
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

/// Runs `steps` on `db` and checks it against the model after every one.
fn run_steps(db: &Db, steps: &[Step]) {
    let items = db.collection::<Item>().expect("items");
    let notes = db.collection::<Note>().expect("notes");
    let mut model = Model::new();
    for step in steps {
        match step {
            Step::Direct(op) => apply(&items, &notes, op, &mut model.state),
            Step::Closure { body, end } => {
                let before = model.state.clone();
                let got = catch_unwind(AssertUnwindSafe(|| {
                    db.transaction(|tx| {
                        run_body(tx, body, &mut model);
                        match end {
                            ClosureEnd::Commit => Ok(()),
                            ClosureEnd::Abort => Err(abort()),
                            ClosureEnd::Panic => std::panic::panic_any(IntendedPanic),
                        }
                    })
                }));
                match (end, got) {
                    (_, Err(payload)) if !payload.is::<IntendedPanic>() => resume_unwind(payload),
                    (ClosureEnd::Commit, Ok(got)) => expect(got, Ok(()), step),
                    (ClosureEnd::Abort, Ok(got)) => {
                        expect(got, Err(abort()), step);
                        model.state = before;
                    }
                    (ClosureEnd::Panic, Err(_)) => model.state = before,
                    (end, got) => panic!("transaction ending with {end:?} returned {got:?}"),
                }
            }
            Step::Explicit { body, end } => {
                let before = model.state.clone();
                let tx = db.begin().expect("begin");
                run_body(&tx, body, &mut model);
                match end {
                    ExplicitEnd::Commit => tx.commit().expect("commit"),
                    ExplicitEnd::Rollback => {
                        tx.rollback().expect("rollback");
                        model.state = before;
                    }
                    ExplicitEnd::Drop => {
                        drop(tx);
                        model.state = before;
                    }
                }
            }
        }
        model.frames.clear();
        check(&items, &notes, &model.state, step);
    }
}

/// How many cases to run: `DB4_PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn config(cases: u32) -> ProptestConfig {
    // No regression files: a failure prints its minimal input, to be pinned as a named test.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A fresh file database under the temp dir, removed when dropped.
struct TempDb {
    db: Option<Db>,
    dir: std::path::PathBuf,
}

impl TempDb {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("db4-tx-model-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the temp dir");
        let options = DbOptions::default().synchronous(Synchronous::Normal);
        let db = Db::open_with(dir.join("model.db"), options).expect("open the file database");
        Self { db: Some(db), dir }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

proptest! {
    #![proptest_config(config(cases(1000)))]

    #[test]
    fn transactions_match_the_model(steps in steps()) {
        quiet_intended_panics();
        let db = Db::open_in_memory().expect("open");
        run_steps(&db, &steps);
    }
}

proptest! {
    #![proptest_config(config(cases(1000) / 10))]

    /// The same on a file database, where reads outside a transaction go through the reader
    /// connections.
    #[test]
    fn transactions_match_the_model_on_a_file(steps in steps()) {
        quiet_intended_panics();
        let temp = TempDb::new();
        run_steps(temp.db.as_ref().expect("open"), &steps);
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal cases the model found (all fixed in 0d32932), pinned as regression tests
// ---------------------------------------------------------------------------------------------

/// Stores `a` (blue, n = 1) and returns the database.
fn with_a() -> Result<(Db, Collection<Item>, Item)> {
    let db = Db::open_in_memory()?;
    let items = db.collection::<Item>()?;
    let a = item(0, 0, 1, 0);
    items.insert(&a)?;
    Ok((db, items, a))
}

#[test]
fn failed_duplicate_insert_under_a_savepoint_keeps_the_stored_document() -> Result<()> {
    let (db, items, a) = with_a()?;
    db.transaction(|tx| {
        let t = tx.collection::<Item>()?;
        tx.savepoint("s")?;
        assert!(matches!(t.insert(&item(0, 1, 2, 0)), Err(Error::AlreadyExists { .. })));
        tx.rollback_to("s")?;
        assert_eq!(t.get("a")?, Some(a.clone()), "rollback_to deleted the document the insert failed on");
        Ok(())
    })?;
    assert_eq!(items.get("a")?, Some(a));
    Ok(())
}

#[test]
fn failed_insert_many_in_a_transaction_keeps_the_stored_document() -> Result<()> {
    let (db, items, a) = with_a()?;
    db.transaction(|tx| {
        let t = tx.collection::<Item>()?;
        let got = t.insert_many(&[item(1, 0, 0, 0), item(0, 2, 5, 0)]);
        assert!(matches!(got, Err(Error::AlreadyExists { .. })), "{got:?}");
        assert_eq!(t.get("b")?, None);
        assert_eq!(t.get("a")?, Some(a.clone()), "the failed insert_many deleted the stored document");
        Ok(())
    })?;
    assert_eq!(items.get("a")?, Some(a));
    Ok(())
}

#[test]
fn failed_duplicate_insert_in_a_nested_transaction_keeps_the_stored_document() -> Result<()> {
    let (db, items, a) = with_a()?;
    db.transaction(|tx| {
        let got = tx.transaction(|inner| inner.collection::<Item>()?.insert(&item(0, 1, 2, 0)));
        assert!(matches!(got, Err(Error::AlreadyExists { .. })), "{got:?}");
        Ok(())
    })?;
    assert_eq!(items.get("a")?, Some(a), "the nested transaction's undo deleted the stored document");
    Ok(())
}

#[test]
fn failed_duplicate_insert_without_a_savepoint_changes_nothing() -> Result<()> {
    let (db, items, a) = with_a()?;
    db.transaction(|tx| {
        let t = tx.collection::<Item>()?;
        assert!(matches!(t.insert(&item(0, 1, 2, 0)), Err(Error::AlreadyExists { .. })));
        assert_eq!(t.get("a")?, Some(a.clone()));
        Ok(())
    })?;
    assert_eq!(items.get("a")?, Some(a));
    Ok(())
}

#[test]
fn panic_in_a_nested_transaction_undoes_only_the_inner_writes() -> Result<()> {
    quiet_intended_panics();
    let (db, items, a) = with_a()?;
    db.transaction(|tx| {
        let t = tx.collection::<Item>()?;
        t.insert(&item(1, 0, 0, 0))?;
        let caught = catch_unwind(AssertUnwindSafe(|| {
            tx.transaction(|inner| -> Result<()> {
                let i = inner.collection::<Item>()?;
                i.insert(&item(2, 0, 0, 0))?;
                i.delete("a")?;
                std::panic::panic_any(IntendedPanic)
            })
        }));
        assert!(caught.is_err());
        // As when the inner closure returns Err: only its own writes are undone.
        assert_eq!(t.get("a")?, Some(a.clone()), "the panicked nested transaction's delete survived");
        assert_eq!(t.get("c")?, None, "the panicked nested transaction's insert survived");
        assert!(t.get("b")?.is_some());
        Ok(())
    })?;
    assert_eq!(items.count()?, 2);
    Ok(())
}

#[test]
fn rollback_to_restores_versions_and_index_columns() -> Result<()> {
    let (db, items, a) = with_a()?;
    let f = Item::fields();
    db.transaction(|tx| {
        let t = tx.collection::<Item>()?;
        tx.savepoint("s")?;
        t.compare_and_swap("a", f.tag, "blue", "red")?;
        t.increment("a", f.n, 5)?;
        t.update(&Item { n: 100, ..t.get("a")?.expect("a") })?;
        assert_eq!(t.get("a")?.map(|a| (a.tag, a.n, a.version)), Some(("red".into(), 100, 3)));
        assert_eq!(t.query().filter(f.tag.eq("red")).count()?, 1);
        tx.rollback_to("s")?;
        assert_eq!(t.get("a")?, Some(a.clone()));
        assert_eq!(t.query().filter(f.tag.eq("red")).count()?, 0);
        assert_eq!(t.query().filter(f.tag.eq("blue")).all()?, std::slice::from_ref(&a));
        // The restored version is the one an update must carry.
        t.update(&a)?;
        Ok(())
    })?;
    assert_eq!(items.get("a")?.map(|a| a.version), Some(1));
    Ok(())
}
