//! The protobuf wire format (`sentiric.event.v1`, today's producers): the message is chosen
//! by its field 1, the event type, and rendered as the JSON object a JSON-era producer would
//! have sent (camelCase keys, RFC 3339 timestamps, proto3 defaults left out), which is what
//! the log's `payload` column holds and what `kind` reads.

use chrono::{DateTime, Utc};
use prost::Message;
use serde_json::{Map, Value};

use super::json::{self, has_nul, json_type_name};
use super::{
    CallIdField, Format, Limits, Parsed, Reject, check_event_type, format_timestamp,
    is_call_event_type,
};
use crate::proto::{
    AcousticMoodShiftedEvent, CallEndedEvent, CallRecordingAvailableEvent, CallStartedEvent,
    Contact, DialplanAction, GenericEvent, Header, InboundRoute, MediaInfo,
    ResolveDialplanResponse, Timestamp, User, UserIdentifiedForCallEvent,
};

/// Event types whose messages carry no call id (EVENTS.md): never about a call.
const NON_CALL_MESSAGES: [&str; 2] = ["cognitive.map.updated", "media.generation.completed"];

pub(super) fn parse(body: &[u8], limits: Limits) -> Result<Parsed, Reject> {
    let event_type = Header::decode(body).map_err(broken)?.event_type;
    if event_type.is_empty() {
        return Err(Reject::MissingEventType);
    }
    check_event_type(&event_type)?;
    let parsed = match event_type.as_str() {
        "call.started" => started(CallStartedEvent::decode(body).map_err(broken)?)?,
        "call.ended" => ended(CallEndedEvent::decode(body).map_err(broken)?)?,
        "call.recording.available" => {
            recording(CallRecordingAvailableEvent::decode(body).map_err(broken)?)?
        }
        "user.identified.for_call" | "user.identified.for.call" | "user.created.for_call" => {
            identified(UserIdentifiedForCallEvent::decode(body).map_err(broken)?)?
        }
        "acoustic.mood.shifted" => mood(AcousticMoodShiftedEvent::decode(body).map_err(broken)?)?,
        t if NON_CALL_MESSAGES.contains(&t) => return Err(platform_event(event_type)),
        _ => match GenericEvent::decode(body).map(|m| self::generic(m, limits)) {
            Ok(Ok(parsed)) => parsed,
            // A payload that is not a JSON object hides any call id: an event that is not a
            // call event type is then a platform event, acknowledged as the others.
            Ok(Err(_)) if !is_call_event_type(&event_type) => {
                return Err(platform_event(event_type));
            }
            Ok(Err(e)) => return Err(e),
            // A message of its own that this service does not know, about no call: the
            // header was well formed, so it is a platform event, not garbage.
            Err(_) if !is_call_event_type(&event_type) => {
                return Err(platform_event(event_type));
            }
            Err(e) => return Err(broken(e)),
        },
    };
    // A string holding NUL puts a zero byte in the body; so does little else that proto3
    // writes (an explicitly set empty `optional` string's length), so most bodies skip the walk.
    let holds_nul = memchr::memchr(0, body).is_some() && has_nul(&parsed.content);
    Ok(Parsed {
        holds_nul,
        ..parsed
    })
}

fn platform_event(event_type: String) -> Reject {
    Reject::NotCallEvent {
        event_type,
        format: Format::Protobuf,
    }
}

fn broken(e: prost::DecodeError) -> Reject {
    Reject::BadProtobuf(e.to_string())
}

/// The seconds PostgreSQL's `timestamptz` can hold: from 4713 BC to 294276 AD.
const STORABLE_SECONDS: std::ops::RangeInclusive<i64> = -210_866_803_200..=9_224_318_015_999;

/// A message's `Timestamp`: absent, or at its default (0, 0), is no timestamp. One the log
/// could not store is refused here, as JSON's four-digit years never are.
fn timestamp(t: Option<Timestamp>) -> Result<Option<DateTime<Utc>>, Reject> {
    let Some(t) = t.filter(|t| *t != Timestamp::default()) else {
        return Ok(None);
    };
    u32::try_from(t.nanos)
        .ok()
        .filter(|&n| n < 1_000_000_000 && STORABLE_SECONDS.contains(&t.seconds))
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .map(Some)
        .ok_or_else(|| {
            Reject::BadTimestamp(format!(
                "seconds {} and nanos {} are not a time the log can store",
                t.seconds, t.nanos
            ))
        })
}

