//! The service under a memory limit the test sets (`prlimit --as` on the child): a call whose
//! history is far larger than the limit's headroom is logged, recovered after a kill -9 and
//! re-activated after its record, a page at a time; a call past `tracker.max_events_per_call`
//! is written and quarantined by the recovery. The service keeps running throughout, and every
//! record is right.

use cdr_testkit as common;
use secrecy::ExposeSecret;

use std::time::Duration;

use cdr_storm::simulate::SyntheticCall;
use common::service::Service;
use common::*;
use serde_json::{Value, json};

/// Bytes of padding per event of the large call: 200 of them are some 180 MB of history.
const PAD: usize = 900_000;
const LARGE_TURNS: usize = 200;
/// The child's address space at most. An idle service maps about 180 MB (the binary, its
/// threads' stacks, the allocator's arenas), and this run peaks near 200 MB; loading the large
/// call at once needs its 180 MB of bodies on top (with pages made unbounded, the service aborts
/// at start on an allocation the limit refuses).
const ADDRESS_SPACE: u64 = 360 << 20;
const CAP: u32 = 250;

fn turn(c: &SyntheticCall, i: usize, pad: usize) -> Value {
    let at = c.start + chrono::Duration::seconds(5) + chrono::Duration::milliseconds(i as i64);
    json!({"eventType": "dialog.turn.completed", "callId": c.call_id, "traceId": c.trace_id,
           "timestamp": cdr_service::event::format_timestamp(at), "turnIndex": i,
           "userText": format!("turn {i}"), "padding": "x".repeat(pad)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_larger_than_the_memory_limit_is_logged_recovered_and_reactivated() {
    let env = TestEnv::new().await;
    let mut settings = env.settings();
    settings.amqp.prefetch = 16;
    settings.ingest.batch_size = 8;
    // Nothing capped while the calls are logged: both are open at the kill.
    settings.tracker.max_events_per_call = 100_000;
    let binary = service_binary!();
    let service = Service::start_limited(binary, &env, &settings, ADDRESS_SPACE).await;
    let publisher = cdr_storm::simulate::Publisher::connect(
        settings.amqp.url.expose_secret(),
        &settings.amqp.exchange,
    )
    .await
    .expect("publisher");
    let pool = env.pool().await;

    let large = call("memory-large");
    let over = call("memory-over-cap");
    let mut events = vec![large.started(), large.answered()];
    events.extend((0..LARGE_TURNS).map(|i| turn(&large, i, PAD)));
    events.extend([over.started(), over.answered()]);
    events.extend((0..CAP as usize + 10).map(|i| turn(&over, i, 0)));
    for e in &events {
        publisher.publish(e).await.expect("publish");
    }
    wait_until(Duration::from_secs(120), "every event logged", || async {
        logged_events(&pool, &large.call_id).await == LARGE_TURNS as i64 + 2
            && logged_events(&pool, &over.call_id).await == CAP as i64 + 12
    })
    .await;
    service.kill9();

    // Recovery, under the limit, with the cap in force: the large call is read page by page
    // and rests; the one past the cap is written from its first events and quarantined.
    settings.tracker.max_events_per_call = CAP;
    let mut service = Service::start_limited(binary, &env, &settings, ADDRESS_SPACE).await;
    let r = wait_for_row(&pool, &over.call_id, CAP as i32).await;
    assert_eq!(r.event_count, CAP as i32);
    let anomalies: Option<String> =
        sqlx::query_scalar("SELECT anomalies FROM calls WHERE call_id = $1")
            .bind(&over.call_id)
            .fetch_one(&pool)
            .await
            .expect("anomalies");
    assert_eq!(anomalies.as_deref(), Some("events_capped"));
    let quarantined: i64 =
        sqlx::query_scalar("SELECT count(*) FROM quarantined_calls WHERE call_id = $1")
            .bind(&over.call_id)
            .fetch_one(&pool)
            .await
            .expect("quarantined_calls");
    assert_eq!(quarantined, 1);

    publisher.publish(&large.ended()).await.expect("publish");
    let r = wait_for_row(&pool, &large.call_id, LARGE_TURNS as i32 + 3).await;
    assert_eq!(r.status.as_deref(), Some("COMPLETED"));
    assert_eq!(
        r.answer_time,
        Some(large.start + chrono::Duration::seconds(3))
    );
    // A late event: the written call is re-activated from its whole history, page by page.
    publisher
        .publish(&large.recording())
        .await
        .expect("publish");
    let r = wait_for_row(&pool, &large.call_id, LARGE_TURNS as i32 + 4).await;
    assert!(r.recording_url.is_some());
    assert!(
        service.is_running(),
        "the service kept running under its limit"
    );
    eprintln!(
        "peak address space {} MB of {} MB allowed",
        service.peak_address_space() >> 20,
        ADDRESS_SPACE >> 20
    );
    let (code, _) = service.terminate();
    assert_eq!(code, Some(0));
    pool.close().await;
    env.cleanup(&settings).await;
}
