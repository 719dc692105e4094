// `#[db4(crate = "...")]` makes the generated code reach db4 through another path.
use db4_ui_tests::renamed_db4::{Db, Document};
use serde::{Deserialize, Serialize};

#[derive(Document, Serialize, Deserialize, Debug, PartialEq)]
#[db4(crate = "db4_ui_tests::renamed_db4", collection = "notes")]
struct Note {
    #[id]
    id: u64,
    #[index]
    author: String,
    #[range_index]
    created_at: i64,
    #[fts]
    text: String,
    #[version]
    version: u32,
}

fn main() -> db4_ui_tests::renamed_db4::Result<()> {
    let db = Db::open_in_memory()?;
    let notes = db.collection::<Note>()?;
    let note = Note { id: 1, author: "ann".into(), created_at: 5, text: "hi".into(), version: 0 };
    notes.insert(&note)?;
    let f = Note::fields();
    let found = notes.query().filter(f.author.eq("ann") & f.created_at.gt(1)).all()?;
    assert_eq!(found, [note]);
    assert_eq!(<Note as Document>::schema().collection(), "notes");
    Ok(())
}
