// A zero `#[fts]` weight.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts(weight = 0.0)]
    title: String,
}

fn main() {}
