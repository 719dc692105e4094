// An indexed field serialized under a name db4 cannot address.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[serde(rename = "the \"status\"")]
    #[index]
    status: String,
}

fn main() {}
