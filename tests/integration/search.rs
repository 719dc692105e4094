//! Full-text search: ranking with the declared weights, highlights and snippets, the index
//! following every write path (and rollbacks), filters and paging, tokenizers, schema
//! evolution, stale handles, the standalone `FullTextIndex` and typo tolerance.

use db4::fts::FullTextIndex;
use db4::prelude::*;
use db4::{Error, Tokenizer};
use db4_tests::TempDir;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
struct Article {
    #[id]
    id: String,
    #[fts(weight = 2.0)]
    title: String,
    #[fts]
    body: String,
    #[fts(weight = 1.5)]
    tags: Vec<String>,
    #[fts]
    summary: Option<String>,
    #[index]
    published: bool,
    views: i64,
}

fn article(id: &str, title: &str, body: &str) -> Article {
    Article {
        id: id.to_owned(),
        title: title.to_owned(),
        body: body.to_owned(),
        tags: Vec::new(),
        summary: None,
        published: true,
        views: 0,
    }
}

fn ids(res: &db4::fts::SearchResults<Article>) -> Vec<&str> {
    res.hits.iter().map(|h| h.doc.id.as_str()).collect()
}

fn setup() -> db4::Result<(Db, Collection<Article>)> {
    let db = Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    Ok((db, articles))
}

#[test]
fn a_title_match_outranks_the_same_match_in_the_body() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    articles.insert(&article("in-body", "Gardening notes", "a database of plants"))?;
    articles.insert(&article("in-title", "A database of plants", "gardening notes"))?;
    articles.insert(&article("none", "Cooking", "recipes"))?;
    let res = articles.search("database").run()?;
    assert_eq!(ids(&res), ["in-title", "in-body"]);
    assert!(res.hits[0].score > res.hits[1].score && res.hits[1].score > 0.0, "{res:?}");
    assert!(res.hits.iter().all(|h| h.highlights.is_empty() && h.snippet.is_none()));
    assert_eq!(res.total, None);
    Ok(())
}

/// The same collection read through a type that weighs the body above the title.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
struct BodyFirst {
    #[id]
    id: String,
    #[fts(weight = 1.0)]
    title: String,
    #[fts(weight = 5.0)]
    body: String,
    #[fts(weight = 1.5)]
    tags: Vec<String>,
    #[fts]
    summary: Option<String>,
    #[index]
    published: bool,
    views: i64,
}

#[test]
fn changing_the_weights_changes_the_order() -> db4::Result<()> {
    let dir = TempDir::new("fts-weights");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path)?;
        let articles = db.collection::<Article>()?;
        articles.insert(&article("in-body", "Gardening notes", "a database of plants"))?;
        articles.insert(&article("in-title", "A database of plants", "gardening notes"))?;
        assert_eq!(ids(&articles.search("database").run()?), ["in-title", "in-body"]);
    }
    let db = Db::open(&path)?;
    let reweighted = db.collection::<BodyFirst>()?;
    let order: Vec<String> = reweighted.search("database").run()?.hits.into_iter().map(|h| h.doc.id).collect();
    assert_eq!(order, ["in-body", "in-title"]);
    Ok(())
}

