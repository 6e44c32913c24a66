//! Acks through many small batches. The committer hands a batch's `multiple` ack to lapin and
//! goes on to the next append without waiting for it, while the consumer acks each dead letter
//! alone in between. Every delivery must end acked and the channel must stay open: RabbitMQ
//! closes a channel that acks a tag it does not know, which would show here as a broker
//! session restart and a redelivery. Its own test binary, so the process-wide metrics recorder
//! counts only this service's reconnects.

use cdr_testkit as common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_and_dead_letters_in_between_are_all_acked_on_one_session() {
    let app = TestApp::spawn_with(|s| {
        // Many batches, so many acks in flight one after the other.
        s.ingest.batch_size = 3;
        s.ingest.batch_max_age = Duration::from_millis(1);
    })
    .await;
    let calls: Vec<_> = (0..40).map(|i| call(&format!("acks-{i}"))).collect();
    let mut bad = 0;
    for c in &calls {
        for (i, event) in c.events(true).iter().enumerate() {
            app.publisher.publish(event).await.expect("publish");
            if i % 2 == 0 {
                app.publisher
                    .publish_raw("call.started", format!("not json {bad}").as_bytes())
                    .await
                    .expect("publish");
                bad += 1;
            }
        }
    }

    for c in &calls {
        let r = wait_for_row(&app.pool, &c.call_id, 5).await;
        assert_full_record(&r, c);
    }
    let mut dead = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dead < bad {
        assert!(
            std::time::Instant::now() < deadline,
            "{dead} of {bad} dead letters"
        );
        for (_, reason) in drain_queue(&app.settings.amqp.dead_letter_queue).await {
            assert_eq!(reason.as_deref(), Some("not_json"));
            dead += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead, bad);
    wait_until(Duration::from_secs(20), "queue empty", || {
        let queue = app.settings.amqp.queue.clone();
        async move { queue_depth(&queue).await == 0 }
    })
    .await;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM call_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(logged, 5 * calls.len() as i64);
    assert!(
        app.metric("cdr_log_batch_size_count").await >= 20.0,
        "the run should commit many batches"
    );
    assert_eq!(
        app.metric("cdr_broker_reconnects_total").await,
        0.0,
        "the broker session was restarted: an ack was refused"
    );
    assert_eq!(app.metric("cdr_duplicates_dropped_total").await, 0.0);

    let (env, settings) = app.stop().await;
    // Stopped: a delivery left unacked would be back in the queue now.
    assert_eq!(
        queue_depth(&settings.amqp.queue).await,
        0,
        "unacked deliveries"
    );
    env.cleanup(&settings).await;
}
