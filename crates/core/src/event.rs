//! The canonical touchpoint record (docs/design.md §2–3).
//!
//! This is the in-memory twin of `schemas/touchpoint.avsc`: the collector builds it from a
//! validated Segment message, the processor enriches and stores it. Free-form JSON parts
//! (`properties`, `traits`, `context`) stay JSON text so the record never loses what a
//! client sent and the Avro schema need not model arbitrary JSON.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Segment message type; the order matches the Avro enum's symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    /// A named action (`event` is required).
    Track,
    /// A web page view (`name` is the page name).
    Page,
    /// An app screen view (`name` is the screen name).
    Screen,
    /// Ties traits and often a `userId` to the sender.
    Identify,
    /// Links `previousId` to `userId`.
    Alias,
}

impl MessageType {
    /// Every type, in Avro symbol order.
    pub const ALL: [MessageType; 5] = [
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Identify,
        MessageType::Alias,
    ];

    /// The lowercase wire name (`track`, `page`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Identify => "identify",
            MessageType::Alias => "alias",
        }
    }

    /// Position of the symbol in the Avro enum.
    pub fn avro_index(self) -> u32 {
        match self {
            MessageType::Track => 0,
            MessageType::Page => 1,
            MessageType::Screen => 2,
            MessageType::Identify => 3,
            MessageType::Alias => 4,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MessageType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown message type {s:?}"))
    }
}

/// Where a touchpoint happened (docs/design.md §4, touchpoint catalog).
///
/// The one channel vocabulary of the workspace: the collector names a message's channel
/// with [`Channel::from_message`], the journey catalog classifies with it. Declaration
/// order is the order of `sessions.channels` (hence `Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Web site.
    Web,
    /// Mobile app.
    App,
    /// Physical store (tablets, POS).
    Store,
    /// Call centre / CRM.
    CallCenter,
    /// Email.
    Email,
    /// Social networks.
    Social,
    /// Anything else.
    Other,
}

impl Channel {
    /// Every channel, in declaration order.
    pub const ALL: [Channel; 7] = [
        Channel::Web,
        Channel::App,
        Channel::Store,
        Channel::CallCenter,
        Channel::Email,
        Channel::Social,
        Channel::Other,
    ];

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::Store => "store",
            Channel::CallCenter => "call_center",
            Channel::Email => "email",
            Channel::Social => "social",
            Channel::Other => "other",
        }
    }

    /// Channel named by a message's `channel` field (top-level or in `context`). Besides
    /// our own names this accepts Segment's library values `browser` (→ web) and `mobile`
    /// (→ app) and the common device and desk names (`ios`, `android`, `pos`, `phone`,
    /// ...), compared case-insensitively with spaces and hyphens read as `_`. `server`
    /// and anything unrecognised say nothing about the channel: `None`, and the caller's
    /// default applies (the source's in the collector, the catalog's in the journey).
    pub fn from_message(value: &str) -> Option<Channel> {
        // Most messages already use a normalized name: no allocation for them.
        Self::normalized(value).or_else(|| {
            Self::normalized(&value.trim().to_ascii_lowercase().replace(['-', ' '], "_"))
        })
    }

    /// The channel of an already normalized (trimmed, lowercase, `_`-separated) name.
    fn normalized(v: &str) -> Option<Channel> {
        Some(match v {
            "web" | "browser" => Channel::Web,
            "app" | "mobile" | "ios" | "android" => Channel::App,
            "store" | "pos" => Channel::Store,
            "call_center" | "callcenter" | "call_centre" | "phone" => Channel::CallCenter,
            "email" => Channel::Email,
            "social" => Channel::Social,
            "other" => Channel::Other,
            _ => return None,
        })
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown channel {s:?}"))
    }
}

/// One accepted touchpoint, exactly the fields of `schemas/touchpoint.avsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touchpoint {
    /// Segment `messageId`; generated by the collector when the client sent none. Drives dedup.
    pub event_id: String,
    /// Segment message type.
    pub message_type: MessageType,
    /// `track`: event name; `page`/`screen`: page or screen name.
    pub event: Option<String>,
    /// Device/browser scoped id.
    pub anonymous_id: Option<String>,
    /// Canonical customer id from the business.
    pub user_id: Option<String>,
    /// `alias`: the id being linked to `user_id`.
    pub previous_id: Option<String>,
    /// Skew-corrected event time, epoch ms UTC.
    pub event_time_ms: i64,
    /// Client `timestamp` as sent, epoch ms.
    pub timestamp_ms: Option<i64>,
    /// Client `sentAt` as sent, epoch ms.
    pub sent_at_ms: Option<i64>,
    /// Collector clock at receipt, epoch ms.
    pub received_at_ms: i64,
    /// Source name the write key maps to.
    pub source: String,
    /// Channel name (see [`Channel`]).
    pub channel: String,
    /// JSON object text.
    pub properties: String,
    /// JSON object text.
    pub traits: String,
    /// JSON object text.
    pub context: String,
    /// Client IP address.
    pub ip: Option<String>,
    /// Client user agent.
    pub user_agent: Option<String>,
    /// JSON object text of the message's other top-level fields.
    pub extra: String,
}

