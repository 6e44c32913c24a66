//! The consume side of a broker session: decodes deliveries into the open batch, dead-letters
//! bad input inline, and hands a batch to the committer once it is due (full, or
//! `ingest.batch_max_age` old) and the committer is free.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Instant;

use chrono::{SubsecRound, Utc};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use metrics::{counter, histogram};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::dead_letter::{DeadLetters, Rejected};
use super::{Batch, InFlight, IngestError};
use crate::config::IngestSettings;
use crate::event::{self, Format, Limits, Reject, TimestampWindow};
use crate::telemetry::metric;

/// How the consume loop ended.
pub(super) enum Ended {
    /// Shutdown was requested: the open batch is handed over for a last commit.
    Shutdown,
    /// The broker failed or cancelled the consumer.
    Failed(IngestError),
    /// The committer ended first (always a failure while the hand-off is open), with its
    /// result.
    Committer(Result<(), IngestError>),
}

pub(super) struct Consumer<'a> {
    pub settings: &'a IngestSettings,
    pub dead_letters: DeadLetters,
    pub in_flight: InFlight,
    /// The batch being filled.
    pub batch: Batch,
    /// `cdr_events_received_total` by event type and format, resolved once per pair.
    received: HashMap<(&'static str, Format), metrics::Counter>,
    /// The window an event's own timestamp must fall in (`ingest.max_event_age`,
    /// `ingest.max_clock_skew`), computed once.
    window: TimestampWindow,
    /// The open batch is due (old or full enough) and goes to the committer when it is free.
    due: Option<Instant>,
}

impl<'a> Consumer<'a> {
    pub fn new(
        settings: &'a IngestSettings,
        dead_letters: DeadLetters,
        in_flight: InFlight,
    ) -> Self {
        Consumer {
            window: settings.timestamp_window(),
            settings,
            dead_letters,
            in_flight,
            batch: Batch::with_capacity(settings.batch_size),
            received: HashMap::new(),
            due: None,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.settings.max_body_bytes,
            max_json_depth: self.settings.max_json_depth,
        }
    }

    /// Consumes until shutdown, a broker failure or the committer's end.
    pub async fn run(
        &mut self,
        consumer: &mut lapin::Consumer,
        handoff: &mpsc::Sender<Batch>,
        committer: &mut JoinHandle<Result<(), IngestError>>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let batch_size = self.settings.batch_size;
        // One timer for the whole session, reset when a batch gets its first event: a fresh
        // `sleep_until` in the select below would register and drop a timer per delivery.
        let batch_timer = tokio::time::sleep(self.settings.batch_max_age);
        tokio::pin!(batch_timer);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Shutdown,
                ended = &mut *committer => return Ended::Committer(flatten_join(ended)),
                permit = handoff.reserve(), if self.due.is_some() => {
                    let Ok(permit) = permit else {
                        return Ended::Failed(IngestError::CommitterStopped("the hand-off closed".into()));
                    };
                    if let Some(since) = self.due.take() {
                        histogram!(metric::INGEST_HANDOFF_WAIT.name).record(since.elapsed().as_secs_f64());
                    }
                    permit.send(std::mem::replace(&mut self.batch, Batch::with_capacity(batch_size)));
                }
                () = &mut batch_timer, if !self.batch.is_empty() && self.due.is_none() => {
                    self.due = Some(Instant::now());
                }
                delivery = consumer.next(), if self.batch.len() < batch_size => {
                    let delivery = match delivery {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Ended::Failed(e.into()),
                        None => return Ended::Failed(IngestError::ConsumerCancelled),
                    };
                    if self.batch.is_empty() {
                        batch_timer.as_mut().reset(tokio::time::Instant::now() + self.settings.batch_max_age);
                    }
                    if let Err(e) = self.take(delivery).await {
                        return Ended::Failed(e);
                    }
                }
            }
        }
    }

    /// Decodes one delivery into the open batch, or dead-letters and acks it. A bad message is
    /// acked before any later delivery reaches the committer, so the committer's `multiple`
    /// acks never run ahead of it.
    ///
    /// A platform event that is not about a call is acked and counted: it is not garbage, and
    /// nothing of it is logged.
    async fn take(&mut self, delivery: Delivery) -> Result<(), IngestError> {
        self.in_flight.add(1);
        let hint = delivery
            .properties
            .content_type()
            .as_ref()
            .and_then(|t| Format::from_content_type(t.as_str()));
        // At the log's precision (microseconds), so that a receive time standing in for a
        // missing timestamp is the same live and rebuilt from the log.
        let received_at = Utc::now().trunc_subsecs(6);
        let decoded = event::decode_hinted(&delivery.data, hint, received_at, self.limits())
            .and_then(|e| e.check_window(&self.window).map(|()| e));
        match decoded {
            Ok(envelope) => {
                let key = (envelope.kind.name(), envelope.format);
                self.received
                    .entry(key)
                    .or_insert_with(|| {
                        counter!(metric::EVENTS_RECEIVED.name,
                            "event_type" => key.0, "format" => key.1.as_str())
                    })
                    .increment(1);
                if envelope.trace_id_dropped {
                    warn!(call_id = %envelope.call_id, event_type = %envelope.event_type,
                        "trace id longer than its column: the event is kept without it");
                    counter!(metric::EVENT_FIELDS_DROPPED.name, "field" => "trace_id").increment(1);
                }
                self.batch.envelopes.push(envelope);
                self.batch.deliveries.push(delivery);
                if self.batch.len() >= self.settings.batch_size && self.due.is_none() {
                    self.due = Some(Instant::now());
                }
            }
            Err(Reject::NotCallEvent { event_type, format }) => {
                counter!(metric::PLATFORM_EVENTS.name,
                    "event_type" => platform_label(&event_type), "format" => format.as_str())
                .increment(1);
                delivery.acker.ack(BasicAckOptions::default()).await?;
                self.in_flight.settled(1);
            }
            Err(reject) => {
                self.dead_letters
                    .publish(&delivery, &Rejected::from(&reject))
                    .await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                self.in_flight.settled(1);
            }
        }
        Ok(())
    }
}

/// How many platform event types get a series of their own.
const PLATFORM_EVENT_TYPES: usize = 64;

/// The `event_type` label of the platform events past the label bound (`platform_label`).
pub const OTHER_PLATFORM_EVENTS: &str = "other";

/// The event types with a series of their own in `cdr_platform_events_total`, for the whole
/// process (every broker session's consumer shares them).
static LABELLED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// The label of a platform event's type. Producers name the types, so the label's values are
/// bounded: the first `PLATFORM_EVENT_TYPES` plain names (letters, digits, `.`, `_`, `-`, up
/// to 64 characters) have their own; any other type counts as `other`.
fn platform_label(event_type: &str) -> String {
    const OTHER: &str = OTHER_PLATFORM_EVENTS;
    let plain = event_type.len() <= 64
        && event_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !plain {
        return OTHER.to_owned();
    }
    let mut labelled = LABELLED.lock().unwrap_or_else(PoisonError::into_inner);
    if labelled.contains(event_type)
        || (labelled.len() < PLATFORM_EVENT_TYPES && labelled.insert(event_type.to_owned()))
    {
        event_type.to_owned()
    } else {
        OTHER.to_owned()
    }
}

/// The committer task's result, a panic or cancellation counted as its failure.
pub(super) fn flatten_join(
    ended: Result<Result<(), IngestError>, tokio::task::JoinError>,
) -> Result<(), IngestError> {
    match ended {
        Ok(result) => result,
        Err(e) => Err(IngestError::CommitterStopped(e.to_string())),
    }
}
