// A serde name with a backslash cannot be addressed in a JSON path.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[serde(rename = "a\\b")]
    odd: i64,
}

fn main() {}
