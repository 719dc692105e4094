// `#[fts]` on a list that is not a list of text.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts]
    scores: Vec<i64>,
}

fn main() {}
