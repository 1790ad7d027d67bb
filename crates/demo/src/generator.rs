//! The journey generator: a seeded, repeatable plan of multi-channel customer journeys.
//!
//! Customers browse anonymously, view and add products, check out, buy or abandon their
//! cart (with a sendBeacon-style `Cart Abandoned`), identify on the way, visit stores,
//! complain to the call centre, get staff follow-ups and buy again. Drop-off at each
//! funnel step is *allocated*, not sampled: of the customers reaching a step, exactly the
//! configured share (rounded) stops there, chosen by the seeded shuffle. So the rates the
//! pipeline measures can be compared with the configured ones without sampling noise,
//! and any gap is the pipeline's.
//!
//! Survey answers follow the same idea (README "Feedback and stores"): each rated
//! touchpoint has a configured score distribution ([`FEEDBACK_PLAN`]) and the scores
//! are allocated to the answers in exactly those proportions (rounded), so the NPS and
//! mean scores the pipeline attributes to each touchpoint can be checked against
//! [`feedback_expectations`]. Stores get a people-counter total per opening hour and a
//! daily audit.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// One rated touchpoint of the demo: which answer event rates it, on which scale, how
/// the message names the touchpoint, and the score distribution `(score, share)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackPlan {
    /// Catalog event the answers rate (`about_event`).
    pub touchpoint: &'static str,
    /// Answer event sent.
    pub answer_event: &'static str,
    /// `nps`, `csat` or `ces`.
    pub scale: &'static str,
    /// Scores and their shares (summing to 1).
    pub distribution: &'static [(f64, f64)],
}

/// The demo's rated touchpoints. Order Delivered: NPS 35 (50 % promoters, 15 %
/// detractors), rated by id; Follow-up Completed: CSAT mean 4.3 and CES mean 2.5, rated
/// by name; Order Completed in stores: CSAT mean 3.6 (below its catalog floor 3.8, so the
/// scorecard shows one touchpoint under its floor), rated by stage and channel.
pub const FEEDBACK_PLAN: [FeedbackPlan; 4] = [
    FeedbackPlan {
        touchpoint: "Order Delivered",
        answer_event: "NPS Submitted",
        scale: "nps",
        distribution: &[
            (10.0, 0.3),
            (9.0, 0.2),
            (8.0, 0.2),
            (7.0, 0.15),
            (6.0, 0.05),
            (4.0, 0.05),
            (2.0, 0.05),
        ],
    },
    FeedbackPlan {
        touchpoint: "Follow-up Completed",
        answer_event: "CSAT Submitted",
        scale: "csat",
        distribution: &[(5.0, 0.45), (4.0, 0.45), (3.0, 0.05), (2.0, 0.05)],
    },
    FeedbackPlan {
        touchpoint: "Follow-up Completed",
        answer_event: "Survey Completed",
        scale: "ces",
        distribution: &[(1.0, 0.2), (2.0, 0.3), (3.0, 0.35), (4.0, 0.1), (5.0, 0.05)],
    },
    FeedbackPlan {
        touchpoint: "Order Completed",
        answer_event: "Survey Completed",
        scale: "csat",
        distribution: &[(5.0, 0.2), (4.0, 0.4), (3.0, 0.2), (2.0, 0.2)],
    },
];

/// What the pipeline should measure for one rated touchpoint of the demo.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedbackExpectation {
    /// Catalog event rated (`feedback.about_event`).
    pub touchpoint: &'static str,
    /// `nps`, `csat` or `ces`.
    pub scale: &'static str,
    /// NPS in points (% promoters − % detractors), or the mean score.
    pub expected: f64,
    /// Largest difference the allocation's rounding allows: 3 NPS points, 0.1 for a
    /// mean (each of a distribution's shares is rounded to whole answers, and the demo
    /// has at least 60 answers per touchpoint at its default size).
    pub tolerance: f64,
}

