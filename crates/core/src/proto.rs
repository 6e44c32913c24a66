//! The platform's protobuf event messages (package `sentiric.event.v1`, proto3), written for
//! this service from the field tables in EVENTS.md ("The current wire format"). prost derives
//! both directions: the service decodes them, the storm tool and the simulator encode them.
//!
//! Only the fields the service renders are declared; prost skips any other field on decode,
//! and the log keeps the exact bytes, so nothing a producer sent is lost.

use std::collections::BTreeMap;

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// What every event message starts with: field 1, the event type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(string, tag = "1")]
    pub event_type: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CallStartedEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub call_id: String,
    /// The raw From header, or a bare URI.
    #[prost(string, tag = "4")]
    pub from_uri: String,
    #[prost(string, tag = "5")]
    pub to_uri: String,
    #[prost(message, optional, tag = "6")]
    pub timestamp: Option<Timestamp>,
    #[prost(message, optional, tag = "7")]
    pub dialplan_resolution: Option<ResolveDialplanResponse>,
    #[prost(message, optional, tag = "8")]
    pub media_info: Option<MediaInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CallEndedEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub call_id: String,
    #[prost(message, optional, tag = "4")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "5")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CallRecordingAvailableEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub call_id: String,
    #[prost(message, optional, tag = "4")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "5")]
    pub recording_uri: String,
    #[prost(string, tag = "6")]
    pub public_url: String,
}

/// `user.identified.for_call`, and `user.created.for_call` (its early name).
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserIdentifiedForCallEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub call_id: String,
    #[prost(message, optional, tag = "4")]
    pub timestamp: Option<Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub user: Option<User>,
    #[prost(message, optional, tag = "6")]
    pub contact: Option<Contact>,
}

/// Every event without a message of its own (`call.answered`, `call.terminate.request`,
/// `call.media.playback.finished`, `user.created`, ...): the content is `payload_json`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GenericEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(message, optional, tag = "3")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "4")]
    pub tenant_id: String,
    /// A JSON document.
    #[prost(string, tag = "5")]
    pub payload_json: String,
}

/// `acoustic.mood.shifted`: call-scoped, kept raw. Its mood fields (5 to 10) are not read;
/// they stay in the logged bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AcousticMoodShiftedEvent {
    #[prost(string, tag = "1")]
    pub event_type: String,
    #[prost(string, tag = "2")]
    pub trace_id: String,
    #[prost(string, tag = "3")]
    pub call_id: String,
    #[prost(message, optional, tag = "4")]
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MediaInfo {
    #[prost(string, tag = "1")]
    pub caller_rtp_addr: String,
    #[prost(uint32, tag = "2")]
    pub server_rtp_port: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResolveDialplanResponse {
    #[prost(string, tag = "1")]
    pub dialplan_id: String,
    #[prost(string, tag = "2")]
    pub tenant_id: String,
    #[prost(message, optional, tag = "3")]
    pub action: Option<DialplanAction>,
    #[prost(message, optional, tag = "4")]
    pub matched_user: Option<User>,
    #[prost(message, optional, tag = "5")]
    pub matched_contact: Option<Contact>,
    #[prost(message, optional, tag = "6")]
    pub inbound_route: Option<InboundRoute>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DialplanAction {
    #[prost(string, tag = "1")]
    pub action: String,
    /// An enum on the wire: its number is kept.
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(btree_map = "string, string", tag = "3")]
    pub action_data: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InboundRoute {
    #[prost(string, tag = "1")]
    pub phone_number: String,
    #[prost(string, tag = "2")]
    pub tenant_id: String,
    #[prost(string, optional, tag = "3")]
    pub active_dialplan_id: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub off_hours_dialplan_id: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub failsafe_dialplan_id: Option<String>,
    #[prost(bool, tag = "6")]
    pub is_maintenance_mode: bool,
    #[prost(string, tag = "7")]
    pub default_language_code: String,
    #[prost(string, optional, tag = "8")]
    pub schedule_id: Option<String>,
    #[prost(bool, tag = "9")]
    pub block_anonymous: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    /// A UUID.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(string, tag = "3")]
    pub tenant_id: String,
    #[prost(string, tag = "4")]
    pub user_type: String,
    #[prost(message, repeated, tag = "5")]
    pub contacts: Vec<Contact>,
    #[prost(string, optional, tag = "6")]
    pub preferred_language_code: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Contact {
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(string, tag = "2")]
    pub user_id: String,
    #[prost(string, tag = "3")]
    pub contact_type: String,
    #[prost(string, tag = "4")]
    pub contact_value: String,
    #[prost(bool, tag = "5")]
    pub is_primary: bool,
}

impl From<chrono::DateTime<chrono::Utc>> for Timestamp {
    fn from(t: chrono::DateTime<chrono::Utc>) -> Self {
        Timestamp {
            seconds: t.timestamp(),
            // Below 10^9 by construction: it fits.
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }
}
