//! The storm generator: pure and seeded. The same options (seed included) give byte-identical
//! messages in the same order, and the ground truth of every call: the `CallState` folded from
//! the call's distinct event bodies, decoded exactly as the service decodes them.
//!
//! What a storm holds:
//! - calls, each as the platform's producers would send it (every producer variant of
//!   `EVENTS.md`, mixed by `--variants`), with realistic timestamps: call `i` starts at
//!   `base_time + i / rate` (10 calls/s of timeline when `--rate 0`), rings, is answered or not,
//!   talks for a duration drawn from `--duration`, ends with a reason;
//! - the main phase, in publish order: each call's events placed at random points among the
//!   publishes of the next `--reorder-window` calls (so they come out of order and interleaved
//!   with the neighbours), exact duplicates (redeliveries) a little later, and poison messages
//!   (one of each bad-input class in turn) anywhere;
//! - the late phase: recordings and identifications held back until after the calls' records
//!   were written.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::StormOptions;
use cdr_core::event::{self, Limits};
use cdr_core::merge::{CallEvent, CallRecord, CallState, PriceBook};

/// Calls per second of timeline when `--rate 0` (the timestamps must still be spread).
pub const NOMINAL_RATE: f64 = 10.0;

/// A duration distribution: `fixed:42s` (or just `42s`), `uniform:10s..5m`, `exp:90s` (mean).
#[derive(Debug, Clone, PartialEq)]
pub enum DurationDist {
    Fixed(Duration),
    Uniform(Duration, Duration),
    Exp(Duration),
}

impl DurationDist {
    /// Longest duration drawn (the exponential's tail is cut here).
    pub const MAX: Duration = Duration::from_secs(24 * 3600);

    pub fn sample(&self, rng: &mut StdRng) -> Duration {
        let d = match *self {
            DurationDist::Fixed(d) => d,
            DurationDist::Uniform(a, b) if a >= b => a,
            DurationDist::Uniform(a, b) => {
                let (a, b) = (nanos(a), nanos(b));
                Duration::from_nanos(rng.random_range(a..=b))
            }
            DurationDist::Exp(mean) => {
                let u: f64 = rng.random();
                Duration::from_secs_f64(-mean.as_secs_f64() * (1.0 - u).ln())
            }
        };
        d.min(Self::MAX)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl FromStr for DurationDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let parse = |v: &str| {
            humantime::parse_duration(v.trim()).map_err(|e| format!("{v:?} is not a duration: {e}"))
        };
        let (kind, arg) = s.split_once(':').unwrap_or(("fixed", s));
        match kind {
            "fixed" => Ok(DurationDist::Fixed(parse(arg)?)),
            "exp" => Ok(DurationDist::Exp(parse(arg)?)),
            "uniform" => {
                let (a, b) = arg
                    .split_once("..")
                    .ok_or_else(|| format!("{s:?}: expected uniform:MIN..MAX"))?;
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("{s:?}: MIN is above MAX"));
                }
                Ok(DurationDist::Uniform(a, b))
            }
            other => Err(format!(
                "{other:?} is not a distribution: use exp:MEAN, uniform:MIN..MAX or fixed:D"
            )),
        }
    }
}

impl fmt::Display for DurationDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = humantime::format_duration;
        match *self {
            DurationDist::Fixed(x) => write!(f, "fixed:{}", d(x)),
            DurationDist::Uniform(a, b) => write!(f, "uniform:{}..{}", d(a), d(b)),
            DurationDist::Exp(m) => write!(f, "exp:{}", d(m)),
        }
    }
}

/// Each class of bad input the service dead-letters (`unstorable`, a refusal by the database,
/// cannot be produced on demand and is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoisonClass {
    Oversize,
    InvalidUtf8,
    TooDeep,
    NotJson,
    NotObject,
    MissingEventType,
    InvalidEventType,
    MissingCallId,
    InvalidCallId,
    BadTimestamp,
    NulCharacter,
}

impl PoisonClass {
    pub const ALL: [PoisonClass; 11] = [
        PoisonClass::Oversize,
        PoisonClass::InvalidUtf8,
        PoisonClass::TooDeep,
        PoisonClass::NotJson,
        PoisonClass::NotObject,
        PoisonClass::MissingEventType,
        PoisonClass::InvalidEventType,
        PoisonClass::MissingCallId,
        PoisonClass::InvalidCallId,
        PoisonClass::BadTimestamp,
        PoisonClass::NulCharacter,
    ];

