//! Rough end-to-end throughput of a running service: publishes N synthetic calls (5 events
//! each) to the configured exchange as fast as publisher confirms allow, then waits until every
//! call has its complete record, and prints events per second for both phases.
//!
//! With `open` as second argument, the calls are left open (no end, no recording) and the
//! tool exits once they are published: a realistic set of active calls for measuring recovery.
//!
//! The service is found as `cdr-service run` finds its own settings (config/default.toml,
//! `RABBITMQ_URL`, `POSTGRES_URL`, `CDR__*`).
//!
//! ```sh
//! scripts/run-local.sh &                      # or any running cdr-service
//! cargo run --release --example backlog -- 20000
//! cargo run --release --example backlog -- 50000 open
//! ```

use std::time::{Duration, Instant};

use cdr_service::config::Settings;
use cdr_storm::publish::StormPublisher;
use cdr_storm::simulate::SyntheticCall;
use cdr_storm::{Message, Target};

/// Publishes awaiting their broker confirm at once.
const IN_FLIGHT: usize = 500;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10_000);
    let open = std::env::args().nth(2).as_deref() == Some("open");
    let settings = Settings::load(None)?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let start = chrono::Utc::now();
    let mut messages = Vec::new();
    for i in 0..calls {
        let call = SyntheticCall::new(format!("backlog-{run}-{i}@198.51.100.7"), start);
        let events = if open {
            vec![call.started(), call.answered(), call.identified()]
        } else {
            call.events(true)
        };
        messages.extend(events.iter().map(|e| Message::event(i, e)));
    }

    let published = Instant::now();
    let publisher = StormPublisher::connect(settings.amqp_url(), settings.exchange()).await?;
    let stats = publisher
        .publish(&messages, 0.0, IN_FLIGHT, "backlog")
        .await?;
    publisher.close().await;
    let events = stats.messages;
    let publish_secs = published.elapsed().as_secs_f64();
    println!(
        "published {events} events ({calls} calls) in {publish_secs:.1}s: {:.0} events/s",
        events as f64 / publish_secs
    );

    if open {
        return Ok(());
    }
    let pool = settings.database().map_err(anyhow::Error::from_boxed)?;
    let pattern = format!("backlog-{run}-%");
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE call_id LIKE $1 AND event_count = 5 AND status = 'COMPLETED'",
        )
        .bind(&pattern)
        .fetch_one(&pool)
        .await?;
        if done as usize >= calls {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = published.elapsed().as_secs_f64();
    println!(
        "all {calls} records complete {total:.1}s after the first publish: {:.0} events/s end to end (includes linger {})",
        events as f64 / total,
        humantime::format_duration(settings.linger())
    );
    Ok(())
}
