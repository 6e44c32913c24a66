//! Decoding of every event and every producer variant in `EVENTS.md`, from JSON fixtures under
//! `tests/fixtures/`, through the public API only (`event::decode`, `EventKind::from_payload`).
//! No database, no broker.
//!
//! `tests/fixtures/events/` holds one realistic message per accepted variant;
//! `tests/fixtures/bad/` holds one message per class of input that must be rejected.
//! Invalid UTF-8, oversize and depth-boundary bodies are generated here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cdr_service::event::{
    DialogTurn, Envelope, EventKind, Identity, Limits, MAX_CALL_ID_LEN, Reject, Started, Usage,
    decode,
};
use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
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

/// Every fixture that must decode. Kept in sync with the directory by
/// `every_fixture_file_is_listed_and_every_listed_fixture_exists`.
const EVENT_FIXTURES: &[&str] = &[
    "call_answered.json",
    "call_answered_extra_keys.json",
    "call_ended_with_reason.json",
    "call_ended_without_reason.json",
    "call_id_255_chars.json",
    "call_started_camel.json",
    "call_started_empty_rtp_addr.json",
    "call_started_guest_dialplan.json",
    "call_started_no_timestamp.json",
    "call_started_null_rtp.json",
    "call_started_snake_dialplan.json",
    "call_started_snake_user_only.json",
    "call_started_uri_keys.json",
    "dialog_turn.json",
    "recording_available.json",
    "terminate_request_no_timestamp.json",
    "timestamp_go_z_trimmed_1_digit.json",
    "timestamp_go_z_trimmed_5_digits.json",
    "timestamp_go_z_trimmed_8_digits.json",
    "timestamp_go_z_whole_seconds.json",
    "timestamp_rust_0_digits.json",
    "timestamp_rust_3_digits.json",
    "timestamp_rust_6_digits.json",
    "timestamp_rust_9_digits.json",
    "unknown_call_scoped_event.json",
    "usage_reported.json",
    "usage_reported_no_id.json",
    "user_created_for_call_alias.json",
    "user_identified.json",
    "user_identified_dot_alias.json",
];

/// Every fixture that must be rejected, with the `Reject::as_code()` it must produce.
const BAD_FIXTURES: &[(&str, &str)] = &[
    ("bad_timestamp.json", "bad_timestamp"),
    ("blank_call_id.json", "invalid_call_id"),
    ("call_id_control_char.json", "invalid_call_id"),
    ("call_id_format_char.json", "invalid_call_id"),
    ("call_id_number.json", "invalid_call_id"),
    ("call_id_too_long.json", "invalid_call_id"),
    ("call_id_zero_width_space.json", "invalid_call_id"),
    ("deep_nesting.json", "too_deep"),
    ("empty_call_id.json", "invalid_call_id"),
    ("empty_event_type.json", "invalid_event_type"),
    ("event_type_number.json", "invalid_event_type"),
    ("json_array.json", "not_object"),
    ("json_null.json", "not_object"),
    ("json_number.json", "not_object"),
    ("json_string.json", "not_object"),
    ("missing_call_id.json", "missing_call_id"),
    ("missing_event_type.json", "missing_event_type"),
    ("not_json.txt", "not_json"),
    ("nul_char.json", "nul_character"),
    ("null_call_id.json", "missing_call_id"),
    ("timestamp_number.json", "bad_timestamp"),
    ("truncated_json.json", "not_json"),
];

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_fixture(rel: &str) -> Vec<u8> {
    let path = fixtures_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {rel}: cannot read {path:?}: {e}"))
}

/// The receive time handed to `decode`: distinct from every fixture timestamp, with nanoseconds,
/// so a receive time standing in for (or leaking into) a timestamp is visible.
fn received_at() -> DateTime<Utc> {
    at(2025, 9, 24, 10, 7, 30, 424_242_424)
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + Duration::nanoseconds(nanos)
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(text).unwrap() {
        Value::Object(o) => o,
        other => panic!("not an object: {other}"),
    }
}

