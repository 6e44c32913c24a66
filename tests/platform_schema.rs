//! The platform's own tables (EVENTS.md, "What is stored"): a database whose scripts created
//! them before the service started keeps their types, and the service reads and writes them
//! as they are; one created by an earlier version of this service is brought to those types,
//! its rows kept.

use cdr_testkit as common;

use common::*;
use rust_decimal::Decimal;
use sqlx::PgPool;

/// `cost_models` as the platform's database scripts create it.
const PLATFORM_COST_MODELS: &str = "CREATE TABLE cost_models ( \
     id varchar(255) PRIMARY KEY, \
     resource_type varchar(50) NOT NULL, \
     cost_per_unit numeric(10,8) NOT NULL, \
     currency varchar(5) NOT NULL, \
     start_date date NOT NULL)";

/// `cost_models` as the first version of this service created it.
const EARLIER_COST_MODELS: &str = "CREATE TABLE cost_models ( \
     id bigserial PRIMARY KEY, \
     resource_type varchar(64) NOT NULL, \
     cost_per_unit numeric(12, 6) NOT NULL, \
     currency varchar(8) NOT NULL DEFAULT 'USD', \
     start_date timestamptz NOT NULL DEFAULT '1970-01-01T00:00:00Z')";

/// Each column of `cost_models` with its type as `format_type` writes it.
async fn cost_model_columns(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
         WHERE a.attrelid = 'cost_models'::regclass AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY a.attnum",
    )
    .fetch_all(pool)
    .await
    .expect("read the columns")
}

fn platform_types() -> Vec<(String, String)> {
    [
        ("id", "character varying(255)"),
        ("resource_type", "character varying(50)"),
        ("cost_per_unit", "numeric(10,8)"),
        ("currency", "character varying(5)"),
        ("start_date", "date"),
    ]
    .into_iter()
    .map(|(c, t)| (c.to_owned(), t.to_owned()))
    .collect()
}

/// Prices as the platform keeps them (named ids, start dates) are read and price the calls;
/// the table keeps its types through the migrations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_priced_from_the_platforms_cost_models() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    {
        let pool = env.pool().await;
        sqlx::query(PLATFORM_COST_MODELS)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) \
             VALUES ('tel-old', 'telephony_minute', 0.02, 'USD', '2020-01-01'), \
                    ('tel-new', 'telephony_minute', 0.0125, 'USD', '2025-09-24'), \
                    ('tel-future', 'telephony_minute', 0.5, 'USD', '2025-09-25')",
        )
        .execute(&pool)
        .await
        .unwrap();
        cdr_service::db::migrate(&pool).await.expect("migrate");
        assert_eq!(cost_model_columns(&pool).await, platform_types());
        pool.close().await;
    }
    let app = TestApp::start(env, settings).await;
    // Starts on 2025-09-24 (the test kit's t0), 42 s billable: one minute at that day's price.
    let c = call("priced");
    for e in c.events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    assert_eq!(r.total_cost, Some(Decimal::new(125, 4)));
    app.finish().await;
}

/// A `cost_models` created by the first version of this service (bigserial id, timestamptz
/// start) is converted to the platform's types in place: every price kept, its id as text,
/// its start as the UTC day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_cost_models_is_converted_in_place() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    sqlx::query(EARLIER_COST_MODELS)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO cost_models (resource_type, cost_per_unit, start_date) \
         VALUES ('telephony_minute', 0.012, '1970-01-01T00:00:00Z'), \
                ('stt_second', 0.0004, '2025-09-24T23:30:00-02:00')",
    )
    .execute(&pool)
    .await
    .unwrap();
    cdr_service::db::migrate(&pool).await.expect("migrate");
    // Idempotent: a second run changes nothing.
    cdr_service::db::migrate(&pool)
        .await
        .expect("migrate again");
    assert_eq!(cost_model_columns(&pool).await, platform_types());
    let rows: Vec<(String, String, Decimal, String, chrono::NaiveDate)> = sqlx::query_as(
        "SELECT id, resource_type, cost_per_unit, currency, start_date FROM cost_models ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let day = |s: &str| s.parse::<chrono::NaiveDate>().unwrap();
    assert_eq!(
        rows,
        [
            (
                "1".to_owned(),
                "telephony_minute".to_owned(),
                Decimal::new(12, 3),
                "USD".to_owned(),
                day("1970-01-01")
            ),
            (
                "2".to_owned(),
                "stt_second".to_owned(),
                Decimal::new(4, 4),
                "USD".to_owned(),
                // 23:30 at UTC-2 is 01:30 UTC the next day.
                day("2025-09-25")
            ),
        ]
    );
    // And the service reads them.
    let prices = cdr_service::prices::load(&pool).await.expect("prices");
    let at = "2025-09-25T00:00:00Z".parse().unwrap();
    assert_eq!(prices.price_at("stt_second", at), Some(Decimal::new(4, 4)));
    assert_eq!(
        prices.price_at("stt_second", at - chrono::Duration::nanoseconds(1)),
        None
    );
    pool.close().await;
    env.cleanup(&env.settings()).await;
}

