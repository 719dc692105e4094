// The container attribute `#[db4(...)]` placed on a field.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[db4(collection = "titles")]
    title: String,
}

fn main() {}
