// `Option` fields: indexed, compared with `is_none` / `is_some`, `eq(None)` and `eq(Some(_))`.
use db4::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
struct Task {
    #[id]
    id: String,
    #[index]
    assignee: Option<String>,
    #[range_index]
    due: Option<i64>,
    #[fts]
    notes: Option<String>,
    parent: Option<u64>,
}

fn main() -> db4::Result<()> {
    let db = Db::open_in_memory()?;
    let tasks = db.collection::<Task>()?;
    tasks.insert(&Task { id: "t1".into(), assignee: Some("ann".into()), due: Some(3), notes: None, parent: None })?;
    tasks.insert(&Task { id: "t2".into(), assignee: None, due: None, notes: Some("x".into()), parent: Some(1) })?;
    let f = Task::fields();
    let count = |filter: Filter<Task>| tasks.query().filter(filter).count();
    assert_eq!(count(f.assignee.is_none())?, 1);
    assert_eq!(count(f.assignee.is_some())?, 1);
    assert_eq!(count(f.assignee.eq("ann"))?, 1);
    assert_eq!(count(f.assignee.eq(Some("ann".to_owned())))?, 1);
    assert_eq!(count(f.due.gt(Some(1)))?, 1);
    assert_eq!(count(f.due.is_none())?, 1);
    assert_eq!(count(f.parent.is_some() & f.parent.eq(Some(1)))?, 1);
    assert_eq!(count(f.notes.starts_with("x"))?, 1);
    assert_eq!(count(f.parent.eq(None))?, 1);
    Ok(())
}
