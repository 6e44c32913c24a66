//! Real outages: the service talks to PostgreSQL or RabbitMQ through a TCP proxy that the test
//! cuts (every live connection severed, new ones refused) and restores. Nothing is mocked: the
//! service must never ack what it cannot commit, report not-ready, reconnect on its own (cut
//! from the database it loses its lease and stands down until it takes it back), and end with
//! every call complete and every distinct event logged exactly once.

use cdr_testkit as common;

use std::time::Duration;

use cdr_storm::simulate::{Publisher, SyntheticCall};
use common::proxy::proxied;
use common::*;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Generous bound on every wait; no assertion depends on how fast anything happens.
const WAIT: Duration = Duration::from_secs(30);

/// Every call has its complete row, folded from exactly its 5 events, each logged once, and
/// the log and `calls` hold nothing else.
async fn assert_all_complete(pool: &PgPool, calls: &[SyntheticCall]) {
    for c in calls {
        let r = wait_for_row(pool, &c.call_id, 5).await;
        assert_full_record(&r, c);
        assert_eq!(
            r.event_count, 5,
            "{}: events folded into the row",
            c.call_id
        );
        assert_eq!(
            logged_events(pool, &c.call_id).await,
            5,
            "{}: logged events",
            c.call_id
        );
    }
    let (logged, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (call_id, body_sha256)) FROM call_events")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(logged, 5 * calls.len() as i64, "events in call_events");
    assert_eq!(distinct, logged, "no event logged twice");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, calls.len() as i64, "rows in calls");
}

