//! db4 quickstart: a small multi-tenant articles store on an on-disk SQLite file.
//!
//! Run with `cargo run -p quickstart`. The database is created fresh under `target/` each run.

use db4::prelude::*;
use serde::{Deserialize, Serialize};

/// Where an article is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Status {
    Draft,
    Published,
    Archived,
}

/// An article of one tenant.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
struct Article {
    #[id]
    id: String,
    #[partition_key]
    tenant_id: String,
    #[fts(weight = 2.0)]
    title: String,
    #[fts]
    body: String,
    #[fts(weight = 1.5)]
    tags: Vec<String>,
    #[index]
    status: Status,
    #[range_index]
    created_at: i64,
    #[version]
    version: u64,
    views: i64,
}

fn article(n: i64, tenant: &str, status: Status) -> Article {
    Article {
        id: format!("{tenant}-{n:03}"),
        tenant_id: tenant.to_owned(),
        title: format!("Article {n} of {tenant}"),
        body: "Durable Objects give each shard its own SQLite database.".to_owned(),
        tags: vec!["edge".to_owned(), "sqlite".to_owned()],
        status,
        created_at: 1_700_000_000 + n * 3_600,
        version: 0,
        views: n * 10,
    }
}

fn main() -> db4::Result<()> {
    let workspace =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap_or(std::path::Path::new("."));
    let dir = workspace.join("target/quickstart");
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::Backend(db4::BackendError::new(db4::BackendErrorKind::Io, format!("{}: {e}", dir.display())))
    })?;
    let path = dir.join("articles.db");
    for suffix in ["", "-wal", "-shm"] {
        // A fresh database each run; a missing file is fine.
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }

    let db = Db::open(&path)?;
    let articles = db.collection::<Article>()?;
    println!("opened {} (collection `{}`)", path.display(), articles.name());

    let statuses = [Status::Draft, Status::Published, Status::Published, Status::Archived];
    let docs: Vec<Article> = ["acme", "globex"]
        .iter()
        .flat_map(|tenant| (1..=8).map(move |n| article(n, tenant, statuses[(n % 4) as usize])))
        .collect();
    articles.insert_many(&docs)?;
    println!("inserted {} articles in one transaction", articles.count()?);

    match articles.insert(&docs[0]) {
        Err(Error::AlreadyExists { id, .. }) => println!("inserting {id} again is refused: it already exists"),
        other => println!("unexpected: {other:?}"),
    }

    let f = Article::fields();
    let acme_published = articles
        .query()
        .filter(f.tenant_id.eq("acme") & f.status.eq(Status::Published))
        .order_by(f.created_at.desc())
        .all()?;
    println!("acme has {} published articles, newest first:", acme_published.len());
    for a in &acme_published {
        println!("  {} {:?} views={} created_at={}", a.id, a.title, a.views, a.created_at);
    }

    let popular = articles.query().filter(f.views.gte(50) & f.title.starts_with("Article")).count()?;
    println!("{popular} articles have at least 50 views");

    let mut first = articles
        .get("acme-001")?
        .ok_or_else(|| Error::NotFound { collection: "articles".into(), id: "acme-001".into() })?;
    first.status = Status::Published;
    first.views += 1;
    articles.update(&first)?;
    let stored = articles.get("acme-001")?;
    println!("published acme-001: version {} -> {}", first.version, stored.as_ref().map_or(0, |a| a.version));

    match articles.update(&first) {
        Err(Error::Conflict { expected, actual, .. }) => {
            println!("a second update from the stale copy conflicts: expected version {expected}, stored {actual}")
        }
        other => println!("unexpected: {other:?}"),
    }

    let archived = articles.query().filter(f.status.eq(Status::Archived)).delete()?;
    println!("deleted {archived} archived articles; {} remain", articles.count()?);

    let many = articles.get_many(["acme-002", "nope", "globex-002"])?;
    let found: Vec<&str> = many.iter().map(|d| d.as_ref().map_or("(missing)", |a| a.id.as_str())).collect();
    println!("get_many: {found:?}");

    println!("deleting acme-002: {}", articles.delete("acme-002")?);
    println!("done; {} articles left in {}", articles.count()?, path.display());
    Ok(())
}
