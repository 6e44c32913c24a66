//! Decoding of today's producers' protobuf events (EVENTS.md, "The current wire format:
//! protobuf"), through the public API only (`event::decode`, `event::decode_hinted`).
//!
//! The bytes are written here by a minimal protobuf wire encoder of the test's own (`Wire`),
//! field number by field number from the EVENTS.md tables: not by the service's prost
//! structs, so that a wrong field number or type in `cdr_core::proto` shows up as a wrong
//! decode. One fixture per message and producer usage, each decoded to the exact envelope,
//! kind and JSON rendering expected; then every class of broken input, the platform events
//! that are not about a call, and what the content-type hint may and may not decide.

use cdr_service::event::{
    Envelope, EventKind, Format, Identity, Limits, Reject, Started, decode, decode_hinted,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Producers send well under 16 KiB (EVENTS.md, Transport); the depth limit is the service's.
const LIMITS: Limits = Limits {
    max_body_bytes: 16 * 1024,
    max_json_depth: 32,
};

const CALL_ID: &str = "a84b4c76e66710@198.51.100.7";
const TRACE_ID: &str = "trace-Ab12Cd34Ef56";
const USER_ID: &str = "3f2c9a4e-8b1d-4e6f-9a2b-7c5d1e0f4a36";
const TENANT: &str = "sentiric_demo";
const RAW_FROM: &str = "\"Ayşe Yılmaz\" <sip:905551234567@203.0.113.5;transport=udp>;tag=as6f1b2c";
const RAW_TO: &str = "<sip:902124440000@198.51.100.7>";

// ---------------------------------------------------------------------------------------------
// The test's own protobuf wire encoder
// ---------------------------------------------------------------------------------------------

/// Wire types (protobuf encoding: the low three bits of a field's key).
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// A protobuf message, its fields appended in the order written. proto3 producers leave a
/// field at its default off the wire: the fixtures below simply do not write those.
#[derive(Debug, Clone, Default)]
struct Wire(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v & 0x7f) as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Wire {
    fn new() -> Wire {
        Wire::default()
    }

    fn key(mut self, field: u32, wire_type: u64) -> Wire {
        put_varint(&mut self.0, (u64::from(field) << 3) | wire_type);
        self
    }

    fn varint(self, field: u32, v: u64) -> Wire {
        let mut w = self.key(field, VARINT);
        put_varint(&mut w.0, v);
        w
    }

    /// `int32`/`int64`/enum: two's complement, a negative value sign-extended to ten bytes.
    fn int(self, field: u32, v: i64) -> Wire {
        self.varint(field, v as u64)
    }

    fn flag(self, field: u32, v: bool) -> Wire {
        self.varint(field, u64::from(v))
    }

    fn bytes(self, field: u32, v: &[u8]) -> Wire {
        let mut w = self.key(field, LEN);
        put_varint(&mut w.0, v.len() as u64);
        w.0.extend_from_slice(v);
        w
    }

    fn string(self, field: u32, v: &str) -> Wire {
        self.bytes(field, v.as_bytes())
    }

    fn message(self, field: u32, m: Wire) -> Wire {
        self.bytes(field, &m.0)
    }

    fn float(self, field: u32, v: f32) -> Wire {
        let mut w = self.key(field, FIXED32);
        w.0.extend_from_slice(&v.to_le_bytes());
        w
    }

    fn fixed64(self, field: u32, v: u64) -> Wire {
        let mut w = self.key(field, FIXED64);
        w.0.extend_from_slice(&v.to_le_bytes());
        w
    }

    /// A packed `repeated float`.
    fn floats(self, field: u32, vs: &[f32]) -> Wire {
        let packed: Vec<u8> = vs.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.bytes(field, &packed)
    }

    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

#[test]
fn the_encoder_writes_the_protobuf_wire_format() {
    // The examples of the protobuf encoding guide: 150 in field 1, "testing" in field 2.
    assert_eq!(Wire::new().varint(1, 150).0, [0x08, 0x96, 0x01]);
    assert_eq!(
        Wire::new().string(2, "testing").0,
        [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
    );
    assert_eq!(
        Wire::new().message(3, Wire::new().varint(1, 150)).0,
        [0x1a, 0x03, 0x08, 0x96, 0x01]
    );
    assert_eq!(
        Wire::new().int(2, -1).0,
        [
            0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ]
    );
    assert_eq!(Wire::new().float(7, 1.0).0, [0x3d, 0x00, 0x00, 0x80, 0x3f]);
}

// ---------------------------------------------------------------------------------------------
// The messages of EVENTS.md, field by field
// ---------------------------------------------------------------------------------------------

/// `google.protobuf.Timestamp`: 1 seconds int64, 2 nanos int32 (each left out at 0).
fn timestamp(seconds: i64, nanos: i32) -> Wire {
    let mut w = Wire::new();
    if seconds != 0 {
        w = w.int(1, seconds);
    }
    if nanos != 0 {
        w = w.int(2, i64::from(nanos));
    }
    w
}

fn timestamp_of(t: DateTime<Utc>) -> Wire {
    timestamp(t.timestamp(), t.timestamp_subsec_nanos() as i32)
}

/// `Contact`: 1 id int32, 2 user_id, 3 contact_type, 4 contact_value, 5 is_primary bool.
fn contact(id: i32, user_id: &str, contact_value: &str, is_primary: bool) -> Wire {
    let w = Wire::new()
        .int(1, i64::from(id))
        .string(2, user_id)
        .string(3, "PHONE")
        .string(4, contact_value);
    if is_primary { w.flag(5, true) } else { w }
}

/// `User`: 1 id, 2 name (optional), 3 tenant_id, 4 user_type, 5 contacts (repeated Contact),
/// 6 preferred_language_code (optional).
fn user(id: &str, tenant_id: &str) -> Wire {
    Wire::new()
        .string(1, id)
        .string(2, "Ayşe Yılmaz")
        .string(3, tenant_id)
        .string(4, "caller")
        .message(5, contact(42, id, "905551234567", true))
        .message(5, contact(43, id, "905559876543", false))
        .string(6, "tr")
}

/// What `user(USER_ID, TENANT)` renders as.
fn user_json() -> Value {
    json!({
        "id": USER_ID,
        "name": "Ayşe Yılmaz",
        "tenantId": TENANT,
        "userType": "caller",
        "contacts": [
            {"id": 42, "userId": USER_ID, "contactType": "PHONE",
             "contactValue": "905551234567", "isPrimary": true},
            {"id": 43, "userId": USER_ID, "contactType": "PHONE",
             "contactValue": "905559876543"},
        ],
        "preferredLanguageCode": "tr",
    })
}

/// `DialplanAction`: 1 action, 2 type enum, 3 action_data map<string,string> (each entry a
/// message: 1 key, 2 value).
fn action() -> Wire {
    let entry = |k: &str, v: &str| Wire::new().string(1, k).string(2, v);
    Wire::new()
        .string(1, "START_AI_CONVERSATION")
        .int(2, 2)
        .message(3, entry("welcome_announcement_id", "ANNOUNCE_WELCOME_TR"))
        .message(3, entry("llm_prompt", "Sen bir asistansın"))
}

/// `InboundRoute`, every field set but one of the two flags (the other fixture sets the other
/// one, so that neither flag's number can stand in for the other's): 1 phone_number,
/// 2 tenant_id, 3 active_dialplan_id, 4 off_hours_dialplan_id, 5 failsafe_dialplan_id,
/// 6 is_maintenance_mode bool, 7 default_language_code, 8 schedule_id, 9 block_anonymous bool.
fn inbound_route(maintenance: bool) -> Wire {
    let w = Wire::new()
        .string(1, "902124440000")
        .string(2, TENANT)
        .string(3, "DP_ACTIVE")
        .string(4, "DP_OFF_HOURS")
        .string(5, "DP_FAILSAFE");
    let w = if maintenance { w.flag(6, true) } else { w };
    let w = w.string(7, "tr").string(8, "SCHEDULE_WEEKDAYS");
    if maintenance { w } else { w.flag(9, true) }
}

fn inbound_route_json(maintenance: bool) -> Value {
    let mut route = json!({
        "phoneNumber": "902124440000",
        "tenantId": TENANT,
        "activeDialplanId": "DP_ACTIVE",
        "offHoursDialplanId": "DP_OFF_HOURS",
        "failsafeDialplanId": "DP_FAILSAFE",
        "defaultLanguageCode": "tr",
        "scheduleId": "SCHEDULE_WEEKDAYS",
    });
    let flag = if maintenance {
        "isMaintenanceMode"
    } else {
        "blockAnonymous"
    };
    route[flag] = json!(true);
    route
}

/// `ResolveDialplanResponse`: 1 dialplan_id, 2 tenant_id, 3 action, 4 matched_user,
/// 5 matched_contact, 6 inbound_route.
fn dialplan() -> Wire {
    Wire::new()
        .string(1, "DP_DEMO_INBOUND")
        .string(2, TENANT)
        .message(3, action())
        .message(4, user(USER_ID, TENANT))
        .message(5, contact(42, USER_ID, "905551234567", true))
        .message(6, inbound_route(false))
}

/// `MediaInfo`: 1 caller_rtp_addr, 2 server_rtp_port uint32.
fn media(addr: &str, port: u64) -> Wire {
    Wire::new().string(1, addr).varint(2, port)
}

/// `CallStartedEvent`: 1 event_type, 2 trace_id, 3 call_id, 4 from_uri, 5 to_uri,
/// 6 timestamp, 7 dialplan_resolution, 8 media_info.
fn call_started_full() -> Vec<u8> {
    Wire::new()
        .string(1, "call.started")
        .string(2, TRACE_ID)
        .string(3, CALL_ID)
        .string(4, RAW_FROM)
        .string(5, RAW_TO)
        .message(6, timestamp_of(t(1, 2, 123_456_789)))
        .message(7, dialplan())
        .message(8, media("203.0.113.5:40000", 10044))
        .into_bytes()
}

/// `CallEndedEvent`: 1 event_type, 2 trace_id, 3 call_id, 4 timestamp, 5 reason.
fn call_ended(reason: &str) -> Wire {
    Wire::new()
        .string(1, "call.ended")
        .string(2, CALL_ID)
        .string(3, CALL_ID)
        .message(4, timestamp_of(t(3, 12, 750_000_000)))
        .string(5, reason)
}

/// `GenericEvent`: 1 event_type, 2 trace_id, 3 timestamp, 4 tenant_id, 5 payload_json.
fn generic(
    event_type: &str,
    trace_id: &str,
    ts: Option<Wire>,
    tenant: &str,
    payload: &str,
) -> Wire {
    let mut w = Wire::new().string(1, event_type);
    if !trace_id.is_empty() {
        w = w.string(2, trace_id);
    }
    if let Some(ts) = ts {
        w = w.message(3, ts);
    }
    if !tenant.is_empty() {
        w = w.string(4, tenant);
    }
    if payload.is_empty() {
        w
    } else {
        w.string(5, payload)
    }
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// 2025-09-24T10:{minute}:{second} plus `nanos`.
fn t(minute: u32, second: u32, nanos: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 9, 24, 10, minute, second)
        .unwrap()
        + Duration::nanoseconds(nanos)
}

/// The receive time handed to `decode`: distinct from every fixture timestamp, with
/// nanoseconds, so that a receive time standing in for (or leaking into) a timestamp shows.
fn received_at() -> DateTime<Utc> {
    t(7, 30, 424_242_424)
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text).expect("the rendering is JSON") {
        Value::Object(o) => o,
        other => panic!("the rendering is not an object: {other}"),
    }
}

/// What a protobuf fixture must decode to.
struct Expected {
    call_id: &'static str,
    event_type: &'static str,
    trace_id: Option<&'static str>,
    /// None: the event has no timestamp, the receive time stands in.
    timestamp: Option<DateTime<Utc>>,
    kind: EventKind,
    /// The JSON rendering, exactly.
    rendering: Value,
}

/// Decodes a protobuf body with and without each hint (the body decides, so all agree) and
/// checks the whole envelope: the exact bytes and their hash, the format, the call, the
/// timestamp (or the receive time, said so), the kind and the rendering; and that the kind
/// read back from the rendering is the same (what the log's `payload` column shows is what
/// the merge folded).
fn decodes_to(body: &[u8], want: Expected) -> Envelope {
    let e = decode(body, received_at(), LIMITS).unwrap_or_else(|r| {
        panic!(
            "{} must decode; rejected ({}): {r}",
            want.event_type,
            r.as_code()
        )
    });
    for hint in [Format::Json, Format::Protobuf] {
        let hinted = decode_hinted(body, Some(hint), received_at(), LIMITS)
            .unwrap_or_else(|r| panic!("{} with hint {hint:?}: {r}", want.event_type));
        assert_eq!(
            hinted.format,
            Format::Protobuf,
            "the body decides, not the hint"
        );
        assert_eq!(hinted.kind, e.kind);
        assert_eq!(hinted.rendering, e.rendering);
    }
    let what = want.event_type;
    assert_eq!(e.format, Format::Protobuf, "{what}");
    assert_eq!(e.body, body, "{what}: the body is kept byte for byte");
    let hash: [u8; 32] = Sha256::digest(body).into();
    assert_eq!(e.body_hash, hash, "{what}: body_hash");
    assert_eq!(e.received_at, received_at(), "{what}");
    assert_eq!(e.call_id, want.call_id, "{what}: call_id");
    assert_eq!(e.event_type, want.event_type, "{what}: event_type");
    assert_eq!(e.trace_id.as_deref(), want.trace_id, "{what}: trace_id");
    match want.timestamp {
        Some(ts) => {
            assert_eq!(e.timestamp, ts, "{what}: timestamp");
            assert!(!e.timestamp_inferred, "{what}");
        }
        None => {
            assert_eq!(
                e.timestamp,
                received_at(),
                "{what}: the receive time stands in"
            );
            assert!(e.timestamp_inferred, "{what}: and the envelope says so");
        }
    }
    assert_eq!(e.kind, want.kind, "{what}: kind");
    let rendering: Value = serde_json::from_str(e.payload_json()).expect("the rendering is JSON");
    assert_eq!(rendering, want.rendering, "{what}: rendering");
    assert_eq!(
        EventKind::from_payload(&e.event_type, &object(e.payload_json())),
        e.kind,
        "{what}: the kind read back from the rendering"
    );
    e
}

fn rejected(body: &[u8]) -> Reject {
    match decode(body, received_at(), LIMITS) {
        Ok(e) => panic!(
            "accepted as {} of call {:?}; it must be rejected",
            e.kind.name(),
            e.call_id
        ),
        Err(r) => r,
    }
}

fn rejected_as(body: &[u8], code: &str, what: &str) {
    let r = rejected(body);
    assert_eq!(r.as_code(), code, "{what}: {r}");
}

fn full_started_kind() -> EventKind {
    EventKind::Started(Box::new(Started {
        from_uri: Some(RAW_FROM.into()),
        to_uri: Some(RAW_TO.into()),
        caller_number: Some("905551234567".into()),
        callee_number: Some("902124440000".into()),
        server_rtp_port: Some(10044),
        caller_rtp_addr: Some("203.0.113.5:40000".into()),
        dialplan_identity: Identity {
            user_id: Some(uuid(USER_ID)),
            contact_id: Some(42),
            tenant_id: Some(TENANT.into()),
        },
        inbound: true,
    }))
}

// ---------------------------------------------------------------------------------------------
// One fixture per message and producer usage
// ---------------------------------------------------------------------------------------------

#[test]
fn call_started_with_the_full_dialplan_media_and_a_raw_from_header() {
    decodes_to(
        &call_started_full(),
        Expected {
            call_id: CALL_ID,
            event_type: "call.started",
            trace_id: Some(TRACE_ID),
            timestamp: Some(t(1, 2, 123_456_789)),
            kind: full_started_kind(),
            rendering: json!({
                "eventType": "call.started",
                "traceId": TRACE_ID,
                "callId": CALL_ID,
                "timestamp": "2025-09-24T10:01:02.123456789+00:00",
                "fromUri": RAW_FROM,
                "toUri": RAW_TO,
                "dialplanResolution": {
                    "dialplanId": "DP_DEMO_INBOUND",
                    "tenantId": TENANT,
                    "action": {
                        "action": "START_AI_CONVERSATION",
                        "type": 2,
                        "actionData": {"data": {
                            "welcome_announcement_id": "ANNOUNCE_WELCOME_TR",
                            "llm_prompt": "Sen bir asistansın",
                        }},
                    },
                    "matchedUser": user_json(),
                    "matchedContact": {"id": 42, "userId": USER_ID, "contactType": "PHONE",
                                       "contactValue": "905551234567", "isPrimary": true},
                    "inboundRoute": inbound_route_json(false),
                },
                "mediaInfo": {"callerRtpAddr": "203.0.113.5:40000", "serverRtpPort": 10044},
            }),
        },
    );
}

/// A bare URI for From and To, no timestamp (a typed `call.started` producer omits it), the
/// trace id being the call id, a guest (the dialplan matched no user or contact: only its
/// tenant and route identify the call) and the other flag of the route set.
#[test]
fn call_started_with_a_bare_uri_no_timestamp_and_a_guest_dialplan() {
    let body = Wire::new()
        .string(1, "call.started")
        .string(2, CALL_ID)
        .string(3, CALL_ID)
        .string(4, "sip:905321112233@203.0.113.9")
        .string(5, "sip:902124440000@198.51.100.7")
        .message(
            7,
            Wire::new()
                .string(1, "DP_GUEST")
                .message(6, inbound_route(true)),
        )
        .message(8, media("", 10046))
        .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.started",
            trace_id: Some(CALL_ID),
            timestamp: None,
            kind: EventKind::Started(Box::new(Started {
                from_uri: Some("sip:905321112233@203.0.113.9".into()),
                to_uri: Some("sip:902124440000@198.51.100.7".into()),
                caller_number: Some("905321112233".into()),
                callee_number: Some("902124440000".into()),
                server_rtp_port: Some(10046),
                caller_rtp_addr: None,
                dialplan_identity: Identity {
                    user_id: None,
                    contact_id: None,
                    // From the inbound route: the dialplan itself names no tenant.
                    tenant_id: Some(TENANT.into()),
                },
                inbound: true,
            })),
            rendering: json!({
                "eventType": "call.started",
                "traceId": CALL_ID,
                "callId": CALL_ID,
                "fromUri": "sip:905321112233@203.0.113.9",
                "toUri": "sip:902124440000@198.51.100.7",
                "dialplanResolution": {
                    "dialplanId": "DP_GUEST",
                    "inboundRoute": inbound_route_json(true),
                },
                "mediaInfo": {"serverRtpPort": 10046},
            }),
        },
    );
}

