// A composite index with no fields.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "nothing", fields()))]
struct Article {
    #[id]
    id: String,
    created_at: i64,
}

fn main() {}
