//! The cold segment format (pure: no I/O, builds for wasm32). See `docs/tiers-cold.md`.
//!
//! A segment is gzip-compressed JSON Lines, one line per document,
//! `{"collection":..,"id":..,"version":..,"doc":{..}}`, in id order, written as a
//! concatenation of independent gzip members ("blocks"): `gzip -dc` (or Python's `gzip`)
//! reads the whole file, while db4 fetches and inflates the one block that holds an id. A
//! JSON manifest describes the blocks (byte offset, length, first and last id, count, CRC-32
//! of the compressed bytes), the segment (id range, count, size, CRC-32 of the whole file) and
//! carries a bloom filter over the ids.

use crate::checksum::crc32;
use crate::error::{Error, Result};
use crate::value::Value;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::io::{Read, Write};

/// The format version written in every manifest.
pub(crate) const FORMAT: u32 = 1;
/// A block holds about this many bytes of JSON Lines before compression.
pub(crate) const BLOCK_BYTES: usize = 16 * 1024;
/// Bloom filter bits per id (about 1% false positives with 7 probes).
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_PROBES: u32 = 7;

/// A document as a segment holds it: the stored id, JSON and version column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ColdDoc {
    pub id: Value,
    pub doc: String,
    pub version: Option<i64>,
}

/// One line of a segment.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    collection: &'a str,
    id: serde_json::Value,
    version: Option<i64>,
    #[serde(borrow)]
    doc: &'a serde_json::value::RawValue,
}

/// One block (gzip member) of a segment, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BlockInfo {
    /// Byte offset of the member in the segment file.
    pub offset: u64,
    /// Its length in bytes.
    pub length: u64,
    /// The first and last ids in it.
    pub first: serde_json::Value,
    pub last: serde_json::Value,
    /// Documents in it.
    pub count: u64,
    /// CRC-32 of the member's (compressed) bytes.
    pub crc32: u32,
}

/// A segment's manifest: also stored as `<key>.manifest.json` next to it, and in the hot
/// database's segment table (what reads use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub format: u32,
    /// The segment object's key.
    pub key: String,
    pub collection: String,
    /// `"text"` or `"integer"`: how ids compare.
    pub id_kind: String,
    pub min_id: serde_json::Value,
    pub max_id: serde_json::Value,
    pub count: u64,
    /// The segment file's size in bytes.
    pub bytes: u64,
    /// The JSON Lines' size before compression.
    pub raw_bytes: u64,
    /// CRC-32 of the whole segment file.
    pub crc32: u32,
    pub blocks: Vec<BlockInfo>,
    pub bloom: Bloom,
    /// The smallest and largest value of each indexed field in the segment, for
    /// `include_cold` reads to skip segments that cannot match. Absent from manifests
    /// written before it (then nothing is known, and nothing is skipped by field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldStats>,
    /// The id range, and each block's, as stored ids (filled by [`Manifest::parse`]).
    #[serde(skip)]
    ids: Ranges,
}

#[derive(Debug, Clone, PartialEq)]
struct Ranges {
    min: Value,
    max: Value,
    blocks: Vec<(Value, Value)>,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges { min: Value::Null, max: Value::Null, blocks: Vec::new() }
    }
}

/// The values one field takes in a segment, as the query evaluator reads them from the
/// documents (`query::eval::DocFields`) and orders them (`query::eval::value_cmp`: SQLite's
/// order, numbers before text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FieldStats {
    /// The field's key in the documents.
    pub key: String,
    /// The smallest and largest non-null values (a JSON number or string); both `null` when
    /// every document lacks the field or holds `null` there.
    pub min: serde_json::Value,
    pub max: serde_json::Value,
    /// Documents whose value is `null` (or missing).
    pub nulls: u64,
}

