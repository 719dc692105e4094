// One field marked both `#[id]` and `#[partition_key]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    #[partition_key]
    id: String,
}

fn main() {}
