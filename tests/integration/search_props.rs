//! Property tests of full-text search:
//!
//! - any string, however hostile (every FTS5 operator, quotes, NUL, unbalanced parentheses,
//!   10 KB inputs, arbitrary unicode), searched with any options on every tokenizer, gives
//!   results or `Error::InvalidQuery`: never a panic, never a backend error;
//! - after random inserts, updates, upserts and deletes (some in rolled-back transactions), the
//!   hits of random queries (terms, prefixes, `field:`, AND / OR / NOT, phrases) are exactly the
//!   documents an in-memory model says match.
//!
//! Cases: `DB4_PROPTEST_CASES` (default 64 per property).

use db4::prelude::*;
use db4::{Collection, Error};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn config() -> ProptestConfig {
    let cases = std::env::var("DB4_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "hostile_porter")]
struct Porter {
    #[id]
    id: i64,
    #[fts(weight = 2.0)]
    title: String,
    #[fts]
    body: String,
    #[fts]
    tags: Vec<String>,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "hostile_unicode", tokenizer = "unicode61")]
struct Unicode {
    #[id]
    id: i64,
    #[fts(weight = 2.0)]
    title: String,
    #[fts]
    body: String,
    #[fts]
    tags: Vec<String>,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "hostile_trigram", tokenizer = "trigram")]
struct Trigram {
    #[id]
    id: i64,
    #[fts(weight = 2.0)]
    title: String,
    #[fts]
    body: String,
    #[fts]
    tags: Vec<String>,
}

/// Pieces hostile input is made of.
const PIECES: &[&str] = &[
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "NEAR(",
    "and",
    "or",
    "not",
    "(",
    ")",
    "((",
    "))",
    "\"",
    "\"\"",
    "*",
    "**",
    "^",
    ":",
    "title:",
    "body:",
    "tags:",
    "nope:",
    "rank:",
    "rowid:",
    "{title body}:",
    "+",
    "-",
    ",",
    ".",
    "\0",
    "\\",
    "'",
    "''",
    "%",
    "_",
    "$",
    "é",
    "日本",
    "🦀",
    "database",
    "edge",
    "sqlite",
    "x",
    "",
    " ",
    "\t",
    "\n",
    "col",
    "*a",
    "a*b",
    "\"a b\"",
    "NEAR(a b, 2)",
    "\u{200b}",
    "\u{feff}",
    "--",
    ";",
    "DROP TABLE",
    "\u{0}\u{0}",
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(proptest::sample::select(PIECES), 0..24).prop_map(|p| p.join(" ")),
        3 => proptest::collection::vec(proptest::sample::select(PIECES), 0..24).prop_map(|p| p.concat()),
        2 => any::<String>(),
        1 => (proptest::sample::select(PIECES), 100usize..2_000).prop_map(|(p, n)| {
            let mut s = p.repeat(n);
            // Cut at 10 KiB, on a character boundary (a piece may be multibyte).
            let mut at = s.len().min(10_240);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.truncate(at);
            s
        }),
        1 => (1usize..600).prop_map(|n| "(".repeat(n) + "x" + &")".repeat(n / 2)),
    ]
}

#[derive(Debug, Clone)]
struct Options {
    highlight: bool,
    snippet: Option<usize>,
    typos: bool,
    total: bool,
    limit: Option<usize>,
}

fn options() -> impl Strategy<Value = Options> {
    (any::<bool>(), proptest::option::of(0usize..70), any::<bool>(), any::<bool>(), proptest::option::of(0usize..5))
        .prop_map(|(highlight, snippet, typos, total, limit)| Options { highlight, snippet, typos, total, limit })
}

/// Runs a search with `o`; only `Ok` and `InvalidQuery` are acceptable.
fn check<T: Document>(c: &Collection<T>, q: &str, o: &Options) -> Result<(), TestCaseError> {
    let mut s = c.search(q);
    if o.highlight {
        s = s.highlight("<", ">");
    }
    if let Some(n) = o.snippet {
        s = s.snippet(n);
    }
    if let Some(n) = o.limit {
        s = s.limit(n);
    }
    if o.total {
        s = s.with_total();
    }
    match s.typos(o.typos).run() {
        Ok(res) => {
            prop_assert!(o.snippet.is_none_or(|n| (1..=64).contains(&n)));
            if let Some(total) = res.total {
                prop_assert!(total >= res.hits.len() as u64);
            }
        }
        Err(Error::InvalidQuery { collection, reason }) => {
            prop_assert_eq!(collection, c.name());
            prop_assert!(!reason.is_empty());
        }
        Err(other) => prop_assert!(false, "query {:?} with {:?}: {:?}", q, o, other),
    }
    Ok(())
}

