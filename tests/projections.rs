//! The dialog-turn projection, written after the commit (off the ack path), and the usage lines
//! written with the record, against the real database and broker: they end up right whatever
//! the order of the events, a call leaves `open_calls` only with them written, and what a crash
//! left unwritten is written again when the service starts.

use cdr_testkit as common;

use std::time::Duration;

use cdr_service::event::{self, Envelope, Limits};
use cdr_service::health::Health;
use cdr_service::lease::Fence;
use cdr_service::log::{EventLog, LoggedEvent};
use cdr_service::merge::{CallState, PriceBook};
use cdr_service::project::{self, ProjectionRows, Projector};
use cdr_service::writer::{FlushCause, RecordWriter, WriteRequest};
use chrono::Duration as Span;
use common::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const LIMITS: Limits = Limits {
    max_body_bytes: 1 << 20,
    max_json_depth: 32,
};

fn at(secs: i64) -> String {
    event::format_timestamp(t0() + Span::seconds(secs))
}

/// A call with two versions of its first turn (the later one by timestamp wins), a second
/// turn, a usage report in two versions (the larger quantity wins) and one without an id.
fn call_with_turns_and_usage(call: &str) -> Vec<Value> {
    vec![
        json!({"eventType": "call.started", "callId": call, "timestamp": at(0),
               "from": "sip:1@x", "to": "sip:2@x"}),
        json!({"eventType": "call.answered", "callId": call, "timestamp": at(1)}),
        json!({"eventType": "dialog.turn.completed", "callId": call, "timestamp": at(3),
               "turnIndex": 0, "userText": "hi", "aiText": "second answer", "sttMs": 90}),
        json!({"eventType": "dialog.turn.completed", "callId": call, "timestamp": at(2),
               "turnIndex": 0, "userText": "hi", "aiText": "first answer", "sttMs": 80}),
        json!({"eventType": "dialog.turn.completed", "callId": call, "timestamp": at(4),
               "turnIndex": 1, "userText": "bye", "aiText": "goodbye"}),
        json!({"eventType": "cost.usage.reported", "callId": call, "timestamp": at(5),
               "usageId": "u1", "service": "llm", "resourceType": "LLM_TOKENS", "quantity": "10"}),
        json!({"eventType": "cost.usage.reported", "callId": call, "timestamp": at(5),
               "usageId": "u1", "service": "llm", "resourceType": "LLM_TOKENS", "quantity": "12"}),
        json!({"eventType": "cost.usage.reported", "callId": call, "timestamp": at(6),
               "service": "tts", "resourceType": "TTS_CHARACTERS", "quantity": "7"}),
        json!({"eventType": "call.ended", "callId": call, "timestamp": at(9), "reason": "normal"}),
    ]
}

async fn turns(pool: &PgPool, call: &str) -> Vec<(i32, Option<String>, Option<i32>)> {
    sqlx::query_as(
        "SELECT turn_index, ai_text, stt_ms FROM call_dialog_events WHERE call_id = $1 ORDER BY turn_index",
    )
    .bind(call)
    .fetch_all(pool)
    .await
    .expect("read dialog turns")
}

async fn is_open(pool: &PgPool, call: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM open_calls WHERE call_id = $1)")
        .bind(call)
        .fetch_one(pool)
        .await
        .expect("read open_calls")
}

/// What `call_with_turns_and_usage` must project to: its dialog turns.
async fn assert_projected(pool: &PgPool, call: &str) {
    assert_eq!(
        turns(pool, call).await,
        vec![
            (0, Some("second answer".to_owned()), Some(90)),
            (1, Some("goodbye".to_owned()), None),
        ],
        "dialog turns of {call}"
    );
}

