//! The two wire formats mean the same thing to the fold (EVENTS.md, "The current wire
//! format"; DESIGN.md guarantee 2): a call whose events come as JSON (as older producers sent
//! them) and the same call whose events come as protobuf (as today's producers send them:
//! their own messages, and a `GenericEvent` for `call.answered` and `call.terminate.request`),
//! or any per-event mix of the two, must give the same record.
//!
//! Each generated event is a producer-neutral description (its content, placeholders
//! included: the tenant `system`, blank strings, contact id 0, the nil UUID, port 0), written
//! out in both formats: JSON in one of the spellings older producers used (key aliases,
//! snake_case dialplans, the timestamp styles, `null` for absent), protobuf with the
//! service's prost structs. Both are decoded by `event::decode`, each distinct message once
//! (as the log keeps it), and folded with `merge::CallState`.

use std::collections::HashSet;

use cdr_core::proto;
use cdr_service::event::{Envelope, Format, Limits, decode};
use cdr_service::merge::{CallEvent, CallRecord, CallState, PriceBook, TELEPHONY_MINUTE};
use chrono::{DateTime, Duration, SecondsFormat, Timelike, Utc};
use proptest::prelude::*;
use proptest::sample::select;
use prost::Message;
use serde_json::{Map, Value, json};

const LIMITS: Limits = Limits {
    max_body_bytes: 16 * 1024,
    max_json_depth: 32,
};

const CALL_ID: &str = "a84b4c76e66710@198.51.100.7";
const NIL: &str = "00000000-0000-0000-0000-000000000000";
const USER_A: &str = "3f2c9a4e-8b1d-4e6f-9a2b-7c5d1e0f4a36";
const USER_B: &str = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";

fn t0() -> DateTime<Utc> {
    "2025-09-24T10:00:00Z".parse().unwrap()
}

fn prices() -> PriceBook {
    let jan: DateTime<Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    PriceBook::new([(TELEPHONY_MINUTE.to_owned(), jan, "0.0125".parse().unwrap())])
}

// ---------------------------------------------------------------------------------------------
// A producer-neutral call event
// ---------------------------------------------------------------------------------------------

/// A string field as producers fill it: absent (`None`), a blank placeholder, or a value.
type Text = Option<String>;

#[derive(Debug, Clone)]
struct User {
    id: Text,
    tenant: Text,
}

#[derive(Debug, Clone)]
struct Contact {
    id: Option<i32>,
    user_id: Text,
}

#[derive(Debug, Clone)]
struct Dialplan {
    tenant: Text,
    user: Option<User>,
    contact: Option<Contact>,
    /// The inbound route, by its tenant.
    route: Option<Text>,
}

#[derive(Debug, Clone)]
struct Media {
    port: Option<u32>,
    addr: Text,
}

#[derive(Debug, Clone)]
enum Content {
    Started {
        from: Text,
        to: Text,
        media: Option<Media>,
        dialplan: Option<Dialplan>,
    },
    /// A `GenericEvent` in protobuf; `payload_call_id`: its payload names the call (else the
    /// trace id, which is then the call id, does).
    Answered {
        payload_call_id: bool,
    },
    Identified {
        /// `user.identified.for_call` or one of its aliases.
        event_type: &'static str,
        user_id: Text,
        contact_id: Option<i32>,
        tenant: Text,
    },
    Recording {
        uri: Text,
        public_url: Text,
    },
    Ended {
        reason: Text,
    },
    Terminate {
        reason: Text,
        payload_call_id: bool,
    },
}

impl Content {
    fn event_type(&self) -> &'static str {
        match self {
            Content::Started { .. } => "call.started",
            Content::Answered { .. } => "call.answered",
            Content::Identified { event_type, .. } => event_type,
            Content::Recording { .. } => "call.recording.available",
            Content::Ended { .. } => "call.ended",
            Content::Terminate { .. } => "call.terminate.request",
        }
    }
}

/// How the JSON producer spelled it: each bit picks one of two spellings.
#[derive(Debug, Clone, Copy)]
struct Spelling(u16);

impl Spelling {
    fn pick(self, bit: u8) -> bool {
        self.0 & (1 << bit) != 0
    }
}

