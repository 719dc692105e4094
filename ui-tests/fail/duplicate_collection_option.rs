// The `collection` option given twice.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(collection = "articles", collection = "posts")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