/// The platform's columns of `calls` and `call_events`, with their types.
const PLATFORM_CALL_COLUMNS: [(&str, &str, &str); 21] = [
    ("calls", "call_id", "character varying(255)"),
    ("calls", "tenant_id", "character varying(255)"),
    ("calls", "direction", "character varying(20)"),
    ("calls", "caller_number", "character varying(50)"),
    ("calls", "callee_number", "character varying(50)"),
    ("calls", "user_id", "uuid"),
    ("calls", "contact_id", "integer"),
    ("calls", "start_time", "timestamp with time zone"),
    ("calls", "duration_seconds", "integer"),
    ("calls", "status", "character varying(50)"),
    ("calls", "disposition", "character varying(50)"),
    ("calls", "sip_hangup_cause", "integer"),
    ("calls", "hangup_source", "character varying(50)"),
    ("calls", "recording_url", "text"),
    ("calls", "total_cost", "numeric(10,5)"),
    ("call_events", "event_id", "bigint"),
    ("call_events", "call_id", "character varying(255)"),
    ("call_events", "event_type", "character varying(100)"),
    ("call_events", "event_timestamp", "timestamp with time zone"),
    ("call_events", "payload", "jsonb"),
    ("call_events", "created_at", "timestamp with time zone"),
];

/// Each platform column's type, and whether it is NOT NULL, as the database has it now.
async fn platform_call_columns(pool: &PgPool) -> Vec<(String, String, String, bool)> {
    let mut found = Vec::new();
    for (table, column, _) in PLATFORM_CALL_COLUMNS {
        let (ty, not_null): (String, bool) = sqlx::query_as(
            "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a \
             WHERE a.attrelid = $1::regclass AND a.attname = $2 AND NOT a.attisdropped",
        )
        .bind(table)
        .bind(column)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{table}.{column}: {e}"));
        found.push((table.to_owned(), column.to_owned(), ty, not_null));
    }
    found
}

fn expected_call_columns() -> Vec<(String, String, String, bool)> {
    PLATFORM_CALL_COLUMNS
        .iter()
        .map(|(t, c, ty)| {
            let not_null = matches!(
                (*t, *c),
                ("calls", "call_id" | "direction")
                    | (
                        "call_events",
                        "event_id" | "call_id" | "event_type" | "event_timestamp"
                    )
            );
            (t.to_string(), c.to_string(), ty.to_string(), not_null)
        })
        .collect()
}

