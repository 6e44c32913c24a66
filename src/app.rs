//! The application: built from the settings (`build`), started in flow order (`start`), stopped
//! in flow order under one deadline (`Running::stop`).
//!
//! Data flows one way: ingest -> event log -> dispatcher -> projector and tracker (actors) ->
//! record writer. Every task the application spawns is owned by it and joined when it stops.

use std::time::Duration;

use anyhow::Context;
use metrics::{counter, gauge};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Settings;
use crate::health::{Health, Role};
use crate::ingest::Ingest;
use crate::lease::{Fence, Lease};
use crate::log::EventLog;
use crate::project::{Projector, ProjectorHandle};
use crate::recovery::{Recovery, RecoveryError};
use crate::retry::{Retry, Stop, Transient};
use crate::telemetry::metric;
use crate::tracker::{CallContext, Tracker};
use crate::writer::RecordWriter;
use crate::{db, dispatch, http, prices, schema_check, telemetry};

/// How often the database is checked for readiness.
const DB_PING: Duration = Duration::from_secs(1);

/// Built, not started: the HTTP port is bound and the pool made (it connects lazily, so a
/// database that is down does not stop the service from starting and reporting it).
pub struct Application {
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    /// `http.probe_listen`'s, when set.
    probe: Option<TcpListener>,
    health: Health,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.http.listen)
            .await
            .with_context(|| format!("http.listen: cannot bind {}", settings.http.listen))?;
        let probe = match settings.http.probe_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("http.probe_listen: cannot bind {address}"))?,
            ),
            None => None,
        };
        let pool = db::pool(&settings.database)?;
        Ok(Application {
            settings,
            pool,
            listener,
            probe,
            health: Health::default(),
        })
    }

    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The port of `http.probe_listen`, when set.
    pub fn probe_port(&self) -> Option<u16> {
        self.probe
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs until `shutdown` fires: HTTP (health is reported from the first moment), the
    /// migrations and the schema check, then, as long as it runs, the lease: standby until
    /// this instance holds it, then active (`activate`) until `shutdown` (a graceful stop
    /// within `shutdown.timeout`, the lease released last) or until the lease is lost (every
    /// component stopped at once, its in-memory calls dropped, and back to standby).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            settings,
            pool,
            listener,
            probe,
            health,
        } = self;
        // The recorder first: everything after reports to it.
        let metrics = telemetry::metrics();
        publish_process_info();
        health.set_database_up(false);
        health.set_broker_up(false);
        health.set_role(Role::Starting);
        export_known_series();
        let serving = TaskTracker::new();
        let background = CancellationToken::new();
        let tracker_slot = http::TrackerSlot::default();
        let main = match http::TlsFiles::of(&settings.http) {
            Some(files) => http::Main::Tls(
                http::TlsListener::start(
                    listener,
                    files,
                    settings.http.tls_reload_check,
                    background.clone(),
                )
                .context("TLS on the HTTP listener")?,
            ),
            None => http::Main::Plain(listener),
        };
        serving.spawn(http::serve(
            main,
            probe,
            health.clone(),
            metrics,
            tracker_slot.clone(),
            background.clone(),
        ));
        let result = run_lease_terms(&settings, &pool, &health, &tracker_slot, &shutdown).await;
        background.cancel();
        serving.close();
        serving.wait().await;
        pool.close().await;
        result
    }
}

