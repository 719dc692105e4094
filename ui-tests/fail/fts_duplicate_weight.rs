// The `weight` option given twice.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts(weight = 1.0, weight = 2.0)]
    title: String,
}

fn main() {}