/// A JSON object under construction, leaving out proto3 defaults.
#[derive(Default)]
struct Object(Map<String, Value>);

impl Object {
    fn text(mut self, key: &str, value: &str) -> Self {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), Value::from(value));
        }
        self
    }

    /// A proto3 `optional` string: present when set, even empty.
    fn optional(mut self, key: &str, value: Option<&String>) -> Self {
        if let Some(v) = value {
            self.0.insert(key.to_owned(), Value::from(v.as_str()));
        }
        self
    }

    fn number(mut self, key: &str, value: i64) -> Self {
        if value != 0 {
            self.0.insert(key.to_owned(), Value::from(value));
        }
        self
    }

    fn flag(mut self, key: &str, value: bool) -> Self {
        if value {
            self.0.insert(key.to_owned(), Value::from(true));
        }
        self
    }

    fn object(mut self, key: &str, value: Option<Map<String, Value>>) -> Self {
        if let Some(v) = value {
            self.0.insert(key.to_owned(), Value::Object(v));
        }
        self
    }

    fn time(self, key: &str, value: Option<DateTime<Utc>>) -> Self {
        match value {
            Some(t) => self.text(key, &format_timestamp(t)),
            None => self,
        }
    }
}

/// The fields every call message shares: 1 event type, 2 trace id, 3 call id, a timestamp.
struct Common {
    event_type: String,
    trace_id: String,
    call_id: String,
    timestamp: Result<Option<DateTime<Utc>>, Reject>,
}

impl Common {
    fn new(event_type: String, trace_id: String, call_id: String, t: Option<Timestamp>) -> Self {
        Common {
            event_type,
            trace_id,
            call_id,
            timestamp: timestamp(t),
        }
    }

    fn object(&self) -> Object {
        Object::default()
            .text("eventType", &self.event_type)
            .text("traceId", &self.trace_id)
            .text("callId", &self.call_id)
            .time("timestamp", self.timestamp.clone().ok().flatten())
    }

    fn parsed(self, content: Object) -> Parsed {
        Parsed {
            call_id: if self.call_id.is_empty() {
                CallIdField::Absent
            } else {
                CallIdField::Text(self.call_id)
            },
            trace_id: (!self.trace_id.is_empty()).then_some(self.trace_id),
            timestamp: self.timestamp,
            event_type: self.event_type,
            content: content.0,
            holds_nul: false,
        }
    }
}

fn started(m: CallStartedEvent) -> Result<Parsed, Reject> {
    let common = Common::new(m.event_type, m.trace_id, m.call_id, m.timestamp);
    let content = common
        .object()
        .text("fromUri", &m.from_uri)
        .text("toUri", &m.to_uri)
        .object("dialplanResolution", m.dialplan_resolution.map(dialplan))
        .object("mediaInfo", m.media_info.map(media));
    Ok(common.parsed(content))
}

fn ended(m: CallEndedEvent) -> Result<Parsed, Reject> {
    let common = Common::new(m.event_type, m.trace_id, m.call_id, m.timestamp);
    let content = common.object().text("reason", &m.reason);
    Ok(common.parsed(content))
}

fn recording(m: CallRecordingAvailableEvent) -> Result<Parsed, Reject> {
    let common = Common::new(m.event_type, m.trace_id, m.call_id, m.timestamp);
    let content = common
        .object()
        .text("recordingUri", &m.recording_uri)
        .text("publicUrl", &m.public_url);
    Ok(common.parsed(content))
}

