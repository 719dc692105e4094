// An enum in a composite index must say that its stored form (the variant name) orders it.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Status {
    Draft,
    Published,
}

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_status", fields(status, created_at)))]
struct Article {
    #[id]
    id: String,
    status: Status,
    created_at: i64,
}

fn main() {}
