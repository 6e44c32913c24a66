//! The protobuf form of an event (`sentiric.event.v1`, EVENTS.md "The current wire format"):
//! what today's producer of an event type publishes where an older one published the JSON
//! event. The storm and `simulate` build every event as JSON first, so that an event and its
//! protobuf twin carry the same facts, and turn it into its twin here.
//!
//! Only the forms a current producer sends exist: the typed messages of `call.started`,
//! `call.ended`, `call.recording.available` and the identification, and `GenericEvent`s for
//! `call.answered`, `call.terminate.request`, and the agent and AI services' dialog turns and
//! usage reports (their JSON keys in `payload_json`). Unknown call-scoped events stay JSON.

use cdr_core::event::{PLACEHOLDER_TENANT, parse_timestamp};
use cdr_core::proto::{
    CallEndedEvent, CallRecordingAvailableEvent, CallStartedEvent, Contact, DialplanAction,
    GenericEvent, InboundRoute, MediaInfo, ResolveDialplanResponse, Timestamp, User,
    UserIdentifiedForCallEvent,
};
use prost::Message;
use serde_json::{Map, Value, json};

/// The content type of the older producers' JSON events.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// The content type the agent service sets on its protobuf events.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/protobuf";

/// The reason the agent service gives in `call.terminate.request` (EVENTS.md).
const TERMINATE_REASON: &str = "PIPELINE_ERROR";

/// An event as today's producer publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtobufEvent {
    pub body: Vec<u8>,
    /// The content type its producer sets: none from the signaling (B2BUA) and media services,
    /// `application/protobuf` from the agent service.
    pub content_type: Option<&'static str>,
}

/// The protobuf twin of a JSON event, or None when no current producer sends its event type
/// as protobuf. The JSON event is read in the forms the storm and `simulate` write (the
/// envelope's keys, `from`/`fromUri`, `media`/`mediaInfo` with camelCase or snake_case keys,
/// `dialplan`/`dialplanResolution` with camelCase keys); a key it lacks is left at its proto3
/// default, which the service reads as absent, as it reads the JSON event's missing key.
pub fn encode(event: &Value) -> Option<ProtobufEvent> {
    let o = event.as_object()?;
    let event_type = text(o, &["eventType"]);
    let (body, content_type) = match event_type.as_str() {
        "call.started" => (started(o).encode_to_vec(), None),
        "call.answered" => (answered(o).encode_to_vec(), None),
        "call.ended" => (ended(o).encode_to_vec(), None),
        "call.recording.available" => (recording(o).encode_to_vec(), None),
        "user.identified.for_call" | "user.created.for_call" => {
            (identified(o).encode_to_vec(), Some(PROTOBUF_CONTENT_TYPE))
        }
        "call.terminate.request" => (terminate(o).encode_to_vec(), Some(PROTOBUF_CONTENT_TYPE)),
        "dialog.turn.completed" | "cost.usage.reported" => {
            (with_payload(o).encode_to_vec(), Some(PROTOBUF_CONTENT_TYPE))
        }
        _ => return None,
    };
    Some(ProtobufEvent { body, content_type })
}

/// The first of `keys` that holds a string, or the empty string (proto3's "not set").
fn text(o: &Map<String, Value>, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned()
}

fn number(o: &Map<String, Value>, keys: &[&str]) -> i64 {
    keys.iter()
        .find_map(|k| o.get(*k).and_then(Value::as_i64))
        .unwrap_or_default()
}

fn object<'a>(o: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Map<String, Value>> {
    keys.iter()
        .find_map(|k| o.get(*k).and_then(Value::as_object))
}

/// The event's timestamp, to the nanosecond; None when it has none. The events this reads
/// were written by this crate, with valid timestamps.
fn timestamp(o: &Map<String, Value>) -> Option<Timestamp> {
    let s = o.get("timestamp").and_then(Value::as_str)?;
    let t = parse_timestamp(s).expect("a generated event's timestamp parses");
    Some(Timestamp::from(t))
}

fn started(o: &Map<String, Value>) -> CallStartedEvent {
    CallStartedEvent {
        event_type: text(o, &["eventType"]),
        trace_id: text(o, &["traceId"]),
        call_id: text(o, &["callId"]),
        from_uri: text(o, &["from", "fromUri"]),
        to_uri: text(o, &["to", "toUri"]),
        timestamp: timestamp(o),
        dialplan_resolution: object(o, &["dialplan", "dialplanResolution"]).map(dialplan),
        media_info: object(o, &["media", "mediaInfo"]).map(|m| MediaInfo {
            caller_rtp_addr: text(m, &["callerRtpAddr", "caller_rtp_addr"]),
            server_rtp_port: u32::try_from(number(m, &["serverRtpPort", "server_rtp_port"]))
                .unwrap_or_default(),
        }),
    }
}

/// `call.answered` has no message of its own: the signaling service sends a `GenericEvent`
/// whose trace id is the call id, with the placeholder tenant.
fn answered(o: &Map<String, Value>) -> GenericEvent {
    let call_id = text(o, &["callId"]);
    GenericEvent {
        event_type: text(o, &["eventType"]),
        trace_id: call_id.clone(),
        timestamp: timestamp(o),
        tenant_id: PLACEHOLDER_TENANT.to_owned(),
        payload_json: json!({ "callId": call_id }).to_string(),
    }
}

