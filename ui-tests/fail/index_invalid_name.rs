// An index name that cannot be an SQL identifier part.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(index(name = "by tenant", fields(tenant_id)))]
struct Article {
    #[id]
    id: String,
    tenant_id: String,
}

fn main() {}