/// The configured NPS / mean score of each rated touchpoint ([`FEEDBACK_PLAN`]).
pub fn feedback_expectations() -> Vec<FeedbackExpectation> {
    FEEDBACK_PLAN
        .iter()
        .map(|p| {
            let expected = if p.scale == "nps" {
                let share = |f: fn(f64) -> bool| -> f64 {
                    p.distribution
                        .iter()
                        .filter(|(s, _)| f(*s))
                        .map(|(_, w)| w)
                        .sum()
                };
                100.0 * (share(|s| s >= 9.0) - share(|s| s <= 6.0))
            } else {
                p.distribution.iter().map(|(s, w)| s * w).sum()
            };
            FeedbackExpectation {
                touchpoint: p.touchpoint,
                scale: p.scale,
                expected: (expected * 1000.0).round() / 1000.0,
                tolerance: if p.scale == "nps" { 3.0 } else { 0.1 },
            }
        })
        .collect()
}

/// `n` scores in exactly the distribution's proportions (each share rounded, the last
/// score taking the rest), in a seeded order.
fn allocate_scores(n: usize, distribution: &[(f64, f64)], rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut scores = Vec::with_capacity(n);
    for (k, (score, share)) in distribution.iter().enumerate() {
        let count = if k + 1 == distribution.len() {
            n - scores.len()
        } else {
            (((n as f64) * share).round() as usize).min(n - scores.len())
        };
        scores.extend(std::iter::repeat_n(*score, count));
    }
    scores.shuffle(rng);
    scores
}

/// The demo's stores (`properties.store_id`).
pub const STORES: [&str; 2] = ["leeds-01", "york-02"];

/// What to generate. Rates are fractions (0.35 = 35 %).
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    /// Customers. Default 2000.
    pub customers: usize,
    /// Seed of every random choice. Default 42.
    pub seed: u64,
    /// Share of customers who shop on the web (the rest are call-centre service cases
    /// and store visitors). Default 0.75.
    pub web_share: f64,
    /// Share of customers with a complaint (service recovery). Default 0.2.
    pub service_share: f64,
    /// Drop-off at web checkout steps 1–3 (Product Viewed, Product Added, Checkout
    /// Started), each among those who reached the step. Default 0.45, 0.35, 0.25.
    pub checkout_dropoff: [f64; 3],
    /// Drop-off at service recovery steps 1–2 (Complaint Filed, Follow-up Completed).
    /// Default 0.2, 0.5. Step 1's is used only when `service_teams` is empty.
    pub service_dropoff: [f64; 2],
    /// Call-centre teams and each one's follow-up drop-off (service recovery step 1):
    /// complaints go to the teams in turn, carry the team as property `team` (what
    /// `deploy/funnels.toml` breaks `service_recovery` down by), and each team's share
    /// is allocated exactly. Default north 0.1, south 0.3 (0.2 overall, as
    /// `service_dropoff[0]`); empty: no team, `service_dropoff[0]` for every complaint.
    pub service_teams: Vec<(String, f64)>,
    /// Share of web shoppers who never reach checkout but still sign in. Default 0.3.
    pub identify_share: f64,
    /// Journeys start over this many days, ending 8 days before `now_ms` so every
    /// funnel window (the longest is 7 days) has passed. Default 7.
    pub days: i64,
    /// The wall clock the plan ends at, epoch ms.
    pub now_ms: i64,
}

