// A field named twice in one composite index.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_created", fields(created_at, created_at desc)))]
struct Article {
    #[id]
    id: String,
    created_at: i64,
}

fn main() {}
