// A collection name in the namespace db4 keeps for itself.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(collection = "_db4_schema")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