/// The usage lines of `call_with_turns_and_usage`'s record: each report once (of `u1`'s two
/// versions the larger), and the answered call's telephony minute, billed to the unknown
/// tenant (no event names one) and unpriced (no prices).
async fn assert_usage_lines(pool: &PgPool, call: &str) {
    let lines = cdr_service::usage::by_call(call)
        .fetch_all(pool)
        .await
        .expect("read usage lines");
    let seen: Vec<(&str, &str, &str, Decimal, String)> = lines
        .iter()
        .map(|l| {
            (
                l.usage_key.split(':').next().unwrap_or_default(),
                l.service_name.as_str(),
                l.resource_type.as_str(),
                l.quantity.normalize(),
                event::format_timestamp(l.recorded_at),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("hash", "tts", "TTS_CHARACTERS", Decimal::from(7), at(6)),
            ("id", "llm", "LLM_TOKENS", Decimal::from(12), at(5)),
            (
                "telephony",
                "telephony-core",
                "telephony_minute",
                Decimal::from(1),
                at(9)
            ),
        ],
        "usage lines of {call}"
    );
    assert_eq!(lines[1].usage_key, "id:u1");
    for l in &lines {
        assert_eq!(l.tenant_id, "system");
        assert_eq!(l.calculated_cost, None);
    }
}

/// Published in reverse order through the broker: once the call has left `open_calls` (its
/// row written), its projections are there, read at that moment without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_leaves_open_calls_only_with_its_projections_written() {
    let app = TestApp::spawn().await;
    let call = "projected";
    let mut events = call_with_turns_and_usage(call);
    events.reverse();
    for e in &events {
        app.publisher.publish(e).await.expect("publish");
    }
    let row = wait_for_row(&app.pool, call, events.len() as i32).await;
    assert_eq!(row.status.as_deref(), Some("COMPLETED"));
    wait_until(Duration::from_secs(30), "the call closed", || {
        let pool = app.pool.clone();
        async move { !is_open(&pool, call).await }
    })
    .await;
    assert_projected(&app.pool, call).await;
    assert_usage_lines(&app.pool, call).await;
    assert!(app.metric("cdr_projection_rows_total").await >= 2.0);
    assert!(app.metric("cdr_usage_lines_written_total").await >= 3.0);
    app.finish().await;
}

/// The log committed a call's events (and a quarantined call's) but the process died before
/// the projector wrote their rows: the next start writes them, then closes the call with its
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_lost_in_a_crash_are_written_again_at_start() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    let log = EventLog::new(pool.clone());
    let appended = log.append(&envelopes("crashed")).await.expect("append");
    assert_eq!(appended.new_events(), 9);
    let appended = log.append(&envelopes("held")).await.expect("append");
    assert_eq!(appended.new_events(), 9);
    log.quarantine("held", 3, "kept back by the test")
        .await
        .expect("quarantine");
    assert!(turns(&pool, "crashed").await.is_empty());
    assert!(is_open(&pool, "crashed").await);

    let mut settings = env.settings();
    settings.tracker.linger = Duration::from_millis(200);
    let app = TestApp::start(env, settings).await;
    // Recovery re-projected both calls before the service reported ready.
    assert_projected(&app.pool, "crashed").await;
    assert_projected(&app.pool, "held").await;
    let recovered = wait_for_row(&app.pool, "crashed", 9).await;
    assert_eq!(recovered.status.as_deref(), Some("COMPLETED"));
    wait_until(Duration::from_secs(30), "the recovered call closed", || {
        let pool = app.pool.clone();
        async move { !is_open(&pool, "crashed").await }
    })
    .await;
    assert_usage_lines(&app.pool, "crashed").await;
    assert!(
        row(&app.pool, "held").await.is_none(),
        "a quarantined call gets no record until it is released"
    );
    let held = cdr_service::usage::by_call("held")
        .fetch_all(&app.pool)
        .await
        .expect("read usage lines");
    assert!(held.is_empty(), "nor usage lines: {held:?}");
    pool.close().await;
    app.finish().await;
}

fn envelopes(call: &str) -> Vec<Envelope> {
    call_with_turns_and_usage(call)
        .iter()
        .map(|v| event::decode(v.to_string().as_bytes(), t0(), LIMITS).expect("event"))
        .collect()
}

/// A fresh database of its own, with the schema, and the call's events logged.
async fn logged_call(env: &TestEnv, call: &str) -> (PgPool, Vec<LoggedEvent>) {
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    let batch = envelopes(call);
    let appended = EventLog::new(pool.clone())
        .append(&batch)
        .await
        .expect("append");
    (pool, appended.into_logged(batch))
}

