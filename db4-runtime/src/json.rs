//! JSON encoding of documents that refuses what JSON cannot hold.
//!
//! serde_json writes a NaN or infinite float as `null`, which then fails to deserialize into
//! the `f64` it came from: the document would be stored but unreadable. [`to_json`] finds
//! such floats first and names the field they are in.

use serde::Serialize;
use serde::ser;
use std::fmt;

/// How deeply arrays and objects may nest in a stored document: serde_json refuses to read
/// anything deeper, so a deeper document would be stored but unreadable.
pub(crate) const MAX_DEPTH: usize = 127;

/// Serializes `value` to compact JSON, or says where a non-finite float sits or where the
/// document nests deeper than it could be read back.
pub(crate) fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, JsonError> {
    let json = serde_json::to_string(value).map_err(JsonError::Serde)?;
    if let Some(path) = too_deep(&json) {
        return Err(JsonError::TooDeep(path));
    }
    // A non-finite float can only have become `null`: documents without one need no check.
    if json.contains("null") {
        value.serialize(FloatCheck { path: String::new() }).map_err(|e| match e {
            Check::NonFinite(path) => JsonError::NonFinite(path),
            Check::Other(message) => JsonError::Serde(ser::Error::custom(message)),
        })?;
    }
    Ok(json)
}

/// Why a document cannot be encoded.
#[derive(Debug)]
pub(crate) enum JsonError {
    /// serde_json refused it.
    Serde(serde_json::Error),
    /// A NaN or infinite float at this path (`.field[2].inner`).
    NonFinite(String),
    /// Arrays and objects nest deeper than [`MAX_DEPTH`] under this top-level key.
    TooDeep(String),
}