    /// The service's reject reason (`x-cdr-reject-reason`) for this class.
    pub fn reason(self) -> &'static str {
        match self {
            PoisonClass::Oversize => "oversize",
            PoisonClass::InvalidUtf8 => "invalid_utf8",
            PoisonClass::TooDeep => "too_deep",
            PoisonClass::NotJson => "not_json",
            PoisonClass::NotObject => "not_object",
            PoisonClass::MissingEventType => "missing_event_type",
            PoisonClass::InvalidEventType => "invalid_event_type",
            PoisonClass::MissingCallId => "missing_call_id",
            PoisonClass::InvalidCallId => "invalid_call_id",
            PoisonClass::BadTimestamp => "bad_timestamp",
            PoisonClass::NulCharacter => "nul_character",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// The first copy of a call's event (index into `Storm::calls`).
    Event {
        call: u32,
    },
    /// An exact copy of an earlier message (a redelivery): the log drops it.
    Duplicate {
        call: u32,
    },
    Poison(PoisonClass),
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The event type, or `""` as an older producer sent it.
    pub routing_key: String,
    pub body: Arc<[u8]>,
    /// `content_type: application/json` is set (some producers leave it out).
    pub content_type: bool,
    /// Position in the storm in calls: with `--rate R` it is published `at / R` seconds after
    /// the start.
    pub at: f64,
    pub kind: MessageKind,
}

impl Message {
    /// The first copy of an event of call `call` as the producers publish it: routed by its
    /// event type, with a content type, placed at the call's position.
    pub fn event(call: usize, event: &Value) -> Message {
        Message {
            routing_key: event["eventType"].as_str().unwrap_or_default().to_owned(),
            body: event.to_string().into_bytes().into(),
            content_type: true,
            at: call as f64,
            kind: MessageKind::Event {
                call: u32::try_from(call).unwrap_or(u32::MAX),
            },
        }
    }
}

/// One call's ground truth.
#[derive(Debug, Clone)]
pub struct ExpectedCall {
    pub call_id: String,
    /// Distinct bodies published for the call: the `event_count` of its final row.
    pub distinct_events: usize,
    /// A `call.ended` was published (else the record is TIMED_OUT after the idle timeout).
    pub ended: bool,
    /// The fold of the call's distinct events (with a placeholder receive time).
    pub state: CallState,
    /// For calls whose record depends on a receive time the generator cannot know (a
    /// `call.started` without timestamp): their distinct bodies, to fold again at
    /// verification with the receive time the row shows.
    pub receive_dependent: Option<Vec<Arc<[u8]>>>,
}

impl ExpectedCall {
    /// The expected record. `receive_time` stands in for missing timestamps; it only matters
    /// for receive-dependent calls.
    pub fn record(&self, prices: &PriceBook, receive_time: DateTime<Utc>) -> CallRecord {
        match &self.receive_dependent {
            None => self.state.record(&self.call_id, prices),
            Some(bodies) => {
                fold_bodies(&self.call_id, bodies, receive_time).record(&self.call_id, prices)
            }
        }
    }
}

/// What the storm holds, for the summary and the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormStats {
    pub calls: usize,
    pub answered: usize,
    pub identified: usize,
    pub with_recording: usize,
    pub with_dialog: usize,
    pub with_usage: usize,
    pub missing_end: usize,
    pub late_calls: usize,
    pub duplicate_starts: usize,
    pub inferred_start: usize,
    pub long_call_ids: usize,
    /// Every message published (main + late phase, poison included).
    pub messages: usize,
    pub main_phase: usize,
    pub late_phase: usize,
    pub distinct_events: usize,
    pub exact_duplicates: usize,
    pub poison: usize,
    pub poison_by_reason: BTreeMap<&'static str, usize>,
    /// Events sent in a non-canonical producer form, by variant.
    pub variants: BTreeMap<&'static str, usize>,
    pub events_by_type: BTreeMap<String, usize>,
}

pub struct Storm {
    pub seed: u64,
    pub base_time: DateTime<Utc>,
    pub call_id_prefix: String,
    /// Main phase, in publish order.
    pub main: Vec<Message>,
    /// Late phase, in publish order.
    pub late: Vec<Message>,
    pub calls: Vec<ExpectedCall>,
    /// Call ids carried by poison messages whose envelope names one: they must never be logged.
    pub poison_call_ids: Vec<String>,
    pub stats: StormStats,
}

/// The receive time used while generating (only receive-dependent calls see it, and they are
/// folded again at verification).
fn placeholder_receive(base: DateTime<Utc>) -> DateTime<Utc> {
    base + chrono::Duration::days(365)
}

/// The default call-id prefix: the seed and a fingerprint of everything that shapes the
/// events, so two different storms never share call ids, and a replay reuses them.
pub fn default_prefix(o: &StormOptions) -> String {
    let fingerprint = format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        o.calls,
        o.rate,
        o.duration,
        o.identified,
        o.answered,
        o.recording,
        o.dialog,
        o.usage,
        o.reorder_window,
        o.duplicates,
        o.missing_end,
        o.late,
        o.poison,
        o.variants,
        o.seed,
        event::format_timestamp(o.base_time)
    );
    // FNV-1a: stable across builds and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fingerprint.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("storm-{}-{:08x}", o.seed, h as u32)
}