/// Decodes an accepted fixture and checks what holds for every accepted message: the body is
/// kept byte for byte, its hash is its SHA-256, the receive time is kept, and reading the stored
/// body back with `EventKind::from_payload` gives the same kind (a call rebuilt from the log
/// folds exactly as it did live).
fn decode_event(name: &str) -> Envelope {
    let rel = format!("events/{name}");
    let bytes = read_fixture(&rel);
    let env = decode(&bytes, received_at(), LIMITS).unwrap_or_else(|r| {
        panic!(
            "fixture {rel} was rejected ({}): {r}; it must decode",
            r.as_code()
        )
    });
    assert_eq!(
        &env.body[..],
        &bytes[..],
        "fixture {rel}: body not kept as received"
    );
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    assert_eq!(env.body_hash, hash, "fixture {rel}: body_hash");
    assert_eq!(env.received_at, received_at(), "fixture {rel}: received_at");
    let replayed = EventKind::from_payload(&env.event_type, &object(env.payload_json()));
    assert_eq!(
        replayed, env.kind,
        "fixture {rel}: from_payload on the stored body disagrees with decode"
    );
    env
}

fn reject_bad(name: &str) -> Reject {
    let rel = format!("bad/{name}");
    let bytes = read_fixture(&rel);
    match decode(&bytes, received_at(), LIMITS) {
        Ok(env) => panic!(
            "fixture {rel} was accepted as {} (call {:?}); it must be rejected",
            env.kind.name(),
            env.call_id
        ),
        Err(r) => r,
    }
}

fn started(env: &Envelope) -> &Started {
    match &env.kind {
        EventKind::Started(s) => s,
        other => panic!("expected call.started, got {other:?}"),
    }
}

fn body_value(env: &Envelope) -> Value {
    serde_json::from_str(env.payload_json()).expect("stored body must be JSON")
}

fn padding_head() -> String {
    format!(r#"{{"eventType":"call.answered","callId":"{CALL_ID}","padding":""#)
}

const PADDING_TAIL: &str = r#""}"#;

/// Pads an event with an unknown key so that the body is exactly `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let head = padding_head();
    let tail = PADDING_TAIL;
    assert!(len >= head.len() + tail.len());
    let mut body = head.into_bytes();
    body.resize(len - tail.len(), b'x');
    body.extend_from_slice(tail.as_bytes());
    assert_eq!(body.len(), len);
    body
}

fn nested_body(depth: usize) -> String {
    // The top-level object is level 1; `depth - 1` arrays nest inside it.
    format!(
        r#"{{"eventType":"call.answered","callId":"{CALL_ID}","n":{}1{}}}"#,
        "[".repeat(depth - 1),
        "]".repeat(depth - 1)
    )
}

// ---------------------------------------------------------------------------------------------
// fixture inventory
// ---------------------------------------------------------------------------------------------

fn list_dir(sub: &str) -> BTreeSet<String> {
    std::fs::read_dir(fixtures_dir().join(sub))
        .unwrap_or_else(|e| panic!("tests/fixtures/{sub}: {e}"))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

#[test]
fn every_fixture_file_is_listed_and_every_listed_fixture_exists() {
    let listed: BTreeSet<String> = EVENT_FIXTURES.iter().map(|s| s.to_string()).collect();
    assert_eq!(list_dir("events"), listed, "tests/fixtures/events");
    let listed: BTreeSet<String> = BAD_FIXTURES.iter().map(|(s, _)| s.to_string()).collect();
    assert_eq!(list_dir("bad"), listed, "tests/fixtures/bad");
}

#[test]
fn every_event_fixture_decodes() {
    for name in EVENT_FIXTURES {
        let env = decode_event(name);
        assert!(!env.call_id.is_empty(), "fixture events/{name}: call_id");
    }
}

#[test]
fn every_bad_fixture_is_rejected_with_its_code() {
    for (name, code) in BAD_FIXTURES {
        let reject = reject_bad(name);
        assert_eq!(reject.as_code(), *code, "fixture bad/{name}: {reject}");
    }
}

#[test]
fn the_event_fixtures_cover_every_event_kind_of_events_md() {
    let names: BTreeSet<&str> = EVENT_FIXTURES
        .iter()
        .map(|name| decode_event(name).kind.name())
        .collect();
    let expected: BTreeSet<&str> = cdr_service::event::EventKind::NAMES.into_iter().collect();
    assert_eq!(names, expected);
}

// ---------------------------------------------------------------------------------------------
// call.started, every producer variant
// ---------------------------------------------------------------------------------------------

#[test]
fn call_started_camel_case() {
    let env = decode_event("call_started_camel.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.event_type, "call.started");
    assert_eq!(env.kind.name(), "call.started");
    assert_eq!(env.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 2, 123_456_789));
    assert!(!env.timestamp_inferred);
    assert_eq!(
        *started(&env),
        Started {
            from_uri: Some("<sip:905551234567@203.0.113.5>;tag=abc".into()),
            to_uri: Some("<sip:902124440000@198.51.100.7>".into()),
            caller_number: Some("905551234567".into()),
            callee_number: Some("902124440000".into()),
            server_rtp_port: Some(10042),
            caller_rtp_addr: Some("203.0.113.5:40000".into()),
            dialplan_identity: Identity {
                user_id: Some(uuid(USER_ID)),
                contact_id: Some(42),
                tenant_id: Some(TENANT.into()),
            },
            inbound: true,
        }
    );
}

#[test]
fn call_started_uri_keys_media_info_and_dialplan_resolution() {
    let env = decode_event("call_started_uri_keys.json");
    assert_eq!(env.call_id, "3848276298220188511@203.0.113.9");
    assert_eq!(env.kind.name(), "call.started");
    assert_eq!(env.trace_id.as_deref(), Some("trace-Zz98Yy76Xx54"));
    // Go style: `Z`, six trimmed digits.
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 2, 123_456_000));
    assert!(!env.timestamp_inferred);
    assert_eq!(
        *started(&env),
        Started {
            from_uri: Some(
                "\"Mehmet Demir\" <sip:905321112233@203.0.113.9;transport=udp>;tag=9fxced76sl"
                    .into()
            ),
            to_uri: Some("<sip:902124440000@198.51.100.7>;tag=as6f1b2c3d".into()),
            caller_number: Some("905321112233".into()),
            callee_number: Some("902124440000".into()),
            server_rtp_port: Some(10100),
            caller_rtp_addr: Some("203.0.113.9:31000".into()),
            dialplan_identity: Identity {
                user_id: Some(uuid("9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d")),
                contact_id: Some(7),
                tenant_id: Some("acme_corp".into()),
            },
            inbound: true,
        }
    );
}

