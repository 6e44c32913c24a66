//! The HTTP surface: Prometheus metrics, liveness and readiness probes, and the live view of
//! active calls; over TLS (`tls`) when the settings give a certificate, and then optionally a
//! plain listener of its own for the probes and the metrics alone.

mod tls;

pub use tls::{TlsError, TlsFiles, TlsListener};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::tracker::Tracker;

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
    tracker: TrackerSlot,
}

/// The active term's tracker; while there is none (starting, standby) the live view answers
/// 503.
#[derive(Clone, Default)]
pub struct TrackerSlot(std::sync::Arc<std::sync::RwLock<Option<Tracker>>>);

impl TrackerSlot {
    pub fn set(&self, tracker: Tracker) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tracker);
    }

    pub fn clear(&self) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn get(&self) -> Option<Tracker> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The listener of `http.listen`.
pub enum Main {
    Plain(TcpListener),
    Tls(TlsListener),
}

/// Serves every endpoint on `main`, and on `probe` (plain) the probes and the metrics alone,
/// until `shutdown` fires.
pub async fn serve(
    main: Main,
    probe: Option<TcpListener>,
    health: Health,
    metrics: PrometheusHandle,
    tracker: TrackerSlot,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        health,
        metrics,
        tracker,
    };
    let probes = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready));
    let app = probes
        .clone()
        .route("/calls", get(active_calls))
        .route("/calls/{call_id}", get(one_call))
        .with_state(state.clone());
    let stopped = |token: CancellationToken| async move { token.cancelled().await };
    let main = async {
        match main {
            Main::Plain(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(shutdown.clone()))
                    .await
            }
            Main::Tls(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(shutdown.clone()))
                    .await
            }
        }
    };
    let probe = async {
        match probe {
            Some(listener) => {
                axum::serve(listener, probes.with_state(state))
                    .with_graceful_shutdown(stopped(shutdown.clone()))
                    .await
            }
            None => Ok(()),
        }
    };
    tokio::try_join!(main, probe).map(|_| ())
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(s): State<AppState>) -> Response {
    let body = json!({
        "ready": s.health.ready(),
        "role": s.health.role().as_str(),
        "database": s.health.database_up(),
        "broker": s.health.broker_up(),
        "recovered": s.health.recovered(),
        "schema_problems": s.health.schema_problems(),
        "writes_refused": s.health.refused_writes(),
    });
    let code = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn active_calls(State(s): State<AppState>) -> Response {
    match s.tracker.get() {
        Some(t) => Json(t.active()).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn one_call(State(s): State<AppState>, Path(call_id): Path<String>) -> Response {
    let Some(tracker) = s.tracker.get() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match tracker.inspect(&call_id).await {
        Some(live) => Json(live).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no active call with this id", "call_id": call_id })),
        )
            .into_response(),
    }
}
