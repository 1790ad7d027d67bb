//! Parsing and validating `deploy/funnels.toml` (docs/design.md §5, README "Funnels"),
//! and matching an event against the steps and exclusions once, when it enters stage 2.
//!
//! Validation happens here, at load, so that the state machine in `attempt.rs` can rely
//! on a well-formed funnel (first and last step required, exclusion ranges inside the
//! steps, no per-step window where it has no meaning) and every mistake is reported with
//! the funnel, the step and what is wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Steps, Values, MAX_STEPS};
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
    /// Time from the first event of an attempt within which every later step must
    /// happen, seconds.
    window_secs: u64,
    /// `"ordered"` (default), `"strict"` or `"any"`; a string so that a wrong value is
    /// reported with the funnel's name.
    #[serde(default)]
    order: Option<String>,
    /// Steps, in order.
    steps: Vec<StepDef>,
    /// Events that exclude an attempt between two steps.
    #[serde(default)]
    exclude: Vec<ExcludeDef>,
    /// Dimensions to break attempts down by (README "Funnels", Breakdowns).
    #[serde(default)]
    breakdown: Vec<BreakdownDef>,
    /// `"first_step"` (default), `"last_step"` or `"each_step"`.
    #[serde(default)]
    breakdown_attribution: Option<String>,
}

/// One `breakdown` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakdownDef {
    /// `channel`, `source` or `properties.<name>`.
    key: String,
    /// Values that get a metric series of their own; the rest count as `other`.
    #[serde(default)]
    values: Vec<String>,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    /// Track event name, exact.
    event: String,
    /// Property filters, all must hold.
    #[serde(default, rename = "where")]
    filters: BTreeMap<String, toml::Value>,
    /// An attempt may skip this step (not the first or the last).
    #[serde(default)]
    optional: bool,
    /// Time allowed since the previous reached step, seconds (besides the window).
    #[serde(default)]
    within_secs: Option<u64>,
}

/// One `exclude` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExcludeDef {
    /// Track event name, exact.
    event: String,
    /// Property filters, all must hold.
    #[serde(default, rename = "where")]
    filters: BTreeMap<String, toml::Value>,
    /// `[from, to]`, 1-based steps: after reaching `from` and before reaching `to`.
    between: Vec<i64>,
}

/// How steps must follow each other (PostHog's funnel order types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Steps in order; other events may happen between them.
    #[default]
    Ordered,
    /// Steps in order and consecutive: any other event of the customer while an attempt
    /// is open ends it as dropped (at that event).
    Strict,
    /// Steps in any order within the window.
    Any,
}

impl Order {
    fn is_ordered(&self) -> bool {
        *self == Order::Ordered
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "ordered" => Some(Order::Ordered),
            "strict" => Some(Order::Strict),
            "any" => Some(Order::Any),
            _ => None,
        }
    }
}

/// Most metric series one funnel's breakdown may produce per step: the product over its
/// dimensions of (allow-listed values + 1 for `other`). Keeps the label bounded whatever
/// the events carry.
pub const MAX_BREAKDOWN_SERIES: usize = 20;

/// Most bytes of a breakdown value stored in rows (longer values are cut at a character
/// boundary), so a stray large property cannot inflate per-customer memory.
pub const MAX_BREAKDOWN_VALUE_BYTES: usize = 64;

/// Which step's values an attempt is attributed to (PostHog's first-touch, last-touch
/// and per-step attribution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The values of the event that started the attempt.
    #[default]
    FirstStep,
    /// The values of the last step reached.
    LastStep,
    /// The values of every reached step.
    EachStep,
}

impl Attribution {
    fn is_first_step(&self) -> bool {
        *self == Attribution::FirstStep
    }
}

/// What a breakdown dimension reads from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    /// The classified channel (catalog, or the message's recognised `channel`).
    Channel,
    /// The collector source: `event_id` up to its first `:` (README "Event ids and
    /// retries").
    Source,
    /// A top-level property, `properties.<name>`: strings as they are, numbers and
    /// booleans as their JSON text; absent, null, objects and arrays read as `""`.
    Property(String),
}

