// Filtering articles with a field of another document type.
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

#[derive(Document, Serialize, Deserialize)]
struct User {
    #[id]
    id: String,
    name: String,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    articles.query().filter(User::fields().name.eq("x")).all()?;
    Ok(())
}
