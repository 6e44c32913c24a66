//! End to end through the real broker and database: publish call events, read `calls`.

use cdr_testkit as common;

use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{Value, json};

async fn publish_all(app: &TestApp, events: &[Value]) {
    for e in events {
        app.publisher.publish(e).await.expect("publish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_order_becomes_one_complete_record() {
    let app = TestApp::spawn().await;
    let c = call("in-order");
    publish_all(&app, &c.events(true)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    assert_eq!(r.event_count, 5);
    assert_eq!(logged_events(&app.pool, &c.call_id).await, 5);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fully_reversed_call_gives_the_same_record() {
    let app = TestApp::spawn().await;
    let c = call("reversed");
    let mut events = c.events(true);
    events.reverse();
    publish_all(&app, &events).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identification_before_start_is_kept() {
    let app = TestApp::spawn().await;
    let c = call("ident-first");
    publish_all(
        &app,
        &[
            c.identified(),
            c.started(),
            c.answered(),
            c.ended(),
            c.recording(),
        ],
    )
    .await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_duplicates_are_logged_once() {
    let app = TestApp::spawn().await;
    let c = call("dups");
    let events = c.events(true);
    // Every message three times, as a broker redelivering after reconnects would.
    for round in 0..3 {
        for e in &events {
            app.publisher.publish(e).await.unwrap();
        }
        if round == 0 {
            wait_for_row(&app.pool, &c.call_id, 5).await;
        }
    }
    // A duplicate `call.started` from a retransmitted INVITE (later timestamp, same call).
    let mut late_invite = c.started();
    late_invite["timestamp"] = json!("2025-09-24T10:05:00.000000Z");
    app.publisher.publish(&late_invite).await.unwrap();

    let r = wait_for_row(&app.pool, &c.call_id, 6).await;
    assert_eq!(logged_events(&app.pool, &c.call_id).await, 6);
    assert_eq!(r.event_count, 6);
    // The late INVITE changes nothing: earliest start, answer, user and recording stay.
    assert_full_record(&r, &c);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_after_linger_updates_the_row() {
    let app = TestApp::spawn().await;
    let c = call("late-recording");
    publish_all(
        &app,
        &[c.started(), c.answered(), c.identified(), c.ended()],
    )
    .await;
    let first = wait_for_row(&app.pool, &c.call_id, 4).await;
    assert_eq!(first.status.as_deref(), Some("COMPLETED"));
    assert_eq!(first.recording_url, None);
    // Well past the linger: the call's actor has written its row and stopped.
    tokio::time::sleep(app.settings.tracker.linger * 3).await;
    app.publisher.publish(&c.recording()).await.unwrap();
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_without_end_times_out_then_completes_when_the_end_comes() {
    let app = TestApp::spawn().await;
    let c = call("no-end");
    publish_all(&app, &[c.started(), c.answered(), c.identified()]).await;
    let r = wait_for_row(&app.pool, &c.call_id, 3).await;
    assert_eq!(r.status.as_deref(), Some("TIMED_OUT"));
    assert_eq!(r.end_time, None);
    assert_eq!(r.duration_seconds, None);
    assert_eq!(r.start_time, Some(t0()));

    app.publisher.publish(&c.ended()).await.unwrap();
    let r = wait_for_row(&app.pool, &c.call_id, 4).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(r.duration_seconds, Some(42));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_without_timestamp_uses_receive_time_and_says_so() {
    let app = TestApp::spawn().await;
    let c = call("no-ts");
    let mut ended = c.ended();
    ended.as_object_mut().unwrap().remove("timestamp");
    let before = Utc::now();
    publish_all(&app, &[c.started(), ended]).await;
    let r = wait_for_row(&app.pool, &c.call_id, 2).await;
    let after = Utc::now();
    let end = r.end_time.expect("end time from receive time");
    assert!(
        end >= before - chrono::Duration::seconds(1) && end <= after,
        "{end}"
    );
    assert_eq!(r.inferred_times.as_deref(), Some("end"));
    assert_eq!(r.disposition.as_deref(), Some("NO_ANSWER"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_view_shows_an_active_call() {
    let app = TestApp::spawn().await;
    let c = call("live");
    publish_all(&app, &[c.started(), c.answered()]).await;
    let url = app.url(&format!("/calls/{}", c.call_id));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body: Value = loop {
        if let Ok(resp) = reqwest::get(&url).await
            && resp.status().is_success()
        {
            let body: Value = resp.json().await.unwrap();
            if body["events"] == json!(2) {
                break body;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live view of the call"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["phase"], json!("answered"));
    assert_eq!(body["record"]["caller_number"], json!("905551234567"));
    let counts: Value = reqwest::get(app.url("/calls"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["answered"], json!(1));
    let missing = reqwest::get(app.url("/calls/nope")).await.unwrap();
    assert_eq!(missing.status(), 404);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_dead_lettered_with_its_reason_and_nothing_stops() {
    let app = TestApp::spawn().await;
    let long_id = "x".repeat(256);
    let deep = format!(
        "{{\"eventType\":\"call.started\",\"callId\":\"d@h\",\"x\":{}1{}}}",
        "[".repeat(40),
        "]".repeat(40)
    );
    let oversize = format!(
        "{{\"eventType\":\"call.started\",\"callId\":\"big@h\",\"pad\":\"{}\"}}",
        "a".repeat(1024 * 1024 + 1)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not_json"),
        (b"[1,2,3]".to_vec(), "not_object"),
        (
            br#"{"eventType":"call.started"}"#.to_vec(),
            "missing_call_id",
        ),
        (
            br#"{"eventType":"call.started","callId":""}"#.to_vec(),
            "invalid_call_id",
        ),
        (
            br#"{"eventType":"call.started","callId":12345}"#.to_vec(),
            "invalid_call_id",
        ),
        (
            format!(r#"{{"eventType":"call.started","callId":"{long_id}"}}"#).into_bytes(),
            "invalid_call_id",
        ),
        (br#"{"callId":"a@h"}"#.to_vec(), "missing_event_type"),
        (
            br#"{"eventType":"call.started","callId":"a@h","timestamp":"24/09/2025 10:01"}"#
                .to_vec(),
            "bad_timestamp",
        ),
        (
            b"{\"eventType\":\"call.started\",\"callId\":\"\xff\xfe\"}".to_vec(),
            "invalid_utf8",
        ),
        (deep.into_bytes(), "too_deep"),
        (oversize.into_bytes(), "oversize"),
        (
            br#"{"eventType":"call.started","callId":"nul@h","from":"a\u0000b"}"#.to_vec(),
            "nul_character",
        ),
    ];
    for (body, _) in &cases {
        app.publisher
            .publish_raw("call.started", body)
            .await
            .unwrap();
    }
    // Good events after the garbage are still processed.
    let c = call("after-garbage");
    publish_all(&app, &c.events(true)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);

    let dead = wait_for_dead_letters(&app.settings.amqp.dead_letter_queue, cases.len()).await;
    assert_eq!(dead.len(), cases.len());
    for ((body, reason), (dl_body, dl_reason)) in cases.iter().zip(&dead) {
        assert_eq!(dl_reason.as_deref(), Some(*reason));
        assert_eq!(dl_body, body, "the dead letter carries the original body");
    }
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, 5, "only the good call's events are logged");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_call_scoped_events_are_kept_raw() {
    let app = TestApp::spawn().await;
    let c = call("extra");
    let odd = json!({
        "eventType": "call.transfer.requested",
        "callId": c.call_id,
        "timestamp": "2025-09-24T10:01:10Z",
        "target": "sip:agent@pbx",
        "someFutureKey": {"nested": [1, 2, 3]}
    });
    publish_all(&app, &[c.started(), odd.clone(), c.ended()]).await;
    let r = wait_for_row(&app.pool, &c.call_id, 3).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    let payload: Value = sqlx::query_scalar(
        "SELECT payload FROM call_events WHERE call_id = $1 AND event_type = 'call.transfer.requested'",
    )
    .bind(&c.call_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        payload, odd,
        "the whole message is stored, unknown keys included"
    );
    app.finish().await;
}

/// A connection and a channel of the test's own, to leave on the broker what an earlier
/// deployment or an operator would have declared.
async fn by_hand() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(&amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    // Publisher confirms: a publish awaited here has reached the queue, not just a send buffer
    // that closing the connection may discard.
    ch.confirm_select(Default::default()).await.unwrap();
    (conn, ch)
}

async fn declare_exchange(
    ch: &lapin::Channel,
    name: &str,
    kind: lapin::ExchangeKind,
    durable: bool,
) {
    ch.exchange_declare(
        name.into(),
        kind,
        lapin::options::ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_is_reported_and_used_when_allowed() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    // An old deployment declared the exchange as fanout.
    {
        let (conn, ch) = by_hand().await;
        declare_exchange(
            &ch,
            &settings.amqp.exchange,
            lapin::ExchangeKind::Fanout,
            true,
        )
        .await;
        conn.close(200, "ok".into()).await.unwrap();
    }
    settings.amqp.accept_existing_exchange_type = true;
    let app = TestApp::start(env, settings).await;
    let c = call("fanout");
    // An old producer published with an empty routing key.
    for e in c.events(true) {
        app.publisher
            .publish_raw("", e.to_string().as_bytes())
            .await
            .unwrap();
    }
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    app.finish().await;
}

/// Declares a durable queue with one argument.
async fn declare_durable(
    ch: &lapin::Channel,
    queue: &str,
    argument: &str,
    value: lapin::types::AMQPValue,
) -> lapin::Result<lapin::Queue> {
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(argument.into(), value);
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        arguments,
    )
    .await
}

/// Redeclares `queue` (durable) with `argument` = `value` on a channel of its own: the broker
/// accepts it only if the queue already has that argument with that value (and no other: the
/// service's own queue is redeclared with its `x-single-active-consumer` too, the dead-letter
/// queue with its default bounds).
async fn queue_has(queue: &str, argument: &str, value: lapin::types::AMQPValue) -> bool {
    let (conn, ch) = by_hand().await;
    let mut arguments = if queue.ends_with("failed.queue") && argument != "x-queue-type" {
        let defaults =
            cdr_service::config::Settings::load_from(None, Vec::new()).expect("defaults");
        cdr_service::ingest::dead_letter_arguments(&defaults.amqp)
    } else {
        lapin::types::FieldTable::default()
    };
    arguments.insert(argument.into(), value);
    if !queue.ends_with("failed.queue") && argument != "x-queue-type" {
        arguments.insert(
            "x-single-active-consumer".into(),
            lapin::types::AMQPValue::Boolean(true),
        );
    }
    let declared = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await;
    let _ = conn.close(200, "ok".into()).await;
    match declared {
        Ok(_) => true,
        Err(e) => {
            assert!(
                e.to_string()
                    .contains(&format!("inequivalent arg '{argument}'")),
                "unexpected refusal: {e}"
            );
            false
        }
    }
}

fn long(n: i64) -> lapin::types::AMQPValue {
    lapin::types::AMQPValue::LongLongInt(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_declared_with_the_configured_version() {
    let app = TestApp::spawn_with(|s| s.amqp.queue_version = 2).await;
    // Redeclared as `queue_has` does: the service's queue with `x-single-active-consumer` (one
    // active consumer at a time), the dead letters' without it.
    for queue in [
        &app.settings.amqp.queue,
        &app.settings.amqp.dead_letter_queue,
    ] {
        assert!(
            queue_has(queue, "x-queue-version", long(2)).await,
            "{queue} is version 2"
        );
        assert!(
            !queue_has(queue, "x-queue-version", long(1)).await,
            "{queue} is not version 1"
        );
    }
    let c = call("queue-v2");
    publish_all(&app, &c.events(true)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declared_with_other_arguments_is_consumed_as_it_is() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    // An operator declared the queue as a quorum queue, and producers left a call in it.
    let c = call("quorum-queue");
    {
        let (conn, ch) = by_hand().await;
        declare_exchange(
            &ch,
            &settings.amqp.exchange,
            lapin::ExchangeKind::Topic,
            true,
        )
        .await;
        declare_durable(
            &ch,
            &settings.amqp.queue,
            "x-queue-type",
            lapin::types::AMQPValue::LongString("quorum".into()),
        )
        .await
        .unwrap();
        ch.queue_bind(
            settings.amqp.queue.as_str().into(),
            settings.amqp.exchange.as_str().into(),
            "#".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
        for e in c.events(true) {
            let confirmation = ch
                .basic_publish(
                    settings.amqp.exchange.as_str().into(),
                    "call.event".into(),
                    Default::default(),
                    e.to_string().as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirmation.is_ack(), "the broker took the event");
        }
        conn.close(200, "ok".into()).await.unwrap();
    }
    let queue = settings.amqp.queue.clone();
    let app = TestApp::start(env, settings).await;
    // Consumed as it is: still a quorum queue, and its call recorded.
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    let quorum = lapin::types::AMQPValue::LongString("quorum".into());
    assert!(queue_has(&queue, "x-queue-type", quorum).await);
    // New events keep flowing through it.
    let c2 = call("quorum-queue-next");
    publish_all(&app, &c2.events(true)).await;
    let r2 = wait_for_row(&app.pool, &c2.call_id, 5).await;
    assert_full_record(&r2, &c2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_without_permission_keeps_the_service_up_and_not_ready() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    {
        let (conn, ch) = by_hand().await;
        declare_exchange(
            &ch,
            &settings.amqp.exchange,
            lapin::ExchangeKind::Fanout,
            false,
        )
        .await;
        conn.close(200, "ok".into()).await.unwrap();
    }
    let app = Running::spawn(&settings).await;
    let (port, health) = (app.port, app.health.clone());
    // Recovery finishes; the broker side never becomes ready.
    wait_until(Duration::from_secs(20), "recovery done", || {
        let done = health.recovered();
        async move { done }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!health.broker_up());
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let live = reqwest::get(format!("http://127.0.0.1:{port}/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    app.assert_alive();
    app.stop().await;
    env.cleanup(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_counts_from_the_last_event_across_restarts() {
    let app = TestApp::spawn_with(|s| s.tracker.idle_timeout = Duration::from_secs(600)).await;
    let c = call("idle-across-restart");
    publish_all(&app, &[c.started(), c.answered()]).await;
    wait_until(Duration::from_secs(10), "events logged", || {
        let pool = app.pool.clone();
        let id = c.call_id.clone();
        async move { logged_events(&pool, &id).await == 2 }
    })
    .await;
    let (env, settings) = app.stop().await;
    // The service was down for an hour since the call's last event.
    let pool = env.pool().await;
    sqlx::query(
        "UPDATE call_events SET received_at = received_at - interval '1 hour' WHERE call_id = $1",
    )
    .bind(&c.call_id)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let app = TestApp::start(env, settings).await;
    // Ten minutes of idle timeout have long passed: the recovered call is written at once,
    // not ten minutes after the restart.
    let r = wait_for_row(&app.pool, &c.call_id, 2).await;
    assert_eq!(r.status.as_deref(), Some("TIMED_OUT"));
    assert_eq!(r.start_time, Some(t0()));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_call_rests_and_wakes_with_its_next_event() {
    let app = TestApp::spawn_with(|s| {
        s.tracker.rest_after = Duration::from_millis(200);
        s.tracker.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let c = call("rests");
    publish_all(&app, &[c.started(), c.answered()]).await;
    wait_until(Duration::from_secs(10), "the call rests", || async {
        app.active_calls().await["resting"] == 1
    })
    .await;
    let calls = app.active_calls().await;
    assert_eq!(
        calls["answered"], 1,
        "a resting call is still active: {calls}"
    );
    // The live view of a resting call comes from its kept state.
    let live = app.live_call(&c.call_id).await;
    assert_eq!(live["resting"], true, "{live}");
    assert_eq!(live["phase"], "answered", "{live}");
    assert_eq!(live["events"], 2, "{live}");
    assert!(row(&app.pool, &c.call_id).await.is_none());

    // Its next events wake it, in any order, and the record holds everything.
    publish_all(&app, &[c.recording(), c.identified()]).await;
    wait_until(Duration::from_secs(10), "the call rests again", || async {
        let live = app.live_call(&c.call_id).await;
        live["resting"] == true && live["events"] == 4
    })
    .await;
    publish_all(&app, &[c.ended()]).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    wait_until(Duration::from_secs(10), "no active call left", || async {
        let calls = app.active_calls().await;
        calls["ringing"] == 0 && calls["answered"] == 0 && calls["resting"] == 0
    })
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_call_times_out_on_schedule() {
    let app = TestApp::spawn_with(|s| {
        s.tracker.rest_after = Duration::from_millis(100);
        s.tracker.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let c = call("rest-timeout");
    publish_all(&app, &[c.started()]).await;
    wait_until(Duration::from_secs(10), "the call rests", || async {
        app.active_calls().await["resting"] == 1
    })
    .await;
    // No actor and no timer of its own: the tracker's scan wakes it for its idle timeout.
    let r = wait_for_row(&app.pool, &c.call_id, 1).await;
    assert_eq!(r.status.as_deref(), Some("TIMED_OUT"));
    assert_eq!(r.start_time, Some(t0()));
    // Its end, arriving after the timeout, completes the record.
    publish_all(&app, &[c.ended()]).await;
    let r = wait_for_row(&app.pool, &c.call_id, 2).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_puts_open_calls_to_rest_and_ended_ones_to_write() {
    let app = TestApp::spawn_with(|s| s.tracker.idle_timeout = Duration::from_secs(600)).await;
    let open: Vec<_> = (0..3).map(|i| call(&format!("recover-open-{i}"))).collect();
    for c in &open {
        publish_all(&app, &[c.started(), c.answered()]).await;
    }
    wait_until(Duration::from_secs(10), "events logged", || async {
        let mut n = 0;
        for c in &open {
            n += logged_events(&app.pool, &c.call_id).await;
        }
        n == 6
    })
    .await;
    let (env, settings) = app.stop().await;
    let app = TestApp::start(env, settings).await;
    let calls = app.active_calls().await;
    assert_eq!(calls["answered"], 3, "{calls}");
    assert_eq!(
        calls["resting"], 3,
        "recovered open calls start at rest: {calls}"
    );
    for c in &open {
        publish_all(&app, &[c.ended(), c.recording(), c.identified()]).await;
    }
    for c in &open {
        let r = wait_for_row(&app.pool, &c.call_id, 5).await;
        assert_full_record(&r, c);
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrower_bindings_keep_platform_events_away_and_call_events_flowing() {
    let app = TestApp::spawn_with(|s| {
        s.amqp.binding_keys = vec!["call.#".into(), "user.identified.for_call".into()];
    })
    .await;
    let platform = br#"{"eventType":"tenant.renamed","tenantId":"t","name":"n"}"#;
    app.publisher
        .publish_raw("tenant.renamed", platform)
        .await
        .unwrap();
    let c = call("narrow");
    publish_all(&app, &c.events(true)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    // Published before the call's events: had the queue been bound to it, it would have been
    // delivered and counted before the call's row was written. (The metrics recorder is shared
    // by the tests of this file: the event type is this test's own.)
    let text = app.scrape().await;
    assert_eq!(
        common::metrics::value(
            &text,
            r#"cdr_platform_events_total{event_type="tenant.renamed",format="json"}"#
        ),
        None,
        "the queue is not bound to tenant.renamed"
    );
    assert!(
        drain_queue(&app.settings.amqp.dead_letter_queue)
            .await
            .is_empty()
    );
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_events_are_acked_and_counted_not_dead_lettered() {
    let app = TestApp::spawn().await;
    for body in [
        &br#"{"eventType":"user.created","userId":"u-1","tenantId":"t"}"#[..],
        br#"{"eventType":"dialplan.updated","callId":null}"#,
        br#"{"eventType":"user.created","userId":"u-2"}"#,
    ] {
        let key = serde_json::from_slice::<Value>(body).unwrap()["eventType"]
            .as_str()
            .unwrap()
            .to_owned();
        app.publisher.publish_raw(&key, body).await.unwrap();
    }
    let c = call("after-platform");
    publish_all(&app, &c.events(true)).await;
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    let text = app.scrape().await;
    assert_eq!(
        common::metrics::value(
            &text,
            r#"cdr_platform_events_total{event_type="user.created",format="json"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        common::metrics::value(
            &text,
            r#"cdr_platform_events_total{event_type="dialplan.updated",format="json"}"#
        ),
        Some(1.0)
    );
    assert!(
        drain_queue(&app.settings.amqp.dead_letter_queue)
            .await
            .is_empty(),
        "platform events are not dead-lettered"
    );
    assert_eq!(queue_depth(&app.settings.amqp.queue).await, 0);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, 5, "only the call's events are logged");
    app.finish().await;
}
