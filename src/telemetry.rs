//! Logs and metrics plumbing: the tracing subscriber and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::ChronoUtc;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogSettings};

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

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0, 60.0,
                    ],
                )
                .and_then(|b| {
                    // Every record waits out the linger (2 s by default), so the interesting
                    // part of this one is just above a linger: fine steps there, so that a p99
                    // of linger + 250 ms can be read off it.
                    b.set_buckets_for_metric(
                        Matcher::Full("cdr_record_flush_latency_seconds".into()),
                        &[
                            0.1, 0.25, 0.5, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 2.05, 2.1, 2.25, 2.5,
                            3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                        ],
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_batch_size".into()),
                        &[
                            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                        ],
                    )
                })
                .expect("static bucket lists are non-empty")
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

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "cdr_build_info",
        "Always 1; labels carry the version and commit"
    );
    describe_gauge!(
        "cdr_runtime_worker_threads",
        "Worker threads of the async runtime (runtime.worker_threads; 0 there means one fewer than the CPUs)"
    );
    describe_gauge!(
        "cdr_active_calls",
        "Active calls that have not ended, by state (resting ones included)"
    );
    describe_gauge!(
        "cdr_calls_resting",
        "Active calls resting: quiet for tracker.rest_after, state kept, no actor"
    );
    describe_counter!(
        "cdr_call_rests_total",
        "Call actors that stopped and left their call's state to rest"
    );
    describe_counter!(
        "cdr_call_wakes_total",
        "Resting calls woken by an event or their idle timeout"
    );
    describe_gauge!(
        "cdr_dispatch_queue_batches",
        "Committed event batches waiting for the tracker"
    );
    describe_histogram!(
        "cdr_dispatch_duration_seconds",
        Unit::Seconds,
        "Time to hand one committed batch to the call actors"
    );
    describe_gauge!(
        "cdr_calls_lingering",
        "Ended calls waiting out the linger before their record is written"
    );
    describe_counter!(
        "cdr_events_received_total",
        "Call events decoded from the queue, by event type"
    );
    describe_counter!(
        "cdr_events_rejected_total",
        "Messages dead-lettered, by reason"
    );
    describe_counter!(
        "cdr_duplicates_dropped_total",
        "Messages already in the event log (redeliveries, exact duplicates)"
    );
    describe_counter!(
        "cdr_log_append_rechecks_total",
        "Log batches whose plain insert met a message logged earlier and went again with the conflict check"
    );
    describe_counter!(
        "cdr_late_events_total",
        "Events for calls seen before that had no active actor (late events)"
    );
    describe_counter!(
        "cdr_records_written_total",
        "Call records upserted, by status, disposition and cause"
    );
    describe_counter!(
        "cdr_calls_timed_out_total",
        "Calls written as TIMED_OUT by the idle timeout"
    );
    describe_counter!(
        "cdr_actor_restarts_total",
        "Call actors restarted after a failure"
    );
    describe_counter!(
        "cdr_actor_quarantines_total",
        "Calls quarantined after exhausting their restart budget"
    );
    describe_counter!(
        "cdr_calls_recovered_total",
        "Calls rebuilt from the event log at startup"
    );
    describe_histogram!(
        "cdr_log_batch_size",
        Unit::Count,
        "Events per event-log batch"
    );
    describe_histogram!(
        "cdr_log_write_duration_seconds",
        Unit::Seconds,
        "Time to commit one event-log batch"
    );
    describe_histogram!(
        "cdr_ingest_handoff_wait_seconds",
        Unit::Seconds,
        "From a batch being due (old or full) to the committer taking it: time spent waiting for the previous commit"
    );
    describe_histogram!(
        "cdr_ingest_ack_duration_seconds",
        Unit::Seconds,
        "From a committed batch's ack being handed to the broker client to its frame being written"
    );
    describe_gauge!(
        "cdr_projection_queue_batches",
        "Committed event batches waiting for their dialog-turn and usage projections"
    );
    describe_counter!(
        "cdr_projection_rows_total",
        "Projection rows upserted, by table (call_dialog_events, usage_records)"
    );
    describe_histogram!(
        "cdr_projection_write_duration_seconds",
        Unit::Seconds,
        "Time to commit one projection statement (one or more committed batches)"
    );
    describe_counter!(
        "cdr_projection_write_retries_total",
        "Projection writes retried while the database was away"
    );
    describe_counter!(
        "cdr_projection_rows_refused_total",
        "Projection rows the database refused alone, left out (their events stay in the log)"
    );
    describe_histogram!(
        "cdr_record_projection_wait_seconds",
        Unit::Seconds,
        "A record batch waiting for the projections of its calls' events before closing them"
    );
    describe_histogram!(
        "cdr_record_flush_latency_seconds",
        Unit::Seconds,
        "From a call's end event arriving to its record being committed"
    );
    describe_gauge!(
        "cdr_messages_in_flight",
        "Deliveries received and not yet acked"
    );
    describe_gauge!("cdr_broker_up", "1 while connected to RabbitMQ");
    describe_gauge!(
        "cdr_database_up",
        "1 while the last database operation succeeded"
    );
}
