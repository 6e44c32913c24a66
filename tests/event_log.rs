//! The event log's batch append against a real PostgreSQL: each distinct message logged once,
//! the new events handed back in log order, the call marked open; the dialog-turn projection
//! that the projector writes from what the log hands back, holding one row per key, the same
//! whatever the order and the duplicates of the batches; and the usage lines the writer writes
//! from a call's logged usage reports, fitted to their columns.

use cdr_testkit as common;

use cdr_service::event::{self, Envelope, Limits};
use cdr_service::lease::Fence;
use cdr_service::log::{Appended, EventLog, LoggedEvent};
use cdr_service::merge::{CallState, PriceBook};
use cdr_service::project::{self, ProjectionRows};
use cdr_service::writer::{FlushCause, WriteRequest};
use chrono::Duration;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;

const LIMITS: Limits = Limits {
    max_body_bytes: 1 << 20,
    max_json_depth: 32,
};

fn envelope(body: &Value) -> Envelope {
    event::decode(body.to_string().as_bytes(), common::t0(), LIMITS).expect("a call event")
}

fn at(secs: i64) -> String {
    event::format_timestamp(common::t0() + Duration::seconds(secs))
}

fn turn(call: &str, index: i32, secs: i64, ai_text: &str) -> Value {
    json!({"eventType": "dialog.turn.completed", "callId": call, "timestamp": at(secs),
           "turnIndex": index, "userText": "hello", "aiText": ai_text, "sttMs": 120})
}

fn usage(call: &str, usage_id: Option<&str>, quantity: &str) -> Value {
    let mut v = json!({"eventType": "cost.usage.reported", "callId": call, "timestamp": at(5),
                       "service": "llm", "resourceType": "LLM_TOKENS", "quantity": quantity});
    if let Some(id) = usage_id {
        v["usageId"] = json!(id);
    }
    v
}

/// A fresh database of its own, with the schema.
async fn migrated_database() -> (common::TestEnv, PgPool) {
    let env = common::TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    (env, pool)
}

/// Writes the projections of newly logged events, as the projector does after a commit.
async fn project(pool: &PgPool, logged: &[LoggedEvent]) {
    project::write(pool, &Fence::none(), &ProjectionRows::of_logged(logged))
        .await
        .expect("write projections");
}

/// Appends like the committer, then projects the new events like the projector.
async fn append_and_project(log: &EventLog, pool: &PgPool, batch: &[Envelope]) -> (usize, usize) {
    let appended: Appended = log.append(batch).await.expect("append");
    let counts = (appended.new_events(), appended.duplicates);
    project(pool, &appended.into_logged(batch.to_vec())).await;
    counts
}

async fn dialog_rows(pool: &PgPool) -> Vec<(String, i32, Option<String>, Option<i32>)> {
    sqlx::query_as(
        "SELECT call_id, turn_index, ai_text, stt_ms FROM call_dialog_events ORDER BY call_id, turn_index",
    )
    .fetch_all(pool)
    .await
    .expect("read dialog turns")
}

async fn usage_rows(pool: &PgPool) -> Vec<(String, String, Decimal)> {
    sqlx::query_as(
        "SELECT call_id, usage_key, quantity FROM usage_records ORDER BY call_id, usage_key",
    )
    .fetch_all(pool)
    .await
    .expect("read usage lines")
}

#[tokio::test]
async fn a_batch_is_logged_once_with_its_projections_whatever_its_order_and_duplicates() {
    logged_once_with_projections(0).await;
}

/// The same through a log that remembers what it committed: copies are dropped before the
/// database, the rest inserted without the conflict check.
#[tokio::test]
async fn a_remembering_log_logs_the_same() {
    logged_once_with_projections(1000).await;
}