/// On the platform's own tables, the migrations change no type, and the records are written as
/// the platform's readers expect them: a SIP code in `sip_hangup_cause` (the end reason in
/// `end_reason`), `direction` and `hangup_source` in the platform's values, numbers that fit;
/// and each call's usage lines in `usage_records`' columns, billed to the call's tenant, priced
/// from `cost_models`, the answered call's telephony minutes among them, summing to its
/// `total_cost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_written_into_the_platforms_tables() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    {
        let pool = env.pool().await;
        create_platform_tables(&pool).await;
        sqlx::query(
            "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) \
             VALUES ('tel', 'telephony_minute', 0.0125, 'USD', '2025-01-01'), \
                    ('stt', 'stt_second', 0.0004, 'USD', '2025-01-01')",
        )
        .execute(&pool)
        .await
        .unwrap();
        cdr_service::db::migrate(&pool).await.expect("migrate");
        assert_eq!(platform_call_columns(&pool).await, expected_call_columns());
        assert_eq!(usage_columns(&pool).await, platform_usage_columns());
        assert_eq!(cost_model_columns(&pool).await, platform_types());
        pool.close().await;
    }
    let app = TestApp::start(env, settings).await;
    let answered = call("platform-answered");
    let mut usage = answered.answered();
    usage["eventType"] = "cost.usage.reported".into();
    usage["usageId"] = "stt-1".into();
    usage["service"] = "stt-whisper-service".into();
    usage["resourceType"] = "stt_second".into();
    usage["quantity"] = "42.5".into();
    for e in answered.events(true).iter().chain([&usage]) {
        app.publisher.publish(e).await.unwrap();
    }
    let busy = call("platform-busy");
    let mut ended = busy.ended();
    ended["reason"] = "user_busy".into();
    ended["traceId"] = serde_json::Value::Null;
    app.publisher.publish(&busy.started()).await.unwrap();
    app.publisher.publish(&ended).await.unwrap();

    let r = wait_for_row(&app.pool, &answered.call_id, 6).await;
    assert_full_record(&r, &answered);
    assert_eq!(r.sip_hangup_cause, Some(200));
    assert_eq!(r.end_reason.as_deref(), Some("normal_clearing"));
    assert_eq!(r.direction, "INBOUND");
    // 42.5 s of speech at 0.0004, and 42 s billable: one minute at 0.0125.
    let lines = cdr_service::usage::by_call(&answered.call_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    type Seen<'a> = (&'a str, &'a str, &'a str, &'a str, Decimal, Option<Decimal>);
    let seen: Vec<Seen> = lines
        .iter()
        .map(|l| {
            (
                l.tenant_id.as_str(),
                l.usage_key.as_str(),
                l.service_name.as_str(),
                l.resource_type.as_str(),
                l.quantity.normalize(),
                l.calculated_cost.map(|c| c.normalize()),
            )
        })
        .collect();
    let tenant = answered.tenant_id.as_str();
    assert_eq!(
        seen,
        [
            (
                tenant,
                "id:stt-1",
                "stt-whisper-service",
                "stt_second",
                Decimal::new(425, 1),
                Some(Decimal::new(17, 3))
            ),
            (
                tenant,
                "telephony",
                "telephony-core",
                "telephony_minute",
                Decimal::ONE,
                Some(Decimal::new(125, 4))
            ),
        ]
    );
    assert_eq!(lines[1].recorded_at, r.end_time.unwrap());
    assert_eq!(
        r.total_cost.map(|c| c.normalize()),
        Some(Decimal::new(295, 4))
    );
    let r = wait_for_row(&app.pool, &busy.call_id, 2).await;
    assert_eq!(r.disposition.as_deref(), Some("BUSY"));
    assert_eq!(r.sip_hangup_cause, Some(486));
    assert_eq!(r.end_reason.as_deref(), Some("user_busy"));
    let lines = cdr_service::usage::by_call(&busy.call_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(
        lines.is_empty(),
        "an unanswered call bills nothing: {lines:?}"
    );
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_events WHERE call_id = ANY($1) AND event_timestamp IS NOT NULL",
    )
    .bind([&answered.call_id, &busy.call_id])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(logged, 8);
    app.finish().await;
}

/// call_id, direction, sip_hangup_cause, end_reason, hangup_source.
type ConvertedRow = (String, String, Option<i32>, Option<String>, Option<String>);

