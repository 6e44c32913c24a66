//! Phase 2, the service drain: the storm's backlog in the service's queue, the release binary
//! started as a child and timed from its start until every record is in `calls`, every record
//! then verified against the storm's ground truth.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::clock::{Drain, Samples};
use crate::cpu::{CpuShares, MachineTicks, Snapshot, cpu_snapshot, machine_ticks};
use crate::env::{Env, Service, Writes, publish_backlog, scrape};
use crate::{SAMPLE, Storm, StormOptions, Verifier, migrate};

/// One service drain.
pub struct ServiceDrain {
    pub drain: Drain,
    pub startup: f64,
    /// From the first to the last logged event (the sequence of call_events).
    pub ingest_seconds: f64,
    pub records_verified: usize,
    pub records_mismatched: usize,
    pub records_missing: usize,
    pub record_samples: Samples,
    /// CPU in the ingest window, and from process start to the last record.
    pub cpu: CpuShares,
    pub cpu_whole: CpuShares,
    /// The service's log and record writes (from its metrics).
    pub writes: Writes,
    pub publish_rate: f64,
}

/// The last event id handed out by the log.
pub async fn log_sequence(pool: &PgPool) -> anyhow::Result<u64> {
    let seq: i64 = sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM call_events_event_id_seq",
    )
    .fetch_one(pool)
    .await?;
    Ok(seq as u64)
}

/// Records the service has written (every status), by its own counter.
async fn records_written(service: &Service) -> u64 {
    scrape(service)
        .await
        .iter()
        .filter(|(k, _)| k.starts_with("cdr_records_written_total"))
        .map(|(_, v)| *v)
        .sum::<f64>() as u64
}

/// (events logged so far by the sequence, rows in calls, sum of their event counts).
async fn db_progress(pool: &PgPool) -> anyhow::Result<(u64, u64, u64)> {
    let (seq, rows, events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END \
                 FROM call_events_event_id_seq), \
                count(*), coalesce(sum(event_count), 0)::bigint FROM calls",
    )
    .fetch_one(pool)
    .await?;
    Ok((seq as u64, rows as u64, events as u64))
}

/// Seconds from `started_at` to the transaction of the last record written, if any.
async fn last_record_seconds(
    pool: &PgPool,
    started_at: DateTime<Utc>,
) -> anyhow::Result<Option<f64>> {
    let last: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT max(updated_at) FROM calls")
        .fetch_one(pool)
        .await?;
    Ok(last.map(|t| (t - started_at).as_seconds_f64()))
}

/// The backlog in the service's queue, before the service starts.
struct Backlog {
    pool: PgPool,
    verifier: Verifier,
    publish_started_at: DateTime<Utc>,
    published_at: Instant,
    publish_rate: f64,
}

impl Backlog {
    /// Declares the service's queue, migrates its database and publishes the storm into it.
    async fn publish(env: &mut Env, storm: &Storm) -> anyhow::Result<Backlog> {
        let s = env.settings.clone();
        env.declare(&s.amqp.exchange, &s.amqp.queue).await?;
        // The schema first, so the verifier can read `calls` before the service starts (the
        // service's own migration then finds nothing to do).
        let pool = PgPool::connect(&env.db_url).await?;
        migrate(&pool).await?;
        let verifier = Verifier::prepare(&s, storm).await?;
        progress!(
            "service drain: publishing the backlog ({} messages) into {}",
            storm.main.len(),
            s.amqp.queue
        );
        let publish_started_at = Utc::now();
        let publish_rate =
            publish_backlog(&s.amqp.exchange, &storm.main, "service backlog").await?;
        let published_at = Instant::now();
        Ok(Backlog {
            pool,
            verifier,
            publish_started_at,
            published_at,
            publish_rate,
        })
    }
}

/// What the poll saw, every `SAMPLE` from the service's start: events logged, records written,
/// the CPU of every process; and when it saw every record.
struct Polled {
    events: Samples,
    records: Samples,
    cpu: Vec<(f64, Snapshot, MachineTicks)>,
    seconds: f64,
}

/// Polls until every one of `calls` records is in `calls` with its `distinct` events (at most
/// 10 minutes).
async fn poll_records(
    pool: &PgPool,
    service: &Service,
    (calls, distinct): (u64, u64),
    started: Instant,
    cpu_before: (Snapshot, MachineTicks),
) -> anyhow::Result<Polled> {
    let mut events: Samples = vec![(0.0, 0)];
    let mut records: Samples = vec![(0.0, 0)];
    let mut last_line = Instant::now();
    let deadline = started + Duration::from_secs(600);
    // CPU of every process at each sample, to tell what the ingest window was bound by.
    let mut cpu = vec![(0.0, cpu_before.0, cpu_before.1)];
    let seconds = loop {
        // Cheap while draining (the log's sequence, the service's record counter), so that
        // measuring does not slow the database down; `calls` is read once the counter says
        // every record may be there.
        let seq = log_sequence(pool).await?;
        let written = records_written(service).await;
        let t = started.elapsed().as_secs_f64();
        events.push((t, seq));
        records.push((t, written.min(calls)));
        cpu.push((t, cpu_snapshot(), machine_ticks()));
        if written >= calls {
            let (_, rows, folded) = db_progress(pool).await?;
            if rows >= calls && folded >= distinct {
                break t;
            }
        }
        if Instant::now() > deadline {
            progress!("service drain: not every record after 10 minutes; verifying what is there");
            break t;
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("service drain: {seq} events logged, {written}/{calls} records written");
            last_line = Instant::now();
        }
        tokio::time::sleep(SAMPLE).await;
    };
    Ok(Polled {
        events,
        records,
        cpu,
        seconds,
    })
}

