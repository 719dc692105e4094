// A `#[db4(...)]` option that does not exist.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(table = "x")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
