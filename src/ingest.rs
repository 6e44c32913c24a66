//! Ingest: consume the call-event queue, decode, dead-letter what is not a call event, append
//! batches to the event log, queue the new events for the tracker, then ack the batch.
//!
//! Ordering makes the guarantees: a delivery is acked only after its event is committed
//! (or, for bad input, after the dead-letter exchange confirmed the copy), and acks use
//! `multiple` up to the batch's last tag, which is safe because every earlier tag on the
//! channel is already settled by the time a batch is acked.
//!
//! The tracker takes committed batches from a short FIFO queue served by one dispatcher task,
//! so starting actors for new calls never holds up the next commit, and batches reach the
//! tracker in log order (each call's events only grow in id).

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use metrics::{counter, gauge, histogram};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::config::{AmqpSettings, BackoffSettings, IngestSettings};
use crate::event::{self, Envelope, Limits, Reject};
use crate::health::Health;
use crate::log::{EventLog, LogError, LoggedEvent};
use crate::tracker::Tracker;

/// Committed batches waiting for the tracker. Short: when the tracker falls behind, commits
/// wait for it rather than piling events up in memory.
const DISPATCH_QUEUE_BATCHES: usize = 4;

/// Header that carries the machine-readable reason on a dead-lettered message.
pub const REASON_HEADER: &str = "x-cdr-reject-reason";
/// Header with the human-readable explanation.
pub const DETAIL_HEADER: &str = "x-cdr-reject-detail";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(
        "exchange {exchange:?} exists with a type other than topic; set amqp.accept_existing_exchange_type = true \
         (CDR__AMQP__ACCEPT_EXISTING_EXCHANGE_TYPE=true) to bind to it as it is"
    )]
    ExchangeTypeMismatch { exchange: String },
    #[error("dead-letter exchange {0:?} did not confirm a message")]
    DeadLetterNacked(String),
    #[error("event log became unavailable while isolating a refused batch: {0}")]
    LogUnavailable(String),
    #[error("the consumer was cancelled by the broker")]
    ConsumerCancelled,
}

pub struct Ingest {
    amqp: AmqpSettings,
    settings: IngestSettings,
    backoff: BackoffSettings,
    log: EventLog,
    health: Health,
    dispatch: tokio::sync::mpsc::Sender<Vec<LoggedEvent>>,
    dispatcher: tokio::task::JoinHandle<()>,
}

/// A decoded delivery waiting for its batch to commit.
struct Pending {
    envelope: Envelope,
    delivery: Delivery,
}

enum SessionEnd {
    Shutdown,
}

