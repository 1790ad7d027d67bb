//! Per-event property schemas of the catalog (README "Feedback and stores", event
//! contract) and the survey scales.
//!
//! A few events carry numbers that tables and alerts are built from: survey answers
//! (`score` on a `scale`), store audits and people-counter totals. A wrong type or an
//! out-of-range score would end up in an average nobody can trace back, so the collector
//! refuses such a message (reason `invalid_property`, to the DLQ) using these rules, and
//! the journey stage reads the answers with the same [`Scale`] ranges.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The scale a survey answer is given on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Net Promoter Score question: whole numbers 0–10 (9–10 promoters, 0–6 detractors).
    Nps,
    /// Customer satisfaction: 1–5, higher is better.
    Csat,
    /// Customer effort: 1–7, lower is better.
    Ces,
}

impl Scale {
    /// Every scale, in label order.
    pub const ALL: [Scale; 3] = [Scale::Nps, Scale::Csat, Scale::Ces];

    /// Value stored in `feedback.scale` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scale::Nps => "nps",
            Scale::Csat => "csat",
            Scale::Ces => "ces",
        }
    }

    /// From the `scale` property's value.
    pub fn parse(s: &str) -> Option<Scale> {
        Scale::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Smallest and largest score.
    pub fn range(self) -> (f64, f64) {
        match self {
            Scale::Nps => (0.0, 10.0),
            Scale::Csat => (1.0, 5.0),
            Scale::Ces => (1.0, 7.0),
        }
    }

    /// Whether `score` is a valid answer on this scale (NPS answers are whole numbers).
    pub fn accepts(self, score: f64) -> bool {
        let (lo, hi) = self.range();
        score.is_finite()
            && (lo..=hi).contains(&score)
            && (self != Scale::Nps || score.fract() == 0.0)
    }
}

/// What kind of answer a catalog event is (`feedback = "..."` in `[events]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackKind {
    /// The message names its scale in `properties.scale` (e.g. `Survey Completed`).
    Any,
    /// Always an NPS answer (`properties.scale`, if sent, must be `nps`).
    Nps,
    /// Always a CSAT answer.
    Csat,
    /// Always a CES answer.
    Ces,
}

impl FeedbackKind {
    /// The fixed scale, `None` for [`FeedbackKind::Any`].
    pub fn fixed(self) -> Option<Scale> {
        match self {
            FeedbackKind::Any => None,
            FeedbackKind::Nps => Some(Scale::Nps),
            FeedbackKind::Csat => Some(Scale::Csat),
            FeedbackKind::Ces => Some(Scale::Ces),
        }
    }
}

/// JSON type a property must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PropertyType {
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// A JSON number without a fractional part.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// An ISO-8601 date-time string with a time zone (`2026-12-01T10:00:00Z`).
    Timestamp,
    /// A JSON object (e.g. an audit's checklist).
    Object,
}

impl PropertyType {
    fn name(self) -> &'static str {
        match self {
            PropertyType::String => "a string",
            PropertyType::Number => "a number",
            PropertyType::Integer => "an integer",
            PropertyType::Boolean => "a boolean",
            PropertyType::Timestamp => "an ISO-8601 timestamp",
            PropertyType::Object => "an object",
        }
    }
}

/// One property's rule (`properties = { name = { type = "...", ... } }` of an event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertyRule {
    /// JSON type.
    #[serde(rename = "type")]
    pub kind: PropertyType,
    /// The message must have it (and not `null`). Default false.
    #[serde(default)]
    pub required: bool,
    /// Smallest allowed number (number/integer). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest allowed number (number/integer). Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Allowed values of a string, exact. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Why a message's properties break its event's schema: names the property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyViolation {
    /// The property (`properties.<name>`).
    pub property: String,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for PropertyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "properties.{} {}", self.property, self.problem)
    }
}

fn violation(property: &str, problem: impl Into<String>) -> PropertyViolation {
    PropertyViolation {
        property: property.to_owned(),
        problem: problem.into(),
    }
}

/// Check `properties` against `rules` and, for an answer event, its scale and score.
pub(crate) fn check(
    rules: &BTreeMap<String, PropertyRule>,
    feedback: Option<FeedbackKind>,
    properties: &Map<String, Value>,
) -> Result<(), PropertyViolation> {
    for (name, rule) in rules {
        match properties.get(name) {
            None | Some(Value::Null) if rule.required => {
                return Err(violation(name, "is required"));
            }
            None | Some(Value::Null) => {}
            Some(v) => check_value(name, rule, v)?,
        }
    }
    if let Some(kind) = feedback {
        answer(kind, properties)?;
    }
    Ok(())
}