/// The user and contact, and their ids flat as the JSON-era producers sent them.
fn identified(m: UserIdentifiedForCallEvent) -> Result<Parsed, Reject> {
    let common = Common::new(m.event_type, m.trace_id, m.call_id, m.timestamp);
    // The user's id, else the contact's: whichever is a real UUID (not blank, not nil).
    let usable = |id: &&str| uuid::Uuid::parse_str(id.trim()).is_ok_and(|u| !u.is_nil());
    let user_id = [
        m.user.as_ref().map(|u| u.id.as_str()),
        m.contact.as_ref().map(|c| c.user_id.as_str()),
    ]
    .into_iter()
    .flatten()
    .find(usable)
    .or(m.user.as_ref().map(|u| u.id.as_str()))
    .unwrap_or_default();
    let content = common
        .object()
        .text("userId", user_id)
        .number(
            "contactId",
            m.contact.as_ref().map_or(0, |c| i64::from(c.id)),
        )
        .text(
            "tenantId",
            m.user.as_ref().map(|u| u.tenant_id.as_str()).unwrap_or(""),
        )
        .object("user", m.user.map(user))
        .object("contact", m.contact.map(contact));
    Ok(common.parsed(content))
}

fn mood(m: AcousticMoodShiftedEvent) -> Result<Parsed, Reject> {
    let common = Common::new(m.event_type, m.trace_id, m.call_id, m.timestamp);
    let content = common.object();
    Ok(common.parsed(content))
}

/// The rendered names of a `GenericEvent`'s own fields.
const GENERIC_FIELDS: [&str; 4] = ["eventType", "traceId", "timestamp", "tenantId"];

/// A `GenericEvent`: its fields, then the keys of `payload_json` other than theirs. The
/// call id is the payload's `callId`, else, for a call event type, the trace id (which
/// today's producers set to the call id).
fn generic(m: GenericEvent, limits: Limits) -> Result<Parsed, Reject> {
    let timestamp = timestamp(m.timestamp);
    let payload = if m.payload_json.trim().is_empty() {
        Map::new()
    } else {
        json::parse_object(&m.payload_json, limits).map_err(|e| match e {
            Reject::NotJson(why) => {
                Reject::BadProtobuf(format!("payload_json (field 5) is not JSON: {why}"))
            }
            Reject::NotObject(found) => Reject::BadProtobuf(format!(
                "payload_json (field 5) is not a JSON object (found {found})"
            )),
            other => other,
        })?
    };
    let mut content = Object::default()
        .text("eventType", &m.event_type)
        .text("traceId", &m.trace_id)
        .time("timestamp", timestamp.clone().ok().flatten())
        .text("tenantId", &m.tenant_id)
        .0;
    for (key, value) in payload {
        // The message's own fields are its envelope: a payload key of the same name never
        // stands in for one the message left out.
        if !GENERIC_FIELDS.contains(&key.as_str()) {
            content.entry(key).or_insert(value);
        }
    }
    let call_id = match content.get("callId") {
        Some(Value::String(s)) if !s.trim().is_empty() => CallIdField::Text(s.clone()),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            if is_call_event_type(&m.event_type) && !m.trace_id.trim().is_empty() {
                content.insert("callId".into(), Value::from(m.trace_id.as_str()));
                CallIdField::Text(m.trace_id.clone())
            } else {
                CallIdField::Absent
            }
        }
        Some(other) => CallIdField::Invalid(json_type_name(other)),
    };
    Ok(Parsed {
        event_type: m.event_type,
        call_id,
        trace_id: (!m.trace_id.is_empty()).then_some(m.trace_id),
        timestamp,
        content,
        holds_nul: false,
    })
}

fn media(m: MediaInfo) -> Map<String, Value> {
    Object::default()
        .text("callerRtpAddr", &m.caller_rtp_addr)
        .number("serverRtpPort", i64::from(m.server_rtp_port))
        .0
}

fn dialplan(d: ResolveDialplanResponse) -> Map<String, Value> {
    Object::default()
        .text("dialplanId", &d.dialplan_id)
        .text("tenantId", &d.tenant_id)
        .object("action", d.action.map(action))
        .object("matchedUser", d.matched_user.map(user))
        .object("matchedContact", d.matched_contact.map(contact))
        .object("inboundRoute", d.inbound_route.map(route))
        .0
}