/// Generates the storm. Pure: no clock, no I/O; the same options give the same storm.
pub fn generate(o: &StormOptions, limits: Limits) -> Storm {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let prefix = o
        .call_id_prefix
        .clone()
        .unwrap_or_else(|| default_prefix(o));
    let mut stats = StormStats {
        calls: o.calls,
        ..StormStats::default()
    };
    let window = o.reorder_window as f64;
    let mut main: Vec<Message> = Vec::new();
    let mut late: Vec<Message> = Vec::new();
    let mut calls = Vec::with_capacity(o.calls);

    for i in 0..o.calls {
        let mut g = CallGen {
            rng: &mut rng,
            o,
            stats: &mut stats,
        };
        let planned = g.call(i, &prefix);
        let call = u32::try_from(i).unwrap_or(u32::MAX);
        let mut seen: HashSet<Arc<[u8]>> = HashSet::new();
        let mut distinct: Vec<Arc<[u8]>> = Vec::new();
        for ev in planned.events {
            let body: Arc<[u8]> = serde_json::to_vec(&ev.value)
                .expect("a JSON value serializes")
                .into();
            let event_type = ev.value["eventType"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *stats.events_by_type.entry(event_type.clone()).or_default() += 1;
            // The same body twice (the typed producer's duplicate INVITE) is an exact
            // duplicate: the log keeps it once.
            let first = seen.insert(body.clone());
            if first {
                distinct.push(body.clone());
            } else {
                stats.exact_duplicates += 1;
            }
            let msg = Message {
                routing_key: if ev.empty_routing_key {
                    String::new()
                } else {
                    event_type
                },
                body,
                content_type: ev.content_type,
                at: if window > 0.0 {
                    i as f64 + rng.random_range(0.0..window)
                } else {
                    i as f64
                },
                kind: if first {
                    MessageKind::Event { call }
                } else {
                    MessageKind::Duplicate { call }
                },
            };
            let copy = rng.random_bool(o.duplicates).then(|| Message {
                at: msg.at + rng.random_range(0.0..(2.0 * window).max(1.0)),
                kind: MessageKind::Duplicate { call },
                ..msg.clone()
            });
            let phase = if ev.late { &mut late } else { &mut main };
            phase.push(msg);
            if let Some(copy) = copy {
                stats.exact_duplicates += 1;
                phase.push(copy);
            }
        }
        stats.distinct_events += distinct.len();
        let placeholder = placeholder_receive(o.base_time);
        let state = fold_bodies(&planned.call_id, &distinct, placeholder);
        // A record that changes with the receive time depends on it (a timestamp-less
        // call.started); every other timestamp-less variant is placed where it cannot matter,
        // and this proves it for each call.
        let early = fold_bodies(
            &planned.call_id,
            &distinct,
            o.base_time - chrono::Duration::days(365),
        )
        .record(&planned.call_id, &PriceBook::default());
        let receive_dependent = (early != state.record(&planned.call_id, &PriceBook::default()))
            .then(|| distinct.clone());
        calls.push(ExpectedCall {
            call_id: planned.call_id,
            distinct_events: distinct.len(),
            ended: planned.ended,
            state,
            receive_dependent,
        });
    }

    let poison_count = (o.poison * main.len() as f64).round() as usize;
    let mut poison_call_ids = Vec::new();
    // One oversize body, shared: a large storm may carry hundreds of them.
    let mut oversize: Option<Arc<[u8]>> = None;
    for n in 0..poison_count {
        let class = PoisonClass::ALL[n % PoisonClass::ALL.len()];
        let call_id = format!("{prefix}-poison-{n:06}@198.51.100.7");
        let (routing_key, body) = match (&oversize, class) {
            (Some(body), PoisonClass::Oversize) => ("call.ended".to_owned(), body.clone()),
            _ => {
                let (routing_key, body, names_call) = poison(class, &call_id, limits, &mut rng);
                if names_call {
                    poison_call_ids.push(call_id);
                }
                let body: Arc<[u8]> = body.into();
                if class == PoisonClass::Oversize {
                    oversize = Some(body.clone());
                }
                (routing_key, body)
            }
        };
        *stats.poison_by_reason.entry(class.reason()).or_default() += 1;
        main.push(Message {
            routing_key,
            body,
            content_type: rng.random_bool(0.5),
            at: rng.random_range(0.0..(o.calls.max(1) as f64)),
            kind: MessageKind::Poison(class),
        });
    }
    stats.poison = poison_count;
    // Stable: with no reorder window, a call's events keep their natural order.
    main.sort_by(|a, b| a.at.total_cmp(&b.at));
    late.shuffle(&mut rng);
    for m in &mut late {
        m.at = 0.0;
    }
    stats.main_phase = main.len();
    stats.late_phase = late.len();
    stats.messages = main.len() + late.len();
    Storm {
        seed: o.seed,
        base_time: o.base_time,
        call_id_prefix: prefix,
        main,
        late,
        calls,
        poison_call_ids,
        stats,
    }
}

/// Decodes and folds a call's distinct bodies as the service does.
fn fold_bodies(call_id: &str, bodies: &[Arc<[u8]>], receive: DateTime<Utc>) -> CallState {
    let limits = Limits {
        max_body_bytes: usize::MAX,
        max_json_depth: usize::MAX,
    };
    let events: Vec<CallEvent> = bodies
        .iter()
        .map(|body| {
            let e = event::decode(body, receive, limits).unwrap_or_else(|r| {
                panic!(
                    "storm generator bug: an event of {call_id} does not decode ({r}): {}",
                    String::from_utf8_lossy(body)
                )
            });
            assert_eq!(e.call_id, call_id, "storm generator bug: wrong call id");
            CallEvent::from(e)
        })
        .collect();
    CallState::fold(&events)
}

/// One generated event before serialization.
#[derive(Clone)]
struct Ev {
    value: Value,
    content_type: bool,
    empty_routing_key: bool,
    late: bool,
}

struct PlannedCall {
    call_id: String,
    ended: bool,
    events: Vec<Ev>,
}

/// How the envelope of one event is varied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Canonical,
    TimestampGo,
    TimestampRust(u8),
    NoContentType,
    EmptyRoutingKey,
    NoTraceId,
    /// The n-th variant specific to the event type.
    Specific(usize),
}

const ENVELOPE_VARIANTS: usize = 5;

struct Identity {
    user_id: String,
    contact_id: i64,
    tenant_id: String,
}

const TENANTS: [&str; 3] = ["sentiric_demo", "acme_corp", "legacy_tenant"];
const UTTERANCES: [(&str, &str); 4] = [
    (
        "Randevumu yarına alabilir miyim?",
        "Tabii, yarın saat 14:00 için randevunuzu güncelledim.",
    ),
    (
        "What are your opening hours?",
        "We are open from 9 to 18 on weekdays.",
    ),
    (
        "Faturamı öğrenmek istiyorum.",
        "Son faturanız 245,90 TL, son ödeme tarihi ayın 28'i.",
    ),
    (
        "I'd like to speak to a person.",
        "I'm transferring you to an agent now.",
    ),
];

struct CallGen<'a> {
    rng: &'a mut StdRng,
    o: &'a StormOptions,
    stats: &'a mut StormStats,
}

