// `i64` and `u64` ids: lookups take the id by value or by reference.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
struct Event {
    #[id]
    id: i64,
    kind: String,
}

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
struct Counter {
    #[id]
    id: u64,
    #[version]
    version: i32,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let events = db.collection::<Event>()?;
    events.insert(&Event { id: -5, kind: "start".into() })?;
    assert_eq!(events.get(-5)?.map(|e| e.kind), Some("start".to_owned()));
    assert!(events.get(&7)?.is_none());
    let f = Event::fields();
    assert_eq!(events.query().filter(f.id.lt(0)).count()?, 1);

    let counters = db.collection::<Counter>()?;
    counters.insert(&Counter { id: 1, version: 0 })?;
    counters.update(&Counter { id: 1, version: 0 })?;
    assert_eq!(counters.get(1_u64)?, Some(Counter { id: 1, version: 1 }));
    assert!(counters.delete(&1)?);
    Ok(())
}
