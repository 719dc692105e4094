// Composite indexes, with an enum that opts into an order by its variant names.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy)]
enum Status {
    Draft,
    Published,
}

impl db4::Ordered for Status {}

#[derive(Document, Serialize, Deserialize)]
#[db4(collection = "articles", index(name = "by_tenant_created", fields(tenant_id, created_at desc)))]
#[db4(index(name = "by_status", fields(tenant_id asc, status, r#type desc, score)))]
struct Article {
    #[id]
    id: String,
    #[partition_key]
    tenant_id: String,
    status: Status,
    r#type: String,
    score: Option<f64>,
    created_at: i64,
}

fn main() {
    let _ = Article::fields().created_at;
}