impl CallGen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn ms(&mut self, lo: u64, hi: u64) -> chrono::Duration {
        chrono::Duration::milliseconds(self.rng.random_range(lo..=hi) as i64)
    }

    fn identity(&mut self, tenant: &str) -> Identity {
        Identity {
            user_id: uuid::Builder::from_random_bytes(self.rng.random())
                .into_uuid()
                .to_string(),
            contact_id: self.rng.random_range(1..100_000),
            tenant_id: tenant.to_owned(),
        }
    }

    fn variant(&mut self, specific: &[&'static str]) -> Variant {
        if !self.chance(self.o.variants) {
            return Variant::Canonical;
        }
        let n = self.rng.random_range(0..ENVELOPE_VARIANTS + specific.len());
        let (v, name) = match n {
            0 => (Variant::TimestampGo, "timestamp_go_trimmed"),
            1 => {
                let digits = *[0u8, 3, 6, 9].choose(self.rng).unwrap_or(&0);
                let name = match digits {
                    0 => "timestamp_rust_0_digits",
                    3 => "timestamp_rust_3_digits",
                    6 => "timestamp_rust_6_digits",
                    _ => "timestamp_rust_9_digits",
                };
                (Variant::TimestampRust(digits), name)
            }
            2 => (Variant::NoContentType, "no_content_type"),
            3 => (Variant::EmptyRoutingKey, "empty_routing_key"),
            4 => (Variant::NoTraceId, "no_trace_id"),
            k => (
                Variant::Specific(k - ENVELOPE_VARIANTS),
                specific[k - ENVELOPE_VARIANTS],
            ),
        };
        *self.stats.variants.entry(name).or_default() += 1;
        v
    }

    /// The envelope of one event, with its variant applied.
    fn envelope(
        &self,
        event_type: &str,
        call_id: &str,
        trace_id: &str,
        at: DateTime<Utc>,
        v: Variant,
    ) -> Ev {
        let mut o = Map::new();
        o.insert("eventType".into(), json!(event_type));
        if v != Variant::NoTraceId {
            o.insert("traceId".into(), json!(trace_id));
        }
        o.insert("callId".into(), json!(call_id));
        o.insert("timestamp".into(), json!(timestamp(at, v)));
        Ev {
            value: Value::Object(o),
            content_type: v != Variant::NoContentType,
            empty_routing_key: v == Variant::EmptyRoutingKey,
            late: false,
        }
    }

    fn call(&mut self, i: usize, prefix: &str) -> PlannedCall {
        let o = self.o;
        let per_call = 1.0 / if o.rate > 0.0 { o.rate } else { NOMINAL_RATE };
        let start = o.base_time
            + chrono::Duration::nanoseconds((i as f64 * per_call * 1e9) as i64)
            + chrono::Duration::nanoseconds(self.rng.random_range(0..(per_call * 1e9) as i64 + 1));
        let host = format!("198.51.100.{}", i % 250 + 1);
        let mut call_id = format!("{prefix}-{i:06}@{host}");
        if self.chance(o.variants * 0.1) {
            // The longest Call-ID the column holds.
            let pad = 255usize.saturating_sub(call_id.chars().count() + 1);
            call_id = format!("{prefix}-{i:06}-{}@{host}", "a".repeat(pad));
            call_id.truncate(255);
            self.stats.long_call_ids += 1;
            *self.stats.variants.entry("call_id_255_chars").or_default() += 1;
        }
        let trace_id: String = format!(
            "trace-{}",
            (0..12)
                .map(|_| {
                    *b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                        .choose(self.rng)
                        .unwrap_or(&b'x') as char
                })
                .collect::<String>()
        );
        let tenant = TENANTS.choose(self.rng).copied().unwrap_or("sentiric_demo");
        let caller = format!(
            "90{}",
            self.rng.random_range(5_000_000_000u64..6_000_000_000)
        );
        let callee = format!("90212444000{}", self.rng.random_range(0..3));

        let answered = self.chance(o.answered);
        let identified = self.chance(o.identified);
        let recording = answered && self.chance(o.recording);
        let dialog = answered && self.chance(o.dialog);
        let usage = answered && self.chance(o.usage);
        let ended = !self.chance(o.missing_end);
        let late = ended && self.chance(o.late);
        let dup_start = self.chance(o.duplicates);
        self.stats.answered += usize::from(answered);
        self.stats.identified += usize::from(identified);
        self.stats.with_recording += usize::from(recording);
        self.stats.with_dialog += usize::from(dialog);
        self.stats.with_usage += usize::from(usage);
        self.stats.missing_end += usize::from(!ended);
        self.stats.late_calls += usize::from(late);

        // The timeline.
        let ring = self.ms(500, if answered { 15_000 } else { 40_000 });
        let answer_at = start + ring;
        let talk = if answered {
            chrono::Duration::from_std(o.duration.sample(self.rng)).unwrap_or_default()
        } else {
            chrono::Duration::zero()
        };
        let end_at = answer_at + talk;
        let reason: &str = if answered {
            [
                "normal_clearing",
                "normal_clearing",
                "normal_clearing_by_user",
                "normal_clearing_by_user",
                "terminated_by_request",
                "system_terminated",
                "network_failure",
            ]
            .choose(self.rng)
            .copied()
            .unwrap_or("normal_clearing")
        } else {
            [
                "busy",
                "user_busy",
                "failure",
                "network_failure",
                "system_terminated",
                "normal_clearing",
            ]
            .choose(self.rng)
            .copied()
            .unwrap_or("busy")
        };

        // Which event comes after the record was written.
        #[derive(PartialEq)]
        enum Late {
            None,
            Recording,
            Identification,
        }
        let late_kind = if !late {
            Late::None
        } else {
            match (recording, identified) {
                (true, true) if self.chance(0.5) => Late::Identification,
                (true, _) => Late::Recording,
                _ => Late::Identification,
            }
        };

        let mut events = Vec::new();
        let identity = self.identity(tenant);

        // call.started (and a duplicate INVITE's second one).
        let started_specific = [
            "started_uri_keys",
            "started_snake_media",
            "started_snake_dialplan",
            "started_snake_user_only",
            "started_no_dialplan",
            "started_null_rtp_addr",
            "started_empty_rtp_addr",
            "started_no_timestamp",
            "started_display_name",
        ];
        let v = self.variant(&started_specific);
        let mut ev = self.envelope("call.started", &call_id, &trace_id, start, v);
        let spec = match v {
            Variant::Specific(k) => Some(started_specific[k]),
            _ => None,
        };
        let matched = identified && self.chance(0.5);
        {
            let obj = ev.value.as_object_mut().expect("an object");
            let from = if spec == Some("started_display_name") {
                format!("\"Caller {caller}\" <sip:{caller}@203.0.113.5;transport=udp>;tag=9fx")
            } else {
                format!("<sip:{caller}@203.0.113.5>;tag=abc")
            };
            let to = format!("<sip:{callee}@198.51.100.7>");
            let port = self.rng.random_range(10_000..20_000);
            let rtp = match spec {
                Some("started_null_rtp_addr") => Value::Null,
                Some("started_empty_rtp_addr") => json!(""),
                _ => json!("203.0.113.5:40000"),
            };
            let uri_keys = spec == Some("started_uri_keys");
            obj.insert(
                if uri_keys { "fromUri" } else { "from" }.into(),
                json!(from),
            );
            obj.insert(if uri_keys { "toUri" } else { "to" }.into(), json!(to));
            let media = if spec == Some("started_snake_media") {
                json!({"server_rtp_port": port, "caller_rtp_addr": rtp})
            } else {
                json!({"serverRtpPort": port, "callerRtpAddr": rtp})
            };
            obj.insert(if uri_keys { "mediaInfo" } else { "media" }.into(), media);
            let user = matched.then_some(&identity);
            let dialplan = match spec {
                Some("started_no_dialplan") => None,
                Some("started_snake_dialplan") => {
                    Some(dialplan_snake(tenant, &caller, &callee, user, true))
                }
                Some("started_snake_user_only") => {
                    Some(dialplan_snake(tenant, &caller, &callee, user, false))
                }
                _ => Some(dialplan_camel(tenant, &caller, &callee, user)),
            };
            if let Some(d) = dialplan {
                obj.insert(
                    if uri_keys {
                        "dialplanResolution"
                    } else {
                        "dialplan"
                    }
                    .into(),
                    d,
                );
            }
            if spec == Some("started_no_timestamp") {
                obj.remove("timestamp");
                self.stats.inferred_start += 1;
            }
        }
        if dup_start {
            // A duplicate INVITE: a second call.started, a little later. The typed producer
            // sends no timestamp, so its second copy is the same body.
            let mut second = ev.clone();
            if spec != Some("started_no_timestamp") {
                let at = start + self.ms(1, 2000);
                second.value["timestamp"] = json!(timestamp(at, v));
                self.stats.duplicate_starts += 1;
            }
            events.push(ev);
            events.push(second);
        } else {
            events.push(ev);
        }

        // call.answered: some producer versions never sent it (answered by media evidence).
        let no_answered_event = answered && (recording || dialog) && self.chance(o.variants * 0.2);
        if no_answered_event {
            *self.stats.variants.entry("no_call_answered").or_default() += 1;
        }
        if answered && !no_answered_event {
            let v = self.variant(&["answered_extra_keys"]);
            let mut ev = self.envelope("call.answered", &call_id, &trace_id, answer_at, v);
            if v == Variant::Specific(0) {
                let obj = ev.value.as_object_mut().expect("an object");
                obj.insert("sipStatus".into(), json!(200));
                obj.insert("producerVersion".into(), json!("signaling-1.4.2"));
                obj.insert(
                    "x-debug".into(),
                    json!({"node": "sbc-eu-1", "hops": [1, 2]}),
                );
            }
            events.push(ev);
        }

        // Identification (agent service), possibly twice (the latest wins), possibly late.
        let mut add_identification = |g: &mut Self, ident: &Identity, at, late: bool, second| {
            let specific: &[&'static str] = if second {
                &["identified_dot_alias"]
            } else {
                &["identified_dot_alias", "identified_created_alias"]
            };
            let v = g.variant(specific);
            let (event_type, no_ts) = match v {
                Variant::Specific(0) => ("user.identified.for.call", false),
                Variant::Specific(_) => ("user.created.for_call", true),
                _ => ("user.identified.for_call", false),
            };
            let mut ev = g.envelope(event_type, &call_id, &trace_id, at, v);
            let obj = ev.value.as_object_mut().expect("an object");
            obj.insert("userId".into(), json!(ident.user_id));
            obj.insert("contactId".into(), json!(ident.contact_id));
            obj.insert("tenantId".into(), json!(ident.tenant_id));
            if no_ts {
                obj.remove("timestamp");
            }
            ev.late = late;
            events.push(ev);
            no_ts
        };
        let mut ident_at = if answered { answer_at } else { start } + self.ms(200, 3000);
        if late_kind == Late::Identification {
            ident_at = end_at + self.ms(1000, 30_000);
            if !identified {
                // A late identification for a caller not known before the end.
                self.stats.identified += 1;
            }
        }
        if identified || late_kind == Late::Identification {
            let late = late_kind == Late::Identification;
            let alias_without_timestamp =
                add_identification(self, &identity, ident_at, late, false);
            // A second identification with another identity, later: it wins. Not after the
            // timestamp-less alias, whose place among them would follow its receive time.
            if !alias_without_timestamp && self.chance(0.1) {
                let other = self.identity(tenant);
                let at = ident_at + self.ms(1000, 5000);
                add_identification(self, &other, at, late, true);
            }
        }

        // Dialog turns and usage reports during the talk.
        let talk_ms = talk.num_milliseconds().max(1);
        if dialog {
            let turns = self.rng.random_range(1..=6);
            for k in 0..turns {
                let at = answer_at
                    + chrono::Duration::milliseconds(talk_ms * (k + 1) / (turns + 1))
                    + self.ms(0, 50);
                let v = self.variant(&[]);
                let mut ev = self.envelope("dialog.turn.completed", &call_id, &trace_id, at, v);
                let (user_text, ai_text) = *UTTERANCES.choose(self.rng).unwrap_or(&UTTERANCES[0]);
                let obj = ev.value.as_object_mut().expect("an object");
                obj.insert("turnIndex".into(), json!(k));
                obj.insert("userText".into(), json!(user_text));
                obj.insert("aiText".into(), json!(ai_text));
                obj.insert(
                    "ragSources".into(),
                    json!([{"documentId": format!("kb-{:03}", k), "score": 0.87}, "kb-faq-12"]),
                );
                obj.insert("sttMs".into(), json!(self.rng.random_range(100..600)));
                obj.insert("llmMs".into(), json!(self.rng.random_range(300..3000)));
                obj.insert("ttsMs".into(), json!(self.rng.random_range(100..500)));
                events.push(ev);
            }
        }
        if usage {
            let reports = self.rng.random_range(1..=4);
            for k in 0..reports {
                let at = answer_at
                    + chrono::Duration::milliseconds(talk_ms * (k + 1) / (reports + 1))
                    + self.ms(0, 50);
                let v = self.variant(&["usage_no_usage_id"]);
                let mut ev = self.envelope("cost.usage.reported", &call_id, &trace_id, at, v);
                let (service, resource, quantity) = match self.rng.random_range(0..4) {
                    0 => (
                        "stt-whisper-service",
                        "stt_second",
                        json!(self.rng.random_range(10..2000) as f64 / 10.0),
                    ),
                    1 => (
                        "llm-gateway-service",
                        "llm_token",
                        json!(self.rng.random_range(50..5000)),
                    ),
                    2 => (
                        "tts-service",
                        "tts_character",
                        json!(self.rng.random_range(20..3000)),
                    ),
                    _ => (
                        "sip-signaling-service",
                        cdr_core::merge::TELEPHONY_MINUTE,
                        json!((talk_ms + 59_999) / 60_000),
                    ),
                };
                let obj = ev.value.as_object_mut().expect("an object");
                if v != Variant::Specific(0) {
                    let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
                    obj.insert("usageId".into(), json!(id.to_string()));
                }
                obj.insert("service".into(), json!(service));
                obj.insert("resourceType".into(), json!(resource));
                obj.insert("quantity".into(), quantity);
                events.push(ev);
            }
        }
        // Any other call-scoped event: kept raw, merged into nothing.
        if answered && self.chance(o.variants * 0.2) {
            *self
                .stats
                .variants
                .entry("unknown_call_scoped_event")
                .or_default() += 1;
            let at = answer_at + chrono::Duration::milliseconds(talk_ms / 2);
            let mut ev = self.envelope(
                "call.transfer.requested",
                &call_id,
                &trace_id,
                at,
                Variant::Canonical,
            );
            let obj = ev.value.as_object_mut().expect("an object");
            obj.insert("targetUri".into(), json!("sip:902124449999@198.51.100.7"));
            obj.insert("requestedBy".into(), json!("agent-service"));
            obj.insert(
                "metadata".into(),
                json!({"reason": "caller_asked_for_human", "priority": 1}),
            );
            events.push(ev);
        }
        // The agent's hang-up request (no traceId; its timestamp is often missing).
        if reason == "terminated_by_request" || self.chance(0.03) {
            let at = end_at - self.ms(50, 1000);
            let v = self.variant(&["terminate_no_timestamp"]);
            let mut ev = self.envelope("call.terminate.request", &call_id, &trace_id, at, v);
            let obj = ev.value.as_object_mut().expect("an object");
            obj.remove("traceId");
            if v == Variant::Specific(0) {
                obj.remove("timestamp");
            }
            events.push(ev);
        }
        if ended {
            let v = self.variant(&["ended_without_reason"]);
            let mut ev = self.envelope("call.ended", &call_id, &trace_id, end_at, v);
            if v != Variant::Specific(0) {
                ev.value["reason"] = json!(reason);
            }
            events.push(ev);
        }
        if recording {
            let at = end_at + self.ms(1000, 60_000);
            let v = self.variant(&[]);
            let mut ev = self.envelope("call.recording.available", &call_id, &trace_id, at, v);
            ev.value["recordingUri"] =
                json!(format!("s3://sentiric-recordings/{tenant}/{call_id}.wav"));
            ev.late = late_kind == Late::Recording;
            events.push(ev);
        }
        PlannedCall {
            call_id,
            ended,
            events,
        }
    }
}