/// `calls` and `call_events` as the first version of this service created them, with rows in
/// them: converted to the platform's types in place, every row kept, its end reason moved to
/// `end_reason` and its SIP code derived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_calls_table_is_converted_in_place() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    for ddl in [
        "CREATE TABLE calls (call_id varchar(255) PRIMARY KEY, user_id uuid, contact_id integer, \
           tenant_id varchar(255), start_time timestamptz, answer_time timestamptz, \
           end_time timestamptz, duration_seconds integer, status varchar(32), \
           disposition varchar(32), recording_url text, total_cost numeric(10, 5), \
           created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), \
           direction varchar(16), caller_number varchar(255), callee_number varchar(255), \
           sip_hangup_cause varchar(64), hangup_source varchar(32))",
        "CREATE TABLE call_events (event_id bigserial PRIMARY KEY, call_id varchar(255) NOT NULL, \
           event_type varchar(255) NOT NULL, event_timestamp timestamptz, payload jsonb NOT NULL, \
           created_at timestamptz NOT NULL DEFAULT now(), received_at timestamptz)",
        "INSERT INTO calls (call_id, status, disposition, direction, caller_number, \
           sip_hangup_cause, hangup_source) VALUES \
           ('old-answered', 'COMPLETED', 'ANSWERED', 'inbound', '905551234567', 'normal_clearing', 'caller'), \
           ('old-busy', 'COMPLETED', 'BUSY', NULL, NULL, 'busy', 'agent'), \
           ('old-open', 'TIMED_OUT', 'NO_ANSWER', NULL, NULL, NULL, NULL)",
        "INSERT INTO call_events (call_id, event_type, event_timestamp, payload, received_at) VALUES \
           ('old-open', 'call.started', NULL, '{}', '2025-09-24T10:00:00Z')",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    cdr_service::db::migrate(&pool).await.expect("migrate");
    cdr_service::db::migrate(&pool)
        .await
        .expect("migrate again");
    let rows: Vec<ConvertedRow> = sqlx::query_as(
        "SELECT call_id, direction, sip_hangup_cause, end_reason, hangup_source \
             FROM calls ORDER BY call_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |id: &str, code: Option<i32>, reason: Option<&str>, source: Option<&str>| {
        (
            id.to_owned(),
            "INBOUND".to_owned(),
            code,
            reason.map(str::to_owned),
            source.map(str::to_owned),
        )
    };
    assert_eq!(
        rows,
        [
            row(
                "old-answered",
                Some(200),
                Some("normal_clearing"),
                Some("CALLER")
            ),
            row("old-busy", Some(486), Some("busy"), Some("CALLEE")),
            row("old-open", None, None, None),
        ]
    );
    let stamped: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT event_timestamp FROM call_events WHERE call_id = 'old-open'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stamped, Some("2025-09-24T10:00:00Z".parse().unwrap()));
    let columns = platform_call_columns(&pool).await;
    for (table, column, ty, not_null) in expected_call_columns() {
        let found = columns
            .iter()
            .find(|(t, c, _, _)| *t == table && *c == column)
            .unwrap();
        assert_eq!(found.2, ty, "{table}.{column}");
        if not_null {
            assert!(found.3, "{table}.{column} NOT NULL");
        }
    }
    pool.close().await;
    env.cleanup(&env.settings()).await;
}