#[test]
fn call_started_snake_case_media_and_dialplan() {
    let env = decode_event("call_started_snake_dialplan.json");
    assert_eq!(env.call_id, "f81d4fae7dec11d0a76500a0c91e6bf6@198.51.100.7");
    assert_eq!(env.kind.name(), "call.started");
    assert_eq!(env.trace_id.as_deref(), Some("trace-Old0Prod1234"));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 2, 123_456_000));
    assert!(!env.timestamp_inferred);
    assert_eq!(
        *started(&env),
        Started {
            from_uri: Some("<sip:905059876543@203.0.113.20>;tag=1928301774".into()),
            to_uri: Some("<sip:902124440001@198.51.100.7>".into()),
            caller_number: Some("905059876543".into()),
            callee_number: Some("902124440001".into()),
            server_rtp_port: Some(10200),
            caller_rtp_addr: Some("203.0.113.20:20000".into()),
            dialplan_identity: Identity {
                user_id: Some(uuid("c56a4180-65aa-42ec-a945-5fd21dec0538")),
                contact_id: Some(1001),
                tenant_id: Some("legacy_tenant".into()),
            },
            inbound: true,
        }
    );
}

#[test]
fn call_started_snake_case_matched_user_without_contact_or_route() {
    // Old producer: no dialplan-level tenant, no matched contact, null inbound route; the user
    // and the tenant can only come from `matched_user`.
    let env = decode_event("call_started_snake_user_only.json");
    assert_eq!(env.call_id, "0e1f2a3b4c5d@198.51.100.7");
    assert_eq!(env.trace_id.as_deref(), Some("trace-Old0Prod5678"));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 6, 0, 1));
    assert!(!env.timestamp_inferred);
    assert_eq!(
        *started(&env),
        Started {
            from_uri: Some("<sip:905301112299@203.0.113.21>;tag=77aa".into()),
            to_uri: Some("<sip:902124440001@198.51.100.7>".into()),
            caller_number: Some("905301112299".into()),
            callee_number: Some("902124440001".into()),
            server_rtp_port: Some(10202),
            caller_rtp_addr: None,
            dialplan_identity: Identity {
                user_id: Some(uuid("16fd2706-8baf-433b-82eb-8c7fada847da")),
                contact_id: None,
                tenant_id: Some("legacy_tenant".into()),
            },
            inbound: false,
        }
    );
}

#[test]
fn call_started_guest_dialplan_has_tenant_but_no_user() {
    let env = decode_event("call_started_guest_dialplan.json");
    assert_eq!(env.call_id, "5e3b1c2a9d@198.51.100.7");
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 5, 0, 500_000_000));
    assert!(!env.timestamp_inferred);
    let s = started(&env);
    assert_eq!(s.caller_number.as_deref(), Some("905441230000"));
    assert_eq!(s.callee_number.as_deref(), Some("902124440000"));
    assert_eq!(s.server_rtp_port, Some(10300));
    assert_eq!(s.caller_rtp_addr.as_deref(), Some("203.0.113.77:5004"));
    assert_eq!(
        s.dialplan_identity,
        Identity {
            user_id: None,
            contact_id: None,
            tenant_id: Some(TENANT.into()),
        }
    );
    assert!(s.inbound);
}

