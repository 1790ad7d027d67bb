//! Rows written since the last [`JourneyStage::take_output`](super::JourneyStage), and the
//! version counter that orders them.
//!
//! Rows are kept as what they are made of (shared ids, the replay's session and attempt
//! state) and become [`crate::journey::rows`] structs, with their strings, only at
//! [`Output::take`]: a customer's open session is usually rewritten several times
//! between two takes, and only the last version is returned.
//!
//! Sizing: a take hands everything pending over and frees the lists, so a quiet stage
//! holds nothing here between flushes; the next row of a list reserves as many as the
//! previous take had ([`Sizes`]). During a backlog every take is about as large as the
//! one before, so the lists are allocated once per take instead of growing by doubling
//! (each doubling copies the list and touches fresh pages: several percent of the
//! processor's CPU, docs/performance.md).

use std::sync::Arc;

use super::LiveRow;
use crate::columns::{days, secs};
use crate::event::MessageType;
use crate::hash::{hex128, hex128_shared, FastMap};
use crate::journey::catalog::{Channel, Stage};
use crate::journey::feedback::Extras;
use crate::journey::funnel::{ClosedAttempt, FunnelSet, OpenAttempt, Outcome};
use crate::journey::rows::{
    no_text, CustomerTouchpointRow, FeedbackRow, FunnelAttemptRow, FunnelOpenAttemptRow,
    JourneyOutput, SessionRow, TouchpointRow,
};
use crate::journey::session::{HistEvent, SessionAcc};

const VERSION_LOW_BITS: u32 = 20;

/// A touchpoint row to be.
#[derive(Debug)]
struct PendingTouchpoint {
    event_id: Arc<str>,
    customer: Arc<str>,
    session: Option<u128>,
    time_ms: i64,
    /// Event name or message type, and the type (for `customer_touchpoints`).
    name: Arc<str>,
    kind: Option<MessageType>,
    stage: Stage,
    channel: Channel,
    /// `properties.store_id` ([`Extras`]).
    store_id: Option<Arc<str>>,
    is_late: bool,
    version: u64,
}

/// A session row to be; `acc: None` for a tombstone.
#[derive(Debug)]
struct PendingSession {
    key: u128,
    customer: Arc<str>,
    partition_ms: i64,
    acc: Option<SessionAcc>,
    version: u64,
}

/// An attempt row to be; `closed: None` for a tombstone.
#[derive(Debug)]
struct PendingAttempt {
    key: u128,
    funnel: u16,
    customer: Arc<str>,
    partition_ms: i64,
    closed: Option<ClosedAttempt>,
    version: u64,
}

/// An open-attempt row to be; `open: None` for a tombstone.
#[derive(Debug)]
struct PendingOpen {
    key: u128,
    funnel: u16,
    customer: Arc<str>,
    /// Start time: the partition column.
    partition_ms: i64,
    /// The attempt and its due time, ms.
    open: Option<(OpenAttempt, i64)>,
    /// The funnel's name when it is no longer configured (a tombstone after a funnel
    /// was removed or changed); `None`: today's funnel `funnel`.
    name: Option<String>,
    version: u64,
}

/// See the module docs. Sessions and attempts get strictly increasing versions as they
/// are written, so their lists stay in version order when a newer row for the same key
/// replaces an older one (which is marked `None`); touchpoints are sorted at the end.
#[derive(Debug, Default)]
pub(super) struct Output {
    touchpoints: Vec<PendingTouchpoint>,
    touchpoint_at: FastMap<Arc<str>, usize>,
    /// `customer_touchpoints` tombstones of re-attributed events.
    moved: Vec<CustomerTouchpointRow>,
    sessions: Vec<Option<PendingSession>>,
    session_at: FastMap<(u128, i64), usize>,
    attempts: Vec<Option<PendingAttempt>>,
    attempt_at: FastMap<(u16, u128, i64), usize>,
    open_attempts: Vec<Option<PendingOpen>>,
    open_at: FastMap<(u16, u128, i64), usize>,
    /// `feedback` rows, newest per answer.
    pub(super) feedback: Vec<FeedbackRow>,
    feedback_at: FastMap<String, usize>,
    /// What the stage keeps of events beyond their history entry (stores, answers):
    /// here because the touchpoint rows read it.
    pub(super) extras: Extras,
    pub(super) version_seq: u64,
    pub(super) version_n: u64,
    /// What the previous take held per list: the next first row reserves that much.
    sizes: Sizes,
}