/// A database with the three collections, seeded.
type Hostile = (Db, Collection<Porter>, Collection<Unicode>, Collection<Trigram>);

fn hostile_db() -> db4::Result<Hostile> {
    let db = Db::open_in_memory()?;
    let p = db.collection::<Porter>()?;
    let u = db.collection::<Unicode>()?;
    let t = db.collection::<Trigram>()?;
    let texts =
        ["Edge databases", "SQLite at the edge", "NEAR and NOT are words", "日本語のテキスト 🦀", "\"quoted\" (text)"];
    for (i, text) in texts.iter().enumerate() {
        let id = i as i64;
        let tags = vec!["rust".to_owned(), (*text).to_owned()];
        p.insert(&Porter { id, title: (*text).to_owned(), body: text.repeat(3), tags: tags.clone() })?;
        u.insert(&Unicode { id, title: (*text).to_owned(), body: text.repeat(3), tags: tags.clone() })?;
        t.insert(&Trigram { id, title: (*text).to_owned(), body: text.repeat(3), tags })?;
    }
    Ok((db, p, u, t))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_query_string_gives_results_or_invalid_query(q in hostile(), o in options()) {
        thread_local! {
            static DB: Hostile = hostile_db().expect("seed the hostile-query database");
        }
        DB.with(|(_, p, u, t)| -> Result<(), TestCaseError> {
            check(p, &q, &o)?;
            check(u, &q, &o)?;
            check(t, &q, &o)
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// Search against a model

/// A small vocabulary, so that terms collide across documents.
const WORDS: &[&str] = &["alpha", "beta", "gamma", "delta", "omega", "alpine", "beach", "gamut"];

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "model_search", tokenizer = "unicode61")]
struct Doc {
    #[id]
    id: i64,
    #[fts(weight = 2.0)]
    title: String,
    #[fts]
    body: Option<String>,
    #[fts]
    tags: Vec<String>,
    n: i64,
}

impl Doc {
    /// The words of each full-text field, by field name.
    fn texts(&self) -> [(&'static str, Vec<&str>); 3] {
        [
            ("title", self.title.split(' ').filter(|w| !w.is_empty()).collect()),
            ("body", self.body.as_deref().unwrap_or("").split(' ').filter(|w| !w.is_empty()).collect()),
            ("tags", self.tags.iter().map(String::as_str).collect()),
        ]
    }
}

fn words(max: usize) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::collection::vec(proptest::sample::select(WORDS), 0..max)
}

fn doc() -> impl Strategy<Value = Doc> {
    (0i64..12, words(4), proptest::option::of(words(6)), words(3), any::<i64>()).prop_map(
        |(id, title, body, tags, n)| Doc {
            id,
            title: title.join(" "),
            body: body.map(|b| b.join(" ")),
            tags: tags.into_iter().map(str::to_owned).collect(),
            n,
        },
    )
}

#[derive(Debug, Clone)]
enum Write {
    Insert(Doc),
    Upsert(Doc),
    Update(Doc),
    Delete(i64),
    /// An increment of a field that is not full-text.
    Bump(i64),
    /// Writes in a transaction that is rolled back.
    RolledBack(Vec<Doc>),
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => doc().prop_map(Write::Insert),
        3 => doc().prop_map(Write::Upsert),
        3 => doc().prop_map(Write::Update),
        2 => (0i64..12).prop_map(Write::Delete),
        1 => (0i64..12).prop_map(Write::Bump),
        1 => proptest::collection::vec(doc(), 1..4).prop_map(Write::RolledBack),
    ]
}

/// A query of the language, with the model's meaning.
#[derive(Debug, Clone)]
enum Q {
    Term(&'static str),
    Prefix(&'static str),
    Field(&'static str, &'static str),
    Phrase(&'static str, &'static str),
    And(Box<Q>, Box<Q>),
    Or(Box<Q>, Box<Q>),
    Not(Box<Q>, Box<Q>),
}

fn query() -> impl Strategy<Value = Q> {
    let field = proptest::sample::select(&["title", "body", "tags"][..]);
    let word = proptest::sample::select(WORDS);
    let leaf = prop_oneof![
        3 => word.clone().prop_map(Q::Term),
        1 => proptest::sample::select(&["al", "be", "gam", "o"][..]).prop_map(Q::Prefix),
        1 => (field, word.clone()).prop_map(|(f, w)| Q::Field(f, w)),
        1 => (word.clone(), word).prop_map(|(a, b)| Q::Phrase(a, b)),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Q::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Q::Or(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Q::Not(Box::new(a), Box::new(b))),
        ]
    })
}

impl Q {
    /// The query in db4's language, fully parenthesized.
    fn text(&self) -> String {
        match self {
            Q::Term(w) => (*w).to_owned(),
            Q::Prefix(p) => format!("{p}*"),
            Q::Field(f, w) => format!("{f}:{w}"),
            Q::Phrase(a, b) => format!("\"{a} {b}\""),
            Q::And(a, b) => format!("({} AND {})", a.text(), b.text()),
            Q::Or(a, b) => format!("({} OR {})", a.text(), b.text()),
            Q::Not(a, b) => format!("({} NOT {})", a.text(), b.text()),
        }
    }

    fn matches(&self, doc: &Doc) -> bool {
        let fields = doc.texts();
        let any_field = |f: &dyn Fn(&[&str]) -> bool| fields.iter().any(|(_, words)| f(words));
        match self {
            Q::Term(w) => any_field(&|words| words.contains(w)),
            Q::Prefix(p) => any_field(&|words| words.iter().any(|x| x.starts_with(p))),
            Q::Field(name, w) => fields.iter().any(|(f, words)| f == name && words.contains(w)),
            Q::Phrase(a, b) => any_field(&|words| words.windows(2).any(|pair| pair == [*a, *b])),
            Q::And(a, b) => a.matches(doc) && b.matches(doc),
            Q::Or(a, b) => a.matches(doc) || b.matches(doc),
            Q::Not(a, b) => a.matches(doc) && !b.matches(doc),
        }
    }
}

fn apply(db: &Db, docs: &Collection<Doc>, model: &mut BTreeMap<i64, Doc>, w: &Write) -> db4::Result<()> {
    match w {
        Write::Insert(d) => match docs.insert(d) {
            Ok(()) => {
                model.insert(d.id, d.clone());
            }
            Err(Error::AlreadyExists { .. }) => assert!(model.contains_key(&d.id)),
            Err(e) => return Err(e),
        },
        Write::Upsert(d) => {
            docs.upsert(d)?;
            model.insert(d.id, d.clone());
        }
        Write::Update(d) => match docs.update(d) {
            Ok(_) => {
                model.insert(d.id, d.clone());
            }
            Err(Error::NotFound { .. }) => assert!(!model.contains_key(&d.id)),
            Err(e) => return Err(e),
        },
        Write::Delete(id) => {
            assert_eq!(docs.delete(*id)?, model.remove(id).is_some());
        }
        Write::Bump(id) => match docs.increment(*id, Doc::fields().n, 1) {
            Ok(_) => {
                let d = model.get_mut(id).expect("incremented a modelled document");
                d.n = d.n.wrapping_add(1);
            }
            Err(Error::NotFound { .. }) => assert!(!model.contains_key(id)),
            // An overflow is refused and changes nothing.
            Err(Error::InvalidValue { .. }) => {}
            Err(e) => return Err(e),
        },
        Write::RolledBack(batch) => {
            let out: db4::Result<()> = db.transaction(|tx| {
                let docs = tx.collection::<Doc>()?;
                for d in batch {
                    docs.upsert(d)?;
                }
                Err(Error::aborted("rolled back on purpose"))
            });
            assert!(out.is_err());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hits_are_exactly_what_the_model_matches(
        writes in proptest::collection::vec(write(), 1..30),
        queries in proptest::collection::vec(query(), 1..8),
    ) {
        let db = Db::open_in_memory().expect("open");
        let docs = db.collection::<Doc>().expect("collection");
        let mut model = BTreeMap::new();
        for w in &writes {
            apply(&db, &docs, &mut model, w).expect("write");
        }
        for q in &queries {
            let text = q.text();
            let res = docs.search(&text).with_total().run().expect("search");
            let mut got: Vec<i64> = res.hits.iter().map(|h| h.doc.id).collect();
            got.sort_unstable();
            let want: Vec<i64> = model.values().filter(|d| q.matches(d)).map(|d| d.id).collect();
            prop_assert_eq!(&got, &want, "query {}", text);
            prop_assert_eq!(res.total, Some(want.len() as u64));
            for hit in &res.hits {
                prop_assert_eq!(Some(&hit.doc), model.get(&hit.doc.id));
            }
        }
    }
}
