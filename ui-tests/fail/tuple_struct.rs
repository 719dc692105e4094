// `#[derive(Document)]` on a tuple struct.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article(#[id] String, String);

fn main() {}
