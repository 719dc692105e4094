use db4::Document;
use db4::shard::{ShardRouter, ShardRouterConfig};
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize)]
struct Note {
    #[id]
    id: String,
    text: String,
}

fn main() {
    let _ = ShardRouter::<Note>::in_memory(ShardRouterConfig::default());
}
