//! Command line: `run` (the service) and `simulate` (one synthetic call, end to end).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::app::Application;
use crate::config::Settings;
use crate::runtime;
use crate::simulate::{self, SimulateOptions};
use crate::telemetry;

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
    /// Publish a synthetic event storm (load test), optionally verify every record.
    Storm(crate::storm::StormOptions),
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
            tokio::spawn(on_signal(shutdown.clone()));
            app.run(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(options) => simulate::run(&settings, options).await,
        Command::Storm(options) => crate::storm::run(&settings, options).await,
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
