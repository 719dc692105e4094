// A collection name that is not a valid SQL identifier.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(collection = "bad name")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