impl Touchpoint {
    /// The Kafka key of docs/design.md §3: `anonymousId` if present, else `userId`.
    ///
    /// Keying by the device id keeps one browser's events in one partition, in order,
    /// before the customer identifies.
    pub fn identity_key(&self) -> &str {
        self.anonymous_id
            .as_deref()
            .or(self.user_id.as_deref())
            .unwrap_or("")
    }
}

/// An event time more than this after `received_at` is treated as `received_at`
/// (docs/design.md §2, Time): the collector clamps, and the processor never lets such a time move a
/// watermark (a record written by another producer could carry any time).
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

/// Ids that broken clients send instead of a real one (docs/design.md §4): `anonymous`, `null`,
/// `undefined`, `0`, empty or whitespace, compared trimmed and case-insensitively.
/// They are never identities; a message carrying one is rejected.
pub fn is_placeholder_id(id: &str) -> bool {
    // Called for every id of every message by the collector and the identity stage: the
    // usual id has nothing to trim (both ends ASCII and not whitespace, U+0009..U+000D or
    // space), so it is decided without decoding — about 10 % of the identity stage's time
    // before this fast path (docs/microbench.md).
    let plain = |b: &u8| b.is_ascii() && !matches!(b, 9..=13 | b' ');
    let bytes = id.as_bytes();
    if bytes.first().is_some_and(plain) && bytes.last().is_some_and(plain) {
        return matches!(bytes.len(), 1 | 4 | 9)
            && PLACEHOLDERS.iter().any(|p| id.eq_ignore_ascii_case(p));
    }
    let id = id.trim();
    id.is_empty() || PLACEHOLDERS.iter().any(|p| id.eq_ignore_ascii_case(p))
}

const PLACEHOLDERS: [&str; 4] = ["anonymous", "null", "undefined", "0"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_fast_path_matches_the_trimmed_comparison() {
        let slow = |id: &str| {
            let id = id.trim();
            id.is_empty() || PLACEHOLDERS.iter().any(|p| id.eq_ignore_ascii_case(p))
        };
        for id in [
            "null",
            "NULL",
            "0",
            "00",
            " 0",
            "0 ",
            "\u{b}null",
            "null\u{c}",
            "\u{a0}null",
            "null\u{2003}",
            "\u{85}undefined",
            "anonymous\r\n",
            "ANONYMOUS",
            "anonymou",
            "undefine",
            "nul",
            "x",
            "é",
            "nulé",
            "\u{3000}",
            "a-1",
            "",
        ] {
            assert_eq!(is_placeholder_id(id), slow(id), "{id:?}");
        }
    }

    #[test]
    fn placeholder_ids() {
        for p in ["", "  ", "null", "NULL", " undefined ", "0", "Anonymous"] {
            assert!(is_placeholder_id(p), "{p:?}");
        }
        for ok in ["u1", "00", "anon-1", "nullable"] {
            assert!(!is_placeholder_id(ok), "{ok:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(t.as_str().parse::<MessageType>().unwrap(), t);
        }
        for c in Channel::ALL {
            assert_eq!(c.as_str().parse::<Channel>().unwrap(), c);
        }
        assert!("fax".parse::<Channel>().is_err());
    }

    #[test]
    fn message_channels_and_their_aliases() {
        for c in Channel::ALL {
            assert_eq!(Channel::from_message(c.as_str()), Some(c));
        }
        for (value, want) in [
            ("browser", Channel::Web),
            ("mobile", Channel::App),
            ("ios", Channel::App),
            ("Android", Channel::App),
            ("pos", Channel::Store),
            (" Store ", Channel::Store),
            ("phone", Channel::CallCenter),
            ("Call Center", Channel::CallCenter),
            ("call-centre", Channel::CallCenter),
            ("callcenter", Channel::CallCenter),
        ] {
            assert_eq!(Channel::from_message(value), Some(want), "{value:?}");
        }
        for value in ["server", "", "fax", "web site"] {
            assert_eq!(Channel::from_message(value), None, "{value:?}");
        }
        // The config's `default_channel` stays strict: only our own names.
        assert!("browser".parse::<Channel>().is_err());
    }

    #[test]
    fn channels_order_as_declared() {
        let mut sorted = Channel::ALL;
        sorted.sort();
        assert_eq!(sorted, Channel::ALL);
        assert!(Channel::Web < Channel::Other);
    }
}
