// Two fields marked `#[version]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[version]
    version: u64,
    #[version]
    revision: u64,
}

fn main() {}
