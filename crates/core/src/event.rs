//! Decoding of the producers' call events (see `EVENTS.md`): the envelope checks that decide
//! whether a message is a call event at all, and the typed reading of every known event with
//! every producer variant (camelCase and snake_case keys, renamed keys, event-name aliases,
//! both timestamp styles, missing timestamps).
//!
//! Pure: no I/O. The same code reads a message off the broker and a payload back from the log,
//! so a call rebuilt from the log folds exactly as it did live.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The SIP Call-ID limit of the `calls.call_id` column.
pub const MAX_CALL_ID_LEN: usize = 255;

/// Why a message is not a call event. The code (`as_code`) travels in the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("body is {size} bytes, over the {limit}-byte limit")]
    Oversize { size: usize, limit: usize },
    #[error("body is not valid UTF-8 (at byte {0})")]
    InvalidUtf8(usize),
    #[error("JSON nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object (found {0})")]
    NotObject(&'static str),
    #[error("`eventType` is missing")]
    MissingEventType,
    #[error("`eventType` must be a non-empty string (found {0})")]
    InvalidEventType(String),
    #[error("`callId` is missing")]
    MissingCallId,
    #[error("`callId` is invalid: {0}")]
    InvalidCallId(String),
    #[error("`timestamp` is not RFC 3339: {0}")]
    BadTimestamp(String),
    #[error("a string holds a NUL character, which the log cannot store")]
    NulCharacter,
}

impl Reject {
    /// Stable machine-readable reason, used as the dead-letter header and metric label.
    pub fn as_code(&self) -> &'static str {
        match self {
            Reject::Oversize { .. } => "oversize",
            Reject::InvalidUtf8(_) => "invalid_utf8",
            Reject::TooDeep(_) => "too_deep",
            Reject::NotJson(_) => "not_json",
            Reject::NotObject(_) => "not_object",
            Reject::MissingEventType => "missing_event_type",
            Reject::InvalidEventType(_) => "invalid_event_type",
            Reject::MissingCallId => "missing_call_id",
            Reject::InvalidCallId(_) => "invalid_call_id",
            Reject::BadTimestamp(_) => "bad_timestamp",
            Reject::NulCharacter => "nul_character",
        }
    }
}

/// Limits applied to every incoming message.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
}

/// A message that passed the envelope checks: what the event log stores.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub call_id: String,
    /// As sent (aliases are kept raw here; `EventKind` normalises them).
    pub event_type: String,
    pub trace_id: Option<String>,
    /// The event's own timestamp, or the receive time when it had none.
    pub timestamp: DateTime<Utc>,
    pub timestamp_inferred: bool,
    pub received_at: DateTime<Utc>,
    /// The body exactly as received (valid UTF-8 JSON object).
    pub body: String,
    /// SHA-256 of the body: with `call_id`, the identity of a distinct message in the log.
    pub body_hash: [u8; 32],
    pub kind: EventKind,
}

