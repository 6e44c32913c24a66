//! Phase 4, the steady state: the service fed at a fixed rate; the flush latency from
//! publishing a call's `call.ended` to its row's `updated_at` (the writer's transaction time).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Confirmation, Connection, ConnectionProperties};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::clock::Samples;
use crate::cpu::{CpuShares, cpu_snapshot, machine_ticks};
use crate::env::{Env, Service, Writes, amqp_url, scrape};
use crate::service_drain::log_sequence;
use crate::stats::percentile;
use crate::{
    EventKind, IN_FLIGHT, LINGER, Limits, Message, MessageKind, SAMPLE, Settings, Storm,
    StormOptions, event, generate, limits, queue_depth, storm_options,
};

/// Ids per `ANY($1)` query.
const CHUNK: usize = 5000;

/// The steady state's figures.
pub struct Steady {
    pub target: f64,
    pub messages: usize,
    pub publish_seconds: f64,
    /// Flush latencies, ms, one per ended call; sorted.
    pub latencies: Vec<f64>,
    /// Of each: from publishing `call.ended` to the service receiving it (its stored
    /// `received_at`), and from there to the row, ms; sorted each.
    pub transit: Vec<f64>,
    pub in_service: Vec<f64>,
    pub calls_waited: usize,
    pub calls_missing: usize,
    pub max_queue_depth: u32,
    pub queue_depth_at_end: u32,
    pub published: Samples,
    pub logged: Samples,
    /// CPU while publishing, and the service's writes.
    pub cpu: CpuShares,
    pub writes: Writes,
}

/// Publishes `msgs` at `rate` messages per second (as fast as confirms allow when behind),
/// calling `mark(i)` right after message `i` is handed to the broker.
async fn publish_paced(
    exchange: &str,
    msgs: &[Message],
    rate: f64,
    counter: &AtomicU64,
    mut mark: impl FnMut(usize),
) -> anyhow::Result<Duration> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = tokio::time::Instant::now();
    let mut pending = VecDeque::with_capacity(IN_FLIGHT);
    let settle = |c: Confirmation| match c {
        Confirmation::Nack(_) => bail!("the broker nacked a message"),
        _ => Ok(()),
    };
    for (i, m) in msgs.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due > tokio::time::Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due).await;
        }
        while pending.len() >= IN_FLIGHT {
            let confirm: lapin::PublisherConfirm = pending.pop_front().expect("a pending confirm");
            settle(confirm.await?)?;
        }
        let confirm = ch
            .basic_publish(
                exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                cdr_storm::publish::properties(m),
            )
            .await?;
        mark(i);
        counter.store(i as u64 + 1, Ordering::Relaxed);
        pending.push_back(confirm);
    }
    while let Some(confirm) = pending.pop_front() {
        settle(confirm.await?)?;
    }
    let elapsed = started.elapsed();
    let _ = conn.close(200, "bye".into()).await;
    Ok(elapsed)
}

/// A call's row as the steady state reads it: id, events folded, `updated_at`, and when the
/// service received the call's first `call.ended`.
type EndedRow = (String, i32, DateTime<Utc>, Option<DateTime<Utc>>);

