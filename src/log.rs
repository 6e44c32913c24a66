//! The event log: every distinct raw event, in `call_events`. It is the write-ahead log of the
//! service: a delivery is acked only after its event is committed here, and every call's state
//! can be rebuilt from it.
//!
//! A batch is one statement (UNNEST), so the cost per event is a few microseconds of the
//! database, not a round trip.

mod recent;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use metrics::counter;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tracing::{debug, warn};

use crate::event::{Envelope, EventKind, Format};
use crate::lease::Fence;
use crate::merge::CallEvent;
use crate::retry::Transient;
use crate::telemetry::metric;
use recent::RecentMessages;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database cannot be reached: retry the same batch later.
    #[error("event log unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database refused the data itself: retrying the same batch will fail the same way.
    #[error("event log refused the batch: {0}")]
    Refused(sqlx::Error),
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        if e.is_transient() {
            LogError::Unavailable(e)
        } else {
            LogError::Refused(e)
        }
    }
}

impl Transient for LogError {
    fn is_transient(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}

/// An event as committed to the log.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub event_id: i64,
    pub call_id: String,
    /// When the service received it (idle timeouts count from here, across restarts).
    pub received_at: DateTime<Utc>,
    pub event: CallEvent,
}

/// The outcome of appending a batch.
#[derive(Debug, Default)]
pub struct Appended {
    /// The events that were new: (index in the batch, event id), in event-id order.
    new: Vec<(usize, i64)>,
    /// Messages already in the log (redeliveries and exact duplicates).
    pub duplicates: usize,
}

impl Appended {
    /// How many of the batch's events were new.
    pub fn new_events(&self) -> usize {
        self.new.len()
    }

    /// The new events as logged, in log order, moved out of the batch they were appended from
    /// (the same slice, in the same order): no payload is copied.
    pub fn into_logged(self, batch: Vec<Envelope>) -> Vec<LoggedEvent> {
        let mut slots: Vec<Option<Envelope>> = batch.into_iter().map(Some).collect();
        self.new
            .into_iter()
            .filter_map(|(i, event_id)| {
                let mut e = slots.get_mut(i)?.take()?;
                Some(LoggedEvent {
                    event_id,
                    received_at: e.received_at,
                    call_id: std::mem::take(&mut e.call_id),
                    event: CallEvent::from(e),
                })
            })
            .collect()
    }
}

/// Of the calls `$1`, those with an event logged before id `$2`.
///
/// Grouped rather than `AND event_id < $2`: with that condition the planner may AND a bitmap of
/// the primary key's range `event_id < $2` (nearly the whole log) with the call-id lookup, a
/// scan that grows with the log. This form reads only the given calls' few events through the
/// call-id index; run under `db::BEGIN_PREFERRING_INDEXES`, also while the log is too young for
/// statistics.
pub const SEEN_BEFORE_SQL: &str = "SELECT call_id FROM call_events WHERE call_id = ANY($1::text[]) \
     GROUP BY call_id HAVING min(event_id) < $2";