impl FieldStats {
    /// The values of the fields `keys` over `docs` (each document parsed once); a field
    /// with a value that is not a number or a string (a blob, which JSON documents do not
    /// hold) gets none, and none do if a document does not parse.
    fn of(keys: &[&str], docs: &[ColdDoc]) -> Vec<FieldStats> {
        use crate::query::eval::{DocFields, value_cmp};
        // Per field: its smallest and largest values, its nulls, and whether it is usable.
        let mut acc: Vec<(Option<Value>, Option<Value>, u64, bool)> = vec![(None, None, 0, true); keys.len()];
        for d in docs {
            let Ok(fields) = DocFields::parse(&d.doc) else { return Vec::new() };
            for (key, (min, max, nulls, ok)) in keys.iter().zip(acc.iter_mut()) {
                if !*ok {
                    continue;
                }
                let v = fields.value(key);
                match v {
                    Value::Null => {
                        *nulls += 1;
                        continue;
                    }
                    Value::Integer(_) | Value::Text(_) => {}
                    Value::Real(r) if r.is_finite() => {}
                    _ => {
                        *ok = false;
                        continue;
                    }
                }
                if min.as_ref().is_none_or(|m| value_cmp(&v, m) == Ordering::Less) {
                    *min = Some(v.clone());
                }
                if max.as_ref().is_none_or(|m| value_cmp(&v, m) == Ordering::Greater) {
                    *max = Some(v);
                }
            }
        }
        let json = |v: Option<Value>| match v {
            Some(Value::Real(r)) => serde_json::Number::from_f64(r).map_or(serde_json::Value::Null, Into::into),
            Some(v) => id_json(&v),
            None => serde_json::Value::Null,
        };
        keys.iter()
            .zip(acc)
            .filter(|(_, (.., ok))| *ok)
            .map(|(key, (min, max, nulls, _))| FieldStats {
                key: (*key).to_owned(),
                min: json(min),
                max: json(max),
                nulls,
            })
            .collect()
    }

    /// The smallest and largest non-null values as values (`None` if there are none, or the
    /// manifest holds something else there).
    pub(crate) fn range(&self) -> Option<(Value, Value)> {
        Some((stat_value(&self.min)?, stat_value(&self.max)?))
    }
}

/// A value of [`FieldStats`] read back: an integer, a real or a text.
fn stat_value(v: &serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::String(s) => Some(Value::Text(s.clone())),
        serde_json::Value::Number(n) => n.as_i64().map(Value::Integer).or_else(|| n.as_f64().map(Value::Real)),
        _ => None,
    }
}

/// A bloom filter over a segment's ids (see [`bloom_key`] for what is hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Bloom {
    /// Number of bits.
    pub bits: u64,
    /// Number of probes.
    pub probes: u32,
    /// The bit array, lowercase hex, bit `i` in byte `i / 8` at `1 << (i % 8)`.
    pub hex: String,
    #[serde(skip)]
    bytes: Vec<u8>,
}

/// The bytes a bloom filter hashes for an id: `s` then the UTF-8 text, or `i` then the
/// integer's 8 little-endian bytes; the probes are `h1 + i * h2 (mod bits)` with
/// `h1, h2` = xxh3-64 of those bytes with seeds 0 and 1.
fn bloom_key(id: &Value) -> Vec<u8> {
    match id {
        Value::Text(s) => [b"s", s.as_bytes()].concat(),
        Value::Integer(i) => [&b"i"[..], &i.to_le_bytes()].concat(),
        other => [b"o", other.to_string().as_bytes()].concat(),
    }
}

