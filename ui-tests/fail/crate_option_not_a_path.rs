// A `crate` option that is not a path.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(crate = "not a path")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