/// The whole append of a batch (see `EventLog::append`), with or without the conflict check on
/// the raw events. Data-modifying CTEs all run, read or not, in the statement's one
/// transaction.
///
/// - `inserted`: the raw events (the exact bytes, their format, and as `payload` the JSON body
///   itself or the rendering of a protobuf one), returning the new ones' ids and hashes. With the check, each
///   distinct message once (`ON CONFLICT DO NOTHING` on `(call_id, body_sha256)`); without it,
///   a message already logged fails the whole statement on the unique index, and nothing of it
///   is committed;
/// - `opened`: their calls marked open up to their highest new id.
///
/// `fence` first (materialized, read by `inserted`): `cdr_fence($11, $12)` fails the whole
/// statement if this instance no longer holds the lease (`lease`).
///
/// The dialog-turn projection is not part of it: the projector writes it after the commit,
/// off the ack path (`project`).
macro_rules! append_sql {
    ($raw_events_conflict:literal) => {
        concat!(
            "WITH fence AS MATERIALIZED (SELECT cdr_fence($11, $12) AS epoch), \
             inserted AS ( \
               INSERT INTO call_events \
                 (call_id, event_type, event_timestamp, timestamp_inferred, received_at, trace_id, \
                  payload, body_sha256, body, body_encoding) \
               SELECT call_id, event_type, ts, inferred, received, trace, \
                      COALESCE(rendering, convert_from(body, 'UTF8'))::jsonb, hash, body, encoding \
               FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::bool[], $5::timestamptz[], \
                           $6::text[], $7::text[], $8::bytea[], $9::bytea[], $10::text[]) \
                    AS t(call_id, event_type, ts, inferred, received, trace, rendering, hash, body, encoding) \
                    CROSS JOIN fence ",
            $raw_events_conflict,
            " RETURNING event_id, call_id, body_sha256 \
             ), opened AS ( \
               INSERT INTO open_calls AS o (call_id, last_event_id) \
               SELECT call_id, max(event_id) FROM inserted GROUP BY call_id \
               ON CONFLICT (call_id) DO UPDATE \
                 SET last_event_id = GREATEST(o.last_event_id, EXCLUDED.last_event_id) \
             ) \
             SELECT event_id, body_sha256 FROM inserted"
        )
    };
}

/// The append that lets the database drop messages already logged (one more index probe per
/// row: PostgreSQL checks for a conflict before it inserts, then again as it inserts).
pub const APPEND_SQL: &str = append_sql!("ON CONFLICT (call_id, body_sha256) DO NOTHING");

/// The append of messages believed new: a plain insert, whose unique index still refuses a
/// message already logged (then the batch goes again through `APPEND_SQL`).
pub const APPEND_NEW_SQL: &str = append_sql!("");

/// The unique index that makes each distinct message one row (migrations/0001_schema.sql).
const DISTINCT_INDEX: &str = "call_events_distinct_idx";

#[derive(Clone)]
pub struct EventLog {
    pool: PgPool,
    /// Carried by every write: the lease this instance holds (`lease`).
    fence: Fence,
    /// Identities of the messages committed lately, shared by every clone of the log.
    recent: Arc<Mutex<RecentMessages>>,
}

impl EventLog {
    /// A log that asks the database about every message.
    pub fn new(pool: PgPool) -> Self {
        Self::remembering(pool, 0)
    }

    /// A log that remembers about `messages` of the identities it committed or read back
    /// lately (16 bytes each; see `recent`), so that their copies never reach the database
    /// and new messages go in without a conflict check.
    pub fn remembering(pool: PgPool, messages: usize) -> Self {
        EventLog {
            pool,
            fence: Fence::none(),
            recent: Arc::new(Mutex::new(RecentMessages::new(messages))),
        }
    }

