//! The shared test kit of the workspace: each test gets its own database and its own exchange
//! and queue names on the real PostgreSQL and RabbitMQ ([`TestEnv`]), so tests run in parallel
//! without seeing each other; the service runs in-process ([`TestApp`], [`Running`]) or as the
//! real binary in a child process ([`service::Service`]); [`proxy::Proxy`] cuts its
//! connections; [`tls`] makes a test CA and terminates TLS in front of a plain listener;
//! [`metrics`] scrapes and reads `/metrics`.
//!
//! Tests use it as `use cdr_testkit as common;` and `use common::*;`.

mod app;
mod broker;
mod calls;
mod env;
pub mod metrics;
mod platform;
pub mod proxy;
mod rows;
pub mod service;
pub mod tls;

use std::time::{Duration, Instant};

pub use app::{Running, TestApp, init_test_logging};
pub use broker::{Producer, declare_bound_queue, drain_queue, queue_depth, wait_for_dead_letters};
pub use calls::{assert_full_record, call, t0};
pub use env::{TestEnv, amqp_url, create_database, env_vars, postgres_admin_url};
pub use metrics::metric_at;
pub use platform::{
    PLATFORM_BILLING, PLATFORM_CALLS, create_platform_tables, insert_storm_prices,
    platform_usage_columns, usage_columns,
};
pub use rows::{Row, logged_events, row, wait_for_row};

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

/// Reads the report `cdr-service storm --report` wrote and checks its verification: passed,
/// every one of `calls` records correct, none mismatched or missing, no poison message logged.
/// Returns the report for the caller's own checks.
pub fn storm_report_verified(report: &std::path::Path, calls: usize) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).expect("the report file exists"))
            .expect("the report is JSON");
    let verify = &report["verify"];
    assert_eq!(verify["passed"], true, "{verify}");
    assert_eq!(verify["calls"], calls);
    assert_eq!(verify["correct"], calls);
    assert_eq!(verify["mismatched"], 0);
    assert_eq!(verify["missing"], 0);
    assert_eq!(verify["poison_leaked"], 0);
    report
}

/// The arguments of `cdr-service storm` for `calls` calls of storm `seed` with every fault share
/// non-zero (reordering, duplicates, calls without an end, late events, poison, platform events,
/// producer variants), verified (`--verify`), its report written to `report`. Callers add
/// their own (`--rate`, `--base-time`).
pub fn storm_args_with_every_fault(
    calls: usize,
    seed: u64,
    report: &std::path::Path,
) -> Vec<String> {
    [
        "storm",
        "--calls",
        &calls.to_string(),
        "--seed",
        &seed.to_string(),
        "--reorder-window",
        &STORM_FAULTS.reorder_window.to_string(),
        "--duplicates",
        &STORM_FAULTS.duplicates.to_string(),
        "--missing-end",
        &STORM_FAULTS.missing_end.to_string(),
        "--late",
        &STORM_FAULTS.late.to_string(),
        "--poison",
        &STORM_FAULTS.poison.to_string(),
        "--platform-events",
        &STORM_FAULTS.platform_events.to_string(),
        "--variants",
        &STORM_FAULTS.variants.to_string(),
        "--verify",
        "--verify-timeout",
        "90s",
        "--report",
        report.to_str().expect("a UTF-8 path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The fault shares of `storm_args_with_every_fault`, for a test that generates the same storm.
pub struct StormFaults {
    pub reorder_window: usize,
    pub duplicates: f64,
    pub missing_end: f64,
    pub late: f64,
    pub poison: f64,
    pub platform_events: f64,
    pub variants: f64,
}

pub const STORM_FAULTS: StormFaults = StormFaults {
    reorder_window: 100,
    duplicates: 0.1,
    missing_end: 0.05,
    late: 0.1,
    poison: 0.005,
    platform_events: 0.002,
    variants: 0.5,
};
