// `#[version]` on a text field.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[version]
    version: String,
}

fn main() {}
