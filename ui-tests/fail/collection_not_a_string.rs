// A collection name given as an identifier rather than a string literal.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(collection = articles)]
struct Article {
    #[id]
    id: String,
}

fn main() {}
