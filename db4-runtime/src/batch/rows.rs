//! Strict readers of stored rows: a value of the wrong storage type, a negative size or a
//! damaged entry becomes a `Corrupt` backend error naming what was read, never a default.

use super::BatchStore;
use super::codec::decode_entry;
use crate::backend::Row;
use crate::error::Result;
use crate::value::ValueRef;

impl<S> BatchStore<S> {
    /// The JSON of the entry in a row of `blob, pos, len, substr(payload)` starting at column
    /// `at`, checked to be `id`'s.
    pub(super) fn entry_in_row<'r>(&self, row: &'r dyn Row, at: usize, id: &str) -> Result<&'r [u8]> {
        let blob = self.int(row, at, "blob id")?;
        let pos = self.uint(row, at + 1, "entry offset")?;
        let len = self.uint(row, at + 2, "entry length")?;
        let bytes = match row.get(at + 3)? {
            ValueRef::Blob(b) => b,
            ValueRef::Null => return Err(self.corrupt(format!("document {id:?} points at missing blob {blob}"))),
            other => {
                return Err(self.corrupt(format!("blob {blob}: the payload is {}, not a BLOB", other.type_name())));
            }
        };
        if bytes.len() as u64 != len {
            return Err(
                self.corrupt(format!("document {id:?}: {len} bytes at offset {pos} run past the end of blob {blob}"))
            );
        }
        self.check_entry(bytes, id)
    }

    /// Decodes one packed entry and checks that it is `id`'s; returns its JSON.
    pub(super) fn check_entry<'b>(&self, bytes: &'b [u8], id: &str) -> Result<&'b [u8]> {
        let (stored, doc) = decode_entry(bytes).map_err(|e| self.corrupt(format!("document {id:?}: {e}")))?;
        if stored != id {
            return Err(self.corrupt(format!("the entry of document {id:?} holds document {stored:?}")));
        }
        Ok(doc)
    }

    pub(super) fn int(&self, row: &dyn Row, index: usize, what: &str) -> Result<i64> {
        match row.get(index)? {
            ValueRef::Integer(v) => Ok(v),
            other => Err(self.corrupt(format!("{what} is {}, not an INTEGER", other.type_name()))),
        }
    }

    pub(super) fn uint(&self, row: &dyn Row, index: usize, what: &str) -> Result<u64> {
        let v = self.int(row, index, what)?;
        u64::try_from(v).map_err(|_| self.corrupt(format!("{what} is negative ({v})")))
    }

    pub(super) fn text<'r>(&self, row: &'r dyn Row, index: usize, what: &str) -> Result<&'r str> {
        match row.get(index)? {
            ValueRef::Text(s) => Ok(s),
            other => Err(self.corrupt(format!("{what} is {}, not TEXT", other.type_name()))),
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::batch::model::{is_corrupt, options, payload, raw};
    use crate::db::Db;
    use crate::schema::quote_ident;
    use crate::value::Value;

    #[test]
    fn damaged_rows_give_clean_corrupt_errors() -> Result<()> {
        let blobs = quote_ident("_db4_batch_hurt_blobs");
        let docs = quote_ident("_db4_batch_hurt_docs");
        let setup = || -> Result<(Db, BatchStore)> {
            let db = Db::open_in_memory()?;
            let store = BatchStore::open(&db, "hurt", options(256))?;
            // a: 20 bytes at 0, b: 21 bytes at 20, then c's 20 dead bytes at 41.
            store.put("a", "first")?;
            store.put("b", "second")?;
            store.put("c", "third")?;
            store.delete("c")?;
            Ok((db, store))
        };
        let set_payload =
            |db: &Db, bytes: Vec<u8>| raw(db, &format!(r#"UPDATE {blobs} SET "payload" = ?1"#), &[Value::Blob(bytes)]);

        // A flipped bit inside a document: the checksum catches it.
        let (db, store) = setup()?;
        let mut bytes = payload(&db, &blobs, 1)?;
        assert_eq!(bytes.len(), 61);
        bytes[38] ^= 0x01;
        set_payload(&db, bytes)?;
        assert!(is_corrupt(store.get::<String>("b")));
        assert_eq!(store.get::<String>("a")?.as_deref(), Some("first"));
        assert!(is_corrupt(store.get_many::<String, _>(["a", "b"])));
        assert!(is_corrupt(store.verify()));
        assert!(is_corrupt(store.compact()));

        // A truncated payload: the slice comes back short, appends refuse the blob.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {blobs} SET "payload" = substr("payload", 1, 30)"#), &[])?;
        assert!(is_corrupt(store.get::<String>("b")));
        assert!(is_corrupt(store.put("c", "third")));
        assert_eq!(store.ids()?, ["a", "b"]);
        assert!(is_corrupt(store.verify()));

        // Header lengths pointing far past the end.
        let (db, store) = setup()?;
        let mut bytes = payload(&db, &blobs, 1)?;
        bytes[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        set_payload(&db, bytes)?;
        assert!(is_corrupt(store.get::<String>("a")));
        assert!(is_corrupt(store.verify()));

        // The payload replaced by text, by an integer.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {blobs} SET "payload" = 'garbage garbage garbage garbage garbage'"#), &[])?;
        assert!(is_corrupt(store.get::<String>("a")));
        assert!(is_corrupt(store.verify()));
        assert!(is_corrupt(store.compact()));
        raw(&db, &format!(r#"UPDATE {blobs} SET "payload" = 7"#), &[])?;
        assert!(is_corrupt(store.get::<String>("a")));

        // Directory rows pointing nowhere, or with impossible numbers.
        for (set, params) in [
            (r#""blob" = 99"#, vec![]),
            (r#""pos" = -5"#, vec![]),
            (r#""len" = -1"#, vec![]),
            (r#""len" = 3"#, vec![]),
            (r#""pos" = ?1"#, vec![Value::Integer(i64::MAX)]),
            (r#""blob" = 'one'"#, vec![]),
        ] {
            let (db, store) = setup()?;
            raw(&db, &format!(r#"UPDATE {docs} SET {set} WHERE "id" = 'b'"#), &params)?;
            assert!(is_corrupt(store.get::<String>("b")), "{set}");
            assert!(is_corrupt(store.verify()), "{set}");
            assert!(is_corrupt(store.compact()), "{set}");
        }

        // Deleting or replacing a document whose blob is gone fails cleanly and changes nothing.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {docs} SET "blob" = 99 WHERE "id" = 'b'"#), &[])?;
        assert!(is_corrupt(store.delete("b")));
        assert!(is_corrupt(store.put("b", "again")));
        assert_eq!(store.ids()?, ["a", "b"]);

        // Two entries swapped in the directory: each one's id check fails.
        let (db, store) = setup()?;
        for (from, to) in [("a", "t"), ("b", "a"), ("t", "b")] {
            let params = [Value::Text(to.into()), Value::Text(from.into())];
            raw(&db, &format!(r#"UPDATE {docs} SET "id" = ?1 WHERE "id" = ?2"#), &params)?;
        }
        assert!(is_corrupt(store.get::<String>("a")));
        assert!(is_corrupt(store.get::<String>("b")));
        assert!(is_corrupt(store.verify()));

        // Counters that disagree with the directory.
        let (db, store) = setup()?;
        raw(&db, &format!(r#"UPDATE {blobs} SET "live_count" = 5"#), &[])?;
        assert!(is_corrupt(store.stats()));
        assert!(is_corrupt(store.verify()));
        Ok(())
    }
}