impl Ingest {
    pub fn new(
        amqp: AmqpSettings,
        settings: IngestSettings,
        backoff: BackoffSettings,
        log: EventLog,
        tracker: Tracker,
        health: Health,
    ) -> Self {
        let (dispatch, queue) = tokio::sync::mpsc::channel(DISPATCH_QUEUE_BATCHES);
        let dispatcher = tokio::spawn(dispatch_committed(tracker, queue));
        Ingest {
            amqp,
            settings,
            backoff,
            log,
            health,
            dispatch,
            dispatcher,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting with backoff whenever the broker goes away.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(&self.backoff);
        loop {
            match self.session(&shutdown, &mut backoff).await {
                Ok(SessionEnd::Shutdown) => break,
                Err(e) => {
                    self.health.set_broker_up(false);
                    counter!("cdr_broker_reconnects_total").increment(1);
                    let delay = backoff.next_delay();
                    error!(error = %e, retry_in = ?delay, "broker session ended; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.health.set_broker_up(false);
        // Every committed batch reaches the tracker before ingest reports it has stopped.
        let Ingest {
            dispatch,
            dispatcher,
            ..
        } = self;
        drop(dispatch);
        let _ = dispatcher.await;
        info!("ingest stopped");
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, IngestError> {
        let conn = Connection::connect(
            &self.amqp.url,
            ConnectionProperties::default().with_connection_name("cdr-service".into()),
        )
        .await?;
        let consume = conn.create_channel().await?;
        let dead_letters = conn.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_topology(&conn, &self.amqp).await?;
        consume
            .basic_qos(self.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = consume
            .basic_consume(
                self.amqp.queue.as_str().into(),
                self.amqp.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.health.set_broker_up(true);
        backoff.reset();
        info!(queue = %self.amqp.queue, prefetch = self.amqp.prefetch, "consuming");

        let limits = Limits {
            max_body_bytes: self.settings.max_body_bytes,
            max_json_depth: self.settings.max_json_depth,
        };
        let mut batch: Vec<Pending> = Vec::with_capacity(self.settings.batch_size);
        let mut batch_deadline = tokio::time::Instant::now();
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => None,
                _ = tokio::time::sleep_until(batch_deadline), if !batch.is_empty() => {
                    self.commit(&mut batch, shutdown, &dead_letters).await?;
                    continue;
                }
                d = consumer.next() => Some(d),
            };
            let Some(delivery) = next else {
                // Stop taking new deliveries, then commit and ack what we hold.
                let _ = consume
                    .basic_cancel(
                        self.amqp.consumer_tag.as_str().into(),
                        BasicCancelOptions::default(),
                    )
                    .await;
                self.commit(&mut batch, shutdown, &dead_letters).await?;
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(SessionEnd::Shutdown);
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(IngestError::ConsumerCancelled),
            };
            gauge!("cdr_messages_in_flight").set((batch.len() + 1) as f64);
            match event::decode(&delivery.data, Utc::now(), limits) {
                Ok(envelope) => {
                    counter!("cdr_events_received_total", "event_type" => envelope.kind.name())
                        .increment(1);
                    if batch.is_empty() {
                        batch_deadline = tokio::time::Instant::now() + self.settings.batch_max_age;
                    }
                    batch.push(Pending { envelope, delivery });
                    if batch.len() >= self.settings.batch_size {
                        self.commit(&mut batch, shutdown, &dead_letters).await?;
                    }
                }
                Err(reject) => {
                    self.dead_letter(&dead_letters, &delivery, &reject).await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
            }
        }
    }

    /// Appends the batch to the log (retrying while the database is away), acks it, then
    /// dispatches the new events. On shutdown during a retry, returns without acking: the
    /// broker redelivers those messages to the next run.
    async fn commit(
        &self,
        batch: &mut Vec<Pending>,
        shutdown: &CancellationToken,
        dead_letters: &Channel,
    ) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Ok(());
        }
        let envelopes: Vec<Envelope> = batch.iter().map(|p| p.envelope.clone()).collect();
        let mut backoff = Backoff::new(&self.backoff);
        let appended = loop {
            let started = std::time::Instant::now();
            match self.log.append(&envelopes).await {
                Ok(a) => {
                    histogram!("cdr_log_batch_size").record(envelopes.len() as f64);
                    histogram!("cdr_log_write_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    self.health.set_database_up(true);
                    break a;
                }
                Err(LogError::Unavailable(e)) => {
                    self.health.set_database_up(false);
                    counter!("cdr_log_write_retries_total").increment(1);
                    let delay = backoff.next_delay();
                    warn!(error = %e, events = envelopes.len(), retry_in = ?delay, "event log unavailable; holding the batch unacked");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {
                            warn!(events = envelopes.len(), "shutting down with an uncommitted batch; the broker will redeliver it");
                            batch.clear();
                            return Ok(());
                        }
                    }
                }
                Err(LogError::Refused(e)) => {
                    warn!(error = %e, events = envelopes.len(), "event log refused the batch; isolating the message at fault");
                    return self.commit_one_by_one(batch, dead_letters).await;
                }
            }
        };
        counter!("cdr_duplicates_dropped_total").increment(appended.duplicates as u64);
        debug!(
            events = batch.len(),
            new = appended.inserted.len(),
            duplicates = appended.duplicates,
            "batch committed"
        );
        // Queue for the tracker before acking: if the ack is lost with the connection, the
        // redelivered copies are dropped as duplicates, so these events must already be on
        // their way to the actors.
        self.dispatch(appended.inserted).await;
        let last = batch.last().map(|p| p.delivery.acker.clone());
        batch.clear();
        gauge!("cdr_messages_in_flight").set(0.0);
        if let Some(acker) = last {
            acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(())
    }

    /// Slow path after the database refused a batch: each message alone, so one unstorable
    /// message is dead-lettered instead of blocking the queue.
    async fn commit_one_by_one(
        &self,
        batch: &mut Vec<Pending>,
        dead_letters: &Channel,
    ) -> Result<(), IngestError> {
        for p in batch.drain(..) {
            match self.log.append(std::slice::from_ref(&p.envelope)).await {
                Ok(appended) => {
                    counter!("cdr_duplicates_dropped_total").increment(appended.duplicates as u64);
                    self.dispatch(appended.inserted).await;
                    p.delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Err(LogError::Refused(e)) => {
                    let reason = Rejected {
                        code: "unstorable",
                        detail: format!("the event log refused the message: {e}"),
                    };
                    publish_dead_letter(
                        dead_letters,
                        &self.amqp.dead_letter_exchange,
                        &p.delivery,
                        &reason,
                    )
                    .await?;
                    p.delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Err(LogError::Unavailable(e)) => {
                    // Leave the rest unacked; the session restarts and they come again.
                    return Err(IngestError::LogUnavailable(e.to_string()));
                }
            }
        }
        Ok(())
    }

    async fn dispatch(&self, events: Vec<LoggedEvent>) {
        if events.is_empty() {
            return;
        }
        if self.dispatch.send(events).await.is_err() {
            // Only when the dispatcher died with the tracker. The events are committed: their
            // calls are rebuilt from the log on the next start.
            error!("the tracker's dispatcher is gone; committed events wait for the next start");
        }
    }

    async fn dead_letter(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        reject: &Reject,
    ) -> Result<(), IngestError> {
        let reason = Rejected {
            code: reject.as_code(),
            detail: reject.to_string(),
        };
        publish_dead_letter(channel, &self.amqp.dead_letter_exchange, delivery, &reason).await
    }
}

/// The dispatcher: hands committed batches to the tracker, one at a time, in commit order.
async fn dispatch_committed(
    tracker: Tracker,
    mut queue: tokio::sync::mpsc::Receiver<Vec<LoggedEvent>>,
) {
    while let Some(events) = queue.recv().await {
        gauge!("cdr_dispatch_queue_batches").set(queue.len() as f64);
        let started = std::time::Instant::now();
        if let Err(e) = tracker.dispatch(events).await {
            // The events are committed: the calls are rebuilt from the log on the next start.
            error!(error = %e, "could not dispatch committed events");
        }
        histogram!("cdr_dispatch_duration_seconds").record(started.elapsed().as_secs_f64());
    }
}

struct Rejected {
    code: &'static str,
    detail: String,
}

async fn publish_dead_letter(
    channel: &Channel,
    exchange: &str,
    delivery: &Delivery,
    reason: &Rejected,
) -> Result<(), IngestError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(reason.code.into()),
    );
    headers.insert(
        DETAIL_HEADER.into(),
        AMQPValue::LongString(reason.detail.as_str().into()),
    );
    headers.insert(
        "x-cdr-original-exchange".into(),
        AMQPValue::LongString(delivery.exchange.as_str().into()),
    );
    headers.insert(
        "x-cdr-original-routing-key".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    headers.insert(
        "x-cdr-rejected-at".into(),
        AMQPValue::LongString(event::format_timestamp(Utc::now()).into()),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(ct) = delivery.properties.content_type() {
        properties = properties.with_content_type(ct.clone());
    }
    let routing_key: ShortString = if delivery.routing_key.as_str().is_empty() {
        reason.code.into()
    } else {
        delivery.routing_key.clone()
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key,
            BasicPublishOptions::default(),
            &delivery.data,
            properties,
        )
        .await?
        .await?;
    if confirm.is_nack() {
        return Err(IngestError::DeadLetterNacked(exchange.to_owned()));
    }
    counter!("cdr_events_rejected_total", "reason" => reason.code).increment(1);
    warn!(
        reason = reason.code,
        detail = %reason.detail,
        bytes = delivery.data.len(),
        "message dead-lettered"
    );
    Ok(())
}

/// Declares the exchange, the queue and its binding, and the dead-letter exchange and queue.
async fn declare_topology(conn: &Connection, amqp: &AmqpSettings) -> Result<(), IngestError> {
    let channel = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    if let Err(e) = channel
        .exchange_declare(
            amqp.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
    {
        if !is_precondition_failed(&e) {
            return Err(e.into());
        }
        if !amqp.accept_existing_exchange_type {
            return Err(IngestError::ExchangeTypeMismatch {
                exchange: amqp.exchange.clone(),
            });
        }
        // The failed declare closed that channel; check on a new one that the exchange exists.
        let passive = conn.create_channel().await?;
        passive
            .exchange_declare(
                amqp.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        warn!(exchange = %amqp.exchange, "exchange exists with another type than topic; binding to it as it is");
        return declare_queues(&passive, amqp).await;
    }
    declare_queues(&channel, amqp).await
}

async fn declare_queues(channel: &Channel, amqp: &AmqpSettings) -> Result<(), IngestError> {
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            amqp.dead_letter_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            amqp.queue.as_str().into(),
            durable_queue,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            amqp.queue.as_str().into(),
            amqp.exchange.as_str().into(),
            amqp.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            amqp.dead_letter_queue.as_str().into(),
            durable_queue,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            amqp.dead_letter_queue.as_str().into(),
            amqp.dead_letter_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}