    /// The same log, its writes fenced by the lease this instance holds.
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentMessages> {
        // The set is only read and added to: a panic elsewhere leaves it consistent.
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a batch as one statement, so one implicit transaction and one round trip: the
    /// raw events and their calls marked open (see `open_calls` in the migrations), so that a
    /// committed event always has its recovery entry.
    ///
    /// One statement rather than a transaction of four: the committer waits on this call for
    /// every batch, and each extra round trip also waits for the service's own runtime to send
    /// the next statement.
    ///
    /// Only the first copy of each message not remembered as logged is sent. When the log
    /// remembers, those go in as a plain insert (`APPEND_NEW_SQL`), which spares PostgreSQL its
    /// conflict check on every row (about a fifth of its time per event); should one of them be
    /// in the log already (logged before this process started, or longer ago than it
    /// remembers), the unique index refuses the statement, nothing of it is committed, and the
    /// batch goes again with the check (`APPEND_SQL`). The index decides either way.
    pub async fn append(&self, batch: &[Envelope]) -> Result<Appended, LogError> {
        if batch.is_empty() {
            return Ok(Appended::default());
        }
        let n = batch.len();
        let (fresh, remembering) = {
            let recent = self.recent();
            let mut firsts = HashSet::with_capacity(n);
            let fresh: Vec<&Envelope> = batch
                .iter()
                .filter(|e| !recent.contains(&e.body_hash) && firsts.insert(&e.body_hash))
                .collect();
            (fresh, recent.enabled())
        };
        let mut rechecked = false;
        let rows = match (fresh.is_empty(), remembering) {
            (true, _) => Vec::new(),
            (false, false) => self.insert(&fresh, APPEND_SQL).await?,
            (false, true) => match self.insert(&fresh, APPEND_NEW_SQL).await {
                Err(e) if crate::db::violates_unique_index(&e, DISTINCT_INDEX) => {
                    rechecked = true;
                    debug!(
                        events = fresh.len(),
                        "a message of the batch was logged before; appending it with the conflict check"
                    );
                    self.insert(&fresh, APPEND_SQL).await?
                }
                other => other?,
            },
        };
        if remembering {
            // Committed: every one of them is in the log now, inserted or found there.
            let mut recent = self.recent();
            for e in &fresh {
                recent.insert(&e.body_hash);
            }
        }

        // The body holds the call id, so its hash alone names a distinct message of the batch.
        let ids: HashMap<&[u8], i64> = rows
            .iter()
            .map(|(id, hash)| (hash.as_slice(), *id))
            .collect();
        let mut seen = HashSet::with_capacity(n);
        let mut new = Vec::with_capacity(rows.len());
        for (i, e) in batch.iter().enumerate() {
            let key = e.body_hash.as_slice();
            if let Some(id) = ids.get(key)
                && seen.insert(key)
            {
                new.push((i, *id));
            }
        }
        new.sort_by_key(|&(_, id)| id);
        let duplicates = n - new.len();
        // Counted once committed, the duplicates before the recheck that found them: whoever
        // sees a recheck counted sees its duplicates counted too.
        counter!(metric::DUPLICATES_DROPPED.name).increment(duplicates as u64);
        if rechecked {
            counter!(metric::LOG_APPEND_RECHECKS.name).increment(1);
        }
        Ok(Appended { duplicates, new })
    }

    /// Runs one of the append statements over distinct messages; returns the new rows' ids and
    /// hashes.
    async fn insert(
        &self,
        batch: &[&Envelope],
        sql: &'static str,
    ) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
        let n = batch.len();
        let mut call_ids = Vec::with_capacity(n);
        let mut event_types = Vec::with_capacity(n);
        let mut timestamps = Vec::with_capacity(n);
        let mut inferred = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut traces = Vec::with_capacity(n);
        let mut renderings = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        let mut encodings = Vec::with_capacity(n);
        for e in batch {
            call_ids.push(e.call_id.as_str());
            event_types.push(e.event_type.as_str());
            timestamps.push(e.timestamp);
            inferred.push(e.timestamp_inferred);
            received.push(e.received_at);
            traces.push(e.trace_id.as_deref());
            renderings.push(e.rendering.as_deref());
            hashes.push(e.body_hash.as_slice());
            bodies.push(e.body.as_slice());
            encodings.push(e.format.as_str());
        }
        sqlx::query_as(sql)
            .bind(&call_ids)
            .bind(&event_types)
            .bind(&timestamps)
            .bind(&inferred)
            .bind(&received)
            .bind(&traces)
            .bind(&renderings)
            .bind(&hashes)
            .bind(&bodies)
            .bind(&encodings)
            .bind(self.fence.key())
            .bind(self.fence.epoch())
            .fetch_all(&self.pool)
            .await
    }

