//! The projection of the event log: dialog turns (`call_dialog_events`, one row per call and
//! turn), written off the ack path. (Usage lines are written with the record, which knows the
//! call's tenant and prices: `writer`.)
//!
//! The committer's append carries only what an ack needs (the raw events and `open_calls`), so
//! each commit is shorter and the broker gets its acks sooner. The projector writes the rows of
//! committed batches afterwards, on its own connection, several batches per statement when it is
//! behind. What keeps the tables in step with the log across a crash:
//!
//! - committed batches reach the projector in commit order, and a later batch's event ids are
//!   all above an earlier one's (one committer at a time), so "every batch up to this one is
//!   projected" is one number, the projected-through event id (`Projected`);
//! - the record writer closes a call (removes it from `open_calls`) only once that number covers
//!   the call's highest folded event id: a call leaves `open_calls` only with its projections
//!   committed;
//! - after each write the projector records that number in the database (`MARK_SQL`, fenced),
//!   so it survives the process;
//! - recovery re-projects the events above the recorded mark of every call still in
//!   `open_calls` (and of every quarantined call) before it declares the events logged before
//!   the start projected. A mark recorded late only makes it re-project more: the upserts are
//!   idempotent and their result does not depend on the order rows arrive in, so projecting
//!   twice is harmless.
//!
//! Row selection (`ProjectionRows`) is pure; `write` and the task do the I/O.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::BackoffSettings;
use crate::event::{DialogTurn, EventKind};
use crate::health::Health;
use crate::lease::Fence;
use crate::log::LoggedEvent;
use crate::merge::CallEvent;
use crate::retry::{Retry, Stop};
use crate::telemetry::metric;

/// Committed batches waiting for the projector. When it falls behind (a slow database), the
/// dispatcher waits, then the committer, and the broker holds the rest.
const QUEUE_BATCHES: usize = 64;
/// Most rows in one projection statement when several batches are waiting.
const MAX_ROWS_PER_WRITE: usize = 20_000;

/// The upsert of the dialog turns in one statement: between two versions of a turn the later
/// one by content (timestamp, then body hash) wins, whatever the order they were written in.
///
/// The input holds a key at most once (`ProjectionRows` keeps one row per key): PostgreSQL
/// refuses to update one row twice in a statement.
///
/// `fence` first: `cdr_fence($11, $12)` fails the statement if this instance no longer holds the
/// lease (`lease`).
pub const PROJECT_SQL: &str = "WITH fence AS MATERIALIZED (SELECT cdr_fence($11, $12) AS epoch) \
     INSERT INTO call_dialog_events AS d \
         (call_id, turn_index, user_text, ai_text, rag_sources, stt_ms, llm_ms, tts_ms, event_timestamp, body_sha256) \
       SELECT t.* FROM UNNEST($1::text[], $2::int[], $3::text[], $4::text[], $5::jsonb[], \
                            $6::int[], $7::int[], $8::int[], $9::timestamptz[], $10::bytea[]) AS t \
         CROSS JOIN fence \
       ON CONFLICT (call_id, turn_index) DO UPDATE SET \
         user_text = EXCLUDED.user_text, ai_text = EXCLUDED.ai_text, \
         rag_sources = EXCLUDED.rag_sources, stt_ms = EXCLUDED.stt_ms, \
         llm_ms = EXCLUDED.llm_ms, tts_ms = EXCLUDED.tts_ms, \
         event_timestamp = EXCLUDED.event_timestamp, body_sha256 = EXCLUDED.body_sha256 \
       WHERE (EXCLUDED.event_timestamp, EXCLUDED.body_sha256) > (d.event_timestamp, d.body_sha256)";

/// Records that every event up to `$3` is projected, for the next start's recovery. Fenced like
/// every write: a deposed instance cannot move the mark. Only raised (`GREATEST` skips NULL).
pub const MARK_SQL: &str = "WITH fence AS MATERIALIZED (SELECT cdr_fence($1, $2) AS epoch) \
     UPDATE cluster_lease SET projected_through = GREATEST(projected_through, $3) \
     FROM fence WHERE key = $1";

