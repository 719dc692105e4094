// `#[id]` on an optional field: every document needs an id.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: Option<String>,
}

fn main() {}
