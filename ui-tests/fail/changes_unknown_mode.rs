// `changes` takes "full" or "after"; anything else is refused with the choices.
use db4::Document;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
#[db4(changes = "before")]
struct Article {
    #[id]
    id: String,
}

fn main() {}