/// The request an actor would send for the call's logged events.
fn record_of(call: &str, logged: &[LoggedEvent]) -> WriteRequest {
    let state = CallState::fold(logged.iter().map(|e| &e.event));
    let (record, usage) = state.record_and_usage(call, &PriceBook::default());
    WriteRequest {
        record,
        usage,
        event_count: logged.len() as i32,
        max_event_id: logged.iter().map(|e| e.event_id).max().unwrap(),
        end_received: None,
        cause: FlushCause::Ended,
        quarantine: None,
    }
}

/// The record writer waits for the projections to cover a call's events before it writes
/// the row and closes the call; if the projector stops short, it writes the row and leaves
/// the call open for the next start to re-project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_closes_a_call_only_once_its_projections_are_covered() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let (pool, logged) = logged_call(&env, "gated").await;
    let request = record_of("gated", &logged);

    let (projector, handle) = Projector::new(
        pool.clone(),
        Fence::none(),
        settings.backoff.clone(),
        Health::default(),
    );
    let projector_task = tokio::spawn(projector.run(CancellationToken::new()));
    let (writer, writer_handle) = RecordWriter::new(
        pool.clone(),
        settings.writer.clone(),
        settings.backoff.clone(),
        Health::default(),
        handle.projected(),
    );
    let drain = CancellationToken::new();
    let writer_task = tokio::spawn(writer.run(drain.clone(), CancellationToken::new()));
    writer_handle.write(request.clone()).await.expect("queued");
    // Nothing projected yet: the record waits (a bounded look, not a timing threshold: the
    // row must not appear however long this takes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        row(&pool, "gated").await.is_none(),
        "written before its projections"
    );
    assert!(is_open(&pool, "gated").await);

    // The projector takes the committed batch, writes its rows, then raises its mark: the row
    // and the close follow.
    handle.project(&logged).await;
    wait_for_row(&pool, "gated", request.event_count).await;
    wait_until(Duration::from_secs(30), "the call closed", || {
        let pool = pool.clone();
        async move { !is_open(&pool, "gated").await }
    })
    .await;
    assert_projected(&pool, "gated").await;

    // A late event reopens the call; then the projector stops without covering it.
    let late = json!({"eventType": "call.recording.available", "callId": "gated",
                      "timestamp": at(20), "recordingUrl": "s3://r/gated.wav"});
    let batch = vec![event::decode(late.to_string().as_bytes(), t0(), LIMITS).expect("event")];
    let appended = EventLog::new(pool.clone())
        .append(&batch)
        .await
        .expect("append");
    let mut all = logged.clone();
    all.extend(appended.into_logged(batch));
    // Its last handle gone, the projector ends with the mark where it is.
    drop(handle);
    projector_task.await.expect("projector");
    writer_handle
        .write(record_of("gated", &all))
        .await
        .expect("queued");
    wait_for_row(&pool, "gated", all.len() as i32).await;
    drain.cancel();
    writer_task.await.expect("writer");
    assert!(
        is_open(&pool, "gated").await,
        "the row is written but the call stays open: its projections are not known to be written"
    );

    pool.close().await;
    env.cleanup(&settings).await;
}

/// A projection row the database refuses on its own (here through a constraint the test
/// adds) is left out; the other rows of the same statement are written and the write ends.
#[tokio::test]
async fn a_projection_row_the_database_refuses_is_left_out_and_the_rest_written() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let (pool, mut logged) = logged_call(&env, "refused").await;
    sqlx::query(
        "ALTER TABLE call_dialog_events ADD CONSTRAINT test_refuses \
         CHECK (ai_text IS DISTINCT FROM 'refuse me')",
    )
    .execute(&pool)
    .await
    .expect("add the constraint");
    let bad = json!({"eventType": "dialog.turn.completed", "callId": "refused", "timestamp": at(7),
                     "turnIndex": 2, "aiText": "refuse me"});
    let batch = vec![event::decode(bad.to_string().as_bytes(), t0(), LIMITS).expect("event")];
    let appended = EventLog::new(pool.clone())
        .append(&batch)
        .await
        .expect("append");
    logged.extend(appended.into_logged(batch));

    let rows = ProjectionRows::of_logged(&logged);
    assert_eq!(rows.len(), 3, "three turns");
    assert!(
        project::write(&pool, &Fence::none(), &rows).await.is_err(),
        "the statement as a whole is refused"
    );
    let health = Health::default();
    let abort = CancellationToken::new();
    // Only the bad row: the database refuses every row of the write, and readiness says so.
    let only_bad = ProjectionRows::of_logged(&logged[logged.len() - 1..]);
    assert!(
        project::write_with_retry(
            &pool,
            &Fence::none(),
            only_bad,
            &settings.backoff,
            &health,
            &abort
        )
        .await
    );
    let refused = health.refused_writes();
    assert!(
        refused
            .get("call_dialog_events")
            .is_some_and(|e| e.contains("test_refuses")),
        "{refused:?}"
    );
    assert!(!health.ready());
    // With the others, those are written, and a write that succeeds clears it.
    assert!(
        project::write_with_retry(
            &pool,
            &Fence::none(),
            rows,
            &settings.backoff,
            &health,
            &abort
        )
        .await
    );
    assert_projected(&pool, "refused").await;
    assert!(health.refused_writes().is_empty());

    pool.close().await;
    env.cleanup(&settings).await;
}