/// Rows per list at the previous take (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    touchpoints: usize,
    sessions: usize,
    attempts: usize,
    open_attempts: usize,
}

/// Reserve `n` rows in `list` and its index `at` when the list is empty and unallocated
/// (the first row since a take).
fn size_first<T, K: std::hash::Hash + Eq>(list: &mut Vec<T>, at: &mut FastMap<K, usize>, n: usize) {
    if list.capacity() == 0 {
        let n = n.min(MAX_RESERVE);
        list.reserve(n);
        at.reserve(n);
    }
}

impl Output {
    pub(super) fn new(version_seq: u64, version_n: u64) -> Self {
        Self {
            version_seq,
            version_n,
            ..Self::default()
        }
    }

    pub(super) fn bump_seq(&mut self, seq: u64) {
        let seq = seq.min(u64::MAX >> VERSION_LOW_BITS);
        if seq > self.version_seq {
            self.version_seq = seq;
            self.version_n = 0;
        }
    }

    /// Make every later version greater than `version`.
    pub(super) fn raise_above(&mut self, version: u64) {
        let current = (self.version_seq << VERSION_LOW_BITS) | self.version_n;
        if current <= version {
            let next = version.saturating_add(1);
            self.version_seq = next >> VERSION_LOW_BITS;
            self.version_n = next & ((1 << VERSION_LOW_BITS) - 1);
        }
    }

    /// Strictly increasing within the partition, derived from the input offsets so a
    /// replay from the same snapshot writes identical versions.
    fn next_version(&mut self) -> u64 {
        let v = (self.version_seq << VERSION_LOW_BITS) | self.version_n;
        self.version_n += 1;
        if self.version_n >= 1 << VERSION_LOW_BITS {
            self.version_seq += 1;
            self.version_n = 0;
        }
        v
    }

    /// Newest row per key, each list sorted by version (touchpoints: then event id),
    /// appended to `out`'s lists (so a caller gathering several partitions' rows, as the
    /// processor's batch does, copies none of them again).
    pub(super) fn take_into(&mut self, funnels: &FunnelSet, out: &mut JourneyOutput) {
        self.sizes = Sizes {
            touchpoints: self.touchpoints.len(),
            sessions: self.sessions.len(),
            attempts: self.attempts.len(),
            open_attempts: self.open_attempts.len(),
        };
        self.touchpoint_at = FastMap::default();
        self.session_at = FastMap::default();
        self.attempt_at = FastMap::default();
        self.open_at = FastMap::default();
        self.feedback_at = FastMap::default();
        let mut feedback = std::mem::take(&mut self.feedback);
        feedback.sort_by(|a, b| (a.version, &a.event_id).cmp(&(b.version, &b.event_id)));
        out.feedback.append(&mut feedback);
        let mut touchpoints = std::mem::take(&mut self.touchpoints);
        touchpoints
            .sort_unstable_by(|a, b| (a.version, &a.event_id).cmp(&(b.version, &b.event_id)));
        let mut moved = std::mem::take(&mut self.moved);
        moved.sort_unstable_by(|a, b| {
            (&a.customer_id, a.event_time_ms, &a.event_id, b.version).cmp(&(
                &b.customer_id,
                b.event_time_ms,
                &b.event_id,
                a.version,
            ))
        });
        moved.dedup_by(|b, a| {
            (&a.customer_id, a.event_time_ms, &a.event_id)
                == (&b.customer_id, b.event_time_ms, &b.event_id)
        });
        let first = out.customer_touchpoints.len();
        out.customer_touchpoints
            .reserve(touchpoints.len() + moved.len());
        out.touchpoints.reserve(touchpoints.len());
        for t in touchpoints {
            let (journey, by_customer) = touchpoint_rows(t);
            out.touchpoints.push(journey);
            out.customer_touchpoints.push(by_customer);
        }
        out.customer_touchpoints.append(&mut moved);
        out.customer_touchpoints[first..].sort_by_key(|r| r.version);
        out.sessions.extend(
            std::mem::take(&mut self.sessions)
                .into_iter()
                .flatten()
                .map(session_row),
        );
        out.attempts.extend(
            std::mem::take(&mut self.attempts)
                .into_iter()
                .flatten()
                .map(|a| attempt_row(funnels, a)),
        );
        out.open_attempts.extend(
            std::mem::take(&mut self.open_attempts)
                .into_iter()
                .flatten()
                .map(|a| open_attempt_row(funnels, a)),
        );
    }