/// Placeholders read as absent: the tenant `system`, the nil UUID, contact id 0 (off the
/// wire: proto3's default) and port 0.
#[test]
fn call_started_placeholders_identify_nothing() {
    let nil = Uuid::nil().to_string();
    let body = Wire::new()
        .string(1, "call.started")
        .string(3, CALL_ID)
        .string(4, RAW_FROM)
        .message(6, timestamp_of(t(1, 2, 0)))
        .message(
            7,
            Wire::new()
                .string(2, "system")
                .message(4, Wire::new().string(1, &nil).string(3, "system"))
                .message(5, Wire::new().string(2, &nil)),
        )
        .message(8, Wire::new())
        .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.started",
            trace_id: None,
            timestamp: Some(t(1, 2, 0)),
            kind: EventKind::Started(Box::new(Started {
                from_uri: Some(RAW_FROM.into()),
                to_uri: None,
                caller_number: Some("905551234567".into()),
                callee_number: None,
                server_rtp_port: None,
                caller_rtp_addr: None,
                dialplan_identity: Identity::default(),
                inbound: false,
            })),
            rendering: json!({
                "eventType": "call.started",
                "callId": CALL_ID,
                "timestamp": "2025-09-24T10:01:02+00:00",
                "fromUri": RAW_FROM,
                "dialplanResolution": {
                    "tenantId": "system",
                    "matchedUser": {"id": nil, "tenantId": "system"},
                    "matchedContact": {"userId": nil},
                },
                "mediaInfo": {},
            }),
        },
    );
}

