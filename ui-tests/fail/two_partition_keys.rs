// Two fields marked `#[partition_key]`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[partition_key]
    tenant_id: String,
    #[partition_key]
    region: String,
}

fn main() {}
