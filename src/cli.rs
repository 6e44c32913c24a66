//! Command line: `run` (the service); the deployment's steps around it: `migrate` (the schema,
//! applied by a role that may change it) and `healthcheck` (asks the running service, for
//! container health checks); and the tooling of the `cdr-storm` crate aimed at it: `simulate`
//! (one synthetic call, end to end) and `storm` (a load test). The tooling sees the service
//! through [`cdr_storm::Target`], implemented here for the settings.

use secrecy::ExposeSecret;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use cdr_storm::simulate::{self, SimulateOptions};
use cdr_storm::{StormOptions, Target, TargetError};
use clap::{Args, Parser, Subcommand};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app::Application;
use crate::config::{DatabaseSettings, HttpSettings, Settings};
use crate::event::Limits;
use crate::retry::{Retry, Stop};
use crate::{db, runtime, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "cdr-service",
    version,
    about = "Call-detail records from the platform's call events"
)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (config/default.toml).
    #[arg(long, global = true, env = "CDR_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: consume call events and write call records.
    Run,
    /// Apply the schema migrations to `database.url` and exit: a deploy step, run with a role
    /// that may change the schema, while the service runs with `database.migrate = false` as
    /// a role that may only read and write rows (deploy/roles.sql).
    Migrate(MigrateOptions),
    /// Ask the service listening on `http.listen` (`http.probe_listen` when set) whether it is live (or ready): exit 0 on a
    /// 2xx answer, 1 otherwise, one line printed. A container health check without curl or a
    /// shell.
    Healthcheck(HealthcheckOptions),
    /// Publish one synthetic call to the configured exchange, wait for its record, print it.
    Simulate(SimulateOptions),
    /// Publish a synthetic event storm (load test), optionally verify every record. Boxed: its
    /// options are many, and the command is parsed once.
    Storm(Box<StormOptions>),
}

#[derive(Debug, Args)]
pub struct MigrateOptions {
    /// How long to keep trying while the database is not reachable, before giving up.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub wait: Duration,
}

#[derive(Debug, Args)]
pub struct HealthcheckOptions {
    /// Ask `/health/ready` instead of `/health/live`.
    #[arg(long)]
    pub ready: bool,
    /// How long the answer may take.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Loads the settings (before anything starts, so a bad key stops the process at once),
/// builds the runtime they size, and runs the command on it.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    if let Command::Healthcheck(options) = &cli.command {
        // One request, every few seconds: a runtime without worker threads.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        return Ok(rt.block_on(healthcheck(&settings.http, options)));
    }
    let workers = runtime::worker_threads(&settings.runtime, runtime::available_cpus());
    let rt = runtime::build(workers).context("cannot start the async runtime")?;
    rt.block_on(run(cli.command, settings, workers))
}

async fn run(command: Command, settings: Settings, workers: usize) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => {
            telemetry::init_logging(&settings.log);
            info!(worker_threads = workers, "async runtime started");
            let app = Application::build(settings).await?;
            let shutdown = CancellationToken::new();
            let signals = tokio::spawn(on_signal(shutdown.clone()));
            let ran = app.run(shutdown).await;
            signals.abort();
            ran?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate(options) => migrate(&settings, &options).await,
        // `main` runs it on a runtime of its own; here for completeness.
        Command::Healthcheck(options) => Ok(healthcheck(&settings.http, &options).await),
        Command::Simulate(options) => simulate::run(&settings, options).await,
        Command::Storm(options) => cdr_storm::run(&settings, *options).await,
    }
}