async fn logged_once_with_projections(remembered: usize) {
    let (env, pool) = migrated_database().await;
    let log = EventLog::remembering(pool.clone(), remembered);

    let started = json!({"eventType": "call.started", "callId": "a", "timestamp": at(0),
                         "from": "sip:1@x", "to": "sip:2@x"});
    let batch: Vec<Value> = vec![
        started.clone(),
        // Turn 0 twice, the later version (by timestamp) first; then the exact start again.
        turn("a", 0, 3, "second answer"),
        turn("a", 0, 2, "first answer"),
        started.clone(),
        turn("a", 1, 4, "bye"),
        // One usage line in two versions (the larger quantity wins), one without an id.
        usage("a", Some("u1"), "12"),
        usage("a", Some("u1"), "10"),
        usage("a", None, "7"),
        json!({"eventType": "call.started", "callId": "b", "timestamp": at(1)}),
        turn("b", 0, 2, "other call"),
    ];
    let envelopes: Vec<Envelope> = batch.iter().map(envelope).collect();
    let appended = log.append(&envelopes).await.expect("append");
    assert_eq!(
        appended.new_events(),
        9,
        "ten messages, one an exact duplicate"
    );
    assert_eq!(appended.duplicates, 1);

    // The new events come back in log order, each with the id its own message was stored under.
    let logged = appended.into_logged(envelopes.clone());
    assert_eq!(logged.len(), 9);
    assert!(logged.windows(2).all(|w| w[0].event_id < w[1].event_id));
    for e in &logged {
        let (call_id, hash): (String, Vec<u8>) =
            sqlx::query_as("SELECT call_id, body_sha256 FROM call_events WHERE event_id = $1")
                .bind(e.event_id)
                .fetch_one(&pool)
                .await
                .expect("logged row");
        assert_eq!(call_id, e.call_id);
        assert_eq!(hash, e.event.body_hash.to_vec());
    }
    let (logged_rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM call_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged_rows, 9);

    // Each call open up to its highest logged event.
    let open: Vec<(String, i64)> =
        sqlx::query_as("SELECT call_id, last_event_id FROM open_calls ORDER BY call_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let last_of = |call: &str| {
        logged
            .iter()
            .filter(|e| e.call_id == call)
            .map(|e| e.event_id)
            .max()
            .unwrap()
    };
    assert_eq!(
        open,
        vec![
            ("a".to_owned(), last_of("a")),
            ("b".to_owned(), last_of("b"))
        ]
    );
    // The append carries no projection: those are written after the commit.
    assert!(dialog_rows(&pool).await.is_empty());
    assert!(usage_rows(&pool).await.is_empty());
    project(&pool, &logged).await;

    let expected_turns = vec![
        (
            "a".to_owned(),
            0,
            Some("second answer".to_owned()),
            Some(120),
        ),
        ("a".to_owned(), 1, Some("bye".to_owned()), Some(120)),
        ("b".to_owned(), 0, Some("other call".to_owned()), Some(120)),
    ];
    assert_eq!(dialog_rows(&pool).await, expected_turns);
    // Usage reports are logged, not projected: their lines come with the record.
    assert!(usage_rows(&pool).await.is_empty());

    // The whole batch redelivered, reversed, with an older version of turn 0 and of `u1`:
    // nothing new is logged and no projection goes back.
    let mut again = batch.clone();
    again.reverse();
    again.push(turn("a", 0, 1, "stale answer"));
    again.push(usage("a", Some("u1"), "3"));
    let envelopes: Vec<Envelope> = again.iter().map(envelope).collect();
    let (new, duplicates) = append_and_project(&log, &pool, &envelopes).await;
    assert_eq!(new, 2, "only the two older versions are new");
    assert_eq!(duplicates, 10);
    assert_eq!(dialog_rows(&pool).await, expected_turns);

    // Older versions alone in a later batch: the stored rows keep the later versions.
    let stale = [turn("a", 1, 0, "stale bye"), usage("a", Some("u1"), "11")];
    let envelopes: Vec<Envelope> = stale.iter().map(envelope).collect();
    let (new, _) = append_and_project(&log, &pool, &envelopes).await;
    assert_eq!(new, 2);
    assert_eq!(dialog_rows(&pool).await, expected_turns);
    assert!(usage_rows(&pool).await.is_empty());

    pool.close().await;
    env.cleanup(&env.settings()).await;
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .expect("count");
    n
}

/// A log that remembers nothing of a message logged before it started (by an earlier run):
/// its plain insert meets the unique index, nothing of that attempt is committed, and the
/// batch goes again with the conflict check. Then, having committed them, it drops copies
/// without asking the database at all.
#[tokio::test]
async fn a_message_logged_before_the_log_remembers_is_still_logged_once() {
    let (env, pool) = migrated_database().await;

    let started = json!({"eventType": "call.started", "callId": "c", "timestamp": at(0)});
    let turn0 = turn("c", 0, 1, "hello");
    let earlier_run = EventLog::new(pool.clone());
    let appended = earlier_run
        .append(&[envelope(&started)])
        .await
        .expect("append in the earlier run");
    assert_eq!(appended.new_events(), 1);

    let log = EventLog::remembering(pool.clone(), 1000);
    let ended = json!({"eventType": "call.ended", "callId": "c", "timestamp": at(9)});
    let batch: Vec<Envelope> = [&started, &turn0, &ended, &turn0]
        .into_iter()
        .map(envelope)
        .collect();
    let appended = log.append(&batch).await.expect("append after the restart");
    assert_eq!(appended.new_events(), 2, "the turn and the end are new");
    assert_eq!(
        appended.duplicates, 2,
        "the start was logged, the turn is there twice"
    );
    let logged = appended.into_logged(batch.clone());
    let types: Vec<&str> = logged
        .iter()
        .map(|e| match e.event.kind {
            cdr_service::event::EventKind::DialogTurn(_) => "turn",
            cdr_service::event::EventKind::Ended { .. } => "ended",
            _ => "other",
        })
        .collect();
    assert_eq!(types, vec!["turn", "ended"]);
    assert_eq!(count(&pool, "SELECT count(*) FROM call_events").await, 3);
    let (last,): (i64,) =
        sqlx::query_as("SELECT last_event_id FROM open_calls WHERE call_id = 'c'")
            .fetch_one(&pool)
            .await
            .expect("the call is open");
    assert_eq!(last, logged.iter().map(|e| e.event_id).max().unwrap());

    // Everything of that batch is remembered now: its redelivery is told apart from new
    // messages without the database, which is closed.
    pool.close().await;
    let appended = log.append(&batch).await.expect("copies dropped in memory");
    assert_eq!(appended.new_events(), 0);
    assert_eq!(appended.duplicates, 4);
    let unknown = json!({"eventType": "call.answered", "callId": "c", "timestamp": at(2)});
    assert!(
        log.append(&[envelope(&unknown)]).await.is_err(),
        "a message it has not committed goes to the database"
    );

    env.cleanup(&env.settings()).await;
}

