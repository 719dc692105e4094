// A #[serde(skip)] field is never stored, so it has no query handle.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[serde(skip)]
    cache: i64,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let articles = db.collection::<Article>()?;
    articles.query().filter(Article::fields().cache.eq(0)).count()?;
    Ok(())
}
