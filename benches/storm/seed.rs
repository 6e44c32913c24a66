//! Phase 3, the seed baseline: what the platform's original consumer did, per event and
//! serially: insert the raw event, upsert the `calls` column of that event type (autocommit
//! each), ack each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use sqlx::{Connection as _, PgConnection};

use crate::clock::{Drain, sample_counter};
use crate::env::{Env, bench_consumer, publish_backlog};
use crate::{EventKind, Storm, event, limits};

/// The original consumer's tables, in a schema of their own beside the service's.
async fn seed_tables(db_url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(db_url).await?;
    for sql in [
        "CREATE SCHEMA seed",
        "CREATE TABLE seed.call_events (LIKE public.call_events INCLUDING ALL)",
        "CREATE TABLE seed.calls (LIKE public.calls INCLUDING ALL)",
    ] {
        sqlx::query(sql).execute(&mut conn).await?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// One event as the original service handled it: the raw event, then the row's column for
/// that event type, each statement its own transaction.
async fn seed_handle(conn: &mut PgConnection, e: &event::Envelope) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO seed.call_events (call_id, event_type, event_timestamp, payload, received_at, \
                                       trace_id, timestamp_inferred) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
    )
    .bind(&e.call_id)
    .bind(&e.event_type)
    .bind(e.timestamp)
    .bind(e.payload_json())
    .bind(e.received_at)
    .bind(&e.trace_id)
    .bind(e.timestamp_inferred)
    .execute(&mut *conn)
    .await?;
    let q = match &e.kind {
        EventKind::Started(st) => sqlx::query(
            "INSERT INTO seed.calls (call_id, start_time, status, caller_number, callee_number) \
             VALUES ($1, $2, 'STARTED', $3, $4) \
             ON CONFLICT (call_id) DO UPDATE SET start_time = EXCLUDED.start_time, \
                 caller_number = EXCLUDED.caller_number, callee_number = EXCLUDED.callee_number, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(e.timestamp)
        .bind(st.caller_number.as_deref().map(|s| truncate(s, 255)))
        .bind(st.callee_number.as_deref().map(|s| truncate(s, 255))),
        EventKind::Answered => sqlx::query(
            "INSERT INTO seed.calls (call_id, answer_time, status) VALUES ($1, $2, 'ANSWERED') \
             ON CONFLICT (call_id) DO UPDATE SET answer_time = EXCLUDED.answer_time, \
                 status = 'ANSWERED', updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(e.timestamp),
        EventKind::Ended { .. } => sqlx::query(
            "INSERT INTO seed.calls AS c (call_id, end_time, status) VALUES ($1, $2, 'COMPLETED') \
             ON CONFLICT (call_id) DO UPDATE SET end_time = EXCLUDED.end_time, \
                 status = 'COMPLETED', \
                 duration_seconds = EXTRACT(EPOCH FROM EXCLUDED.end_time - c.start_time)::int, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(e.timestamp),
        EventKind::RecordingAvailable { uri } => sqlx::query(
            "INSERT INTO seed.calls (call_id, recording_url) VALUES ($1, $2) \
             ON CONFLICT (call_id) DO UPDATE SET recording_url = EXCLUDED.recording_url, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(uri.clone()),
        EventKind::Identified(id) => sqlx::query(
            "INSERT INTO seed.calls (call_id, user_id, contact_id, tenant_id) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (call_id) DO UPDATE SET user_id = EXCLUDED.user_id, \
                 contact_id = EXCLUDED.contact_id, tenant_id = EXCLUDED.tenant_id, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(id.user_id)
        .bind(id.contact_id)
        .bind(id.tenant_id.as_deref().map(|s| truncate(s, 255))),
        _ => sqlx::query(
            "INSERT INTO seed.calls (call_id) VALUES ($1) \
             ON CONFLICT (call_id) DO UPDATE SET updated_at = now()",
        )
        .bind(&e.call_id),
    };
    q.execute(&mut *conn).await?;
    Ok(())
}

fn truncate(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

/// The original consumer on the first `messages` of the storm, stopped at `max`.
pub async fn seed_baseline(
    env: &mut Env,
    storm: &Storm,
    messages: usize,
    max: Duration,
) -> anyhow::Result<Drain> {
    seed_tables(&env.db_url).await?;
    let exchange = env.name("seed");
    let queue = env.name("seed.queue");
    env.declare(&exchange, &queue).await?;
    let slice = &storm.main[..messages.min(storm.main.len())];
    progress!(
        "seed baseline: publishing {} messages into {queue}",
        slice.len()
    );
    publish_backlog(&exchange, slice, "seed backlog").await?;

    let limits = limits(&env.settings);
    let mut db = PgConnection::connect(&env.db_url).await?;
    let (conn, mut consumer) = bench_consumer(&queue, "cdr-bench-seed").await?;
    let counter = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let sampler = sample_counter(counter.clone(), started, stop.clone());
    let mut n = 0u64;
    let mut last_line = Instant::now();
    while (n as usize) < slice.len() && started.elapsed() < max {
        let delivery = consumer
            .next()
            .await
            .context("the consumer ended early")??;
        if let Ok(e) = event::decode(&delivery.data, Utc::now(), limits) {
            seed_handle(&mut db, &e).await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        n += 1;
        counter.store(n, Ordering::Relaxed);
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("seed baseline: {n}/{} events", slice.len());
            last_line = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let samples = sampler.await?;
    let _ = conn.close(200, "bye".into()).await;
    let _ = db.close().await;
    env.delete_queue(&queue).await;
    let drain = Drain {
        events: n as usize,
        seconds,
        samples,
    };
    progress!(
        "seed baseline: {} events in {:.2}s: {:.0} events/s{}",
        drain.events,
        drain.seconds,
        drain.rate(),
        if drain.events < slice.len() {
            " (stopped at its time limit)"
        } else {
            ""
        }
    );
    Ok(drain)
}
