//! The packed entry format, `id_len: u32 | doc_len: u32 | crc32(id ++ doc): u32 | id | doc`
//! (little-endian), and its decoders, which check every length and the checksum and never
//! panic on damaged bytes.

use super::BATCH_ENTRY_OVERHEAD;
use crate::checksum::crc32;
use std::collections::HashMap;

pub(super) fn encode_entry(id: &[u8], doc: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BATCH_ENTRY_OVERHEAD + id.len() + doc.len());
    // Both lengths are below the blob limit, itself far below u32::MAX.
    out.extend_from_slice(&(id.len() as u32).to_le_bytes());
    out.extend_from_slice(&(doc.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&[id, doc]).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(doc);
    out
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// The length of the entry starting at `bytes[0]`, checked to fit in `bytes`.
fn entry_extent(bytes: &[u8]) -> Result<(usize, usize), String> {
    let (Some(id_len), Some(doc_len)) = (read_u32(bytes, 0), read_u32(bytes, 4)) else {
        return Err(format!("truncated entry header ({} bytes)", bytes.len()));
    };
    let (id_len, doc_len) = (id_len as usize, doc_len as usize);
    match BATCH_ENTRY_OVERHEAD.checked_add(id_len).and_then(|n| n.checked_add(doc_len)) {
        Some(total) if total <= bytes.len() => Ok((total, id_len)),
        _ => Err(format!(
            "entry of {id_len} id bytes and {doc_len} document bytes runs past the {} bytes left",
            bytes.len()
        )),
    }
}

/// Decodes exactly one entry: its id and its JSON, after checking lengths and checksum.
pub(super) fn decode_entry(bytes: &[u8]) -> Result<(&str, &[u8]), String> {
    let (total, id_len) = entry_extent(bytes)?;
    if total != bytes.len() {
        return Err(format!("entry is {total} bytes, its slot {}", bytes.len()));
    }
    let crc = read_u32(bytes, 8).ok_or("truncated entry header")?;
    let id = &bytes[BATCH_ENTRY_OVERHEAD..BATCH_ENTRY_OVERHEAD + id_len];
    let doc = &bytes[BATCH_ENTRY_OVERHEAD + id_len..];
    if crc32(&[id, doc]) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let id = std::str::from_utf8(id).map_err(|e| format!("id is not UTF-8: {e}"))?;
    Ok((id, doc))
}

/// Every entry of a payload, live or dead, by offset: (length, id).
pub(super) fn split_entries(payload: &[u8]) -> Result<HashMap<usize, (usize, String)>, String> {
    let mut out = HashMap::new();
    let mut pos = 0;
    while pos < payload.len() {
        let rest = &payload[pos..];
        let (total, _) = entry_extent(rest).map_err(|e| format!("offset {pos}: {e}"))?;
        let (id, _) = decode_entry(&rest[..total]).map_err(|e| format!("offset {pos}: {e}"))?;
        out.insert(pos, (total, id.to_owned()));
        pos += total;
    }
    Ok(out)
}

pub(super) fn slice_at(bytes: &[u8], pos: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(pos).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    bytes.get(start..end)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::batch::model::Rng;

    #[test]
    fn entry_decoding_never_panics() {
        let good = encode_entry(b"id-1", br#"{"k":[1,2,3]}"#);
        assert_eq!(decode_entry(&good), Ok(("id-1", &br#"{"k":[1,2,3]}"#[..])));
        let mut two = good.clone();
        two.extend(encode_entry(b"x", b"null"));
        assert_eq!(split_entries(&two).map(|m| m.len()), Ok(2));
        let mut rng = Rng(5);
        for _ in 0..20_000 {
            let mut bytes = if rng.below(2) == 0 { good.clone() } else { two.clone() };
            match rng.below(4) {
                0 => {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                2 => bytes.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                _ => bytes = (0..rng.below(40)).map(|_| rng.next() as u8).collect(),
            }
            let decoded = decode_entry(&bytes);
            let split = split_entries(&bytes);
            if bytes != good {
                assert!(decoded.is_err(), "{bytes:?}");
            }
            if bytes != good && bytes != two && !bytes.is_empty() {
                assert!(split.is_err(), "{bytes:?}");
            }
        }
        assert!(slice_at(&good, u64::MAX, 1).is_none());
        assert!(slice_at(&good, 1, u64::MAX).is_none());
    }
}
