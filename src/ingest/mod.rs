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
//! Committed batches leave through a short FIFO queue (`committed`), in commit order, to the
//! dispatcher (`dispatch.rs`), which hands them to the projector and the tracker: ingest
//! knows nothing of what comes after the log.
//!
//! Rooms: `consumer` (decode, batch, dead-letter inline), `committer` (append, dispatch, ack),
//! `dead_letter` (the dead-letter exchange), `topology` (exchanges, queues, bindings).

mod committer;
mod consumer;
mod dead_letter;
mod topology;

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{AmqpSettings, BackoffSettings, IngestSettings};
use crate::event::Envelope;
use crate::health::Health;
use crate::log::{EventLog, LoggedEvent};
use crate::retry::{Retry, Stop, Transient};
use crate::telemetry::metric;
use committer::Committer;
pub use consumer::OTHER_PLATFORM_EVENTS;
use consumer::{Consumer, Ended, flatten_join};
use dead_letter::DeadLetters;
pub use dead_letter::{DETAIL_HEADER, REASON_HEADER, UNSTORABLE};
pub use topology::{dead_letter_arguments, declare_passive, queue_arguments};

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
    #[error("the consumer was cancelled by the broker")]
    ConsumerCancelled,
    #[error("the batch committer stopped: {0}")]
    CommitterStopped(String),
    /// The broker's TLS refused (a certificate that does not verify, a name that does not
    /// match): only the settings can fix it.
    #[error(
        "TLS to RabbitMQ failed (amqp.tls_ca_file, amqp.tls_cert_file, amqp.tls_key_file, or the URL's host): {0}"
    )]
    TlsRefused(lapin::Error),
    /// A TLS file configured could not be read (it was readable at start).
    #[error("cannot read {key} {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// Whatever ends a broker session, the service reconnects (with backoff) and consumes again:
/// an exchange of the wrong type, say, can be fixed by an operator while the service waits.
/// A TLS refusal cannot be waited out: it stops ingest, and the service with it.
impl Transient for IngestError {
    fn is_transient(&self) -> bool {
        !matches!(self, IngestError::TlsRefused(_))
    }
}

/// The TLS of an `amqps://` connection: the CA (`amqp.tls_ca_file`, else the public roots)
/// and the client's certificate, read at each connection so that renewed files are taken up
/// on the next one. Unused for `amqp://`.
fn tls_config(amqp: &AmqpSettings) -> Result<lapin::tcp::OwnedTLSConfig, IngestError> {
    if !amqp.url.expose_secret().starts_with("amqps://") {
        return Ok(Default::default());
    }
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| IngestError::TlsFile {
            key,
            path: path.display().to_string(),
            source,
        })
    };
    let cert_chain = if amqp.tls_ca_file.as_os_str().is_empty() {
        None
    } else {
        let pem = read("amqp.tls_ca_file", &amqp.tls_ca_file)?;
        Some(String::from_utf8_lossy(&pem).into_owned())
    };
    let identity = if amqp.tls_cert_file.as_os_str().is_empty() {
        None
    } else {
        Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read("amqp.tls_cert_file", &amqp.tls_cert_file)?,
            key: read("amqp.tls_key_file", &amqp.tls_key_file)?,
        })
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Whether a connection failed on TLS itself (`retry::tls_refused`).
fn tls_refused(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::IOError(io) if crate::retry::tls_refused(io))
}

