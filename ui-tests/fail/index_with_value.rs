// A value on the marker attribute `#[index]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[index = "status_idx"]
    status: String,
}

fn main() {}
