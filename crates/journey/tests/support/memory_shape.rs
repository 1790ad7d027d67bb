//! The memory measurements' workload, shared by the counting test
//! (`tests/memory_per_customer.rs`) and the resident-memory bench (`benches/memory.rs`),
//! shaped like the `touchstream bench` memory phase (docs/bench.md): customer `i` of `n`
//! sends one signed-in `Product Viewed` (anonymous id and user id in one message), so the
//! identity stage holds a link and the journey stage an open session and an open
//! `web_checkout` attempt. Event times lie 10 to 40 minutes before the final watermark:
//! every event is released, nothing has expired.

use std::path::Path;

use serde_json::{json, Map, Value};
use touchstream_journey::{
    Catalog, FunnelSet, JourneyConfig, JourneyEvent, JourneyStage, MessageType, Properties,
};

const MIN: i64 = 60_000;
/// The final watermark (2025-11-25T12:00:00Z).
const NOW_MS: i64 = 1_764_072_000_000;

/// When customer `i` of `n` sends its event.
fn event_time_ms(i: usize, n: usize) -> i64 {
    NOW_MS - 40 * MIN + (30 * MIN) * i as i64 / n.max(1) as i64
}

/// Customer `i`'s one event (of `n` customers), its properties the unparsed text a
/// decoded event carries.
pub fn event(i: usize, n: usize) -> JourneyEvent {
    let mut properties = Map::new();
    properties.insert("sku".into(), json!(format!("SKU-{}", i % 40)));
    JourneyEvent {
        event_id: format!("m-7f3a9c21-{i}"),
        kind: MessageType::Track,
        event: Some("Product Viewed".into()),
        anonymous_id: Some(format!("a-7f3a9c21-{i}")),
        user_id: Some(format!("u-7f3a9c21-{i}")),
        previous_id: None,
        event_time_ms: event_time_ms(i, n),
        channel: None,
        properties: Properties::from_json(&Value::Object(properties).to_string()),
    }
}

/// A journey stage on the deploy catalog and funnels, its watermark given from outside,
/// as the processor runs it.
pub fn journey_stage() -> JourneyStage {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy"));
    let funnels = FunnelSet::load(&dir.join("funnels.toml")).expect("funnels.toml");
    let catalog = Catalog::load(&dir.join("catalog.toml")).expect("catalog.toml");
    let config = JourneyConfig {
        external_watermark: true,
        ..JourneyConfig::default()
    };
    JourneyStage::new(config, catalog, funnels)
}

/// After customer `i`'s event (sequence number `seq`): the watermark follows every 1,000
/// events and the output is taken and dropped every 500, as the processor drains it.
pub fn after_event(stage: &mut JourneyStage, i: usize, n: usize, seq: u64) {
    if seq % 1000 == 0 {
        stage.advance_watermark(event_time_ms(i, n), seq);
    }
    if seq % 500 == 0 {
        drop(stage.take_output());
    }
}

/// After the last event (sequence number `seq`): the final watermark releases every
/// event into the output.
pub fn release_all(stage: &mut JourneyStage, seq: u64) {
    stage.advance_watermark(NOW_MS, seq + 1);
}

/// [`release_all`], and the output dropped.
pub fn finish(stage: &mut JourneyStage, seq: u64) {
    release_all(stage, seq);
    drop(stage.take_output());
}
