//! The platform's own tables as its database scripts create them before any service starts
//! (EVENTS.md, "What is stored"), for the tests that run the service on them.

use sqlx::PgPool;

/// `calls` and `call_events`.
pub const PLATFORM_CALLS: [&str; 6] = [
    "CREATE TABLE calls ( \
       call_id varchar(255) PRIMARY KEY, \
       tenant_id varchar(255), \
       direction varchar(20) NOT NULL DEFAULT 'INBOUND', \
       caller_number varchar(50), \
       callee_number varchar(50), \
       user_id uuid, \
       contact_id int, \
       start_time timestamptz, \
       answer_time timestamptz, \
       end_time timestamptz, \
       duration_seconds int DEFAULT 0, \
       status varchar(50), \
       disposition varchar(50), \
       sip_hangup_cause int, \
       hangup_source varchar(50), \
       recording_url text, \
       total_cost numeric(10,5), \
       created_at timestamptz DEFAULT now(), \
       updated_at timestamptz DEFAULT now())",
    "CREATE INDEX calls_tenant_start_idx ON calls (tenant_id, start_time)",
    "CREATE INDEX calls_caller_idx ON calls (caller_number)",
    "CREATE INDEX calls_callee_idx ON calls (callee_number)",
    "CREATE TABLE call_events ( \
       event_id bigserial PRIMARY KEY, \
       call_id varchar(255) NOT NULL, \
       event_type varchar(100) NOT NULL, \
       event_timestamp timestamptz NOT NULL, \
       payload jsonb, \
       created_at timestamptz DEFAULT now())",
    "CREATE INDEX call_events_call_idx ON call_events (call_id)",
];

/// `usage_records`, `cost_models` and `qos_metrics`.
pub const PLATFORM_BILLING: [&str; 4] = [
    "CREATE TABLE usage_records ( \
       id bigserial PRIMARY KEY, \
       tenant_id varchar(255) NOT NULL, \
       call_id varchar(255), \
       saga_id uuid, \
       service_name varchar(100) NOT NULL, \
       resource_type varchar(50) NOT NULL, \
       quantity numeric(15,5) NOT NULL, \
       calculated_cost numeric(10,5), \
       recorded_at timestamptz DEFAULT now())",
    "CREATE INDEX usage_records_call_idx ON usage_records (call_id)",
    "CREATE TABLE cost_models ( \
       id varchar(255) PRIMARY KEY, \
       resource_type varchar(50) NOT NULL, \
       cost_per_unit numeric(10,8) NOT NULL, \
       currency varchar(5) NOT NULL, \
       start_date date NOT NULL)",
    "CREATE TABLE qos_metrics ( \
       id bigserial PRIMARY KEY, \
       call_id varchar(255) NOT NULL, \
       pdd_ms int, mos numeric(3,2), jitter_ms numeric(8,2), packet_loss numeric(5,2), \
       rtt_ms int, recorded_at timestamptz DEFAULT now())",
];

/// Creates every table of the platform's database, as its scripts do.
pub async fn create_platform_tables(pool: &PgPool) {
    for &ddl in PLATFORM_CALLS.iter().chain(&PLATFORM_BILLING) {
        sqlx::query(ddl)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
}

/// The platform's columns of `usage_records`, with their types as `format_type` writes them.
pub const PLATFORM_USAGE_COLUMNS: [(&str, &str); 9] = [
    ("id", "bigint"),
    ("tenant_id", "character varying(255)"),
    ("call_id", "character varying(255)"),
    ("saga_id", "uuid"),
    ("service_name", "character varying(100)"),
    ("resource_type", "character varying(50)"),
    ("quantity", "numeric(15,5)"),
    ("calculated_cost", "numeric(10,5)"),
    ("recorded_at", "timestamp with time zone"),
];

/// Each platform column of `usage_records`: its type, and whether it is NOT NULL, as the
/// database has it now.
pub async fn usage_columns(pool: &PgPool) -> Vec<(String, String, bool)> {
    let mut found = Vec::new();
    for (column, _) in PLATFORM_USAGE_COLUMNS {
        let (ty, not_null): (String, bool) = sqlx::query_as(
            "SELECT format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a \
             WHERE a.attrelid = 'usage_records'::regclass AND a.attname = $1 \
               AND NOT a.attisdropped",
        )
        .bind(column)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("usage_records.{column}: {e}"));
        found.push((column.to_owned(), ty, not_null));
    }
    found
}

/// `PLATFORM_USAGE_COLUMNS` with the platform's NOT NULLs.
pub fn platform_usage_columns() -> Vec<(String, String, bool)> {
    PLATFORM_USAGE_COLUMNS
        .iter()
        .map(|(c, ty)| {
            let not_null = matches!(
                *c,
                "id" | "tenant_id" | "service_name" | "resource_type" | "quantity"
            );
            (c.to_string(), ty.to_string(), not_null)
        })
        .collect()
}

/// The unit prices the storm's ground truth expects, as the platform keeps them (named ids, a
/// start date), one of them changing at midnight in the middle of the storm's timeline (it
/// starts two minutes before; calls are priced at their start).
pub async fn insert_storm_prices(pool: &sqlx::PgPool) {
    sqlx::query(
        "INSERT INTO cost_models (id, resource_type, cost_per_unit, currency, start_date) VALUES \
           ('tel-1970', 'telephony_minute', 0.012, 'USD', '1970-01-01'), \
           ('tel-2025-09-24', 'telephony_minute', 0.010, 'USD', '2025-09-24'), \
           ('stt-1970', 'stt_second', 0.0004, 'USD', '1970-01-01'), \
           ('llm-1970', 'llm_token', 0.000002, 'USD', '1970-01-01'), \
           ('tts-1970', 'tts_character', 0.000015, 'USD', '1970-01-01')",
    )
    .execute(pool)
    .await
    .expect("insert prices");
}
