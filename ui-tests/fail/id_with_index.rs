// `#[index]` on the `#[id]` field, which is always indexed.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    #[index]
    id: String,
}

fn main() {}