impl Dimension {
    fn parse(key: &str) -> Result<Self, String> {
        match key {
            "channel" => Ok(Dimension::Channel),
            "source" => Ok(Dimension::Source),
            _ => match key.split_once('.') {
                Some(("properties", name)) if !name.is_empty() && !name.contains('.') => {
                    Ok(Dimension::Property(name.to_owned()))
                }
                Some(("properties", _)) => Err(format!(
                    "`{key}`: only top-level properties can be used, `properties.<name>`"
                )),
                Some(("traits" | "context", _)) => Err(format!(
                    "`{key}`: traits and context do not reach the journey stage (only \
                     `properties` does); use channel, source or properties.<name>"
                )),
                _ => Err(format!(
                    "unknown breakdown key `{key}`; use channel, source or properties.<name>"
                )),
            },
        }
    }

    /// The dimension's raw value for an event ("" when it has none).
    fn read<'a>(
        &self,
        event: &'a JourneyEvent,
        channel: &'static str,
    ) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        let raw: Cow<'a, str> = match self {
            Dimension::Channel => Cow::Borrowed(channel),
            Dimension::Source => Cow::Borrowed(
                event
                    .event_id
                    .split_once(':')
                    .map_or("", |(source, _)| source),
            ),
            Dimension::Property(name) => match event.properties.get(name) {
                Some(Value::String(s)) => Cow::Owned(s.clone()),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => Cow::Owned(v.to_string()),
                _ => Cow::Borrowed(""),
            },
        };
        match raw {
            Cow::Borrowed(s) => Cow::Borrowed(cut(s)),
            Cow::Owned(s) if s.len() <= MAX_BREAKDOWN_VALUE_BYTES => Cow::Owned(s),
            Cow::Owned(s) => Cow::Owned(cut(&s).to_owned()),
        }
    }
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_BREAKDOWN_VALUE_BYTES {
        return s;
    }
    let mut end = MAX_BREAKDOWN_VALUE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A validated breakdown dimension.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    /// As written: `channel`, `source` or `properties.<name>`; stored in
    /// `funnel_attempts.breakdown_keys`.
    pub key: String,
    /// Allow-listed values (metric label values); others are labelled `other`.
    pub values: Vec<Arc<str>>,
    #[serde(skip)]
    pub(crate) dimension: Dimension,
}

impl Breakdown {
    /// The metric label value for a stored value: itself when allow-listed, else `other`.
    pub fn label<'a>(&'a self, value: &'a str) -> &'a str {
        if self.values.iter().any(|v| v.as_ref() == value) {
            value
        } else {
            OTHER
        }
    }
}

/// Label value of values outside the allow-list.
pub const OTHER: &str = "other";

/// One condition on a top-level property.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `key = value`: present and equal (`1` equals `1.0`).
    Eq(Value),
    /// `key = { in = [..] }`: present and equal to one of them.
    In(Vec<Value>),
    /// `key = { not = v }` or `{ not = [..] }`: absent, or equal to none of them.
    Not(Vec<Value>),
    /// `key = { ">" = n }`: a number (or a string holding one) greater than `n`.
    Gt(f64),
    /// `">="`.
    Ge(f64),
    /// `"<"`.
    Lt(f64),
    /// `"<="`.
    Le(f64),
    /// `key = { exists = true }`: present and not null; `false`: absent or null.
    Exists(bool),
}

impl Filter {
    /// Whether `got` (the property, `None` when absent) satisfies the condition.
    pub fn holds(&self, got: Option<&Value>) -> bool {
        let got = got.filter(|v| !v.is_null());
        match self {
            Filter::Eq(want) => got.is_some_and(|g| same_value(g, want)),
            Filter::In(all) => got.is_some_and(|g| all.iter().any(|w| same_value(g, w))),
            Filter::Not(all) => got.is_none_or(|g| !all.iter().any(|w| same_value(g, w))),
            Filter::Gt(n) => number(got).is_some_and(|g| g > *n),
            Filter::Ge(n) => number(got).is_some_and(|g| g >= *n),
            Filter::Lt(n) => number(got).is_some_and(|g| g < *n),
            Filter::Le(n) => number(got).is_some_and(|g| g <= *n),
            Filter::Exists(want) => got.is_some() == *want,
        }
    }
}

