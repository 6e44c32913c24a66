//! Phase 7, bounds: memory at the open-call limit, and while the largest allowed call is
//! re-activated.
//!
//! - limit: the service started with `tracker.max_open_calls` = n, then 10% more open calls
//!   than that published; RSS once n rest and the rest are deferred (the limit holds memory
//!   where it is, whatever comes past it);
//! - largest call: a call of `tracker.max_events_per_call` - 1 events of about 1 MB each (the
//!   body limit), written into the log directly (what the broker and the ingest would take
//!   minutes to carry), then one late event published: the service re-activates the call from
//!   its whole history, a page at a time. RSS sampled every 10 ms from before the event until
//!   the record holds every event; the peak against the history's size.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use crate::Publisher;
use crate::cpu::rss_bytes;
use crate::env::{Env, Service, amqp_url, scrape};
use crate::memory::{publish_open_calls, settled_rss, wait_settled};
use crate::stats::finite;

/// The service's default `tracker.max_events_per_call`.
const MAX_EVENTS_PER_CALL: usize = 10_000;
/// Padding per event of the largest call: with the envelope, just under the 1 MiB body limit.
const PAD: usize = 1_040_000;

#[derive(Debug, Clone, Serialize)]
pub struct Bounds {
    /// `tracker.max_open_calls` given to the service, and the open calls published.
    pub max_open_calls: usize,
    pub open_calls_published: usize,
    pub calls_in_memory: u64,
    pub calls_deferred: Option<f64>,
    pub limit_rss_before_bytes: u64,
    pub limit_rss_after_bytes: u64,
    pub limit_rss_bytes_per_call_in_memory: Option<f64>,
    /// The largest call: its events, the bytes of their bodies, and the service's RSS idle,
    /// at its peak while re-activating it, and the peak over the idle RSS.
    pub largest_call_events: usize,
    pub largest_call_history_bytes: i64,
    pub reactivation_rss_idle_bytes: u64,
    pub reactivation_rss_peak_bytes: u64,
    pub reactivation_rss_growth_bytes: u64,
    /// The late event published -> the record holds every event.
    pub reactivation_seconds: Option<f64>,
}

