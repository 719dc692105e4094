// `#[db4(changes = "full")]` makes the change log carry before-images of the collection.
use db4::{ChangeOp, Db, Document, Lsn};
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
#[db4(collection = "accounts", changes = "full")]
struct Account {
    #[id]
    id: String,
    balance: i64,
}

#[derive(Document, Serialize, Deserialize)]
#[db4(changes = "after")]
struct Note {
    #[id]
    id: i64,
}

fn main() -> db4::Result<()> {
    assert!(Account::schema().records_full_changes());
    assert!(!Note::schema().records_full_changes());
    let db = Db::open_in_memory()?;
    let accounts = db.collection::<Account>()?;
    accounts.insert(&Account { id: "a".into(), balance: 1 })?;
    accounts.update(&Account { id: "a".into(), balance: 2 })?;
    let events: Vec<_> = db.changes_since(Lsn::ZERO)?.collect::<db4::Result<_>>()?;
    assert_eq!(events[1].op, ChangeOp::Update);
    assert_eq!(events[1].before::<Account>()?, Some(Account { id: "a".into(), balance: 1 }));
    Ok(())
}
