//! One pass over a message's JSON text, capturing what the rules read (the collector's
//! per-message hot path: no `serde_json::Value` tree is built).
//!
//! Known fields are kept as borrowed strings, number texts or shapes; `properties`,
//! `traits`, `context` and every unknown field (for `extra`) are written as canonical
//! text by [`super::canonical`] while the deserializer walks them. Everything is parsed,
//! including values that are then dropped, so what is accepted is exactly what
//! `serde_json::from_str::<Value>` accepts. Keys repeat the way a `serde_json::Map` takes
//! them: the last one wins.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use super::canonical::{self, AnyValue, Canon, Key, Open, Scratch};
use super::seam::{ContextKey, Field, MessageFields, ObjectField, ScalarField, Shape, Slot, Texts};

/// Everything one pass over a message captures. Reused from one message to the next:
/// [`Scanned::scan`] forgets the previous message but keeps the buffers' capacity.
#[derive(Default)]
pub(crate) struct Scanned<'de> {
    scalars: [Field<'de>; ScalarField::ALL.len()],
    shapes: [Shape; ObjectField::ALL.len()],
    texts: Texts,
    /// Per [`ContextKey`] of the message's context, when present: whether it is a string
    /// (then its value is in `context_str_texts`).
    context_strs: [Option<bool>; ContextKey::ALL.len()],
    context_str_texts: [String; ContextKey::ALL.len()],
    /// Where values of known fields with the wrong type are parsed to (and dropped).
    discard: String,
    scratch: Scratch<'de>,
}

impl<'de> Scanned<'de> {
    /// Read `raw` (forgetting the previous message); false when it is not a JSON object
    /// the way `serde_json::Value` reads one (invalid JSON, another type, or serde_json's
    /// raw-value token first in an object). `merge`: keep the context's entries for
    /// merging under a batch context.
    pub(crate) fn scan(&mut self, raw: &'de str, merge: bool) -> bool {
        self.reset();
        let mut de = serde_json::Deserializer::from_str(raw);
        AnyValue(MessageSeed { f: self, merge })
            .deserialize(&mut de)
            .is_ok()
            && de.end().is_ok()
    }

    /// Forget the previous message, keeping buffer capacity.
    fn reset(&mut self) {
        self.scalars.fill(Field::Absent);
        self.shapes = Default::default();
        self.texts.clear();
        self.forget_context();
        self.discard.clear();
        self.scratch.clear();
    }

    /// Forget what a `context` key said (a later one replaces it).
    fn forget_context(&mut self) {
        self.context_strs = Default::default();
        for text in &mut self.context_str_texts {
            text.clear();
        }
        self.texts.context_entries.clear();
    }
}

impl MessageFields for Scanned<'_> {
    fn scalar(&self, field: ScalarField) -> &Field<'_> {
        &self.scalars[field.index()]
    }

    fn shape(&self, field: ObjectField) -> Shape {
        self.shapes[field.index()]
    }

    fn context_str(&self, key: ContextKey) -> Option<Option<&str>> {
        let i = key.index();
        self.context_strs[i].map(|is_str| is_str.then_some(self.context_str_texts[i].as_str()))
    }

    fn texts(&self) -> &Texts {
        &self.texts
    }
}

/// The string a canonical JSON value text holds, if it is a string: without a backslash
/// it is the text between the quotes (canonical text escapes only with backslashes).
fn json_string(value: &str) -> Option<Cow<'_, str>> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(value).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Reads the message object (only an object: anything else is declined).
struct MessageSeed<'a, 'de> {
    f: &'a mut Scanned<'de>,
    /// Keep the context's entries for merging under a batch context.
    merge: bool,
}