impl Bloom {
    fn with_ids<'a>(ids: impl ExactSizeIterator<Item = &'a Value>) -> Self {
        let bits = (ids.len() * BLOOM_BITS_PER_KEY).max(64) as u64;
        let mut bytes = vec![0u8; bits.div_ceil(8) as usize];
        for id in ids {
            for bit in probes(&bloom_key(id), bits, BLOOM_PROBES) {
                bytes[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
        let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Bloom { bits, probes: BLOOM_PROBES, hex, bytes }
    }

    /// Decodes the hex after reading a manifest.
    fn load(&mut self) -> Option<()> {
        let hex = self.hex.as_bytes();
        if !hex.len().is_multiple_of(2) || self.bits == 0 || (hex.len() / 2) as u64 != self.bits.div_ceil(8) {
            return None;
        }
        let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        self.bytes = hex.chunks(2).map(|p| Some(nib(p[0])? << 4 | nib(p[1])?)).collect::<Option<_>>()?;
        Some(())
    }

    /// Whether `id` may be in the segment (`false`: certainly not).
    pub fn may_contain(&self, id: &Value) -> bool {
        probes(&bloom_key(id), self.bits, self.probes)
            .all(|bit| self.bytes.get((bit / 8) as usize).is_some_and(|b| b & (1 << (bit % 8)) != 0))
    }
}

fn probes(key: &[u8], bits: u64, n: u32) -> impl Iterator<Item = u64> {
    let h1 = xxhash_rust::xxh3::xxh3_64_with_seed(key, 0);
    let h2 = xxhash_rust::xxh3::xxh3_64_with_seed(key, 1);
    (0..u64::from(n)).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// An id as JSON (a string or a number).
pub(crate) fn id_json(id: &Value) -> serde_json::Value {
    match id {
        Value::Text(s) => serde_json::Value::String(s.clone()),
        Value::Integer(i) => serde_json::Value::from(*i),
        other => serde_json::Value::String(other.to_string()),
    }
}

/// An id read from JSON.
pub(crate) fn id_from_json(v: &serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::String(s) => Some(Value::Text(s.clone())),
        serde_json::Value::Number(n) => n.as_i64().map(Value::Integer),
        _ => None,
    }
}

/// How stored ids order (SQLite's: integers numerically, text by bytes).
pub(crate) fn cmp_ids(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Integer(_), _) => Ordering::Less,
        (_, Value::Integer(_)) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), Compression::default());
    enc.write_all(bytes).and_then(|()| enc.finish()).map_err(|e| Error::invalid_query("cold", format!("gzip: {e}")))
}

