//! The typed reading of a call event's content, the same for every wire format: a JSON body
//! is read as it came, a protobuf body through its JSON rendering (`protobuf.rs`), so an event
//! and its twin in the other format mean the same thing to the merge.
//!
//! Placeholders are not data: a blank string, a zero id, the nil UUID, port 0 and the tenant
//! `system` (the platform's "unknown") read as absent, so they never stand in for, or
//! overwrite, a real value.

use serde_json::{Map, Value};
use uuid::Uuid;

/// The tenant the platform's producers write when they do not know it.
pub const PLACEHOLDER_TENANT: &str = "system";

/// Whether an event type names a call event: one the merge reads, its aliases, or any other
/// `call.*` event. Such an event without a usable call id is broken; another event without
/// one is a platform event that is not about a call.
pub fn is_call_event_type(event_type: &str) -> bool {
    matches!(
        event_type,
        "user.identified.for_call"
            | "user.identified.for.call"
            | "user.created.for_call"
            | "dialog.turn.completed"
            | "cost.usage.reported"
            | "acoustic.mood.shifted"
    ) || event_type.starts_with("call.")
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
    /// Every value `name` takes.
    pub const NAMES: [&'static str; 9] = [
        "call.started",
        "call.answered",
        "user.identified.for_call",
        "call.recording.available",
        "call.ended",
        "call.terminate.request",
        "dialog.turn.completed",
        "cost.usage.reported",
        "other",
    ];

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
                    contact_id: id_field(o, &["contactId", "contact_id"]),
                    tenant_id: tenant_field(o),
                })
            }
            "call.recording.available" => EventKind::RecordingAvailable {
                uri: str_field(o, &["recordingUri", "recording_uri", "recordingUrl"]),
            },
            "call.ended" => EventKind::Ended {
                reason: str_field(o, &["reason"]),
            },
            "call.terminate.request" => EventKind::TerminateRequested,
            // A turn index below 0 names no turn: the event is kept raw, as one without index.
            "dialog.turn.completed" => {
                match int_field(o, &["turnIndex", "turn_index"]).filter(|&i| i >= 0) {
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
                }
            }
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
            int_field(m, &["serverRtpPort", "server_rtp_port"])
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
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
        dialplan_identity.contact_id = contact.and_then(|c| id_field(c, &["id"]));
        dialplan_identity.tenant_id = tenant_field(d)
            .or_else(|| user.and_then(tenant_field))
            .or_else(|| route.and_then(tenant_field));
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

/// Longest string value the fold keeps from an event's content (a URI, a reason, a service):
/// longer, it is no value the platform sends, and it reads as absent (the event keeps it in the
/// log). So a call's state stays small whatever a message of up to `ingest.max_body_bytes`
/// holds; columns narrower than this cut the value further when the row is written.
pub const MAX_FIELD_BYTES: usize = 8 * 1024;

fn str_field(o: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    // The first key that holds a non-blank string: `"from": ""` next to a real `fromUri`
    // must not hide it.
    keys.iter()
        .filter_map(|k| o.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .find(|s| !s.is_empty() && s.len() <= MAX_FIELD_BYTES)
        .map(str::to_owned)
}

/// An integer in any JSON spelling of one (`7`, `7.0`, `7e0`, `700e-2`) that fits an
/// `i32`. A string is not an integer, whatever it holds: the contract's integer fields are JSON
/// numbers, and `"7"` is a producer's bug the record must not take for a value.
fn int_field(o: &Map<String, Value>, keys: &[&str]) -> Option<i32> {
    match field(o, keys)? {
        Value::Number(n) => integer(n).and_then(|i| i32::try_from(i).ok()),
        _ => None,
    }
}

/// A JSON number's integer value, if it has one exactly.
fn integer(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    // 2^53: every integer up to it is exact in an f64, and the fields are i32 anyway.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(f as i64)
}

/// An id: an integer other than 0 (proto3's "not set").
fn id_field(o: &Map<String, Value>, keys: &[&str]) -> Option<i32> {
    int_field(o, keys).filter(|&id| id != 0)
}

/// A UUID other than the nil UUID.
fn uuid_field(o: &Map<String, Value>, keys: &[&str]) -> Option<Uuid> {
    field(o, keys)
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s.trim()).ok())
        .filter(|u| !u.is_nil())
}

/// A tenant other than the placeholder `system`.
fn tenant_field(o: &Map<String, Value>) -> Option<String> {
    str_field(o, &["tenantId", "tenant_id"]).filter(|t| !t.eq_ignore_ascii_case(PLACEHOLDER_TENANT))
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
