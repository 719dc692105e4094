//! Reading documents: [`BatchStore::get`], [`get_many`](BatchStore::get_many),
//! [`contains`](BatchStore::contains), [`ids`](BatchStore::ids), [`len`](BatchStore::len) and
//! [`is_empty`](BatchStore::is_empty). Each is one read query; entries are checked by the strict
//! readers of `rows.rs` before their JSON is decoded.

use super::BatchStore;
use super::sql::id_list;
use crate::error::Result;
use crate::txn::Scope;
use crate::value::Value;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

impl<S: Scope> BatchStore<S> {
    /// Reads the document stored under `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`](crate::Error::InvalidValue) for an empty id,
    /// [`Error::Serialization`](crate::Error::Serialization) if the stored JSON does not
    /// deserialize into `T`, a backend error of kind `Corrupt` if the stored bytes are damaged.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "names", Default::default())?;
    /// store.put("u1", "Ada")?;
    /// assert_eq!(store.get::<String>("u1")?.as_deref(), Some("Ada"));
    /// assert_eq!(store.get::<String>("u2")?, None);
    /// # Ok(()) }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        let _span = crate::trace::op("batch.get", Some(self.name()));
        self.check_id(id)?;
        let mut out = None;
        self.runner().read(|conn| {
            conn.query(&self.inner.sql.get_one, &[Value::Text(id.to_owned())], &mut |row| {
                let doc = self.entry_in_row(row, 0, id)?;
                out = Some(serde_json::from_slice(doc).map_err(|e| self.serialization(id, e))?);
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// Reads many documents in one query. The result is aligned with `ids`: `None` where no
    /// document has that id.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "nums", Default::default())?;
    /// store.put_many([("a", &1), ("c", &3)])?;
    /// assert_eq!(store.get_many::<i32, _>(["a", "b", "c"])?, [Some(1), None, Some(3)]);
    /// # Ok(()) }
    /// ```
    pub fn get_many<T: DeserializeOwned, K: AsRef<str>>(
        &self,
        ids: impl IntoIterator<Item = K>,
    ) -> Result<Vec<Option<T>>> {
        let _span = crate::trace::op("batch.get_many", Some(self.name()));
        let ids: Vec<String> = ids.into_iter().map(|id| id.as_ref().to_owned()).collect();
        ids.iter().try_for_each(|id| self.check_id(id))?;
        let mut positions: HashMap<&str, Vec<usize>> = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            positions.entry(id.as_str()).or_default().push(i);
        }
        let mut out: Vec<Option<T>> = std::iter::repeat_with(|| None).take(ids.len()).collect();
        if ids.is_empty() {
            return Ok(out);
        }
        let list = id_list(positions.keys());
        self.runner().read(|conn| {
            conn.query(&self.inner.sql.get_many, std::slice::from_ref(&list), &mut |row| {
                let id = self.text(row, 0, "document id")?;
                let doc = self.entry_in_row(row, 1, id)?;
                // A repeated id gets its own decoded copy at each position.
                for &pos in positions.get(id).map_or(&[][..], Vec::as_slice) {
                    out[pos] = Some(serde_json::from_slice(doc).map_err(|e| self.serialization(id, e))?);
                }
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// Whether a document is stored under `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidValue`](crate::Error::InvalidValue) for an empty id, or a backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "flags", Default::default())?;
    /// store.put("on", &true)?;
    /// assert!(store.contains("on")? && !store.contains("off")?);
    /// # Ok(()) }
    /// ```
    pub fn contains(&self, id: &str) -> Result<bool> {
        let _span = crate::trace::op("batch.contains", Some(self.name()));
        self.check_id(id)?;
        let mut found = false;
        self.runner().read(|conn| {
            conn.query(&self.inner.sql.contains, &[Value::Text(id.to_owned())], &mut |_| {
                found = true;
                Ok(())
            })
        })?;
        Ok(found)
    }

    /// The ids of all stored documents, sorted.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "ids", Default::default())?;
    /// store.put_many([("b", &()), ("a", &())])?;
    /// assert_eq!(store.ids()?, ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn ids(&self) -> Result<Vec<String>> {
        let _span = crate::trace::op("batch.ids", Some(self.name()));
        let mut out = Vec::new();
        self.runner().read(|conn| {
            conn.query(&self.inner.sql.ids, &[], &mut |row| {
                out.push(self.text(row, 0, "document id")?.to_owned());
                Ok(())
            })
        })?;
        Ok(out)
    }

    /// How many documents the store holds.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "count", Default::default())?;
    /// store.put("x", &0)?;
    /// assert_eq!(store.len()?, 1);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> Result<u64> {
        let _span = crate::trace::op("batch.len", Some(self.name()));
        let mut n = 0;
        self.runner().read(|conn| {
            conn.query(&self.inner.sql.count, &[], &mut |row| {
                n = self.uint(row, 0, "document count")?;
                Ok(())
            })
        })?;
        Ok(n)
    }

    /// Whether the store holds no document.
    ///
    /// # Errors
    ///
    /// A backend error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "count", Default::default())?;
    /// assert!(store.is_empty()?);
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::batch::BatchOptions;
    use crate::db::Db;

    #[test]
    fn get_many_is_aligned_and_repeats_ids() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "many", BatchOptions::default())?;
        store.put_many([("a", &1), ("b", &2), ("a", &3)])?;
        assert_eq!(store.get::<i32>("a")?, Some(3));
        assert_eq!(store.get_many::<i32, _>(["b", "zz", "a", "b"])?, [Some(2), None, Some(3), Some(2)]);
        assert_eq!(store.get_many::<i32, &str>([])?, Vec::<Option<i32>>::new());
        // The repeated id in put_many cost no dead bytes.
        assert_eq!(store.stats()?.dead_bytes, 0);
        store.put_many(std::iter::empty::<(&str, &i32)>())?;
        assert_eq!(store.delete_many(["a", "a"])?, 1);
        Ok(())
    }
}
