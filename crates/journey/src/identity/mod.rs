//! Stage 1: identity stitching, keyed by anonymous id.
//!
//! Input: every accepted message in partition order (the raw topic is keyed by
//! `anonymousId`, else `userId`). Output: each event routed to its `customer_id`, plus
//! identity links, conflicts and re-attributions for stage 2 and the `identities` /
//! `identity_conflicts` tables (docs/design.md §4 "Identity").
//!
//! Why re-attribution lives here: only this stage knows which events were routed under an
//! anonymous id before that id got linked. It keeps those events (bounded, see
//! [`IdentityConfig`]) and re-sends them under the user when the link appears, then tells
//! stage 2 to [`Retract`] the anonymous customer.
//!
//! Routing caveat for the I/O layer: all messages naming an anonymous id must reach the
//! same stage-1 partition in order. An `alias` without `anonymousId` is keyed by `userId`
//! on the raw topic, so re-key it by `previousId` before this stage.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use touchstream_core::is_placeholder_id;

use crate::event::{JourneyEvent, MessageType, Retract, RoutedEvent};
use crate::hash::{FastMap, FastState};

mod delta;
pub use delta::{IdentityDelta, IdentityDeltaRef};

/// Stage-1 tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// Events kept per not-yet-linked anonymous id for re-attribution. Default 500.
    /// Past it the oldest are dropped from re-attribution (they keep the anonymous id as
    /// customer) and counted in [`IdentityCounters::reattribution_skipped`] at link time.
    pub max_unlinked_history_events: usize,
    /// An unlinked anonymous id's history is forgotten once the partition's newest event
    /// time is this far past the id's last event, seconds. Default 691200 (8 days: longer
    /// than stage 2's default re-attribution horizon, beyond which re-sent events would
    /// only become late rows).
    pub unlinked_history_ttl_secs: u64,
    /// Memory budget of all unlinked histories of one partition together, bytes (an
    /// estimate: the events' strings and fixed parts, see [`approx_event_bytes`]). Past
    /// it, whole histories are evicted, the one idle longest first, and counted in
    /// [`IdentityCounters::histories_evicted`]: a later link of such an id re-sends
    /// nothing, as after the TTL. Default 268435456 (256 MiB).
    pub max_unlinked_history_bytes: usize,
    /// A link not used (by an event of its anonymous id, or a new link attempt) for this
    /// many days of the partition's event time leaves memory; only an 8-byte fingerprint
    /// of its anonymous id stays, and the next event of that id has the caller look the
    /// link up again (`identities`) and put it back ([`IdentityStage::needs_lookup`],
    /// [`IdentityStage::restore_link`]), so the first link still wins. 0 keeps links
    /// forever. Default 400.
    #[serde(default = "default_link_ttl_days")]
    pub link_ttl_days: u32,
}

fn default_link_ttl_days() -> u32 {
    400
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            max_unlinked_history_events: 500,
            unlinked_history_ttl_secs: 8 * 24 * 3600,
            max_unlinked_history_bytes: 256 << 20,
            link_ttl_days: default_link_ttl_days(),
        }
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The day (of epoch ms) a link was last used, as kept per link.
fn day_of(ms: i64) -> u32 {
    u32::try_from(ms.max(0) / DAY_MS).unwrap_or(u32::MAX)
}

/// A stable 64-bit fingerprint of an evicted link's anonymous id (FNV-1a): saved in
/// snapshots, so it must not change between releases.
fn fingerprint(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A link's two ids in one allocation, the anonymous id then the user id. The map hashes
/// and compares by the anonymous id alone (`Borrow<str>`), so it is looked up by `&str`.
/// One allocation per link instead of two: a burst of events leaves its short-lived id
/// strings' size classes half-filled at rest, and two small long-lived ids per customer
/// pinned ~260 B of such pages per customer at 10k (docs/performance.md "2026-12-04").
#[derive(Debug, Clone)]
struct LinkKey {
    ids: Box<str>,
    anon_len: usize,
}

impl LinkKey {
    fn new(anon: &str, user: &str) -> Self {
        let mut ids = String::with_capacity(anon.len() + user.len());
        ids.push_str(anon);
        ids.push_str(user);
        Self {
            ids: ids.into_boxed_str(),
            anon_len: anon.len(),
        }
    }

    fn anon(&self) -> &str {
        &self.ids[..self.anon_len]
    }

    fn user(&self) -> &str {
        &self.ids[self.anon_len..]
    }
}

impl std::borrow::Borrow<str> for LinkKey {
    fn borrow(&self) -> &str {
        self.anon()
    }
}

impl PartialEq for LinkKey {
    fn eq(&self, other: &Self) -> bool {
        self.anon() == other.anon()
    }
}

impl Eq for LinkKey {}

impl std::hash::Hash for LinkKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so lookups by `&str` find the key.
        self.anon().hash(state);
    }
}