    /// The event's touchpoint row, unless one with a higher version is already pending.
    pub(super) fn touchpoint(
        &mut self,
        customer: &Arc<str>,
        e: &HistEvent,
        session: Option<u128>,
        is_late: bool,
    ) {
        let version = e
            .version
            .saturating_mul(1 << 16)
            .saturating_add(u64::from(e.emitted));
        size_first(
            &mut self.touchpoints,
            &mut self.touchpoint_at,
            self.sizes.touchpoints,
        );
        let at = self.touchpoint_at.get(&e.event_id).copied();
        if at.is_some_and(|i| self.touchpoints[i].version > version) {
            return;
        }
        let row = PendingTouchpoint {
            event_id: Arc::clone(&e.event_id),
            customer: Arc::clone(customer),
            session,
            time_ms: e.time_ms,
            name: Arc::clone(&e.name),
            kind: e.kind,
            stage: e.stage,
            channel: e.channel,
            store_id: if e.extra {
                self.extras
                    .get(customer, &e.event_id)
                    .and_then(|x| x.store_id.clone())
            } else {
                None
            },
            is_late,
            version,
        };
        match at {
            Some(i) => self.touchpoints[i] = row,
            None => {
                self.touchpoint_at
                    .insert(Arc::clone(&e.event_id), self.touchpoints.len());
                self.touchpoints.push(row);
            }
        }
    }

    /// A `customer_touchpoints` tombstone for `e` under `former`, the customer it was
    /// routed to before stage 1 re-attributed it (`version`: the re-attribution's stage-1
    /// version). The former customer's partition wrote its rows with a lower stage-1
    /// version (at most `(version - 1) × 65536 + 65535`), so the tombstone replaces them
    /// whichever partition's insert lands first.
    pub(super) fn moved(&mut self, former: &str, e: &HistEvent, version: u64) {
        self.moved.push(CustomerTouchpointRow {
            customer_id: former.into(),
            event_date: days(e.time_ms),
            event_time_ms: e.time_ms,
            event_id: Arc::clone(&e.event_id),
            event_time: secs(e.time_ms),
            message_type: "",
            event: no_text(),
            stage: e.stage,
            channel: e.channel,
            session_id: no_text(),
            store_id: no_text(),
            is_late: false,
            is_deleted: true,
            version: version.saturating_mul(1 << 16).saturating_add(0xFFFF),
        });
    }

    /// A touchpoint that is in no session: too late, too old to re-attribute, or left in
    /// the buffer by a retraction.
    pub(super) fn unplaced(&mut self, customer: &Arc<str>, event: &HistEvent, is_late: bool) {
        self.touchpoint(customer, event, None, is_late);
    }