/// For each message of the storm, the call whose `call.ended` it is.
fn ended_messages(storm: &Storm, limits: Limits) -> Vec<Option<u32>> {
    let now = Utc::now();
    storm
        .main
        .iter()
        .map(|m| match m.kind {
            MessageKind::Event { call } => match event::decode(&m.body, now, limits) {
                Ok(e) if matches!(e.kind, EventKind::Ended { .. }) => Some(call),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Samples, every `SAMPLE` until `stop`: messages published (the counter), events logged (the
/// log's sequence, from where it stands now) and the queue's largest depth.
fn spawn_sampler(
    pool: PgPool,
    queue: String,
    published: Arc<AtomicU64>,
    stop: CancellationToken,
    started: Instant,
) -> tokio::task::JoinHandle<(Samples, Samples, u32)> {
    tokio::spawn(async move {
        let amqp = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .ok();
        let mut pub_s: Samples = vec![(0.0, 0)];
        let mut log_s: Samples = vec![(0.0, 0)];
        let mut max_depth = 0u32;
        let base = log_sequence(&pool).await.unwrap_or(0);
        let mut tick = tokio::time::interval(SAMPLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let t = started.elapsed().as_secs_f64();
            pub_s.push((t, published.load(Ordering::Relaxed)));
            if let Ok(seq) = log_sequence(&pool).await {
                log_s.push((t, seq.saturating_sub(base)));
            }
            if let Some(c) = &amqp
                && let Some(d) = queue_depth(c, &queue).await
            {
                max_depth = max_depth.max(d);
            }
        }
        if let Some(c) = amqp {
            let _ = c.close(200, "bye".into()).await;
        }
        (pub_s, log_s, max_depth)
    })
}

/// The depth of `queue` now (0 if it cannot be read).
async fn depth_now(queue: &str) -> anyhow::Result<u32> {
    let c = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let d = queue_depth(&c, queue).await.unwrap_or(0);
    let _ = c.close(200, "bye".into()).await;
    Ok(d)
}

/// The flush latencies of the calls waited for, ms, in the order their rows were seen, and how
/// many were waited for and never showed complete.
struct Flushes {
    latencies: Vec<f64>,
    transit: Vec<f64>,
    in_service: Vec<f64>,
    waited: usize,
    missing: usize,
}

impl Flushes {
    fn sorted(mut self) -> Flushes {
        self.latencies.sort_by(f64::total_cmp);
        self.transit.sort_by(f64::total_cmp);
        self.in_service.sort_by(f64::total_cmp);
        self
    }
}

/// Waits (at most 300 s) for the complete row of every call whose `call.ended` was published
/// (`ended_at`, by call).
async fn wait_for_rows(
    pool: &PgPool,
    storm: &Storm,
    ended_at: &[Option<DateTime<Utc>>],
) -> anyhow::Result<Flushes> {
    // (call id, its distinct events, when its `call.ended` was published).
    let waited: Vec<(&str, i32, DateTime<Utc>)> = storm
        .calls
        .iter()
        .enumerate()
        .filter_map(|(i, c)| ended_at[i].map(|t| (c.call_id.as_str(), c.distinct_events as i32, t)))
        .collect();
    let mut pending: HashMap<&str, (i32, DateTime<Utc>)> =
        waited.iter().map(|&(id, n, t)| (id, (n, t))).collect();
    let mut latencies = Vec::with_capacity(waited.len());
    let mut transit = Vec::with_capacity(waited.len());
    let mut in_service = Vec::with_capacity(waited.len());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ids: Vec<&str> = pending.keys().copied().collect();
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<EndedRow> = sqlx::query_as(
                "SELECT c.call_id, c.event_count, c.updated_at, \
                        (SELECT min(e.received_at) FROM call_events e \
                          WHERE e.call_id = c.call_id AND e.event_type = 'call.ended') \
                 FROM calls c WHERE c.call_id = ANY($1)",
            )
            .bind(chunk)
            .fetch_all(pool)
            .await?;
            let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
            for (id, n, updated, received) in rows {
                if let Some(&(want, ended)) = pending.get(id.as_str())
                    && n >= want
                {
                    pending.remove(id.as_str());
                    latencies.push(ms(updated - ended));
                    if let Some(received) = received {
                        transit.push(ms(received - ended));
                        in_service.push(ms(updated - received));
                    }
                }
            }
        }
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Flushes {
        latencies,
        transit,
        in_service,
        waited: waited.len(),
        missing: pending.len(),
    })
}

/// What publishing at the steady rate took, and the CPU over it.
struct Publishing {
    elapsed: Duration,
    cpu: CpuShares,
}

/// Publishes the storm at `rate` into the service's exchange, noting in `ended_at` when each
/// call's first `call.ended` (`ends`, by message) went out.
async fn publish_steady(
    s: &Settings,
    storm: &Storm,
    rate: f64,
    ends: &[Option<u32>],
    ended_at: &mut [Option<DateTime<Utc>>],
    published: &AtomicU64,
    service_pid: u32,
) -> anyhow::Result<Publishing> {
    let mut last_line = Instant::now();
    let cpu_before = (cpu_snapshot(), machine_ticks());
    let elapsed = publish_paced(&s.amqp.exchange, &storm.main, rate, published, |i| {
        if let Some(call) = ends[i] {
            let slot = &mut ended_at[call as usize];
            if slot.is_none() {
                *slot = Some(Utc::now());
            }
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("steady state: {i}/{} published", storm.main.len());
            last_line = Instant::now();
        }
    })
    .await?;
    let cpu = CpuShares::between(
        &cpu_before.0,
        &cpu_snapshot(),
        (cpu_before.1, machine_ticks()),
        elapsed,
        service_pid,
    );
    Ok(Publishing { elapsed, cpu })
}

/// The service fed `rate` events/s for `secs` seconds (of calls of `events_per_call`, as the
/// drains'); returns the figures and the storm's options.
pub async fn steady_state(
    env: &Env,
    rate: f64,
    secs: f64,
    events_per_call: f64,
) -> anyhow::Result<(Steady, StormOptions)> {
    let s = env.settings.clone();
    let calls = ((rate * secs) / events_per_call).ceil().max(1.0) as usize;
    let o = storm_options(calls, 2);
    progress!("steady state: generating {calls} calls");
    let storm = generate(&o, limits(&s));
    // Which message is each call's first `call.ended`.
    let ends = ended_messages(&storm, limits(&s));
    let mut ended_at: Vec<Option<DateTime<Utc>>> = vec![None; storm.calls.len()];

    let pool = PgPool::connect(&env.db_url).await?;
    let service = Service::start(env).await?;
    progress!(
        "steady state: service ready; publishing {} messages at {rate:.0}/s (~{secs:.0}s)",
        storm.main.len()
    );
    // Sampler: published (counter), logged (sequence) and the queue's depth.
    let published = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let started = Instant::now();
    let sampler = spawn_sampler(
        pool.clone(),
        s.amqp.queue.clone(),
        published.clone(),
        stop.clone(),
        started,
    );
    let (pid, ended) = (service.pid(), &mut ended_at[..]);
    let Publishing { elapsed, cpu } =
        publish_steady(&s, &storm, rate, &ends, ended, &published, pid).await?;
    let queue_depth_at_end = depth_now(&s.amqp.queue).await?;
    progress!(
        "steady state: published {} messages in {:.1}s ({:.0}/s); queue depth now {queue_depth_at_end}; waiting for the records",
        storm.main.len(),
        elapsed.as_secs_f64(),
        storm.main.len() as f64 / elapsed.as_secs_f64()
    );
    let flushes = wait_for_rows(&pool, &storm, &ended_at).await?;
    stop.cancel();
    let (published, logged, max_queue_depth) = sampler.await?;
    let writes = Writes::from_metrics(&scrape(&service).await, elapsed.as_secs_f64());
    service.stop().await?;
    pool.close().await;
    let flushes = flushes.sorted();
    let steady = Steady {
        target: rate,
        messages: storm.main.len(),
        publish_seconds: elapsed.as_secs_f64(),
        calls_waited: flushes.waited,
        calls_missing: flushes.missing,
        latencies: flushes.latencies,
        transit: flushes.transit,
        in_service: flushes.in_service,
        max_queue_depth,
        queue_depth_at_end,
        published,
        logged,
        cpu,
        writes,
    };
    steady.print();
    Ok((steady, o))
}

impl Steady {
    /// The flush latencies, as progress lines.
    fn print(&self) {
        progress!(
            "steady state: {} calls, flush latency p50 {:.0} ms, p99 {:.0} ms (linger {} included), max queue depth {}",
            self.latencies.len(),
            percentile(&self.latencies, 0.5),
            percentile(&self.latencies, 0.99),
            humantime::format_duration(LINGER),
            self.max_queue_depth
        );
        progress!(
            "steady state: of which call.ended published -> received by the service p50 {:.0} ms, p99 {:.0} ms; received -> row committed p50 {:.0} ms, p99 {:.0} ms",
            percentile(&self.transit, 0.5),
            percentile(&self.transit, 0.99),
            percentile(&self.in_service, 0.5),
            percentile(&self.in_service, 0.99),
        );
    }
}