/// One `call_dialog_events` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRow {
    pub call_id: String,
    pub turn: DialogTurn,
    pub timestamp: DateTime<Utc>,
    pub body_hash: [u8; 32],
}

/// The projection rows of a set of events, one per key: the later version of a turn by content
/// (timestamp, then body hash).
/// Adding the same events again, or in another order, gives the same rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProjectionRows {
    turns: HashMap<(String, i32), TurnRow>,
}

impl ProjectionRows {
    pub fn of<'a>(events: impl IntoIterator<Item = (&'a str, &'a CallEvent)>) -> Self {
        let mut rows = ProjectionRows::default();
        for (call_id, event) in events {
            rows.add(call_id, event);
        }
        rows
    }

    pub fn of_logged(events: &[LoggedEvent]) -> Self {
        Self::of(events.iter().map(|e| (e.call_id.as_str(), &e.event)))
    }

    pub fn len(&self) -> usize {
        self.turns.len()
    }

    pub fn turns(&self) -> impl Iterator<Item = &TurnRow> {
        self.turns.values()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one event's row, if it has one.
    pub fn add(&mut self, call_id: &str, e: &CallEvent) {
        if let EventKind::DialogTurn(t) = &e.kind {
            self.add_turn(TurnRow {
                call_id: call_id.to_owned(),
                turn: t.as_ref().clone(),
                timestamp: e.timestamp,
                body_hash: e.body_hash,
            });
        }
    }

    /// Takes in another set's rows, keeping the winner of each key.
    pub fn merge(&mut self, other: ProjectionRows) {
        for row in other.turns.into_values() {
            self.add_turn(row);
        }
    }

    fn add_turn(&mut self, row: TurnRow) {
        let key = (row.call_id.clone(), row.turn.turn_index);
        match self.turns.get(&key) {
            Some(old) if (old.timestamp, old.body_hash) >= (row.timestamp, row.body_hash) => {}
            _ => {
                self.turns.insert(key, row);
            }
        }
    }

    /// Parts of a split set together again.
    fn joined(parts: &[ProjectionRows]) -> ProjectionRows {
        let mut rows = ProjectionRows::default();
        for part in parts {
            rows.merge(part.clone());
        }
        rows
    }

    /// The rows one at a time (to find the one the database refuses).
    fn split(self) -> impl Iterator<Item = ProjectionRows> {
        self.turns.into_iter().map(|(k, row)| ProjectionRows {
            turns: HashMap::from([(k, row)]),
        })
    }
}

