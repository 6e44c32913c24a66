//! The commit side of a broker session: appends one batch at a time to the event log, queues
//! its new events for the dispatcher, then acks it (`multiple`, up to the batch's last tag),
//! and goes on to the next batch while lapin writes the ack.

use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use metrics::{counter, histogram};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::dead_letter::{DeadLetters, Rejected};
use super::{Batch, InFlight, IngestError};
use crate::config::BackoffSettings;
use crate::event::Envelope;
use crate::health::Health;
use crate::log::{Appended, EventLog, LogError, LoggedEvent};
use crate::retry::{Isolation, Retry, Stop};
use crate::telemetry::metric;

/// Whether a batch was settled or is held unacked because the service is stopping.
enum Outcome {
    Settled,
    Held,
}

pub(super) struct Committer {
    pub log: EventLog,
    pub backoff: BackoffSettings,
    pub health: Health,
    /// Committed batches on their way to the projector and the tracker, in commit order.
    pub committed: mpsc::Sender<Vec<LoggedEvent>>,
    pub dead_letters: DeadLetters,
    pub in_flight: InFlight,
    pub shutdown: CancellationToken,
    /// The last committed batch's ack, handed to lapin and not yet written (`ack_batch`).
    pub pending_ack: Option<JoinHandle<Result<(), lapin::Error>>>,
}

impl Committer {
    /// Commits batches in hand-off order until the consumer closes the hand-off, or until a
    /// batch must be held unacked at shutdown: no later batch is committed after it, since its
    /// `multiple` ack would settle the held deliveries too.
    pub async fn run(mut self, mut batches: mpsc::Receiver<Batch>) -> Result<(), IngestError> {
        while let Some(mut batch) = batches.recv().await {
            if let Outcome::Held = self.commit(&mut batch).await? {
                break;
            }
        }
        // The session closes its connection once this returns: the last ack goes out first.
        self.settle_ack().await
    }

    /// Appends the batch to the log (retrying while the database is away), dispatches the new
    /// events, then acks it. On shutdown during a retry, returns without acking: the broker
    /// redelivers those messages to the next run.
    async fn commit(&mut self, batch: &mut Batch) -> Result<Outcome, IngestError> {
        if batch.is_empty() {
            return Ok(Outcome::Settled);
        }
        let n = batch.len();
        let (log, health) = (&self.log, &self.health);
        let retry = Retry::new(&self.backoff, &self.shutdown);
        let appended = retry
            .run(
                || append_timed(log, health, &batch.envelopes),
                |e, delay| {
                    health.set_database_up(false);
                    counter!(metric::LOG_WRITE_RETRIES.name).increment(1);
                    warn!(error = %e, events = n, retry_in = ?delay, "event log unavailable; holding the batch unacked");
                },
            )
            .await;
        let appended = match appended {
            Ok(appended) => appended,
            Err(Stop::Cancelled) => {
                warn!(
                    events = n,
                    "shutting down with an uncommitted batch; the broker will redeliver it"
                );
                return Ok(Outcome::Held);
            }
            Err(Stop::Refused(e)) => {
                warn!(error = %e, events = n, "event log refused the batch; isolating the message at fault");
                return self.commit_isolated(batch).await;
            }
        };
        debug!(
            events = n,
            new = appended.new_events(),
            duplicates = appended.duplicates,
            "batch committed"
        );
        // Queue for the tracker before acking: if the ack is lost with the connection, the
        // redelivered copies are dropped as duplicates, so these events must already be on
        // their way to the actors.
        dispatch(
            &self.committed,
            appended.into_logged(std::mem::take(&mut batch.envelopes)),
        )
        .await;
        if let Some(last) = batch.deliveries.last() {
            self.ack_batch(last, n).await?;
        }
        Ok(Outcome::Settled)
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
            histogram!(metric::INGEST_ACK_DURATION.name).record(sent.elapsed().as_secs_f64());
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

    /// Slow path after the database refused a batch: the batch bisected down to the messages
    /// at fault (`Retry::isolate`), so one unstorable message is dead-lettered instead of
    /// blocking the queue and costs a few more statements, not one per message. Each message is
    /// acked on its own, in order, after the previous batch's `multiple` ack.
    async fn commit_isolated(&mut self, batch: &mut Batch) -> Result<Outcome, IngestError> {
        self.settle_ack().await?;
        let envelopes = std::mem::take(&mut batch.envelopes);
        let deliveries = std::mem::take(&mut batch.deliveries);
        let (log, health, in_flight) = (&self.log, &self.health, &self.in_flight);
        let (committed, dead_letters) = (&self.committed, &self.dead_letters);
        let isolated = Retry::new(&self.backoff, &self.shutdown)
            .isolate(
                envelopes.len(),
                |range| log.append(&envelopes[range]),
                |range, outcome| {
                    let (envelopes, deliveries) = (&envelopes[range.clone()], &deliveries[range]);
                    async move {
                        settle_range(committed, dead_letters, envelopes, deliveries, outcome)
                            .await?;
                        in_flight.settled(deliveries.len());
                        Ok(())
                    }
                },
                |e, delay| {
                    health.set_database_up(false);
                    warn!(error = %e, retry_in = ?delay, "event log unavailable while isolating a refused batch; retrying");
                },
            )
            .await;
        match isolated {
            Ok(()) => Ok(Outcome::Settled),
            Err(Isolation::Cancelled) => Ok(Outcome::Held),
            Err(Isolation::Settle(e)) => Err(e),
        }
    }
}

/// Appends events to the log and records how long it took; marks the database up.
async fn append_timed(
    log: &EventLog,
    health: &Health,
    envelopes: &[Envelope],
) -> Result<Appended, LogError> {
    let started = std::time::Instant::now();
    let appended = log.append(envelopes).await?;
    histogram!(metric::LOG_BATCH_SIZE.name).record(envelopes.len() as f64);
    histogram!(metric::LOG_WRITE_DURATION.name).record(started.elapsed().as_secs_f64());
    health.set_database_up(true);
    Ok(appended)
}

/// Messages of a refused batch: dispatched and acked once logged, or (a message the log
/// refuses alone) dead-lettered, then acked.
async fn settle_range(
    committed: &mpsc::Sender<Vec<LoggedEvent>>,
    dead_letters: &DeadLetters,
    envelopes: &[Envelope],
    deliveries: &[Delivery],
    outcome: Result<Appended, LogError>,
) -> Result<(), IngestError> {
    match outcome {
        Ok(appended) => {
            dispatch(committed, appended.into_logged(envelopes.to_vec())).await;
        }
        Err(e) => {
            let reason = Rejected {
                code: super::dead_letter::UNSTORABLE,
                detail: format!("the event log refused the message: {e}"),
            };
            for delivery in deliveries {
                dead_letters.publish(delivery, &reason).await?;
            }
        }
    }
    for delivery in deliveries {
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Hands newly committed events to the dispatcher.
async fn dispatch(committed: &mpsc::Sender<Vec<LoggedEvent>>, events: Vec<LoggedEvent>) {
    if events.is_empty() {
        return;
    }
    if committed.send(events).await.is_err() {
        // Only when the dispatcher died with the tracker. The events are committed: their
        // calls are rebuilt from the log on the next start.
        error!("the tracker's dispatcher is gone; committed events wait for the next start");
    }
}