/// Events read back from the log (recovery, a call re-activated) are remembered too: a copy
/// of one is dropped without the database.
#[tokio::test]
async fn what_the_log_loads_it_remembers() {
    let (env, pool) = migrated_database().await;
    let started = json!({"eventType": "call.started", "callId": "r", "timestamp": at(0)});
    let answered = json!({"eventType": "call.answered", "callId": "r", "timestamp": at(1)});
    let batch: Vec<Envelope> = [&started, &answered].into_iter().map(envelope).collect();
    EventLog::new(pool.clone())
        .append(&batch)
        .await
        .expect("append in an earlier run");

    let log = EventLog::remembering(pool.clone(), 1000);
    let loaded = log.load_call("r").await.expect("load the call");
    assert_eq!(loaded.len(), 2);
    pool.close().await;
    let appended = log.append(&batch).await.expect("copies dropped in memory");
    assert_eq!(appended.new_events(), 0);
    assert_eq!(appended.duplicates, 2);

    env.cleanup(&env.settings()).await;
}

/// A usage report whose values are longer than their `usage_records` columns is logged, and
/// its usage line written with the call's record, rather than refused by the database: the
/// service and resource type are cut to their columns, and a `usageId` too long for the key is
/// named by its hash, so two long ids that differ only at the end stay two lines.
#[tokio::test]
async fn usage_values_longer_than_their_columns_are_logged_with_their_usage_line() {
    let (env, pool) = migrated_database().await;
    let long_id = "u".repeat(300);
    let other_long_id = format!("{}v", "u".repeat(299));
    let report = |id: &str| {
        let mut v = usage("c", Some(id), "7");
        v["service"] = json!("s".repeat(300));
        v["resourceType"] = json!(format!("LLM_TOKENS_{}", "x".repeat(100)));
        v
    };
    let batch = [
        envelope(&report(&long_id)),
        envelope(&report(&other_long_id)),
    ];

    let log = EventLog::remembering(pool.clone(), 1000);
    let appended = log.append(&batch).await.expect("append");
    assert_eq!(appended.new_events(), 2);
    assert_eq!(count(&pool, "SELECT count(*) FROM call_events").await, 2);
    let logged = appended.into_logged(batch.to_vec());
    let state = CallState::fold(logged.iter().map(|e| &e.event));
    let (record, usage) = state.record_and_usage("c", &PriceBook::default());
    let request = WriteRequest {
        record,
        usage,
        event_count: 2,
        max_event_id: logged.iter().map(|e| e.event_id).max().unwrap(),
        end_received: None,
        cause: FlushCause::IdleTimeout,
        quarantine: None,
    };
    cdr_service::writer::upsert(&pool, &Fence::none(), &[request], false)
        .await
        .expect("write the record and its lines");

    let lines: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT usage_key, service_name, resource_type FROM usage_records \
         ORDER BY usage_key COLLATE \"C\"",
    )
    .fetch_all(&pool)
    .await
    .expect("read usage lines");
    assert_eq!(lines.len(), 2, "two distinct ids, two lines: {lines:?}");
    assert_ne!(lines[0].0, lines[1].0);
    for (key, service, resource_type) in &lines {
        assert!(key.starts_with("id-sha256:"), "{key}");
        assert!(key.chars().count() <= cdr_service::merge::MAX_USAGE_KEY_CHARS);
        assert_eq!(service, &"s".repeat(100));
        assert_eq!(resource_type.chars().count(), 50);
        assert!(resource_type.starts_with("LLM_TOKENS_x"));
    }
    let expected_keys: Vec<String> = {
        let mut keys: Vec<String> = [&long_id, &other_long_id]
            .into_iter()
            .map(|id| cdr_service::merge::usage_key(Some(id), &[0; 32]))
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        lines.iter().map(|l| l.0.clone()).collect::<Vec<_>>(),
        expected_keys,
        "the fold and the projection name a usage report alike"
    );
    // An id that fits keeps its readable key.
    assert_eq!(
        cdr_service::merge::usage_key(Some("abc"), &[0; 32]),
        "id:abc"
    );

    env.cleanup(&env.settings()).await;
}
