//! Well-formed messages with absurd values: each costs at most itself, never a call's record
//! nor the consumer. The decoder's rules first, then the same through the real broker and
//! database.

use cdr_testkit as common;

use std::time::Duration;

use cdr_service::event::{EventKind, Limits, MAX_TRACE_ID_LEN, Reject, TimestampWindow, decode};
use chrono::{DateTime, Utc};
use common::*;
use serde_json::{Value, json};

const LIMITS: Limits = Limits {
    max_body_bytes: 1 << 20,
    max_json_depth: 32,
};

fn received() -> DateTime<Utc> {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

fn decoded(v: &Value) -> Result<cdr_service::event::Envelope, Reject> {
    decode(v.to_string().as_bytes(), received(), LIMITS)
}

fn turn(index: Value) -> Value {
    json!({"eventType": "dialog.turn.completed", "callId": "turn@h",
           "timestamp": "2026-06-01T11:59:00Z", "turnIndex": index, "userText": "hi"})
}

fn window() -> TimestampWindow {
    TimestampWindow {
        past: chrono::Duration::days(3650),
        future: chrono::Duration::days(1),
    }
}

#[test]
fn a_timestamp_far_from_its_receive_time_is_refused_and_a_missing_one_passes() {
    let at = |ts: &str| json!({"eventType": "call.answered", "callId": "w@h", "timestamp": ts});
    for ts in [
        "0001-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "2016-05-01T00:00:00Z",
    ] {
        let e = decoded(&at(ts)).expect("well formed");
        let reject = e.check_window(&window()).expect_err(ts);
        assert_eq!(reject.as_code(), "bad_timestamp", "{ts}: {reject}");
        assert!(
            reject
                .to_string()
                .contains("more than 3650days before its receive time"),
            "{reject}"
        );
    }
    let e = decoded(&at("2026-06-03T12:00:00Z")).expect("well formed");
    let reject = e.check_window(&window()).expect_err("two days ahead");
    assert!(
        reject
            .to_string()
            .contains("more than 1day after its receive time"),
        "{reject}"
    );
    // Year 10000 is no RFC 3339 time at all.
    assert_eq!(
        decoded(&at("10000-01-01T00:00:00Z"))
            .expect_err("year 10000")
            .as_code(),
        "bad_timestamp"
    );
    for ts in [
        "2016-06-05T12:00:00Z",
        "2026-06-01T12:00:00Z",
        "2026-06-02T11:59:59Z",
    ] {
        let e = decoded(&at(ts)).expect("well formed");
        e.check_window(&window()).expect(ts);
    }
    let e = decoded(&json!({"eventType": "call.answered", "callId": "w@h"})).expect("no time");
    assert!(e.timestamp_inferred);
    e.check_window(&window())
        .expect("the receive time standing in always passes");
}

#[test]
fn a_trace_id_too_long_for_its_column_is_dropped_and_the_event_kept() {
    let fits = "t".repeat(MAX_TRACE_ID_LEN);
    let too_long = "t".repeat(MAX_TRACE_ID_LEN + 1);
    let with = |trace: &str| {
        json!({"eventType": "call.started", "callId": "trace@h", "traceId": trace,
               "timestamp": "2026-06-01T11:00:00Z"})
    };
    assert_eq!(
        decoded(&with(&fits)).expect("kept").trace_id.as_deref(),
        Some(fits.as_str())
    );
    let e = decoded(&with(&too_long)).expect("the event is kept");
    assert_eq!(e.trace_id, None);
    assert!(e.trace_id_dropped);
    assert!(!decoded(&with(&fits)).expect("kept").trace_id_dropped);
    assert!(matches!(e.kind, EventKind::Started(_)));
}

#[test]
fn a_negative_turn_index_names_no_turn() {
    let e = decoded(&turn(json!(-1))).expect("kept");
    assert!(matches!(e.kind, EventKind::Other), "{:?}", e.kind);
    let e = decoded(&turn(json!(0))).expect("kept");
    assert!(matches!(e.kind, EventKind::DialogTurn(_)), "{:?}", e.kind);
}

#[test]
fn integer_fields_take_every_json_spelling_of_an_integer_and_no_string() {
    for spelling in ["7", "7.0", "7e0", "0.7e1", "700e-2"] {
        let v: Value = serde_json::from_str(spelling).unwrap();
        match decoded(&turn(v)).expect("kept").kind {
            EventKind::DialogTurn(t) => assert_eq!(t.turn_index, 7, "{spelling}"),
            other => panic!("{spelling}: {other:?}"),
        }
    }
    for not_an_integer in [json!("7"), json!(7.5), json!(1e10), json!(true), json!([7])] {
        let e = decoded(&turn(not_an_integer.clone())).expect("kept");
        assert!(
            matches!(e.kind, EventKind::Other),
            "{not_an_integer}: {:?}",
            e.kind
        );
    }
}

/// A call whose answer is dated year 0001 and whose start carries a 300-character trace id:
/// the absurd answer is dead-lettered, the start is logged without its trace id, and the call
/// gets its record from the rest, with nothing else dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_values_cost_at_most_their_message_never_the_record() {
    let app = TestApp::spawn().await;
    let c = call("absurd");
    let mut started = c.started();
    started["traceId"] = json!("t".repeat(300));
    let mut answered = c.answered();
    answered["timestamp"] = json!("0001-01-01T00:00:00Z");
    let neighbour = call("absurd-neighbour");
    let mut events = vec![started, answered, c.identified(), c.ended()];
    events.extend(neighbour.events(true));
    for e in &events {
        app.publisher.publish(e).await.expect("publish");
    }
    let r = wait_for_row(&app.pool, &c.call_id, 3).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(r.answer_time, None, "the absurd answer is not the call's");
    assert_eq!(r.start_time, Some(c.start));
    let full = wait_for_row(&app.pool, &neighbour.call_id, 5).await;
    assert_full_record(&full, &neighbour);
    let dead = wait_for_dead_letters(&app.settings.amqp.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1.as_deref(), Some("bad_timestamp"));
    let traces: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT trace_id FROM call_events WHERE call_id = $1 AND event_type = 'call.started'",
    )
    .bind(&c.call_id)
    .fetch_all(&app.pool)
    .await
    .expect("logged start");
    assert_eq!(
        traces,
        vec![None],
        "logged without the trace id that cannot fit"
    );
    let text = app.scrape().await;
    assert_eq!(
        common::metrics::value(&text, "cdr_event_fields_dropped_total{field=\"trace_id\"}"),
        Some(1.0),
        "{text}"
    );
    app.finish().await;
}

