//! The metrics catalogue: every metric the service exports, defined once.
//!
//! Each metric is a `const` with its name, kind, label names, unit and description. Call sites
//! record through the name (`counter!(metric::RECORDS_WRITTEN.name, "status" => ...)`, with
//! the labels listed here, in this order), [`ALL`] gives the recorder every description and
//! every histogram's buckets, and `tests/metrics_catalogue.rs` holds the README's table and
//! the call sites in `src/` to it.
//!
//! A const is named after its metric without the `cdr_` prefix and the `_total` or `_seconds`
//! suffix: `cdr_records_written_total` is `RECORDS_WRITTEN`.

use metrics::Unit;

/// One exported metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// The exported name, `cdr_` first.
    pub name: &'static str,
    pub kind: Kind,
    /// The label names every series carries, in the order the call sites give them.
    pub labels: &'static [&'static str],
    /// What a value counts, for the recorder's description (the exporter does not append it
    /// to the name).
    pub unit: Option<Unit>,
    /// The `# HELP` text.
    pub description: &'static str,
}

/// What kind of metric it is; a histogram carries its bucket bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram { buckets: &'static [f64] },
}

impl Kind {
    /// The Prometheus type: `counter`, `gauge` or `histogram`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram { .. } => "histogram",
        }
    }
}

impl Metric {
    /// A counter without labels.
    const fn counter(name: &'static str, description: &'static str) -> Self {
        Self::new(name, Kind::Counter, None, description)
    }

    /// A gauge without labels.
    const fn gauge(name: &'static str, description: &'static str) -> Self {
        Self::new(name, Kind::Gauge, None, description)
    }

    /// A histogram of durations, in seconds, with buckets from 1 ms to 60 s.
    const fn seconds(name: &'static str, description: &'static str) -> Self {
        let kind = Kind::Histogram {
            buckets: SECONDS_BUCKETS,
        };
        Self::new(name, kind, Some(Unit::Seconds), description)
    }

    /// A histogram of batch sizes.
    const fn batch_size(name: &'static str, description: &'static str) -> Self {
        let kind = Kind::Histogram {
            buckets: BATCH_SIZE_BUCKETS,
        };
        Self::new(name, kind, Some(Unit::Count), description)
    }

    /// A metric without labels.
    const fn new(
        name: &'static str,
        kind: Kind,
        unit: Option<Unit>,
        description: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            labels: &[],
            unit,
            description,
        }
    }

    /// The same metric with these label names.
    const fn labelled(self, labels: &'static [&'static str]) -> Self {
        Self { labels, ..self }
    }

    /// The same histogram with these bucket bounds.
    const fn buckets(self, buckets: &'static [f64]) -> Self {
        Self {
            kind: Kind::Histogram { buckets },
            ..self
        }
    }
}

/// Durations: 1 ms to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every record waits out the linger (2 s by default), so the interesting part of the flush
/// latency is just above a linger: fine steps there, so that a p99 of linger + 250 ms can be
/// read off it.
const FLUSH_LATENCY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 2.05, 2.1, 2.25, 2.5, 3.0, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0,
];

/// Events or records per batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
];

// Active calls (the tracker).

