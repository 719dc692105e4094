// A direction other than `asc` or `desc`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_created", fields(created_at descending)))]
struct Article {
    #[id]
    id: String,
    created_at: i64,
}

fn main() {}