/// The dead-letter queue keeps at most its bound, the oldest dropped first, so a flood of
/// garbage cannot fill the broker's disk; the service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_keeps_its_bound_dropping_the_oldest() {
    let app = TestApp::spawn_with(|s| s.amqp.dead_letter_max_length = 3).await;
    for i in 0..8 {
        app.publisher
            .publish_raw("call.started", format!("garbage {i}").as_bytes())
            .await
            .expect("publish");
    }
    let c = call("after-the-flood");
    for e in c.events(true) {
        app.publisher.publish(&e).await.expect("publish");
    }
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    // The garbage came before the call on the one queue: each was dead-lettered (its publish
    // confirmed) before the call's events were taken, so all eight have reached the queue.
    let dead = drain_queue(&app.settings.amqp.dead_letter_queue).await;
    let bodies: Vec<String> = dead
        .iter()
        .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(bodies, ["garbage 5", "garbage 6", "garbage 7"]);
    app.finish().await;
}

/// A message the log refuses (here through a constraint the test adds) is dead-lettered as
/// `unstorable`; its batch is bisected down to it, and every other message of the batch is
/// logged, acked once, and makes its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_log_refuses_costs_only_itself_in_its_batch() {
    let app = TestApp::spawn_with(|s| {
        s.ingest.batch_max_age = Duration::from_millis(200);
    })
    .await;
    sqlx::query(
        "ALTER TABLE call_events ADD CONSTRAINT test_refuses CHECK (call_id NOT LIKE 'refuse%')",
    )
    .execute(&app.pool)
    .await
    .expect("constraint");
    let calls: Vec<_> = (0..40).map(|i| call(&format!("batch-{i}"))).collect();
    let bad = call("refuse-me");
    let mut events: Vec<Value> = calls.iter().flat_map(|c| c.events(true)).collect();
    events.insert(97, bad.started());
    for e in &events {
        app.publisher.publish(e).await.expect("publish");
    }
    for c in &calls {
        let r = wait_for_row(&app.pool, &c.call_id, 5).await;
        assert_full_record(&r, c);
    }
    let dead = wait_for_dead_letters(&app.settings.amqp.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1.as_deref(), Some("unstorable"));
    assert_eq!(dead[0].0, bad.started().to_string().into_bytes());
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(logged, 200, "every other message logged once");
    app.finish().await;
}