/// Serialized as written in the file (`"pro"`, `{"in": [..]}`, `{">": 5.0}`): an
/// equality stays the bare value it was before the other conditions existed, so the
/// definition fingerprints of funnels that use none of them (`journey/remap.rs`) do not
/// change.
impl Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (op, value): (&str, Value) = match self {
            Filter::Eq(v) => return v.serialize(serializer),
            Filter::In(v) => ("in", Value::from(v.clone())),
            Filter::Not(v) => ("not", Value::from(v.clone())),
            Filter::Gt(n) => (">", Value::from(*n)),
            Filter::Ge(n) => (">=", Value::from(*n)),
            Filter::Lt(n) => ("<", Value::from(*n)),
            Filter::Le(n) => ("<=", Value::from(*n)),
            Filter::Exists(b) => ("exists", Value::Bool(*b)),
        };
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(op, &value)?;
        map.end()
    }
}

/// A JSON number, or a string that parses as one (Segment libraries often send numbers
/// as text).
fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Equality where `1` and `1.0` are the same number; otherwise JSON equality.
fn same_value(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

/// What a step or an exclusion matches: a track event by name and property filters.
fn event_matches(name: &str, filters: &[(String, Filter)], event: &JourneyEvent) -> bool {
    event.kind == MessageType::Track
        && event.event.as_deref() == Some(name)
        && filters
            .iter()
            .all(|(k, f)| f.holds(event.properties.get(k)))
}

/// A validated step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Track event name the step matches.
    pub event: String,
    /// Top-level property → condition; all must hold.
    pub filters: Vec<(String, Filter)>,
    /// An attempt may skip it (never the first or the last step).
    // Left out when unset, here and below, so a funnel without the newer options
    // serializes (and fingerprints, `journey/remap.rs`) as it did before they existed.
    #[serde(skip_serializing_if = "is_false")]
    pub optional: bool,
    /// Time allowed since the previous reached step, ms (never on the first step, nor
    /// with [`Order::Any`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_ms: Option<i64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Step {
    fn matches(&self, event: &JourneyEvent) -> bool {
        event_matches(&self.event, &self.filters, event)
    }
}

/// A validated exclusion: an attempt in which a matching event happens after it reached
/// step `from` and before it reached step `to` closes as `excluded`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exclusion {
    /// Track event name.
    pub event: String,
    /// Property conditions; all must hold.
    pub filters: Vec<(String, Filter)>,
    /// 1-based step after which the exclusion applies.
    pub from: usize,
    /// 1-based step before which it applies (`from < to ≤ steps`).
    pub to: usize,
}

impl Exclusion {
    fn matches(&self, event: &JourneyEvent) -> bool {
        event_matches(&self.event, &self.filters, event)
    }
}

/// A validated funnel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Funnel {
    /// Unique name.
    pub name: String,
    /// Window from the first event of an attempt, ms.
    pub window_ms: i64,
    /// How steps must follow each other.
    #[serde(skip_serializing_if = "Order::is_ordered")]
    pub order: Order,
    /// Steps, at least one; steps and exclusions together at most [`MAX_STEPS`].
    pub steps: Vec<Step>,
    /// Exclusions; in an event's mask, exclusion `j` is bit `steps.len() + j`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Exclusion>,
    /// Breakdown dimensions (none: the funnel is not broken down).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdown: Vec<Breakdown>,
    /// Which step's values an attempt carries.
    #[serde(skip_serializing_if = "Attribution::is_first_step")]
    pub breakdown_attribution: Attribution,
    /// Every tuple of allow-listed values (one per dimension), first dimension slowest:
    /// what a [`Values::Listed`] index names. Built from `breakdown` when the file loads
    /// (at most [`MAX_BREAKDOWN_SERIES`] − 1), so every event and attempt with the same
    /// allow-listed values shares one tuple instead of holding its own.
    #[serde(skip)]
    pub(crate) listed: Vec<Arc<[Arc<str>]>>,
}

