// `#[fts]` twice on one field.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts]
    #[fts(weight = 2.0)]
    title: String,
}

fn main() {}
