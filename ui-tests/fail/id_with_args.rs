// Arguments on the marker attribute `#[id]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id(x)]
    id: String,
}

fn main() {}