impl Funnel {
    /// The metric `breakdown` label for `values` (one per dimension): the allow-listed
    /// values joined by `/`, each `other` when not allow-listed; `all` for a funnel
    /// without breakdown. At most [`MAX_BREAKDOWN_SERIES`] distinct labels per funnel.
    pub fn breakdown_label<S: AsRef<str>>(&self, values: &[S]) -> String {
        if self.breakdown.is_empty() {
            return ALL.to_owned();
        }
        let mut out = String::new();
        for (i, b) in self.breakdown.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            out.push_str(b.label(values.get(i).map_or("", |v| v.as_ref())));
        }
        out
    }

    /// The label of 1-based `step` of an attempt whose row holds `breakdown_values`: its
    /// attributed values, or, for `each_step`, that step's own.
    pub fn step_breakdown_label<S: AsRef<str>>(
        &self,
        breakdown_values: &[S],
        step: usize,
    ) -> String {
        let dims = self.breakdown.len();
        let values = match self.breakdown_attribution {
            Attribution::EachStep if dims > 0 => breakdown_values
                .get(step.saturating_sub(1) * dims..step * dims)
                .unwrap_or(&[]),
            _ => breakdown_values,
        };
        self.breakdown_label(values)
    }

    /// This funnel's breakdown values of an event: the index of its tuple in
    /// [`Self::listed`] when every value is allow-listed, else the values (allow-listed
    /// ones sharing the configuration's strings).
    fn values(&self, event: &JourneyEvent, channel: &'static str) -> Values {
        let raw: Vec<_> = self
            .breakdown
            .iter()
            .map(|b| b.dimension.read(event, channel))
            .collect();
        let mut index = Some(0usize);
        for (b, r) in self.breakdown.iter().zip(&raw) {
            let at = b.values.iter().position(|v| v.as_ref() == r.as_ref());
            index = index.zip(at).map(|(i, at)| i * b.values.len() + at);
        }
        if let Some(i) = index.and_then(|i| u8::try_from(i).ok()) {
            if usize::from(i) < self.listed.len() {
                return Values::Listed(i);
            }
        }
        Values::Own(
            self.breakdown
                .iter()
                .zip(raw)
                .map(
                    |(b, r)| match b.values.iter().find(|v| v.as_ref() == r.as_ref()) {
                        Some(v) => Arc::clone(v),
                        None => Arc::from(r.as_ref()),
                    },
                )
                .collect(),
        )
    }

    /// `values` as this funnel's own allow-listed tuple when they equal one (after a
    /// restore, which reads every value as a string of its own).
    pub(crate) fn share_listed(&self, values: &mut Option<Arc<[Arc<str>]>>) {
        if let Some(v) = values {
            if let Some(t) = self.listed.iter().find(|t| t[..] == v[..]) {
                *v = Arc::clone(t);
            }
        }
    }

    /// The step bits of an event's mask (bit i: step i+1 matches).
    pub(crate) fn step_bits(&self, mask: u32) -> u32 {
        mask & low_bits(self.steps.len())
    }

    /// The exclusion bits of an event's mask, shifted down (bit j: exclusion j matches).
    pub(crate) fn exclusion_bits(&self, mask: u32) -> u32 {
        mask.checked_shr(self.steps.len() as u32).unwrap_or(0)
    }

    /// Bits of the steps an attempt must reach to convert.
    pub(crate) fn required_bits(&self) -> u32 {
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.optional)
            .fold(0, |m, (i, _)| m | (1 << i))
    }
}

/// The `breakdown` label of funnels without breakdown.
pub const ALL: &str = "all";

/// `n` low bits set (`n ≤ 32`).
fn low_bits(n: usize) -> u32 {
    1u32.checked_shl(n as u32).map_or(u32::MAX, |b| b - 1)
}

/// All configured funnels, in file order (the order of attempt rows and of the masks).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FunnelSet {
    funnels: Vec<Funnel>,
}

/// Builds "funnel `x` step 2: ..." messages.
struct Place<'a> {
    funnel: &'a str,
    origin: Option<&'a str>,
}

impl Place<'_> {
    fn err(&self, what: &str, message: impl std::fmt::Display) -> JourneyError {
        let sep = if what.is_empty() { "" } else { " " };
        JourneyError::invalid(
            "funnels",
            self.origin,
            format!("funnel `{}`{sep}{what}: {message}", self.funnel),
        )
    }
}