/// Migrates, checks the schema, then takes turns: standby until the lease is held, active
/// until it is lost or `shutdown` fires.
async fn run_lease_terms(
    settings: &Settings,
    pool: &PgPool,
    health: &Health,
    tracker_slot: &http::TrackerSlot,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if !migrate(settings, pool, shutdown).await? {
        return Ok(());
    }
    health.set_database_up(true);
    if !schema_fits(pool, health, shutdown).await? {
        return Ok(());
    }
    let watch = CancellationToken::new();
    tokio::spawn(watch_database(pool.clone(), health.clone(), watch.clone()));
    let _watching = watch.drop_guard();
    let options = db::connect_options(&settings.database)?;
    let key = settings.cluster.key(&settings.amqp.queue).to_owned();
    let holder = holder_name(settings);
    let check = settings.cluster.lease_check;
    loop {
        let Some(lease) = Lease::acquire(
            &options,
            &key,
            &holder,
            check,
            &settings.backoff,
            health,
            shutdown,
        )
        .await
        else {
            return Ok(());
        };
        counter!(metric::LEASE_TAKEN.name).increment(1);
        let took = Instant::now();
        health.set_role(Role::Active);
        let fence = lease.fence();
        // `active` stops ingest (and recovery): on shutdown, or at once when the lease is lost.
        let active = shutdown.child_token();
        let lost = CancellationToken::new();
        let done_watching = CancellationToken::new();
        let watcher = tokio::spawn(watch_lease(
            lease,
            check,
            active.clone(),
            lost.clone(),
            done_watching.clone(),
        ));
        let mut running = match activate(settings, pool, health, fence, &active).await {
            Ok(running) => running,
            Err(e) => {
                done_watching.cancel();
                if let Ok(lease) = watcher.await {
                    lease.release().await;
                }
                return Err(e);
            }
        };
        tracker_slot.set(running.tracker.clone());
        info!(took = ?took.elapsed(), "active: consuming");
        let ended = running.until_stopped(shutdown, &lost).await;
        tracker_slot.clear();
        match ended {
            Ended::Lost => {
                running.abandon().await;
                health.stand_down();
                counter!(metric::LEASE_LOST.name).increment(1);
                if let Ok(lease) = watcher.await {
                    // Lost: whatever is left of it goes.
                    drop(lease);
                }
                warn!(
                    "standing by: the lease was lost; in-memory calls dropped, the log keeps them"
                );
            }
            Ended::Shutdown | Ended::IngestStopped(None) => {
                running.stop().await;
                done_watching.cancel();
                if let Ok(lease) = watcher.await {
                    lease.release().await;
                }
                return Ok(());
            }
            Ended::IngestStopped(Some(refused)) => {
                running.stop().await;
                done_watching.cancel();
                if let Ok(lease) = watcher.await {
                    lease.release().await;
                }
                return Err(refused.into());
            }
        }
    }
}

/// Holds the lease until it is lost (then cancels `active` and fires `lost`) or until `done`;
/// hands it back for release.
async fn watch_lease(
    mut lease: Lease,
    check: Duration,
    active: CancellationToken,
    lost: CancellationToken,
    done: CancellationToken,
) -> Lease {
    tokio::select! {
        why = lease.watch(check) => {
            error!(reason = %why, "lease lost: stopping consumption and writes at once");
            active.cancel();
            lost.cancel();
        }
        () = done.cancelled() => {}
    }
    lease
}

/// The name this instance gives itself in `cluster_lease`: its node's name and its process id.
fn holder_name(settings: &Settings) -> String {
    let node = settings
        .log
        .node_hostname
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{node}/{}", std::process::id())
}

/// Starts the active instance's components in flow order: prices, projector, writer, tracker,
/// recovery (every open call rebuilt from the log), dispatcher, ingest; every write fenced by
/// the lease. Recovery and ingest stop when `active` fires.
async fn activate(
    settings: &Settings,
    pool: &PgPool,
    health: &Health,
    fence: Fence,
    active: &CancellationToken,
) -> anyhow::Result<Running> {
    let started = Instant::now();
    let tasks = TaskTracker::new();
    let background = CancellationToken::new();
    let (mut running, log, projector_handle) =
        start_downstream(settings, pool, health, fence, tasks, background).await?;
    let tracker = running.tracker.clone();
    let recovered = Recovery {
        log: &log,
        tracker: &tracker,
        projector: &projector_handle,
        backoff: &settings.backoff,
        shutdown: active,
    }
    .run()
    .await;
    match recovered {
        Ok(()) => {
            health.set_recovered();
            info!(took = ?started.elapsed(), "recovery done");
        }
        Err(RecoveryError::Cancelled) => {}
        Err(e) => {
            running.stop().await;
            return Err(e.into());
        }
    }
    let (committed, dispatcher) = dispatch::channel(projector_handle, tracker);
    running.dispatcher = Some(running.tasks.spawn(dispatcher.run()));
    let ingest = Ingest::new(
        settings.amqp.clone(),
        settings.ingest.clone(),
        settings.backoff.clone(),
        log,
        health.clone(),
        committed,
    );
    let refused = running.ingest_refused.clone();
    let consuming = ingest.run(active.clone());
    running.ingest = Some(running.tasks.spawn(async move {
        if let Err(e) = consuming.await
            && let Ok(mut slot) = refused.lock()
        {
            *slot = Some(e);
        }
    }));
    info!(http = %settings.http.listen, "cdr-service running");
    Ok(running)
}