fn ended(o: &Map<String, Value>) -> CallEndedEvent {
    CallEndedEvent {
        event_type: text(o, &["eventType"]),
        trace_id: text(o, &["traceId"]),
        call_id: text(o, &["callId"]),
        timestamp: timestamp(o),
        reason: text(o, &["reason"]),
    }
}

fn recording(o: &Map<String, Value>) -> CallRecordingAvailableEvent {
    CallRecordingAvailableEvent {
        event_type: text(o, &["eventType"]),
        trace_id: text(o, &["traceId"]),
        call_id: text(o, &["callId"]),
        timestamp: timestamp(o),
        recording_uri: text(o, &["recordingUri"]),
        public_url: String::new(),
    }
}

/// The identified user and contact as messages, where the JSON event has them flat.
fn identified(o: &Map<String, Value>) -> UserIdentifiedForCallEvent {
    let user_id = text(o, &["userId"]);
    UserIdentifiedForCallEvent {
        event_type: text(o, &["eventType"]),
        trace_id: text(o, &["traceId"]),
        call_id: text(o, &["callId"]),
        timestamp: timestamp(o),
        user: Some(User {
            id: user_id.clone(),
            tenant_id: text(o, &["tenantId"]),
            ..User::default()
        }),
        contact: Some(Contact {
            id: i32::try_from(number(o, &["contactId"])).unwrap_or_default(),
            user_id,
            ..Contact::default()
        }),
    }
}

/// The agent's hang-up request: a `GenericEvent` whose payload names the call and the reason.
fn terminate(o: &Map<String, Value>) -> GenericEvent {
    GenericEvent {
        event_type: text(o, &["eventType"]),
        trace_id: text(o, &["traceId"]),
        timestamp: timestamp(o),
        tenant_id: String::new(),
        payload_json: json!({ "callId": text(o, &["callId"]), "reason": TERMINATE_REASON })
            .to_string(),
    }
}

/// An event without a message of its own, as the agent and AI services publish it: a
/// `GenericEvent` whose payload is the JSON event's keys other than the message's own fields
/// (the call id among them).
fn with_payload(o: &Map<String, Value>) -> GenericEvent {
    const OWN_FIELDS: [&str; 3] = ["eventType", "traceId", "timestamp"];
    let payload: Map<String, Value> = o
        .iter()
        .filter(|(k, _)| !OWN_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    GenericEvent {
        event_type: text(o, &["eventType"]),
        trace_id: text(o, &["traceId"]),
        timestamp: timestamp(o),
        tenant_id: String::new(),
        payload_json: Value::Object(payload).to_string(),
    }
}

fn dialplan(d: &Map<String, Value>) -> ResolveDialplanResponse {
    ResolveDialplanResponse {
        dialplan_id: text(d, &["dialplanId"]),
        tenant_id: text(d, &["tenantId"]),
        action: object(d, &["action"]).map(|a| DialplanAction {
            action: text(a, &["action"]),
            r#type: 0,
            action_data: object(a, &["actionData"])
                .and_then(|data| object(data, &["data"]))
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                })
                .collect(),
        }),
        matched_user: object(d, &["matchedUser"]).map(user),
        matched_contact: object(d, &["matchedContact"]).map(contact),
        inbound_route: object(d, &["inboundRoute"]).map(|r| InboundRoute {
            phone_number: text(r, &["phoneNumber"]),
            tenant_id: text(r, &["tenantId"]),
            ..InboundRoute::default()
        }),
    }
}

