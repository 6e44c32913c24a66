//! What the service wrote, read back: a call's row in `calls` and its logged events.

use std::time::{Duration, Instant};

use sqlx::PgPool;

/// A `calls` row as the tests read it back.
pub type Row = cdr_service::row::CallRow;

pub async fn row(pool: &PgPool, call_id: &str) -> Option<Row> {
    Row::by_id(call_id)
        .fetch_optional(pool)
        .await
        .expect("query calls")
}

/// Waits for the call's row to fold `events` events and returns it.
pub async fn wait_for_row(pool: &PgPool, call_id: &str, events: i32) -> Row {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = row(pool, call_id).await
            && r.event_count >= events
        {
            return r;
        }
        if Instant::now() > deadline {
            panic!(
                "no row for {call_id} with {events} events; have {:?}",
                row(pool, call_id).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn logged_events(pool: &PgPool, call_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM call_events WHERE call_id = $1")
        .bind(call_id)
        .fetch_one(pool)
        .await
        .expect("count call_events")
}
