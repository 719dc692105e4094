//! Space accounting and consistency checks: [`BatchStore::stats`] from the per-blob counters
//! (no payload read), [`BatchStore::verify`] from every payload, entry by entry. Both read
//! through the store's scope, so inside a transaction they check what it has written.

use super::codec::split_entries;
use super::sql::int;
use super::{BatchStats, BatchStore};
use crate::backend::{Access, Connection, run};
use crate::error::Result;
use crate::txn::{Runner, Scope};
use crate::value::ValueRef;
use std::collections::HashMap;

impl<S: Scope> BatchStore<S> {
    /// Counts documents, rows and bytes, from the per-blob counters (one query, no payload
    /// read).
    ///
    /// # Errors
    ///
    /// A backend error of kind `Corrupt` if the directory and the blob counters disagree.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "stats", Default::default())?;
    /// store.put("a", &1)?;
    /// store.put("a", &2)?; // the first version becomes dead bytes
    /// let stats = store.stats()?;
    /// assert_eq!(stats.live_bytes, 14);
    /// assert_eq!(stats.dead_bytes, 14);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<BatchStats> {
        let _span = crate::trace::op("batch.stats", Some(self.name()));
        let mut out = None;
        self.runner().read(|conn| {
            conn.query(&self.inner.sql.stats, &[int(self.inner.limit)], &mut |row| {
                let documents = self.uint(row, 0, "document count")?;
                let doc_bytes = self.uint(row, 1, "document bytes")?;
                let rows = self.uint(row, 2, "blob count")?;
                let allocated_bytes = self.uint(row, 3, "blob sizes")?;
                let live_bytes = self.uint(row, 4, "live bytes")?;
                let live_count = self.uint(row, 5, "live count")?;
                let free_bytes = self.uint(row, 6, "free bytes")?;
                if documents != live_count || doc_bytes != live_bytes || live_bytes > allocated_bytes {
                    return Err(self.corrupt(format!(
                        "the directory holds {documents} documents of {doc_bytes} bytes but the blobs count {live_count} documents of {live_bytes} bytes in {allocated_bytes} bytes"
                    )));
                }
                out = Some(BatchStats {
                    documents,
                    rows,
                    live_bytes,
                    allocated_bytes,
                    dead_bytes: allocated_bytes - live_bytes,
                    free_bytes,
                    row_limit: self.inner.limit,
                });
                Ok(())
            })
        })?;
        out.ok_or_else(|| self.corrupt("the statistics query returned no row"))
    }

    /// Reads every blob and checks that each entry decodes (lengths, checksum, UTF-8 id),
    /// that each directory row points at an entry with its id, and that the counters match;
    /// returns the statistics so checked.
    ///
    /// # Errors
    ///
    /// A backend error of kind `Corrupt` naming the first inconsistency found.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// # let db = db4_runtime::Db::open_in_memory()?;
    /// let store = db4_runtime::BatchStore::open(&db, "checked", Default::default())?;
    /// store.put("a", "text")?;
    /// assert_eq!(store.verify()?, store.stats()?);
    /// # Ok(()) }
    /// ```
    pub fn verify(&self) -> Result<BatchStats> {
        let _span = crate::trace::op("batch.verify", Some(self.name()));
        match self.runner() {
            // Atomic: two statements must see the same state, which a WAL reader does not promise.
            Runner::Db(db) => run(db.backend(), Access::Atomic, |conn| self.check_all(conn)),
            // A transaction's connection sees one state: its own.
            Runner::Tx(tx) => self.check_all(tx.conn()?),
        }
    }

    fn check_all(&self, conn: &dyn Connection) -> Result<BatchStats> {
        let sql = &self.inner.sql;
        let mut docs: HashMap<i64, Vec<(u64, u64, String)>> = HashMap::new();
        let mut documents = 0u64;
        conn.query(&sql.all_docs, &[], &mut |row| {
            let id = self.text(row, 0, "document id")?.to_owned();
            let blob = self.int(row, 1, "blob id")?;
            let pos = self.uint(row, 2, "entry offset")?;
            let len = self.uint(row, 3, "entry length")?;
            docs.entry(blob).or_default().push((pos, len, id));
            documents += 1;
            Ok(())
        })?;
        let mut stats = BatchStats { documents, row_limit: self.inner.limit, ..BatchStats::default() };
        conn.query(&sql.all_blobs, &[], &mut |row| {
            let blob = self.int(row, 0, "blob id")?;
            let ValueRef::Blob(payload) = row.get(1)? else {
                return Err(self.corrupt(format!("blob {blob}: the payload is not a BLOB")));
            };
            let used = self.uint(row, 2, "blob size")?;
            let live_bytes = self.uint(row, 3, "live bytes")?;
            let live_count = self.uint(row, 4, "live count")?;
            if used != payload.len() as u64 {
                return Err(self.corrupt(format!("blob {blob}: {} bytes, recorded as {used}", payload.len())));
            }
            let entries = split_entries(payload).map_err(|e| self.corrupt(format!("blob {blob}: {e}")))?;
            let mine = docs.remove(&blob).unwrap_or_default();
            let (mut bytes, mut count) = (0u64, 0u64);
            for (pos, len, id) in &mine {
                let at = usize::try_from(*pos).ok().and_then(|p| entries.get(&p));
                match at {
                    Some((entry_len, entry_id)) if *entry_len as u64 == *len && entry_id == id => {}
                    _ => {
                        return Err(self.corrupt(format!(
                            "document {id:?} points at blob {blob} offset {pos}, where no entry of it starts"
                        )));
                    }
                }
                bytes += len;
                count += 1;
            }
            if bytes != live_bytes || count != live_count || count == 0 {
                return Err(self.corrupt(format!(
                    "blob {blob}: counters say {live_count} documents of {live_bytes} bytes, the directory {count} of {bytes}"
                )));
            }
            stats.rows += 1;
            stats.allocated_bytes += used;
            stats.live_bytes += live_bytes;
            stats.free_bytes += self.inner.limit.saturating_sub(used);
            Ok(())
        })?;
        if let Some((blob, list)) = docs.iter().next() {
            let id = list.first().map(|d| d.2.as_str()).unwrap_or_default();
            return Err(self.corrupt(format!("document {id:?} points at missing blob {blob}")));
        }
        stats.dead_bytes = stats.allocated_bytes - stats.live_bytes;
        Ok(stats)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::batch::CompactionReport;
    use crate::batch::model::options;
    use crate::db::Db;

    #[test]
    fn stats_are_exact() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "exact", options(64))?;
        let empty = BatchStats { row_limit: 64, ..BatchStats::default() };
        assert_eq!(store.stats()?, empty);
        // "\"xxxx\"" is 6 bytes: 12 + 1 + 6 = 19 per entry; three fit in 64.
        for id in ["a", "b", "c", "d"] {
            store.put(id, "xxxx")?;
        }
        let stats = BatchStats {
            documents: 4,
            rows: 2,
            live_bytes: 76,
            allocated_bytes: 76,
            dead_bytes: 0,
            free_bytes: (64 - 57) + (64 - 19),
            row_limit: 64,
        };
        assert_eq!(store.stats()?, stats);
        assert_eq!(store.verify()?, stats);
        assert_eq!(stats.capacity_bytes(), 128);
        assert_eq!(stats.fill_ratio(), 76.0 / 128.0);
        // 17 bytes: no room in the first blob (7 left), so best fit is the second.
        store.put("a", "xx")?;
        let stats = BatchStats { live_bytes: 74, allocated_bytes: 93, dead_bytes: 19, free_bytes: 7 + 28, ..stats };
        assert_eq!(store.stats()?, stats);
        assert!(store.delete("b")?);
        let stats = BatchStats { documents: 3, live_bytes: 55, dead_bytes: 38, ..stats };
        assert_eq!(store.verify()?, stats);
        let report = store.compact()?;
        assert_eq!(
            report,
            CompactionReport {
                rows_before: 2,
                rows_after: 1,
                blobs_rewritten: 2,
                documents_moved: 3,
                bytes_reclaimed: 38
            }
        );
        assert_eq!(report.rows_freed(), 1);
        let stats = BatchStats {
            documents: 3,
            rows: 1,
            live_bytes: 55,
            allocated_bytes: 55,
            dead_bytes: 0,
            free_bytes: 9,
            row_limit: 64,
        };
        assert_eq!(store.verify()?, stats);
        // Nothing left to gain: a second compaction changes nothing.
        assert_eq!(store.compact()?, CompactionReport { rows_before: 1, rows_after: 1, ..CompactionReport::default() });
        assert_eq!(store.get::<String>("a")?.as_deref(), Some("xx"));
        assert_eq!(store.delete_many(["a", "c", "d"])?, 3);
        assert_eq!(store.verify()?, empty);
        Ok(())
    }
}
