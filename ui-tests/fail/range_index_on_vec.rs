// `#[range_index]` on a list, which has no order.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[range_index]
    tags: Vec<String>,
}

fn main() {}
