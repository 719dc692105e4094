// A field serde does not write cannot be a key of an index.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_cache", fields(cache)))]
struct Article {
    #[id]
    id: String,
    #[serde(skip)]
    cache: i64,
}

fn main() {}
