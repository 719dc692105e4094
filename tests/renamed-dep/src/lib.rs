//! A crate that knows db4 only as `renamed_db4`: the derive must reach the runtime through
//! `#[db4(crate = "renamed_db4")]`, since `::db4` does not resolve here.

use renamed_db4::Document;
use serde::{Deserialize, Serialize};

/// A document whose generated code names the runtime `renamed_db4`.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(crate = "renamed_db4", collection = "notes")]
pub struct Note {
    /// The id.
    #[id]
    pub id: String,
    /// An indexed field.
    #[index]
    pub topic: String,
    /// The version counter.
    #[version]
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_dependency_works_end_to_end() -> renamed_db4::Result<()> {
        let db = renamed_db4::Db::open_in_memory()?;
        let notes = db.collection::<Note>()?;
        notes.insert(&Note { id: "n1".into(), topic: "rust".into(), version: 0 })?;
        notes.update(&Note { id: "n1".into(), topic: "sqlite".into(), version: 0 })?;
        let found = notes.query().filter(Note::fields().topic.eq("sqlite")).all()?;
        assert_eq!(found, vec![Note { id: "n1".into(), topic: "sqlite".into(), version: 1 }]);
        Ok(())
    }
}
