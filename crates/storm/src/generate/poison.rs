//! Poison messages: one of each class of bad input the service dead-letters, each just past
//! the limit or the rule it breaks, in the wire format its producer meant.

use cdr_core::event::{self, Limits};
use cdr_core::proto::{CallEndedEvent, GenericEvent, Timestamp};
use chrono::{DateTime, Utc};
use prost::Message;
use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::json;

use super::PoisonClass;

/// One poison message: (routing key, body, whether its envelope names a usable call id).
pub(super) fn poison(
    class: PoisonClass,
    call_id: &str,
    limits: Limits,
    rng: &mut StdRng,
) -> (String, Vec<u8>, bool) {
    match class {
        PoisonClass::Oversize
        | PoisonClass::InvalidUtf8
        | PoisonClass::TooDeep
        | PoisonClass::NotJson
        | PoisonClass::NotObject => unreadable(class, call_id, limits, rng),
        PoisonClass::MissingEventType
        | PoisonClass::InvalidEventType
        | PoisonClass::MissingCallId
        | PoisonClass::InvalidCallId
        | PoisonClass::BadTimestamp
        | PoisonClass::NulCharacter => bad_envelope(class, call_id, rng),
        PoisonClass::BadProtobuf | PoisonClass::ProtobufMissingCallId => {
            bad_protobuf(class, call_id, rng)
        }
    }
}

/// A body the service cannot read as a JSON object within its limits.
fn unreadable(
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
        other => unreachable!("{other:?} is not an unreadable body"),
    }
}

/// A JSON object whose envelope breaks a rule: the event type, the call id, the timestamp.
fn bad_envelope(class: PoisonClass, call_id: &str, rng: &mut StdRng) -> (String, Vec<u8>, bool) {
    let rk = |s: &str| s.to_owned();
    match class {
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
        other => unreachable!("{other:?} is not an envelope fault"),
    }
}

/// A protobuf event that is broken (cut short, a field of a wire type that does not exist, a
/// `payload_json` that is not JSON), or a call event without a call id.
fn bad_protobuf(class: PoisonClass, call_id: &str, rng: &mut StdRng) -> (String, Vec<u8>, bool) {
    let at: DateTime<Utc> = "2025-09-24T10:01:02Z".parse().expect("a valid time");
    let ended = |call_id: &str| CallEndedEvent {
        event_type: "call.ended".into(),
        trace_id: "trace-Ab12Cd34Ef56".into(),
        call_id: call_id.into(),
        timestamp: Some(Timestamp::from(at)),
        reason: "normal_clearing".into(),
    };
    let answered = |trace_id: &str, payload_json: String| GenericEvent {
        event_type: "call.answered".into(),
        trace_id: trace_id.into(),
        timestamp: Some(Timestamp::from(at)),
        tenant_id: event::PLACEHOLDER_TENANT.into(),
        payload_json,
    };
    match class {
        PoisonClass::BadProtobuf => match rng.random_range(0..3) {
            0 => {
                // Cut inside its last field, the reason: never at a field's end.
                let mut body = ended(call_id).encode_to_vec();
                body.pop();
                ("call.ended".to_owned(), body, true)
            }
            1 => {
                // Field 1 again, with wire type 7, which does not exist.
                let mut body = ended(call_id).encode_to_vec();
                body.push(0x0f);
                ("call.ended".to_owned(), body, true)
            }
            _ => {
                let payload = format!(r#"{{"callId": "{call_id}""#);
                let body = answered(call_id, payload).encode_to_vec();
                ("call.answered".to_owned(), body, true)
            }
        },
        PoisonClass::ProtobufMissingCallId => {
            if rng.random_bool(0.5) {
                ("call.ended".to_owned(), ended("").encode_to_vec(), false)
            } else {
                // No callId in the payload, and no trace id to stand for it.
                let body = answered("", "{}".to_owned()).encode_to_vec();
                ("call.answered".to_owned(), body, false)
            }
        }
        other => unreachable!("{other:?} is not a protobuf fault"),
    }
}