/// Builds a segment of `docs` (sorted by id, non-empty) under `key`: the file's bytes and its
/// manifest, with the value range of each field of `stats` (keys in the documents).
pub(crate) fn build(key: &str, collection: &str, docs: &[ColdDoc], stats: &[&str]) -> Result<(Vec<u8>, Manifest)> {
    let (Some(first), Some(last)) = (docs.first(), docs.last()) else {
        return Err(Error::invalid_query(collection, "internal: an empty cold segment"));
    };
    let id_kind = if matches!(first.id, Value::Integer(_)) { "integer" } else { "text" };
    let mut file = Vec::new();
    let mut blocks = Vec::new();
    let mut raw_bytes = 0u64;
    let mut lines = Vec::with_capacity(BLOCK_BYTES + 4096);
    let mut start = 0;
    for (i, d) in docs.iter().enumerate() {
        let doc = serde_json::value::RawValue::from_string(d.doc.clone())
            .map_err(|e| Error::serialization(collection, Some(crate::store::codec::id_text(&d.id)), e))?;
        let line = Line { collection, id: id_json(&d.id), version: d.version, doc: &doc };
        serde_json::to_writer(&mut lines, &line)
            .map_err(|e| Error::serialization(collection, Some(crate::store::codec::id_text(&d.id)), e))?;
        lines.push(b'\n');
        if lines.len() >= BLOCK_BYTES || i + 1 == docs.len() {
            let member = gzip(&lines)?;
            raw_bytes += lines.len() as u64;
            blocks.push(BlockInfo {
                offset: file.len() as u64,
                length: member.len() as u64,
                first: id_json(&docs[start].id),
                last: id_json(&d.id),
                count: (i + 1 - start) as u64,
                crc32: crc32(&[&member]),
            });
            file.extend_from_slice(&member);
            lines.clear();
            start = i + 1;
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        key: key.to_owned(),
        collection: collection.to_owned(),
        id_kind: id_kind.to_owned(),
        min_id: id_json(&first.id),
        max_id: id_json(&last.id),
        count: docs.len() as u64,
        bytes: file.len() as u64,
        raw_bytes,
        crc32: crc32(&[&file]),
        blocks,
        bloom: Bloom::with_ids(docs.iter().map(|d| &d.id)),
        fields: FieldStats::of(stats, docs),
        ids: Ranges::default(),
    };
    Ok((file, manifest))
}

/// The error for a damaged or missing segment.
pub(crate) fn damaged(collection: &str, key: &str, what: impl std::fmt::Display) -> Error {
    Error::corrupted(collection, None, format!("cold segment {key}: {what}"))
}

impl Manifest {
    /// Reads a manifest (JSON text), checking what reads rely on.
    pub(crate) fn parse(collection: &str, key: &str, json: &str) -> Result<Manifest> {
        let mut m: Manifest =
            serde_json::from_str(json).map_err(|e| damaged(collection, key, format!("bad manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(damaged(collection, key, format!("unknown format version {}", m.format)));
        }
        m.bloom.load().ok_or_else(|| damaged(collection, key, "bad bloom filter in the manifest"))?;
        let bad = || damaged(collection, key, "bad manifest");
        let blocks = m
            .blocks
            .iter()
            .map(|b| Some((id_from_json(&b.first)?, id_from_json(&b.last)?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        let (Some(min), Some(max)) = (id_from_json(&m.min_id), id_from_json(&m.max_id)) else { return Err(bad()) };
        if m.key != key || !blocks.windows(2).all(|w| cmp_ids(&w[0].1, &w[1].0) == Ordering::Less) {
            return Err(bad());
        }
        m.ids = Ranges { min, max, blocks };
        Ok(m)
    }

    /// The manifest as JSON text.
    pub(crate) fn to_json(&self) -> String {
        // A struct of strings, numbers and vectors: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub(crate) fn min(&self) -> Value {
        id_from_json(&self.min_id).unwrap_or(Value::Null)
    }

    pub(crate) fn max(&self) -> Value {
        id_from_json(&self.max_id).unwrap_or(Value::Null)
    }

    /// Whether `id` may be in the segment: within its id range and in its bloom filter (of a
    /// parsed manifest).
    pub(crate) fn may_contain(&self, id: &Value) -> bool {
        cmp_ids(id, &self.ids.min) != Ordering::Less
            && cmp_ids(id, &self.ids.max) != Ordering::Greater
            && self.bloom.may_contain(id)
    }

    /// The block whose id range holds `id`, if any (of a parsed manifest): a binary search.
    pub(crate) fn block_for(&self, id: &Value) -> Option<&BlockInfo> {
        let i = self.ids.blocks.partition_point(|(_, last)| cmp_ids(last, id) == Ordering::Less);
        let (first, _) = self.ids.blocks.get(i)?;
        (cmp_ids(id, first) != Ordering::Less).then(|| self.blocks.get(i)).flatten()
    }
}

/// Decodes one block's bytes: checks the CRC-32, inflates the gzip member, parses its lines.
pub(crate) fn decode_block(manifest: &Manifest, block: &BlockInfo, bytes: &[u8]) -> Result<Vec<ColdDoc>> {
    let (collection, key) = (manifest.collection.as_str(), manifest.key.as_str());
    if bytes.len() as u64 != block.length {
        return Err(damaged(collection, key, format!("block at {} is cut short", block.offset)));
    }
    if crc32(&[bytes]) != block.crc32 {
        return Err(damaged(collection, key, format!("checksum mismatch in the block at {}", block.offset)));
    }
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| damaged(collection, key, format!("bad gzip in the block at {}: {e}", block.offset)))?;
    let mut out = Vec::with_capacity(block.count as usize);
    for line in text.lines() {
        let parsed: Line<'_> =
            serde_json::from_str(line).map_err(|e| damaged(collection, key, format!("bad JSON line: {e}")))?;
        let id = id_from_json(&parsed.id).ok_or_else(|| damaged(collection, key, "bad id in a line"))?;
        if parsed.collection != collection {
            return Err(damaged(collection, key, "a line of another collection"));
        }
        out.push(ColdDoc { id, doc: parsed.doc.get().to_owned(), version: parsed.version });
    }
    if out.len() as u64 != block.count {
        return Err(damaged(collection, key, format!("the block at {} holds the wrong count", block.offset)));
    }
    Ok(out)
}

/// Finds `id` in one block's bytes: checks the CRC-32, inflates the gzip member, and parses
/// only the line that starts with the id (lines start `{"collection":..,"id":..,`).
pub(crate) fn find_in_block(
    manifest: &Manifest,
    block: &BlockInfo,
    bytes: &[u8],
    id: &Value,
) -> Result<Option<ColdDoc>> {
    let (collection, key) = (manifest.collection.as_str(), manifest.key.as_str());
    if bytes.len() as u64 != block.length {
        return Err(damaged(collection, key, format!("block at {} is cut short", block.offset)));
    }
    if crc32(&[bytes]) != block.crc32 {
        return Err(damaged(collection, key, format!("checksum mismatch in the block at {}", block.offset)));
    }
    let mut text = String::new();
    GzDecoder::new(bytes)
        .read_to_string(&mut text)
        .map_err(|e| damaged(collection, key, format!("bad gzip in the block at {}: {e}", block.offset)))?;
    let prefix = format!("{{\"collection\":{},\"id\":{},", serde_json::Value::from(collection), id_json(id));
    let Some(line) = text.lines().find(|l| l.starts_with(&prefix)) else { return Ok(None) };
    let parsed: Line<'_> =
        serde_json::from_str(line).map_err(|e| damaged(collection, key, format!("bad JSON line: {e}")))?;
    Ok(Some(ColdDoc { id: id.clone(), doc: parsed.doc.get().to_owned(), version: parsed.version }))
}

/// Decodes a whole segment file, checking the file's CRC-32 and each block's.
pub(crate) fn decode_all(manifest: &Manifest, file: &[u8]) -> Result<Vec<ColdDoc>> {
    if file.len() as u64 != manifest.bytes || crc32(&[file]) != manifest.crc32 {
        return Err(damaged(&manifest.collection, &manifest.key, "checksum mismatch"));
    }
    let mut out = Vec::with_capacity(manifest.count as usize);
    for block in &manifest.blocks {
        let range = usize::try_from(block.offset).ok().and_then(|s| Some(s..s.checked_add(block.length as usize)?));
        let bytes = range
            .and_then(|r| file.get(r))
            .ok_or_else(|| damaged(&manifest.collection, &manifest.key, "a block beyond the end"))?;
        out.extend(decode_block(manifest, block, bytes)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n: usize) -> Vec<ColdDoc> {
        let mut d: Vec<_> = (0..n)
            .map(|i| ColdDoc {
                id: Value::Text(format!("id-{i:05}")),
                doc: format!(r#"{{"id":"id-{i:05}","body":"{}","n":{i}}}"#, "x".repeat(i % 300)),
                version: Some(i as i64),
            })
            .collect();
        d.sort_by(|a, b| cmp_ids(&a.id, &b.id));
        d
    }

    #[test]
    fn round_trip_blocks_bloom_and_damage() -> Result<()> {
        let all = docs(3000);
        let (file, manifest) = build("c/1-0.jsonl.gz", "c", &all, &["n", "body", "none"])?;
        assert!(manifest.blocks.len() > 2, "several blocks");
        let m = Manifest::parse("c", "c/1-0.jsonl.gz", &manifest.to_json())?;
        assert_eq!(decode_all(&m, &file)?, all);
        let n = m.fields.iter().find(|f| f.key == "n").and_then(FieldStats::range);
        assert_eq!(n, Some((Value::Integer(0), Value::Integer(2999))));
        let none = m.fields.iter().find(|f| f.key == "none").expect("a field no document has");
        assert_eq!((none.range(), none.nulls), (None, 3000));
        // A manifest without field statistics (written before them) still reads.
        let mut old: serde_json::Value = serde_json::from_str(&manifest.to_json()).expect("json");
        old.as_object_mut().expect("an object").remove("fields");
        let old = Manifest::parse("c", "c/1-0.jsonl.gz", &old.to_string())?;
        assert!(old.fields.is_empty());
        assert_eq!(decode_all(&old, &file)?, all);
        for d in &all {
            assert!(m.may_contain(&d.id));
            let b = m.block_for(&d.id).expect("a block");
            let bytes = &file[b.offset as usize..(b.offset + b.length) as usize];
            assert!(decode_block(&m, b, bytes)?.contains(d));
        }
        let misses = (0..1000).filter(|i| m.may_contain(&Value::Text(format!("zz-{i}")))).count();
        assert_eq!(misses, 0, "out of range");
        let fp = (0..1000).filter(|i| m.may_contain(&Value::Text(format!("id-{i:05}x")))).count();
        assert!(fp < 50, "bloom false positives: {fp}");
        let mut bad = file.clone();
        bad[10] ^= 1;
        assert!(matches!(decode_all(&m, &bad), Err(Error::Corrupted { .. })));
        Ok(())
    }
}