pub struct Ingest {
    amqp: AmqpSettings,
    settings: IngestSettings,
    backoff: BackoffSettings,
    log: EventLog,
    health: Health,
    committed: mpsc::Sender<Vec<LoggedEvent>>,
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
        let gauge = gauge!(metric::MESSAGES_IN_FLIGHT.name);
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

/// A connected broker session: the consume channel with its consumer, and the dead-letter
/// exchange on a confirm channel.
struct Session {
    conn: Connection,
    consume: lapin::Channel,
    consumer: lapin::Consumer,
    dead_letters: DeadLetters,
}

impl Ingest {
    /// `committed` takes each committed batch's new events, in commit order.
    pub fn new(
        amqp: AmqpSettings,
        settings: IngestSettings,
        backoff: BackoffSettings,
        log: EventLog,
        health: Health,
        committed: mpsc::Sender<Vec<LoggedEvent>>,
    ) -> Self {
        Ingest {
            amqp,
            settings,
            backoff,
            log,
            health,
            committed,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting with backoff whenever the broker goes away.
    /// Returns once the last batch is committed and acked; dropping `self` then closes the
    /// committed queue.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let retry = Retry::new(&self.backoff, &shutdown);
        let lost = |e: &IngestError, retry_in: Duration| {
            self.health.set_broker_up(false);
            counter!(metric::BROKER_RECONNECTS.name).increment(1);
            error!(error = %e, ?retry_in, "broker session ended; reconnecting");
        };
        while !shutdown.is_cancelled() {
            // A session that ends after it was established reconnects at once; failed
            // connections back off.
            let session = match retry.run(|| self.connect(), lost).await {
                Ok(session) => session,
                Err(Stop::Cancelled) => break,
                Err(Stop::Refused(e)) => {
                    self.health.set_broker_up(false);
                    return Err(e);
                }
            };
            match self.session(session, &shutdown).await {
                Ok(()) => break,
                Err(e) => lost(&e, Duration::ZERO),
            }
        }
        self.health.set_broker_up(false);
        info!("ingest stopped");
        Ok(())
    }

    /// Connects, declares the topology and starts consuming.
    async fn connect(&self) -> Result<Session, IngestError> {
        let conn = Connection::connect_with_config(
            self.amqp.url.expose_secret(),
            ConnectionProperties::default().with_connection_name("cdr-service".into()),
            tls_config(&self.amqp)?,
            lapin::runtime::default_runtime()?,
        )
        .await
        .map_err(|e| {
            if tls_refused(&e) {
                IngestError::TlsRefused(e)
            } else {
                e.into()
            }
        })?;
        let consume = conn.create_channel().await?;
        let dead_letters = conn.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare_topology(&conn, &self.amqp).await?;
        consume
            .basic_qos(self.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = consume
            .basic_consume(
                self.amqp.queue.as_str().into(),
                self.amqp.consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Session {
            conn,
            consume,
            consumer,
            dead_letters: DeadLetters {
                channel: dead_letters,
                exchange: self.amqp.dead_letter_exchange.clone(),
            },
        })
    }

    /// One broker session: consume and commit until shutdown (Ok) or a failure (Err).
    async fn session(
        &self,
        mut session: Session,
        shutdown: &CancellationToken,
    ) -> Result<(), IngestError> {
        self.health.set_broker_up(true);
        info!(queue = %self.amqp.queue, prefetch = self.amqp.prefetch, "consuming");

        let in_flight = InFlight::new();
        // One slot: the committer works on one batch while the next one fills here.
        let (handoff, batches) = mpsc::channel::<Batch>(1);
        let committer = Committer {
            log: self.log.clone(),
            backoff: self.backoff.clone(),
            health: self.health.clone(),
            committed: self.committed.clone(),
            dead_letters: session.dead_letters.clone(),
            in_flight: in_flight.clone(),
            shutdown: shutdown.clone(),
            pending_ack: None,
        };
        let mut committer = tokio::spawn(committer.run(batches));
        let mut consumer = Consumer::new(&self.settings, session.dead_letters.clone(), in_flight);
        let ended = consumer
            .run(&mut session.consumer, &handoff, &mut committer, shutdown)
            .await;
        let (consumed, committer_result) = match ended {
            Ended::Shutdown => {
                // Stop taking new deliveries, then commit and ack what we hold.
                let _ = session
                    .consume
                    .basic_cancel(
                        self.amqp.consumer_tag.as_str().into(),
                        BasicCancelOptions::default(),
                    )
                    .await;
                if !consumer.batch.is_empty() {
                    // Fails only if the committer has stopped; its result below says why.
                    let _ = handoff
                        .send(std::mem::replace(
                            &mut consumer.batch,
                            Batch::with_capacity(0),
                        ))
                        .await;
                }
                (Ok(()), None)
            }
            Ended::Failed(e) => (Err(e), None),
            Ended::Committer(result) => {
                let err = match &result {
                    Err(e) => IngestError::CommitterStopped(e.to_string()),
                    // It only returns Ok once the hand-off is closed, which is not yet.
                    Ok(()) => IngestError::CommitterStopped("it returned early".into()),
                };
                (Err(err), Some(result))
            }
        };
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
        let _ = session.conn.close(200, "shutdown".into()).await;
        Ok(())
    }
}