/// The platform's current CDR service replaced in place: its queue as it declared it (with
/// `x-dead-letter-exchange` and nothing else), a backlog of today's protobuf events left in it,
/// and its rows in the platform's tables. This service consumes that queue as it exists, keeps
/// every old row as it was, records the backlog's calls, and completes a call in progress at
/// the switch keeping what the old service knew of it; old `call_events` rows it cannot decode
/// (their `payload` often `{}`) never block it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_service_is_replaced_in_place() {
    use lapin::types::{AMQPValue, FieldTable};

    let env = TestEnv::new().await;
    let settings = env.settings();
    let pool = env.pool().await;
    create_platform_tables(&pool).await;
    // What the old service wrote: a finished call, and a call in progress at the switch.
    sqlx::query(
        "INSERT INTO calls (call_id, tenant_id, direction, caller_number, callee_number, \
           start_time, answer_time, end_time, duration_seconds, status, disposition, \
           sip_hangup_cause, hangup_source, total_cost) VALUES \
         ('go-finished@h', 't-go', 'INBOUND', '905551110000', '902124440000', \
          '2025-09-23T09:00:00Z', '2025-09-23T09:00:03Z', '2025-09-23T09:01:03Z', 60, \
          'COMPLETED', 'ANSWERED', 200, 'APP', 0.0125), \
         ('go-progress@h', 't-go', 'INBOUND', '905551112222', '902124440000', \
          '2025-09-24T10:00:00Z', NULL, NULL, 0, 'STARTED', NULL, NULL, NULL, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_events (call_id, event_type, event_timestamp, payload) VALUES \
         ('go-finished@h', 'call.started', '2025-09-23T09:00:00Z', '{}'), \
         ('go-finished@h', 'call.ended', '2025-09-23T09:01:03Z', '{}'), \
         ('go-progress@h', 'call.started', '2025-09-24T10:00:00Z', '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let old_row = |pool: PgPool| async move {
        let row: serde_json::Value = sqlx::query_scalar(
            "SELECT to_jsonb(c) - 'event_count' - 'trace_id' - 'billable_seconds' \
               - 'inferred_times' - 'end_reason' - 'adopted' - 'anomalies' \
             FROM calls c WHERE call_id = 'go-finished@h'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        row
    };
    let before = old_row(pool.clone()).await;
    // Its usage lines: the telephony minutes of the finished call, and of the call in progress
    // (answered before the switch).
    let old_ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO usage_records (tenant_id, call_id, service_name, resource_type, quantity, \
           calculated_cost) VALUES \
         ('t-go', 'go-finished@h', 'telephony-core', 'telephony_minute', 1, 0.0125), \
         ('t-go', 'go-progress@h', 'telephony-core', 'telephony_minute', 1, 0.0125) \
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let old_lines = |pool: PgPool| {
        let ids = old_ids.clone();
        async move {
            let lines: Vec<serde_json::Value> = sqlx::query_scalar(
                "SELECT to_jsonb(u) - 'usage_key' FROM usage_records u WHERE id = ANY($1) \
                 ORDER BY id",
            )
            .bind(ids)
            .fetch_all(&pool)
            .await
            .unwrap();
            lines
        }
    };
    let lines_before = old_lines(pool.clone()).await;

    // The queue as the old service declared it, holding today's producers' events.
    let producer = Producer::connect(&settings.amqp.exchange).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(settings.amqp.dead_letter_exchange.as_str().into()),
    );
    declare_bound_queue(&settings.amqp.queue, &settings.amqp.exchange, arguments).await;
    let backlog = call("backlog");
    let mut progress_answer = call("go-progress").answered();
    progress_answer["callId"] = "go-progress@h".into();
    let mut progress_end = call("go-progress").ended();
    progress_end["callId"] = "go-progress@h".into();
    for e in backlog
        .events(true)
        .iter()
        .chain([&progress_answer, &progress_end])
    {
        let twin = cdr_storm::protobuf::encode(e).expect("a protobuf producer");
        let key = e["eventType"].as_str().unwrap();
        producer.publish(key, &twin.body, twin.content_type).await;
    }

    let app = TestApp::start(env, settings).await;
    let r = wait_for_row(&app.pool, &backlog.call_id, 5).await;
    assert_full_record(&r, &backlog);
    let r = wait_for_row(&app.pool, "go-progress@h", 3).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(r.disposition.as_deref(), Some("ANSWERED"));
    assert_eq!(r.end_time, Some(progress_end_time(&progress_end)));
    // What the old service knew of the call in progress, and its logged events do not carry,
    // is kept; and kept again when a later event rewrites the row.
    let inherited = |r: &Row| {
        (
            r.start_time,
            r.tenant_id.clone(),
            r.caller_number.clone(),
            r.callee_number.clone(),
        )
    };
    let kept = (
        Some("2025-09-24T10:00:00Z".parse().unwrap()),
        Some("t-go".to_owned()),
        Some("905551112222".to_owned()),
        Some("902124440000".to_owned()),
    );
    assert_eq!(inherited(&r), kept);
    let mut recording = call("go-progress").recording();
    recording["callId"] = "go-progress@h".into();
    let twin = cdr_storm::protobuf::encode(&recording).unwrap();
    producer
        .publish("call.recording.available", &twin.body, twin.content_type)
        .await;
    let r = wait_for_row(&app.pool, "go-progress@h", 4).await;
    assert!(r.recording_url.is_some());
    assert_eq!(inherited(&r), kept);
    let adopted: Vec<(String, bool)> =
        sqlx::query_as("SELECT call_id, adopted FROM calls ORDER BY call_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        adopted,
        [
            (backlog.call_id.clone(), false),
            ("go-finished@h".to_owned(), false),
            ("go-progress@h".to_owned(), true),
        ],
        "only the old row this service rewrote is adopted"
    );
    assert_eq!(
        old_row(app.pool.clone()).await,
        before,
        "the old service's finished call is kept as it was"
    );
    assert_eq!(
        old_lines(app.pool.clone()).await,
        lines_before,
        "the old service's usage lines are kept as they were"
    );
    let progress_lines = cdr_service::usage::by_call("go-progress@h")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(
        progress_lines.is_empty(),
        "the telephony minutes the old service wrote are not written twice: {progress_lines:?}"
    );
    let backlog_lines = cdr_service::usage::by_call(&backlog.call_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(backlog_lines.len(), 1, "{backlog_lines:?}");
    assert_eq!(backlog_lines[0].resource_type, "telephony_minute");
    assert_eq!(backlog_lines[0].tenant_id, backlog.tenant_id);
    assert_eq!(queue_depth(&app.settings.amqp.queue).await, 0);
    assert!(
        drain_queue(&app.settings.amqp.dead_letter_queue)
            .await
            .is_empty(),
        "nothing the old service accepted is dead-lettered"
    );
    let old_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_events WHERE payload = '{}'::jsonb")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(old_events, 3, "the old service's events are kept");
    app.finish().await;
}

fn progress_end_time(ended: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    ended["timestamp"].as_str().unwrap().parse().unwrap()
}

