// Both `#[index]` and `#[range_index]` on one field.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[index]
    #[range_index]
    created_at: i64,
}

fn main() {}
