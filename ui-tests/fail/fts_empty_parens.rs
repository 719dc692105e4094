// `#[fts()]` with parentheses but no weight.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[fts()]
    title: String,
}

fn main() {}
