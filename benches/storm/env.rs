//! The bench's environment: its databases, exchanges and queues (created here, removed at the
//! end), the release binary as a child process, and the service's own metrics.

use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::fmt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection};

use crate::stats::round;
use crate::{IN_FLIGHT, LINGER, Message, PREFETCH, Settings, StormPublisher, queue_arguments};

pub use cdr_testkit::{amqp_url, postgres_admin_url as admin_url};

pub struct Env {
    pub id: String,
    /// Every database the bench created, the current one last (removed at the end).
    pub db_names: Vec<String>,
    pub db_url: String,
    pub settings: Settings,
    /// Exchange/queue pairs the bench declared (removed at the end).
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Env {
    pub async fn create() -> anyhow::Result<Env> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db_name = format!("cdr_bench_{id}");
        let db_url = create_database(&db_name).await?;
        // The `CDR__*` variables the service inherits count for the bench's own side too (the
        // queue arguments of its drains, say).
        let mut s = Settings::load_from(
            None,
            std::env::vars().filter(|(k, _)| k.starts_with("CDR__")),
        )?;
        s.database.url = db_url.clone().into();
        s.amqp.url = amqp_url().into();
        s.amqp.exchange = format!("cdr_bench.{id}.events");
        s.amqp.queue = format!("cdr_bench.{id}.queue");
        s.amqp.dead_letter_exchange = format!("cdr_bench.{id}.failed");
        s.amqp.dead_letter_queue = format!("cdr_bench.{id}.failed.queue");
        s.tracker.linger = LINGER;
        Ok(Env {
            exchanges: vec![s.amqp.exchange.clone(), s.amqp.dead_letter_exchange.clone()],
            queues: vec![s.amqp.queue.clone(), s.amqp.dead_letter_queue.clone()],
            id,
            db_names: vec![db_name],
            db_url,
            settings: s,
        })
    }

    /// A fresh database and fresh exchange and queue names for the service's next drain round,
    /// so that every round starts as the first did: empty tables, an empty queue.
    pub async fn next_round(&mut self, round: usize) -> anyhow::Result<()> {
        let db_name = format!("cdr_bench_{}_r{round}", self.id);
        self.db_url = create_database(&db_name).await?;
        self.db_names.push(db_name);
        let s = &mut self.settings;
        s.database.url = self.db_url.clone().into();
        s.amqp.exchange = format!("cdr_bench.{}.events.r{round}", self.id);
        s.amqp.queue = format!("cdr_bench.{}.queue.r{round}", self.id);
        Ok(())
    }

    /// One more database of the bench's (removed at the end); returns its URL.
    pub async fn extra_database(&mut self, db_name: String) -> anyhow::Result<String> {
        let db_url = create_database(&db_name).await?;
        self.db_names.push(db_name);
        Ok(db_url)
    }

    pub fn name(&self, what: &str) -> String {
        format!("cdr_bench.{}.{what}", self.id)
    }

    /// Declares a durable topic exchange and a durable queue bound to it with `#`, with the
    /// arguments the service declares its own queue with.
    pub async fn declare(&mut self, exchange: &str, queue: &str) -> anyhow::Result<()> {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        // The service's own queue arguments, so that every drain reads the same kind of queue.
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(&self.settings.amqp),
        )
        .await?;
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        let _ = conn.close(200, "bye".into()).await;
        for (list, name) in [(&mut self.exchanges, exchange), (&mut self.queues, queue)] {
            if !list.iter().any(|n| n == name) {
                list.push(name.to_owned());
            }
        }
        Ok(())
    }

    pub async fn delete_queue(&self, queue: &str) {
        if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            let _ = ch
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
            let _ = conn.close(200, "bye".into()).await;
        }
    }

    pub async fn cleanup(&self) {
        if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            for q in &self.queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for x in &self.exchanges {
                let _ = ch
                    .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "bye".into()).await;
        }
        if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
            for db in &self.db_names {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        }
        progress!(
            "removed database(s) {} and the bench's exchanges and queues",
            self.db_names.join(", ")
        );
    }
}

/// Creates a database on the server of `TEST_POSTGRES_URL`; returns its URL.
async fn create_database(db_name: &str) -> anyhow::Result<String> {
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .context("PostgreSQL must be running (scripts/test.sh starts it)")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    match admin.rfind('/') {
        Some(i) => Ok(format!("{}/{db_name}", &admin[..i])),
        None => bail!("bad TEST_POSTGRES_URL {admin:?}"),
    }
}

/// The servers' versions: PostgreSQL's as it reports it, the broker's as the OS package gives
/// it (when it is installed that way); empty when unknown.
pub async fn server_versions(env: &Env) -> (String, String) {
    let pg = match PgConnection::connect(&env.db_url).await {
        Ok(mut c) => {
            let v: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(&mut c)
                .await
                .unwrap_or_default();
            let _ = c.close().await;
            v
        }
        Err(_) => String::new(),
    };
    let rabbit = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "rabbitmq-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    (pg, rabbit)
}

