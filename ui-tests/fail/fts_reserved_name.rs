// A full-text field named like a column FTS5 reserves.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Song {
    #[id]
    id: String,
    #[fts]
    rank: String,
}

fn main() {}
