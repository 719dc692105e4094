//! A public document in a module, under `#![deny(missing_docs)]`: the generated items are documented.
#![deny(missing_docs)]

/// The data model.
pub mod model {
    use serde::{Deserialize, Serialize};

    /// A published article.
    #[derive(db4::Document, Serialize, Deserialize)]
    pub struct Article {
        /// The id.
        #[id]
        pub id: String,
        /// When it was written.
        #[range_index]
        pub created_at: i64,
    }
}

fn main() {
    let f = model::Article::fields();
    let _ = f.created_at.gt(1) & f.id.eq("a");
}