impl<'de> Visitor<'de> for MessageSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let f = self.f;
        let mut extra = Open::new(&mut f.texts.extra, &f.scratch);
        let mut first = true;
        while let Some(key) = map.next_key_seed(Key)? {
            if first && key == canonical::RAW_VALUE_TOKEN {
                return Err(de::Error::custom("raw value token"));
            }
            first = false;
            match Slot::of(&key) {
                Slot::Scalar(field) => {
                    f.scalars[field.index()] = map.next_value_seed(AnyValue(FieldSeed {
                        discard: &mut f.discard,
                        scratch: &mut f.scratch,
                    }))?;
                }
                Slot::Object(field @ ObjectField::Context) => {
                    f.forget_context();
                    let (strs, str_texts) = (&mut f.context_strs, &mut f.context_str_texts);
                    let mut entries = self.merge.then_some(&mut f.texts.context_entries);
                    let seen = |key: &str, value: &str| {
                        if let Some(k) = ContextKey::of(key) {
                            let text = &mut str_texts[k.index()];
                            text.clear();
                            let s = json_string(value);
                            if let Some(s) = &s {
                                text.push_str(s);
                            }
                            strs[k.index()] = Some(s.is_some());
                        }
                        if let Some(entries) = entries.as_deref_mut() {
                            entries.push((key.to_owned(), value.to_owned()));
                        }
                    };
                    f.shapes[field.index()] = map.next_value_seed(AnyValue(ObjectSeed {
                        out: &mut f.texts.objects[field.index()],
                        scratch: &mut f.scratch,
                        seen,
                    }))?;
                }
                Slot::Object(field) => {
                    f.shapes[field.index()] = map.next_value_seed(AnyValue(ObjectSeed {
                        out: &mut f.texts.objects[field.index()],
                        scratch: &mut f.scratch,
                        seen: |_: &str, _: &str| {},
                    }))?;
                }
                Slot::WriteKey => {
                    map.next_value_seed(AnyValue(Canon {
                        out: &mut f.discard,
                        scratch: &mut f.scratch,
                    }))?;
                    f.discard.clear();
                }
                Slot::Extra => {
                    extra.entry(&mut f.texts.extra, &mut f.scratch, key, |c| {
                        map.next_value_seed(AnyValue(c))
                    })?;
                }
            }
        }
        extra.close(&mut f.texts.extra, &mut f.scratch);
        Ok(())
    }
}

/// Captures a scalar field; a boolean, array or object is parsed (so the message is
/// validated as a whole) and dropped.
struct FieldSeed<'a, 'de> {
    discard: &'a mut String,
    scratch: &'a mut Scratch<'de>,
}

impl<'de> FieldSeed<'_, 'de> {
    /// Parse an array or object (with `parse`) into the discard buffer and drop it.
    fn dropped<T>(self, parse: impl FnOnce(Canon<'_, 'de>) -> T) -> T {
        let parsed = parse(Canon {
            out: &mut *self.discard,
            scratch: self.scratch,
        });
        self.discard.clear();
        parsed
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_, 'de> {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Num(Number::from(v).to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Num(Number::from(v).to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Field<'de>, E> {
        // As `Value` does: a non-finite float (never parsed from text) would be null.
        Ok(Number::from_f64(v).map_or(Field::Null, |n| Field::Num(n.to_string())))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
        self.dropped(|c| c.visit_seq(seq))?;
        Ok(Field::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        self.dropped(|c| c.visit_map(map))?;
        Ok(Field::Other)
    }
}

/// Writes an object field's canonical text to `out`, calling `seen(key, value_text)` for
/// each of its entries; anything else is parsed and dropped.
struct ObjectSeed<'a, 'de, F> {
    out: &'a mut String,
    scratch: &'a mut Scratch<'de>,
    seen: F,
}

impl<'de, F: FnMut(&str, &str)> Visitor<'de> for ObjectSeed<'_, 'de, F> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Shape, A::Error> {
        self.out.clear();
        Canon {
            out: &mut *self.out,
            scratch: self.scratch,
        }
        .visit_seq(seq)?;
        self.out.clear();
        Ok(Shape::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Shape, A::Error> {
        self.out.clear();
        canonical::object(map, self.out, self.scratch, self.seen)?;
        Ok(Shape::Object)
    }
}