/// A timestamp in the producer style the variant names (Rust `+00:00` by default).
fn timestamp(t: DateTime<Utc>, v: Variant) -> String {
    match v {
        Variant::TimestampGo => {
            let frac = format!("{:09}", t.timestamp_subsec_nanos());
            let frac = frac.trim_end_matches('0');
            let base = t.format("%Y-%m-%dT%H:%M:%S");
            if frac.is_empty() {
                format!("{base}Z")
            } else {
                format!("{base}.{frac}Z")
            }
        }
        Variant::TimestampRust(digits) => {
            let f = match digits {
                0 => SecondsFormat::Secs,
                3 => SecondsFormat::Millis,
                6 => SecondsFormat::Micros,
                _ => SecondsFormat::Nanos,
            };
            t.to_rfc3339_opts(f, false)
        }
        _ => event::format_timestamp(t),
    }
}

fn dialplan_camel(tenant: &str, caller: &str, callee: &str, user: Option<&Identity>) -> Value {
    let (matched_user, matched_contact) = match user {
        Some(u) => (
            json!({
                "id": u.user_id, "name": "Ayşe Yılmaz", "tenantId": u.tenant_id,
                "userType": "caller", "contacts": [], "preferredLanguageCode": "tr"
            }),
            json!({
                "id": u.contact_id, "userId": u.user_id, "contactType": "phone",
                "contactValue": caller, "isPrimary": true
            }),
        ),
        None => (Value::Null, Value::Null),
    };
    let action = if user.is_some() {
        "START_AI_CONVERSATION"
    } else {
        "PROCESS_GUEST_CALL"
    };
    json!({
        "dialplanId": "DP_STORM",
        "tenantId": tenant,
        "action": {"action": action, "actionData": {"data": {}}},
        "matchedUser": matched_user,
        "matchedContact": matched_contact,
        "inboundRoute": {"phoneNumber": callee, "tenantId": tenant}
    })
}