#[test]
fn highlights_and_snippets() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    let long_body = format!("{} the edge database sits close to users {}", "filler ".repeat(40), "tail ".repeat(40));
    let mut a = article("a1", "Edge databases", &long_body);
    a.tags = vec!["rust".into(), "edge".into()];
    articles.insert(&a)?;
    let res = articles.search("edge").highlight("<em>", "</em>").snippet(8).ellipsis("...").run()?;
    let hit = &res.hits[0];
    assert_eq!(hit.doc, a);
    assert_eq!(hit.highlights.len(), 3, "{:?}", hit.highlights);
    assert_eq!(hit.highlights[0], ("title", "<em>Edge</em> databases".to_owned()));
    assert_eq!(hit.highlights[2], ("tags", "rust <em>edge</em>".to_owned()));
    assert!(hit.highlights[1].1.contains("the <em>edge</em> database sits"), "{:?}", hit.highlights[1]);
    let snippet = hit.snippet.as_deref().unwrap_or_default();
    assert!(snippet.contains("<em>") && snippet.contains("</em>"), "{snippet}");
    assert!(snippet.split_whitespace().count() <= 10, "{snippet}");

    // Without highlight markers, a snippet has none; with empty markers, every text field
    // with text is returned as is.
    let plain = articles.search("edge").snippet(4).run()?;
    assert!(!plain.hits[0].snippet.as_deref().unwrap_or("<").contains('<'));
    assert!(plain.hits[0].highlights.is_empty());
    let unmarked = articles.search("edge").highlight("", "").run()?;
    assert_eq!(unmarked.hits[0].highlights.len(), 3);
    assert_eq!(unmarked.hits[0].highlights[0], ("title", "Edge databases".to_owned()));
    Ok(())
}

#[test]
fn vec_and_option_fields_are_indexed_as_text() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    let mut a = article("a1", "One", "two");
    a.tags = vec!["kubernetes".into(), "wasm".into()];
    a.summary = Some("a short summary".into());
    articles.insert(&a)?;
    articles.insert(&article("a2", "Three", "four"))?;
    assert_eq!(ids(&articles.search("wasm").run()?), ["a1"]);
    assert_eq!(ids(&articles.search("summary").run()?), ["a1"]);
    a.summary = None;
    a.tags.clear();
    articles.update(&a)?;
    assert!(articles.search("wasm").run()?.hits.is_empty());
    assert!(articles.search("summary").run()?.hits.is_empty());
    Ok(())
}

#[test]
fn the_index_follows_every_write_path() -> db4::Result<()> {
    let (db, articles) = setup()?;
    let count = |q: &str| -> db4::Result<usize> { Ok(articles.search(q).run()?.hits.len()) };
    articles.insert_many(&[article("a", "alpha", "x"), article("b", "beta", "x"), article("c", "gamma", "x")])?;
    assert_eq!(count("alpha")?, 1);
    // update
    let mut a = articles.get("a")?.expect("a exists");
    a.title = "delta".into();
    articles.update(&a)?;
    assert_eq!((count("alpha")?, count("delta")?), (0, 1));
    // upsert of a new document and of an existing one
    articles.upsert(&article("d", "epsilon", "x"))?;
    articles.upsert(&article("b", "zeta", "x"))?;
    assert_eq!((count("epsilon")?, count("beta")?, count("zeta")?), (1, 0, 1));
    // an update of a field that is not full-text keeps the index
    articles.increment("c", Article::fields().views, 5)?;
    assert_eq!(count("gamma")?, 1);
    articles.update_with("c", db4::RetryPolicy::default(), |c| c.body = "rewritten".into())?;
    assert_eq!((count("gamma")?, count("rewritten")?), (1, 1));
    // delete and query delete
    assert!(articles.delete("d")?);
    assert_eq!(count("epsilon")?, 0);
    articles.query().filter(Article::fields().id.eq("b".to_owned())).delete()?;
    assert_eq!(count("zeta")?, 0);
    // Left: "a" (delta, x) and "c" (gamma, rewritten).
    assert_eq!((count("x")?, count("delta")?, count("gamma")?), (1, 1, 1));
    // a failed transaction leaves the index as it was
    let failed: db4::Result<()> = db.transaction(|tx| {
        let articles = tx.collection::<Article>()?;
        articles.insert(&article("e", "omega", "x"))?;
        articles.delete("a")?;
        Err(Error::aborted("on purpose"))
    });
    assert!(failed.is_err());
    assert_eq!((count("omega")?, count("delta")?), (0, 1));
    // a savepoint rollback undoes its part only
    db.transaction(|tx| {
        let articles = tx.collection::<Article>()?;
        articles.insert(&article("f", "kappa", "x"))?;
        tx.savepoint("sp")?;
        articles.insert(&article("g", "lambda", "x"))?;
        articles.delete("f")?;
        // the transaction sees its own writes
        assert_eq!(articles.search("lambda").run()?.hits.len(), 1);
        tx.rollback_to("sp")?;
        assert_eq!(articles.search("lambda").run()?.hits.len(), 0);
        assert_eq!(articles.search("kappa").run()?.hits.len(), 1);
        Ok(())
    })?;
    assert_eq!((count("kappa")?, count("lambda")?), (1, 0));
    Ok(())
}

