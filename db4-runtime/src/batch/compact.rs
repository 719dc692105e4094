//! Compaction: [`BatchStore::compact`] repacks under-filled blobs, dropping their dead bytes,
//! and only when that frees a row or reclaims bytes.

use super::codec::slice_at;
use super::pack::Packer;
use super::sql::int;
use super::{BatchStore, CompactionReport, Entry, Release};
use crate::backend::{Access, Connection, run};
use crate::error::Result;
use crate::value::{Value, ValueRef};
use std::collections::HashMap;

impl BatchStore {
    /// Repacks the blobs whose live documents fill less than
    /// [`BatchOptions::compact_below`](super::BatchOptions::compact_below) of `max_blob_bytes`,
    /// dropping their dead bytes, in one atomic call. Nothing is rewritten unless it frees a row
    /// or reclaims dead bytes; no document is lost or duplicated.
    ///
    /// The blobs repacked are read into memory together.
    ///
    /// # Errors
    ///
    /// A backend error (kind `Corrupt` if an entry to move is damaged; then nothing changes).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> db4_runtime::Result<()> {
    /// use db4_runtime::{BatchOptions, BatchStore, Db};
    ///
    /// let db = Db::open_in_memory()?;
    /// let store = BatchStore::open(&db, "packed", BatchOptions::default().max_blob_bytes(64))?;
    /// for id in ["a", "b", "c", "d", "e", "f"] {
    ///     store.put(id, "0123456789")?; // 12 + 1 + 12 = 25 bytes: two per blob
    /// }
    /// store.delete_many(["b", "d"])?;
    /// assert_eq!(store.stats()?.rows, 3);
    /// let report = store.compact()?;
    /// assert_eq!((report.rows_before, report.rows_after), (3, 2));
    /// assert_eq!(store.len()?, 4);
    /// # Ok(()) }
    /// ```
    pub fn compact(&self) -> Result<CompactionReport> {
        let sql = &self.inner.sql;
        let limit = self.inner.limit;
        let threshold = (limit as f64 * self.inner.options.compact_below).ceil() as u64;
        run(self.db.backend(), Access::Atomic, |conn| {
            let rows_before = self.count(conn, &sql.blob_count)?;
            let unchanged = CompactionReport { rows_before, rows_after: rows_before, ..CompactionReport::default() };
            let mut candidates: Vec<(i64, u64, u64, u64)> = Vec::new();
            conn.query(&sql.candidates, &[int(threshold)], &mut |row| {
                let blob = self.int(row, 0, "blob id")?;
                let used = self.uint(row, 1, "blob size")?;
                let live = self.uint(row, 2, "live bytes")?;
                let count = self.uint(row, 3, "live count")?;
                if live > used {
                    return Err(self.corrupt(format!("blob {blob}: {live} live bytes in {used} bytes")));
                }
                candidates.push((blob, used, live, count));
                Ok(())
            })?;
            let live: u64 = candidates.iter().map(|c| c.2).sum();
            let dead: u64 = candidates.iter().map(|c| c.1 - c.2).sum();
            if dead == 0 && candidates.len() as u64 <= live.div_ceil(limit).max(1) {
                return Ok(unchanged);
            }
            let blob_list =
                Value::Text(serde_json::Value::from(candidates.iter().map(|c| c.0).collect::<Vec<_>>()).to_string());
            let mut payloads: HashMap<i64, Vec<u8>> = HashMap::with_capacity(candidates.len());
            conn.query(&sql.payloads, std::slice::from_ref(&blob_list), &mut |row| {
                let blob = self.int(row, 0, "blob id")?;
                let ValueRef::Blob(payload) = row.get(1)? else {
                    return Err(self.corrupt(format!("blob {blob}: the payload is not a BLOB")));
                };
                payloads.insert(blob, payload.to_vec());
                Ok(())
            })?;
            let mut entries: Vec<Entry> = Vec::new();
            let mut seen: HashMap<i64, Release> = HashMap::new();
            conn.query(&sql.docs_in_blobs, std::slice::from_ref(&blob_list), &mut |row| {
                let id = self.text(row, 0, "document id")?;
                let blob = self.int(row, 1, "blob id")?;
                let pos = self.uint(row, 2, "entry offset")?;
                let len = self.uint(row, 3, "entry length")?;
                let payload = payloads.get(&blob).ok_or_else(|| self.corrupt(format!("blob {blob} vanished")))?;
                let bytes = slice_at(payload, pos, len).ok_or_else(|| {
                    self.corrupt(format!(
                        "document {id:?}: {len} bytes at offset {pos} run past the end of blob {blob}"
                    ))
                })?;
                self.check_entry(bytes, id)?;
                let r = seen.entry(blob).or_default();
                r.bytes += len;
                r.count += 1;
                entries.push(Entry { id: id.to_owned(), bytes: bytes.to_vec() });
                Ok(())
            })?;
            for &(blob, _, live, count) in &candidates {
                let r = seen.get(&blob).copied().unwrap_or_default();
                if (r.bytes, r.count) != (live, count) {
                    return Err(self.corrupt(format!(
                        "blob {blob}: counters say {count} documents of {live} bytes, the directory {} of {}",
                        r.count, r.bytes
                    )));
                }
            }
            entries.sort_by(|a, b| b.bytes.len().cmp(&a.bytes.len()).then_with(|| a.id.cmp(&b.id)));
            let mut packer = Packer::new(limit, self.next_blob_id(conn)?);
            let placed: Vec<(i64, u64)> = entries.iter().map(|e| packer.place(&e.bytes)).collect();
            let new_rows = packer.bins.len();
            if new_rows > candidates.len() || (new_rows == candidates.len() && dead == 0) {
                return Ok(unchanged);
            }
            for &(blob, ..) in &candidates {
                conn.execute(&sql.delete_blob, &[Value::Integer(blob)])?;
            }
            for bin in packer.bins {
                self.insert_bin(conn, bin)?;
            }
            for (entry, (blob, pos)) in entries.iter().zip(placed) {
                conn.execute(&sql.move_doc, &[Value::Text(entry.id.clone()), Value::Integer(blob), int(pos)])?;
            }
            Ok(CompactionReport {
                rows_before,
                rows_after: rows_before - candidates.len() as u64 + new_rows as u64,
                blobs_rewritten: candidates.len() as u64,
                documents_moved: entries.len() as u64,
                bytes_reclaimed: dead,
            })
        })
    }