    /// A `feedback` row, replacing one pending for the same answer.
    pub(super) fn feedback(&mut self, row: FeedbackRow) {
        match self.feedback_at.get(&row.event_id) {
            Some(&i) if self.feedback[i].version > row.version => {}
            Some(&i) => self.feedback[i] = row,
            None => {
                self.feedback_at
                    .insert(row.event_id.clone(), self.feedback.len());
                self.feedback.push(row);
            }
        }
    }

    /// A session row (`None`: a tombstone) for `key` in partition `partition_ms`.
    fn session(
        &mut self,
        customer: &Arc<str>,
        key: u128,
        partition_ms: i64,
        acc: Option<SessionAcc>,
    ) {
        size_first(
            &mut self.sessions,
            &mut self.session_at,
            self.sizes.sessions,
        );
        let version = self.next_version();
        let at = self.sessions.len();
        if let Some(old) = self.session_at.insert((key, partition_ms), at) {
            self.sessions[old] = None;
        }
        self.sessions.push(Some(PendingSession {
            key,
            customer: Arc::clone(customer),
            partition_ms,
            acc,
            version,
        }));
    }

    /// An attempt row (`None`: a tombstone) for `key` in partition `partition_ms`.
    fn attempt(
        &mut self,
        customer: &Arc<str>,
        funnel: u16,
        key: u128,
        partition_ms: i64,
        closed: Option<ClosedAttempt>,
    ) {
        size_first(
            &mut self.attempts,
            &mut self.attempt_at,
            self.sizes.attempts,
        );
        let version = self.next_version();
        let at = self.attempts.len();
        if let Some(old) = self.attempt_at.insert((funnel, key, partition_ms), at) {
            self.attempts[old] = None;
        }
        self.attempts.push(Some(PendingAttempt {
            key,
            funnel,
            customer: Arc::clone(customer),
            partition_ms,
            closed,
            version,
        }));
    }

    /// An open-attempt row (`None`: a tombstone) for `key` in partition `partition_ms`.
    fn open_attempt(
        &mut self,
        customer: &Arc<str>,
        funnel: u16,
        key: u128,
        partition_ms: i64,
        open: Option<(OpenAttempt, i64)>,
    ) {
        size_first(
            &mut self.open_attempts,
            &mut self.open_at,
            self.sizes.open_attempts,
        );
        let version = self.next_version();
        let at = self.open_attempts.len();
        if let Some(old) = self.open_at.insert((funnel, key, partition_ms), at) {
            self.open_attempts[old] = None;
        }
        self.open_attempts.push(Some(PendingOpen {
            key,
            funnel,
            customer: Arc::clone(customer),
            partition_ms,
            open,
            name: None,
            version,
        }));
    }

    /// A tombstone for an open-attempt row of a funnel no longer configured (removed, or
    /// changed: its saved attempts were dropped), under the name it was written with.
    pub(super) fn open_tombstone_named(
        &mut self,
        customer: &Arc<str>,
        name: String,
        row: &LiveRow,
    ) {
        let funnel = row.funnel.unwrap_or(u16::MAX);
        self.open_attempt(customer, funnel, row.key, row.partition_ms, None);
        if let Some(Some(pending)) = self.open_attempts.last_mut() {
            pending.name = Some(name);
        }
    }

    /// A tombstone for a row this partition wrote: same key and partition time.
    pub(super) fn tombstone(&mut self, customer: &Arc<str>, row: &LiveRow) {
        match row.funnel {
            None => self.session(customer, row.key, row.partition_ms, None),
            Some(funnel) if row.open_step > 0 => {
                self.open_attempt(customer, funnel, row.key, row.partition_ms, None);
            }
            Some(funnel) => self.attempt(customer, funnel, row.key, row.partition_ms, None),
        }
    }

