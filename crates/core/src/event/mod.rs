//! Decoding of the producers' events (see `EVENTS.md`), in both wire formats: JSON (older
//! producers) and protobuf (`sentiric.event.v1`, today's). The body decides which it is
//! (`sniff`); the content type is a hint at most. Each format yields the same thing: the
//! event's type, call id, trace id and timestamp, and its content as a JSON object, which
//! `kind` reads into the typed meaning the merge folds. The envelope checks that decide
//! whether a message is a call event at all are the same for both.
//!
//! Pure: no I/O. The same code reads a message off the broker and its exact bytes back from
//! the log, so a call rebuilt from the log folds exactly as it did live.

mod json;
mod kind;
mod protobuf;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

pub use kind::{
    DialogTurn, EventKind, Identity, MAX_FIELD_BYTES, PLACEHOLDER_TENANT, Started, Usage,
    is_call_event_type, sip_user,
};

/// The SIP Call-ID limit of the `calls.call_id` column.
pub const MAX_CALL_ID_LEN: usize = 255;

/// The limit of the platform's `call_events.event_type` column.
pub const MAX_EVENT_TYPE_LEN: usize = 100;
/// `call_events.trace_id` and `calls.trace_id` are `varchar(255)`: a longer trace id is dropped
/// (the event kept), since it could only be cut into an id no other service knows.
pub const MAX_TRACE_ID_LEN: usize = 255;

/// Why a message is not a call event. The code (`as_code`) travels in the dead-letter header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Not a fault: a well-formed platform event that is not about a call (no call id, and
    /// not a call event type). It is acknowledged and counted, never dead-lettered.
    #[error("`{event_type}` is a platform event that is not about a call")]
    NotCallEvent { event_type: String, format: Format },
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
    #[error("body is not a protobuf event: {0}")]
    BadProtobuf(String),
    #[error("`eventType` is missing")]
    MissingEventType,
    #[error("`eventType` must be a non-empty string (found {0})")]
    InvalidEventType(String),
    #[error("`callId` is missing")]
    MissingCallId,
    #[error("`callId` is invalid: {0}")]
    InvalidCallId(String),
    #[error("`timestamp` is not a valid time: {0}")]
    BadTimestamp(String),
    #[error("a string holds a NUL character, which the log cannot store")]
    NulCharacter,
}

impl Reject {
    /// Every reason a message is dead-lettered for by the decoder (`as_code` of every variant
    /// but `NotCallEvent`, which is acknowledged, not dead-lettered).
    pub const DEAD_LETTER_CODES: [&'static str; 12] = [
        "oversize",
        "invalid_utf8",
        "too_deep",
        "not_json",
        "not_object",
        "bad_protobuf",
        "missing_event_type",
        "invalid_event_type",
        "missing_call_id",
        "invalid_call_id",
        "bad_timestamp",
        "nul_character",
    ];

    /// Stable machine-readable reason, used as the dead-letter header and metric label.
    pub fn as_code(&self) -> &'static str {
        match self {
            Reject::NotCallEvent { .. } => "not_call_event",
            Reject::Oversize { .. } => "oversize",
            Reject::InvalidUtf8(_) => "invalid_utf8",
            Reject::TooDeep(_) => "too_deep",
            Reject::NotJson(_) => "not_json",
            Reject::NotObject(_) => "not_object",
            Reject::BadProtobuf(_) => "bad_protobuf",
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
    /// How deep a JSON body (or a protobuf event's `payload_json`) may nest.
    pub max_json_depth: usize,
}

impl Limits {
    /// For bodies read back from the log: they passed the limits in force when they came, which
    /// may have been wider than today's, so only what keeps the parsers safe applies.
    pub const REBUILD: Limits = Limits {
        max_body_bytes: usize::MAX,
        max_json_depth: 128,
    };
}

/// How far an event's own timestamp may lie from its receive time: before it by `past` at
/// most, after it by `future` at most. Checked on live messages only (`Envelope::check_window`):
/// a logged event passed the window in force when it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampWindow {
    pub past: chrono::Duration,
    pub future: chrono::Duration,
}

