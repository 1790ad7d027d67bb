//! Parsing and validating `deploy/funnels.toml` (docs/design.md §5), and matching an
//! event against the steps once, when it enters stage 2.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Steps, MAX_STEPS};
use crate::event::{JourneyEvent, MessageType};
use crate::JourneyError;

/// The funnels file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunnelsFile {
    /// `[[funnel]]` tables.
    #[serde(default)]
    funnel: Vec<FunnelDef>,
}

/// One `[[funnel]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunnelDef {
    /// Unique name, stored in `funnel_attempts.funnel` and used as a metric label.
    name: String,
    /// Time from the step-1 event within which every later step must happen, seconds.
    window_secs: u64,
    /// Ordered steps.
    steps: Vec<StepDef>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    /// Track event name, exact.
    event: String,
    /// Property equality filters, all must hold.
    #[serde(default, rename = "where")]
    filters: BTreeMap<String, toml::Value>,
}

/// A validated step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Track event name the step matches.
    pub event: String,
    /// Top-level property → required value.
    pub filters: Vec<(String, Value)>,
}

impl Step {
    fn matches(&self, event: &JourneyEvent) -> bool {
        event.kind == MessageType::Track
            && event.event.as_deref() == Some(self.event.as_str())
            && self
                .filters
                .iter()
                .all(|(k, want)| event.properties.get(k).is_some_and(|v| same_value(v, want)))
    }
}

/// Equality where `1` and `1.0` are the same number; otherwise JSON equality.
fn same_value(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

/// A validated funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Funnel {
    /// Unique name.
    pub name: String,
    /// Window from the step-1 event, ms.
    pub window_ms: i64,
    /// Ordered steps, at least one and at most [`MAX_STEPS`].
    pub steps: Vec<Step>,
}

/// All configured funnels, in file order (the order of attempt rows and of the masks).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunnelSet {
    funnels: Vec<Funnel>,
}

impl FunnelSet {
    /// Parse and validate TOML text; `origin` names the file in errors.
    pub fn from_toml_str(text: &str, origin: Option<&str>) -> Result<Self, JourneyError> {
        let file: FunnelsFile =
            toml::from_str(text).map_err(|e| JourneyError::invalid("funnels", origin, e))?;
        let bad = |message: String| JourneyError::invalid("funnels", origin, message);
        let mut names = BTreeSet::new();
        let mut funnels = Vec::with_capacity(file.funnel.len());
        for def in file.funnel {
            if def.name.trim().is_empty() {
                return Err(bad("funnel.name must not be empty".into()));
            }
            if !names.insert(def.name.clone()) {
                return Err(bad(format!("duplicate funnel name `{}`", def.name)));
            }
            let window_ms = i64::try_from(def.window_secs.saturating_mul(1000))
                .ok()
                .filter(|w| *w > 0)
                .ok_or_else(|| {
                    bad(format!(
                        "funnel `{}`: window_secs must be positive, got {}",
                        def.name, def.window_secs
                    ))
                })?;
            if def.steps.is_empty() || def.steps.len() > MAX_STEPS {
                return Err(bad(format!(
                    "funnel `{}`: steps must have 1 to {MAX_STEPS} entries, got {}",
                    def.name,
                    def.steps.len()
                )));
            }
            let mut steps = Vec::with_capacity(def.steps.len());
            for (i, step) in def.steps.into_iter().enumerate() {
                if step.event.trim().is_empty() {
                    return Err(bad(format!(
                        "funnel `{}` step {}: event must not be empty",
                        def.name,
                        i + 1
                    )));
                }
                let mut filters = Vec::with_capacity(step.filters.len());
                for (key, value) in step.filters {
                    let json = match value {
                        toml::Value::String(s) => Value::String(s),
                        toml::Value::Integer(n) => Value::from(n),
                        toml::Value::Boolean(b) => Value::Bool(b),
                        toml::Value::Float(f) => serde_json::Number::from_f64(f)
                            .map(Value::Number)
                            .ok_or_else(|| {
                                bad(format!(
                                    "funnel `{}` step {} where.{key}: {f} is not a JSON number",
                                    def.name,
                                    i + 1
                                ))
                            })?,
                        other => {
                            return Err(bad(format!(
                                "funnel `{}` step {} where.{key}: only strings, numbers and \
                                 booleans can be compared, got {}",
                                def.name,
                                i + 1,
                                other.type_str()
                            )))
                        }
                    };
                    filters.push((key, json));
                }
                steps.push(Step {
                    event: step.event,
                    filters,
                });
            }
            funnels.push(Funnel {
                name: def.name,
                window_ms,
                steps,
            });
        }
        if funnels.len() > usize::from(u16::MAX) {
            return Err(bad("too many funnels".into()));
        }
        Ok(Self { funnels })
    }

    /// Read and parse a funnels file.
    pub fn load(path: &Path) -> Result<Self, JourneyError> {
        let text = crate::read_file(path)?;
        Self::from_toml_str(&text, Some(&path.display().to_string()))
    }

    /// The funnels, in file order.
    pub fn funnels(&self) -> &[Funnel] {
        &self.funnels
    }

    /// Longest window, ms (0 without funnels): how far back history must reach.
    pub fn max_window_ms(&self) -> i64 {
        self.funnels.iter().map(|f| f.window_ms).max().unwrap_or(0)
    }

    /// For each funnel with at least one matching step: (funnel index, bit i set when
    /// step i+1 matches). Empty (no allocation) for most events.
    pub fn matches(&self, event: &JourneyEvent) -> Vec<(u16, u32)> {
        self.masks(event).collect()
    }

    /// [`Self::matches`] as kept in a customer's history: no allocation for the usual
    /// zero or one matching funnel.
    pub(crate) fn steps(&self, event: &JourneyEvent) -> Steps {
        let mut masks = self.masks(event);
        match (masks.next(), masks.next()) {
            (None, _) => Steps::NONE,
            (Some((f, m)), None) => Steps::One(f, m),
            (Some(a), Some(b)) => Steps::Many(Box::new([a, b].into_iter().chain(masks).collect())),
        }
    }

    fn masks<'a>(&'a self, event: &'a JourneyEvent) -> impl Iterator<Item = (u16, u32)> + 'a {
        // Only a named track event can match a step.
        let named = event.kind == MessageType::Track && event.event.is_some();
        self.funnels
            .iter()
            .enumerate()
            .filter(move |_| named)
            .filter_map(move |(fi, funnel)| {
                let mask = funnel
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.matches(event))
                    .fold(0u32, |m, (i, _)| m | (1 << i));
                match (mask != 0, u16::try_from(fi)) {
                    (true, Ok(fi)) => Some((fi, mask)),
                    _ => None,
                }
            })
    }
}