impl Polled {
    /// The ingest window, as indices of the samples: from the last sample before any event was
    /// logged to the first one with every event logged.
    fn ingest_window(&self) -> (usize, usize) {
        let events = &self.events;
        let final_seq = events.last().map_or(0, |p| p.1);
        let i_first = events
            .iter()
            .position(|p| p.1 > 0)
            .map_or(0, |i| i.saturating_sub(1));
        let i_last = events
            .iter()
            .position(|p| p.1 >= final_seq)
            .unwrap_or(events.len() - 1)
            .max(i_first);
        (i_first, i_last)
    }

    /// The CPU between samples `a` and `b`.
    fn shares(&self, a: usize, b: usize, service_pid: u32) -> CpuShares {
        let (ta, ca, ma) = &self.cpu[a];
        let (tb, cb, mb) = &self.cpu[b];
        CpuShares::between(
            ca,
            cb,
            (*ma, *mb),
            Duration::from_secs_f64((tb - ta).max(1e-3)),
            service_pid,
        )
    }
}

pub async fn service_drain(
    env: &mut Env,
    storm: &Storm,
    o: &StormOptions,
) -> anyhow::Result<ServiceDrain> {
    service_drain_with(env, storm, o, &[]).await
}

/// A service drain with the service given `vars` over the bench's settings (its peers' URLs
/// and TLS, say).
pub async fn service_drain_with(
    env: &mut Env,
    storm: &Storm,
    o: &StormOptions,
    vars: &[(&str, String)],
) -> anyhow::Result<ServiceDrain> {
    let backlog = Backlog::publish(env, storm).await?;
    let pool = &backlog.pool;
    let calls = storm.calls.len() as u64;
    let distinct: u64 = storm.calls.iter().map(|c| c.distinct_events as u64).sum();
    let cpu_before = (cpu_snapshot(), machine_ticks());
    let started = Instant::now();
    let started_at = Utc::now();
    progress!("service drain: starting the release binary");
    let service = Service::start_with(env, vars).await?;
    progress!(
        "service drain: ready {:.2}s after start; draining",
        service.startup.as_secs_f64()
    );
    let polled = poll_records(pool, &service, (calls, distinct), started, cpu_before).await?;
    let seen = polled.seconds;
    // The drain ends with the last record's transaction (`updated_at`, as the flush latency
    // counts it), not at the poll that saw it: the poll comes up to `SAMPLE` later, and the
    // broker drains are timed to their last ack, not to a poll.
    let seconds = last_record_seconds(pool, started_at)
        .await?
        .map_or(seen, |s| s.clamp(0.0, seen));
    let (i_first, i_last) = polled.ingest_window();
    let (first, last) = (polled.events[i_first].0, polled.events[i_last].0);
    let cpu = polled.shares(i_first, i_last, service.pid());
    let cpu_whole = polled.shares(0, polled.cpu.len() - 1, service.pid());
    progress!(
        "service drain: every record present {seconds:.2}s after the process started (seen by the poll at {seen:.2}s); verifying"
    );
    let outcome = backlog
        .verifier
        .run(
            &env.settings,
            storm,
            o,
            backlog.publish_started_at,
            backlog.published_at,
        )
        .await?;
    outcome.print(5);
    let writes = Writes::from_metrics(&scrape(&service).await, last - first);
    progress!("service drain: service's own writes: {writes}");
    let startup = service.startup.as_secs_f64();
    service.stop().await?;
    backlog.pool.close().await;
    let drain = Drain {
        events: storm.main.len(),
        seconds,
        samples: polled.events,
    };
    progress!(
        "service drain: {} messages in {:.2}s from process start: {:.0} events/s; cpu {}",
        drain.events,
        drain.seconds,
        drain.rate(),
        cpu.cores_used
    );
    Ok(ServiceDrain {
        drain,
        startup,
        ingest_seconds: (last - first).max(SAMPLE.as_secs_f64()),
        records_verified: outcome.correct,
        records_mismatched: outcome.mismatches.len(),
        records_missing: outcome.missing.len(),
        record_samples: polled.records,
        cpu,
        cpu_whole,
        writes,
        publish_rate: backlog.publish_rate,
    })
}