impl GeneratorConfig {
    /// Defaults, ending at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            customers: 2000,
            seed: 42,
            web_share: 0.75,
            service_share: 0.2,
            checkout_dropoff: [0.45, 0.35, 0.25],
            service_dropoff: [0.2, 0.5],
            service_teams: vec![("north".into(), 0.1), ("south".into(), 0.3)],
            identify_share: 0.3,
            days: 7,
            now_ms,
        }
    }

    /// Rates must be fractions and shares must leave room for each other.
    pub fn validate(&self) -> Result<(), String> {
        let frac = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, got {v}"))
            }
        };
        frac("web_share", self.web_share)?;
        frac("service_share", self.service_share)?;
        frac("identify_share", self.identify_share)?;
        for v in self.checkout_dropoff {
            frac("checkout drop-off", v)?;
        }
        for v in self.service_dropoff {
            frac("service drop-off", v)?;
        }
        for (k, (team, v)) in self.service_teams.iter().enumerate() {
            frac("team drop-off", *v)?;
            if team.is_empty() || team.contains('/') {
                return Err(format!("team name {team:?} must be non-empty, without '/'"));
            }
            if self.service_teams[..k].iter().any(|(t, _)| t == team) {
                return Err(format!("duplicate team {team:?}"));
            }
        }
        if self.web_share + self.service_share > 1.0 + 1e-9 {
            return Err("web_share + service_share must not exceed 1".into());
        }
        if self.customers == 0 || self.days < 1 {
            return Err("need at least one customer and one day".into());
        }
        Ok(())
    }
}

/// How a message is sent, as the frontend that produces it would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A web page's batch (analytics.js), write key of the web source.
    Web,
    /// `navigator.sendBeacon` on page unload: text/plain, write key in the body.
    Beacon,
    /// The call-centre CRM / store systems, write key of the call-center source.
    Crm,
}

/// One message of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// How it is sent.
    pub transport: Transport,
    /// The Segment message (without `timestamp`, set from `time_ms` when sent).
    pub message: Value,
}

/// What the plan contains, to print beside what the pipeline measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanSummary {
    /// Web checkout attempts reaching steps 1..=4.
    pub checkout_reached: [usize; 4],
    /// Service recovery attempts reaching steps 1..=3.
    pub service_reached: [usize; 3],
    /// Per call-centre team: (team, configured step-1 drop-off, complaints, followed up).
    pub service_teams: Vec<(String, f64, usize, usize)>,
    /// Complaint → follow-up delays, minutes, sorted.
    pub follow_up_minutes: Vec<f64>,
    /// Closed funnel attempts the pipeline must end up with.
    pub attempts: usize,
    /// Survey answers sent per [`FEEDBACK_PLAN`] entry.
    pub answers: Vec<usize>,
    /// People-counter totals (`Footfall Counted`) sent.
    pub footfall_counts: usize,
    /// Audits (`Audit Completed`) sent.
    pub audits: usize,
    /// Messages in the plan.
    pub messages: usize,
}

impl PlanSummary {
    /// Drop-off at a step (1-based) from reached counts.
    pub fn dropoff(reached: &[usize], step: usize) -> Option<f64> {
        let here = *reached.get(step - 1)?;
        let next = reached.get(step).copied().unwrap_or(here);
        (here > 0).then(|| (here - next) as f64 / here as f64)
    }

    /// Quantile of the follow-up delays, defined as ClickHouse's `quantileExact` (the
    /// element at index ⌊q·n⌋ of the sorted values), so the two can be compared.
    pub fn follow_up_quantile(&self, q: f64) -> Option<f64> {
        let v = &self.follow_up_minutes;
        if v.is_empty() {
            return None;
        }
        let idx = ((q * v.len() as f64).floor() as usize).min(v.len() - 1);
        v.get(idx).copied()
    }
}

/// Of `ids`, keep exactly `round(len × (1 − dropoff))`, chosen by the shuffle.
fn allocate(ids: &[usize], dropoff: f64, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let keep = ((ids.len() as f64) * (1.0 - dropoff)).round() as usize;
    let mut v = ids.to_vec();
    v.shuffle(rng);
    v.truncate(keep.min(ids.len()));
    v.sort_unstable();
    v
}