#[test]
fn filters_paging_scores_and_totals() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    let mut docs = Vec::new();
    for i in 0..30 {
        let mut a = article(&format!("a{i:02}"), &format!("report {i}"), &"report ".repeat(i % 5 + 1));
        a.published = i % 2 == 0;
        docs.push(a);
    }
    articles.insert_many(&docs)?;
    let all = articles.search("report").with_total().run()?;
    assert_eq!((all.hits.len(), all.total), (30, Some(30)));
    assert!(all.hits.windows(2).all(|w| w[0].score >= w[1].score));

    let published = articles.search("report").filter(Article::fields().published.eq(true)).with_total().run()?;
    assert_eq!(published.total, Some(15));
    assert!(published.hits.iter().all(|h| h.doc.published));

    let page = articles.search("report").limit(7).offset(7).with_total().run()?;
    assert_eq!(page.total, Some(30));
    let expected: Vec<&str> = ids(&all)[7..14].to_vec();
    assert_eq!(ids(&page), expected);

    let threshold = all.hits[9].score;
    let good = articles.search("report").min_score(threshold).with_total().run()?;
    assert!(good.hits.iter().all(|h| h.score >= threshold));
    assert_eq!(good.total, Some(good.hits.len() as u64));
    assert!(good.hits.len() >= 10 && good.hits.len() < 30, "{}", good.hits.len());
    assert!(articles.search("nothing-like-this").with_total().run()?.hits.is_empty());
    Ok(())
}

#[test]
fn bad_options_are_invalid_queries_and_change_nothing() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    articles.insert(&article("a", "alpha", "x"))?;
    for search in [
        articles.search("alpha").snippet(0),
        articles.search("alpha").snippet(65),
        articles.search("alpha").min_score(f64::NAN),
        articles.search(""),
        articles.search("   "),
    ] {
        match search.run() {
            Err(Error::InvalidQuery { collection, reason }) => {
                assert_eq!(collection, "articles");
                assert!(!reason.is_empty());
            }
            other => panic!("expected InvalidQuery, got {other:?}"),
        }
    }
    assert_eq!(articles.search("alpha").run()?.hits.len(), 1);
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "plain")]
struct Plain {
    #[id]
    id: String,
    body: String,
}

#[test]
fn a_collection_without_fts_fields_cannot_be_searched() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let plain = db.collection::<Plain>()?;
    plain.insert(&Plain { id: "p".into(), body: "text".into() })?;
    match plain.search("text").run() {
        Err(Error::InvalidQuery { reason, .. }) => assert!(reason.contains("no `#[fts]` field"), "{reason}"),
        other => panic!("expected InvalidQuery, got {other:?}"),
    }
    Ok(())
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "words", tokenizer = "trigram")]
struct Trigram {
    #[id]
    id: String,
    #[fts]
    text: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "words", tokenizer = "unicode61")]
struct Unstemmed {
    #[id]
    id: String,
    #[fts]
    text: String,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "words")]
struct Stemmed {
    #[id]
    id: String,
    #[fts]
    text: String,
}