/// The projection mark: the projector records how far projections are committed, and a start
/// re-projects only the events above it. A call logged at or below the mark is taken as
/// projected (its turns are not written again); one logged above it, as a crash between the
/// commit and the projection leaves it, is re-projected; and the start records the new mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_re_projects_only_the_events_above_the_projection_mark() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    let log = EventLog::new(pool.clone());
    let settings = env.settings();
    let key = settings.cluster.key(&settings.amqp.queue).to_owned();
    log.append(&envelopes("below")).await.expect("append");
    let mark: i64 = sqlx::query_scalar("SELECT max(event_id) FROM call_events")
        .fetch_one(&pool)
        .await
        .expect("last event id");
    sqlx::query(
        "INSERT INTO cluster_lease (key, epoch, holder, projected_through) VALUES ($1, 0, 'test', $2)",
    )
    .bind(&key)
    .bind(mark)
    .execute(&pool)
    .await
    .expect("a mark as the projector records it");
    log.append(&envelopes("above")).await.expect("append");
    let last: i64 = sqlx::query_scalar("SELECT max(event_id) FROM call_events")
        .fetch_one(&pool)
        .await
        .expect("last event id");
    assert!(last > mark);

    let mut settings = settings;
    settings.tracker.linger = Duration::from_millis(200);
    let app = TestApp::start(env, settings).await;
    assert_projected(&app.pool, "above").await;
    assert!(
        turns(&app.pool, "below").await.is_empty(),
        "events at or below the mark are not projected again"
    );
    let recorded: Option<i64> =
        sqlx::query_scalar("SELECT projected_through FROM cluster_lease WHERE key = $1")
            .bind(&key)
            .fetch_one(&app.pool)
            .await
            .expect("the mark");
    assert_eq!(
        recorded,
        Some(last),
        "the start records that every event logged before it is projected"
    );
    // Both calls still get their records: the mark is about projections only.
    assert_eq!(
        wait_for_row(&app.pool, "above", 9).await.status.as_deref(),
        Some("COMPLETED")
    );
    assert_eq!(
        wait_for_row(&app.pool, "below", 9).await.status.as_deref(),
        Some("COMPLETED")
    );
    pool.close().await;
    app.finish().await;
}

/// The mark is fenced like every write: an instance whose lease has moved on cannot record it.
#[tokio::test]
async fn a_deposed_instance_cannot_move_the_projection_mark() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO cluster_lease (key, epoch, holder, projected_through) VALUES ('k', 2, 'test', 10)",
    )
    .execute(&pool)
    .await
    .expect("a lease at epoch 2");
    let write = |epoch: i64, upto: i64| {
        sqlx::query(project::MARK_SQL)
            .bind("k")
            .bind(epoch)
            .bind(upto)
            .execute(&pool)
    };
    let refused = write(1, 50).await.expect_err("a stale epoch is refused");
    assert_eq!(
        refused
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("CDR01")
    );
    write(2, 5).await.expect("the holder's write");
    write(2, 40).await.expect("the holder's write");
    let mark: Option<i64> =
        sqlx::query_scalar("SELECT projected_through FROM cluster_lease WHERE key = 'k'")
            .fetch_one(&pool)
            .await
            .expect("the mark");
    assert_eq!(
        mark,
        Some(40),
        "the mark only rises, and only by the holder"
    );
    pool.close().await;
}
