//! Logs and metrics plumbing: the tracing subscriber and the Prometheus recorder; the metrics
//! themselves are defined in [`metric`].

pub mod metric;

use std::sync::OnceLock;

use metrics::{KeyName, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::ChronoUtc;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogSettings};
use metric::Kind;

pub const SERVICE_NAME: &str = "cdr-service";

/// Installs the global tracing subscriber: JSON lines for production, readable lines for
/// people. Both carry a UTC RFC 3339 timestamp, the level, the service and the span fields
/// (`call_id`, `trace_id`). Safe to call more than once (later calls are no-ops).
///
/// A line that cannot be written (the log collector's end of the pipe closed) is dropped in
/// silence: tracing's fallback would report it on stderr, which is usually the same closed
/// pipe, and a failed report panics whichever task was logging, the signal handler included.
pub fn init_logging(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let result = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .log_internal_errors(false)
            .event_format(WithService(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_timer(ChronoUtc::rfc_3339())
                    .flatten_event(true)
                    .with_current_span(true),
            ))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .try_init(),
        LogFormat::Console => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .log_internal_errors(false)
            .event_format(WithService(
                tracing_subscriber::fmt::format()
                    .with_timer(ChronoUtc::rfc_3339())
                    .with_target(true),
            ))
            .try_init(),
    };
    if result.is_ok() {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "logging started");
    }
}

/// Puts the service's name on every log line: a `"service":"cdr-service"` key on JSON lines, so
/// log collectors can route them without parsing targets, and a prefix on console lines.
struct WithService<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithService<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"service\":\"{SERVICE_NAME}\",{rest}"),
            None => write!(writer, "{SERVICE_NAME} {line}"),
        }
    }
}

/// The process-wide Prometheus recorder, installed on first use, with every histogram's
/// buckets and every metric's description from the catalogue ([`metric::ALL`]).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metric::ALL
                .iter()
                .try_fold(PrometheusBuilder::new(), |builder, m| match m.kind {
                    Kind::Histogram { buckets } => {
                        builder.set_buckets_for_metric(Matcher::Full(m.name.into()), buckets)
                    }
                    Kind::Counter | Kind::Gauge => Ok(builder),
                })
                .expect("the catalogue's bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding test harness); the
            // handle still renders what this recorder sees.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// Gives the installed recorder the description (and unit) of every metric in the catalogue.
fn describe() {
    metrics::with_recorder(|recorder| {
        for m in metric::ALL {
            let name = KeyName::from_const_str(m.name);
            let help = SharedString::const_str(m.description);
            match m.kind {
                Kind::Counter => recorder.describe_counter(name, m.unit, help),
                Kind::Gauge => recorder.describe_gauge(name, m.unit, help),
                Kind::Histogram { .. } => recorder.describe_histogram(name, m.unit, help),
            }
        }
    });
}