/// Upserts the rows in one statement (`PROJECT_SQL`), fenced by `fence`.
pub async fn write(pool: &PgPool, fence: &Fence, rows: &ProjectionRows) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let turns: Vec<&TurnRow> = rows.turns.values().collect();
    let column = |f: fn(&TurnRow) -> Option<&str>| turns.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query(PROJECT_SQL)
        .bind(column(|r| Some(r.call_id.as_str())))
        .bind(turns.iter().map(|r| r.turn.turn_index).collect::<Vec<_>>())
        .bind(column(|r| r.turn.user_text.as_deref()))
        .bind(column(|r| r.turn.ai_text.as_deref()))
        .bind(
            turns
                .iter()
                .map(|r| sqlx::types::Json(&r.turn.rag_sources))
                .collect::<Vec<_>>(),
        )
        .bind(turns.iter().map(|r| r.turn.stt_ms).collect::<Vec<_>>())
        .bind(turns.iter().map(|r| r.turn.llm_ms).collect::<Vec<_>>())
        .bind(turns.iter().map(|r| r.turn.tts_ms).collect::<Vec<_>>())
        .bind(turns.iter().map(|r| r.timestamp).collect::<Vec<_>>())
        .bind(
            turns
                .iter()
                .map(|r| r.body_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(fence.key())
        .bind(fence.epoch())
        .execute(pool)
        .await?;
    Ok(())
}

/// How far the projections of the lease's active instances are committed, as the projector
/// last recorded it (`MARK_SQL`): None without a lease or before the first record.
pub async fn stored_mark(pool: &PgPool, fence: &Fence) -> Result<Option<i64>, sqlx::Error> {
    let Some(key) = fence.key() else {
        return Ok(None);
    };
    let mark: Option<Option<i64>> =
        sqlx::query_scalar("SELECT projected_through FROM cluster_lease WHERE key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?;
    Ok(mark.flatten())
}

/// Writes the rows, retrying while the database is away. A set the database refuses is
/// bisected down to the rows at fault (`Retry::isolate`) and a row refused alone is left out
/// (logged and counted: its event stays in the log), so one bad row never holds back the
/// others nor the calls waiting on them.
/// When not one row could be written, readiness says so until a later write succeeds.
/// False only if `abort` fired first.
pub async fn write_with_retry(
    pool: &PgPool,
    fence: &Fence,
    rows: ProjectionRows,
    settings: &BackoffSettings,
    health: &Health,
    abort: &CancellationToken,
) -> bool {
    if rows.is_empty() {
        return true;
    }
    let retry = Retry::new(settings, abort);
    let e = match retry
        .run(|| write_timed(pool, fence, &rows), retrying)
        .await
    {
        Ok(()) => {
            health.set_write_succeeded(TABLE);
            return true;
        }
        Err(Stop::Cancelled) => return false,
        Err(Stop::Refused(e)) => e,
    };
    warn!(error = %e, rows = rows.len(), "projection rows refused; bisecting them down to the rows at fault");
    let parts: Vec<ProjectionRows> = rows.split().collect();
    let mut taken = false;
    let mut last_refusal = e.to_string();
    let isolated = retry
        .isolate(
            parts.len(),
            |range| {
                let rows = ProjectionRows::joined(&parts[range]);
                async move { write_timed(pool, fence, &rows).await }
            },
            |range, outcome| {
                match outcome {
                    Ok(()) => taken = true,
                    Err(e) => {
                        for part in &parts[range] {
                            report_refused(part, &e);
                        }
                        last_refusal = e.to_string();
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

/// What readiness names when the database refuses the projection.
const TABLE: &str = "call_dialog_events";

/// Upserts the rows and measures it.
async fn write_timed(
    pool: &PgPool,
    fence: &Fence,
    rows: &ProjectionRows,
) -> Result<(), sqlx::Error> {
    let started = std::time::Instant::now();
    write(pool, fence, rows).await?;
    histogram!(metric::PROJECTION_WRITE_DURATION.name).record(started.elapsed().as_secs_f64());
    count_written(rows);
    Ok(())
}

fn retrying(e: &sqlx::Error, delay: std::time::Duration) {
    counter!(metric::PROJECTION_WRITE_RETRIES.name).increment(1);
    warn!(error = %e, retry_in = ?delay, "projection write failed; retrying");
}

/// A row the database refused alone: left out, its event stays in the log.
fn report_refused(row: &ProjectionRows, e: &sqlx::Error) {
    for t in row.turns.values() {
        error!(call_id = %t.call_id, turn_index = t.turn.turn_index, error = %e,
            "dialog turn refused by the database; its event stays in call_events");
    }
    counter!(metric::PROJECTION_ROWS_REFUSED.name).increment(row.len() as u64);
}

fn count_written(rows: &ProjectionRows) {
    counter!(metric::PROJECTION_ROWS.name, "table" => "call_dialog_events")
        .increment(rows.turns.len() as u64);
}

/// A committed batch's projection rows, and the highest event id of the batch.
struct Committed {
    rows: ProjectionRows,
    upto: i64,
}

/// Queues committed batches for the projector (held by the ingest dispatcher). It holds no
/// sender of the projected-through mark: only the projector task raises it, so once that task
/// has ended, for whatever reason, whoever waits on the mark learns it will not rise again.
#[derive(Clone)]
pub struct ProjectorHandle {
    pool: PgPool,
    fence: Fence,
    health: Health,
    tx: mpsc::Sender<Committed>,
    projected: watch::Receiver<i64>,
}

impl ProjectorHandle {
    /// Queues a committed batch (in commit order). Waits while the projector is far behind.
    pub async fn project(&self, events: &[LoggedEvent]) {
        let Some(upto) = events.iter().map(|e| e.event_id).max() else {
            return;
        };
        self.send(Committed {
            rows: ProjectionRows::of_logged(events),
            upto,
        })
        .await;
    }

    async fn send(&self, batch: Committed) {
        if self.tx.send(batch).await.is_err() {
            // Only if the projector has stopped: the calls stay open, and the next start
            // re-projects them.
            error!("the projector has stopped; committed events wait for the next start");
        }
    }

    /// Writes rows now, outside the queue (recovery's re-projection). False if `abort` fired
    /// first.
    pub async fn write_now(
        &self,
        rows: ProjectionRows,
        backoff: &BackoffSettings,
        abort: &CancellationToken,
    ) -> bool {
        write_with_retry(&self.pool, &self.fence, rows, backoff, &self.health, abort).await
    }

    /// Declares every event up to `upto` projected: recovery calls it once it has re-projected
    /// the open calls, for the events logged before this process started. It goes through the
    /// queue like a batch without rows, so it takes effect in order.
    pub async fn cover(&self, upto: i64) {
        self.send(Committed {
            rows: ProjectionRows::default(),
            upto,
        })
        .await;
    }

    /// How far projections were committed when this instance started (`stored_mark`).
    pub async fn stored_mark(&self) -> Result<Option<i64>, sqlx::Error> {
        stored_mark(&self.pool, &self.fence).await
    }

    /// How far projections are committed, for the record writer.
    pub fn projected(&self) -> Projected {
        Projected(self.projected.clone())
    }
}

/// The projected-through event id: every committed event at or below it has its projection
/// rows committed.
#[derive(Clone)]
pub struct Projected(watch::Receiver<i64>);

#[derive(Debug, thiserror::Error)]
#[error("the projector stopped before projecting event {0}")]
pub struct ProjectorGone(pub i64);

impl Projected {
    /// Waits until every event up to `upto` is projected; an error if the projector stopped
    /// before.
    pub async fn wait_for(&mut self, upto: i64) -> Result<(), ProjectorGone> {
        self.0
            .wait_for(|v| *v >= upto)
            .await
            .map(|_| ())
            .map_err(|_| ProjectorGone(upto))
    }

    pub fn current(&self) -> i64 {
        *self.0.borrow()
    }
}

/// The task that writes committed batches' projections.
pub struct Projector {
    pool: PgPool,
    fence: Fence,
    health: Health,
    backoff: BackoffSettings,
    rx: mpsc::Receiver<Committed>,
    done: watch::Sender<i64>,
}

impl Projector {
    /// A projector whose writes carry `fence` (`Fence::none()` without a lease).
    pub fn new(
        pool: PgPool,
        fence: Fence,
        backoff: BackoffSettings,
        health: Health,
    ) -> (Self, ProjectorHandle) {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let (done, projected) = watch::channel(0);
        let handle = ProjectorHandle {
            pool: pool.clone(),
            fence: fence.clone(),
            health: health.clone(),
            tx,
            projected,
        };
        (
            Projector {
                pool,
                fence,
                health,
                backoff,
                rx,
                done,
            },
            handle,
        )
    }

    /// Runs until every handle is dropped and the queue is empty. `abort` fires when the
    /// shutdown bound has passed: what is unwritten is re-projected from the log next start.
    pub async fn run(mut self, abort: CancellationToken) {
        loop {
            let first = tokio::select! {
                next = self.rx.recv() => next,
                _ = abort.cancelled() => {
                    warn!(pending = self.rx.len(), "projector stopped at the shutdown bound; the next start re-projects what it had not written");
                    return;
                }
            };
            let Some(first) = first else { break };
            let mut rows = first.rows;
            let mut upto = first.upto;
            // Whatever else is waiting goes into the same statement.
            while rows.len() < MAX_ROWS_PER_WRITE {
                match self.rx.try_recv() {
                    Ok(next) => {
                        rows.merge(next.rows);
                        upto = upto.max(next.upto);
                    }
                    Err(_) => break,
                }
            }
            gauge!(metric::PROJECTION_QUEUE_BATCHES.name).set(self.rx.len() as f64);
            let written = write_with_retry(
                &self.pool,
                &self.fence,
                rows,
                &self.backoff,
                &self.health,
                &abort,
            )
            .await;
            if !written {
                warn!(
                    pending = self.rx.len(),
                    "projector stopped before writing everything; the next start re-projects those calls"
                );
                return;
            }
            // Raised only after the rows are committed; it never goes down.
            self.done.send_if_modified(|v| {
                let higher = upto > *v;
                *v = (*v).max(upto);
                higher
            });
            // Then recorded for the next start, off the writer's way.
            if !self.record_mark(upto, &abort).await {
                return;
            }
        }
        info!("projector drained");
    }

    /// Records the mark in the database (`MARK_SQL`), retrying while it is away. A mark the
    /// database refuses is left behind (the next start re-projects more, nothing is lost).
    /// False only if `abort` fired first.
    async fn record_mark(&self, upto: i64, abort: &CancellationToken) -> bool {
        let Some(key) = self.fence.key() else {
            return true;
        };
        let write = || {
            sqlx::query(MARK_SQL)
                .bind(key)
                .bind(self.fence.epoch())
                .bind(upto)
                .execute(&self.pool)
        };
        match Retry::new(&self.backoff, abort).run(write, retrying).await {
            Ok(_) => true,
            Err(Stop::Cancelled) => false,
            Err(Stop::Refused(e)) => {
                warn!(error = %e, upto, "could not record how far projections are committed; the next start re-projects from the last mark");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Limits, decode};
    use chrono::TimeZone;

    fn event(body: serde_json::Value) -> (String, CallEvent) {
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_json_depth: 32,
        };
        let received = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let e = decode(body.to_string().as_bytes(), received, limits).expect("a call event");
        (e.call_id.clone(), CallEvent::from(e))
    }

    fn turn(index: i32, second: u32, text: &str) -> (String, CallEvent) {
        event(
            serde_json::json!({"eventType": "dialog.turn.completed", "callId": "c",
            "timestamp": format!("2026-01-01T00:00:{second:02}Z"), "turnIndex": index, "aiText": text}),
        )
    }

    fn usage(id: &str, quantity: &str) -> (String, CallEvent) {
        event(
            serde_json::json!({"eventType": "cost.usage.reported", "callId": "c",
            "timestamp": "2026-01-01T00:00:05Z", "usageId": id, "resourceType": "LLM_TOKENS",
            "quantity": quantity}),
        )
    }

    /// Every order of the events, each with a duplicate, and split across two sets merged
    /// later (as the projector merges waiting batches), gives the same rows.
    #[test]
    fn rows_do_not_depend_on_order_duplicates_or_batching() {
        let events = vec![
            turn(0, 1, "first"),
            turn(0, 2, "second"),
            turn(1, 3, "bye"),
            usage("u1", "10"),
            usage("u1", "12"),
            usage("u2", "1"),
            event(serde_json::json!({"eventType": "call.answered", "callId": "c"})),
        ];
        let rows = |evs: &[(String, CallEvent)]| {
            ProjectionRows::of(evs.iter().map(|(c, e)| (c.as_str(), e)))
        };
        let expected = rows(&events);
        assert_eq!(
            expected.len(),
            2,
            "two turns; usage reports are not projected"
        );
        assert_eq!(
            expected.turns[&("c".to_owned(), 0)].turn.ai_text.as_deref(),
            Some("second")
        );
        let n = events.len();
        for rotation in 0..n {
            for reversed in [false, true] {
                let mut order: Vec<_> = events.clone();
                order.rotate_left(rotation);
                if reversed {
                    order.reverse();
                }
                order.extend(order.clone());
                assert_eq!(
                    rows(&order),
                    expected,
                    "rotation {rotation}, reversed {reversed}"
                );
                for split in 0..order.len() {
                    let mut first = rows(&order[..split]);
                    first.merge(rows(&order[split..]));
                    assert_eq!(first, expected, "split at {split}");
                }
            }
        }
    }
}
