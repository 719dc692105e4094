// A raw-identifier field (`r#type`) is stored, indexed and queried under its plain name.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
struct Item {
    #[id]
    id: String,
    #[index]
    r#type: String,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let items = db.collection::<Item>()?;
    items.insert(&Item { id: "i".into(), r#type: "book".into() })?;
    assert_eq!(<Item as Document>::schema().fields()[1].name(), "type");
    assert_eq!(items.query().filter(Item::fields().r#type.eq("book")).count()?, 1);
    Ok(())
}
