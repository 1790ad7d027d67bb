//! The bench's data: realistic Segment messages from the journey generator, and the exact
//! bytes and rows the pipeline makes of them.
//!
//! Every phase uses the same messages so the figures are comparable: the collector phase
//! posts them as JSON batches; the baseline and processor phases produce their Avro
//! encoding (built by the collector's own [`to_touchpoint`], keyed as the collector keys
//! them); the insert baseline writes the `events` and `touchpoint_journey` rows the
//! processor would write for them.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use touchstream_collector::message::{to_touchpoint, RequestMeta};
use touchstream_core::{avro, Channel, Touchpoint};
use touchstream_demo::generator::{plan, GeneratorConfig};
use touchstream_demo::sender::iso;
use touchstream_journey::columns::{days, secs};
use touchstream_journey::{CustomerTouchpointRow, Stage, TouchpointRow};
use touchstream_processor::tables::events::EventRow;

use crate::error::BenchError;

/// What analytics.js adds to every message, so messages weigh what real ones do (~300 B
/// each with the generator's fields).
fn sdk_context(i: usize) -> Value {
    json!({
        "library": {"name": "analytics.js", "version": "5.2.1"},
        "page": {"path": format!("/p/{}", i % 977)},
        "locale": "en-GB",
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
    })
}

/// `n` generated journey messages (customers are added until there are enough), each
/// with `timestamp` and an SDK `context`, in event-time order.
pub fn journey_messages(n: usize, seed: u64, now_ms: i64) -> Vec<Value> {
    let mut customers = n / 4 + 1;
    loop {
        let mut g = GeneratorConfig::new(now_ms);
        g.customers = customers;
        g.seed = seed;
        let (planned, _) = plan(&g);
        if planned.len() >= n {
            return planned
                .into_iter()
                .take(n)
                .enumerate()
                .map(|(i, p)| {
                    let mut m = p.message;
                    m["timestamp"] = json!(iso(p.time_ms));
                    m["context"] = sdk_context(i);
                    m
                })
                .collect();
        }
        customers *= 2;
    }
}

/// `/v1/batch` bodies of `per_batch` messages each (the last may be shorter), with the
/// message count of each.
pub fn batch_bodies(messages: &[Value], per_batch: usize, sent_at_ms: i64) -> Vec<(Bytes, usize)> {
    messages
        .chunks(per_batch.max(1))
        .map(|chunk| {
            let body = json!({"batch": chunk, "sentAt": iso(sent_at_ms)});
            (Bytes::from(body.to_string()), chunk.len())
        })
        .collect()
}

/// The touchpoint the collector makes of `message` when received at `received_at_ms` by
/// the default `web` source.
pub fn touchpoint(message: &Value, received_at_ms: i64) -> Result<Touchpoint, BenchError> {
    let meta = RequestMeta {
        source: "web",
        default_channel: Channel::Web,
        received_at_ms,
        ip: Some("127.0.0.1".into()),
        user_agent: None,
        batch_sent_at_ms: None,
        batch_context: None,
    };
    to_touchpoint(&message.to_string(), None, &meta)
        .map_err(|r| BenchError::Workload(format!("{}: {}", r.reason.label(), r.detail)))
}

/// A Kafka record as the collector writes it to `touchpoints.raw`: identity key, Avro
/// single-object value.
pub fn record(tp: &Touchpoint) -> Result<(String, Vec<u8>), BenchError> {
    let value = avro::encode(tp).map_err(|e| BenchError::Workload(e.to_string()))?;
    Ok((tp.identity_key().to_string(), value))
}

/// The rows the processor writes for one event: its `events` row (identity stage) and its
/// `touchpoint_journey` row (journey stage), which the `touchpoints` view joins.
pub fn rows(tp: &Touchpoint, partition: i32, offset: i64) -> (EventRow, TouchpointRow) {
    let customer = tp
        .user_id
        .as_deref()
        .or(tp.anonymous_id.as_deref())
        .unwrap_or_default();
    let journey = TouchpointRow {
        event_id: tp.event_id.as_str().into(),
        event_date: days(tp.event_time_ms),
        session_id: format!("{:016x}{:016x}", fnv(customer), offset.unsigned_abs()).into(),
        customer_id: customer.into(),
        stage: Stage::Consideration,
        // The row's channel as the journey stage reads a message's (`tp.channel` is a
        // collector channel name, so always recognised).
        channel: touchstream_journey::Channel::from_message(&tp.channel)
            .unwrap_or(touchstream_journey::Channel::Other),
        is_late: false,
        version: offset.unsigned_abs(),
    };
    (EventRow::new(tp.clone(), partition, offset), journey)
}