/// Build the plan, sorted by event time.
pub fn plan(cfg: &GeneratorConfig) -> (Vec<Planned>, PlanSummary) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let n = cfg.customers;
    let n_web = ((n as f64) * cfg.web_share).round() as usize;
    let n_service = (((n as f64) * cfg.service_share).round() as usize).min(n - n_web);
    let start = cfg.now_ms - (cfg.days + 8) * DAY;
    let span = cfg.days * DAY;
    let mut out: Vec<Planned> = Vec::new();
    let mut summary = PlanSummary::default();
    let s = cfg.seed;

    // Who gets how far, allocated exactly.
    let web: Vec<usize> = (0..n_web).collect();
    let added = allocate(&web, cfg.checkout_dropoff[0], &mut rng);
    let checkout = allocate(&added, cfg.checkout_dropoff[1], &mut rng);
    let bought = allocate(&checkout, cfg.checkout_dropoff[2], &mut rng);
    summary.checkout_reached = [web.len(), added.len(), checkout.len(), bought.len()];
    let service: Vec<usize> = (n_web..n_web + n_service).collect();
    let teams = cfg.service_teams.len();
    let team_of = |i: usize| (teams > 0).then(|| &cfg.service_teams[(i - n_web) % teams]);
    let followed = if teams == 0 {
        allocate(&service, cfg.service_dropoff[0], &mut rng)
    } else {
        let mut all = Vec::new();
        for (k, (team, rate)) in cfg.service_teams.iter().enumerate() {
            let members: Vec<usize> = service
                .iter()
                .copied()
                .filter(|i| (i - n_web) % teams == k)
                .collect();
            let kept = allocate(&members, *rate, &mut rng);
            summary
                .service_teams
                .push((team.clone(), *rate, members.len(), kept.len()));
            all.extend(kept);
        }
        all.sort_unstable();
        all
    };
    let rebought = allocate(&followed, cfg.service_dropoff[1], &mut rng);
    summary.service_reached = [service.len(), followed.len(), rebought.len()];
    summary.attempts = web.len() + service.len();
    // Answers: every delivered order gets an NPS answer, every follow-up a CSAT answer
    // and half of them a CES answer, every store purchase a CSAT answer.
    let in_store: Vec<usize> = (n_web + n_service..n).collect();
    let store_buyers = allocate(&in_store, 0.3, &mut rng);
    let store_raters = store_buyers.clone();
    let effort_raters = allocate(&followed, 0.5, &mut rng);
    let raters = [&bought, &followed, &effort_raters, &store_raters];
    let scores: Vec<Vec<f64>> = FEEDBACK_PLAN
        .iter()
        .zip(raters)
        .map(|(p, who)| allocate_scores(who.len(), p.distribution, &mut rng))
        .collect();
    summary.answers = raters.iter().map(|r| r.len()).collect();
    let score_of = |plan: usize, who: &[usize], i: usize| -> Option<f64> {
        let at = who.binary_search(&i).ok()?;
        scores.get(plan)?.get(at).copied()
    };

    let mut msg_no = 0usize;
    let mut push = |out: &mut Vec<Planned>, t: i64, transport: Transport, mut m: Value| {
        msg_no += 1;
        if m.get("messageId").is_none() {
            m["messageId"] = json!(format!("gen-{s}-{msg_no}"));
        }
        out.push(Planned {
            time_ms: t,
            transport,
            message: m,
        });
    };

    for i in web.iter().copied() {
        let anon = format!("anon-{s}-{i}");
        let user = format!("user-{s}-{i}");
        let mut t = start + rng.random_range(0..span);
        let step = |rng: &mut ChaCha8Rng| rng.random_range(MIN..12 * MIN);
        let entry = match rng.random_range(0..3) {
            0 => {
                json!({"type": "track", "event": "Ad Clicked", "anonymousId": anon, "properties": {"campaign": "autumn"}})
            }
            1 => {
                json!({"type": "track", "event": "Email Link Clicked", "anonymousId": anon, "properties": {"campaign": "newsletter"}})
            }
            _ => {
                json!({"type": "page", "name": "Home", "anonymousId": anon, "properties": {"path": "/"}})
            }
        };
        push(&mut out, t, Transport::Web, entry);
        t += step(&mut rng);
        push(
            &mut out,
            t,
            Transport::Web,
            json!({"type": "page", "name": "Product List", "anonymousId": anon}),
        );
        t += step(&mut rng);
        let sku = format!("SKU-{}", rng.random_range(1..40));
        push(
            &mut out,
            t,
            Transport::Web,
            json!({"type": "track", "event": "Product Viewed", "anonymousId": anon, "properties": {"sku": sku}}),
        );
        let reached_add = added.binary_search(&i).is_ok();
        let reached_checkout = checkout.binary_search(&i).is_ok();
        let reached_buy = bought.binary_search(&i).is_ok();
        if !reached_checkout && rng.random_bool(cfg.identify_share) {
            t += step(&mut rng);
            push(
                &mut out,
                t,
                Transport::Web,
                json!({"type": "identify", "anonymousId": anon, "userId": user, "traits": {"newsletter": true}}),
            );
        }
        if reached_add {
            t += step(&mut rng);
            push(
                &mut out,
                t,
                Transport::Web,
                json!({"type": "track", "event": "Product Added", "anonymousId": anon, "properties": {"sku": sku, "quantity": 1}}),
            );
            if !reached_checkout {
                t += step(&mut rng);
                push(
                    &mut out,
                    t,
                    Transport::Beacon,
                    json!({"type": "track", "event": "Cart Abandoned", "anonymousId": anon, "properties": {"sku": sku}}),
                );
            }
        }
        if reached_checkout {
            // Signing in to check out links the anonymous browsing to the user.
            t += step(&mut rng);
            push(
                &mut out,
                t,
                Transport::Web,
                json!({"type": "identify", "anonymousId": anon, "userId": user}),
            );
            push(
                &mut out,
                t + 1000,
                Transport::Web,
                json!({"type": "track", "event": "Checkout Started", "anonymousId": anon, "userId": user}),
            );
            t += 1000;
        }
        if reached_buy {
            t += step(&mut rng);
            push(
                &mut out,
                t,
                Transport::Web,
                json!({"type": "track", "event": "Order Completed", "userId": user, "properties": {"order_id": format!("O-{s}-{i}"), "revenue": 20 + i % 80}}),
            );
            push(
                &mut out,
                t + DAY,
                Transport::Crm,
                json!({"type": "track", "event": "Order Shipped", "userId": user, "channel": "email"}),
            );
            // Delivered two days later; the NPS question names the delivery's messageId.
            let delivered = format!("gen-{s}-delivered-{i}");
            push(
                &mut out,
                t + 2 * DAY,
                Transport::Crm,
                json!({"type": "track", "event": "Order Delivered", "userId": user, "channel": "other", "messageId": delivered}),
            );
            if let Some(score) = score_of(0, &bought, i) {
                push(
                    &mut out,
                    t + 2 * DAY + rng.random_range(HOUR..20 * HOUR),
                    Transport::Crm,
                    json!({"type": "track", "event": "NPS Submitted", "userId": user, "channel": "email",
                           "properties": {"score": score, "about_event_id": delivered}}),
                );
            }
            if rng.random_bool(0.3) {
                // A general survey naming no touchpoint: attributed by the catalog's
                // `rates_stage` (service) when the customer had one, else unattributed.
                push(
                    &mut out,
                    t + 4 * DAY,
                    Transport::Web,
                    json!({"type": "track", "event": "Survey Completed", "userId": user, "properties": {"scale": "csat", "score": rng.random_range(1..=5)}}),
                );
            }
        }
    }

    for i in service.iter().copied() {
        let user = format!("user-{s}-{i}");
        let t = start + rng.random_range(0..span);
        let mut properties = json!({"topic": "late delivery"});
        if let Some((team, _)) = team_of(i) {
            properties["team"] = json!(team);
        }
        push(
            &mut out,
            t,
            Transport::Crm,
            json!({"type": "track", "event": "Complaint Filed", "userId": user, "properties": properties}),
        );
        if followed.binary_search(&i).is_ok() {
            // Log-uniform between 15 min and 36 h: most quickly, a long tail.
            let ln = rng.random_range((15.0f64).ln()..(36.0f64 * 60.0).ln());
            let delay_min = ln.exp();
            summary
                .follow_up_minutes
                .push((delay_min * 60_000.0).round() / 60_000.0);
            let tf = t + (delay_min * 60_000.0) as i64;
            push(
                &mut out,
                tf,
                Transport::Crm,
                json!({"type": "track", "event": "Follow-up Completed", "userId": user, "properties": {"agent": format!("staff-{}", i % 17)}}),
            );
            if let Some(score) = score_of(1, &followed, i) {
                push(
                    &mut out,
                    tf + rng.random_range(10 * MIN..6 * HOUR),
                    Transport::Crm,
                    json!({"type": "track", "event": "CSAT Submitted", "userId": user, "channel": "email",
                           "properties": {"score": score, "about_event": "Follow-up Completed"}}),
                );
            }
            if let Some(score) = score_of(2, &effort_raters, i) {
                push(
                    &mut out,
                    tf + rng.random_range(6 * HOUR..12 * HOUR),
                    Transport::Crm,
                    json!({"type": "track", "event": "Survey Completed", "userId": user, "channel": "email",
                           "properties": {"scale": "ces", "score": score, "about_event": "Follow-up Completed"}}),
                );
            }
            if rebought.binary_search(&i).is_ok() {
                let tr = tf + rng.random_range(DAY..4 * DAY);
                push(
                    &mut out,
                    tr,
                    Transport::Web,
                    json!({"type": "track", "event": "Order Completed", "userId": user, "properties": {"order_id": format!("R-{s}-{i}")}}),
                );
            }
        }
    }

    // Store visits during opening hours (09:00–18:00 UTC); 70 % buy there and rate the
    // purchase, naming its stage and channel (purchase, store).
    let mut visits: std::collections::BTreeMap<(usize, i64), usize> = Default::default();
    for i in in_store.iter().copied() {
        let user = format!("user-{s}-{i}");
        let day = start + rng.random_range(0..cfg.days) * DAY;
        let day = day - day.rem_euclid(DAY);
        let t = day + 9 * HOUR + rng.random_range(0..9 * HOUR - 40 * MIN);
        let store = (i - n_web - n_service) % STORES.len();
        *visits.entry((store, t - t.rem_euclid(HOUR))).or_default() += 1;
        let store_id = STORES[store];
        push(
            &mut out,
            t,
            Transport::Crm,
            json!({"type": "track", "event": "Store Visited", "userId": user, "channel": "store", "properties": {"store": "Leeds", "store_id": store_id}}),
        );
        if store_buyers.binary_search(&i).is_ok() {
            push(
                &mut out,
                t + 20 * MIN,
                Transport::Crm,
                json!({"type": "track", "event": "Order Completed", "userId": user, "channel": "store",
                       "properties": {"order_id": format!("S-{s}-{i}"), "store_id": store_id}}),
            );
        }
        if let Some(score) = score_of(3, &store_raters, i) {
            push(
                &mut out,
                t + 30 * MIN,
                Transport::Crm,
                json!({"type": "track", "event": "Survey Completed", "userId": user, "channel": "store",
                       "properties": {"scale": "csat", "score": score, "about_stage": "purchase", "about_channel": "store"}}),
            );
        }
    }
    // Each store's people counter: one total per opening hour (at least the visits the
    // plan has there, plus walk-ins who were never identified), and one audit a day.
    // The days the visits fall on (`day` above: start's day and the `days - 1` after).
    let first_day = start - start.rem_euclid(DAY);
    for d in 0..cfg.days {
        let day = first_day + d * DAY;
        for (k, store_id) in STORES.iter().enumerate() {
            let counter = format!("counter-{store_id}");
            for h in 9..18 {
                let hour = day + h * HOUR;
                let seen = visits.get(&(k, hour)).copied().unwrap_or(0);
                let count = 3 * seen + rng.random_range(5..25);
                push(
                    &mut out,
                    hour + HOUR - 1000,
                    Transport::Crm,
                    json!({"type": "track", "event": "Footfall Counted", "anonymousId": counter, "channel": "store",
                           "properties": {"store_id": store_id, "count": count,
                                          "period_start": iso_utc(hour), "period_secs": 3600}}),
                );
                summary.footfall_counts += 1;
            }
            {
                let checked = 20;
                let passed = rng.random_range(12..=20);
                push(
                    &mut out,
                    day + 12 * HOUR,
                    Transport::Crm,
                    json!({"type": "track", "event": "Audit Completed", "anonymousId": format!("auditor-{k}"), "channel": "store",
                           "properties": {"store_id": store_id, "score": 5 * passed, "items_checked": checked,
                                          "items_passed": passed, "auditor": "mystery shopper"}}),
                );
                summary.audits += 1;
            }
        }
    }

    out.sort_by_key(|m| m.time_ms);
    summary.follow_up_minutes.sort_by(f64::total_cmp);
    summary.messages = out.len();
    (out, summary)
}

