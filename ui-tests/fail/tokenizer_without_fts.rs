// A tokenizer set on a document without `#[fts]` fields.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(tokenizer = "porter")]
struct Article {
    #[id]
    id: String,
    title: String,
}

fn main() {}
