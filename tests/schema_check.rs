//! The schema check at start, and the database refusing a running service's writes, in a
//! process of their own: their gauges are the process's, so no other test's service may set
//! them meanwhile.

use cdr_testkit as common;
use secrecy::ExposeSecret;

use common::*;

/// A column the service cannot write (here the platform's `calls.duration_seconds` made a
/// text column): the service does not become ready, `/health/ready` names the table, the
/// column, what it expects and what it found, and nothing is consumed. Once the column is
/// fixed, the service becomes ready without a restart and consumes what waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_column_keeps_the_service_unready_and_consuming_nothing() {
    let env = TestEnv::new().await;
    let settings = env.settings();
    let pool = env.pool().await;
    // The platform's `calls` and `call_events`, with `duration_seconds` made text.
    for ddl in PLATFORM_CALLS {
        let ddl = ddl.replace("duration_seconds int DEFAULT 0", "duration_seconds text");
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&pool)
            .await
            .unwrap();
    }
    // The queue as a deployment has it, holding one call's events.
    let c = call("unready");
    let publisher = cdr_storm::simulate::Publisher::connect(
        settings.amqp.url.expose_secret(),
        &settings.amqp.exchange,
    )
    .await
    .unwrap();
    declare_bound_queue(
        &settings.amqp.queue,
        &settings.amqp.exchange,
        lapin::types::FieldTable::default(),
    )
    .await;
    for e in c.events(true) {
        publisher.publish(&e).await.unwrap();
    }

    let app = Running::spawn(&settings).await;
    let (port, health) = (app.port, app.health.clone());
    wait_until(
        std::time::Duration::from_secs(30),
        "the schema problem reported",
        || {
            let problems = health.schema_problems();
            async move { !problems.is_empty() }
        },
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/health/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body["schema_problems"],
        serde_json::json!(["calls.duration_seconds: expected integer, found text"])
    );
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metrics::value(&text, "cdr_schema_incompatible_columns"),
        Some(1.0)
    );
    assert_eq!(
        queue_depth(&settings.amqp.queue).await,
        5,
        "nothing consumed"
    );
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 0);

    // Fixed by the operator: ready without a restart, and the call is recorded.
    sqlx::query(
        "ALTER TABLE calls ALTER COLUMN duration_seconds TYPE int USING duration_seconds::int",
    )
    .execute(&pool)
    .await
    .unwrap();
    wait_until(
        std::time::Duration::from_secs(60),
        "ready once fixed",
        || {
            let ready = health.ready();
            async move { ready }
        },
    )
    .await;
    let r = wait_for_row(&pool, &c.call_id, 5).await;
    assert_full_record(&r, &c);
    app.stop().await;
    pool.close().await;
    env.cleanup(&settings).await;
}

/// A running service whose records the database refuses (here through a constraint added while
/// it runs) says so: `/health/ready` is 503 and names the table and the error, and
/// `cdr_writes_refused{table="calls"}` is 1, until a record is written again; the refused
/// call stays in `open_calls` with its events logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_make_the_running_service_say_so() {
    let app = TestApp::spawn().await;
    sqlx::query("ALTER TABLE calls ADD CONSTRAINT test_refuses CHECK (call_id NOT LIKE 'refuse%')")
        .execute(&app.pool)
        .await
        .unwrap();
    let refused = call("refused-record");
    for e in refused.events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    app.wait_ready(false, "unready with its records refused")
        .await;
    let ready = reqwest::get(app.url("/health/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    let error = body["writes_refused"]["calls"].as_str().unwrap_or_default();
    assert!(error.contains("test_refuses"), "{body}");
    assert_eq!(body["database"], true);
    let text = app.scrape().await;
    assert_eq!(
        common::metrics::value(&text, "cdr_writes_refused{table=\"calls\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(row(&app.pool, &refused.call_id).await.is_none());
    assert_eq!(logged_events(&app.pool, &refused.call_id).await, 5);

    // A record written again clears it.
    let good = call("written-record");
    for e in good.events(true) {
        app.publisher.publish(&e).await.unwrap();
    }
    wait_for_row(&app.pool, &good.call_id, 5).await;
    app.wait_ready(true, "ready again").await;
    let text = app.scrape().await;
    assert_eq!(
        common::metrics::value(&text, "cdr_writes_refused{table=\"calls\"}"),
        Some(0.0)
    );
    app.finish().await;
}
