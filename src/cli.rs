//! Command line: `run` (the service), and the tooling of the `cdr-storm` crate aimed at it:
//! `simulate` (one synthetic call, end to end) and `storm` (a load test). The tooling sees the
//! service through [`cdr_storm::Target`], implemented here for the settings.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use cdr_storm::simulate::{self, SimulateOptions};
use cdr_storm::{StormOptions, Target, TargetError};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app::Application;
use crate::config::Settings;
use crate::event::Limits;
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
    /// Publish one synthetic call to the configured exchange, wait for its record, print it.
    Simulate(SimulateOptions),
    /// Publish a synthetic event storm (load test), optionally verify every record. Boxed: its
    /// options are many, and the command is parsed once.
    Storm(Box<StormOptions>),
}

/// Loads the settings (before anything starts, so a bad key stops the process at once),
/// builds the runtime they size, and runs the command on it.
pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
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
        Command::Simulate(options) => simulate::run(&settings, options).await,
        Command::Storm(options) => cdr_storm::run(&settings, *options).await,
    }
}

/// SIGTERM (container stop) or SIGINT (Ctrl-C) starts a graceful shutdown.
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
        &self.amqp.url
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