async fn publish_call(publisher: &Publisher, c: &SyntheticCall) {
    for e in c.events(true) {
        publisher.publish(&e).await.expect("publish");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_mid_stream_stands_the_service_down_and_loses_nothing() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let (db_proxy, db_url) = proxied(&env.db_url).await;
    settings.database.url = (db_url).into();
    let pool = env.pool().await;
    let app = Running::start(&settings).await;
    let publisher = Publisher::connect(&amqp_url(), &settings.amqp.exchange)
        .await
        .expect("publisher");

    let first: Vec<SyntheticCall> = (0..5).map(|i| call(&format!("before-{i}"))).collect();
    for c in &first {
        publish_call(&publisher, c).await;
    }
    for c in &first {
        wait_for_row(&pool, &c.call_id, 5).await;
    }

    db_proxy.cut();
    app.wait_ready(false, "readiness false with the database cut")
        .await;
    assert_eq!(app.ready_status().await, 503);

    let second: Vec<SyntheticCall> = (0..5).map(|i| call(&format!("during-{i}"))).collect();
    for c in &second {
        publish_call(&publisher, c).await;
    }
    // Cut from the database, the service lost its lease and stood down: it consumes nothing,
    // and what it may have taken before is back in the queue (never acked)...
    wait_until(WAIT, "second set waiting in the queue", || {
        let queue = settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == 25 }
    })
    .await;
    // The lease watch notices the cut within its check and its connection's timeout.
    wait_until(WAIT, "stood down to standby", || async {
        app.health.role() == cdr_service::health::Role::Standby
    })
    .await;
    // ...and it keeps trying to take the lease back: give it several rounds to go wrong.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.assert_alive();
    assert!(!app.health.ready(), "ready while the database is cut");
    assert_eq!(app.ready_status().await, 503);
    for c in &second {
        assert_eq!(
            logged_events(&pool, &c.call_id).await,
            0,
            "{}: logged while the database was cut",
            c.call_id
        );
        assert!(row(&pool, &c.call_id).await.is_none(), "{}", c.call_id);
    }

    db_proxy.restore();
    app.wait_ready(true, "readiness back after the database returns")
        .await;
    assert_eq!(app.ready_status().await, 200);
    let all: Vec<SyntheticCall> = first.into_iter().chain(second).collect();
    assert_all_complete(&pool, &all).await;
    wait_until(WAIT, "queue empty", || {
        let queue = settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == 0 }
    })
    .await;

    app.stop().await;
    // Stopped: anything left unacked would be back in the queue now.
    assert_eq!(
        queue_depth(&settings.amqp.queue).await,
        0,
        "unacked deliveries"
    );
    pool.close().await;
    env.cleanup(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_held_during_a_database_outage_stay_unacked_at_the_broker() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let (db_proxy, db_url) = proxied(&env.db_url).await;
    let (amqp_proxy, amqp_url_proxied) = proxied(&amqp_url()).await;
    settings.database.url = (db_url).into();
    settings.amqp.url = (amqp_url_proxied).into();
    let pool = env.pool().await;
    let app = Running::start(&settings).await;
    let publisher = Publisher::connect(&amqp_url(), &settings.amqp.exchange)
        .await
        .expect("publisher");

    db_proxy.cut();
    app.wait_ready(false, "readiness false with the database cut")
        .await;
    let calls: Vec<SyntheticCall> = (0..4).map(|i| call(&format!("held-{i}"))).collect();
    for c in &calls {
        publish_call(&publisher, c).await;
    }
    let published = 5 * calls.len() as u32;
    // The service, its lease lost, stood down: whatever it took before is requeued (never
    // acked), and it takes nothing more.
    wait_until(WAIT, "messages waiting in the queue", || {
        let queue = settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == published }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    app.assert_alive();

    // Sever the service's broker connection too: every message stays in the queue.
    amqp_proxy.cut();
    wait_until(WAIT, "every unacked delivery requeued", || {
        let queue = settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == published }
    })
    .await;
    assert_eq!(queue_depth(&settings.amqp.queue).await, published);
    for c in &calls {
        assert_eq!(logged_events(&pool, &c.call_id).await, 0, "{}", c.call_id);
    }
    app.assert_alive();
    assert_eq!(app.ready_status().await, 503);

    amqp_proxy.restore();
    db_proxy.restore();
    app.wait_ready(true, "readiness back after both outages")
        .await;
    assert_all_complete(&pool, &calls).await;
    wait_until(WAIT, "queue empty", || {
        let queue = settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == 0 }
    })
    .await;

    app.stop().await;
    assert_eq!(
        queue_depth(&settings.amqp.queue).await,
        0,
        "unacked deliveries"
    );
    pool.close().await;
    env.cleanup(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_cut_mid_stream_reconnects_and_loses_nothing() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    let (amqp_proxy, amqp_url_proxied) = proxied(&amqp_url()).await;
    settings.amqp.url = (amqp_url_proxied).into();
    // Batches that wait a while: the cut finds deliveries taken but not yet acked.
    settings.ingest.batch_max_age = Duration::from_millis(200);
    let pool = env.pool().await;
    let app = Running::start(&settings).await;
    // Producers reach the broker directly: only the service's connection is cut.
    let publisher = Publisher::connect(&amqp_url(), &settings.amqp.exchange)
        .await
        .expect("publisher");

    let stop_publishing = CancellationToken::new();
    let publishing = tokio::spawn({
        let stop = stop_publishing.clone();
        async move {
            let mut calls = Vec::new();
            while !stop.is_cancelled() {
                let c = call(&format!("stream-{}", calls.len()));
                publish_call(&publisher, &c).await;
                calls.push(c);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            calls
        }
    });

    // Mid-stream: records are being written when the connection goes.
    wait_until(WAIT, "records flowing before the cut", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM calls")
                .fetch_one(&pool)
                .await
                .unwrap()
                >= 3
        }
    })
    .await;
    amqp_proxy.cut();
    let health = app.health.clone();
    wait_until(WAIT, "broker reported down", || {
        let up = health.broker_up();
        async move { !up }
    })
    .await;
    assert!(!app.health.ready(), "ready with the broker cut");
    assert_eq!(app.ready_status().await, 503);
    // Keep the cut (and the publishing) going while the service retries its connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.assert_alive();
    assert!(!app.health.ready(), "ready while the broker is cut");
    assert_eq!(app.ready_status().await, 503);

    amqp_proxy.restore();
    app.wait_ready(true, "readiness back after the broker returns")
        .await;
    assert_eq!(app.ready_status().await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_publishing.cancel();
    let calls = publishing.await.expect("publisher task");

    assert_all_complete(&pool, &calls).await;
    wait_until(WAIT, "queue empty", || {
        let queue = settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == 0 }
    })
    .await;

    app.stop().await;
    assert_eq!(
        queue_depth(&settings.amqp.queue).await,
        0,
        "unacked deliveries"
    );
    pool.close().await;
    env.cleanup(&settings).await;
}
