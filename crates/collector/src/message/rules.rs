//! The API's rules for one message (docs/design.md, "API"), written once over
//! [`MessageFields`]: which fields a message needs, which JSON types they may have, its
//! ids, its time, and the channel and user agent it names.
//!
//! Rules run in a fixed order and the first that fails decides the rejection (its reason
//! and detail text are part of the API: the response and the dead-letter record carry
//! them).

use touchstream_core::{is_placeholder_id, Channel, MessageType};

use super::clock::parse_timestamp;
use super::reject::{reject, RejectReason, Rejection};
use super::request::RequestMeta;
use super::seam::{ContextKey, Field, MessageFields, ObjectField, ScalarField, Shape};

/// What the rules make of a valid message, borrowed from it and from the request.
pub(crate) struct Checked<'a> {
    pub(crate) message_type: MessageType,
    /// `track`: the event name; `page`/`screen`: the page or screen name.
    pub(crate) event: Option<&'a str>,
    pub(crate) anonymous_id: Option<&'a str>,
    pub(crate) user_id: Option<&'a str>,
    pub(crate) previous_id: Option<&'a str>,
    /// `timestamp`, else `originalTimestamp`.
    pub(crate) timestamp_ms: Option<i64>,
    /// `sentAt`, else the batch's.
    pub(crate) sent_at_ms: Option<i64>,
    /// `messageId` unless absent or blank (then the collector makes one).
    pub(crate) message_id: Option<&'a str>,
    /// Per [`ObjectField`]: whether the message has it as an object.
    pub(crate) objects: [bool; ObjectField::ALL.len()],
    pub(crate) channel: Channel,
    /// The merged context's `userAgent`, else the request's header.
    pub(crate) user_agent: Option<&'a str>,
}

impl Checked<'_> {
    /// Whether the message has `field` as an object.
    pub(crate) fn has(&self, field: ObjectField) -> bool {
        self.objects[field.index()]
    }
}

/// Apply every rule to a message; the first that fails rejects it.
///
/// `implied` is the type of a single-message endpoint (`/v1/track` implies `track`),
/// `None` for batch members, which must carry `type`.
pub(crate) fn check<'a, M: MessageFields>(
    m: &'a M,
    implied: Option<MessageType>,
    meta: &'a RequestMeta<'_>,
) -> Result<Checked<'a>, Rejection> {
    let message_type = match implied {
        Some(t) => t,
        None => match m.scalar(ScalarField::Type) {
            Field::Str(t) => t.parse().map_err(|_| {
                reject(
                    RejectReason::UnknownType,
                    format!("type {t:?} is not one of track, page, screen, identify, alias"),
                )
            })?,
            _ => return Err(reject(RejectReason::UnknownType, "type is missing")),
        },
    };

    let anonymous_id = id(m, ScalarField::AnonymousId)?;
    let user_id = id(m, ScalarField::UserId)?;
    let previous_id = id(m, ScalarField::PreviousId)?;
    for (field, id) in [
        (ScalarField::AnonymousId, anonymous_id),
        (ScalarField::UserId, user_id),
        (ScalarField::PreviousId, previous_id),
    ] {
        if let Some(id) = id {
            if is_placeholder_id(id) {
                return Err(reject(
                    RejectReason::PlaceholderId,
                    format!("{} {id:?} is a placeholder, not an identity", field.key()),
                ));
            }
        }
    }
    if message_type == MessageType::Alias {
        if previous_id.is_none() || user_id.is_none() {
            return Err(reject(
                RejectReason::MissingAliasIds,
                "alias needs previousId and userId",
            ));
        }
    } else if anonymous_id.is_none() && user_id.is_none() {
        return Err(reject(
            RejectReason::MissingIdentity,
            "a message needs anonymousId or userId",
        ));
    }

    let event = match message_type {
        MessageType::Track => match string(m, ScalarField::Event)? {
            Some(e) if !e.trim().is_empty() => Some(e),
            _ => {
                return Err(reject(
                    RejectReason::MissingEvent,
                    "track needs a non-empty event",
                ))
            }
        },
        MessageType::Page | MessageType::Screen => string(m, ScalarField::Name)?,
        MessageType::Identify | MessageType::Alias => None,
    };

    let timestamp_ms = match timestamp(m, ScalarField::Timestamp)? {
        Some(t) => Some(t),
        None => timestamp(m, ScalarField::OriginalTimestamp)?,
    };
    let sent_at_ms = timestamp(m, ScalarField::SentAt)?.or(meta.batch_sent_at_ms);

    let mut objects = [false; ObjectField::ALL.len()];
    for field in ObjectField::ALL {
        objects[field.index()] = match m.shape(field) {
            Shape::None => false,
            Shape::Object => true,
            Shape::Other => {
                return Err(reject(
                    RejectReason::InvalidField,
                    format!("{} must be an object", field.key()),
                ))
            }
        };
    }
    let message_id = id(m, ScalarField::MessageId)?.filter(|id| !id.trim().is_empty());
    // Past the last rule: the rest cannot fail.

    let own_context = objects[ObjectField::Context.index()];
    // A top-level `channel` of any value (even `null`) hides the context's.
    let channel = match m.scalar(ScalarField::Channel) {
        Field::Absent => context_str(m, own_context, meta, ContextKey::Channel),
        Field::Str(s) => Some(&**s),
        Field::Null | Field::Num(_) | Field::Other => None,
    }
    .and_then(Channel::from_message)
    .unwrap_or(meta.default_channel);
    let user_agent =
        context_str(m, own_context, meta, ContextKey::UserAgent).or(meta.user_agent.as_deref());

    Ok(Checked {
        message_type,
        event,
        anonymous_id,
        user_id,
        previous_id,
        timestamp_ms,
        sent_at_ms,
        message_id,
        objects,
        channel,
        user_agent,
    })
}

/// An id: a string, or a number (some SDKs send numeric user ids) as its text.
fn id<M: MessageFields>(m: &M, field: ScalarField) -> Result<Option<&str>, Rejection> {
    match m.scalar(field) {
        Field::Absent | Field::Null => Ok(None),
        Field::Str(s) => Ok(Some(s)),
        Field::Num(n) => Ok(Some(n)),
        Field::Other => Err(not_a_string(field)),
    }
}

/// A string field.
fn string<M: MessageFields>(m: &M, field: ScalarField) -> Result<Option<&str>, Rejection> {
    match m.scalar(field) {
        Field::Absent | Field::Null => Ok(None),
        Field::Str(s) => Ok(Some(s)),
        Field::Num(_) | Field::Other => Err(not_a_string(field)),
    }
}

fn not_a_string(field: ScalarField) -> Rejection {
    reject(
        RejectReason::InvalidField,
        format!("{} must be a string", field.key()),
    )
}

/// An ISO-8601 timestamp field, as epoch ms.
fn timestamp<M: MessageFields>(m: &M, field: ScalarField) -> Result<Option<i64>, Rejection> {
    let key = field.key();
    match string(m, field) {
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

/// A string entry of the merged context: the message's own when its context has the key
/// (whatever the value), else the batch's.
fn context_str<'a, M: MessageFields>(
    m: &'a M,
    own_context: bool,
    meta: &'a RequestMeta<'_>,
    key: ContextKey,
) -> Option<&'a str> {
    own_context
        .then(|| m.context_str(key))
        .flatten()
        .or_else(|| meta.batch_context.and_then(|b| b.context_str(key)))
        .flatten()
}