#[test]
fn call_ended_with_its_reason() {
    decodes_to(
        &call_ended("normal_clearing_by_user").into_bytes(),
        Expected {
            call_id: CALL_ID,
            event_type: "call.ended",
            trace_id: Some(CALL_ID),
            timestamp: Some(t(3, 12, 750_000_000)),
            kind: EventKind::Ended {
                reason: Some("normal_clearing_by_user".into()),
            },
            rendering: json!({
                "eventType": "call.ended",
                "traceId": CALL_ID,
                "callId": CALL_ID,
                "timestamp": "2025-09-24T10:03:12.750+00:00",
                "reason": "normal_clearing_by_user",
            }),
        },
    );
}

#[test]
fn call_recording_available_with_its_public_url() {
    let uri = format!("s3://sentiric-recordings/{TENANT}/{CALL_ID}.wav");
    let url = format!("https://media.example.com/recordings/{TENANT}/{CALL_ID}.wav?sig=abc");
    let body = Wire::new()
        .string(1, "call.recording.available")
        .string(2, TRACE_ID)
        .string(3, CALL_ID)
        .message(4, timestamp_of(t(4, 41, 987_654_321)))
        .string(5, &uri)
        .string(6, &url)
        .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.recording.available",
            trace_id: Some(TRACE_ID),
            timestamp: Some(t(4, 41, 987_654_321)),
            // The recording is the storage URI; the public URL is kept in the rendering.
            kind: EventKind::RecordingAvailable {
                uri: Some(uri.clone()),
            },
            rendering: json!({
                "eventType": "call.recording.available",
                "traceId": TRACE_ID,
                "callId": CALL_ID,
                "timestamp": "2025-09-24T10:04:41.987654321+00:00",
                "recordingUri": uri,
                "publicUrl": url,
            }),
        },
    );
}

