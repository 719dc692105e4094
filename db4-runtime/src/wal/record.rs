//! The encoding of one record, the same in memory and on disk (docs/wal.md, "Record"), and
//! its strict reader.
//!
//! All integers little-endian:
//!
//! ```text
//!  0 len u32 | 4 crc u32 | 8 lsn u64 | 16 op u8 | 17 flags u8 | 18 reserved u16 (0)
//! 20 version u64 | 28 tx_id u64 | 36 collection_len u32 | 40 id_len u32
//! 44 before_len u32 | 48 after_len u32 | 52 collection, id, before JSON, after JSON
//! ```
//!
//! `len` counts the whole record; `crc` is the CRC-32 of every byte of it but its own four (0
//! when the log keeps no checksums).

use super::{Lsn, WalEntry, WalOp, WalRecord};
use crate::checksum::crc32;
use crate::error::{Error, Result};
use crate::json;

/// Bytes of a record before its variable part.
pub(crate) const HEADER: usize = 52;

const HAS_VERSION: u8 = 1;
const HAS_TX: u8 = 1 << 1;
const HAS_BEFORE: u8 = 1 << 2;
const HAS_AFTER: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = HAS_VERSION | HAS_TX | HAS_BEFORE | HAS_AFTER;

/// Appends the encoding of `record` at `lsn` to `out`; on error `out` is left as it was.
///
/// # Errors
///
/// [`Error::InvalidValue`] for an image nested too deeply to be read back, [`Error::TooLarge`]
/// for a record above 4 GiB (the caller checks its own, smaller, limit).
pub(crate) fn encode(out: &mut Vec<u8>, lsn: Lsn, record: &WalRecord, checksums: bool) -> Result<()> {
    let start = out.len();
    let result = encode_at(out, start, lsn, record, checksums);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_at(out: &mut Vec<u8>, start: usize, lsn: Lsn, record: &WalRecord, checksums: bool) -> Result<()> {
    out.resize(start + HEADER, 0);
    out.extend_from_slice(record.collection.as_bytes());
    out.extend_from_slice(record.id.as_bytes());
    let before = image(out, record, "before", record.before.as_deref())?;
    let after = image(out, record, "after", record.after.as_deref())?;
    let len = out.len() - start;
    if u32::try_from(len).is_err() {
        return Err(Error::TooLarge {
            collection: record.collection.clone(),
            id: record.id.clone(),
            size: len,
            limit: u32::MAX as usize,
        });
    }
    let mut flags = 0;
    for (present, flag) in [
        (record.version.is_some(), HAS_VERSION),
        (record.tx_id.is_some(), HAS_TX),
        (record.before.is_some(), HAS_BEFORE),
        (record.after.is_some(), HAS_AFTER),
    ] {
        if present {
            flags |= flag;
        }
    }
    let header = &mut out[start..start + HEADER];
    // Every part is shorter than `len`, which fits a u32: the casts are exact.
    header[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[8..16].copy_from_slice(&lsn.get().to_le_bytes());
    header[16] = record.op.code();
    header[17] = flags;
    header[20..28].copy_from_slice(&record.version.unwrap_or(0).to_le_bytes());
    header[28..36].copy_from_slice(&record.tx_id.unwrap_or(0).to_le_bytes());
    header[36..40].copy_from_slice(&(record.collection.len() as u32).to_le_bytes());
    header[40..44].copy_from_slice(&(record.id.len() as u32).to_le_bytes());
    header[44..48].copy_from_slice(&(before as u32).to_le_bytes());
    header[48..52].copy_from_slice(&(after as u32).to_le_bytes());
    if checksums {
        let bytes = &out[start..];
        let crc = crc32(&[&bytes[0..4], &bytes[8..]]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
    Ok(())
}

/// Writes one JSON image, returning its length; refuses text that is not JSON (or nests too
/// deeply for serde_json to read back), which would make the entry unreadable.
fn image(out: &mut Vec<u8>, record: &WalRecord, field: &str, image: Option<&str>) -> Result<usize> {
    let Some(json) = image else { return Ok(0) };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(json) {
        return Err(Error::invalid_value(&record.collection, field, format!("the image is not JSON: {e}")));
    }
    // serde_json skips an ignored value without its depth limit, which reading it into a type
    // would hit. Deeper than MAX_DEPTH takes an opening and a closing bracket per level.
    if json.len() > 2 * json::MAX_DEPTH
        && let Some(path) = json::too_deep(json)
    {
        return Err(Error::invalid_value(
            &record.collection,
            field,
            format!("the image nests deeper than {} levels at {path}: it could not be read back", json::MAX_DEPTH),
        ));
    }
    out.extend_from_slice(json.as_bytes());
    Ok(json.len())
}

/// One record found whole and, if the log keeps checksums, matching its checksum.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    bytes: &'a [u8],
}

/// Why no record could be read at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The bytes end before the record does: `have` bytes, the record says `need` (unknown
    /// when even its length is cut). At the end of a log, a torn write looks like this.
    Incomplete { have: usize, need: Option<usize> },
    /// The record's checksum does not match.
    Checksum { stored: u32, computed: u32 },
    /// The record cannot be what the log wrote.
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Incomplete { have, need: Some(need) } => {
                write!(f, "the record is cut short: {have} of its {need} bytes are there")
            }
            FrameError::Incomplete { have, need: None } => {
                write!(f, "the record is cut short: {have} bytes, less than its length field")
            }
            FrameError::Checksum { stored, computed } => {
                write!(f, "stored checksum {stored:#010x}, computed {computed:#010x}")
            }
            FrameError::Malformed(reason) => f.write_str(reason),
        }
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// Reads the record at the start of `buf`: its length, its checksum (if `checksums`), and a
/// structure the encoder could have written. The images are parsed only by [`decode`].
pub(crate) fn frame(buf: &[u8], checksums: bool) -> Result<Frame<'_>, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Incomplete { have: buf.len(), need: None });
    }
    let len = u32_at(buf, 0) as usize;
    if len < HEADER {
        return Err(FrameError::Malformed(format!("record length {len} is below the {HEADER}-byte header")));
    }
    if len > buf.len() {
        return Err(FrameError::Incomplete { have: buf.len(), need: Some(len) });
    }
    let bytes = &buf[..len];
    if checksums {
        let stored = u32_at(bytes, 4);
        let computed = crc32(&[&bytes[0..4], &bytes[8..]]);
        if stored != computed {
            return Err(FrameError::Checksum { stored, computed });
        }
    }
    let malformed = |reason: String| Err(FrameError::Malformed(reason));
    if WalOp::from_code(bytes[16]).is_none() {
        return malformed(format!("unknown operation code {}", bytes[16]));
    }
    let flags = bytes[17];
    if flags & !KNOWN_FLAGS != 0 {
        return malformed(format!("unknown flags {flags:#04x}"));
    }
    if bytes[18] != 0 || bytes[19] != 0 {
        return malformed("reserved bytes are not zero".into());
    }
    if flags & HAS_VERSION == 0 && u64_at(bytes, 20) != 0 {
        return malformed("a version is stored without its flag".into());
    }
    if flags & HAS_TX == 0 && u64_at(bytes, 28) != 0 {
        return malformed("a transaction id is stored without its flag".into());
    }
    let [collection, id, before, after] = [36, 40, 44, 48].map(|at| u64::from(u32_at(bytes, at)));
    for (name, flag, image_len) in [("before", HAS_BEFORE, before), ("after", HAS_AFTER, after)] {
        if (flags & flag != 0) != (image_len != 0) {
            return malformed(format!("the {name} image's flag and its length ({image_len}) disagree"));
        }
    }
    let parts = HEADER as u64 + collection + id + before + after;
    if parts != len as u64 {
        return malformed(format!("the fields add up to {parts} bytes, the record length is {len}"));
    }
    Ok(Frame { bytes })
}