fn scalar(v: toml::Value, place: &Place<'_>, what: &str) -> Result<Value, JourneyError> {
    match v {
        toml::Value::String(s) => Ok(Value::String(s)),
        toml::Value::Integer(n) => Ok(Value::from(n)),
        toml::Value::Boolean(b) => Ok(Value::Bool(b)),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| place.err(what, format!("{f} is not a JSON number"))),
        other => Err(place.err(
            what,
            format!(
                "only strings, numbers and booleans can be compared, got {}",
                other.type_str()
            ),
        )),
    }
}

fn bound(v: toml::Value, place: &Place<'_>, what: &str) -> Result<f64, JourneyError> {
    match v {
        toml::Value::Integer(n) => Ok(n as f64),
        toml::Value::Float(f) if f.is_finite() => Ok(f),
        other => Err(place.err(what, format!("expects a number, got {other}"))),
    }
}

fn scalars(v: toml::Value, place: &Place<'_>, what: &str) -> Result<Vec<Value>, JourneyError> {
    match v {
        toml::Value::Array(all) if all.is_empty() => {
            Err(place.err(what, "expects a non-empty list"))
        }
        toml::Value::Array(all) => all.into_iter().map(|v| scalar(v, place, what)).collect(),
        one => Ok(vec![scalar(one, place, what)?]),
    }
}

/// `where` entries → conditions. `at` names the step or exclusion ("step 2").
fn filters(
    raw: BTreeMap<String, toml::Value>,
    place: &Place<'_>,
    at: &str,
) -> Result<Vec<(String, Filter)>, JourneyError> {
    let mut out = Vec::with_capacity(raw.len());
    for (key, value) in raw {
        let what = format!("{at} where.{key}");
        let toml::Value::Table(ops) = value else {
            out.push((key, Filter::Eq(scalar(value, place, &what)?)));
            continue;
        };
        if ops.is_empty() {
            return Err(place.err(&what, "empty condition table"));
        }
        for (op, v) in ops {
            let what = format!("{what}.{op}");
            let filter =
                match op.as_str() {
                    "in" => match v {
                        toml::Value::Array(_) => Filter::In(scalars(v, place, &what)?),
                        _ => return Err(place.err(&what, "expects a list")),
                    },
                    "not" => Filter::Not(scalars(v, place, &what)?),
                    ">" => Filter::Gt(bound(v, place, &what)?),
                    ">=" => Filter::Ge(bound(v, place, &what)?),
                    "<" => Filter::Lt(bound(v, place, &what)?),
                    "<=" => Filter::Le(bound(v, place, &what)?),
                    "exists" => match v {
                        toml::Value::Boolean(b) => Filter::Exists(b),
                        _ => return Err(place.err(&what, "expects true or false")),
                    },
                    _ => return Err(place.err(
                        &what,
                        "unknown condition; use in, not, \">\", \">=\", \"<\", \"<=\" or exists",
                    )),
                };
            out.push((key.clone(), filter));
        }
    }
    Ok(out)
}

