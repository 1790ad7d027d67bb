//! One pass over a message's JSON text, capturing what validation needs (see
//! [`crate::message`]).
//!
//! Known fields are kept as borrowed strings, number texts or shapes; `properties`,
//! `traits`, `context` and every unknown field (for `extra`) are written as canonical
//! text by [`crate::canonical`] while the deserializer walks them. Everything is parsed,
//! including values that are then dropped, so what is accepted is exactly what
//! `serde_json::from_str::<Value>` accepts. Keys repeat the way a `serde_json::Map` takes
//! them: the last one wins.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use touchstream_core::Channel;

use crate::canonical::{self, Canon, Key, Open, Scratch};
use crate::message::{named_channel, parse_timestamp, reject, RejectReason, Rejection};

/// A top-level scalar field as the message carried it.
#[derive(Debug, Default)]
pub(crate) enum Field<'de> {
    #[default]
    Absent,
    Null,
    Str(Cow<'de, str>),
    /// A number, as `serde_json::Number` prints it (an id's text).
    Num(String),
    /// A boolean, array or object.
    Other,
}

impl Field<'_> {
    /// An id: a string, or a number (some SDKs send numeric user ids) as its text.
    pub(crate) fn id(&self, key: &str) -> Result<Option<&str>, Rejection> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            Field::Num(n) => Ok(Some(n)),
            Field::Other => Err(reject(
                RejectReason::InvalidField,
                format!("{key} must be a string"),
            )),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&str>, Rejection> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            Field::Num(_) | Field::Other => Err(reject(
                RejectReason::InvalidField,
                format!("{key} must be a string"),
            )),
        }
    }

    pub(crate) fn timestamp(&self, key: &str) -> Result<Option<i64>, Rejection> {
        match self.string(key) {
            Ok(None) => Ok(None),
            Ok(Some(s)) => parse_timestamp(s).map(Some).ok_or_else(|| {
                reject(
                    RejectReason::InvalidTimestamp,
                    format!("{key} {s:?} is not an ISO-8601 timestamp"),
                )
            }),
            Err(_) => Err(reject(
                RejectReason::InvalidTimestamp,
                format!("{key} must be an ISO-8601 string"),
            )),
        }
    }
}

/// Shape of an object-valued field; an object's canonical text is kept beside it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Absent or `null`.
    #[default]
    None,
    Object,
    Other,
}

impl Shape {
    pub(crate) fn check(self, key: &str) -> Result<bool, Rejection> {
        match self {
            Shape::None => Ok(false),
            Shape::Object => Ok(true),
            Shape::Other => Err(reject(
                RejectReason::InvalidField,
                format!("{key} must be an object"),
            )),
        }
    }
}

/// Everything one pass over a message captures (the last of repeated keys wins, as in a
/// `serde_json::Map`). Reused: [`Fields::reset`] keeps the buffers' capacity.
#[derive(Default)]
pub(crate) struct Fields<'de> {
    pub(crate) message_type: Field<'de>,
    pub(crate) message_id: Field<'de>,
    pub(crate) anonymous_id: Field<'de>,
    pub(crate) user_id: Field<'de>,
    pub(crate) previous_id: Field<'de>,
    pub(crate) event: Field<'de>,
    pub(crate) name: Field<'de>,
    pub(crate) timestamp: Field<'de>,
    pub(crate) original_timestamp: Field<'de>,
    pub(crate) sent_at: Field<'de>,
    pub(crate) channel: Field<'de>,
    pub(crate) properties: Shape,
    pub(crate) properties_text: String,
    pub(crate) traits: Shape,
    pub(crate) traits_text: String,
    pub(crate) context: Shape,
    pub(crate) context_text: String,
    /// The message context's `channel`, when present (`None` inside: not a channel name).
    pub(crate) context_channel: Option<Option<Channel>>,
    /// The message context's `userAgent`, when present: whether it is a string (then
    /// its value is in `context_user_agent_text`).
    pub(crate) context_user_agent: Option<bool>,
    pub(crate) context_user_agent_text: String,
    /// The message context's entries in input order, kept only to merge with a batch's.
    pub(crate) context_entries: Vec<(String, String)>,
    /// Canonical text of the unknown top-level fields.
    pub(crate) extra: String,
    /// Where values of known fields with the wrong type are parsed to (and dropped).
    pub(crate) discard: String,
    pub(crate) scratch: Scratch<'de>,
}