    /// Write a session or attempt row unless the same row (key, partition and
    /// fingerprint) is among the `written` ones.
    pub(super) fn write_if_changed(
        &mut self,
        customer: &Arc<str>,
        written: &[LiveRow],
        new: &LiveRow,
        row: Row,
    ) {
        let old = written.iter().find(|w| w.same(new));
        if let Some(old) = old {
            if old.fingerprint == new.fingerprint && old.partition_ms == new.partition_ms {
                return;
            }
            if old.partition_ms != new.partition_ms {
                // The row moves to another ClickHouse partition (an attempt's close time
                // changed): the old copy would survive FINAL there, so tombstone it.
                self.tombstone(customer, old);
            }
        }
        match row {
            Row::Session(s) => self.session(customer, new.key, new.partition_ms, Some(s)),
            Row::Attempt(a) => {
                self.attempt(customer, a.funnel, new.key, new.partition_ms, Some(a));
            }
            Row::Open {
                funnel,
                attempt,
                due_ms,
            } => {
                let open = Some((attempt, due_ms));
                self.open_attempt(customer, funnel, new.key, new.partition_ms, open);
            }
        }
    }
}

/// Either kind of derived row, before it is written.
pub(super) enum Row {
    Session(SessionAcc),
    Attempt(ClosedAttempt),
    /// An attempt still open at the release frontier, due at `due_ms`.
    Open {
        funnel: u16,
        attempt: OpenAttempt,
        due_ms: i64,
    },
}

/// The most rows a list reserves ahead ([`Sizes`]): a burst (a watermark releasing a
/// backlog at once) sizes the next take by at most this much; more rows grow the list.
const MAX_RESERVE: usize = 1 << 16;

/// A touchpoint's `touchpoint_journey` and `customer_touchpoints` rows, sharing its
/// strings (module docs of [`crate::journey::rows`]).
fn touchpoint_rows(t: PendingTouchpoint) -> (TouchpointRow, CustomerTouchpointRow) {
    // The name is the event's own unless it only repeats the message type (an unnamed
    // page, an identify): `events.event` is empty then.
    let event = match t.kind {
        Some(kind) if t.name.as_ref() == kind.as_str() => no_text(),
        _ => t.name,
    };
    let session_id = t.session.map_or_else(no_text, hex128_shared);
    let by_customer = CustomerTouchpointRow {
        customer_id: Arc::clone(&t.customer),
        event_date: days(t.time_ms),
        event_time_ms: t.time_ms,
        event_id: Arc::clone(&t.event_id),
        event_time: secs(t.time_ms),
        message_type: t.kind.map_or("", MessageType::as_str),
        event,
        stage: t.stage,
        channel: t.channel,
        session_id: Arc::clone(&session_id),
        store_id: t.store_id.unwrap_or_else(no_text),
        is_late: t.is_late,
        is_deleted: false,
        version: t.version,
    };
    let journey = TouchpointRow {
        event_id: t.event_id,
        customer_id: t.customer,
        session_id,
        event_date: days(t.time_ms),
        stage: t.stage,
        channel: t.channel,
        is_late: t.is_late,
        version: t.version,
    };
    (journey, by_customer)
}

fn session_row(s: PendingSession) -> SessionRow {
    let customer_id = s.customer;
    match s.acc {
        Some(acc) => SessionRow {
            channels: acc.channel_list(),
            session_id: hex128_shared(s.key),
            customer_id,
            started_at: secs(acc.start_ms),
            start_ms: acc.start_ms,
            end_ms: acc.end_ms,
            event_count: acc.event_count,
            first_event_id: acc.first_event_id,
            entry_event: acc.entry_event,
            exit_event: acc.exit_event,
            is_deleted: false,
            version: s.version,
        },
        None => SessionRow {
            session_id: hex128_shared(s.key),
            customer_id,
            started_at: secs(s.partition_ms),
            start_ms: s.partition_ms,
            end_ms: s.partition_ms,
            event_count: 0,
            first_event_id: no_text(),
            entry_event: no_text(),
            exit_event: no_text(),
            channels: Vec::new(),
            is_deleted: true,
            version: s.version,
        },
    }
}