    /// Of `call_ids`, those with logged events older than `before`: calls seen earlier (and
    /// possibly already written), which must be rebuilt from the log rather than start empty.
    pub async fn calls_with_events_before(
        &self,
        call_ids: &[&str],
        before: i64,
    ) -> Result<HashSet<String>, LogError> {
        if call_ids.is_empty() {
            return Ok(HashSet::new());
        }
        // A transaction only for the planner setting: the index, whatever the statistics say.
        let mut tx = self
            .pool
            .begin_with(crate::db::BEGIN_PREFERRING_INDEXES)
            .await?;
        let rows: Vec<(String,)> = sqlx::query_as(SEEN_BEFORE_SQL)
            .bind(call_ids)
            .bind(before)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// The highest event id logged so far (0 for an empty log).
    pub async fn max_event_id(&self) -> Result<i64, LogError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(event_id) FROM call_events")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    /// Calls to rebuild on start: open (events not yet in their row) and not quarantined.
    pub async fn open_calls(&self) -> Result<Vec<String>, LogError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT o.call_id FROM open_calls o \
             WHERE NOT EXISTS (SELECT 1 FROM quarantined_calls q WHERE q.call_id = o.call_id) \
             ORDER BY o.last_event_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// Open calls, not quarantined, after `after` in call-id order, `limit` at most: the
    /// tracker walks them to take deferred calls up (by the primary key).
    pub async fn open_calls_after(&self, after: &str, limit: i64) -> Result<Vec<String>, LogError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT o.call_id FROM open_calls o \
             WHERE o.call_id > $1 \
               AND NOT EXISTS (SELECT 1 FROM quarantined_calls q WHERE q.call_id = o.call_id) \
             ORDER BY o.call_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    pub async fn quarantined_calls(&self) -> Result<Vec<String>, LogError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT call_id FROM quarantined_calls")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(c,)| c).collect())
    }

    /// Marks a call quarantined; its events stay in the log. Returns the call's trace id (its
    /// first logged one, aggregated over the call's events: an `ORDER BY event_id LIMIT 1` could
    /// walk the primary key across the whole log).
    pub async fn quarantine(
        &self,
        call_id: &str,
        failures: i32,
        reason: &str,
    ) -> Result<Option<String>, LogError> {
        let trace_id: Option<String> = sqlx::query_scalar(
            "WITH fence AS MATERIALIZED (SELECT cdr_fence($4, $5) AS epoch) \
             INSERT INTO quarantined_calls (call_id, trace_id, failures, reason) \
             SELECT $1, (SELECT (array_agg(trace_id ORDER BY event_id))[1] FROM call_events \
                          WHERE call_id = $1 AND trace_id IS NOT NULL), $2, $3 FROM fence \
             ON CONFLICT (call_id) DO UPDATE SET failures = EXCLUDED.failures, reason = EXCLUDED.reason, \
               quarantined_at = now() \
             RETURNING trace_id",
        )
        .bind(call_id)
        .bind(failures)
        .bind(reason)
        .bind(self.fence.key())
        .bind(self.fence.epoch())
        .fetch_one(&self.pool)
        .await?;
        Ok(trace_id)
    }