/// Starts what follows the log, in flow order: the price refresh, the projector, the writer and
/// the tracker, their writes fenced by `fence`.
async fn start_downstream(
    settings: &Settings,
    pool: &PgPool,
    health: &Health,
    fence: Fence,
    tasks: TaskTracker,
    background: CancellationToken,
) -> anyhow::Result<(Running, EventLog, ProjectorHandle)> {
    let prices = prices::initial(pool).await;
    tasks.spawn(prices::refresh(
        pool.clone(),
        prices.clone(),
        background.clone(),
    ));

    let (projector, projector_handle) = Projector::new(
        pool.clone(),
        fence.clone(),
        settings.backoff.clone(),
        health.clone(),
    );
    let expired = CancellationToken::new();
    let projector_task = tasks.spawn(projector.run(expired.clone()));
    let (writer, writer_handle) = RecordWriter::new(
        pool.clone(),
        settings.writer.clone(),
        settings.backoff.clone(),
        health.clone(),
        projector_handle.projected(),
    );
    let writer = writer.fenced(fence.clone());
    let writer_drain = CancellationToken::new();
    let writer_task = tasks.spawn(writer.run(writer_drain.clone(), expired.clone()));

    let log =
        EventLog::remembering(pool.clone(), settings.ingest.remembered_messages).fenced(fence);
    let quarantined = log.quarantined_calls().await.unwrap_or_else(|e| {
        warn!(error = %e, "could not read quarantined calls; none are held back");
        Vec::new()
    });
    let context = CallContext {
        log: log.clone(),
        writer: writer_handle,
        prices,
        calls: Default::default(),
        linger: settings.tracker.linger,
        idle_timeout: settings.tracker.idle_timeout,
        rest_after: settings.tracker.rest_after,
        max_events_per_call: settings.tracker.max_events_per_call,
        max_open_calls: settings.tracker.max_open_calls,
        quarantined: Default::default(),
        deferred: Default::default(),
        backoff: settings.backoff.clone(),
        stopping: CancellationToken::new(),
        tasks: tasks.clone(),
    };
    let (tracker, supervisor) = Tracker::start(context, &settings.tracker, quarantined).await?;
    let running = Running {
        bound: settings.shutdown.timeout,
        tasks,
        background,
        expired,
        ingest: None,
        ingest_refused: Default::default(),
        dispatcher: None,
        projector: Some(projector_task),
        tracker,
        supervisor: Some(supervisor),
        writer: Some(writer_task),
        writer_drain,
    };
    Ok((running, log, projector_handle))
}

/// Applies the migrations (unless `database.migrate = false`), retrying while the database is
/// away. False if `shutdown` fired first.
async fn migrate(
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    if !settings.database.migrate {
        return Ok(true);
    }
    let migrated = Retry::new(&settings.backoff, shutdown)
        .run(
            || db::migrate(pool),
            |e, delay| warn!(error = %e, retry_in = ?delay, "database not reachable for migrations; retrying"),
        )
        .await;
    match migrated {
        Ok(()) => {
            info!("schema up to date");
            Ok(true)
        }
        Err(Stop::Cancelled) => Ok(false),
        Err(Stop::Refused(e)) => {
            let what = e.context("database migrations");
            Err(e).context(what)
        }
    }
}

/// How often a schema the service cannot write is checked again.
const SCHEMA_RECHECK: Duration = Duration::from_secs(15);

/// Waits until the database's columns are ones the service can write (`schema_check`),
/// checking again every `SCHEMA_RECHECK`: meanwhile it is not ready, says why in
/// `/health/ready`, and consumes nothing. False if `shutdown` fired first.
async fn schema_fits(
    pool: &PgPool,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    loop {
        match schema_check::check(pool).await {
            Ok(problems) if problems.is_empty() => {
                health.set_schema_problems(Vec::new());
                return Ok(true);
            }
            Ok(problems) => {
                for p in &problems {
                    error!(table = %p.table, column = %p.column, expected = %p.expected,
                        found = %p.found,
                        "the database has a column the service cannot write; not ready, consuming nothing");
                }
                health.set_schema_problems(problems.iter().map(ToString::to_string).collect());
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, "could not read the schema; checking again");
            }
            Err(e) => {
                let what = db::refusal_context(&e, "schema check");
                return Err(e).context(what);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(SCHEMA_RECHECK) => {}
        }
    }
}

