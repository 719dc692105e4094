// `#[version]` on a float field.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[version]
    version: f64,
}

fn main() {}