/// Applies the pending migrations and prints each one it applied. While the database is not
/// reachable it tries again (`backoff.*`), for at most `options.wait` or until SIGTERM or
/// SIGINT. Those end the waiting for the database, never a migration under way (each runs in a
/// transaction, and sqlx's advisory lock makes migrators running at once take turns). A
/// database that refuses the connection (a wrong password, no such database) or a migration
/// (a role without the right to change the schema) fails it at once.
async fn migrate(settings: &Settings, options: &MigrateOptions) -> anyhow::Result<ExitCode> {
    let url = db::redact(settings.database.url.expose_secret());
    let pool = db::pool(&settings.database)?;
    say(&format!("applying the migrations to {url}"));
    let give_up = CancellationToken::new();
    let signals = tokio::spawn(on_signal(give_up.clone()));
    let deadline = tokio::spawn({
        let give_up = give_up.clone();
        let wait = options.wait;
        async move {
            tokio::time::sleep(wait).await;
            give_up.cancel();
        }
    });
    let started = Instant::now();
    let mut last_error = String::new();
    let applied = Retry::new(&settings.backoff, &give_up)
        .run(
            || apply(&settings.database, &pool, &give_up),
            |e, delay| {
                last_error = e.to_string();
                complain(&format!(
                    "database not reachable ({e}); trying again in {}",
                    humantime::format_duration(round_to_millis(delay))
                ));
            },
        )
        .await;
    signals.abort();
    deadline.abort();
    pool.close().await;
    let before = match applied {
        Ok(Some(before)) => before,
        Err(Stop::Refused(e)) => anyhow::bail!("migrating {url}: {e}"),
        Ok(None) | Err(Stop::Cancelled) if started.elapsed() >= options.wait => anyhow::bail!(
            "gave up: the database at {url} was not reachable within {} (last error: {last_error})",
            humantime::format_duration(options.wait)
        ),
        Ok(None) | Err(Stop::Cancelled) => {
            anyhow::bail!("stopped by a signal before the migrations ran")
        }
    };
    let mut known = 0;
    let mut now = 0;
    for m in db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
    {
        known += 1;
        if !before.contains(&m.version) {
            now += 1;
            say(&format!("applied {:04} {}", m.version, m.description));
        }
    }
    say(&format!(
        "schema up to date: {known} migrations, {now} of them applied now"
    ));
    Ok(ExitCode::SUCCESS)
}

/// One attempt: a connection of its own to see the database is there (given up when
/// `give_up` fires; its error, unlike the pool's timeout, says why not), then the migrations
/// on the pool, never cut short. The versions applied before them; None if `give_up` fired
/// first.
async fn apply(
    settings: &DatabaseSettings,
    pool: &PgPool,
    give_up: &CancellationToken,
) -> Result<Option<Vec<i64>>, db::DbError> {
    let options = db::connect_options(settings)?;
    let connect = tokio::time::timeout(
        settings.connect_timeout,
        PgConnection::connect_with(&options),
    );
    let reached = tokio::select! {
        reached = connect => reached,
        () = give_up.cancelled() => return Ok(None),
    };
    match reached {
        Ok(connection) => {
            let _ = connection?.close().await;
        }
        Err(_) => {
            return Err(db::DbError::Sqlx(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no connection within database.connect_timeout ({})",
                    humantime::format_duration(settings.connect_timeout)
                ),
            ))));
        }
    }
    let before = applied_versions(pool).await?;
    db::migrate(pool).await?;
    Ok(Some(before))
}

/// The versions of the migrations the database has (none before the first).
async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let table = db::MIGRATOR.table_name.as_ref();
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE success"
    )))
    .fetch_all(pool)
    .await
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A line on standard output. Not `println!`: it panics when stdout is closed.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// A line on standard error.
fn complain(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The most of an answer the health check reads: the status line, the headers, and the body
/// of `/health/ready` (a few hundred bytes).
const MAX_ANSWER: usize = 16 * 1024;

/// The most of the body the health check prints.
const MAX_BODY_SHOWN: usize = 400;

/// GETs `/health/live` (or `/health/ready`) from the service over a plain HTTP/1.1 connection,
/// within `options.timeout`; prints one line (the URL, the status and the body, or why there
/// was no answer) and exits 0 on a 2xx status, 1 otherwise.
async fn healthcheck(http: &HttpSettings, options: &HealthcheckOptions) -> ExitCode {
    // The plain probe listener when there is one; `listen` itself only while it is plain HTTP.
    let listen = match http.probe_listen {
        Some(probe) => probe,
        None if crate::http::TlsFiles::of(http).is_some() => {
            say(
                "http.listen serves TLS: set http.probe_listen, the plain listener of the probes, for the health check",
            );
            return ExitCode::FAILURE;
        }
        None => http.listen,
    };
    let address = probe_address(listen);
    let path = if options.ready {
        "/health/ready"
    } else {
        "/health/live"
    };
    let url = format!("http://{address}{path}");
    let (line, healthy) = match tokio::time::timeout(options.timeout, get(address, path)).await {
        Ok(Ok(answer)) => (
            format!("{url}: {} {}", answer.status, answer.body)
                .trim_end()
                .to_owned(),
            (200..300).contains(&answer.code),
        ),
        Ok(Err(e)) => (format!("{url}: no answer: {e}"), false),
        Err(_) => (
            format!(
                "{url}: no answer within {}",
                humantime::format_duration(options.timeout)
            ),
            false,
        ),
    };
    say(&line);
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Where to reach a service listening on `listen`: on the loopback address when it listens on
/// every address (`0.0.0.0`, `::`).
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// An HTTP answer as the health check shows it.
#[derive(Debug, PartialEq)]
struct Answer {
    code: u16,
    /// The code and the reason: `200 OK`.
    status: String,
    /// The body on one line, shortened to `MAX_BODY_SHOWN` characters.
    body: String,
}

async fn get(address: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: cdr-service-healthcheck\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        answer.extend_from_slice(&chunk[..n]);
        if n == 0 || answer.len() >= MAX_ANSWER || complete(&answer) {
            break;
        }
    }
    parse_answer(&answer)
}

/// Whether `answer` holds the headers and as many bytes of body as `Content-Length` says (the
/// server closing the connection ends an answer without it).
fn complete(answer: &[u8]) -> bool {
    let Some(end) = find(answer, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .is_some_and(|length| answer.len() - (end + 4) >= length)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status line and the body of an HTTP/1.x answer.
fn parse_answer(answer: &[u8]) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head
        .lines()
        .next()
        .filter(|line| !line.is_empty())
        .ok_or_else(|| bad("no HTTP status line in the answer"))?;
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.split_once(' '))
        .map(|(_, status)| status.trim())
        .ok_or_else(|| bad("not an HTTP/1.x answer"))?;
    let code = status
        .get(..3)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("no status code in the answer"))?;
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let body = match body.char_indices().nth(MAX_BODY_SHOWN) {
        Some((cut, _)) => format!("{}...", &body[..cut]),
        None => body,
    };
    Ok(Answer {
        code,
        status: status.to_owned(),
        body,
    })
}