    /// Every logged event of one call, in log order, read page by page (`load_page`).
    pub async fn load_call(&self, call_id: &str) -> Result<Vec<LoggedEvent>, LogError> {
        let ids = [call_id.to_owned()];
        let mut events = Vec::new();
        let mut after = None;
        loop {
            let page = self.load_page(&ids, after.as_ref()).await?;
            events.extend(page.calls.into_iter().flat_map(|(_, e)| e));
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(events),
            }
        }
    }

    /// The logged events of `call_ids` after `after` (from the first without), in the order
    /// of (call id, event id): at most `PAGE_EVENTS` events and `PAGE_BYTES` bytes of stored
    /// bodies (at least one event), so that however many events a call has, loading it never
    /// holds more than a page. `Page::next` is where the next page starts, if any is left.
    pub async fn load_page(
        &self,
        call_ids: &[String],
        after: Option<&Cursor>,
    ) -> Result<Page, LogError> {
        use futures_util::TryStreamExt;
        let start = after.cloned().unwrap_or_default();
        let limit = if start.limit > 0 {
            start.limit
        } else {
            PAGE_EVENTS
        };
        let mut stream = sqlx::query_as::<_, StoredRow>(LOAD_PAGE_SQL)
            .bind(call_ids)
            .bind(&start.call_id)
            .bind(start.event_id)
            .bind(limit)
            .fetch(&self.pool);
        // Rows are taken as they arrive until the page's bytes are reached; the rows of the
        // limit left unread are read past, never held (sqlx drains them before the
        // connection's next use). The next page's limit follows what this one held, so that
        // after a page of large bodies at most one row is read past.
        let mut rows: Vec<StoredRow> = Vec::new();
        let mut bytes = 0usize;
        let mut cut = false;
        while let Some(row) = stream.try_next().await? {
            bytes += row.size();
            rows.push(row);
            if bytes >= PAGE_BYTES {
                cut = true;
                break;
            }
        }
        drop(stream);
        let held = rows.len() as i64;
        let next_limit = if cut {
            held + 1
        } else {
            (held + held / 2 + 1).min(PAGE_EVENTS)
        };
        let next = (cut || held == limit)
            .then(|| rows.last())
            .flatten()
            .map(|r| Cursor {
                call_id: r.call_id.clone(),
                event_id: r.event_id,
                limit: next_limit,
            });
        // What is read back is logged: remembering it spares the recheck a redelivered copy
        // would cost (the unacked window after a restart belongs mostly to the calls that
        // recovery loads here). Only stored hashes: a row from before the hash column has
        // none, and the unique index lets its copies in.
        {
            let mut recent = self.recent();
            for row in &rows {
                if let Some(hash) = row.body_sha256.as_deref().and_then(|h| h.try_into().ok()) {
                    recent.insert(hash);
                }
            }
        }
        // Decoding is most of a load's work: on a thread of its own, the runtime's worker goes
        // on reading the next rows meanwhile (recovery keeps several loads in flight).
        match tokio::task::spawn_blocking(move || by_call(rows)).await {
            Ok(calls) => Ok(Page { calls, next }),
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime shuts down under it.
                Err(_) => Err(LogError::Unavailable(sqlx::Error::WorkerCrashed)),
            },
        }
    }
}

/// Events per page of `EventLog::load_page`, at most: recovery's chunk of 1,000 calls (some
/// 6,000 events) fits one page, so only a call of thousands of events takes more than one.
pub const PAGE_EVENTS: i64 = 20_000;
/// Bytes of stored bodies per page, at most, and one body more (a page holds at least one
/// event, of at most `ingest.max_body_bytes`).
pub const PAGE_BYTES: usize = 16 << 20;

/// One page of the log: the events of `call_ids` after the cursor `($2, $3)` in (call id,
/// event id) order, at most `$4` of them; `load_page` stops reading at `PAGE_BYTES`. Without
/// a (call_id, event_id) index (it would cost every append), the calls' rows are found by the
/// unique index's leading column and sorted; a call's later pages find them again. (Counting
/// the bytes in the query, with a window over the rows, made recovery a third slower.)
const LOAD_PAGE_SQL: &str = "SELECT event_id, call_id, event_type, \
            COALESCE(event_timestamp, received_at, created_at) AS ts, \
            timestamp_inferred OR event_timestamp IS NULL AS inferred, \
            COALESCE(received_at, created_at) AS received, \
            trace_id, body_sha256, body, body_encoding, \
            CASE WHEN body IS NULL THEN payload END AS payload \
     FROM call_events \
     WHERE call_id = ANY($1::text[]) AND (call_id, event_id) > ($2, $3) \
     ORDER BY call_id, event_id LIMIT $4";

/// Where a page of the log starts: after this call's event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    call_id: String,
    event_id: i64,
    /// The next page's row limit (0: `PAGE_EVENTS`).
    limit: i64,
}

