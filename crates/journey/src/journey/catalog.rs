//! Touchpoint catalog: which journey stage and channel an event belongs to (docs/design.md §4).
//!
//! Loaded from TOML (`deploy/catalog.toml`) once at startup; stage 2 classifies every
//! event with it so each stored touchpoint carries a stage and a channel. A channel sent
//! in the message itself wins over the catalog's default, because the same event (say
//! `Order Completed`) happens on the web, in the app and in a store.
//!
//! An `[events]` entry may also say what the event's properties must look like (checked
//! by the collector, see [`crate::journey::properties`]), that it is a survey answer
//! (`feedback`, attributed to a touchpoint by the journey stage, see
//! `journey/feedback.rs`), and which score floors and targets its answers should meet
//! (exported as gauges for the `TouchpointBelowFloor` alert). README "Feedback and
//! stores" documents the syntax.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::{JourneyEvent, MessageType};
use crate::journey::properties::{self, FeedbackKind, PropertyRule, PropertyViolation};
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

/// Score levels of a touchpoint's answers and journey (`floor` / `target` of an
/// `[events]` entry). Each measure is optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measures {
    /// Mean CSAT (1–5) of the answers attributed to the touchpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csat: Option<f64>,
    /// NPS (% promoters − % detractors, −100–100) of its answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nps: Option<f64>,
    /// Mean CES (1–7) of its answers. Lower is better: a CES floor is the highest
    /// acceptable mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ces: Option<f64>,
    /// Share (0–1) of its customers who reach a later journey stage within 7 days
    /// (`touchpoint_scorecard.next_stage_share`; not alerted on, see README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_stage: Option<f64>,
}

impl Measures {
    /// `(measure label, value)` of each measure set, in label order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64)> {
        [
            ("ces", self.ces),
            ("csat", self.csat),
            ("next_stage", self.next_stage),
            ("nps", self.nps),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
    }
}

/// One touchpoint's floor and target of one measure ([`Catalog::thresholds`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// Catalog event name (the touchpoint).
    pub event: String,
    /// `csat`, `nps`, `ces` or `next_stage`.
    pub measure: &'static str,
    /// Lowest acceptable value (for `ces`: highest acceptable mean effort).
    pub floor: Option<f64>,
    /// Value it should reach.
    pub target: Option<f64>,
}

/// One `[events]` entry: its touchpoint, and what else the catalog says about the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEntry {
    /// Journey stage.
    pub stage: Stage,
    /// Default channel (the message's `channel` overrides it).
    pub channel: Channel,
    /// The event is a survey answer: `any` (the message names its scale in
    /// `properties.scale`), `nps`, `csat` or `ces`. Default: not an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackKind>,
    /// For an answer: the stage of the touchpoint it rates when the message names no
    /// event (attribution's third rule; `properties.about_stage` wins). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates_stage: Option<Stage>,
    /// Property name → rule; the collector refuses a message breaking one
    /// (`invalid_property`). Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertyRule>,
    /// Lowest acceptable scores of this touchpoint (alerted on when enough answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<Measures>,
    /// Scores the touchpoint should reach (shown beside the scorecard, not alerted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Measures>,
}

impl EventEntry {
    /// Its stage and default channel.
    pub fn touchpoint(&self) -> Touchpoint {
        Touchpoint {
            stage: self.stage,
            channel: self.channel,
        }
    }
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
    /// Track event name (exact, case-sensitive as Segment) → stage, channel and the
    /// rest of its entry. Default empty.
    pub events: BTreeMap<String, EventEntry>,
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
                .map_or(self.unknown, EventEntry::touchpoint),
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

    /// Check a track event's properties against its entry's schema (and, for an
    /// answer, its scale and score). Events without a schema pass; `properties` is
    /// parsed only for events that have one.
    pub fn check_properties(
        &self,
        event: &str,
        properties: impl FnOnce() -> serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), PropertyViolation> {
        match self.events.get(event) {
            Some(e) if e.feedback.is_some() || !e.properties.is_empty() => {
                properties::check(&e.properties, e.feedback, &properties())
            }
            _ => Ok(()),
        }
    }

    /// Every touchpoint's floor and target per measure, by event name then measure
    /// (`csat`, `nps`, `ces`: the scale's units, NPS in points; `next_stage`: a share
    /// 0–1), for measures with at least one of the two.
    pub fn thresholds(&self) -> Vec<Threshold> {
        let mut out = Vec::new();
        for (event, e) in &self.events {
            let floor = e.floor.unwrap_or_default();
            let target = e.target.unwrap_or_default();
            let mut measures: Vec<&'static str> =
                floor.iter().chain(target.iter()).map(|(m, _)| m).collect();
            measures.sort_unstable();
            measures.dedup();
            for measure in measures {
                let get = |m: &Measures| m.iter().find(|(k, _)| *k == measure).map(|(_, v)| v);
                out.push(Threshold {
                    event: event.clone(),
                    measure,
                    floor: get(&floor),
                    target: get(&target),
                });
            }
        }
        out
    }

    /// Whether any event has a property schema or is an answer (the collector skips
    /// the lookup otherwise).
    pub fn has_property_rules(&self) -> bool {
        self.events
            .values()
            .any(|e| e.feedback.is_some() || !e.properties.is_empty())
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
    fn deploy_catalog_declares_answers_stores_and_floors() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/catalog.toml");
        let catalog = Catalog::load(&path).expect("deploy/catalog.toml");
        assert!(catalog.has_property_rules());
        let props = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        // Answers: scale and score on it; footfall and audits: their required fields.
        assert_eq!(
            catalog.check_properties("NPS Submitted", || props(serde_json::json!({"score": 10}))),
            Ok(())
        );
        let err = catalog
            .check_properties("Survey Completed", || {
                props(serde_json::json!({"score": 4}))
            })
            .unwrap_err();
        assert_eq!(err.property, "scale");
        let err = catalog
            .check_properties("Footfall Counted", || {
                props(serde_json::json!({"store_id": "s", "count": 3, "period_secs": 3600}))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "properties.period_start is required");
        // Events without a schema are not parsed at all.
        assert_eq!(
            catalog.check_properties("Product Viewed", || unreachable!("parsed")),
            Ok(())
        );
        let floors: Vec<(String, &str, Option<f64>, Option<f64>)> = catalog
            .thresholds()
            .into_iter()
            .map(|t| (t.event, t.measure, t.floor, t.target))
            .collect();
        assert!(floors.contains(&("Order Delivered".into(), "nps", Some(20.0), Some(40.0))));
        assert!(floors.contains(&("Follow-up Completed".into(), "ces", Some(3.5), None)));
        assert!(floors.contains(&("Follow-up Completed".into(), "csat", Some(4.0), Some(4.5))));
        assert_eq!(
            catalog.events["Survey Completed"].rates_stage,
            Some(Stage::Service)
        );
    }

    #[test]
    fn bad_feedback_entries_name_the_key() {
        for (toml, word) in [
            ("[events]\n\"X\" = { stage = \"feedback\", channel = \"web\", feedback = \"stars\" }", "stars"),
            ("[events]\n\"X\" = { stage = \"service\", channel = \"web\", floor = { csatt = 4 } }", "csatt"),
            ("[events.\"X\"]\nstage = \"service\"\nchannel = \"web\"\nproperties.n = { type = \"float\" }", "float"),
            ("[events.\"X\"]\nstage = \"service\"\nchannel = \"web\"\nproperties.n = { type = \"number\", requird = true }", "requird"),
        ] {
            let err = Catalog::from_toml_str(toml, None).unwrap_err();
            assert!(err.to_string().contains(word), "{err}");
        }
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