pub const ACTIVE_CALLS: Metric = Metric::gauge(
    "cdr_active_calls",
    "Active calls that have not ended, by state (resting ones included)",
)
.labelled(&["state"]);
pub const CALLS_LINGERING: Metric = Metric::gauge(
    "cdr_calls_lingering",
    "Ended calls waiting out the linger before their record is written",
);
pub const CALLS_RESTING: Metric = Metric::gauge(
    "cdr_calls_resting",
    "Active calls resting: quiet for tracker.rest_after, state kept, no actor",
);
pub const CALL_RESTS: Metric = Metric::counter(
    "cdr_call_rests_total",
    "Call actors that stopped and left their call's state to rest",
);
pub const CALL_WAKES: Metric = Metric::counter(
    "cdr_call_wakes_total",
    "Resting calls woken by an event or their idle timeout",
);
pub const LATE_EVENTS: Metric = Metric::counter(
    "cdr_late_events_total",
    "Events for calls seen before that had no active actor (late events)",
);
pub const CALLS_TIMED_OUT: Metric = Metric::counter(
    "cdr_calls_timed_out_total",
    "Calls written as TIMED_OUT by the idle timeout",
);
pub const ACTOR_RESTARTS: Metric = Metric::counter(
    "cdr_actor_restarts_total",
    "Call actors restarted after a failure",
);
pub const ACTOR_QUARANTINES: Metric = Metric::counter(
    "cdr_actor_quarantines_total",
    "Calls quarantined after exhausting their restart budget",
);
pub const ACTOR_SPAWN_FAILURES: Metric = Metric::counter(
    "cdr_actor_spawn_failures_total",
    "Call actors that could not be started (the call's events stay in the log)",
);
pub const QUARANTINED_EVENTS: Metric = Metric::counter(
    "cdr_quarantined_events_total",
    "Events for quarantined calls, and past a call's event cap: logged, not folded",
);
pub const CALLS_CAPPED: Metric = Metric::counter(
    "cdr_calls_capped_total",
    "Calls past tracker.max_events_per_call: written from their first events, flagged events_capped and quarantined",
);
pub const CALLS_DEFERRED: Metric = Metric::counter(
    "cdr_calls_deferred_total",
    "Times a call not in memory was deferred because tracker.max_open_calls calls were: its events logged, the call taken up when there is room",
);
pub const OPEN_CALLS_LIMIT_REACHED: Metric = Metric::gauge(
    "cdr_open_calls_limit_reached",
    "1 while calls are deferred: tracker.max_open_calls reached, or deferred calls not all taken up yet",
);
pub const CALLS_RECOVERED: Metric = Metric::counter(
    "cdr_calls_recovered_total",
    "Calls rebuilt from the event log at startup",
);

// Dispatch.

pub const DISPATCH_QUEUE_BATCHES: Metric = Metric::gauge(
    "cdr_dispatch_queue_batches",
    "Committed event batches waiting for the tracker",
);
pub const DISPATCH_DURATION: Metric = Metric::seconds(
    "cdr_dispatch_duration_seconds",
    "Time to hand one committed batch to the call actors",
);

// Ingest and the event log.

pub const EVENTS_RECEIVED: Metric = Metric::counter(
    "cdr_events_received_total",
    "Call events decoded from the queue, by event type and wire format (json, protobuf)",
)
.labelled(&["event_type", "format"]);
pub const PLATFORM_EVENTS: Metric = Metric::counter(
    "cdr_platform_events_total",
    "Platform events that are not about a call (no call id, not a call event type), acknowledged without being logged, by event type and wire format",
)
.labelled(&["event_type", "format"]);
pub const EVENTS_REJECTED: Metric = Metric::counter(
    "cdr_events_rejected_total",
    "Messages dead-lettered, by reason",
)
.labelled(&["reason"]);
pub const DUPLICATES_DROPPED: Metric = Metric::counter(
    "cdr_duplicates_dropped_total",
    "Messages already in the event log (redeliveries, exact duplicates)",
);
pub const LOG_APPEND_RECHECKS: Metric = Metric::counter(
    "cdr_log_append_rechecks_total",
    "Log batches whose plain insert met a message logged earlier and went again with the conflict check",
);
pub const SCHEMA_INCOMPATIBLE_COLUMNS: Metric = Metric::gauge(
    "cdr_schema_incompatible_columns",
    "Columns of the database the service cannot write as they are (schema check at start): while above 0 it is not ready and consumes nothing",
);
pub const CLUSTER_ROLE: Metric = Metric::gauge(
    "cdr_cluster_role",
    "1 for this instance's role: starting (lease not yet checked), standby (another instance holds the lease) or active",
)
.labelled(&["role"]);
pub const LEASE_TAKEN: Metric = Metric::counter(
    "cdr_lease_taken_total",
    "Times this instance took the lease and became the active one",
);
pub const LEASE_LOST: Metric = Metric::counter(
    "cdr_lease_lost_total",
    "Times this instance lost the lease while active and stood down at once",
);
pub const WRITES_REFUSED: Metric = Metric::gauge(
    "cdr_writes_refused",
    "1 while the database refuses every row of the latest write of a table (calls, call_dialog_events): the service is then not ready; 0 once a write succeeds",
)
.labelled(&["table"]);
pub const LOG_UNDECODABLE_EVENTS: Metric = Metric::counter(
    "cdr_log_undecodable_events_total",
    "Logged events whose stored bytes no longer decode when a call is rebuilt (read from their stored columns instead); always 0 unless the decoder changed",
);
pub const LOG_BATCH_SIZE: Metric =
    Metric::batch_size("cdr_log_batch_size", "Events per event-log batch");
