//! A test's own environment: a fresh database on the test PostgreSQL and its own exchange and
//! queue names on the test RabbitMQ, so tests run in parallel without seeing each other.

use secrecy::ExposeSecret;
use std::time::Duration;

use cdr_service::config::Settings;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use sqlx::{Connection as _, PgConnection, PgPool};

/// The test PostgreSQL's administrative URL (`TEST_POSTGRES_URL`): test databases are created
/// and dropped through it, on the same server.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The test RabbitMQ (`TEST_RABBITMQ_URL`).
pub fn amqp_url() -> String {
    std::env::var("TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Creates database `db_name` on the server of [`postgres_admin_url`]; returns its URL.
pub async fn create_database(db_name: &str) -> String {
    let mut admin = PgConnection::connect(&postgres_admin_url())
        .await
        .expect("PostgreSQL must be running (see README: scripts/services.sh)");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let base = postgres_admin_url();
    match base.rfind('/') {
        Some(i) => format!("{}/{db_name}", &base[..i]),
        None => panic!("bad TEST_POSTGRES_URL"),
    }
}

/// Names and a fresh database for one test.
pub struct TestEnv {
    pub id: String,
    pub db_name: String,
    pub db_url: String,
}

impl TestEnv {
    pub async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db_name = format!("cdr_test_{id}");
        let db_url = create_database(&db_name).await;
        TestEnv {
            id,
            db_name,
            db_url,
        }
    }

    /// Settings for this test: its database, its own names, fast timers, an ephemeral port.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::load_from(None, Vec::new()).expect("default settings");
        s.database.url = self.db_url.clone().into();
        s.amqp.url = amqp_url().into();
        s.amqp.exchange = format!("test.{}.events", self.id);
        s.amqp.queue = format!("test.{}.queue", self.id);
        s.amqp.dead_letter_exchange = format!("test.{}.failed", self.id);
        s.amqp.dead_letter_queue = format!("test.{}.failed.queue", self.id);
        s.amqp.consumer_tag = format!("test-{}", self.id);
        s.http.listen = "127.0.0.1:0".parse().unwrap();
        s.tracker.linger = Duration::from_millis(300);
        s.tracker.idle_timeout = Duration::from_secs(3);
        s.cluster.lease_check = Duration::from_millis(250);
        s.ingest.batch_max_age = Duration::from_millis(10);
        s.writer.batch_max_age = Duration::from_millis(10);
        s.backoff.initial = Duration::from_millis(50);
        s.backoff.max = Duration::from_millis(500);
        s.shutdown.timeout = Duration::from_secs(10);
        s
    }

    /// The same settings as environment variables, for the binary run as a child process.
    pub fn env_vars(&self, s: &Settings) -> Vec<(String, String)> {
        env_vars(s)
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.db_url)
            .await
            .expect("connect test db")
    }

    /// Removes the test's broker objects and database.
    pub async fn cleanup(&self, s: &Settings) {
        if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in [&s.amqp.queue, &s.amqp.dead_letter_queue] {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for x in [&s.amqp.exchange, &s.amqp.dead_letter_exchange] {
                let _ = ch
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        if let Ok(mut admin) = PgConnection::connect(&postgres_admin_url()).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db_name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// Settings as the environment variables that give them to the binary (the platform's names
/// for the URLs, `CDR__SECTION__KEY` for the rest): the connections, every name, the HTTP
/// address, the timers and batch ages, the runtime and the log level.
pub fn env_vars(s: &Settings) -> Vec<(String, String)> {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let mut vars = vec![
        (
            "POSTGRES_URL".into(),
            s.database.url.expose_secret().to_owned(),
        ),
        ("RABBITMQ_URL".into(), s.amqp.url.expose_secret().to_owned()),
        ("CDR__AMQP__EXCHANGE".into(), s.amqp.exchange.clone()),
        ("CDR__AMQP__QUEUE".into(), s.amqp.queue.clone()),
        (
            "CDR__AMQP__DEAD_LETTER_EXCHANGE".into(),
            s.amqp.dead_letter_exchange.clone(),
        ),
        (
            "CDR__AMQP__DEAD_LETTER_QUEUE".into(),
            s.amqp.dead_letter_queue.clone(),
        ),
        (
            "CDR__AMQP__CONSUMER_TAG".into(),
            s.amqp.consumer_tag.clone(),
        ),
        ("CDR__HTTP__LISTEN".into(), s.http.listen.to_string()),
        ("CDR__TRACKER__LINGER".into(), d(s.tracker.linger)),
        (
            "CDR__TRACKER__IDLE_TIMEOUT".into(),
            d(s.tracker.idle_timeout),
        ),
        ("CDR__TRACKER__REST_AFTER".into(), d(s.tracker.rest_after)),
        (
            "CDR__TRACKER__MAX_EVENTS_PER_CALL".into(),
            s.tracker.max_events_per_call.to_string(),
        ),
        (
            "CDR__TRACKER__MAX_OPEN_CALLS".into(),
            s.tracker.max_open_calls.to_string(),
        ),
        ("CDR__AMQP__PREFETCH".into(), s.amqp.prefetch.to_string()),
        (
            "CDR__INGEST__BATCH_SIZE".into(),
            s.ingest.batch_size.to_string(),
        ),
        (
            "CDR__INGEST__BATCH_MAX_AGE".into(),
            d(s.ingest.batch_max_age),
        ),
        (
            "CDR__WRITER__BATCH_MAX_AGE".into(),
            d(s.writer.batch_max_age),
        ),
        ("CDR__SHUTDOWN__TIMEOUT".into(), d(s.shutdown.timeout)),
        (
            "CDR__RUNTIME__WORKER_THREADS".into(),
            s.runtime.worker_threads.to_string(),
        ),
        ("CDR__LOG__LEVEL".into(), s.log.level.clone()),
        ("CDR__CLUSTER__LEASE_CHECK".into(), d(s.cluster.lease_check)),
    ];
    let path = |p: &std::path::Path| p.display().to_string();
    for (key, value) in [
        ("CDR__DATABASE__TLS_MODE", s.database.tls_mode.clone()),
        ("CDR__DATABASE__TLS_CA_FILE", path(&s.database.tls_ca_file)),
        (
            "CDR__DATABASE__TLS_CERT_FILE",
            path(&s.database.tls_cert_file),
        ),
        (
            "CDR__DATABASE__TLS_KEY_FILE",
            path(&s.database.tls_key_file),
        ),
    ] {
        if !value.is_empty() {
            vars.push((key.into(), value));
        }
    }
    if !s.cluster.lease_key.is_empty() {
        vars.push((
            "CDR__CLUSTER__LEASE_KEY".into(),
            s.cluster.lease_key.clone(),
        ));
    }
    vars
}
