//! The `tracing` spans of db4's operations, seen by a small subscriber that records every span
//! with its fields and parent.

use db4::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Metadata, Subscriber};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "span_notes")]
struct Note {
    #[id]
    id: i64,
    #[index]
    tag: String,
}

fn note(id: i64, tag: &str) -> Note {
    Note { id, tag: tag.into() }
}

/// A span as the subscriber saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: u64,
    name: &'static str,
    level: Level,
    parent: Option<u64>,
    fields: BTreeMap<&'static str, String>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Records the spans at `max` level or more severe; used on one thread at a time.
struct Recorder {
    max: Level,
    next: AtomicU64,
    spans: Mutex<Vec<Seen>>,
    entered: Mutex<Vec<u64>>,
}

impl Recorder {
    fn new(max: Level) -> Arc<Self> {
        Arc::new(Self { max, next: AtomicU64::new(1), spans: Mutex::new(Vec::new()), entered: Mutex::new(Vec::new()) })
    }

    /// Every span recorded so far, in creation order.
    fn spans(&self) -> Vec<Seen> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of `operation`, in creation order.
    fn of(&self, operation: &str) -> Vec<Seen> {
        self.spans().into_iter().filter(|s| s.field("operation") == Some(operation)).collect()
    }

    /// The only span of `operation`.
    fn one(&self, operation: &str) -> Seen {
        let mut spans = self.of(operation);
        assert_eq!(spans.len(), 1, "one {operation} span: {spans:#?}");
        spans.remove(0)
    }

    /// Forgets what was recorded.
    fn clear(&self) {
        self.spans.lock().unwrap().clear();
    }
}

struct Fields<'a>(&'a mut BTreeMap<&'static str, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

