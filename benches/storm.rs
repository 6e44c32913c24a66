//! End-to-end storm benchmark: the service against the limits of this machine, in one run.
//!
//! ```sh
//! cargo bench --bench storm                # default sizes (a few minutes on 2 cores)
//! cargo bench --bench storm -- --quick     # everything small, about a minute
//! cargo bench --bench storm -- --full      # default, with 1,000,000 open calls for memory
//!                                          # and three drain rounds
//! # drains only, in practice: five rounds, the other phases tiny (to compare two builds)
//! cargo bench --bench storm -- --rounds 5 --seed-messages 2000 --steady-secs 3 --open-calls 2000
//! ```
//!
//! Needs PostgreSQL and RabbitMQ (`TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`; `TEST_RABBITMQ_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Creates a database `cdr_bench_<random>` and
//! exchanges/queues `cdr_bench.<random>.*`, and removes them at the end. Measures, side by side:
//!
//! 1. broker drain: the storm's main phase as a backlog in a fresh queue, drained by a consumer
//!    that does nothing (manual acks, the service's default prefetch): the broker's limit;
//! 2. service drain: the same backlog in the service's queue, then the release binary started
//!    as a child, timed from its start until every record is in `calls`; every record is then
//!    verified against the storm's ground truth. With `--rounds N`, N service drains, each on a
//!    fresh database and queue and each followed by a broker drain; the ratio reported is the
//!    median round's, with every round's beside it. The drain ends with the last record's
//!    transaction (`updated_at`), as the flush latency does.
//!    After each service drain, the log floor: the same backlog decoded, appended with the
//!    service's event log and acked after each commit by a consumer in the bench that does
//!    nothing after the log (no records, dialog turns or usage lines), timed like the broker
//!    drains: the ack path alone, above what any service that keeps the log and writes the
//!    records could reach here;
//! 3. seed baseline: what the platform's original consumer did, per event and serially: insert
//!    the raw event, upsert the `calls` column of that event type (autocommit each), ack each;
//! 4. steady state: the service fed at a fixed rate; flush latency from publishing a call's
//!    `call.ended` to its row's `updated_at` (the writer's transaction time);
//! 5. memory: the service's RSS per open call (calls started and answered, never ended), as
//!    they settle at rest (quiet for `tracker.rest_after`: state kept, no actor), and, for up to
//!    100,000 calls, with one actor each (before they rest).
//!
//! Writes `target/bench/storm-report.{json,md}` and SVG charts beside them. It measures and
//! reports only: nothing here passes or fails on a timing.

// The report's `json!` is large.
#![recursion_limit = "256"]

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cdr_service::config::Settings;
use cdr_service::event::{self, EventKind, Limits};
use cdr_storm::publish::{StormPublisher, queue_depth};
use cdr_storm::verify::Verifier;
use cdr_storm::{Message, MessageKind, Storm, StormOptions, generate};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection, PgPool};

/// The service's default prefetch (`amqp.prefetch`), used by the bench's own consumers too.
const PREFETCH: u16 = 6000;
/// Publishes awaiting their confirm at once.
const IN_FLIGHT: usize = 1000;
/// `tracker.linger` given to the service.
const LINGER: Duration = Duration::from_secs(1);
/// Sampling period of the throughput series.
const SAMPLE: Duration = Duration::from_millis(200);
/// Ids per `ANY($1)` query.
const CHUNK: usize = 5000;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Sizes {
    mode: &'static str,
    /// Calls of the drain storm (broker and service drains).
    calls: usize,
    /// Messages of the drain storm given to the seed baseline, and its time limit.
    seed_messages: usize,
    seed_max: Duration,
    /// Steady state: target events/s and publishing time.
    steady_rate: f64,
    steady_secs: f64,
    /// Open calls for the memory measurement.
    open_calls: usize,
    /// Service drains, each between two broker drains (broker, service, broker, service, ...,
    /// broker): the drain ratio is the median of the rounds' ratios.
    rounds: usize,
}

impl Sizes {
    fn from_args() -> anyhow::Result<Sizes> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut sizes = if args.iter().any(|a| a == "--quick") {
            Sizes {
                mode: "quick",
                calls: 2_000,
                seed_messages: 2_000,
                seed_max: Duration::from_secs(20),
                steady_rate: 5_000.0,
                steady_secs: 5.0,
                open_calls: 20_000,
                rounds: 1,
            }
        } else {
            Sizes {
                mode: "default",
                calls: 40_000,
                seed_messages: 20_000,
                seed_max: Duration::from_secs(60),
                steady_rate: 20_000.0,
                steady_secs: 30.0,
                open_calls: 100_000,
                rounds: 1,
            }
        };
        if args.iter().any(|a| a == "--full") {
            sizes.mode = if sizes.mode == "quick" {
                "quick+full"
            } else {
                "full"
            };
            sizes.open_calls = 1_000_000;
            sizes.rounds = 3;
        }
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> anyhow::Result<f64> {
                it.next()
                    .with_context(|| format!("{name} needs a value"))?
                    .parse::<f64>()
                    .with_context(|| format!("{name}: not a number"))
            };
            match a.as_str() {
                "--quick" | "--full" | "--bench" => {}
                "--calls" => sizes.calls = value(a)? as usize,
                "--seed-messages" => sizes.seed_messages = value(a)? as usize,
                "--steady-rate" => sizes.steady_rate = value(a)?,
                "--steady-secs" => sizes.steady_secs = value(a)?,
                "--open-calls" => sizes.open_calls = value(a)? as usize,
                "--rounds" => sizes.rounds = value(a)? as usize,
                other => eprintln!("storm bench: ignoring argument {other:?}"),
            }
        }
        if sizes.calls == 0
            || sizes.open_calls == 0
            || sizes.rounds == 0
            || sizes.steady_rate <= 0.0
        {
            bail!("--calls, --open-calls, --rounds and --steady-rate must be above 0");
        }
        Ok(sizes)
    }
}

// ---------------------------------------------------------------------------------------------
// Progress

static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

macro_rules! progress {
    ($($arg:tt)*) => {{
        let t = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
        println!("[storm bench {t:>6.1}s] {}", format!($($arg)*));
    }};
}

// ---------------------------------------------------------------------------------------------
// Environment: database, names, the service as a child

