//! Bounds per call: a call with more events than `tracker.max_events_per_call` is written from
//! its first events, flagged and quarantined, live and at start; a call's history is loaded a
//! page at a time, however large, and a call spanning pages folds whole.

use cdr_testkit as common;

use std::time::Duration;

use cdr_storm::simulate::SyntheticCall;
use common::*;
use serde_json::{Value, json};

/// A dialog turn of `c`, `pad` bytes of padding in a field no reader knows.
fn turn(c: &SyntheticCall, i: usize, pad: usize) -> Value {
    let at = c.start + chrono::Duration::seconds(5) + chrono::Duration::milliseconds(i as i64);
    json!({"eventType": "dialog.turn.completed", "callId": c.call_id, "traceId": c.trace_id,
           "timestamp": cdr_service::event::format_timestamp(at), "turnIndex": i,
           "userText": format!("turn {i}"), "padding": "x".repeat(pad)})
}

async fn publish(app: &TestApp, events: &[Value]) {
    for e in events {
        app.publisher.publish(e).await.expect("publish");
    }
}

async fn quarantine_reason(app: &TestApp, call_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT reason FROM quarantined_calls WHERE call_id = $1")
        .bind(call_id)
        .fetch_optional(&app.pool)
        .await
        .expect("quarantined_calls")
}

async fn anomalies(app: &TestApp, call_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT anomalies FROM calls WHERE call_id = $1")
        .bind(call_id)
        .fetch_one(&app.pool)
        .await
        .expect("anomalies")
}

async fn turns_projected(app: &TestApp, call_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_dialog_events WHERE call_id = $1")
        .bind(call_id)
        .fetch_one(&app.pool)
        .await
        .expect("call_dialog_events")
}

async fn wait_logged(app: &TestApp, call_id: &str, events: i64) {
    wait_until(Duration::from_secs(30), "the events logged", || async {
        logged_events(&app.pool, call_id).await >= events
    })
    .await;
}

/// Live: the call's first 16 events make its record (flagged `events_capped`), the writer
/// quarantines it with that record, its later events are logged and projected but fold into
/// nothing, and a restart leaves it as it is. Its neighbour is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_the_event_cap_is_written_from_its_first_events_and_quarantined() {
    let app = TestApp::spawn_with(|s| s.tracker.max_events_per_call = 16).await;
    let c = call("capped-live");
    let mut events = vec![c.started(), c.answered(), c.identified()];
    events.extend((0..20).map(|i| turn(&c, i, 0)));
    events.push(c.ended());
    publish(&app, &events).await;
    let neighbour = call("capped-neighbour");
    publish(&app, &neighbour.events(true)).await;

    let r = wait_for_row(&app.pool, &c.call_id, 16).await;
    assert_eq!(r.event_count, 16, "the first 16 logged events, no more");
    assert_eq!(
        r.status.as_deref(),
        Some("TIMED_OUT"),
        "the end came past the cap"
    );
    assert_eq!(r.start_time, Some(c.start));
    assert_eq!(r.answer_time, Some(c.start + chrono::Duration::seconds(3)));
    assert_eq!(
        anomalies(&app, &c.call_id).await.as_deref(),
        Some("events_capped")
    );
    let reason = quarantine_reason(&app, &c.call_id)
        .await
        .expect("quarantined");
    assert!(reason.contains("more than 16 events"), "{reason}");
    wait_logged(&app, &c.call_id, 24).await;
    wait_until(Duration::from_secs(30), "every turn projected", || async {
        turns_projected(&app, &c.call_id).await == 20
    })
    .await;
    let full = wait_for_row(&app.pool, &neighbour.call_id, 5).await;
    assert_full_record(&full, &neighbour);
    assert!(app.metric("cdr_calls_capped_total").await >= 1.0);

    // Later events are logged and counted, never folded; a restart does not load the call.
    let quarantined_before = app.metric("cdr_quarantined_events_total").await;
    publish(&app, &[c.recording()]).await;
    wait_logged(&app, &c.call_id, 25).await;
    wait_until(
        Duration::from_secs(30),
        "the late event counted",
        || async { app.metric("cdr_quarantined_events_total").await > quarantined_before },
    )
    .await;
    let (env, settings) = app.stop().await;
    let app = TestApp::start(env, settings).await;
    let after = row(&app.pool, &c.call_id).await.expect("row");
    assert_eq!(after.event_count, 16);
    assert_eq!(after.recording_url, None, "nothing past the cap is folded");
    assert_eq!(
        app.active_calls().await["answered"].as_u64(),
        Some(0),
        "the quarantined call is not recovered"
    );
    app.finish().await;
}

/// At start: calls whose history spans several pages of the log (bodies of about 900 KB, so
/// a page holds some 18 of them) are folded whole across the pages; one past the cap is
/// written from its first events and quarantined by the recovery itself; re-activating a call
/// after its record reads it page by page again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reads_calls_page_by_page_and_caps_the_largest() {
    const PAD: usize = 900_000;
    let app = TestApp::spawn_with(|s| {
        s.amqp.prefetch = 64;
        s.ingest.batch_size = 16;
    })
    .await;
    // Past the cap (25) once restarted: 32 events over two pages.
    let large = call("paged-large");
    let mut events = vec![large.started(), large.answered()];
    events.extend((0..30).map(|i| turn(&large, i, PAD)));
    // Within the cap, over two pages.
    let spanning = call("paged-spanning");
    events.extend([spanning.started(), spanning.answered()]);
    events.extend((0..20).map(|i| turn(&spanning, i, PAD)));
    // Within the cap, small.
    let small = call("paged-small");
    events.push(small.started());
    events.extend((0..20).map(|i| turn(&small, i, 0)));
    publish(&app, &events).await;
    wait_logged(&app, &large.call_id, 32).await;
    wait_logged(&app, &spanning.call_id, 22).await;
    wait_logged(&app, &small.call_id, 21).await;
    assert!(row(&app.pool, &large.call_id).await.is_none(), "still open");

    let (env, mut settings) = app.stop().await;
    settings.tracker.max_events_per_call = 25;
    let app = TestApp::start(env, settings).await;
    let r = wait_for_row(&app.pool, &large.call_id, 25).await;
    assert_eq!(r.event_count, 25);
    assert_eq!(
        anomalies(&app, &large.call_id).await.as_deref(),
        Some("events_capped")
    );
    assert!(quarantine_reason(&app, &large.call_id).await.is_some());
    assert_eq!(turns_projected(&app, &large.call_id).await, 30);

    publish(&app, &[spanning.ended(), small.ended()]).await;
    let r = wait_for_row(&app.pool, &spanning.call_id, 23).await;
    assert_eq!(r.event_count, 23, "both pages folded, and the end");
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(
        r.answer_time,
        Some(spanning.start + chrono::Duration::seconds(3))
    );
    assert_eq!(anomalies(&app, &spanning.call_id).await, None);
    let r = wait_for_row(&app.pool, &small.call_id, 22).await;
    assert_eq!(r.event_count, 22);
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));

    // A late event re-activates the written call from the log, page by page.
    publish(&app, &[spanning.recording()]).await;
    let r = wait_for_row(&app.pool, &spanning.call_id, 24).await;
    assert_eq!(r.event_count, 24);
    assert!(r.recording_url.is_some());
    assert_eq!(
        r.answer_time,
        Some(spanning.start + chrono::Duration::seconds(3))
    );
    app.finish().await;
}
