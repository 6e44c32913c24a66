//! Test harness: each test gets its own database and its own exchange and queue names on the
//! real PostgreSQL and RabbitMQ, so tests run in parallel without seeing each other.
#![allow(dead_code)]

pub mod proxy;
pub mod service;

use std::time::{Duration, Instant};

use cdr_service::app::Application;
use cdr_service::config::Settings;
use cdr_service::simulate::Publisher;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
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
        let mut admin = PgConnection::connect(&postgres_admin_url())
            .await
            .expect("PostgreSQL must be running (see README: scripts/services.sh)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let base = postgres_admin_url();
        let db_url = match base.rfind('/') {
            Some(i) => format!("{}/{db_name}", &base[..i]),
            None => panic!("bad TEST_POSTGRES_URL"),
        };
        TestEnv {
            id,
            db_name,
            db_url,
        }
    }

    /// Settings for this test: its database, its own names, fast timers, an ephemeral port.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::load_from(None, Vec::new()).expect("default settings");
        s.database.url = self.db_url.clone();
        s.amqp.url = amqp_url();
        s.amqp.exchange = format!("test.{}.events", self.id);
        s.amqp.queue = format!("test.{}.queue", self.id);
        s.amqp.dead_letter_exchange = format!("test.{}.failed", self.id);
        s.amqp.dead_letter_queue = format!("test.{}.failed.queue", self.id);
        s.amqp.consumer_tag = format!("test-{}", self.id);
        s.http.listen = "127.0.0.1:0".parse().unwrap();
        s.tracker.linger = Duration::from_millis(300);
        s.tracker.idle_timeout = Duration::from_secs(3);
        s.ingest.batch_max_age = Duration::from_millis(10);
        s.writer.batch_max_age = Duration::from_millis(10);
        s.backoff.initial = Duration::from_millis(50);
        s.backoff.max = Duration::from_millis(500);
        s.shutdown.timeout = Duration::from_secs(10);
        s
    }

    /// The same settings as environment variables, for the binary run as a child process.
    pub fn env_vars(&self, s: &Settings) -> Vec<(String, String)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        vec![
            ("POSTGRES_URL".into(), s.database.url.clone()),
            ("RABBITMQ_URL".into(), s.amqp.url.clone()),
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
        ]
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

/// The service running in-process on a test's own database and names.
pub struct TestApp {
    pub env: TestEnv,
    pub settings: Settings,
    pub pool: PgPool,
    pub port: u16,
    pub publisher: Publisher,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let env = TestEnv::new().await;
        let mut settings = env.settings();
        tweak(&mut settings);
        Self::start(env, settings).await
    }

    pub async fn start(env: TestEnv, settings: Settings) -> TestApp {
        init_test_logging();
        let app = Application::build(settings.clone())
            .await
            .expect("build app");
        let port = app.http_port();
        let health = app.health();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        wait_until(Duration::from_secs(30), "service ready", || {
            let ready = health.ready();
            async move { ready }
        })
        .await;
        let publisher = Publisher::connect(&settings.amqp.url, &settings.amqp.exchange)
            .await
            .expect("publisher");
        let pool = env.pool().await;
        TestApp {
            env,
            settings,
            pool,
            port,
            publisher,
            shutdown,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The sum of every series of metric `name` on /metrics (0 when it is absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(self.port, name).await
    }

    /// `/calls`: active calls by phase, and how many of them rest.
    pub async fn active_calls(&self) -> Value {
        reqwest::get(self.url("/calls"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `/calls/{call_id}`: an active call's live view.
    pub async fn live_call(&self, call_id: &str) -> Value {
        reqwest::get(self.url(&format!("/calls/{call_id}")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Graceful stop; the run must end Ok.
    pub async fn stop(self) -> (TestEnv, Settings) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("app task")
            .expect("app stopped with an error");
        self.pool.close().await;
        (self.env, self.settings)
    }

    pub async fn finish(self) {
        let (env, settings) = self.stop().await;
        env.cleanup(&settings).await;
    }
}

/// Polls `check` until it is true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

/// Takes every message from a queue: (body, reject-reason header).
pub async fn drain_queue(queue: &str) -> Vec<(Vec<u8>, Option<String>)> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let reason = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(cdr_service::ingest::REASON_HEADER).cloned())
            .and_then(|v| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                _ => None,
            });
        out.push((msg.delivery.data.clone(), reason));
    }
    let _ = conn.close(200, "bye".into()).await;
    out
}

/// Messages waiting in a queue (declared passively).
pub async fn queue_depth(queue: &str) -> u32 {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "bye".into()).await;
    q.message_count()
}

/// Service logs in test output when `RUST_LOG` is set (e.g. `RUST_LOG=cdr_service=debug`).
pub fn init_test_logging() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// The start of every test's synthetic calls (microsecond precision, as PostgreSQL stores it).
pub fn t0() -> chrono::DateTime<chrono::Utc> {
    "2025-09-24T10:01:02.123456Z".parse().unwrap()
}

pub fn call(id: &str) -> cdr_service::simulate::SyntheticCall {
    cdr_service::simulate::SyntheticCall::new(format!("{id}@198.51.100.7"), t0())
}

/// What the record of a complete `SyntheticCall` must be, whatever the order its events came in.
pub fn assert_full_record(r: &Row, c: &cdr_service::simulate::SyntheticCall) {
    let at = |d: std::time::Duration| Some(c.start + chrono::Duration::from_std(d).unwrap());
    assert_eq!(r.status.as_deref(), Some("COMPLETED"), "{}", c.call_id);
    assert_eq!(r.disposition.as_deref(), Some("ANSWERED"), "{}", c.call_id);
    assert_eq!(r.start_time, Some(c.start), "{}", c.call_id);
    assert_eq!(r.answer_time, at(c.answer_after), "{}", c.call_id);
    assert_eq!(r.end_time, at(c.answer_after + c.talk), "{}", c.call_id);
    assert_eq!(
        r.duration_seconds,
        Some(c.talk.as_secs() as i32),
        "{}",
        c.call_id
    );
    assert_eq!(r.user_id.map(|u| u.to_string()), Some(c.user_id.clone()));
    assert_eq!(r.contact_id, Some(42));
    assert_eq!(r.tenant_id.as_deref(), Some(c.tenant_id.as_str()));
    assert_eq!(r.caller_number.as_deref(), Some("905551234567"));
    assert_eq!(r.callee_number.as_deref(), Some("902124440000"));
    assert_eq!(r.sip_hangup_cause.as_deref(), Some("normal_clearing"));
    assert_eq!(r.trace_id.as_deref(), Some(c.trace_id.as_str()));
    assert_eq!(
        r.recording_url.as_deref(),
        Some(format!("s3://recordings/{}/{}.wav", c.tenant_id, c.call_id).as_str())
    );
    assert_eq!(r.inferred_times, None, "{}", c.call_id);
}

/// The sum of every series of metric `name` on the /metrics of the service listening on
/// `port` (0 when it is absent).
pub async fn metric_at(port: u16, name: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