impl Frame<'_> {
    /// The record's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The LSN the record was written at.
    pub(crate) fn lsn(&self) -> Lsn {
        Lsn::new(u64_at(self.bytes, 8))
    }

    /// The checksum stored with the record.
    pub(crate) fn crc(&self) -> u32 {
        u32_at(self.bytes, 4)
    }
}

/// The entry a framed record holds; `checksummed` says whether its checksum was checked (and
/// so is reported with it).
///
/// # Errors
///
/// What is wrong with it: text that is not UTF-8. (Images were checked to be JSON when
/// appended; the checksum, if kept, says they are unchanged.)
pub(crate) fn decode(frame: Frame<'_>, checksummed: bool) -> Result<WalEntry, String> {
    let b = frame.bytes;
    let op = WalOp::from_code(b[16]).ok_or_else(|| format!("unknown operation code {}", b[16]))?;
    let flags = b[17];
    let lens = [36, 40, 44, 48].map(|at| u32_at(b, at) as usize);
    let mut parts = [&b[0..0]; 4];
    let mut at = HEADER;
    for (part, len) in parts.iter_mut().zip(lens) {
        *part = b.get(at..at + len).ok_or("the fields run past the record")?;
        at += len;
    }
    let text = |bytes: &[u8], what: &str| match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => Err(format!("the {what} is not UTF-8: {e}")),
    };
    let image = |bytes: &[u8], flag: u8, what: &str| (flags & flag != 0).then(|| text(bytes, what)).transpose();
    let record = WalRecord {
        op,
        collection: text(parts[0], "collection name")?,
        id: text(parts[1], "document id")?,
        before: image(parts[2], HAS_BEFORE, "before image")?,
        after: image(parts[3], HAS_AFTER, "after image")?,
        version: (flags & HAS_VERSION != 0).then(|| u64_at(b, 20)),
        tx_id: (flags & HAS_TX != 0).then(|| u64_at(b, 28)),
    };
    Ok(WalEntry { lsn: frame.lsn(), checksum: checksummed.then(|| frame.crc()), record })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records with every field present and absent, every operation, and non-ASCII text.
    pub(crate) fn samples() -> Vec<WalRecord> {
        let mut out = vec![
            WalRecord::insert("users", "u1", r#"{"name":"Alice","n":1.5,"tags":["a","é"]}"#),
            WalRecord::update("users", "u1", r#"{"name":"Alice B."}"#)
                .before(r#" { "name" : "Alice" } "#)
                .version(2)
                .tx_id(7),
            WalRecord::delete("users", "ü-2").before("null").version(u64::MAX),
            WalRecord::commit(u64::MAX),
            WalRecord::new(WalOp::Abort, "", "").tx_id(0),
            WalRecord::new(WalOp::Insert, "c", "").after(r#""""#),
        ];
        for op in WalOp::ALL {
            out.push(WalRecord::new(op, "x".repeat(300), "y"));
        }
        out
    }

    fn encoded(record: &WalRecord, lsn: u64, checksums: bool) -> Vec<u8> {
        let mut out = vec![0xAA; 3];
        encode(&mut out, Lsn::new(lsn), record, checksums).unwrap();
        out.split_off(3)
    }

    #[test]
    fn records_read_back_as_written() -> Result<(), String> {
        for (n, record) in samples().into_iter().enumerate() {
            for checksums in [true, false] {
                let bytes = encoded(&record, n as u64 + 1, checksums);
                let frame = frame(&bytes, checksums).map_err(|e| e.to_string())?;
                assert_eq!(frame.len(), bytes.len());
                let entry = decode(frame, checksums)?;
                assert_eq!(entry.lsn, Lsn::new(n as u64 + 1));
                assert_eq!(entry.record, record);
                assert_eq!(entry.checksum.is_some(), checksums);
                if !checksums {
                    assert_eq!(u32_at(&bytes, 4), 0, "no checksum is stored");
                }
            }
        }
        // The documented layout, byte for byte.
        let bytes = encoded(&WalRecord::delete("c", "id").tx_id(0x0102), 0x0A0B, true);
        assert_eq!(bytes.len(), HEADER + 3);
        assert_eq!(&bytes[0..4], &55u32.to_le_bytes());
        assert_eq!(&bytes[8..16], &0x0A0Bu64.to_le_bytes());
        assert_eq!((bytes[16], bytes[17]), (3, HAS_TX));
        assert_eq!(&bytes[28..36], &0x0102u64.to_le_bytes());
        assert_eq!(&bytes[36..52], &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[52..], b"cid");
        assert_eq!(u32_at(&bytes, 4), crc32(&[&bytes[0..4], &bytes[8..]]));
        Ok(())
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut flips = 0;
        for record in samples() {
            let bytes = encoded(&record, 42, true);
            for bit in 0..bytes.len() * 8 {
                let mut damaged = bytes.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                // Read as the tail of a log or followed by more records: either way, refused.
                for tail in [&[][..], &[0u8; 64][..]] {
                    let buf = [&damaged[..], tail].concat();
                    assert!(frame(&buf, true).is_err(), "bit {bit} of {record:?}");
                    flips += 1;
                }
            }
        }
        assert!(flips > 10_000, "{flips} flips tried");
    }

    #[test]
    fn every_cut_is_incomplete() {
        for record in samples() {
            let bytes = encoded(&record, 1, true);
            for cut in 0..bytes.len() {
                let err = frame(&bytes[..cut], true).unwrap_err();
                assert!(matches!(err, FrameError::Incomplete { .. }), "cut at {cut}: {err}");
            }
        }
    }

    #[test]
    fn structure_is_checked_without_checksums() {
        let bytes = encoded(&WalRecord::delete("c", "id"), 1, false);
        let mut bad = bytes.clone();
        bad[16] = 9;
        assert!(matches!(frame(&bad, false), Err(FrameError::Malformed(m)) if m.contains("operation code 9")));
        let mut bad = bytes.clone();
        bad[0] = 40;
        assert!(matches!(frame(&bad, false), Err(FrameError::Malformed(m)) if m.contains("below")));
        let mut bad = bytes.clone();
        bad[36] = 2;
        assert!(matches!(frame(&bad, false), Err(FrameError::Malformed(m)) if m.contains("add up")));
        let mut bad = bytes;
        bad[52] = 0xFF;
        let framed = frame(&bad, false).unwrap();
        assert!(decode(framed, false).unwrap_err().contains("not UTF-8"));
    }

    #[test]
    fn images_that_are_not_json_are_refused() {
        let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        for (bad, why) in [("", "not JSON"), ("{", "not JSON"), ("[1] x", "not JSON"), ("NaN", "not JSON")] {
            let mut out = b"kept".to_vec();
            let err = encode(&mut out, Lsn::new(1), &WalRecord::insert("c", "i", bad), true).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidValue { field, reason, .. } if field == "after" && reason.contains(why)),
                "{bad:?}: {err:?}"
            );
            assert_eq!(out, b"kept", "nothing was left behind");
        }
        let too_deep = WalRecord::delete("c", "i").before(deep(200));
        let err = encode(&mut Vec::new(), Lsn::new(1), &too_deep, true).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidValue { field, reason, .. } if field == "before" && reason.contains("deeper")),
            "{err:?}"
        );
        // What is accepted reads back with serde_json.
        let ok = WalRecord::insert("c", "i", deep(json::MAX_DEPTH));
        let mut bytes = Vec::new();
        encode(&mut bytes, Lsn::new(1), &ok, true).unwrap();
        let entry = decode(frame(&bytes, true).unwrap(), true).unwrap();
        assert!(entry.record.after_as::<serde_json::Value>().is_ok());
    }
}