/// A page of calls' logged events (`EventLog::load_page`). A call may go on in the next page.
pub struct Page {
    pub calls: LoadedCalls,
    pub next: Option<Cursor>,
}

/// The rows' events, decoded, grouped by call (the rows come ordered by call).
fn by_call(rows: Vec<StoredRow>) -> LoadedCalls {
    let mut calls: LoadedCalls = Vec::new();
    for row in rows {
        let e = row.into_logged();
        match calls.last_mut() {
            Some((id, events)) if *id == e.call_id => events.push(e),
            _ => calls.push((e.call_id.clone(), vec![e])),
        }
    }
    calls
}

/// Calls with their logged events in log order, as `EventLog::load_page` reads them.
pub type LoadedCalls = Vec<(String, Vec<LoggedEvent>)>;

#[derive(sqlx::FromRow)]
struct StoredRow {
    event_id: i64,
    call_id: String,
    event_type: String,
    ts: DateTime<Utc>,
    inferred: bool,
    received: DateTime<Utc>,
    trace_id: Option<String>,
    body_sha256: Option<Vec<u8>>,
    /// The exact bytes; None for rows logged before the column existed.
    body: Option<Vec<u8>>,
    /// The format the live decoder found them in (`json`, `protobuf`).
    body_encoding: Option<String>,
    /// Only read when `body` is None.
    payload: Option<sqlx::types::Json<serde_json::Value>>,
}

impl StoredRow {
    /// The event as the live path decoded it: the stored bytes through the same decoder, with
    /// the format it found as the hint (where the body alone could not tell, the content type
    /// decided it live) and the stored receive time standing in for a missing timestamp. Rows
    /// without bytes (logged by an older version) are read from their columns and `payload`.
    fn into_logged(self) -> LoggedEvent {
        let hint = self.body_encoding.as_deref().and_then(Format::from_name);
        let stored_hash = self.stored_hash();
        let event = match self
            .body
            .as_deref()
            .map(|body| CallEvent::from_logged(body, hint, self.received, stored_hash))
        {
            Some(Ok(event)) => event,
            Some(Err(reject)) => {
                // Logged by a decoder that accepted it: a later one must too. Should that
                // ever break, the call still folds from the stored columns.
                warn!(call_id = %self.call_id, event_id = self.event_id, %reject,
                    "a logged event no longer decodes; it is read from its stored columns");
                counter!(metric::LOG_UNDECODABLE_EVENTS.name).increment(1);
                self.stored_event()
            }
            None => self.stored_event(),
        };
        LoggedEvent {
            event_id: self.event_id,
            call_id: self.call_id,
            received_at: self.received,
            event,
        }
    }

    /// The bytes the row holds in memory, about: its body, or its JSON for a row from before
    /// the body column.
    fn size(&self) -> usize {
        match (&self.body, &self.payload) {
            (Some(body), _) => body.len(),
            (None, Some(payload)) => payload.0.to_string().len(),
            (None, None) => 0,
        }
    }

    fn stored_hash(&self) -> Option<[u8; 32]> {
        self.body_sha256.as_deref().and_then(|h| h.try_into().ok())
    }

    /// The event from its columns and its `payload`.
    fn stored_event(&self) -> CallEvent {
        let payload = self
            .payload
            .as_ref()
            .map(|p| p.0.clone())
            .or_else(|| {
                self.body
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
            })
            .unwrap_or_default();
        let body_hash: [u8; 32] = self
            .stored_hash()
            // Rows logged before the hash column existed: hash the stored payload instead.
            .unwrap_or_else(|| Sha256::digest(payload.to_string().as_bytes()).into());
        let object = payload.as_object().cloned().unwrap_or_default();
        let trace_id = self.trace_id.clone().or_else(|| {
            object
                .get("traceId")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
        CallEvent::new(
            self.ts,
            self.inferred,
            body_hash,
            trace_id,
            EventKind::from_payload(&self.event_type, &object),
        )
    }
}
