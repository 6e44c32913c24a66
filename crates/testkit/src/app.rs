//! The service in-process: the `Application` on a test's settings, its run kept as a task so
//! that a crash is seen, and [`TestApp`], that with the test's own environment, a pool and a
//! publisher.

use secrecy::ExposeSecret;
use std::time::Duration;

use cdr_service::app::Application;
use cdr_service::config::Settings;
use cdr_service::health::Health;
use cdr_storm::simulate::Publisher;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::env::TestEnv;
use crate::metrics;
use crate::wait_until;

/// How long the service may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The service running in-process on `settings`, its run's task kept so a crash is seen.
pub struct Running {
    pub health: Health,
    pub port: u16,
    /// The port of `http.probe_listen`, when set.
    pub probe_port: Option<u16>,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Builds the application, runs it and waits until it is ready.
    pub async fn start(settings: &Settings) -> Running {
        let running = Running::spawn(settings).await;
        running.wait_ready(true, "service ready").await;
        running
    }

    /// Builds the application and runs it, without waiting for it to become ready (for tests
    /// of a service that must not).
    pub async fn spawn(settings: &Settings) -> Running {
        init_test_logging();
        let app = Application::build(settings.clone())
            .await
            .expect("build app");
        let port = app.http_port();
        let probe_port = app.probe_port();
        let health = app.health();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app.run(stop.clone()));
        Running {
            health,
            port,
            probe_port,
            stop,
            handle,
        }
    }

    /// Waits until the service's readiness is `ready`; panics with `what` after 30 s.
    pub async fn wait_ready(&self, ready: bool, what: &str) {
        let health = self.health.clone();
        wait_until(READY_WITHIN, what, || {
            let now = health.ready();
            async move { now == ready }
        })
        .await;
    }

    /// The status of `GET /health/ready`.
    pub async fn ready_status(&self) -> u16 {
        reqwest::get(format!("http://127.0.0.1:{}/health/ready", self.port))
            .await
            .expect("GET /health/ready")
            .status()
            .as_u16()
    }

    /// Panics if the service's run has ended.
    pub fn assert_alive(&self) {
        assert!(
            !self.handle.is_finished(),
            "the service's run ended during the outage"
        );
    }

    /// Graceful stop; the run must end Ok.
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle
            .await
            .expect("app task")
            .expect("app stopped with an error");
    }
}

/// The service running in-process on a test's own database and names.
pub struct TestApp {
    pub env: TestEnv,
    pub settings: Settings,
    pub pool: PgPool,
    pub port: u16,
    pub publisher: Publisher,
    running: Running,
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
        let running = Running::start(&settings).await;
        let publisher =
            Publisher::connect(settings.amqp.url.expose_secret(), &settings.amqp.exchange)
                .await
                .expect("publisher");
        let pool = env.pool().await;
        TestApp {
            env,
            settings,
            pool,
            port: running.port,
            publisher,
            running,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until the service's readiness is `ready`; panics with `what` after 30 s.
    pub async fn wait_ready(&self, ready: bool, what: &str) {
        self.running.wait_ready(ready, what).await;
    }

    /// The text of `/metrics`.
    pub async fn scrape(&self) -> String {
        metrics::scrape(self.port).await
    }

    /// The sum of every series of metric `name` on /metrics (0 when it is absent).
    pub async fn metric(&self, name: &str) -> f64 {
        metrics::metric_at(self.port, name).await
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
        self.running.stop().await;
        self.pool.close().await;
        (self.env, self.settings)
    }

    pub async fn finish(self) {
        let (env, settings) = self.stop().await;
        env.cleanup(&settings).await;
    }
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