/// Which field a top-level key fills.
#[derive(Clone, Copy)]
enum Slot {
    Type,
    MessageId,
    AnonymousId,
    UserId,
    PreviousId,
    Event,
    Name,
    Timestamp,
    OriginalTimestamp,
    SentAt,
    Channel,
    Properties,
    Traits,
    Context,
    WriteKey,
    Extra,
}

impl Slot {
    /// Must agree with [`KNOWN_FIELDS`] (a test checks).
    fn of(key: &str) -> Slot {
        match key {
            "type" => Slot::Type,
            "messageId" => Slot::MessageId,
            "anonymousId" => Slot::AnonymousId,
            "userId" => Slot::UserId,
            "previousId" => Slot::PreviousId,
            "event" => Slot::Event,
            "name" => Slot::Name,
            "timestamp" => Slot::Timestamp,
            "originalTimestamp" => Slot::OriginalTimestamp,
            "sentAt" => Slot::SentAt,
            "channel" => Slot::Channel,
            "properties" => Slot::Properties,
            "traits" => Slot::Traits,
            "context" => Slot::Context,
            "writeKey" => Slot::WriteKey,
            _ => Slot::Extra,
        }
    }
}

impl<'de> Fields<'de> {
    /// Read `raw` into these fields (forgetting the previous message); false when it is
    /// not a JSON object the way `serde_json::Value` reads one (invalid JSON, another
    /// type, or serde_json's raw-value token first in an object).
    pub(crate) fn scan(&mut self, raw: &'de str, merge: bool) -> bool {
        self.reset();
        let mut de = serde_json::Deserializer::from_str(raw);
        MessageSeed { f: self, merge }.deserialize(&mut de).is_ok() && de.end().is_ok()
    }

    /// Forget the previous message, keeping buffer capacity.
    fn reset(&mut self) {
        for slot in [
            Slot::Type,
            Slot::MessageId,
            Slot::AnonymousId,
            Slot::UserId,
            Slot::PreviousId,
            Slot::Event,
            Slot::Name,
            Slot::Timestamp,
            Slot::OriginalTimestamp,
            Slot::SentAt,
            Slot::Channel,
        ] {
            if let Some(field) = self.scalar(slot) {
                *field = Field::Absent;
            }
        }
        self.properties = Shape::None;
        self.traits = Shape::None;
        self.context = Shape::None;
        self.properties_text.clear();
        self.traits_text.clear();
        self.context_text.clear();
        self.context_channel = None;
        self.context_user_agent = None;
        self.context_user_agent_text.clear();
        self.context_entries.clear();
        self.extra.clear();
        self.discard.clear();
        self.scratch.clear();
    }

    fn scalar(&mut self, slot: Slot) -> Option<&mut Field<'de>> {
        Some(match slot {
            Slot::Type => &mut self.message_type,
            Slot::MessageId => &mut self.message_id,
            Slot::AnonymousId => &mut self.anonymous_id,
            Slot::UserId => &mut self.user_id,
            Slot::PreviousId => &mut self.previous_id,
            Slot::Event => &mut self.event,
            Slot::Name => &mut self.name,
            Slot::Timestamp => &mut self.timestamp,
            Slot::OriginalTimestamp => &mut self.original_timestamp,
            Slot::SentAt => &mut self.sent_at,
            Slot::Channel => &mut self.channel,
            Slot::Properties | Slot::Traits | Slot::Context | Slot::WriteKey | Slot::Extra => {
                return None
            }
        })
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
    f: &'a mut Fields<'de>,
    /// Keep the context's entries for merging under a batch context.
    merge: bool,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let f = self.f;
        let mut extra = Open::new(&mut f.extra, &f.scratch);
        let mut first = true;
        while let Some(key) = map.next_key_seed(Key)? {
            if first && key == canonical::RAW_VALUE_TOKEN {
                return Err(de::Error::custom("raw value token"));
            }
            first = false;
            let slot = Slot::of(&key);
            match slot {
                Slot::Properties => {
                    f.properties = map.next_value_seed(ObjectSeed {
                        out: &mut f.properties_text,
                        scratch: &mut f.scratch,
                    })?;
                }
                Slot::Traits => {
                    f.traits = map.next_value_seed(ObjectSeed {
                        out: &mut f.traits_text,
                        scratch: &mut f.scratch,
                    })?;
                }
                Slot::Context => {
                    f.context_channel = None;
                    f.context_user_agent = None;
                    f.context_entries.clear();
                    f.context = map.next_value_seed(ContextSeed {
                        out: &mut f.context_text,
                        scratch: &mut f.scratch,
                        channel: &mut f.context_channel,
                        user_agent: &mut f.context_user_agent,
                        user_agent_text: &mut f.context_user_agent_text,
                        entries: self.merge.then_some(&mut f.context_entries),
                    })?;
                }
                Slot::WriteKey => {
                    map.next_value_seed(Canon {
                        out: &mut f.discard,
                        scratch: &mut f.scratch,
                    })?;
                    f.discard.clear();
                }
                Slot::Extra => {
                    extra.entry(&mut f.extra, &mut f.scratch, key, |c| {
                        map.next_value_seed(c)
                    })?;
                }
                _ => {
                    let value = map.next_value_seed(FieldSeed {
                        discard: &mut f.discard,
                        scratch: &mut f.scratch,
                    })?;
                    if let Some(field) = f.scalar(slot) {
                        *field = value;
                    }
                }
            }
        }
        extra.close(&mut f.extra, &mut f.scratch);
        Ok(())
    }
}