/// SIGTERM (container stop) or SIGINT (Ctrl-C) starts a graceful shutdown (for `migrate`: ends
/// the waiting for the database).
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    // Cancel first: nothing that happens to the log line may keep the service from stopping.
    shutdown.cancel();
    info!(signal = name, "shutdown requested");
}

/// The service as its settings describe it, for the tooling: the same broker, names, limits,
/// timers and database as `cdr-service run` with these settings.
impl Target for Settings {
    fn amqp_url(&self) -> &str {
        self.amqp.url.expose_secret()
    }

    fn exchange(&self) -> &str {
        &self.amqp.exchange
    }

    fn queue(&self) -> &str {
        &self.amqp.queue
    }

    fn dead_letter_queue(&self) -> &str {
        &self.amqp.dead_letter_queue
    }

    fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.ingest.max_body_bytes,
            max_json_depth: self.ingest.max_json_depth,
        }
    }

    fn linger(&self) -> Duration {
        self.tracker.linger
    }

    fn idle_timeout(&self) -> Duration {
        self.tracker.idle_timeout
    }

    fn database(&self) -> Result<sqlx::PgPool, TargetError> {
        Ok(db::pool(&self.database)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_listening_everywhere_is_probed_on_the_loopback_address() {
        let probe = |listen: &str| probe_address(listen.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:12052"), "127.0.0.1:12052");
        assert_eq!(probe("[::]:12052"), "[::1]:12052");
        assert_eq!(probe("10.1.2.3:8000"), "10.1.2.3:8000");
        assert_eq!(probe("[::1]:8000"), "[::1]:8000");
    }

    #[test]
    fn an_answer_is_read_as_its_status_and_its_body_on_one_line() {
        let answer = parse_answer(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
              content-length: 27\r\n\r\n{\"ready\":false,\n\"role\":\"x\"}",
        )
        .unwrap();
        assert_eq!(
            answer,
            Answer {
                code: 503,
                status: "503 Service Unavailable".to_owned(),
                body: "{\"ready\":false, \"role\":\"x\"}".to_owned(),
            }
        );
        let answer = parse_answer(b"HTTP/1.0 200 OK\r\n\r\n").unwrap();
        assert_eq!((answer.code, answer.body.as_str()), (200, ""));
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_answer(b"").is_err());
        assert!(parse_answer(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn a_long_body_is_shortened() {
        let mut answer = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        answer.extend(std::iter::repeat_n(b'x', 2 * MAX_BODY_SHOWN));
        let body = parse_answer(&answer).unwrap().body;
        assert_eq!(body.len(), MAX_BODY_SHOWN + 3);
        assert!(body.ends_with("..."));
    }

    #[test]
    fn an_answer_is_complete_once_its_content_length_is_read() {
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"));
        assert!(complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"
        ));
        assert!(
            !complete(b"HTTP/1.1 200 OK\r\n\r\nabcd"),
            "without a length, the end of the connection ends it"
        );
    }
}
