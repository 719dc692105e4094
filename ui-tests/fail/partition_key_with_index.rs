// `#[index]` on the partition key, which is already indexed.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[partition_key]
    #[index]
    tenant_id: String,
}

fn main() {}
