// A tokenizer SQLite FTS5 does not have.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(tokenizer = "snowball")]
struct Article {
    #[id]
    id: String,
    #[fts]
    title: String,
}

fn main() {}
