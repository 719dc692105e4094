// Two composite indexes with one name.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_tenant", fields(tenant_id)))]
#[db4(index(name = "by_tenant", fields(tenant_id, created_at)))]
struct Article {
    #[id]
    id: String,
    tenant_id: String,
    created_at: i64,
}

fn main() {}