fn usage(call_id: &str, usage_id: &str, quantity: &str) -> Value {
    let body = format!(
        r#"{{"eventType":"cost.usage.reported","callId":"{call_id}","timestamp":"2025-09-24T10:01:30Z","usageId":"{usage_id}","service":"agent","resourceType":"llm_token","quantity":{quantity}}}"#
    );
    serde_json::from_str(&body).expect("a usage report")
}

/// Absurd usage figures with a non-zero price: the fold never panics, the record keeps what it
/// can and names what it could not (`anomalies`).
#[test]
fn absurd_usage_figures_leave_their_cost_out_and_say_so() {
    use cdr_service::merge::{CallEvent, CallState, PriceBook};
    let prices = PriceBook::new([(
        "llm_token".to_owned(),
        "2020-01-01T00:00:00Z".parse().unwrap(),
        rust_decimal::Decimal::TWO,
    )]);
    let start = json!({"eventType": "call.started", "callId": "u@h",
                       "timestamp": "2025-09-24T10:00:00Z"});
    let fold = |reports: &[Value]| {
        let events: Vec<CallEvent> = std::iter::once(&start)
            .chain(reports)
            .map(|v| CallEvent::from(decoded(v).expect("decodes")))
            .collect();
        CallState::fold(&events).record_and_usage("u@h", &prices)
    };
    let (record, lines) = fold(&[usage("u@h", "a", "\"79228162514264337593543950335\"")]);
    assert_eq!(record.total_cost, None);
    assert_eq!(lines[0].cost, None);
    assert_eq!(
        record.anomalies.as_deref(),
        Some("cost_overflow,quantity_unfit")
    );
    let (record, _) = fold(&[usage("u@h", "a", "100000")]);
    assert_eq!(record.anomalies.as_deref(), Some("cost_unfit"));
    let (record, _) = fold(&[usage("u@h", "a", "10"), usage("u@h", "b", "20")]);
    assert_eq!(record.anomalies, None);
    assert_eq!(record.total_cost, Some(rust_decimal::Decimal::from(60)));
}

/// Through the real pipeline: calls whose usage figures are absurd get their records, complete
/// but for the figures they name in `anomalies`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_absurd_usage_gets_its_record_flagged() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) \
         VALUES ('llm', 'llm_token', 2, 'USD', '2020-01-01')",
    )
    .execute(&pool)
    .await
    .expect("a price");
    let settings = env.settings();
    let app = TestApp::start(env, settings).await;
    let huge = call("usage-huge");
    let large = call("usage-large");
    for (c, quantity) in [
        (&huge, "\"79228162514264337593543950335\""),
        (&large, "100000"),
    ] {
        let mut events = c.events(true);
        events.push(usage(&c.call_id, "u1", quantity));
        for e in &events {
            app.publisher.publish(e).await.expect("publish");
        }
    }
    let anomalies = |call_id: String| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT anomalies FROM calls WHERE call_id = $1",
            )
            .bind(call_id)
            .fetch_one(&pool)
            .await
            .expect("anomalies")
        }
    };
    let r = wait_for_row(&app.pool, &huge.call_id, 6).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(r.start_time, Some(huge.start));
    assert_eq!(
        anomalies(huge.call_id.clone()).await.as_deref(),
        Some("cost_overflow,quantity_unfit")
    );
    let r = wait_for_row(&app.pool, &large.call_id, 6).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(
        anomalies(large.call_id.clone()).await.as_deref(),
        Some("cost_unfit")
    );
    wait_until(Duration::from_secs(10), "the anomalies counted", || {
        let app = &app;
        async move { app.metric("cdr_record_anomalies_total").await >= 3.0 }
    })
    .await;
    pool.close().await;
    app.finish().await;
}