/// `UserIdentifiedForCallEvent`: 1 event_type, 2 trace_id, 3 call_id, 4 timestamp, 5 user,
/// 6 contact; rendered with the ids flat, as the JSON-era producers sent them.
fn identified(event_type: &str, ts: Option<DateTime<Utc>>) -> Vec<u8> {
    let mut w = Wire::new()
        .string(1, event_type)
        .string(2, TRACE_ID)
        .string(3, CALL_ID);
    if let Some(ts) = ts {
        w = w.message(4, timestamp_of(ts));
    }
    w.message(5, user(USER_ID, TENANT))
        .message(6, contact(42, USER_ID, "905551234567", true))
        .into_bytes()
}

fn identified_rendering(event_type: &str, ts: Option<&str>) -> Value {
    let mut v = json!({
        "eventType": event_type,
        "traceId": TRACE_ID,
        "callId": CALL_ID,
        "userId": USER_ID,
        "contactId": 42,
        "tenantId": TENANT,
        "user": user_json(),
        "contact": {"id": 42, "userId": USER_ID, "contactType": "PHONE",
                    "contactValue": "905551234567", "isPrimary": true},
    });
    if let Some(ts) = ts {
        v["timestamp"] = json!(ts);
    }
    v
}

fn identity_kind() -> EventKind {
    EventKind::Identified(Identity {
        user_id: Some(uuid(USER_ID)),
        contact_id: Some(42),
        tenant_id: Some(TENANT.into()),
    })
}

#[test]
fn user_identified_for_call_with_its_user_and_contact() {
    decodes_to(
        &identified("user.identified.for_call", Some(t(1, 3, 500_000_000))),
        Expected {
            call_id: CALL_ID,
            event_type: "user.identified.for_call",
            trace_id: Some(TRACE_ID),
            timestamp: Some(t(1, 3, 500_000_000)),
            kind: identity_kind(),
            rendering: identified_rendering(
                "user.identified.for_call",
                Some("2025-09-24T10:01:03.500+00:00"),
            ),
        },
    );
}

#[test]
fn user_created_for_call_the_early_name_without_timestamp() {
    let e = decodes_to(
        &identified("user.created.for_call", None),
        Expected {
            call_id: CALL_ID,
            event_type: "user.created.for_call",
            trace_id: Some(TRACE_ID),
            timestamp: None,
            kind: identity_kind(),
            rendering: identified_rendering("user.created.for_call", None),
        },
    );
    assert_eq!(e.kind.name(), "user.identified.for_call");
}

/// The user's id comes from the contact when the user message has none; a tenant `system` is
/// no tenant.
#[test]
fn user_identified_with_a_contact_only_and_the_placeholder_tenant() {
    let body = Wire::new()
        .string(1, "user.identified.for_call")
        .string(3, CALL_ID)
        .message(4, timestamp_of(t(1, 4, 0)))
        .message(5, Wire::new().string(3, "system"))
        .message(6, contact(7, USER_ID, "905551234567", false))
        .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "user.identified.for_call",
            trace_id: None,
            timestamp: Some(t(1, 4, 0)),
            kind: EventKind::Identified(Identity {
                user_id: Some(uuid(USER_ID)),
                contact_id: Some(7),
                tenant_id: None,
            }),
            rendering: json!({
                "eventType": "user.identified.for_call",
                "callId": CALL_ID,
                "timestamp": "2025-09-24T10:01:04+00:00",
                "userId": USER_ID,
                "contactId": 7,
                "tenantId": "system",
                "user": {"tenantId": "system"},
                "contact": {"id": 7, "userId": USER_ID, "contactType": "PHONE",
                            "contactValue": "905551234567"},
            }),
        },
    );
}

/// `call.answered` has no message of its own: a `GenericEvent` whose trace id is the call id,
/// tenant `system`, payload `{"callId": ...}`.
#[test]
fn call_answered_as_a_generic_event() {
    let payload = format!(r#"{{"callId": "{CALL_ID}"}}"#);
    let body = generic(
        "call.answered",
        CALL_ID,
        Some(timestamp_of(t(1, 5, 250_000_000))),
        "system",
        &payload,
    )
    .into_bytes();
    let e = decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.answered",
            trace_id: Some(CALL_ID),
            timestamp: Some(t(1, 5, 250_000_000)),
            kind: EventKind::Answered,
            rendering: json!({
                "eventType": "call.answered",
                "traceId": CALL_ID,
                "timestamp": "2025-09-24T10:01:05.250+00:00",
                "tenantId": "system",
                "callId": CALL_ID,
            }),
        },
    );
    assert_eq!(e.kind.name(), "call.answered");
}

