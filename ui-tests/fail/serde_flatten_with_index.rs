// `#[index]` on a flattened field, which is not a key of the document.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Meta {
    author: String,
}

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[serde(flatten)]
    #[index]
    meta: Meta,
}

fn main() {}