/// A database the previous release of this service migrated (migrations up to 0007), with its
/// usage lines in its own columns (`service`, `event_timestamp`, no tenant, no cost): the
/// migrations bring `usage_records` to the platform's columns in place, every line kept, billed
/// to its call's tenant and priced as the call's cost was, with the telephony minutes of each
/// answered call added; and the service then writes new calls' lines into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_release_database_gets_the_platforms_usage_records() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let pool = env.pool().await;
    let previous = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0008" {
            std::fs::copy(&path, previous.path().join(name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(previous.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .expect("the previous release's migrations");
    for sql in [
        "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) VALUES \
           ('tel', 'telephony_minute', 0.0125, 'USD', '2025-01-01'), \
           ('llm', 'llm_token', 0.000002, 'USD', '2025-01-01')",
        "INSERT INTO calls (call_id, tenant_id, start_time, answer_time, end_time, \
           duration_seconds, billable_seconds, status, disposition, total_cost, event_count) VALUES \
         ('prev@h', 't1', '2025-09-24T10:00:00Z', '2025-09-24T10:00:02Z', \
          '2025-09-24T10:01:32Z', 90, 90, 'COMPLETED', 'ANSWERED', 0.028, 6), \
         ('prev-anon@h', NULL, '2025-09-24T11:00:00Z', NULL, '2025-09-24T11:00:09Z', \
          9, NULL, 'COMPLETED', 'NO_ANSWER', 0.001, 2)",
        "INSERT INTO usage_records (call_id, usage_key, service, resource_type, quantity, \
           event_timestamp) VALUES \
         ('prev@h', 'id:u1', 'llm-svc', 'llm_token', 1500, '2025-09-24T10:00:05Z'), \
         ('prev-anon@h', 'id:u2', NULL, 'llm_token', 500, '2025-09-24T11:00:05Z')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    cdr_service::db::migrate(&pool).await.expect("migrate");
    cdr_service::db::migrate(&pool)
        .await
        .expect("migrate again");
    assert_eq!(usage_columns(&pool).await, platform_usage_columns());
    // The previous release, still running during a rolling update, writes its lines as before.
    sqlx::query(
        "INSERT INTO usage_records AS u (call_id, usage_key, service, resource_type, quantity, \
           event_timestamp) VALUES ('rolling@h', 'id:u3', 'llm-svc', 'llm_token', 7, now()) \
         ON CONFLICT (call_id, usage_key) DO UPDATE SET quantity = EXCLUDED.quantity",
    )
    .execute(&pool)
    .await
    .expect("the previous release's insert");

    type Line = (
        String,
        String,
        String,
        String,
        Decimal,
        Option<Decimal>,
        String,
    );
    let lines = |call: &'static str, pool: PgPool| async move {
        cdr_service::usage::by_call(call)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|l| {
                (
                    l.tenant_id,
                    l.usage_key,
                    l.service_name,
                    l.resource_type,
                    l.quantity.normalize(),
                    l.calculated_cost.map(|c| c.normalize()),
                    l.recorded_at.to_rfc3339(),
                )
            })
            .collect::<Vec<Line>>()
    };
    let line = |tenant: &str, key: &str, service: &str, resource: &str, q: i64, cost, at: &str| {
        (
            tenant.to_owned(),
            key.to_owned(),
            service.to_owned(),
            resource.to_owned(),
            Decimal::from(q),
            cost,
            at.to_owned(),
        )
    };
    assert_eq!(
        lines("prev@h", pool.clone()).await,
        [
            line(
                "t1",
                "id:u1",
                "llm-svc",
                "llm_token",
                1500,
                Some(Decimal::new(3, 3)),
                "2025-09-24T10:00:05+00:00"
            ),
            line(
                "t1",
                "telephony",
                "telephony-core",
                "telephony_minute",
                2,
                Some(Decimal::new(25, 3)),
                "2025-09-24T10:01:32+00:00"
            ),
        ]
    );
    assert_eq!(
        lines("prev-anon@h", pool.clone()).await,
        [line(
            "system",
            "id:u2",
            "unknown",
            "llm_token",
            500,
            Some(Decimal::new(1, 3)),
            "2025-09-24T11:00:05+00:00"
        )]
    );
    pool.close().await;

    // The service writes into the converted table.
    let app = TestApp::start(env, settings).await;
    let c = call("after-conversion");
    for e in c.events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    let r = wait_for_row(&app.pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    assert_eq!(
        r.total_cost.map(|c| c.normalize()),
        Some(Decimal::new(125, 4))
    );
    let written = cdr_service::usage::by_call(&c.call_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].tenant_id, c.tenant_id);
    assert_eq!(written[0].calculated_cost, r.total_cost);
    app.finish().await;
}