fn admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn amqp_url() -> String {
    std::env::var("TEST_RABBITMQ_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Env {
    id: String,
    /// Every database the bench created, the current one last (removed at the end).
    db_names: Vec<String>,
    db_url: String,
    settings: Settings,
    /// Exchange/queue pairs the bench declared (removed at the end).
    exchanges: Vec<String>,
    queues: Vec<String>,
}

impl Env {
    async fn create() -> anyhow::Result<Env> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let db_name = format!("cdr_bench_{id}");
        let db_url = create_database(&db_name).await?;
        // The `CDR__*` variables the service inherits count for the bench's own side too (the
        // queue arguments of its drains, say).
        let mut s = Settings::load_from(
            None,
            std::env::vars().filter(|(k, _)| k.starts_with("CDR__")),
        )?;
        s.database.url = db_url.clone();
        s.amqp.url = amqp_url();
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
    async fn next_round(&mut self, round: usize) -> anyhow::Result<()> {
        let db_name = format!("cdr_bench_{}_r{round}", self.id);
        self.db_url = create_database(&db_name).await?;
        self.db_names.push(db_name);
        let s = &mut self.settings;
        s.database.url = self.db_url.clone();
        s.amqp.exchange = format!("cdr_bench.{}.events.r{round}", self.id);
        s.amqp.queue = format!("cdr_bench.{}.queue.r{round}", self.id);
        Ok(())
    }

    fn name(&self, what: &str) -> String {
        format!("cdr_bench.{}.{what}", self.id)
    }

    /// Declares a durable topic exchange and a durable queue bound to it with `#`, with the
    /// arguments the service declares its own queue with.
    async fn declare(&mut self, exchange: &str, queue: &str) -> anyhow::Result<()> {
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
            cdr_service::ingest::queue_arguments(&self.settings.amqp),
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

    async fn delete_queue(&self, queue: &str) {
        if let Ok(conn) = Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            && let Ok(ch) = conn.create_channel().await
        {
            let _ = ch
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
            let _ = conn.close(200, "bye".into()).await;
        }
    }

    async fn cleanup(&self) {
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

/// The release binary as a child process; killed if dropped while running.
struct Service {
    child: Child,
    port: u16,
    /// From spawn to /health/ready answering 200.
    startup: Duration,
}

impl Service {
    async fn start(env: &Env) -> anyhow::Result<Service> {
        Self::start_with(env, &[]).await
    }

    /// With extra environment variables (setting overrides).
    async fn start_with(env: &Env, vars: &[(&str, String)]) -> anyhow::Result<Service> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let s = &env.settings;
        let spawned = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_cdr-service"))
            .arg("run")
            .env("POSTGRES_URL", &s.database.url)
            .env("RABBITMQ_URL", &s.amqp.url)
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
        let url = service.url("/health/ready");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(reqwest::get(&url).await, Ok(r) if r.status().is_success()) {
                break;
            }
            if let Some(status) = service.child.try_wait()? {
                bail!("cdr-service exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("cdr-service not ready within 60s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        service.startup = spawned.elapsed();
        Ok(service)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM and wait (SIGKILL after 60 s).
    async fn stop(mut self) -> anyhow::Result<()> {
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

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The service's own counters at this moment (`/metrics`), by series (labels included).
async fn scrape(service: &Service) -> HashMap<String, f64> {
    let Ok(resp) = reqwest::get(service.url("/metrics")).await else {
        return HashMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.trim().parse::<f64>().ok()?))
        })
        .collect()
}

/// The log and record writes of the service, from its histograms, over `window` seconds.
fn write_stats(m: &HashMap<String, f64>, window: f64) -> Value {
    let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let log_batches = g("cdr_log_batch_size_count");
    let rec_batches = g("cdr_record_batch_size_count");
    json!({
        // The async runtime's worker threads, as the service reported them.
        "runtime_worker_threads": g("cdr_runtime_worker_threads"),
        "log_batches": log_batches,
        "log_batch_mean_events": round(per(g("cdr_log_batch_size_sum"), log_batches), 1),
        "log_write_mean_ms": round(per(g("cdr_log_write_duration_seconds_sum"), g("cdr_log_write_duration_seconds_count")) * 1000.0, 2),
        // Share of the window the ingest loop spent waiting for log commits (it commits one
        // batch at a time).
        "log_write_busy_share": round(per(g("cdr_log_write_duration_seconds_sum"), window), 3),
        "record_batches": rec_batches,
        "record_batch_mean_rows": round(per(g("cdr_record_batch_size_sum"), rec_batches), 1),
        "record_write_mean_ms": round(per(g("cdr_record_write_duration_seconds_sum"), g("cdr_record_write_duration_seconds_count")) * 1000.0, 2),
        "record_write_busy_share": round(per(g("cdr_record_write_duration_seconds_sum"), window), 3),
        "duplicates_dropped": g("cdr_duplicates_dropped_total"),
        "window_seconds": round(window, 3),
    })
}

// ---------------------------------------------------------------------------------------------
// /proc readings

/// Resident set size of a process, in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// CPU ticks (user + system) of every process, by pid, with its command name.
fn cpu_snapshot() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        // After the command: state (field 3) ... utime (14), stime (15).
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(pid, (comm, ticks(11) + ticks(12)));
    }
    out
}

/// Total CPU ticks of the machine (all states), idle and iowait ones, from /proc/stat.
/// The machine's CPU time so far, from /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
struct MachineTicks {
    total: u64,
    idle: u64,
    iowait: u64,
    /// Time the hypervisor gave this machine's CPUs to others: on a shared host it is the
    /// noise in every rate measured here.
    steal: u64,
}

fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return MachineTicks::default();
    };
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user, so the total stops at steal.
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    MachineTicks {
        total: v.iter().take(8).sum(),
        idle: at(3),
        iowait: at(4),
        steal: at(7),
    }
}

/// CPU used between two snapshots, in cores (CPU seconds per wall second), by group.
fn cpu_shares(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    machine: (MachineTicks, MachineTicks),
    wall: Duration,
    service_pid: u32,
) -> Value {
    // USER_HZ: 100 on every Linux ABI this runs on.
    const HZ: f64 = 100.0;
    let mut groups: HashMap<&str, u64> = HashMap::new();
    let me = std::process::id();
    for (pid, (comm, ticks)) in after {
        let used = ticks.saturating_sub(before.get(pid).map_or(0, |b| b.1));
        let group = if *pid == service_pid {
            "service"
        } else if *pid == me {
            "bench"
        } else if comm == "postgres" {
            "postgres"
        } else if comm == "beam.smp" || comm == "erl_child_setup" || comm == "epmd" {
            "rabbitmq"
        } else {
            "other"
        };
        *groups.entry(group).or_default() += used;
    }
    let secs = wall.as_secs_f64().max(1e-9);
    let cores = |g: &str| groups.get(g).copied().unwrap_or(0) as f64 / HZ / secs;
    let (m0, m1) = machine;
    let total = m1.total.saturating_sub(m0.total).max(1) as f64;
    let idle = m1.idle.saturating_sub(m0.idle) as f64;
    let iowait = m1.iowait.saturating_sub(m0.iowait) as f64;
    let steal = m1.steal.saturating_sub(m0.steal) as f64;
    json!({
        "wall_seconds": secs,
        "cores_used": {
            "service": round(cores("service"), 2),
            "postgres": round(cores("postgres"), 2),
            "rabbitmq": round(cores("rabbitmq"), 2),
            "bench": round(cores("bench"), 2),
            "other": round(cores("other"), 2),
        },
        // Busy: running something of this machine's (not idle, not waiting for I/O, not
        // stolen by the hypervisor).
        "machine_busy_share": round(1.0 - (idle + iowait + steal) / total, 3),
        "machine_iowait_share": round(iowait / total, 3),
        "machine_steal_share": round(steal / total, 3),
        "nproc": nproc(),
    })
}

/// CPU seconds one group spent over a `cpu_shares` window.
fn cpu_seconds(cpu: &Value, group: &str) -> f64 {
    cpu["cores_used"][group].as_f64().unwrap_or(0.0) * cpu["wall_seconds"].as_f64().unwrap_or(0.0)
}

/// The CPU budget of one round: what the service, PostgreSQL and RabbitMQ spent in the service
/// drain (from process start to the last record), per event, and what RabbitMQ spent per event
/// in the broker drains around it.
///
/// `cpu_bound_ratio` is the ratio this machine would allow if its cores had been busy all
/// through the service drain with exactly that work, in any order and with no start-up or
/// linger: the broker drains' mean time against (CPU of the three) / cores. The measured ratio
/// can only come close to it; when it is below a target, no scheduling or overlap reaches the
/// target, only less CPU per event.
fn cpu_budget(service: &ServiceDrain, before: &BrokerDrain, after: &BrokerDrain) -> Value {
    let events = service.drain.events.max(1) as f64;
    let per_event_us = |seconds: f64| round(seconds * 1e6 / events, 1);
    let whole = &service.cpu_whole;
    let (svc, pg, rmq) = (
        cpu_seconds(whole, "service"),
        cpu_seconds(whole, "postgres"),
        cpu_seconds(whole, "rabbitmq"),
    );
    let broker_rmq =
        (cpu_seconds(&before.cpu, "rabbitmq") + cpu_seconds(&after.cpu, "rabbitmq")) / 2.0;
    let broker_seconds = (before.drain.seconds + after.drain.seconds) / 2.0;
    let cores = whole["nproc"].as_u64().unwrap_or(1).max(1) as f64;
    let busiest = (svc + pg + rmq) / cores;
    json!({
        "service_cpu_seconds": round(svc, 2),
        "postgres_cpu_seconds": round(pg, 2),
        "rabbitmq_cpu_seconds": round(rmq, 2),
        "service_cpu_us_per_event": per_event_us(svc),
        "postgres_cpu_us_per_event": per_event_us(pg),
        "rabbitmq_cpu_us_per_event": per_event_us(rmq),
        "broker_drain_rabbitmq_cpu_us_per_event": per_event_us(broker_rmq),
        "cpu_bound_ratio": json_f(broker_seconds / busiest.max(1e-9), 3),
    })
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mem_total_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

// ---------------------------------------------------------------------------------------------
// Sampling

/// Cumulative counts over time: (seconds since the phase started, count).
type Samples = Vec<(f64, u64)>;

/// A chart's line: its label, (x, y) points and colour.
type Line = (String, Vec<(f64, f64)>, plotters::style::RGBColor);

/// Samples an atomic counter every `SAMPLE` until the token is cancelled.
fn sample_counter(
    counter: Arc<AtomicU64>,
    started: Instant,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut out = vec![(0.0, 0)];
        let mut tick = tokio::time::interval(SAMPLE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => {
                    out.push((started.elapsed().as_secs_f64(), counter.load(Ordering::Relaxed)));
                    return out;
                }
            }
            out.push((
                started.elapsed().as_secs_f64(),
                counter.load(Ordering::Relaxed),
            ));
        }
    })
}

/// Times a drain by one of the bench's own consumers: the wall time, the CPU of every process
/// over it, and the consumer's progress counter every `SAMPLE`.
struct DrainClock {
    counter: Arc<AtomicU64>,
    cpu_before: (HashMap<u32, (String, u64)>, MachineTicks),
    started: Instant,
    stop: tokio_util::sync::CancellationToken,
    sampler: tokio::task::JoinHandle<Samples>,
}

