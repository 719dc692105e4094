// Two fields marked `#[id]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[id]
    slug: String,
}

fn main() {}
