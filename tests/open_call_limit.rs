//! `tracker.max_open_calls`: at the limit, calls not in memory are deferred (their events are
//! logged and acked), and taken up from the log as room frees, live and after a restart. Every
//! record is written, and right. A file of its own: it reads process-wide gauges.

use cdr_testkit as common;

use std::time::Duration;

use cdr_storm::simulate::SyntheticCall;
use common::*;

const LIMIT: usize = 5;

async fn publish(app: &TestApp, events: impl IntoIterator<Item = serde_json::Value>) {
    for e in events {
        app.publisher.publish(&e).await.expect("publish");
    }
}

/// Calls in memory, by the live view.
async fn in_memory(app: &TestApp) -> u64 {
    let calls = app.active_calls().await;
    ["ringing", "answered", "ending"]
        .iter()
        .map(|k| calls[k].as_u64().unwrap_or(0))
        .sum()
}

async fn open_calls(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM open_calls")
        .fetch_one(&app.pool)
        .await
        .expect("open_calls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_limit_are_deferred_then_taken_up_and_every_record_is_written() {
    let app = TestApp::spawn_with(|s| s.tracker.max_open_calls = LIMIT).await;
    let calls: Vec<SyntheticCall> = (0..12).map(|i| call(&format!("limit-{i:02}"))).collect();
    publish(&app, calls.iter().flat_map(|c| [c.started(), c.answered()])).await;
    wait_until(
        Duration::from_secs(30),
        "the calls past the limit deferred",
        || async { app.metric("cdr_calls_deferred_total").await >= 7.0 },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "every call logged open",
        || async { open_calls(&app).await == 12 },
    )
    .await;
    assert_eq!(in_memory(&app).await, LIMIT as u64);
    assert_eq!(app.metric("cdr_open_calls_limit_reached").await, 1.0);

    // The ends: the calls in memory end and write, and the deferred ones are taken up from
    // the log (their ends with them) as room frees.
    publish(&app, calls.iter().flat_map(|c| [c.identified(), c.ended()])).await;
    for c in &calls {
        let r = wait_for_row(&app.pool, &c.call_id, 4).await;
        assert_eq!(r.event_count, 4, "{}", c.call_id);
        assert_eq!(r.status.as_deref(), Some("COMPLETED"));
        assert_eq!(r.start_time, Some(c.start));
        assert_eq!(r.user_id.map(|u| u.to_string()), Some(c.user_id.clone()));
    }
    wait_until(
        Duration::from_secs(30),
        "every deferred call taken up",
        || async { app.metric("cdr_open_calls_limit_reached").await == 0.0 },
    )
    .await;

    // A restart with more open calls than the limit: recovery defers the rest.
    let more: Vec<SyntheticCall> = (0..9)
        .map(|i| call(&format!("limit-restart-{i}")))
        .collect();
    publish(&app, more.iter().flat_map(|c| [c.started(), c.answered()])).await;
    wait_until(
        Duration::from_secs(30),
        "every call logged open",
        || async { open_calls(&app).await == 9 },
    )
    .await;
    let (env, settings) = app.stop().await;
    let app = TestApp::start(env, settings).await;
    assert!(in_memory(&app).await <= LIMIT as u64);
    assert_eq!(app.metric("cdr_open_calls_limit_reached").await, 1.0);
    publish(&app, more.iter().flat_map(|c| [c.identified(), c.ended()])).await;
    for c in &more {
        let r = wait_for_row(&app.pool, &c.call_id, 4).await;
        assert_eq!(r.status.as_deref(), Some("COMPLETED"));
        assert_eq!(r.start_time, Some(c.start));
    }
    wait_until(
        Duration::from_secs(30),
        "every deferred call taken up",
        || async { app.metric("cdr_open_calls_limit_reached").await == 0.0 },
    )
    .await;
    assert_eq!(open_calls(&app).await, 0);
    app.finish().await;
}
