// `#[id]` on a float, which cannot be a document id.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Reading {
    #[id]
    id: f32,
}

fn main() {}