/// Every labelled counter at 0 from the start for each label value known in advance
/// (dead-letter reasons, event types and formats, record statuses, dispositions and causes),
/// as `telemetry` does for the counters without labels, so that dashboards and `rate()` have
/// their series before the first incident. `absolute` never lowers a counter, so a second
/// service in one process changes nothing.
fn export_known_series() {
    use crate::event::{EventKind, Format, Reject};
    use crate::merge::{Disposition, Status};
    use crate::writer::FlushCause;

    for reason in Reject::DEAD_LETTER_CODES
        .into_iter()
        .chain([crate::ingest::UNSTORABLE])
    {
        counter!(metric::EVENTS_REJECTED.name, "reason" => reason).absolute(0);
    }
    for event_type in EventKind::NAMES {
        for format in Format::ALL {
            counter!(metric::EVENTS_RECEIVED.name,
                "event_type" => event_type, "format" => format.as_str())
            .absolute(0);
        }
    }
    for status in Status::ALL {
        for disposition in Disposition::ALL {
            for cause in FlushCause::ALL {
                counter!(metric::RECORDS_WRITTEN.name,
                    "status" => status.as_str(),
                    "disposition" => disposition.as_str(),
                    "cause" => cause.as_str())
                .absolute(0);
            }
        }
    }
    counter!(metric::PROJECTION_ROWS.name, "table" => "call_dialog_events").absolute(0);
    counter!(metric::EVENT_FIELDS_DROPPED.name, "field" => "trace_id").absolute(0);
    for outcome in ["loaded", "failed"] {
        counter!(metric::HTTP_TLS_RELOADS.name, "outcome" => outcome).absolute(0);
    }
    for anomaly in crate::merge::ANOMALIES {
        counter!(metric::RECORD_ANOMALIES.name, "anomaly" => anomaly).absolute(0);
    }
    // Platform events are counted by their own type names, an open set: the one known in
    // advance is the bucket the names past the label bound go to.
    for format in Format::ALL {
        counter!(metric::PLATFORM_EVENTS.name,
            "event_type" => crate::ingest::OTHER_PLATFORM_EVENTS, "format" => format.as_str())
        .absolute(0);
    }
}

/// The build and the runtime this process runs on, as gauges.
fn publish_process_info() {
    gauge!(metric::BUILD_INFO.name, "version" => env!("CARGO_PKG_VERSION"), "commit" => option_env!("CDR_GIT_COMMIT").unwrap_or("unknown")).set(1.0);
    // The runtime this runs on, whoever built it (the binary sizes it from
    // `runtime.worker_threads`).
    gauge!(metric::RUNTIME_WORKER_THREADS.name)
        .set(tokio::runtime::Handle::current().metrics().num_workers() as f64);
}

/// A started service: its components' tasks, and the signals that stop them in order.
/// How an active term ended.
enum Ended {
    Shutdown,
    /// The lease was lost: stand down at once.
    Lost,
    /// Ingest ended on its own: with the refusal that stopped it (TLS), the service stops
    /// with that error.
    IngestStopped(Option<crate::ingest::IngestError>),
}

/// An active instance's components.
pub struct Running {
    bound: Duration,
    /// Every task the active term spawned.
    tasks: TaskTracker,
    /// Stops the tasks that serve the others: the price refresh.
    background: CancellationToken,
    /// Fires when the shutdown deadline has passed: the projector and the writer return at
    /// once, leaving what they hold to the log.
    expired: CancellationToken,
    ingest: Option<JoinHandle<()>>,
    /// Why ingest stopped on its own, when the broker refused what only the settings can fix.
    ingest_refused: std::sync::Arc<std::sync::Mutex<Option<crate::ingest::IngestError>>>,
    dispatcher: Option<JoinHandle<()>>,
    projector: Option<JoinHandle<()>>,
    tracker: Tracker,
    supervisor: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    /// Tells the writer that no record will come any more: write what is queued and return.
    writer_drain: CancellationToken,
}

