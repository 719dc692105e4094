// An indexed field whose name cannot be an SQL column name.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[index]
    größe: i64,
}

fn main() {}