/// A call with more distinct usage reports than it keeps: the lowest keys are kept whatever
/// the order, the record says `usage_capped`, and memory per call stays bounded.
#[test]
fn usage_reports_past_the_cap_keep_the_lowest_keys_in_any_order() {
    use cdr_service::merge::{CallEvent, CallState, MAX_USAGE_REPORTS_PER_CALL, PriceBook};
    let prices = PriceBook::new([(
        "llm_token".to_owned(),
        "2020-01-01T00:00:00Z".parse().unwrap(),
        rust_decimal::Decimal::ONE,
    )]);
    let n = MAX_USAGE_REPORTS_PER_CALL + 5;
    let mut events: Vec<CallEvent> = (0..n)
        .map(|i| usage("cap@h", &format!("u{i:05}"), "1"))
        .chain([json!({"eventType": "call.started", "callId": "cap@h",
                       "timestamp": "2025-09-24T10:00:00Z"})])
        .map(|v| CallEvent::from(decoded(&v).expect("decodes")))
        .collect();
    let (record, lines) = CallState::fold(&events).record_and_usage("cap@h", &prices);
    assert_eq!(lines.len(), MAX_USAGE_REPORTS_PER_CALL);
    assert_eq!(lines.last().map(|l| l.key.as_str()), Some("id:u00999"));
    assert_eq!(record.anomalies.as_deref(), Some("usage_capped"));
    assert_eq!(
        record.total_cost,
        Some(rust_decimal::Decimal::from(MAX_USAGE_REPORTS_PER_CALL))
    );
    events.reverse();
    assert_eq!(
        CallState::fold(&events).record_and_usage("cap@h", &prices),
        (record.clone(), lines.clone()),
        "the same whatever the order"
    );
    events.rotate_left(n / 3);
    assert_eq!(
        CallState::fold(&events).record_and_usage("cap@h", &prices),
        (record, lines)
    );
}

/// A string value longer than any the platform sends (a 9 KiB recording URI, say) reads as
/// absent: the event is kept, the call's state stays small, and a value that fits is kept.
#[test]
fn string_values_past_their_bound_read_as_absent() {
    use cdr_service::event::MAX_FIELD_BYTES;
    let recording = |uri: &str| {
        json!({"eventType": "call.recording.available", "callId": "s@h",
               "timestamp": "2026-06-01T11:00:00Z", "recordingUri": uri})
    };
    let fits = format!("s3://bucket/{}", "a".repeat(MAX_FIELD_BYTES - 12));
    match decoded(&recording(&fits)).expect("kept").kind {
        EventKind::RecordingAvailable { uri } => assert_eq!(uri.as_deref(), Some(fits.as_str())),
        other => panic!("{other:?}"),
    }
    let too_long = format!("{fits}a");
    match decoded(&recording(&too_long)).expect("kept").kind {
        EventKind::RecordingAvailable { uri } => assert_eq!(uri, None),
        other => panic!("{other:?}"),
    }
    // Past the bound under one key, a value that fits under another is read.
    let both = json!({"eventType": "call.started", "callId": "s@h",
                      "timestamp": "2026-06-01T11:00:00Z",
                      "from": "x".repeat(MAX_FIELD_BYTES + 1), "fromUri": "sip:905551234567@h"});
    match decoded(&both).expect("kept").kind {
        EventKind::Started(s) => assert_eq!(s.caller_number.as_deref(), Some("905551234567")),
        other => panic!("{other:?}"),
    }
}
