// `#[derive(Document)]` on a generic struct.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article<T> {
    #[id]
    id: String,
    body: T,
}

fn main() {}