impl DrainClock {
    fn start() -> DrainClock {
        let counter = Arc::new(AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let cpu_before = (cpu_snapshot(), machine_ticks());
        let started = Instant::now();
        let sampler = sample_counter(counter.clone(), started, stop.clone());
        DrainClock {
            counter,
            cpu_before,
            started,
            stop,
            sampler,
        }
    }

    /// The consumer's progress, in events.
    fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    /// Stops the clock now: the drain of `events`, and the CPU shares over it.
    async fn stop(self, events: usize) -> anyhow::Result<(Drain, Value)> {
        let elapsed = self.started.elapsed();
        let cpu = cpu_shares(
            &self.cpu_before.0,
            &cpu_snapshot(),
            (self.cpu_before.1, machine_ticks()),
            elapsed,
            0,
        );
        self.stop.cancel();
        let samples = self.sampler.await?;
        let drain = Drain {
            events,
            seconds: elapsed.as_secs_f64(),
            samples,
        };
        Ok((drain, cpu))
    }
}

/// Rates (per second) over a trailing window of `window` seconds.
fn rate_series(points: &[(f64, u64)], window: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut j = 0;
    for i in 0..points.len() {
        while j < i && points[i].0 - points[j].0 > window + 1e-6 {
            j += 1;
        }
        let dt = points[i].0 - points[j].0;
        let rate = if i == j || dt <= 0.0 {
            0.0
        } else {
            points[i].1.saturating_sub(points[j].1) as f64 / dt
        };
        out.push((points[i].0, rate));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Storms

fn storm_options(calls: usize, seed: u64) -> StormOptions {
    StormOptions {
        calls,
        seed,
        late: 0.0,
        poison: 0.0,
        missing_end: 0.0,
        verify_timeout: Duration::from_secs(120),
        ..StormOptions::default()
    }
}

fn limits(settings: &Settings) -> Limits {
    cdr_storm::limits(settings)
}

/// Publishes a backlog with the storm publisher; returns (messages, seconds).
async fn publish_backlog(exchange: &str, msgs: &[Message], label: &str) -> anyhow::Result<f64> {
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

// ---------------------------------------------------------------------------------------------
// 1. Broker drain

struct Drain {
    events: usize,
    seconds: f64,
    samples: Samples,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// A consumer on `queue` with the service's prefetch and manual acks, as both bench consumers
/// use it; the connection is returned so the caller closes it.
async fn bench_consumer(queue: &str, tag: &str) -> anyhow::Result<(Connection, lapin::Consumer)> {
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

/// The broker's limit: the backlog drained by a consumer that does nothing. `run` tells the
/// runs apart (the bench drains the broker before and after the service).
async fn broker_drain(env: &mut Env, storm: &Storm, run: u32) -> anyhow::Result<BrokerDrain> {
    let label = format!("broker drain {run}");
    let exchange = env.name(&format!("raw{run}"));
    let queue = env.name(&format!("raw{run}.queue"));
    env.declare(&exchange, &queue).await?;
    progress!(
        "{label}: publishing the backlog ({} messages) into {queue}",
        storm.main.len()
    );
    let publish_rate = publish_backlog(&exchange, &storm.main, &format!("{label} backlog")).await?;

    let total = storm.main.len() as u64;
    let (conn, mut consumer) = bench_consumer(&queue, "cdr-bench-drain").await?;
    let clock = DrainClock::start();
    let counter = clock.counter();
    let mut n = 0u64;
    let mut pending_ack: Option<tokio::task::JoinHandle<Result<bool, lapin::Error>>> = None;
    while n < total {
        let delivery = consumer
            .next()
            .await
            .context("the consumer ended early")??;
        n += 1;
        counter.store(n, Ordering::Relaxed);
        // Acks as the service does: `multiple`, well inside the prefetch window, without
        // waiting for lapin to write the frame before taking the next delivery (the previous
        // ack is settled first, so that acks leave in order).
        if n.is_multiple_of(500) || n == total {
            if let Some(previous) = pending_ack.take() {
                previous.await??;
            }
            let acker = delivery.acker.clone();
            pending_ack = Some(tokio::spawn(async move {
                acker.ack(BasicAckOptions { multiple: true }).await
            }));
        }
    }
    if let Some(last) = pending_ack.take() {
        last.await??;
    }
    let (drain, cpu) = clock.stop(total as usize).await?;
    let _ = conn.close(200, "bye".into()).await;
    env.delete_queue(&queue).await;
    progress!(
        "{label}: {} messages consumed and acked in {:.2}s: {:.0} events/s; cpu {}, {:.0}% stolen",
        drain.events,
        drain.seconds,
        drain.rate(),
        cpu["cores_used"],
        cpu["machine_steal_share"].as_f64().unwrap_or(f64::NAN) * 100.0
    );
    Ok(BrokerDrain {
        drain,
        publish_rate,
        cpu,
    })
}

struct BrokerDrain {
    drain: Drain,
    publish_rate: f64,
    cpu: Value,
}

// ---------------------------------------------------------------------------------------------
// 1b. Log floor

/// The least a consumer that keeps the first guarantee (nothing acked before its raw event is
/// committed) does, timed as the broker drains are: decode each delivery, append the raw events
/// in batches with the service's own event log (the same statement, `open_calls` included, the
/// same batch size and age), ack `multiple` after each commit, the next batch filling while one
/// commits. No actors, no records, dialog turns or usage lines, no linger: the service's ack
/// path alone. Whatever a service does after the log only adds to it, so the floor's rate is
/// above what any service built on this log could reach on this machine.
///
/// It runs on a runtime of its own with one worker, as the service does by default on two
/// cores (`runtime.worker_threads`), rather than on the bench's.
async fn log_floor(env: &mut Env, storm: &Storm, round: usize) -> anyhow::Result<(Drain, Value)> {
    const LABEL: &str = "log floor";
    let db_name = format!("cdr_bench_{}_floor{round}", env.id);
    let db_url = create_database(&db_name).await?;
    env.db_names.push(db_name);
    let (exchange, queue) = (
        env.name(&format!("floor{round}")),
        env.name(&format!("floor{round}.queue")),
    );
    env.declare(&exchange, &queue).await?;
    progress!(
        "{LABEL}: publishing the backlog ({} messages) into {queue}",
        storm.main.len()
    );
    publish_backlog(&exchange, &storm.main, &format!("{LABEL} backlog")).await?;

    let (settings, total) = (env.settings.clone(), storm.main.len() as u64);
    let (done, result) = tokio::sync::oneshot::channel();
    let consumer_queue = queue.clone();
    std::thread::spawn(move || {
        let drained = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async move {
                    tokio::spawn(floor_drain(LABEL, db_url, consumer_queue, settings, total))
                        .await?
                })
            });
        let _ = done.send(drained);
    });
    let drained = result.await.context("the log floor's thread ended")?;
    env.delete_queue(&queue).await;
    let (drain, cpu) = drained?;
    progress!(
        "{LABEL}: {} messages logged and acked in {:.2}s: {:.0} events/s; cpu {}",
        drain.events,
        drain.seconds,
        drain.rate(),
        cpu["cores_used"]
    );
    Ok((drain, cpu))
}

/// The log floor's consumer (see `log_floor`), on the floor's own runtime.
async fn floor_drain(
    label: &'static str,
    db_url: String,
    queue: String,
    settings: Settings,
    total: u64,
) -> anyhow::Result<(Drain, Value)> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await?;
    cdr_service::db::migrate(&pool).await?;
    let ingest = &settings.ingest;
    let (batch_size, max_age) = (ingest.batch_size.max(1), ingest.batch_max_age);
    let log = cdr_service::log::EventLog::remembering(pool.clone(), ingest.remembered_messages);
    let limits = limits(&settings);
    let (conn, mut consumer) = bench_consumer(&queue, "cdr-bench-floor").await?;
    // Counts events committed (their acks on the way).
    let clock = DrainClock::start();
    // As in the service (`ingest`): a one-slot hand-off. The open batch is due once full or
    // `batch_max_age` old, and goes to the committer when the slot is free; until then it keeps
    // growing. The committer acks `multiple`, in order, while it commits the next batch.
    type Batch = (Vec<event::Envelope>, lapin::Acker);
    let (handoff, mut batches) = tokio::sync::mpsc::channel::<Batch>(1);
    let committer = tokio::spawn({
        let counter = clock.counter();
        async move {
            let mut done = 0u64;
            let mut acking: Option<tokio::task::JoinHandle<Result<bool, lapin::Error>>> = None;
            while let Some((batch, acker)) = batches.recv().await {
                log.append(&batch).await?;
                if let Some(previous) = acking.take() {
                    previous.await??;
                }
                acking = Some(tokio::spawn(async move {
                    acker.ack(BasicAckOptions { multiple: true }).await
                }));
                done += batch.len() as u64;
                counter.store(done, Ordering::Relaxed);
            }
            if let Some(last) = acking.take() {
                last.await??;
            }
            anyhow::Ok(done)
        }
    });
    let mut received = 0u64;
    let mut batch = Vec::with_capacity(batch_size);
    let mut last: Option<lapin::Acker> = None;
    let mut due = false;
    let batch_timer = tokio::time::sleep(max_age);
    tokio::pin!(batch_timer);
    while received < total || !batch.is_empty() {
        tokio::select! {
            permit = handoff.reserve(), if due => {
                // Closed: the committer failed, and says why below.
                let Ok(permit) = permit else { break };
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                permit.send((full, last.take().context("a batch without its last delivery")?));
                due = false;
            }
            () = &mut batch_timer, if !batch.is_empty() && !due => due = true,
            delivery = consumer.next(), if received < total && batch.len() < batch_size => {
                let delivery = delivery.context("the consumer ended early")??;
                received += 1;
                let envelope = event::decode(&delivery.data, Utc::now(), limits)
                    .map_err(|r| anyhow::anyhow!("{label}: a storm message was rejected: {r}"))?;
                if batch.is_empty() {
                    batch_timer.as_mut().reset(tokio::time::Instant::now() + max_age);
                }
                batch.push(envelope);
                last = Some(delivery.acker);
                due |= batch.len() >= batch_size || received == total;
            }
        }
    }
    drop(handoff);
    let committed = committer.await??;
    // The consumer is the bench itself: its CPU is the "bench" group's.
    let timed = clock.stop(committed as usize).await?;
    if committed != total {
        bail!("{label}: {committed} of {total} events committed");
    }
    let _ = conn.close(200, "bye".into()).await;
    pool.close().await;
    Ok(timed)
}

// ---------------------------------------------------------------------------------------------
// 2. Service drain

struct ServiceDrain {
    drain: Drain,
    startup: f64,
    /// From the first to the last logged event (the sequence of call_events).
    ingest_seconds: f64,
    records_verified: usize,
    records_mismatched: usize,
    records_missing: usize,
    record_samples: Samples,
    /// CPU in the ingest window, and from process start to the last record.
    cpu: Value,
    cpu_whole: Value,
    /// The service's log and record writes (from its metrics).
    writes: Value,
    publish_rate: f64,
}

/// (events logged so far by the sequence, rows in calls, sum of their event counts).
/// The last event id handed out by the log.
async fn log_sequence(pool: &PgPool) -> anyhow::Result<u64> {
    let seq: i64 = sqlx::query_scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM call_events_event_id_seq",
    )
    .fetch_one(pool)
    .await?;
    Ok(seq as u64)
}

/// Records the service has written (every status), by its own counter.
async fn records_written(service: &Service) -> u64 {
    scrape(service)
        .await
        .iter()
        .filter(|(k, _)| k.starts_with("cdr_records_written_total"))
        .map(|(_, v)| *v)
        .sum::<f64>() as u64
}

async fn db_progress(pool: &PgPool) -> anyhow::Result<(u64, u64, u64)> {
    let (seq, rows, events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT CASE WHEN is_called THEN last_value ELSE 0 END \
                 FROM call_events_event_id_seq), \
                count(*), coalesce(sum(event_count), 0)::bigint FROM calls",
    )
    .fetch_one(pool)
    .await?;
    Ok((seq as u64, rows as u64, events as u64))
}