/// An older producer's snake_case dialplan; `full` = false is the "user only" form: no tenant
/// on the dialplan, no contact, no inbound route.
fn dialplan_snake(
    tenant: &str,
    caller: &str,
    callee: &str,
    user: Option<&Identity>,
    full: bool,
) -> Value {
    let matched_user = match user {
        Some(u) => json!({
            "id": u.user_id, "name": "Zeynep Kaya", "tenant_id": u.tenant_id,
            "user_type": "caller", "contacts": [], "preferred_language_code": "tr"
        }),
        None => Value::Null,
    };
    let matched_contact = match user {
        Some(u) if full => json!({
            "id": u.contact_id, "user_id": u.user_id, "contact_type": "phone",
            "contact_value": caller, "is_primary": true
        }),
        _ => Value::Null,
    };
    let mut d = json!({
        "dialplan_id": "DP_LEGACY_MAIN",
        "action": {"action": "START_AI_CONVERSATION", "action_data": {"data": {}}},
        "matched_user": matched_user,
        "matched_contact": matched_contact,
        "inbound_route": Value::Null,
    });
    if full {
        d["tenant_id"] = json!(tenant);
        d["inbound_route"] = json!({"phone_number": callee, "tenant_id": tenant});
    }
    d
}

/// One poison message: (routing key, body, whether its envelope names a usable call id).
fn poison(
    class: PoisonClass,
    call_id: &str,
    limits: Limits,
    rng: &mut StdRng,
) -> (String, Vec<u8>, bool) {
    let rk = |s: &str| s.to_owned();
    match class {
        PoisonClass::Oversize => {
            let head = format!(r#"{{"eventType":"call.ended","callId":"{call_id}","padding":""#);
            let tail = r#""}"#;
            let pad = (limits.max_body_bytes + 1).saturating_sub(head.len() + tail.len());
            let body = format!("{head}{}{tail}", "x".repeat(pad));
            (rk("call.ended"), body.into_bytes(), true)
        }
        PoisonClass::InvalidUtf8 => {
            let mut body =
                format!(r#"{{"eventType":"call.ended","callId":"{call_id}","note":""#).into_bytes();
            body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
            body.extend_from_slice(br#""}"#);
            (rk("call.ended"), body, true)
        }
        PoisonClass::TooDeep => {
            let depth = limits.max_json_depth.saturating_add(1).min(1 << 20);
            let body = format!(
                r#"{{"eventType":"call.started","callId":"{call_id}","nested":{}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            (rk("call.started"), body.into_bytes(), true)
        }
        PoisonClass::NotJson => {
            let body = if rng.random_bool(0.5) {
                format!("call.started {call_id} 2025-09-24T10:01:02Z")
            } else {
                format!(
                    r#"{{"eventType": "call.started", "callId": "{call_id}", "from": "<sip:9055"#
                )
            };
            (rk("call.started"), body.into_bytes(), true)
        }
        PoisonClass::NotObject => {
            let body = match rng.random_range(0..4) {
                0 => format!(r#"[{{"eventType":"call.started","callId":"{call_id}"}}]"#),
                1 => "null".to_owned(),
                2 => "42".to_owned(),
                _ => r#""call.started""#.to_owned(),
            };
            (rk("call.started"), body.into_bytes(), true)
        }
        PoisonClass::MissingEventType => {
            let body = format!(r#"{{"callId":"{call_id}","timestamp":"2025-09-24T10:01:02Z"}}"#);
            (String::new(), body.into_bytes(), true)
        }
        PoisonClass::InvalidEventType => {
            let event_type = if rng.random_bool(0.5) { r#""""# } else { "7" };
            let body = format!(r#"{{"eventType":{event_type},"callId":"{call_id}"}}"#);
            (String::new(), body.into_bytes(), true)
        }
        PoisonClass::MissingCallId => {
            let body = if rng.random_bool(0.5) {
                r#"{"eventType":"call.started","traceId":"trace-Ab12Cd34Ef56","timestamp":"2025-09-24T10:01:02Z"}"#
            } else {
                r#"{"eventType":"call.ended","callId":null}"#
            };
            (rk("call.started"), body.as_bytes().to_vec(), false)
        }
        PoisonClass::InvalidCallId => {
            let bad = match rng.random_range(0..5) {
                0 => json!(""),
                1 => json!("   "),
                2 => json!(8_467_302_211u64),
                3 => json!(format!("{call_id}\n")),
                _ => json!("x".repeat(event::MAX_CALL_ID_LEN + 1)),
            };
            let body = json!({"eventType": "call.ended", "callId": bad}).to_string();
            (rk("call.ended"), body.into_bytes(), false)
        }
        PoisonClass::BadTimestamp => {
            let ts = if rng.random_bool(0.5) {
                json!("24/09/2025 10:01")
            } else {
                json!(1_758_708_062)
            };
            let body = json!({"eventType": "call.ended", "callId": call_id, "timestamp": ts});
            (rk("call.ended"), body.to_string().into_bytes(), true)
        }
        PoisonClass::NulCharacter => {
            let body = format!(
                r#"{{"eventType":"call.ended","traceId":"trace-Ab12\u0000Cd34","callId":"{call_id}"}}"#
            );
            (rk("call.ended"), body.into_bytes(), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64) -> StormOptions {
        StormOptions {
            calls: 300,
            seed,
            duplicates: 0.2,
            missing_end: 0.1,
            late: 0.2,
            poison: 0.02,
            variants: 0.6,
            ..StormOptions::default()
        }
    }

    const LIMITS: Limits = Limits {
        max_body_bytes: 64 * 1024,
        max_json_depth: 32,
    };

    fn bytes(s: &Storm) -> Vec<(String, Vec<u8>, bool, u64)> {
        s.main
            .iter()
            .chain(&s.late)
            .map(|m| {
                (
                    m.routing_key.clone(),
                    m.body.to_vec(),
                    m.content_type,
                    m.at.to_bits(),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_seed_gives_byte_identical_events() {
        let a = generate(&options(7), LIMITS);
        let b = generate(&options(7), LIMITS);
        assert_eq!(bytes(&a), bytes(&b));
        assert_eq!(a.call_id_prefix, b.call_id_prefix);
        let records = |s: &Storm| {
            s.calls
                .iter()
                .map(|c| {
                    (
                        c.distinct_events,
                        c.record(&PriceBook::default(), s.base_time),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(records(&a), records(&b));
        assert!(!a.main.is_empty() && !a.late.is_empty());
    }

    #[test]
    fn different_seeds_give_different_storms() {
        let a = generate(&options(7), LIMITS);
        let b = generate(&options(8), LIMITS);
        assert_ne!(a.call_id_prefix, b.call_id_prefix);
        // Even with the same call ids, the events differ.
        let mut o = options(8);
        o.call_id_prefix = Some(a.call_id_prefix.clone());
        let c = generate(&o, LIMITS);
        assert_ne!(bytes(&a), bytes(&c));
    }

    #[test]
    fn every_fault_and_variant_is_present_and_counts_add_up() {
        let s = generate(&options(3), LIMITS);
        let st = &s.stats;
        for class in PoisonClass::ALL {
            assert!(
                st.poison_by_reason
                    .get(class.reason())
                    .copied()
                    .unwrap_or(0)
                    > 0,
                "{class:?}"
            );
        }
        for v in [
            "timestamp_go_trimmed",
            "no_content_type",
            "empty_routing_key",
            "no_trace_id",
            "started_uri_keys",
            "started_snake_dialplan",
            "started_snake_user_only",
            "started_no_timestamp",
            "identified_created_alias",
            "identified_dot_alias",
            "ended_without_reason",
            "usage_no_usage_id",
            "terminate_no_timestamp",
            "answered_extra_keys",
            "call_id_255_chars",
        ] {
            assert!(
                st.variants.contains_key(v),
                "variant {v} missing: {:?}",
                st.variants
            );
        }
        assert!(st.missing_end > 0 && st.late_calls > 0 && st.duplicate_starts > 0);
        assert!(st.exact_duplicates > 0 && st.inferred_start > 0);
        assert_eq!(
            st.messages,
            st.distinct_events + st.exact_duplicates + st.poison
        );
        assert_eq!(
            s.calls.iter().map(|c| c.distinct_events).sum::<usize>(),
            st.distinct_events
        );
        // Poison never decodes; every other message decodes to its call.
        let limits = LIMITS;
        for m in s.main.iter().chain(&s.late) {
            let decoded = event::decode(&m.body, Utc::now(), limits);
            match m.kind {
                MessageKind::Poison(class) => {
                    assert_eq!(decoded.unwrap_err().as_code(), class.reason())
                }
                MessageKind::Event { call } | MessageKind::Duplicate { call } => {
                    assert_eq!(decoded.unwrap().call_id, s.calls[call as usize].call_id)
                }
            }
        }
        // Only calls with a timestamp-less call.started depend on the receive time.
        let dependent = s
            .calls
            .iter()
            .filter(|c| c.receive_dependent.is_some())
            .count();
        assert!(dependent > 0 && dependent <= st.inferred_start);
    }

    #[test]
    fn no_reorder_window_keeps_each_call_in_order() {
        let o = StormOptions {
            calls: 50,
            reorder_window: 0,
            duplicates: 0.0,
            late: 0.0,
            ..StormOptions::default()
        };
        let s = generate(&o, LIMITS);
        let mut last = 0;
        for m in &s.main {
            let MessageKind::Event { call } = m.kind else {
                panic!("only events")
            };
            assert!(call >= last, "calls one after another");
            last = call;
        }
    }

    #[test]
    fn duration_distributions_parse_and_stay_in_range() {
        let mut rng = StdRng::seed_from_u64(1);
        let d: DurationDist = "uniform:10s..1m".parse().unwrap();
        for _ in 0..100 {
            let x = d.sample(&mut rng);
            assert!(x >= Duration::from_secs(10) && x <= Duration::from_secs(60));
        }
        assert_eq!(
            "42s".parse::<DurationDist>().unwrap(),
            DurationDist::Fixed(Duration::from_secs(42))
        );
        let e: DurationDist = "exp:90s".parse().unwrap();
        let mean = (0..20_000)
            .map(|_| e.sample(&mut rng).as_secs_f64())
            .sum::<f64>()
            / 20_000.0;
        assert!((80.0..100.0).contains(&mean), "mean {mean}");
        assert!("uniform:1m..10s".parse::<DurationDist>().is_err());
        assert!("normal:3s".parse::<DurationDist>().is_err());
        assert_eq!(e.to_string(), "exp:1m 30s");
    }
}