/// Captures a scalar field; a boolean, array or object is parsed (so the message is
/// validated as a whole) and dropped.
struct FieldSeed<'a, 'de> {
    discard: &'a mut String,
    scratch: &'a mut Scratch<'de>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_, 'de> {
    type Value = Field<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Field<'de>, D::Error> {
        d.deserialize_any(self)
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
        let canon = Canon {
            out: &mut *self.discard,
            scratch: self.scratch,
        };
        canon.visit_seq(seq)?;
        self.discard.clear();
        Ok(Field::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        let canon = Canon {
            out: &mut *self.discard,
            scratch: self.scratch,
        };
        canon.visit_map(map)?;
        self.discard.clear();
        Ok(Field::Other)
    }
}

/// Writes an object field's canonical text to `out`; anything else is parsed and dropped.
struct ObjectSeed<'a, 'de> {
    out: &'a mut String,
    scratch: &'a mut Scratch<'de>,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_, 'de> {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_, 'de> {
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
        canonical::object(map, self.out, self.scratch, |_, _| {})?;
        Ok(Shape::Object)
    }
}

/// [`ObjectSeed`] for the message's `context`, noting `channel` and `userAgent` (and,
/// for merging, every entry) on the way.
struct ContextSeed<'a, 'de> {
    out: &'a mut String,
    scratch: &'a mut Scratch<'de>,
    channel: &'a mut Option<Option<Channel>>,
    user_agent: &'a mut Option<bool>,
    user_agent_text: &'a mut String,
    entries: Option<&'a mut Vec<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for ContextSeed<'_, 'de> {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContextSeed<'_, 'de> {
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
        ObjectSeed {
            out: self.out,
            scratch: self.scratch,
        }
        .visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Shape, A::Error> {
        self.out.clear();
        let (channel, user_agent, user_agent_text, mut entries) = (
            self.channel,
            self.user_agent,
            self.user_agent_text,
            self.entries,
        );
        canonical::object(map, self.out, self.scratch, |key, value| {
            match key {
                "channel" => *channel = Some(json_string(value).as_deref().and_then(named_channel)),
                "userAgent" => {
                    user_agent_text.clear();
                    let ua = json_string(value);
                    if let Some(ua) = &ua {
                        user_agent_text.push_str(ua);
                    }
                    *user_agent = Some(ua.is_some());
                }
                _ => {}
            }
            if let Some(entries) = entries.as_deref_mut() {
                entries.push((key.to_owned(), value.to_owned()));
            }
        })?;
        Ok(Shape::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::KNOWN_FIELDS;

    #[test]
    fn slots_cover_exactly_the_known_fields() {
        for k in KNOWN_FIELDS {
            assert!(!matches!(Slot::of(k), Slot::Extra), "{k}");
        }
        assert!(matches!(Slot::of("integrations"), Slot::Extra));
    }
}
