//! What the service wrote, read back: a call's row in `calls` and its logged events.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Row {
    pub call_id: String,
    pub user_id: Option<uuid::Uuid>,
    pub contact_id: Option<i32>,
    pub tenant_id: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub answer_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i32>,
    pub status: Option<String>,
    pub disposition: Option<String>,
    pub recording_url: Option<String>,
    pub caller_number: Option<String>,
    pub callee_number: Option<String>,
    pub sip_hangup_cause: Option<String>,
    pub trace_id: Option<String>,
    pub inferred_times: Option<String>,
    pub event_count: i32,
}

pub async fn row(pool: &PgPool, call_id: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT call_id, user_id, contact_id, tenant_id, start_time, answer_time, end_time, \
                duration_seconds, status, disposition, recording_url, caller_number, \
                callee_number, sip_hangup_cause, trace_id, inferred_times, event_count \
         FROM calls WHERE call_id = $1",
    )
    .bind(call_id)
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