/// The action's data under `actionData.data`, where the JSON-era producers put it.
fn action(a: DialplanAction) -> Map<String, Value> {
    let data = (!a.action_data.is_empty()).then(|| {
        let data: Map<String, Value> = a
            .action_data
            .into_iter()
            .map(|(k, v)| (k, Value::from(v)))
            .collect();
        Map::from_iter([("data".to_owned(), Value::Object(data))])
    });
    Object::default()
        .text("action", &a.action)
        .number("type", i64::from(a.r#type))
        .object("actionData", data)
        .0
}

fn route(r: InboundRoute) -> Map<String, Value> {
    Object::default()
        .text("phoneNumber", &r.phone_number)
        .text("tenantId", &r.tenant_id)
        .optional("activeDialplanId", r.active_dialplan_id.as_ref())
        .optional("offHoursDialplanId", r.off_hours_dialplan_id.as_ref())
        .optional("failsafeDialplanId", r.failsafe_dialplan_id.as_ref())
        .flag("isMaintenanceMode", r.is_maintenance_mode)
        .text("defaultLanguageCode", &r.default_language_code)
        .optional("scheduleId", r.schedule_id.as_ref())
        .flag("blockAnonymous", r.block_anonymous)
        .0
}

fn user(u: User) -> Map<String, Value> {
    let contacts = u
        .contacts
        .into_iter()
        .map(|c| Value::Object(contact(c)))
        .collect::<Vec<_>>();
    let mut object = Object::default()
        .text("id", &u.id)
        .optional("name", u.name.as_ref())
        .text("tenantId", &u.tenant_id)
        .text("userType", &u.user_type)
        .optional("preferredLanguageCode", u.preferred_language_code.as_ref())
        .0;
    if !contacts.is_empty() {
        object.insert("contacts".into(), Value::Array(contacts));
    }
    object
}

fn contact(c: Contact) -> Map<String, Value> {
    Object::default()
        .number("id", i64::from(c.id))
        .text("userId", &c.user_id)
        .text("contactType", &c.contact_type)
        .text("contactValue", &c.contact_value)
        .flag("isPrimary", c.is_primary)
        .0
}

#[cfg(test)]
mod tests {
    use super::super::tests::{LIMITS, now};
    use super::super::{Envelope, Format, Reject, decode};
    use super::*;
    use proptest::prelude::*;

    /// A valid `call.started` with every nested message, to be broken.
    fn started_body() -> Vec<u8> {
        CallStartedEvent {
            event_type: "call.started".into(),
            trace_id: "c@h".into(),
            call_id: "c@h".into(),
            from_uri: "<sip:905551234567@203.0.113.5>;tag=a".into(),
            to_uri: "sip:902124440000@10.0.0.1".into(),
            timestamp: Some(Timestamp {
                seconds: 1_758_708_062,
                nanos: 123_456_789,
            }),
            dialplan_resolution: Some(ResolveDialplanResponse {
                dialplan_id: "dp".into(),
                tenant_id: "t".into(),
                action: Some(DialplanAction {
                    action: "a".into(),
                    r#type: 2,
                    action_data: [("k".to_owned(), "v".to_owned())].into(),
                }),
                matched_user: Some(User {
                    id: "5e170000-0000-4000-8000-000000000001".into(),
                    contacts: vec![Contact {
                        id: 7,
                        ..Contact::default()
                    }],
                    ..User::default()
                }),
                matched_contact: None,
                inbound_route: Some(InboundRoute::default()),
            }),
            media_info: Some(MediaInfo {
                caller_rtp_addr: "203.0.113.5:4000".into(),
                server_rtp_port: 10_000,
            }),
        }
        .encode_to_vec()
    }

    /// What every accepted body must give: a NUL-free JSON object as its rendering, with the
    /// event's own type.
    fn well_formed(e: &Envelope) -> Result<(), TestCaseError> {
        let rendering: Value = serde_json::from_str(e.payload_json())
            .map_err(|err| TestCaseError::fail(format!("rendering is not JSON: {err}")))?;
        let object = rendering
            .as_object()
            .ok_or_else(|| TestCaseError::fail("rendering is not an object"))?;
        prop_assert!(!has_nul(object));
        prop_assert_eq!(
            object.get("eventType"),
            Some(&Value::from(e.event_type.as_str()))
        );
        Ok(())
    }

    #[test]
    fn a_platform_event_is_acknowledged_whatever_else_is_wrong_with_it() {
        let broken_payload = GenericEvent {
            event_type: "agent.status".into(),
            trace_id: "x".into(),
            payload_json: "online".into(),
            ..GenericEvent::default()
        };
        let bad_time = GenericEvent {
            event_type: "user.created".into(),
            timestamp: Some(Timestamp {
                seconds: 1,
                nanos: 2_000_000_000,
            }),
            ..GenericEvent::default()
        };
        for m in [broken_payload, bad_time] {
            assert!(matches!(
                decode(&m.encode_to_vec(), now(), LIMITS),
                Err(Reject::NotCallEvent {
                    format: Format::Protobuf,
                    ..
                })
            ));
        }
        // A call event type with the same faults is broken.
        let answered = GenericEvent {
            event_type: "call.answered".into(),
            trace_id: "c@h".into(),
            payload_json: "online".into(),
            ..GenericEvent::default()
        };
        assert_eq!(
            decode(&answered.encode_to_vec(), now(), LIMITS)
                .unwrap_err()
                .as_code(),
            "bad_protobuf"
        );
    }

    #[test]
    fn a_time_the_log_cannot_store_is_a_bad_timestamp() {
        let ended = |seconds| CallEndedEvent {
            event_type: "call.ended".into(),
            call_id: "c@h".into(),
            timestamp: Some(Timestamp { seconds, nanos: 0 }),
            ..CallEndedEvent::default()
        };
        for seconds in [-300_000_000_000, 9_300_000_000_000] {
            assert_eq!(
                decode(&ended(seconds).encode_to_vec(), now(), LIMITS)
                    .unwrap_err()
                    .as_code(),
                "bad_timestamp"
            );
        }
        // Year 1 is storable.
        assert!(decode(&ended(-62_135_596_800).encode_to_vec(), now(), LIMITS).is_ok());
    }

    #[test]
    fn a_placeholder_user_id_gives_way_to_the_contacts() {
        let real = "5e170000-0000-4000-8000-000000000009";
        let m = UserIdentifiedForCallEvent {
            event_type: "user.identified.for_call".into(),
            call_id: "c@h".into(),
            user: Some(User {
                id: "00000000-0000-0000-0000-000000000000".into(),
                ..User::default()
            }),
            contact: Some(Contact {
                id: 4,
                user_id: real.into(),
                ..Contact::default()
            }),
            ..UserIdentifiedForCallEvent::default()
        };
        let e = decode(&m.encode_to_vec(), now(), LIMITS).unwrap();
        let super::super::EventKind::Identified(identity) = e.kind else {
            panic!("{:?}", e.kind)
        };
        assert_eq!(identity.user_id, Some(real.parse().unwrap()));
        assert_eq!(identity.contact_id, Some(4));
    }

    proptest! {
        /// A valid message with bytes overwritten, cut short or inserted: decoded or refused
        /// with a reason, never a panic, and what is accepted renders well.
        #[test]
        fn a_broken_message_is_refused_or_decoded_never_a_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut body = started_body();
            for (at, byte, how) in edits {
                let i = at.index(body.len().max(1));
                match how {
                    0 if !body.is_empty() => body[i] = byte,
                    1 => body.truncate(i),
                    _ => body.insert(i.min(body.len()), byte),
                }
            }
            if let Ok(e) = decode(&body, now(), LIMITS) {
                well_formed(&e)?;
            }
        }

        /// Any bytes after the protobuf tag of field 1: the same.
        #[test]
        fn any_bytes_as_protobuf_are_refused_or_decoded(
            rest in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut body = vec![0x0A];
            body.extend(rest);
            if let Ok(e) = decode(&body, now(), LIMITS) {
                well_formed(&e)?;
            }
        }
    }
}
