//! Keyset cursors: a position in an index (the key of one row), encoded as base64url, and
//! signed with a keyed MAC under a secret kept in the database, over the position *and* the
//! range it came from (index, direction, prefix, bounds, filter). The format is in
//! `docs/range.md`.

use crate::error::{Error, Result};
pub(crate) use crate::store::secret::CursorKey;
use crate::store::secret::MAC_BYTES;
use crate::value::{Value, ValueRef};
use std::fmt;

/// The format written in a cursor's first byte.
const VERSION: u8 = 1;
/// The longest cursor text [`Cursor::parse`] reads; longer input is refused before decoding.
pub const MAX_CURSOR_CHARS: usize = 16 * 1024;

/// The flag of a position that includes the row at its key (the `prev` of an empty page).
const FLAG_INCLUSIVE: u8 = 1;

const TAG_NULL: u8 = 0;
const TAG_INTEGER: u8 = 1;
const TAG_REAL: u8 = 2;
const TAG_TEXT: u8 = 3;

/// A position in a range: where a [`Page`](crate::Page) ended (`next`) or began (`prev`),
/// for [`Range::after`](crate::Range::after) and [`Range::before`](crate::Range::before).
///
/// Opaque and tamper-evident: its text (base64url, from [`to_string`](ToString::to_string))
/// holds the key of one row and a MAC under a secret kept in the database, over that key and
/// the range the cursor came from. A cursor edited, truncated, made up, from another database
/// or used with another index, direction, prefix, bounds or filter is refused with
/// [`Error::InvalidCursor`](crate::Error::InvalidCursor) when the range runs. It stays valid
/// across restarts, writes and schema changes that keep the index; the page size may change
/// from page to page.
///
/// The key values are readable by whoever holds the text (they are encoded, not encrypted):
/// do not hand out cursors over fields the holder must not see.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The decoded bytes: version, values, MAC.
    bytes: Vec<u8>,
}

impl Cursor {
    /// Reads a cursor from its text (what [`to_string`](ToString::to_string) wrote).
    ///
    /// Only the form is checked here; whether the cursor belongs to a range (its MAC) is
    /// checked when it is used.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`](crate::Error::InvalidCursor) for text that is not a cursor of
    /// this format: not base64url, cut short, too long, an unknown version, damaged values.
    pub fn parse(text: &str) -> Result<Cursor> {
        if text.len() > MAX_CURSOR_CHARS {
            return Err(Error::invalid_cursor(format!("longer than {MAX_CURSOR_CHARS} characters")));
        }
        let bytes = base64url_decode(text).ok_or_else(|| Error::invalid_cursor("not base64url text"))?;
        let cursor = Cursor { bytes };
        cursor.values()?;
        Ok(cursor)
    }

    /// The key values the cursor holds, after checking its form.
    pub(crate) fn values(&self) -> Result<Vec<Value>> {
        self.decoded().map(|(_, values)| values)
    }

    /// Whether the position includes the row at its key, and the key's values.
    pub(crate) fn decoded(&self) -> Result<(bool, Vec<Value>)> {
        let bad = |what: &str| Error::invalid_cursor(what.to_owned());
        let Some((&version, rest)) = self.bytes.split_first() else { return Err(bad("empty")) };
        if version != VERSION {
            return Err(Error::invalid_cursor(format!("unknown cursor version {version}")));
        }
        if rest.len() < MAC_BYTES + 2 {
            return Err(bad("cut short"));
        }
        let body = &rest[..rest.len() - MAC_BYTES];
        let (&flags, body) = body.split_first().ok_or_else(|| bad("cut short"))?;
        if flags > FLAG_INCLUSIVE {
            return Err(bad("unknown flags"));
        }
        let (&count, mut body) = body.split_first().ok_or_else(|| bad("cut short"))?;
        if count == 0 {
            return Err(bad("holds no key"));
        }
        let mut values = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let (value, rest) = decode_value(body).ok_or_else(|| bad("damaged key"))?;
            values.push(value);
            body = rest;
        }
        if !body.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok((flags == FLAG_INCLUSIVE, values))
    }

    fn signed(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.bytes.len().saturating_sub(MAC_BYTES))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64url_encode(&self.bytes))
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({self})")
    }
}

impl std::str::FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cursor> {
        Cursor::parse(s)
    }
}