/// `ms` as `YYYY-MM-DDTHH:MM:SSZ` (UTC; whole seconds).
fn iso_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GeneratorConfig {
        GeneratorConfig {
            customers: 400,
            ..GeneratorConfig::new(1_800_000_000_000)
        }
    }

    #[test]
    fn same_seed_same_plan_other_seed_other_plan() {
        assert_eq!(plan(&cfg()).0, plan(&cfg()).0);
        let other = GeneratorConfig { seed: 7, ..cfg() };
        assert_ne!(plan(&cfg()).0, plan(&other).0);
    }

    #[test]
    fn drop_off_is_allocated_exactly() {
        let (_, s) = plan(&cfg());
        assert_eq!(s.checkout_reached, [300, 165, 107, 80]);
        assert_eq!(s.service_reached, [80, 64, 32]);
        // Per team: 40 complaints each, 10 % and 30 % not followed up.
        assert_eq!(
            s.service_teams,
            vec![
                ("north".to_string(), 0.1, 40, 36),
                ("south".to_string(), 0.3, 40, 28)
            ]
        );
        let (p, _) = plan(&cfg());
        let teams: Vec<&str> = p
            .iter()
            .filter(|m| m.message["event"] == "Complaint Filed")
            .filter_map(|m| m.message["properties"]["team"].as_str())
            .collect();
        assert_eq!(teams.len(), 80);
        assert_eq!(teams.iter().filter(|t| **t == "north").count(), 40);
        assert_eq!(s.attempts, 380);
        let d1 = PlanSummary::dropoff(&s.checkout_reached, 1).unwrap();
        assert!((d1 - 0.45).abs() < 0.005, "{d1}");
        assert_eq!(PlanSummary::dropoff(&s.checkout_reached, 4), Some(0.0));
    }

    #[test]
    fn plan_is_time_ordered_and_ends_before_now() {
        let c = cfg();
        let (p, s) = plan(&c);
        assert_eq!(p.len(), s.messages);
        assert!(p.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        assert!(p.iter().all(|m| m.time_ms < c.now_ms));
        // Every message is one the collector accepts: ids, types, names.
        for m in &p {
            let msg = &m.message;
            assert!(msg["messageId"].is_string());
            assert!(msg["anonymousId"].is_string() || msg["userId"].is_string());
            if msg["type"] == "track" {
                assert!(msg["event"].is_string());
            }
        }
        assert!(p.iter().any(|m| m.transport == Transport::Beacon));
        assert_eq!(s.follow_up_minutes.len(), 64);
        let median = s.follow_up_quantile(0.5).unwrap();
        assert!((15.0..=2160.0).contains(&median));
    }

    #[test]
    fn answers_follow_the_configured_distributions() {
        let c = GeneratorConfig::new(1_800_000_000_000);
        let (p, s) = plan(&c);
        let expectations = feedback_expectations();
        assert_eq!(expectations[0].expected, 35.0);
        assert_eq!(expectations[1].expected, 4.3);
        assert_eq!(expectations[2].expected, 2.5);
        assert_eq!(expectations[3].expected, 3.6);
        for (k, (plan, e)) in FEEDBACK_PLAN.iter().zip(&expectations).enumerate() {
            let scores: Vec<f64> = p
                .iter()
                .filter(|m| m.message["event"] == plan.answer_event)
                .filter(|m| {
                    let props = &m.message["properties"];
                    let scale = props["scale"].as_str().unwrap_or(plan.scale);
                    let names = props["about_event"].as_str() == Some(plan.touchpoint)
                        || props["about_event_id"].is_string()
                        || props["about_channel"] == "store";
                    scale == plan.scale && names
                })
                .filter_map(|m| m.message["properties"]["score"].as_f64())
                .collect();
            assert_eq!(scores.len(), s.answers[k], "{}", plan.touchpoint);
            assert!(scores.len() >= 60, "{}: {}", plan.touchpoint, scores.len());
            let n = scores.len() as f64;
            let got = if plan.scale == "nps" {
                let pro = scores.iter().filter(|x| **x >= 9.0).count() as f64;
                let det = scores.iter().filter(|x| **x <= 6.0).count() as f64;
                100.0 * (pro - det) / n
            } else {
                scores.iter().sum::<f64>() / n
            };
            assert!(
                (got - e.expected).abs() <= e.tolerance,
                "{}: {got}",
                plan.touchpoint
            );
        }
        assert_eq!(iso_utc(1_764_583_200_000), "2025-12-01T10:00:00Z");
        // Footfall per store and opening hour, never below the identified visits.
        assert_eq!(s.footfall_counts, 2 * 9 * 7);
        assert_eq!(s.audits, 2 * 7);
        // Every store visit falls in an hour with a count at least as large as the
        // visits there (so conversion = purchases / footfall stays below 1).
        let mut visits = std::collections::BTreeMap::<(String, String), u64>::new();
        let mut counts = std::collections::BTreeMap::<(String, String), u64>::new();
        for m in &p {
            let props = &m.message["properties"];
            let store = props["store_id"].as_str().unwrap_or_default().to_owned();
            if m.message["event"] == "Store Visited" {
                let hour = iso_utc(m.time_ms - m.time_ms.rem_euclid(HOUR));
                *visits.entry((store, hour)).or_default() += 1;
            } else if m.message["event"] == "Footfall Counted" {
                let hour = props["period_start"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                counts.insert((store, hour), props["count"].as_u64().unwrap_or(0));
            }
        }
        for (key, n) in &visits {
            assert!(
                counts.get(key).is_some_and(|c| c >= n),
                "{key:?}: {n} visits"
            );
        }
        assert!(p.iter().all(|m| m.time_ms < c.now_ms));
    }

    #[test]
    fn bad_rates_are_refused() {
        assert!(GeneratorConfig {
            checkout_dropoff: [1.5, 0.0, 0.0],
            ..cfg()
        }
        .validate()
        .is_err());
        assert!(GeneratorConfig {
            web_share: 0.9,
            service_share: 0.2,
            ..cfg()
        }
        .validate()
        .is_err());
        assert!(cfg().validate().is_ok());
    }
}
