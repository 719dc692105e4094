// A composite index without a name.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(fields(tenant_id, created_at)))]
struct Article {
    #[id]
    id: String,
    tenant_id: String,
    created_at: i64,
}

fn main() {}