/// Seconds from `started_at` to the transaction of the last record written, if any.
async fn last_record_seconds(
    pool: &PgPool,
    started_at: DateTime<Utc>,
) -> anyhow::Result<Option<f64>> {
    let last: Option<DateTime<Utc>> = sqlx::query_scalar("SELECT max(updated_at) FROM calls")
        .fetch_one(pool)
        .await?;
    Ok(last.map(|t| (t - started_at).as_seconds_f64()))
}

async fn service_drain(
    env: &mut Env,
    storm: &Storm,
    o: &StormOptions,
) -> anyhow::Result<ServiceDrain> {
    let s = env.settings.clone();
    env.declare(&s.amqp.exchange, &s.amqp.queue).await?;
    // The schema first, so the verifier can read `calls` before the service starts (the
    // service's own migration then finds nothing to do).
    let pool = PgPool::connect(&env.db_url).await?;
    cdr_service::db::migrate(&pool).await?;
    let verifier = Verifier::prepare(&s, storm).await?;
    progress!(
        "service drain: publishing the backlog ({} messages) into {}",
        storm.main.len(),
        s.amqp.queue
    );
    let publish_started_at = Utc::now();
    let publish_rate = publish_backlog(&s.amqp.exchange, &storm.main, "service backlog").await?;
    let published_at = Instant::now();

    let calls = storm.calls.len() as u64;
    let distinct: u64 = storm.calls.iter().map(|c| c.distinct_events as u64).sum();
    let cpu_before = cpu_snapshot();
    let machine_before = machine_ticks();
    let started = Instant::now();
    let started_at = Utc::now();
    progress!("service drain: starting the release binary");
    let service = Service::start(env).await?;
    progress!(
        "service drain: ready {:.2}s after start; draining",
        service.startup.as_secs_f64()
    );
    let mut events_samples: Samples = vec![(0.0, 0)];
    let mut record_samples: Samples = vec![(0.0, 0)];
    let mut last_line = Instant::now();
    let deadline = started + Duration::from_secs(600);
    // CPU of every process at each sample, to tell what the ingest window was bound by.
    let mut cpu_samples = vec![(0.0, cpu_before, machine_before)];
    let polled = loop {
        // Cheap while draining (the log's sequence, the service's record counter), so that
        // measuring does not slow the database down; `calls` is read once the counter says
        // every record may be there.
        let seq = log_sequence(&pool).await?;
        let written = records_written(&service).await;
        let t = started.elapsed().as_secs_f64();
        events_samples.push((t, seq));
        record_samples.push((t, written.min(calls)));
        cpu_samples.push((t, cpu_snapshot(), machine_ticks()));
        if written >= calls {
            let (_, rows, folded) = db_progress(&pool).await?;
            if rows >= calls && folded >= distinct {
                break t;
            }
        }
        if Instant::now() > deadline {
            progress!("service drain: not every record after 10 minutes; verifying what is there");
            break t;
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("service drain: {seq} events logged, {written}/{calls} records written");
            last_line = Instant::now();
        }
        tokio::time::sleep(SAMPLE).await;
    };
    // The drain ends with the last record's transaction (`updated_at`, as the flush latency
    // counts it), not at the poll that saw it: the poll comes up to `SAMPLE` later, and the
    // broker drains are timed to their last ack, not to a poll.
    let seconds = last_record_seconds(&pool, started_at)
        .await?
        .map_or(polled, |s| s.clamp(0.0, polled));
    let final_seq = events_samples.last().map_or(0, |p| p.1);
    // The ingest window: from the last sample before any event was logged to the first one
    // with every event logged.
    let i_first = events_samples
        .iter()
        .position(|p| p.1 > 0)
        .map_or(0, |i| i.saturating_sub(1));
    let i_last = events_samples
        .iter()
        .position(|p| p.1 >= final_seq)
        .unwrap_or(events_samples.len() - 1)
        .max(i_first);
    let (first, last) = (events_samples[i_first].0, events_samples[i_last].0);
    let shares = |a: usize, b: usize| {
        let (ta, ca, ma) = &cpu_samples[a];
        let (tb, cb, mb) = &cpu_samples[b];
        cpu_shares(
            ca,
            cb,
            (*ma, *mb),
            Duration::from_secs_f64((tb - ta).max(1e-3)),
            service.pid(),
        )
    };
    let cpu = shares(i_first, i_last);
    let cpu_whole = shares(0, cpu_samples.len() - 1);
    progress!(
        "service drain: every record present {seconds:.2}s after the process started (seen by the poll at {polled:.2}s); verifying"
    );
    let outcome = verifier
        .run(&s, storm, o, publish_started_at, published_at)
        .await?;
    outcome.print(5);
    let writes = write_stats(&scrape(&service).await, last - first);
    progress!("service drain: service's own writes: {writes}");
    let startup = service.startup.as_secs_f64();
    service.stop().await?;
    pool.close().await;
    let drain = Drain {
        events: storm.main.len(),
        seconds,
        samples: events_samples,
    };
    progress!(
        "service drain: {} messages in {:.2}s from process start: {:.0} events/s; cpu {}",
        drain.events,
        drain.seconds,
        drain.rate(),
        cpu["cores_used"]
    );
    Ok(ServiceDrain {
        drain,
        startup,
        ingest_seconds: (last - first).max(SAMPLE.as_secs_f64()),
        records_verified: outcome.correct,
        records_mismatched: outcome.mismatches.len(),
        records_missing: outcome.missing.len(),
        record_samples,
        cpu,
        cpu_whole,
        writes,
        publish_rate,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Seed baseline: the original consumer

async fn seed_tables(db_url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(db_url).await?;
    for sql in [
        "CREATE SCHEMA seed",
        "CREATE TABLE seed.call_events (LIKE public.call_events INCLUDING ALL)",
        "CREATE TABLE seed.calls (LIKE public.calls INCLUDING ALL)",
    ] {
        sqlx::query(sql).execute(&mut conn).await?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// One event as the original service handled it: the raw event, then the row's column for
/// that event type, each statement its own transaction.
async fn seed_handle(conn: &mut PgConnection, e: &event::Envelope) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO seed.call_events (call_id, event_type, event_timestamp, payload, received_at, \
                                       trace_id, timestamp_inferred) \
         VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)",
    )
    .bind(&e.call_id)
    .bind(&e.event_type)
    .bind(e.timestamp)
    .bind(&e.body)
    .bind(e.received_at)
    .bind(&e.trace_id)
    .bind(e.timestamp_inferred)
    .execute(&mut *conn)
    .await?;
    let q = match &e.kind {
        EventKind::Started(st) => sqlx::query(
            "INSERT INTO seed.calls (call_id, start_time, status, caller_number, callee_number) \
             VALUES ($1, $2, 'STARTED', $3, $4) \
             ON CONFLICT (call_id) DO UPDATE SET start_time = EXCLUDED.start_time, \
                 caller_number = EXCLUDED.caller_number, callee_number = EXCLUDED.callee_number, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(e.timestamp)
        .bind(st.caller_number.as_deref().map(|s| truncate(s, 255)))
        .bind(st.callee_number.as_deref().map(|s| truncate(s, 255))),
        EventKind::Answered => sqlx::query(
            "INSERT INTO seed.calls (call_id, answer_time, status) VALUES ($1, $2, 'ANSWERED') \
             ON CONFLICT (call_id) DO UPDATE SET answer_time = EXCLUDED.answer_time, \
                 status = 'ANSWERED', updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(e.timestamp),
        EventKind::Ended { .. } => sqlx::query(
            "INSERT INTO seed.calls AS c (call_id, end_time, status) VALUES ($1, $2, 'COMPLETED') \
             ON CONFLICT (call_id) DO UPDATE SET end_time = EXCLUDED.end_time, \
                 status = 'COMPLETED', \
                 duration_seconds = EXTRACT(EPOCH FROM EXCLUDED.end_time - c.start_time)::int, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(e.timestamp),
        EventKind::RecordingAvailable { uri } => sqlx::query(
            "INSERT INTO seed.calls (call_id, recording_url) VALUES ($1, $2) \
             ON CONFLICT (call_id) DO UPDATE SET recording_url = EXCLUDED.recording_url, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(uri.clone()),
        EventKind::Identified(id) => sqlx::query(
            "INSERT INTO seed.calls (call_id, user_id, contact_id, tenant_id) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (call_id) DO UPDATE SET user_id = EXCLUDED.user_id, \
                 contact_id = EXCLUDED.contact_id, tenant_id = EXCLUDED.tenant_id, \
                 updated_at = now()",
        )
        .bind(&e.call_id)
        .bind(id.user_id)
        .bind(id.contact_id)
        .bind(id.tenant_id.as_deref().map(|s| truncate(s, 255))),
        _ => sqlx::query(
            "INSERT INTO seed.calls (call_id) VALUES ($1) \
             ON CONFLICT (call_id) DO UPDATE SET updated_at = now()",
        )
        .bind(&e.call_id),
    };
    q.execute(&mut *conn).await?;
    Ok(())
}

fn truncate(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

async fn seed_baseline(
    env: &mut Env,
    storm: &Storm,
    messages: usize,
    max: Duration,
) -> anyhow::Result<Drain> {
    seed_tables(&env.db_url).await?;
    let exchange = env.name("seed");
    let queue = env.name("seed.queue");
    env.declare(&exchange, &queue).await?;
    let slice = &storm.main[..messages.min(storm.main.len())];
    progress!(
        "seed baseline: publishing {} messages into {queue}",
        slice.len()
    );
    publish_backlog(&exchange, slice, "seed backlog").await?;

    let limits = limits(&env.settings);
    let mut db = PgConnection::connect(&env.db_url).await?;
    let (conn, mut consumer) = bench_consumer(&queue, "cdr-bench-seed").await?;
    let counter = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let sampler = sample_counter(counter.clone(), started, stop.clone());
    let mut n = 0u64;
    let mut last_line = Instant::now();
    while (n as usize) < slice.len() && started.elapsed() < max {
        let delivery = consumer
            .next()
            .await
            .context("the consumer ended early")??;
        if let Ok(e) = event::decode(&delivery.data, Utc::now(), limits) {
            seed_handle(&mut db, &e).await?;
        }
        delivery.acker.ack(BasicAckOptions::default()).await?;
        n += 1;
        counter.store(n, Ordering::Relaxed);
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("seed baseline: {n}/{} events", slice.len());
            last_line = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let samples = sampler.await?;
    let _ = conn.close(200, "bye".into()).await;
    let _ = db.close().await;
    env.delete_queue(&queue).await;
    let drain = Drain {
        events: n as usize,
        seconds,
        samples,
    };
    progress!(
        "seed baseline: {} events in {:.2}s: {:.0} events/s{}",
        drain.events,
        drain.seconds,
        drain.rate(),
        if drain.events < slice.len() {
            " (stopped at its time limit)"
        } else {
            ""
        }
    );
    Ok(drain)
}

// ---------------------------------------------------------------------------------------------
// 4. Steady state

struct Steady {
    target: f64,
    messages: usize,
    publish_seconds: f64,
    /// Flush latencies, ms, one per ended call.
    latencies: Vec<f64>,
    /// Of each: from publishing `call.ended` to the service receiving it (its stored
    /// `received_at`), and from there to the row, ms; sorted each.
    transit: Vec<f64>,
    in_service: Vec<f64>,
    calls_waited: usize,
    calls_missing: usize,
    max_queue_depth: u32,
    queue_depth_at_end: u32,
    published: Samples,
    logged: Samples,
    /// CPU while publishing, and the service's writes.
    cpu: Value,
    writes: Value,
}

/// Publishes `msgs` at `rate` messages per second (as fast as confirms allow when behind),
/// calling `mark(i)` right after message `i` is handed to the broker.
async fn publish_paced(
    exchange: &str,
    msgs: &[Message],
    rate: f64,
    counter: &AtomicU64,
    mut mark: impl FnMut(usize),
) -> anyhow::Result<Duration> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = tokio::time::Instant::now();
    let mut pending = VecDeque::with_capacity(IN_FLIGHT);
    let settle = |c: Confirmation| match c {
        Confirmation::Nack(_) => bail!("the broker nacked a message"),
        _ => Ok(()),
    };
    for (i, m) in msgs.iter().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due > tokio::time::Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due).await;
        }
        while pending.len() >= IN_FLIGHT {
            let confirm: lapin::PublisherConfirm = pending.pop_front().expect("a pending confirm");
            settle(confirm.await?)?;
        }
        let mut properties = BasicProperties::default().with_delivery_mode(2);
        if m.content_type {
            properties = properties.with_content_type("application/json".into());
        }
        let confirm = ch
            .basic_publish(
                exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                properties,
            )
            .await?;
        mark(i);
        counter.store(i as u64 + 1, Ordering::Relaxed);
        pending.push_back(confirm);
    }
    while let Some(confirm) = pending.pop_front() {
        settle(confirm.await?)?;
    }
    let elapsed = started.elapsed();
    let _ = conn.close(200, "bye".into()).await;
    Ok(elapsed)
}

/// A call's row as the steady state reads it: id, events folded, `updated_at`, and when the
/// service received the call's first `call.ended`.
type EndedRow = (String, i32, DateTime<Utc>, Option<DateTime<Utc>>);

async fn steady_state(
    env: &Env,
    rate: f64,
    secs: f64,
    events_per_call: f64,
) -> anyhow::Result<(Steady, StormOptions)> {
    let s = env.settings.clone();
    let calls = ((rate * secs) / events_per_call).ceil().max(1.0) as usize;
    let o = storm_options(calls, 2);
    progress!("steady state: generating {calls} calls");
    let storm = generate(&o, limits(&s));
    // Which message is each call's first `call.ended`.
    let limits = limits(&s);
    let now = Utc::now();
    let ends: Vec<Option<u32>> = storm
        .main
        .iter()
        .map(|m| match m.kind {
            MessageKind::Event { call } => match event::decode(&m.body, now, limits) {
                Ok(e) if matches!(e.kind, EventKind::Ended { .. }) => Some(call),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut ended_at: Vec<Option<DateTime<Utc>>> = vec![None; storm.calls.len()];

    let pool = PgPool::connect(&env.db_url).await?;
    let service = Service::start(env).await?;
    progress!(
        "steady state: service ready; publishing {} messages at {rate:.0}/s (~{secs:.0}s)",
        storm.main.len()
    );
    // Sampler: published (counter), logged (sequence) and the queue's depth.
    let published = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let sampler = {
        let published = published.clone();
        let stop = stop.clone();
        let pool = pool.clone();
        let queue = s.amqp.queue.clone();
        tokio::spawn(async move {
            let amqp = Connection::connect(&amqp_url(), ConnectionProperties::default())
                .await
                .ok();
            let mut pub_s: Samples = vec![(0.0, 0)];
            let mut log_s: Samples = vec![(0.0, 0)];
            let mut max_depth = 0u32;
            let base = log_sequence(&pool).await.unwrap_or(0);
            let mut tick = tokio::time::interval(SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.is_cancelled() {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                let t = started.elapsed().as_secs_f64();
                pub_s.push((t, published.load(Ordering::Relaxed)));
                if let Ok(seq) = log_sequence(&pool).await {
                    log_s.push((t, seq.saturating_sub(base)));
                }
                if let Some(c) = &amqp
                    && let Some(d) = queue_depth(c, &queue).await
                {
                    max_depth = max_depth.max(d);
                }
            }
            if let Some(c) = amqp {
                let _ = c.close(200, "bye".into()).await;
            }
            (pub_s, log_s, max_depth)
        })
    };
    let mut last_line = Instant::now();
    let cpu_before = (cpu_snapshot(), machine_ticks());
    let elapsed = publish_paced(&s.amqp.exchange, &storm.main, rate, &published, |i| {
        if let Some(call) = ends[i] {
            let slot = &mut ended_at[call as usize];
            if slot.is_none() {
                *slot = Some(Utc::now());
            }
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("steady state: {i}/{} published", storm.main.len());
            last_line = Instant::now();
        }
    })
    .await?;
    let cpu = cpu_shares(
        &cpu_before.0,
        &cpu_snapshot(),
        (cpu_before.1, machine_ticks()),
        elapsed,
        service.pid(),
    );
    let queue_depth_at_end = {
        let c = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let d = queue_depth(&c, &s.amqp.queue).await.unwrap_or(0);
        let _ = c.close(200, "bye".into()).await;
        d
    };
    progress!(
        "steady state: published {} messages in {:.1}s ({:.0}/s); queue depth now {queue_depth_at_end}; waiting for the records",
        storm.main.len(),
        elapsed.as_secs_f64(),
        storm.main.len() as f64 / elapsed.as_secs_f64()
    );
    // Wait for every ended call's complete row.
    let waited: Vec<(&str, i32, DateTime<Utc>)> = storm
        .calls
        .iter()
        .enumerate()
        .filter_map(|(i, c)| ended_at[i].map(|t| (c.call_id.as_str(), c.distinct_events as i32, t)))
        .collect();
    let mut pending: HashMap<&str, (i32, DateTime<Utc>)> =
        waited.iter().map(|&(id, n, t)| (id, (n, t))).collect();
    let mut latencies = Vec::with_capacity(waited.len());
    let mut transit = Vec::with_capacity(waited.len());
    let mut in_service = Vec::with_capacity(waited.len());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let ids: Vec<&str> = pending.keys().copied().collect();
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<EndedRow> = sqlx::query_as(
                "SELECT c.call_id, c.event_count, c.updated_at, \
                        (SELECT min(e.received_at) FROM call_events e \
                          WHERE e.call_id = c.call_id AND e.event_type = 'call.ended') \
                 FROM calls c WHERE c.call_id = ANY($1)",
            )
            .bind(chunk)
            .fetch_all(&pool)
            .await?;
            let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
            for (id, n, updated, received) in rows {
                if let Some(&(want, ended)) = pending.get(id.as_str())
                    && n >= want
                {
                    pending.remove(id.as_str());
                    latencies.push(ms(updated - ended));
                    if let Some(received) = received {
                        transit.push(ms(received - ended));
                        in_service.push(ms(updated - received));
                    }
                }
            }
        }
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    let (pub_s, log_s, max_queue_depth) = sampler.await?;
    let writes = write_stats(&scrape(&service).await, elapsed.as_secs_f64());
    service.stop().await?;
    pool.close().await;
    latencies.sort_by(f64::total_cmp);
    transit.sort_by(f64::total_cmp);
    in_service.sort_by(f64::total_cmp);
    let steady = Steady {
        target: rate,
        messages: storm.main.len(),
        publish_seconds: elapsed.as_secs_f64(),
        calls_waited: waited.len(),
        calls_missing: pending.len(),
        latencies,
        transit,
        in_service,
        max_queue_depth,
        queue_depth_at_end,
        published: pub_s,
        logged: log_s,
        cpu,
        writes,
    };
    progress!(
        "steady state: {} calls, flush latency p50 {:.0} ms, p99 {:.0} ms (linger {} included), max queue depth {}",
        steady.latencies.len(),
        percentile(&steady.latencies, 0.5),
        percentile(&steady.latencies, 0.99),
        humantime::format_duration(LINGER),
        steady.max_queue_depth
    );
    progress!(
        "steady state: of which call.ended published -> received by the service p50 {:.0} ms, p99 {:.0} ms; received -> row committed p50 {:.0} ms, p99 {:.0} ms",
        percentile(&steady.transit, 0.5),
        percentile(&steady.transit, 0.99),
        percentile(&steady.in_service, 0.5),
        percentile(&steady.in_service, 0.99),
    );
    Ok((steady, o))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---------------------------------------------------------------------------------------------
// 5. Memory per open call

struct MemoryRun {
    requested: usize,
    measured: usize,
    rss_before: u64,
    rss_after: u64,
    seconds_to_settle: f64,
}

impl MemoryRun {
    fn per_call(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.measured.max(1) as f64
    }

    fn json(&self) -> Value {
        json!({
            "open_calls_requested": self.requested,
            "open_calls_measured": self.measured,
            "seconds_to_settle": json_f(self.seconds_to_settle, 2),
            "rss_before_bytes": self.rss_before,
            "rss_after_bytes": self.rss_after,
            "rss_bytes_per_open_call": json_f(self.per_call(), 0),
        })
    }
}

/// Open calls as the service holds them at rest (the state a quiet call settles in), and, for
/// comparison, with an actor each (before they rest).
struct Memory {
    resting: MemoryRun,
    actors: MemoryRun,
}

/// The largest count measured with one actor per open call: at about 10 KB each, a million
/// would need some 10 GB.
const MAX_OPEN_ACTORS: usize = 100_000;

async fn active_calls(service: &Service) -> anyhow::Result<(u64, u64)> {
    let v: Value = reqwest::get(service.url("/calls")).await?.json().await?;
    let active = v["ringing"].as_u64().unwrap_or(0) + v["answered"].as_u64().unwrap_or(0);
    Ok((active, v["resting"].as_u64().unwrap_or(0)))
}

async fn memory(env: &Env, n: usize) -> anyhow::Result<Memory> {
    // Actors first: `rest_after` longer than the run, so every call keeps its actor.
    let actors = open_calls(env, n.min(MAX_OPEN_ACTORS), Duration::from_secs(3600), 0).await?;
    // Start over on an empty log, so the next start recovers nothing.
    let pool = PgPool::connect(&env.db_url).await?;
    sqlx::query("TRUNCATE call_events, open_calls, calls")
        .execute(&pool)
        .await?;
    pool.close().await;
    let resting = open_calls(env, n, Duration::from_secs(2), 1).await?;
    Ok(Memory { resting, actors })
}

/// RSS once it has stopped falling (less than 1% lower over 3 s), at most 60 s from now.
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = rss_bytes(pid)?;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = rss_bytes(pid)?;
        if now as f64 >= last as f64 * 0.99 || Instant::now() > deadline {
            return Ok(now.min(last));
        }
        last = now;
    }
}

/// Opens `n` calls (call.started + call.answered, never ended) on a fresh service started with
/// `rest_after`, waits until all are active (and, when `rest_after` is short, resting), and
/// measures the RSS growth.
async fn open_calls(
    env: &Env,
    n: usize,
    rest_after: Duration,
    round: u64,
) -> anyhow::Result<MemoryRun> {
    let s = env.settings.clone();
    let rest = rest_after < Duration::from_secs(60);
    let service = Service::start_with(
        env,
        &[(
            "CDR__TRACKER__REST_AFTER",
            humantime::format_duration(rest_after).to_string(),
        )],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let label = if rest {
        "memory (resting)"
    } else {
        "memory (actors)"
    };
    let rss_before = rss_bytes(service.pid())?;
    progress!(
        "{label}: service idle at {:.1} MiB RSS; opening {n} calls (call.started + call.answered), rest_after {}",
        rss_before as f64 / 1048576.0,
        humantime::format_duration(rest_after)
    );
    let started = Instant::now();
    let publisher = StormPublisher::connect(&amqp_url(), &s.amqp.exchange).await?;
    const PER_CHUNK: usize = 100_000;
    let limits = limits(&s);
    let now = Utc::now();
    let mut published = 0usize;
    for (k, first) in (0..n).step_by(PER_CHUNK).enumerate() {
        let calls = PER_CHUNK.min(n - first);
        let o = StormOptions {
            calls,
            seed: 3 + k as u64,
            answered: 1.0,
            missing_end: 1.0,
            identified: 0.0,
            recording: 0.0,
            dialog: 0.0,
            usage: 0.0,
            duplicates: 0.0,
            variants: 0.0,
            late: 0.0,
            poison: 0.0,
            call_id_prefix: Some(format!("bench-open-{}-{round}-{k}", env.id)),
            ..StormOptions::default()
        };
        let storm = generate(&o, limits);
        let msgs: Vec<Message> = storm
            .main
            .into_iter()
            .filter(|m| {
                matches!(m.kind, MessageKind::Event { .. })
                    && matches!(
                        event::decode(&m.body, now, limits).map(|e| e.kind),
                        Ok(EventKind::Started(_) | EventKind::Answered)
                    )
            })
            .collect();
        publisher
            .publish(&msgs, 0.0, IN_FLIGHT, "open calls")
            .await?;
        published += calls;
        progress!(
            "{label}: {published}/{n} calls published ({} messages in this chunk)",
            msgs.len()
        );
    }
    publisher.close().await;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last_line = Instant::now();
    let (mut active, mut resting) = (0u64, 0u64);
    loop {
        if let Ok(a) = active_calls(&service).await {
            (active, resting) = a;
        }
        let settled = active >= n as u64 && (!rest || resting >= n as u64);
        if settled || Instant::now() > deadline {
            break;
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            progress!("{label}: {active}/{n} calls active, {resting} resting");
            last_line = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds_to_settle = started.elapsed().as_secs_f64();
    // Let the mailboxes and the allocator settle: the allocator hands the pages of stopped
    // actors back to the system over several seconds. Measured once RSS stops falling.
    let rss_after = settled_rss(service.pid()).await?;
    let (active, resting) = active_calls(&service).await.unwrap_or((active, resting));
    service.stop().await?;
    let m = MemoryRun {
        requested: n,
        measured: if rest { resting } else { active } as usize,
        rss_before,
        rss_after,
        seconds_to_settle,
    };
    progress!(
        "{label}: {} calls open ({resting} resting), RSS {:.1} -> {:.1} MiB: {:.0} bytes per open call",
        active,
        m.rss_before as f64 / 1048576.0,
        m.rss_after as f64 / 1048576.0,
        m.per_call()
    );
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Charts

fn throughput_chart(path: &Path, title: &str, y_desc: &str, series: &[Line]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let xmax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..xmax * 1.02, 0f64..ymax * 1.12)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the phase started")
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    for (name, points, color) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn latency_chart(path: &Path, sorted_ms: &[f64], linger_ms: f64) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    if sorted_ms.is_empty() {
        root.present()?;
        return Ok(());
    }
    let lo = sorted_ms[0].min(linger_ms).max(0.0);
    let hi = percentile(sorted_ms, 0.999).max(lo + 1.0);
    let buckets = 60usize;
    let width = (hi - lo) / buckets as f64;
    let mut counts = vec![0u64; buckets];
    for &v in sorted_ms {
        let i = (((v - lo) / width).floor().max(0.0) as usize).min(buckets - 1);
        counts[i] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1) as f64;
    let (p50, p99) = (percentile(sorted_ms, 0.5), percentile(sorted_ms, 0.99));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Flush latency: call.ended published -> row committed ({} calls; linger {linger_ms:.0} ms included)",
                sorted_ms.len()
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0f64..ymax * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("milliseconds (last bucket holds everything above p99.9)")
        .y_desc("calls")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + i as f64 * width;
        Rectangle::new(
            [(x0, 0.0), (x0 + width * 0.92, c as f64)],
            RGBColor(70, 120, 190).filled(),
        )
    }))?;
    for (label, x, color) in [("p50", p50, RED), ("p99", p99, BLACK)] {
        chart
            .draw_series(LineSeries::new(
                vec![(x, 0.0), (x, ymax * 1.1)],
                color.stroke_width(2),
            ))?
            .label(format!("{label} {x:.0} ms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report

fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

async fn server_versions(env: &Env) -> (String, String) {
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
    // The broker's version as the OS package gives it, when it is installed that way.
    let rabbit = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "rabbitmq-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    (pg, rabbit)
}

/// " (median of N rounds{how}: r1, r2, ...)" for more than one round's ratio, else nothing.
fn rounds_note(ratios: &[&Value], how: &str) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let listed: Vec<String> = ratios
        .iter()
        .map(|x| x.as_f64().map_or("n/a".into(), |v| format!("{v:.2}")))
        .collect();
    format!(
        " (median of {} rounds{how}: {})",
        ratios.len(),
        listed.join(", ")
    )
}

fn markdown(r: &Value) -> String {
    let f = |k: &str, digits: usize| -> String {
        match &r[k] {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(0.0);
                if digits == 0 {
                    thousands(x.round() as i64)
                } else {
                    format!("{x:.digits$}")
                }
            }
            Value::Null => "n/a".into(),
            other => other.to_string(),
        }
    };
    let n = |v: &Value| {
        v.as_f64()
            .map_or("n/a".into(), |x| thousands(x.round() as i64))
    };
    let cores = |cpu: &Value| {
        let c = &cpu["cores_used"];
        format!(
            "{} / {} / {} / {} of {} cores ({:.0}% busy, {:.0}% stolen by the host)",
            c["service"],
            c["postgres"],
            c["rabbitmq"],
            c["bench"],
            cpu["nproc"],
            cpu["machine_busy_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
            cpu["machine_steal_share"].as_f64().unwrap_or(f64::NAN) * 100.0
        )
    };
    let w = &r["service_drain_writes"];
    let b = &r["drain_cpu_budget"];
    let service_rounds: Vec<&Value> = r["drain_rounds"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|x| &x["ratio"])
        .collect();
    let service_note = rounds_note(
        &service_rounds,
        ", each against the broker drains on either side of it",
    );
    let floor_rounds: Vec<&Value> = r["log_floor_round_ratios"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .collect();
    let floor_note = rounds_note(&floor_rounds, "");
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| measure | value |\n| --- | --- |\n\
         | broker drain (do-nothing consumer, prefetch {}, multiple acks): mean of a run before and one after the service drain | {} events/s ({} and {}) |\n\
         | service drain (release binary, from process start to every record written) | {} events/s |\n\
         | service drain / broker drain{} | {} |\n\
         | service ingest rate (first to last event logged), of the broker drain | {} events/s, {} |\n\
         | log floor (decode, append to the event log, ack after each commit; nothing after the log), of the broker drains{} | {} events/s, {} |\n\
         | drain ratio a service ingesting at the log floor would reach with its start-up and the {} ms linger, its other writes free (an upper bound) | {} |\n\
         | seed baseline (per event: insert + upsert, autocommit, ack each) | {} events/s |\n\
         | speedup vs seed | {}x |\n\
         | records verified / mismatched / missing (every round) | {} / {} / {} |\n\
         | steady state: target / achieved publish rate | {} / {} events/s |\n\
         | steady state: max queue depth while publishing | {} |\n\
         | flush latency p50 / p99 (call.ended published -> row committed, incl. {} ms linger) | {} / {} ms |\n\
         | of which call.ended published -> received by the service, p50 / p99 | {} / {} ms |\n\
         | of which received by the service -> row committed (incl. linger), p50 / p99 | {} / {} ms |\n\
         | open calls measured (resting: quiet for `rest_after`, no actor) | {} |\n\
         | RSS per open call, resting | {} bytes |\n\
         | RSS per open call with its actor (before it rests; {} calls) | {} bytes |\n\
         | CPU in the broker drains (service / postgres / rabbitmq / bench) | {}; {} |\n\
         | CPU in the log floor (service / postgres / rabbitmq / bench, the consumer) | {} |\n\
         | CPU while the service ingests (service / postgres / rabbitmq / bench) | {} |\n\
         | CPU in steady state (service / postgres / rabbitmq / bench) | {} |\n\
         | CPU per event in the service drain, from process start: service / postgres / rabbitmq (rabbitmq in the broker drains) | {} / {} / {} µs ({} µs) |\n\
         | drain ratio this CPU allows on {} cores (broker drain time / (CPU of the three / cores)) | {} |\n\
         | service drain: log batches, mean size, mean commit, share of the ingest window in commits | {}, {} events, {} ms, {:.0}% |",
        PREFETCH,
        f("broker_drain_events_per_s", 0),
        n(&r["broker_drain_runs_events_per_s"][0]),
        n(&r["broker_drain_runs_events_per_s"][1]),
        f("service_drain_events_per_s", 0),
        service_note,
        f("drain_ratio_vs_broker", 2),
        f("service_ingest_events_per_s", 0),
        f("service_ingest_ratio_vs_broker", 2),
        floor_note,
        f("log_floor_events_per_s", 0),
        f("log_floor_ratio_vs_broker", 2),
        f("linger_ms", 0),
        f("drain_ratio_log_floor_bound", 2),
        f("seed_baseline_events_per_s", 0),
        f("speedup_vs_seed", 1),
        f("records_verified", 0),
        f("records_mismatched", 0),
        f("records_missing", 0),
        f("steady_target_events_per_s", 0),
        f("steady_events_per_s", 0),
        f("steady_max_queue_depth", 0),
        f("linger_ms", 0),
        f("flush_latency_p50_ms", 0),
        f("flush_latency_p99_ms", 0),
        f("end_transit_p50_ms", 0),
        f("end_transit_p99_ms", 0),
        f("end_in_service_p50_ms", 0),
        f("end_in_service_p99_ms", 0),
        f("open_calls_measured", 0),
        f("rss_bytes_per_open_call", 0),
        f("open_calls_with_actors_measured", 0),
        f("rss_bytes_per_open_call_with_actor", 0),
        cores(&r["broker_drain_cpu"][0]),
        cores(&r["broker_drain_cpu"][1]),
        cores(&r["log_floor_cpu"]),
        cores(&r["service_drain_cpu"]),
        cores(&r["steady_cpu"]),
        b["service_cpu_us_per_event"],
        b["postgres_cpu_us_per_event"],
        b["rabbitmq_cpu_us_per_event"],
        b["broker_drain_rabbitmq_cpu_us_per_event"],
        r["machine"]["nproc"],
        b["cpu_bound_ratio"],
        n(&w["log_batches"]),
        w["log_batch_mean_events"],
        w["log_write_mean_ms"],
        w["log_write_busy_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
    );
    let _ = writeln!(
        md,
        "\nStorm: {} calls, {} messages ({} distinct events); seed baseline on the first {} of them; \
         steady state {} calls ({} messages); mode `{}`.",
        n(&r["storm"]["calls"]),
        n(&r["storm"]["messages"]),
        n(&r["storm"]["distinct_events"]),
        n(&r["seed_baseline_events"]),
        n(&r["steady_calls"]),
        n(&r["steady_messages"]),
        r["mode"].as_str().unwrap_or_default(),
    );
    md
}

fn thousands(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn json_f(x: f64, digits: i32) -> Value {
    if x.is_finite() {
        json!(round(x, digits))
    } else {
        Value::Null
    }
}

// ---------------------------------------------------------------------------------------------
// Main

fn main() -> anyhow::Result<()> {
    STARTED.get_or_init(Instant::now);
    let sizes = Sizes::from_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(sizes))
}

async fn run(sizes: Sizes) -> anyhow::Result<()> {
    progress!(
        "mode {}: {} calls, seed baseline {} messages, steady {:.0} events/s for {:.0}s, {} open calls",
        sizes.mode,
        sizes.calls,
        sizes.seed_messages,
        sizes.steady_rate,
        sizes.steady_secs,
        sizes.open_calls
    );
    let mut env = Env::create().await?;
    progress!(
        "database {}, exchanges/queues cdr_bench.{}.*",
        env.db_names.join(", "),
        env.id
    );
    let result = phases(&mut env, &sizes).await;
    env.cleanup().await;
    let report = result?;

    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("storm-report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(dir.join("storm-report.md"), markdown(&report))?;
    println!("\n{}", markdown(&report));
    progress!(
        "wrote {}/storm-report.{{json,md}}, storm-throughput.svg, storm-steady.svg, storm-flush-latency.svg",
        dir.display()
    );
    Ok(())
}

/// The index of the median of `values` (the lower of the two middle ones for an even count).
fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[(order.len() - 1) / 2]
}

async fn phases(env: &mut Env, sizes: &Sizes) -> anyhow::Result<Value> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir)?;
    let o = storm_options(sizes.calls, 1);
    let generated = Instant::now();
    let storm = generate(&o, limits(&env.settings));
    let st = &storm.stats;
    progress!(
        "storm: {} calls, {} main-phase messages ({} distinct events, {} exact duplicates), generated in {:.1}s",
        st.calls,
        storm.main.len(),
        st.distinct_events,
        st.exact_duplicates,
        generated.elapsed().as_secs_f64()
    );
    let events_per_call = storm.main.len() as f64 / storm.calls.len().max(1) as f64;

    // The broker is drained before and after each service drain, and each round's ratio is
    // taken against the mean of the two: on a shared host the machine's speed drifts over
    // minutes, and one broker run on one side of the service drain would carry that drift into
    // the ratio. With several rounds the report gives the median round's figures (the lower of
    // the two middle ones for an even count) and every round's ratio beside them: one round
    // moves by 10 to 20% from run to run on a shared 2-core machine.
    let mut brokers = vec![broker_drain(env, &storm, 1).await?];
    let mut services = Vec::with_capacity(sizes.rounds);
    let mut floors = Vec::with_capacity(sizes.rounds);
    for round in 1..=sizes.rounds {
        if round > 1 {
            env.next_round(round).await?;
            progress!("drain round {round} of {}", sizes.rounds);
        }
        services.push(service_drain(env, &storm, &o).await?);
        floors.push(log_floor(env, &storm, round).await?);
        brokers.push(broker_drain(env, &storm, round as u32 + 1).await?);
    }
    let round_ratios: Vec<f64> = (0..services.len())
        .map(|i| {
            services[i].drain.rate()
                / ((brokers[i].drain.rate() + brokers[i + 1].drain.rate()) / 2.0)
        })
        .collect();
    let median = median_index(&round_ratios);
    let (broker, service, broker_after) =
        (&brokers[median], &services[median], &brokers[median + 1]);
    let drain_rounds: Vec<Value> = (0..services.len())
        .map(|i| {
            json!({
                "broker_before_events_per_s": json_f(brokers[i].drain.rate(), 0),
                "service_events_per_s": json_f(services[i].drain.rate(), 0),
                "broker_after_events_per_s": json_f(brokers[i + 1].drain.rate(), 0),
                "ratio": json_f(round_ratios[i], 3),
                "cpu": cpu_budget(&services[i], &brokers[i], &brokers[i + 1]),
                "records_verified": services[i].records_verified,
                "records_mismatched": services[i].records_mismatched,
                "records_missing": services[i].records_missing,
            })
        })
        .collect();
    let mut ratios = round_ratios.clone();
    ratios.sort_by(f64::total_cmp);
    let median_budget = drain_rounds[median]["cpu"].clone();
    // The log floor of each round, against the broker drains on either side of it, as the
    // service's; the report gives the median round's.
    let broker_seconds = |i: usize| (brokers[i].drain.seconds + brokers[i + 1].drain.seconds) / 2.0;
    let floor_ratios: Vec<f64> = (0..floors.len())
        .map(|i| broker_seconds(i) / floors[i].0.seconds.max(1e-9))
        .collect();
    let floor_median = median_index(&floor_ratios);
    let (floor, floor_cpu) = &floors[floor_median];
    let seed = seed_baseline(env, &storm, sizes.seed_messages, sizes.seed_max).await?;
    let (steady, steady_o) =
        steady_state(env, sizes.steady_rate, sizes.steady_secs, events_per_call).await?;
    let mem = memory(env, sizes.open_calls).await?;

    // Charts.
    let rates = |s: &Samples| rate_series(s, 1.0);
    throughput_chart(
        &dir.join("storm-throughput.svg"),
        &format!(
            "Drains of the same storm ({} messages; seed baseline on {}): events/s, 1 s window",
            storm.main.len(),
            seed.events
        ),
        "events per second",
        &[
            (
                "broker: do-nothing consumer (before the service)".into(),
                rates(&broker.drain.samples),
                plotters::style::RGBColor(120, 120, 120),
            ),
            (
                "broker: do-nothing consumer (after the service)".into(),
                rates(&broker_after.drain.samples),
                plotters::style::RGBColor(170, 170, 170),
            ),
            (
                "log floor: decode, append, ack (nothing after the log)".into(),
                rates(&floor.samples),
                plotters::style::RGBColor(60, 160, 90),
            ),
            (
                "service: events logged (from process start)".into(),
                rates(&service.drain.samples),
                plotters::style::RGBColor(30, 110, 200),
            ),
            (
                format!("service: records written x {events_per_call:.1} (events per call)"),
                rates(&service.record_samples)
                    .into_iter()
                    .map(|(t, r)| (t, r * events_per_call))
                    .collect(),
                plotters::style::RGBColor(120, 180, 240),
            ),
            (
                "seed baseline: per event, autocommit".into(),
                rates(&seed.samples),
                plotters::style::RGBColor(210, 60, 40),
            ),
        ],
    )?;
    throughput_chart(
        &dir.join("storm-steady.svg"),
        &format!(
            "Steady state: target {:.0} events/s, {} messages",
            steady.target, steady.messages
        ),
        "events per second",
        &[
            (
                "published".into(),
                rates(&steady.published),
                plotters::style::RGBColor(120, 120, 120),
            ),
            (
                "logged by the service".into(),
                rates(&steady.logged),
                plotters::style::RGBColor(30, 110, 200),
            ),
        ],
    )?;
    latency_chart(
        &dir.join("storm-flush-latency.svg"),
        &steady.latencies,
        LINGER.as_secs_f64() * 1000.0,
    )?;

    let (pg_version, rabbit_version) = server_versions(env).await;
    let broker_rates = [broker.drain.rate(), broker_after.drain.rate()];
    let broker_rate = (broker_rates[0] + broker_rates[1]) / 2.0;
    let service_rate = service.drain.rate();
    let seed_rate = seed.rate();
    let steady_rate = steady.messages as f64 / steady.publish_seconds.max(1e-9);
    let lat = &steady.latencies;
    let linger_ms = LINGER.as_secs_f64() * 1000.0;
    Ok(json!({
        "mode": sizes.mode,
        "generated_at": Utc::now().to_rfc3339(),
        "machine": {
            "nproc": nproc(),
            "mem_total_bytes": mem_total_bytes(),
            "mem_total_gib": round(mem_total_bytes() as f64 / 1073741824.0, 1),
            "cpu_model": cpu_model(),
            "postgres_version": pg_version,
            "rabbitmq_version": rabbit_version,
            "note": "PostgreSQL, RabbitMQ, the service and the bench on the same machine",
        },
        "storm": {
            "options": cdr_storm::options_json(&o),
            "calls": storm.calls.len(),
            "messages": storm.main.len(),
            "distinct_events": st.distinct_events,
            "exact_duplicates": st.exact_duplicates,
            "events_per_call": round(events_per_call, 2),
            "events_by_type": st.events_by_type,
        },
        "service_settings": {
            "prefetch": PREFETCH,
            "linger": humantime::format_duration(LINGER).to_string(),
            "log_level": "warn",
            "other": "defaults (config/default.toml)",
            // `CDR__*` variables of the bench's own environment, which the service inherits
            // (e.g. CDR__RUNTIME__WORKER_THREADS=2 for a comparison run).
            "environment_overrides": std::env::vars()
                .filter(|(k, _)| k.starts_with(cdr_service::config::ENV_PREFIX))
                .collect::<std::collections::BTreeMap<_, _>>(),
        },
        "broker_publish_events_per_s": json_f(broker.publish_rate, 0),
        "broker_drain_events_per_s": json_f(broker_rate, 0),
        "broker_drain_runs_events_per_s": [json_f(broker_rates[0], 0), json_f(broker_rates[1], 0)],
        "broker_drain_seconds": [json_f(broker.drain.seconds, 3), json_f(broker_after.drain.seconds, 3)],
        "broker_drain_cpu": [broker.cpu, broker_after.cpu],
        "service_publish_events_per_s": json_f(service.publish_rate, 0),
        "service_drain_events_per_s": json_f(service_rate, 0),
        "service_drain_seconds": json_f(service.drain.seconds, 3),
        "service_startup_seconds": json_f(service.startup, 3),
        "service_ingest_events_per_s": json_f(service.drain.events as f64 / service.ingest_seconds, 0),
        "service_ingest_seconds": json_f(service.ingest_seconds, 3),
        "drain_ratio_vs_broker": json_f(service_rate / broker_rate, 3),
        "service_ingest_ratio_vs_broker": json_f(
            service.drain.events as f64 / service.ingest_seconds / broker_rate,
            3
        ),
        "log_floor_events_per_s": json_f(floor.rate(), 0),
        "log_floor_seconds": json_f(floor.seconds, 3),
        "log_floor_cpu": floor_cpu,
        "log_floor_ratio_vs_broker": json_f(floor_ratios[floor_median], 3),
        "log_floor_round_ratios": floor_ratios.iter().map(|r| json_f(*r, 3)).collect::<Vec<_>>(),
        // The drain ratio of a service that ingested at the floor's rate, started as fast as
        // that round's service did and wrote its last records a linger after its last event,
        // its other writes free: above what this machine allows a service that keeps the log
        // and the linger.
        "drain_ratio_log_floor_bound": json_f(
            broker_seconds(floor_median)
                / (floor.seconds + services[floor_median].startup + LINGER.as_secs_f64()),
            3
        ),
        "drain_rounds": drain_rounds,
        "drain_median_round": median + 1,
        "drain_ratio_min": json_f(ratios[0], 3),
        "drain_ratio_max": json_f(ratios[ratios.len() - 1], 3),
        "service_drain_cpu": service.cpu,
        "service_drain_cpu_from_start": service.cpu_whole,
        // The median round's CPU per event and the ratio that CPU allows (`cpu_budget`).
        "drain_cpu_budget": median_budget,
        "service_drain_writes": service.writes,
        // Every round's records, each against the storm's ground truth.
        "records_verified": services.iter().map(|s| s.records_verified).sum::<usize>(),
        "records_mismatched": services.iter().map(|s| s.records_mismatched).sum::<usize>(),
        "records_missing": services.iter().map(|s| s.records_missing).sum::<usize>(),
        "seed_baseline_events": seed.events,
        "seed_baseline_seconds": json_f(seed.seconds, 3),
        "seed_baseline_events_per_s": json_f(seed_rate, 0),
        "speedup_vs_seed": json_f(service_rate / seed_rate, 2),
        "steady_target_events_per_s": json_f(steady.target, 0),
        "steady_events_per_s": json_f(steady_rate, 0),
        "steady_seconds": json_f(steady.publish_seconds, 2),
        "steady_calls": steady_o.calls,
        "steady_messages": steady.messages,
        "steady_max_queue_depth": steady.max_queue_depth,
        "steady_cpu": steady.cpu,
        "steady_writes": steady.writes,
        "steady_queue_depth_at_end": steady.queue_depth_at_end,
        "steady_calls_measured": lat.len(),
        "steady_calls_missing": steady.calls_missing,
        "steady_calls_waited": steady.calls_waited,
        "linger_ms": linger_ms,
        "flush_latency_p50_ms": json_f(percentile(lat, 0.5), 1),
        "flush_latency_p90_ms": json_f(percentile(lat, 0.9), 1),
        "flush_latency_p99_ms": json_f(percentile(lat, 0.99), 1),
        "flush_latency_max_ms": json_f(percentile(lat, 1.0), 1),
        "flush_latency_p50_minus_linger_ms": json_f(percentile(lat, 0.5) - linger_ms, 1),
        "end_transit_p50_ms": json_f(percentile(&steady.transit, 0.5), 1),
        "end_transit_p99_ms": json_f(percentile(&steady.transit, 0.99), 1),
        "end_in_service_p50_ms": json_f(percentile(&steady.in_service, 0.5), 1),
        "end_in_service_p99_ms": json_f(percentile(&steady.in_service, 0.99), 1),
        "flush_latency_p99_minus_linger_ms": json_f(percentile(lat, 0.99) - linger_ms, 1),
        "open_calls_measured": mem.resting.measured,
        "rss_bytes_per_open_call": json_f(mem.resting.per_call(), 0),
        "open_calls_with_actors_measured": mem.actors.measured,
        "rss_bytes_per_open_call_with_actor": json_f(mem.actors.per_call(), 0),
        "memory_resting": mem.resting.json(),
        "memory_actors": mem.actors.json(),
    }))
}
