//! Phase 5, memory: the service's RSS per open call (calls started and answered, never ended),
//! as they settle at rest, and, for up to `MAX_OPEN_ACTORS` calls, with one actor each.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::cpu::rss_bytes;
use crate::env::{Env, Service, amqp_url};
use crate::stats::finite;
use crate::{
    EventKind, IN_FLIGHT, Message, MessageKind, StormOptions, StormPublisher, event, generate,
    limits,
};

/// The largest count measured with one actor per open call: at about 10 KB each, a million
/// would need some 10 GB.
const MAX_OPEN_ACTORS: usize = 100_000;

/// One measurement of open calls.
pub struct MemoryRun {
    requested: usize,
    pub measured: usize,
    rss_before: u64,
    rss_after: u64,
    seconds_to_settle: f64,
}

/// One measurement as the report gives it.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    pub open_calls_requested: usize,
    pub open_calls_measured: usize,
    pub seconds_to_settle: Option<f64>,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_bytes_per_open_call: Option<f64>,
}

impl MemoryRun {
    pub fn per_call(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.measured.max(1) as f64
    }

    pub fn figures(&self) -> MemoryFigures {
        MemoryFigures {
            open_calls_requested: self.requested,
            open_calls_measured: self.measured,
            seconds_to_settle: finite(self.seconds_to_settle, 2),
            rss_before_bytes: self.rss_before,
            rss_after_bytes: self.rss_after,
            rss_bytes_per_open_call: finite(self.per_call(), 0),
        }
    }
}

/// Open calls as the service holds them at rest (the state a quiet call settles in), and, for
/// comparison, with an actor each (before they rest).
pub struct Memory {
    pub resting: MemoryRun,
    pub actors: MemoryRun,
}

/// (active calls, resting calls), as the service's `/calls` counts them.
async fn active_calls(service: &Service) -> anyhow::Result<(u64, u64)> {
    let v: Value = reqwest::get(service.url("/calls")).await?.json().await?;
    let active = v["ringing"].as_u64().unwrap_or(0) + v["answered"].as_u64().unwrap_or(0);
    Ok((active, v["resting"].as_u64().unwrap_or(0)))
}

/// Measures `n` open calls with actors (at most `MAX_OPEN_ACTORS`), then `n` at rest.
pub async fn memory(env: &Env, n: usize) -> anyhow::Result<Memory> {
    // Actors first: `rest_after` longer than the run, so every call keeps its actor.
    let actors = open_calls(env, n.min(MAX_OPEN_ACTORS), Duration::from_secs(3600), 0).await?;
    // Start over on an empty log, so the next start recovers nothing.
    let pool = PgPool::connect(&env.db_url).await?;
    sqlx::query("TRUNCATE call_events, open_calls, calls")
        .execute(&pool)
        .await?;
    pool.close().await;
    let resting = open_calls(env, n, Duration::from_secs(2), 1).await?;
    Ok(Memory { resting, actors })
}

/// RSS once it has stopped falling (less than 1% lower over 3 s), at most 60 s from now.
pub async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = rss_bytes(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = rss_bytes(pid)?;
        if now as f64 >= last as f64 * 0.99 || Instant::now() > deadline {
            return Ok(now.min(last));
        }
        last = now;
    }
}

/// Opens `n` calls (call.started + call.answered, never ended) on a fresh service started with
/// `rest_after`, waits until all are active (and, when `rest_after` is short, resting), and
/// measures the RSS growth.
async fn open_calls(
    env: &Env,
    n: usize,
    rest_after: Duration,
    round: u64,
) -> anyhow::Result<MemoryRun> {
    let rest = rest_after < Duration::from_secs(60);
    let service = Service::start_with(
        env,
        &[(
            "CDR__TRACKER__REST_AFTER",
            humantime::format_duration(rest_after).to_string(),
        )],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let label = if rest {
        "memory (resting)"
    } else {
        "memory (actors)"
    };
    let rss_before = rss_bytes(service.pid())?;
    progress!(
        "{label}: service idle at {:.1} MiB RSS; opening {n} calls (call.started + call.answered), rest_after {}",
        rss_before as f64 / 1048576.0,
        humantime::format_duration(rest_after)
    );
    let started = Instant::now();
    publish_open_calls(env, label, n, round).await?;
    let (active, resting) = wait_settled(&service, label, n, rest).await;
    let seconds_to_settle = started.elapsed().as_secs_f64();
    // Let the mailboxes and the allocator settle: the allocator hands the pages of stopped
    // actors back to the system over several seconds. Measured once RSS stops falling.
    let rss_after = settled_rss(service.pid()).await?;
    let (active, resting) = active_calls(&service).await.unwrap_or((active, resting));
    service.stop().await?;
    let m = MemoryRun {
        requested: n,
        measured: if rest { resting } else { active } as usize,
        rss_before,
        rss_after,
        seconds_to_settle,
    };
    progress!(
        "{label}: {} calls open ({resting} resting), RSS {:.1} -> {:.1} MiB: {:.0} bytes per open call",
        active,
        m.rss_before as f64 / 1048576.0,
        m.rss_after as f64 / 1048576.0,
        m.per_call()
    );
    Ok(m)
}

/// Publishes `n` calls' `call.started` and `call.answered`, in storms of 100,000 calls.
pub async fn publish_open_calls(
    env: &Env,
    label: &str,
    n: usize,
    round: u64,
) -> anyhow::Result<()> {
    const PER_CHUNK: usize = 100_000;
    let s = &env.settings;
    let publisher = StormPublisher::connect(&amqp_url(), &s.amqp.exchange).await?;
    let limits = limits(s);
    let now = Utc::now();
    let mut published = 0usize;
    for (k, first) in (0..n).step_by(PER_CHUNK).enumerate() {
        let calls = PER_CHUNK.min(n - first);
        let o = StormOptions {
            calls,
            seed: 3 + k as u64,
            answered: 1.0,
            missing_end: 1.0,
            identified: 0.0,
            recording: 0.0,
            dialog: 0.0,
            usage: 0.0,
            duplicates: 0.0,
            variants: 0.0,
            late: 0.0,
            poison: 0.0,
            call_id_prefix: Some(format!("bench-open-{}-{round}-{k}", env.id)),
            ..StormOptions::default()
        };
        let storm = generate(&o, limits);
        let msgs: Vec<Message> = storm
            .main
            .into_iter()
            .filter(|m| {
                matches!(m.kind, MessageKind::Event { .. })
                    && matches!(
                        event::decode(&m.body, now, limits).map(|e| e.kind),
                        Ok(EventKind::Started(_) | EventKind::Answered)
                    )
            })
            .collect();
        publisher
            .publish(&msgs, 0.0, IN_FLIGHT, "open calls")
            .await?;
        published += calls;
        progress!(
            "{label}: {published}/{n} calls published ({} messages in this chunk)",
            msgs.len()
        );
    }
    publisher.close().await;
    Ok(())
}

/// Waits (at most 900 s) until `n` calls are active and, with `rest`, resting; returns the last
/// (active, resting) counts seen.
pub async fn wait_settled(service: &Service, label: &str, n: usize, rest: bool) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last_line = Instant::now();
    let (mut active, mut resting) = (0u64, 0u64);
    loop {
        if let Ok(a) = active_calls(service).await {
            (active, resting) = a;
        }
        let settled = active >= n as u64 && (!rest || resting >= n as u64);
        if settled || Instant::now() > deadline {
            return (active, resting);
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("{label}: {active}/{n} calls active, {resting} resting");
            last_line = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