    fn count(&self, conn: &dyn Connection, sql: &str) -> Result<u64> {
        let mut n = 0;
        conn.query(sql, &[], &mut |row| {
            n = self.uint(row, 0, "count")?;
            Ok(())
        })?;
        Ok(n)
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::batch::model::{Doc, Rng, check, options};
    use crate::db::Db;
    use std::collections::BTreeMap;

    #[test]
    fn compaction_frees_rows_and_keeps_every_document() -> Result<()> {
        let db = Db::open_in_memory()?;
        let store = BatchStore::open(&db, "frag", options(200))?;
        let mut model = BTreeMap::new();
        let mut rng = Rng(42);
        for i in 0..120 {
            let doc = rng.doc(40);
            model.insert(format!("d{i:03}"), doc);
        }
        store.put_many(model.iter())?;
        let full = store.verify()?;
        // Delete two thirds, scattered over every blob.
        for i in (0..120).filter(|i| i % 3 != 0) {
            let id = format!("d{i:03}");
            assert!(store.delete(&id)?);
            model.remove(&id);
        }
        let before = store.verify()?;
        assert!(before.dead_bytes > 0 && before.rows <= full.rows, "{before:?}");
        let report = store.compact()?;
        let after = store.verify()?;
        assert!(after.rows < before.rows && after.dead_bytes == 0, "{report:?} {after:?}");
        assert_eq!(report.rows_after, after.rows);
        // A blob exactly full of kept documents is not a candidate.
        assert!(report.documents_moved > 0 && report.documents_moved <= 40, "{report:?}");
        check(&store, &model)?;
        Ok(())
    }

    #[test]
    fn a_lowered_limit_keeps_old_blobs_readable_and_compactable() -> Result<()> {
        let db = Db::open_in_memory()?;
        let wide = BatchStore::open(&db, "shrink", options(1024))?;
        let mut model = BTreeMap::new();
        for i in 0..20u64 {
            let doc = Doc { n: i, text: "z".repeat(if i % 5 == 0 { 100 } else { 10 }) };
            model.insert(format!("k{i:02}"), doc);
        }
        wide.put_many(model.iter())?;
        let narrow = BatchStore::open(&db, "shrink", options(96))?;
        check(&narrow, &model)?;
        for i in 0..20u64 {
            if i % 2 == 1 {
                let doc = Doc { n: i * 10, text: "w".repeat(5) };
                narrow.put(&format!("k{i:02}"), &doc)?;
                model.insert(format!("k{i:02}"), doc);
            }
        }
        check(&narrow, &model)?;
        narrow.compact()?;
        check(&narrow, &model)?;
        Ok(())
    }
}