#[test]
fn tokenizers_and_their_changes_rebuild_the_index() -> db4::Result<()> {
    let dir = TempDir::new("fts-tokenizers");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path)?;
        let words = db.collection::<Stemmed>()?;
        words.insert(&Stemmed { id: "w".into(), text: "running databases".into() })?;
        // Porter: "run" matches "running".
        assert_eq!(words.search("run").run()?.hits.len(), 1);
        assert_eq!(words.search("tabas").run()?.hits.len(), 0);
    }
    {
        let db = Db::open(&path)?;
        let words = db.collection::<Unstemmed>()?;
        assert_eq!(words.search("run").run()?.hits.len(), 0);
        assert_eq!(words.search("running").run()?.hits.len(), 1);
    }
    let db = Db::open(&path)?;
    let words = db.collection::<Trigram>()?;
    // Substrings.
    assert_eq!(words.search("tabas").run()?.hits.len(), 1);
    assert_eq!(words.search("unnin").run()?.hits.len(), 1);
    Ok(())
}

/// `articles` before `summary` became full-text and with `body` not full-text.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
struct ArticleV1 {
    #[id]
    id: String,
    #[fts(weight = 2.0)]
    title: String,
    body: String,
    tags: Vec<String>,
    summary: Option<String>,
    #[index]
    published: bool,
    views: i64,
}

#[test]
fn adding_and_removing_fts_fields_rebuilds_the_index() -> db4::Result<()> {
    let dir = TempDir::new("fts-evolution");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path)?;
        let v1 = db.collection::<ArticleV1>()?;
        v1.insert(&ArticleV1 {
            id: "a".into(),
            title: "title words".into(),
            body: "body words".into(),
            tags: vec!["tagged".into()],
            summary: None,
            published: true,
            views: 0,
        })?;
        assert_eq!(v1.search("body").run()?.hits.len(), 0);
    }
    {
        let db = Db::open(&path)?;
        let v2 = db.collection::<Article>()?;
        assert_eq!(v2.search("body").run()?.hits.len(), 1);
        assert_eq!(v2.search("tagged").run()?.hits.len(), 1);
        assert_eq!(v2.search("title").run()?.hits.len(), 1);
    }
    let db = Db::open(&path)?;
    let v1 = db.collection::<ArticleV1>()?;
    assert_eq!(v1.search("body").run()?.hits.len(), 0);
    assert_eq!(v1.search("title").run()?.hits.len(), 1);
    // The index is consistent with the table after the rebuilds.
    let raw = rusqlite::Connection::open(&path).expect("open raw");
    raw.execute("INSERT INTO _db4_fts_articles (_db4_fts_articles, rank) VALUES ('integrity-check', 0)", [])
        .expect("integrity check passes");
    Ok(())
}