// Tests run on parallel threads, each with a recorder of its own (`with_default`). tracing
// caches, per call site and for the whole process, whether any subscriber may want it, and
// narrows a global level from the subscribers' hints: a recorder that declined a call site
// or hinted a lower level could then hide spans from another thread's recorder. So each
// recorder says "sometimes" for every call site, gives no level hint, and filters in
// `enabled` alone.
impl Subscriber for Recorder {
    fn register_callsite(&self, _metadata: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        None
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let parent = match attrs.parent() {
            Some(parent) => Some(parent.into_u64()),
            None if attrs.is_contextual() => self.entered.lock().unwrap().last().copied(),
            None => None,
        };
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let metadata = attrs.metadata();
        self.spans.lock().unwrap().push(Seen { id, name: metadata.name(), level: *metadata.level(), parent, fields });
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        if let Some(seen) = spans.iter_mut().find(|s| s.id == span.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, _event: &tracing::Event<'_>) {}

    fn enter(&self, span: &Id) {
        self.entered.lock().unwrap().push(span.into_u64());
    }

    fn exit(&self, span: &Id) {
        let mut entered = self.entered.lock().unwrap();
        if let Some(at) = entered.iter().rposition(|&id| id == span.into_u64()) {
            entered.remove(at);
        }
    }
}

/// Runs `f` with `recorder` as this thread's subscriber.
///
/// tracing computes a call site's interest from the subscribers alive when the site is first
/// hit. Another test's thread hitting a site while no recorder is alive could cache "never"
/// for it, racing the interest rebuild a new recorder triggers. So one recorder stays alive
/// for the whole process (it says "sometimes" everywhere and is never any thread's
/// subscriber), and each traced run rebuilds the cache once more, for a site cached in the
/// instant before it was alive.
fn traced<R>(recorder: &Arc<Recorder>, f: impl FnOnce() -> R) -> R {
    static ALWAYS: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    ALWAYS.get_or_init(|| tracing::Dispatch::new(Recorder::new(Level::TRACE)));
    tracing::callsite::rebuild_interest_cache();
    tracing::subscriber::with_default(Arc::clone(recorder), f)
}

/// An operation's span: level `debug`, named `db4`, with the collection, the rows and the
/// elapsed time.
fn assert_op(seen: &Seen, collection: Option<&str>, rows: Option<&str>) {
    assert_eq!((seen.name, seen.level), ("db4", Level::DEBUG), "{seen:#?}");
    assert_eq!(seen.field("collection"), collection, "{seen:#?}");
    assert_eq!(seen.field("rows"), rows, "{seen:#?}");
    let elapsed = seen.field("elapsed_us").unwrap_or_else(|| panic!("elapsed_us recorded: {seen:#?}"));
    elapsed.parse::<u64>().unwrap_or_else(|e| panic!("elapsed_us {elapsed:?} is a number: {e}"));
}

#[test]
fn collection_operations_have_spans_with_collection_rows_and_elapsed_time() -> Result<()> {
    let recorder = Recorder::new(Level::TRACE);
    traced(&recorder, || -> Result<()> {
        let db = Db::open_in_memory()?;
        let notes = db.collection::<Note>()?;
        assert_op(&recorder.one("collection"), Some("span_notes"), None);
        let prepare = recorder.one("prepare");
        assert_eq!((prepare.name, prepare.level), ("db4.step", Level::TRACE));
        assert_eq!(prepare.parent, Some(recorder.one("collection").id), "an inner step of opening");

        notes.insert(&note(1, "a"))?;
        assert_op(&recorder.one("insert"), Some("span_notes"), Some("1"));
        notes.insert_many(&[note(2, "a"), note(3, "b"), note(4, "b")])?;
        assert_op(&recorder.one("insert_many"), Some("span_notes"), Some("3"));
        notes.get(1)?;
        notes.get(99)?;
        let gets = recorder.of("get");
        assert_op(&gets[0], Some("span_notes"), Some("1"));
        assert_op(&gets[1], Some("span_notes"), Some("0"));
        notes.get_many([1, 2, 99])?;
        assert_op(&recorder.one("get_many"), Some("span_notes"), Some("2"));
        notes.update(&note(1, "c"))?;
        assert_op(&recorder.one("update"), Some("span_notes"), Some("1"));
        notes.delete(4)?;
        assert_op(&recorder.one("delete"), Some("span_notes"), Some("1"));
        assert_eq!(notes.count()?, 3);
        assert_op(&recorder.one("count"), Some("span_notes"), Some("3"));

        // A failed operation still closes its span with the elapsed time, without rows.
        assert!(notes.insert(&note(1, "dup")).is_err());
        assert_op(&recorder.of("insert")[1], Some("span_notes"), None);
        Ok(())
    })
}

#[test]
fn queries_have_spans_with_the_rows_they_returned_or_deleted() -> Result<()> {
    let recorder = Recorder::new(Level::DEBUG);
    traced(&recorder, || -> Result<()> {
        let db = Db::open_in_memory()?;
        let notes = db.collection::<Note>()?;
        notes.insert_many(&[note(1, "a"), note(2, "a"), note(3, "b")])?;
        recorder.clear();
        let tag = Note::fields().tag;

        assert_eq!(notes.query().filter(tag.eq("a")).all()?.len(), 2);
        assert_op(&recorder.one("all"), Some("span_notes"), Some("2"));
        assert!(notes.query().filter(tag.eq("b")).first()?.is_some());
        assert_op(&recorder.one("first"), Some("span_notes"), Some("1"));
        assert_eq!(recorder.of("all").len(), 1, "first() opens no span of all()");
        assert_eq!(notes.query().filter(tag.eq("a")).count()?, 2);
        assert_op(&recorder.of("count")[0], Some("span_notes"), Some("2"));
        assert_eq!(notes.query().filter(tag.eq("a")).delete()?, 2);
        assert_op(&recorder.one("delete"), Some("span_notes"), Some("2"));
        assert!(recorder.spans().iter().all(|s| s.level == Level::DEBUG), "trace steps filtered out");
        Ok(())
    })
}

#[test]
fn transactions_have_spans_and_their_operations_are_children() -> Result<()> {
    let recorder = Recorder::new(Level::DEBUG);
    traced(&recorder, || -> Result<()> {
        let db = Db::open_in_memory()?;
        db.collection::<Note>()?;
        recorder.clear();

        db.transaction(|tx| {
            let notes = tx.collection::<Note>()?;
            notes.insert(&note(1, "a"))?;
            tx.savepoint("s")?;
            notes.insert(&note(2, "a"))?;
            notes.insert(&note(3, "a"))?;
            tx.rollback_to("s")?;
            notes.update(&note(1, "b"))?;
            tx.release("s")
        })?;
        let txn = recorder.one("transaction");
        // The committed writes: one insert and one update (the savepoint took two back).
        assert_op(&txn, None, Some("2"));
        assert_op(&recorder.one("rollback_to"), None, Some("2"));
        for op in ["collection", "savepoint", "rollback_to", "update", "release"] {
            assert_eq!(recorder.one(op).parent, Some(txn.id), "{op} inside the transaction");
        }
        assert!(recorder.of("insert").iter().all(|s| s.parent == Some(txn.id)));

        recorder.clear();
        let failed: Result<()> = db.try_transaction(|tx| {
            tx.collection::<Note>()?.insert(&note(9, "a"))?;
            Err(Error::aborted("no"))
        });
        assert!(failed.is_err());
        assert_op(&recorder.one("try_transaction"), None, None);

        recorder.clear();
        let tx = db.begin()?;
        tx.collection::<Note>()?.delete(1)?;
        tx.commit()?;
        assert_op(&recorder.one("begin"), None, None);
        assert_op(&recorder.one("commit"), None, Some("1"));
        db.begin()?.rollback()?;
        assert_op(&recorder.one("rollback"), None, None);

        recorder.clear();
        db.transaction_with(&TransactionOptions::default(), |tx| tx.collection::<Note>()?.count())?;
        assert_op(&recorder.one("transaction_with"), None, Some("0"));
        assert!(recorder.of("transaction").is_empty(), "no span per attempt");

        recorder.clear();
        db.stats()?;
        assert_op(&recorder.one("stats"), None, Some("1"));
        Ok(())
    })
}

#[test]
fn a_subscriber_below_debug_sees_no_span() -> Result<()> {
    let recorder = Recorder::new(Level::INFO);
    traced(&recorder, || -> Result<()> {
        let db = Db::open_in_memory()?;
        let notes = db.collection::<Note>()?;
        notes.insert(&note(1, "a"))?;
        notes.query().all()?;
        db.transaction(|tx| tx.collection::<Note>()?.count())?;
        Ok(())
    })?;
    assert!(recorder.spans().is_empty(), "{:#?}", recorder.spans());
    Ok(())
}

#[test]
fn batch_store_operations_have_spans_named_by_the_store() -> Result<()> {
    let recorder = Recorder::new(Level::DEBUG);
    traced(&recorder, || -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = db4::BatchStore::open(&db, "span_batch", Default::default())?;
        store.put("a", "one")?;
        assert_op(&recorder.one("batch.put"), Some("span_batch"), Some("1"));
        store.put_many([("b", "two"), ("c", "three")])?;
        assert_op(&recorder.one("batch.put_many"), Some("span_batch"), Some("2"));
        assert_eq!(store.get::<String>("a")?.as_deref(), Some("one"));
        assert_op(&recorder.one("batch.get"), Some("span_batch"), None);
        assert!(store.delete("a")?);
        assert_op(&recorder.one("batch.delete_many"), Some("span_batch"), None);
        Ok(())
    })
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "span_docs")]
struct TitleOnly {
    #[id]
    id: i64,
    #[fts]
    title: String,
    body: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "span_docs")]
struct TitleAndBody {
    #[id]
    id: i64,
    #[fts]
    title: String,
    #[fts]
    body: String,
}

#[test]
fn a_rebuild_of_the_full_text_index_is_traced_and_searches_have_spans() -> Result<()> {
    let db = Db::open_in_memory()?;
    db.collection::<TitleOnly>()?.insert(&TitleOnly { id: 1, title: "t".into(), body: "b".into() })?;
    let recorder = Recorder::new(Level::TRACE);
    traced(&recorder, || -> Result<()> {
        // Same full-text fields: no rebuild.
        db.collection::<TitleOnly>()?;
        assert!(recorder.of("rebuild_fts").is_empty());
        let docs = db.collection::<TitleAndBody>()?;
        let rebuild = recorder.one("rebuild_fts");
        assert_eq!(rebuild.field("collection"), Some("span_docs"));
        assert_eq!(rebuild.level, Level::TRACE);
        recorder.clear();
        assert_eq!(docs.search("b").run()?.hits.len(), 1);
        assert_op(&recorder.one("search"), Some("span_docs"), Some("1"));
        Ok(())
    })
}