/// A body's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Json, Format::Protobuf];

    /// The name used in the log (`call_events.body_encoding`), metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
        }
    }

    /// The format named by `as_str`.
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "protobuf" => Some(Format::Protobuf),
            _ => None,
        }
    }

    /// The format a message's content type announces, if it names one. A hint only.
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let essence = essence.to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "text/json" => Some(Format::Json),
            "application/protobuf"
            | "application/x-protobuf"
            | "application/vnd.google.protobuf"
            | "application/octet-stream" => Some(Format::Protobuf),
            _ => None,
        }
    }
}

/// A message that passed the envelope checks: what the event log stores.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub call_id: String,
    /// As sent (aliases are kept raw here; `EventKind` normalises them).
    pub event_type: String,
    pub trace_id: Option<String>,
    /// The event carried a trace id too long to keep (`MAX_TRACE_ID_LEN`): `trace_id` is None.
    pub trace_id_dropped: bool,
    /// The event's own timestamp, or the receive time when it had none.
    pub timestamp: DateTime<Utc>,
    pub timestamp_inferred: bool,
    pub received_at: DateTime<Utc>,
    pub format: Format,
    /// The body exactly as received.
    pub body: Vec<u8>,
    /// The JSON rendering of a body that is not JSON (camelCase keys, like the JSON-era
    /// producers'); None for a JSON body, which is its own rendering.
    pub rendering: Option<String>,
    /// SHA-256 of the body: with `call_id`, the identity of a distinct message in the log.
    pub body_hash: [u8; 32],
    pub kind: EventKind,
}

impl Envelope {
    /// Refuses (`bad_timestamp`) an event whose own timestamp lies outside `window` around its
    /// receive time. A receive time standing in for a missing timestamp always passes.
    pub fn check_window(&self, window: &TimestampWindow) -> Result<(), Reject> {
        if self.timestamp_inferred {
            return Ok(());
        }
        let lead = self.timestamp.signed_duration_since(self.received_at);
        if lead > window.future {
            return Err(Reject::BadTimestamp(format!(
                "{} is more than {} after its receive time",
                format_timestamp(self.timestamp),
                span(window.future)
            )));
        }
        if -lead > window.past {
            return Err(Reject::BadTimestamp(format!(
                "{} is more than {} before its receive time",
                format_timestamp(self.timestamp),
                span(window.past)
            )));
        }
        Ok(())
    }

    /// The event as a JSON document: the body itself, or its rendering.
    pub fn payload_json(&self) -> &str {
        match &self.rendering {
            Some(rendering) => rendering,
            // A JSON envelope's body passed UTF-8 validation when it was decoded.
            None => std::str::from_utf8(&self.body).unwrap_or_default(),
        }
    }
}

/// Decodes a message in either format; a platform event that is not about a call is
/// `Reject::NotCallEvent`. `received_at` stands in for a missing timestamp.
pub fn decode(body: &[u8], received_at: DateTime<Utc>, limits: Limits) -> Result<Envelope, Reject> {
    decode_hinted(body, None, received_at, limits)
}

/// `decode`, with the format the message's content type announced. The body decides; the hint
/// only settles a body that is neither a JSON object nor a protobuf event, so that its reason
/// names the format its producer meant.
pub fn decode_hinted(
    body: &[u8],
    hint: Option<Format>,
    received_at: DateTime<Utc>,
    limits: Limits,
) -> Result<Envelope, Reject> {
    let d = decode_fields(body, hint, received_at, limits, Render::Yes)?;
    Ok(Envelope {
        call_id: d.call_id,
        event_type: d.event_type,
        trace_id: d.trace_id,
        trace_id_dropped: d.trace_id_dropped,
        timestamp: d.timestamp,
        timestamp_inferred: d.timestamp_inferred,
        received_at,
        format: d.format,
        body: body.to_vec(),
        rendering: d.rendering,
        body_hash: Sha256::digest(body).into(),
        kind: d.kind,
    })
}

/// Whether `decode_fields` renders a protobuf body as JSON (the log stores the rendering; a
/// body read back from the log needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Render {
    Yes,
    No,
}