/// A link in memory beside its [`LinkKey`]: the day it was last used, and whether the
/// last [`IdentityStage::expire_links`] found it unused past the TTL (evicted at the next
/// one if still unused). Cells, so a lookup that reads the key's user can also mark the
/// link used.
#[derive(Debug, Clone)]
struct LinkEntry {
    day: Cell<u32>,
    expiring: Cell<bool>,
}

impl LinkEntry {
    fn new(day: u32) -> Self {
        Self {
            day: Cell::new(day),
            expiring: Cell::new(false),
        }
    }

    /// Mark used on `day` (the later of it and the last use); returns whether the day moved.
    fn use_on(&self, day: u32) -> bool {
        let day = self.day.get().max(day);
        let moved = day != self.day.get();
        self.day.set(day);
        self.expiring.set(false);
        moved
    }
}

/// A link as saved: `[user, day]`, or (snapshots from before link expiry) the user alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum SavedLink {
    Dated(String, u32),
    Plain(String),
}

/// What one event kept in an unlinked history costs in memory, roughly: the event's
/// fixed part, its reference count and allocation headers, and its strings.
pub fn approx_event_bytes(e: &JourneyEvent) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 16);
    std::mem::size_of::<JourneyEvent>()
        + 32
        + e.event_id.len()
        + opt(&e.event)
        + opt(&e.anonymous_id)
        + opt(&e.user_id)
        + opt(&e.previous_id)
        + opt(&e.channel)
        + e.properties.json().len()
}

/// How a link was learned (`identities.link_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkType {
    /// A track/page/screen message carried both ids.
    BothIds,
    /// An identify call.
    Identify,
    /// An alias call (previousId → userId).
    Alias,
}

impl LinkType {
    /// Value stored in `identities.link_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkType::BothIds => "both_ids",
            LinkType::Identify => "identify",
            LinkType::Alias => "alias",
        }
    }
}

/// A new anonymous → user link: one `identities` row (key `anonymous_id`), written by
/// the processor as it is ([`crate::columns`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct Link {
    /// The anonymous (or alias previous) id.
    pub anonymous_id: String,
    /// The user it now belongs to.
    pub user_id: String,
    /// Event time of the linking message, ms.
    pub linked_at_ms: i64,
    /// `messageId` of the linking message.
    pub link_event_id: String,
    /// How the link was learned.
    #[serde(serialize_with = "crate::columns::name")]
    pub link_type: LinkType,
    /// Row version (the stage-1 seq).
    pub version: u64,
}

/// A rejected later link: one `identity_conflicts` row (key `(anonymous_id,
/// event_id)`), written by the processor as it is. Never applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clickhouse", derive(clickhouse::Row))]
pub struct Conflict {
    /// The anonymous id already linked.
    pub anonymous_id: String,
    /// The user it stays linked to (first link wins).
    pub linked_user_id: String,
    /// The user the rejected message tried to link it to.
    pub conflicting_user_id: String,
    /// `messageId` of the rejected message.
    pub event_id: String,
    /// Its event time, ms.
    pub event_time_ms: i64,
    /// Row version (the stage-1 seq).
    pub version: u64,
}

/// Why stage 1 refused an event (the collector should already have rejected it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Neither `anonymousId` nor `userId` is a real id.
    #[error("message has no anonymousId or userId that is not a placeholder")]
    NoIdentity,
    /// An alias lacks a real `previousId` or `userId`.
    #[error("alias needs previousId and userId that are not placeholders")]
    AliasWithoutIds,
}

