// A `#[fts]` weight that is not a number.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts(weight = "heavy")]
    title: String,
}

fn main() {}