/// Every per-event row the processor writes for one event: its `events` row (identity
/// stage), `touchpoint_journey` and `customer_touchpoints` rows (journey stage), shaped
/// as [`rows`] makes them. Takes the touchpoint (the `events` row keeps its payload
/// strings) so that no string is copied twice: what a client writing these rows from
/// decoded records would do.
pub fn event_rows(
    tp: Touchpoint,
    partition: i32,
    offset: i64,
) -> (EventRow, TouchpointRow, CustomerTouchpointRow) {
    let customer: Arc<str> = tp
        .user_id
        .as_deref()
        .or(tp.anonymous_id.as_deref())
        .unwrap_or_default()
        .into();
    let session_id: Arc<str> =
        format!("{:016x}{:016x}", fnv(&customer), offset.unsigned_abs()).into();
    let event_id: Arc<str> = tp.event_id.as_str().into();
    let channel = touchstream_journey::Channel::from_message(&tp.channel)
        .unwrap_or(touchstream_journey::Channel::Other);
    let version = offset.unsigned_abs();
    let by_customer = CustomerTouchpointRow {
        customer_id: Arc::clone(&customer),
        event_date: days(tp.event_time_ms),
        event_time_ms: tp.event_time_ms,
        event_id: Arc::clone(&event_id),
        event_time: secs(tp.event_time_ms),
        message_type: tp.message_type.as_str(),
        event: tp.event.as_deref().unwrap_or_default().into(),
        stage: Stage::Consideration,
        channel,
        session_id: Arc::clone(&session_id),
        store_id: touchstream_journey::no_text(),
        is_late: false,
        is_deleted: false,
        version,
    };
    let journey = TouchpointRow {
        event_id,
        event_date: days(tp.event_time_ms),
        session_id,
        customer_id: customer,
        stage: Stage::Consideration,
        channel,
        is_late: false,
        version,
    };
    (EventRow::new(tp, partition, offset), journey, by_customer)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The memory phase's customer `i`: one signed-in product view (anonymous id and user id
/// in one message, so the identity stage holds a link), which opens a session and a
/// `web_checkout` funnel attempt in the journey stage.
pub fn active_customer(run: &str, i: usize, time_ms: i64) -> Value {
    json!({
        "type": "track",
        "event": "Product Viewed",
        "messageId": format!("m-{run}-{i}"),
        "anonymousId": format!("a-{run}-{i}"),
        "userId": format!("u-{run}-{i}"),
        "timestamp": iso(time_ms),
        "properties": {"sku": format!("SKU-{}", i % 40)},
        "context": sdk_context(i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_what_the_collector_accepts_and_about_300_bytes() {
        let now = 1_800_000_000_000;
        let msgs = journey_messages(1000, 42, now);
        assert_eq!(msgs.len(), 1000);
        let total: usize = msgs.iter().map(|m| m.to_string().len()).sum();
        let avg = total / msgs.len();
        assert!((200..450).contains(&avg), "average message {avg} B");
        for m in &msgs {
            let tp = touchpoint(m, now).unwrap();
            let (key, value) = record(&tp).unwrap();
            assert!(!key.is_empty());
            assert_eq!(avro::decode(&value).unwrap(), tp);
            let (e, j) = rows(&tp, 0, 7);
            assert_eq!(e.event_id, &*j.event_id);
            let (e3, j3, c3) = event_rows(tp.clone(), 0, 7);
            assert_eq!(e3.event_id, e.event_id);
            assert_eq!(j3, j);
            assert_eq!(
                (&c3.customer_id, &c3.event_id, &c3.session_id, c3.version),
                (&j.customer_id, &j.event_id, &j.session_id, j.version)
            );
            assert_eq!(c3.event_time_ms, tp.event_time_ms);
        }
        let bodies = batch_bodies(&msgs, 100, now);
        assert_eq!(bodies.len(), 10);
        assert!(bodies.iter().all(|(_, n)| *n == 100));
    }

    #[test]
    fn active_customers_are_accepted_and_distinct() {
        let a = touchpoint(
            &active_customer("r", 1, 1_800_000_000_000),
            1_800_000_000_000,
        )
        .unwrap();
        let b = touchpoint(
            &active_customer("r", 2, 1_800_000_000_000),
            1_800_000_000_000,
        )
        .unwrap();
        assert_ne!(a.identity_key(), b.identity_key());
        assert!(a.user_id.is_some() && a.anonymous_id.is_some());
    }
}