pub const LOG_WRITE_DURATION: Metric = Metric::seconds(
    "cdr_log_write_duration_seconds",
    "Time to commit one event-log batch",
);
pub const LOG_WRITE_RETRIES: Metric = Metric::counter(
    "cdr_log_write_retries_total",
    "Event-log batch writes retried while the database was away",
);
pub const INGEST_HANDOFF_WAIT: Metric = Metric::seconds(
    "cdr_ingest_handoff_wait_seconds",
    "From a batch being due (old or full) to the committer taking it: time spent waiting for the previous commit",
);
pub const INGEST_ACK_DURATION: Metric = Metric::seconds(
    "cdr_ingest_ack_duration_seconds",
    "From a committed batch's ack being handed to the broker client to its frame being written",
);
pub const MESSAGES_IN_FLIGHT: Metric = Metric::gauge(
    "cdr_messages_in_flight",
    "Deliveries received and not yet acked",
);

// Projections.

pub const PROJECTION_QUEUE_BATCHES: Metric = Metric::gauge(
    "cdr_projection_queue_batches",
    "Committed event batches waiting for their dialog-turn and usage projections",
);
pub const PROJECTION_ROWS: Metric = Metric::counter(
    "cdr_projection_rows_total",
    "Projection rows upserted, by table (call_dialog_events)",
)
.labelled(&["table"]);
pub const PROJECTION_WRITE_DURATION: Metric = Metric::seconds(
    "cdr_projection_write_duration_seconds",
    "Time to commit one projection statement (one or more committed batches)",
);
pub const PROJECTION_WRITE_RETRIES: Metric = Metric::counter(
    "cdr_projection_write_retries_total",
    "Projection writes retried while the database was away",
);
pub const PROJECTION_ROWS_REFUSED: Metric = Metric::counter(
    "cdr_projection_rows_refused_total",
    "Projection rows the database refused alone, left out (their events stay in the log)",
);

// Call records (the writer).

pub const RECORDS_WRITTEN: Metric = Metric::counter(
    "cdr_records_written_total",
    "Call records upserted, by status, disposition and cause",
)
.labelled(&["status", "disposition", "cause"]);
pub const RECORDS_STALE_SKIPPED: Metric = Metric::counter(
    "cdr_records_stale_skipped_total",
    "Record upserts skipped because the row already had a newer version",
);
pub const RECORDS_REFUSED: Metric = Metric::counter(
    "cdr_records_refused_total",
    "Call records the database refused alone, left out (their events stay in the log)",
);
pub const USAGE_LINES_WRITTEN: Metric = Metric::counter(
    "cdr_usage_lines_written_total",
    "Usage lines (usage_records) written with their calls' records",
);
pub const EVENT_FIELDS_DROPPED: Metric = Metric::counter(
    "cdr_event_fields_dropped_total",
    "Fields of accepted events left out because they cannot be kept (a trace id too long for its column)",
)
.labelled(&["field"]);
pub const RECORD_ANOMALIES: Metric = Metric::counter(
    "cdr_record_anomalies_total",
    "Record writes whose row names an anomaly: a figure of the events it could not keep",
)
.labelled(&["anomaly"]);
pub const USAGE_LINES_UNFIT: Metric = Metric::counter(
    "cdr_usage_lines_unfit_total",
    "Usage lines left out because their quantity does not fit usage_records.quantity",
);
pub const RECORD_BATCH_SIZE: Metric =
    Metric::batch_size("cdr_record_batch_size", "Call records per upsert batch");
pub const RECORD_WRITE_DURATION: Metric = Metric::seconds(
    "cdr_record_write_duration_seconds",
    "Time to commit one batch of call records",
);
pub const RECORD_WRITE_RETRIES: Metric = Metric::counter(
    "cdr_record_write_retries_total",
    "Record batch writes retried while the database was away",
);
pub const RECORD_PROJECTION_WAIT: Metric = Metric::seconds(
    "cdr_record_projection_wait_seconds",
    "A record batch waiting for the projections of its calls' events before closing them",
);
pub const RECORD_FLUSH_LATENCY: Metric = Metric::seconds(
    "cdr_record_flush_latency_seconds",
    "From a call's end event arriving to its record being committed",
)
.buckets(FLUSH_LATENCY_BUCKETS);

