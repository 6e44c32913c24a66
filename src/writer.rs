//! The CDR writer: consolidated rows upserted into `calls` in batches, one statement per batch,
//! with each written call's usage lines (`usage_records`) replaced in the same transaction.
//!
//! A row only ever replaces one folded from fewer events (`event_count` is its version), so a
//! late or out-of-order write can never make a record go backwards; a call's usage lines are
//! only replaced where its row was, so they are always those of the row's version.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use metrics::{counter, histogram};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{BackoffSettings, WriterSettings};
use crate::health::Health;
use crate::lease::Fence;
use crate::merge::{ANOMALIES, CallRecord, UsageLine};
use crate::project::Projected;
use crate::retry::{Retry, Stop};
use crate::row::CallRow;
use crate::telemetry::metric;
use crate::usage::UsageRow;

/// A record to write, with what the writer needs beyond the row itself.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub record: CallRecord,
    /// The call's usage lines, priced as the record's `total_cost` is.
    pub usage: Vec<UsageLine>,
    /// Distinct logged events folded into the record: its version.
    pub event_count: i32,
    /// Highest event id folded into the record: the call leaves `open_calls` once a row
    /// covering its last logged event is committed.
    pub max_event_id: i64,
    /// When the call's end reached the service, for the flush-latency histogram.
    pub end_received: Option<Instant>,
    /// Why the actor flushed.
    pub cause: FlushCause,
    /// Quarantine the call with this reason, in the transaction that writes its row (a call
    /// past `tracker.max_events_per_call`): never quarantined without its record.
    pub quarantine: Option<String>,
}

/// Why a call's record is written: the `cause` label of `cdr_records_written_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushCause {
    /// The call ended and its linger is over (or the service is stopping).
    Ended,
    /// No end, and nothing came for `idle_timeout`.
    IdleTimeout,
    /// More events came than `tracker.max_events_per_call`: written from those it has, then
    /// quarantined.
    Capped,
}

impl FlushCause {
    pub const ALL: [FlushCause; 3] = [
        FlushCause::Ended,
        FlushCause::IdleTimeout,
        FlushCause::Capped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FlushCause::Ended => "ended",
            FlushCause::IdleTimeout => "idle_timeout",
            FlushCause::Capped => "capped",
        }
    }
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteRequest>,
}

