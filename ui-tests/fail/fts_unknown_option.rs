// An `#[fts]` option that does not exist.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts(boost = 2.0)]
    title: String,
}

fn main() {}
