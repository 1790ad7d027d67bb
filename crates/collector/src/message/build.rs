//! A checked message → the touchpoint record, borrowed from the message, the request and
//! reusable buffers, ready for `avro::encode_ref`.

use touchstream_core::avro::TouchpointRef;
use touchstream_core::MessageType;

use super::clock::event_time_ms;
use super::reject::Rejection;
use super::request::RequestMeta;
use super::rules;
use super::seam::{MessageFields, ObjectField};

/// Namespace of deterministic ids for messages without `messageId`.
const MESSAGE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7c1c_9a5e_0f3b_4e8e_9d51_5e7a_11d0_c0de);

/// Text the touchpoint of the current message borrows that is not in the message.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The event id: the source, `:` and the message id.
    event_id: String,
    /// A generated message id (messages without `messageId`).
    generated: String,
    /// Name bytes of a generated message id.
    seed: Vec<u8>,
    /// The message context merged over the batch context.
    context: String,
}

/// Check a message and build its touchpoint.
pub(crate) fn build<'s, M: MessageFields>(
    m: &'s M,
    bufs: &'s mut Buffers,
    raw: &str,
    implied: Option<MessageType>,
    meta: &'s RequestMeta<'_>,
) -> Result<TouchpointRef<'s>, Rejection> {
    let c = rules::check(m, implied, meta)?;
    let message_id = match c.message_id {
        Some(id) => id,
        None => {
            message_id_into(meta.source, raw, &mut bufs.seed, &mut bufs.generated);
            bufs.generated.as_str()
        }
    };
    event_id_into(meta.source, message_id, &mut bufs.event_id);
    let own_context = c.has(ObjectField::Context);
    if let (Some(b), true) = (meta.batch_context, own_context) {
        b.merge_into(&m.texts().context_entries, &mut bufs.context);
    }
    let bufs: &'s Buffers = bufs;
    let context = match (meta.batch_context, own_context) {
        (None, true) => m.texts().object(ObjectField::Context),
        (None, false) => "{}",
        (Some(b), false) => b.text(),
        (Some(_), true) => bufs.context.as_str(),
    };
    let object_text = |field| {
        if c.has(field) {
            m.texts().object(field)
        } else {
            "{}"
        }
    };
    Ok(TouchpointRef {
        event_id: &bufs.event_id,
        message_type: c.message_type,
        event: c.event,
        anonymous_id: c.anonymous_id,
        user_id: c.user_id,
        previous_id: c.previous_id,
        event_time_ms: event_time_ms(meta.received_at_ms, c.timestamp_ms, c.sent_at_ms),
        timestamp_ms: c.timestamp_ms,
        sent_at_ms: c.sent_at_ms,
        received_at_ms: meta.received_at_ms,
        source: meta.source,
        channel: c.channel.as_str(),
        properties: object_text(ObjectField::Properties),
        traits: object_text(ObjectField::Traits),
        context,
        ip: meta.ip.as_deref(),
        user_agent: c.user_agent,
        extra: &m.texts().extra,
    })
}

/// The event id of a message, into `out`: its source name, `:` and its message id
/// (`messageId`, else the generated one). `messageId` is the client's and only unique
/// within what one source sends: scoped by the source, the same `messageId` from two
/// sources is two events, while a client's retry of a message (same source, same
/// `messageId`, whatever its `sentAt` or time) keeps its id and collapses downstream
/// (README "Event ids and retries", schemas/README.md). Source names hold no `:`
/// (checked with the config), so the source is the text before the first `:`, the
/// `messageId` exactly the rest.
fn event_id_into(source: &str, message_id: &str, out: &mut String) {
    out.clear();
    out.reserve(source.len() + 1 + message_id.len());
    out.push_str(source);
    out.push(':');
    out.push_str(message_id);
}

/// The message id of a message without `messageId`, into `out` (`seed`: working memory):
/// UUIDv5 of the source name, a NUL and the message's exact text. Deterministic, so a
/// client retrying the same body yields the same id and the duplicate collapses
/// downstream.
fn message_id_into(source: &str, raw: &str, seed: &mut Vec<u8>, out: &mut String) {
    seed.clear();
    seed.reserve(source.len() + raw.len() + 1);
    seed.extend_from_slice(source.as_bytes());
    seed.push(0);
    seed.extend_from_slice(raw.as_bytes());
    let mut text = uuid::Uuid::encode_buffer();
    out.clear();
    out.push_str(
        uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, seed)
            .hyphenated()
            .encode_lower(&mut text),
    );
}