#[test]
fn a_handle_whose_fts_fields_changed_underneath_refuses_to_search() -> db4::Result<()> {
    let dir = TempDir::new("fts-stale");
    let path = dir.join("db.sqlite");
    let old_db = Db::open(&path)?;
    let old = old_db.collection::<ArticleV1>()?;
    old.insert(&ArticleV1 {
        id: "a".into(),
        title: "title".into(),
        body: "body".into(),
        tags: Vec::new(),
        summary: None,
        published: true,
        views: 0,
    })?;
    let new_db = Db::open(&path)?;
    let new = new_db.collection::<Article>()?;
    assert_eq!(new.search("body").run()?.hits.len(), 1);
    match old.search("title").run() {
        Err(Error::SchemaMismatch { collection, reason, .. }) => {
            assert_eq!(collection, "articles");
            assert!(reason.contains("full-text"), "{reason}");
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
    // Writes through the old handle still keep the new index in step.
    old.insert(&ArticleV1 {
        id: "b".into(),
        title: "second".into(),
        body: "fresh body".into(),
        tags: Vec::new(),
        summary: None,
        published: true,
        views: 0,
    })?;
    assert_eq!(new.search("fresh").run()?.hits.len(), 1);
    Ok(())
}

#[test]
fn typos_widen_terms_that_match_nothing() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    articles.insert(&article("a", "Distributed databases", "consensus protocols"))?;
    articles.insert(&article("b", "Gardening", "tomatoes"))?;
    assert!(articles.search("databse").run()?.hits.is_empty());
    assert_eq!(ids(&articles.search("databse").typos(true).run()?), ["a"]);
    assert_eq!(ids(&articles.search("consensos").typos(true).run()?), ["a"]);
    assert_eq!(ids(&articles.search("tomatoe").typos(true).run()?), ["b"]);
    // A term of four characters gets no edit; five get one, not two.
    assert!(articles.search("garx").typos(true).run()?.hits.is_empty());
    assert!(articles.search("tmxtoes").typos(true).run()?.hits.is_empty());
    Ok(())
}

#[test]
fn a_full_text_index_without_the_derive() -> db4::Result<()> {
    let dir = TempDir::new("fts-index");
    let path = dir.join("db.sqlite");
    {
        let db = Db::open(&path)?;
        let index = FullTextIndex::create(&db, "docs", &[("title", 2.0), ("body", 1.0)], Tokenizer::Porter)?;
        index.index("d1", &[("title", "Edge computing"), ("body", "workers run close to users")])?;
        index.index("d2", &[("title", "Gardening"), ("body", "edge of the lawn")])?;
        index.index_many([("d3", &[("body", "nothing here")][..]), ("d4", &[("title", "more edge")][..])])?;
        assert_eq!(index.len()?, 4);
        let res = index.search("edge").highlight("[", "]").with_total().run()?;
        assert_eq!(res.total, Some(3));
        assert_eq!(res.hits.iter().map(|h| h.doc.as_str()).collect::<Vec<_>>()[..2], ["d4", "d1"]);
        assert_eq!(res.hits[0].highlights, vec![("title", "more [edge]".to_owned())]);
        // re-indexing replaces
        index.index("d2", &[("title", "Gardening"), ("body", "the lawn")])?;
        assert_eq!(index.search("edge").run()?.hits.len(), 2);
        assert!(index.remove("d1")?);
        assert!(!index.remove("d1")?);
        assert_eq!(index.search("edge").run()?.hits.len(), 1);
        // bad input changes nothing
        assert!(matches!(index.index("", &[]), Err(Error::InvalidValue { .. })));
        assert!(matches!(index.index("d9", &[("nope", "x")]), Err(Error::InvalidValue { .. })));
        assert!(matches!(index.index("d9", &[("title", "x"), ("title", "y")]), Err(Error::InvalidValue { .. })));
        assert_eq!(index.len()?, 3);
    }
    // Reopened with another field set: rebuilt, the shared fields keep their text.
    let db = Db::open(&path)?;
    let index = FullTextIndex::create(&db, "docs", &[("title", 1.0), ("tags", 1.0)], Tokenizer::Unicode61)?;
    assert_eq!(index.len()?, 3);
    assert_eq!(index.search("edge").run()?.hits.iter().map(|h| h.doc.as_str()).collect::<Vec<_>>(), ["d4"]);
    assert!(index.search("lawn").run()?.hits.is_empty());
    for (name, fields) in [
        ("bad name", &[("t", 1.0)][..]),
        ("ok", &[][..]),
        ("ok", &[("rank", 1.0)][..]),
        ("ok", &[("t", 0.0)][..]),
        ("ok", &[("t", 1.0), ("T", 1.0)][..]),
    ] {
        assert!(
            matches!(FullTextIndex::create(&db, name, fields, Tokenizer::Porter), Err(Error::SchemaMismatch { .. })),
            "{name} {fields:?}"
        );
    }
    Ok(())
}

#[test]
fn rebuilding_the_index_after_a_vacuum() -> db4::Result<()> {
    let dir = TempDir::new("fts-vacuum");
    let path = dir.join("db.sqlite");
    let db = Db::open(&path)?;
    let articles = db.collection::<Article>()?;
    let docs: Vec<Article> = (0..50).map(|i| article(&format!("a{i:02}"), &format!("word{i}"), "common")).collect();
    articles.insert_many(&docs)?;
    for i in (0..50).step_by(3) {
        articles.delete(format!("a{i:02}").as_str())?;
    }
    let raw = rusqlite::Connection::open(&path).expect("open raw");
    raw.execute_batch("VACUUM").expect("vacuum");
    drop(raw);
    articles.rebuild_search_index()?;
    for i in 0..50 {
        let hits = articles.search(&format!("word{i}")).run()?.hits;
        if i % 3 == 0 {
            assert!(hits.is_empty(), "a{i:02} was deleted");
        } else {
            assert_eq!(hits.len(), 1);
            assert_eq!(hits[0].doc.id, format!("a{i:02}"));
        }
    }
    assert_eq!(articles.search("common").with_total().run()?.total, Some(33));
    let plain = db.collection::<Plain>()?;
    assert!(matches!(plain.rebuild_search_index(), Err(Error::InvalidQuery { .. })));
    Ok(())
}

#[test]
fn the_query_language_through_a_collection() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    let mut a = article("a", "Edge databases", "sqlite everywhere");
    a.tags = vec!["wasm".into()];
    articles.insert(&a)?;
    articles.insert(&article("b", "Databases at the core", "postgres"))?;
    articles.insert(&article("c", "Edge functions", "javascript"))?;
    let found = |q: &str| -> db4::Result<Vec<String>> {
        let mut ids: Vec<String> = articles.search(q).run()?.hits.into_iter().map(|h| h.doc.id).collect();
        ids.sort();
        Ok(ids)
    };
    assert_eq!(found("title:edge")?, ["a", "c"]);
    assert_eq!(found("edge database")?, ["a"]);
    assert_eq!(found("edge OR postgres")?, ["a", "b", "c"]);
    assert_eq!(found("database NOT sqlite")?, ["b"]);
    assert_eq!(found("\"edge functions\"")?, ["c"]);
    assert_eq!(found("java*")?, ["c"]);
    assert_eq!(found("tags:wasm")?, ["a"]);
    assert_eq!(found("body:edge")?, Vec::<String>::new());
    // A field that is not full-text, and a malformed query: errors with byte positions.
    match articles.search("edge published:true").run() {
        Err(Error::InvalidQuery { collection, reason }) => {
            assert_eq!(collection, "articles");
            assert!(reason.starts_with("at byte 5:") && reason.contains("`published`"), "{reason}");
        }
        other => panic!("expected InvalidQuery, got {other:?}"),
    }
    match articles.search("edge AND (sqlite").run() {
        Err(Error::InvalidQuery { collection, reason }) => {
            assert_eq!(collection, "articles");
            assert!(reason.starts_with("at byte 9:"), "{reason}");
        }
        other => panic!("expected InvalidQuery, got {other:?}"),
    }
    // Operators smuggled inside phrases are text.
    assert!(articles.search("\"edge OR postgres\"").run()?.hits.is_empty());
    assert!(articles.search("\"NEAR(edge sqlite)\"").run()?.hits.is_empty());
    Ok(())
}

#[test]
fn a_search_with_more_filter_values_than_parameters_stays_within_the_limits() -> db4::Result<()> {
    let (_db, articles) = setup()?;
    let docs: Vec<Article> = (0..30)
        .map(|i| Article {
            views: i,
            ..article(&format!("a{i:02}"), "report", &"report ".repeat(1 + (i % 3) as usize))
        })
        .collect();
    articles.insert_many(&docs)?;
    // 120 conditions: past the statement's parameters, so values spill into one JSON array,
    // and the page's LIMIT and OFFSET still bind.
    let mut search = articles.search("report").highlight("[", "]").snippet(4).min_score(0.0).limit(5).offset(2);
    for v in 100..220 {
        search = search.filter(Article::fields().views.ne(v));
    }
    let res = search.filter(Article::fields().views.lt(10)).with_total().run()?;
    assert_eq!(res.total, Some(10));
    assert_eq!(res.hits.len(), 5);
    assert!(res.hits.iter().all(|h| h.doc.views < 10 && !h.highlights.is_empty()));
    Ok(())
}