#[test]
fn call_started_without_timestamp_uses_the_receive_time() {
    let env = decode_event("call_started_no_timestamp.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind.name(), "call.started");
    assert_eq!(env.trace_id.as_deref(), Some(TRACE_ID));
    assert!(env.timestamp_inferred);
    assert_eq!(env.timestamp, received_at());
    assert!(body_value(&env).get("timestamp").is_none());
    let s = started(&env);
    assert_eq!(s.caller_number.as_deref(), Some("905551234567"));
    assert_eq!(s.callee_number.as_deref(), Some("902124440000"));
    assert_eq!(s.server_rtp_port, Some(10042));
    // No dialplan in this producer's message: nothing identifies the call, no inbound route.
    assert!(s.dialplan_identity.is_empty());
    assert!(!s.inbound);
}

#[test]
fn call_started_null_caller_rtp_addr() {
    let env = decode_event("call_started_null_rtp.json");
    assert_eq!(env.call_id, "b2c3d4e5f6a7@198.51.100.7");
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 2, 123_000_000));
    assert!(!env.timestamp_inferred);
    let s = started(&env);
    assert_eq!(s.server_rtp_port, Some(10044));
    assert_eq!(s.caller_rtp_addr, None);
    assert_eq!(s.caller_number.as_deref(), Some("905551234567"));
    assert_eq!(body_value(&env)["media"]["callerRtpAddr"], Value::Null);
}

#[test]
fn call_started_empty_caller_rtp_addr() {
    let env = decode_event("call_started_empty_rtp_addr.json");
    assert_eq!(env.call_id, "c3d4e5f6a7b8@198.51.100.7");
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 2, 0));
    assert!(!env.timestamp_inferred);
    let s = started(&env);
    assert_eq!(s.server_rtp_port, Some(10046));
    assert_eq!(s.caller_rtp_addr, None);
    assert_eq!(body_value(&env)["mediaInfo"]["callerRtpAddr"], json!(""));
}

// ---------------------------------------------------------------------------------------------
// the other events
// ---------------------------------------------------------------------------------------------

#[test]
fn call_answered() {
    let env = decode_event("call_answered.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.event_type, "call.answered");
    assert_eq!(env.kind, EventKind::Answered);
    assert_eq!(env.kind.name(), "call.answered");
    assert_eq!(env.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 5, 250_000_000));
    assert!(!env.timestamp_inferred);
}

#[test]
fn known_event_with_unknown_extra_keys_keeps_them() {
    let env = decode_event("call_answered_extra_keys.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind, EventKind::Answered);
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 5, 250_000_000));
    let body = body_value(&env);
    assert_eq!(body["sipStatus"], json!(200));
    assert_eq!(body["producerVersion"], json!("signaling-1.4.2"));
    assert_eq!(body["x-debug"]["node"], json!("sbc-eu-1"));
    assert_eq!(body["x-debug"]["hops"], json!([1, 2]));
}

fn expected_identity() -> EventKind {
    EventKind::Identified(Identity {
        user_id: Some(uuid(USER_ID)),
        contact_id: Some(42),
        tenant_id: Some(TENANT.into()),
    })
}

#[test]
fn user_identified_for_call() {
    let env = decode_event("user_identified.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.event_type, "user.identified.for_call");
    assert_eq!(env.kind.name(), "user.identified.for_call");
    assert_eq!(env.kind, expected_identity());
    assert_eq!(env.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 3, 500_000_000));
    assert!(!env.timestamp_inferred);
}

#[test]
fn user_created_for_call_alias_without_timestamp() {
    let env = decode_event("user_created_for_call_alias.json");
    assert_eq!(env.call_id, CALL_ID);
    // The raw name is kept; the kind folds the alias.
    assert_eq!(env.event_type, "user.created.for_call");
    assert_eq!(env.kind.name(), "user.identified.for_call");
    assert_eq!(env.kind, expected_identity());
    assert!(env.timestamp_inferred);
    assert_eq!(env.timestamp, received_at());
}

#[test]
fn user_identified_dot_alias() {
    let env = decode_event("user_identified_dot_alias.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.event_type, "user.identified.for.call");
    assert_eq!(env.kind.name(), "user.identified.for_call");
    assert_eq!(env.kind, expected_identity());
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 1, 3, 500_000_000));
    assert!(!env.timestamp_inferred);
}