/// One output of [`IdentityStage::process`], in the order it must be forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum IdentityOutput {
    /// To stage 2, keyed by `customer_id`.
    Event(RoutedEvent),
    /// To the `identities` table.
    Link(Link),
    /// To the `identity_conflicts` table and the conflicts metric.
    Conflict(Conflict),
    /// To stage 2, keyed by `customer_id` (after that id's re-sent events).
    Retract(Retract),
    /// To the dead-letter topic with the reason; not part of any journey.
    Rejected {
        /// The event as received.
        event: JourneyEvent,
        /// Why.
        reason: RejectReason,
    },
}

/// Monotonic counts for metrics (`_total` counters).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityCounters {
    /// Links created.
    pub links: u64,
    /// Conflicting links recorded and ignored.
    pub conflicts: u64,
    /// Earlier events re-sent under a newly linked user.
    pub reattributed_events: u64,
    /// Earlier events not re-sent because the per-id history had overflowed.
    pub reattribution_skipped: u64,
    /// Unlinked histories forgotten by TTL.
    pub histories_expired: u64,
    /// Links that left memory after [`IdentityConfig::link_ttl_days`] unused.
    #[serde(default)]
    pub links_evicted: u64,
    /// Evicted links looked up again for a returning anonymous id and put back.
    #[serde(default)]
    pub links_restored: u64,
    /// Unlinked histories evicted (idle longest first) to keep the partition's
    /// histories within [`IdentityConfig::max_unlinked_history_bytes`].
    #[serde(default)]
    pub histories_evicted: u64,
    /// Events rejected for lack of a usable id.
    pub rejected: u64,
}

/// Events routed under a not-yet-linked anonymous id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AnonHistory {
    /// Oldest first, at most `max_unlinked_history_events`. Shared with the routed
    /// output: the event is not copied.
    events: VecDeque<Arc<JourneyEvent>>,
    /// Events that overflowed `events`.
    dropped: u64,
    /// Newest event time, for the TTL.
    last_time_ms: i64,
    /// Time of this id's entry in [`IdentityStage::expiry`], at most `last_time_ms`: the
    /// entry is moved forward only when the sweep reaches it, not on every event.
    #[serde(skip)]
    expiry_ms: i64,
    /// [`approx_event_bytes`] of `events` together (recomputed on restore).
    #[serde(skip)]
    bytes: usize,
}

impl AnonHistory {
    /// Drop the oldest events past `cap`, counting them.
    fn trim(&mut self, cap: usize) {
        while self.events.len() > cap {
            if let Some(e) = self.events.pop_front() {
                self.bytes = self.bytes.saturating_sub(approx_event_bytes(&e));
            }
            self.dropped += 1;
        }
    }
}

/// Serializable stage-1 state, for the caller to persist with its offsets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdentitySnapshot {
    links: BTreeMap<String, SavedLink>,
    unlinked: BTreeMap<String, AnonHistory>,
    watermark_ms: Option<i64>,
    counters: IdentityCounters,
    /// Fingerprints of evicted links' anonymous ids, ascending.
    #[serde(default)]
    evicted_links: Vec<u64>,
}

impl IdentitySnapshot {
    /// The counters' totals when it was taken.
    pub fn counters(&self) -> &IdentityCounters {
        &self.counters
    }
}

/// [`IdentitySnapshot`] by reference ([`IdentityStage::snapshot_ref`]): serializes to the
/// same document without copying every link and history into a sorted map first.
pub struct IdentitySnapshotRef<'a>(&'a IdentityStage);

impl Serialize for IdentitySnapshotRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let e = self.0;
        let mut links: Vec<(&str, (&str, u32))> = e
            .links
            .iter()
            .map(|(k, l)| (k.anon(), (k.user(), l.day.get())))
            .collect();
        links.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut unlinked: Vec<(&str, &AnonHistory)> =
            e.unlinked.iter().map(|(a, h)| (&**a, h)).collect();
        unlinked.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut evicted: Vec<u64> = e.evicted.iter().copied().collect();
        evicted.sort_unstable();
        let mut st = s.serialize_struct("IdentitySnapshot", 5)?;
        st.serialize_field("links", &SortedPairs(&links))?;
        st.serialize_field("unlinked", &SortedPairs(&unlinked))?;
        st.serialize_field("watermark_ms", &e.watermark_ms)?;
        st.serialize_field("counters", &e.counters)?;
        st.serialize_field("evicted_links", &evicted)?;
        st.end()
    }
}

