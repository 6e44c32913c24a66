//! Supervision under injected faults (cargo feature `failpoints`): a failing call actor is
//! restarted from the log; one that keeps failing is quarantined; other calls never notice.
#![cfg(feature = "failpoints")]

use cdr_testkit as common;

use std::time::Duration;

use cdr_storm::simulate::SyntheticCall;
use common::*;

const FAIL_POINT: &str = "call-actor-event";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_actor_is_restarted_from_the_log_and_its_record_is_right() {
    let scenario = fail::FailScenario::setup();
    let app = TestApp::spawn().await;
    let c = call("flaky-1");
    // The first fold of this call fails once; the restarted actor rebuilds from the log.
    fail::cfg(FAIL_POINT, "1*return(flaky-)").unwrap();
    for e in c.events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(r.duration_seconds, Some(42));
    assert_eq!(r.user_id.map(|u| u.to_string()), Some(c.user_id.clone()));
    assert!(r.recording_url.is_some());
    assert_eq!(logged_events(&app.pool, &c.call_id).await, 5);
    // The recorder is process-wide (other tests here add to it): count restarts loosely, and
    // check the quarantine in this test's own database.
    assert!(app.metric("cdr_actor_restarts_total").await >= 1.0);
    let quarantined: i64 = sqlx::query_scalar("SELECT count(*) FROM quarantined_calls")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(quarantined, 0, "one failure is within the budget");
    fail::remove(FAIL_POINT);
    app.finish().await;
    scenario.teardown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_that_keeps_failing_is_quarantined_and_others_are_untouched() {
    for mode in ["return(poison-)", "return(panic:poison-)"] {
        let scenario = fail::FailScenario::setup();
        let app = TestApp::spawn_with(|s| s.tracker.restart_budget = 2).await;
        fail::cfg(FAIL_POINT, mode).unwrap();
        let poison = call("poison-1");
        let healthy: Vec<SyntheticCall> = (0..20).map(|i| call(&format!("healthy-{i}"))).collect();
        // Interleave the poisoned call's events with the healthy calls' events.
        let poison_events = poison.events(true);
        for (i, h) in healthy.iter().enumerate() {
            for e in h.events(true) {
                app.publisher.publish(&e).await.unwrap();
            }
            if let Some(e) = poison_events.get(i) {
                app.publisher.publish(e).await.unwrap();
            }
        }
        for h in &healthy {
            let r = wait_for_row(&app.pool, &h.call_id, 5).await;
            assert_eq!(r.status.as_deref(), Some("COMPLETED"), "{mode}");
            assert_eq!(r.duration_seconds, Some(42), "{mode}");
        }
        let mut quarantined: Option<(Option<String>, i32, String)> = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while quarantined.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: never quarantined"
            );
            quarantined = sqlx::query_as(
                "SELECT trace_id, failures, reason FROM quarantined_calls WHERE call_id = $1",
            )
            .bind(&poison.call_id)
            .fetch_optional(&app.pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (trace_id, failures, reason) = quarantined.unwrap();
        assert_eq!(
            trace_id.as_deref(),
            Some(poison.trace_id.as_str()),
            "{mode}"
        );
        assert_eq!(
            failures, 3,
            "{mode}: budget 2 means the third failure quarantines"
        );
        assert!(reason.contains("poison-1"), "{mode}: {reason}");
        // Its events are kept, it stays open for an operator, and it has no row.
        assert_eq!(logged_events(&app.pool, &poison.call_id).await, 5, "{mode}");
        assert!(row(&app.pool, &poison.call_id).await.is_none(), "{mode}");
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM open_calls WHERE call_id = $1")
            .bind(&poison.call_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(open, 1, "{mode}");
        assert!(
            app.metric("cdr_actor_quarantines_total").await >= 1.0,
            "{mode}"
        );
        // The service is still consuming: a new call goes through.
        let after = call(&format!("after-{}", mode.len()));
        for e in after.events(true) {
            app.publisher.publish(&e).await.unwrap();
        }
        let r = wait_for_row(&app.pool, &after.call_id, 5).await;
        assert_eq!(r.status.as_deref(), Some("COMPLETED"), "{mode}");

        // On restart, the quarantined call is not rebuilt (it would fail again); the rest is.
        fail::remove(FAIL_POINT);
        let (env, settings) = app.stop().await;
        let app = TestApp::start(env, settings).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let live = reqwest::get(app.url(&format!("/calls/{}", poison.call_id)))
            .await
            .unwrap();
        assert_eq!(
            live.status(),
            404,
            "{mode}: a quarantined call gets no actor"
        );
        app.finish().await;
        scenario.teardown();
    }
}
