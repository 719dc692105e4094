//! What kind of value a document field holds, learned from the field type's own `Deserialize`
//! impl: db4 deserializes the document type from a probe that offers one key and records the
//! shape (`deserialize_i64`, `deserialize_str`, `deserialize_option`, ...) the field asks for.
//!
//! This needs no extra trait on field types (a user's enum works as it is) and no value of the
//! type. The kinds are recorded in the schema table, so that a changed field type which stored
//! documents could not be read back as is refused when the collection is opened, before
//! anything is written.

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::fmt;

/// The shape of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ValueKind {
    Bool,
    Integer,
    Real,
    Text,
    /// An enum: unit variants are stored as text, others as objects.
    Enum,
    /// A sequence, map, struct or byte string.
    Compound,
}

impl ValueKind {
    fn describe(self) -> &'static str {
        match self {
            ValueKind::Bool => "booleans",
            ValueKind::Integer => "integers",
            ValueKind::Real => "floats",
            ValueKind::Text => "text",
            ValueKind::Enum => "enum variants",
            ValueKind::Compound => "arrays or objects",
        }
    }
}

/// A field's value kind and whether it may be `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FieldKind {
    pub kind: ValueKind,
    pub nullable: bool,
}

impl FieldKind {
    /// Why documents stored with `self` may not read back as `new`, or `None` if they do.
    pub fn incompatibility(self, new: FieldKind) -> Option<String> {
        if self.nullable && !new.nullable {
            return Some(
                "the field was optional (`Option<_>`) and is now required: stored documents may hold `None`, \
                 which the new type cannot read (keep it an `Option`, or give it `#[serde(default)]` and migrate)"
                    .to_owned(),
            );
        }
        let widening = matches!(
            (self.kind, new.kind),
            (ValueKind::Integer, ValueKind::Real)
                | (ValueKind::Text, ValueKind::Enum)
                | (ValueKind::Enum, ValueKind::Text)
        );
        if self.kind == new.kind || widening {
            return None;
        }
        Some(format!(
            "stored documents hold {} here and the field's type now holds {}: they would not read back \
             and its index would mix both kinds (rename the field, or keep its type)",
            self.kind.describe(),
            new.kind.describe()
        ))
    }
}

/// The kind of the value `T` keeps under `key`, or `None` when the type does not say (a
/// custom `Deserialize` that asks for "any", a flattened field, a type that is not a struct).
pub(crate) fn field_kind<T: DeserializeOwned>(key: &str) -> Option<FieldKind> {
    let found = Cell::new(None);
    // The probe always ends the deserialization with an error once it has what it needs.
    let _ = T::deserialize(StructProbe { key, found: &found });
    found.get()
}

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("kind probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Stop
    }
}

/// Offers a struct (or map) with the single key `key`.
struct StructProbe<'a> {
    key: &'a str,
    found: &'a Cell<Option<FieldKind>>,
}

impl<'de> de::Deserializer<'de> for StructProbe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_map(OneKey { key: Some(self.key), found: self.found })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_map(OneKey { key: Some(self.key), found: self.found })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct enum identifier ignored_any
    }
}

struct OneKey<'a> {
    key: Option<&'a str>,
    found: &'a Cell<Option<FieldKind>>,
}

impl<'de> MapAccess<'de> for OneKey<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Stop> {
        match self.key.take() {
            Some(key) => seed.deserialize(de::value::StrDeserializer::<Stop>::new(key)).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(ValueProbe { nullable: false, found: self.found })
    }
}

/// Records the shape a field's type asks for, then stops.
struct ValueProbe<'a> {
    nullable: bool,
    found: &'a Cell<Option<FieldKind>>,
}

impl ValueProbe<'_> {
    fn record<T>(self, kind: ValueKind) -> Result<T, Stop> {
        self.found.set(Some(FieldKind { kind, nullable: self.nullable }));
        Err(Stop)
    }
}

macro_rules! probe {
    ($($method:ident => $kind:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
            self.record(ValueKind::$kind)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for ValueProbe<'_> {
    type Error = Stop;

    probe! {
        deserialize_bool => Bool,
        deserialize_i8 => Integer, deserialize_i16 => Integer, deserialize_i32 => Integer,
        deserialize_i64 => Integer, deserialize_i128 => Integer, deserialize_u8 => Integer,
        deserialize_u16 => Integer, deserialize_u32 => Integer, deserialize_u64 => Integer,
        deserialize_u128 => Integer,
        deserialize_f32 => Real, deserialize_f64 => Real,
        deserialize_char => Text, deserialize_str => Text, deserialize_string => Text,
        deserialize_identifier => Text,
        deserialize_bytes => Compound, deserialize_byte_buf => Compound, deserialize_seq => Compound,
        deserialize_map => Compound,
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, _visitor: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(ValueProbe { nullable: true, found: self.found })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Stop> {
        self.record(ValueKind::Compound)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.record(ValueKind::Compound)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.record(ValueKind::Compound)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        self.record(ValueKind::Enum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Status {
        Open,
        Closed,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Meters(f64);

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        id: String,
        prio: i64,
        #[serde(rename = "s")]
        status: Status,
        score: Option<u32>,
        tags: Vec<String>,
        flag: bool,
        boxed: Box<Option<String>>,
        length: Meters,
        #[serde(default)]
        any: serde_json::Value,
    }

    fn kind(kind: ValueKind, nullable: bool) -> Option<FieldKind> {
        Some(FieldKind { kind, nullable })
    }

    #[test]
    fn kinds_come_from_the_field_types() {
        assert_eq!(field_kind::<Doc>("id"), kind(ValueKind::Text, false));
        assert_eq!(field_kind::<Doc>("prio"), kind(ValueKind::Integer, false));
        assert_eq!(field_kind::<Doc>("s"), kind(ValueKind::Enum, false));
        assert_eq!(field_kind::<Doc>("score"), kind(ValueKind::Integer, true));
        assert_eq!(field_kind::<Doc>("tags"), kind(ValueKind::Compound, false));
        assert_eq!(field_kind::<Doc>("flag"), kind(ValueKind::Bool, false));
        assert_eq!(field_kind::<Doc>("boxed"), kind(ValueKind::Text, true));
        assert_eq!(field_kind::<Doc>("length"), kind(ValueKind::Real, false));
        // `serde_json::Value` accepts anything: no kind, so no check.
        assert_eq!(field_kind::<Doc>("any"), None);
        assert_eq!(field_kind::<Doc>("missing"), None);
        assert_eq!(field_kind::<i64>("x"), None);
    }

    #[test]
    fn compatibility_follows_what_reads_back() {
        let int = FieldKind { kind: ValueKind::Integer, nullable: false };
        let opt_int = FieldKind { kind: ValueKind::Integer, nullable: true };
        let text = FieldKind { kind: ValueKind::Text, nullable: false };
        let real = FieldKind { kind: ValueKind::Real, nullable: false };
        assert!(int.incompatibility(opt_int).is_none());
        assert!(int.incompatibility(real).is_none());
        assert!(opt_int.incompatibility(int).is_some());
        assert!(int.incompatibility(text).is_some());
        assert!(real.incompatibility(int).is_some());
    }
}
