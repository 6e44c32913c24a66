//! The application: builds every component from the settings, runs them, and stops them in
//! order. Data flows one way: ingest -> event log -> tracker (actors) -> record writer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use metrics::{counter, gauge};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::health::Health;
use crate::ingest::Ingest;
use crate::log::{EventLog, LogError, LoggedEvent};
use crate::merge::PriceBook;
use crate::project::{ProjectionRows, Projector, ProjectorHandle};
use crate::tracker::{CallContext, Tracker};
use crate::writer::RecordWriter;
use crate::{db, http, telemetry};

/// How often unit prices are re-read from `cost_models`.
const PRICE_REFRESH: Duration = Duration::from_secs(60);
/// How often the database is checked for readiness.
const DB_PING: Duration = Duration::from_secs(1);

pub struct Application {
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    health: Health,
}

impl Application {
    /// Binds the HTTP port and prepares the database pool (connections are made lazily, so a
    /// database that is down does not stop the service from starting and reporting it).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot bind {}", settings.http.listen))?;
        let pool = db::pool(&settings.database)?;
        Ok(Application {
            settings,
            pool,
            listener,
            health: Health::default(),
        })
    }

    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs until `shutdown` fires, then stops within `shutdown.timeout`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            settings,
            pool,
            listener,
            health,
        } = self;
        let metrics = telemetry::metrics();
        gauge!("cdr_build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => option_env!("CDR_GIT_COMMIT").unwrap_or("unknown")).set(1.0);
        // The runtime this runs on, whoever built it (the binary sizes it from
        // `runtime.worker_threads`).
        gauge!("cdr_runtime_worker_threads")
            .set(tokio::runtime::Handle::current().metrics().num_workers() as f64);
        health.set_database_up(false);
        health.set_broker_up(false);

        let http_stop = CancellationToken::new();
        let tracker_slot: http::TrackerSlot = Arc::default();
        let http_task = tokio::spawn(http::serve(
            listener,
            health.clone(),
            metrics,
            tracker_slot.clone(),
            http_stop.clone(),
        ));

        // Schema first: nothing else can run without it.
        if settings.database.migrate {
            let mut backoff = Backoff::new(&settings.backoff);
            loop {
                match db::migrate(&pool).await {
                    Ok(()) => break,
                    Err(db::DbError::Sqlx(e))
                    | Err(db::DbError::Migrate(sqlx::migrate::MigrateError::Execute(e)))
                        if db::is_transient(&e) =>
                    {
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "database not reachable for migrations; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => { http_stop.cancel(); return Ok(()); }
                        }
                    }
                    Err(e) => return Err(e).context("database migrations"),
                }
            }
            info!("schema up to date");
        }
        health.set_database_up(true);

        let ping_task = tokio::spawn(watch_database(pool.clone(), health.clone()));
        let prices = Arc::new(RwLock::new(Arc::new(
            load_prices(&pool).await.unwrap_or_default(),
        )));
        let price_task = tokio::spawn(refresh_prices(pool.clone(), prices.clone()));

        let (projector, projector_handle) = Projector::new(pool.clone(), settings.backoff.clone());
        let projector_abort = CancellationToken::new();
        let mut projector_task = tokio::spawn(projector.run(projector_abort.clone()));

        let (writer, writer_handle) = RecordWriter::new(
            pool.clone(),
            settings.writer.clone(),
            settings.backoff.clone(),
            health.clone(),
            projector_handle.projected(),
        );
        let writer_drain = CancellationToken::new();
        let writer_abort = CancellationToken::new();
        let writer_task = tokio::spawn(writer.run(writer_drain.clone(), writer_abort.clone()));

        let log = EventLog::remembering(pool.clone(), settings.ingest.remembered_messages);
        let quarantined = log.quarantined_calls().await.unwrap_or_else(|e| {
            warn!(error = %e, "could not read quarantined calls; none are held back");
            Vec::new()
        });
        let (tracker, _supervisor) = Tracker::start(
            CallContext {
                log: log.clone(),
                writer: writer_handle,
                prices,
                calls: Arc::default(),
                linger: settings.tracker.linger,
                idle_timeout: settings.tracker.idle_timeout,
                rest_after: settings.tracker.rest_after,
                backoff: settings.backoff.clone(),
            },
            &settings.tracker,
            quarantined,
        )
        .await?;
        let _ = tracker_slot.set(tracker.clone());

        recover(&log, &tracker, &projector_handle, &settings, &shutdown).await;
        health.set_recovered();

        let ingest_stop = CancellationToken::new();
        let ingest = Ingest::new(
            settings.amqp.clone(),
            settings.ingest.clone(),
            settings.backoff.clone(),
            log,
            projector_handle,
            tracker.clone(),
            health.clone(),
        );
        let mut ingest_task = tokio::spawn(ingest.run(ingest_stop.clone()));
        info!(http = %settings.http.listen, "cdr-service running");

        tokio::select! {
            _ = shutdown.cancelled() => {}
            r = &mut ingest_task => {
                error!(result = ?r, "ingest ended unexpectedly");
            }
        }

        // Stop in flow order: no new deliveries (commit and ack what is held), then the
        // projections of what was committed, then the actors (ended calls write their
        // records), then the writer drains.
        let bound = settings.shutdown.timeout;
        let started = Instant::now();
        info!(bound = ?bound, "shutting down");
        ingest_stop.cancel();
        if tokio::time::timeout(bound, &mut ingest_task).await.is_err() {
            warn!("ingest did not stop within the bound; unacked deliveries will be redelivered");
            ingest_task.abort();
        }
        // Ingest held the last handle: the projector ends once its queue is written.
        let remaining = bound.saturating_sub(started.elapsed());
        if tokio::time::timeout(remaining, &mut projector_task)
            .await
            .is_err()
        {
            projector_abort.cancel();
            let _ = projector_task.await;
        }
        tracker
            .shutdown(bound.saturating_sub(started.elapsed()))
            .await;
        writer_drain.cancel();
        let remaining = bound.saturating_sub(started.elapsed());
        let mut writer_task = writer_task;
        if tokio::time::timeout(remaining, &mut writer_task)
            .await
            .is_err()
        {
            writer_abort.cancel();
            let _ = writer_task.await;
        }
        price_task.abort();
        ping_task.abort();
        http_stop.cancel();
        let _ = http_task.await;
        pool.close().await;
        info!(took = ?started.elapsed(), "stopped");
        Ok(())
    }
}

