//! Ingest: consume the call-event queue, decode, dead-letter what is not a call event, append
//! batches to the event log, queue the new events for the tracker, then ack the batch.
//!
//! Two tasks per broker session, so decoding never waits for the database:
//! - the consumer decodes deliveries into the open batch and dead-letters bad input;
//! - the committer appends one batch at a time to the log, queues its new events for the
//!   tracker, then acks it (and goes on to the next batch while lapin writes the ack).
//!
//! They meet at a one-slot hand-off. While a commit is in flight the open batch keeps growing
//! (up to `ingest.batch_size`) and is handed over the moment the committer is free, so under
//! load batches grow and each commit carries more events; when idle, a batch waits at most
//! `ingest.batch_max_age`.
//!
//! Ordering makes the guarantees: a delivery is acked only after its event is committed
//! (or, for bad input, after the dead-letter exchange confirmed the copy), and acks use
//! `multiple` up to the batch's last tag. That is safe because batches are committed and acked
//! one at a time in delivery order (a batch's ack is written before the next one is sent), and
//! a dead-lettered delivery is acked before any later delivery is handed to the committer:
//! every earlier tag on the channel is already settled by the time a batch is acked.
//!
//! The tracker takes committed batches from a short FIFO queue served by one dispatcher task,
//! so starting actors for new calls never holds up the next commit, and batches reach the
//! tracker in log order (each call's events only grow in id). The dispatcher hands each batch
//! to the projector first (`project`), in the same order: the dialog-turn and usage rows are
//! written after the commit, not inside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

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
use crate::project::ProjectorHandle;
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
    #[error("the batch committer stopped: {0}")]
    CommitterStopped(String),
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

/// Decoded deliveries waiting to be committed together: `envelopes[i]` was decoded from
/// `deliveries[i]`, in delivery order.
struct Batch {
    envelopes: Vec<Envelope>,
    deliveries: Vec<Delivery>,
}

impl Batch {
    fn with_capacity(n: usize) -> Self {
        Batch {
            envelopes: Vec::with_capacity(n),
            deliveries: Vec::with_capacity(n),
        }
    }

    fn len(&self) -> usize {
        self.envelopes.len()
    }

    fn is_empty(&self) -> bool {
        self.envelopes.is_empty()
    }
}

/// Deliveries received and not yet acked, across the consumer and the committer.
#[derive(Clone)]
struct InFlight {
    count: Arc<AtomicI64>,
    // Resolved once: the consumer updates it for every delivery.
    gauge: metrics::Gauge,
}

impl InFlight {
    fn new() -> Self {
        let gauge = gauge!("cdr_messages_in_flight");
        gauge.set(0.0);
        InFlight {
            count: Arc::default(),
            gauge,
        }
    }

    fn add(&self, n: usize) {
        let now = self.count.fetch_add(n as i64, Ordering::Relaxed) + n as i64;
        self.gauge.set(now as f64);
    }

    fn settled(&self, n: usize) {
        let now = self.count.fetch_sub(n as i64, Ordering::Relaxed) - n as i64;
        self.gauge.set(now as f64);
    }
}