#[test]
fn recording_available() {
    let env = decode_event("recording_available.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind.name(), "call.recording.available");
    assert_eq!(
        env.kind,
        EventKind::RecordingAvailable {
            uri: Some(
                "s3://sentiric-recordings/sentiric_demo/a84b4c76e66710@198.51.100.7.wav".into()
            )
        }
    );
    assert_eq!(env.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 4, 41, 987_654_321));
    assert!(!env.timestamp_inferred);
}

#[test]
fn call_ended_with_reason() {
    let env = decode_event("call_ended_with_reason.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind.name(), "call.ended");
    assert_eq!(
        env.kind,
        EventKind::Ended {
            reason: Some("normal_clearing_by_user".into())
        }
    );
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 3, 12, 750_000_000));
    assert!(!env.timestamp_inferred);
}

#[test]
fn call_ended_without_reason() {
    let env = decode_event("call_ended_without_reason.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind, EventKind::Ended { reason: None });
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 3, 12, 0));
    assert!(!env.timestamp_inferred);
}

#[test]
fn call_ended_every_reason_seen_in_the_wild() {
    for reason in [
        "normal_clearing",
        "normal_clearing_by_user",
        "terminated_by_request",
        "system_terminated",
        "busy",
        "user_busy",
        "failure",
        "network_failure",
    ] {
        let body = format!(
            r#"{{"eventType":"call.ended","traceId":"{TRACE_ID}","callId":"{CALL_ID}","timestamp":"2025-09-24T10:03:12Z","reason":"{reason}"}}"#
        );
        let env = decode(body.as_bytes(), received_at(), LIMITS)
            .unwrap_or_else(|r| panic!("reason {reason}: rejected: {r}"));
        assert_eq!(
            env.kind,
            EventKind::Ended {
                reason: Some(reason.into())
            },
            "reason {reason}"
        );
    }
}

#[test]
fn terminate_request_without_timestamp() {
    let env = decode_event("terminate_request_no_timestamp.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.event_type, "call.terminate.request");
    assert_eq!(env.kind, EventKind::TerminateRequested);
    assert_eq!(env.kind.name(), "call.terminate.request");
    assert_eq!(env.trace_id, None);
    assert!(env.timestamp_inferred);
    assert_eq!(env.timestamp, received_at());
}

#[test]
fn dialog_turn_completed() {
    let env = decode_event("dialog_turn.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind.name(), "dialog.turn.completed");
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 2, 10, 1_000_000));
    assert!(!env.timestamp_inferred);
    assert_eq!(
        env.kind,
        EventKind::DialogTurn(Box::new(DialogTurn {
            turn_index: 2,
            user_text: Some("Randevumu yarına alabilir miyim?".into()),
            ai_text: Some("Tabii, yarın saat 14:00 için randevunuzu güncelledim.".into()),
            rag_sources: json!([
                {"documentId": "kb-appointments-001", "score": 0.87},
                "kb-faq-12"
            ]),
            stt_ms: Some(312),
            llm_ms: Some(1450),
            tts_ms: Some(280),
        }))
    );
}

#[test]
fn usage_reported_with_usage_id() {
    let env = decode_event("usage_reported.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind.name(), "cost.usage.reported");
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 2, 11, 0));
    assert!(!env.timestamp_inferred);
    assert_eq!(
        env.kind,
        EventKind::UsageReported(Usage {
            usage_id: Some("5f0c6a8e-2d3b-4c1a-9e7f-0a1b2c3d4e5f".into()),
            service: Some("stt-whisper-service".into()),
            resource_type: "stt_second".into(),
            quantity: Decimal::from_str("12.5").unwrap(),
        })
    );
}

#[test]
fn usage_reported_without_usage_id() {
    let env = decode_event("usage_reported_no_id.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 2, 11, 500_000_000));
    assert_eq!(
        env.kind,
        EventKind::UsageReported(Usage {
            usage_id: None,
            service: Some("llm-gateway-service".into()),
            resource_type: "llm_token".into(),
            quantity: Decimal::from(1532),
        })
    );
}

#[test]
fn unknown_call_scoped_event_is_kept_raw() {
    let env = decode_event("unknown_call_scoped_event.json");
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.event_type, "call.transfer.requested");
    assert_eq!(env.kind, EventKind::Other);
    assert_eq!(env.kind.name(), "other");
    assert_eq!(env.trace_id.as_deref(), Some(TRACE_ID));
    assert_eq!(env.timestamp, at(2025, 9, 24, 10, 2, 30, 0));
    assert!(!env.timestamp_inferred);
    let body = body_value(&env);
    assert_eq!(body["targetUri"], json!("sip:902124449999@198.51.100.7"));
    assert_eq!(body["requestedBy"], json!("agent-service"));
    assert_eq!(body["metadata"]["reason"], json!("caller_asked_for_human"));
}