impl Running {
    /// Waits until `shutdown` fires, the lease is `lost`, or ingest ends on its own (it
    /// should not).
    async fn until_stopped(
        &mut self,
        shutdown: &CancellationToken,
        lost: &CancellationToken,
    ) -> Ended {
        let Some(ingest) = self.ingest.as_mut() else {
            return tokio::select! {
                _ = shutdown.cancelled() => Ended::Shutdown,
                _ = lost.cancelled() => Ended::Lost,
            };
        };
        tokio::select! {
            biased;
            _ = lost.cancelled() => Ended::Lost,
            _ = shutdown.cancelled() => Ended::Shutdown,
            r = ingest => {
                self.ingest = None;
                if lost.is_cancelled() {
                    return Ended::Lost;
                }
                let refused = self.ingest_refused.lock().ok().and_then(|mut r| r.take());
                match refused {
                    Some(refused) => {
                        error!(error = %refused, "ingest stopped: the broker refused what only the settings can fix");
                        Ended::IngestStopped(Some(refused))
                    }
                    None => {
                        error!(result = ?r, "ingest ended unexpectedly");
                        Ended::IngestStopped(None)
                    }
                }
            }
        }
    }

    /// Stands down at once, the lease lost: no more deliveries taken, acked or committed, every
    /// component stopped without finishing its work, the calls in memory dropped. Unacked
    /// deliveries go back to the queue when the broker connection closes; whatever was
    /// committed is the next active's to recover (its writes are fenced meanwhile).
    async fn abandon(mut self) {
        let started = Instant::now();
        self.expired.cancel();
        for task in [self.ingest.take(), self.dispatcher.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        self.tracker.abandon();
        for task in [
            self.projector.take(),
            self.supervisor.take(),
            self.writer.take(),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
            let _ = task.await;
        }
        self.background.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.bound, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("tasks of the lost term did not stop within the bound");
        }
        info!(took = ?started.elapsed(), "stood down");
    }

    /// Stops in flow order within the shutdown bound: no new deliveries (ingest commits and
    /// acks what it holds; its stop is the `shutdown` token it runs with), then the dispatcher
    /// hands on what was committed, the projector writes it, the actors stop (ended calls
    /// write their records, open ones are left to recovery), the writer drains, and the
    /// background tasks end. Past the deadline each stage is cut short: whatever it leaves is
    /// rebuilt from the log at the next start.
    pub async fn stop(mut self) {
        let started = Instant::now();
        let deadline = started + self.bound;
        info!(bound = ?self.bound, "shutting down");
        join_by(self.ingest.take(), deadline, &self.expired, "ingest").await;
        join_by(
            self.dispatcher.take(),
            deadline,
            &self.expired,
            "dispatcher",
        )
        .await;
        join_by(self.projector.take(), deadline, &self.expired, "projector").await;
        self.tracker
            .shutdown(deadline.saturating_duration_since(Instant::now()))
            .await;
        join_by(
            self.supervisor.take(),
            deadline,
            &self.expired,
            "supervisor",
        )
        .await;
        self.writer_drain.cancel();
        join_by(self.writer.take(), deadline, &self.expired, "writer").await;
        self.background.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("background tasks did not stop within the bound");
        }
        info!(took = ?started.elapsed(), "stopped");
    }
}

/// Waits for one stage's task until the deadline; past it, fires `expired` and aborts the task
/// (unacked deliveries are redelivered, unwritten rows rebuilt from the log).
async fn join_by(
    task: Option<JoinHandle<()>>,
    deadline: Instant,
    expired: &CancellationToken,
    stage: &'static str,
) {
    let Some(mut task) = task else { return };
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        warn!(
            stage,
            "did not stop within the shutdown bound; the next start rebuilds what it left from the log"
        );
        expired.cancel();
        task.abort();
        let _ = task.await;
    }
}

/// Keeps readiness honest while no traffic flows: a database that went away is noticed within
/// `DB_PING` even if no write has failed yet.
async fn watch_database(pool: PgPool, health: Health, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DB_PING);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
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
