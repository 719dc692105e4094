// The id in a composite index: every index already ends with it.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by_tenant", fields(tenant_id, id)))]
struct Article {
    #[id]
    id: String,
    tenant_id: String,
}

fn main() {}
