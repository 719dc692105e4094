// The `collection` option without a value.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(collection)]
struct Article {
    #[id]
    id: String,
}

fn main() {}
