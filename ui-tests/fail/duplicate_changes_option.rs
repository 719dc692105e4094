// The `changes` option given twice.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(changes = "full", changes = "after")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
