// A misspelled field name in a query.
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
    articles.query().filter(Article::fields().veiws.gt(10)).all()?;
    Ok(())
}
