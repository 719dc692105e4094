// `#[fts]` on a field that is not text.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts]
    views: i64,
}

fn main() {}