#[derive(Debug, Clone)]
struct Event {
    content: Content,
    trace: Text,
    /// None: the event carries no timestamp.
    at: Option<DateTime<Utc>>,
    /// How an absent timestamp is left out (JSON: no key, `null` or `""`; protobuf: no field
    /// or an empty `Timestamp`), and which RFC 3339 style a present one is written in.
    ts_style: u8,
    spelling: Spelling,
}

// ---------------------------------------------------------------------------------------------
// JSON, as older producers sent it
// ---------------------------------------------------------------------------------------------

/// Go producers: `Z`, the fraction's trailing zeros trimmed.
fn go_style(t: DateTime<Utc>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let fraction = format!("{:09}", t.nanosecond());
    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        s.push('.');
        s.push_str(fraction);
    }
    s.push('Z');
    s
}

fn json_timestamp(t: DateTime<Utc>, style: u8) -> String {
    match style % 3 {
        // Rust producers: `+00:00`, 0/3/6/9 digits.
        0 => t.to_rfc3339_opts(SecondsFormat::AutoSi, false),
        1 => t.to_rfc3339_opts(SecondsFormat::Nanos, false),
        _ => go_style(t),
    }
}

/// Puts an optional value: absent as no key, or as `null` when `null_for_absent`.
fn put(o: &mut Map<String, Value>, key: &str, v: Option<Value>, null_for_absent: bool) {
    match v {
        Some(v) => {
            o.insert(key.to_owned(), v);
        }
        None if null_for_absent => {
            o.insert(key.to_owned(), Value::Null);
        }
        None => {}
    }
}

fn text(v: &Text) -> Option<Value> {
    v.as_ref().map(|s| Value::from(s.as_str()))
}

fn json_user(u: &User, snake: bool) -> Value {
    let mut o = Map::new();
    put(&mut o, "id", text(&u.id), false);
    put(
        &mut o,
        if snake { "tenant_id" } else { "tenantId" },
        text(&u.tenant),
        false,
    );
    Value::Object(o)
}

fn json_contact(c: &Contact, snake: bool) -> Value {
    let mut o = Map::new();
    put(&mut o, "id", c.id.map(Value::from), false);
    put(
        &mut o,
        if snake { "user_id" } else { "userId" },
        text(&c.user_id),
        false,
    );
    Value::Object(o)
}

fn json_dialplan(d: &Dialplan, sp: Spelling) -> Value {
    let snake = sp.pick(4);
    let nulls = sp.pick(5);
    let k = |camel: &'static str, snake_key: &'static str| if snake { snake_key } else { camel };
    let mut o = Map::new();
    o.insert(k("dialplanId", "dialplan_id").into(), json!("DP_DEMO"));
    put(&mut o, k("tenantId", "tenant_id"), text(&d.tenant), false);
    put(
        &mut o,
        k("matchedUser", "matched_user"),
        d.user.as_ref().map(|u| json_user(u, snake)),
        nulls,
    );
    put(
        &mut o,
        k("matchedContact", "matched_contact"),
        d.contact.as_ref().map(|c| json_contact(c, snake)),
        nulls,
    );
    let route = d.route.as_ref().map(|tenant| {
        let mut r = Map::new();
        r.insert(
            k("phoneNumber", "phone_number").into(),
            json!("902124440000"),
        );
        put(&mut r, k("tenantId", "tenant_id"), text(tenant), false);
        Value::Object(r)
    });
    put(&mut o, k("inboundRoute", "inbound_route"), route, nulls);
    Value::Object(o)
}

