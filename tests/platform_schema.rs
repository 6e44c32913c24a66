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