fn check_value(name: &str, rule: &PropertyRule, v: &Value) -> Result<(), PropertyViolation> {
    let wrong = || violation(name, format!("must be {}", rule.kind.name()));
    match rule.kind {
        PropertyType::String => {
            let s = v.as_str().ok_or_else(wrong)?;
            if !rule.values.is_empty() && !rule.values.iter().any(|x| x == s) {
                return Err(violation(
                    name,
                    format!("must be one of {}", rule.values.join(", ")),
                ));
            }
        }
        PropertyType::Number | PropertyType::Integer => {
            let n = v.as_f64().ok_or_else(wrong)?;
            if rule.kind == PropertyType::Integer && n.fract() != 0.0 {
                return Err(wrong());
            }
            if rule.min.is_some_and(|m| n < m) || rule.max.is_some_and(|m| n > m) {
                let range = match (rule.min, rule.max) {
                    (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
                    (Some(lo), None) => format!("at least {lo}"),
                    (None, Some(hi)) => format!("at most {hi}"),
                    (None, None) => unreachable!("a bound was broken"),
                };
                return Err(violation(name, format!("must be {range}")));
            }
        }
        PropertyType::Boolean => {
            v.as_bool().ok_or_else(wrong)?;
        }
        PropertyType::Timestamp => {
            if !v.as_str().is_some_and(is_timestamp) {
                return Err(wrong());
            }
        }
        PropertyType::Object => {
            v.as_object().ok_or_else(wrong)?;
        }
    }
    Ok(())
}

/// A survey answer as the catalog contract defines it (README "Feedback and stores").
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParsedAnswer {
    pub(crate) scale: Scale,
    pub(crate) score: f64,
}

/// The scale and score of an answer event: `scale` (required for `feedback = "any"`,
/// else fixed), `score` a number on that scale.
pub(crate) fn answer(
    kind: FeedbackKind,
    properties: &Map<String, Value>,
) -> Result<ParsedAnswer, PropertyViolation> {
    let named = match properties.get("scale") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(Scale::parse)
                .ok_or_else(|| violation("scale", "must be one of nps, csat, ces"))?,
        ),
    };
    let scale = match (kind.fixed(), named) {
        (None, None) => return Err(violation("scale", "is required")),
        (None, Some(s)) => s,
        (Some(fixed), Some(s)) if s != fixed => {
            return Err(violation(
                "scale",
                format!("must be {} for this event", fixed.as_str()),
            ))
        }
        (Some(fixed), _) => fixed,
    };
    let score = match properties.get("score") {
        None | Some(Value::Null) => return Err(violation("score", "is required")),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| violation("score", "must be a number"))?,
    };
    if !scale.accepts(score) {
        let (lo, hi) = scale.range();
        let whole = if scale == Scale::Nps {
            "a whole number "
        } else {
            ""
        };
        return Err(violation(
            "score",
            format!(
                "must be {whole}between {lo} and {hi} on the {} scale",
                scale.as_str()
            ),
        ));
    }
    Ok(ParsedAnswer { scale, score })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`: a date-time with its zone, the shape
/// `period_start` must have for the store view to place it in an hour.
pub(crate) fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't' | b' ')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn answers_need_a_known_scale_and_a_score_on_it() {
        let ok = answer(
            FeedbackKind::Any,
            &props(json!({"scale": "csat", "score": 4})),
        );
        assert_eq!(ok.map(|a| (a.scale, a.score)), Ok((Scale::Csat, 4.0)));
        let fixed = answer(FeedbackKind::Nps, &props(json!({"score": 9})));
        assert_eq!(fixed.map(|a| a.scale), Ok(Scale::Nps));
        for (kind, p, property) in [
            (FeedbackKind::Any, json!({"score": 4}), "scale"),
            (
                FeedbackKind::Any,
                json!({"scale": "stars", "score": 4}),
                "scale",
            ),
            (
                FeedbackKind::Nps,
                json!({"scale": "csat", "score": 4}),
                "scale",
            ),
            (FeedbackKind::Any, json!({"scale": "csat"}), "score"),
            (
                FeedbackKind::Any,
                json!({"scale": "csat", "score": "4"}),
                "score",
            ),
            (
                FeedbackKind::Any,
                json!({"scale": "csat", "score": 6}),
                "score",
            ),
            (
                FeedbackKind::Any,
                json!({"scale": "ces", "score": 0}),
                "score",
            ),
            (FeedbackKind::Nps, json!({"score": 7.5}), "score"),
            (FeedbackKind::Nps, json!({"score": 11}), "score"),
        ] {
            let err = answer(kind, &props(p.clone())).unwrap_err();
            assert_eq!(err.property, property, "{p}: {err}");
        }
    }

    #[test]
    fn rules_check_presence_type_range_and_values() {
        let rules: BTreeMap<String, PropertyRule> = toml::from_str(
            "store_id = { type = \"string\", required = true }\n\
             count = { type = \"integer\", required = true, min = 0 }\n\
             period_start = { type = \"timestamp\" }\n\
             kind = { type = \"string\", values = [\"staff\", \"mystery\"] }",
        )
        .expect("rules");
        let good =
            props(json!({"store_id": "s1", "count": 12, "period_start": "2026-12-01T10:00:00Z"}));
        assert_eq!(check(&rules, None, &good), Ok(()));
        for (p, property) in [
            (json!({"count": 1}), "store_id"),
            (json!({"store_id": null, "count": 1}), "store_id"),
            (json!({"store_id": 7, "count": 1}), "store_id"),
            (json!({"store_id": "s", "count": 1.5}), "count"),
            (json!({"store_id": "s", "count": -1}), "count"),
            (
                json!({"store_id": "s", "count": 1, "period_start": "yesterday"}),
                "period_start",
            ),
            (
                json!({"store_id": "s", "count": 1, "kind": "robot"}),
                "kind",
            ),
        ] {
            let err = check(&rules, None, &props(p.clone())).unwrap_err();
            assert_eq!(err.property, property, "{p}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("properties.{property} ")),
                "{err}"
            );
        }
    }

    #[test]
    fn timestamps_need_a_zone() {
        for ok in [
            "2026-12-01T10:00:00Z",
            "2026-12-01T10:00:00.250+01:00",
            "2026-12-01 10:00:00z",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in [
            "2026-12-01T10:00:00",
            "2026-12-01",
            "2026-12-01T10:00:00.Z",
            "x026-12-01T10:00:00Z",
        ] {
            assert!(!is_timestamp(bad), "{bad}");
        }
    }
}