fn to_json(e: &Event) -> Vec<u8> {
    let sp = e.spelling;
    let mut o = Map::new();
    o.insert("eventType".into(), json!(e.content.event_type()));
    put(&mut o, "traceId", text(&e.trace), sp.pick(0));
    o.insert("callId".into(), json!(CALL_ID));
    match e.at {
        Some(t) => {
            o.insert("timestamp".into(), json!(json_timestamp(t, e.ts_style)));
        }
        None => match e.ts_style % 3 {
            0 => {}
            1 => {
                o.insert("timestamp".into(), Value::Null);
            }
            _ => {
                o.insert("timestamp".into(), json!(""));
            }
        },
    }
    match &e.content {
        Content::Started {
            from,
            to,
            media,
            dialplan,
        } => {
            put(
                &mut o,
                if sp.pick(1) { "fromUri" } else { "from" },
                text(from),
                false,
            );
            put(
                &mut o,
                if sp.pick(1) { "toUri" } else { "to" },
                text(to),
                false,
            );
            let media = media.as_ref().map(|m| {
                let snake = sp.pick(3);
                let mut mo = Map::new();
                put(
                    &mut mo,
                    if snake {
                        "server_rtp_port"
                    } else {
                        "serverRtpPort"
                    },
                    m.port.map(Value::from),
                    false,
                );
                put(
                    &mut mo,
                    if snake {
                        "caller_rtp_addr"
                    } else {
                        "callerRtpAddr"
                    },
                    text(&m.addr),
                    sp.pick(5),
                );
                Value::Object(mo)
            });
            put(
                &mut o,
                if sp.pick(2) { "mediaInfo" } else { "media" },
                media,
                false,
            );
            put(
                &mut o,
                if sp.pick(6) {
                    "dialplanResolution"
                } else {
                    "dialplan"
                },
                dialplan.as_ref().map(|d| json_dialplan(d, sp)),
                sp.pick(5),
            );
        }
        Content::Answered { .. } => {}
        Content::Identified {
            user_id,
            contact_id,
            tenant,
            ..
        } => {
            let snake = sp.pick(4);
            let nulls = sp.pick(5);
            put(
                &mut o,
                if snake { "user_id" } else { "userId" },
                text(user_id),
                nulls,
            );
            put(
                &mut o,
                if snake { "contact_id" } else { "contactId" },
                contact_id.map(Value::from),
                nulls,
            );
            put(
                &mut o,
                if snake { "tenant_id" } else { "tenantId" },
                text(tenant),
                nulls,
            );
        }
        Content::Recording { uri, public_url } => {
            put(&mut o, "recordingUri", text(uri), sp.pick(5));
            put(&mut o, "publicUrl", text(public_url), false);
        }
        Content::Ended { reason } => put(&mut o, "reason", text(reason), sp.pick(5)),
        Content::Terminate { reason, .. } => put(&mut o, "reason", text(reason), false),
    }
    Value::Object(o).to_string().into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Protobuf, as today's producers send it
// ---------------------------------------------------------------------------------------------

fn or_blank(v: &Text) -> String {
    v.clone().unwrap_or_default()
}

fn proto_timestamp(e: &Event) -> Option<proto::Timestamp> {
    match e.at {
        Some(t) => Some(proto::Timestamp::from(t)),
        None if e.ts_style % 2 == 1 => Some(proto::Timestamp::default()),
        None => None,
    }
}

fn proto_user(u: &User) -> proto::User {
    proto::User {
        id: or_blank(&u.id),
        tenant_id: or_blank(&u.tenant),
        ..Default::default()
    }
}

fn proto_contact(c: &Contact) -> proto::Contact {
    proto::Contact {
        id: c.id.unwrap_or(0),
        user_id: or_blank(&c.user_id),
        ..Default::default()
    }
}

/// A `GenericEvent`'s payload: the call id unless the trace id stands for it, and more keys.
fn payload(call_id: bool, more: &[(&str, &Text)]) -> String {
    let mut o = Map::new();
    if call_id {
        o.insert("callId".into(), json!(CALL_ID));
    }
    for (k, v) in more {
        put(&mut o, k, text(v), false);
    }
    if o.is_empty() {
        String::new()
    } else {
        Value::Object(o).to_string()
    }
}

/// Whether a `GenericEvent` can leave the call id to its trace id.
fn trace_is_call_id(e: &Event) -> bool {
    e.trace.as_deref() == Some(CALL_ID)
}

fn to_protobuf(e: &Event) -> Vec<u8> {
    let event_type = e.content.event_type().to_owned();
    let trace_id = or_blank(&e.trace);
    let call_id = CALL_ID.to_owned();
    let timestamp = proto_timestamp(e);
    match &e.content {
        Content::Started {
            from,
            to,
            media,
            dialplan,
        } => proto::CallStartedEvent {
            event_type,
            trace_id,
            call_id,
            from_uri: or_blank(from),
            to_uri: or_blank(to),
            timestamp,
            dialplan_resolution: dialplan.as_ref().map(|d| proto::ResolveDialplanResponse {
                dialplan_id: "DP_DEMO".into(),
                tenant_id: or_blank(&d.tenant),
                action: None,
                matched_user: d.user.as_ref().map(proto_user),
                matched_contact: d.contact.as_ref().map(proto_contact),
                inbound_route: d.route.as_ref().map(|tenant| proto::InboundRoute {
                    phone_number: "902124440000".into(),
                    tenant_id: or_blank(tenant),
                    ..Default::default()
                }),
            }),
            media_info: media.as_ref().map(|m| proto::MediaInfo {
                caller_rtp_addr: or_blank(&m.addr),
                server_rtp_port: m.port.unwrap_or(0),
            }),
        }
        .encode_to_vec(),
        Content::Answered { payload_call_id } => proto::GenericEvent {
            event_type,
            trace_id,
            timestamp,
            tenant_id: "system".into(),
            payload_json: payload(*payload_call_id || !trace_is_call_id(e), &[]),
        }
        .encode_to_vec(),
        Content::Identified {
            event_type: _,
            user_id,
            contact_id,
            tenant,
        } => {
            // The agent service sends the user and the contact as messages; the user's id is
            // in both.
            let user = (user_id.is_some() || tenant.is_some()).then(|| proto::User {
                id: or_blank(user_id),
                tenant_id: or_blank(tenant),
                ..Default::default()
            });
            let contact = contact_id.map(|id| proto::Contact {
                id,
                user_id: or_blank(user_id),
                ..Default::default()
            });
            proto::UserIdentifiedForCallEvent {
                event_type,
                trace_id,
                call_id,
                timestamp,
                user,
                contact,
            }
            .encode_to_vec()
        }
        Content::Recording { uri, public_url } => proto::CallRecordingAvailableEvent {
            event_type,
            trace_id,
            call_id,
            timestamp,
            recording_uri: or_blank(uri),
            public_url: or_blank(public_url),
        }
        .encode_to_vec(),
        Content::Ended { reason } => proto::CallEndedEvent {
            event_type,
            trace_id,
            call_id,
            timestamp,
            reason: or_blank(reason),
        }
        .encode_to_vec(),
        Content::Terminate {
            reason,
            payload_call_id,
        } => proto::GenericEvent {
            event_type,
            trace_id,
            timestamp,
            tenant_id: String::new(),
            payload_json: payload(
                *payload_call_id || !trace_is_call_id(e),
                &[("reason", reason)],
            ),
        }
        .encode_to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Decode and fold
// ---------------------------------------------------------------------------------------------

fn decoded(body: &[u8], e: &Event, format: Format, received: DateTime<Utc>) -> Envelope {
    let env = decode(body, received, LIMITS).unwrap_or_else(|r| {
        panic!(
            "{format:?} twin of {e:?} rejected ({}): {r}\nbody: {}",
            r.as_code(),
            String::from_utf8_lossy(body)
        )
    });
    assert_eq!(env.format, format);
    assert_eq!(env.call_id, CALL_ID);
    env
}

fn body(e: &Event, protobuf: bool) -> (Vec<u8>, Format) {
    if protobuf {
        (to_protobuf(e), Format::Protobuf)
    } else {
        (to_json(e), Format::Json)
    }
}

/// The record of a call's deliveries (each an event, whether it came as protobuf, and when it
/// was received), each distinct message folded once with the receive time of its first copy,
/// as the log keeps it.
fn record(deliveries: &[(&Event, bool, DateTime<Utc>)]) -> CallRecord {
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    for &(e, protobuf, received) in deliveries {
        let (body, format) = body(e, protobuf);
        let env = decoded(&body, e, format, received);
        if seen.insert(env.body_hash) {
            events.push(CallEvent::from(env));
        }
    }
    CallState::fold(&events).record(CALL_ID, &prices())
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn text_of(pool: &'static [&'static str]) -> impl Strategy<Value = Text> + Clone {
    prop_oneof![
        1 => Just(None),
        3 => select(pool).prop_map(|s| Some(s.to_owned())),
    ]
}

/// Tenants: real ones, the placeholder `system`, a blank.
fn tenant() -> impl Strategy<Value = Text> + Clone {
    text_of(&["tenant-a", "tenant-b", "system", ""])
}

/// User ids: real ones, the nil UUID, a blank.
fn user_id() -> impl Strategy<Value = Text> + Clone {
    text_of(&[USER_A, USER_B, NIL, ""])
}

/// Contact ids, 0 (proto3's "not set") among them.
fn contact_id() -> impl Strategy<Value = Option<i32>> + Clone {
    prop::option::of(select(vec![0, 7, 42, -3]))
}

fn user() -> impl Strategy<Value = User> {
    (user_id(), tenant()).prop_map(|(id, tenant)| User { id, tenant })
}

fn contact() -> impl Strategy<Value = Contact> {
    (contact_id(), user_id()).prop_map(|(id, user_id)| Contact { id, user_id })
}

fn dialplan() -> impl Strategy<Value = Dialplan> {
    (
        tenant(),
        prop::option::of(user()),
        prop::option::of(contact()),
        prop::option::of(tenant()),
    )
        .prop_map(|(tenant, user, contact, route)| Dialplan {
            tenant,
            user,
            contact,
            route,
        })
}

fn started() -> impl Strategy<Value = Content> {
    (
        text_of(&[
            "\"<sip:905551234567@203.0.113.5>;tag=abc\"",
            "\"Alice\" <sip:905559876543@203.0.113.9;transport=udp>;tag=q1",
            "sip:905321112233@203.0.113.9",
            "<tel:+905550001122>",
            "",
        ]),
        text_of(&[
            "<sip:902124440000@198.51.100.7>",
            "sip:902124449999@10.0.0.2",
            "",
        ]),
        prop::option::of(
            (
                prop::option::of(select(vec![0u32, 10044, 70000])),
                text_of(&["203.0.113.5:40000", ""]),
            )
                .prop_map(|(port, addr)| Media { port, addr }),
        ),
        prop::option::of(dialplan()),
    )
        .prop_map(|(from, to, media, dialplan)| Content::Started {
            from,
            to,
            media,
            dialplan,
        })
}

fn identified() -> impl Strategy<Value = Content> {
    (
        select(vec![
            "user.identified.for_call",
            "user.created.for_call",
            "user.identified.for.call",
        ]),
        user_id(),
        contact_id(),
        tenant(),
    )
        .prop_map(
            |(event_type, user_id, contact_id, tenant)| Content::Identified {
                event_type,
                user_id,
                contact_id,
                tenant,
            },
        )
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        3 => started(),
        2 => any::<bool>().prop_map(|payload_call_id| Content::Answered { payload_call_id }),
        3 => identified(),
        2 => (
            text_of(&[
                "s3://recordings/tenant-a/call.wav",
                "s3://recordings/tenant-a/call-reprocessed.wav",
                "",
            ]),
            text_of(&["https://media.example.com/r/call.wav"]),
        )
            .prop_map(|(uri, public_url)| Content::Recording { uri, public_url }),
        2 => text_of(&[
            "normal_clearing",
            "normal_clearing_by_user",
            "terminated_by_request",
            "system_terminated",
            "busy",
            "user_busy",
            "failure",
            "network_failure",
            "",
        ])
        .prop_map(|reason| Content::Ended { reason }),
        1 => (text_of(&["PIPELINE_ERROR"]), any::<bool>())
            .prop_map(|(reason, payload_call_id)| Content::Terminate { reason, payload_call_id }),
    ]
}

fn trace() -> impl Strategy<Value = Text> {
    text_of(&[CALL_ID, "trace-Ab12Cd34Ef56", "trace-Zz99Yy88Xx77", ""])
}

/// An event before its timestamp is fixed: content, trace, whether it has a timestamp, a time
/// (ms after t0), sub-millisecond nanoseconds, styles.
type Draft = (Content, Text, bool, u32, u32, u8, u16);

fn draft() -> impl Strategy<Value = Draft> {
    (
        content(),
        trace(),
        prop::bool::weighted(0.75),
        0u32..180_000,
        prop_oneof![2 => Just(0u32), 1 => 0u32..1_000_000],
        any::<u8>(),
        any::<u16>(),
    )
}

/// How the times of a call are laid out.
#[derive(Clone, Copy, Debug)]
enum Clock {
    /// Every timestamp and receive time distinct (nanosecond precision): the low six bits of
    /// the nanoseconds after t0 are an event's index doubled (its timestamp), or a delivery's
    /// index doubled plus one (its receive time); a millisecond is a multiple of 64 ns.
    Distinct,
    /// Whole seconds on a short span: events of a call often share a timestamp, and
    /// deliveries a receive time.
    Coarse,
}

impl Clock {
    /// An event's timestamp: `ms` and `sub_ms` nanoseconds after t0, in the event's own slot.
    fn timestamp(self, i: usize, ms: u32, sub_ms: u32) -> DateTime<Utc> {
        match self {
            Clock::Distinct => {
                let i = i64::try_from(i).unwrap();
                assert!(2 * i < 64);
                t0() + Duration::milliseconds(i64::from(ms))
                    + Duration::nanoseconds(i64::from(sub_ms) / 64 * 64 + 2 * i)
            }
            Clock::Coarse => t0() + Duration::seconds(i64::from(ms / 1000 % 8)),
        }
    }

    /// The receive times of `n` deliveries in delivery order, `gaps` (ms) apart.
    fn receive_times(self, gaps: &[u32]) -> Vec<DateTime<Utc>> {
        let mut at = 0i64;
        gaps.iter()
            .enumerate()
            .map(|(k, gap)| match self {
                Clock::Distinct => {
                    at += i64::from(*gap);
                    let k = i64::try_from(k).unwrap();
                    assert!(2 * k + 1 < 64);
                    t0() + Duration::milliseconds(at) + Duration::nanoseconds(2 * k + 1)
                }
                Clock::Coarse => {
                    at += i64::from(gap % 3);
                    t0() + Duration::seconds(at)
                }
            })
            .collect()
    }
}

fn events(drafts: Vec<Draft>, clock: Clock) -> Vec<Event> {
    drafts
        .into_iter()
        .enumerate()
        .map(
            |(i, (content, trace, has_ts, ms, nanos, ts_style, spelling))| {
                let at = clock.timestamp(i, ms, nanos);
                // A `GenericEvent` without a call id in its payload takes the trace id's.
                let content = match content {
                    Content::Answered { .. } | Content::Terminate { .. }
                        if trace.as_deref() != Some(CALL_ID) =>
                    {
                        match content {
                            Content::Answered { .. } => Content::Answered {
                                payload_call_id: true,
                            },
                            Content::Terminate { reason, .. } => Content::Terminate {
                                reason,
                                payload_call_id: true,
                            },
                            other => other,
                        }
                    }
                    other => other,
                };
                Event {
                    content,
                    trace,
                    at: has_ts.then_some(at),
                    ts_style,
                    spelling: Spelling(spelling),
                }
            },
        )
        .collect()
}

/// A call: its distinct events, the deliveries (each distinct event one to three times, in any
/// order, each copy received at its own time, in delivery order), and for the mix, which
/// distinct events a protobuf producer sent.
#[derive(Debug)]
struct Call {
    events: Vec<Event>,
    /// Indices into `events` and receive times, in delivery order.
    deliveries: Vec<(usize, DateTime<Utc>)>,
    protobuf: Vec<bool>,
}

/// One message is one message in both formats: two distinct events whose bodies are the same
/// bytes in one format (the same content, told apart only by how the other format spells an
/// absent timestamp or a payload) are made the same event, sent by one producer, so that the
/// log keeps one copy of them whatever the format. Without this, one format would fold two
/// messages where the other folds one, with different receive times.
fn same_messages_alike(events: &mut [Event], protobuf: &mut [bool]) {
    for j in 0..events.len() {
        for i in 0..j {
            let same = |p: bool| body(&events[i], p).0 == body(&events[j], p).0;
            if same(false) || same(true) {
                events[j] = events[i].clone();
                protobuf[j] = protobuf[i];
                break;
            }
        }
    }
}

fn call(clock: Clock) -> impl Strategy<Value = Call> {
    prop::collection::vec((draft(), 1usize..=3, any::<bool>()), 0..=10)
        .prop_flat_map(move |drafts| {
            let copies: Vec<usize> = drafts
                .iter()
                .enumerate()
                .flat_map(|(i, (_, n, _))| std::iter::repeat_n(i, *n))
                .collect();
            let gaps = prop::collection::vec(0u32..20_000, copies.len());
            let mut protobuf: Vec<bool> = drafts.iter().map(|(_, _, p)| *p).collect();
            let mut events = events(drafts.into_iter().map(|(d, _, _)| d).collect(), clock);
            same_messages_alike(&mut events, &mut protobuf);
            (
                Just(events),
                Just(copies).prop_shuffle(),
                gaps,
                Just(protobuf),
            )
        })
        .prop_map(move |(events, copies, gaps, protobuf)| Call {
            events,
            deliveries: copies.into_iter().zip(clock.receive_times(&gaps)).collect(),
            protobuf,
        })
}

/// The record of the call delivered all as JSON, all as protobuf, and as its mix.
fn records(c: &Call) -> (CallRecord, CallRecord, CallRecord) {
    let as_format = |format: &dyn Fn(usize) -> bool| {
        let deliveries: Vec<(&Event, bool, DateTime<Utc>)> = c
            .deliveries
            .iter()
            .map(|&(i, received)| (&c.events[i], format(i), received))
            .collect();
        record(&deliveries)
    };
    (
        as_format(&|_| false),
        as_format(&|_| true),
        as_format(&|i| c.protobuf[i]),
    )
}

/// No regression file: a failing case is printed, shrunk, and the smallest known one is kept
/// as an example test below.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The same call in either format, or in any mix of the two, gives the same record.
    #[test]
    fn a_call_folds_alike_from_json_protobuf_and_any_mix(c in call(Clock::Distinct)) {
        let (json, protobuf, mix) = records(&c);
        prop_assert_eq!(&protobuf, &json, "protobuf twin differs");
        prop_assert_eq!(&mix, &json, "mix differs");
    }

    /// The same, where events of a call share timestamps (whole-second producers, receive
    /// times standing in for missing ones).
    #[test]
    fn a_call_folds_alike_from_json_protobuf_and_any_mix_when_timestamps_tie(
        c in call(Clock::Coarse),
    ) {
        let (json, protobuf, mix) = records(&c);
        prop_assert_eq!(&protobuf, &json, "protobuf twin differs");
        prop_assert_eq!(&mix, &json, "mix differs");
    }
}

// ---------------------------------------------------------------------------------------------
// The twins themselves
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Each event's two renderings decode to the same kind, call, trace and time.
    #[test]
    fn each_event_and_its_twin_decode_alike(
        e in draft().prop_map(|d| events(vec![d], Clock::Distinct).remove(0)),
    ) {
        let received = t0() + Duration::seconds(600);
        let j = decoded(&to_json(&e), &e, Format::Json, received);
        let p = decoded(&to_protobuf(&e), &e, Format::Protobuf, received);
        prop_assert_eq!(&j.kind, &p.kind);
        prop_assert_eq!(&j.event_type, &p.event_type);
        prop_assert_eq!(&j.trace_id, &p.trace_id);
        prop_assert_eq!(j.timestamp, p.timestamp);
        prop_assert_eq!(j.timestamp_inferred, p.timestamp_inferred);
    }
}

