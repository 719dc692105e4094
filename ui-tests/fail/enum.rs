// `#[derive(Document)]` on an enum.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
enum Article {
    Draft { id: String },
    Published { id: String },
}

fn main() {}