impl WriterHandle {
    /// Queues a record. Waits when the writer is behind: actors slow down rather than the
    /// service buffering without bound.
    pub async fn write(&self, request: WriteRequest) -> Result<(), WriterClosed> {
        self.tx.send(request).await.map_err(|_| WriterClosed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the record writer has stopped")]
pub struct WriterClosed;

pub struct RecordWriter {
    pool: PgPool,
    /// Carried by every write: the lease this instance holds (`lease`).
    fence: Fence,
    settings: WriterSettings,
    backoff: BackoffSettings,
    health: Health,
    /// How far the dialog-turn and usage projections are committed: a call is closed only once
    /// they cover its events (see `project`).
    projected: Projected,
    rx: mpsc::Receiver<WriteRequest>,
}

impl RecordWriter {
    pub fn new(
        pool: PgPool,
        settings: WriterSettings,
        backoff: BackoffSettings,
        health: Health,
        projected: Projected,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(settings.batch_size * 8);
        (
            RecordWriter {
                pool,
                fence: Fence::none(),
                settings,
                backoff,
                health,
                projected,
                rx,
            },
            WriterHandle { tx },
        )
    }

    /// The same writer, its writes fenced by the lease this instance holds.
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// Runs until `drain` fires, then writes what is queued and returns. `abort` fires when
    /// the shutdown bound has passed: unwritten records are rebuilt from the log next start.
    pub async fn run(mut self, drain: CancellationToken, abort: CancellationToken) {
        let mut batch: Vec<WriteRequest> = Vec::with_capacity(self.settings.batch_size);
        loop {
            batch.clear();
            let draining = drain.is_cancelled();
            let first = if draining {
                self.rx.try_recv().ok()
            } else {
                tokio::select! {
                    r = self.rx.recv() => r,
                    _ = drain.cancelled() => self.rx.try_recv().ok(),
                }
            };
            let Some(first) = first else {
                break;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.settings.batch_max_age;
            while batch.len() < self.settings.batch_size {
                if drain.is_cancelled() {
                    match self.rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                    continue;
                }
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(r)) => batch.push(r),
                    Ok(None) | Err(_) => break,
                }
            }
            if !self.write_with_retry(&batch, &abort).await {
                warn!(
                    pending = batch.len() + self.rx.len(),
                    "record writer stopped before writing everything; the log still holds those calls' events"
                );
                return;
            }
        }
        info!("record writer drained");
    }

    /// Writes one batch, retrying while the database is unavailable. A batch the database
    /// refuses is bisected down to the rows at fault (`Retry::isolate`), and a row refused
    /// alone is logged and counted (its events stay in the log and the call in `open_calls`);
    /// when not one row could be written, readiness says so until a later write succeeds.
    /// False if aborted.
    async fn write_with_retry(
        &mut self,
        batch: &[WriteRequest],
        abort: &CancellationToken,
    ) -> bool {
        let Some(close) = self.projections_cover(batch, abort).await else {
            return false;
        };
        let retry = Retry::new(&self.backoff, abort);
        let health = &self.health;
        let retrying = |e: &sqlx::Error, delay: Duration| {
            health.set_database_up(false);
            warn!(error = %e, retry_in = ?delay, "record write failed; retrying");
            counter!(metric::RECORD_WRITE_RETRIES.name).increment(1);
        };
        let pool = &self.pool;
        let fence = &self.fence;
        let mut started = Instant::now();
        let attempt = || {
            started = Instant::now();
            upsert(pool, fence, batch, close)
        };
        let e = match retry.run(attempt, retrying).await {
            Ok(written) => {
                health.set_database_up(true);
                health.set_write_succeeded(TABLE);
                observe(batch, written, started.elapsed());
                return true;
            }
            Err(Stop::Cancelled) => return false,
            Err(Stop::Refused(e)) => e,
        };
        // The data itself was refused: find the rows at fault, write the rest.
        warn!(error = %e, records = batch.len(), "record batch refused; bisecting it down to the rows at fault");
        let mut taken = false;
        let mut last_refusal = e.to_string();
        let isolated = retry
            .isolate(
                batch.len(),
                |range| upsert(pool, fence, &batch[range], close),
                |range, outcome| {
                    let requests = &batch[range];
                    match outcome {
                        Ok(written) => {
                            taken = true;
                            observe(requests, written, Duration::ZERO)
                        }
                        Err(e) => {
                            last_refusal = e.to_string();
                            for request in requests {
                                error!(
                                    call_id = %request.record.call_id,
                                    trace_id = request.record.trace_id.as_deref().unwrap_or(""),
                                    error = %e,
                                    "record refused by the database; its events stay in call_events"
                                );
                            }
                            counter!(metric::RECORDS_REFUSED.name).increment(requests.len() as u64);
                        }
                    }
                    async { Ok::<(), std::convert::Infallible>(()) }
                },
                retrying,
            )
            .await
            .is_ok();
        health.set_isolated_write(TABLE, taken, isolated, last_refusal);
        isolated
    }

    /// Waits until the projections cover every event the batch's records folded, so that the
    /// calls may leave `open_calls`. Usually they already do: records come a linger after their
    /// events, projections within a commit or two. `Some(false)` if the projector stopped short
    /// (the rows are written, the calls stay open, and the next start re-projects them); `None`
    /// if aborted.
    async fn projections_cover(
        &mut self,
        batch: &[WriteRequest],
        abort: &CancellationToken,
    ) -> Option<bool> {
        let upto = batch.iter().map(|r| r.max_event_id).max().unwrap_or(0);
        if self.projected.current() >= upto {
            return Some(true);
        }
        let started = Instant::now();
        let covered = tokio::select! {
            r = self.projected.wait_for(upto) => r,
            _ = abort.cancelled() => return None,
        };
        histogram!(metric::RECORD_PROJECTION_WAIT.name).record(started.elapsed().as_secs_f64());
        match covered {
            Ok(()) => Some(true),
            Err(e) => {
                warn!(error = %e, records = batch.len(), "writing records without closing their calls");
                Some(false)
            }
        }
    }
}

/// What readiness names when the database refuses the records.
const TABLE: &str = "calls";

/// Counts a written batch: its size, its time, and each record by status, disposition and cause.
fn observe(batch: &[WriteRequest], written: u64, took: Duration) {
    histogram!(metric::RECORD_BATCH_SIZE.name).record(batch.len() as f64);
    if !took.is_zero() {
        histogram!(metric::RECORD_WRITE_DURATION.name).record(took.as_secs_f64());
    }
    counter!(metric::RECORDS_STALE_SKIPPED.name)
        .increment((batch.len() as u64).saturating_sub(written));
    for r in batch {
        counter!(
            metric::RECORDS_WRITTEN.name,
            "status" => r.record.status.as_str(),
            "disposition" => r.record.disposition.as_str(),
            "cause" => r.cause.as_str(),
        )
        .increment(1);
        if let Some(end) = r.end_received {
            histogram!(metric::RECORD_FLUSH_LATENCY.name).record(end.elapsed().as_secs_f64());
        }
        for anomaly in r.record.anomalies.iter().flat_map(|a| a.split(',')) {
            if let Some(known) = ANOMALIES.iter().find(|k| **k == anomaly) {
                counter!(metric::RECORD_ANOMALIES.name, "anomaly" => *known).increment(1);
            }
        }
    }
}

/// Removes the calls `$1` from `open_calls` where their row now covers event id `$2` (same
/// position).
///
/// The redundant `call_id = ANY($1)` offers the planner the primary key for the batch's rows;
/// with the join condition alone its only choice was to hash-join against a scan of the whole
/// table, which holds every open call and, between vacuums, their dead versions.
pub const CLOSE_OPEN_CALLS_SQL: &str = "DELETE FROM open_calls o USING UNNEST($1::text[], $2::bigint[]) AS t(call_id, upto) \
     WHERE o.call_id = ANY($1::text[]) AND o.call_id = t.call_id AND o.last_event_id <= t.upto";

/// Closes the calls whose rows now cover their last logged event (`CLOSE_OPEN_CALLS_SQL`),
/// inside the caller's transaction, which must have begun with `db::BEGIN_PREFERRING_INDEXES`
/// so that it reads `open_calls`' primary key; returns how many closed.
pub async fn close_open_calls(
    tx: &mut sqlx::PgConnection,
    call_ids: &[&str],
    upto: &[i64],
) -> Result<u64, sqlx::Error> {
    let closed = sqlx::query(CLOSE_OPEN_CALLS_SQL)
        .bind(call_ids)
        .bind(upto)
        .execute(&mut *tx)
        .await?;
    Ok(closed.rows_affected())
}

/// Upserts a batch; returns how many rows changed (stale versions are skipped). With `close`,
/// the calls whose rows now cover their last logged event leave `open_calls` in the same
/// transaction; the caller passes it only once those events' projections are committed. The
/// transaction begins with the `fence` check: nothing commits once the lease has moved on.
pub async fn upsert(
    pool: &PgPool,
    fence: &Fence,
    batch: &[WriteRequest],
    close: bool,
) -> Result<u64, sqlx::Error> {
    // One row per call per statement: keep the highest version of each.
    let mut newest: HashMap<&str, &WriteRequest> = HashMap::with_capacity(batch.len());
    for r in batch {
        let slot = newest.entry(r.record.call_id.as_str()).or_insert(r);
        if r.event_count >= slot.event_count {
            *slot = r;
        }
    }
    let rows: Vec<&WriteRequest> = newest.into_values().collect();
    let stored: Vec<CallRow> = rows
        .iter()
        .map(|r| CallRow::from_record(&r.record, r.event_count))
        .collect();
    let mut tx = pool.begin_with(crate::db::BEGIN_PREFERRING_INDEXES).await?;
    fence.check(&mut tx).await?;
    let written = CallRow::upsert(stored).fetch_all(&mut *tx).await?;
    let lines = write_usage(&mut tx, &rows, &written).await?;
    // Same transaction: a call leaves open_calls only with a row that covers its last logged
    // event. A concurrent log append for the call holds the open_calls row lock, and the
    // re-checked condition then keeps the row.
    if close {
        close_open_calls(
            &mut tx,
            &rows
                .iter()
                .map(|r| r.record.call_id.as_str())
                .collect::<Vec<_>>(),
            &rows.iter().map(|r| r.max_event_id).collect::<Vec<_>>(),
        )
        .await?;
    }
    quarantine(&mut tx, batch).await?;
    tx.commit().await?;
    counter!(metric::USAGE_LINES_WRITTEN.name).increment(lines);
    Ok(written.len() as u64)
}

/// Records the quarantine the batch's requests ask for (`WriteRequest::quarantine`), inside
/// the caller's transaction (fenced like the rest), so that a call is quarantined only with its record written. The
/// trace id is the record's; `failures` 0 says no actor failure put it there.
const QUARANTINE_SQL: &str = "INSERT INTO quarantined_calls (call_id, trace_id, failures, reason) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::text[]) \
     ON CONFLICT (call_id) DO UPDATE SET failures = EXCLUDED.failures, reason = EXCLUDED.reason, \
       quarantined_at = now()";

async fn quarantine(
    tx: &mut sqlx::PgConnection,
    batch: &[WriteRequest],
) -> Result<(), sqlx::Error> {
    let asked: Vec<&WriteRequest> = batch.iter().filter(|r| r.quarantine.is_some()).collect();
    if asked.is_empty() {
        return Ok(());
    }
    sqlx::query(QUARANTINE_SQL)
        .bind(
            asked
                .iter()
                .map(|r| r.record.call_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            asked
                .iter()
                .map(|r| r.record.trace_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(vec![0i32; asked.len()])
        .bind(
            asked
                .iter()
                .map(|r| r.quarantine.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Replaces the usage lines of the calls whose rows were `written`, billed to the tenant each
/// row now has, inside the caller's transaction. A line whose quantity fits no column is left
/// out, logged and counted (its event stays in the log). Returns how many lines it wrote.
async fn write_usage(
    tx: &mut sqlx::PgConnection,
    requests: &[&WriteRequest],
    written: &[crate::row::Written],
) -> Result<u64, sqlx::Error> {
    if written.is_empty() {
        return Ok(0);
    }
    let by_call: HashMap<&str, &WriteRequest> = requests
        .iter()
        .map(|r| (r.record.call_id.as_str(), *r))
        .collect();
    let mut lines = Vec::new();
    for w in written {
        let Some(request) = by_call.get(w.call_id.as_str()) else {
            continue;
        };
        for line in &request.usage {
            match UsageRow::from_line(&w.call_id, w.tenant_id.as_deref(), line) {
                Some(row) => lines.push(row),
                None => {
                    warn!(call_id = %w.call_id,
                        trace_id = request.record.trace_id.as_deref().unwrap_or(""),
                        usage_key = %line.key, quantity = %line.quantity,
                        "usage line left out: its quantity does not fit usage_records.quantity");
                    counter!(metric::USAGE_LINES_UNFIT.name).increment(1);
                }
            }
        }
    }
    let call_ids: Vec<&str> = written.iter().map(|w| w.call_id.as_str()).collect();
    let count = lines.len();
    let [delete, insert] = UsageRow::replace(&call_ids, lines);
    delete.execute(&mut *tx).await?;
    if count > 0 {
        insert.execute(&mut *tx).await?;
    }
    Ok(count as u64)
}
