// Several mistakes in one struct: all are reported in one compile.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(collection = "bad name", table = "x")]
struct Article {
    #[fts(weight = -2.0)]
    title: String,
    #[index]
    #[index]
    status: String,
}

fn main() {}