/// Without a payload, the call id of a call event is its trace id (today's producers set it
/// to the call id).
#[test]
fn call_answered_without_payload_takes_the_call_id_from_the_trace_id() {
    let body = generic(
        "call.answered",
        CALL_ID,
        Some(timestamp_of(t(1, 5, 0))),
        "system",
        "",
    )
    .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.answered",
            trace_id: Some(CALL_ID),
            timestamp: Some(t(1, 5, 0)),
            kind: EventKind::Answered,
            rendering: json!({
                "eventType": "call.answered",
                "traceId": CALL_ID,
                "timestamp": "2025-09-24T10:01:05+00:00",
                "tenantId": "system",
                "callId": CALL_ID,
            }),
        },
    );
}

/// The agent's hang-up request: a `GenericEvent` with `{"callId", "reason"}`, often without a
/// timestamp; kept with its call, it ends nothing.
#[test]
fn call_terminate_request_as_a_generic_event() {
    let payload = format!(r#"{{"callId":"{CALL_ID}","reason":"PIPELINE_ERROR"}}"#);
    let body = generic("call.terminate.request", TRACE_ID, None, TENANT, &payload).into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.terminate.request",
            trace_id: Some(TRACE_ID),
            timestamp: None,
            kind: EventKind::TerminateRequested,
            rendering: json!({
                "eventType": "call.terminate.request",
                "traceId": TRACE_ID,
                "tenantId": TENANT,
                "callId": CALL_ID,
                "reason": "PIPELINE_ERROR",
            }),
        },
    );
}

/// An announcement finished playing: call-scoped and kept raw; its `uri` is a prompt, not a
/// recording.
#[test]
fn call_media_playback_finished_is_kept_raw_and_is_no_recording() {
    let prompt = "file:///sentiric-assets/audio/tr/system/welcome_anonymous.wav";
    let payload = format!(r#"{{"callId":"{CALL_ID}","uri":"{prompt}"}}"#);
    let body = generic(
        "call.media.playback.finished",
        CALL_ID,
        Some(timestamp_of(t(1, 9, 1))),
        TENANT,
        &payload,
    )
    .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "call.media.playback.finished",
            trace_id: Some(CALL_ID),
            timestamp: Some(t(1, 9, 1)),
            kind: EventKind::Other,
            rendering: json!({
                "eventType": "call.media.playback.finished",
                "traceId": CALL_ID,
                "timestamp": "2025-09-24T10:01:09.000000001+00:00",
                "tenantId": TENANT,
                "callId": CALL_ID,
                "uri": prompt,
            }),
        },
    );
}

/// `AcousticMoodShiftedEvent`: 1 event_type, 2 trace_id, 3 call_id, 4 timestamp, and mood
/// fields 5 to 10 (strings, floats, a repeated float) that nothing reads: the event is
/// call-scoped, merged into nothing, and its bytes (mood included) are what is kept.
#[test]
fn acoustic_mood_shifted_is_kept_raw_with_its_mood_fields() {
    let body = Wire::new()
        .string(1, "acoustic.mood.shifted")
        .string(2, CALL_ID)
        .string(3, CALL_ID)
        .message(4, timestamp_of(t(2, 0, 5_000)))
        .string(5, "neutral")
        .string(6, "frustrated")
        .float(7, 0.82)
        .float(8, -0.35)
        .float(9, 0.6)
        .floats(10, &[0.1, 0.25, -0.5, 1.0])
        .into_bytes();
    decodes_to(
        &body,
        Expected {
            call_id: CALL_ID,
            event_type: "acoustic.mood.shifted",
            trace_id: Some(CALL_ID),
            timestamp: Some(t(2, 0, 5_000)),
            kind: EventKind::Other,
            rendering: json!({
                "eventType": "acoustic.mood.shifted",
                "traceId": CALL_ID,
                "callId": CALL_ID,
                "timestamp": "2025-09-24T10:02:00.000005+00:00",
            }),
        },
    );
}

#[test]
fn timestamps_are_exact_to_the_nanosecond() {
    for (seconds_after, nanos) in [
        (0, 1),
        (1, 999_999_999),
        (2, 123_456_789),
        (3, 500_000_000),
        (4, 0),
    ] {
        let ts = t(1, 2, 0) + Duration::seconds(seconds_after) + Duration::nanoseconds(nanos);
        let body = Wire::new()
            .string(1, "call.ended")
            .string(3, CALL_ID)
            .message(4, timestamp_of(ts))
            .into_bytes();
        let e = decode(&body, received_at(), LIMITS).expect("decodes");
        assert_eq!(e.timestamp, ts);
        assert_eq!(i64::from(e.timestamp.timestamp_subsec_nanos()), nanos);
        assert!(!e.timestamp_inferred);
        let rendered = object(e.payload_json());
        let text = rendered["timestamp"].as_str().expect("a timestamp string");
        assert_eq!(
            DateTime::parse_from_rfc3339(text).unwrap(),
            ts,
            "the rendering's timestamp is the same instant: {text}"
        );
    }
}

/// A timestamp that is absent, or present at its default (0, 0: the epoch, which no producer
/// means), stands on the receive time, and the envelope says so.
#[test]
fn an_absent_or_empty_timestamp_is_the_receive_time() {
    let absent = Wire::new()
        .string(1, "call.ended")
        .string(3, CALL_ID)
        .string(5, "busy")
        .into_bytes();
    let empty = Wire::new()
        .string(1, "call.ended")
        .string(3, CALL_ID)
        .message(4, Wire::new())
        .string(5, "busy")
        .into_bytes();
    for body in [absent, empty] {
        let e = decode(&body, received_at(), LIMITS).expect("decodes");
        assert_eq!(e.timestamp, received_at());
        assert!(e.timestamp_inferred);
        assert!(object(e.payload_json()).get("timestamp").is_none());
        assert_eq!(
            e.kind,
            EventKind::Ended {
                reason: Some("busy".into())
            }
        );
    }
}

/// Fields may come in any order on the wire (a producer is free to write them so), and a
/// field repeated is the last one written (proto3's merge rule): the same event either way.
#[test]
fn field_order_does_not_matter() {
    let canonical = call_ended("busy").into_bytes();
    let shuffled = Wire::new()
        .string(5, "busy")
        .message(4, timestamp_of(t(3, 12, 750_000_000)))
        .string(3, CALL_ID)
        .string(1, "call.ended")
        .string(2, CALL_ID)
        .into_bytes();
    let a = decode(&canonical, received_at(), LIMITS).expect("canonical order");
    let b = decode_hinted(&shuffled, Some(Format::Protobuf), received_at(), LIMITS)
        .expect("another order, announced as protobuf");
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.timestamp, b.timestamp);
    assert_eq!(a.call_id, b.call_id);
    assert_eq!(object(a.payload_json()), object(b.payload_json()));
    // Not text: detected as protobuf without the hint too.
    assert_eq!(
        decode(&shuffled, received_at(), LIMITS)
            .expect("no hint")
            .format,
        Format::Protobuf
    );
}

