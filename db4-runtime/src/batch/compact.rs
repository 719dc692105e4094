//! Compaction: [`BatchStore::compact`] repacks under-filled blobs, dropping their dead bytes,
//! and only when that frees a row or reclaims bytes.
//!
//! It runs in either scope. It changes no document, so it reports no change; inside a
//! transaction with a savepoint active it records what undoes it, from what it has read anyway
//! (the repacked blobs' rows and payloads, the moved documents' old places).

use super::codec::slice_at;
use super::pack::Packer;
use super::sql::int;
use super::write::undo;
use super::{BatchStore, CompactionReport, Entry, Release};
use crate::backend::{Access, Connection};
use crate::error::Result;
use crate::txn::Scope;
use crate::value::{Value, ValueRef};
use std::collections::HashMap;
use std::sync::Arc;

impl<S: Scope> BatchStore<S> {
    /// Repacks the blobs whose live documents fill less than
    /// [`BatchOptions::compact_below`](super::BatchOptions::compact_below) of `max_blob_bytes`,
    /// dropping their dead bytes, in one atomic call. Nothing is rewritten unless it frees a row
    /// or reclaims dead bytes; no document is lost or duplicated.
    ///
    /// The blobs repacked are read into memory together (and, inside a transaction with a
    /// savepoint active, kept there until the savepoint goes, to be put back if rolled back to).
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
        let _span = crate::trace::op("batch.compact", Some(self.name()));
        let sql = &self.inner.sql;
        let limit = self.inner.limit;
        let threshold = (limit as f64 * self.inner.options.compact_below).ceil() as u64;
        self.runner().write(Access::Atomic, |w| {
            let conn = w.conn;
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
            // Each entry with the place it moves from.
            let mut entries: Vec<(Entry, (i64, u64))> = Vec::new();
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
                entries.push((Entry { id: id.to_owned(), bytes: bytes.to_vec() }, (blob, pos)));
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
            entries.sort_by(|(a, _), (b, _)| b.bytes.len().cmp(&a.bytes.len()).then_with(|| a.id.cmp(&b.id)));
            let mut packer = Packer::new(limit, self.next_blob_id(conn)?);
            let placed: Vec<(i64, u64)> = entries.iter().map(|(e, _)| packer.place(&e.bytes)).collect();
            let new_rows = packer.bins.len();
            if new_rows > candidates.len() || (new_rows == candidates.len() && dead == 0) {
                return Ok(unchanged);
            }
            for &(blob, used, live, count) in &candidates {
                let payload = payloads.remove(&blob).ok_or_else(|| self.corrupt(format!("blob {blob} vanished")))?;
                conn.execute(&sql.delete_blob, &[Value::Integer(blob)])?;
                undo(&w, || {
                    let row = vec![Value::Integer(blob), Value::Blob(payload), int(used), int(live), int(count)];
                    vec![(Arc::clone(&sql.restore_blob), row)]
                });
            }
            for bin in packer.bins {
                self.insert_bin(&w, bin)?;
            }
            for ((entry, (from_blob, from_pos)), (blob, pos)) in entries.iter().zip(placed) {
                conn.execute(&sql.move_doc, &[Value::Text(entry.id.clone()), Value::Integer(blob), int(pos)])?;
                undo(&w, || {
                    let back = vec![Value::Text(entry.id.clone()), Value::Integer(*from_blob), int(*from_pos)];
                    vec![(Arc::clone(&sql.move_doc), back)]
                });
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
    use crate::batch::model::{Doc, DocRng, Rng, check, options};
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
