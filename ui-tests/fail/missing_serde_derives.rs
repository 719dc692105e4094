// A document that does not derive serde's `Serialize` and `Deserialize`.
use db4::Document;

#[derive(Document)]
struct Article {
    #[id]
    id: String,
}

fn main() {}
