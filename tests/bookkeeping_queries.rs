//! The two per-batch bookkeeping statements, on a real database: the tracker's "which of these
//! calls were logged before this batch" and the record writer's "these calls' rows now cover
//! their events". Both were written for their plans (see their doc comments); this checks what
//! they return, and which plans they get.

use cdr_testkit as common;

use cdr_service::db::BEGIN_PREFERRING_INDEXES;
use cdr_service::log::SEEN_BEFORE_SQL;
use cdr_service::writer::{CLOSE_OPEN_CALLS_SQL, close_open_calls};
use common::TestEnv;
use sqlx::PgPool;

/// Logs `events` events for `call_id` and returns their ids, in order.
async fn log_events(pool: &PgPool, call_id: &str, events: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..events {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO call_events (call_id, event_type, payload, body_sha256, received_at, \
                                      event_timestamp) \
             VALUES ($1, 'call.started', '{}'::jsonb, sha256(($1 || $2)::bytea), now(), now()) \
             RETURNING event_id",
        )
        .bind(call_id)
        .bind(i.to_string())
        .fetch_one(pool)
        .await
        .expect("log event");
        ids.push(id);
    }
    ids
}

async fn seen_before(pool: &PgPool, calls: &[&str], before: i64) -> Vec<String> {
    let mut seen: Vec<String> = cdr_service::log::EventLog::new(pool.clone())
        .calls_with_events_before(calls, before)
        .await
        .expect("seen before")
        .into_iter()
        .collect();
    seen.sort();
    seen
}

async fn close(pool: &PgPool, calls: &[&str], upto: &[i64]) -> u64 {
    let mut tx = pool.begin_with(BEGIN_PREFERRING_INDEXES).await.unwrap();
    let closed = close_open_calls(&mut tx, calls, upto)
        .await
        .expect("close open calls");
    tx.commit().await.unwrap();
    closed
}

async fn open_calls(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT call_id FROM open_calls ORDER BY call_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn seen_before_and_close_open_calls_return_exactly_their_calls() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");

    let a = log_events(&pool, "bk-a", 3).await;
    let b = log_events(&pool, "bk-b", 2).await;
    let c = log_events(&pool, "bk-c", 1).await;

    // A batch starting at c's event: a and b were logged before it, c was not, d never was.
    let batch = ["bk-a", "bk-b", "bk-c", "bk-d"];
    assert_eq!(seen_before(&pool, &batch, c[0]).await, ["bk-a", "bk-b"]);
    // A batch starting at a's second event: only a has an earlier event.
    assert_eq!(seen_before(&pool, &batch, a[1]).await, ["bk-a"]);
    // Strictly before: nothing precedes the very first event.
    assert!(seen_before(&pool, &batch, a[0]).await.is_empty());
    // Only the calls asked about.
    assert_eq!(seen_before(&pool, &["bk-b"], i64::MAX).await, ["bk-b"]);
    assert!(seen_before(&pool, &[], i64::MAX).await.is_empty());

    sqlx::query(
        "INSERT INTO open_calls (call_id, last_event_id) \
         SELECT call_id, max(event_id) FROM call_events GROUP BY call_id",
    )
    .execute(&pool)
    .await
    .unwrap();

    // a's row covers only its first two events: a stays open. b's row covers all of b.
    // An unknown call closes nothing.
    let closed = close(&pool, &["bk-a", "bk-b", "bk-x"], &[a[1], b[1], i64::MAX]).await;
    assert_eq!(closed, 1);
    assert_eq!(open_calls(&pool).await, ["bk-a", "bk-c"]);
    // Each call is checked against its own bound, not another's: swapped, b[1] would close a.
    let closed = close(&pool, &["bk-a", "bk-c"], &[a[1], b[1]]).await;
    assert_eq!(closed, 0, "a bound was applied to another call");
    let closed = close(&pool, &["bk-a", "bk-c"], &[a[2], c[0]]).await;
    assert_eq!(closed, 2);
    assert!(open_calls(&pool).await.is_empty());

    pool.close().await;
    let settings = env.settings();
    env.cleanup(&settings).await;
}

/// The plans of both statements on tables the planner has no statistics for (as while they grow
/// faster than autovacuum analyzes them): the batch's keys come through an index, never from a
/// scan of the whole table with every row tested against the batch's array.
#[tokio::test]
async fn bookkeeping_reads_indexes_even_without_statistics() {
    let env = TestEnv::new().await;
    let pool = env.pool().await;
    cdr_service::db::migrate(&pool).await.expect("migrate");
    sqlx::query(
        "INSERT INTO open_calls (call_id, last_event_id) \
         SELECT 'plan-' || g, g FROM generate_series(1, 3000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_events (call_id, event_type, payload, body_sha256, received_at, \
                                  event_timestamp) \
         SELECT 'plan-' || (g % 5000), 'call.started', '{}'::jsonb, sha256(g::text::bytea), now(), \
                now() \
         FROM generate_series(1, 30000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let calls: Vec<String> = (1..=200).map(|i| format!("plan-{}", i * 7)).collect();
    let upto: Vec<i64> = (1..=200).map(|i| i * 7).collect();

    let mut tx = pool.begin_with(BEGIN_PREFERRING_INDEXES).await.unwrap();
    let close_plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {CLOSE_OPEN_CALLS_SQL}"
    )))
    .bind(&calls)
    .bind(&upto)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let seen_plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (FORMAT JSON) {SEEN_BEFORE_SQL}"
    )))
    .bind(&calls)
    .bind(20_000_i64)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    for (what, plan, index) in [
        ("logged before", &seen_plan, "call_events_distinct_idx"),
        ("closing open calls", &close_plan, "open_calls_pkey"),
    ] {
        let mut scans = Vec::new();
        collect_scans(plan, &mut scans);
        assert!(
            scans
                .iter()
                .any(|(kind, i)| kind.contains("Index") && i == index),
            "{what}: not read through {index}: {scans:?}\n{plan:#}"
        );
        assert!(
            !scans.iter().any(|(kind, _)| kind == "Seq Scan"),
            "{what}: a table is scanned whole: {scans:?}\n{plan:#}"
        );
    }

    pool.close().await;
    let settings = env.settings();
    env.cleanup(&settings).await;
}

/// Every node of an EXPLAIN (FORMAT JSON) plan that reads a relation or index: (node type,
/// index name).
fn collect_scans(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(node) => {
            if let Some(kind) = node.get("Node Type").and_then(|k| k.as_str())
                && (node.contains_key("Relation Name") || node.contains_key("Index Name"))
                && node.get("Relation Name").and_then(|r| r.as_str()) != Some("t")
            {
                let index = node
                    .get("Index Name")
                    .and_then(|i| i.as_str())
                    .unwrap_or_default();
                out.push((kind.to_owned(), index.to_owned()));
            }
            node.values().for_each(|child| collect_scans(child, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|child| collect_scans(child, out)),
        _ => {}
    }
}