fn funnel(def: FunnelDef, origin: Option<&str>) -> Result<Funnel, JourneyError> {
    let place = Place {
        funnel: &def.name,
        origin,
    };
    let window_ms = secs_to_ms(def.window_secs).ok_or_else(|| {
        place.err(
            "",
            format!("window_secs must be positive, got {}", def.window_secs),
        )
    })?;
    let order = match def.order.as_deref() {
        None => Order::Ordered,
        Some(text) => Order::parse(text).ok_or_else(|| {
            place.err(
                "",
                format!("unknown order `{text}`; use \"ordered\", \"strict\" or \"any\""),
            )
        })?,
    };
    let total = def.steps.len();
    if total == 0 || total + def.exclude.len() > MAX_STEPS {
        return Err(place.err(
            "",
            format!(
                "steps must have at least 1 entry and steps plus exclusions at most \
                 {MAX_STEPS}, got {total} steps and {} exclusions",
                def.exclude.len()
            ),
        ));
    }
    let mut steps = Vec::with_capacity(total);
    for (i, step) in def.steps.into_iter().enumerate() {
        let at = format!("step {}", i + 1);
        if step.event.trim().is_empty() {
            return Err(place.err(&at, "event must not be empty"));
        }
        if step.optional && i == 0 {
            return Err(place.err(&at, "the first step cannot be optional: it starts attempts"));
        }
        if step.optional && i + 1 == total {
            return Err(place.err(
                &at,
                "the last step cannot be optional: reaching it is what converts",
            ));
        }
        let within_ms =
            match step.within_secs {
                None => None,
                Some(_) if i == 0 => {
                    return Err(
                        place.err(&at, "within_secs needs a previous step; the first has none")
                    )
                }
                Some(_) if order == Order::Any => return Err(place.err(
                    &at,
                    "within_secs needs an order of steps; it cannot be used with order = \"any\"",
                )),
                Some(s) => Some(secs_to_ms(s).ok_or_else(|| {
                    place.err(&at, format!("within_secs must be positive, got {s}"))
                })?),
            };
        steps.push(Step {
            event: step.event,
            filters: filters(step.filters, &place, &at)?,
            optional: step.optional,
            within_ms,
        });
    }
    let mut exclude = Vec::with_capacity(def.exclude.len());
    for (j, ex) in def.exclude.into_iter().enumerate() {
        let at = format!("exclude {}", j + 1);
        if ex.event.trim().is_empty() {
            return Err(place.err(&at, "event must not be empty"));
        }
        let (from, to) = match ex.between[..] {
            [from, to] if 1 <= from && from < to && to <= total as i64 => {
                (from as usize, to as usize)
            }
            _ => {
                return Err(place.err(
                    &at,
                    format!(
                        "between must be [from, to] with 1 ≤ from < to ≤ {total} (the \
                         funnel's steps), got {:?}",
                        ex.between
                    ),
                ))
            }
        };
        if order == Order::Any && (from, to) != (1, total) {
            return Err(place.err(
                &at,
                format!(
                    "with order = \"any\" steps have no positions: between must be [1, {total}]"
                ),
            ));
        }
        exclude.push(Exclusion {
            event: ex.event,
            filters: filters(ex.filters, &place, &at)?,
            from,
            to,
        });
    }
    let breakdown_attribution = match def.breakdown_attribution.as_deref() {
        None | Some("first_step") => Attribution::FirstStep,
        Some("last_step") => Attribution::LastStep,
        Some("each_step") => Attribution::EachStep,
        Some(text) => {
            return Err(place.err(
                "",
                format!(
                    "unknown breakdown_attribution `{text}`; use \"first_step\", \
                     \"last_step\" or \"each_step\""
                ),
            ))
        }
    };
    if def.breakdown.is_empty() && def.breakdown_attribution.is_some() {
        return Err(place.err("", "breakdown_attribution needs a breakdown"));
    }
    let mut breakdown: Vec<Breakdown> = Vec::with_capacity(def.breakdown.len());
    let mut series = 1usize;
    for (k, b) in def.breakdown.into_iter().enumerate() {
        let at = format!("breakdown {}", k + 1);
        let dimension = Dimension::parse(&b.key).map_err(|m| place.err(&at, m))?;
        if breakdown.iter().any(|d| d.key == b.key) {
            return Err(place.err(&at, format!("duplicate breakdown key `{}`", b.key)));
        }
        let mut values: Vec<Arc<str>> = Vec::with_capacity(b.values.len());
        for v in b.values {
            if v.is_empty() || v == OTHER || v.contains('/') || v.len() > MAX_BREAKDOWN_VALUE_BYTES
            {
                return Err(place.err(
                    &at,
                    format!(
                        "value `{v}` must be non-empty, not `{OTHER}`, without `/` and at \
                         most {MAX_BREAKDOWN_VALUE_BYTES} bytes"
                    ),
                ));
            }
            if values.iter().any(|w| w.as_ref() == v) {
                return Err(place.err(&at, format!("duplicate value `{v}`")));
            }
            values.push(Arc::from(v));
        }
        series = series.saturating_mul(values.len() + 1);
        breakdown.push(Breakdown {
            key: b.key,
            values,
            dimension,
        });
    }
    if series > MAX_BREAKDOWN_SERIES {
        return Err(place.err(
            "breakdown",
            format!(
                "{series} label values (the product of each dimension's values + 1 for \
                 `{OTHER}`), at most {MAX_BREAKDOWN_SERIES}"
            ),
        ));
    }
    let listed = listed_tuples(&breakdown);
    Ok(Funnel {
        name: def.name,
        window_ms,
        order,
        steps,
        exclude,
        breakdown,
        breakdown_attribution,
        listed,
    })
}