#[test]
fn call_id_of_exactly_255_characters_is_accepted() {
    let env = decode_event("call_id_255_chars.json");
    assert_eq!(env.call_id.chars().count(), MAX_CALL_ID_LEN);
    assert!(env.call_id.ends_with("@198.51.100.7"));
    assert_eq!(env.kind, EventKind::Answered);
}

// ---------------------------------------------------------------------------------------------
// timestamps in both producer styles
// ---------------------------------------------------------------------------------------------

fn assert_timestamp(name: &str, nanos: i64) {
    let env = decode_event(name);
    assert_eq!(
        env.timestamp,
        at(2025, 9, 24, 10, 1, 2, nanos),
        "fixture events/{name}"
    );
    assert_eq!(
        i64::from(env.timestamp.timestamp_subsec_nanos()),
        nanos,
        "fixture events/{name}"
    );
    assert!(!env.timestamp_inferred, "fixture events/{name}");
    assert_eq!(env.kind, EventKind::Answered, "fixture events/{name}");
}

#[test]
fn timestamp_rust_no_fraction() {
    assert_timestamp("timestamp_rust_0_digits.json", 0);
}

#[test]
fn timestamp_rust_3_digits() {
    assert_timestamp("timestamp_rust_3_digits.json", 123_000_000);
}

#[test]
fn timestamp_rust_6_digits() {
    assert_timestamp("timestamp_rust_6_digits.json", 123_456_000);
}

#[test]
fn timestamp_rust_9_digits() {
    assert_timestamp("timestamp_rust_9_digits.json", 123_456_789);
}

#[test]
fn timestamp_go_z_whole_seconds() {
    assert_timestamp("timestamp_go_z_whole_seconds.json", 0);
}

#[test]
fn timestamp_go_z_trimmed_to_1_digit() {
    assert_timestamp("timestamp_go_z_trimmed_1_digit.json", 100_000_000);
}

#[test]
fn timestamp_go_z_trimmed_to_5_digits() {
    assert_timestamp("timestamp_go_z_trimmed_5_digits.json", 123_450_000);
}

#[test]
fn timestamp_go_z_trimmed_to_8_digits() {
    assert_timestamp("timestamp_go_z_trimmed_8_digits.json", 123_456_780);
}

