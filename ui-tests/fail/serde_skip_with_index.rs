// `#[index]` on a field serde never writes.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[serde(skip)]
    #[index]
    cached_score: i64,
}

fn main() {}
