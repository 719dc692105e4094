// Every attribute on one document, and every query operator, compiled and run.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Status {
    Draft,
    Published,
}

#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles", tokenizer = "unicode61")]
pub struct Article {
    #[id]
    pub id: String,
    #[partition_key]
    pub tenant_id: String,
    #[fts(weight = 2.0)]
    pub title: String,
    #[fts]
    pub body: String,
    #[fts(weight = 1.5)]
    pub tags: Vec<String>,
    #[fts(weight = 3)]
    pub summary: Option<String>,
    #[index]
    pub status: Status,
    #[range_index]
    pub created_at: i64,
    #[range_index]
    pub score: f64,
    #[version]
    pub version: u64,
    pub views: i64,
}

fn article(id: &str, created_at: i64) -> Article {
    Article {
        id: id.into(),
        tenant_id: "acme".into(),
        title: format!("Title {id}"),
        body: "body".into(),
        tags: vec!["rust".into(), "db".into()],
        summary: None,
        status: Status::Draft,
        created_at,
        score: 0.5,
        version: 0,
        views: 0,
    }
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    articles.insert(&article("a1", 1))?;
    articles.insert(&article("a2", 2))?;
    let mut a3 = article("a3", 3);
    a3.status = Status::Published;
    a3.summary = Some("summary".into());
    articles.insert(&a3)?;

    let f = Article::fields();
    let title = String::from("Title a1");
    let filters: Vec<Filter<Article>> = vec![
        f.status.eq(Status::Published),
        f.status.ne(Status::Draft),
        f.title.eq("Title a3"),
        f.title.eq(&title),
        f.title.eq(title.clone()),
        f.created_at.gt(0),
        f.created_at.gte(1),
        f.created_at.lt(10),
        f.created_at.lte(3),
        f.created_at.between(1, 3),
        f.score.gt(0.25),
        f.title.gt("A"),
        f.created_at.in_list([1, 2, 3]),
        f.title.in_list(["Title a1", "Title a3"]),
        f.tenant_id.starts_with("ac"),
        f.summary.starts_with("sum"),
        f.summary.is_some(),
        f.summary.is_none(),
        f.summary.eq("summary"),
        f.summary.eq(None),
        f.views.eq(0).and(f.views.ne(1)),
        f.views.eq(0).or(f.views.eq(1)),
        f.views.eq(1).not(),
        f.views.eq(0) & f.views.ne(1),
        f.views.eq(0) | f.views.eq(1),
        !f.views.eq(1),
        Filter::all([f.views.eq(0), f.created_at.gt(0)]),
        Filter::any([f.views.eq(0), f.created_at.gt(0)]),
    ];
    for filter in filters {
        articles.query().filter(filter).all()?;
    }

    let published = articles
        .query()
        .filter(f.status.eq(Status::Published) & f.views.gte(0))
        .order_by(f.created_at.desc())
        .order_by(f.id.asc())
        .limit(10)
        .offset(0)
        .all()?;
    assert_eq!(published, vec![a3.clone()]);
    assert_eq!(articles.query().filter(f.summary.is_none()).count()?, 2);
    let first = articles.query().order_by(f.created_at.asc()).first()?;
    assert_eq!(first.map(|a| a.id), Some("a1".to_owned()));

    let mut a1 = articles.get("a1")?.expect("a1 was inserted");
    a1.views = 10;
    articles.update(&a1)?;
    assert_eq!(articles.get(&a1.id)?.map(|a| a.version), Some(1));

    assert_eq!(articles.query().filter(f.created_at.lt(3)).delete()?, 2);
    assert!(articles.delete("a3")?);
    assert_eq!(articles.count()?, 0);
    Ok(())
}