/// What a body decodes to, before the envelope keeps the body and its hash.
pub(crate) struct Decoded {
    pub call_id: String,
    pub event_type: String,
    pub trace_id: Option<String>,
    pub trace_id_dropped: bool,
    pub timestamp: DateTime<Utc>,
    pub timestamp_inferred: bool,
    pub format: Format,
    /// None for a JSON body, and for any body when not asked for.
    pub rendering: Option<String>,
    pub kind: EventKind,
}

/// The decoding both `decode_hinted` and a rebuild from the log go through.
pub(crate) fn decode_fields(
    body: &[u8],
    hint: Option<Format>,
    received_at: DateTime<Utc>,
    limits: Limits,
    render: Render,
) -> Result<Decoded, Reject> {
    if body.len() > limits.max_body_bytes {
        return Err(Reject::Oversize {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    let format = sniff(body, hint);
    let (parsed, rendering) = match format {
        Format::Json => (json::parse(body, limits)?, None),
        Format::Protobuf => {
            let parsed = protobuf::parse(body, limits)?;
            let rendering =
                match render {
                    Render::Yes => Some(serde_json::to_string(&parsed.content).map_err(|e| {
                        Reject::BadProtobuf(format!("cannot render it as JSON: {e}"))
                    })?),
                    Render::No => None,
                };
            (parsed, rendering)
        }
    };
    let Parsed {
        event_type,
        call_id,
        trace_id,
        timestamp,
        content,
        holds_nul,
    } = parsed;
    // The call id first: a platform event is acknowledged whatever else is wrong with it.
    let call_id = resolve_call_id(&event_type, call_id, format)?;
    if holds_nul {
        return Err(Reject::NulCharacter);
    }
    let chars = event_type.chars().count();
    if chars > MAX_EVENT_TYPE_LEN {
        return Err(Reject::InvalidEventType(format!(
            "{chars} characters, over {MAX_EVENT_TYPE_LEN}"
        )));
    }
    let (timestamp, timestamp_inferred) = match timestamp? {
        Some(t) => (t, false),
        None => (received_at, true),
    };
    let kind = EventKind::from_payload(&event_type, &content);
    Ok(Decoded {
        call_id,
        event_type,
        trace_id_dropped: trace_id
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_TRACE_ID_LEN),
        trace_id: trace_id
            .filter(|t| !t.trim().is_empty() && t.chars().count() <= MAX_TRACE_ID_LEN),
        timestamp,
        timestamp_inferred,
        format,
        rendering,
        kind,
    })
}

/// A window's bound as an operator writes it (`1day`, `3650days`, `90m`).
fn span(d: chrono::Duration) -> String {
    const DAY: i64 = 86_400;
    match d.to_std() {
        Ok(_) if d.num_seconds() % DAY == 0 && d.subsec_nanos() == 0 => {
            let days = d.num_seconds() / DAY;
            format!("{days}{}", if days == 1 { "day" } else { "days" })
        }
        Ok(std) => humantime::format_duration(std).to_string(),
        Err(_) => d.to_string(),
    }
}

/// Which format a body is. A JSON object starts with `{` (after JSON whitespace); a protobuf
/// event starts with field 1 as a length-delimited string, the tag byte 0x0A. The first is
/// tested first: a protobuf event whose type is 123 bytes long would also start with
/// `\n{`, and no event type is that long. A body that is neither goes to the format the hint
/// names, else to JSON if it is text (UTF-8 without control characters) and to protobuf if it
/// is not, so that its reason is the likelier one.
fn sniff(body: &[u8], hint: Option<Format>) -> Format {
    const JSON_WHITESPACE: [u8; 4] = [b' ', b'\t', b'\n', b'\r'];
    const PROTOBUF_FIELD_1_STRING: u8 = 0x0A;
    match body.iter().find(|b| !JSON_WHITESPACE.contains(b)) {
        Some(b'{') => return Format::Json,
        None => return hint.unwrap_or(Format::Json),
        Some(_) => {}
    }
    if body.first() == Some(&PROTOBUF_FIELD_1_STRING) {
        return Format::Protobuf;
    }
    let text = || {
        std::str::from_utf8(body).is_ok()
            && body
                .iter()
                .all(|b| *b >= 0x20 || JSON_WHITESPACE.contains(b))
    };
    match hint {
        Some(format) => format,
        None if text() => Format::Json,
        None => Format::Protobuf,
    }
}

/// What a wire format yields, before the envelope checks common to both.
struct Parsed {
    /// Checked: a non-blank string without NUL.
    event_type: String,
    call_id: CallIdField,
    trace_id: Option<String>,
    /// None when the event carries none; an error when it carries one that is not a time,
    /// which only matters for a call event.
    timestamp: Result<Option<DateTime<Utc>>, Reject>,
    /// The content as a JSON object: the body itself, or the protobuf message's rendering.
    content: Map<String, Value>,
    /// A key or string of the content holds a NUL character, which the log cannot store.
    holds_nul: bool,
}

/// The call id as the message carries it.
enum CallIdField {
    /// Absent, null, or (protobuf) the empty string.
    Absent,
    Text(String),
    /// A value of another JSON type.
    Invalid(&'static str),
}

/// The call id of a call event, or why there is none. An event without one that is not a
/// call event type is a platform event.
fn resolve_call_id(event_type: &str, field: CallIdField, format: Format) -> Result<String, Reject> {
    let call_event = is_call_event_type(event_type);
    let platform_event = || Reject::NotCallEvent {
        event_type: event_type.to_owned(),
        format,
    };
    match field {
        CallIdField::Absent if call_event => Err(Reject::MissingCallId),
        CallIdField::Text(s) if !call_event && s.trim().is_empty() => Err(platform_event()),
        CallIdField::Absent => Err(platform_event()),
        CallIdField::Text(s) => validate_call_id(s),
        CallIdField::Invalid(found) => Err(Reject::InvalidCallId(format!(
            "must be a string, found {found}"
        ))),
    }
}

fn validate_call_id(s: String) -> Result<String, Reject> {
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
    // Invisible characters that change how an id displays or compares (U+200B, U+202E, U+FEFF,
    // ...): two ids that look the same would be two calls.
    if let Some(c) = s
        .chars()
        .find(|c| c.general_category() == GeneralCategory::Format)
    {
        return Err(Reject::InvalidCallId(format!(
            "holds the invisible format character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(s)
}

/// The event type as both formats require it: a non-blank string.
fn check_event_type(s: &str) -> Result<(), Reject> {
    if s.trim().is_empty() {
        return Err(Reject::InvalidEventType("an empty string".into()));
    }
    if s.contains('\0') {
        return Err(Reject::NulCharacter);
    }
    Ok(())
}

/// RFC 3339 in both producer styles: `+00:00` with 0/3/6/9 digits, and `Z` with trimmed fractions.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, Reject> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Reject::BadTimestamp(format!("{s:?} ({e})")))
}

/// Formats a timestamp the way the Rust producers do (used by the protobuf rendering, the
/// simulator and the tests). Parsing it back gives the same instant, to the nanosecond.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limits and receive time of this module's tests (the formats' tests share them).
    pub(super) const LIMITS: Limits = Limits {
        max_body_bytes: 1024 * 1024,
        max_json_depth: 32,
    };

    pub(super) fn now() -> DateTime<Utc> {
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
    fn body_hash_identifies_the_exact_body() {
        let a = decode(br#"{"eventType":"x","callId":"c"}"#, now(), LIMITS).unwrap();
        let b = decode(br#"{"eventType":"x","callId":"c"}"#, now(), LIMITS).unwrap();
        let c = decode(br#"{"eventType":"x","callId":"c","k":1}"#, now(), LIMITS).unwrap();
        assert_eq!(a.body_hash, b.body_hash);
        assert_ne!(a.body_hash, c.body_hash);
    }

    #[test]
    fn the_body_decides_the_format_and_the_hint_only_settles_the_rest() {
        let json = br#" {"eventType":"x","callId":"c"}"#;
        assert_eq!(sniff(json, Some(Format::Protobuf)), Format::Json);
        assert_eq!(
            sniff(b"\x0a\x0bcall.ended", Some(Format::Json)),
            Format::Protobuf
        );
        assert_eq!(sniff(b"hello", None), Format::Json);
        assert_eq!(sniff(b"\x12\x01c", None), Format::Protobuf);
        assert_eq!(sniff(b"hello", Some(Format::Protobuf)), Format::Protobuf);
        assert_eq!(sniff(b"\xff\xfe", Some(Format::Json)), Format::Json);
    }

    #[test]
    fn platform_events_are_told_from_broken_call_events() {
        for body in [
            &br#"{"eventType":"user.created","userId":"u"}"#[..],
            br#"{"eventType":"dialplan.updated","callId":null}"#,
            br#"{"eventType":"dialplan.updated","callId":" "}"#,
        ] {
            assert!(matches!(
                decode(body, now(), LIMITS),
                Err(Reject::NotCallEvent { .. })
            ));
        }
        // Whatever else is wrong with it: a bad timestamp, a NUL.
        for body in [
            &br#"{"eventType":"user.created","timestamp":1727172000}"#[..],
            br#"{"eventType":"user.created","note":"a\u0000b"}"#,
        ] {
            assert!(matches!(
                decode(body, now(), LIMITS),
                Err(Reject::NotCallEvent { .. })
            ));
        }
        assert_eq!(
            decode(br#"{"eventType":"call.answered"}"#, now(), LIMITS).unwrap_err(),
            Reject::MissingCallId
        );
        assert_eq!(
            decode(br#"{"eventType":"call.whatever"}"#, now(), LIMITS).unwrap_err(),
            Reject::MissingCallId
        );
        // A call event whose type the log could not store is refused; a platform event's is
        // only counted.
        let long = format!("call.{}", "x".repeat(96));
        let body = format!(r#"{{"eventType":"{long}","callId":"c"}}"#);
        assert_eq!(
            decode(body.as_bytes(), now(), LIMITS)
                .unwrap_err()
                .as_code(),
            "invalid_event_type"
        );
        let body = format!(r#"{{"eventType":"{}"}}"#, "y".repeat(200));
        assert!(matches!(
            decode(body.as_bytes(), now(), LIMITS),
            Err(Reject::NotCallEvent { .. })
        ));
        // A platform event type with a call id is call-scoped: kept with its call.
        let e = decode(br#"{"eventType":"note.added","callId":"c"}"#, now(), LIMITS).unwrap();
        assert_eq!(e.kind, EventKind::Other);
    }

    #[test]
    fn content_types_are_read_as_hints() {
        assert_eq!(
            Format::from_content_type("application/json; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_content_type("Application/Protobuf"),
            Some(Format::Protobuf)
        );
        assert_eq!(Format::from_content_type("text/plain"), None);
    }
}

#[cfg(test)]
mod label_lists {
    use super::*;

    /// Every dead-letter reason the decoder gives is listed (the metric's series are exported
    /// from the start from that list), and nothing else is.
    #[test]
    fn every_dead_letter_reason_is_listed() {
        let rejects = [
            Reject::Oversize { size: 2, limit: 1 },
            Reject::InvalidUtf8(0),
            Reject::TooDeep(1),
            Reject::NotJson(String::new()),
            Reject::NotObject("array"),
            Reject::BadProtobuf(String::new()),
            Reject::MissingEventType,
            Reject::InvalidEventType(String::new()),
            Reject::MissingCallId,
            Reject::InvalidCallId(String::new()),
            Reject::BadTimestamp(String::new()),
            Reject::NulCharacter,
        ];
        let codes: Vec<&str> = rejects.iter().map(Reject::as_code).collect();
        assert_eq!(codes, Reject::DEAD_LETTER_CODES);
    }

    #[test]
    fn every_event_name_is_listed() {
        let kinds = [
            EventKind::Started(Box::default()),
            EventKind::Answered,
            EventKind::Identified(Identity::default()),
            EventKind::RecordingAvailable { uri: None },
            EventKind::Ended { reason: None },
            EventKind::TerminateRequested,
            EventKind::DialogTurn(Box::new(DialogTurn {
                turn_index: 0,
                user_text: None,
                ai_text: None,
                rag_sources: Value::Null,
                stt_ms: None,
                llm_ms: None,
                tts_ms: None,
            })),
            EventKind::UsageReported(Usage {
                usage_id: None,
                service: None,
                resource_type: String::new(),
                quantity: rust_decimal::Decimal::ZERO,
            }),
            EventKind::Other,
        ];
        let names: Vec<&str> = kinds.iter().map(EventKind::name).collect();
        assert_eq!(names, EventKind::NAMES);
    }
}
