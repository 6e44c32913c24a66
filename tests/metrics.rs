//! /metrics after a small run: the values, not only the names. Its own test binary, so the
//! process-wide recorder sees only this test's service.

use cdr_testkit as common;

use std::time::Duration;

use cdr_storm::simulate::SyntheticCall;
use common::metrics::value;
use common::*;

async fn wait_metric(app: &TestApp, series: &str, expected: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = app.scrape().await;
        let got = value(&text, series);
        if got == Some(expected) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series}: expected {expected}, have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_small_run() {
    let app = TestApp::spawn_with(|s| {
        s.tracker.idle_timeout = Duration::from_secs(600);
        s.tracker.rest_after = Duration::from_millis(500);
    })
    .await;
    let t0 = "2025-09-24T10:00:00Z".parse().unwrap();
    let calls: Vec<SyntheticCall> = (0..5)
        .map(|i| SyntheticCall::new(format!("metrics-{i}@198.51.100.7"), t0))
        .collect();
    // Three answered calls, two still ringing.
    for (i, c) in calls.iter().enumerate() {
        app.publisher.publish(&c.started()).await.unwrap();
        if i < 3 {
            app.publisher.publish(&c.answered()).await.unwrap();
        }
    }
    wait_metric(&app, r#"cdr_active_calls{state="answered"}"#, 3.0).await;
    wait_metric(&app, r#"cdr_active_calls{state="ringing"}"#, 2.0).await;

    // Garbage: two of one kind, one of another; and one exact redelivery.
    app.publisher.publish_raw("x", b"not json").await.unwrap();
    app.publisher.publish_raw("x", b"{broken").await.unwrap();
    app.publisher
        .publish_raw("x", br#"{"eventType":"call.started"}"#)
        .await
        .unwrap();
    app.publisher.publish(&calls[0].started()).await.unwrap();
    wait_metric(&app, r#"cdr_events_rejected_total{reason="not_json"}"#, 2.0).await;
    wait_metric(
        &app,
        r#"cdr_events_rejected_total{reason="missing_call_id"}"#,
        1.0,
    )
    .await;
    wait_metric(&app, "cdr_duplicates_dropped_total", 1.0).await;

    // Quiet, the five open calls rest: still active, no actor.
    wait_metric(&app, "cdr_calls_resting", 5.0).await;
    wait_metric(&app, "cdr_call_rests_total", 5.0).await;
    wait_metric(&app, r#"cdr_active_calls{state="answered"}"#, 3.0).await;
    wait_metric(&app, r#"cdr_active_calls{state="ringing"}"#, 2.0).await;

    // Every call ends: the gauges go back to zero and five records are written.
    for c in &calls {
        app.publisher.publish(&c.ended()).await.unwrap();
    }
    for (i, c) in calls.iter().enumerate() {
        let events = if i < 3 { 3 } else { 2 };
        wait_for_row(&app.pool, &c.call_id, events).await;
    }
    wait_metric(&app, r#"cdr_active_calls{state="answered"}"#, 0.0).await;
    wait_metric(&app, r#"cdr_active_calls{state="ringing"}"#, 0.0).await;
    wait_metric(&app, "cdr_calls_lingering", 0.0).await;
    wait_metric(&app, "cdr_calls_resting", 0.0).await;
    wait_metric(&app, "cdr_call_wakes_total", 5.0).await;
    wait_metric(
        &app,
        r#"cdr_records_written_total{status="COMPLETED",disposition="ANSWERED",cause="ended"}"#,
        3.0,
    )
    .await;
    wait_metric(
        &app,
        r#"cdr_records_written_total{status="COMPLETED",disposition="NO_ANSWER",cause="ended"}"#,
        2.0,
    )
    .await;
    wait_metric(&app, "cdr_record_flush_latency_seconds_count", 5.0).await;

    // A late recording for a call whose record is written counts as a late event.
    tokio::time::sleep(app.settings.tracker.linger * 3).await;
    app.publisher.publish(&calls[0].recording()).await.unwrap();
    wait_metric(&app, "cdr_late_events_total", 1.0).await;

    let text = app.scrape().await;
    // 5 starts (+1 duplicate, dropped after decoding), 3 answers, 5 ends, 1 recording.
    assert_eq!(
        value(
            &text,
            r#"cdr_events_received_total{event_type="call.started",format="json"}"#
        ),
        Some(6.0)
    );
    assert_eq!(
        value(
            &text,
            r#"cdr_events_received_total{event_type="call.answered",format="json"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            r#"cdr_events_received_total{event_type="call.ended",format="json"}"#
        ),
        Some(5.0)
    );
    assert_eq!(value(&text, "cdr_broker_up"), Some(1.0));
    assert_eq!(value(&text, "cdr_database_up"), Some(1.0));
    assert!(
        text.lines()
            .any(|l| l.starts_with("cdr_build_info{") && l.ends_with(" 1")),
        "build info gauge"
    );
    let batches = value(&text, "cdr_log_batch_size_sum").unwrap();
    assert_eq!(
        batches,
        6.0 + 3.0 + 5.0 + 1.0,
        "every decoded event went through a log batch"
    );
    app.finish().await;
}
