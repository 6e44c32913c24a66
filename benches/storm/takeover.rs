//! Phase 6, takeover: the active instance killed (-9) while a standby runs and `n` calls are
//! open; how long until the standby holds the lease, and until it consumes again (recovered
//! and ready); then the calls' ends, and every record verified against the storm's ground
//! truth.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::env::{Env, Service, amqp_url, scrape};
use crate::stats::finite;
use crate::{
    EventKind, IN_FLIGHT, Message, MessageKind, StormOptions, StormPublisher, Verifier, event,
    generate, limits,
};

/// What the takeover phase measured.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    /// Calls in the storm, and those open at the kill (the others have only their end).
    pub calls: usize,
    pub open_calls: usize,
    /// Calls the standby rebuilt from the log when it took over.
    pub calls_recovered: Option<f64>,
    /// kill -9 of the active -> the standby holds the lease (its role `active`).
    pub seconds_to_lease: Option<f64>,
    /// kill -9 of the active -> the standby ready again: recovered, consuming.
    pub seconds_to_consuming: Option<f64>,
    pub records_verified: usize,
    pub records_mismatched: usize,
    pub records_missing: usize,
}

/// The role and readiness `/health/ready` reports.
async fn readiness(service: &Service) -> Option<(String, bool)> {
    let v: Value = reqwest::get(service.url("/health/ready"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some((
        v["role"].as_str().unwrap_or_default().to_owned(),
        v["ready"].as_bool().unwrap_or(false),
    ))
}

/// Open calls the service holds (its `/calls`: ringing and answered, resting ones among them).
async fn held_calls(service: &Service) -> u64 {
    let Ok(r) = reqwest::get(service.url("/calls")).await else {
        return 0;
    };
    let v: Value = r.json().await.unwrap_or_default();
    ["ringing", "answered"]
        .iter()
        .map(|k| v[k].as_u64().unwrap_or(0))
        .sum()
}

/// Opens `n` calls on an active instance with a standby beside it, kills the active, times the
/// standby's takeover, then ends the calls and verifies every record.
pub async fn takeover(env: &Env, n: usize) -> anyhow::Result<Takeover> {
    // Start over on an empty log and an empty queue of its own names.
    let pool = PgPool::connect(&env.db_url).await?;
    sqlx::query("TRUNCATE call_events, open_calls, calls, usage_records, call_dialog_events")
        .execute(&pool)
        .await?;
    let s = &env.settings;
    let o = StormOptions {
        calls: n,
        seed: 17,
        missing_end: 0.0,
        late: 0.0,
        poison: 0.0,
        platform_events: 0.0,
        call_id_prefix: Some(format!("bench-takeover-{}", env.id)),
        ..StormOptions::default()
    };
    let storm = generate(&o, limits(s));
    let verifier = Verifier::prepare(s, &storm).await?;
    let now = Utc::now();
    let is_end = |m: &Message| {
        matches!(m.kind, MessageKind::Event { .. })
            && matches!(
                event::decode(&m.body, now, limits(s)).map(|e| e.kind),
                Ok(EventKind::Ended { .. })
            )
    };
    let (ends, open): (Vec<Message>, Vec<Message>) =
        storm.main.iter().cloned().partition(|m| is_end(m));
    // The calls with an event besides their end (some have nothing else): open once consumed.
    let opened: std::collections::HashSet<String> = open
        .iter()
        .filter_map(|m| event::decode(&m.body, now, limits(s)).ok())
        .map(|e| e.call_id)
        .collect();
    let opened = opened.len();
    progress!("takeover: {opened} calls with an event besides their end");

    let rest = [(
        "CDR__TRACKER__REST_AFTER",
        humantime::format_duration(Duration::from_secs(2)).to_string(),
    )];
    let active = Service::start_with(env, &rest).await?;
    let standby = Service::start_with(env, &rest).await?;
    progress!(
        "takeover: an active and a standby running; opening {n} calls ({} messages, the ends held back)",
        open.len()
    );
    let publish_started_at = Utc::now();
    let publisher = StormPublisher::connect(&amqp_url(), &s.amqp.exchange).await?;
    publisher
        .publish(&open, 0.0, IN_FLIGHT, "takeover: open calls")
        .await?;
    // Consumed: the count of open calls no longer grows (some of `opened` have only events
    // that open nothing, such as a lone `call.terminate.request`).
    let deadline = Instant::now() + Duration::from_secs(900);
    let (mut last, mut still) = (0, 0);
    while still < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = held_calls(&active).await;
        still = if now == last && now > 0 { still + 1 } else { 0 };
        last = now;
    }
    progress!(
        "takeover: {} calls open in the active; kill -9",
        held_calls(&active).await
    );

    let killed = Instant::now();
    active.kill9();
    let (mut to_lease, mut to_consuming) = (None, None);
    let deadline = killed + Duration::from_secs(600);
    while to_consuming.is_none() && Instant::now() < deadline {
        if let Some((role, ready)) = readiness(&standby).await {
            if role == "active" && to_lease.is_none() {
                to_lease = Some(killed.elapsed().as_secs_f64());
            }
            if role == "active" && ready {
                to_consuming = Some(killed.elapsed().as_secs_f64());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls_recovered = scrape(&standby)
        .await
        .get("cdr_calls_recovered_total")
        .copied();
    progress!(
        "takeover: lease taken after {}, consuming after {} ({} calls recovered); publishing the ends",
        to_lease.map_or("-".to_owned(), |s| format!("{s:.2}s")),
        to_consuming.map_or("-".to_owned(), |s| format!("{s:.2}s")),
        calls_recovered.map_or("-".to_owned(), |c| format!("{c:.0}")),
    );
    publisher
        .publish(&ends, 0.0, IN_FLIGHT, "takeover: ends")
        .await?;
    let published_at = Instant::now();
    publisher.close().await;
    let outcome = verifier
        .run(s, &storm, &o, publish_started_at, published_at)
        .await?;
    outcome.print(5);
    standby.stop().await?;
    pool.close().await;
    Ok(Takeover {
        calls: n,
        open_calls: last as usize,
        calls_recovered,
        seconds_to_lease: to_lease.and_then(|s| finite(s, 2)),
        seconds_to_consuming: to_consuming.and_then(|s| finite(s, 2)),
        records_verified: outcome.correct,
        records_mismatched: outcome.mismatches.len(),
        records_missing: outcome.missing.len(),
    })
}
