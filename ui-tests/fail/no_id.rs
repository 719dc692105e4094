// A document without an `#[id]` field.
use db4::Document;

#[derive(Document, serde::Serialize, serde::Deserialize)]
struct Article {
    title: String,
}

fn main() {}