#[test]
fn the_go_style_trims_the_fraction() {
    let t: DateTime<Utc> = "2025-09-24T10:01:02.123450000Z".parse().unwrap();
    assert_eq!(go_style(t), "2025-09-24T10:01:02.12345Z");
    assert_eq!(go_style(t0()), "2025-09-24T10:00:00Z");
}

/// The smallest case of the property above: two `call.started` of one call (a retransmitted
/// INVITE) with the same timestamp, a whole second as a producer wrote it, that differ in
/// their From header; and two events of one call at the same instant with different trace
/// ids. The fold picks between equal timestamps by the body's hash, which differs between a
/// JSON body and its protobuf twin: the pick, hence the record, depends on the wire format.
#[test]
fn twins_with_equal_timestamps_fold_alike() {
    let at = Some(t0() + Duration::seconds(1));
    let event = |content: Content, trace: &str| Event {
        content,
        trace: Some(trace.to_owned()),
        at,
        ts_style: 0,
        spelling: Spelling(0),
    };
    let started = |from: &str| Content::Started {
        from: Some(from.to_owned()),
        to: Some("<sip:902124440000@198.51.100.7>".to_owned()),
        media: None,
        dialplan: None,
    };
    let mut differing = Vec::new();
    for n in 0..6 {
        let a = event(
            started(&format!("<sip:90555000000{n}@203.0.113.5>")),
            CALL_ID,
        );
        let b = event(started("<sip:905559876543@203.0.113.9>"), CALL_ID);
        let c = event(
            Content::Ended {
                reason: Some("normal_clearing".into()),
            },
            &format!("trace-Ab12Cd34Ef5{n}"),
        );
        let received = t0() + Duration::seconds(5);
        let deliveries_json = [
            (&a, false, received),
            (&b, false, received),
            (&c, false, received),
        ];
        let deliveries_protobuf = [
            (&a, true, received),
            (&b, true, received),
            (&c, true, received),
        ];
        let (j, p) = (record(&deliveries_json), record(&deliveries_protobuf));
        if j != p {
            differing.push(format!(
                "pair {n}: JSON gives caller {:?} and trace {:?}, protobuf gives caller {:?} and trace {:?}",
                j.caller_number, j.trace_id, p.caller_number, p.trace_id
            ));
        }
    }
    assert!(
        differing.is_empty(),
        "records differ by wire format:\n{}",
        differing.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Live equals rebuilt
// ---------------------------------------------------------------------------------------------

/// What the service folds live is what it folds after a restart (or a takeover by another
/// instance) from the log: each generated call, its events in any mix of the formats with
/// nanosecond timestamps, duplicated and shuffled, is appended to the real event log delivery
/// by delivery (receive times at the microseconds the consumer keeps), folded live from the
/// decoded deliveries, then loaded back from the log and folded again: the same record.
#[test]
fn a_call_folds_alike_live_and_rebuilt_from_the_log() {
    use cdr_service::log::EventLog;
    use chrono::SubsecRound;

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (env, pool) = runtime.block_on(async {
        let env = cdr_testkit::TestEnv::new().await;
        let pool = env.pool().await;
        cdr_service::db::migrate(&pool).await.expect("migrate");
        (env, pool)
    });
    let log = EventLog::new(pool.clone());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let outcome = runner.run(&call(Clock::Distinct), |c| {
        runtime.block_on(async {
            sqlx::query("TRUNCATE call_events, open_calls")
                .execute(&pool)
                .await
                .expect("empty the log");
            let mut live = Vec::new();
            for &(i, received) in &c.deliveries {
                let e = &c.events[i];
                let (body, format) = body(e, c.protobuf[i]);
                let envelope = decoded(&body, e, format, received.trunc_subsecs(6));
                let appended = log
                    .append(std::slice::from_ref(&envelope))
                    .await
                    .expect("append");
                if appended.new_events() == 1 {
                    live.push(CallEvent::from(envelope));
                }
            }
            let rebuilt: Vec<CallEvent> = log
                .load_call(CALL_ID)
                .await
                .expect("load the call")
                .into_iter()
                .map(|e| e.event)
                .collect();
            prop_assert_eq!(rebuilt.len(), live.len());
            let live = CallState::fold(&live).record_and_usage(CALL_ID, &prices());
            let rebuilt = CallState::fold(&rebuilt).record_and_usage(CALL_ID, &prices());
            prop_assert_eq!(rebuilt, live);
            Ok(())
        })
    });
    runtime.block_on(async {
        pool.close().await;
        env.cleanup(&env.settings()).await;
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