/// Publishes a backlog with the storm publisher; returns its rate (messages per second, with
/// confirms).
pub async fn publish_backlog(exchange: &str, msgs: &[Message], label: &str) -> anyhow::Result<f64> {
    let publisher = StormPublisher::connect(&amqp_url(), exchange).await?;
    let stats = publisher.publish(msgs, 0.0, IN_FLIGHT, label).await?;
    publisher.close().await;
    progress!(
        "{label}: published {} messages in {:.1}s ({:.0}/s with confirms)",
        stats.messages,
        stats.elapsed.as_secs_f64(),
        stats.rate()
    );
    Ok(stats.rate())
}

/// A consumer on `queue` with the service's prefetch and manual acks, as the bench's consumers
/// use it; the connection is returned so the caller closes it.
pub async fn bench_consumer(
    queue: &str,
    tag: &str,
) -> anyhow::Result<(Connection, lapin::Consumer)> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, consumer))
}

/// The release binary as a child process; killed if dropped while running.
pub struct Service {
    child: Child,
    port: u16,
    /// From spawn to /health/ready answering 200.
    pub startup: Duration,
}

impl Service {
    pub async fn start(env: &Env) -> anyhow::Result<Service> {
        Self::start_with(env, &[]).await
    }

    /// With extra environment variables (setting overrides).
    pub async fn start_with(env: &Env, vars: &[(&str, String)]) -> anyhow::Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let s = &env.settings;
        let spawned = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_cdr-service"))
            .arg("run")
            .env("POSTGRES_URL", s.database.url.expose_secret())
            .env("RABBITMQ_URL", s.amqp.url.expose_secret())
            .env("CDR__AMQP__EXCHANGE", &s.amqp.exchange)
            .env("CDR__AMQP__QUEUE", &s.amqp.queue)
            .env(
                "CDR__AMQP__DEAD_LETTER_EXCHANGE",
                &s.amqp.dead_letter_exchange,
            )
            .env("CDR__AMQP__DEAD_LETTER_QUEUE", &s.amqp.dead_letter_queue)
            .env("CDR__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "CDR__TRACKER__LINGER",
                humantime::format_duration(LINGER).to_string(),
            )
            .env("CDR__LOG__LEVEL", "warn")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting cdr-service")?;
        let mut service = Service {
            child,
            port,
            startup: Duration::ZERO,
        };
        service.wait_ready().await?;
        service.startup = spawned.elapsed();
        Ok(service)
    }

    /// Until /health/ready answers 200 (at most 60 s).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url("/health/ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("cdr-service exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("cdr-service not ready within 60s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM and wait (SIGKILL after 60 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    progress!("note: cdr-service exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                progress!("note: cdr-service did not stop within 60s of SIGTERM; killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Service {
    /// SIGKILL, as in a crash, and wait for the exit.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The service's own counters at this moment (`/metrics`), by series (labels included).
pub async fn scrape(service: &Service) -> HashMap<String, f64> {
    let Ok(resp) = reqwest::get(service.url("/metrics")).await else {
        return HashMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    cdr_testkit::metrics::samples(&text)
        .map(|(series, value)| (series.to_owned(), value))
        .collect()
}

/// The log and record writes of the service, from its histograms, over a window.
#[derive(Debug, Clone, Serialize)]
pub struct Writes {
    /// The async runtime's worker threads, as the service reported them.
    pub runtime_worker_threads: f64,
    pub log_batches: f64,
    pub log_batch_mean_events: f64,
    pub log_write_mean_ms: f64,
    /// Share of the window the ingest loop spent waiting for log commits (it commits one batch
    /// at a time).
    pub log_write_busy_share: f64,
    pub record_batches: f64,
    pub record_batch_mean_rows: f64,
    pub record_write_mean_ms: f64,
    pub record_write_busy_share: f64,
    pub duplicates_dropped: f64,
    pub window_seconds: f64,
}

impl Writes {
    /// From the service's metrics `m`, over `window` seconds.
    pub fn from_metrics(m: &HashMap<String, f64>, window: f64) -> Writes {
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let log_batches = g("cdr_log_batch_size_count");
        let rec_batches = g("cdr_record_batch_size_count");
        let log_write = g("cdr_log_write_duration_seconds_sum");
        let record_write = g("cdr_record_write_duration_seconds_sum");
        Writes {
            runtime_worker_threads: g("cdr_runtime_worker_threads"),
            log_batches,
            log_batch_mean_events: round(per(g("cdr_log_batch_size_sum"), log_batches), 1),
            log_write_mean_ms: round(
                per(log_write, g("cdr_log_write_duration_seconds_count")) * 1000.0,
                2,
            ),
            log_write_busy_share: round(per(log_write, window), 3),
            record_batches: rec_batches,
            record_batch_mean_rows: round(per(g("cdr_record_batch_size_sum"), rec_batches), 1),
            record_write_mean_ms: round(
                per(record_write, g("cdr_record_write_duration_seconds_count")) * 1000.0,
                2,
            ),
            record_write_busy_share: round(per(record_write, window), 3),
            duplicates_dropped: g("cdr_duplicates_dropped_total"),
            window_seconds: round(window, 3),
        }
    }
}

/// As JSON, as the progress lines show it.
impl fmt::Display for Writes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::report::json_text(self))
    }
}