#[test]
fn empty_or_null_timestamp_counts_as_absent() {
    for ts in [r#""""#, "null"] {
        let body =
            format!(r#"{{"eventType":"call.answered","callId":"{CALL_ID}","timestamp":{ts}}}"#);
        let env = decode(body.as_bytes(), received_at(), LIMITS)
            .unwrap_or_else(|r| panic!("timestamp {ts}: rejected: {r}"));
        assert!(env.timestamp_inferred, "timestamp {ts}");
        assert_eq!(env.timestamp, received_at(), "timestamp {ts}");
    }
}

// ---------------------------------------------------------------------------------------------
// EventKind::from_payload: dialplan identity fallbacks
// ---------------------------------------------------------------------------------------------

fn dialplan_identity(dialplan: Value) -> Identity {
    let payload = json!({
        "eventType": "call.started",
        "callId": CALL_ID,
        "from": "<sip:905551234567@203.0.113.5>;tag=abc",
        "dialplan": dialplan,
    });
    let Value::Object(o) = payload else {
        unreachable!()
    };
    match EventKind::from_payload("call.started", &o) {
        EventKind::Started(s) => s.dialplan_identity,
        other => panic!("expected call.started, got {other:?}"),
    }
}

#[test]
fn dialplan_user_comes_from_the_matched_contact_when_no_matched_user() {
    let identity = dialplan_identity(json!({
        "dialplanId": "DP_DEMO_WELCOME",
        "tenantId": TENANT,
        "matchedUser": null,
        "matchedContact": {"id": 42, "userId": USER_ID, "contactType": "phone",
                           "contactValue": "905551234567", "isPrimary": true},
    }));
    assert_eq!(
        identity,
        Identity {
            user_id: Some(uuid(USER_ID)),
            contact_id: Some(42),
            tenant_id: Some(TENANT.into()),
        }
    );
}

#[test]
fn dialplan_tenant_falls_back_to_matched_user_then_inbound_route() {
    let from_user = dialplan_identity(json!({
        "matchedUser": {"id": USER_ID, "tenantId": "tenant_from_user"},
        "inboundRoute": {"phoneNumber": "902124440000", "tenantId": "tenant_from_route"},
    }));
    assert_eq!(from_user.tenant_id.as_deref(), Some("tenant_from_user"));
    assert_eq!(from_user.user_id, Some(uuid(USER_ID)));

    let from_route = dialplan_identity(json!({
        "inbound_route": {"phone_number": "902124440000", "tenant_id": "tenant_from_route"},
    }));
    assert_eq!(
        from_route,
        Identity {
            user_id: None,
            contact_id: None,
            tenant_id: Some("tenant_from_route".into()),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// bad inputs, one per class
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_not_json() {
    let r = reject_bad("not_json.txt");
    assert!(matches!(r, Reject::NotJson(_)), "{r:?}");
    assert_eq!(r.as_code(), "not_json");
}

#[test]
fn bad_truncated_json() {
    let r = reject_bad("truncated_json.json");
    assert!(matches!(r, Reject::NotJson(_)), "{r:?}");
    assert_eq!(r.as_code(), "not_json");
}

#[test]
fn bad_json_array() {
    let r = reject_bad("json_array.json");
    assert_eq!(r, Reject::NotObject("an array"));
    assert_eq!(r.as_code(), "not_object");
}

#[test]
fn bad_json_string() {
    let r = reject_bad("json_string.json");
    assert_eq!(r, Reject::NotObject("a string"));
    assert_eq!(r.as_code(), "not_object");
}

#[test]
fn bad_json_number() {
    let r = reject_bad("json_number.json");
    assert_eq!(r, Reject::NotObject("a number"));
    assert_eq!(r.as_code(), "not_object");
}

#[test]
fn bad_json_null() {
    let r = reject_bad("json_null.json");
    assert_eq!(r, Reject::NotObject("null"));
    assert_eq!(r.as_code(), "not_object");
}

#[test]
fn bad_missing_call_id() {
    let r = reject_bad("missing_call_id.json");
    assert_eq!(r, Reject::MissingCallId);
    assert_eq!(r.as_code(), "missing_call_id");
}

#[test]
fn bad_null_call_id() {
    let r = reject_bad("null_call_id.json");
    assert_eq!(r, Reject::MissingCallId);
    assert_eq!(r.as_code(), "missing_call_id");
}

#[test]
fn bad_empty_call_id() {
    let r = reject_bad("empty_call_id.json");
    assert_eq!(r, Reject::InvalidCallId("is empty".into()));
    assert_eq!(r.as_code(), "invalid_call_id");
}

#[test]
fn bad_blank_call_id() {
    let r = reject_bad("blank_call_id.json");
    assert_eq!(r, Reject::InvalidCallId("is empty".into()));
    assert_eq!(r.as_code(), "invalid_call_id");
}

#[test]
fn bad_call_id_over_255_characters() {
    let r = reject_bad("call_id_too_long.json");
    assert_eq!(
        r,
        Reject::InvalidCallId("is 256 characters, over 255".into())
    );
    assert_eq!(r.as_code(), "invalid_call_id");
}

#[test]
fn bad_call_id_is_a_number() {
    let r = reject_bad("call_id_number.json");
    assert_eq!(
        r,
        Reject::InvalidCallId("must be a string, found a number".into())
    );
    assert_eq!(r.as_code(), "invalid_call_id");
}

#[test]
fn bad_call_id_with_control_character() {
    let r = reject_bad("call_id_control_char.json");
    assert_eq!(r, Reject::InvalidCallId("holds control characters".into()));
    assert_eq!(r.as_code(), "invalid_call_id");
}

#[test]
fn bad_missing_event_type() {
    let r = reject_bad("missing_event_type.json");
    assert_eq!(r, Reject::MissingEventType);
    assert_eq!(r.as_code(), "missing_event_type");
}

#[test]
fn bad_event_type_is_a_number() {
    let r = reject_bad("event_type_number.json");
    assert_eq!(r, Reject::InvalidEventType("a number 7".into()));
    assert_eq!(r.as_code(), "invalid_event_type");
}

#[test]
fn bad_empty_event_type() {
    let r = reject_bad("empty_event_type.json");
    assert_eq!(r, Reject::InvalidEventType(r#"a string """#.into()));
    assert_eq!(r.as_code(), "invalid_event_type");
}

#[test]
fn bad_timestamp_not_rfc3339() {
    let r = reject_bad("bad_timestamp.json");
    match &r {
        Reject::BadTimestamp(msg) => assert!(msg.contains("24/09/2025 10:01"), "{msg}"),
        other => panic!("expected BadTimestamp, got {other:?}"),
    }
    assert_eq!(r.as_code(), "bad_timestamp");
}

#[test]
fn bad_timestamp_is_a_number() {
    let r = reject_bad("timestamp_number.json");
    assert_eq!(r, Reject::BadTimestamp("a number 1758708062".into()));
    assert_eq!(r.as_code(), "bad_timestamp");
}

#[test]
fn bad_nul_character_in_a_string() {
    let r = reject_bad("nul_char.json");
    assert_eq!(r, Reject::NulCharacter);
    assert_eq!(r.as_code(), "nul_character");
}

#[test]
fn bad_nesting_deeper_than_32() {
    let r = reject_bad("deep_nesting.json");
    assert_eq!(r, Reject::TooDeep(32));
    assert_eq!(r.as_code(), "too_deep");
}

#[test]
fn nesting_of_exactly_the_limit_is_accepted_and_one_more_is_not() {
    let ok = nested_body(32);
    let env = decode(ok.as_bytes(), received_at(), LIMITS)
        .unwrap_or_else(|r| panic!("depth 32 rejected: {r}"));
    assert_eq!(env.call_id, CALL_ID);
    let too_deep = nested_body(33);
    let r = decode(too_deep.as_bytes(), received_at(), LIMITS).unwrap_err();
    assert_eq!(r, Reject::TooDeep(32));
    assert_eq!(r.as_code(), "too_deep");
}

#[test]
fn bad_invalid_utf8() {
    let mut body =
        format!(r#"{{"eventType":"call.ended","callId":"{CALL_ID}","reason":"busy"#).into_bytes();
    let bad_at = body.len();
    body.push(0xFF);
    body.extend_from_slice(br#""}"#);
    let r = decode(&body, received_at(), LIMITS).unwrap_err();
    assert_eq!(r, Reject::InvalidUtf8(bad_at));
    assert_eq!(r.as_code(), "invalid_utf8");
}

#[test]
fn bad_invalid_utf8_in_a_real_fixture() {
    // A Latin-1 "ı" instead of UTF-8 in the middle of the dialog turn's text.
    let mut body = read_fixture("events/dialog_turn.json");
    let text_at = body
        .windows(4)
        .position(|w| w == b"Rand")
        .expect("fixture has the user text");
    body[text_at + 1] = 0xC3; // lead byte followed by an ASCII byte: invalid sequence
    let r = decode(&body, received_at(), LIMITS).unwrap_err();
    assert_eq!(r, Reject::InvalidUtf8(text_at + 1));
    assert_eq!(r.as_code(), "invalid_utf8");
}

#[test]
fn bad_oversize_body() {
    let limits = Limits {
        max_body_bytes: 2048,
        max_json_depth: 32,
    };
    let body = body_of_len(2049);
    let r = decode(&body, received_at(), limits).unwrap_err();
    assert_eq!(
        r,
        Reject::Oversize {
            size: 2049,
            limit: 2048
        }
    );
    assert_eq!(r.as_code(), "oversize");
}

#[test]
fn oversize_is_decided_before_the_body_is_read() {
    // Over the limit and not even UTF-8: the size alone rejects it.
    let limits = Limits {
        max_body_bytes: 1024,
        max_json_depth: 32,
    };
    let body = vec![0xFFu8; 5000];
    let r = decode(&body, received_at(), limits).unwrap_err();
    assert_eq!(
        r,
        Reject::Oversize {
            size: 5000,
            limit: 1024
        }
    );
    assert_eq!(r.as_code(), "oversize");
}

#[test]
fn body_of_exactly_the_limit_is_accepted() {
    let limits = Limits {
        max_body_bytes: 2048,
        max_json_depth: 32,
    };
    let body = body_of_len(2048);
    let env = decode(&body, received_at(), limits)
        .unwrap_or_else(|r| panic!("body of exactly max_body_bytes rejected: {r}"));
    assert_eq!(env.call_id, CALL_ID);
    assert_eq!(env.kind, EventKind::Answered);
    assert_eq!(env.body.len(), 2048);
    let padding = body_value(&env)["padding"].as_str().unwrap().to_owned();
    assert_eq!(
        padding.len(),
        2048 - padding_head().len() - PADDING_TAIL.len()
    );
    assert!(padding.bytes().all(|b| b == b'x'));
}
