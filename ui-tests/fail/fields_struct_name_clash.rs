// A user type with the name of the generated field-handle struct (`<Name>Fields`).
use db4::Document;
use serde::{Deserialize, Serialize};

struct ArticleFields;

#[derive(Document, Serialize, Deserialize)]
struct Article {
    #[id]
    id: String,
}

fn main() {}
