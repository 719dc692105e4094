// `#[range_index]` on a user type that does not implement `db4::Ordered`.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Money {
    cents: i64,
    currency: String,
}

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    #[range_index]
    price: Money,
}

fn main() {}