/// The top-level key (as `.key`) under which `json` nests deeper than [`MAX_DEPTH`], if it
/// does. A single pass over the bytes, outside string literals.
pub(crate) fn too_deep(json: &str) -> Option<String> {
    let bytes = json.as_bytes();
    // Nesting needs an opening bracket per level: most documents have too few to check.
    if bytes.iter().filter(|&&b| b == b'{' || b == b'[').count() <= MAX_DEPTH {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    // Where the current top-level key's string starts and ends.
    let (mut key_start, mut key) = (0usize, (0usize, 0usize));
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 1 {
                        key = (key_start, i);
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                key_start = i + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    let name =
                        serde_json::from_str::<String>(&json[key.0.saturating_sub(1)..=key.1.min(json.len() - 1)])
                            .unwrap_or_default();
                    return Some(if name.is_empty() { ".".to_owned() } else { format!(".{name}") });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[derive(Debug)]
enum Check {
    NonFinite(String),
    Other(String),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::NonFinite(path) => write!(f, "non-finite float at {path}"),
            Check::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Check {}

impl ser::Error for Check {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Check::Other(msg.to_string())
    }
}

/// Walks a value like a serializer, writing nothing, failing on non-finite floats.
struct FloatCheck {
    path: String,
}

impl FloatCheck {
    fn at(&self, suffix: fmt::Arguments<'_>) -> FloatCheck {
        FloatCheck { path: format!("{}{suffix}", self.path) }
    }

    fn float(self, finite: bool) -> Result<(), Check> {
        if finite { Ok(()) } else { Err(Check::NonFinite(if self.path.is_empty() { ".".into() } else { self.path })) }
    }
}

/// The compound half of [`FloatCheck`]: visits each element with an extended path.
struct Compound {
    path: String,
    index: usize,
}

impl Compound {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Check> {
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        value.serialize(FloatCheck { path })
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Check> {
        value.serialize(FloatCheck { path: format!("{}.{key}", self.path) })
    }
}

macro_rules! ok {
    ($($name:ident($($t:ty),*);)*) => {$(
        fn $name(self $(, _: $t)*) -> Result<(), Check> {
            Ok(())
        }
    )*};
}

impl ser::Serializer for FloatCheck {
    type Ok = ();
    type Error = Check;
    type SerializeSeq = Compound;
    type SerializeTuple = Compound;
    type SerializeTupleStruct = Compound;
    type SerializeTupleVariant = Compound;
    type SerializeMap = Compound;
    type SerializeStruct = Compound;
    type SerializeStructVariant = Compound;

    ok! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32); serialize_i64(i64);
        serialize_i128(i128); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32); serialize_u64(u64);
        serialize_u128(u128); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }

    fn serialize_f32(self, v: f32) -> Result<(), Check> {
        self.float(v.is_finite())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Check> {
        self.float(v.is_finite())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Check> {
        value.serialize(self)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<(), Check> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Check> {
        value.serialize(self.at(format_args!(".{variant}")))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound, Check> {
        Ok(Compound { path: self.path, index: 0 })
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound, Check> {
        Ok(Compound { path: self.path, index: 0 })
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound, Check> {
        Ok(Compound { path: self.path, index: 0 })
    }
    fn serialize_tuple_variant(self, _: &'static str, _: u32, v: &'static str, _: usize) -> Result<Compound, Check> {
        Ok(Compound { path: format!("{}.{v}", self.path), index: 0 })
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound, Check> {
        Ok(Compound { path: self.path, index: 0 })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound, Check> {
        Ok(Compound { path: self.path, index: 0 })
    }
    fn serialize_struct_variant(self, _: &'static str, _: u32, v: &'static str, _: usize) -> Result<Compound, Check> {
        Ok(Compound { path: format!("{}.{v}", self.path), index: 0 })
    }
}

/// The sequence-like compound traits: every element is visited with its index in the path.
macro_rules! elements {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Compound {
            type Ok = ();
            type Error = Check;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Check> {
                self.element(value)
            }
            fn end(self) -> Result<(), Check> {
                Ok(())
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound {
    type Ok = ();
    type Error = Check;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, _key: &T) -> Result<(), Check> {
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Check> {
        self.element(value)
    }
    fn end(self) -> Result<(), Check> {
        Ok(())
    }
}

/// The struct-like compound traits: every field is visited with its name in the path.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound {
            type Ok = ();
            type Error = Check;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Check> {
                self.field(key, value)
            }
            fn end(self) -> Result<(), Check> {
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

/// `json` (a JSON object) with the number under its top-level `key` replaced by `value`;
/// `None` if it has no such key holding a number. The rest of the text is kept byte for byte.
///
/// A document's `#[version]` field inside its stored JSON is the version its writer held; the
/// version column is the truth. Change images get the column's value through this.
pub(crate) fn with_top_level_number(json: &str, key: &str, value: u64) -> Option<String> {
    let bytes = json.as_bytes();
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    // The end of the string starting at `i` (a quote), past its closing quote.
    let string_end = |mut i: usize| {
        i += 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => return Some(i + 1),
                _ => i += 1,
            }
        }
        None
    };
    // The end of the value starting at `i`.
    let value_end = |mut i: usize| -> Option<usize> {
        let mut depth = 0usize;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i = string_end(i)?;
                    if depth == 0 {
                        return Some(i);
                    }
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => return Some(i),
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i + 1);
                    }
                }
                b',' if depth == 0 => return Some(i),
                _ => {}
            }
            i += 1;
        }
        None
    };
    let mut i = skip_ws(0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(i + 1);
    while bytes.get(i) == Some(&b'"') {
        let key_end = string_end(i)?;
        let this = &json[i + 1..key_end - 1];
        i = skip_ws(key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(i + 1);
        let end = value_end(start)?;
        if this == key {
            let old = json[start..end].trim_end();
            if old.is_empty() || !old.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                return None;
            }
            return Some(format!("{}{value}{}", &json[..start], &json[start + old.len()..]));
        }
        i = skip_ws(end);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(i + 1),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Doc {
        a: f64,
        inner: Vec<Inner>,
        map: BTreeMap<String, f32>,
        none: Option<f64>,
    }

    #[derive(Serialize)]
    struct Inner {
        x: f64,
    }

    fn doc(a: f64, x: f64, m: f32) -> Doc {
        Doc { a, inner: vec![Inner { x: 1.0 }, Inner { x }], map: [("k".to_owned(), m)].into(), none: None }
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_write_depth_limit_is_the_read_limit() {
        assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(MAX_DEPTH + 1)).is_err());
        assert_eq!(too_deep(&nested(MAX_DEPTH)), None);
        assert_eq!(too_deep(&nested(MAX_DEPTH + 1)).as_deref(), Some("."));
        let doc = format!("{{\"id\":\"a\",\"n\":{}}}", nested(MAX_DEPTH - 1));
        assert_eq!(too_deep(&doc), None);
        let doc = format!("{{\"id\":\"[[[\\\"\",\"deep\":{}}}", nested(MAX_DEPTH));
        assert_eq!(too_deep(&doc).as_deref(), Some(".deep"));
    }

    #[test]
    fn finite_documents_encode_like_serde_json() {
        let d = doc(1.5, 2.0, 3.0);
        assert_eq!(to_json(&d).unwrap(), serde_json::to_string(&d).unwrap());
    }

    #[test]
    fn non_finite_floats_are_found_with_their_path() {
        for (d, path) in [
            (doc(f64::NAN, 0.0, 0.0), ".a"),
            (doc(0.0, f64::INFINITY, 0.0), ".inner[1].x"),
            (doc(0.0, 0.0, f32::NEG_INFINITY), ".map[0]"),
        ] {
            match to_json(&d) {
                Err(JsonError::NonFinite(p)) => assert_eq!(p, path),
                other => panic!("expected a non-finite error at {path}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_top_level_number_is_replaced_and_nothing_else_moves() {
        let doc =
            r#"{"id":"a","nested":{"version":7,"s":"x\"version\":1"},"list":[1,{"version":2}],"version":3,"z":true}"#;
        let patched = super::with_top_level_number(doc, "version", 41).unwrap();
        assert_eq!(patched, doc.replace(r#""version":3,"#, r#""version":41,"#));
        assert_eq!(
            super::with_top_level_number(r#"{ "version" : 0 }"#, "version", 9).as_deref(),
            Some(r#"{ "version" : 9 }"#)
        );
        assert_eq!(super::with_top_level_number(r#"{"a":1}"#, "version", 9), None);
        assert_eq!(super::with_top_level_number(r#"{"version":"x"}"#, "version", 9), None);
        assert_eq!(super::with_top_level_number("[1]", "version", 9), None);
        assert_eq!(super::with_top_level_number(r#"{"v":"unterminated"#, "version", 9), None);
    }
}
