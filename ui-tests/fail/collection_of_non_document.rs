// Opening a collection of a type that does not derive `Document`.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Article {
    id: String,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    db.collection::<Article>()?;
    Ok(())
}
