//! The storm generator: pure and seeded. The same options (seed included) give byte-identical
//! messages in the same order, and the ground truth of every call: the `CallState` folded from
//! the call's distinct event bodies, decoded exactly as the service decodes them.
//!
//! What a storm holds:
//! - calls, each as the platform's producers would send it (every producer variant of
//!   `EVENTS.md`, mixed by `--variants`), with realistic timestamps: call `i` starts at
//!   `base_time + i / rate` (10 calls/s of timeline when `--rate 0`), rings, is answered or not,
//!   talks for a duration drawn from `--duration`, ends with a reason;
//! - each event in one of the two wire formats: as its protobuf twin (today's producers) for
//!   `--protobuf` of the events that have one, else as JSON (older producers), so that one call
//!   mixes both. The format is drawn from a random stream of its own: the calls, their facts
//!   and their ground truth are the same whatever the mix;
//! - the main phase, in publish order: each call's events placed at random points among the
//!   publishes of the next `--reorder-window` calls (so they come out of order and interleaved
//!   with the neighbours), exact duplicates (redeliveries) a little later, poison messages
//!   (one of each bad-input class in turn) and platform events that are not about a call
//!   anywhere;
//! - the late phase: recordings and identifications held back until after the calls' records
//!   were written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod call;
mod platform;
mod poison;
mod producer;

use cdr_core::event::{self, Format, Limits};
use cdr_core::merge::{CallEvent, CallRecord, CallState, PriceBook, UsageLine};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::StormOptions;
use crate::protobuf::{self, JSON_CONTENT_TYPE};
use call::{CallGen, Ev};
use platform::platform_event;
use poison::poison;

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
/// cannot be produced on demand and is left out), in either wire format.
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
    /// A protobuf event cut short or corrupted.
    BadProtobuf,
    /// A protobuf call event without a call id.
    ProtobufMissingCallId,
}

impl PoisonClass {
    pub const ALL: [PoisonClass; 13] = [
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
        PoisonClass::BadProtobuf,
        PoisonClass::ProtobufMissingCallId,
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
            PoisonClass::BadProtobuf => "bad_protobuf",
            PoisonClass::ProtobufMissingCallId => "missing_call_id",
        }
    }

    /// The wire format its producer meant.
    pub fn format(self) -> Format {
        match self {
            PoisonClass::BadProtobuf | PoisonClass::ProtobufMissingCallId => Format::Protobuf,
            _ => Format::Json,
        }
    }
}

/// Each kind of platform event that is not about a call (no call id, not a call event type):
/// the service acknowledges and counts it, never dead-letters or logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlatformEvent {
    /// `user.created`, a protobuf `GenericEvent`.
    UserCreated,
    /// `dialplan.updated`, JSON without `callId`.
    DialplanUpdated,
    /// `cognitive.map.updated`, a protobuf message of its own without a call id.
    CognitiveMapUpdated,
}

impl PlatformEvent {
    pub const ALL: [PlatformEvent; 3] = [
        PlatformEvent::UserCreated,
        PlatformEvent::DialplanUpdated,
        PlatformEvent::CognitiveMapUpdated,
    ];