fn user(u: &Map<String, Value>) -> User {
    let optional = |key: &str| u.get(key).and_then(Value::as_str).map(str::to_owned);
    User {
        id: text(u, &["id"]),
        name: optional("name"),
        tenant_id: text(u, &["tenantId"]),
        user_type: text(u, &["userType"]),
        contacts: u
            .get("contacts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .map(contact)
            .collect(),
        preferred_language_code: optional("preferredLanguageCode"),
    }
}

fn contact(c: &Map<String, Value>) -> Contact {
    Contact {
        id: i32::try_from(number(c, &["id"])).unwrap_or_default(),
        user_id: text(c, &["userId"]),
        contact_type: text(c, &["contactType"]),
        contact_value: text(c, &["contactValue"]),
        is_primary: c
            .get("isPrimary")
            .and_then(Value::as_bool)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::SyntheticCall;
    use cdr_core::event::{self, Format, Limits};
    use cdr_core::merge::{CallEvent, CallState, PriceBook};
    use chrono::{DateTime, Utc};

    const LIMITS: Limits = Limits {
        max_body_bytes: 64 * 1024,
        max_json_depth: 32,
    };

    fn t0() -> DateTime<Utc> {
        "2025-09-24T10:00:00.123456789Z".parse().unwrap()
    }

    fn fold(bodies: &[Vec<u8>], format: Format) -> CallState {
        let events: Vec<CallEvent> = bodies
            .iter()
            .map(|body| {
                let e = event::decode(body, t0(), LIMITS).unwrap();
                assert_eq!(e.format, format, "{}", e.event_type);
                CallEvent::from(e)
            })
            .collect();
        CallState::fold(&events)
    }

    #[test]
    fn a_call_in_protobuf_folds_to_the_record_of_the_call_in_json() {
        let call = SyntheticCall::new("twin-1@198.51.100.7", t0());
        let events = call.events(true);
        let json: Vec<Vec<u8>> = events.iter().map(|e| e.to_string().into_bytes()).collect();
        let protobuf: Vec<Vec<u8>> = events.iter().map(|e| encode(e).unwrap().body).collect();
        let prices = PriceBook::default();
        let want = fold(&json, Format::Json).record(&call.call_id, &prices);
        assert_eq!(
            fold(&protobuf, Format::Protobuf).record(&call.call_id, &prices),
            want
        );
        assert!(
            want.user_id.is_some() && want.recording_url.is_some() && want.answer_time.is_some()
        );
    }

    #[test]
    fn each_event_goes_out_with_its_producers_content_type() {
        let call = SyntheticCall::new("twin-2@198.51.100.7", t0());
        let content_types: Vec<(String, Option<&str>)> = call
            .events(true)
            .iter()
            .map(|e| {
                (
                    e["eventType"].as_str().unwrap().to_owned(),
                    encode(e).unwrap().content_type,
                )
            })
            .collect();
        assert_eq!(
            content_types,
            [
                ("call.started".to_owned(), None),
                ("call.answered".to_owned(), None),
                (
                    "user.identified.for_call".to_owned(),
                    Some(PROTOBUF_CONTENT_TYPE)
                ),
                ("call.ended".to_owned(), None),
                ("call.recording.available".to_owned(), None),
            ]
        );
    }

    #[test]
    fn answered_and_the_hang_up_request_are_generic_events() {
        let call = SyntheticCall::new("twin-3@198.51.100.7", t0());
        let answered = GenericEvent::decode(&encode(&call.answered()).unwrap().body[..]).unwrap();
        assert_eq!(answered.trace_id, call.call_id);
        assert_eq!(answered.tenant_id, PLACEHOLDER_TENANT);
        assert_eq!(answered.payload_json, r#"{"callId":"twin-3@198.51.100.7"}"#);
        assert_eq!(
            answered.timestamp,
            Some(Timestamp::from(t0() + chrono::Duration::seconds(3)))
        );

        let request = json!({"eventType": "call.terminate.request", "callId": call.call_id});
        let encoded = encode(&request).unwrap();
        assert_eq!(encoded.content_type, Some(PROTOBUF_CONTENT_TYPE));
        let request = GenericEvent::decode(&encoded.body[..]).unwrap();
        assert_eq!(request.timestamp, None);
        let payload: Value = serde_json::from_str(&request.payload_json).unwrap();
        assert_eq!(
            payload,
            json!({"callId": call.call_id, "reason": TERMINATE_REASON})
        );
        let e = event::decode(&encoded.body, t0(), LIMITS).unwrap();
        assert_eq!(e.kind, event::EventKind::TerminateRequested);
        assert!(e.timestamp_inferred);
    }

    #[test]
    fn dialog_turns_and_usage_reports_are_generic_events_with_their_keys_as_payload() {
        let at = event::format_timestamp(t0());
        let turn = json!({"eventType": "dialog.turn.completed", "callId": "c", "traceId": "c",
            "timestamp": at, "turnIndex": 2, "userText": "merhaba", "aiText": "selam",
            "ragSources": [{"doc": "faq", "score": 0.5}], "sttMs": 120});
        let usage = json!({"eventType": "cost.usage.reported", "callId": "c", "traceId": "c",
            "timestamp": at, "service": "stt-whisper-service", "resourceType": "stt_second",
            "quantity": 12.5, "usageId": "u-1"});
        for json_event in [turn, usage] {
            let encoded = encode(&json_event).unwrap();
            assert_eq!(encoded.content_type, Some(PROTOBUF_CONTENT_TYPE));
            let generic = GenericEvent::decode(&encoded.body[..]).unwrap();
            let payload: Value = serde_json::from_str(&generic.payload_json).unwrap();
            assert_eq!(payload.get("timestamp"), None, "the message's own field");
            assert_eq!(payload["callId"], "c");
            let twin = event::decode(&encoded.body, t0(), LIMITS).unwrap();
            let original = event::decode(json_event.to_string().as_bytes(), t0(), LIMITS).unwrap();
            assert_eq!(twin.format, Format::Protobuf);
            assert_eq!(twin.kind, original.kind);
            assert_eq!(twin.timestamp, original.timestamp);
            assert!(!matches!(twin.kind, event::EventKind::Other));
        }
    }

    #[test]
    fn events_without_a_protobuf_producer_have_no_twin() {
        for event_type in ["call.transfer.requested", "user.identified.for.call"] {
            let e = json!({"eventType": event_type, "callId": "c", "traceId": "c"});
            assert_eq!(encode(&e), None, "{event_type}");
        }
    }
}