pub async fn bounds(env: &Env, n: usize) -> anyhow::Result<Bounds> {
    let pool = PgPool::connect(&env.db_url).await?;
    sqlx::query("TRUNCATE call_events, open_calls, calls, usage_records, call_dialog_events")
        .execute(&pool)
        .await?;
    let published = n + n / 10;
    let service = Service::start_with(
        env,
        &[
            ("CDR__TRACKER__REST_AFTER", "2s".to_owned()),
            ("CDR__TRACKER__MAX_OPEN_CALLS", n.to_string()),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let limit_rss_before = rss_bytes(service.pid())?;
    progress!(
        "bounds: max_open_calls {n}; publishing {published} open calls, idle RSS {:.1} MiB",
        limit_rss_before as f64 / 1048576.0
    );
    publish_open_calls(env, "bounds", published, 7).await?;
    let (in_memory, _) = wait_settled(&service, "bounds", n, true).await;
    let limit_rss_after = settled_rss(service.pid()).await?;
    let deferred = scrape(&service)
        .await
        .get("cdr_calls_deferred_total")
        .copied();
    service.stop().await?;
    progress!(
        "bounds: {in_memory} calls in memory, {} deferrals, RSS {:.1} -> {:.1} MiB",
        deferred.unwrap_or(0.0),
        limit_rss_before as f64 / 1048576.0,
        limit_rss_after as f64 / 1048576.0
    );

    sqlx::query("TRUNCATE call_events, open_calls, calls, usage_records, call_dialog_events")
        .execute(&pool)
        .await?;
    let call_id = format!("bench-largest-{}", env.id);
    let events = MAX_EVENTS_PER_CALL - 1;
    let inserted = Instant::now();
    insert_largest_call(&pool, &call_id, events).await?;
    let history: i64 = sqlx::query_scalar(
        "SELECT sum(octet_length(body))::bigint FROM call_events WHERE call_id = $1",
    )
    .bind(&call_id)
    .fetch_one(&pool)
    .await?;
    progress!(
        "bounds: largest call logged, {events} events, {:.0} MiB of bodies, in {:.0}s",
        history as f64 / 1048576.0,
        inserted.elapsed().as_secs_f64()
    );
    let service = Service::start(env).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_bytes(service.pid())?;
    let peak = Arc::new(AtomicU64::new(idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), service.pid());
        async move {
            while sampling.load(Ordering::Acquire) {
                if let Ok(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let publisher = Publisher::connect(&amqp_url(), &env.settings.amqp.exchange).await?;
    let late = json!({"eventType": "call.ended", "callId": call_id,
                      "timestamp": "2026-01-01T00:30:00Z", "reason": "normal_clearing"});
    let published_at = Instant::now();
    publisher.publish(&late).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seconds = None;
    while Instant::now() < deadline {
        let count: Option<i32> =
            sqlx::query_scalar("SELECT event_count FROM calls WHERE call_id = $1")
                .bind(&call_id)
                .fetch_optional(&pool)
                .await?;
        if count == Some(MAX_EVENTS_PER_CALL as i32) {
            seconds = Some(published_at.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sampling.store(false, Ordering::Release);
    let _ = sampler.await;
    drop(publisher);
    service.stop().await?;
    pool.close().await;
    let peak = peak.load(Ordering::Acquire);
    progress!(
        "bounds: largest call re-activated in {:.1}s; RSS idle {:.1} MiB, peak {:.1} MiB",
        seconds.unwrap_or(f64::NAN),
        idle as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    Ok(Bounds {
        max_open_calls: n,
        open_calls_published: published,
        calls_in_memory: in_memory,
        calls_deferred: deferred,
        limit_rss_before_bytes: limit_rss_before,
        limit_rss_after_bytes: limit_rss_after,
        limit_rss_bytes_per_call_in_memory: finite(
            limit_rss_after.saturating_sub(limit_rss_before) as f64 / in_memory.max(1) as f64,
            0,
        ),
        largest_call_events: events,
        largest_call_history_bytes: history,
        reactivation_rss_idle_bytes: idle,
        reactivation_rss_peak_bytes: peak,
        reactivation_rss_growth_bytes: peak.saturating_sub(idle),
        reactivation_seconds: seconds.and_then(|s| finite(s, 2)),
    })
}

/// The call's events as a producer of dialog turns would send them, written as the service's
/// log keeps them (exact bytes, their hash, the JSON), by the database itself: the padding
/// compresses, so the log stays small on disk while every body read back is about 1 MB.
async fn insert_largest_call(pool: &PgPool, call_id: &str, events: usize) -> anyhow::Result<()> {
    const PER_STATEMENT: usize = 250;
    for first in (0..events).step_by(PER_STATEMENT) {
        let last = (first + PER_STATEMENT).min(events) - 1;
        sqlx::query(
            "WITH b AS ( \
               SELECT i, convert_to(json_build_object( \
                 'eventType', 'dialog.turn.completed', 'callId', $1::text, \
                 'timestamp', to_char(timestamptz '2026-01-01 00:00:00+00' + i * interval '10 ms', \
                                      'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
                 'turnIndex', i, 'userText', 'turn ' || i, 'padding', repeat('x', $4))::text, 'UTF8') AS body \
               FROM generate_series($2::int, $3::int) AS i) \
             INSERT INTO call_events (call_id, event_type, event_timestamp, payload, received_at, \
                                      trace_id, body_sha256, body, body_encoding) \
             SELECT $1, 'dialog.turn.completed', \
                    timestamptz '2026-01-01 00:00:00+00' + i * interval '10 ms', \
                    convert_from(body, 'UTF8')::jsonb, now(), NULL, sha256(body), body, 'json' \
             FROM b",
        )
        .bind(call_id)
        .bind(first as i32)
        .bind(last as i32)
        .bind(PAD as i32)
        .execute(pool)
        .await?;
    }
    Ok(())
}