/// Key-value pairs with unique keys in key order, serialized as a map (what a `BTreeMap`
/// of them would give).
struct SortedPairs<'a, V>(&'a [(&'a str, V)]);

impl<V: Serialize> Serialize for SortedPairs<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Stage 1 state machine. One per stage-1 partition.
#[derive(Debug, Clone)]
pub struct IdentityStage {
    config: IdentityConfig,
    /// anonymous id → user id; first link processed wins. Never shrinks: it is the
    /// identity graph (persisted in `identities` too).
    links: FastMap<LinkKey, LinkEntry>,
    /// Fingerprints of links evicted by [`IdentityConfig::link_ttl_days`].
    evicted: std::collections::HashSet<u64, FastState>,

    /// Keys shared with `expiry`.
    unlinked: FastMap<Arc<str>, AnonHistory>,
    /// (time at most its last event time, anonymous id) of every entry of `unlinked`,
    /// for the TTL sweep.
    expiry: BTreeSet<(i64, Arc<str>)>,
    /// Sum of the histories' `bytes`.
    unlinked_bytes: usize,
    watermark_ms: Option<i64>,
    counters: IdentityCounters,
    /// Anonymous ids changed since the last save, when tracked ([`Self::track_changes`]).
    changed: Option<delta::Changed>,
    /// The evicted links' fingerprints changed since the last save.
    evicted_changed: bool,
    /// The next save must be whole ([`Self::delta_ref`]).
    whole_next: bool,
}

fn real_id(id: Option<String>) -> Option<String> {
    id.filter(|s| !is_placeholder_id(s))
}

impl IdentityStage {
    /// Empty state.
    pub fn new(config: IdentityConfig) -> Self {
        Self::from_snapshot(config, IdentitySnapshot::default())
    }

    /// Resume from a snapshot taken by [`IdentityStage::snapshot`].
    pub fn from_snapshot(config: IdentityConfig, snapshot: IdentitySnapshot) -> Self {
        let mut links =
            FastMap::with_capacity_and_hasher(snapshot.links.len(), FastState::default());
        let restored_day = snapshot.watermark_ms.map_or(0, day_of);
        links.extend(snapshot.links.into_iter().map(|(a, l)| {
            let (user, day) = match l {
                SavedLink::Dated(user, day) => (user, day),
                SavedLink::Plain(user) => (user, restored_day),
            };
            (LinkKey::new(&a, &user), LinkEntry::new(day))
        }));
        let evicted = snapshot.evicted_links.into_iter().collect();
        let mut unlinked =
            FastMap::with_capacity_and_hasher(snapshot.unlinked.len(), FastState::default());
        let mut expiry = BTreeSet::new();
        let mut unlinked_bytes = 0;
        for (anon, mut history) in snapshot.unlinked {
            let anon: Arc<str> = Arc::from(anon);
            history.expiry_ms = history.last_time_ms;
            history.bytes = history.events.iter().map(|e| approx_event_bytes(e)).sum();
            unlinked_bytes += history.bytes;
            expiry.insert((history.expiry_ms, Arc::clone(&anon)));
            unlinked.insert(anon, history);
        }
        let mut stage = Self {
            config,
            links,
            evicted,
            unlinked,
            expiry,
            unlinked_bytes,
            watermark_ms: snapshot.watermark_ms,
            counters: snapshot.counters,
            changed: None,
            evicted_changed: false,
            whole_next: false,
        };
        // A smaller budget than the one the snapshot was taken under applies at once.
        let held = stage.unlinked.len();
        stage.evict_over_budget();
        stage.whole_next = stage.unlinked.len() != held;
        stage
    }

    /// Estimated memory of the unlinked histories, bytes ([`approx_event_bytes`]).
    pub fn unlinked_history_bytes(&self) -> usize {
        self.unlinked_bytes
    }

    /// Unlinked histories held.
    pub fn unlinked_histories(&self) -> usize {
        self.unlinked.len()
    }

    /// The state to persist alongside the consumed offset.
    pub fn snapshot(&self) -> IdentitySnapshot {
        IdentitySnapshot {
            links: self
                .links
                .iter()
                .map(|(k, l)| {
                    (
                        k.anon().to_string(),
                        SavedLink::Dated(k.user().to_string(), l.day.get()),
                    )
                })
                .collect(),
            unlinked: self
                .unlinked
                .iter()
                .map(|(a, h)| {
                    let mut h = h.clone();
                    h.expiry_ms = h.last_time_ms;
                    (a.to_string(), h)
                })
                .collect(),
            watermark_ms: self.watermark_ms,
            counters: self.counters.clone(),
            evicted_links: {
                let mut v: Vec<u64> = self.evicted.iter().copied().collect();
                v.sort_unstable();
                v
            },
        }
    }

    /// [`Self::snapshot`] without the copies: the same JSON document.
    pub fn snapshot_ref(&self) -> IdentitySnapshotRef<'_> {
        IdentitySnapshotRef(self)
    }

    /// Counters for metrics.
    pub fn counters(&self) -> &IdentityCounters {
        &self.counters
    }

    /// The user an anonymous id is linked to, if any.
    pub fn linked_user(&self, anonymous_id: &str) -> Option<&str> {
        self.links
            .get_key_value(anonymous_id)
            .map(|(k, _)| k.user())
    }

    /// Links held in memory.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Whether `anonymous_id` may have a link that left memory
    /// ([`IdentityConfig::link_ttl_days`]): the caller looks it up in `identities` and
    /// hands the answer to [`Self::restore_link`] before processing its event.
    pub fn needs_lookup(&self, anonymous_id: &str) -> bool {
        !self.evicted.is_empty()
            && !self.links.contains_key(anonymous_id)
            && self.evicted.contains(&fingerprint(anonymous_id))
    }

    /// The stored link of an id [`Self::needs_lookup`] named (`None`: none was stored, a
    /// fingerprint collision or an erased person); it counts as used now.
    pub fn restore_link(&mut self, anonymous_id: &str, user: Option<&str>) {
        self.evicted_changed |= self.evicted.remove(&fingerprint(anonymous_id));
        self.mark(anonymous_id);
        if let Some(user) = user {
            let day = self.watermark_ms.map_or(0, day_of);
            self.links
                .insert(LinkKey::new(anonymous_id, user), LinkEntry::new(day));
            self.counters.links_restored += 1;
        }
    }

    /// Evict the links unused for [`IdentityConfig::link_ttl_days`] of event time that
    /// the previous call already found so (and mark the newly unused ones): the caller
    /// calls it now and then by the wall clock, so a link leaves memory only after its
    /// `identities` row was written long ago and can be looked up. Returns how many left.
    pub fn expire_links(&mut self) -> u64 {
        let ttl = self.config.link_ttl_days;
        let Some(wm) = self.watermark_ms else {
            return 0;
        };
        if ttl == 0 {
            return 0;
        }
        let cutoff = day_of(wm).saturating_sub(ttl);
        let evicted = &mut self.evicted;
        let changed = &mut self.changed;
        let mut n = 0;
        self.links.retain(|key, l| {
            if l.day.get() >= cutoff {
                l.expiring.set(false);
                return true;
            }
            if !l.expiring.get() {
                l.expiring.set(true);
                return true;
            }
            let anon = key.anon();
            evicted.insert(fingerprint(anon));
            if let Some(c) = changed.as_mut() {
                c.insert(Box::from(anon));
            }
            n += 1;
            false
        });
        self.evicted_changed |= n > 0;
        self.counters.links_evicted += n;
        n
    }

    /// Forget every link naming one of `ids` (as anonymous id or user) and their unlinked
    /// histories: the person was erased (README, "Privacy"). Writes nothing. Returns
    /// whether anything was held.
    pub fn erase(&mut self, ids: &std::collections::HashSet<String>) -> bool {
        let before = self.links.len() + self.unlinked.len();
        let changed = &mut self.changed;
        self.links.retain(|key, _| {
            let keep = !ids.contains(key.anon()) && !ids.contains(key.user());
            if let (false, Some(c)) = (keep, changed.as_mut()) {
                c.insert(Box::from(key.anon()));
            }
            keep
        });
        for id in ids {
            if let Some((key, history)) = self.unlinked.remove_entry(id.as_str()) {
                self.mark(id);
                self.expiry.remove(&(history.expiry_ms, key));
                self.unlinked_bytes = self.unlinked_bytes.saturating_sub(history.bytes);
            }
        }
        // Histories of other ids hold only events without a user id, so none of theirs.
        before != self.links.len() + self.unlinked.len()
    }

    /// Route one event. `seq` must not decrease within the partition (the Kafka offset
    /// ordinal); it becomes the version of every record produced here.
    pub fn process(&mut self, mut event: JourneyEvent, seq: u64) -> Vec<IdentityOutput> {
        event.anonymous_id = real_id(event.anonymous_id.take());
        event.user_id = real_id(event.user_id.take());
        event.previous_id = real_id(event.previous_id.take());
        let rejected = if event.kind == MessageType::Alias {
            (event.previous_id.is_none() || event.user_id.is_none())
                .then_some(RejectReason::AliasWithoutIds)
        } else {
            (event.anonymous_id.is_none() && event.user_id.is_none())
                .then_some(RejectReason::NoIdentity)
        };
        if let Some(reason) = rejected {
            self.counters.rejected += 1;
            return vec![IdentityOutput::Rejected { event, reason }];
        }

        let mut out = Vec::new();
        if let Some(user) = event.user_id.as_deref() {
            if let (MessageType::Alias, Some(prev)) = (event.kind, event.previous_id.as_deref()) {
                self.link(prev, user, LinkType::Alias, &event, seq, &mut out);
            }
            if let Some(anon) = event.anonymous_id.as_deref() {
                let link_type = match event.kind {
                    MessageType::Identify => LinkType::Identify,
                    MessageType::Alias => LinkType::Alias,
                    _ => LinkType::BothIds,
                };
                self.link(anon, user, link_type, &event, seq, &mut out);
            }
        }

        let event = Arc::new(event);
        let customer_id = match (&event.user_id, &event.anonymous_id) {
            (Some(user), _) => user.clone(),
            (None, Some(anon)) => match self.links.get_key_value(anon.as_str()) {
                Some((k, l)) => {
                    let moved = l.use_on(day_of(event.event_time_ms));
                    let user = k.user().to_string();
                    if moved {
                        self.mark(anon);
                    }
                    user
                }
                None => {
                    self.remember_unlinked(anon, Arc::clone(&event));
                    anon.clone()
                }
            },
            // Unreachable after the rejection above; route by event id rather than panic.
            (None, None) => event.event_id.clone(),
        };
        self.advance_watermark(event.event_time_ms);
        out.push(IdentityOutput::Event(RoutedEvent {
            customer_id,
            event,
            version: seq,
            reattributed: false,
        }));
        out
    }

    fn link(
        &mut self,
        anon: &str,
        user: &str,
        link_type: LinkType,
        event: &JourneyEvent,
        seq: u64,
        out: &mut Vec<IdentityOutput>,
    ) {
        if anon == user {
            return;
        }
        if let Some((k, l)) = self.links.get_key_value(anon) {
            let moved = l.use_on(day_of(event.event_time_ms));
            let linked = k.user();
            if linked != user {
                self.counters.conflicts += 1;
                out.push(IdentityOutput::Conflict(Conflict {
                    anonymous_id: anon.to_owned(),
                    linked_user_id: linked.to_string(),
                    conflicting_user_id: user.to_owned(),
                    event_id: event.event_id.clone(),
                    event_time_ms: event.event_time_ms,
                    version: seq,
                }));
            }
            if moved {
                self.mark(anon);
            }
            return;
        }
        self.mark(anon);
        self.links.insert(
            LinkKey::new(anon, user),
            LinkEntry::new(day_of(event.event_time_ms)),
        );
        self.counters.links += 1;
        out.push(IdentityOutput::Link(Link {
            anonymous_id: anon.to_owned(),
            user_id: user.to_owned(),
            linked_at_ms: event.event_time_ms,
            link_event_id: event.event_id.clone(),
            link_type,
            version: seq,
        }));
        if let Some((key, history)) = self.unlinked.remove_entry(anon) {
            self.expiry.remove(&(history.expiry_ms, key));
            self.unlinked_bytes = self.unlinked_bytes.saturating_sub(history.bytes);
            self.counters.reattributed_events += history.events.len() as u64;
            self.counters.reattribution_skipped += history.dropped;
            for earlier in history.events {
                out.push(IdentityOutput::Event(RoutedEvent {
                    customer_id: user.to_owned(),
                    event: earlier,
                    version: seq,
                    reattributed: true,
                }));
            }
            out.push(IdentityOutput::Retract(Retract {
                customer_id: anon.to_owned(),
            }));
        }
    }

    fn remember_unlinked(&mut self, anon: &str, event: Arc<JourneyEvent>) {
        self.mark(anon);
        let cap = self.config.max_unlinked_history_events;
        let bytes = approx_event_bytes(&event);
        let Some(history) = self.unlinked.get_mut(anon) else {
            let key: Arc<str> = Arc::from(anon);
            let mut history = AnonHistory {
                last_time_ms: event.event_time_ms,
                expiry_ms: event.event_time_ms,
                bytes,
                ..AnonHistory::default()
            };
            history.events.push_back(event);
            history.trim(cap);
            self.unlinked_bytes += history.bytes;
            self.expiry.insert((history.expiry_ms, Arc::clone(&key)));
            self.unlinked.insert(key, history);
            self.evict_over_budget();
            return;
        };
        let fresh = history.events.is_empty() && history.dropped == 0;
        history.last_time_ms = if fresh {
            event.event_time_ms
        } else {
            history.last_time_ms.max(event.event_time_ms)
        };
        let before = history.bytes;
        history.events.push_back(event);
        history.bytes += bytes;
        history.trim(cap);
        self.unlinked_bytes = (self.unlinked_bytes + history.bytes).saturating_sub(before);
        if history.last_time_ms < history.expiry_ms {
            // Only a history emptied by a zero cap can move back; keep the entry no later.
            if let Some((key, _)) = self.unlinked.get_key_value(anon) {
                let key = Arc::clone(key);
                if let Some(history) = self.unlinked.get_mut(anon) {
                    self.expiry.remove(&(history.expiry_ms, Arc::clone(&key)));
                    history.expiry_ms = history.last_time_ms;
                    self.expiry.insert((history.expiry_ms, key));
                }
            }
        }
        self.evict_over_budget();
    }

    /// Evict whole histories, the one whose last event is oldest first, until the rest
    /// fit [`IdentityConfig::max_unlinked_history_bytes`].
    fn evict_over_budget(&mut self) {
        while self.unlinked_bytes > self.config.max_unlinked_history_bytes
            && self.forget_idlest_before(i64::MAX)
        {
            self.counters.histories_evicted += 1;
        }
    }

    /// Forget the unlinked history whose last event is the oldest, if that is before
    /// `before`; whether one went. Entries of [`Self::expiry`] may lag their history's
    /// last event (they are moved only when they come up): such an entry is moved there
    /// and the search goes on.
    fn forget_idlest_before(&mut self, before: i64) -> bool {
        while self.expiry.first().is_some_and(|(at, _)| *at < before) {
            let Some((at, anon)) = self.expiry.pop_first() else {
                break;
            };
            match self.unlinked.get_mut(&anon) {
                Some(history) if history.last_time_ms > at => {
                    history.expiry_ms = history.last_time_ms;
                    self.expiry.insert((history.expiry_ms, anon));
                }
                Some(_) => {
                    if let Some(history) = self.unlinked.remove(&anon) {
                        self.unlinked_bytes = self.unlinked_bytes.saturating_sub(history.bytes);
                    }
                    self.mark(&anon);
                    return true;
                }
                None => {}
            }
        }
        false
    }

    fn advance_watermark(&mut self, time_ms: i64) {
        let wm = self.watermark_ms.map_or(time_ms, |w| w.max(time_ms));
        self.watermark_ms = Some(wm);
        let ttl = i64::try_from(self.config.unlinked_history_ttl_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let horizon = wm.saturating_sub(ttl);
        while self.forget_idlest_before(horizon) {
            self.counters.histories_expired += 1;
        }
    }
}

#[cfg(test)]
mod tests;