/// Rebuilds every open call (logged events not yet all in its row): the calls that were active,
/// or waiting to be written, when the service last stopped, however it stopped. Their
/// projections, and those of quarantined calls, are written again first: a crash may have come
/// between a commit and its projections, and only these calls can be missing some (a call
/// leaves `open_calls` only with its projections written). Then every event logged before this
/// start counts as projected.
async fn recover(
    log: &EventLog,
    tracker: &Tracker,
    projector: &ProjectorHandle,
    settings: &Settings,
    shutdown: &CancellationToken,
) {
    let started = Instant::now();
    let Some(logged_before) = retry(settings, shutdown, "read the log's last event id", || {
        log.max_event_id()
    })
    .await
    else {
        return;
    };
    let Some(calls) = retry(settings, shutdown, "list open calls", || log.open_calls()).await
    else {
        return;
    };
    let count = calls.len();
    let mut events = 0;
    for chunk in calls.chunks(1000) {
        let Some(loaded) = load_reprojected(log, chunk, projector, settings, shutdown).await else {
            return;
        };
        match tracker.resume(loaded).await {
            Ok(n) => events += n,
            Err(e) => {
                error!(error = %e, "could not resume calls; they resume with their next event")
            }
        }
    }
    let Some(quarantined) = retry(settings, shutdown, "list quarantined calls", || {
        log.quarantined_calls()
    })
    .await
    else {
        return;
    };
    for chunk in quarantined.chunks(1000) {
        if load_reprojected(log, chunk, projector, settings, shutdown)
            .await
            .is_none()
        {
            return;
        }
    }
    projector.cover(logged_before).await;
    counter!("cdr_calls_recovered_total").increment(count as u64);
    info!(calls = count, events, took = ?started.elapsed(), "recovered open calls from the event log");
}

/// Loads calls with all their logged events and writes their projections again. None if the
/// service is shut down first.
async fn load_reprojected(
    log: &EventLog,
    call_ids: &[String],
    projector: &ProjectorHandle,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Option<Vec<(String, Vec<LoggedEvent>)>> {
    let loaded = retry(settings, shutdown, "load calls", || {
        log.load_calls(call_ids)
    })
    .await?;
    let rows =
        ProjectionRows::of(loaded.iter().flat_map(|(call_id, events)| {
            events.iter().map(move |e| (call_id.as_str(), &e.event))
        }));
    projector
        .write_now(rows, &settings.backoff, shutdown)
        .await
        .then_some(loaded)
}

/// Runs a recovery query until it succeeds (backing off while the database is away); None if
/// the service is shut down first.
async fn retry<T, F, Fut>(
    settings: &Settings,
    shutdown: &CancellationToken,
    what: &str,
    mut query: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let mut backoff = Backoff::new(&settings.backoff);
    loop {
        match query().await {
            Ok(value) => return Some(value),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "recovery: could not {what}; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

/// Keeps readiness honest while no traffic flows: a database that went away is noticed within
/// `DB_PING` even if no write has failed yet.
async fn watch_database(pool: PgPool, health: Health) {
    let mut tick = tokio::time::interval(DB_PING);
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(DB_PING, sqlx::query("SELECT 1").execute(&pool)).await,
            Ok(Ok(_))
        );
        if ok != health.database_up() {
            if ok {
                info!("database reachable again");
            } else {
                warn!("database unreachable");
            }
        }
        health.set_database_up(ok);
    }
}

async fn load_prices(pool: &PgPool) -> Result<PriceBook, sqlx::Error> {
    let rows: Vec<(String, chrono::DateTime<chrono::Utc>, rust_decimal::Decimal)> =
        sqlx::query_as("SELECT resource_type, start_date, cost_per_unit::numeric FROM cost_models")
            .fetch_all(pool)
            .await?;
    Ok(PriceBook::new(rows))
}

async fn refresh_prices(pool: PgPool, prices: Arc<RwLock<Arc<PriceBook>>>) {
    let mut tick = tokio::time::interval(PRICE_REFRESH);
    tick.tick().await;
    loop {
        tick.tick().await;
        match load_prices(&pool).await {
            Ok(book) => {
                if let Ok(mut slot) = prices.write() {
                    *slot = Arc::new(book);
                }
            }
            Err(e) => {
                warn!(error = %e, "could not refresh cost_models; keeping the previous prices")
            }
        }
    }
}
