// `#[fts = 2.0]` instead of `#[fts(weight = 2.0)]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts = 2.0]
    title: String,
}

fn main() {}
