//! Logs and metrics plumbing: the tracing subscriber and the Prometheus recorder; the metrics
//! themselves are defined in [`metric`].

pub mod metric;

use std::sync::OnceLock;

use metrics::{KeyName, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::ChronoUtc;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};
use metric::Kind;

pub const SERVICE_NAME: &str = "cdr-service";

/// Installs the global tracing subscriber: JSON lines for production, readable lines for
/// people. Both carry a UTC RFC 3339 timestamp, the level, the service and the span fields
/// (`call_id`, `trace_id`); JSON lines also carry `node_hostname` when `log.node_hostname` is
/// set. Safe to call more than once (later calls are no-ops).
///
/// A line that cannot be written (the log collector's end of the pipe closed) is dropped in
/// silence: tracing's fallback would report it on stderr, which is usually the same closed
/// pipe, and a failed report panics whichever task was logging, the signal handler included.
pub fn init_logging(settings: &LogSettings) {
    if subscriber(settings, std::io::stdout).try_init().is_ok() {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "logging started");
    }
}

/// The subscriber `init_logging` installs, writing its lines to `writer`.
fn subscriber<W>(settings: &LogSettings, writer: W) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fields = WithService::new(settings.node_hostname.as_deref());
    match settings.format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .log_internal_errors(false)
                .event_format(
                    fields.around(
                        tracing_subscriber::fmt::format()
                            .json()
                            .with_timer(ChronoUtc::rfc_3339())
                            .flatten_event(true)
                            .with_current_span(true),
                    ),
                )
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .finish(),
        ),
        LogFormat::Console => Box::new(
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .log_internal_errors(false)
                .event_format(
                    fields.around(
                        tracing_subscriber::fmt::format()
                            .with_timer(ChronoUtc::rfc_3339())
                            .with_target(true),
                    ),
                )
                .finish(),
        ),
    }
}

/// Puts the service's name on every log line: a `"service":"cdr-service"` key on JSON lines, so
/// log collectors can route them without parsing targets, and a prefix on console lines. JSON
/// lines also get the node's name, `"node_hostname":"..."`, when it is set.
///
/// The fields are written by the formatter, not held by a span: every line has them, whichever
/// task or thread wrote it.
struct WithService<F> {
    inner: F,
    /// What a JSON line starts with: `{` and the fields above, each followed by a comma.
    json_prefix: String,
}

impl WithService<()> {
    fn new(node_hostname: Option<&str>) -> Self {
        let mut json_prefix = format!("{{\"service\":{},", json_string(SERVICE_NAME));
        if let Some(name) = node_hostname {
            json_prefix.push_str(&format!("\"node_hostname\":{},", json_string(name)));
        }
        WithService {
            inner: (),
            json_prefix,
        }
    }

    fn around<F>(self, inner: F) -> WithService<F> {
        WithService {
            inner,
            json_prefix: self.json_prefix,
        }
    }
}

/// `value` as a JSON string, quoted and escaped.
fn json_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

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
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{}{rest}", self.json_prefix),
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

/// Gives the installed recorder the description (and unit) of every metric in the catalogue,
/// and exports every counter without labels at 0 from the start, so that dashboards and
/// `rate()` have their series before the first incident (the labelled ones, for their label
/// values known in advance: `app`).
fn describe() {
    static ZERO: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
    metrics::with_recorder(|recorder| {
        for m in metric::ALL {
            let name = KeyName::from_const_str(m.name);
            let help = SharedString::const_str(m.description);
            match m.kind {
                Kind::Counter => {
                    recorder.describe_counter(name, m.unit, help);
                    if m.labels.is_empty() {
                        recorder
                            .register_counter(&metrics::Key::from_static_name(m.name), &ZERO)
                            .absolute(0);
                    }
                }
                Kind::Gauge => recorder.describe_gauge(name, m.unit, help),
                Kind::Histogram { .. } => recorder.describe_histogram(name, m.unit, help),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;

        fn make_writer(&'w self) -> Lines {
            self.clone()
        }
    }

    /// The lines the subscriber for `format` and `node_hostname` writes for one event in a span
    /// and one outside any span.
    fn log(format: LogFormat, node_hostname: Option<&str>) -> Vec<String> {
        let settings = LogSettings {
            format,
            level: "info".into(),
            node_hostname: node_hostname.map(str::to_owned),
        };
        let lines = Lines::default();
        tracing::subscriber::with_default(subscriber(&settings, lines.clone()), || {
            tracing::info_span!("call", call_id = "c-1").in_scope(|| {
                tracing::info!(events = 3, "in a span");
            });
            tracing::warn!("outside any span");
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn json_lines_carry_the_service_and_the_node_hostname() {
        let lines = log(LogFormat::Json, Some("node-7"));
        assert_eq!(lines.len(), 2, "{lines:?}");
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["service"], SERVICE_NAME, "{line}");
            assert_eq!(v["node_hostname"], "node-7", "{line}");
            assert!(
                v["timestamp"].is_string() && v["message"].is_string(),
                "{line}"
            );
        }
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&lines[0]).unwrap()["span"]["call_id"],
            "c-1"
        );
    }

    #[test]
    fn a_node_hostname_is_escaped_and_none_leaves_the_field_out() {
        let lines = log(LogFormat::Json, Some("node \"7\"\\n"));
        let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["node_hostname"], "node \"7\"\\n");
        for line in log(LogFormat::Json, None) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["service"], SERVICE_NAME, "{line}");
            assert!(v.get("node_hostname").is_none(), "{line}");
        }
    }

    #[test]
    fn console_lines_start_with_the_service() {
        for line in log(LogFormat::Console, Some("node-7")) {
            assert!(line.starts_with("cdr-service "), "{line}");
            assert!(
                serde_json::from_str::<serde_json::Value>(&line).is_err(),
                "{line}"
            );
        }
    }
}