    pub fn event_type(self) -> &'static str {
        match self {
            PlatformEvent::UserCreated => "user.created",
            PlatformEvent::DialplanUpdated => "dialplan.updated",
            PlatformEvent::CognitiveMapUpdated => "cognitive.map.updated",
        }
    }

    pub fn format(self) -> Format {
        match self {
            PlatformEvent::DialplanUpdated => Format::Json,
            PlatformEvent::UserCreated | PlatformEvent::CognitiveMapUpdated => Format::Protobuf,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// The first copy of a call's event (index into `Storm::calls`).
    Event { call: u32 },
    /// An exact copy of an earlier message (a redelivery): the log drops it.
    Duplicate { call: u32 },
    /// Dead-lettered.
    Poison(PoisonClass),
    /// Acknowledged and counted, neither dead-lettered nor logged.
    Platform(PlatformEvent),
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The event type, or `""` as an older producer sent it.
    pub routing_key: String,
    pub body: Arc<[u8]>,
    /// The `content_type` property, as its producer sets it: `application/json` or
    /// `application/protobuf`, or none (some JSON producers, the signaling and media services).
    pub content_type: Option<&'static str>,
    /// Position in the storm in calls: with `--rate R` it is published `at / R` seconds after
    /// the start.
    pub at: f64,
    pub kind: MessageKind,
}

impl Message {
    /// The first copy of a JSON event of call `call` as the producers publish it: routed by
    /// its event type, with a content type, placed at the call's position.
    pub fn event(call: usize, event: &Value) -> Message {
        Message {
            routing_key: event["eventType"].as_str().unwrap_or_default().to_owned(),
            body: event.to_string().into_bytes().into(),
            content_type: Some(JSON_CONTENT_TYPE),
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
        self.record_and_usage(prices, receive_time).0
    }

    /// The expected record and usage lines, as `record`.
    pub fn record_and_usage(
        &self,
        prices: &PriceBook,
        receive_time: DateTime<Utc>,
    ) -> (CallRecord, Vec<UsageLine>) {
        match &self.receive_dependent {
            None => self.state.record_and_usage(&self.call_id, prices),
            Some(bodies) => fold_bodies(&self.call_id, bodies, receive_time)
                .record_and_usage(&self.call_id, prices),
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
    /// Every message published (main + late phase, poison and platform events included).
    pub messages: usize,
    /// Every message published, by the wire format its producer meant (`json`, `protobuf`).
    pub messages_by_format: BTreeMap<&'static str, usize>,
    pub main_phase: usize,
    pub late_phase: usize,
    pub distinct_events: usize,
    pub exact_duplicates: usize,
    pub poison: usize,
    pub poison_by_reason: BTreeMap<&'static str, usize>,
    pub poison_by_class: BTreeMap<PoisonClass, usize>,
    /// Platform events that are not about a call.
    pub platform_events: usize,
    pub platform_by_type: BTreeMap<&'static str, usize>,
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
    /// The ids platform events carry as their trace id: were one read as a call id, it would
    /// be logged under it.
    pub platform_ids: Vec<String>,
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
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
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
        event::format_timestamp(o.base_time),
        o.protobuf,
        o.platform_events,
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
    let prefix = o
        .call_id_prefix
        .clone()
        .unwrap_or_else(|| default_prefix(o));
    let mut b = Builder {
        o,
        rng: StdRng::seed_from_u64(o.seed),
        format_rng: StdRng::seed_from_u64(o.seed ^ FORMAT_STREAM),
        stats: StormStats {
            calls: o.calls,
            ..StormStats::default()
        },
        main: Vec::new(),
        late: Vec::new(),
    };
    let calls = (0..o.calls).map(|i| b.call(i, &prefix)).collect();
    let events = b.main.len();
    let poison_call_ids = b.poison(&prefix, limits, events);
    let platform_ids = b.platform(&prefix, events);
    let Builder {
        mut rng,
        mut stats,
        mut main,
        mut late,
        ..
    } = b;
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
        platform_ids,
        stats,
    }
}

/// Sets the format stream's seed apart from the main one's (the golden ratio's bits).
const FORMAT_STREAM: u64 = 0x9e37_79b9_7f4a_7c15;

/// A storm being generated: the random generator every value is drawn from, in a fixed order,
/// the one each event's wire format is drawn from, and the messages of both phases so far.
struct Builder<'a> {
    o: &'a StormOptions,
    rng: StdRng,
    /// Only `--protobuf` draws from it: another mix leaves every other draw as it was.
    format_rng: StdRng,
    stats: StormStats,
    main: Vec<Message>,
    late: Vec<Message>,
}

impl Builder<'_> {
    /// Generates call `i`, places its messages (and their redeliveries) in the phases, and
    /// returns its ground truth.
    fn call(&mut self, i: usize, prefix: &str) -> ExpectedCall {
        let o = self.o;
        let planned = CallGen {
            rng: &mut self.rng,
            o,
            stats: &mut self.stats,
        }
        .call(i, prefix);
        let window = o.reorder_window as f64;
        let call = u32::try_from(i).unwrap_or(u32::MAX);
        // How each JSON event went out: the same event twice (the typed producer's duplicate
        // INVITE) is the same message twice, in one format.
        let mut sent: HashMap<Vec<u8>, Wire> = HashMap::new();
        let mut seen: HashSet<Arc<[u8]>> = HashSet::new();
        let mut distinct: Vec<Arc<[u8]>> = Vec::new();
        for ev in planned.events {
            let json = serde_json::to_vec(&ev.value).expect("a JSON value serializes");
            let wire = match sent.get(&json) {
                Some(wire) => wire.clone(),
                None => {
                    let wire = self.wire(&ev, json.clone());
                    sent.insert(json, wire.clone());
                    wire
                }
            };
            let event_type = ev.value["eventType"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            *self
                .stats
                .events_by_type
                .entry(event_type.clone())
                .or_default() += 1;
            // The same body twice is an exact duplicate: the log keeps it once.
            let first = seen.insert(wire.body.clone());
            if first {
                distinct.push(wire.body.clone());
            } else {
                self.stats.exact_duplicates += 1;
            }
            let rng = &mut self.rng;
            let msg = Message {
                routing_key: if ev.empty_routing_key {
                    String::new()
                } else {
                    event_type
                },
                body: wire.body,
                content_type: wire.content_type,
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
            let phase = if ev.late {
                &mut self.late
            } else {
                &mut self.main
            };
            phase.push(msg);
            let mut published = 1;
            if let Some(copy) = copy {
                self.stats.exact_duplicates += 1;
                phase.push(copy);
                published += 1;
            }
            *self
                .stats
                .messages_by_format
                .entry(wire.format.as_str())
                .or_default() += published;
        }
        self.stats.distinct_events += distinct.len();
        expected_call(o, planned.call_id, planned.ended, distinct)
    }

    /// The event as it goes out: as its protobuf twin for `--protobuf` of the events that have
    /// one, drawn from the format stream, else as the JSON event.
    fn wire(&mut self, ev: &Ev, json: Vec<u8>) -> Wire {
        let twin = (!ev.json_only && self.format_rng.random_bool(self.o.protobuf))
            .then(|| protobuf::encode(&ev.value))
            .flatten();
        match twin {
            Some(twin) => Wire {
                body: twin.body.into(),
                content_type: twin.content_type,
                format: Format::Protobuf,
            },
            None => Wire {
                body: json.into(),
                content_type: ev.content_type.then_some(JSON_CONTENT_TYPE),
                format: Format::Json,
            },
        }
    }

    /// Adds `--poison` of the main phase's `events` call events, every class in turn, at
    /// random places; returns the call ids they name.
    fn poison(&mut self, prefix: &str, limits: Limits, events: usize) -> Vec<String> {
        let o = self.o;
        let rng = &mut self.rng;
        let poison_count = (o.poison * events as f64).round() as usize;
        let mut poison_call_ids = Vec::new();
        // One oversize body, shared: a large storm may carry hundreds of them.
        let mut oversize: Option<Arc<[u8]>> = None;
        for n in 0..poison_count {
            let class = PoisonClass::ALL[n % PoisonClass::ALL.len()];
            let call_id = format!("{prefix}-poison-{n:06}@198.51.100.7");
            let (routing_key, body) = match (&oversize, class) {
                (Some(body), PoisonClass::Oversize) => ("call.ended".to_owned(), body.clone()),
                _ => {
                    let (routing_key, body, names_call) = poison(class, &call_id, limits, rng);
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
            let st = &mut self.stats;
            *st.poison_by_reason.entry(class.reason()).or_default() += 1;
            *st.poison_by_class.entry(class).or_default() += 1;
            *st.messages_by_format
                .entry(class.format().as_str())
                .or_default() += 1;
            self.main.push(Message {
                routing_key,
                body,
                content_type: rng.random_bool(0.5).then_some(content_type(class.format())),
                at: rng.random_range(0.0..(o.calls.max(1) as f64)),
                kind: MessageKind::Poison(class),
            });
        }
        self.stats.poison = poison_count;
        poison_call_ids
    }

    /// Adds `--platform-events` of the main phase's `events` call events: platform events
    /// that are not about a call, every kind in turn, at random places. Returns the ids they
    /// carry as their trace id.
    fn platform(&mut self, prefix: &str, events: usize) -> Vec<String> {
        let o = self.o;
        let rng = &mut self.rng;
        let count = (o.platform_events * events as f64).round() as usize;
        let mut ids = Vec::new();
        for n in 0..count {
            let kind = PlatformEvent::ALL[n % PlatformEvent::ALL.len()];
            let id = format!("{prefix}-platform-{n:06}@198.51.100.7");
            let (body, carries_id) = platform_event(kind, &id, o.base_time, rng);
            if carries_id {
                ids.push(id);
            }
            let st = &mut self.stats;
            *st.platform_by_type.entry(kind.event_type()).or_default() += 1;
            *st.messages_by_format
                .entry(kind.format().as_str())
                .or_default() += 1;
            self.main.push(Message {
                routing_key: kind.event_type().to_owned(),
                body: body.into(),
                content_type: rng.random_bool(0.5).then_some(content_type(kind.format())),
                at: rng.random_range(0.0..(o.calls.max(1) as f64)),
                kind: MessageKind::Platform(kind),
            });
        }
        self.stats.platform_events = count;
        ids
    }
}

/// An event as it goes out.
#[derive(Clone)]
struct Wire {
    body: Arc<[u8]>,
    content_type: Option<&'static str>,
    format: Format,
}

/// The content type a producer of `format` sets, where it sets one.
fn content_type(format: Format) -> &'static str {
    match format {
        Format::Json => JSON_CONTENT_TYPE,
        Format::Protobuf => protobuf::PROTOBUF_CONTENT_TYPE,
    }
}

/// A call's ground truth from its distinct bodies.
fn expected_call(
    o: &StormOptions,
    call_id: String,
    ended: bool,
    distinct: Vec<Arc<[u8]>>,
) -> ExpectedCall {
    let placeholder = placeholder_receive(o.base_time);
    let state = fold_bodies(&call_id, &distinct, placeholder);
    // A record that changes with the receive time depends on it (a timestamp-less
    // call.started); every other timestamp-less variant is placed where it cannot matter,
    // and this proves it for each call.
    let early = fold_bodies(
        &call_id,
        &distinct,
        o.base_time - chrono::Duration::days(365),
    )
    .record(&call_id, &PriceBook::default());
    let receive_dependent =
        (early != state.record(&call_id, &PriceBook::default())).then(|| distinct.clone());
    ExpectedCall {
        call_id,
        distinct_events: distinct.len(),
        ended,
        state,
        receive_dependent,
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

#[cfg(test)]
mod tests;