fn breakdown_keys(funnel: &crate::Funnel) -> Vec<String> {
    funnel.breakdown.iter().map(|b| b.key.clone()).collect()
}

fn attempt_row(funnels: &FunnelSet, a: PendingAttempt) -> FunnelAttemptRow {
    let funnel = funnels.funnels().get(usize::from(a.funnel));
    let name = funnel.map(|f| f.name.clone()).unwrap_or_default();
    let customer_id = a.customer.as_ref().to_owned();
    match a.closed {
        Some(closed) => FunnelAttemptRow {
            attempt_id: hex128(a.key),
            funnel: name,
            customer_id,
            started_at: secs(closed.attempt.start_ms()),
            start_ms: closed.attempt.start_ms(),
            closed_at: secs(closed.closed_ms),
            closed_ms: closed.closed_ms,
            outcome: closed.outcome,
            reached_step: u8::try_from(closed.attempt.reached()).unwrap_or(u8::MAX),
            total_steps: funnel.map_or(0, |f| u8::try_from(f.steps.len()).unwrap_or(u8::MAX)),
            step_times_ms: closed.attempt.step_times_ms(),
            step_event_ids: closed.attempt.step_event_ids(),
            breakdown_keys: funnel.map_or_else(Vec::new, breakdown_keys),
            breakdown_values: closed.attempt.breakdown_values(),
            is_deleted: false,
            version: a.version,
        },
        None => FunnelAttemptRow {
            attempt_id: hex128(a.key),
            funnel: name,
            customer_id,
            started_at: secs(a.partition_ms),
            start_ms: a.partition_ms,
            closed_at: secs(a.partition_ms),
            closed_ms: a.partition_ms,
            outcome: Outcome::Dropped,
            reached_step: 0,
            total_steps: 0,
            step_times_ms: Vec::new(),
            step_event_ids: Vec::new(),
            breakdown_keys: Vec::new(),
            breakdown_values: Vec::new(),
            is_deleted: true,
            version: a.version,
        },
    }
}

fn open_attempt_row(funnels: &FunnelSet, a: PendingOpen) -> FunnelOpenAttemptRow {
    let funnel = funnels
        .funnels()
        .get(usize::from(a.funnel))
        .filter(|_| a.name.is_none());
    let name = match a.name {
        Some(name) => name,
        None => funnel.map(|f| f.name.clone()).unwrap_or_default(),
    };
    let total_steps = funnel.map_or(0, |f| u8::try_from(f.steps.len()).unwrap_or(u8::MAX));
    let customer_id = a.customer.as_ref().to_owned();
    match a.open {
        Some((open, due_ms)) => FunnelOpenAttemptRow {
            attempt_id: hex128(a.key),
            funnel: name,
            customer_id,
            started_at: secs(open.start_ms()),
            start_ms: open.start_ms(),
            reached_step: u8::try_from(open.reached()).unwrap_or(u8::MAX),
            total_steps,
            reached_ms: open.steps.last().map_or(a.partition_ms, |s| s.0),
            due_at: secs(due_ms),
            due_ms,
            step_times_ms: open.step_times_ms(),
            step_event_ids: open.step_event_ids(),
            breakdown_keys: funnel.map_or_else(Vec::new, breakdown_keys),
            breakdown_values: open.breakdown_values(),
            is_deleted: false,
            version: a.version,
        },
        None => FunnelOpenAttemptRow {
            attempt_id: hex128(a.key),
            funnel: name,
            customer_id,
            started_at: secs(a.partition_ms),
            start_ms: a.partition_ms,
            reached_step: 0,
            total_steps,
            reached_ms: a.partition_ms,
            due_at: secs(a.partition_ms),
            due_ms: a.partition_ms,
            step_times_ms: Vec::new(),
            step_event_ids: Vec::new(),
            breakdown_keys: Vec::new(),
            breakdown_values: Vec::new(),
            is_deleted: true,
            version: a.version,
        },
    }
}
