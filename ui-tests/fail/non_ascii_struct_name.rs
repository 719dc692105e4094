// A struct whose default collection name (from its non-ASCII name) is not a valid identifier.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Café {
    #[id]
    id: String,
}

fn main() {}