/// Signs and checks cursors with the database's secret (kept in `_db4_meta`).
pub(crate) trait CursorSigner {
    /// A cursor at `values` (the key of a row) for the range described by `context`;
    /// `inclusive` when the position includes that row.
    fn sign(&self, context: &[u8], values: &[ValueRef<'_>], inclusive: bool) -> Cursor;

    /// The key `cursor` holds, if it was signed by this key for the range `context` and holds
    /// `expected` values.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCursor`] otherwise.
    fn verify(&self, context: &[u8], cursor: &Cursor, expected: usize) -> Result<(bool, Vec<Value>)>;
}

impl CursorSigner for CursorKey {
    fn sign(&self, context: &[u8], values: &[ValueRef<'_>], inclusive: bool) -> Cursor {
        let flags = if inclusive { FLAG_INCLUSIVE } else { 0 };
        let mut bytes = vec![VERSION, flags, u8::try_from(values.len()).unwrap_or(u8::MAX)];
        for v in values {
            encode_value(&mut bytes, *v);
        }
        let tag = self.tag(context, &bytes);
        bytes.extend_from_slice(&tag[..MAC_BYTES]);
        Cursor { bytes }
    }

    fn verify(&self, context: &[u8], cursor: &Cursor, expected: usize) -> Result<(bool, Vec<Value>)> {
        let (inclusive, values) = cursor.decoded()?;
        let (signed, tag) = cursor.signed();
        if !self.check(context, signed, tag) {
            return Err(Error::invalid_cursor(
                "it was not issued by this database for this range (another index, direction, prefix, bounds or \
                 filter), or it was altered",
            ));
        }
        if values.len() != expected {
            return Err(Error::invalid_cursor(format!(
                "it holds {} keys where this index has {expected}",
                values.len()
            )));
        }
        Ok((inclusive, values))
    }
}

/// Appends a value: a tag, then a zigzag LEB128 integer, 8 bytes of float, or a LEB128
/// length and UTF-8 text. (Blobs never reach a key: JSON holds none.)
pub(crate) fn encode_value(out: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null | ValueRef::Blob(_) => out.push(TAG_NULL),
        ValueRef::Integer(i) => {
            out.push(TAG_INTEGER);
            leb128(out, ((i << 1) ^ (i >> 63)) as u64);
        }
        ValueRef::Real(r) => {
            out.push(TAG_REAL);
            out.extend_from_slice(&r.to_bits().to_le_bytes());
        }
        ValueRef::Text(s) => {
            out.push(TAG_TEXT);
            leb128(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn leb128(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb128(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return None;
        }
        n |= part << (7 * i);
        if b & 0x80 == 0 {
            // One spelling per number: no trailing zero groups.
            if i > 0 && b == 0 {
                return None;
            }
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

fn decode_value(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    match tag {
        TAG_NULL => Some((Value::Null, rest)),
        TAG_INTEGER => {
            let (z, rest) = read_leb128(rest)?;
            Some((Value::Integer(((z >> 1) as i64) ^ -((z & 1) as i64)), rest))
        }
        TAG_REAL => {
            let raw: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            let r = f64::from_bits(u64::from_le_bytes(raw));
            r.is_finite().then_some((Value::Real(r), &rest[8..]))
        }
        TAG_TEXT => {
            let (len, rest) = read_leb128(rest)?;
            let len = usize::try_from(len).ok()?;
            let text = std::str::from_utf8(rest.get(..len)?).ok()?;
            Some((Value::Text(text.to_owned()), &rest[len..]))
        }
        _ => None,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (RFC 4648 §5).
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Decodes base64url without padding; `None` for any other character, a dangling
/// character, or unused bits that are not zero (so each cursor has one spelling).
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|p| p as u32);
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= sextet(c)? << (18 - 6 * i);
        }
        let produced = chunk.len() - 1;
        if n & ((1 << (24 - 8 * produced)) - 1) != 0 {
            return None;
        }
        for i in 0..produced {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_and_is_strict() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url_encode(&bytes);
            assert!(!text.contains(['+', '/', '=']));
            assert_eq!(base64url_decode(&text).as_deref(), Some(&bytes[..]), "{text}");
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert!(base64url_decode("-_9").is_none(), "non-zero unused bits");
        assert!(base64url_decode("A").is_none());
        assert!(base64url_decode("ab=c").is_none());
    }

    #[test]
    fn values_round_trip() {
        let values = [
            Value::Null,
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Integer(-1),
            Value::Integer(0),
            Value::Real(-0.5),
            Value::Text(String::new()),
            Value::Text("é\0x".into()),
        ];
        let key = CursorKey::fixed([7; 32]);
        let refs: Vec<ValueRef<'_>> = values.iter().map(Value::as_ref).collect();
        let cursor = key.sign(b"ctx", &refs, false);
        let back = Cursor::parse(&cursor.to_string()).unwrap();
        assert_eq!(back, cursor);
        assert_eq!(key.verify(b"ctx", &back, values.len()).unwrap(), (false, values.to_vec()));
        let inclusive = key.sign(b"ctx", &refs, true);
        assert_eq!(key.verify(b"ctx", &inclusive, values.len()).unwrap(), (true, values.to_vec()));
        assert!(matches!(key.verify(b"other", &back, values.len()), Err(Error::InvalidCursor { .. })));
        assert!(matches!(CursorKey::fixed([8; 32]).verify(b"ctx", &back, 8), Err(Error::InvalidCursor { .. })));
        assert!(matches!(key.verify(b"ctx", &back, 3), Err(Error::InvalidCursor { .. })));
    }

    #[test]
    fn a_one_field_cursor_is_short() {
        let key = CursorKey::fixed([1; 32]);
        let c = key.sign(b"ctx", &[ValueRef::Integer(1_767_225_600_000), ValueRef::Text("art-000000000123")], false);
        assert!(c.to_string().len() <= 96, "{c}");
        let c = key.sign(b"ctx", &[ValueRef::Integer(i64::MIN), ValueRef::Integer(i64::MAX)], false);
        assert!(c.to_string().len() <= 96, "{c}");
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            "A",
            "AAAA",
            "!!!!",
            "AQ",
            "AgAAAAAAAAAAAAAAAAAAAAAA",
            "AQIBAAAAAAAAAAAAAAAAAAAAAA",
            &"A".repeat(MAX_CURSOR_CHARS + 1),
        ] {
            assert!(matches!(Cursor::parse(text), Err(Error::InvalidCursor { .. })), "{text:?}");
        }
    }
}