/// The commit side of a broker session: appends batches to the log, dispatches, acks.
struct Committer {
    log: EventLog,
    backoff: BackoffSettings,
    health: Health,
    dispatch: tokio::sync::mpsc::Sender<Vec<LoggedEvent>>,
    dead_letters: Channel,
    dead_letter_exchange: String,
    in_flight: InFlight,
    shutdown: CancellationToken,
    /// The last committed batch's ack, handed to lapin and not yet written (`ack_batch`).
    pending_ack: Option<tokio::task::JoinHandle<Result<(), lapin::Error>>>,
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
        projector: ProjectorHandle,
        tracker: Tracker,
        health: Health,
    ) -> Self {
        let (dispatch, queue) = tokio::sync::mpsc::channel(DISPATCH_QUEUE_BATCHES);
        let dispatcher = tokio::spawn(dispatch_committed(projector, tracker, queue));
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
        let in_flight = InFlight::new();
        // `cdr_events_received_total` by event type, resolved once per type.
        let mut received: HashMap<&'static str, metrics::Counter> = HashMap::new();
        // One slot: the committer works on one batch while the next one fills here.
        let (handoff, batches) = tokio::sync::mpsc::channel::<Batch>(1);
        let committer = Committer {
            log: self.log.clone(),
            backoff: self.backoff.clone(),
            health: self.health.clone(),
            dispatch: self.dispatch.clone(),
            dead_letters: dead_letters.clone(),
            dead_letter_exchange: self.amqp.dead_letter_exchange.clone(),
            in_flight: in_flight.clone(),
            shutdown: shutdown.clone(),
            pending_ack: None,
        };
        let mut committer = tokio::spawn(committer.run(batches));

        let batch_size = self.settings.batch_size;
        let mut batch = Batch::with_capacity(batch_size);
        // One timer for the whole session, reset when a batch gets its first event: a fresh
        // `sleep_until` in the select below would register and drop a timer per delivery.
        let batch_timer = tokio::time::sleep(self.settings.batch_max_age);
        tokio::pin!(batch_timer);
        // The open batch is due (old or full enough) and goes to the committer when it is free.
        let mut due = false;
        let mut due_since = std::time::Instant::now();
        let mut committer_result: Option<Result<(), IngestError>> = None;
        // Ok on shutdown; Err when the broker or the committer fails.
        let consumed: Result<(), IngestError> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return Ok(()),
                    ended = &mut committer => {
                        let result = flatten_join(ended);
                        let err = match &result {
                            Err(e) => IngestError::CommitterStopped(e.to_string()),
                            // It only returns Ok once the hand-off is closed, which is not yet.
                            Ok(()) => IngestError::CommitterStopped("it returned early".into()),
                        };
                        committer_result = Some(result);
                        return Err(err);
                    }
                    permit = handoff.reserve(), if due => {
                        let Ok(permit) = permit else {
                            return Err(IngestError::CommitterStopped("the hand-off closed".into()));
                        };
                        histogram!("cdr_ingest_handoff_wait_seconds")
                            .record(due_since.elapsed().as_secs_f64());
                        permit.send(std::mem::replace(&mut batch, Batch::with_capacity(batch_size)));
                        due = false;
                    }
                    () = &mut batch_timer, if !batch.is_empty() && !due => {
                        due = true;
                        due_since = std::time::Instant::now();
                    }
                    delivery = consumer.next(), if batch.len() < batch_size => {
                        let delivery = match delivery {
                            Some(Ok(d)) => d,
                            Some(Err(e)) => return Err(e.into()),
                            None => return Err(IngestError::ConsumerCancelled),
                        };
                        in_flight.add(1);
                        match event::decode(&delivery.data, Utc::now(), limits) {
                            Ok(envelope) => {
                                let kind = envelope.kind.name();
                                received
                                    .entry(kind)
                                    .or_insert_with(|| counter!("cdr_events_received_total", "event_type" => kind))
                                    .increment(1);
                                if batch.is_empty() {
                                    batch_timer.as_mut().reset(
                                        tokio::time::Instant::now() + self.settings.batch_max_age,
                                    );
                                }
                                batch.envelopes.push(envelope);
                                batch.deliveries.push(delivery);
                                if batch.len() >= batch_size && !due {
                                    due = true;
                                    due_since = std::time::Instant::now();
                                }
                            }
                            Err(reject) => {
                                // Acked before any later delivery reaches the committer, so the
                                // committer's `multiple` acks never run ahead of it.
                                self.dead_letter(&dead_letters, &delivery, &reject).await?;
                                delivery.acker.ack(BasicAckOptions::default()).await?;
                                in_flight.settled(1);
                            }
                        }
                    }
                }
            }
        }
        .await;

        if consumed.is_ok() {
            // Shutdown: stop taking new deliveries, then commit and ack what we hold.
            let _ = consume
                .basic_cancel(
                    self.amqp.consumer_tag.as_str().into(),
                    BasicCancelOptions::default(),
                )
                .await;
            if !batch.is_empty() {
                // Fails only if the committer has stopped; its result below says why.
                let _ = handoff.send(batch).await;
            }
        }
        // Whatever ended the session, the committer finishes the batch it holds before the
        // session returns: a batch it committed is then dispatched before the next session's
        // batches (one committer at a time keeps each call's events in log order), and never
        // left committed but undispatched while its deliveries come back as duplicates.
        drop(handoff);
        let committed = match committer_result {
            Some(result) => result,
            None => flatten_join(committer.await),
        };
        committed?;
        consumed?;
        let _ = conn.close(200, "shutdown".into()).await;
        Ok(SessionEnd::Shutdown)
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

