//! What the rules read of a message: the seam between the two parsers and the rules.
//!
//! A message is read either in one pass over its text ([`super::scan`], the hot path) or
//! through a `serde_json::Value` tree ([`super::dom`], for what the scanner declines and
//! as its reference in tests). Both hand the rules ([`super::rules`], [`super::build`])
//! the same view through [`MessageFields`], so every rule is written once and the two
//! parsers only have to agree on what a message holds.

use std::borrow::Cow;

/// A top-level field read as a scalar (the rules decide which JSON types it may have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarField {
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
}

impl ScalarField {
    /// Every scalar field; a field's position here is its index.
    pub(crate) const ALL: [ScalarField; 11] = [
        ScalarField::Type,
        ScalarField::MessageId,
        ScalarField::AnonymousId,
        ScalarField::UserId,
        ScalarField::PreviousId,
        ScalarField::Event,
        ScalarField::Name,
        ScalarField::Timestamp,
        ScalarField::OriginalTimestamp,
        ScalarField::SentAt,
        ScalarField::Channel,
    ];

    /// The message key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            ScalarField::Type => "type",
            ScalarField::MessageId => "messageId",
            ScalarField::AnonymousId => "anonymousId",
            ScalarField::UserId => "userId",
            ScalarField::PreviousId => "previousId",
            ScalarField::Event => "event",
            ScalarField::Name => "name",
            ScalarField::Timestamp => "timestamp",
            ScalarField::OriginalTimestamp => "originalTimestamp",
            ScalarField::SentAt => "sentAt",
            ScalarField::Channel => "channel",
        }
    }

    /// Position in [`ScalarField::ALL`] (for per-field arrays).
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A top-level field that must be a JSON object when present; stored as canonical text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectField {
    Properties,
    Traits,
    Context,
}

impl ObjectField {
    /// Every object field; a field's position here is its index.
    pub(crate) const ALL: [ObjectField; 3] = [
        ObjectField::Properties,
        ObjectField::Traits,
        ObjectField::Context,
    ];

    /// The message key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            ObjectField::Properties => "properties",
            ObjectField::Traits => "traits",
            ObjectField::Context => "context",
        }
    }

    /// Position in [`ObjectField::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The secret the body may authenticate with; never stored, not even in `extra`.
pub(crate) const WRITE_KEY: &str = "writeKey";

/// Where a top-level key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Scalar(ScalarField),
    Object(ObjectField),
    /// `writeKey`: parsed and dropped.
    WriteKey,
    /// Any other field: kept in `extra`.
    Extra,
}

impl Slot {
    /// The slot of a top-level key.
    pub(crate) fn of(key: &str) -> Slot {
        if let Some(f) = ScalarField::ALL.into_iter().find(|f| f.key() == key) {
            Slot::Scalar(f)
        } else if let Some(f) = ObjectField::ALL.into_iter().find(|f| f.key() == key) {
            Slot::Object(f)
        } else if key == WRITE_KEY {
            Slot::WriteKey
        } else {
            Slot::Extra
        }
    }
}

/// A string entry of a `context` object that the touchpoint has a column for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextKey {
    Channel,
    UserAgent,
}

impl ContextKey {
    /// Every such entry; a key's position here is its index.
    pub(crate) const ALL: [ContextKey; 2] = [ContextKey::Channel, ContextKey::UserAgent];

    /// The key inside `context`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            ContextKey::Channel => "channel",
            ContextKey::UserAgent => "userAgent",
        }
    }

    /// Position in [`ContextKey::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The entry a context key names, if any.
    pub(crate) fn of(key: &str) -> Option<ContextKey> {
        ContextKey::ALL.into_iter().find(|k| k.key() == key)
    }
}

/// A scalar field as the message carried it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    /// A number, as `serde_json::Number` prints it (an id's text).
    Num(String),
    /// A boolean, array or object.
    Other,
}

/// The shape of an object field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Absent or `null`.
    #[default]
    None,
    Object,
    Other,
}

/// The canonical JSON texts of a message: what the touchpoint stores as text.
#[derive(Debug, Default)]
pub(crate) struct Texts {
    /// Per [`ObjectField`] that is an object: its canonical text.
    pub(crate) objects: [String; ObjectField::ALL.len()],
    /// The message's own `context` entries as `(key, canonical value text)`, later ones
    /// winning over earlier ones of the same key; kept only when the request has a batch
    /// context to merge with.
    pub(crate) context_entries: Vec<(String, String)>,
    /// Canonical text of the object of all other top-level fields (`extra`).
    pub(crate) extra: String,
}

impl Texts {
    /// Canonical text of an object field whose shape is [`Shape::Object`].
    pub(crate) fn object(&self, field: ObjectField) -> &str {
        &self.objects[field.index()]
    }

    /// Forget a message, keeping capacity.
    pub(crate) fn clear(&mut self) {
        for text in &mut self.objects {
            text.clear();
        }
        self.context_entries.clear();
        self.extra.clear();
    }
}

/// One message as the rules read it. Repeated keys count as a `serde_json::Map` takes
/// them: the last one wins.
pub(crate) trait MessageFields {
    /// A scalar field.
    fn scalar(&self, field: ScalarField) -> &Field<'_>;

    /// The shape of an object field.
    fn shape(&self, field: ObjectField) -> Shape;

    /// An entry of the message's own `context` when that is an object: `None` when the
    /// context has no such key, `Some(None)` when its value is not a string.
    fn context_str(&self, key: ContextKey) -> Option<Option<&str>>;

    /// The message's canonical texts.
    fn texts(&self) -> &Texts;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_has_one_slot_and_indexes_match() {
        for (i, f) in ScalarField::ALL.into_iter().enumerate() {
            assert_eq!((Slot::of(f.key()), f.index()), (Slot::Scalar(f), i));
        }
        for (i, f) in ObjectField::ALL.into_iter().enumerate() {
            assert_eq!((Slot::of(f.key()), f.index()), (Slot::Object(f), i));
        }
        for (i, k) in ContextKey::ALL.into_iter().enumerate() {
            assert_eq!((ContextKey::of(k.key()), k.index()), (Some(k), i));
        }
        assert_eq!(Slot::of(WRITE_KEY), Slot::WriteKey);
        assert_eq!(Slot::of("integrations"), Slot::Extra);
        assert_eq!(Slot::of("Type"), Slot::Extra);
        assert_eq!(ContextKey::of("locale"), None);
    }
}