// Connections and the process.

pub const HTTP_TLS_HANDSHAKES_FAILED: Metric = Metric::counter(
    "cdr_http_tls_handshakes_failed_total",
    "TLS handshakes on the HTTP listener refused or timed out (no client certificate, a wrong one, not TLS)",
);
pub const HTTP_TLS_RELOADS: Metric = Metric::counter(
    "cdr_http_tls_reloads_total",
    "The HTTP listener's certificate files read again after they changed, by outcome (loaded, failed: the previous ones kept)",
)
.labelled(&["outcome"]);
pub const BROKER_UP: Metric = Metric::gauge("cdr_broker_up", "1 while connected to RabbitMQ");
pub const BROKER_RECONNECTS: Metric = Metric::counter(
    "cdr_broker_reconnects_total",
    "Broker sessions lost or connections that failed, each followed by another attempt",
);
pub const DATABASE_UP: Metric = Metric::gauge(
    "cdr_database_up",
    "1 while the last database operation succeeded",
);
pub const BUILD_INFO: Metric = Metric::gauge(
    "cdr_build_info",
    "Always 1; labels carry the version and commit",
)
.labelled(&["version", "commit"]);
pub const RUNTIME_WORKER_THREADS: Metric = Metric::gauge(
    "cdr_runtime_worker_threads",
    "Worker threads of the async runtime (runtime.worker_threads; 0 there means one fewer than the CPUs)",
);

/// Every metric above, in the order above.
pub const ALL: &[Metric] = &[
    ACTIVE_CALLS,
    CALLS_LINGERING,
    CALLS_RESTING,
    CALL_RESTS,
    CALL_WAKES,
    LATE_EVENTS,
    CALLS_TIMED_OUT,
    ACTOR_RESTARTS,
    ACTOR_QUARANTINES,
    ACTOR_SPAWN_FAILURES,
    QUARANTINED_EVENTS,
    CALLS_CAPPED,
    CALLS_DEFERRED,
    OPEN_CALLS_LIMIT_REACHED,
    HTTP_TLS_HANDSHAKES_FAILED,
    HTTP_TLS_RELOADS,
    CALLS_RECOVERED,
    DISPATCH_QUEUE_BATCHES,
    DISPATCH_DURATION,
    EVENTS_RECEIVED,
    PLATFORM_EVENTS,
    EVENTS_REJECTED,
    DUPLICATES_DROPPED,
    LOG_APPEND_RECHECKS,
    LOG_UNDECODABLE_EVENTS,
    SCHEMA_INCOMPATIBLE_COLUMNS,
    CLUSTER_ROLE,
    LEASE_TAKEN,
    LEASE_LOST,
    WRITES_REFUSED,
    LOG_BATCH_SIZE,
    LOG_WRITE_DURATION,
    LOG_WRITE_RETRIES,
    INGEST_HANDOFF_WAIT,
    INGEST_ACK_DURATION,
    MESSAGES_IN_FLIGHT,
    PROJECTION_QUEUE_BATCHES,
    PROJECTION_ROWS,
    PROJECTION_WRITE_DURATION,
    PROJECTION_WRITE_RETRIES,
    PROJECTION_ROWS_REFUSED,
    RECORDS_WRITTEN,
    RECORDS_STALE_SKIPPED,
    RECORDS_REFUSED,
    USAGE_LINES_WRITTEN,
    USAGE_LINES_UNFIT,
    RECORD_ANOMALIES,
    EVENT_FIELDS_DROPPED,
    RECORD_BATCH_SIZE,
    RECORD_WRITE_DURATION,
    RECORD_WRITE_RETRIES,
    RECORD_PROJECTION_WAIT,
    RECORD_FLUSH_LATENCY,
    BROKER_UP,
    BROKER_RECONNECTS,
    DATABASE_UP,
    BUILD_INFO,
    RUNTIME_WORKER_THREADS,
];
