// `#[id]` on a list, which cannot be a document id.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: Vec<String>,
}

fn main() {}
