// A composite index over a list, which has no order.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_tags", fields(tenant_id, tags)))]
struct Article {
    #[id]
    id: String,
    tenant_id: String,
    tags: Vec<String>,
}

fn main() {}