/// Every tuple of allow-listed values, first dimension slowest ([`Funnel::listed`]);
/// none when a dimension allow-lists nothing (its values are never all listed).
pub(crate) fn listed_tuples(breakdown: &[Breakdown]) -> Vec<Arc<[Arc<str>]>> {
    if breakdown.is_empty() {
        return Vec::new();
    }
    let mut tuples: Vec<Vec<Arc<str>>> = vec![Vec::new()];
    for b in breakdown {
        tuples = tuples
            .into_iter()
            .flat_map(|t| {
                b.values.iter().map(move |v| {
                    let mut t = t.clone();
                    t.push(Arc::clone(v));
                    t
                })
            })
            .collect();
    }
    tuples.into_iter().map(Arc::from).collect()
}

/// Seconds → ms, `None` unless positive and representable.
fn secs_to_ms(secs: u64) -> Option<i64> {
    i64::try_from(secs.saturating_mul(1000))
        .ok()
        .filter(|w| *w > 0)
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
            funnels.push(funnel(def, origin)?);
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

    /// For each funnel with at least one matching step or exclusion: (funnel index, bit i
    /// set when step i+1 matches, bit `steps + j` when exclusion j+1 matches). Empty (no
    /// allocation) for most events.
    pub fn matches(&self, event: &JourneyEvent) -> Vec<(u16, u32)> {
        self.masks(event).collect()
    }

    /// [`Self::matches`] as kept in a customer's history: no allocation for the usual
    /// zero or one matching funnel.
    /// `channel` is the event's classified channel (for a `channel` breakdown). An event
    /// matching a step of a funnel with a breakdown also keeps that funnel's values
    /// ([`Steps::Detailed`]); other events keep only masks, as before.
    pub(crate) fn steps(&self, event: &JourneyEvent, channel: &'static str) -> Steps {
        let mut masks = self.masks(event);
        let steps = match (masks.next(), masks.next()) {
            (None, _) => return Steps::NONE,
            (Some((f, m)), None) => Steps::One(f, m),
            (Some(a), Some(b)) => Steps::Many(Box::new([a, b].into_iter().chain(masks).collect())),
        };
        let broken_down = |f: u16, m: u32| {
            let funnel = &self.funnels[usize::from(f)];
            !funnel.breakdown.is_empty() && funnel.step_bits(m) != 0
        };
        if let Steps::One(f, m) = steps {
            // The usual match: one funnel (no allocation for allow-listed values).
            return if broken_down(f, m) {
                Steps::from_entries(vec![(
                    f,
                    m,
                    Some(self.funnels[usize::from(f)].values(event, channel)),
                )])
            } else {
                steps
            };
        }
        if !steps.as_slice().iter().any(|(f, m)| broken_down(*f, *m)) {
            return steps;
        }
        Steps::from_entries(
            steps
                .as_slice()
                .iter()
                .map(|(f, m)| {
                    let values = broken_down(*f, *m)
                        .then(|| self.funnels[usize::from(*f)].values(event, channel));
                    (*f, *m, values)
                })
                .collect(),
        )
    }

    fn masks<'a>(&'a self, event: &'a JourneyEvent) -> impl Iterator<Item = (u16, u32)> + 'a {
        // Only a named track event can match a step or an exclusion.
        let named = event.kind == MessageType::Track && event.event.is_some();
        self.funnels
            .iter()
            .enumerate()
            .filter(move |_| named)
            .filter_map(move |(fi, funnel)| {
                let n = funnel.steps.len();
                let steps = funnel.steps.iter().map(|s| s.matches(event));
                let exclusions = funnel.exclude.iter().map(|x| x.matches(event));
                let mask = steps
                    .chain(exclusions)
                    .enumerate()
                    .filter(|(_, hit)| *hit)
                    .fold(0u32, |m, (i, _)| m | (1 << i));
                debug_assert!(n + funnel.exclude.len() <= MAX_STEPS);
                match (mask != 0, u16::try_from(fi)) {
                    (true, Ok(fi)) => Some((fi, mask)),
                    _ => None,
                }
            })
    }
}
