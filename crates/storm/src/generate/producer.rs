//! What the producers send, in their forms (EVENTS.md): the envelope variants a storm mixes
//! in, which of them only a JSON producer sends, the end reasons, the timestamp styles, and the
//! two dialplan layouts `call.started` carries.

use cdr_core::event;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::call::Identity;

/// How the envelope of one event is varied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    Canonical,
    TimestampGo,
    TimestampRust(u8),
    NoContentType,
    EmptyRoutingKey,
    NoTraceId,
    /// The n-th variant specific to the event type.
    Specific(usize),
}

/// Variants of the envelope, which every event type has: the first five of [`Variant`] after
/// `Canonical`.
pub(super) const ENVELOPE_VARIANTS: usize = 5;

/// The forms specific to an event type that only an older, JSON producer sends: JSON key
/// spellings and layouts, extra JSON keys, the dotted alias. Every other form has a protobuf
/// twin with the same facts.
const JSON_ONLY_FORMS: [&str; 6] = [
    "started_uri_keys",
    "started_snake_media",
    "started_snake_dialplan",
    "started_snake_user_only",
    "answered_extra_keys",
    "identified_dot_alias",
];

impl Variant {
    /// Whether only a JSON producer sends an event in this form (`specific`: the event type's
    /// own forms, as drawn). The envelope variants are all JSON producers' habits: timestamp
    /// strings, a missing content type or trace id, the empty routing key; today's producers
    /// set the trace id, and route by the event type.
    pub(super) fn json_only(self, specific: &[&str]) -> bool {
        match self {
            Variant::Canonical => false,
            Variant::TimestampGo
            | Variant::TimestampRust(_)
            | Variant::NoContentType
            | Variant::EmptyRoutingKey
            | Variant::NoTraceId => true,
            Variant::Specific(k) => JSON_ONLY_FORMS.contains(&specific[k]),
        }
    }
}

/// The reasons `call.ended` gives for an answered call; the common ones twice, so they come
/// more often.
pub(super) const ANSWERED_REASONS: [&str; 7] = [
    "normal_clearing",
    "normal_clearing",
    "normal_clearing_by_user",
    "normal_clearing_by_user",
    "terminated_by_request",
    "system_terminated",
    "network_failure",
];
/// The reasons `call.ended` gives for a call nobody answered.
pub(super) const UNANSWERED_REASONS: [&str; 6] = [
    "busy",
    "user_busy",
    "failure",
    "network_failure",
    "system_terminated",
    "normal_clearing",
];

/// The forms of `call.started` specific to it, by name (the variant `Specific(k)` is the k-th).
pub(super) const STARTED_VARIANTS: [&str; 9] = [
    "started_uri_keys",
    "started_snake_media",
    "started_snake_dialplan",
    "started_snake_user_only",
    "started_no_dialplan",
    "started_null_rtp_addr",
    "started_empty_rtp_addr",
    "started_no_timestamp",
    "started_display_name",
];

/// A timestamp in the producer style the variant names (Rust `+00:00` by default).
pub(super) fn timestamp(t: DateTime<Utc>, v: Variant) -> String {
    match v {
        Variant::TimestampGo => {
            let frac = format!("{:09}", t.timestamp_subsec_nanos());
            let frac = frac.trim_end_matches('0');
            let base = t.format("%Y-%m-%dT%H:%M:%S");
            if frac.is_empty() {
                format!("{base}Z")
            } else {
                format!("{base}.{frac}Z")
            }
        }
        Variant::TimestampRust(digits) => {
            let f = match digits {
                0 => SecondsFormat::Secs,
                3 => SecondsFormat::Millis,
                6 => SecondsFormat::Micros,
                _ => SecondsFormat::Nanos,
            };
            t.to_rfc3339_opts(f, false)
        }
        _ => event::format_timestamp(t),
    }
}

pub(super) fn dialplan_camel(
    tenant: &str,
    caller: &str,
    callee: &str,
    user: Option<&Identity>,
) -> Value {
    let (matched_user, matched_contact) = match user {
        Some(u) => (
            json!({
                "id": u.user_id, "name": "Ayşe Yılmaz", "tenantId": u.tenant_id,
                "userType": "caller", "contacts": [], "preferredLanguageCode": "tr"
            }),
            json!({
                "id": u.contact_id, "userId": u.user_id, "contactType": "phone",
                "contactValue": caller, "isPrimary": true
            }),
        ),
        None => (Value::Null, Value::Null),
    };
    let action = if user.is_some() {
        "START_AI_CONVERSATION"
    } else {
        "PROCESS_GUEST_CALL"
    };
    json!({
        "dialplanId": "DP_STORM",
        "tenantId": tenant,
        "action": {"action": action, "actionData": {"data": {}}},
        "matchedUser": matched_user,
        "matchedContact": matched_contact,
        "inboundRoute": {"phoneNumber": callee, "tenantId": tenant}
    })
}

/// An older producer's snake_case dialplan; `full` = false is the "user only" form: no tenant
/// on the dialplan, no contact, no inbound route.
pub(super) fn dialplan_snake(
    tenant: &str,
    caller: &str,
    callee: &str,
    user: Option<&Identity>,
    full: bool,
) -> Value {
    let matched_user = match user {
        Some(u) => json!({
            "id": u.user_id, "name": "Zeynep Kaya", "tenant_id": u.tenant_id,
            "user_type": "caller", "contacts": [], "preferred_language_code": "tr"
        }),
        None => Value::Null,
    };
    let matched_contact = match user {
        Some(u) if full => json!({
            "id": u.contact_id, "user_id": u.user_id, "contact_type": "phone",
            "contact_value": caller, "is_primary": true
        }),
        _ => Value::Null,
    };
    let mut d = json!({
        "dialplan_id": "DP_LEGACY_MAIN",
        "action": {"action": "START_AI_CONVERSATION", "action_data": {"data": {}}},
        "matched_user": matched_user,
        "matched_contact": matched_contact,
        "inbound_route": Value::Null,
    });
    if full {
        d["tenant_id"] = json!(tenant);
        d["inbound_route"] = json!({"phone_number": callee, "tenant_id": tenant});
    }
    d
}
