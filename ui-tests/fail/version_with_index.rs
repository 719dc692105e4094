// `#[index]` on the `#[version]` counter.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[version]
    #[index]
    version: u64,
}

fn main() {}
