// Comparing an `i64` field with a string.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    title: String,
    views: i64,
    tags: Vec<String>,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    articles.query().filter(Article::fields().views.eq("x")).all()?;
    Ok(())
}
