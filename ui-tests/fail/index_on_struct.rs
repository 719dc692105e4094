// A field attribute (`#[index]`) placed on the struct.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[index]
struct Article {
    #[id]
    id: String,
}

fn main() {}
