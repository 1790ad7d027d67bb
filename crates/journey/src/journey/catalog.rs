//! Touchpoint catalog: which journey stage and channel an event belongs to (docs/design.md §4).
//!
//! Loaded from TOML (`deploy/catalog.toml`) once at startup; stage 2 classifies every
//! event with it so each stored touchpoint carries a stage and a channel. A channel sent
//! in the message itself wins over the catalog's default, because the same event (say
//! `Order Completed`) happens on the web, in the app and in a store.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::{JourneyEvent, MessageType};
use crate::JourneyError;

/// Journey stage of a touchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Ads, visits, first product views.
    Awareness,
    /// Comparing, carting, first contact.
    Consideration,
    /// Checkout, payment, delivery.
    Purchase,
    /// Complaints, support, follow-up calls.
    Service,
    /// Surveys, reviews.
    Feedback,
}

impl Stage {
    /// Value stored in `touchpoints.stage`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Awareness => "awareness",
            Stage::Consideration => "consideration",
            Stage::Purchase => "purchase",
            Stage::Service => "service",
            Stage::Feedback => "feedback",
        }
    }
}

/// Where a touchpoint happened: core's one channel vocabulary (names, message aliases,
/// and the declaration order that is the order of `sessions.channels`).
pub use touchstream_core::Channel;

/// Stage and channel of one kind of touchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Touchpoint {
    /// Journey stage.
    pub stage: Stage,
    /// Default channel (the message's `channel` overrides it).
    pub channel: Channel,
}

/// The catalog file (`deploy/catalog.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Catalog {
    /// Track events not listed in `events`. Default awareness / other.
    pub unknown: Touchpoint,
    /// Every `page` call. Default awareness / web.
    pub page: Touchpoint,
    /// Every `screen` call. Default awareness / app.
    pub screen: Touchpoint,
    /// Every `identify` call (sign-up, login). Default consideration / other.
    pub identify: Touchpoint,
    /// Every `alias` call. Default consideration / other.
    pub alias: Touchpoint,
    /// Track event name (exact, case-sensitive as Segment) → stage and channel.
    /// Default empty.
    pub events: BTreeMap<String, Touchpoint>,
}

impl Default for Catalog {
    fn default() -> Self {
        let tp = |stage, channel| Touchpoint { stage, channel };
        Self {
            unknown: tp(Stage::Awareness, Channel::Other),
            page: tp(Stage::Awareness, Channel::Web),
            screen: tp(Stage::Awareness, Channel::App),
            identify: tp(Stage::Consideration, Channel::Other),
            alias: tp(Stage::Consideration, Channel::Other),
            events: BTreeMap::new(),
        }
    }
}

impl Catalog {
    /// Parse TOML text; `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: Option<&str>) -> Result<Self, JourneyError> {
        toml::from_str(text).map_err(|e| JourneyError::invalid("catalog", origin, e))
    }

    /// Read and parse a catalog file.
    pub fn load(path: &Path) -> Result<Self, JourneyError> {
        let text = crate::read_file(path)?;
        Self::from_toml_str(&text, Some(&path.display().to_string()))
    }

    /// Stage and channel of an event: by kind for page/screen/identify/alias, by name for
    /// track; then a recognised message `channel` replaces the default channel.
    pub fn classify(&self, event: &JourneyEvent) -> Touchpoint {
        let mut tp = match event.kind {
            MessageType::Track => event
                .event
                .as_deref()
                .and_then(|name| self.events.get(name))
                .copied()
                .unwrap_or(self.unknown),
            MessageType::Page => self.page,
            MessageType::Screen => self.screen,
            MessageType::Identify => self.identify,
            MessageType::Alias => self.alias,
        };
        if let Some(channel) = event.channel.as_deref().and_then(Channel::from_message) {
            tp.channel = channel;
        }
        tp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(name: &str, channel: Option<&str>) -> JourneyEvent {
        JourneyEvent {
            event_id: "e".into(),
            kind: MessageType::Track,
            event: Some(name.into()),
            anonymous_id: Some("a".into()),
            user_id: None,
            previous_id: None,
            event_time_ms: 0,
            channel: channel.map(Into::into),
            properties: Default::default(),
        }
    }

    #[test]
    fn deploy_catalog_parses_and_classifies() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/catalog.toml");
        let catalog = Catalog::load(&path).expect("deploy/catalog.toml");
        let tp = catalog.classify(&track("Order Completed", None));
        assert_eq!(tp.stage, Stage::Purchase);
        assert_eq!(tp.channel, Channel::Web);
        // The message channel wins over the catalog's default.
        let tp = catalog.classify(&track("Order Completed", Some("store")));
        assert_eq!((tp.stage, tp.channel), (Stage::Purchase, Channel::Store));
        // Segment library channels map, `server` leaves the default.
        assert_eq!(
            catalog
                .classify(&track("Order Completed", Some("mobile")))
                .channel,
            Channel::App
        );
        assert_eq!(
            catalog
                .classify(&track("Order Completed", Some("server")))
                .channel,
            Channel::Web
        );
        let tp = catalog.classify(&track("Complaint Filed", None));
        assert_eq!(
            (tp.stage, tp.channel),
            (Stage::Service, Channel::CallCenter)
        );
    }

    #[test]
    fn unknown_events_and_kinds_use_configured_defaults() {
        let catalog = Catalog::from_toml_str(
            "unknown = { stage = \"feedback\", channel = \"email\" }\n\
             page = { stage = \"consideration\", channel = \"web\" }",
            None,
        )
        .expect("valid");
        let tp = catalog.classify(&track("Never Heard Of", None));
        assert_eq!((tp.stage, tp.channel), (Stage::Feedback, Channel::Email));
        let mut page = track("Home", None);
        page.kind = MessageType::Page;
        assert_eq!(catalog.classify(&page).stage, Stage::Consideration);
        let mut screen = track("Home", None);
        screen.kind = MessageType::Screen;
        assert_eq!(catalog.classify(&screen), Catalog::default().screen);
    }

    #[test]
    fn bad_catalogs_name_the_key_or_value() {
        let err = Catalog::from_toml_str("colour = 1", Some("c.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("colour") && msg.contains("c.toml"), "{msg}");

        let err = Catalog::from_toml_str(
            "[events]\n\"Product Viewed\" = { stage = \"browsing\", channel = \"web\" }",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("browsing"), "{err}");

        let err = Catalog::from_toml_str(
            "[events]\n\"X\" = { stage = \"service\", channel = \"fax\" }",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("fax"), "{err}");

        let err = Catalog::from_toml_str(
            "[events]\n\"X\" = { stage = \"service\", chanel = \"web\" }",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("chanel"), "{err}");
    }
}
