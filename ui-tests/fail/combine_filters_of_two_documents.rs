// Combining filters on two different document types with `&`.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
    title: String,
    views: i64,
    tags: Vec<String>,
}

#[derive(Document, Serialize, Deserialize)]
struct User {
    #[id]
    id: String,
    name: String,
}

fn main() {
    let _ = Article::fields().title.eq("x") & User::fields().name.eq("y");
}
