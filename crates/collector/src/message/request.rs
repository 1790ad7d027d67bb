//! What a request contributes to each of its messages: the source, the receipt time and
//! client headers, and a batch's own `sentAt` and `context`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use touchstream_core::Channel;

use super::canonical;
use super::seam::ContextKey;

/// What the request contributes to every message in it.
#[derive(Debug, Clone)]
pub struct RequestMeta<'a> {
    /// Source name of the write key.
    pub source: &'a str,
    /// The source's default channel.
    pub default_channel: Channel,
    /// Collector clock at receipt, epoch ms.
    pub received_at_ms: i64,
    /// Client IP.
    pub ip: Option<String>,
    /// `User-Agent` header.
    pub user_agent: Option<String>,
    /// Batch-level `sentAt`, already parsed.
    pub batch_sent_at_ms: Option<i64>,
    /// Batch-level `context`, merged under each message's own.
    pub batch_context: Option<&'a BatchContext>,
}

/// A batch-level `context`, prepared once per request for merging under each message's.
#[derive(Debug, Clone)]
pub struct BatchContext {
    /// As parsed.
    map: Map<String, Value>,
    /// `(key, canonical value text)`, sorted by key (the map's order).
    entries: Vec<(String, String)>,
    /// Canonical text of the whole object.
    text: String,
    /// Per [`ContextKey`], when present: its string value (`None` inside: not a string).
    strs: [Option<Option<String>>; ContextKey::ALL.len()],
}

impl BatchContext {
    /// Prepare a batch's `context` object.
    pub fn new(map: Map<String, Value>) -> Self {
        BatchContext {
            entries: map
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            text: Value::Object(map.clone()).to_string(),
            strs: ContextKey::ALL.map(|k| map.get(k.key()).map(|v| v.as_str().map(String::from))),
            map,
        }
    }

    /// The object as parsed.
    pub fn map(&self) -> &Map<String, Value> {
        &self.map
    }

    /// Canonical text of the whole object.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// An entry with a column of its own: `None` when absent, `Some(None)` when not a
    /// string.
    pub(crate) fn context_str(&self, key: ContextKey) -> Option<Option<&str>> {
        self.strs[key.index()].as_ref().map(Option::as_deref)
    }

    /// This context with a message's own entries (`(key, canonical value text)`, later
    /// ones winning) over it, as canonical text into `out`.
    pub(crate) fn merge_into(&self, own: &[(String, String)], out: &mut String) {
        let mut merged: BTreeMap<&str, &str> = self
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in own {
            merged.insert(k, v);
        }
        out.clear();
        out.push('{');
        for (i, (k, v)) in merged.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            canonical::write_str(out, k);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
    }
}
