// `#[index]` twice on one field.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[index]
    #[index]
    status: String,
}

fn main() {}