/// Decodes a broker message. `received_at` stands in for a missing timestamp.
pub fn decode(body: &[u8], received_at: DateTime<Utc>, limits: Limits) -> Result<Envelope, Reject> {
    if body.len() > limits.max_body_bytes {
        return Err(Reject::Oversize {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    let text = std::str::from_utf8(body).map_err(|e| Reject::InvalidUtf8(e.valid_up_to()))?;
    check_depth(text.as_bytes(), limits.max_json_depth)?;
    let value: Value = serde_json::from_str(text).map_err(|e| Reject::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(Reject::NotObject(json_type_name(&value)));
    };
    if holds_nul(text, &object) {
        return Err(Reject::NulCharacter);
    }
    let event_type = match object.get("eventType") {
        None | Some(Value::Null) => return Err(Reject::MissingEventType),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(other) => return Err(Reject::InvalidEventType(describe(other))),
    };
    let call_id = match object.get("callId") {
        None | Some(Value::Null) => return Err(Reject::MissingCallId),
        Some(Value::String(s)) => validate_call_id(s)?,
        Some(other) => {
            return Err(Reject::InvalidCallId(format!(
                "must be a string, found {}",
                json_type_name(other)
            )));
        }
    };
    let (timestamp, timestamp_inferred) = match object.get("timestamp") {
        None | Some(Value::Null) => (received_at, true),
        Some(Value::String(s)) if s.is_empty() => (received_at, true),
        Some(Value::String(s)) => (parse_timestamp(s)?, false),
        Some(other) => return Err(Reject::BadTimestamp(describe(other))),
    };
    let trace_id = str_field(&object, &["traceId", "trace_id"]);
    let kind = EventKind::from_payload(&event_type, &object);
    let body_hash: [u8; 32] = Sha256::digest(body).into();
    Ok(Envelope {
        call_id,
        event_type,
        trace_id,
        timestamp,
        timestamp_inferred,
        received_at,
        body: text.to_owned(),
        body_hash,
        kind,
    })
}

fn validate_call_id(s: &str) -> Result<String, Reject> {
    if s.trim().is_empty() {
        return Err(Reject::InvalidCallId("is empty".into()));
    }
    let chars = s.chars().count();
    if chars > MAX_CALL_ID_LEN {
        return Err(Reject::InvalidCallId(format!(
            "is {chars} characters, over {MAX_CALL_ID_LEN}"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Reject::InvalidCallId("holds control characters".into()));
    }
    Ok(s.to_owned())
}

/// RFC 3339 in both producer styles: `+00:00` with 0/3/6/9 digits, and `Z` with trimmed fractions.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, Reject> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Reject::BadTimestamp(format!("{s:?} ({e})")))
}

/// Formats a timestamp the way the Rust producers do (used by the simulator and the tests).
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// Rejects nesting deeper than `max` without building anything: a cheap guard that runs
/// before the parser, so a hostile body cannot make the parser recurse. Strings are skipped
/// with `memchr` to their closing quote (brackets inside them do not count); most of a body is
/// strings, so most of it is never looked at byte by byte.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), Reject> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            b'"' => loop {
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    // An escape: skip the escaped character too.
                    Some(j) if bytes[i + j] == b'\\' => i = (i + j + 2).min(bytes.len()),
                    Some(j) => {
                        i += j + 1;
                        break;
                    }
                    // Unterminated: the parser says why.
                    None => return Ok(()),
                }
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(Reject::TooDeep(max));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a parsed body holds a NUL character. JSON has no raw control characters in
/// strings, so a NUL can only come from the escape `\u0000`: a body without that sequence
/// (nearly all of them) is not walked.
fn holds_nul(text: &str, object: &Map<String, Value>) -> bool {
    memchr::memmem::find(text.as_bytes(), b"\\u0000").is_some() && has_nul(object)
}

fn has_nul(object: &Map<String, Value>) -> bool {
    fn value_has_nul(v: &Value) -> bool {
        match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(value_has_nul),
            Value::Object(o) => has_nul(o),
            _ => false,
        }
    }
    object
        .iter()
        .any(|(k, v)| k.contains('\0') || value_has_nul(v))
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn describe(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 64 {
        let mut cut = 64;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    format!("{} {s}", json_type_name(v))
}

/// The typed meaning of an event, for the merge. Unknown fields are not lost: the whole body
/// is in the log; this is only what the merge reads.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Started(Box<Started>),
    Answered,
    Identified(Identity),
    RecordingAvailable {
        uri: Option<String>,
    },
    Ended {
        reason: Option<String>,
    },
    TerminateRequested,
    DialogTurn(Box<DialogTurn>),
    UsageReported(Usage),
    /// Any other call-scoped event: kept raw, merged into nothing.
    Other,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Started {
    pub from_uri: Option<String>,
    pub to_uri: Option<String>,
    pub caller_number: Option<String>,
    pub callee_number: Option<String>,
    pub server_rtp_port: Option<u16>,
    pub caller_rtp_addr: Option<String>,
    /// Identity from the dialplan's matched user/contact and tenant.
    pub dialplan_identity: Identity,
    /// Set when the dialplan resolved an inbound route.
    pub inbound: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub user_id: Option<Uuid>,
    pub contact_id: Option<i32>,
    pub tenant_id: Option<String>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.user_id.is_none() && self.contact_id.is_none() && self.tenant_id.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DialogTurn {
    pub turn_index: i32,
    pub user_text: Option<String>,
    pub ai_text: Option<String>,
    pub rag_sources: Value,
    pub stt_ms: Option<i32>,
    pub llm_ms: Option<i32>,
    pub tts_ms: Option<i32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub usage_id: Option<String>,
    pub service: Option<String>,
    pub resource_type: String,
    pub quantity: rust_decimal::Decimal,
}

impl EventKind {
    /// Normalised event name (aliases folded) used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started(_) => "call.started",
            EventKind::Answered => "call.answered",
            EventKind::Identified(_) => "user.identified.for_call",
            EventKind::RecordingAvailable { .. } => "call.recording.available",
            EventKind::Ended { .. } => "call.ended",
            EventKind::TerminateRequested => "call.terminate.request",
            EventKind::DialogTurn(_) => "dialog.turn.completed",
            EventKind::UsageReported(_) => "cost.usage.reported",
            EventKind::Other => "other",
        }
    }

    /// Reads the typed content of an event. Never fails: a known event whose fields are
    /// unusable still is a call event (kept raw); the merge just learns less from it.
    pub fn from_payload(event_type: &str, o: &Map<String, Value>) -> EventKind {
        match event_type {
            "call.started" => EventKind::Started(Box::new(read_started(o))),
            "call.answered" => EventKind::Answered,
            "user.identified.for_call" | "user.identified.for.call" | "user.created.for_call" => {
                EventKind::Identified(Identity {
                    user_id: uuid_field(o, &["userId", "user_id"]),
                    contact_id: int_field(o, &["contactId", "contact_id"]),
                    tenant_id: str_field(o, &["tenantId", "tenant_id"]),
                })
            }
            "call.recording.available" => EventKind::RecordingAvailable {
                uri: str_field(o, &["recordingUri", "recording_uri", "recordingUrl"]),
            },
            "call.ended" => EventKind::Ended {
                reason: str_field(o, &["reason"]),
            },
            "call.terminate.request" => EventKind::TerminateRequested,
            "dialog.turn.completed" => match int_field(o, &["turnIndex", "turn_index"]) {
                Some(turn_index) => EventKind::DialogTurn(Box::new(DialogTurn {
                    turn_index,
                    user_text: str_field(o, &["userText", "user_text"]),
                    ai_text: str_field(o, &["aiText", "ai_text"]),
                    rag_sources: field(o, &["ragSources", "rag_sources"])
                        .cloned()
                        .unwrap_or(Value::Array(Vec::new())),
                    stt_ms: int_field(o, &["sttMs", "stt_ms"]),
                    llm_ms: int_field(o, &["llmMs", "llm_ms"]),
                    tts_ms: int_field(o, &["ttsMs", "tts_ms"]),
                })),
                None => EventKind::Other,
            },
            "cost.usage.reported" => {
                let resource = str_field(o, &["resourceType", "resource_type"]);
                let quantity = field(o, &["quantity"]).and_then(decimal_value);
                match (resource, quantity) {
                    (Some(resource_type), Some(quantity)) => EventKind::UsageReported(Usage {
                        usage_id: str_field(o, &["usageId", "usage_id"]),
                        service: str_field(o, &["service"]),
                        resource_type,
                        quantity,
                    }),
                    _ => EventKind::Other,
                }
            }
            _ => EventKind::Other,
        }
    }
}

fn read_started(o: &Map<String, Value>) -> Started {
    let from_uri = str_field(o, &["from", "fromUri", "from_uri"]);
    let to_uri = str_field(o, &["to", "toUri", "to_uri"]);
    let media = field(o, &["media", "mediaInfo", "media_info"]).and_then(Value::as_object);
    let (server_rtp_port, caller_rtp_addr) = match media {
        Some(m) => (
            int_field(m, &["serverRtpPort", "server_rtp_port"]).and_then(|p| u16::try_from(p).ok()),
            str_field(m, &["callerRtpAddr", "caller_rtp_addr"]),
        ),
        None => (None, None),
    };
    let dialplan = field(
        o,
        &["dialplan", "dialplanResolution", "dialplan_resolution"],
    )
    .and_then(Value::as_object);
    let mut dialplan_identity = Identity::default();
    let mut inbound = false;
    if let Some(d) = dialplan {
        let user = field(d, &["matchedUser", "matched_user"]).and_then(Value::as_object);
        let contact = field(d, &["matchedContact", "matched_contact"]).and_then(Value::as_object);
        let route = field(d, &["inboundRoute", "inbound_route"]).and_then(Value::as_object);
        inbound = route.is_some();
        dialplan_identity.user_id = user
            .and_then(|u| uuid_field(u, &["id"]))
            .or_else(|| contact.and_then(|c| uuid_field(c, &["userId", "user_id"])));
        dialplan_identity.contact_id = contact.and_then(|c| int_field(c, &["id"]));
        dialplan_identity.tenant_id = str_field(d, &["tenantId", "tenant_id"])
            .or_else(|| user.and_then(|u| str_field(u, &["tenantId", "tenant_id"])))
            .or_else(|| route.and_then(|r| str_field(r, &["tenantId", "tenant_id"])));
    }
    Started {
        caller_number: from_uri.as_deref().and_then(sip_user),
        callee_number: to_uri.as_deref().and_then(sip_user),
        from_uri,
        to_uri,
        server_rtp_port,
        caller_rtp_addr,
        dialplan_identity,
        inbound,
    }
}

/// The user part of a SIP/TEL URI in a raw header: `"Name" <sip:905551234567@host>;tag=x`
/// gives `905551234567`.
pub fn sip_user(header: &str) -> Option<String> {
    let uri = match (header.find('<'), header.find('>')) {
        (Some(a), Some(b)) if b > a => &header[a + 1..b],
        _ => header.split(';').next().unwrap_or(header),
    };
    let uri = uri.trim();
    let rest = ["sips:", "sip:", "tel:"]
        .iter()
        .find_map(|scheme| {
            uri.get(..scheme.len())
                .filter(|p| p.eq_ignore_ascii_case(scheme))
                .map(|_| &uri[scheme.len()..])
        })
        .unwrap_or(uri);
    let user = match rest.find('@') {
        Some(at) => &rest[..at],
        None if uri.len() != rest.len()
            && uri[..uri.len() - rest.len()].eq_ignore_ascii_case("tel:") =>
        {
            rest
        }
        None => return None,
    };
    let user = user.split([';', ':']).next().unwrap_or(user).trim();
    (!user.is_empty()).then(|| user.to_owned())
}

fn field<'a>(o: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().filter_map(|k| o.get(*k)).find(|v| !v.is_null())
}

fn str_field(o: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    // The first key that holds a non-blank string: `"from": ""` next to a real `fromUri`
    // must not hide it.
    keys.iter()
        .filter_map(|k| o.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_owned)
}

fn int_field(o: &Map<String, Value>, keys: &[&str]) -> Option<i32> {
    match field(o, keys)? {
        Value::Number(n) => n.as_i64().and_then(|i| i32::try_from(i).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn uuid_field(o: &Map<String, Value>, keys: &[&str]) -> Option<Uuid> {
    field(o, keys)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
}

fn decimal_value(v: &Value) -> Option<rust_decimal::Decimal> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    text.parse::<rust_decimal::Decimal>()
        .ok()
        .or_else(|| rust_decimal::Decimal::from_scientific(&text).ok())
        .filter(|d| !d.is_sign_negative())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_body_bytes: 1024 * 1024,
        max_json_depth: 32,
    };

    fn now() -> DateTime<Utc> {
        "2025-09-24T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn sip_user_parses_raw_headers() {
        assert_eq!(
            sip_user("\"<sip:905551234567@203.0.113.5>;tag=abc\"").as_deref(),
            Some("905551234567")
        );
        assert_eq!(
            sip_user("<sip:905551234567@203.0.113.5>;tag=abc").as_deref(),
            Some("905551234567")
        );
        assert_eq!(
            sip_user("\"Alice\" <sips:alice@example.com:5061;transport=tls>").as_deref(),
            Some("alice")
        );
        assert_eq!(
            sip_user("sip:902124440000@10.0.0.1").as_deref(),
            Some("902124440000")
        );
        assert_eq!(
            sip_user("<tel:+905551234567>").as_deref(),
            Some("+905551234567")
        );
        assert_eq!(sip_user("<sip:203.0.113.5>"), None);
        assert_eq!(sip_user(""), None);
    }

    #[test]
    fn depth_guard_ignores_brackets_inside_strings() {
        let body = format!(
            r#"{{"eventType":"x","callId":"c","note":"{}"}}"#,
            "[".repeat(100)
        );
        assert!(decode(body.as_bytes(), now(), LIMITS).is_ok());
        let deep = format!(
            r#"{{"eventType":"x","callId":"c","n":{}1{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(
            decode(deep.as_bytes(), now(), LIMITS).unwrap_err(),
            Reject::TooDeep(32)
        );
    }

    /// The depth guard as it was first written, byte by byte: the reference for the fast one.
    fn reference_depth(bytes: &[u8], max: usize) -> Result<(), Reject> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for &b in bytes {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return Err(Reject::TooDeep(max));
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// Any bytes, weighted to the ones the guard cares about: same verdict as the reference.
        #[test]
        fn depth_guard_agrees_with_the_byte_by_byte_reference(
            body in proptest::collection::vec(
                proptest::sample::select(b"{}[]\"\\ab:,".to_vec()), 0..200),
            max in 0usize..8,
        ) {
            proptest::prop_assert_eq!(check_depth(&body, max), reference_depth(&body, max));
        }
    }

    #[test]
    fn nul_is_found_only_where_a_string_holds_one() {
        let nul = br#"{"eventType":"x","callId":"c","note":"a\u0000b"}"#;
        assert_eq!(
            decode(nul, now(), LIMITS).unwrap_err(),
            Reject::NulCharacter
        );
        let key = br#"{"eventType":"x","callId":"c","k\u0000":1}"#;
        assert_eq!(
            decode(key, now(), LIMITS).unwrap_err(),
            Reject::NulCharacter
        );
        // An escaped backslash followed by the text `u0000` is no NUL.
        let text = br#"{"eventType":"x","callId":"c","note":"a\\u0000b"}"#;
        assert!(decode(text, now(), LIMITS).is_ok());
    }

    #[test]
    fn body_hash_identifies_the_exact_body() {
        let a = decode(br#"{"eventType":"x","callId":"c"}"#, now(), LIMITS).unwrap();
        let b = decode(br#"{"eventType":"x","callId":"c"}"#, now(), LIMITS).unwrap();
        let c = decode(br#"{"eventType":"x","callId":"c","k":1}"#, now(), LIMITS).unwrap();
        assert_eq!(a.body_hash, b.body_hash);
        assert_ne!(a.body_hash, c.body_hash);
    }
}
