// Looking up a `String`-id document with an integer.
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
    articles.get(42)?;
    Ok(())
}
