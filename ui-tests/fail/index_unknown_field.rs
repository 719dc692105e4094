// A composite index naming a field the struct does not have.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_tenant_created", fields(tenant, created_at desc)))]
struct Article {
    #[id]
    id: String,
    tenant_id: String,
    created_at: i64,
}

fn main() {}
