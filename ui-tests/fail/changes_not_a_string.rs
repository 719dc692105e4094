// `changes` needs a string literal.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(changes = full)]
struct Article {
    #[id]
    id: String,
}

fn main() {}
