//! Dead-lettering: a message that cannot become a logged call event is republished, unchanged,
//! to the dead-letter exchange with headers that say why, and acked only once the broker has
//! confirmed the copy. A bad message costs only itself.

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel};
use metrics::counter;
use tracing::warn;

use super::IngestError;
use crate::event::{self, Reject};
use crate::telemetry::metric;

/// Header that carries the machine-readable reason on a dead-lettered message.
pub const REASON_HEADER: &str = "x-cdr-reject-reason";
/// Header with the human-readable explanation.
pub const DETAIL_HEADER: &str = "x-cdr-reject-detail";

/// The reason of a message the event log refused on its own (the decoder's reasons are
/// `Reject::DEAD_LETTER_CODES`).
pub const UNSTORABLE: &str = "unstorable";

/// Why a message is dead-lettered: a reason code (the metric label and `REASON_HEADER`) and
/// the explanation.
pub(super) struct Rejected {
    pub code: &'static str,
    pub detail: String,
}

impl From<&Reject> for Rejected {
    fn from(reject: &Reject) -> Self {
        Rejected {
            code: reject.as_code(),
            detail: reject.to_string(),
        }
    }
}

/// The dead-letter exchange, on a channel in confirm mode.
#[derive(Clone)]
pub(super) struct DeadLetters {
    pub channel: Channel,
    pub exchange: String,
}

impl DeadLetters {
    /// Publishes the delivery's body and headers with the reason, and waits for the broker's
    /// confirm. The caller acks the delivery after this returns Ok.
    pub async fn publish(&self, delivery: &Delivery, reason: &Rejected) -> Result<(), IngestError> {
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key(delivery, reason),
                BasicPublishOptions::default(),
                &delivery.data,
                properties(delivery, reason),
            )
            .await?
            .await?;
        if confirm.is_nack() {
            return Err(IngestError::DeadLetterNacked(self.exchange.clone()));
        }
        counter!(metric::EVENTS_REJECTED.name, "reason" => reason.code).increment(1);
        warn!(
            reason = reason.code,
            detail = %reason.detail,
            bytes = delivery.data.len(),
            "message dead-lettered"
        );
        Ok(())
    }
}

/// The original properties' headers and content type, with the reason and where it came from.
fn properties(delivery: &Delivery, reason: &Rejected) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    let mut put = |key: &str, value: &str| {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    };
    put(REASON_HEADER, reason.code);
    put(DETAIL_HEADER, &reason.detail);
    put("x-cdr-original-exchange", delivery.exchange.as_str());
    put("x-cdr-original-routing-key", delivery.routing_key.as_str());
    put("x-cdr-rejected-at", &event::format_timestamp(Utc::now()));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(ct) = delivery.properties.content_type() {
        properties = properties.with_content_type(ct.clone());
    }
    properties
}

/// The original routing key, or the reason for a message that had none.
fn routing_key(delivery: &Delivery, reason: &Rejected) -> ShortString {
    if delivery.routing_key.as_str().is_empty() {
        reason.code.into()
    } else {
        delivery.routing_key.clone()
    }
}
