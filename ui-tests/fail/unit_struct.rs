// `#[derive(Document)]` on a unit struct.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article;

fn main() {}