// ---------------------------------------------------------------------------------------------
// The JSON rendering
// ---------------------------------------------------------------------------------------------

/// Every key of an object, recursively, except the free-form `actionData.data` map (its keys
/// are the dialplan's data, not field names).
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                out.push(k.clone());
                if k != "data" {
                    keys(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[test]
fn the_rendering_has_camel_case_keys_like_the_json_era_producers() {
    let bodies = [
        call_started_full(),
        call_ended("busy").into_bytes(),
        identified("user.identified.for_call", Some(t(1, 3, 0))),
        generic(
            "call.answered",
            CALL_ID,
            Some(timestamp_of(t(1, 5, 0))),
            "system",
            &format!(r#"{{"callId":"{CALL_ID}"}}"#),
        )
        .into_bytes(),
    ];
    for body in bodies {
        let e = decode(&body, received_at(), LIMITS).expect("decodes");
        let rendering: Value = serde_json::from_str(e.payload_json()).unwrap();
        let mut all = Vec::new();
        keys(&rendering, &mut all);
        for k in &all {
            assert!(
                !k.contains('_') && k.chars().next().is_some_and(|c| c.is_ascii_lowercase()),
                "{}: key {k:?} is not camelCase",
                e.event_type
            );
        }
        for envelope_key in ["eventType", "callId"] {
            assert!(all.iter().any(|k| k == envelope_key), "{envelope_key}");
        }
    }
}

/// A protobuf event and the JSON event an older producer sent for the same call event read
/// the same: same kind, call, trace and time.
#[test]
fn a_protobuf_event_means_what_its_json_twin_meant() {
    let json_started = json!({
        "eventType": "call.started",
        "traceId": TRACE_ID,
        "callId": CALL_ID,
        "timestamp": "2025-09-24T10:01:02.123456789+00:00",
        "from": RAW_FROM,
        "to": RAW_TO,
        "media": {"server_rtp_port": 10044, "caller_rtp_addr": "203.0.113.5:40000"},
        "dialplan": {
            "dialplan_id": "DP_DEMO_INBOUND",
            "tenant_id": TENANT,
            "matched_user": {"id": USER_ID, "tenant_id": TENANT},
            "matched_contact": {"id": 42, "user_id": USER_ID},
            "inbound_route": {"phone_number": "902124440000", "tenant_id": TENANT},
        },
    })
    .to_string();
    let j = decode(json_started.as_bytes(), received_at(), LIMITS).unwrap();
    let p = decode(&call_started_full(), received_at(), LIMITS).unwrap();
    assert_eq!(j.format, Format::Json);
    assert_eq!(p.format, Format::Protobuf);
    assert_eq!(j.kind, p.kind);
    assert_eq!(
        (&j.call_id, &j.trace_id, j.timestamp),
        (&p.call_id, &p.trace_id, p.timestamp)
    );
    assert_eq!(j.rendering, None, "a JSON body is its own rendering");
}

// ---------------------------------------------------------------------------------------------
// Broken protobuf
// ---------------------------------------------------------------------------------------------

#[test]
fn a_truncated_body_is_bad_protobuf() {
    let full = call_started_full();
    // Cut inside the last field (the media info), inside the call id, inside the event type,
    // and after the event type's length, before its bytes. (A cut after the first byte leaves
    // a lone `\n`, JSON whitespace: no format shows in it, see the hint test.)
    let call_id_at = full
        .windows(CALL_ID.len())
        .position(|w| w == CALL_ID.as_bytes())
        .unwrap();
    for cut in [full.len() - 1, call_id_at + 5, 5, 2] {
        rejected_as(&full[..cut], "bad_protobuf", &format!("cut at {cut}"));
    }
    let key_only = Wire::new().string(1, "call.ended").key(3, LEN).into_bytes();
    rejected_as(&key_only, "bad_protobuf", "a key without its value");
    let mut short = Wire::new().string(1, "call.ended").into_bytes();
    short.extend_from_slice(&[0x1a, 0x10, b'a', b'b']);
    rejected_as(&short, "bad_protobuf", "a length past the end");
}

#[test]
fn a_wrong_wire_type_for_a_known_field_is_bad_protobuf() {
    let ended = |w: Wire| w.into_bytes();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            ended(
                Wire::new()
                    .string(1, "call.ended")
                    .varint(3, 12345)
                    .message(4, timestamp_of(t(3, 12, 0))),
            ),
            "call_id (3) as a varint",
        ),
        (
            ended(
                Wire::new()
                    .string(1, "call.ended")
                    .string(3, CALL_ID)
                    .varint(4, 1),
            ),
            "timestamp (4) as a varint",
        ),
        (
            ended(
                Wire::new()
                    .string(1, "call.ended")
                    .string(3, CALL_ID)
                    .fixed64(5, 7),
            ),
            "reason (5) as fixed64",
        ),
        (
            ended(
                Wire::new()
                    .string(1, "call.ended")
                    .string(3, CALL_ID)
                    .message(4, Wire::new().float(2, 0.5)),
            ),
            "Timestamp.nanos (2) as fixed32",
        ),
        (
            Wire::new()
                .string(1, "call.started")
                .string(3, CALL_ID)
                .message(8, Wire::new().string(2, "10044"))
                .into_bytes(),
            "MediaInfo.server_rtp_port (2) as a string",
        ),
        (
            Wire::new()
                .string(1, "call.started")
                .string(3, CALL_ID)
                .message(7, Wire::new().message(5, Wire::new().string(1, "42")))
                .into_bytes(),
            "Contact.id (1) as a string",
        ),
        (
            Wire::new()
                .string(1, "user.identified.for_call")
                .string(3, CALL_ID)
                .varint(5, 1)
                .into_bytes(),
            "user (5) as a varint",
        ),
        (
            Wire::new()
                .string(1, "call.answered")
                .string(2, CALL_ID)
                .varint(5, 1)
                .into_bytes(),
            "GenericEvent.payload_json (5) as a varint",
        ),
        (
            Wire::new().varint(1, 7).string(3, CALL_ID).into_bytes(),
            "event_type (1) as a varint",
        ),
    ];
    for (body, what) in cases {
        rejected_as(&body, "bad_protobuf", what);
    }
}

#[test]
fn invalid_utf8_in_a_string_field_is_bad_protobuf() {
    let cases = [
        (
            Wire::new()
                .string(1, "call.ended")
                .string(3, CALL_ID)
                .bytes(5, b"normal\xff\xfeclearing")
                .into_bytes(),
            "reason",
        ),
        (
            Wire::new()
                .string(1, "call.ended")
                .bytes(3, b"a84b\xc3\x28@198.51.100.7")
                .into_bytes(),
            "call_id",
        ),
        (
            Wire::new()
                .bytes(1, b"call.\xffended")
                .string(3, CALL_ID)
                .into_bytes(),
            "event_type",
        ),
        (
            Wire::new()
                .string(1, "call.started")
                .string(3, CALL_ID)
                .message(
                    7,
                    Wire::new().message(4, Wire::new().bytes(3, b"\xe2\x28\xa1")),
                )
                .into_bytes(),
            "matched_user.tenant_id",
        ),
        (
            generic("call.answered", CALL_ID, None, "system", "")
                .bytes(5, b"{\"callId\":\"\xff\"}")
                .into_bytes(),
            "payload_json",
        ),
    ];
    for (body, what) in cases {
        rejected_as(&body, "bad_protobuf", what);
    }
}

#[test]
fn a_timestamp_that_is_no_time_is_bad_timestamp() {
    for (seconds, nanos, what) in [
        (1_758_708_062, 1_000_000_000, "nanos of a whole second"),
        (1_758_708_062, -1, "negative nanos"),
        (1_758_708_062, i32::MAX, "nanos far out of range"),
        (i64::MAX, 0, "seconds past any date"),
        (i64::MIN, 0, "seconds before any date"),
    ] {
        let body = Wire::new()
            .string(1, "call.ended")
            .string(3, CALL_ID)
            .message(4, timestamp(seconds, nanos))
            .into_bytes();
        rejected_as(&body, "bad_timestamp", what);
        let generic = generic(
            "call.answered",
            CALL_ID,
            Some(timestamp(seconds, nanos)),
            "system",
            "",
        )
        .into_bytes();
        rejected_as(&generic, "bad_timestamp", &format!("GenericEvent: {what}"));
    }
}

#[test]
fn a_message_without_event_type_is_rejected() {
    // Field 1 absent (the body starts with the trace id), or at proto3's default (empty).
    let absent = Wire::new()
        .string(2, TRACE_ID)
        .string(3, CALL_ID)
        .message(4, timestamp_of(t(3, 12, 0)))
        .into_bytes();
    rejected_as(&absent, "missing_event_type", "no field 1");
    let empty = Wire::new().string(1, "").string(3, CALL_ID).into_bytes();
    rejected_as(&empty, "missing_event_type", "field 1 empty");
    let blank = Wire::new().string(1, "   ").string(3, CALL_ID).into_bytes();
    rejected_as(&blank, "invalid_event_type", "field 1 blank");
}

#[test]
fn a_call_event_without_call_id_is_missing_call_id() {
    let cases = [
        (
            Wire::new()
                .string(1, "call.ended")
                .string(2, TRACE_ID)
                .message(4, timestamp_of(t(3, 12, 0)))
                .string(5, "busy")
                .into_bytes(),
            "call.ended without field 3",
        ),
        (
            Wire::new()
                .string(1, "call.started")
                .message(6, timestamp_of(t(1, 2, 0)))
                .into_bytes(),
            "call.started without field 3",
        ),
        (
            Wire::new()
                .string(1, "user.identified.for_call")
                .message(5, user(USER_ID, TENANT))
                .into_bytes(),
            "user.identified.for_call without field 3",
        ),
        (
            Wire::new()
                .string(1, "acoustic.mood.shifted")
                .string(5, "neutral")
                .into_bytes(),
            "acoustic.mood.shifted without field 3",
        ),
        (
            generic(
                "call.answered",
                "",
                Some(timestamp_of(t(1, 5, 0))),
                "system",
                "",
            )
            .into_bytes(),
            "GenericEvent call.answered: no payload, no trace id",
        ),
        (
            generic(
                "call.terminate.request",
                "",
                None,
                TENANT,
                r#"{"reason":"PIPELINE_ERROR"}"#,
            )
            .into_bytes(),
            "GenericEvent call.terminate.request: no callId in the payload, no trace id",
        ),
        (
            generic("call.answered", "  ", None, "system", r#"{"callId":null}"#).into_bytes(),
            "GenericEvent call.answered: a null callId and a blank trace id",
        ),
    ];
    for (body, what) in cases {
        rejected_as(&body, "missing_call_id", what);
    }
}

#[test]
fn a_nul_character_in_a_string_is_nul_character() {
    let cases = [
        (
            Wire::new()
                .string(1, "call.ended")
                .string(3, CALL_ID)
                .string(5, "normal\0clearing")
                .into_bytes(),
            "reason",
        ),
        (
            Wire::new()
                .string(1, "call.started")
                .string(3, CALL_ID)
                .string(4, "<sip:9055\0@203.0.113.5>")
                .into_bytes(),
            "from_uri",
        ),
        (
            Wire::new()
                .string(1, "call.started")
                .string(3, CALL_ID)
                .message(7, Wire::new().message(6, Wire::new().string(7, "t\0r")))
                .into_bytes(),
            "inbound_route.default_language_code",
        ),
        (
            Wire::new()
                .string(1, "call.\0ended")
                .string(3, CALL_ID)
                .into_bytes(),
            "event_type",
        ),
        (
            generic(
                "call.terminate.request",
                CALL_ID,
                None,
                TENANT,
                &format!(r#"{{"callId":"{CALL_ID}","reason":"a\u0000b"}}"#),
            )
            .into_bytes(),
            "payload_json",
        ),
    ];
    for (body, what) in cases {
        rejected_as(&body, "nul_character", what);
    }
}

#[test]
fn a_payload_json_that_is_no_json_object_is_bad_protobuf() {
    for (payload, what) in [
        (
            "{\"callId\": \"a84b4c76e66710@198.51.100.7\"",
            "truncated JSON",
        ),
        ("callId=a84b4c76e66710@198.51.100.7", "not JSON"),
        ("[\"a84b4c76e66710@198.51.100.7\"]", "a JSON array"),
        ("\"a84b4c76e66710@198.51.100.7\"", "a JSON string"),
    ] {
        let body = generic("call.answered", CALL_ID, None, "system", payload).into_bytes();
        rejected_as(&body, "bad_protobuf", what);
    }
}

// ---------------------------------------------------------------------------------------------
// Platform events that are not about a call
// ---------------------------------------------------------------------------------------------

fn not_call_event(body: &[u8]) -> (String, Format) {
    match rejected(body) {
        Reject::NotCallEvent { event_type, format } => (event_type, format),
        other => panic!(
            "expected a platform event, got {} ({other})",
            other.as_code()
        ),
    }
}

#[test]
fn protobuf_platform_events_are_not_call_events() {
    let user_created = generic(
        "user.created",
        "trace-Us3rCr34t3d0",
        Some(timestamp_of(t(0, 0, 0))),
        TENANT,
        &format!(r#"{{"userId":"{USER_ID}","name":"Ayşe Yılmaz"}}"#),
    )
    .into_bytes();
    let dialplan_updated = generic(
        "dialplan.updated",
        "",
        Some(timestamp_of(t(0, 1, 0))),
        TENANT,
        r#"{"dialplanId":"DP_DEMO_INBOUND","callId":null}"#,
    )
    .into_bytes();
    // Messages of their own, without a call id.
    let cognitive_map = Wire::new()
        .string(1, "cognitive.map.updated")
        .string(2, "map-7f3a")
        .message(3, Wire::new().string(1, "node").float(2, 0.5))
        .varint(4, 12)
        .into_bytes();
    let media_generated = Wire::new()
        .string(1, "media.generation.completed")
        .string(2, "job-42")
        .string(3, "s3://generated/job-42.wav")
        .into_bytes();
    // A platform message this service knows nothing of, not shaped like a GenericEvent.
    let unknown = Wire::new()
        .string(1, "agent.heartbeat")
        .varint(3, 1_758_708_062)
        .float(4, 0.25)
        .into_bytes();
    for (body, event_type) in [
        (user_created, "user.created"),
        (dialplan_updated, "dialplan.updated"),
        (cognitive_map, "cognitive.map.updated"),
        (media_generated, "media.generation.completed"),
        (unknown, "agent.heartbeat"),
    ] {
        assert_eq!(
            not_call_event(&body),
            (event_type.to_owned(), Format::Protobuf),
            "{event_type}"
        );
        // Whatever the hint says.
        let hinted = decode_hinted(&body, Some(Format::Json), received_at(), LIMITS).unwrap_err();
        assert_eq!(hinted.as_code(), "not_call_event", "{event_type}");
    }
}

#[test]
fn a_json_platform_event_is_not_a_call_event_in_json() {
    assert_eq!(
        not_call_event(br#"{"eventType":"user.created"}"#),
        ("user.created".to_owned(), Format::Json)
    );
    let hinted = decode_hinted(
        br#"{"eventType":"user.created"}"#,
        Some(Format::Protobuf),
        received_at(),
        LIMITS,
    );
    assert_eq!(
        hinted.unwrap_err(),
        Reject::NotCallEvent {
            event_type: "user.created".into(),
            format: Format::Json
        }
    );
}

// ---------------------------------------------------------------------------------------------
// The content-type hint
// ---------------------------------------------------------------------------------------------

fn code(body: &[u8], hint: Option<Format>) -> Result<Format, &'static str> {
    decode_hinted(body, hint, received_at(), LIMITS)
        .map(|e| e.format)
        .map_err(|r| r.as_code())
}

#[test]
fn the_body_decides_and_the_hint_only_settles_an_undetectable_body() {
    let json_body = format!(r#" {{"eventType":"call.answered","callId":"{CALL_ID}"}}"#);
    let protobuf_body = call_ended("busy").into_bytes();
    let hints = [None, Some(Format::Json), Some(Format::Protobuf)];
    for hint in hints {
        assert_eq!(
            code(json_body.as_bytes(), hint),
            Ok(Format::Json),
            "{hint:?}"
        );
        assert_eq!(code(&protobuf_body, hint), Ok(Format::Protobuf), "{hint:?}");
    }
    // Broken bodies that show what they are: the reason follows the body, not the hint.
    let broken_json = br#"{"eventType":"call.answered","callId":"#;
    let broken_protobuf = &protobuf_body[..protobuf_body.len() - 2];
    for hint in hints {
        assert_eq!(code(broken_json, hint), Err("not_json"), "{hint:?}");
        assert_eq!(code(broken_protobuf, hint), Err("bad_protobuf"), "{hint:?}");
    }
    // Neither a JSON object nor a protobuf event by its first byte: the hint settles it.
    assert_eq!(code(b"hello", None), Err("not_json"));
    assert_eq!(code(b"hello", Some(Format::Json)), Err("not_json"));
    assert_eq!(code(b"hello", Some(Format::Protobuf)), Err("bad_protobuf"));
    assert_eq!(code(b"\xff\xfe\x00", None), Err("bad_protobuf"));
    assert_eq!(
        code(b"\xff\xfe\x00", Some(Format::Json)),
        Err("invalid_utf8")
    );
    // An empty body is an empty protobuf message: all its fields at their defaults.
    assert_eq!(code(b"", Some(Format::Protobuf)), Err("missing_event_type"));
    assert_eq!(code(b"", Some(Format::Json)), Err("not_json"));
    // A protobuf event whose first field on the wire is not field 1, and whose bytes all look
    // like text (every key and length a printable character): only the hint tells.
    let printable = printable_protobuf_answered();
    assert!(std::str::from_utf8(&printable).is_ok());
    assert_eq!(
        code(&printable, Some(Format::Protobuf)),
        Ok(Format::Protobuf)
    );
    assert_eq!(code(&printable, None), Err("not_json"));
    assert_eq!(code(&printable, Some(Format::Json)), Err("not_json"));
}

/// A `GenericEvent` `call.answered` written tenant first (field 4: key `"`, a 32-byte value,
/// so its length is a space), then the event type (key `\n`, length 13 = `\r`), then the
/// payload (key `*`): printable UTF-8 from end to end, a valid protobuf event all the same.
fn printable_protobuf_answered() -> Vec<u8> {
    let tenant = "sentiric_demo_tenant_eu_west_001";
    assert_eq!(tenant.len(), 0x20);
    let payload = format!(r#"{{"callId":"{CALL_ID}"}}"#);
    assert!((0x20..0x7f).contains(&payload.len()));
    let body = Wire::new()
        .string(4, tenant)
        .string(1, "call.answered")
        .string(5, &payload)
        .into_bytes();
    assert!(
        body.iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\n' || b == b'\r'),
        "{body:?}"
    );
    body
}

#[test]
fn the_printable_protobuf_event_decodes_as_announced() {
    let e = decodes_hinted_protobuf(&printable_protobuf_answered());
    assert_eq!(e.call_id, CALL_ID);
    assert_eq!(e.kind, EventKind::Answered);
    assert!(e.timestamp_inferred);
}

fn decodes_hinted_protobuf(body: &[u8]) -> Envelope {
    decode_hinted(body, Some(Format::Protobuf), received_at(), LIMITS).expect("decodes")
}