fn flatten_join(
    ended: Result<Result<(), IngestError>, tokio::task::JoinError>,
) -> Result<(), IngestError> {
    match ended {
        Ok(result) => result,
        Err(e) => Err(IngestError::CommitterStopped(e.to_string())),
    }
}

impl Committer {
    /// Commits batches in hand-off order until the consumer closes the hand-off.
    async fn run(
        mut self,
        mut batches: tokio::sync::mpsc::Receiver<Batch>,
    ) -> Result<(), IngestError> {
        while let Some(mut batch) = batches.recv().await {
            self.commit(&mut batch).await?;
        }
        // The session closes its connection once this returns: the last ack goes out first.
        self.settle_ack().await
    }

    /// Appends the batch to the log (retrying while the database is away), dispatches the new
    /// events, then acks it. On shutdown during a retry, returns without acking: the
    /// broker redelivers those messages to the next run.
    async fn commit(&mut self, batch: &mut Batch) -> Result<(), IngestError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        let mut backoff = Backoff::new(&self.backoff);
        let appended = loop {
            let started = std::time::Instant::now();
            match self.log.append(&batch.envelopes).await {
                Ok(a) => {
                    histogram!("cdr_log_batch_size").record(n as f64);
                    histogram!("cdr_log_write_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    self.health.set_database_up(true);
                    break a;
                }
                Err(LogError::Unavailable(e)) => {
                    self.health.set_database_up(false);
                    counter!("cdr_log_write_retries_total").increment(1);
                    let delay = backoff.next_delay();
                    warn!(error = %e, events = n, retry_in = ?delay, "event log unavailable; holding the batch unacked");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => {
                            warn!(events = n, "shutting down with an uncommitted batch; the broker will redeliver it");
                            return Ok(());
                        }
                    }
                }
                Err(LogError::Refused(e)) => {
                    warn!(error = %e, events = n, "event log refused the batch; isolating the message at fault");
                    return self.commit_one_by_one(batch).await;
                }
            }
        };
        counter!("cdr_duplicates_dropped_total").increment(appended.duplicates as u64);
        debug!(
            events = n,
            new = appended.new_events(),
            duplicates = appended.duplicates,
            "batch committed"
        );
        // Queue for the tracker before acking: if the ack is lost with the connection, the
        // redelivered copies are dropped as duplicates, so these events must already be on
        // their way to the actors.
        self.dispatch(appended.into_logged(std::mem::take(&mut batch.envelopes)))
            .await;
        match batch.deliveries.last() {
            Some(last) => self.ack_batch(last, n).await,
            None => Ok(()),
        }
    }

    /// Acks a committed batch, `multiple` up to its last tag, without waiting for the frame to
    /// be written, so that the next batch's append starts at once. lapin resolves an ack only
    /// once its I/O thread has written the frame: 2 to 4 ms per batch on a busy machine, and
    /// every next commit used to wait for it. The previous batch's ack is settled first, so acks
    /// leave in batch order (a `multiple` ack must never overtake an earlier one) and a failed
    /// one ends the session before another is sent.
    async fn ack_batch(&mut self, last: &Delivery, n: usize) -> Result<(), IngestError> {
        self.settle_ack().await?;
        let acker = last.acker.clone();
        let in_flight = self.in_flight.clone();
        self.pending_ack = Some(tokio::spawn(async move {
            let sent = std::time::Instant::now();
            acker.ack(BasicAckOptions { multiple: true }).await?;
            histogram!("cdr_ingest_ack_duration_seconds").record(sent.elapsed().as_secs_f64());
            in_flight.settled(n);
            Ok(())
        }));
        Ok(())
    }

    /// Waits until the last batch's ack is written (or has failed).
    async fn settle_ack(&mut self) -> Result<(), IngestError> {
        match self.pending_ack.take() {
            None => Ok(()),
            Some(ack) => match ack.await {
                Ok(written) => Ok(written?),
                Err(e) => Err(IngestError::CommitterStopped(e.to_string())),
            },
        }
    }

    /// Slow path after the database refused a batch: each message alone, so one unstorable
    /// message is dead-lettered instead of blocking the queue.
    async fn commit_one_by_one(&mut self, batch: &mut Batch) -> Result<(), IngestError> {
        // Its acks are single ones, each after the previous batch's `multiple` ack.
        self.settle_ack().await?;
        let envelopes = std::mem::take(&mut batch.envelopes);
        let deliveries = std::mem::take(&mut batch.deliveries);
        for (envelope, delivery) in envelopes.into_iter().zip(deliveries) {
            match self.log.append(std::slice::from_ref(&envelope)).await {
                Ok(appended) => {
                    counter!("cdr_duplicates_dropped_total").increment(appended.duplicates as u64);
                    self.dispatch(appended.into_logged(vec![envelope])).await;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Err(LogError::Refused(e)) => {
                    let reason = Rejected {
                        code: "unstorable",
                        detail: format!("the event log refused the message: {e}"),
                    };
                    publish_dead_letter(
                        &self.dead_letters,
                        &self.dead_letter_exchange,
                        &delivery,
                        &reason,
                    )
                    .await?;
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Err(LogError::Unavailable(e)) => {
                    // Leave the rest unacked; the session restarts and they come again.
                    return Err(IngestError::LogUnavailable(e.to_string()));
                }
            }
            self.in_flight.settled(1);
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
}

/// The dispatcher: hands committed batches to the projector and the tracker, one at a time, in
/// commit order (the projector's "projected through" mark relies on that order).
async fn dispatch_committed(
    projector: ProjectorHandle,
    tracker: Tracker,
    mut queue: tokio::sync::mpsc::Receiver<Vec<LoggedEvent>>,
) {
    while let Some(events) = queue.recv().await {
        gauge!("cdr_dispatch_queue_batches").set(queue.len() as f64);
        let started = std::time::Instant::now();
        projector.project(&events).await;
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
        return declare_queues(conn, &passive, amqp).await;
    }
    declare_queues(conn, &channel, amqp).await
}

async fn declare_queues(
    conn: &Connection,
    channel: &Channel,
    amqp: &AmqpSettings,
) -> Result<(), IngestError> {
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
    let arguments = queue_arguments(amqp);
    for (queue, exchange, binding_key) in [
        (&amqp.queue, &amqp.exchange, amqp.binding_key.as_str()),
        (&amqp.dead_letter_queue, &amqp.dead_letter_exchange, "#"),
    ] {
        declare_queue(conn, queue, &arguments).await?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let _ = channel.close(200, "topology declared".into()).await;
    Ok(())
}

/// The arguments the service declares its queues with (`amqp.queue_version`). Public so that
/// the storm benchmark's reference consumers drain the same kind of queue as the service.
pub fn queue_arguments(amqp: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    if amqp.queue_version > 0 {
        arguments.insert(
            "x-queue-version".into(),
            AMQPValue::LongLongInt(amqp.queue_version.into()),
        );
    }
    arguments
}

/// Declares a durable queue with `arguments`, on a channel of its own. A queue that exists
/// with other arguments (another version, a quorum queue, a length limit: declared by an
/// earlier deployment or by an operator) is consumed as it is: RabbitMQ refuses to redeclare
/// it, those arguments are the operator's to choose, and refusing them would stop every record.
async fn declare_queue(
    conn: &Connection,
    queue: &str,
    arguments: &FieldTable,
) -> Result<(), IngestError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let channel = conn.create_channel().await?;
    match channel
        .queue_declare(queue.into(), durable, arguments.clone())
        .await
    {
        Ok(_) => {
            let _ = channel.close(200, "queue declared".into()).await;
            Ok(())
        }
        Err(e) if is_precondition_failed(&e) => {
            // The refused declare closed that channel; check on a new one that the queue exists.
            declare_passive(conn, queue).await?;
            warn!(
                queue,
                error = %e,
                "queue exists with other arguments; consuming it as it is (a `queue-version` policy converts it in place)"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// The queue as it is on the broker (its message count, say), declared passively on a channel
/// of its own: a missing queue closes that channel, not the caller's.
pub async fn declare_passive(conn: &Connection, queue: &str) -> Result<lapin::Queue, lapin::Error> {
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "queue checked".into()).await;
    Ok(declared)
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}
