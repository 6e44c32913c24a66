//! Platform events that are not about a call (EVENTS.md, "Anything else"): with its queue bound
//! `#`, the service receives every event of the platform; one without a call id that is not a
//! call event type is acknowledged and counted, never dead-lettered, never logged.

use cdr_core::proto::{GenericEvent, Header, Timestamp};
use chrono::{DateTime, Utc};
use prost::Message;
use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::json;

use super::PlatformEvent;

/// One platform event: (body, whether it carries `id` as its trace id). Were the service to
/// take a trace id for a call id, the event would be logged under `id`.
pub(super) fn platform_event(
    kind: PlatformEvent,
    id: &str,
    at: DateTime<Utc>,
    rng: &mut StdRng,
) -> (Vec<u8>, bool) {
    let mut user_id = || {
        uuid::Builder::from_random_bytes(rng.random())
            .into_uuid()
            .to_string()
    };
    match kind {
        PlatformEvent::UserCreated => {
            let event = GenericEvent {
                event_type: kind.event_type().into(),
                trace_id: id.into(),
                timestamp: Some(Timestamp::from(at)),
                tenant_id: "sentiric_demo".into(),
                payload_json: json!({
                    "userId": user_id(), "tenantId": "sentiric_demo", "userType": "caller"
                })
                .to_string(),
            };
            (event.encode_to_vec(), true)
        }
        PlatformEvent::DialplanUpdated => {
            let event = json!({
                "eventType": kind.event_type(),
                "traceId": id,
                "dialplanId": "DP_STORM",
                "tenantId": "sentiric_demo",
                "updatedBy": user_id(),
                "timestamp": cdr_core::event::format_timestamp(at),
            });
            (event.to_string().into_bytes(), true)
        }
        // A message of its own, whose fields after the event type this service does not know:
        // it must not need them.
        PlatformEvent::CognitiveMapUpdated => {
            let event = Header {
                event_type: kind.event_type().into(),
            };
            (event.encode_to_vec(), false)
        }
    }
}
