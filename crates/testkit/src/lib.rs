//! The shared test kit of the workspace: each test gets its own database and its own exchange
//! and queue names on the real PostgreSQL and RabbitMQ ([`TestEnv`]), so tests run in parallel
//! without seeing each other; the service runs in-process ([`TestApp`], [`Running`]) or as the
//! real binary in a child process ([`service::Service`]); [`proxy::Proxy`] cuts its
//! connections; [`metrics`] scrapes and reads `/metrics`.
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

use std::time::{Duration, Instant};

pub use app::{Running, TestApp, init_test_logging};
pub use broker::{Producer, declare_bound_queue, drain_queue, queue_depth};
pub use calls::{assert_full_record, call, t0};
pub use env::{TestEnv, amqp_url, create_database, env_vars, postgres_admin_url};
pub use metrics::metric_at;
pub use platform::{
    PLATFORM_BILLING, PLATFORM_CALLS, create_platform_tables, platform_usage_columns, usage_columns,
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
